"""Power iteration for the dominant eigenvalue, as PyHessian does it.

Power iteration (von Mises & Pollaczek-Geiringer, 1929) multiplies a random unit
vector by ``H`` until the Rayleigh quotient stops changing. It is here for parity
with PyHessian (Yao, Gholami, Keutzer & Mahoney, 2020, "PyHessian: Neural
networks through the lens of the Hessian", IEEE BigData), whose
``eigenvalues(top_n=1)`` stops when the relative change of the Rayleigh quotient
falls below ``tol`` (default 1e-3). That criterion certifies nothing: when
``λ₁ ≈ λ₂`` the quotient creeps up slowly and the iteration can stop well below
``λ₁`` (PyHessian returned ``λ₂`` in one run of twenty on the benchmark model).
:func:`sharpkit.curvature.lanczos.lanczos` needs fewer products for the same
accuracy and reports a bound; use this only to compare with other tools.

Power iteration converges to the eigenvalue of largest *magnitude*, which for a
Hessian at a minimum is ``λ_max``. The residual ``‖H v - θ v‖`` of the last
iterate is reported: some eigenvalue lies within it of ``θ`` (rigorous).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from sharpkit.curvature.lanczos import operator_device, operator_dtype, random_vector
from sharpkit.errors import ConfigError

__all__ = ["PowerResult", "power_iteration"]


@dataclass(frozen=True, kw_only=True)
class PowerResult:
    """What :func:`power_iteration` found.

    Attributes:
        eigenvalue: The last Rayleigh quotient ``vᵀ H v``.
        eigenvector: The last unit iterate ``v`` (operator dtype).
        residual: ``‖H v - θ v‖`` for that iterate (an eigenvalue lies within it).
        converged: Whether the relative change fell below ``tol``.
        n_matvecs: Matrix-vector products used.
        history: Rayleigh quotient after each product.
        seconds: Wall time.
    """

    eigenvalue: float
    eigenvector: Tensor
    residual: float
    converged: bool
    n_matvecs: int
    history: np.ndarray
    seconds: float


def power_iteration(
    matvec: Callable[[Tensor], Tensor],
    n: int,
    *,
    tol: float = 1e-3,
    max_iter: int = 100,
    v0: Tensor | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    vector_dtype: torch.dtype | None = None,
    progress: Callable[..., None] | None = None,
) -> PowerResult:
    """Estimate the dominant eigenvalue by power iteration (PyHessian's criterion).

    Stops when ``|θ_i - θ_{i-1}| / (|θ_{i-1}| + 1e-6) < tol`` (PyHessian's test)
    or after ``max_iter`` products.

    Args:
        matvec: ``v -> H v``.
        n: Dimension.
        tol: Relative change of the Rayleigh quotient that stops the iteration.
        max_iter: Most products.
        v0: Start vector (random Gaussian if ``None``).
        generator: Random source of the start vector.
        device: Device of the vectors.
        vector_dtype: Dtype of the vectors (default: ``matvec.dtype`` or ``v0``'s).
        progress: ``progress(done, total, estimate=...)``.

    Returns:
        A :class:`PowerResult`.

    Raises:
        ConfigError: A bad argument.
    """
    start = time.perf_counter()
    if not tol > 0:
        msg = f"tol must be > 0, got {tol}"
        raise ConfigError(msg)
    if max_iter < 1:
        msg = f"max_iter must be >= 1, got {max_iter}"
        raise ConfigError(msg)
    dtype = operator_dtype(matvec, v0, vector_dtype)
    dev = operator_device(matvec, v0, device)
    v = (
        random_vector(n, generator, dtype, dev)
        if v0 is None
        else v0.detach().to(device=dev, dtype=dtype).clone()
    )
    norm = float(torch.linalg.vector_norm(v))
    if not math.isfinite(norm) or norm == 0.0:
        msg = "v0 must be a finite, non-zero vector"
        raise ConfigError(msg)
    v = v / norm
    history: list[float] = []
    theta = math.nan
    residual = math.inf
    converged = False
    for i in range(max_iter):
        hv = matvec(v).to(device=dev, dtype=dtype)
        new = float(torch.dot(hv, v))
        residual = float(torch.linalg.vector_norm(hv - new * v))
        history.append(new)
        if progress is not None:
            progress(i + 1, max_iter, estimate=new)
        hv_norm = float(torch.linalg.vector_norm(hv))
        previous, theta = theta, new
        if hv_norm == 0.0:  # v is in the null space: θ = 0 exactly
            converged = True
            break
        if i > 0 and abs(theta - previous) / (abs(previous) + 1e-6) < tol:
            converged = True
            break
        if i < max_iter - 1:  # keep v matching θ and the residual at the end
            v = hv / hv_norm
    return PowerResult(
        eigenvalue=theta,
        eigenvector=v,
        residual=residual,
        converged=converged,
        n_matvecs=len(history),
        history=np.asarray(history, dtype=np.float64),
        seconds=time.perf_counter() - start,
    )
