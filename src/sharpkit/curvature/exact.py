"""Exact (dense) Hessians and spectra for small models.

``dense_hessian`` applies the Hessian to the identity in blocks with
:class:`~sharpkit.curvature.operator.HessianOperator`, so it honours the same
size weighting, batch-norm modes and buffer guarantees as every product; it
needs ``n`` products and an ``n x n`` matrix, so it is for ``n`` up to a few
thousand. (``torch.func.hessian`` is not used here: in torch 2.14 its vmapped
reverse pass returns wrong Hessians through batch norm with batch statistics.)

For the metrics, a small model does not need the dense matrix at all: a Lanczos
run of ``n`` steps spans the whole space, after which ``T_n`` is ``H`` in another
basis, so the trace, Frobenius norm and spectrum are exact (see
:func:`sharpkit.curvature.stochastic.krylov_deflation`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from sharpkit._data import DataSplit
from sharpkit.curvature.operator import HessianOperator

__all__ = ["ExactSpectrum", "dense_hessian", "exact_spectrum"]


def dense_hessian(
    model: nn.Module,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    data: DataSplit | Iterable[tuple[Any, Any]],
    *,
    batch_size: int = 2048,
    bn_mode: str = "eval",
    params: Sequence[Tensor] | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Return the dense Hessian of the mean loss over ``data``.

    Args:
        model: The model.
        loss_fn: ``loss(outputs, targets) -> scalar`` (mean reduction).
        data: A :class:`~sharpkit.DataSplit` or re-iterable of batches.
        batch_size: Batch size for a :class:`~sharpkit.DataSplit`.
        bn_mode: ``"eval"`` or ``"train"``.
        params: Parameters to differentiate (default: all that require grad).
        dtype: Computation dtype (default: the parameters').
        device: Computation device (default: the parameters').

    Returns:
        A symmetric ``(n, n)`` tensor.

    Raises:
        ConfigError: More than :data:`~sharpkit.curvature.operator.MAX_DENSE`
            parameters.
    """
    op = HessianOperator(
        model,
        loss_fn,
        data,
        batch_size=batch_size,
        bn_mode=bn_mode,
        params=params,
        dtype=dtype,
        device=device,
    )
    return op.to_dense()


@dataclass(frozen=True, kw_only=True)
class ExactSpectrum:
    """The full spectrum of a dense symmetric matrix.

    Attributes:
        eigenvalues: All eigenvalues, float64, descending.
        trace: Their sum.
        frobenius: ``sqrt(Σ λ²)``.
        seconds: Wall time of the eigendecomposition.
    """

    eigenvalues: np.ndarray
    trace: float
    frobenius: float
    seconds: float


def exact_spectrum(dense: Tensor) -> ExactSpectrum:
    """Return the eigenvalues, trace and Frobenius norm of a dense symmetric matrix."""
    start = time.perf_counter()
    sym = dense.detach().to(device="cpu", dtype=torch.float64)
    sym = (sym + sym.T) / 2
    evals = torch.linalg.eigvalsh(sym).flip(0).numpy()
    return ExactSpectrum(
        eigenvalues=evals,
        trace=float(np.sum(evals)),
        frobenius=float(np.sqrt(np.sum(evals**2))),
        seconds=time.perf_counter() - start,
    )
