"""Where a store's objects live: a local directory or an object store (S3, GCS, Azure).

The store sees its location as a flat set of objects named by ``/``-separated
keys (``runs/<id>/zarr.json``, ``runs/<id>/metrics/spectral/ritz_values/c/0``),
read and written through a :class:`Backend`. Two backends share everything but
the commit of a run:

* :class:`LocalBackend`, a directory: a run is written to
  ``staging/<id>.<host>.<pid>/`` and renamed into ``runs/<id>`` in one step;
* :class:`ObjectBackend`, an object store reached through ``obstore`` (the
  extra ``sharpkit[remote]``): there is no rename, so a run's objects are put
  under ``runs/<id>/`` and its group document ``runs/<id>/zarr.json``, which
  names every other object with its size and SHA-256 (the manifest), is put
  last. Until that object lands the run does not exist for any reader.

URLs name object stores: ``s3://bucket/prefix/results.zarr`` (``s3a://``),
``gs://bucket/...`` and ``az://container/...`` (``azure://``, ``abfs://``,
``abfss://``), configured from the environment as the cloud's own tools are
(``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_REGION``,
``AWS_ENDPOINT_URL``, ``AWS_ALLOW_HTTP``; ``GOOGLE_SERVICE_ACCOUNT``;
``AZURE_STORAGE_ACCOUNT_NAME``, ...).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, Final

from sharpkit._fs import atomic_write
from sharpkit.errors import ConfigError, StoreError

if TYPE_CHECKING:
    from obstore.store import ClientConfig, ObjectStore, RetryConfig

__all__ = [
    "SCHEMES",
    "Backend",
    "LocalBackend",
    "ObjectBackend",
    "ObjectInfo",
    "hostname",
    "is_url",
    "location_of",
    "open_backend",
]

SCHEMES: Final = ("s3", "s3a", "gs", "az", "azure", "abfs", "abfss")
"""URL schemes of the object stores a results store (or a sweep's ``out``) may use."""

_URL_RE: Final = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://(.*)$")
# A URL that went through pathlib lost one slash: Path("s3://b/x") == Path("s3:/b/x").
_COLLAPSED_RE: Final = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*):/([^/].*)$")
# How many objects an object store reads or writes at once.
_PARALLEL: Final = 16


@dataclass(frozen=True)
class ObjectInfo:
    """One stored object: its key (relative to the backend's root), size, mtime."""

    key: str
    size: int
    mtime: float


# --------------------------------------------------------------------------- locations


def location_of(location: str | os.PathLike[str]) -> str | Path:
    """Return an object-store URL as a string, anything else as a local :class:`Path`.

    A URL that was turned into a :class:`~pathlib.Path` on the way (a CLI option
    typed as a path) lost one of its slashes; it is recognised and restored.

    Raises:
        ConfigError: A URL whose scheme is not an object store sharpkit supports.

    Examples:
        >>> location_of("s3://bucket/results.zarr")
        's3://bucket/results.zarr'
        >>> location_of(Path("s3://bucket/results.zarr"))
        's3://bucket/results.zarr'
        >>> location_of("results.zarr")
        PosixPath('results.zarr')
    """
    text = os.fspath(location)
    m = _URL_RE.match(text)
    if m is None and isinstance(location, PurePath):
        collapsed = _COLLAPSED_RE.match(text)
        if collapsed is not None and collapsed.group(1).lower() in (*SCHEMES, "file"):
            m = _URL_RE.match(f"{collapsed.group(1)}://{collapsed.group(2)}")
    if m is None:
        return Path(text)
    scheme = m.group(1).lower()
    if scheme == "file":
        return Path(m.group(2))
    if scheme not in SCHEMES:
        msg = (
            f"{text!r}: sharpkit cannot keep results at a {scheme}:// URL; use a "
            f"local path or an object store ({', '.join(s + '://' for s in SCHEMES)})"
        )
        raise ConfigError(msg)
    if not m.group(2).strip("/"):
        msg = f"{text!r} names no bucket; use {scheme}://BUCKET/PREFIX"
        raise ConfigError(msg)
    return f"{scheme}://{m.group(2).rstrip('/')}"


def is_url(location: str | os.PathLike[str]) -> bool:
    """Whether ``location`` names an object store rather than a local path."""
    return isinstance(location_of(location), str)


def open_backend(location: str | os.PathLike[str]) -> Backend:
    """The backend for a local path or an object-store URL (see :func:`location_of`)."""
    where = location_of(location)
    if isinstance(where, str):
        return ObjectBackend(where)
    return LocalBackend(where)


def hostname() -> str:
    """This machine's name as it appears in staging entries (``[A-Za-z0-9-]``)."""
    return re.sub(r"[^A-Za-z0-9-]+", "-", socket.gethostname()).strip("-") or "host"


# --------------------------------------------------------------------------- backends


class Backend(ABC):
    """Objects under one root, named by ``/``-separated keys.

    Attributes:
        where: The location for messages (the path or the URL).
        renames: Whether runs are committed by renaming a staging directory
            (local) rather than by writing the manifest last (object stores).
    """

    where: str
    renames: bool

    @abstractmethod
    def get(self, key: str) -> bytes | None:
        """The bytes of ``key``, or ``None`` if there is no such object."""

    def get_many(self, keys: Sequence[str]) -> dict[str, bytes | None]:
        """:meth:`get` of several keys (at once where the backend gains from it)."""
        return {k: self.get(k) for k in keys}

    @abstractmethod
    def put(self, key: str, data: bytes) -> None:
        """Write ``key``; readers see the old object or the new one, never a mix."""

    @abstractmethod
    def put_new(self, key: str, data: bytes) -> bool:
        """Write ``key`` only if it does not exist; whether this call wrote it."""

    @abstractmethod
    def walk(self, prefix: str) -> list[ObjectInfo]:
        """Every object under ``prefix`` (a ``/``-terminated key prefix); recursive."""

    @abstractmethod
    def children(self, prefix: str) -> list[str]:
        """Names of the sub-prefixes ("directories") directly under ``prefix``."""

    @abstractmethod
    def delete(self, keys: Iterable[str]) -> None:
        """Remove objects; missing ones are ignored."""

    @abstractmethod
    def is_empty(self) -> bool:
        """Whether nothing at all is stored under the root."""

    @abstractmethod
    def commit(self, run_id: str, objects: Mapping[str, bytes], doc: bytes) -> None:
        """Make ``runs/<run_id>`` visible with ``objects`` and its group ``doc``.

        ``objects`` are keyed relative to the run; ``doc`` is the run's
        ``zarr.json`` (with the manifest). Nothing is visible if this fails.
        """

    @abstractmethod
    def collect(self, max_age: float | None, host: str) -> list[str]:
        """Remove the leftovers of killed writers (see :meth:`ResultStore.gc`)."""


class LocalBackend(Backend):
    """A directory on a local (POSIX) file system."""

    renames = True

    def __init__(self, root: Path) -> None:
        self.root = root
        self.where = str(root)

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*key.split("/"))

    def get(self, key: str) -> bytes | None:
        """See :meth:`Backend.get`."""
        try:  # plain strings: pathlib costs more than the read on small files
            with open(os.path.join(self.where, key), "rb") as fh:
                return fh.read()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None

    def put(self, key: str, data: bytes) -> None:
        """See :meth:`Backend.put`."""
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, data)

    def put_new(self, key: str, data: bytes) -> bool:
        """See :meth:`Backend.put_new`."""
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        return atomic_write(path, data, exclusive=True)

    def walk(self, prefix: str) -> list[ObjectInfo]:
        """See :meth:`Backend.walk`."""
        base = self._path(prefix.rstrip("/")) if prefix else self.root
        out: list[ObjectInfo] = []
        for top, _dirs, files in os.walk(base):
            for name in files:
                path = Path(top) / name
                with contextlib.suppress(OSError):
                    st = path.lstat()
                    key = path.relative_to(self.root).as_posix()
                    out.append(ObjectInfo(key, st.st_size, st.st_mtime))
        return sorted(out, key=lambda o: o.key)

    def children(self, prefix: str) -> list[str]:
        """See :meth:`Backend.children`."""
        try:
            entries = list(os.scandir(self._path(prefix.rstrip("/"))))
        except (FileNotFoundError, NotADirectoryError):
            return []
        return sorted(e.name for e in entries if e.is_dir(follow_symlinks=False))

    def delete(self, keys: Iterable[str]) -> None:
        """See :meth:`Backend.delete`."""
        for key in keys:
            with contextlib.suppress(FileNotFoundError):
                self._path(key).unlink()

    def is_empty(self) -> bool:
        """See :meth:`Backend.is_empty`."""
        from sharpkit._fs import is_temp

        return not [e for e in os.listdir(self.root) if not is_temp(e)]

    def commit(self, run_id: str, objects: Mapping[str, bytes], doc: bytes) -> None:
        """See :meth:`Backend.commit`."""
        entry = self.root / "staging" / f"{run_id}.{hostname()}.{os.getpid()}"
        try:
            for key, data in {**objects, "zarr.json": doc}.items():
                path = entry.joinpath(*key.split("/"))
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)
            os.rename(entry, self.root / "runs" / run_id)
        except BaseException:
            shutil.rmtree(entry, ignore_errors=True)
            raise

    def collect(self, max_age: float | None, host: str) -> list[str]:
        """See :meth:`Backend.collect`."""
        staging = self.root / "staging"
        try:
            entries = os.listdir(staging)
        except (FileNotFoundError, NotADirectoryError):
            return []
        removed: list[str] = []
        now = time.time()
        for name in entries:
            if name == "zarr.json" or not _stale_entry(
                staging, name, now, max_age, host
            ):
                continue
            path = staging / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
            removed.append(name)
        return removed


def _stale_entry(
    staging: Path, name: str, now: float, max_age: float | None, host: str
) -> bool:
    """Whether the staging entry ``name`` is a leftover that gc removes."""
    parts = name.rsplit(".", 2)
    writer = parts[1] if len(parts) == 3 else None
    pid = int(parts[2]) if len(parts) == 3 and parts[2].isdigit() else None
    if writer == host and pid is not None:
        return pid != os.getpid() and not _pid_alive(pid)
    if max_age is None:
        return False
    try:
        return now - _newest_mtime(staging / name) > max_age
    except FileNotFoundError:
        return False


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OSError:
        return False
    return True


def _newest_mtime(path: Path) -> float:
    newest = path.lstat().st_mtime
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            with contextlib.suppress(OSError):
                newest = max(newest, os.lstat(os.path.join(root, name)).st_mtime)
    return newest


class ObjectBackend(Backend):
    """An object store (S3 and compatible servers, GCS, Azure) through ``obstore``.

    Credentials and endpoints come from the environment (``AWS_*``,
    ``GOOGLE_*``, ``AZURE_*``), as for the clouds' own tools. Requests are
    retried on transient errors for up to ``SHARPKIT_STORE_TIMEOUT`` seconds
    (default 60) before the command fails with one line.
    """

    renames = False

    def __init__(self, url: str) -> None:
        self.where = url
        self.url = url
        self._store = _obstore_for(url)

    def _error(self, exc: BaseException, what: str) -> StoreError:
        msg = (
            f"cannot {what} {self.where!r}: {_one_line(exc)}; check the URL, the "
            "network and the credentials (see docs/scaling.md)"
        )
        return StoreError(msg)

    def get(self, key: str) -> bytes | None:
        """See :meth:`Backend.get`."""
        import obstore
        from obstore.exceptions import NotFoundError

        try:
            return bytes(obstore.get(self._store, key).bytes())
        except (FileNotFoundError, NotFoundError):
            return None
        except Exception as exc:  # obstore raises its own tree and OSErrors
            raise self._error(exc, f"read {key!r} from") from None

    def get_many(self, keys: Sequence[str]) -> dict[str, bytes | None]:
        """See :meth:`Backend.get_many`."""
        if len(keys) < 2:
            return {k: self.get(k) for k in keys}
        with ThreadPoolExecutor(min(_PARALLEL, len(keys))) as pool:
            return dict(zip(keys, pool.map(self.get, keys), strict=True))

    def _put(self, key: str, data: bytes, *, create: bool = False) -> bool:
        import obstore
        from obstore.exceptions import AlreadyExistsError, PreconditionError

        try:
            obstore.put(self._store, key, data, mode="create" if create else None)
        except (AlreadyExistsError, PreconditionError, FileExistsError):
            if create:
                return False
            raise
        except Exception as exc:
            raise self._error(exc, f"write {key!r} to") from None
        return True

    def put(self, key: str, data: bytes) -> None:
        """See :meth:`Backend.put`."""
        self._put(key, data)

    def put_new(self, key: str, data: bytes) -> bool:
        """See :meth:`Backend.put_new`."""
        return self._put(key, data, create=True)

    def walk(self, prefix: str) -> list[ObjectInfo]:
        """See :meth:`Backend.walk`."""
        import obstore

        try:
            out = [
                ObjectInfo(
                    str(meta["path"]),
                    int(meta["size"]),
                    meta["last_modified"].timestamp(),
                )
                for batch in obstore.list(self._store, prefix or None)
                for meta in batch
            ]
        except Exception as exc:
            raise self._error(exc, "list") from None
        return sorted(out, key=lambda o: o.key)

    def children(self, prefix: str) -> list[str]:
        """See :meth:`Backend.children`."""
        import obstore

        base = prefix.rstrip("/")
        try:
            found = obstore.list_with_delimiter(self._store, base or None)
        except Exception as exc:
            raise self._error(exc, "list") from None
        names = [p.rstrip("/").rsplit("/", 1)[-1] for p in found["common_prefixes"]]
        return sorted(n for n in names if n)

    def delete(self, keys: Iterable[str]) -> None:
        """See :meth:`Backend.delete`."""
        import obstore

        batch = list(keys)
        try:
            for start in range(0, len(batch), 1000):
                obstore.delete(self._store, batch[start : start + 1000])
        except (FileNotFoundError, OSError) as exc:
            if not isinstance(exc, FileNotFoundError):
                raise self._error(exc, "delete from") from None
        except Exception as exc:
            raise self._error(exc, "delete from") from None

    def is_empty(self) -> bool:
        """See :meth:`Backend.is_empty`."""
        import obstore

        try:
            found = obstore.list_with_delimiter(self._store)
        except Exception as exc:
            raise self._error(exc, "list") from None
        return not found["common_prefixes"] and not found["objects"]

    def commit(self, run_id: str, objects: Mapping[str, bytes], doc: bytes) -> None:
        """See :meth:`Backend.commit`."""
        base = f"runs/{run_id}/"
        items = list(objects.items())
        with ThreadPoolExecutor(min(_PARALLEL, max(1, len(items)))) as pool:
            list(pool.map(lambda kv: self.put(base + kv[0], kv[1]), items))
        # The manifest lands last: only now does the run exist for readers.
        self.put(base + "zarr.json", doc)

    def collect(self, max_age: float | None, host: str) -> list[str]:
        """See :meth:`Backend.collect`."""
        if max_age is None:
            return []  # no writer's liveness can be seen from here: age only
        by_run: dict[str, list[ObjectInfo]] = {}
        for info in self.walk("runs/"):
            parts = info.key.split("/")
            if len(parts) > 2:
                by_run.setdefault(parts[1], []).append(info)
        now = time.time()
        removed: list[str] = []
        for run_id, objs in sorted(by_run.items()):
            if any(o.key == f"runs/{run_id}/zarr.json" for o in objs):
                continue  # committed (intact or not: that is --check's business)
            if now - max(o.mtime for o in objs) > max_age:
                self.delete(o.key for o in objs)
                removed.append(run_id)
        return removed

    def get_file(self, key: str, dest: Path) -> str | None:
        """Download ``key`` to ``dest`` atomically; its ETag, ``None`` if absent."""
        import obstore
        from obstore.exceptions import NotFoundError

        from sharpkit._fs import atomic_file

        try:
            result = obstore.get(self._store, key)
            dest.parent.mkdir(parents=True, exist_ok=True)
            with atomic_file(dest) as tmp, tmp.open("wb") as fh:
                for chunk in result.stream():
                    fh.write(bytes(chunk))
        except (FileNotFoundError, NotFoundError):
            return None
        except Exception as exc:
            raise self._error(exc, f"read {key!r} from") from None
        etag = result.meta.get("e_tag")
        return str(etag) if etag else ""

    def put_file(self, key: str, source: Path) -> None:
        """Upload the file ``source`` as ``key`` (one atomic put; multipart if big)."""
        import obstore

        # one open file: a file replaced meanwhile is uploaded as it was opened
        with source.open("rb") as fh:
            try:
                obstore.put(self._store, key, fh)
            except Exception as exc:
                raise self._error(exc, f"write {key!r} to") from None

    def head(self, key: str) -> tuple[int, str] | None:
        """``(size, etag)`` of ``key``, or ``None`` if there is no such object."""
        import obstore
        from obstore.exceptions import NotFoundError

        try:
            meta = obstore.head(self._store, key)
        except (FileNotFoundError, NotFoundError):
            return None
        except Exception as exc:
            raise self._error(exc, f"read {key!r} from") from None
        return int(meta["size"]), str(meta.get("e_tag") or "")


def _one_line(exc: BaseException) -> str:
    """What an obstore error says, in one short line, without its debug dump.

    Examples:
        >>> _one_line(OSError("Generic S3 error: Error performing GET http://h/k"
        ...     " in 2ms - Server returned non-2xx status code: 404 Not Found: "
        ...     "<Error><Code>NoSuchBucket</Code><Message>The specified bucket "
        ...     "does not exist</Message></Error>"))
        'The specified bucket does not exist (NoSuchBucket)'
    """
    text = str(exc)
    code = re.search(r"<Code>([^<]+)</Code>", text)
    said = re.search(r"<Message>([^<]+)</Message>", text)
    if code is not None:
        return f"{said.group(1) if said else 'error'} ({code.group(1)})"
    lines = text.strip().splitlines()
    first = lines[0] if lines else type(exc).__name__
    first = first.rsplit(" - ", 1)[-1]  # drop "Error performing GET <url> in ..."
    cause = re.findall(r'error: "([^"]+)"', text)
    if cause:
        first = f"{first}: {cause[-1]}"
    first = re.sub(r"\s+", " ", first)
    return first if len(first) <= 200 else first[:197] + "..."


def _timeout() -> float:
    raw = os.environ.get("SHARPKIT_STORE_TIMEOUT", "60")
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0:
        msg = f"SHARPKIT_STORE_TIMEOUT must be a number of seconds > 0, got {raw!r}"
        raise ConfigError(msg)
    return value


def _endpoint(url: str) -> str | None:
    """The S3 endpoint the environment names for ``url`` (``None``: AWS's own).

    obstore panics on a malformed one at the first request (a Rust traceback);
    it is checked here, where it can still be said in one line.

    Raises:
        ConfigError: ``AWS_ENDPOINT_URL`` (or ``AWS_ENDPOINT``) is not an
            ``http(s)://host[:port]`` URL.
    """
    from urllib.parse import urlsplit

    if not url.startswith(("s3://", "s3a://")):
        return None
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT"):
        value = os.environ.get(name)
        if value is None:
            continue
        try:
            parts = urlsplit(value)
            port_ok = parts.port is None or parts.port > 0
        except ValueError:  # a port that is not a number
            parts, port_ok = None, False
        if (
            parts is None
            or parts.scheme not in ("http", "https")
            or not parts.hostname
            or not port_ok
            or any(c.isspace() for c in value)
        ):
            msg = (
                f"{name}={value[:100]!r} is not an endpoint URL; set it to the S3 "
                "server's http(s)://host[:port] (e.g. http://localhost:9000) or "
                "unset it for AWS"
            )
            raise ConfigError(msg)
        return value
    return None


def _obstore_for(url: str) -> ObjectStore:
    """An obstore store for ``url``, configured from the environment."""
    try:
        from obstore.store import from_url
    except ImportError:
        msg = (
            f"{url!r} is an object store, which needs obstore; "
            "pip install 'sharpkit[remote]'"
        )
        raise ConfigError(msg) from None
    seconds = _timeout()
    options: ClientConfig = {
        "connect_timeout": timedelta(seconds=min(10.0, seconds)),
        "timeout": timedelta(seconds=seconds),
    }
    retry: RetryConfig = {
        "max_retries": 5,
        "retry_timeout": timedelta(seconds=seconds),
        "backoff": {
            "init_backoff": timedelta(milliseconds=100),
            "max_backoff": timedelta(seconds=5),
            "base": 2,
        },
    }
    endpoint = _endpoint(url)
    if endpoint is not None and endpoint.startswith("http://"):
        options["allow_http"] = True
    try:
        store: ObjectStore = from_url(url, client_options=options, retry_config=retry)
    except Exception as exc:
        msg = f"cannot open the object store {url!r}: {_one_line(exc)}"
        raise StoreError(msg) from None
    return store
