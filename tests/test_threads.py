"""``--threads``, ``SHARPKIT_THREADS`` and the busy-machine default (issue 26)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import sharpkit
from sharpkit import _threads
from sharpkit._threads import choose_threads, parse_threads


@pytest.fixture
def keep_threads() -> Iterator[None]:
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_an_explicit_count_wins_then_the_environment() -> None:
    env = {"SHARPKIT_THREADS": "3", "OMP_NUM_THREADS": "8"}
    assert choose_threads(2, environ=env, cores=4, load=0.0).threads == 2
    assert choose_threads("auto", environ=env, cores=4, load=0.0).threads == 3
    # the user's OMP_NUM_THREADS is left to torch, even on a busy machine
    choice = choose_threads(None, environ={"OMP_NUM_THREADS": "8"}, cores=4, load=9)
    assert choice.threads is None
    assert not choice.reduced


@pytest.mark.parametrize(
    ("cores", "load", "threads"),
    [
        (2, 0.0, None),  # idle: torch's own default
        (2, 0.4, None),  # a blip is not a job
        (2, 1.0, 1),  # one other CPU-bound job on 2 cores: 1 thread (issue 26)
        (2, 25.0, 1),  # never fewer than one
        (16, 4.2, 12),  # the cores left free
        (16, 15.6, 1),
    ],
)
def test_the_default_leaves_busy_cores_alone(
    cores: int, load: float, threads: int | None
) -> None:
    choice = choose_threads(None, environ={}, cores=cores, load=load)
    assert choice.threads == threads
    assert choice.reduced == (threads is not None)
    if choice.reduced:
        assert "--threads N" in choice.reason
        assert f"{load:.1f}" in choice.reason


def test_load_is_the_smaller_of_the_average_and_what_runs_now(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # a job that ended a moment ago still weighs on the 1-minute average
    monkeypatch.setattr(_threads.os, "getloadavg", lambda: (1.6, 1.0, 0.5))
    monkeypatch.setattr(_threads, "_running_now", lambda: 0.0)
    assert _threads.load_average() == 0.0
    monkeypatch.setattr(_threads, "_running_now", lambda: 3.0)
    assert _threads.load_average() == 1.6
    monkeypatch.setattr(_threads, "_running_now", lambda: None)
    assert _threads.load_average() == 1.6


def test_running_now_reads_this_machine() -> None:
    if not Path("/proc/loadavg").exists():
        pytest.skip("no /proc/loadavg here")
    now = _threads._running_now()
    assert now is not None
    assert now >= 0


@pytest.mark.parametrize("bad", ["0", "-1", "two", "1.5"])
def test_bad_counts_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="positive whole number or 'auto'"):
        parse_threads(bad)
    with pytest.raises(ValueError, match="positive whole number"):
        choose_threads(None, environ={"SHARPKIT_THREADS": bad}, cores=2, load=0)


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


def test_measure_and_probe_take_threads(tmp_path: Path, keep_threads: None) -> None:
    from sharpkit.cli import app

    ckpt = str(_checkpoint(tmp_path))
    runner = CliRunner()
    torch.set_num_threads(2)
    result = runner.invoke(app, ["measure", ckpt, "--no-store", "--threads", "1"])
    assert result.exit_code == 0, result.stderr
    assert torch.get_num_threads() == 1
    torch.set_num_threads(2)
    args = ["probe", "direction", ckpt, "-o", "alpha=-1:1:3", "--no-store"]
    result = runner.invoke(app, args, env={"SHARPKIT_THREADS": "1"})
    assert result.exit_code == 0, result.stderr
    assert torch.get_num_threads() == 1
    bad = runner.invoke(app, ["measure", ckpt, "--no-store", "--threads", "many"])
    assert bad.exit_code == 1
    lines = [ln for ln in bad.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, bad.stderr
    assert "--threads" in lines[0]


def test_train_takes_threads(tmp_path: Path, keep_threads: None) -> None:
    from sharpkit.cli import app

    torch.set_num_threads(2)
    args = ["train", "--model", "mlp-bn", "--data", "synthetic", "--lr", "0.1"]
    args += ["--batch-size", "16", "--epochs", "1", "--out", str(tmp_path / "r")]
    args += ["--no-store", "--threads", "1", "-o", "depth=2", "-o", "width=6"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.stderr
    assert torch.get_num_threads() == 1
