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
from sharpkit.api.job import Inputs, Job, Selection, resolve
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

    from sharpkit._data import DataSplit
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
    samples: int | str | None = None,
    sample: str = "first",
    sample_seed: int | None = None,
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
        samples: Cut the training and the test split each to ``samples``
            examples before the probe sees them (``None`` or ``"all"``: the
            whole splits; the probe's own ``eval_samples`` and ``bn_samples``
            then draw from what is left).
        sample: Which ones: ``"first"`` or ``"random"`` (a uniform subset,
            stratified by class where the targets are class indices), as in
            :func:`measure`. The selection is part of the reuse key: a probe on
            a random draw is never reused for the first ``samples``, nor for
            another draw.
        sample_seed: Seed of the ``"random"`` draw (``None``: ``seed``).
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
    selection = Selection(
        samples=samples,
        sample=sample,
        seed=seed if sample_seed is None else sample_seed,
    )
    return run_probe(
        name, models, inputs, options=options, batch_size=batch_size,
        progress=progress, registry=registry, selection=selection,
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
    selection: Selection | None = None,
) -> ProbeResult:
    """:func:`probe` with its inputs as one typed value.

    ``selection``: the examples of each split the probe sees (``None``: all).
    """
    if selection is not None:
        selection.check()
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
    train, test, picked = _select(ds, selection)
    metas = [s.meta for s in sources]
    extra = _optional_key(sources, ds, job.loss.code_sha256, registered)
    drawn = {k: picked[k] for k in ("sample_seed", "sample_sha256") if picked.get(k)}
    work = [copy.deepcopy(s.net).to(job.device).eval() for s in sources]
    # what decides the curves: the data as used, what each model and the loss
    # compute, the probe's own code (see api/fingerprint.py), and the settings
    key = ex.key(
        call, train_subset=[len(ds.train), metas[0].seed],
        checkpoints=[s.sha256 for s in sources], dataset=ds.name,
        seed=inputs.seed, loss=job.loss.label,
        component_code=code_digest(call.spec.factory),
        **probe_key_fields(work, job.loss.fn, train, test, batch_size=batch_size),
        **extra, **drawn,
    )  # fmt: skip
    ex.store = open_store(inputs.store)
    found = ex.stored(call, key)
    if found is not None:
        return cast("ProbeResult", found)
    _check_probe_fits(sources, work[0], ds.name, train, job.loss, call)
    ctx = ProbeContext(
        models=work, loss_fn=job.loss.fn, train_data=train, test_data=test,
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
        attrs={**outcome.attrs, **picked, "key": key},
    )
    attrs = {
        "probe": name,
        "checkpoint_sha256": [s.sha256 for s in sources],
        "checkpoint_path": [s.path for s in sources],
        "model": metas[0].model or inputs.model_name,
        "dataset": ds.name, "loss": job.loss.label, **extra,
        "lr": [m.lr for m in metas], "batch_size": [m.batch_size for m in metas],
        "train_seed": [m.seed for m in metas], "seed": inputs.seed, **picked,
    }  # fmt: skip
    run_id = ex.write("probe", attrs, probes={name: result})
    if run_id is not None:
        result = dataclasses.replace(result, attrs={**result.attrs, "run_id": run_id})
    return result


def _select(
    ds: Dataset, selection: Selection | None
) -> tuple[DataSplit, DataSplit, dict[str, Any]]:
    """The training and test examples the probe sees, and what the run records.

    The record (empty without a selection): ``samples`` (training examples),
    ``sample``, ``population`` (the training split's size), and for a random
    draw ``sample_seed`` and ``sample_sha256``, the digest of both splits'
    drawn indices (see :meth:`~sharpkit.api.job.Selection.cut`).
    """
    if selection is None:
        return ds.train, ds.test, {}
    train, record = selection.cut(ds.train, default=None)
    test, of_test = ds.test, dict[str, Any]()
    if len(ds.test):
        test, of_test = selection.cut(ds.test, default=None)
    digests = [r.get("sample_sha256") for r in (record, of_test)]
    if any(digests):
        joined = code_sha256(*digests)
        record.update(sample_seed=selection.seed, sample_sha256=joined)
    return train, test, {"samples": len(train), **record}


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
    data_name: str,
    train: DataSplit,
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
        train,
        loss.fn,
        model_label=str(sources[0].path or type(net).__name__),
        data_label=repr(data_name),
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
