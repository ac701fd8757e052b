"""Measure across processes: the ``--nproc`` launcher and each rank's session.

``sharpkit measure --nproc N ...`` starts ``N`` copies of the same command as
ranks of one ``torch.distributed`` group on this machine, with the environment
``torchrun`` would give them (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``,
``MASTER_ADDR``, ``MASTER_PORT``). ``torchrun --nproc-per-node N -m sharpkit
measure ...`` does the same on one or several machines. In each rank,
:func:`rank_session` joins the group described by that environment (gloo on the
CPU, nccl on CUDA, one GPU per local rank).

Errors: under the launcher, a rank that fails writes its one-line error to a
file instead of printing it, and the launcher stops every other rank (those
waiting for it in a collective would otherwise wait forever) and prints one
line: the error of the rank that failed first, leaving out the
:class:`~sharpkit.DistributedError` the others raised because it stopped.
Under ``torchrun`` each rank prints its own line, prefixed with its rank, and
``torchrun`` stops the rest.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from sharpkit._fs import die_with_parent
from sharpkit._limits import check_processes
from sharpkit.errors import ConfigError, DistributedError, SharpkitError, first_line

__all__ = [
    "LAUNCHER",
    "RankSession",
    "end_with_launcher",
    "exit_rank",
    "launch",
    "rank_prefix",
    "rank_session",
    "record_error",
    "records_errors",
]

ERROR_DIR = "SHARPKIT_RANK_ERRORS"
"""Environment variable: the folder where launched ranks write their errors."""

LAUNCHER = "SHARPKIT_LAUNCHER_PID"
"""Environment variable: the pid of the ``--nproc`` launcher of this rank."""


def end_with_launcher() -> None:
    """In a rank started by ``--nproc``: be killed when the launcher ends.

    ``kill -9`` to the launcher cannot stop its ranks itself; the kernel does
    it (parent-death signal), so no rank goes on computing, or stores a result,
    after the command ended.
    """
    launcher = os.environ.get(LAUNCHER, "")
    if launcher.isdigit():
        die_with_parent(signal.SIGKILL, int(launcher))


_GRACE = 3.0
"""Seconds the other ranks get to stop by themselves once one has failed."""


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default


def env_ranks() -> tuple[int, int, int]:
    """``(rank, local rank, world size)`` from torchrun's environment, or 0, 0, 1."""
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    return rank, _env_int("LOCAL_RANK", rank), world


def rank_prefix() -> str:
    """``"rank R of W: "`` in a rank of several processes, else ``""``."""
    rank, _, world = env_ranks()
    return f"rank {rank} of {world}: " if world > 1 else ""


def records_errors() -> bool:
    """Whether this is a rank started by :func:`launch` (its errors go to a file)."""
    return bool(os.environ.get(ERROR_DIR)) and env_ranks()[2] > 1


def record_error(exc: BaseException) -> None:
    """Write this rank's error for the launcher, once (the first one counts)."""
    folder = os.environ.get(ERROR_DIR)
    if not folder:
        return
    rank = env_ranks()[0]
    path = Path(folder) / f"rank{rank}.json"
    if path.exists():
        return
    record = {
        "rank": rank,
        "time": time.time(),
        "message": " ".join(str(exc).split()),
        "peer": isinstance(exc, DistributedError),
    }
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record))
    tmp.replace(path)


def exit_rank(status: int) -> NoReturn:
    """End a rank of ``--nproc`` that recorded its error, without the teardown.

    A rank whose peers failed ends while the process group's threads still
    run; the interpreter's normal exit then tears them down and the C++ runtime
    may print ``terminate called without an active exception`` on the
    terminal, a second line beside the launcher's one. The error is recorded
    and the output flushed, so nothing is lost by ending at once.
    """
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(status)


@dataclass(frozen=True)
class RankSession:
    """This process's place in the group: its rank, the group size, its device."""

    rank: int
    world: int
    device: str

    @property
    def leader(self) -> bool:
        """Rank 0: the one process that prints, shows progress and writes."""
        return self.rank == 0


@contextlib.contextmanager
def rank_session(device: str) -> Iterator[RankSession]:
    """Join the process group that ``torchrun`` or ``--nproc`` set up, if any.

    Without ``WORLD_SIZE > 1`` in the environment (or with a group already
    initialised by the caller) nothing is set up. Otherwise the group is
    initialised from ``MASTER_ADDR``/``MASTER_PORT`` (gloo for the CPU, nccl
    for CUDA with ``cuda:LOCAL_RANK`` as this rank's device) and destroyed when
    the block ends. An error inside the block is recorded for the launcher
    before it propagates, so its time says which rank failed first.

    Raises:
        DistributedError: The group could not be joined.
        ConfigError: A device that does not exist.
    """
    import torch
    import torch.distributed as dist

    from sharpkit.api.resolve import resolve_device

    rank, local, world = env_ranks()
    if world <= 1 or dist.is_initialized():
        if dist.is_available() and dist.is_initialized():
            rank, world = dist.get_rank(), dist.get_world_size()
        yield RankSession(rank if world > 1 else 0, world, device)
        return
    dev = resolve_device(device)
    backend = "gloo"
    if dev.type == "cuda":
        if local >= torch.cuda.device_count():
            msg = (
                f"local rank {local} has no GPU of its own "
                f"({torch.cuda.device_count()} found); start at most that many "
                "processes per machine with --device cuda"
            )
            raise ConfigError(msg)
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
        backend = "nccl"
    try:
        dist.init_process_group(backend)
    except (RuntimeError, ValueError) as exc:
        where = (
            f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"
        )
        first = first_line(exc, limit=200)
        msg = (
            f"rank {rank} of {world} could not join the process group at {where} "
            f"({first}); start the ranks with torchrun or sharpkit measure --nproc"
        )
        raise DistributedError(msg) from exc
    try:
        yield RankSession(rank, world, str(dev))
    except BaseException as exc:
        if isinstance(exc, SharpkitError):
            record_error(exc)
        raise  # a failed rank leaves the group by exiting: no collective teardown
    dist.destroy_process_group()


# --------------------------------------------------------------------------- launcher


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def without_nproc(argv: list[str]) -> list[str]:
    """``argv`` less its ``--nproc N`` / ``--nproc=N``."""
    out: list[str] = []
    skip = False
    for item in argv:
        if skip:
            skip = False
        elif item == "--nproc":
            skip = True
        elif not item.startswith("--nproc="):
            out.append(item)
    return out


def _start(rank: int, nproc: int, port: int, folder: Path, argv: list[str]) -> Any:
    env = dict(os.environ)
    env.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(nproc),
        LOCAL_WORLD_SIZE=str(nproc),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        GLOO_SOCKET_IFNAME=env.get("GLOO_SOCKET_IFNAME", "lo"),
        **{ERROR_DIR: str(folder)},
    )
    # the cores are shared by the ranks (torchrun sets 1 thread; use them all)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    if rank == 0:  # rank 0 owns the terminal: its table, JSON and progress
        out: Any = None
        err: Any = None
    else:
        out = subprocess.DEVNULL
        err = (folder / f"rank{rank}.log").open("wb")
    cmd = [sys.executable, "-m", "sharpkit", *argv]
    env[LAUNCHER] = str(os.getpid())  # the rank ends with us (end_with_launcher)
    try:
        return subprocess.Popen(cmd, env=env, stdout=out, stderr=err)
    finally:
        if err is not None:
            err.close()


def _wait(procs: list[Any]) -> int | None:
    """Wait until all ranks succeed (``None``) or one fails (its rank)."""
    while True:
        codes = [p.poll() for p in procs]
        for rank, code in enumerate(codes):
            if code not in (None, 0):
                return rank
        if all(code == 0 for code in codes):
            return None
        time.sleep(0.05)


def _stop(procs: list[Any], grace: float) -> set[int]:
    """Let the ranks end by themselves for ``grace`` seconds, then end them.

    Returns:
        The ranks that had to be ended.
    """
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(p.poll() is None for p in procs):
        time.sleep(0.05)
    ended = {rank for rank, p in enumerate(procs) if p.poll() is None}
    for rank in ended:
        procs[rank].terminate()
    deadline = time.monotonic() + 5.0
    for p in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(timeout=max(deadline - time.monotonic(), 0.1))
        if p.poll() is None:
            p.kill()
            p.wait()
    return ended


def _exit_reason(code: int) -> str:
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        hint = " (out of memory?)" if name == "SIGKILL" else ""
        return f"was killed by {name}{hint}"
    return f"exited with status {code}"


def _last_line(path: Path) -> str:
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln]
    except OSError:
        return ""
    return lines[-1].strip()[:300] if lines else ""


def _root_cause(folder: Path, procs: list[Any], ended: set[int]) -> str:
    """The one line that says why the ranks stopped.

    In order: the earliest error a rank raised itself; else a rank that failed
    without saying why (a crash: its exit status and last line of output);
    else the earliest report of a stopped peer.
    """
    records = {}
    for path in folder.glob("rank*.json"):
        with contextlib.suppress(OSError, ValueError):
            record = json.loads(path.read_text())
            records[int(record["rank"])] = record
    world = len(procs)
    if len(records) == world and len({r["message"] for r in records.values()}) == 1:
        return str(records[0]["message"])  # every rank failed the same way
    own = [r for r in records.values() if not r["peer"]]
    if own:
        cause = min(own, key=lambda r: r["time"])
        return f"rank {cause['rank']} of {world}: {cause['message']}"
    for rank, p in enumerate(procs):
        if rank not in records and rank not in ended and p.returncode:
            detail = _last_line(folder / f"rank{rank}.log") if rank else ""
            line = f"rank {rank} of {world} {_exit_reason(p.returncode)}"
            return f"{line}: {detail}" if detail else line
    cause = min(records.values(), key=lambda r: r["time"])
    return f"rank {cause['rank']} of {world}: {cause['message']}"


def launch(nproc: int, argv: list[str]) -> int:
    """Run ``sharpkit <argv>`` as ``nproc`` ranks on this machine.

    Rank 0 prints; the others are silent. Returns the exit status: 0 when every
    rank succeeded, 1 after printing one error line, 130 on Ctrl-C.
    """
    from sharpkit.cli._progress import print_line

    with tempfile.TemporaryDirectory(prefix="sharpkit-ranks-") as tmp:
        folder = Path(tmp)
        port = _free_port()
        procs = [_start(r, nproc, port, folder, argv) for r in range(nproc)]
        try:
            first = _wait(procs)
        except KeyboardInterrupt:
            _stop(procs, grace=_GRACE)
            return 130
        except BaseException:  # SIGTERM, SIGHUP: no rank goes on after us
            _stop(procs, grace=0.0)
            raise
        if first is None:
            return 0
        ended = _stop(procs, grace=_GRACE)
        line = _root_cause(folder, procs, ended)
    print_line("error", line)
    return 1


def check_nproc(nproc: int, device: str) -> None:
    """Refuse a process count the launcher cannot start.

    Raises:
        ConfigError: Below 1, inside an existing group, or more GPUs than exist.
    """
    if nproc < 1:
        msg = f"--nproc must be >= 1, got {nproc}"
        raise ConfigError(msg)
    check_processes("--nproc", nproc)
    if env_ranks()[2] > 1:
        msg = (
            "--nproc inside a process group (torchrun already started the "
            "ranks); drop --nproc"
        )
        raise ConfigError(msg)
    if device.startswith("cuda"):
        import torch

        found = torch.cuda.device_count()
        if nproc > found:
            msg = (
                f"--nproc {nproc} with --device cuda needs {nproc} GPUs, "
                f"{found} found; lower --nproc"
            )
            raise ConfigError(msg)
