"""The data-sharded HessianOperator with two real gloo processes on loopback.

Each rank computes its size-weighted partial product over its shard and the
partials are all-reduced; the result must equal the single-process operator to
rounding (float64: 1e-12 relative), for a DataSplit (sharded by examples,
uneven shards) and for a list of batches (sharded round-robin, one rank gets
more batches), and Lanczos run on both ranks must agree with the single-process
run.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from cases import bn_mlp

from sharpkit.curvature.lanczos import lanczos
from sharpkit.curvature.operator import HessianOperator

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

WORLD = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _worker(rank: int, port: int, out_dir: str, kind: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD
    )
    try:
        case = bn_mlp()
        data = case.data if kind == "split" else case.batches()
        H = HessianOperator(case.model, case.loss_fn, data, batch_size=16)
        v = torch.linspace(-1, 1, case.n, dtype=torch.float64)
        block = torch.stack([v, v.flip(0), v * v], dim=1)
        res = lanczos(
            H, H.n, k=2, tol=1e-10, generator=torch.Generator().manual_seed(0)
        )
        torch.save(
            {
                "hv": H @ v,
                "hblock": H.matvec(block),
                "grad": H.gradient(),
                "loss": H.loss(),
                "n_total": H.num_examples,
                "world": H.world_size,
                "eig": torch.from_numpy(res.eigenvalues),
            },
            Path(out_dir) / f"rank{rank}.pt",
        )
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("kind", ["split", "batches"])
def test_two_gloo_ranks_match_one_process(kind: str, tmp_path: Path) -> None:
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    mp.spawn(_worker, args=(_free_port(), str(tmp_path), kind), nprocs=WORLD, join=True)
    case = bn_mlp()
    data = case.data if kind == "split" else case.batches()
    H = HessianOperator(case.model, case.loss_fn, data, batch_size=16)
    v = torch.linspace(-1, 1, case.n, dtype=torch.float64)
    block = torch.stack([v, v.flip(0), v * v], dim=1)
    ref = {
        "hv": H @ v,
        "hblock": H.matvec(block),
        "grad": H.gradient(),
    }
    eig = lanczos(H, H.n, k=2, tol=1e-10, generator=torch.Generator().manual_seed(0))
    for rank in range(WORLD):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert got["world"] == WORLD
        assert got["n_total"] == len(case.data)
        for key, want in ref.items():
            err = float((got[key] - want).abs().max() / want.abs().max())
            assert err < 1e-12, (rank, key, err)
        assert got["loss"] == pytest.approx(H.loss(), rel=1e-12)
        np.testing.assert_allclose(got["eig"].numpy(), eig.eigenvalues, rtol=1e-10)
