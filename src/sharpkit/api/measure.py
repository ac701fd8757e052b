"""``sharpkit.measure``: a model's sharpness metrics, reused from a store if there.

The steps, each its own function below: check the arguments, resolve the model
and the analysis data, compute a reuse key per metric, take what the store
already has, compute the rest in analysis mode (dropout off; batch norm in the
requested mode; the caller's model left exactly as it was), and write the new
results as one run.

Each metric runs on the model exactly as the previous one found it: its
parameters and buffers are saved before it and compared (bit for bit, and as the
same objects) after it. A metric that changed them is a broken plugin: its
result is discarded, the model is restored, and the metrics after it run on the
restored model, so what they return and store is what they would have given on
their own; the run ends with a :class:`~sharpkit.MeasurementError` naming it.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sharpkit._data import DataSplit, evaluate
from sharpkit._hints import arg
from sharpkit._meta import json_safe
from sharpkit.api.distributed import broadcast_names, rank_and_world
from sharpkit.api.fingerprint import code_digest, key_fields
from sharpkit.api.fit import check_fit
from sharpkit.api.isolation import ContextGuard, changed_context, check_result
from sharpkit.api.losses import resolve_loss
from sharpkit.api.provenance import (
    code_sha256,
    provider_of,
    result_key,
    run_attrs,
    split_sha256,
)
from sharpkit.api.resolve import (
    DEFAULT_SAMPLES,
    DataLike,
    ModelLike,
    ResolvedModel,
    StoreLike,
    as_split,
    check_finite,
    load_training_data,
    memory_bytes,
    open_store,
    prepare_model,
    recorded_data,
    resolve_data,
    resolve_device,
    resolve_dtype,
    resolve_model,
    reuse_datasets,
)
from sharpkit.errors import (
    ConfigError,
    DataError,
    MeasurementError,
    NumericalError,
    PluginContractError,
    SharpkitError,
    SharpkitWarning,
)
from sharpkit.interfaces import (
    AnalysisContext,
    Dataset,
    Metric,
    MetricResult,
    MetricSpec,
    ProgressCallback,
    _no_progress,
)
from sharpkit.registry import Registry, get_registry

if TYPE_CHECKING:
    import torch

    from sharpkit.store import ResultStore

__all__ = ["Measurement", "measure"]

# The run attributes that can change a metric's value: part of its reuse key.
_KEY_SETTINGS = (
    "checkpoint_sha256",
    "dataset",
    "split",
    "train_subset",
    "samples",
    "seed",
    "tol",
    "max_hvps",
    "bn_mode",
    "dtype",
    "loss",
)
# Recorded when they apply, and then part of the key: the hash of data not
# named by a registered dataset, and of the user's code (model, loss, data);
# TF32 products, when asked for.
_OPTIONAL_KEY_SETTINGS = ("data_sha256", "code_sha256", "tf32")


class Measurement(Mapping[str, MetricResult]):
    """The results of :func:`measure`: ``{metric name: MetricResult}`` plus provenance.

    Attributes:
        attrs: Provenance (checkpoint sha256/path, model, dataset, η, S, seed, ...).
        run_id: The id of the run written to the store, if one was written.
        reused: Names of metrics taken from the store instead of recomputed.
        warm_start: The top Hessian eigenvector a metric found (flat, on the
            CPU), to pass as ``warm_start`` when measuring a nearby model next
            (e.g. the same model a few steps later); ``None`` if none was found.
    """

    def __init__(
        self,
        results: Mapping[str, MetricResult],
        attrs: Mapping[str, Any],
        run_id: str | None = None,
        reused: Sequence[str] = (),
        warm_start: torch.Tensor | None = None,
    ) -> None:
        self._results = dict(results)
        self.attrs = dict(attrs)
        self.run_id = run_id
        self.reused = tuple(reused)
        self.warm_start = warm_start

    def __getitem__(self, key: str) -> MetricResult:
        return self._results[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._results)

    def __len__(self) -> int:
        return len(self._results)

    def __repr__(self) -> str:
        parts = ", ".join(
            f"{k}={v.value:.6g}" + (f"±{v.stderr:.2g}" if v.stderr is not None else "")
            for k, v in self._results.items()
        )
        return f"Measurement({parts})"

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-compatible dict (what ``--json`` prints)."""
        out: dict[str, Any] = {"attrs": json_safe(self.attrs), "run_id": self.run_id}
        out["metrics"] = {
            name: {
                "value": json_safe(r.value),
                "stderr": json_safe(r.stderr),
                "data_stderr": json_safe(r.data_stderr),
                "data_method": r.data_method,
                "bound": json_safe(r.bound),
                "converged": r.converged,
                "hvps": r.hvps,
                "seconds": json_safe(r.seconds),
                "reused": name in self.reused,
                "attrs": json_safe(dict(r.attrs)),
                "arrays": {
                    k: json_safe([float(x) for x in v.reshape(-1)])
                    for k, v in r.arrays.items()
                    if v.size <= 64
                },
            }
            for name, r in self._results.items()
        }
        return out


@reuse_datasets()
def measure(
    model: ModelLike,
    data: DataLike = None,
    metrics: str | Sequence[str] = ("spectral",),
    *,
    loss: Any = None,
    samples: int | None = None,
    split: str = "train",
    batch_size: int = 2048,
    seed: int = 0,
    tol: float = 1e-3,
    max_hvps: int | None = None,
    bn_mode: str = "eval",
    dtype: str | torch.dtype | None = None,
    device: str | torch.device | None = None,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    model_name: str | None = None,
    model_options: Mapping[str, Any] | None = None,
    data_options: Mapping[str, Any] | None = None,
    data_root: str | os.PathLike[str] | None = None,
    download: bool = False,
    progress: ProgressCallback | None = None,
    cache: dict[str, Any] | None = None,
    warm_start: torch.Tensor | None = None,
    store: StoreLike = None,
    force: bool = False,
    registry: Registry | None = None,
    memory_budget: int | str | None = None,
    tf32: bool = False,
) -> Measurement:
    """Measure the sharpness of a model's minimum.

    Examples:
        >>> import torch, sharpkit
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 3))
        >>> x, y = torch.randn(32, 4), torch.randint(0, 3, (32,))
        >>> m = sharpkit.measure(net, (x, y), metrics=["spectral"])
        >>> m["spectral"].converged
        True

    Args:
        model: A ``torch.nn.Module``; a checkpoint path (its metadata names the
            architecture; else give ``model_name``); a ``.pt2`` file from
            ``torch.export.save``; ``"hf:PATH"``, a Hugging Face
            ``save_pretrained`` folder; or ``"package.module:name"`` /
            ``"path/to/file.py:name"``, your code that returns the trained model.
        data: A registered dataset name; a tensor file (``.pt``, ``.npz``,
            ``.safetensors``), an image folder or ``"package.module:name"``
            (see "Measure your own model"); a :class:`~sharpkit.DataSplit`, an
            ``(inputs, targets)`` pair (inputs may be a dict of tensors for a
            Hugging Face model), a torch ``Dataset`` or a ``DataLoader``.
            ``None``: the dataset the checkpoint was trained on.
        metrics: Metric names (``sharpkit plugins`` lists them).
        loss: ``"cross-entropy"`` (the default), ``"mse"``, ``"bce-logits"``,
            ``"nll"``, ``"package.module:name"``, or any twice differentiable
            ``loss(outputs, targets) -> scalar`` that averages over the examples
            (``reduction="mean"``). A loss that sums over the batch is refused
            with a :class:`~sharpkit.ConfigError` (its Hessian would scale with
            ``batch_size``): it is detected by comparing its value on a batch
            with its values on the two halves of that batch.
        samples: Use the first ``samples`` examples of the data (default: 2048 for
            data named by a string, all of it for data given as objects).
        split: ``"train"`` or ``"test"``, for a dataset given by name.
        batch_size: Examples per forward pass. Batches are weighted by their
            size, so with batch norm in eval mode it does not change the value;
            where batch statistics are used (``bn_mode="train"``, or batch norm
            without running statistics) they depend on the batching, and so
            does the value. A ``DataLoader``'s own batches are not kept: its
            examples are collected and re-split into batches of ``batch_size``.
        seed: Seed for every random choice; results are reproducible from it.
        tol: Relative tolerance for iterative methods.
        max_hvps: Hessian-vector-product budget per metric.
        bn_mode: ``"eval"`` (running statistics, default) or ``"train"`` (batch
            statistics of each batch of ``batch_size`` examples: the Hessian of
            the loss as seen during training with that batch size). The
            caller's model, buffers included, is left unchanged either way.
        dtype: ``"float32"`` or ``"float64"`` (default: the model's).
        device: ``"cpu"``, ``"cuda"``, ... (default: where the model is, or CPU).
        options: ``{metric name: {option: value}}``.
        model_name: Architecture of a bare ``state_dict`` checkpoint: a
            registered name, ``"package.module:name"``,
            ``"path/to/file.py:name"`` or ``"hf:PATH"``.
        model_options: Options for that architecture (keyword arguments of
            your class or factory).
        data_options: Options of data named by a string: ``inputs``/``targets``
            keys of a tensor file, ``size``/``mean``/``std``/``channels`` of an
            image folder, ``num_classes``, or your data function's arguments.
        data_root: Where dataset files are looked for first.
        download: Let a named dataset download its files if missing.
        progress: Progress callback.
        cache: State shared by the metrics of this call (see
            :attr:`~sharpkit.AnalysisContext.cache`); a fresh dict by default.
        warm_start: A start vector for iterative eigensolvers, e.g. the
            ``warm_start`` of the measurement of a nearby model.
        store: A results store path: results are written there, and metrics already
            measured with the same checkpoint and settings are reused.
        force: Recompute even what the store already has.
        registry: The registry to use (default: the process-wide one).
        memory_budget: What sharpkit may keep between Hessian-vector products,
            in bytes or as ``"8GiB"``, ``"500MiB"``, ``"2GB"``: up to half for
            the kept gradient graph (batches beyond it are recomputed in every
            product), the rest for Lanczos bases (a float32 basis for float64
            vectors, else fewer steps, with a warning). Default: the graph may
            use a quarter of the RAM (half the free memory of a GPU) and bases
            are not limited.
        tf32: Let float32 products use TF32 (GPUs) and bf16 (oneDNN) kernels.
            Off by default: they carry ~1e-3 relative error per product, as
            much as the default tolerance.

    Under an initialised ``torch.distributed`` group of several processes
    (``torchrun``, ``sharpkit measure --nproc``), every rank must call
    :func:`measure` with the same arguments: the analysis set is sharded over
    the ranks, rank 0 alone reads and writes ``store``, and each rank returns
    the metrics it computed (rank 0 also those reused from the store).

    Returns:
        ``{metric name: MetricResult}`` with provenance in ``.attrs``.

    Raises:
        MeasurementError: A requested metric failed while others succeeded (or
            several failed): every metric is run, those that succeeded are
            returned in the error's ``measurement`` and written to the store,
            and ``failures`` holds each failure. A single requested metric that
            fails raises its own error.
        ConfigError: Bad arguments or options, or a loss that sums over the
            batch (all checked before anything is computed).
    """
    reg = registry or get_registry()
    names = _check_arguments(
        metrics, bn_mode, tol, max_hvps, samples, batch_size, options or {}
    )
    specs = {n: reg.get("metric", n) for n in names}  # unknown names fail early
    parsed = {n: reg.parse_options(specs[n], (options or {}).get(n, {})) for n in names}
    dev = resolve_device(device)
    want_dtype = resolve_dtype(dtype)
    budget = memory_bytes(memory_budget)
    chosen_loss = resolve_loss(loss)
    data = resolve_data(data, options=data_options, registry=reg, root=data_root)

    source = resolve_model(
        model,
        data=data,
        model_name=model_name,
        model_options=model_options,
        data_root=data_root,
        registry=reg,
    )
    check_finite(source.net, source.path or "the model")
    data_info = _analysis_data(
        data, source, split=split, samples=samples, root=data_root,
        download=download, registry=reg, options=data_options,
    )  # fmt: skip
    if want_dtype is None:
        want_dtype = next(source.net.parameters()).dtype
    work = prepare_model(source.net, dev, want_dtype)
    loss_fn = chosen_loss.fn
    attrs = _run_attributes(
        source, data_info, model_name=model_name, model_options=model_options,
        seed=seed, tol=tol,
        max_hvps=max_hvps, bn_mode=bn_mode, dtype=want_dtype, device=dev,
        loss=chosen_loss.label,
    )  # fmt: skip
    attrs["tf32"] = True if tf32 else None
    rank, world = rank_and_world()
    if world > 1:
        attrs["world_size"] = world
    attrs["code_sha256"] = code_sha256(
        source.code_sha256, chosen_loss.code_sha256, data_info.code_sha256
    )
    settings = {k: attrs[k] for k in _KEY_SETTINGS} | key_fields(
        work, loss_fn, data_info.analysis, batch_size=batch_size
    )
    settings.update(
        {k: attrs[k] for k in _OPTIONAL_KEY_SETTINGS if attrs.get(k) is not None}
    )
    keys = {
        n: result_key(
            "metric",
            n,
            options=parsed[n],
            provider=provider_of(reg, "metric", n),
            component_code=code_digest(specs[n].factory),
            **settings,
        )
        for n in names
    }
    rs = open_store(store) if rank == 0 else None  # rank 0 alone reads and writes
    results = _stored(rs, keys) if not force else {}
    reused = broadcast_names(list(results)) if world > 1 else list(results)
    todo = [n for n in names if n not in reused]
    failures: dict[str, SharpkitError] = {}
    if todo:
        created = {n: _create_metric(reg, n, parsed[n]) for n in todo}
        ctx = AnalysisContext(
            model=work,
            loss_fn=loss_fn,
            data=_on_device(data_info.analysis, dev, want_dtype),
            batch_size=batch_size,
            device=dev,
            dtype=want_dtype,
            seed=seed,
            bn_mode=bn_mode,
            tol=tol,
            max_hvps=max_hvps,
            progress=progress or _no_progress,
            train_data=data_info.train,
            cache=cache if cache is not None else {},
            warm_start=warm_start,
            memory_budget=budget,
            tf32=tf32,
        )

        def fits() -> None:
            _check_fits(ctx, source, data_info, chosen_loss.label)

        failures = _compute(reg, created, ctx, results, before=fits)
        vectors = ctx.eigenvectors
        if vectors is not None and vectors.ndim == 2 and vectors.shape[1]:
            warm_start = vectors[:, 0].detach().clone().cpu()
    ordered = {n: results[n] for n in names if n in results}
    new_names = [n for n in todo if n in results]
    run_id = None
    if rs is not None and new_names:
        new = {
            n: dataclasses.replace(
                ordered[n], attrs={**ordered[n].attrs, "key": keys[n]}
            )
            for n in new_names
        }
        run_id = rs.write_run(
            kind="measure",
            attrs=run_attrs("measure", attrs),
            metrics=new,
            metric_labels={n: _labels(specs[n]) for n in new_names},
        )
        ordered.update(new)
    out = Measurement(
        ordered, attrs, run_id=run_id, reused=reused, warm_start=warm_start
    )
    if failures:
        raise _failed(out, failures)
    return out


# --------------------------------------------------------------------------- steps


def _stored(rs: ResultStore | None, keys: Mapping[str, str]) -> dict[str, MetricResult]:
    """The metrics ``rs`` already holds, by name (none without a store)."""
    found: dict[str, MetricResult] = {}
    if rs is None:
        return found
    for name, key in keys.items():
        result = rs.find_metric(key)
        if result is not None:
            found[name] = result
    return found


def _check_arguments(
    metrics: str | Sequence[str],
    bn_mode: str,
    tol: float,
    max_hvps: int | None,
    samples: int | None,
    batch_size: int,
    options: Mapping[str, Any],
) -> list[str]:
    """Validate :func:`measure`'s plain arguments; return the metric names."""
    names = [metrics] if isinstance(metrics, str) else list(metrics)
    if not names:
        msg = "no metric requested; pass at least one, e.g. metrics=['spectral']"
        raise ConfigError(msg)
    if len(set(names)) != len(names):
        msg = f"metric listed twice in {names!r}"
        raise ConfigError(msg)
    if bn_mode not in ("eval", "train"):
        msg = f"bn_mode must be 'eval' or 'train', got {bn_mode!r}"
        raise ConfigError(msg)
    if not (0 < tol < 1):
        msg = f"tol must be in (0, 1), got {tol}"
        raise ConfigError(msg)
    for label, value in (
        ("max_hvps", max_hvps),
        ("samples", samples),
        ("batch_size", batch_size),
    ):
        if value is not None and value < 1:
            msg = f"{label} must be positive, got {value}"
            raise ConfigError(msg)
    unknown = [k for k in options if k not in names]
    if unknown:
        msg = f"options given for {unknown[0]!r}, which is not one of {names!r}"
        raise ConfigError(msg)
    return names


@dataclass(frozen=True, kw_only=True)
class _AnalysisData:
    """The analysis set, the training split (if known) and how they were chosen."""

    analysis: DataSplit
    train: DataSplit | None = None
    dataset: str | None = None
    split: str | None = None
    train_subset: int | None = None
    registered: bool = False
    code_sha256: str | None = None

    def sha256(self) -> str | None:
        """The analysis set's hash, for data not named by a registered dataset."""
        return None if self.registered else split_sha256(self.analysis)


def _analysis_data(
    data: DataLike,
    source: ResolvedModel,
    *,
    split: str,
    samples: int | None,
    root: str | os.PathLike[str] | None,
    download: bool,
    registry: Registry,
    options: Mapping[str, Any] | None = None,
) -> _AnalysisData:
    """Return the analysis set that ``data`` names for the model in ``source``."""
    meta = source.meta
    if data is None:
        data = resolve_data(
            recorded_data(meta), options=options, registry=registry, root=root
        )
    name = data if isinstance(data, str) else None
    if data is None:
        msg = (
            "no data given and the model does not name its dataset; pass "
            f"{arg('data', '--data')}"
        )
        raise ConfigError(msg)
    if name is not None:
        if split not in ("train", "test"):
            msg = f"split must be 'train' or 'test', got {split!r}"
            raise ConfigError(msg)
        ds, train_subset = load_training_data(
            name, meta, root=root, download=download, registry=registry,
            with_subset=split == "train", options=options,
        )  # fmt: skip
        out = _AnalysisData(
            analysis=(ds.train if split == "train" else ds.test).head(
                samples or DEFAULT_SAMPLES
            ),
            train=ds.train,
            dataset=name,
            split=split,
            train_subset=train_subset,
            registered=True,
        )
    elif isinstance(data, Dataset):
        _warn_if_not_the_training_subset(data, source, split)
        if split == "test" and not getattr(data, "has_test", True):
            msg = (
                f"{data.name!r} holds no test split (x_test/y_test, or a test/ "
                f"folder); measure on {arg('split', '--split', 'train')}"
            )
            raise ConfigError(msg)
        out = _AnalysisData(
            analysis=(data.train if split == "train" else data.test).head(
                samples or DEFAULT_SAMPLES
            ),
            train=data.train,
            dataset=data.name,
            split=split,
            code_sha256=getattr(data, "code_sha256", None),
        )
    else:
        out = _AnalysisData(analysis=as_split(data, samples))
    if len(out.analysis) == 0:
        msg = "the analysis data is empty"
        raise DataError(msg)
    if samples is not None and samples > len(out.analysis):
        n = len(out.analysis)
        warnings.warn(
            f"{arg('samples', '--samples')} {samples} asks for {samples} examples, "
            f"but the analysis data has {n}: all {n} are used",
            SharpkitWarning,
            stacklevel=4,
        )
    return out


def _warn_if_not_the_training_subset(
    data: Dataset, source: ResolvedModel, split: str
) -> None:
    trained_on = source.meta.dataset_options.get("subset")
    if (
        split == "train"
        and trained_on is not None
        and data.name == source.meta.dataset
        and len(data.train) != int(trained_on)
    ):
        warnings.warn(
            f"the model was trained on a {trained_on}-example subset of "
            f"{data.name!r}, but the analysis set comes from the dataset "
            f"passed in ({len(data.train)} training examples); pass data=None "
            "to measure on the training subset",
            SharpkitWarning,
            stacklevel=4,
        )


def _run_attributes(
    source: ResolvedModel,
    data: _AnalysisData,
    *,
    model_name: str | None,
    model_options: Mapping[str, Any] | None,
    seed: int,
    tol: float,
    max_hvps: int | None,
    bn_mode: str,
    dtype: torch.dtype,
    device: torch.device,
    loss: str,
) -> dict[str, Any]:
    """Return the provenance of a measurement (what its stored run records)."""
    meta = source.meta
    return {
        **source.attrs(),
        "model": meta.model or model_name or type(source.net).__name__,
        "model_options": {**meta.model_options, **(model_options or {})},
        "dataset": data.dataset,
        "split": data.split,
        "train_subset": data.train_subset,
        "samples": len(data.analysis),
        "lr": meta.lr,
        "batch_size": meta.batch_size,
        "momentum": meta.momentum,
        "train_seed": meta.seed,
        "epoch": meta.epoch,
        "seed": seed,
        "tol": tol,
        "max_hvps": max_hvps,
        "bn_mode": bn_mode,
        "dtype": str(dtype).removeprefix("torch."),
        "device": str(device),
        "loss": loss,
        "data_sha256": data.sha256(),
        "final": dict(meta.final),
    }


def _on_device(split: DataSplit, device: torch.device, dtype: torch.dtype) -> DataSplit:
    """``split`` on ``device``, floating inputs in ``dtype`` (integer ones kept)."""
    x = split.inputs
    x = x.to(device, dtype) if x.is_floating_point() else x.to(device)
    return DataSplit(x, split.targets.to(device), input_names=split.input_names)


def _check_fits(
    ctx: AnalysisContext, source: ResolvedModel, data: _AnalysisData, loss: str
) -> None:
    """One line, not a traceback, when the data or the loss do not fit the model."""
    from sharpkit.api.wrappers import ExportedModel

    model = ctx.model
    exported = isinstance(model, ExportedModel)
    if isinstance(model, ExportedModel) and (
        ctx.bn_mode != "eval" or model.training_ops
    ):
        module = arg("model_name", "--model", "package.module:Class")
        if model.training_ops:
            msg = (
                f"the exported program {source.path!r} runs "
                f"{', '.join(model.training_ops)} in training mode; export it "
                f"after model.eval(), or give the module itself ({module})"
            )
        else:
            msg = (
                f"the exported program {source.path!r} fixed its batch norm in "
                f"eval mode when it was exported; for {arg('bn_mode', '--bn-mode')}"
                f" train give the module itself ({module} and a state_dict)"
            )
        raise ConfigError(msg)
    name = source.path or source.meta.model or type(source.net).__name__
    check_fit(
        ctx.model,
        ctx.data,
        ctx.loss_fn,
        model_label=str(name),
        data_label=repr(data.dataset) if data.dataset else "the data",
        expects=source.expects(),
        loss_label=f"the loss {loss!r}",
        second_order=exported,
    )


def _labels(spec: MetricSpec) -> dict[str, str]:
    """The long name and unit a stored metric carries, from its spec."""
    return {"long_name": spec.long_name or spec.name, "units": spec.unit}


def _check_loss(ctx: AnalysisContext) -> None:
    """Check the loss is a finite scalar on the analysis set; cache its value."""
    loss, _ = evaluate(ctx.model, ctx.data, ctx.loss_fn, batch_size=ctx.batch_size)
    if not math.isfinite(loss):
        msg = (
            "the loss is not finite on the analysis data; check the "
            "checkpoint, the data normalisation and the loss function"
        )
        raise DataError(msg)
    ctx.cache.setdefault("loss", loss)
    _check_reduction(ctx)


def _check_reduction(ctx: AnalysisContext) -> None:
    """Refuse a loss that sums over the batch instead of averaging.

    On one batch of outputs (computed once, so batch statistics play no part),
    a mean loss equals the size-weighted mean of its values on the two halves;
    a summed one equals their sum. A weighted mean (class weights,
    ``ignore_index``) is neither, and is accepted.
    """
    import torch

    n = min(len(ctx.data), ctx.batch_size, 128)  # a few examples tell
    if n < 2:
        return
    x, y = next(ctx.data.batches(n))
    with torch.no_grad():
        out = ctx.model(x)
        if not (isinstance(out, torch.Tensor) and isinstance(y, torch.Tensor)):
            return
        k = n // 2
        try:
            whole, a, b = (
                float(ctx.loss_fn(out[s], y[s]))
                for s in (slice(None), slice(0, k), slice(k, n))
            )
        except (RuntimeError, ValueError, IndexError):
            return  # the loss does not take a part of the batch: nothing to say
    scale = abs(whole) + abs(a) + abs(b)
    if not (math.isfinite(scale) and scale > 0):
        return
    as_sum = abs(whole - (a + b)) <= 1e-4 * scale  # float32 rounding: ~1e-7
    as_mean = abs(whole - (k * a + (n - k) * b) / n) <= 1e-4 * scale
    if as_sum and not as_mean:
        msg = (
            f"the loss sums over the batch (on {n} examples it equals the sum of "
            "its values on the two halves), so every value would scale with "
            "batch_size; pass a loss with reduction='mean'"
        )
        raise ConfigError(msg)
    if not (as_sum or as_mean) and len(ctx.data) > ctx.batch_size:
        _check_weighted(ctx)


def _check_weighted(ctx: AnalysisContext) -> None:
    """Refuse a weighted-mean loss whose weights the batches cannot be given.

    Its value on the whole data is ``Σ wᵢℓᵢ / Σ wᵢ``; batches must enter with
    their ``Σ wᵢ``, which :func:`sharpkit._data.loss_weight` knows for torch's
    cross-entropy and NLL losses and for a loss with a ``batch_weight`` method.
    """
    from sharpkit._data import knows_weights

    if knows_weights(ctx.loss_fn):
        return
    msg = (
        "the loss is a weighted mean (on one batch it is neither the mean nor "
        "the sum of its values on the two halves), so batches of "
        f"{ctx.batch_size} cannot be combined into the whole data's loss; give "
        "the loss a batch_weight(targets) method returning the sum of the "
        f"weights it divides by, or use batch_size >= {len(ctx.data)}"
    )
    raise ConfigError(msg)


def _compute(
    reg: Registry,
    metrics: Mapping[str, Metric],
    ctx: AnalysisContext,
    results: dict[str, MetricResult],
    *,
    before: Callable[[], None] | None = None,
) -> dict[str, SharpkitError]:
    """Run every metric in analysis mode; add results, return the failures.

    ``before`` runs first, in analysis mode (checks that the data fit the
    model). A metric that raises a :class:`SharpkitError` (plugin exceptions
    become :class:`~sharpkit.PluginLoadError` in ``Registry.guard``) is recorded
    and the next one runs. So is a metric that changed the model's parameters
    or buffers: its result is dropped and the model restored bit for bit (see
    :class:`_StateGuard`) before the next metric runs. Across processes an
    error ends the call instead: a rank that went on alone would wait forever
    for the others.
    """
    from sharpkit.curvature.operator import analysis_mode, full_precision

    alone = rank_and_world()[1] == 1
    failures: dict[str, SharpkitError] = {}
    with (
        analysis_mode(ctx.model, ctx.bn_mode, fuse_bn=False),
        full_precision(not ctx.tf32),
    ):
        if before is not None:
            before()
        _check_loss(ctx)
        for name, metric in metrics.items():
            guard, isolated = _StateGuard(ctx), ContextGuard(ctx)
            try:
                results[name] = _run_metric(reg, name, metric, ctx)
            except SharpkitError as exc:
                if not alone:
                    raise
                failures[name] = exc
            changed, other = guard.restore(), isolated.restore()
            if changed or other:
                results.pop(name, None)
                failures.setdefault(
                    name,
                    _changed_model(name, changed)
                    if changed
                    else changed_context(name, other),
                )
    return failures


def _changed_model(name: str, changed: Sequence[str]) -> PluginContractError:
    what = ", ".join(repr(c) for c in changed[:2])
    more = f" and {len(changed) - 2} more" if len(changed) > 2 else ""
    msg = (
        f"metric {name!r} changed the model in place ({what}{more}); its result "
        "was discarded and the model restored for the metrics after it (a metric "
        "must leave parameters and buffers as it found them: work on a copy)"
    )
    return PluginContractError(msg)


class _StateGuard:
    """The model's parameters and buffers before one metric, restored after it.

    Every tensor is kept as the object it was and as a copy of its bits, so a
    metric that changed values in place, replaced a tensor, or converted the
    model (``.double()``) is found and undone exactly. The context's shared
    state (cache, eigenvectors, the Hessian operator) is reset with it, since
    whatever the metric left there was computed on the changed model.
    """

    def __init__(self, ctx: AnalysisContext) -> None:
        self._ctx = ctx
        self._saved = [
            (module, table, attr, tensor, tensor.detach().clone(), f"{prefix}{attr}")
            for prefix, module in (
                (f"{n}." if n else "", m) for n, m in ctx.model.named_modules()
            )
            for table in ("_parameters", "_buffers")
            for attr, tensor in getattr(module, table).items()
            if tensor is not None
        ]
        self._cache = dict(ctx.cache)
        self._eigenvectors = ctx.eigenvectors

    def restore(self) -> list[str]:
        """Undo every change; return the names of the tensors that had changed."""
        import torch

        changed = []
        with torch.no_grad():
            for module, table, attr, tensor, saved, qualname in self._saved:
                now = getattr(module, table).get(attr)
                if now is tensor and _same_bits(tensor, saved):
                    continue
                changed.append(qualname)
                getattr(module, table)[attr] = tensor
                if (tensor.dtype, tensor.shape, tensor.device) == (
                    saved.dtype,
                    saved.shape,
                    saved.device,
                ):
                    tensor.copy_(saved)
                else:
                    tensor.data = saved.clone()
        if changed:
            self._ctx.cache.clear()
            self._ctx.cache.update(self._cache)
            self._ctx.eigenvectors = self._eigenvectors
            self._ctx._hessian = None
        return changed


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether two tensors have the same dtype, shape, device and bytes."""
    import torch

    if a.dtype != b.dtype or a.shape != b.shape or a.device != b.device:
        return False
    as_bytes = [t.detach().reshape(-1).contiguous().view(torch.uint8) for t in (a, b)]
    return bool(torch.equal(*as_bytes))


def _failed(
    measurement: Measurement, failures: Mapping[str, SharpkitError]
) -> SharpkitError:
    """The error to raise when metrics failed (see :func:`measure`'s Raises)."""
    if len(failures) == 1 and not len(measurement):
        return next(iter(failures.values()))
    names = ", ".join(repr(n) for n in failures)
    why = "; ".join(f"{n}: {' '.join(str(e).split())}" for n, e in failures.items())
    if len(measurement):
        done = ", ".join(measurement)
        verb = "was" if len(measurement) == 1 else "were"
        where = f" and stored in run {measurement.run_id}" if measurement.run_id else ""
        rest = f"{done} {verb} measured{where}"
    else:
        rest = "nothing was measured"
    noun = "metric" if len(failures) == 1 else "metrics"
    msg = f"{noun} {names} failed ({why}); {rest}"
    return MeasurementError(msg, measurement=measurement, failures=failures)


def _create_metric(reg: Registry, name: str, options: Mapping[str, Any]) -> Metric:
    """Create one metric (before anything is computed: bad options fail fast)."""
    metric = reg.create("metric", name, options)
    if not isinstance(metric, Metric):
        got = type(metric).__name__
        msg = f"metric {name!r} factory returned {got} without compute()"
        raise PluginContractError(msg)
    return metric


def _run_metric(
    reg: Registry, name: str, metric: Metric, ctx: AnalysisContext
) -> MetricResult:
    """Run one metric; fill in its name, products and time."""
    hvps_before = ctx._hessian.hvp_count if ctx._hessian is not None else 0
    estimate = getattr(metric, "estimated_hvps", None)
    n_est = 0
    if callable(estimate):
        with reg.guard("metric", name, "estimating its cost"):
            n_est = int(estimate(ctx) or 0)
    outer = ctx.progress
    if n_est:
        outer(0, float(n_est), description=f"{name} (≈{n_est} HVPs)")
        ctx.progress = _CostAnnouncer(ctx, outer, name, n_est)
    else:
        outer(0, None, description=name)
    start = time.perf_counter()
    try:
        with reg.guard("metric", name, "computing"):
            result: object = metric.compute(ctx)
    finally:
        ctx.progress = outer
    seconds = time.perf_counter() - start
    if not isinstance(result, MetricResult):
        msg = f"metric {name!r} returned {type(result).__name__}, expected MetricResult"
        raise PluginContractError(msg)
    result = _numbers(name, result)
    check_result(name, result)
    if not math.isfinite(result.value):
        msg = f"metric {name!r} returned a non-finite value ({result.value})"
        raise NumericalError(msg)
    if reg.get("metric", name).stochastic and result.stderr is None:
        warnings.warn(
            f"metric {name!r} is stochastic but reported no standard error",
            stacklevel=2,
        )
    hvps_after = ctx._hessian.hvp_count if ctx._hessian is not None else 0
    return dataclasses.replace(
        result,
        metric=name,
        hvps=result.hvps if result.hvps is not None else hvps_after - hvps_before,
        seconds=result.seconds if result.seconds is not None else seconds,
    )


def _numbers(name: str, result: MetricResult) -> MetricResult:
    """``result`` with ``value``, ``stderr`` and ``bound`` as floats, or an error.

    Raises:
        PluginContractError: One of them is not a real number (text, a
            collection, ``True``/``False``).
    """
    fields: dict[str, float | None] = {}
    for field in ("value", "stderr", "bound"):
        given = getattr(result, field)
        if given is None and field != "value":
            fields[field] = None
            continue
        try:
            if isinstance(given, str | bytes | bool) or not (
                isinstance(given, numbers.Real) or hasattr(given, "__float__")
            ):
                raise TypeError(field)
            fields[field] = float(given)
        except (TypeError, ValueError, RuntimeError):
            msg = (
                f"metric {name!r} returned {field} {given!r} "
                f"({type(given).__name__}); a MetricResult's {field} must be a "
                "real number"
            )
            raise PluginContractError(msg) from None
    value = fields["value"]
    assert value is not None  # checked above: a value of None is refused
    return dataclasses.replace(
        result, value=value, stderr=fields["stderr"], bound=fields["bound"]
    )


class _CostAnnouncer:
    """Progress wrapper that adds the time estimate once a product has been timed.

    The estimate is ``estimated_hvps × seconds per product``, shown in the task
    description as soon as the metric's first product is done; no product is
    spent on timing alone.
    """

    def __init__(
        self, ctx: AnalysisContext, outer: ProgressCallback, name: str, n_est: int
    ) -> None:
        self._ctx = ctx
        self._outer = outer
        self._name = name
        self._n_est = n_est
        self._announced = False

    def __call__(
        self,
        completed: float,
        total: float | None = None,
        /,
        *,
        description: str | None = None,
        **info: Any,
    ) -> None:
        op = self._ctx._hessian
        if not self._announced and description is None and op is not None:
            per = op.mean_hvp_seconds
            if per is not None:
                self._announced = True
                secs = self._n_est * per
                description = (
                    f"{self._name} (≈{self._n_est} HVPs, ≈{_fmt_seconds(secs)})"
                )
        self._outer(completed, total, description=description, **info)


def _fmt_seconds(secs: float) -> str:
    if secs < 60:
        return f"{secs:.1f} s"
    if secs < 3600:
        return f"{secs / 60:.1f} min"
    return f"{secs / 3600:.1f} h"
