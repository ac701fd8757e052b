"""The operator's data side: batches, their weights, memory and ranks.

:func:`iter_batches` yields a rank's share of the analysis data as
``(inputs, targets, weight)`` on the operator's device and dtype;
:class:`SavedBytes` measures the memory a kept gradient graph holds;
:func:`resolve_group` and :func:`allreduce` shard the data over
``torch.distributed`` ranks and sum the partial products.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from sharpkit._data import DataSplit, loss_weight
from sharpkit.errors import ConfigError, DistributedError, first_line

if TYPE_CHECKING:
    import torch.distributed as dist_t

__all__ = [
    "SavedBytes",
    "allreduce",
    "convert",
    "default_budget",
    "iter_batches",
    "resolve_group",
]


class SavedBytes:
    """Count the bytes autograd saves for backward (excluding the parameters)."""

    def __init__(self, exclude: set[int]) -> None:
        self.exclude = exclude
        self.seen: dict[int, int] = {}

    def pack(self, t: Tensor) -> Tensor:
        try:
            ptr = t.untyped_storage().data_ptr()
        except (RuntimeError, NotImplementedError):  # pragma: no cover - exotic tensors
            return t
        if ptr not in self.exclude:
            key = t.data_ptr()
            self.seen[key] = max(self.seen.get(key, 0), t.numel() * t.element_size())
        return t

    @staticmethod
    def unpack(t: Tensor) -> Tensor:
        return t

    @property
    def total(self) -> int:
        return sum(self.seen.values())


def default_budget(device: torch.device) -> int:
    """Bytes a kept gradient graph may use (half the free GPU memory, 1/4 RAM)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(0.5 * free)
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        total = 8 << 30
    return int(0.25 * total)


def _batch_size_of(x: Any, y: Any) -> int:
    if isinstance(y, Tensor) and y.dim() > 0:
        return int(y.shape[0])
    if isinstance(x, Tensor):
        return int(x.shape[0])
    return len(y)


def resolve_group(
    process_group: dist_t.ProcessGroup | None,
) -> tuple[Any, int, int]:
    """Return ``(group, rank, world_size)``; world size 1 when not distributed."""
    import torch.distributed as dist

    if not dist.is_available():
        if process_group is not None:
            msg = "process_group= given but torch.distributed is not available"
            raise ConfigError(msg)
        return None, 0, 1
    if process_group is None:
        if not dist.is_initialized():
            return None, 0, 1
        world = dist.get_world_size()
        return None, (dist.get_rank() if world > 1 else 0), world
    world = dist.get_world_size(process_group)
    return process_group, dist.get_rank(process_group), world


def allreduce(t: Tensor, group: Any, world: int) -> Tensor:
    """Sum ``t`` over the ranks of ``group`` in place (as is with one process).

    Raises:
        DistributedError: A peer stopped or timed out.
    """
    if world == 1:
        return t
    import torch.distributed as dist

    try:
        dist.all_reduce(t, op=dist.ReduceOp.SUM, group=group)
    except RuntimeError as exc:  # a peer closed its connection, or a timeout
        first = first_line(exc, limit=200)
        msg = (
            "another process of the group stopped or timed out during an "
            f"all-reduce ({type(exc).__name__}: {first}); its own error says why"
        )
        raise DistributedError(msg) from exc
    return t


def convert(t: Any, device: torch.device, dtype: torch.dtype) -> Any:
    """Move tensors (nested in tuples and lists) to ``device``; floats to ``dtype``."""
    if isinstance(t, Tensor):
        if t.is_floating_point():
            return t.to(device=device, dtype=dtype)
        return t.to(device=device)
    if isinstance(t, tuple | list):
        return type(t)(convert(u, device, dtype) for u in t)
    return t


def iter_batches(
    data: DataSplit | Iterable[Any],
    batch_size: int,
    *,
    rank: int,
    world: int,
    loss_fn: Callable[..., Any],
    device: torch.device,
    dtype: torch.dtype,
    count: Callable[[int], None],
) -> Iterator[tuple[Any, Any, float]]:
    """Yield this rank's batches as ``(inputs, targets, weight)`` on ``device``.

    ``weight`` is the batch's :func:`~sharpkit._data.loss_weight` (its size
    for a plain mean); batches of weight 0 are skipped, and ``count`` is called
    with the number of examples of every batch seen.

    Raises:
        ConfigError: A batch is not an ``(inputs, targets)`` pair.
    """
    if isinstance(data, DataSplit):
        n = len(data)
        if world > 1:
            lo = n * rank // world
            hi = n * (rank + 1) // world
            data = data.take(torch.arange(lo, hi))
        source: Iterable[Any] = data.batches(batch_size)
        stride = 1
    else:
        source = data
        stride = world
    for i, batch in enumerate(source):
        if stride > 1 and i % stride != rank:
            continue
        try:
            x, y = batch[0], batch[1]
        except (TypeError, IndexError, KeyError):
            msg = (
                f"each batch must be an (inputs, targets) pair, "
                f"got {type(batch).__name__}"
            )
            raise ConfigError(msg) from None
        x, y = convert(x, device, dtype), convert(y, device, dtype)
        size = _batch_size_of(x, y)
        count(size)
        weight = loss_weight(loss_fn, y, size) if size else 0.0
        if weight <= 0:
            continue
        yield x, y, weight
