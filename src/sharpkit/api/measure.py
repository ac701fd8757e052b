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
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from sharpkit._data import DataSplit
from sharpkit._fs import is_interrupt
from sharpkit._meta import json_safe
from sharpkit.api.checks import check_fits, check_loss, run_metric
from sharpkit.api.distributed import broadcast_names, rank_and_world
from sharpkit.api.executor import Executor, PluginCall
from sharpkit.api.fingerprint import code_digest, key_fields
from sharpkit.api.job import (
    Analysis,
    AnalysisData,
    Inputs,
    Job,
    Selection,
    analysis_data,
    resolve,
)
from sharpkit.api.models import ResolvedModel, check_finite, prepare_model
from sharpkit.api.provenance import code_sha256
from sharpkit.api.resolve import (
    DataLike,
    ModelLike,
    StoreLike,
    memory_bytes,
    open_store,
    resolve_dtype,
    reuse_datasets,
)
from sharpkit.errors import MeasurementError, SharpkitError, note_kept
from sharpkit.interfaces import (
    AnalysisContext,
    Metric,
    MetricResult,
    MetricSpec,
    ProgressCallback,
    no_progress,
)
from sharpkit.registry import Registry, get_registry

if TYPE_CHECKING:
    import torch

    from sharpkit.api.precision import Budget, Plan
    from sharpkit.curvature.blocks import BlockSpec

__all__ = ["Measurement", "measure", "run_measure"]

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
# TF32 products, when asked for; a random selection's seed and the digest of
# the indices it drew.
_OPTIONAL_KEY_SETTINGS = (
    "data_sha256",
    "code_sha256",
    "tf32",
    "sample_seed",
    "sample_sha256",
)


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
    samples: int | str | None = None,
    sample: str = "first",
    precision: float | None = None,
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
    blocks: BlockSpec | None = None,
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
        samples: Measure on ``samples`` examples of the data (default: 2048 for
            data named by a string, all of it for data given as objects;
            ``"all"``: the whole split, its kept graph within
            ``memory_budget``).
        sample: Which ones: ``"first"`` (the first ``samples``, the same for
            every model: differences between models are not sampling noise) or
            ``"random"`` (a uniform subset drawn from ``seed``, stratified by
            class where the targets are class indices: what the data's error
            bar is about). The selection is part of the reuse key.
        precision: The relative data standard error wanted, e.g. ``0.02``:
            the metrics that can report one (a ``data_error`` option:
            spectral, frobenius, trace, density, adaptive) are asked for it
            (``data_error``), and if it is larger the model is measured again
            on the sample count that reaches it (``stderr ∝ 1/√N``,
            :func:`~sharpkit.curvature.sampling.samples_for_precision`); what
            was chosen and why is in ``attrs["precision_note"]``. Refused with
            a :class:`~sharpkit.ConfigError` when that count exceeds the split.
            With ``max_hvps``, each metric's products over all the
            measurements stay within it: a measurement that would not fit is
            not made, and a :class:`~sharpkit.ConvergenceWarning` says the
            precision reached (the result is returned).
        split: ``"train"`` or ``"test"``, for a dataset given by name.
        batch_size: Examples per forward pass. Batches are weighted by their
            size, so with batch norm in eval mode it does not change the value;
            where batch statistics are used (``bn_mode="train"``, or batch norm
            without running statistics) they depend on the batching, and so
            does the value. A ``DataLoader``'s own batches are not kept: its
            examples are collected and re-split into batches of ``batch_size``.
        seed: Seed for every random choice; results are reproducible from it.
        tol: Relative tolerance for iterative methods.
        max_hvps: Hessian-vector-product budget per metric (with
            ``precision``: over all its measurements together).
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
        blocks: Also measure ``spectral``, ``trace`` and ``frobenius`` per
            block of parameters: ``"layers"``, ``"depth=N"``, ``"NAME=REGEX"``
            strings, or a mapping ``name -> [parameter names]`` (see "Where is
            the sharpness?" in the docs); the values per block are arrays of
            each result along a ``block`` dimension.

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
    inputs = Inputs(
        data=data, data_options=data_options, data_root=data_root,
        download=download, model_name=model_name, model_options=model_options,
        loss=loss, seed=seed, device=device, store=store, force=force,
    )  # fmt: skip
    analysis = Analysis(
        selection=Selection(samples=samples, split=split, sample=sample, seed=seed),
        batch_size=batch_size, tol=tol, max_hvps=max_hvps, bn_mode=bn_mode,
        dtype=dtype, memory_budget=memory_budget, tf32=tf32, precision=precision,
    )  # fmt: skip
    return run_measure(
        model, metrics, inputs, analysis, options=options, progress=progress,
        cache=cache, warm_start=warm_start, registry=registry, blocks=blocks,
    )  # fmt: skip


def run_measure(
    model: ModelLike,
    metrics: str | Sequence[str],
    inputs: Inputs,
    analysis: Analysis,
    *,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    progress: ProgressCallback | None = None,
    cache: dict[str, Any] | None = None,
    warm_start: torch.Tensor | None = None,
    registry: Registry | None = None,
    blocks: BlockSpec | None = None,
) -> Measurement:
    """:func:`measure` with its inputs and analysis options as typed values."""
    reg = registry or get_registry()
    names = analysis.metric_names(metrics, options or {})
    if blocks is not None:  # torch only when asked: `import sharpkit` stays light
        from sharpkit.api.blocks import check_block_metrics

        check_block_metrics(blocks, names)
    run = _measure_once if analysis.precision is None else _to_precision
    return run(
        model, names, inputs, analysis, options=options, progress=progress,
        cache=cache, warm_start=warm_start, registry=reg, blocks=blocks,
    )  # fmt: skip


def _to_precision(
    model: ModelLike,
    names: list[str],
    inputs: Inputs,
    analysis: Analysis,
    *,
    registry: Registry,
    options: Mapping[str, Mapping[str, Any]] | None,
    **rest: Any,
) -> Measurement:
    """Measure, then again on more samples until ``analysis.precision`` is met.

    Each measurement goes through :func:`_measure_once` (and so the store);
    the last is returned, with what was chosen and why in
    ``attrs["precision_note"]`` (see :mod:`sharpkit.api.precision`), each
    metric's products over all measurements in ``attrs["precision_hvps"]``,
    and how it ended (``"met"``, ``"max_hvps"``, ``"rounds"``) in
    ``attrs["precision_stop"]``. ``max_hvps`` bounds each metric's products
    over all the measurements: a measurement that would not fit is not made,
    and a :class:`~sharpkit.ConvergenceWarning` says the precision reached.
    """
    from sharpkit.api.precision import MAX_ROUNDS, Budget, data_error_options, plan

    assert analysis.precision is not None
    opts = data_error_options(names, options, registry)
    how = dataclasses.replace(analysis, precision=None)
    budget = Budget(analysis.max_hvps)
    steps: list[Plan] = []
    asked: int | None = None
    stopped: str | None = None
    for round_ in range(1, MAX_ROUNDS + 1):
        out = _measure_once(
            model, names, inputs, how, options=opts, registry=registry, **rest
        )
        budget.add(out)
        got = int(out.attrs["samples"])
        # data given as objects: the split's size is known once it fell short
        short: int | None = got if asked is not None and got < asked else None
        step = plan(
            out, samples=got, population=out.attrs.get("population") or short,
            precision=analysis.precision, last_round=round_ == MAX_ROUNDS,
        )  # fmt: skip
        if step.samples is not None and (stopped := budget.short(step.samples)):
            step = dataclasses.replace(step, samples=None)
        steps.append(step)
        if step.samples is None:
            break
        asked = step.samples
        # the same model on other examples: start where the last one ended,
        # with a fresh cache (what it holds was computed on those examples)
        rest["cache"] = None
        if out.warm_start is not None:
            rest["warm_start"] = out.warm_start
        how = dataclasses.replace(
            how, max_hvps=budget.cap(),
            selection=dataclasses.replace(how.selection, samples=step.samples),
        )  # fmt: skip
    return _precision_end(out, steps, analysis.precision, budget, stopped)


def _precision_end(
    out: Measurement,
    steps: Sequence[Plan],
    precision: float,
    budget: Budget,
    stopped: str | None,
) -> Measurement:
    """Say how the precision loop ended, in ``out.attrs`` (and a warning)."""
    import warnings

    from sharpkit.api.precision import note
    from sharpkit.errors import ConvergenceWarning

    line = note(steps, precision, stopped)
    met = steps[-1].relative <= precision
    out.attrs["precision_note"] = line
    out.attrs["precision_hvps"] = dict(budget.spent)
    out.attrs["precision_stop"] = (
        "met" if met else "max_hvps" if stopped is not None else "rounds"
    )
    if not met and stopped is not None:
        warnings.warn(line, ConvergenceWarning, stacklevel=5)
    return out


def _measure_once(
    model: ModelLike,
    names: list[str],
    inputs: Inputs,
    analysis: Analysis,
    *,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    progress: ProgressCallback | None = None,
    cache: dict[str, Any] | None = None,
    warm_start: torch.Tensor | None = None,
    registry: Registry,
    blocks: BlockSpec | None = None,
) -> Measurement:
    """One measurement on the selected samples (the steps of :func:`measure`)."""
    reg = registry
    ex = Executor(reg, force=inputs.force)
    calls = {n: ex.call("metric", n, (options or {}).get(n)) for n in names}
    want_dtype = resolve_dtype(analysis.dtype)
    budget = memory_bytes(analysis.memory_budget)
    job = resolve(inputs, reg, limit=analysis.selection.read_limit())
    source = job.model(model)
    check_finite(source.net, source.path or "the model")
    data_info = analysis_data(job, source, analysis.selection)
    if want_dtype is None:
        want_dtype = next(source.net.parameters()).dtype
    attrs = _run_attributes(job, source, data_info, analysis, want_dtype)
    work = prepare_model(source.net, job.device, want_dtype)
    # what decides a value: settings, the analysis set as used, what the model
    # and loss compute, and the metric's own code (see api/fingerprint.py)
    settings = _key_settings(attrs) | key_fields(
        work, job.loss.fn, data_info.analysis, batch_size=analysis.batch_size
    )
    if blocks is not None:  # checked before any work; a key of its own
        from sharpkit.api.blocks import spec_key
        from sharpkit.api.wrappers import unwrap
        from sharpkit.curvature.blocks import resolve_blocks

        resolve_blocks(unwrap(work), blocks)  # named as the user's model names them
        settings["blocks"] = spec_key(blocks)
    keys = {
        n: ex.key(
            calls[n], component_code=code_digest(calls[n].spec.factory), **settings
        )
        for n in names
    }
    ex.store = open_store(inputs.store) if rank_and_world()[0] == 0 else None
    results, reused = _stored(ex, calls, keys)
    todo = [n for n in names if n not in reused]
    failures: dict[str, SharpkitError] = {}
    if todo:
        created = {n: ex.create(calls[n]) for n in todo}
        ctx = AnalysisContext(
            model=work,
            loss_fn=job.loss.fn,
            data=_on_device(data_info.analysis, job.device, want_dtype),
            batch_size=analysis.batch_size, device=job.device, dtype=want_dtype,
            seed=inputs.seed, bn_mode=analysis.bn_mode, tol=analysis.tol,
            max_hvps=analysis.max_hvps, progress=progress or no_progress,
            train_data=data_info.train, cache=cache if cache is not None else {},
            heldout_data=None if data_info.heldout is None
            else _on_device(data_info.heldout, job.device, want_dtype),
            warm_start=warm_start, memory_budget=budget, tf32=analysis.tf32,
        )  # fmt: skip

        def fits() -> None:
            check_fits(ctx, source, data_info, job.loss.label)

        with _keep_finished(ex, todo, calls, results, keys, attrs, blocks):
            failures = _compute(ex, calls, created, ctx, results, before=fits)
        if blocks is not None:
            from sharpkit.api.blocks import run_blocks

            run_blocks(results, todo, ctx, blocks)
        warm_start = _top_vector(ctx, warm_start)
    ordered = {n: results[n] for n in names if n in results}
    new = {n: calls[n] for n in todo if n in results}
    run_id = _write(ex, ordered, new, keys, attrs)
    out = Measurement(
        ordered, attrs, run_id=run_id, reused=reused, warm_start=warm_start
    )
    if failures:
        raise _failed(out, failures)
    return out


# --------------------------------------------------------------------------- steps


def _stored(
    ex: Executor, calls: Mapping[str, PluginCall], keys: Mapping[str, str]
) -> tuple[dict[str, MetricResult], list[str]]:
    """What the store holds (rank 0 reads it), and its names, known to every rank."""
    found: dict[str, MetricResult] = {}
    for name, call in calls.items():
        result = ex.stored(call, keys[name])
        if result is not None:
            found[name] = result
    world = rank_and_world()[1]
    return found, broadcast_names(list(found)) if world > 1 else list(found)


def _write(
    ex: Executor,
    ordered: dict[str, MetricResult],
    new: Mapping[str, PluginCall],
    keys: Mapping[str, str],
    attrs: Mapping[str, Any],
) -> str | None:
    """Write the metrics computed now as one run; add their keys to ``ordered``."""
    if ex.store is None or not new:
        return None
    done = {
        n: dataclasses.replace(ordered[n], attrs={**ordered[n].attrs, "key": keys[n]})
        for n in new
    }
    ordered.update(done)
    return ex.write(
        "measure",
        attrs,
        metrics=done,
        metric_labels={n: _labels(call.spec) for n, call in new.items()},
    )


@contextmanager
def _keep_finished(
    ex: Executor,
    todo: Sequence[str],
    calls: Mapping[str, PluginCall],
    results: dict[str, MetricResult],
    keys: Mapping[str, str],
    attrs: Mapping[str, Any],
    blocks: Any,
) -> Iterator[None]:
    """On Ctrl-C or a signal while the metrics run, store those that finished.

    Each finished metric's result is whole (a metric returns it only when
    done); the one that was running returned nothing, so nothing of it is
    stored. The interruption goes on, with a note of what was stored (see
    :func:`~sharpkit.errors.note_kept`). Not across processes (every rank
    would have to agree what finished), nor with ``blocks`` (the values per
    block are computed after every metric: a result without them would be
    stored under a key that promises them).
    """
    try:
        yield
    except BaseException as exc:
        done = [n for n in todo if n in results]
        if is_interrupt(exc) and done and blocks is None and rank_and_world()[1] == 1:
            running = next((n for n in todo if n not in results), None)
            ordered = {n: results[n] for n in done}
            run_id = _write(ex, ordered, {n: calls[n] for n in done}, keys, attrs)
            names = ", ".join(repr(n) for n in done)
            verb = "was" if len(done) == 1 else "were"
            kept = f"{names} {verb} measured" + (
                f" and stored in run {run_id}" if run_id else " (no store to keep it)"
            )
            if running is not None:
                kept += f"; nothing of {running!r}, which was running, was stored"
            note_kept(exc, kept)
        raise


def _key_settings(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """The run attributes that are part of every metric's reuse key."""
    settings = {k: attrs[k] for k in _KEY_SETTINGS}
    settings.update(
        {k: attrs[k] for k in _OPTIONAL_KEY_SETTINGS if attrs.get(k) is not None}
    )
    return settings


def _top_vector(
    ctx: AnalysisContext, default: torch.Tensor | None
) -> torch.Tensor | None:
    """The top eigenvector the metrics found (flat, on the CPU), else ``default``."""
    vectors = ctx.eigenvectors
    if vectors is not None and vectors.ndim == 2 and vectors.shape[1]:
        return vectors[:, 0].detach().clone().cpu()
    return default


def _run_attributes(
    job: Job,
    source: ResolvedModel,
    data: AnalysisData,
    analysis: Analysis,
    dtype: torch.dtype,
) -> dict[str, Any]:
    """Return the provenance of a measurement (what its stored run records)."""
    meta, inputs = source.meta, job.inputs
    attrs: dict[str, Any] = {
        **source.attrs(),
        "model": meta.model or inputs.model_name or type(source.net).__name__,
        "model_options": {**meta.model_options, **(inputs.model_options or {})},
        "dataset": data.dataset,
        "split": data.split,
        "train_subset": data.train_subset,
        "samples": len(data.analysis),
        "sample": data.selection.get("sample", "first"),
        "sample_seed": data.selection.get("sample_seed"),
        "sample_sha256": data.selection.get("sample_sha256"),
        "population": data.selection.get("population"),
        "lr": meta.lr,
        "batch_size": meta.batch_size,
        "momentum": meta.momentum,
        "train_seed": meta.seed,
        "epoch": meta.epoch,
        "seed": inputs.seed,
        "tol": analysis.tol,
        "max_hvps": analysis.max_hvps,
        "bn_mode": analysis.bn_mode,
        "dtype": str(dtype).removeprefix("torch."),
        "device": str(job.device),
        "loss": job.loss.label,
        "data_sha256": data.sha256(),
        "final": dict(meta.final),
        "tf32": True if analysis.tf32 else None,
    }
    world = rank_and_world()[1]
    if world > 1:
        attrs["world_size"] = world
    attrs["code_sha256"] = code_sha256(
        source.code_sha256, job.loss.code_sha256, data.code_sha256
    )
    return attrs


def _on_device(split: DataSplit, device: torch.device, dtype: torch.dtype) -> DataSplit:
    """``split`` on ``device``, floating inputs in ``dtype`` (integer ones kept)."""
    x = split.inputs
    x = x.to(device, dtype) if x.is_floating_point() else x.to(device)
    return DataSplit(x, split.targets.to(device), input_names=split.input_names)


def _labels(spec: MetricSpec) -> dict[str, str]:
    """The long name and unit a stored metric carries, from its spec."""
    return {"long_name": spec.long_name or spec.name, "units": spec.unit}


def _compute(
    ex: Executor,
    calls: Mapping[str, PluginCall],
    metrics: Mapping[str, Metric],
    ctx: AnalysisContext,
    results: dict[str, MetricResult],
    *,
    before: Callable[[], None] | None = None,
) -> dict[str, SharpkitError]:
    """Run every metric in analysis mode; add results, return the failures.

    ``before`` runs first, in analysis mode (checks that the data fit the
    model). A metric that raises a :class:`SharpkitError` (plugin exceptions
    become :class:`~sharpkit.PluginRunError` in ``Registry.guard``) is recorded
    and the next one runs. So is a metric that changed the model's parameters
    or buffers: its result is dropped and the model restored bit for bit (see
    :class:`~sharpkit.api.executor.ModelGuard`) before the next metric runs.
    Across processes an error ends the call instead: a rank that went on alone
    would wait forever for the others.
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
        check_loss(ctx)
        for name, metric in metrics.items():
            try:
                results[name] = run_metric(ex, calls[name], metric, ctx)
            except SharpkitError as exc:
                if not alone:
                    raise
                failures[name] = exc
    return failures


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
