r"""PAC-Bayes flatness: the largest Gaussian weight noise a minimum tolerates.

Jiang, Neyshabur, Mobahi, Krishnan & Bengio (2020, ICLR, "Fantastic
generalization measures and where to find them", §C.3) turn the PAC-Bayes bound
of McAllester (1999) and Neyshabur et al. (2017) into measures by searching, by
bisection, for the largest noise scale σ' at which the expected rise of the
training loss stays within a threshold:

* ``pacbayes-sigma``: ``u ~ N(0, σ² I)`` (their ``pacbayes.flatness`` is 1/σ'²);
* ``pacbayes-mag-sigma``: magnitude-aware noise ``u_i ~ N(0, σ² θ_i²)``
  (their ``pacbayes.mag.flatness``; they add a tiny ε² = 1e-6 to each variance,
  left out here so that the measure is exactly invariant to layer rescaling).

The value is σ* itself, the root of ``R(σ) = E_u[L(θ+u)] − L(θ) = threshold``:
**larger is flatter**. 1/σ*² (Jiang et al.'s form, larger is sharper) is in
``attrs["inverse_sigma_squared"]``. For a quadratic loss with Hessian ``H`` the
rise is exactly ``R(σ) = σ² tr(H) / 2`` (``σ² Σ H_ii θ_i² / 2`` for the
magnitude-aware noise), so ``σ* = √(2·threshold / tr H)``.

Estimate and interval. ``R(σ)`` is a Monte-Carlo mean over ``samples`` draws
``u_j = σ z_j`` (``σ |θ| ⊙ z_j``), with the *same* standard normal ``z_j`` at
every σ (common random numbers: ``R̂`` is then a smooth function of σ, and the
bisection does not chase noise). Its standard error ``s(σ)`` is the standard
deviation of the draws' rises over √samples. σ* is the root of ``R̂(σ) =
threshold``; the interval is the set of σ at which the threshold lies inside
the normal-approximation interval ``R̂(σ) ± z s(σ)`` (``z`` the two-sided
quantile of ``confidence``), i.e. from the root of ``R̂ + z s = threshold``
(low end) to the root of ``R̂ − z s = threshold`` (high end). Since ``R`` rises
with σ, this inverts a pointwise test of ``R(σ) = threshold`` and covers the
true σ* with about the stated confidence (for a quadratic exactly the coverage
of the z-interval for the mean of ``zᵀHz``). ``stderr`` is the interval's
half-width in standard-normal units, ``(high − low) / 2z``. All three roots are
found by safeguarded log-log interpolation (near a minimum ``R`` grows like σ²)
until the bracket's ratio is below ``1 + rtol``.

The model's parameters and buffers are restored bit for bit afterwards.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from sharpkit import (
    AnalysisContext,
    ConfigError,
    MetricResult,
    MetricSpec,
    NumericalError,
)
from sharpkit.builtin._perturber import Perturber, check_finite
from sharpkit.builtin._spec import signature_options

if TYPE_CHECKING:
    import torch

__all__ = ["MagnitudePacBayesSigma", "PacBayesSigma", "pacbayes_specs"]

_START = 1e-2  # first σ tried; widened by _WIDEN until the root is bracketed
_WIDEN = 4.0
_MAX_STEPS = 40  # widenings before giving up (a factor 4^40)
_PREDICTIONS = 6  # predicted steps before bisection takes over


class PacBayesSigma:
    """Largest σ with ``E L(θ + u) − L(θ) ≤ threshold``, ``u ~ N(0, σ² I)``.

    Args:
        threshold: The allowed rise of the expected loss (Jiang et al.: 0.1).
        samples: Gaussian draws per σ (the same draws at every σ).
        confidence: Level of the interval on σ*.
        rtol: Bisection stops when the bracket's high/low is below 1 + rtol.
    """

    magnitude: ClassVar[bool] = False
    stream: ClassVar[str] = "pacbayes-sigma"

    def __init__(
        self,
        *,
        threshold: float = 0.1,
        samples: int = 16,
        confidence: float = 0.95,
        rtol: float = 0.01,
    ) -> None:
        checks = (
            ("threshold", threshold, threshold > 0 and math.isfinite(threshold),
             "positive"),
            ("samples", samples, samples >= 2, ">= 2 (the interval needs a spread)"),
            ("confidence", confidence, 0 < confidence < 1, "in (0, 1)"),
            ("rtol", rtol, 0 < rtol < 1, "in (0, 1)"),
        )  # fmt: skip
        for name, value, ok, what in checks:
            if not ok:
                msg = f"{name} must be {what}, got {value!r}"
                raise ConfigError(msg)
        self.threshold = float(threshold)
        self.samples = int(samples)
        self.confidence = float(confidence)
        self.rtol = float(rtol)
        self.z = statistics.NormalDist().inv_cdf(0.5 + confidence / 2)

    def compute(self, ctx: AnalysisContext, /) -> MetricResult:
        """Bisect for σ* and the ends of its interval on the model in ``ctx``."""
        start_time = time.perf_counter()
        pert = Perturber(ctx)
        try:
            base = pert.loss()
            check_finite(base, "the evaluation at θ")
            search = _Search(self, ctx, pert, base)
            sigma = search.root(0.0)
            low = search.root(+1.0, censor=True)[0]
            high = search.root(-1.0, censor=True)[1]
        finally:
            pert.restore()
        value = math.sqrt(sigma[0] * sigma[1])
        grid = sorted(search.cache)
        attrs: dict[str, Any] = {
            "threshold": self.threshold,
            "samples": self.samples,
            "confidence": self.confidence,
            "rtol": self.rtol,
            "noise": "N(0, σ²θ²) per coordinate" if self.magnitude else "N(0, σ² I)",
            "low": low,
            "high": high,
            "high_censored": search.censored,
            "bracket": [sigma[0], sigma[1]],
            "inverse_sigma_squared": 1.0 / value**2,
            "loss": base,
            "loss_evaluations": pert.evaluations,
            "interval": "σ where the threshold lies in R̂(σ) ± z·s(σ) "
            "(common random numbers; normal approximation)",
            "unit": "relative to |θ|" if self.magnitude else "parameter units",
        }
        return MetricResult(
            value=value,
            stderr=(high - low) / (2 * self.z),
            converged=not search.censored,
            hvps=0,
            seconds=time.perf_counter() - start_time,
            arrays={
                "sigma": np.asarray(grid, dtype=np.float64),
                "rise": np.asarray([search.cache[s][0] for s in grid]),
                "rise_stderr": np.asarray([search.cache[s][1] for s in grid]),
            },
            attrs=attrs,
        )


class MagnitudePacBayesSigma(PacBayesSigma):
    """Largest σ with ``E L(θ + u) − L(θ) ≤ threshold``, ``u_i ~ N(0, σ² θ_i²)``.

    Args:
        threshold: The allowed rise of the expected loss (Jiang et al.: 0.1).
        samples: Gaussian draws per σ (the same draws at every σ).
        confidence: Level of the interval on σ*.
        rtol: Bisection stops when the bracket's high/low is below 1 + rtol.
    """

    magnitude: ClassVar[bool] = True
    stream: ClassVar[str] = "pacbayes-mag-sigma"


class _Search:
    """The Monte-Carlo rise ``R̂(σ)`` (cached per σ) and root finding in log σ."""

    def __init__(
        self,
        metric: PacBayesSigma,
        ctx: AnalysisContext,
        pert: Perturber,
        base: float,
    ) -> None:
        self.metric = metric
        self.ctx = ctx
        self.pert = pert
        self.base = base
        self.scale = [t.abs() for t in pert.theta] if metric.magnitude else None
        self.cache: dict[float, tuple[float, float]] = {}
        self.censored = False

    def _draw(self, j: int) -> list[torch.Tensor]:
        """The j-th standard normal draw ``z_j`` (the same at every σ)."""
        import torch

        gen = self.ctx.generator(f"{self.metric.stream}:{j}")
        return [
            torch.randn(t.shape, generator=gen, dtype=torch.float64).to(
                device=t.device, dtype=t.dtype
            )
            for t in self.pert.theta
        ]

    def rise(self, sigma: float) -> tuple[float, float]:
        """``(R̂(σ), s(σ))``; an infinite rise counts as above any threshold."""
        if sigma not in self.cache:
            m = self.metric
            rises = np.empty(m.samples, dtype=np.float64)
            for j in range(m.samples):
                z = self._draw(j)
                if self.scale is not None:
                    z = [s * zi for s, zi in zip(self.scale, z, strict=True)]
                self.pert.set([sigma * zi for zi in z])
                rises[j] = self.pert.loss() - self.base
            self.ctx.progress(len(self.cache) + 1, None)
            if not np.all(np.isfinite(rises)):
                self.cache[sigma] = (math.inf, 0.0)
            else:
                sd = float(rises.std(ddof=1))
                self.cache[sigma] = (float(rises.mean()), sd / math.sqrt(m.samples))
        return self.cache[sigma]

    def _excess(self, k: float, sigma: float) -> float:
        """``R̂(σ) + k·z·s(σ)``: the rise, or an end of its interval."""
        mean, se = self.rise(sigma)
        return mean + k * self.metric.z * se

    def _above(self, k: float) -> Callable[[float], bool]:
        """Whether ``R̂(σ) + k·z·s(σ)`` exceeds the threshold."""
        return lambda sigma: self._excess(k, sigma) > self.metric.threshold

    def _bracket(self, k: float, *, censor: bool) -> tuple[float, float]:
        """The evaluated ``lo < hi`` around the first crossing, widened by 4x steps.

        Raises:
            NumericalError: No crossing within a factor 4^40 of the start.
        """
        above = self._above(k)
        if not self.cache:
            self.rise(_START)
        steps = 0
        while not any(above(s) for s in self.cache):
            if steps == _MAX_STEPS:
                if censor:
                    self.censored = True
                    top = max(self.cache)
                    return top, top
                msg = (
                    "the expected loss never rose by threshold="
                    f"{self.metric.threshold:g} up to σ={max(self.cache):.3g}; "
                    "lower the threshold"
                )
                raise NumericalError(msg)
            self.rise(_WIDEN * max(self.cache))
            steps += 1
        hi = min(s for s in self.cache if above(s))
        steps = 0
        while not any(s < hi and not above(s) for s in self.cache):
            if steps == _MAX_STEPS:
                msg = (
                    "the expected loss rose by more than threshold="
                    f"{self.metric.threshold:g} even at σ={min(self.cache):.3g}; "
                    "raise the threshold or check the loss at θ"
                )
                raise NumericalError(msg)
            self.rise(min(self.cache) / _WIDEN)
            hi = min(s for s in self.cache if above(s))
            steps += 1
        lo = max(s for s in self.cache if s < hi and not above(s))
        return lo, hi

    def _guess(
        self, k: float, lo: float, hi: float, recent: list[float] | None
    ) -> float:
        """Where the crossing should be, strictly inside ``(lo, hi)``.

        The rise grows about like a power of σ (σ² near a minimum), so lines in
        (log σ, log rise) predict the root well: through the two points this
        search evaluated last (a secant: a local slope), else through the
        bracket's ends. Without usable points (a rise <= 0 or infinite), or
        when ``recent`` is ``None`` (the safeguard), the geometric midpoint.
        """
        mid = math.sqrt(lo * hi)
        if recent is None:
            return mid
        for a, b in (recent[-2:], [lo, hi]) if len(recent) >= 2 else ([lo, hi],):
            g_a, g_b = self._excess(k, a), self._excess(k, b)
            if not (0 < g_a < math.inf and 0 < g_b < math.inf and g_a != g_b):
                continue
            slope = (math.log(b) - math.log(a)) / (math.log(g_b) - math.log(g_a))
            if slope <= 0:
                continue
            t = self.metric.threshold
            guess = math.exp(math.log(a) + (math.log(t) - math.log(g_a)) * slope)
            margin = 1.0 + self.metric.rtol / 4
            return min(max(guess, lo * margin), hi / margin)
        return mid

    def root(self, k: float, *, censor: bool = False) -> tuple[float, float]:
        """Bracket ``[lo, hi]``, ``hi/lo <= 1 + rtol``, of ``R̂ + k·z·s = threshold``.

        Each step evaluates the predicted root, then a point ``rtol/2`` beyond
        it on the side of the root: when the prediction was good, that closes
        the bracket. After six such steps (never needed on smooth rises) the
        search falls back to bisection, which always closes it.

        Raises:
            NumericalError: No crossing within a factor 4^40 of the start (the
                loss never rises by ``threshold``), unless ``censor``: then the
                largest σ tried is returned as both ends and noted.
        """
        lo, hi = self._bracket(k, censor=censor)
        above = self._above(k)
        close = 1.0 + self.metric.rtol / 2
        recent: list[float] = []
        while hi / lo > 1.0 + self.metric.rtol:
            predict = len(recent) < 2 * _PREDICTIONS
            guess = self._guess(k, lo, hi, recent if predict else None)
            if above(guess):
                hi, probe = guess, guess / close
            else:
                lo, probe = guess, guess * close
            recent.append(guess)
            if predict and lo < probe < hi:
                if above(probe):
                    hi = probe
                else:
                    lo = probe
                recent.append(probe)
        return lo, hi


_HELP = {
    "threshold": "Allowed rise of the expected loss (Jiang et al. 2020: 0.1).",
    "samples": "Gaussian draws per σ (common to every σ); the interval needs >= 2.",
    "confidence": "Level of the interval on σ*.",
    "rtol": "Relative precision of the bisections in σ.",
}


def pacbayes_specs() -> list[MetricSpec]:
    """The specs of ``pacbayes-sigma`` and ``pacbayes-mag-sigma``."""
    return [
        MetricSpec(
            name="pacbayes-sigma",
            factory=PacBayesSigma,
            description="PAC-Bayes flatness (Jiang et al., 2020): the largest σ "
            "with E L(θ+u) − L(θ) ≤ threshold, u ~ N(0, σ²I); larger is flatter.",
            options=signature_options(PacBayesSigma, _HELP),
            stochastic=True,
            unit="parameter units",
            long_name="PAC-Bayes σ* (Jiang et al., 2020)",
        ),
        MetricSpec(
            name="pacbayes-mag-sigma",
            factory=MagnitudePacBayesSigma,
            description="Magnitude-aware PAC-Bayes flatness (Jiang et al., 2020): "
            "the largest σ with E L(θ+u) − L(θ) ≤ threshold, u_i ~ N(0, σ²θ_i²).",
            options=signature_options(MagnitudePacBayesSigma, _HELP),
            stochastic=True,
            unit="relative to |θ|",
            long_name="magnitude-aware PAC-Bayes σ* (Jiang et al., 2020)",
        ),
    ]
