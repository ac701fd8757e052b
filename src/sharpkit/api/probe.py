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
from typing import TYPE_CHECKING, Any

from sharpkit._hints import arg, in_cli
from sharpkit.api.datafiles import SourceDataset
from sharpkit.api.fit import check_fit
from sharpkit.api.losses import resolve_loss
from sharpkit.api.provenance import (
    code_sha256,
    provider_of,
    result_key,
    run_attrs,
    split_sha256,
)
from sharpkit.api.resolve import (
    ModelLike,
    ResolvedModel,
    StoreLike,
    check_finite,
    load_training_data,
    open_store,
    recorded_data,
    resolve_data,
    resolve_device,
    resolve_model,
)
from sharpkit.errors import ConfigError, PluginContractError
from sharpkit.interfaces import (
    Dataset,
    Probe,
    ProbeContext,
    ProbeResult,
    ProgressCallback,
    _no_progress,
)
from sharpkit.registry import Registry, get_registry

if TYPE_CHECKING:
    import torch

__all__ = ["interpolate", "probe"]


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
    reg = registry or get_registry()
    spec = reg.get("probe", name)
    parsed = reg.parse_options(spec, options or {})
    if len(models) != spec.n_models:
        msg = f"probe {name!r} takes {spec.n_models} model(s), got {len(models)}"
        raise ConfigError(msg)
    dev = resolve_device(device)
    chosen_loss = resolve_loss(loss)
    data = resolve_data(data, options=data_options, registry=reg, root=data_root)
    ds: Dataset | None = data if isinstance(data, Dataset) else None
    registered = False
    sources = [
        resolve_model(
            m,
            data=data if isinstance(data, str | Dataset) else None,
            model_name=model_name,
            model_options=model_options,
            data_root=data_root,
            registry=reg,
        )
        for m in models
    ]
    _check_same_architecture([s.net for s in sources])
    for s in sources:
        check_finite(s.net, s.path or "a model")
    metas = [s.meta for s in sources]
    if ds is None:
        ds_name = data if isinstance(data, str) else recorded_data(metas[0])
        if ds_name is None:
            msg = (
                "no data given and the checkpoints do not name a dataset; pass "
                f"{arg('data', '--data')}"
            )
            raise ConfigError(msg)
        # "Training data" is what the first model was trained on: the same seeded
        # subset when it was trained on one (the paper's train-loss curves).
        ds, _ = load_training_data(
            ds_name, metas[0], root=data_root, download=download, registry=reg,
            options=data_options,
        )  # fmt: skip
        registered = not isinstance(ds, SourceDataset)
    shas = [s.sha256 for s in sources]
    paths = [s.path for s in sources]
    extra = _optional_key(sources, ds, chosen_loss.code_sha256, registered)
    key = result_key(
        "probe",
        name,
        provider=provider_of(reg, "probe", name),
        train_subset=[len(ds.train), metas[0].seed],
        options=parsed,
        checkpoints=shas,
        dataset=ds.name,
        seed=seed,
        loss=chosen_loss.label,
        **extra,
    )
    rs = open_store(store)
    if rs is not None and not force:
        found = rs.find_probe(key)
        if found is not None:
            return found
    work = [copy.deepcopy(s.net).to(dev).eval() for s in sources]
    _check_probe_fits(
        sources, work[0], ds, chosen_loss.fn, chosen_loss.label, spec, parsed
    )
    ctx = ProbeContext(
        models=work,
        loss_fn=chosen_loss.fn,
        train_data=ds.train,
        test_data=ds.test,
        batch_size=batch_size,
        device=dev,
        seed=seed,
        progress=progress or _no_progress,
    )
    instance = reg.create("probe", name, parsed)
    if not isinstance(instance, Probe):
        msg = f"probe {name!r} factory returned {type(instance).__name__} without run()"
        raise PluginContractError(msg)
    start = time.perf_counter()
    with reg.guard("probe", name, "running"):
        outcome: object = instance.run(ctx)
    if not isinstance(outcome, ProbeResult):
        msg = f"probe {name!r} returned {type(outcome).__name__}, expected ProbeResult"
        raise PluginContractError(msg)
    result = dataclasses.replace(
        outcome,
        probe=name,
        seconds=outcome.seconds
        if outcome.seconds is not None
        else time.perf_counter() - start,
        attrs={**outcome.attrs, "key": key},
    )
    if rs is not None:
        attrs = {
            "probe": name,
            "checkpoint_sha256": shas,
            "checkpoint_path": paths,
            "model": metas[0].model or model_name,
            "dataset": ds.name,
            "loss": chosen_loss.label,
            **extra,
            "lr": [m.lr for m in metas],
            "batch_size": [m.batch_size for m in metas],
            "train_seed": [m.seed for m in metas],
            "seed": seed,
        }
        run_id = rs.write_run(
            kind="probe", attrs=run_attrs("probe", attrs), probes={name: result}
        )
        result = dataclasses.replace(result, attrs={**result.attrs, "run_id": run_id})
    return result


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
    if not isinstance(alpha, str):
        alpha = ",".join(repr(float(v)) for v in alpha)
    opts = {"alpha": alpha, "bn_reestimate": bn_reestimate}
    opts.update(kwargs.pop("options", None) or {})
    return probe("interpolate", [a, b], data, options=opts, **kwargs)


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
    loss_fn: Any,
    loss: str,
    spec: Any,
    parsed: Mapping[str, Any],
) -> None:
    """One line, not a traceback, when the data or the loss do not fit the models."""
    from sharpkit.api.wrappers import ExportedModel

    net = sources[0].net
    if isinstance(net, ExportedModel):
        opt = spec.option("bn_reestimate")
        reestimate = parsed.get("bn_reestimate", opt.default if opt else False)
        if reestimate and any(b.is_floating_point() for b in net.buffers()):
            off = "-o bn_reestimate=false" if in_cli() else "bn_reestimate=False"
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
        loss_fn,
        model_label=str(sources[0].path or type(net).__name__),
        data_label=repr(ds.name),
        expects=sources[0].expects(),
        loss_label=f"the loss {loss!r}",
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
