"""``sharpkit measure`` across processes: ``--nproc`` and ``torchrun``, real gloo ranks.

Every case starts real processes on loopback, as a user would from a shell, and
compares with ``sharpkit.measure`` in this process on the same checkpoint and
data. The model is float64, so sharding changes only the order of the sums:
the products agree to ~1e-15 relative and Lanczos, Hutchinson and the stopping
rules make the same decisions on every rank, so the values must agree to 1e-10
relative (a wrong shard weight or a rank drawing other random vectors is off
by O(1)).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import sharpkit
from sharpkit.cli import app

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

SRC = Path(sharpkit.__file__).resolve().parents[1]
ARGS = ["--samples", "96", "--batch-size", "16", "--dtype", "float64"]
METRICS = ["-m", "spectral", "-m", "frobenius", "-m", "trace"]
REL = 1e-10  # see the module docstring

FLAKY_LOSS = '''
import os
import torch

CALLS = [0]


def loss(outputs, targets):
    """Fails on rank 1 in its second forward pass with gradients."""
    if os.environ.get("RANK") == "1" and outputs.requires_grad:
        CALLS[0] += 1
        if CALLS[0] > 1:
            raise RuntimeError("rank one ran out of luck")
    return torch.nn.functional.cross_entropy(outputs, targets)
'''


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(SRC), *filter(None, [env.get("PYTHONPATH")])]
    )
    env["OMP_NUM_THREADS"] = "1"
    env["GLOO_SOCKET_IFNAME"] = "lo"
    return env


def _run(args: list[str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, capture_output=True, text=True, env=_env(), timeout=timeout, check=False
    )


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


def _single(ckpt: Path) -> sharpkit.Measurement:
    return sharpkit.measure(
        str(ckpt),
        metrics=["spectral", "frobenius", "trace"],
        samples=96,
        batch_size=16,
        dtype="float64",
    )


def _check_equal(got: dict, want: sharpkit.Measurement) -> None:
    assert set(got["metrics"]) == set(want)
    for name, result in want.items():
        mine = got["metrics"][name]
        assert mine["value"] == pytest.approx(result.value, rel=REL), name
        assert mine["hvps"] == result.hvps, name  # the same decisions, step by step
        if result.stderr is not None:
            assert mine["stderr"] == pytest.approx(result.stderr, rel=1e-8), name


def test_nproc_2_equals_one_process_and_rank_0_alone_writes(tmp_path: Path) -> None:
    ckpt = _checkpoint(tmp_path)
    store = tmp_path / "results.zarr"
    cmd = [sys.executable, "-m", "sharpkit", "measure", str(ckpt), *ARGS, *METRICS]
    cmd += ["--store", str(store), "--json", "--nproc", "2"]
    done = _run(cmd)
    assert done.returncode == 0, done.stderr
    outputs = json.loads(done.stdout)  # one document: only rank 0 printed
    assert len(outputs) == 1
    got = outputs[0]
    assert got["attrs"]["world_size"] == 2
    _check_equal(got, _single(ckpt))
    runs = sharpkit.open_results(store, kind="measure", as_frame=False)
    assert len({r["run_id"] for r in runs}) == 1  # one run, written by rank 0
    assert {r["metric"] for r in runs} == {"spectral", "frobenius", "trace"}
    # Again: rank 0 finds the results in the store and tells rank 1, so neither
    # computes anything and nothing new is written.
    again = _run(cmd)
    assert again.returncode == 0, again.stderr
    metrics = json.loads(again.stdout)[0]["metrics"]
    assert all(m["reused"] for m in metrics.values())
    runs = sharpkit.open_results(store, kind="measure", as_frame=False)
    assert len({r["run_id"] for r in runs}) == 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_torchrun_runs_the_same_measurement(tmp_path: Path) -> None:
    ckpt = _checkpoint(tmp_path)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2"]
    cmd += ["--master-addr", "127.0.0.1", "--master-port", str(_free_port())]
    cmd += ["-m", "sharpkit", "measure", str(ckpt), *ARGS, *METRICS]
    cmd += ["--no-store", "--json"]
    done = _run(cmd)
    assert done.returncode == 0, done.stderr
    outputs = json.loads(done.stdout)  # rank 1 printed nothing
    assert len(outputs) == 1
    _check_equal(outputs[0], _single(ckpt))


def test_a_failing_rank_ends_every_rank_with_one_line(tmp_path: Path) -> None:
    ckpt = _checkpoint(tmp_path)
    (tmp_path / "flaky.py").write_text(FLAKY_LOSS)
    cmd = [sys.executable, "-m", "sharpkit", "measure", str(ckpt), *ARGS]
    cmd += ["--loss", f"{tmp_path / 'flaky.py'}:loss", "--no-store", "--nproc", "2"]
    start = time.monotonic()
    done = _run(cmd, timeout=240)  # a hang would fail here, not after gloo's 30 min
    assert time.monotonic() - start < 240
    assert done.returncode == 1, (done.stdout, done.stderr)
    # stderr is not a terminal: progress comes as plain "a.pt: <step>" lines
    # (cli/_progress.py); the error itself is one line
    lines = [
        ln
        for ln in done.stderr.splitlines()
        if ln.strip() and not ln.startswith("a.pt: ")
    ]
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: rank 1 of 2: ")
    assert "rank one ran out of luck" in lines[0]
    assert "Traceback" not in done.stderr
    assert done.stdout == ""


runner = CliRunner()


def test_nproc_misuse_is_one_line(tmp_path: Path) -> None:
    ckpt = _checkpoint(tmp_path)
    base = ["measure", str(ckpt), "--no-store"]
    result = runner.invoke(app, [*base, "--nproc", "0"])
    assert result.exit_code == 1
    assert result.stderr.strip() == "error: --nproc must be >= 1, got 0"
    # CliRunner has no command line to start again: say what works instead
    result = runner.invoke(app, [*base, "--nproc", "2"])
    assert result.exit_code == 1
    assert "torchrun" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    if not torch.cuda.is_available():
        result = runner.invoke(app, [*base, "--nproc", "2", "--device", "cuda"])
        assert result.exit_code == 1
        assert "needs 2 GPUs, 0 found" in result.stderr
