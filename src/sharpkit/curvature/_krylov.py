"""Helpers shared by the Lanczos processes: vectors, the basis budget, Ritz bounds.

Re-exported by :mod:`sharpkit.curvature.lanczos`, whose docstring explains the
bounds and the memory plan.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from sharpkit.errors import ConfigError

ROUNDING = 64.0
"""Multiple of machine epsilon times ``‖T‖`` added to every bound."""


def operator_dtype(
    matvec: Any, v0: Tensor | None, dtype: torch.dtype | None = None
) -> torch.dtype:
    """Return the dtype vectors must have for ``matvec``."""
    if dtype is not None:
        return dtype
    op = getattr(matvec, "dtype", None)
    if isinstance(op, torch.dtype):
        return op
    if v0 is not None:
        return v0.dtype
    return torch.get_default_dtype()


def operator_device(
    matvec: Any, v0: Tensor | None, device: torch.device | str | None
) -> torch.device:
    """Return the device vectors must live on for ``matvec``."""
    if device is not None:
        return torch.device(device)
    op = getattr(matvec, "device", None)
    if isinstance(op, torch.device):
        return op
    if v0 is not None:
        return v0.device
    return torch.device("cpu")


_CHUNK = 8
"""Basis rows per reorthogonalisation product when the basis is stored in less
precision than the vectors (bounds the temporary upcast copy)."""


def basis_plan(
    n: int, dtype: torch.dtype, rows: int, max_bytes: int | None
) -> tuple[torch.dtype, int]:
    """Return the basis dtype and the most rows that fit ``max_bytes``.

    ``rows`` is how many basis rows the caller would like (steps + 1). The basis
    keeps ``dtype`` when ``rows`` of it fit; float64 falls back to float32 when
    that fits more; otherwise the dtype that holds the most rows is used and the
    row count is capped.

    Args:
        n: Length of a vector.
        dtype: The vectors' dtype.
        rows: Rows wanted.
        max_bytes: Bytes the basis may take (``None``: no limit).

    Raises:
        ConfigError: Fewer than 3 rows (two steps) fit.
    """
    if max_bytes is None:
        return dtype, rows
    size = torch.empty(0, dtype=dtype).element_size()
    fit = int(max_bytes // (n * size))
    if fit >= rows or dtype != torch.float64:
        chosen, cap = dtype, min(rows, fit)
    else:
        chosen, cap = torch.float32, min(rows, int(max_bytes // (n * 4)))
    if cap < 3:
        smallest = 3 * n * torch.empty(0, dtype=chosen).element_size()
        msg = (
            f"the memory budget leaves {_fmt_bytes(max_bytes)} for the Lanczos "
            f"basis, less than 3 vectors of {n:,} parameters "
            f"({_fmt_bytes(smallest)}); raise the memory budget"
        )
        raise ConfigError(msg)
    return chosen, cap


def _fmt_bytes(b: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(b) < 1024 or unit == "GiB":
            return f"{b:.0f} {unit}" if unit == "B" else f"{b:.1f} {unit}"
        b /= 1024
    raise AssertionError  # pragma: no cover


def random_vector(
    n: int,
    generator: torch.Generator | None,
    dtype: torch.dtype,
    device: torch.device,
    kind: str = "gaussian",
) -> Tensor:
    """Draw a random vector on the CPU from ``generator`` and move it to ``device``.

    Args:
        n: Length.
        generator: Random source (CPU); ``None`` uses torch's global one.
        dtype: Dtype of the result.
        device: Device of the result.
        kind: ``"gaussian"`` (N(0, 1) entries) or ``"rademacher"`` (±1 entries).
    """
    if kind == "rademacher":
        bits = torch.randint(0, 2, (n,), generator=generator, dtype=torch.int8)
        v = bits.to(dtype) * 2 - 1
    else:
        v = torch.randn(n, generator=generator, dtype=dtype)
    return v.to(device)


def ritz_bounds(
    theta: np.ndarray,
    residuals: np.ndarray,
    *,
    kind: str = "gap",
    exact: bool = False,
    eps: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Return an error bound for every Ritz value and whether its gap is resolved.

    Args:
        theta: All Ritz values, descending.
        residuals: Their residual norms ``‖H y - θ y‖``.
        kind: ``"gap"`` (``min(r, r²/δ)`` where resolved, see the module
            docstring) or ``"residual"`` (``r``).
        exact: The Krylov space is the whole space (every Ritz value is exact).
        eps: Machine epsilon of the vectors (adds the rounding allowance).

    Returns:
        ``(bounds, gap_resolved)``.
    """
    m = len(theta)
    r = np.asarray(residuals, dtype=np.float64)
    floor = ROUNDING * eps * (float(np.max(np.abs(theta))) if m else 0.0)
    resolved = np.zeros(m, dtype=bool)
    if exact:
        return np.full(m, floor), np.ones(m, dtype=bool)
    bounds = r.copy()
    if kind == "gap" and m > 1:
        dist = np.abs(theta[:, None] - theta[None, :]) - r[None, :]
        np.fill_diagonal(dist, np.inf)
        delta = dist.min(axis=1)
        resolved = delta > r
        with np.errstate(divide="ignore", invalid="ignore"):
            gap = np.where(resolved, r * r / np.where(resolved, delta, 1.0), r)
        bounds = np.minimum(r, gap)
    elif kind not in ("gap", "residual"):
        msg = f"bound must be 'gap' or 'residual', got {kind!r}"
        raise ConfigError(msg)
    return bounds + floor, resolved
