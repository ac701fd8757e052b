"""``sharpkit.probe`` and ``sharpkit.interpolate``: loss-landscape probes of models.

The probe plugin evaluates the grid; this module loads the models and the data
they were trained on, checks the models fit together, and stores the result
under a key of everything that could change it.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

from sharpkit._hints import arg, spelled
from sharpkit.api.datafiles import SourceDataset
from sharpkit.api.executor import Executor, PluginCall
from sharpkit.api.fingerprint import code_digest, probe_key_fields
from sharpkit.api.fit import check_fit
from sharpkit.api.job import Inputs, Job, resolve
from sharpkit.api.models import ResolvedModel, check_finite
from sharpkit.api.provenance import code_sha256, split_sha256
from sharpkit.api.resolve import ModelLike, StoreLike, open_store, recorded_data
from sharpkit.errors import ConfigError
from sharpkit.interfaces import (
    Dataset,
    ProbeContext,
    ProbeResult,
    ProgressCallback,
    no_progress,
)
from sharpkit.registry import Registry, get_registry

if TYPE_CHECKING:
    import torch

    from sharpkit.api.losses import ResolvedLoss

__all__ = ["interpolate", "probe", "run_probe"]


def probe(
    name: str,
    models: Sequence[ModelLike],
    data: str | Dataset | None = None,
    *,
    options: Mapping[str, Any] | None = None,
    loss: Any = None,
    data_options: Mapping[str, Any] | None = None,
    batch_size: int = 1024,
    seed: int = 0,
    device: str | torch.device | None = None,
    model_name: str | None = None,
    model_options: Mapping[str, Any] | None = None,
    data_root: str | os.PathLike[str] | None = None,
    download: bool = False,
    progress: ProgressCallback | None = None,
    store: StoreLike = None,
    force: bool = False,
    registry: Registry | None = None,
) -> ProbeResult:
    """Run a loss-landscape probe (``interpolate``, ``direction``, ``plane``, ...).

    Args:
        name: Registered probe name.
        models: One or two models (modules, checkpoint paths, ``.pt2`` files,
            ``"hf:PATH"``), as the probe needs.
        data: Dataset name, data file, image folder, ``"package.module:name"``
            (see :func:`measure`) or :class:`~sharpkit.Dataset` (default: the
            one the first checkpoint names).
        options: Probe options (``sharpkit plugins`` lists them).
        loss: ``"cross-entropy"`` (default), ``"mse"``, ``"bce-logits"``,
            ``"nll"``, ``"package.module:name"`` or ``loss(outputs, targets) ->
            scalar``.
        data_options: Options of data named by a path or code (see
            :func:`measure`).
        batch_size: Examples per forward pass.
        seed: Seed for random directions and BN re-estimation order.
        device: Where to compute.
        model_name: Architecture of bare ``state_dict`` checkpoints.
        model_options: Options for that architecture.
        data_root: Where dataset files are looked for first.
        download: Let the dataset download its files if missing.
        progress: Progress callback.
        store: A results store path to record the result in.
        force: Recompute even if the store has this probe with these settings.
        registry: The registry to use (default: the process-wide one).

    Returns:
        The probe's curves or grid, with width readouts in ``summary``.
    """
    inputs = Inputs(
        data=data, data_options=data_options, data_root=data_root,
        download=download, model_name=model_name, model_options=model_options,
        loss=loss, seed=seed, device=device, store=store, force=force,
    )  # fmt: skip
    return run_probe(
        name, models, inputs, options=options, batch_size=batch_size,
        progress=progress, registry=registry,
    )  # fmt: skip


def run_probe(
    name: str,
    models: Sequence[ModelLike],
    inputs: Inputs,
    *,
    options: Mapping[str, Any] | None = None,
    batch_size: int = 1024,
    progress: ProgressCallback | None = None,
    registry: Registry | None = None,
) -> ProbeResult:
    """:func:`probe` with its inputs as one typed value."""
    ex = Executor(registry or get_registry(), force=inputs.force)
    call = ex.call("probe", name, options)
    if len(models) != call.spec.n_models:
        msg = f"probe {name!r} takes {call.spec.n_models} model(s), got {len(models)}"
        raise ConfigError(msg)
    job = resolve(inputs, ex.registry)
    sources = [job.model(m) for m in models]
    _check_same_architecture([s.net for s in sources])
    for s in sources:
        check_finite(s.net, s.path or "a model")
    ds, registered = _probe_data(job, sources[0])
    metas = [s.meta for s in sources]
    extra = _optional_key(sources, ds, job.loss.code_sha256, registered)
    work = [copy.deepcopy(s.net).to(job.device).eval() for s in sources]
    # what decides the curves: the data as used, what each model and the loss
    # compute, the probe's own code (see api/fingerprint.py), and the settings
    key = ex.key(
        call, train_subset=[len(ds.train), metas[0].seed],
        checkpoints=[s.sha256 for s in sources], dataset=ds.name,
        seed=inputs.seed, loss=job.loss.label,
        component_code=code_digest(call.spec.factory),
        **probe_key_fields(
            work, job.loss.fn, ds.train, ds.test, batch_size=batch_size
        ),
        **extra,
    )  # fmt: skip
    ex.store = open_store(inputs.store)
    found = ex.stored(call, key)
    if found is not None:
        return cast("ProbeResult", found)
    _check_probe_fits(sources, work[0], ds, job.loss, call)
    ctx = ProbeContext(
        models=work, loss_fn=job.loss.fn, train_data=ds.train, test_data=ds.test,
        batch_size=batch_size, device=job.device, seed=inputs.seed,
        progress=progress or no_progress,
    )  # fmt: skip
    start = time.perf_counter()
    outcome = ex.run(call, "running", ex.create(call).run, ctx)
    seconds = time.perf_counter() - start
    result: ProbeResult = dataclasses.replace(
        outcome,
        probe=name,
        seconds=outcome.seconds if outcome.seconds is not None else seconds,
        attrs={**outcome.attrs, "key": key},
    )
    attrs = {
        "probe": name,
        "checkpoint_sha256": [s.sha256 for s in sources],
        "checkpoint_path": [s.path for s in sources],
        "model": metas[0].model or inputs.model_name,
        "dataset": ds.name, "loss": job.loss.label, **extra,
        "lr": [m.lr for m in metas], "batch_size": [m.batch_size for m in metas],
        "train_seed": [m.seed for m in metas], "seed": inputs.seed,
    }  # fmt: skip
    run_id = ex.write("probe", attrs, probes={name: result})
    if run_id is not None:
        result = dataclasses.replace(result, attrs={**result.attrs, "run_id": run_id})
    return result


def _probe_data(job: Job, first: ResolvedModel) -> tuple[Dataset, bool]:
    """The dataset to probe on, and whether it is a registered one.

    "Training data" is what the first model was trained on: the same seeded
    subset when it was trained on one (the paper's train-loss curves).
    """
    if isinstance(job.data, Dataset):
        return job.data, False
    ds_name = job.data if isinstance(job.data, str) else recorded_data(first.meta)
    if ds_name is None:
        msg = (
            "no data given and the checkpoints do not name a dataset; pass "
            f"{arg('data', '--data')}"
        )
        raise ConfigError(msg)
    ds, _ = job.training_data(ds_name, first, registered=isinstance(job.data, str))
    return ds, not isinstance(ds, SourceDataset)


def interpolate(
    a: ModelLike,
    b: ModelLike,
    data: str | Dataset | None = None,
    *,
    alpha: str | Sequence[float] = "-1:2:31",
    bn_reestimate: bool = True,
    **kwargs: Any,
) -> ProbeResult:
    """Loss and accuracy along ``(1-α)·θa + α·θb`` (Goodfellow et al., 2015).

    Batch-norm running statistics are re-estimated on training data at every α
    unless ``bn_reestimate=False``. Other keyword arguments go to :func:`probe`.

    Args:
        a: The model at α = 0 (module or checkpoint path).
        b: The model at α = 1.
        data: Dataset name or :class:`~sharpkit.Dataset`.
        alpha: ``"start:stop:num"`` or explicit values.
        bn_reestimate: Re-estimate BN statistics at every α.
        **kwargs: Passed to :func:`probe`.
    """
    opts = line_options(alpha, bn_reestimate, kwargs.pop("options", None))
    return probe("interpolate", [a, b], data, options=opts, **kwargs)


def line_options(
    alpha: str | Sequence[float],
    bn_reestimate: bool,
    options: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``interpolate`` probe's options: the α grid, BN re-estimation, the rest."""
    if not isinstance(alpha, str):
        alpha = ",".join(repr(float(v)) for v in alpha)
    return {"alpha": alpha, "bn_reestimate": bn_reestimate, **(options or {})}


def _optional_key(
    sources: Sequence[ResolvedModel],
    ds: Dataset,
    loss_sha: str | None,
    registered: bool,
) -> dict[str, str]:
    """Key entries that apply: the data's hash (when not registered) and the code's."""
    out: dict[str, str] = {}
    if not registered:
        both = code_sha256(split_sha256(ds.train), split_sha256(ds.test))
        assert both is not None
        out["data_sha256"] = both
    code = code_sha256(
        *(s.code_sha256 for s in sources), loss_sha, getattr(ds, "code_sha256", None)
    )
    if code is not None:
        out["code_sha256"] = code
    return out


def _check_probe_fits(
    sources: Sequence[ResolvedModel],
    work: torch.nn.Module,
    ds: Dataset,
    loss: ResolvedLoss,
    call: PluginCall,
) -> None:
    """One line, not a traceback, when the data or the loss do not fit the models."""
    from sharpkit.api.wrappers import ExportedModel

    net = sources[0].net
    if isinstance(net, ExportedModel):
        opt = call.spec.option("bn_reestimate")
        reestimate = call.options.get("bn_reestimate", opt.default if opt else False)
        if reestimate and any(b.is_floating_point() for b in net.buffers()):
            off = spelled("bn_reestimate=False", "-o bn_reestimate=false")
            msg = (
                f"the batch-norm statistics of the exported program {net.source!r} "
                f"cannot be re-estimated (its graph is fixed); pass {off}, or give "
                "the module itself"
            )
            raise ConfigError(msg)
        if net.training_ops:
            msg = (
                f"the exported program {net.source!r} runs "
                f"{', '.join(net.training_ops)} in training mode; export it after "
                "model.eval()"
            )
            raise ConfigError(msg)
    check_fit(
        work,  # a copy in eval mode: the caller's model is not run
        ds.train,
        loss.fn,
        model_label=str(sources[0].path or type(net).__name__),
        data_label=repr(ds.name),
        expects=sources[0].expects(),
        loss_label=f"the loss {loss.label!r}",
    )


def _check_same_architecture(models: Sequence[torch.nn.Module]) -> None:
    archs = {type(m).__name__ for m in models}
    shapes = [{k: tuple(v.shape) for k, v in m.state_dict().items()} for m in models]
    if len(archs) > 1 or any(s != shapes[0] for s in shapes[1:]):
        msg = (
            "the models have different architectures; a probe between them needs "
            "the same model and options for both"
        )
        raise ConfigError(msg)
