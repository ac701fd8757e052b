"""The skeleton every Hessian metric shares, and the checks it runs before a product.

:class:`Run` is one computation: its clock, the products spent since it began
(the Hessian may already have served other metrics), its random stream and
the budget left. The helpers decide between a metric's exact path and its
estimator, refuse a Krylov basis that would not fit in memory, and say in a
result's attributes which path was taken and why. Everything here uses
sharpkit's public API and :class:`~sharpkit.AnalysisContext` (and the probe
constant :mod:`._engine` holds). The engine is imported only when a metric
runs, so that loading the plugin stays cheap.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sharpkit import (
    AnalysisContext,
    ConfigError,
    ConvergenceWarning,
    MetricResult,
    arg_hint,
)

if TYPE_CHECKING:
    import torch

    from sharpkit import Estimate, HessianOperator

__all__ = [
    "EXACT_MAX",
    "Run",
    "check_basis",
    "check_probes",
    "exact_up_front",
    "path_attrs",
    "positive",
    "warn",
]

EXACT_MAX = 256
"""Up to this many parameters, trace, Frobenius norm and density are computed
exactly: ``n`` Lanczos steps span the whole space, and the three metrics share
that one process. Above it the estimators never spend more than ``n`` products
either (their probes are orthogonal up to ``ORTHOGONAL_MAX`` dimensions and
become the exact path when independent probes would cost ``n`` or more)."""


class Run:
    """One metric's computation on ``ctx.hessian``: clock, products and randomness.

    Args:
        ctx: The analysis context.
        name: The metric's name, also its random stream (``ctx.generator(name)``).
    """

    def __init__(self, ctx: AnalysisContext, name: str) -> None:
        self.ctx = ctx
        self.start = time.perf_counter()
        self.H: HessianOperator = ctx.hessian
        self.before = self.H.hvp_count
        self.gen: torch.Generator = ctx.generator(name)

    @property
    def hvps(self) -> int:
        """Products spent since the run began."""
        return self.H.hvp_count - self.before

    def left(self) -> int | None:
        """Products the budget (``ctx.max_hvps``) leaves, or ``None``: no cap."""
        if self.ctx.max_hvps is None:
            return None
        return max(self.ctx.max_hvps - self.hvps, 0)

    def progress(self, offset: int = 0) -> Callable[..., None]:
        """A progress callback for the engine, ``offset`` products along."""
        ctx = self.ctx

        def report(done: float, total: float | None = None, **info: Any) -> None:
            fields: dict[str, Any] = {
                k: float(v) for k, v in info.items() if v is not None
            }
            ctx.progress(
                done + offset, None if total is None else total + offset, **fields
            )

        return report

    def result(self, **fields: Any) -> MetricResult:
        """The result, with the products spent and the seconds taken filled in."""
        fields.setdefault("hvps", self.hvps)
        fields.setdefault("seconds", time.perf_counter() - self.start)
        return MetricResult(**fields)


def warn(metric: str, what: str, hvps: int, hint: str, *, stacklevel: int = 3) -> None:
    """Warn that ``metric`` stopped short of its target.

    ``stacklevel`` 3 names the caller of the function that calls this one (a
    metric's ``compute``); 4 from a helper of ``compute``.
    """
    warnings.warn(
        f"{metric}: {what} after {hvps} Hessian-vector products; the result is "
        f"approximate ({hint})",
        ConvergenceWarning,
        stacklevel=stacklevel,
    )


def raise_budget() -> str:
    """How the caller raises the product budget: ``--max-hvps`` or ``max_hvps=``."""
    return f"raise {arg_hint('max_hvps', '--max-hvps')}"


def _exact_fits(ctx: AnalysisContext) -> bool:
    """Whether the memory budget holds the exact path's basis of ``n`` vectors."""
    capacity = ctx.krylov_capacity()
    return capacity is None or capacity >= ctx.hessian.n


def exact_up_front(ctx: AnalysisContext, exact_max: int, fewest: int) -> str | None:
    """Why a metric computes exactly without trying its estimator (None: it tries).

    Never when the memory budget cannot hold ``n`` Lanczos vectors.

    Args:
        ctx: The analysis context (its Hessian's ``n`` and memory budget).
        exact_max: The metric's ``exact_max`` option.
        fewest: The fewest products the estimator can spend (deflation plus the
            minimum number of probes, or its fixed cost).
    """
    n = ctx.hessian.n
    if not _exact_fits(ctx):
        return None
    if n <= exact_max:
        return f"n = {n} <= exact_max = {exact_max}"
    if n <= fewest:
        return f"n = {n} <= {fewest} products, the fewest the estimator spends"
    return None


def path_attrs(
    est: Estimate, n: int, target: float | None, hvps: int
) -> dict[str, Any]:
    """Which path a probe estimate took and why, for a result's attributes."""
    from sharpkit.builtin.metrics._engine import ORTHOGONAL_MAX

    expected = est.expected_matvecs
    path = "exact" if est.exhausted else "estimate"
    if est.exhausted and expected is not None and expected >= n:
        why = (
            f"independent probes were expected to need about {expected:.0f} "
            f"products for rel_stderr {target:g}, no fewer than the n = {n} of the "
            "exact path: orthogonal probes went on to span the space"
        )
    elif est.exhausted:
        why = "the orthogonal probes spanned the whole space"
    elif target is None:
        why = f"a fixed number of probes ({len(est.samples)})"
    elif est.converged and est.distribution == "orthogonal":
        why = (
            f"the standard error met rel_stderr {target:g} after {hvps} products, "
            f"fewer than the n = {n} of the exact path"
        )
    elif est.converged:
        why = (
            f"the standard error met rel_stderr {target:g} after {hvps} products; "
            f"with more than {ORTHOGONAL_MAX} dimensions left the probes are "
            "independent and no exact path is tried (it would keep n vectors of n)"
        )
    else:
        # stored with the result: the same words whoever called
        why = "the budget (--max-hvps) ran out before rel_stderr was met"
    out: dict[str, Any] = {
        "path": path,
        "path_reason": why,
        "probe_distribution": est.distribution,
    }
    if expected is not None:
        out["expected_hvps"] = round(expected, 1) if math.isfinite(expected) else -1
    return out


def check_basis(
    ctx: AnalysisContext, what: str, k: int, n: int, advice: str, *, itemsize: int = 8
) -> None:
    """Refuse a Lanczos basis of ``k + 1`` vectors of ``n`` that would not fit.

    Checked before the first product, so an option such as ``deflation=1e9`` on
    a large model is one line, not hours of swapping (or the OOM killer). Under
    a memory budget the basis never exceeds it (float32 or fewer steps), so
    only the budget itself must fit.

    Raises:
        ConfigError: The basis needs more memory than is free on the device.
    """
    need = (min(k, n) + 1) * n * itemsize  # float64 by default: the worst case
    if ctx.memory_budget is not None:  # the basis is capped to the budget
        need = min(need, ctx.memory_budget)
    free = ctx.free_memory()
    if free is not None and need > free:
        msg = (
            f"{what} needs a Lanczos basis of {min(k, n) + 1} vectors of {n} "
            f"parameters ({need / 2**30:.1f} GB), more than the "
            f"{free / 2**30:.1f} GB of memory free; {advice}"
        )
        raise ConfigError(msg)


def check_probes(probes: int | None) -> None:
    """Refuse fewer than two probes (no standard error).

    Raises:
        ConfigError: ``probes`` is below 2.
    """
    if probes is not None and probes < 2:
        msg = f"probes must be >= 2 (a standard error needs two), got {probes}"
        raise ConfigError(msg)


def positive(name: str, value: float) -> None:
    """Refuse a value that is not a positive, finite number.

    Raises:
        ConfigError: ``value`` is not positive and finite.
    """
    if not (math.isfinite(value) and value > 0):
        msg = f"{name} must be a positive number, got {value!r}"
        raise ConfigError(msg)
