"""Atomic file writes: a file appears under its final name complete, or not at all.

Every file sharpkit writes outside the zarr store (checkpoints, training curves,
partial probe grids) and the store's own metadata documents go through
:func:`atomic_file`: the data is written to a temporary file in the same
directory (``.<name>.<random>.tmp``) and moved into place with one
``os.replace``, which is atomic on a local POSIX file system. A killed process
leaves at most a temporary file, never a truncated one under the final name.

Temporary files that are open are remembered, so that a command ending on a
signal can remove them (:func:`remove_live_temps`), and a resumed job can sweep
up the leftovers of a killed one (:func:`remove_stale_temps`).

Signals: inside :func:`unwind_on_signals` a SIGTERM or SIGHUP raises
:class:`Terminated` in the main thread, as Ctrl-C raises ``KeyboardInterrupt``,
so the stack unwinds through every ``finally`` (temporary files removed,
progress displays closed) before the command exits with ``128 + signal``.
Worker processes of a pool start with :func:`init_worker` and run their tasks
through :func:`run_in_worker`: they ignore Ctrl-C (their parent decides) and
end at once on SIGTERM, removing their temporary files, instead of taking the
next task.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

__all__ = [
    "Terminated",
    "atomic_file",
    "atomic_write",
    "available_memory",
    "init_worker",
    "is_temp",
    "remove_live_temps",
    "remove_stale_temps",
    "run_in_worker",
    "start_resource_tracker",
    "temp_name",
    "unwind_on_signals",
]

T = TypeVar("T")
# Signals that end a command by unwinding it (SIGINT raises KeyboardInterrupt).
_UNWIND = tuple(
    getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name)
)

_LIVE: set[Path] = set()
_LOCK = threading.Lock()


def temp_name(path: Path) -> Path:
    """Return a fresh temporary path beside ``path`` (``.<name>.<random>.tmp``)."""
    return path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"


def is_temp(name: str) -> bool:
    """Return whether a file name is one of :func:`temp_name`'s."""
    return name.startswith(".") and name.endswith(".tmp")


@contextmanager
def atomic_file(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces ``path``.

    On an exception (or a signal that unwinds the stack) the temporary file is
    removed and ``path`` is left as it was.

    Examples:
        >>> import tempfile, pathlib
        >>> target = pathlib.Path(tempfile.mkdtemp()) / "a.txt"
        >>> with atomic_file(target) as tmp:
        ...     _ = tmp.write_text("done")
        >>> target.read_text()
        'done'
    """
    final = Path(path)
    tmp = temp_name(final)
    with _LOCK:
        _LIVE.add(tmp)
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        with _LOCK:
            _LIVE.discard(tmp)
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def atomic_write(
    path: str | os.PathLike[str], data: bytes | str, *, exclusive: bool = False
) -> bool:
    """Write ``data`` to ``path`` atomically; return whether ``path`` was written.

    With ``exclusive`` the file is linked into place only if ``path`` does not
    exist yet (the first writer wins, the others get ``False``).
    """
    final = Path(path)
    payload = data.encode() if isinstance(data, str) else data
    if not exclusive:
        with atomic_file(final) as tmp:
            tmp.write_bytes(payload)
        return True
    tmp = temp_name(final)
    with _LOCK:
        _LIVE.add(tmp)
    try:
        tmp.write_bytes(payload)
        try:
            os.link(tmp, final)
        except FileExistsError:
            return False
        return True
    finally:
        with _LOCK:
            _LIVE.discard(tmp)
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def remove_live_temps() -> list[Path]:
    """Remove the temporary files being written right now (on a fatal signal)."""
    with _LOCK:
        live = list(_LIVE)
        _LIVE.clear()
    removed = []
    for tmp in live:
        with contextlib.suppress(OSError):
            tmp.unlink()
            removed.append(tmp)
    return removed


def remove_stale_temps(directory: str | os.PathLike[str]) -> list[Path]:
    """Remove leftover ``.<name>.<random>.tmp`` files in ``directory``.

    For resuming a job in a folder only it writes to: whatever temporary files
    are there were left by a killed run of the same job.
    """
    folder = Path(directory)
    if not folder.is_dir():
        return []
    removed = []
    for entry in folder.iterdir():
        if is_temp(entry.name) and entry.is_file() and entry not in _LIVE:
            with contextlib.suppress(OSError):
                entry.unlink()
                removed.append(entry)
    return removed


class Terminated(BaseException):
    """A SIGTERM or SIGHUP arrived: unwind the stack, then exit with :attr:`status`.

    A ``BaseException``, like ``KeyboardInterrupt``, so that ``except Exception``
    in library or plugin code does not swallow it.

    Attributes:
        signum: The signal's number.
    """

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(self.name)

    @property
    def name(self) -> str:
        """The signal's name, e.g. ``SIGTERM``."""
        try:
            return signal.Signals(self.signum).name
        except ValueError:  # pragma: no cover - every signal we install is named
            return f"signal {self.signum}"

    @property
    def status(self) -> int:
        """The exit status a shell expects after this signal (``128 + signum``)."""
        return 128 + self.signum


@contextmanager
def unwind_on_signals() -> Iterator[None]:
    """Let SIGTERM and SIGHUP raise :class:`Terminated` while the block runs.

    A second signal while the stack unwinds is ignored, so that the clean-up
    finishes (``kill -9`` still ends everything). Outside the main thread, where
    Python cannot handle signals, the block runs unchanged.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in _UNWIND}

    def handler(signum: int, frame: FrameType | None) -> None:
        for s in _UNWIND:
            signal.signal(s, signal.SIG_IGN)  # once is enough: let the unwinding run
        raise Terminated(signum)

    for s in _UNWIND:
        signal.signal(s, handler)
    try:
        yield
    finally:
        for s, old in previous.items():
            signal.signal(s, old)


_IN_TASK = threading.Event()


def is_interrupt(exc: BaseException) -> bool:
    """Whether ``exc`` must pass through code that reports user code's failures.

    Ctrl-C, a signal (:class:`Terminated`) and a generator's end do; anything
    else user code raises, ``SystemExit`` and bare ``BaseException`` subclasses
    included, is that code's failure: one line, not an exit with status 0 and
    nothing measured.
    """
    return isinstance(exc, KeyboardInterrupt | GeneratorExit | Terminated)


def die_with_parent(sig: int, parent: int | None = None) -> None:
    """Have Linux send ``sig`` to this process when its parent ends, ``kill -9`` too.

    For child processes (ranks, pool workers): without it a child whose parent
    was killed goes on computing, and may even store its result after the
    command said it was interrupted. ``parent`` is the pid the child was
    started by: if it already ended before the request was made, the child
    exits at once. Elsewhere than Linux it does nothing.
    """
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(sig), 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # pragma: no cover - no prctl here
        return
    if parent is not None and os.getppid() != parent:
        os._exit(128 + int(sig))  # the parent ended before we asked


def start_resource_tracker() -> None:
    """Start multiprocessing's resource tracker immune to SIGHUP, if not running.

    It ignores Ctrl-C and SIGTERM by itself but not SIGHUP: a closed terminal
    killed it, and the pool's workers then printed its ``KeyError`` tracebacks
    as it was relaunched. The parent, which does unwind on SIGHUP, cleans up.
    """
    if not hasattr(signal, "SIGHUP") or (
        threading.current_thread() is not threading.main_thread()
    ):
        return
    from multiprocessing import resource_tracker

    old = signal.signal(signal.SIGHUP, signal.SIG_IGN)  # inherited through exec
    try:
        resource_tracker.ensure_running()
    finally:
        signal.signal(signal.SIGHUP, old)


def init_worker() -> None:
    """Initialise a pool's worker process: its parent owns Ctrl-C and SIGTERM.

    Ctrl-C (and SIGHUP, when the terminal closes) reaches every process of the
    terminal's group; a worker ignores it and is stopped by its parent (with
    SIGTERM) instead, so it never prints a
    traceback or starts the next task. On SIGTERM a worker that is running a
    task unwinds it (see :func:`run_in_worker`); an idle one exits at once.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if hasattr(signal, "SIGHUP"):  # a closed terminal: the parent stops us too
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _worker_signal)
    import multiprocessing

    parent = multiprocessing.parent_process()
    # a parent killed with -9 cannot stop us: SIGTERM then, as it would have
    die_with_parent(signal.SIGTERM, parent.pid if parent is not None else None)


def _worker_signal(signum: int, frame: FrameType | None) -> None:
    if _IN_TASK.is_set():
        signal.signal(signum, signal.SIG_IGN)
        raise Terminated(signum)
    os._exit(128 + signum)


def run_in_worker(fn: Callable[..., T], *args: Any) -> T:
    """Run one task in a worker started with :func:`init_worker`.

    On SIGTERM the task unwinds (its temporary files are removed) and the
    worker process ends with status ``128 + signal``: a stopped pool takes no
    further task.
    """
    _IN_TASK.set()
    try:
        return fn(*args)
    except Terminated as exc:
        remove_live_temps()
        os._exit(exc.status)
    finally:
        _IN_TASK.clear()


def available_memory(device: object = None) -> int | None:
    """Bytes of memory free now on ``device`` (a CUDA device, or host RAM).

    For sizing work before it starts: a job that would need more is refused
    with one line instead of swapping or being killed. ``None`` where it cannot
    be told (no ``/proc/meminfo``, an unknown accelerator).
    """
    kind = getattr(device, "type", str(device) if device is not None else "cpu")
    if str(kind).startswith("cuda"):
        try:
            import torch

            free, _ = torch.cuda.mem_get_info(device)  # type: ignore[arg-type]
        except (RuntimeError, AssertionError, ValueError):
            return None
        return int(free)
    if str(kind) != "cpu":
        return None
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None
