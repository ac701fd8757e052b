"""``sharpkit measure --nproc 2 --blocks``: real gloo ranks on loopback.

The model is float64, so sharding the data over two ranks changes only the
order of the sums: every product agrees to ~1e-15 relative, Lanczos and the
estimators make the same decisions on both ranks (the same seeded vectors), so
every per-block value must equal the one-process value to 1e-10 relative (a
block operator that forgot to all-reduce would be off by O(1): it would see
half the data).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import sharpkit

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

SRC = Path(sharpkit.__file__).resolve().parents[1]
ARGS = ["--samples", "96", "--batch-size", "16", "--dtype", "float64"]
METRICS = ["spectral", "trace", "frobenius"]
REL = 1e-10  # see the module docstring


def _checkpoint(tmp_path: Path) -> Path:
    import sharpkit.builtin._models as models

    torch.manual_seed(0)
    net = models.build_mlp_bn(input_shape=(16,), num_classes=4, depth=2, width=6)
    meta = sharpkit.CheckpointMeta(
        model="mlp-bn", model_options={"depth": 2, "width": 6}, dataset="synthetic"
    )
    path = tmp_path / "a.pt"
    sharpkit.save_checkpoint(path, net, meta)
    return path


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(SRC), *filter(None, [env.get("PYTHONPATH")])]
    )
    env["OMP_NUM_THREADS"] = "1"
    env["GLOO_SOCKET_IFNAME"] = "lo"
    return env


def test_nproc_2_blocks_equal_one_process(tmp_path: Path) -> None:
    ckpt = _checkpoint(tmp_path)
    cmd = [sys.executable, "-m", "sharpkit", "measure", str(ckpt), *ARGS]
    cmd += [a for m in METRICS for a in ("-m", m)]
    cmd += ["--blocks", "layers", "--no-store", "--json", "--nproc", "2"]
    done = subprocess.run(
        cmd, capture_output=True, text=True, env=_env(), timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr
    [got] = json.loads(done.stdout)  # rank 0 alone printed
    assert got["attrs"]["world_size"] == 2
    want = sharpkit.measure(
        str(ckpt), metrics=METRICS, samples=96, batch_size=16, dtype="float64",
        blocks="layers",
    )  # fmt: skip
    for name, result in want.items():
        mine = got["metrics"][name]
        assert mine["attrs"]["blocks"] == result.attrs["blocks"]
        for array, value in result.arrays.items():
            if not array.startswith("block_"):
                continue
            expect = np.asarray(value, dtype=float).ravel()
            np.testing.assert_allclose(
                np.asarray(mine["arrays"][array], dtype=float).ravel(), expect,
                rtol=REL, atol=REL * np.abs(expect).max(), err_msg=f"{name} {array}",
            )  # fmt: skip
    assert got["metrics"]["spectral"]["arrays"]["block_hvps"] == list(
        want["spectral"].arrays["block_hvps"]
    )
