r"""Stochastic estimators of trace, Frobenius norm and spectral density.

All estimators draw their random probes from a ``torch.Generator`` (so a seed
reproduces them), report a standard error, and can stop at a target relative
standard error or a budget of matrix-vector products.

**Deflation.** Let ``Q`` (n x k) have orthonormal columns and ``P = I - QQᵀ``.
The four blocks ``QQᵀHQQᵀ``, ``QQᵀHP``, ``PHQQᵀ`` and ``PHP`` of ``H`` are
mutually orthogonal, so

.. math::
    \operatorname{tr} H = \operatorname{tr}(Q^\top H Q)
        + \operatorname{tr}(PHP), \qquad
    \lVert H\rVert_F^2 = \lVert Q^\top H Q\rVert_F^2 + 2\lVert PHQ\rVert_F^2
        + \lVert PHP\rVert_F^2 .

The first terms are computed exactly; only the remainder ``PHP`` is estimated
with random probes, whose variance falls as the dominant eigenvalues are
deflated. Three sources of ``Q``:

* a **Lanczos basis** ``Q_m`` (the Krylov space of a random vector, ``m``
  products): ``Q_mᵀ H Q_m = T_m`` and ``‖P H Q_m‖_F = β_m`` come free from the
  recurrence, so every product serves both the exact part and the deflation;
  the Krylov space captures the extreme eigenvalues far better than one pass of
  a random sketch ("Krylov-aware" deflation: Chen & Hallman, 2023, "Krylov-aware
  stochastic trace estimation", SIAM J. Matrix Anal. Appl.);
* **Ritz vectors** of a Lanczos run (e.g. the ``spectral`` metric's top
  eigenvectors): ``YᵀHY = diag(θ)`` and ``‖PHY‖_F² = Σ r_i²`` (their residuals);
* any orthonormal basis, e.g. Hutch++'s sketch ``orth(H S)`` (Meyer, Musco,
  Musco & Woodruff, 2021, "Hutch++: Optimal stochastic trace estimation", SOSA):
  ``HQ`` is computed (``k`` more products).

**Remainder estimators** (unbiased given ``Q``, because the probes are drawn
independently of it). With Rademacher ``z`` (entries ±1, ``E[zzᵀ] = I``) and
``u = Pz``:

* trace (Hutchinson, 1990, Commun. Stat. Simul. Comput.): ``uᵀ H u``, variance
  ``2(‖A‖_F² - Σ_i A_ii²)`` for ``A = PHP``;
* squared Frobenius norm: ``‖P H u‖² = zᵀ A² z``, variance
  ``2(‖A²‖_F² - Σ_i (A²)_ii²)``.

Rademacher probes have the smallest variance among probes with i.i.d. entries
(Hutchinson, 1990); Gaussian ones add the diagonal terms back. Estimating
``‖P H z‖²`` instead (no projection before ``H``) would also be unbiased for
``‖H‖_F² - ‖HQ‖_F²``, but its random part then includes the cross blocks
``PHQQᵀ``, which the estimator above computes exactly, so its variance is larger.
The standard error of ``‖H‖_F = sqrt(S)`` is propagated from that of ``S`` by
the delta method, ``se(‖H‖_F) = se(S) / (2‖H‖_F)``.

**Spectral density** by stochastic Lanczos quadrature (Ubaru, Chen & Saad, 2017,
"Fast estimation of tr(f(A)) via stochastic Lanczos quadrature", SIAM J. Matrix
Anal. Appl.; Ghorbani, Krishnan & Xiao, 2019, ICML, for Hessians): for each
normalised probe ``v = z/‖z‖``, ``m`` Lanczos steps give ``T_m = S Θ Sᵀ``; the
nodes ``θ_j`` with weights ``τ_j = S_{1j}²`` (summing to 1) form a Gauss rule for
the spectral measure of ``H`` seen from ``v``, whose expectation is the
eigenvalue density ``(1/n) Σ_i δ(t - λ_i)``. Its first two moments are exact per
probe: ``Σ τ_j θ_j = vᵀHv`` and ``Σ τ_j θ_j² = ‖Hv‖²``, whose expectations are
``tr H / n`` and ``tr H² / n``.

**Probes.** ``distribution="auto"`` draws *orthogonal* probes while the space
left after deflation has at most ``ORTHOGONAL_MAX`` dimensions ``d``: Gaussian
vectors projected off ``Q`` and off every earlier probe, normalised and scaled
by ``sqrt(d)``, i.e. the columns of a Haar-random orthonormal basis of that
space in random order. Each is unbiased; the mean of ``k`` of them has the
finite-population variance ``σ²/k · (d - k)/(d - 1)`` of sampling without
replacement (Cochran, 1977, *Sampling Techniques*), and after ``d`` probes the
value is exact, so no estimate costs more than ``n`` products. Beyond
``ORTHOGONAL_MAX`` they are independent Rademacher vectors.

**Standard errors that hold after sequential stopping.** Stopping at the first
probe count where the estimated standard error meets a target (a fixed-width
sequential interval: Chow & Robbins, 1965, Ann. Math. Statist.) is right only
asymptotically: with few probes it stops most often when the draws so far
happen to vary little, which for skewed samples is when they are also low (the
plain sample standard error covered the truth in 82-92 % of "95 %" intervals on
small networks). Three safeguards:

* the per-sample variance is ``max(s², V_b)``, where ``V_b`` is a bound from
  the same products: for the trace ``2(‖A‖_F² - c (tr A)²)`` with ``‖A‖_F² =
  E‖PHu‖²`` (``c = 1/n`` for Rademacher probes, since ``Σ A_ii² >= (tr A)²/n``;
  ``1/d`` for orthogonal ones; Avron & Toledo, 2011, J. ACM, for the
  variances); for ``‖H‖_F²``, ``2‖B‖_F²`` with ``B = A²``, estimated by the mean
  square of the cross products ``(PHu_i)ᵀ(PHu_j)`` of different probes;
* the standard error is widened by ``t_{0.975, k-1}/1.96`` (Student, 1908,
  Biometrika), so that ``value ± 2·stderr`` is a 95 % interval for any ``k``;
* ``frobenius_norm`` waits for ``FROBENIUS_MIN_PROBES`` = 16 probes (its samples
  are positive and right-skewed), the trace for ``DEFAULT_MIN_PROBES`` = 8.

On eight small network families (``tests/curvature/test_coverage.py``) at least
96.9 % of the intervals cover the truth and no miss exceeds 3.9 standard
errors. While a target is missed, each check predicts the independent probes
it would take (``k (stderr/target)²``); once the deflation plus that reaches
``n``, orthogonal probes go on to span the space (the exact value, ``n``
products in all).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from sharpkit.curvature.lanczos import (
    LanczosProcess,
    LanczosResult,
    basis_plan,
    operator_device,
    operator_dtype,
    random_vector,
)
from sharpkit.errors import ConfigError, NumericalError

__all__ = [
    "DEFAULT_MIN_PROBES",
    "DISTRIBUTIONS",
    "FROBENIUS_MIN_PROBES",
    "ORTHOGONAL_MAX",
    "Deflation",
    "DensityEstimate",
    "Estimate",
    "frobenius_norm",
    "hutchinson_trace",
    "hutchpp_trace",
    "krylov_deflation",
    "slq_density",
    "smooth_density",
    "t_factor",
]

Matvec = Callable[[Tensor], Tensor]
DEFAULT_MIN_PROBES = 8
#: ``‖PHu‖²`` is a positive, right-skewed quadratic form: after a lucky draw of 8
#: probes its sample and cross-term variances can both be low (misses of 6.6
#: standard errors in 800 runs on small networks, none beyond 3.8 with 16).
FROBENIUS_MIN_PROBES = 16


# --------------------------------------------------------------------------- results


@dataclass(frozen=True, kw_only=True)
class Estimate:
    """A stochastic estimate.

    Attributes:
        value: The estimate (trace, or ``‖H‖_F``).
        stderr: Its standard error, conservative and widened for the number of
            probes so that ``value ± 2·stderr`` is (at least) a 95 % interval;
            0 when the value is exact (see the module docstring).
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


@dataclass(frozen=True, kw_only=True)
class DensityEstimate:
    """A spectral density by stochastic Lanczos quadrature.

    Attributes:
        nodes: ``(probes, m)`` Gauss nodes (Ritz values) per probe (padded with
            NaN where a probe's Krylov space was exhausted early).
        weights: ``(probes, m)`` Gauss weights per probe (each row sums to 1;
            0 where padded).
        grid: Points where the smoothed density is evaluated.
        density: The Gaussian-smoothed density on ``grid`` (integrates to ~1).
        sigma: Width of the Gaussian kernel.
        trace: ``n`` times the mean first moment: the Hutchinson trace estimate.
        trace_stderr: Its standard error (conservative and widened for the
            number of probes, as :attr:`Estimate.stderr`).
        n_matvecs: Matrix-vector products used.
        samples: Per-probe trace estimates ``n vᵀHv``.
        seconds: Wall time.
    """

    nodes: np.ndarray
    weights: np.ndarray
    grid: np.ndarray
    density: np.ndarray
    sigma: float
    trace: float
    trace_stderr: float
    n_matvecs: int
    samples: np.ndarray
    seconds: float

    def moments(self) -> tuple[float, float]:
        """Return the first two moments of the (unsmoothed) quadrature measure.

        Their expectations are ``tr H / n`` and ``tr H² / n``.
        """
        w = np.nan_to_num(self.weights)
        t = np.nan_to_num(self.nodes)
        first = float(np.mean(np.sum(w * t, axis=1)))
        second = float(np.mean(np.sum(w * t * t, axis=1)))
        return first, second


# --------------------------------------------------------------------------- deflation


@dataclass(eq=False)
class Deflation:
    """An orthonormal basis ``Q`` with the exact quantities the estimators need.

    Attributes:
        basis: ``(n, k)`` with orthonormal columns.
        projected: ``QᵀHQ`` as a float64 CPU ``(k, k)`` tensor.
        leak: ``‖(I - QQᵀ) H Q‖_F²``.
        n_matvecs: Products spent building it (counted by estimators that build
            it themselves).
        source: ``"lanczos"``, ``"ritz"``, ``"sketch"`` or ``"basis"``.
    """

    basis: Tensor
    projected: Tensor
    leak: float
    n_matvecs: int = 0
    source: str = "basis"
    _coef: Tensor | None = field(default=None, repr=False)

    @property
    def rank(self) -> int:
        """Columns of the basis."""
        return int(self.basis.shape[1])

    @property
    def trace(self) -> float:
        """``tr(QᵀHQ)``."""
        return float(torch.trace(self.projected))

    @property
    def frobenius_squared(self) -> float:
        """``‖QᵀHQ‖_F² + 2‖PHQ‖_F²``: the exact part of ``‖H‖_F²``."""
        return float((self.projected**2).sum()) + 2.0 * self.leak

    def project(self, v: Tensor) -> Tensor:
        """Return ``(I - QQᵀ) v`` (twice, for orthogonality to working precision)."""
        if self.rank == 0:
            return v
        Q = self.basis
        if Q.dtype != v.dtype:  # a float32 basis kept for a memory budget
            for _ in range(2):
                v = v - (Q @ (Q.T @ v.to(Q.dtype))).to(v.dtype)
            return v
        v = v - Q @ (Q.T @ v)
        return v - Q @ (Q.T @ v)

    @classmethod
    def from_lanczos(cls, result: LanczosResult | LanczosProcess) -> Deflation:
        """Deflate the whole Krylov basis of a Lanczos run (no extra products).

        ``Q_mᵀHQ_m = T_m`` and ``‖(I - Q_mQ_mᵀ) H Q_m‖_F = β_m`` (for band
        Lanczos ``T_m`` is banded and ``β_m = ‖C‖_F``).
        """
        if isinstance(result, LanczosProcess):
            # tridiagonal() is banded for a band process; beta is ‖C‖_F there
            return cls(
                result.basis.T,
                result.tridiagonal(),
                float(result.beta) ** 2,
                source="lanczos",
            )
        if result.projected is not None:
            t = torch.from_numpy(np.asarray(result.projected, dtype=np.float64))
            return cls(result.basis.T, t, float(result.beta) ** 2, source="lanczos")
        alphas = torch.from_numpy(np.asarray(result.alphas, dtype=np.float64))
        betas = torch.from_numpy(np.asarray(result.betas, dtype=np.float64))
        basis, beta = result.basis, result.beta
        m = len(alphas)
        t = torch.diag(alphas)
        if m > 1:
            t += torch.diag(betas, 1) + torch.diag(betas, -1)
        return cls(basis.T, t, float(beta) ** 2, source="lanczos")

    @classmethod
    def from_ritz(
        cls, vectors: Tensor, values: np.ndarray, residuals: np.ndarray
    ) -> Deflation:
        """Deflate Ritz vectors of *one* Lanczos run (no extra products).

        For Ritz pairs from one Krylov space, ``YᵀHY = diag(θ)`` and
        ``(I - YYᵀ) H y_i = β_m s_{m,i} q_{m+1}``, so ``‖PHY‖_F² = Σ r_i²``.
        """
        vals = torch.as_tensor(np.asarray(values, dtype=np.float64))
        res = np.asarray(residuals, dtype=np.float64)
        return cls(vectors, torch.diag(vals), float(np.sum(res**2)), source="ritz")

    @classmethod
    def compute(cls, matvec: Matvec, basis: Tensor) -> Deflation:
        """Deflate any orthonormal basis, computing ``HQ`` (``k`` products)."""
        k = basis.shape[1]
        cols = [matvec(basis[:, j]) for j in range(k)]
        hq = torch.stack(cols, dim=1).to(basis.dtype)
        projected = (basis.T @ hq).double().cpu()
        projected = (projected + projected.T) / 2
        leak = float(torch.linalg.matrix_norm(hq - basis @ (basis.T @ hq)) ** 2)
        return cls(basis, projected, leak, n_matvecs=k, source="basis")


def krylov_deflation(
    matvec: Matvec,
    n: int,
    steps: int,
    *,
    generator: torch.Generator | None = None,
    v0: Tensor | None = None,
    process: LanczosProcess | None = None,
    device: torch.device | str | None = None,
    vector_dtype: torch.dtype | None = None,
    max_basis_bytes: int | None = None,
) -> Deflation:
    """Run Lanczos to ``steps`` steps and return its basis as a deflation.

    The rank is lower when the process's basis fills its memory budget
    (``max_basis_bytes``, or the budget of the ``process`` continued): a
    smaller deflation leaves more to the probes but no estimate is biased.

    Args:
        matvec: ``v -> H v``.
        n: Dimension.
        steps: Krylov dimension wanted (= rank of the deflation).
        generator: Random source of the start vector.
        v0: Start vector (random if ``None``).
        process: Continue this Lanczos process (e.g. the one a ``spectral`` run
            left behind) instead of starting afresh; only the new steps cost
            products, and ``n_matvecs`` counts only those.
        device: Device of the vectors.
        vector_dtype: Dtype of the vectors.
        max_basis_bytes: Bytes a new process's basis may take.
    """
    proc = process
    if proc is None:
        proc = LanczosProcess(
            matvec,
            n,
            v0=v0,
            generator=generator,
            dtype=vector_dtype,
            device=device,
            max_basis_bytes=max_basis_bytes,
            steps_hint=steps,
        )
    before = proc.n_matvecs
    while proc.m < min(steps, n, proc.max_steps) and not proc.exhausted:
        proc.step()
    out = Deflation.from_lanczos(proc)
    out.n_matvecs = proc.n_matvecs - before
    return out


# --------------------------------------------------------------------------- probes

#: ``distribution="auto"`` draws orthogonal probes while the space left after
#: deflation has at most this many dimensions (they are kept, so memory grows as
#: probes x n; beyond it, ``1 - k/d`` is ~1 anyway), else Rademacher probes.
ORTHOGONAL_MAX = 4096
#: Images ``P H u`` kept for the cross terms of the Frobenius variance bound.
PAIR_RESERVOIR = 8
DISTRIBUTIONS = ("auto", "rademacher", "gaussian", "orthogonal")
_Z975 = 1.959963984540054
_T975 = (
    12.706204736174705,
    4.302652729749464,
    3.182446305284263,
    2.7764451051977,
    2.570581835636314,
    2.446911848791681,
)


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


class _Probes:
    """Probe vectors ``u`` with ``E[u uᵀ] = P``, the projector off the deflation.

    ``rademacher``/``gaussian``: ``u = P z``, independent. ``orthogonal``: ``u =
    sqrt(d) w``, where ``w`` is a unit vector in the ``d``-dimensional range of
    ``P``, orthogonal to every earlier probe: a Gaussian vector projected and
    orthogonalised, so ``w_1, w_2, ...`` are the columns of a Haar-random
    orthonormal basis of that range. The probes are exchangeable and after ``d``
    of them they span it, so the estimate is exact; their mean has the
    finite-population variance ``σ²/k (d - k)/(d - 1)``.
    """

    def __init__(
        self,
        n: int,
        deflation: Deflation | None,
        distribution: str,
        generator: torch.Generator | None,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        self.n, self.deflation, self.generator = n, deflation, generator
        self.dtype, self.device = dtype, device
        self.dim = n - (deflation.rank if deflation is not None else 0)
        if distribution == "auto":
            small = self.dim <= ORTHOGONAL_MAX
            distribution = "orthogonal" if small else "rademacher"
        self.kind = distribution
        self.count = 0
        self._rows = torch.empty(0, n, dtype=dtype, device=device)

    @property
    def exhausted(self) -> bool:
        """Whether orthogonal probes have spanned the whole space left."""
        return self.kind == "orthogonal" and self.count >= self.dim

    def fpc(self) -> float:
        """Return ``(d - k)/(d - 1)``, the finite-population factor (1: independent)."""
        if self.kind != "orthogonal":
            return 1.0
        if self.exhausted:
            return 0.0
        return (self.dim - self.count) / max(self.dim - 1, 1)

    def _project(self, v: Tensor) -> Tensor:
        return self.deflation.project(v) if self.deflation is not None else v

    def draw(self) -> Tensor:
        """Return the next probe."""
        if self.kind != "orthogonal":
            self.count += 1
            kind = self.kind
            z = random_vector(self.n, self.generator, self.dtype, self.device, kind)
            return self._project(z)
        for _ in range(3):
            g = random_vector(self.n, self.generator, self.dtype, self.device)
            scale = float(torch.linalg.vector_norm(g))
            g = self._project(g)
            rows = self._rows[: self.count]
            for _ in range(2):  # classical Gram-Schmidt twice
                g = g - rows.T @ (rows @ g)
            norm = float(torch.linalg.vector_norm(g))
            if norm > 1e-4 * scale:
                break
        else:
            # three draws in a row almost inside the span: rounding, not chance
            msg = (
                f"orthogonal probe {self.count + 1} of {self.dim} vanished to "
                "rounding; pass distribution='rademacher'"
            )
            raise NumericalError(msg)
        if self.count == self._rows.shape[0]:
            grown = torch.empty(
                min(self.dim, max(8, 2 * self.count)),
                self.n,
                dtype=self.dtype,
                device=self.device,
            )
            grown[: self.count] = self._rows[: self.count]
            self._rows = grown
        w = g / norm
        self._rows[self.count] = w
        self.count += 1
        return w * math.sqrt(self.dim)


class _Tally:
    """Per-probe samples and the standard error of their mean.

    The variance of one sample is estimated conservatively as ``max(s², V_b)``:
    ``s²`` the sample variance and ``V_b = 2 (b̄ - c m̂²)`` a bound from the same
    products (see the module docstring), where ``b̄`` is the mean of the bound
    terms the probes add, ``m̂² = max(x̄² - s²/k, 0)`` an unbiased estimate of the
    squared mean and ``c`` the ``square_weight``. The standard error
    ``sqrt(max(s², V_b)/k · fpc)`` is then widened by :func:`t_factor` for
    ``k - 1`` degrees of freedom.
    """

    def __init__(self, probes: _Probes, square_weight: float = 0.0) -> None:
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


def _check_common(
    max_matvecs: int | None, target: float | None, min_probes: int
) -> None:
    if max_matvecs is not None and max_matvecs < 1:
        msg = f"max_matvecs must be >= 1, got {max_matvecs}"
        raise ConfigError(msg)
    if target is not None and not target > 0:
        msg = f"target_rel_stderr must be > 0, got {target}"
        raise ConfigError(msg)
    if min_probes < 2:
        msg = f"min_probes must be >= 2 (a standard error needs two), got {min_probes}"
        raise ConfigError(msg)


def _check_distribution(distribution: str) -> None:
    if distribution not in DISTRIBUTIONS:
        msg = (
            f"distribution must be one of {', '.join(map(repr, DISTRIBUTIONS))}, "
            f"got {distribution!r}"
        )
        raise ConfigError(msg)


def _probe_loop(
    draw: Callable[[], None],
    tally: _Tally,
    *,
    summarize: Callable[[_Tally], tuple[float, float]],
    probes: int | None,
    max_probes: int | None,
    target: float | None,
    min_probes: int,
    progress: Callable[..., None] | None,
) -> bool:
    """Draw probes until the target, ``probes``, the budget or exhaustion.

    While the target is not met, each look predicts how many independent probes
    it would take (:meth:`_Tally.expect`); orthogonal probes that would need the
    whole space left anyway go on to span it, so the value becomes exact.

    Returns:
        Whether the estimate converged: the target was reached, the orthogonal
        probes spanned the space (exact), or no target was set.
    """
    cap = probes if probes is not None else max_probes
    if cap is None:
        cap = 10_000 if target is not None else 30
    converged = target is None
    while len(tally) < cap and not tally.probes.exhausted:
        draw()
        k = len(tally)
        if k < 2 and not tally.probes.exhausted:
            continue
        value, se = summarize(tally)
        if progress is not None:
            progress(k, None, estimate=value, stderr=se)
        if probes is not None or target is None or k < min_probes or tally.committed:
            continue
        if se <= target * abs(value):
            converged = True
            break
        tally.expect(se, target * abs(value))
    return converged or tally.probes.exhausted


def _probe_budget(max_matvecs: int | None, used: int, probes: int | None) -> int | None:
    if max_matvecs is None:
        return None
    left = max_matvecs - used
    if left < 2 and probes is None:
        msg = (
            f"max_matvecs={max_matvecs} leaves {left} products for probes after "
            f"the deflation ({used}); raise it or deflate less"
        )
        raise ConfigError(msg)
    return max(left, 0)


def _setup(
    matvec: Matvec,
    n: int,
    deflation: Deflation | None,
    device: torch.device | str | None,
    vector_dtype: torch.dtype | None,
) -> tuple[torch.dtype, torch.device]:
    if n < 1:
        msg = f"dimension n must be >= 1, got {n}"
        raise ConfigError(msg)
    v0 = deflation.basis[:, 0] if deflation is not None and deflation.rank else None
    return operator_dtype(matvec, v0, vector_dtype), operator_device(matvec, v0, device)


def _square_weight(source: _Probes) -> float:
    """``c`` in the trace's variance bound ``2(‖A‖_F² - c (tr A)²)``.

    Rademacher: ``Σ_i A_ii² >= (tr A)²/n``; orthogonal: the exact variance of
    ``d wᵀAw`` is ``2d/(d+2) (‖A‖_F² - (tr A)²/d)``; Gaussian: ``2‖A‖_F²``.
    """
    if source.kind == "rademacher":
        return 1.0 / source.n
    if source.kind == "orthogonal":
        return 1.0 / max(source.dim, 1)
    return 0.0


def _plus(count: float | None, offset: int) -> float | None:
    return None if count is None else count + offset


def _method(base: str, source: _Probes) -> str:
    return f"{base}+{source.kind}" + ("(exact)" if source.exhausted else "")


# --------------------------------------------------------------------------- trace


def hutchinson_trace(
    matvec: Matvec,
    n: int,
    *,
    probes: int | None = None,
    max_matvecs: int | None = None,
    target_rel_stderr: float | None = None,
    min_probes: int = DEFAULT_MIN_PROBES,
    deflation: Deflation | None = None,
    generator: torch.Generator | None = None,
    distribution: str = "auto",
    device: torch.device | str | None = None,
    vector_dtype: torch.dtype | None = None,
    progress: Callable[..., None] | None = None,
) -> Estimate:
    """Estimate ``tr H`` with Hutchinson's estimator (optionally deflated).

    Args:
        matvec: ``v -> H v``.
        n: Dimension.
        probes: Exactly this many probes (overrides the stopping rules; fewer
            when orthogonal probes span the space first).
        max_matvecs: Budget of products for the probes (and nothing else: a
            given ``deflation`` is already paid for).
        target_rel_stderr: Stop once ``stderr <= target * |value|``.
        min_probes: Probes before the target may stop the loop.
        deflation: Estimate only the remainder outside this subspace.
        generator: Random source of the probes.
        distribution: ``"auto"`` (default: ``"orthogonal"`` while the space left
            after deflation has at most ``ORTHOGONAL_MAX`` dimensions, else
            ``"rademacher"``), ``"rademacher"`` (independent ±1 entries: the
            smallest variance of independent probes), ``"gaussian"`` or
            ``"orthogonal"`` (mutually orthogonal random directions: never more
            than ``n - rank`` probes, and exact after that many).
        device: Device of the vectors.
        vector_dtype: Dtype of the vectors.
        progress: ``progress(done, total, estimate=..., stderr=...)``.

    Returns:
        An :class:`Estimate` (default: 30 probes without a target).

    Raises:
        ConfigError: A bad argument.
    """
    start = time.perf_counter()
    _check_common(max_matvecs, target_rel_stderr, min_probes)
    _check_distribution(distribution)
    dtype, dev = _setup(matvec, n, deflation, device, vector_dtype)
    exact = deflation.trace if deflation is not None else 0.0
    budget = _probe_budget(max_matvecs, 0, probes)
    source = _Probes(n, deflation, distribution, generator, dtype, dev)
    tally = _Tally(source, _square_weight(source))

    def draw() -> None:
        u = source.draw()
        hu = matvec(u).to(dtype)
        rest = deflation.project(hu) if deflation is not None else hu
        # E‖(PHP) z‖² = ‖PHP‖_F² >= half the variance of uᵀHu: a free bound
        tally.add(float(torch.dot(u, hu)), (float(torch.dot(rest, rest)),))

    def summarize(t: _Tally) -> tuple[float, float]:
        return exact + t.mean(), t.stderr()

    converged = _probe_loop(
        draw,
        tally,
        summarize=summarize,
        probes=probes,
        max_probes=budget,
        target=target_rel_stderr,
        min_probes=min_probes,
        progress=progress,
    )
    value, se = summarize(tally)
    base = "hutchinson" + ("+deflation" if deflation is not None else "")
    return Estimate(
        value=value,
        stderr=se,
        n_matvecs=len(tally),
        samples=np.asarray(tally.values, dtype=np.float64),
        exact_part=exact,
        deflation_rank=deflation.rank if deflation is not None else 0,
        converged=converged,
        seconds=time.perf_counter() - start,
        method=_method(base, source),
        distribution=source.kind,
        exhausted=source.exhausted,
        expected_matvecs=_plus(tally.expected, n - source.dim),
    )


def hutchpp_trace(
    matvec: Matvec,
    n: int,
    *,
    sketch: str = "lanczos",
    sketch_size: int | None = None,
    deflation: Deflation | None = None,
    probes: int | None = None,
    max_matvecs: int | None = None,
    target_rel_stderr: float | None = None,
    min_probes: int = DEFAULT_MIN_PROBES,
    generator: torch.Generator | None = None,
    distribution: str = "auto",
    device: torch.device | str | None = None,
    vector_dtype: torch.dtype | None = None,
    progress: Callable[..., None] | None = None,
) -> Estimate:
    """Estimate ``tr H`` with Hutch++: exact on a subspace, Hutchinson on the rest.

    The subspace is ``deflation`` when given (e.g. a cached Lanczos basis, free),
    else ``sketch="lanczos"``: ``sketch_size`` Lanczos steps from a random vector
    (Krylov-aware deflation, one product per dimension), or ``sketch="random"``:
    Meyer et al.'s ``orth(H S)`` for a Rademacher ``S`` (two products per
    dimension: ``HS`` and ``HQ``).

    Args:
        matvec: ``v -> H v``.
        n: Dimension.
        sketch: ``"lanczos"`` or ``"random"`` (ignored when ``deflation`` is given).
        sketch_size: Dimension of the sketched subspace (default 20, or a third
            of ``max_matvecs`` when that is smaller).
        deflation: A ready subspace to deflate.
        probes: Exactly this many Hutchinson probes.
        max_matvecs: Budget of products, sketch included.
        target_rel_stderr: Stop once ``stderr <= target * |value|``.
        min_probes: Probes before the target may stop the loop.
        generator: Random source (sketch and probes).
        distribution: Probes, as for :func:`hutchinson_trace`.
        device: Device of the vectors.
        vector_dtype: Dtype of the vectors.
        progress: ``progress(done, total, estimate=..., stderr=...)``.

    Returns:
        An :class:`Estimate`; ``n_matvecs`` includes the sketch.

    Raises:
        ConfigError: A bad argument.
    """
    start = time.perf_counter()
    _check_common(max_matvecs, target_rel_stderr, min_probes)
    _check_distribution(distribution)
    if sketch not in ("lanczos", "random"):
        msg = f"sketch must be 'lanczos' or 'random', got {sketch!r}"
        raise ConfigError(msg)
    used = 0
    if deflation is None:
        size = sketch_size
        if size is None:
            size = 20 if max_matvecs is None else max(1, min(20, max_matvecs // 3))
        size = min(size, n)
        deflation = _sketch(matvec, n, sketch, size, generator, device, vector_dtype)
        used = deflation.n_matvecs
    budget = None if max_matvecs is None else max_matvecs - used
    if budget is not None and budget < 2 and probes is None:
        msg = (
            f"max_matvecs={max_matvecs} leaves {budget} products for probes after "
            f"the sketch ({used}); raise it or pass a smaller sketch_size"
        )
        raise ConfigError(msg)
    rest = hutchinson_trace(
        matvec,
        n,
        probes=probes,
        max_matvecs=budget,
        target_rel_stderr=target_rel_stderr,
        min_probes=min_probes,
        deflation=deflation,
        generator=generator,
        distribution=distribution,
        device=device,
        vector_dtype=vector_dtype,
        progress=_offset(progress, used),
    )
    method = f"hutch++({deflation.source})+{rest.distribution}"
    if rest.exhausted:
        method += "(exact)"
    return Estimate(
        value=rest.value,
        stderr=rest.stderr,
        n_matvecs=rest.n_matvecs + used,
        samples=rest.samples,
        exact_part=rest.exact_part,
        deflation_rank=deflation.rank,
        converged=rest.converged,
        seconds=time.perf_counter() - start,
        method=method,
        distribution=rest.distribution,
        exhausted=rest.exhausted,
        expected_matvecs=rest.expected_matvecs,
    )


def _offset(
    progress: Callable[..., None] | None, offset: int
) -> Callable[..., None] | None:
    if progress is None:
        return None

    def shifted(done: float, total: float | None = None, **info: Any) -> None:
        progress(done + offset, total, **info)

    return shifted


def _sketch(
    matvec: Matvec,
    n: int,
    sketch: str,
    size: int,
    generator: torch.Generator | None,
    device: torch.device | str | None,
    vector_dtype: torch.dtype | None,
) -> Deflation:
    if sketch == "lanczos":
        return krylov_deflation(
            matvec,
            n,
            size,
            generator=generator,
            device=device,
            vector_dtype=vector_dtype,
        )
    dtype = operator_dtype(matvec, None, vector_dtype)
    dev = operator_device(matvec, None, device)
    cols = [
        matvec(random_vector(n, generator, dtype, dev, "rademacher")).to(dtype)
        for _ in range(size)
    ]
    q, _ = torch.linalg.qr(torch.stack(cols, dim=1))
    out = Deflation.compute(matvec, q)
    out.n_matvecs += size
    out.source = "sketch"
    return out


# --------------------------------------------------------------------------- Frobenius


def frobenius_norm(
    matvec: Matvec,
    n: int,
    *,
    deflation: Deflation | None = None,
    deflation_steps: int = 20,
    probes: int | None = None,
    max_matvecs: int | None = None,
    target_rel_stderr: float | None = None,
    min_probes: int = FROBENIUS_MIN_PROBES,
    generator: torch.Generator | None = None,
    distribution: str = "auto",
    device: torch.device | str | None = None,
    vector_dtype: torch.dtype | None = None,
    progress: Callable[..., None] | None = None,
) -> Estimate:
    """Estimate ``‖H‖_F = sqrt(tr H²)``: exact on a deflated subspace plus probes.

    ``‖H‖_F² = ‖QᵀHQ‖_F² + 2‖PHQ‖_F² + E‖P H P z‖²`` (see the module docstring).

    Args:
        matvec: ``v -> H v``.
        n: Dimension.
        deflation: A ready subspace (e.g. from a cached Lanczos run); if
            ``None``, ``deflation_steps`` Lanczos steps build one.
        deflation_steps: Krylov dimension when no ``deflation`` is given (0 for
            plain probes).
        probes: Exactly this many probes.
        max_matvecs: Budget of products, deflation included.
        target_rel_stderr: Stop once ``stderr(‖H‖_F) <= target * ‖H‖_F``.
        min_probes: Probes before the target may stop the loop.
        generator: Random source.
        distribution: Probes, as for :func:`hutchinson_trace`.
        device: Device of the vectors.
        vector_dtype: Dtype of the vectors.
        progress: ``progress(done, total, estimate=..., stderr=...)``.

    Returns:
        An :class:`Estimate` of ``‖H‖_F``; ``samples`` are the ``‖PHPz‖²`` and
        ``exact_part`` is the exact part of ``‖H‖_F²``.

    Raises:
        ConfigError: A bad argument.
    """
    start = time.perf_counter()
    _check_common(max_matvecs, target_rel_stderr, min_probes)
    _check_distribution(distribution)
    used = 0
    if deflation is None and deflation_steps > 0:
        steps = deflation_steps
        if max_matvecs is not None:
            steps = max(1, min(steps, max_matvecs // 2))
        deflation = krylov_deflation(
            matvec,
            n,
            steps,
            generator=generator,
            device=device,
            vector_dtype=vector_dtype,
        )
        used = deflation.n_matvecs
    dtype, dev = _setup(matvec, n, deflation, device, vector_dtype)
    exact = deflation.frobenius_squared if deflation is not None else 0.0
    if deflation is not None and deflation.rank >= n:
        return Estimate(  # the subspace is everything: exact
            value=math.sqrt(max(exact, 0.0)),
            stderr=0.0,
            n_matvecs=used,
            samples=np.zeros(0),
            exact_part=exact,
            deflation_rank=deflation.rank,
            converged=True,
            seconds=time.perf_counter() - start,
            method="exact",
            exhausted=True,
        )
    budget = _probe_budget(max_matvecs, used, probes)
    source = _Probes(n, deflation, distribution, generator, dtype, dev)
    # Rademacher: Σ_i B_ii² >= (tr B)²/n; the cross terms of orthogonal probes
    # already leave (tr B)²/d out, and Gaussian ones have variance 2‖B‖_F².
    tally = _Tally(source, 1.0 / n if source.kind == "rademacher" else 0.0)
    kept: list[Tensor] = []

    def draw() -> None:
        hu = matvec(source.draw()).to(dtype)
        if deflation is not None:
            hu = deflation.project(hu)
        # (P H u_i)ᵀ(P H u_j), i != j: E[c²] = ‖(PHP)²‖_F² >= half the variance
        pairs = [float(torch.dot(hu, y)) ** 2 for y in kept]
        if len(kept) < PAIR_RESERVOIR:
            kept.append(hu)
        tally.add(float(torch.dot(hu, hu)), pairs)

    def summarize(t: _Tally) -> tuple[float, float]:
        root = math.sqrt(max(exact + t.mean(), 0.0))
        se = t.stderr()
        return root, (se / (2 * root) if root > 0 else se)

    converged = _probe_loop(
        draw,
        tally,
        summarize=summarize,
        probes=probes,
        max_probes=budget,
        target=target_rel_stderr,
        min_probes=min_probes,
        progress=_offset(progress, used),
    )
    value, se = summarize(tally)
    base = "deflated-hutchinson" if deflation is not None else "hutchinson"
    return Estimate(
        value=value,
        stderr=se,
        n_matvecs=used + len(tally),
        samples=np.asarray(tally.values, dtype=np.float64),
        exact_part=exact,
        deflation_rank=deflation.rank if deflation is not None else 0,
        converged=converged,
        seconds=time.perf_counter() - start,
        method=_method(base, source),
        distribution=source.kind,
        exhausted=source.exhausted,
        expected_matvecs=_plus(tally.expected, n - source.dim),
    )


# --------------------------------------------------------------------------- SLQ


def slq_density(
    matvec: Matvec,
    n: int,
    *,
    probes: int = 4,
    steps: int = 64,
    sigma: float | None = None,
    grid: np.ndarray | int = 512,
    target_rel_stderr: float | None = None,
    max_matvecs: int | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    vector_dtype: torch.dtype | None = None,
    progress: Callable[..., None] | None = None,
    max_basis_bytes: int | None = None,
) -> DensityEstimate:
    """Estimate the eigenvalue density by stochastic Lanczos quadrature.

    Args:
        matvec: ``v -> H v``.
        n: Dimension.
        probes: Independent Rademacher probes (each ``steps`` products); with
            ``target_rel_stderr``, the minimum number of probes.
        steps: Lanczos steps per probe (fewer if its Krylov space is exhausted).
        sigma: Width of the Gaussian smoothing (default: 1 % of the range of
            the nodes).
        grid: Points to evaluate the density at, or how many to spread over the
            nodes' range widened by ``6 sigma`` on both sides.
        target_rel_stderr: Add probes until the trace estimate's standard
            error is at most this fraction of it.
        max_matvecs: Budget of products: no probe starts that could exceed it.
        generator: Random source of the probes.
        device: Device of the vectors.
        vector_dtype: Dtype of the vectors.
        progress: ``progress(done, total, estimate=...)``.
        max_basis_bytes: Bytes a probe's Lanczos basis may take; fewer
            ``steps`` per probe when they do not fit (a coarser quadrature).

    Returns:
        A :class:`DensityEstimate`.

    Raises:
        ConfigError: A bad argument, or a budget smaller than one probe.
    """
    start = time.perf_counter()
    if probes < 1 or steps < 1:
        msg = f"probes and steps must be >= 1, got {probes} and {steps}"
        raise ConfigError(msg)
    if sigma is not None and not sigma > 0:
        msg = f"sigma must be > 0, got {sigma}"
        raise ConfigError(msg)
    _check_common(max_matvecs, target_rel_stderr, 2)
    dtype = operator_dtype(matvec, None, vector_dtype)
    dev = operator_device(matvec, None, device)
    m_max = min(steps, n)
    _, rows = basis_plan(n, dtype, m_max + 1, max_basis_bytes)
    m_max = min(m_max, rows - 1)
    if max_matvecs is not None and max_matvecs < m_max:
        msg = (
            f"max_matvecs={max_matvecs} is less than one probe of {m_max} steps; "
            "raise it or lower steps"
        )
        raise ConfigError(msg)
    node_rows: list[np.ndarray] = []
    weight_rows: list[np.ndarray] = []
    tally = _Tally(_Probes(n, None, "rademacher", generator, dtype, dev), 1.0 / n)
    used = 0
    total = None if target_rel_stderr is not None else probes * m_max
    while True:
        if max_matvecs is not None and used + m_max > max_matvecs:
            break
        if len(tally) >= probes:
            if target_rel_stderr is None:
                break
            if tally.stderr() <= target_rel_stderr * abs(tally.mean()):
                break
        z = random_vector(n, generator, dtype, dev, "rademacher")
        proc = LanczosProcess(
            matvec,
            n,
            v0=z,
            generator=generator,
            device=dev,
            restart=False,
            max_basis_bytes=max_basis_bytes,
            steps_hint=m_max,
        )
        for _ in range(m_max):
            if proc.exhausted:
                break
            proc.step()
            if progress is not None:
                progress(used + proc.n_matvecs, total)
        used += proc.n_matvecs
        evals, evecs = torch.linalg.eigh(proc.tridiagonal())
        row_nodes = np.full(m_max, np.nan)
        row_weights = np.zeros(m_max)
        row_nodes[: len(evals)] = evals.numpy()
        row_weights[: len(evals)] = (evecs[0] ** 2).numpy()
        node_rows.append(row_nodes)
        weight_rows.append(row_weights)
        # n vᵀHv = zᵀHz (v = z/‖z‖), and ‖Hz‖² = n (α₁² + β₁²) for its bound
        beta1 = proc.betas[0] if proc.betas else proc.beta
        tally.add(n * proc.alphas[0], (n * (proc.alphas[0] ** 2 + beta1**2),))
    nodes = np.stack(node_rows)
    weights = np.stack(weight_rows)
    samples = np.asarray(tally.values, dtype=np.float64)
    finite = nodes[np.isfinite(nodes)]
    lo, hi = float(finite.min()), float(finite.max())
    if sigma is None:
        sigma = max(0.01 * (hi - lo), 1e-12 * max(abs(lo), abs(hi), 1.0))
    if isinstance(grid, int):
        grid_pts = np.linspace(lo - 6 * sigma, hi + 6 * sigma, grid)
    else:
        grid_pts = np.asarray(grid, dtype=np.float64)
    density = smooth_density(nodes, weights, grid_pts, sigma)
    trace, se = tally.mean(), tally.stderr()
    return DensityEstimate(
        nodes=nodes,
        weights=weights,
        grid=grid_pts,
        density=density,
        sigma=float(sigma),
        trace=trace,
        trace_stderr=se,
        n_matvecs=used,
        samples=samples,
        seconds=time.perf_counter() - start,
    )


def smooth_density(
    nodes: np.ndarray, weights: np.ndarray, grid: np.ndarray, sigma: float
) -> np.ndarray:
    """Return the mean over rows of ``Σ_j w_j N(t; θ_j, σ²)`` at each ``t`` of ``grid``.

    Args:
        nodes: ``(rows, m)`` node positions (NaN entries must have weight 0).
        weights: ``(rows, m)`` weights; each row sums to 1.
        grid: Evaluation points.
        sigma: Standard deviation of the Gaussian kernel.
    """
    t = torch.from_numpy(np.nan_to_num(nodes).reshape(-1))
    w = torch.from_numpy(weights.reshape(-1))
    g = torch.from_numpy(grid)
    z = (g[:, None] - t[None, :]) / sigma
    kernel = torch.exp(-0.5 * z * z) / (sigma * math.sqrt(2 * math.pi))
    out: np.ndarray = (kernel @ w / nodes.shape[0]).numpy()
    return out
