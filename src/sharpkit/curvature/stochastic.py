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

Stopping on a target standard error uses the sample standard deviation of the
probes seen so far, after at least ``min_probes`` of them; the slight bias of
such sequential stopping is far below the reported standard error at the
default minimum.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from sharpkit.curvature.lanczos import (
    LanczosProcess,
    LanczosResult,
    operator_device,
    operator_dtype,
    random_vector,
)
from sharpkit.errors import ConfigError

__all__ = [
    "Deflation",
    "DensityEstimate",
    "Estimate",
    "frobenius_norm",
    "hutchinson_trace",
    "hutchpp_trace",
    "krylov_deflation",
    "slq_density",
    "smooth_density",
]

Matvec = Callable[[Tensor], Tensor]
DEFAULT_MIN_PROBES = 8


# --------------------------------------------------------------------------- results


@dataclass(frozen=True, kw_only=True)
class Estimate:
    """A stochastic estimate.

    Attributes:
        value: The estimate (trace, or ``‖H‖_F``).
        stderr: Its standard error (0 when the deflation captured everything).
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
        trace_stderr: Its standard error.
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
        v = v - Q @ (Q.T @ v)
        return v - Q @ (Q.T @ v)

    @classmethod
    def from_lanczos(cls, result: LanczosResult | LanczosProcess) -> Deflation:
        """Deflate the whole Krylov basis of a Lanczos run (no extra products).

        ``Q_mᵀHQ_m = T_m`` and ``‖(I - Q_mQ_mᵀ) H Q_m‖_F = β_m``.
        """
        if isinstance(result, LanczosProcess):
            alphas = torch.tensor(result.alphas, dtype=torch.float64)
            betas = torch.tensor(result.betas, dtype=torch.float64)
            basis, beta = result.basis, result.beta
        else:
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
) -> Deflation:
    """Run Lanczos to ``steps`` steps and return its basis as a deflation.

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
    """
    proc = process
    if proc is None:
        proc = LanczosProcess(
            matvec, n, v0=v0, generator=generator, dtype=vector_dtype, device=device
        )
    before = proc.n_matvecs
    while proc.m < min(steps, n) and not proc.exhausted:
        proc.step()
    out = Deflation.from_lanczos(proc)
    out.n_matvecs = proc.n_matvecs - before
    return out


# --------------------------------------------------------------------------- probes


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


def _probe_loop(
    sample: Callable[[], float],
    *,
    summarize: Callable[[np.ndarray], tuple[float, float]],
    probes: int | None,
    max_probes: int | None,
    target: float | None,
    min_probes: int,
    progress: Callable[..., None] | None,
    done_before: int,
) -> tuple[np.ndarray, bool]:
    """Draw samples until the target, ``probes`` or the probe budget is reached."""
    cap = probes if probes is not None else max_probes
    if cap is None:
        cap = 10_000 if target is not None else 30
    values: list[float] = []
    converged = target is None
    while len(values) < cap:
        values.append(sample())
        arr = np.asarray(values)
        if len(values) >= 2:
            value, se = summarize(arr)
            if progress is not None:
                progress(done_before + len(values), None, estimate=value, stderr=se)
            if (
                probes is None
                and target is not None
                and len(values) >= min_probes
                and se <= target * abs(value)
            ):
                converged = True
                break
    return np.asarray(values, dtype=np.float64), converged


def _mean_se(samples: np.ndarray) -> tuple[float, float]:
    if len(samples) == 0:
        return 0.0, 0.0
    if len(samples) == 1:
        return float(samples[0]), math.inf
    return float(samples.mean()), float(samples.std(ddof=1) / math.sqrt(len(samples)))


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
    distribution: str = "rademacher",
    device: torch.device | str | None = None,
    vector_dtype: torch.dtype | None = None,
    progress: Callable[..., None] | None = None,
) -> Estimate:
    """Estimate ``tr H`` with Hutchinson's estimator (optionally deflated).

    Args:
        matvec: ``v -> H v``.
        n: Dimension.
        probes: Exactly this many probes (overrides the stopping rules).
        max_matvecs: Budget of products for the probes (and nothing else: a
            given ``deflation`` is already paid for).
        target_rel_stderr: Stop once ``stderr <= target * |value|``.
        min_probes: Probes before the target may stop the loop.
        deflation: Estimate only the remainder outside this subspace.
        generator: Random source of the probes.
        distribution: ``"rademacher"`` (default, smallest variance) or
            ``"gaussian"``.
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
    if distribution not in ("rademacher", "gaussian"):
        msg = f"distribution must be 'rademacher' or 'gaussian', got {distribution!r}"
        raise ConfigError(msg)
    dtype, dev = _setup(matvec, n, deflation, device, vector_dtype)
    exact = deflation.trace if deflation is not None else 0.0
    budget = _probe_budget(max_matvecs, 0, probes)

    def sample() -> float:
        z = random_vector(n, generator, dtype, dev, distribution)
        u = deflation.project(z) if deflation is not None else z
        return float(torch.dot(u, matvec(u).to(dtype)))

    def summarize(s: np.ndarray) -> tuple[float, float]:
        m, se = _mean_se(s)
        return exact + m, se

    samples, converged = _probe_loop(
        sample,
        summarize=summarize,
        probes=probes,
        max_probes=budget,
        target=target_rel_stderr,
        min_probes=min_probes,
        progress=progress,
        done_before=0,
    )
    value, se = summarize(samples)
    return Estimate(
        value=value,
        stderr=se,
        n_matvecs=len(samples),
        samples=samples,
        exact_part=exact,
        deflation_rank=deflation.rank if deflation is not None else 0,
        converged=converged,
        seconds=time.perf_counter() - start,
        method="hutchinson" + ("+deflation" if deflation is not None else ""),
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
        device=device,
        vector_dtype=vector_dtype,
        progress=_offset(progress, used),
    )
    method = f"hutch++({deflation.source})"
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
    min_probes: int = DEFAULT_MIN_PROBES,
    generator: torch.Generator | None = None,
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
    budget = _probe_budget(max_matvecs, used, probes)
    if deflation is not None and deflation.rank >= n:
        samples = np.zeros(0)  # the subspace is everything: exact
        value = math.sqrt(max(exact, 0.0))
        return Estimate(
            value=value,
            stderr=0.0,
            n_matvecs=used,
            samples=samples,
            exact_part=exact,
            deflation_rank=deflation.rank,
            converged=True,
            seconds=time.perf_counter() - start,
            method="exact",
        )

    def sample() -> float:
        z = random_vector(n, generator, dtype, dev, "rademacher")
        u = deflation.project(z) if deflation is not None else z
        hu = matvec(u).to(dtype)
        if deflation is not None:
            hu = deflation.project(hu)
        return float(torch.dot(hu, hu))

    def summarize(s: np.ndarray) -> tuple[float, float]:
        m, se = _mean_se(s)
        sq = max(exact + m, 0.0)
        root = math.sqrt(sq)
        return root, (se / (2 * root) if root > 0 else se)

    samples, converged = _probe_loop(
        sample,
        summarize=summarize,
        probes=probes,
        max_probes=budget,
        target=target_rel_stderr,
        min_probes=min_probes,
        progress=_offset(progress, used),
        done_before=0,
    )
    value, se = summarize(samples)
    return Estimate(
        value=value,
        stderr=se,
        n_matvecs=used + len(samples),
        samples=samples,
        exact_part=exact,
        deflation_rank=deflation.rank if deflation is not None else 0,
        converged=converged,
        seconds=time.perf_counter() - start,
        method="deflated-hutchinson" if deflation is not None else "hutchinson",
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
    if max_matvecs is not None and max_matvecs < m_max:
        msg = (
            f"max_matvecs={max_matvecs} is less than one probe of {m_max} steps; "
            "raise it or lower steps"
        )
        raise ConfigError(msg)
    node_rows: list[np.ndarray] = []
    weight_rows: list[np.ndarray] = []
    values: list[float] = []
    used = 0
    total = None if target_rel_stderr is not None else probes * m_max
    while True:
        if max_matvecs is not None and used + m_max > max_matvecs:
            break
        if len(values) >= probes:
            if target_rel_stderr is None:
                break
            est, se = _mean_se(np.asarray(values))
            if se <= target_rel_stderr * abs(est):
                break
        z = random_vector(n, generator, dtype, dev, "rademacher")
        proc = LanczosProcess(
            matvec, n, v0=z, generator=generator, device=dev, restart=False
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
        values.append(n * float(proc.alphas[0]))  # n vᵀHv, v = z/‖z‖
    nodes = np.stack(node_rows)
    weights = np.stack(weight_rows)
    samples = np.asarray(values)
    finite = nodes[np.isfinite(nodes)]
    lo, hi = float(finite.min()), float(finite.max())
    if sigma is None:
        sigma = max(0.01 * (hi - lo), 1e-12 * max(abs(lo), abs(hi), 1.0))
    if isinstance(grid, int):
        grid_pts = np.linspace(lo - 6 * sigma, hi + 6 * sigma, grid)
    else:
        grid_pts = np.asarray(grid, dtype=np.float64)
    density = smooth_density(nodes, weights, grid_pts, sigma)
    trace, se = _mean_se(samples)
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
