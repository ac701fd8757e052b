"""Bit-for-bit tensor comparison: the one "unchanged" check (``sharpkit.same_bits``).

The conformance suites in :mod:`sharpkit.testing` fail a plugin that changed a
model by it, and ``sharpkit.measure`` decides by the same bytes test whether to
restore one. Bytes, not values: ``torch.equal`` calls a tensor with a NaN
different from itself and cannot tell ``-0.0`` from ``0.0``; "unchanged" means
the same bits.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

__all__ = ["same_bits"]


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether two tensors have the same dtype, shape, device and bytes.

    Examples:
        >>> import torch
        >>> nan = torch.tensor([float("nan"), 0.0])
        >>> same_bits(nan, nan.clone()), torch.equal(nan, nan.clone())
        (True, False)
        >>> same_bits(torch.tensor([0.0]), torch.tensor([-0.0]))
        False
    """
    import torch

    if a.dtype != b.dtype or a.shape != b.shape or a.device != b.device:
        return False
    as_bytes = [t.detach().reshape(-1).contiguous().view(torch.uint8) for t in (a, b)]
    return bool(torch.equal(*as_bytes))
