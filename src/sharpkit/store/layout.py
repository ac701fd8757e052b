"""The store's layout: opening it, committing runs, listing and reading them.

A run is encoded in memory (:mod:`sharpkit.store.encoding`), sealed with a
manifest (:mod:`sharpkit.store.integrity`) and committed through a backend
(:mod:`sharpkit.store.objects`): on a local file system it is written under
``staging/<id>.<host>.<pid>`` and renamed into ``runs/<id>`` in one step; on an
object store its objects are put under ``runs/<id>/`` and its group document,
which holds the manifest, is put last. Either way a run exists for readers only
once complete.

Listing reads the ``zarr.json`` metadata documents of the zarr v3 specification
directly, without opening groups through zarr-python; an in-memory index of
metric and probe keys makes repeated lookups cheap. Every document and chunk
read is checked against the run's manifest (or, for runs written before
manifests, for shape and type): a damaged run is skipped with one warning and
never reused.
"""

from __future__ import annotations

import functools
import json
import os
import re
import secrets
import warnings
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypeVar

import numpy as np

from sharpkit._meta import version as sharpkit_version
from sharpkit.errors import ConfigError, RunNotFoundError, SharpkitWarning, StoreError
from sharpkit.interfaces import JSON, MetricResult, ProbeResult
from sharpkit.store import table
from sharpkit.store.encoding import (
    Plan,
    Run,
    metric_from_group,
    probe_from_group,
    run_from_group,
)
from sharpkit.store.integrity import (
    Damage,
    Manifest,
    parse_run_doc,
    seal,
)
from sharpkit.store.objects import Backend, LocalBackend, hostname, open_backend
from sharpkit.store.reader import RunInfo, load_info, read_group

if TYPE_CHECKING:
    import zarr

__all__ = [
    "KINDS",
    "SCHEMA_VERSION",
    "SEALED",
    "STALE_SECONDS",
    "ResultStore",
    "RunInfo",
]

SCHEMA_VERSION: Final = 1
"""Layout version written to the root's ``schema_version`` attribute."""
SEALED: Final = "manifests"
"""Root attribute: every run of the store carries a manifest (stores made since
manifests exist; a run without one lost it, it is not a run written before)."""

KINDS: Final = ("measure", "train", "probe", "track", "sweep")
"""The kinds of run a store holds (``sweep``: a point's predicted and actual time)."""

STALE_SECONDS: Final = 3600.0
"""Age (s) after which :meth:`ResultStore.gc` removes killed writers' leftovers."""

_R = TypeVar("_R", MetricResult, ProbeResult)
_T = TypeVar("_T")
_MEMBER_RE: Final = re.compile(r"^(metrics|probes)/([^/]+)/zarr\.json$")
_NAME_RE: Final = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")
_GROUPS: Final = ("metrics/zarr.json", "probes/zarr.json", "training/zarr.json")


# --------------------------------------------------------------------------- helpers


def group_doc(attrs: Mapping[str, JSON]) -> bytes:
    """The zarr v3 metadata document of a group with ``attrs``."""
    doc = {"zarr_format": 3, "node_type": "group", "attributes": dict(attrs)}
    return json.dumps(doc, indent=2, allow_nan=False).encode()


def root_attrs() -> dict[str, JSON]:
    """The attributes of a new store's root group."""
    return {
        "schema_version": SCHEMA_VERSION,
        "sharpkit_version": sharpkit_version(),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        SEALED: True,
        "description": (
            "sharpkit results store: one group per run under runs/; "
            "staging/ holds runs being written"
        ),
    }


LAYOUT_GROUPS: Final[Mapping[str, str]] = {
    "runs": "one group per complete run",
    "staging": "runs being written; readers ignore it",
}
"""The groups under the root, with their descriptions."""


def _new_run_id() -> str:
    now = datetime.now(UTC)
    return f"{now:%Y%m%dT%H%M%S}.{now:%f}Z-{secrets.token_hex(4)}"


def _check_kind(kind: str | None, error: type[Exception]) -> None:
    if kind is not None and kind not in KINDS:
        msg = f"run kind must be one of {', '.join(KINDS)}, got {kind!r}"
        raise error(msg)


def valid_run_id(run_id: str) -> bool:
    """Whether ``run_id`` can name a run (no separators, not hidden)."""
    return bool(run_id) and not (
        "/" in run_id or "\\" in run_id or run_id.startswith(".")
    )


# --------------------------------------------------------------------------- the store


class ResultStore:
    """A zarr v3 results store in a local directory or on an object store.

    Opening a new (or empty) location makes it a store when ``create`` is true;
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
        path: The store: a directory (conventionally ending in ``.zarr``) or an
            object-store URL such as ``s3://bucket/prefix/results.zarr``
            (needs ``pip install 'sharpkit[remote]'``; ``docs/scaling.md``).
        create: Make a new store if ``path`` does not exist or is empty;
            otherwise a missing store is an error.

    Raises:
        StoreError: ``path`` is not a sharpkit store, was written by a newer
            sharpkit, lost its root metadata (``sharpkit results PATH
            --repair`` rebuilds it), or does not exist and ``create`` is false.
    """

    def __init__(self, path: str | os.PathLike[str], *, create: bool = True) -> None:
        self._setup(path)
        self._open(create)

    def _setup(self, path: str | os.PathLike[str]) -> None:
        self._backend: Backend = open_backend(path)
        self.location: str = self._backend.where
        self._host = hostname()
        self._layout_ok = False
        self._infos: dict[str, RunInfo] = {}
        self._manifests: dict[str, Manifest | None] = {}
        self._skipped: set[str] = set()
        self._metric_keys: dict[str, tuple[str, str]] = {}
        self._probe_keys: dict[str, tuple[str, str]] = {}
        self.schema_version = SCHEMA_VERSION
        self.sealed = False

    @classmethod
    def _unchecked(cls, path: str | os.PathLike[str]) -> ResultStore:
        """A store object whose root is not read (for ``check`` and ``repair``)."""
        store = cls.__new__(cls)
        store._setup(path)
        return store

    # ------------------------------------------------------------------ opening

    def __repr__(self) -> str:
        return f"ResultStore({self.location!r})"

    @property
    def path(self) -> Path:
        """The store's directory (local stores only; see :attr:`location`).

        Raises:
            StoreError: The store is on an object store.
        """
        if isinstance(self._backend, LocalBackend):
            return self._backend.root
        msg = f"{self.location!r} is on an object store and has no local path"
        raise StoreError(msg)

    @property
    def is_local(self) -> bool:
        """Whether the store is a local directory (else an object store)."""
        return isinstance(self._backend, LocalBackend)

    def _where(self) -> str:
        return repr(self.location)

    def _open(self, create: bool) -> None:
        if isinstance(self._backend, LocalBackend):
            self._prepare_local(self._backend.root, create)
        doc = self._read_root()
        if doc is None:
            doc = self._init_root(create)
        self._validate(doc)

    def _prepare_local(self, p: Path, create: bool) -> None:
        if p.is_file() or (p.exists() and not p.is_dir()):
            msg = (
                f"{self._where()} is a file, not a results store; pass a directory "
                "path such as 'results.zarr'"
            )
            raise StoreError(msg)
        if p.exists():
            return
        if not create:
            msg = (
                f"no results store at {self._where()}; check the path, or write "
                f"results there first (e.g. `sharpkit measure CKPT --store {p}`)"
            )
            raise StoreError(msg)
        try:
            p.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            msg = f"cannot create a results store at {self._where()}: {exc.strerror}"
            raise StoreError(msg) from exc

    def _lost_root(self, what: str) -> StoreError:
        msg = (
            f"{self._where()} holds runs/ but its root zarr.json {what}; "
            f"`sharpkit results {self.location} --repair` rebuilds it from the "
            "intact runs"
        )
        return StoreError(msg)

    def _init_root(self, create: bool) -> dict[str, Any]:
        """Make an empty location a store; return the root document that won."""
        if not self._backend.is_empty():
            # A concurrent creator may have written its root since we looked.
            doc = self._read_root()
            if doc is not None:
                return doc
            if "runs" in self._backend.children(""):
                raise self._lost_root("is missing")
            local = self.is_local
            names = os.listdir(self.path) if local else []
            v2 = any(e in (".zgroup", ".zarray", ".zattrs") for e in names)
            what = "a zarr v2 store" if v2 else "a non-empty location"
            if local and not v2:
                what = "a non-empty directory"
            msg = (
                f"{self._where()} is {what}, not a sharpkit results store; "
                "pass a new or empty location, or an existing store"
            )
            raise StoreError(msg)
        if not create:
            msg = (
                f"no results store at {self._where()} (it is empty); "
                "write results there first"
            )
            raise StoreError(msg)
        try:
            # First writer wins; a concurrent creator reads the winner's document.
            self._backend.put_new("zarr.json", group_doc(root_attrs()))
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
            raw = self._backend.get("zarr.json")
            if raw is None:
                return None
            doc = json.loads(raw)
            if not isinstance(doc, dict):
                msg = "not a JSON object"
                raise ValueError(msg)
        except (ValueError, OSError) as exc:
            if "runs" in self._backend.children(""):
                raise self._lost_root("is unreadable") from exc
            msg = (
                f"{self._where()} has an unreadable zarr.json ({exc}); it is not a "
                "sharpkit results store, pass another path"
            )
            raise StoreError(msg) from exc
        return doc

    def _validate(self, doc: Mapping[str, Any]) -> None:
        if doc.get("zarr_format") != 3 or doc.get("node_type") != "group":
            if "runs" in self._backend.children(""):
                raise self._lost_root(
                    f"says zarr format {doc.get('zarr_format')!r} "
                    f"{doc.get('node_type')!r}, not a format-3 group"
                )
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
            if "runs" in self._backend.children(""):
                raise self._lost_root("is not a sharpkit store's")
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
        self.sealed = attrs.get(SEALED) is True

    def _ensure_layout(self) -> None:
        """Make sure ``runs/`` (and locally ``staging/``) exist as zarr groups."""
        if self._layout_ok:
            return
        subs = LAYOUT_GROUPS if self.is_local else {"runs": LAYOUT_GROUPS["runs"]}
        for sub, text in subs.items():
            if self._backend.get(f"{sub}/zarr.json") is None:
                self._backend.put(f"{sub}/zarr.json", group_doc({"description": text}))
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
            kind: ``"measure"``, ``"train"``, ``"probe"``, ``"track"`` or
                ``"sweep"``.
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
                storage refused the write (nothing is left visible then).
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
        objects = plan.encode()
        doc = seal(objects)
        self._commit(run_id, objects, doc)
        if self._infos or self._metric_keys or self._probe_keys:
            info = self._read_info(run_id)
            if info is not None:
                self._infos[run_id] = info
                self._infos = dict(sorted(self._infos.items()))
                self._index(info)
        return run_id

    def _commit(self, run_id: str, objects: Mapping[str, bytes], doc: bytes) -> None:
        """Commit a sealed run through the backend (rename, or manifest last)."""
        try:
            self._ensure_layout()
            self.gc(max_age=None)  # cheap: only leftovers of dead writers here
            self._backend.commit(run_id, objects, doc)
        except OSError as exc:
            detail = exc.strerror or str(exc)
            msg = f"cannot write a run to the results store {self._where()}: {detail}"
            raise StoreError(msg) from exc

    def gc(self, max_age: float | None = STALE_SECONDS) -> list[str]:
        """Remove the leftovers of writers that were killed mid-write.

        Locally, a staging entry is removed when its writer ran on this host and
        is no longer alive, or (any host) when nothing in it changed for
        ``max_age`` seconds; runs being written by a live process on this host
        are never touched. On an object store, where no writer's liveness can be
        seen, a run prefix without its manifest whose newest object is older
        than ``max_age`` is removed (a writer puts a run's objects within
        seconds, so an hour-old one was killed).

        Args:
            max_age: Age in seconds beyond which any leftover is stale (``None``:
                only remove those whose writer is known to be dead).

        Returns:
            The names of the removed staging entries (local) or run prefixes.
        """
        try:
            return self._backend.collect(max_age, self._host)
        except OSError as exc:
            msg = f"cannot clean up {self._where()}: {exc.strerror or exc}"
            raise StoreError(msg) from exc

    # ------------------------------------------------------------------ listing

    def _list_run_ids(self) -> list[str]:
        return [n for n in self._backend.children("runs") if valid_run_id(n)]

    def _damaged(self, run_id: str, reason: str) -> None:
        """Warn, once per store object, that ``run_id`` is damaged and skipped."""
        if run_id in self._skipped:
            return
        self._skipped.add(run_id)
        warnings.warn(
            f"run {run_id!r} in {self._where()} is damaged ({reason}); skipped "
            f"and never reused; `sharpkit results {self.location} --repair` sets "
            "it aside",
            SharpkitWarning,
            stacklevel=5,
        )

    def _read_info(self, run_id: str) -> RunInfo | None:
        """A run's metadata, or ``None`` if it is not committed or is damaged."""
        try:
            found = load_info(
                self._backend, run_id, local=self.is_local, sealed=self.sealed
            )
        except Damage as exc:
            self._damaged(run_id, str(exc))
            return None
        if found is None:
            return None
        info, self._manifests[run_id] = found
        return info

    def _read_infos(self, run_ids: Sequence[str]) -> list[RunInfo | None]:
        """:meth:`_read_info` of several runs; on an object store, 16 at a time."""
        if self.is_local or len(run_ids) < 2:
            return [self._read_info(rid) for rid in run_ids]
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(16) as pool:
            return list(pool.map(self._read_info, run_ids))

    def _index(self, info: RunInfo) -> None:
        for name, stored in info.metrics.items():
            key = stored.get("key")
            if isinstance(key, str):
                self._metric_keys[key] = (info.run_id, name)
        for name, stored in info.probes.items():
            key = stored.get("key")
            if isinstance(key, str):
                self._probe_keys[key] = (info.run_id, name)

    def _reindex(self) -> None:
        self._infos = dict(sorted(self._infos.items()))
        self._metric_keys.clear()
        self._probe_keys.clear()
        for info in self._infos.values():  # in id (= time) order: newest wins
            self._index(info)

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
        for info in self._read_infos(new):
            if info is not None:
                self._infos[info.run_id] = info
                added = True
        if gone or added:
            self._reindex()

    def _forget(self, run_id: str) -> None:
        """Drop a run found damaged from the listing and the key index."""
        if self._infos.pop(run_id, None) is not None:
            self._reindex()

    def runs(self, *, kind: str | None = None) -> list[RunInfo]:
        """List complete runs, oldest first (damaged ones skipped, with a warning).

        Args:
            kind: Only runs of this kind (``"measure"``, ``"train"``, ``"probe"``).
        """
        _check_kind(kind, ConfigError)
        self._refresh()
        return [i for i in self._infos.values() if kind is None or i.kind == kind]

    def __contains__(self, run_id: object) -> bool:
        return (
            isinstance(run_id, str)
            and valid_run_id(run_id)
            and self._backend.get(f"runs/{run_id}/zarr.json") is not None
        )

    # ------------------------------------------------------------------ reading

    def run(self, run_id: str) -> Run:
        """Read one complete run with all its arrays (through zarr).

        Raises:
            RunNotFoundError: No complete run with this id is in the store.
            StoreError: The run is damaged (``sharpkit results --check``).
        """
        raw = (
            self._backend.get(f"runs/{run_id}/zarr.json")
            if valid_run_id(run_id)
            else None
        )
        if raw is None:
            msg = (
                f"no run {run_id!r} in {self._where()}; `sharpkit results "
                f"{self.location}` lists the runs"
            )
            raise RunNotFoundError(msg)
        try:
            attrs, manifest = parse_run_doc(raw, sealed=self.sealed)
            run = read_group(
                self._backend,
                run_id,
                "",
                lambda g: run_from_group(run_id, g),
                manifest=manifest,
                doc=raw,
            )
        except Damage as exc:
            msg = (
                f"run {run_id!r} in {self._where()} is damaged ({exc}); "
                f"`sharpkit results {self.location} --repair` sets it aside"
            )
            raise StoreError(msg) from None
        return Run(
            run_id=run.run_id,
            kind=run.kind,
            attrs=attrs,
            metrics=run.metrics,
            probes=run.probes,
            training=run.training,
            metric_labels=run.metric_labels,
        )

    def find_metric(self, key: str) -> MetricResult | None:
        """Return a stored metric result whose ``attrs["key"]`` is ``key``.

        Used to skip measuring the same checkpoint with the same settings twice.
        The newest intact match wins; a damaged one is skipped with a warning.
        The index is built once per store object and refreshed from storage
        when a lookup misses.
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
        if hit is None or hit[0] not in self._infos:
            self._refresh()
        while (hit := index.get(key)) is not None:
            run_id, name = hit
            try:
                return read_group(
                    self._backend,
                    run_id,
                    f"{sub}/{name}/",
                    functools.partial(read, name),
                    manifest=self._manifests.get(run_id),
                )
            except Damage as exc:
                # a run deleted since it was indexed is not damage: just forget it
                if self._backend.get(f"runs/{run_id}/zarr.json") is not None:
                    self._damaged(run_id, str(exc))
                self._forget(run_id)
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


# --------------------------------------------------------------------------- helpers
