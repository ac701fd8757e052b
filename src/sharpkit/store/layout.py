"""The store on disk: opening and creating it, committing runs, listing them.

A run is written under ``staging/<id>.<host>.<pid>`` (see
:mod:`sharpkit.store.encoding` for what goes in it) and committed with one
``os.rename`` into ``runs/<id>``. Listing reads the ``zarr.json`` metadata
documents of the zarr v3 specification directly, one JSON file per node,
without opening groups through zarr-python; an in-memory index of metric and
probe keys makes repeated lookups cheap.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import socket
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypeVar

import numpy as np

from sharpkit._fs import atomic_write, is_temp
from sharpkit._meta import version as sharpkit_version
from sharpkit.errors import ConfigError, RunNotFoundError, SharpkitWarning, StoreError
from sharpkit.interfaces import JSON, MetricResult, ProbeResult
from sharpkit.store import table
from sharpkit.store.encoding import (
    Plan,
    Run,
    metric_from_group,
    open_group,
    opt_int,
    probe_from_group,
    run_from_group,
)

if TYPE_CHECKING:
    import zarr

__all__ = [
    "KINDS",
    "SCHEMA_VERSION",
    "STALE_SECONDS",
    "ResultStore",
    "RunInfo",
]

SCHEMA_VERSION: Final = 1
"""Layout version written to the root's ``schema_version`` attribute."""

KINDS: Final = ("measure", "train", "probe", "track")
"""The kinds of run a store holds."""

STALE_SECONDS: Final = 3600.0
"""Staging leftovers untouched this long are removed by :meth:`ResultStore.gc`."""

_R = TypeVar("_R", MetricResult, ProbeResult)


@dataclass(frozen=True, kw_only=True)
class RunInfo:
    """A complete run as listed by :meth:`ResultStore.runs` (metadata only, no arrays).

    Attributes:
        run_id: The run's id (``runs/<run_id>`` in the store); sorts by time.
        kind: ``"measure"``, ``"train"``, ``"probe"`` or ``"track"``.
        attrs: The run group's attributes (provenance; ``complete`` is true).
        metrics: ``{name: stored attributes}`` of each ``metrics/<name>`` group
            (``value``, ``stderr``, ``bound``, ``converged``, ``hvps``, ``seconds``,
            ``long_name``, ``units``, ``key``, ...), in the order they were written.
        probes: ``{name: stored attributes}`` of each ``probes/<name>`` group.
        training: The ``training`` group's attributes (``variables``, ``final``),
            or ``None`` if the run has no curves.
    """

    run_id: str
    kind: str
    attrs: Mapping[str, JSON]
    metrics: Mapping[str, Mapping[str, JSON]] = field(default_factory=dict)
    probes: Mapping[str, Mapping[str, JSON]] = field(default_factory=dict)
    training: Mapping[str, JSON] | None = None

    @property
    def time(self) -> str | None:
        """When the run was recorded (ISO 8601, UTC), if known."""
        value = self.attrs.get("time")
        return value if isinstance(value, str) else None


# --------------------------------------------------------------------------- helpers


def _read_json(path: Path) -> dict[str, Any] | None:
    """Read one ``zarr.json`` document; ``None`` if it does not exist."""
    try:
        with path.open("rb") as fh:
            doc = json.load(fh)
    except FileNotFoundError:
        return None
    if not isinstance(doc, dict):
        msg = f"{str(path)!r} is not a JSON object"
        raise ValueError(msg)
    return doc


def _group_doc(attrs: Mapping[str, JSON]) -> bytes:
    """The zarr v3 metadata document of a group with ``attrs``."""
    doc = {"zarr_format": 3, "node_type": "group", "attributes": dict(attrs)}
    return json.dumps(doc, indent=2, allow_nan=False).encode()


def _hostname() -> str:
    return re.sub(r"[^A-Za-z0-9-]+", "-", socket.gethostname()).strip("-") or "host"


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


def _new_run_id() -> str:
    now = datetime.now(UTC)
    return f"{now:%Y%m%dT%H%M%S}.{now:%f}Z-{secrets.token_hex(4)}"


def _check_kind(kind: str | None, error: type[Exception]) -> None:
    if kind is not None and kind not in KINDS:
        msg = f"run kind must be one of {', '.join(KINDS)}, got {kind!r}"
        raise error(msg)


# --------------------------------------------------------------------------- the store


class ResultStore:
    """A zarr v3 results store on the local filesystem.

    Opening a new (or empty) directory makes it a store when ``create`` is true;
    opening anything else that is not a sharpkit store raises
    :class:`~sharpkit.StoreError` and leaves it as it was.

    Examples:
        >>> import tempfile, numpy as np, sharpkit
        >>> from sharpkit.store import ResultStore
        >>> store = ResultStore(tempfile.mkdtemp() + "/results.zarr")
        >>> rid = store.write_run(
        ...     kind="measure",
        ...     attrs={"model": "mlp-bn", "lr": 0.1, "batch_size": 128},
        ...     metrics={"spectral": sharpkit.MetricResult(value=12.5, stderr=None)},
        ...     metric_labels={"spectral": {"units": "loss / parameter²"}},
        ... )
        >>> [(r["metric"], r["value"], r["unit"]) for r in store.records()]
        [('spectral', 12.5, 'loss / parameter²')]

    Args:
        path: The store directory (conventionally ending in ``.zarr``).
        create: Make a new store if ``path`` does not exist or is an empty
            directory; otherwise a missing store is an error.

    Raises:
        StoreError: ``path`` is not a sharpkit store, was written by a newer
            sharpkit, or does not exist and ``create`` is false.
    """

    def __init__(self, path: str | os.PathLike[str], *, create: bool = True) -> None:
        self.path = Path(path)
        self._host = _hostname()
        self._layout_ok = False
        self._infos: dict[str, RunInfo] = {}
        self._skipped: set[str] = set()
        self._metric_keys: dict[str, tuple[str, str]] = {}
        self._probe_keys: dict[str, tuple[str, str]] = {}
        self._open(create)

    # ------------------------------------------------------------------ opening

    def __repr__(self) -> str:
        return f"ResultStore({str(self.path)!r})"

    @property
    def _runs_dir(self) -> Path:
        return self.path / "runs"

    @property
    def _staging_dir(self) -> Path:
        return self.path / "staging"

    def _where(self) -> str:
        return repr(str(self.path))

    def _open(self, create: bool) -> None:
        p = self.path
        if p.is_file() or (p.exists() and not p.is_dir()):
            msg = (
                f"{self._where()} is a file, not a results store; pass a directory "
                "path such as 'results.zarr'"
            )
            raise StoreError(msg)
        if not p.exists():
            if not create:
                msg = (
                    f"no results store at {self._where()}; check the path, or write "
                    f"results there first (e.g. `sharpkit measure CKPT --store {p}`)"
                )
                raise StoreError(msg)
            try:
                p.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                msg = (
                    f"cannot create a results store at {self._where()}: {exc.strerror}"
                )
                raise StoreError(msg) from exc
        doc = self._read_root()
        if doc is None:
            doc = self._init_root(create)
        self._validate(doc)

    def _init_root(self, create: bool) -> dict[str, Any]:
        """Make an empty directory a store; return the root document that won."""
        entries = [e for e in os.listdir(self.path) if not is_temp(e)]
        if entries:
            v2 = any(e in (".zgroup", ".zarray", ".zattrs") for e in entries)
            what = "a zarr v2 store" if v2 else "a non-empty directory"
            msg = (
                f"{self._where()} is {what}, not a sharpkit results store; "
                "pass a new or empty directory, or an existing store"
            )
            raise StoreError(msg)
        if not create:
            msg = (
                f"no results store at {self._where()} (the directory is empty); "
                "write results there first"
            )
            raise StoreError(msg)
        attrs: dict[str, JSON] = {
            "schema_version": SCHEMA_VERSION,
            "sharpkit_version": sharpkit_version(),
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "description": (
                "sharpkit results store: one group per run under runs/; "
                "staging/ holds runs being written"
            ),
        }
        try:
            # First writer wins; a concurrent creator reads the winner's document.
            atomic_write(self.path / "zarr.json", _group_doc(attrs), exclusive=True)
        except OSError as exc:
            msg = f"cannot create a results store at {self._where()}: {exc.strerror}"
            raise StoreError(msg) from exc
        doc = self._read_root()
        if doc is None:  # pragma: no cover - deleted between write and read
            msg = f"{self._where()} vanished while it was being created"
            raise StoreError(msg)
        return doc

    def _read_root(self) -> dict[str, Any] | None:
        try:
            return _read_json(self.path / "zarr.json")
        except (ValueError, OSError) as exc:
            msg = (
                f"{self._where()} has an unreadable zarr.json ({exc}); it is not a "
                "sharpkit results store, pass another path"
            )
            raise StoreError(msg) from exc

    def _validate(self, doc: Mapping[str, Any]) -> None:
        if doc.get("zarr_format") != 3 or doc.get("node_type") != "group":
            msg = (
                f"{self._where()} is a zarr {doc.get('node_type', 'node')} "
                f"(format {doc.get('zarr_format')}), not a sharpkit results store; "
                "pass a new path such as 'results.zarr'"
            )
            raise StoreError(msg)
        attrs = doc.get("attributes") or {}
        version = attrs.get("schema_version") if isinstance(attrs, Mapping) else None
        if (
            not isinstance(version, int)
            or isinstance(version, bool)
            or "sharpkit_version" not in attrs
        ):
            msg = (
                f"{self._where()} is a zarr store but not a sharpkit results store "
                "(no schema_version attribute); pass a new path such as 'results.zarr'"
            )
            raise StoreError(msg)
        if version > SCHEMA_VERSION:
            msg = (
                f"{self._where()} was written by a newer sharpkit "
                f"({attrs.get('sharpkit_version')}, store schema {version}); this "
                f"sharpkit {sharpkit_version()} reads schema {SCHEMA_VERSION} or "
                "older; upgrade with `pip install -U sharpkit`"
            )
            raise StoreError(msg)
        self.schema_version = version

    def _ensure_layout(self) -> None:
        """Make sure ``runs/`` and ``staging/`` exist as zarr groups (idempotent)."""
        if self._layout_ok:
            return
        for sub, text in (
            ("runs", "one group per complete run"),
            ("staging", "runs being written; readers ignore it"),
        ):
            d = self.path / sub
            if not (d / "zarr.json").exists():
                d.mkdir(exist_ok=True)
                atomic_write(d / "zarr.json", _group_doc({"description": text}))
        self._layout_ok = True

    # ------------------------------------------------------------------ writing

    def write_run(
        self,
        *,
        kind: str,
        attrs: Mapping[str, JSON],
        metrics: Mapping[str, MetricResult] | None = None,
        probes: Mapping[str, ProbeResult] | None = None,
        training: Mapping[str, np.ndarray] | None = None,
        metric_labels: Mapping[str, Mapping[str, str]] | None = None,
    ) -> str:
        """Write one run; it becomes visible to readers only once complete.

        Args:
            kind: ``"measure"``, ``"train"``, ``"probe"`` or ``"track"``.
            attrs: Provenance (checkpoint sha256 and path, model, dataset, ``lr``,
                ``batch_size``, seeds, versions, ``time``, ``command``, ...),
                JSON-compatible. Non-finite floats are stored as ``null``.
            metrics: ``{name: MetricResult}``; each becomes ``metrics/<name>``.
            probes: ``{name: ProbeResult}``; each becomes ``probes/<name>``.
            training: Curves, all of the same length: per epoch for ``train``
                runs (``epoch`` is the coordinate), per measurement for ``track``
                runs (``step`` is).
            metric_labels: ``{name: {"long_name": ..., "units": ...}}`` for the
                metrics: what the value is and its unit, stored as the metric
                group's ``long_name`` / ``units`` attributes (empty ones are
                left out; a metric's own attribute of that name wins). Names
                that are not in ``metrics`` are ignored.

        Returns:
            The new run's id.

        Raises:
            StoreError: A name, label or array cannot be stored, or the
                filesystem refused the write (nothing is left visible then).
        """
        _check_kind(kind, StoreError)
        plan = Plan.build(
            kind,
            attrs,
            metrics or {},
            probes or {},
            training or {},
            metric_labels or {},
        )
        run_id = _new_run_id()
        plan.run_attrs["run_id"] = run_id
        self._commit(run_id, plan)
        if self._infos or self._metric_keys or self._probe_keys:
            info = self._read_info(run_id)
            if info is not None:
                self._infos[run_id] = info
                self._infos = dict(sorted(self._infos.items()))
                self._index(info)
        return run_id

    def _commit(self, run_id: str, plan: Plan) -> None:
        """Write ``plan`` to its own staging entry, then rename it into ``runs/``."""
        try:
            self._ensure_layout()
        except OSError as exc:
            msg = f"cannot write to the results store {self._where()}: {exc.strerror}"
            raise StoreError(msg) from exc
        self.gc(max_age=None)  # cheap: only leftovers of dead writers on this host
        entry = self._staging_dir / f"{run_id}.{self._host}.{os.getpid()}"
        try:
            plan.write(entry)
            os.rename(entry, self._runs_dir / run_id)
        except BaseException as exc:
            shutil.rmtree(entry, ignore_errors=True)
            if isinstance(exc, OSError):
                detail = exc.strerror or str(exc)
                msg = (
                    f"cannot write a run to the results store {self._where()}: {detail}"
                )
                raise StoreError(msg) from exc
            raise

    def gc(self, max_age: float | None = STALE_SECONDS) -> list[str]:
        """Remove staging leftovers of writers that died mid-write.

        A leftover is removed when its writer ran on this host and is no longer
        alive, or (any host) when nothing in it changed for ``max_age`` seconds.
        Runs being written by a live process on this host are never touched.

        Args:
            max_age: Age in seconds beyond which any leftover is stale (``None``:
                only remove those whose writer is known to be dead).

        Returns:
            The names of the removed staging entries.
        """
        try:
            entries = os.listdir(self._staging_dir)
        except (FileNotFoundError, NotADirectoryError):
            return []
        removed: list[str] = []
        now = time.time()
        for name in entries:
            if name == "zarr.json" or not self._stale(name, now, max_age):
                continue
            path = self._staging_dir / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
            removed.append(name)
        return removed

    def _stale(self, name: str, now: float, max_age: float | None) -> bool:
        """Whether the staging entry ``name`` is a leftover that :meth:`gc` removes."""
        parts = name.rsplit(".", 2)
        host = parts[1] if len(parts) == 3 else None
        pid = opt_int(parts[2]) if len(parts) == 3 else None
        if host == self._host and pid is not None:
            return pid != os.getpid() and not _pid_alive(pid)
        if max_age is None:
            return False
        try:
            return now - _newest_mtime(self._staging_dir / name) > max_age
        except FileNotFoundError:
            return False

    # ------------------------------------------------------------------ listing

    def _list_run_ids(self) -> list[str]:
        try:
            names = os.listdir(self._runs_dir)
        except (FileNotFoundError, NotADirectoryError):
            return []
        return sorted(n for n in names if not n.startswith(".") and n != "zarr.json")

    def _read_info(self, run_id: str) -> RunInfo | None:
        """Read a run's metadata from its ``zarr.json`` documents (no arrays)."""
        base = self._runs_dir / run_id
        try:
            doc = _read_json(base / "zarr.json")
            if doc is None:
                return None
            attrs = doc.get("attributes") or {}
            if doc.get("node_type") != "group" or attrs.get("complete") is not True:
                raise ValueError("not a complete run group")
            metrics = _read_members(base / "metrics")
            probes = _read_members(base / "probes")
            tdoc = _read_json(base / "training" / "zarr.json")
        except FileNotFoundError:
            return None
        except (OSError, ValueError, AttributeError) as exc:
            if run_id not in self._skipped:
                self._skipped.add(run_id)
                warnings.warn(
                    f"run {run_id!r} in {self._where()} is unreadable ({exc}); "
                    f"skipping it (delete runs/{run_id} to silence this)",
                    SharpkitWarning,
                    stacklevel=4,
                )
            return None
        return RunInfo(
            run_id=run_id,
            kind=str(attrs.get("kind", "")),
            attrs=attrs,
            metrics=metrics,
            probes=probes,
            training=(tdoc.get("attributes") or {}) if tdoc is not None else None,
        )

    def _index(self, info: RunInfo) -> None:
        for name, stored in info.metrics.items():
            key = stored.get("key")
            if isinstance(key, str):
                self._metric_keys[key] = (info.run_id, name)
        for name, stored in info.probes.items():
            key = stored.get("key")
            if isinstance(key, str):
                self._probe_keys[key] = (info.run_id, name)

    def _refresh(self) -> None:
        """Bring the in-memory index up to date with ``runs/`` (reads new runs only)."""
        ids = self._list_run_ids()
        present = set(ids)
        gone = [rid for rid in self._infos if rid not in present]
        new = [
            rid for rid in ids if rid not in self._infos and rid not in self._skipped
        ]
        for rid in gone:
            del self._infos[rid]
        added = False
        for rid in new:
            info = self._read_info(rid)
            if info is not None:
                self._infos[rid] = info
                added = True
        if gone or added:
            self._infos = dict(sorted(self._infos.items()))
            self._metric_keys.clear()
            self._probe_keys.clear()
            for info in self._infos.values():  # in id (= time) order: newest wins
                self._index(info)

    def runs(self, *, kind: str | None = None) -> list[RunInfo]:
        """List complete runs, oldest first.

        Args:
            kind: Only runs of this kind (``"measure"``, ``"train"``, ``"probe"``).
        """
        _check_kind(kind, ConfigError)
        self._refresh()
        return [i for i in self._infos.values() if kind is None or i.kind == kind]

    def __contains__(self, run_id: object) -> bool:
        return isinstance(run_id, str) and self._run_dir(run_id) is not None

    def _run_dir(self, run_id: str) -> Path | None:
        if not run_id or "/" in run_id or "\\" in run_id or run_id.startswith("."):
            return None
        d = self._runs_dir / run_id
        return d if (d / "zarr.json").is_file() else None

    # ------------------------------------------------------------------ reading

    def run(self, run_id: str) -> Run:
        """Read one complete run with all its arrays (through zarr).

        Raises:
            RunNotFoundError: No complete run with this id is in the store.
        """
        d = self._run_dir(run_id)
        if d is None:
            msg = (
                f"no run {run_id!r} in {self._where()}; `sharpkit results "
                f"{self.path}` lists the runs"
            )
            raise RunNotFoundError(msg)
        group = open_group(d)
        if group.attrs.get("complete") is not True:
            msg = f"run {run_id!r} in {self._where()} is not complete"
            raise RunNotFoundError(msg)
        return run_from_group(run_id, group)

    def find_metric(self, key: str) -> MetricResult | None:
        """Return a stored metric result whose ``attrs["key"]`` is ``key``.

        Used to skip measuring the same checkpoint with the same settings twice.
        The newest match wins. The index is built once per store object and
        refreshed from disk when a lookup misses.
        """
        return self._find(self._metric_keys, "metrics", key, metric_from_group)

    def find_probe(self, key: str) -> ProbeResult | None:
        """Return a stored probe result whose ``attrs["key"]`` is ``key`` (newest)."""
        return self._find(self._probe_keys, "probes", key, probe_from_group)

    def _find(
        self,
        index: dict[str, tuple[str, str]],
        sub: str,
        key: str,
        read: Callable[[str, zarr.Group], _R],
    ) -> _R | None:
        """Look ``key`` up in ``index`` and read the ``sub/<name>`` group it names."""
        hit = index.get(key)
        if hit is None or not (self._runs_dir / hit[0]).is_dir():
            self._refresh()
            hit = index.get(key)
        if hit is None:
            return None
        run_id, name = hit
        try:
            return read(name, open_group(self._runs_dir / run_id / sub / name))
        except (FileNotFoundError, KeyError):  # deleted since it was indexed
            self._refresh()
            return None

    def records(
        self,
        filter: Mapping[str, Any] | Sequence[str] | None = None,
        *,
        kind: str | None = None,
    ) -> list[dict[str, Any]]:
        """The tidy table: one row per run × metric (see :data:`COLUMNS`).

        * measure runs: one row per metric (``value``, ``stderr``, ``bound``,
          ``unit``, ...);
        * train runs: one row per final-epoch scalar (``train_accuracy``,
          ``test_loss``, tracked metrics, ...), ``value`` holding it;
        * probe runs: one row per summary readout, ``metric`` =
          ``<probe>.<readout>``; the second model's η, S, ... go to the ``*_b``
          columns;
        * track runs: one row per tracked metric, its last measurement (``step``
          says which).

        Every row carries η (``lr``), S (``batch_size``), η/S
        (``lr_over_batch``) and the final train/test loss and accuracy of the
        checkpoint when known, so Fig. 1 of the paper is a scatter of ``value``
        (or ``test_accuracy``) against ``lr_over_batch``.

        Args:
            filter: ``{column: value}`` (equality) or strings such as
                ``"metric=spectral"``, ``"batch_size>=128"``, ``"model!=mlp-bn"``.
                Numbers compare numerically (equality to a relative 1e-9),
                ``true``/``false`` match yes/no columns, ``none`` matches missing
                values, and ``*``/``?`` in a value are wildcards.
            kind: Only rows of this kind of run.

        Raises:
            ConfigError: A filter names an unknown column or compares a number
                with text.
        """
        filters = table.parse_filters(filter)
        return [
            row
            for info in self.runs(kind=kind)
            for row in table.run_rows(info)
            if table.matches(row, filters)
        ]


def _read_members(sub: Path) -> dict[str, Mapping[str, JSON]]:
    """``{name: attributes}`` of the groups in ``metrics/`` or ``probes/``, in order."""
    group = _read_json(sub / "zarr.json")
    if group is None:
        return {}
    order = (group.get("attributes") or {}).get("order")
    names = (
        [str(n) for n in order]
        if isinstance(order, list)
        else sorted(n for n in os.listdir(sub) if n != "zarr.json")
    )
    found: dict[str, Mapping[str, JSON]] = {}
    for n in names:
        member = _read_json(sub / n / "zarr.json")
        if member is not None:
            found[n] = member.get("attributes") or {}
    return found
