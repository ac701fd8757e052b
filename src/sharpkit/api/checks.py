"""What is checked around a metric: before any runs, and on each result.

Before the first metric: the data and the loss fit the model (one line, not a
traceback, when they do not), the loss is finite and averages over the batch.
Around each metric (:func:`run_metric`): its cost is announced, it runs through
the :class:`~sharpkit.api.executor.Executor` (guarded, the model restored), and
its value, standard error and bound must be real numbers, the value finite.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import time
import warnings
from typing import TYPE_CHECKING, Any

from sharpkit._data import evaluate
from sharpkit._hints import arg
from sharpkit.api.fit import check_fit
from sharpkit.api.isolation import check_result
from sharpkit.errors import (
    ConfigError,
    DataError,
    NumericalError,
    PluginContractError,
    SharpkitWarning,
    first_line,
)
from sharpkit.interfaces import AnalysisContext, MetricResult, ProgressCallback

if TYPE_CHECKING:
    from sharpkit.api.executor import Executor, PluginCall
    from sharpkit.api.job import AnalysisData
    from sharpkit.api.models import ResolvedModel
    from sharpkit.interfaces import Metric

__all__ = ["check_fits", "check_loss", "run_metric"]


def run_metric(
    ex: Executor, call: PluginCall, metric: Metric, ctx: AnalysisContext
) -> MetricResult:
    """Run one metric through ``ex``; fill in its name, products and time.

    Raises:
        PluginRunError: The metric raised.
        PluginContractError: It returned no :class:`~sharpkit.MetricResult`,
            a value that is not a number, or changed the model.
        NumericalError: Its value is not finite.
    """
    name = call.name
    hvps_before = ctx._hessian.hvp_count if ctx._hessian is not None else 0
    estimate = getattr(metric, "estimated_hvps", None)
    n_est = 0
    if callable(estimate):
        with ex.registry.guard("metric", name, "estimating its cost"):
            n_est = int(estimate(ctx) or 0)
    outer = ctx.progress
    if n_est:
        outer(0, float(n_est), description=f"{name} (≈{n_est} HVPs)")
        ctx.progress = _CostAnnouncer(ctx, outer, name, n_est)
    else:
        outer(0, None, description=name)
    start = time.perf_counter()
    try:
        result = ex.run(call, "computing", metric.compute, ctx, guard=ctx)
    finally:
        ctx.progress = outer
    seconds = time.perf_counter() - start
    result = _numbers(name, result)
    check_result(name, result)
    if not math.isfinite(result.value):
        msg = f"metric {name!r} returned a non-finite value ({result.value})"
        raise NumericalError(msg)
    if call.spec.stochastic and result.stderr is None:
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


def check_fits(
    ctx: AnalysisContext, source: ResolvedModel, data: AnalysisData, loss: str
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
    _check_ignored(ctx, data)


_TORCH_IGNORE = -100  # cross-entropy's default ignore_index


def _check_ignored(ctx: AnalysisContext, data: AnalysisData) -> None:
    """Say when cross-entropy's ``ignore_index`` leaves examples out of the loss.

    Class targets of ``-100`` (torch's default ``ignore_index``) drop their
    examples from the loss, so the Hessian is of the others: a warning when
    some are, one line when all are (before: measured silently on what was
    left, or "num_classes must be positive, got -99"). A loss whose own
    ``ignore_index`` names another class chose it: no warning then, but one
    line still when every example is ignored.

    Raises:
        DataError: Every example's target is ignored.
    """
    from sharpkit._data import _class_loss_options

    y = ctx.data.targets
    opts = _class_loss_options(ctx.loss_fn)
    if opts is None or y.ndim != 1 or y.is_floating_point() or not len(y):
        return
    ignore = int(opts.get("ignore_index", -100))
    left_out = int((y == ignore).sum())
    if not left_out:
        return
    where = repr(data.dataset) if data.dataset else "the data"
    what = (
        f"{left_out} of the {len(y)} analysis examples of {where} have the "
        f"target {ignore}, which cross-entropy ignores (ignore_index)"
    )
    if left_out == len(y):
        msg = f"all {what}: the loss is of no example; check the targets"
        raise DataError(msg)
    if ignore != _TORCH_IGNORE:
        return  # a loss that names the class it ignores says what it wants
    warnings.warn(
        f"{what}: the Hessian is of the other {len(y) - left_out}; give them a "
        "class or leave them out of the data to measure on all of them",
        SharpkitWarning,
        stacklevel=2,
    )


def check_loss(ctx: AnalysisContext) -> None:
    """Check the loss is a finite scalar on the analysis set; cache its value."""
    try:
        loss, _ = evaluate(ctx.model, ctx.data, ctx.loss_fn, batch_size=ctx.batch_size)
    except (ValueError, RuntimeError) as exc:  # e.g. batch norm on one example
        hint = (
            f"batch statistics ({arg('bn_mode', '--bn-mode')} train) need more "
            f"than one example per batch: raise {arg('batch_size', '--batch-size')}"
            if ctx.bn_mode == "train"
            else "check the model, the data and the loss"
        )
        msg = (
            f"the loss cannot be evaluated on the analysis data in batches of "
            f"{ctx.batch_size} ({type(exc).__name__}: {first_line(exc)}); {hint}"
        )
        raise ConfigError(msg) from exc
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
