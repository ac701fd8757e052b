"""Measuring under ``torch.distributed``: which rank this is, what rank 0 decides.

When a default process group of more than one process is initialised (by
``torchrun``, ``sharpkit measure --nproc``, or the caller), the Hessian operator
shards the analysis set over the ranks and all-reduces its products, so every
rank runs the same metrics on the same random vectors and ends with the same
values. Only rank 0 reads and writes the results store; it tells the others
which metrics the store already holds (:func:`broadcast_names`), so that every
rank computes the same ones and the collectives stay matched.
"""

from __future__ import annotations

import json

from sharpkit.errors import DistributedError, first_line

__all__ = ["broadcast_names", "rank_and_world"]


def rank_and_world() -> tuple[int, int]:
    """Return ``(rank, world size)`` of the default group; ``(0, 1)`` without one."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return 0, 1
    return dist.get_rank(), dist.get_world_size()


def broadcast_names(names: list[str]) -> list[str]:
    """Return rank 0's ``names`` on every rank (JSON in a tensor; no pickle).

    Raises:
        DistributedError: Another rank stopped or timed out.
    """
    import torch
    import torch.distributed as dist

    rank, world = rank_and_world()
    if world == 1:
        return list(names)
    device = torch.device("cpu")
    if dist.get_backend() == "nccl":
        device = torch.device("cuda", torch.cuda.current_device())
    payload = json.dumps(list(names) if rank == 0 else []).encode()
    try:
        size = torch.tensor([len(payload)], dtype=torch.int64, device=device)
        dist.broadcast(size, src=0)
        buf = torch.zeros(int(size.item()), dtype=torch.uint8, device=device)
        if rank == 0:
            buf.copy_(torch.frombuffer(bytearray(payload), dtype=torch.uint8))
        dist.broadcast(buf, src=0)
    except RuntimeError as exc:  # a peer closed its connection, or a timeout
        first = first_line(exc, limit=200)
        msg = (
            "another process of the group stopped or timed out while rank 0 "
            f"shared what the store holds ({type(exc).__name__}: {first}); its "
            "own error says why"
        )
        raise DistributedError(msg) from exc
    out = json.loads(bytes(buf.cpu().tolist()).decode())
    return [str(n) for n in out]
