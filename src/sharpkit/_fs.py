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
"""

from __future__ import annotations

import contextlib
import os
import secrets
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = [
    "atomic_file",
    "atomic_write",
    "is_temp",
    "remove_live_temps",
    "remove_stale_temps",
    "temp_name",
]

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
