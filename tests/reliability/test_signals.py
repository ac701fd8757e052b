"""Signals to single- and multi-process commands, and kill -9 during writes.

Every case runs the real ``sharpkit`` command in a child process (its own
session, as a shell job would be) and sends it a real signal:

* SIGINT, SIGTERM or SIGHUP to ``train``: exit ``128 + signal`` with one line,
  no temporary file left, ``last.pt`` intact; SIGTERM to ``measure``: the same,
  and no run (not half of one) in the store;
* SIGTERM to the parent of ``sweep -j 2``, or Ctrl-C to its whole process
  group: the same, at once, and no process of the session outlives it (no
  worker, no resource tracker), no point starts after the signal;
* ``kill -9`` at random moments of a training (mostly while ``last.pt`` is
  being written): ``last.pt`` is always whole, ``--resume`` sweeps up the
  temporary files the kills left, and the resumed run ends with the very bytes
  of an uninterrupted one.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from _rel import TINY_TRAIN, cli, metric_values, ok, subprocess_env

import sharpkit
from sharpkit._fs import is_temp

pytestmark = pytest.mark.timeout(300)
_CLI = [sys.executable, "-c", "from sharpkit.cli import main; main()"]


def _start(
    argv: list[object], cwd: Path, dists: tuple[str, ...] = ()
) -> subprocess.Popen[bytes]:
    """Start ``sharpkit *argv`` in a new session; its output goes to files.

    ``dists``: test plugin distributions it sees (tests/data/plugin_dists).
    """
    with (cwd / "child.out").open("wb") as out, (cwd / "child.err").open("wb") as err:
        return subprocess.Popen(
            [*_CLI, *map(str, argv)],
            cwd=cwd,
            env=subprocess_env(*dists),
            stdout=out,
            stderr=err,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            # as from a terminal: a shell's background job (`pytest &`, nohup)
            # starts with SIGINT ignored, and Python then keeps ignoring Ctrl-C
            preexec_fn=_default_sigint,
        )


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    # and nothing blocked: a mask is inherited through exec too
    signal.pthread_sigmask(
        signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
    )


def _finish(argv: list[object], cwd: Path) -> None:
    """Run ``sharpkit *argv`` as a child process to its end; it must succeed."""
    proc = _start(argv, cwd)
    assert proc.wait(300) == 0, _stderr(cwd)


def _stderr(cwd: Path) -> list[str]:
    text = (cwd / "child.err").read_text(errors="replace")
    return [ln for ln in text.splitlines() if ln.strip()]


def _wait_for(
    cond: Callable[[], bool], proc: subprocess.Popen[bytes], t: float
) -> None:
    deadline = time.monotonic() + t
    while not cond():
        if proc.poll() is not None:
            pytest.fail(f"the command ended (status {proc.returncode}) too early")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("the command did not get going in time")
        time.sleep(0.05)


def _session(sid: int) -> list[int]:
    """Live (not zombie) processes of session ``sid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        state, session = fields[0], int(fields[3])
        if session == sid and state not in ("Z", "X"):
            found.append(int(entry.name))
    return found


def _no_survivors(sid: int, grace: float = 10.0) -> None:
    """Wait up to ``grace`` seconds for session ``sid`` to be empty."""
    deadline = time.monotonic() + grace
    while (left := _session(sid)) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in left:  # do not leave them to the next test
        os.kill(pid, signal.SIGKILL)
    assert not left, f"processes outlived the command: {left}"


def _temps(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if is_temp(p.name)]


def _interrupted_line(cwd: Path, name: str) -> str:
    lines = _stderr(cwd)
    assert not any("Traceback" in ln for ln in lines), lines
    errors = [ln for ln in lines if ln.startswith("error:")]
    assert len(errors) == 1, lines
    assert "interrupted by" in errors[0], errors[0]
    assert name in errors[0], errors[0]
    return errors[0]


TRAIN_SIGNALS = ["SIGINT", "SIGTERM", "SIGHUP"]
SWEEP_SIGNALS = [("parent", "SIGTERM"), ("group", "SIGINT"), ("group", "SIGTERM")]


@pytest.mark.slow
@pytest.mark.parametrize("sig", TRAIN_SIGNALS)
def test_a_signal_ends_train_with_one_line_and_no_temporary_file(
    sig: str, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    argv = ["train", *TINY_TRAIN, "--epochs", "100000", "--out", out, "--no-store"]
    proc = _start(argv, tmp_path)
    _wait_for(lambda: (out / "last.pt").is_file(), proc, 120)
    time.sleep(0.3)  # a few epochs in: last.pt is rewritten every few ms
    signum = getattr(signal, sig)
    proc.send_signal(signum)
    assert proc.wait(60) == 128 + signum
    _interrupted_line(tmp_path, sig)
    assert not _temps(out)
    sharpkit.load_checkpoint(out / "last.pt")  # whole, not cut short
    _no_survivors(proc.pid)


@pytest.mark.slow
def test_sigterm_ends_measure_with_one_line_and_stores_nothing_half_done(
    wide: Path, tmp_path: Path
) -> None:
    store = tmp_path / "results.zarr"
    # 200 x 100 Hessian-vector products on 330k parameters: minutes of work
    argv = ["measure", wide, "-m", "density", "-o", "probes=200", "-o", "steps=100",
            "--samples", "64", "--store", store]  # fmt: skip
    proc = _start(argv, tmp_path)
    _wait_for(store.exists, proc, 120)  # the store is opened before the first product
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 128 + signal.SIGTERM
    _interrupted_line(tmp_path, "SIGTERM")
    _no_survivors(proc.pid)
    listed = ok(cli("results", store, "--json"))
    assert json.loads(listed.stdout) == []  # no run, not half of one
    assert not _temps(tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_a_signal_while_a_later_metric_runs_stores_the_finished_ones(
    sig: str, tiny: Path, truth: float, tmp_path: Path
) -> None:
    # `hang` (a test plugin) writes its marker when it starts, then never ends:
    # spectral, asked for first, has finished by then
    store, marker = tmp_path / "results.zarr", tmp_path / "hang.started"
    argv = ["measure", tiny, "-m", "spectral", "-m", "hang",
            "-o", f"hang.marker={marker}", "--store", store]  # fmt: skip
    proc = _start(argv, tmp_path, dists=("hangs",))
    _wait_for(marker.exists, proc, 120)
    signum = getattr(signal, sig)
    proc.send_signal(signum)
    assert proc.wait(60) == 128 + signum
    line = _interrupted_line(tmp_path, sig)
    assert "'spectral' was measured and stored in run" in line, line
    assert "nothing of 'hang', which was running, was stored" in line, line
    _no_survivors(proc.pid)
    assert not _temps(tmp_path)
    # the run holds spectral alone, and a later command reuses it: the value a
    # fresh measurement gives (the same computation, so equal to rounding)
    (row,) = json.loads(ok(cli("results", store, "--json")).stdout)
    assert "spectral" in json.dumps(row)
    assert "hang" not in json.dumps(row)
    again = ok(cli("measure", tiny, "-m", "spectral", "--store", store, "--json"))
    (entry,) = json.loads(again.stdout)
    assert entry["metrics"]["spectral"]["reused"] is True, entry
    assert metric_values(again.stdout)["spectral"] == pytest.approx(truth, rel=1e-9)


def test_sigterm_while_a_file_is_half_written_removes_it(tmp_path: Path) -> None:
    """The mechanism under the commands: a temporary file open at the signal goes."""
    script = (
        "import sys, time\n"
        "from sharpkit._fs import atomic_file, unwind_on_signals, Terminated,"
        " remove_live_temps\n"
        "try:\n"
        "    with unwind_on_signals(), atomic_file(sys.argv[1]) as tmp:\n"
        "        tmp.write_bytes(b'half')\n"
        "        print(tmp, flush=True)\n"
        "        time.sleep(60)\n"
        "except Terminated as exc:\n"
        "    remove_live_temps()\n"
        "    sys.exit(exc.status)\n"
    )
    target = tmp_path / "final.pt"
    proc = subprocess.Popen(
        [sys.executable, "-c", script, str(target)],
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    assert proc.stdout is not None
    tmp = Path(proc.stdout.readline().decode().strip())
    assert tmp.is_file()
    assert is_temp(tmp.name)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 128 + signal.SIGTERM
    proc.stdout.close()
    assert not tmp.exists()
    assert not target.exists()  # never a half-written file under the real name


_SWEEP = """\
[sweep]
name = "sig"
out = "runs"
store = "results.zarr"

[train]
model = "mlp-bn"
model_options = {{ width = 16 }}
data = "synthetic"
data_options = {{ n_train = 128, n_test = 64 }}
epochs = {epochs}
lr = [0.1, 0.05, 0.02, 0.01, 0.005, 0.002]
batch_size = 32
seed = 0
"""


def _started_points(runs: Path) -> set[str]:
    return {p.name for p in runs.iterdir()} if runs.is_dir() else set()


def _sweep_and_signal(tmp_path: Path, extra: list[str], send: Callable[[int], None]):
    """Start a 6-point sweep with 2 workers, signal it when both train; return it."""
    (tmp_path / "sweep.toml").write_text(_SWEEP.format(epochs=100000))
    proc = _start(["sweep", "sweep.toml", *extra], tmp_path)
    runs = tmp_path / "runs"

    def both_training() -> bool:
        return len(list(runs.glob("*/last.pt"))) >= 2

    _wait_for(both_training, proc, 240)
    started = _started_points(runs)
    send(proc.pid)
    return proc, runs, started


@pytest.mark.slow
@pytest.mark.parametrize(
    ("how", "sig"),
    SWEEP_SIGNALS,
    ids=["sigterm-to-parent", "ctrl-c-to-group", "sigterm-to-group"],
)
def test_a_signal_stops_a_sweep_pool_at_once(
    how: str, sig: str, tmp_path: Path
) -> None:
    signum = getattr(signal, sig)

    def send(pid: int) -> None:
        if how == "parent":
            os.kill(pid, signum)
        else:
            os.killpg(pid, signum)  # what the terminal does on Ctrl-C

    proc, runs, started = _sweep_and_signal(tmp_path, ["-j", "2"], send)
    assert len(started) == 2  # two workers: two points at a time
    took = time.monotonic()
    assert proc.wait(60) == 128 + signum
    took = time.monotonic() - took
    assert took < 30, f"the sweep took {took:.0f} s to stop"
    _interrupted_line(tmp_path, sig)
    _no_survivors(proc.pid)
    assert _started_points(runs) == started  # no point started after the signal
    assert not _temps(tmp_path)
    assert not list(runs.glob("*/final.pt"))
    if (tmp_path / "results.zarr").exists():  # nothing half-written is visible
        listed = ok(cli("results", tmp_path / "results.zarr", "--json"))
        assert json.loads(listed.stdout) == []  # no point finished: no run


@pytest.mark.slow
@pytest.mark.distributed
def test_sigterm_stops_a_dask_sweep_at_once(tmp_path: Path) -> None:
    pytest.importorskip("distributed")
    proc, runs, started = _sweep_and_signal(
        tmp_path,
        ["-j", "2", "--scheduler", "dask"],
        lambda pid: os.kill(pid, signal.SIGTERM),
    )
    assert proc.wait(90) == 128 + signal.SIGTERM
    _interrupted_line(tmp_path, "SIGTERM")
    _no_survivors(proc.pid, grace=30)
    assert _started_points(runs) == started
    assert not list(runs.glob("*/final.pt"))


@pytest.mark.slow
def test_kill_9_during_writes_loses_nothing_and_resume_is_bit_exact(
    tmp_path: Path,
) -> None:
    epochs = 40
    # 32 batches an epoch: on a quiet machine 4 batches an epoch finished all 40
    # epochs inside the 0.2 s between seeing progress and the kill
    tiny = [("n_train=1024" if a == "n_train=128" else a) for a in TINY_TRAIN]
    assert tiny != TINY_TRAIN
    whole = tmp_path / "whole"
    # every training runs as a child process: in this process torch may use
    # another thread count, and sums over 1024 rows then differ in the last bit
    _finish(
        ["train", *tiny, "--epochs", epochs, "--out", whole, "--no-store"], tmp_path
    )
    out = tmp_path / "killed"
    rng = random.Random(11)  # kill times seeded: the same test every run
    left_behind = 0
    for attempt in range(3):
        argv = ["train", *tiny, "--epochs", epochs, "--out", out, "--no-store"]
        if attempt:
            argv.append("--resume")
        proc = _start(argv, tmp_path)
        seen = (out / "last.pt").stat().st_mtime_ns if (out / "last.pt").exists() else 0

        def progressed(seen: int = seen) -> bool:
            p = out / "last.pt"
            return p.is_file() and p.stat().st_mtime_ns != seen

        _wait_for(progressed, proc, 120)
        time.sleep(rng.uniform(0.0, 0.2))
        proc.kill()
        proc.wait(30)
        left_behind += len(_temps(out))
        ckpt = sharpkit.load_checkpoint(out / "last.pt")  # never a torn file
        assert ckpt.meta.epoch is not None
        assert ckpt.meta.epoch < epochs
    _finish(
        ["train", *tiny, "--epochs", epochs, "--out", out, "--no-store", "--resume"],
        tmp_path,
    )
    assert not _temps(out), f"{left_behind} temporary files left by the kills"
    assert (out / "final.pt").read_bytes() == (whole / "final.pt").read_bytes()


# ------------------------------------------------ children end with their parent

SLOW_LOSS = """
import time

import torch


def loss(outputs, targets):
    time.sleep(2.0)  # minutes of work in all: the ranks outlive any check
    return torch.nn.functional.cross_entropy(outputs, targets)
"""


def _children(pid: int) -> list[int]:
    """Live processes whose parent is ``pid``."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2 :].split()
            if int(fields[1]) == pid and fields[0] not in ("Z", "X"):
                out.append(int(entry.name))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("sig", ["SIGKILL", "SIGTERM"])
def test_the_ranks_of_measure_nproc_end_with_their_parent(
    tiny: Path, tmp_path: Path, sig: str
) -> None:
    (tmp_path / "slow.py").write_text(SLOW_LOSS)
    argv = ["measure", tiny, "--loss", f"{tmp_path / 'slow.py'}:loss",
            "--no-store", "--nproc", "2"]  # fmt: skip
    proc = _start(argv, tmp_path)
    # both ranks started and past their imports (rank 0 prints its progress)
    _wait_for(lambda: len(_children(proc.pid)) == 2, proc, 120)
    _wait_for(lambda: (tmp_path / "child.err").stat().st_size > 0, proc, 120)
    os.kill(proc.pid, getattr(signal, sig))
    proc.wait(60)
    _no_survivors(proc.pid, grace=10)  # no rank goes on computing


@pytest.mark.slow
def test_kill_9_to_a_sweep_ends_its_workers(tmp_path: Path) -> None:
    proc, runs, started = _sweep_and_signal(
        tmp_path, ["-j", "2"], lambda pid: os.kill(pid, signal.SIGKILL)
    )
    proc.wait(60)
    _no_survivors(proc.pid, grace=30)  # no worker, no resource tracker
    assert _started_points(runs) == started
