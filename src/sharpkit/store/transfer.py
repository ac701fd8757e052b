"""Files between a machine and an object store: sweep checkpoints without a shared disk.

A sweep whose ``out`` is an object-store URL keeps each grid point's
checkpoints there, so any worker can resume or measure any point:

* :func:`fetch` downloads one object into a local cache (once per ETag) and
  returns its path, for ``torch.load`` and the measurements;
* :class:`FolderSync` uploads what a training run writes into a local scratch
  folder (``last.pt``, ``curves.csv``, ``epoch-*.pt``) while it runs, so a
  killed worker's point resumes from its last epoch on another machine.

The local cache is ``$SHARPKIT_CACHE`` (default ``~/.cache/sharpkit``), under
``objects/<scheme>/<bucket>/<key>``.
"""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path
from types import TracebackType
from typing import Final

from sharpkit.errors import SharpkitError
from sharpkit.store.objects import ObjectBackend, location_of

__all__ = ["SYNCED", "FolderSync", "cache_root", "fetch", "local_copy_of"]

SYNCED: Final = ("last.pt", "curves.csv")
"""Files of a training folder uploaded as they change (and ``epoch-*.pt``)."""


def cache_root() -> Path:
    """Where downloaded objects are kept (``$SHARPKIT_CACHE`` or ~/.cache/sharpkit)."""
    root = os.environ.get("SHARPKIT_CACHE")
    if root:
        return Path(root)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "sharpkit"


def local_copy_of(url: str) -> Path:
    """The cache path of an object-store URL (not necessarily downloaded yet)."""
    scheme, _, rest = url.partition("://")
    parts = [p for p in rest.split("/") if p not in ("", ".", "..")]
    return cache_root().joinpath("objects", scheme, *parts)


def _split(url: str) -> tuple[ObjectBackend, str]:
    """The backend of the object's folder and the object's name."""
    folder, _, name = url.rpartition("/")
    return ObjectBackend(folder), name


def fetch(url: str) -> Path | None:
    """Download the object ``url`` into the cache; its local path, ``None`` if absent.

    A cached copy is reused while the object's ETag is unchanged.

    Raises:
        StoreError: The object store could not be read.
    """
    url = str(location_of(url))
    backend, name = _split(url)
    head = backend.head(name)
    if head is None:
        return None
    dest = local_copy_of(url)
    tag = dest.with_name(f".{dest.name}.etag")
    with contextlib.suppress(OSError):
        if dest.is_file() and tag.read_text() == f"{head[0]} {head[1]}":
            return dest
    etag = backend.get_file(name, dest)
    if etag is None:  # deleted meanwhile
        return None
    tag.write_text(f"{dest.stat().st_size} {etag}")
    return dest


class FolderSync:
    """Upload a local folder's training files to an object-store prefix as they change.

    Used as a context manager around a training run: a background thread
    uploads ``last.pt``, ``curves.csv`` and ``epoch-*.pt`` every ``every``
    seconds when they changed, and once more on exit. Each file is one atomic
    put, so the prefix always holds a complete ``last.pt`` to resume from.

    Args:
        folder: The local folder the trainer writes.
        url: The object-store prefix (the grid point's folder).
        every: Seconds between checks.
    """

    def __init__(self, folder: Path, url: str, *, every: float = 5.0) -> None:
        self.folder = folder
        self.backend = ObjectBackend(str(location_of(url)))
        self.every = every
        self._seen: dict[str, tuple[float, int]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> FolderSync:
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join()
        if exc is None:
            self.sync()  # the last epoch; an error here fails the point
            return
        # training failed: keep its last epoch to resume from, and its error
        with contextlib.suppress(SharpkitError, OSError):
            self.sync()

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            # a failed upload is retried at the next check and on exit
            with contextlib.suppress(SharpkitError, OSError):
                self.sync()

    def sync(self) -> None:
        """Upload the training files that changed since the last upload."""
        try:
            entries = sorted(os.scandir(self.folder), key=lambda e: e.name)
        except FileNotFoundError:
            return
        for entry in entries:
            name = entry.name
            if name not in SYNCED and not (
                name.startswith("epoch-") and name.endswith(".pt")
            ):
                continue
            with contextlib.suppress(FileNotFoundError):
                st = entry.stat()
                stamp = (st.st_mtime, st.st_size)
                if self._seen.get(name) != stamp:
                    self.backend.put_file(name, Path(entry.path))
                    self._seen[name] = stamp

    def upload(self, name: str) -> None:
        """Upload one file of the folder now (e.g. ``final.pt``, last)."""
        self.backend.put_file(name, self.folder / name)
