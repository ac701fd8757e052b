r"""When to stop drawing probes, and standard errors that hold after stopping.

Stopping at the first probe count where the estimated standard error meets a
target (a fixed-width sequential interval: Chow & Robbins, 1965, Ann. Math.
Statist.) is right only asymptotically: with few probes it stops most often
when the draws so far happen to vary little, which for skewed samples is when
they are also low. Three safeguards (see :mod:`sharpkit.curvature.stochastic`):

* the per-sample variance is ``max(s², V_b)``, ``V_b`` a bound from the same
  products (Avron & Toledo, 2011, J. ACM, for the variances);
* the standard error is widened by ``t_{0.975, k-1}/1.96`` (Student, 1908,
  Biometrika), so that ``value ± 2·stderr`` is a 95 % interval for any ``k``;
* a minimum number of probes before the target may stop the loop.

While a target is missed, each check predicts the independent probes it would
take (``k (stderr/target)²``); once the deflation plus that reaches ``n``,
orthogonal probes go on to span the space (the exact value).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from sharpkit.curvature.probes import ProbeSource
from sharpkit.errors import ConfigError

__all__ = [
    "DEFAULT_MIN_PROBES",
    "FROBENIUS_MIN_PROBES",
    "Estimate",
    "StopRule",
    "Tally",
    "check_stopping",
    "offset_progress",
    "probe_budget",
    "probe_cap",
    "probe_loop",
    "run_probes",
    "t_factor",
]

Progress = Callable[..., None]
DEFAULT_MIN_PROBES = 8
#: ``‖PHu‖²`` is a positive, right-skewed quadratic form: after a lucky draw of 8
#: probes its sample and cross-term variances can both be low (misses of 6.6
#: standard errors in 800 runs on small networks, none beyond 3.8 with 16).
FROBENIUS_MIN_PROBES = 16
_Z975 = 1.959963984540054
_T975 = (
    12.706204736174705,
    4.302652729749464,
    3.182446305284263,
    2.7764451051977,
    2.570581835636314,
    2.446911848791681,
)


@dataclass(frozen=True, kw_only=True)
class Estimate:
    """A stochastic estimate.

    Attributes:
        value: The estimate (trace, or ``‖H‖_F``).
        stderr: Its standard error, conservative and widened for the number of
            probes so that ``value ± 2·stderr`` is (at least) a 95 % interval;
            0 when the value is exact (see :mod:`sharpkit.curvature.stochastic`).
        n_matvecs: Matrix-vector products used, deflation included.
        samples: Per-probe values of the estimated remainder (``uᵀHu`` or
            ``‖PHu‖²``).
        exact_part: The part computed exactly from the deflation subspace
            (``tr QᵀHQ``, or ``‖QᵀHQ‖_F² + 2‖PHQ‖_F²`` for the Frobenius norm).
        deflation_rank: Columns of ``Q``.
        converged: Whether the target relative standard error was reached
            (``True`` when no target was set and the probe budget was spent).
        seconds: Wall time.
        method: Short name of the estimator.
        distribution: The probes drawn: ``"rademacher"``, ``"gaussian"`` or
            ``"orthogonal"`` (empty when none were needed).
        exhausted: The value is exact: the deflation or the orthogonal probes
            spanned the whole space.
        expected_matvecs: The deflation's rank plus the probes that independent
            probes were expected to need for the target, at the last check that
            missed it (``None``: the first check met it, or no target). When it
            reached ``n``, orthogonal probes went on to the exact value instead.
    """

    value: float
    stderr: float
    n_matvecs: int
    samples: np.ndarray
    exact_part: float
    deflation_rank: int
    converged: bool
    seconds: float
    method: str
    distribution: str = ""
    exhausted: bool = False
    expected_matvecs: float | None = None


def t_factor(df: int) -> float:
    """Return ``t_{0.975, df} / z_{0.975}``: the Student-t widening of a 95 % interval.

    Exact (to 1e-9) for ``df <= 6`` from a table, else the Cornish-Fisher
    expansion of the t quantile in ``1/df`` (Abramowitz & Stegun 26.7.5;
    relative error below 3e-5 for ``df >= 7``).

    Args:
        df: Degrees of freedom (``probes - 1``), at least 1.
    """
    if df < 1:
        msg = f"degrees of freedom must be >= 1, got {df}"
        raise ConfigError(msg)
    if df <= len(_T975):
        return _T975[df - 1] / _Z975
    z = _Z975
    terms = (
        (z**3 + z) / 4,
        (5 * z**5 + 16 * z**3 + 3 * z) / 96,
        (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384,
        (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / 92160,
    )
    return 1.0 + float(sum(t / df ** (i + 1) for i, t in enumerate(terms))) / z


class Tally:
    """Per-probe samples and the standard error of their mean.

    The variance of one sample is estimated conservatively as ``max(s², V_b)``:
    ``s²`` the sample variance and ``V_b = 2 (b̄ - c m̂²)`` a bound from the same
    products, where ``b̄`` is the mean of the bound terms the probes add, ``m̂² =
    max(x̄² - s²/k, 0)`` an unbiased estimate of the squared mean and ``c`` the
    ``square_weight``. The standard error ``sqrt(max(s², V_b)/k · fpc)`` is then
    widened by :func:`t_factor` for ``k - 1`` degrees of freedom.
    """

    def __init__(self, probes: ProbeSource, square_weight: float = 0.0) -> None:
        self.probes = probes
        self.square_weight = square_weight
        self.values: list[float] = []
        self._bound_sum = 0.0
        self._bound_count = 0
        self.expected: float | None = None
        self.committed = False

    def __len__(self) -> int:
        return len(self.values)

    def add(self, value: float, bounds: Sequence[float]) -> None:
        """Record one probe's sample and its bound terms."""
        self.values.append(value)
        self._bound_sum += float(sum(bounds))
        self._bound_count += len(bounds)

    def mean(self) -> float:
        """The mean sample (0 before the first)."""
        return float(np.mean(self.values)) if self.values else 0.0

    def stderr(self) -> float:
        """The conservative, t-widened standard error of :meth:`mean`."""
        k = len(self.values)
        if self.probes.exhausted:
            return 0.0
        if k < 2:
            return math.inf
        var = float(np.var(self.values, ddof=1))
        if self._bound_count:
            square = max(self.mean() ** 2 - var / k, 0.0)
            bound = self._bound_sum / self._bound_count - self.square_weight * square
            var = max(var, 2.0 * bound)
        return t_factor(k - 1) * math.sqrt(var / k * self.probes.fpc())

    def expect(self, se: float, goal: float) -> None:
        """Predict the independent probes that reach ``se <= goal``.

        The standard error falls as ``1/sqrt(k)``, so ``k (se/goal)²`` probes
        (without the finite-population factor and the t-widening, which fades
        as probes are added) are expected to reach it. When that is at least
        the dimension ``d`` left, the exact path (``d`` orthogonal probes) is no
        dearer: commit to it.
        """
        k = len(self)
        fpc = self.probes.fpc()
        if goal > 0 and fpc > 0 and math.isfinite(se) and k >= 2:
            plain = se / t_factor(k - 1)
            self.expected = k * (plain / goal) ** 2 / fpc
        else:
            self.expected = math.inf
        if self.probes.kind == "orthogonal" and self.expected >= self.probes.dim:
            self.committed = True


@dataclass(frozen=True)
class StopRule:
    """When :func:`probe_loop` stops.

    Attributes:
        probes: Exactly this many probes (overrides the rest).
        max_probes: Budget of probes (default 10 000 with a target, else 30).
        target: Stop once ``stderr <= target * |value|``.
        min_probes: Probes before the target may stop the loop.
    """

    probes: int | None
    max_probes: int | None
    target: float | None
    min_probes: int


def check_stopping(
    max_matvecs: int | None, target: float | None, min_probes: int
) -> None:
    """Raise a :class:`ConfigError` for a bad budget, target or minimum of probes."""
    if max_matvecs is not None and max_matvecs < 1:
        msg = f"max_matvecs must be >= 1, got {max_matvecs}"
        raise ConfigError(msg)
    if target is not None and not target > 0:
        msg = f"target_rel_stderr must be > 0, got {target}"
        raise ConfigError(msg)
    if min_probes < 2:
        msg = f"min_probes must be >= 2 (a standard error needs two), got {min_probes}"
        raise ConfigError(msg)


def probe_budget(
    max_matvecs: int | None,
    used: int,
    probes: int | None,
    *,
    spent_on: str = "the deflation",
    remedy: str = "deflate less",
) -> int | None:
    """Return the products left for probes after ``used`` (``None``: no budget).

    Raises:
        ConfigError: Fewer than two are left (no standard error) and no fixed
            number of ``probes`` was asked for.
    """
    if max_matvecs is None:
        return None
    left = max_matvecs - used
    if left < 2 and probes is None:
        msg = (
            f"max_matvecs={max_matvecs} leaves {left} products for probes after "
            f"{spent_on} ({used}); raise it or {remedy}"
        )
        raise ConfigError(msg)
    return left


def probe_cap(rule: StopRule) -> int:
    """The most probes :func:`probe_loop` draws under ``rule``."""
    cap = rule.probes if rule.probes is not None else rule.max_probes
    if cap is None:
        cap = 10_000 if rule.target is not None else 30
    return cap


def probe_loop(
    draw: Callable[[], None],
    tally: Tally,
    summarize: Callable[[Tally], tuple[float, float]],
    rule: StopRule,
    progress: Progress | None,
) -> bool:
    """Draw probes until the target, ``probes``, the budget or exhaustion.

    While the target is not met, each look predicts how many independent probes
    it would take (:meth:`Tally.expect`); orthogonal probes that would need the
    whole space left anyway go on to span it, so the value becomes exact.

    Returns:
        Whether the estimate converged: the target was reached, the orthogonal
        probes spanned the space (exact), or no target was set.
    """
    probes, target = rule.probes, rule.target
    cap = probe_cap(rule)
    converged = target is None
    while len(tally) < cap and not tally.probes.exhausted:
        draw()
        k = len(tally)
        if k < 2 and not tally.probes.exhausted:
            continue
        value, se = summarize(tally)
        if progress is not None:
            progress(k, None, estimate=value, stderr=se)
        if probes is not None or target is None or k < rule.min_probes:
            continue
        if tally.committed:
            continue
        if se <= target * abs(value):
            converged = True
            break
        tally.expect(se, target * abs(value))
    return converged or tally.probes.exhausted


def run_probes(
    tally: Tally,
    draw: Callable[[], None],
    summarize: Callable[[Tally], tuple[float, float]],
    rule: StopRule,
    *,
    progress: Progress | None,
    method: str,
    exact: float,
    used: int,
    start: float,
    spent: Callable[[], int] | None = None,
) -> Estimate:
    """Run :func:`probe_loop` and return its :class:`Estimate`.

    Args:
        tally: Where ``draw`` records each probe's sample.
        draw: Draws one probe and records it.
        summarize: ``tally -> (value, stderr)``.
        rule: When to stop.
        progress: ``progress(done, total, estimate=..., stderr=...)``.
        method: The estimator's name before the probes' kind.
        exact: The exactly computed part.
        used: Products spent before the probes (the deflation).
        start: ``time.perf_counter()`` when the estimator started.
        spent: Products the probes took (default: one per probe); probes
            multiplied in blocks may have taken some ahead that the loop did
            not use, and they count.
    """
    converged = probe_loop(draw, tally, summarize, rule, progress)
    value, se = summarize(tally)
    source = tally.probes
    rank = source.n - source.dim
    return Estimate(
        value=value,
        stderr=se,
        n_matvecs=used + (len(tally) if spent is None else spent()),
        samples=np.asarray(tally.values, dtype=np.float64),
        exact_part=exact,
        deflation_rank=rank,
        converged=converged,
        seconds=time.perf_counter() - start,
        method=source.label(method),
        distribution=source.kind,
        exhausted=source.exhausted,
        expected_matvecs=None if tally.expected is None else tally.expected + rank,
    )


def offset_progress(progress: Progress | None, offset: int) -> Progress | None:
    """Return ``progress`` with ``offset`` products added to its count."""
    if progress is None:
        return None

    def shifted(done: float, total: float | None = None, **info: Any) -> None:
        progress(done + offset, total, **info)

    return shifted
