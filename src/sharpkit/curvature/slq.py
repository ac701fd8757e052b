"""Spectral density by stochastic Lanczos quadrature (SLQ).

Ubaru, Chen & Saad, 2017, "Fast estimation of tr(f(A)) via stochastic Lanczos
quadrature", SIAM J. Matrix Anal. Appl.; Ghorbani, Krishnan & Xiao, 2019, ICML,
for Hessians. For each normalised probe ``v = z/‖z‖``, ``m`` Lanczos steps give
``T_m = S Θ Sᵀ``; the nodes ``θ_j`` with weights ``τ_j = S_{1j}²`` (summing to
1) form a Gauss rule for the spectral measure of ``H`` seen from ``v``, whose
expectation is the eigenvalue density ``(1/n) Σ_i δ(t - λ_i)``. Its first two
moments are exact per probe: ``Σ τ_j θ_j = vᵀHv`` and ``Σ τ_j θ_j² = ‖Hv‖²``,
whose expectations are ``tr H / n`` and ``tr H² / n``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from sharpkit.curvature.deflation import Matvec
from sharpkit.curvature.lanczos import (
    LanczosProcess,
    basis_plan,
    operator_device,
    operator_dtype,
    random_vector,
)
from sharpkit.curvature.probes import ProbeSource
from sharpkit.curvature.stopping import Progress, Tally, check_stopping
from sharpkit.errors import ConfigError

__all__ = ["DensityEstimate", "slq_density", "smooth_density"]


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
    progress: Progress | None = None,
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
    check_stopping(max_matvecs, target_rel_stderr, 2)
    dtype = operator_dtype(matvec, None, vector_dtype)
    dev = operator_device(matvec, None, device)
    m_max = _steps_per_probe(n, steps, dtype, max_matvecs, max_basis_bytes)
    rows: list[tuple[np.ndarray, np.ndarray]] = []
    tally = Tally(ProbeSource(n, None, "rademacher", generator, dtype, dev), 1.0 / n)
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
        rows.append(_quadrature(proc, m_max, tally))
    nodes = np.stack([r[0] for r in rows])
    weights = np.stack([r[1] for r in rows])
    return _finish(nodes, weights, sigma, grid, tally, used, start)


def _steps_per_probe(
    n: int,
    steps: int,
    dtype: torch.dtype,
    max_matvecs: int | None,
    max_basis_bytes: int | None,
) -> int:
    """Lanczos steps per probe: ``steps``, fewer if the basis does not fit."""
    m_max = min(steps, n)
    _, rows = basis_plan(n, dtype, m_max + 1, max_basis_bytes)
    m_max = min(m_max, rows - 1)
    if max_matvecs is not None and max_matvecs < m_max:
        msg = (
            f"max_matvecs={max_matvecs} is less than one probe of {m_max} steps; "
            "raise it or lower steps"
        )
        raise ConfigError(msg)
    return m_max


def _quadrature(
    proc: LanczosProcess, m_max: int, tally: Tally
) -> tuple[np.ndarray, np.ndarray]:
    """One probe's Gauss nodes and weights (padded to ``m_max``); its trace sample."""
    n = proc.n
    evals, evecs = torch.linalg.eigh(proc.tridiagonal())
    row_nodes = np.full(m_max, np.nan)
    row_weights = np.zeros(m_max)
    row_nodes[: len(evals)] = evals.numpy()
    row_weights[: len(evals)] = (evecs[0] ** 2).numpy()
    # n vᵀHv = zᵀHz (v = z/‖z‖), and ‖Hz‖² = n (α₁² + β₁²) for its bound
    beta1 = proc.betas[0] if proc.betas else proc.beta
    tally.add(n * proc.alphas[0], (n * (proc.alphas[0] ** 2 + beta1**2),))
    return row_nodes, row_weights


def _finish(
    nodes: np.ndarray,
    weights: np.ndarray,
    sigma: float | None,
    grid: np.ndarray | int,
    tally: Tally,
    used: int,
    start: float,
) -> DensityEstimate:
    """Smooth the quadrature on its grid and return the estimate."""
    finite = nodes[np.isfinite(nodes)]
    lo, hi = float(finite.min()), float(finite.max())
    if sigma is None:
        sigma = max(0.01 * (hi - lo), 1e-12 * max(abs(lo), abs(hi), 1.0))
    if isinstance(grid, int):
        grid_pts = np.linspace(lo - 6 * sigma, hi + 6 * sigma, grid)
    else:
        grid_pts = np.asarray(grid, dtype=np.float64)
    return DensityEstimate(
        nodes=nodes,
        weights=weights,
        grid=grid_pts,
        density=smooth_density(nodes, weights, grid_pts, sigma),
        sigma=float(sigma),
        trace=tally.mean(),
        trace_stderr=tally.stderr(),
        n_matvecs=used,
        samples=np.asarray(tally.values, dtype=np.float64),
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
