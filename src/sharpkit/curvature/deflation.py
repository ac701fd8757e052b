"""Deflation subspaces: an orthonormal basis ``Q`` with ``QᵀHQ`` and ``‖PHQ‖_F²``.

The stochastic estimators (see :mod:`sharpkit.curvature.stochastic`) compute
the part of ``tr H`` or ``‖H‖_F²`` inside ``Q`` exactly and estimate only the
remainder ``PHP``, ``P = I - QQᵀ``, with probes. Three sources of ``Q``: a
Lanczos basis (free: ``T_m`` and ``β_m`` come from the recurrence; Chen &
Hallman, 2023, "Krylov-aware stochastic trace estimation"), Ritz vectors of one
Lanczos run (free: ``diag(θ)`` and the residuals), or any orthonormal basis such
as Hutch++'s sketch ``orth(H S)`` (Meyer, Musco, Musco & Woodruff, 2021), which
costs ``HQ``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

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

__all__ = ["Deflation", "Matvec", "krylov_deflation", "sketch_deflation"]

Matvec = Callable[[Tensor], Tensor]


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


def sketch_deflation(
    matvec: Matvec,
    n: int,
    sketch: str,
    size: int,
    generator: torch.Generator | None,
    device: torch.device | str | None,
    vector_dtype: torch.dtype | None,
) -> Deflation:
    """Return Hutch++'s subspace: ``size`` Lanczos steps, or ``orth(H S)``.

    Args:
        matvec: ``v -> H v``.
        n: Dimension.
        sketch: ``"lanczos"`` (one product per dimension) or ``"random"``
            (Meyer et al.'s ``orth(H S)`` for a Rademacher ``S``: two).
        size: Dimension of the subspace.
        generator: Random source.
        device: Device of the vectors.
        vector_dtype: Dtype of the vectors.
    """
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
