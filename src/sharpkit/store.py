"""The results store: every result sharpkit computes, in one plain zarr v3 hierarchy.

Layout (``docs/store.md`` has the full reference)::

    results.zarr/                  root group; attrs schema_version, sharpkit_version
      runs/                        group; one child group per complete run
        20261128T163000.123456Z-1a2b3c4d/   attrs: provenance, kind, complete=true
          metrics/<name>/          attrs value, stderr, bound, converged, hvps, ...;
                                   arrays such as ritz_values
          probes/<name>/           coordinate arrays (alpha, ...) and value arrays
                                   on their grid; summary in attrs
          training/                per-epoch curves, dimension "epoch"
      staging/                     group; runs being written (readers ignore it)

Every array carries zarr v3 ``dimension_names``, so ``xarray.open_zarr(path,
group="runs/<id>/training")`` gives labelled dimensions, and ``long_name`` /
``units`` attributes where they are known. Nothing here needs sharpkit to be read.

Guarantees:

* **A run becomes visible only when complete.** It is written under
  ``staging/<id>.<host>.<pid>`` and then moved to ``runs/<id>`` with one
  ``os.rename`` of the directory, which is atomic on a local POSIX filesystem. A
  process killed mid-write leaves at most a staging leftover, which
  :meth:`ResultStore.gc` removes (automatically for dead writers on this host).
  Runs are never modified after they become visible, so no earlier run is lost.
* **Concurrent writers lose nothing**: each writes its own staging directory and
  run ids are unique (time to the microsecond plus 32 random bits).
* **Opening never damages what is there**: a path that is not a sharpkit store (a
  file, a non-empty directory, a zarr v2 store, another zarr v3 hierarchy) gives a
  :class:`~sharpkit.StoreError` and is left untouched.

The listing and the tidy table read the ``zarr.json`` metadata documents of the
zarr v3 specification directly (one JSON file per node), which is several times
faster than opening each group through zarr-python (``bench/bench_store.py``: 6x
for 500 runs); run arrays are read through zarr.
"""

from __future__ import annotations

import contextlib
import csv
import fnmatch
import io
import json
import math
import os
import re
import secrets
import shutil
import socket
import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import numpy as np

from sharpkit._fs import atomic_write, is_temp
from sharpkit._meta import version as sharpkit_version
from sharpkit.errors import ConfigError, RunNotFoundError, SharpkitWarning, StoreError
from sharpkit.interfaces import JSON, MetricResult, ProbeResult

if TYPE_CHECKING:
    import pandas as pd
    import zarr

__all__ = [
    "COLUMNS",
    "KINDS",
    "SCHEMA_VERSION",
    "ResultStore",
    "Run",
    "RunInfo",
    "open_results",
]

SCHEMA_VERSION: Final = 1
"""Layout version written to the root's ``schema_version`` attribute."""

KINDS: Final = ("measure", "train", "probe")
"""The kinds of run a store holds."""

STALE_SECONDS: Final = 3600.0
"""Staging leftovers untouched this long are removed by :meth:`ResultStore.gc`."""

COLUMNS: Final = (
    "run_id",
    "kind",
    "time",
    "model",
    "dataset",
    "lr",
    "batch_size",
    "lr_over_batch",
    "seed",
    "train_seed",
    "epoch",
    "metric",
    "value",
    "stderr",
    "bound",
    "converged",
    "hvps",
    "seconds",
    "train_loss",
    "train_accuracy",
    "test_loss",
    "test_accuracy",
    "checkpoint",
    "checkpoint_sha256",
    "lr_b",
    "batch_size_b",
    "lr_over_batch_b",
    "train_seed_b",
    "checkpoint_b",
    "checkpoint_sha256_b",
)
"""Columns of the tidy table (:meth:`ResultStore.records`, :func:`open_results`)."""

_FINAL_COLUMNS: Final = ("train_loss", "train_accuracy", "test_loss", "test_accuracy")
_NOT_TRAIN_ROWS: Final = frozenset({"epoch", "lr"})

# Keys the store owns in a metric / probe group; a result attribute with one of
# these names is stored as "attr_<name>" (see ``result_attrs``).
_METRIC_RESERVED: Final = frozenset(
    {"metric", "value", "stderr", "bound", "converged", "hvps", "seconds"}
    | {"result_attrs", "arrays"}
)
_PROBE_RESERVED: Final = frozenset(
    {"probe", "seconds", "summary", "coords", "variables", "result_attrs"}
)
_RUN_RESERVED: Final = frozenset({"kind", "run_id", "complete"})

# long_name / units for quantities whose meaning is fixed across sharpkit.
_ARRAY_LABELS: Final[Mapping[str, Mapping[str, str]]] = {
    "epoch": {"long_name": "epoch"},
    "lr": {"long_name": "learning rate η"},
    "train_loss": {"long_name": "training loss"},
    "test_loss": {"long_name": "test loss"},
    "train_accuracy": {"long_name": "training accuracy"},
    "test_accuracy": {"long_name": "test accuracy"},
    "loss": {"long_name": "loss"},
    "accuracy": {"long_name": "accuracy"},
    "alpha": {"long_name": "interpolation coefficient α", "units": "1"},
    "ritz_values": {
        "long_name": "Ritz values (Lanczos estimates of Hessian eigenvalues)",
        "units": "loss / parameter²",
    },
    "eigenvalues": {"long_name": "Hessian eigenvalues", "units": "loss / parameter²"},
    "seconds": {"long_name": "wall time", "units": "s"},
}
_METRIC_LABELS: Final[Mapping[str, Mapping[str, str]]] = {
    "spectral": {
        "long_name": "largest Hessian eigenvalue λ_max",
        "unit": "loss / parameter²",
    },
    "frobenius": {
        "long_name": "Hessian Frobenius norm ‖H‖_F",
        "unit": "loss / parameter²",
    },
    "trace": {"long_name": "Hessian trace tr(H)", "unit": "loss / parameter²"},
}

_NAME_RE: Final = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")
_FILTER_RE: Final = re.compile(
    r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(!=|>=|<=|==|=|>|<)\s*(.*?)\s*$"
)


# --------------------------------------------------------------------------- records


@dataclass(frozen=True, kw_only=True)
class RunInfo:
    """A complete run as listed by :meth:`ResultStore.runs` (metadata only, no arrays).

    Attributes:
        run_id: The run's id (``runs/<run_id>`` in the store); sorts by time.
        kind: ``"measure"``, ``"train"`` or ``"probe"``.
        attrs: The run group's attributes (provenance; ``complete`` is true).
        metrics: ``{name: stored attributes}`` of each ``metrics/<name>`` group
            (``value``, ``stderr``, ``bound``, ``converged``, ``hvps``, ``seconds``,
            ``key``, ...), in the order they were written.
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


@dataclass(frozen=True, kw_only=True)
class Run:
    """A complete run with its arrays, as returned by :meth:`ResultStore.run`.

    Attributes:
        run_id: The run's id.
        kind: ``"measure"``, ``"train"`` or ``"probe"``.
        attrs: Provenance attributes.
        metrics: ``{name: MetricResult}`` (arrays loaded).
        probes: ``{name: ProbeResult}`` (coordinates and values loaded).
        training: ``{curve name: 1-D array over epochs}``.
    """

    run_id: str
    kind: str
    attrs: Mapping[str, JSON]
    metrics: Mapping[str, MetricResult] = field(default_factory=dict)
    probes: Mapping[str, ProbeResult] = field(default_factory=dict)
    training: Mapping[str, np.ndarray] = field(default_factory=dict)


# --------------------------------------------------------------------------- helpers


def _jsonable(value: Any) -> JSON:
    """Return ``value`` as JSON (non-finite floats become ``None``)."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool) or value is None or isinstance(value, str | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, os.PathLike):
        return str(os.fspath(value))
    if isinstance(value, np.ndarray):
        return [_jsonable(v) for v in value.tolist()]
    return str(value)


def _opt_float(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def _opt_int(value: Any) -> int | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


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


def _check_name(what: str, name: str) -> None:
    if not _NAME_RE.match(name) or name.startswith("__"):
        msg = (
            f"{what} name {name!r} cannot be stored; use letters, digits, '_', '-' "
            "and '.' (not starting with '.' or '__')"
        )
        raise StoreError(msg)


def _as_array(what: str, value: Any) -> np.ndarray:
    arr = np.asarray(value)
    if arr.dtype.kind not in "biuf":
        msg = (
            f"{what} has dtype {arr.dtype}, which the store does not keep; "
            "return numeric (bool, int or float) arrays"
        )
        raise StoreError(msg)
    return arr if arr.flags.c_contiguous else arr.copy(order="C")  # keeps 0-d


def _array_dims(name: str, arr: np.ndarray, dims: Sequence[str] | None) -> list[str]:
    if dims is not None and len(dims) == arr.ndim:
        return [str(d) for d in dims]
    if arr.ndim == 1:
        return [f"{name}_index"]
    return [f"{name}_dim_{i}" for i in range(arr.ndim)]


def _store_attrs(
    result_attrs: Mapping[str, Any], reserved: frozenset[str]
) -> tuple[dict[str, JSON], dict[str, str]]:
    """Map result attributes to stored keys, renaming those the store owns."""
    stored: dict[str, JSON] = {}
    mapping: dict[str, str] = {}
    for key, value in result_attrs.items():
        name = str(key)
        target = name
        while target in reserved or target in mapping.values():
            target = f"attr_{target}"
        stored[target] = _jsonable(value)
        mapping[name] = target
    return stored, mapping


def _restore_attrs(stored: Mapping[str, Any]) -> dict[str, JSON]:
    mapping = stored.get("result_attrs")
    if not isinstance(mapping, Mapping):
        return {}
    return {str(k): stored.get(str(v)) for k, v in mapping.items()}


def _last_value(arr: np.ndarray) -> JSON:
    if arr.ndim != 1 or arr.size == 0:
        return None
    return _jsonable(arr[-1])


# --------------------------------------------------------------------------- filters


def _parse_filters(
    filter: Mapping[str, Any] | Sequence[str] | None,
) -> list[tuple[str, str, str]]:
    if filter is None:
        return []
    items: list[tuple[str, str, str]] = []
    if isinstance(filter, Mapping):
        for key, value in filter.items():
            items.append((str(key), "=", "none" if value is None else str(value)))
    else:
        if isinstance(filter, str):
            filter = [filter]
        for item in filter:
            m = _FILTER_RE.match(item)
            if m is None:
                msg = (
                    f"filter {item!r} must look like column=value (or !=, <, <=, >, "
                    ">=), e.g. metric=spectral"
                )
                raise ConfigError(msg)
            op = "=" if m.group(2) == "==" else m.group(2)
            items.append((m.group(1), op, m.group(3)))
    for key, op, value in items:
        if key not in COLUMNS:
            msg = (
                f"unknown column {key!r} in filter {key}{op}{value}; columns: "
                + ", ".join(COLUMNS)
            )
            raise ConfigError(msg)
    return items


_TRUE = frozenset({"true", "yes", "1", "y", "t"})
_FALSE = frozenset({"false", "no", "0", "n", "f"})
_NONE = frozenset({"", "none", "null", "nan", "-"})


def _compare(cell: Any, op: str, text: str) -> bool:
    """Whether a table cell satisfies ``cell <op> text`` (see :meth:`records`)."""
    if isinstance(cell, float) and math.isnan(cell):
        cell = None
    if cell is None:
        is_none = text.strip().lower() in _NONE
        if op == "=":
            return is_none
        if op == "!=":
            return not is_none
        return False
    if isinstance(cell, bool):
        word = text.strip().lower()
        if word not in _TRUE | _FALSE:
            if word in _NONE:
                return op == "!="
            msg = f"cannot compare a yes/no column with {text!r}; use true or false"
            raise ConfigError(msg)
        want = word in _TRUE
        if op == "=":
            return cell == want
        if op == "!=":
            return cell != want
        return _ordered(int(cell), op, int(want))
    if isinstance(cell, int | float):
        if text.strip().lower() in _NONE:
            return op == "!="
        try:
            number = float(text)
        except ValueError:
            msg = f"cannot compare a numeric column with {text!r}; give a number"
            raise ConfigError(msg) from None
        # Equality is relative to 1e-9: η/S is computed (0.1/128) while the user
        # types its decimal form, which may differ in the last bit.
        equal = math.isclose(float(cell), number, rel_tol=1e-9, abs_tol=0.0)
        if op == "=":
            return equal
        if op == "!=":
            return not equal
        return _ordered(float(cell), op, number)
    value = str(cell)
    if op in ("=", "!=") and any(c in text for c in "*?["):
        hit = fnmatch.fnmatchcase(value, text)
        return hit if op == "=" else not hit
    if op == "=":
        return value == text
    if op == "!=":
        return value != text
    return _ordered(value, op, text)


def _ordered(a: Any, op: str, b: Any) -> bool:
    if op == "<":
        return bool(a < b)
    if op == "<=":
        return bool(a <= b)
    if op == ">":
        return bool(a > b)
    return bool(a >= b)


# --------------------------------------------------------------------------- the store


class ResultStore:
    """A zarr v3 results store on the local filesystem.

    Opening a new (or empty) directory makes it a store when ``create`` is true;
    opening anything else that is not a sharpkit store raises
    :class:`~sharpkit.StoreError` and leaves it as it was.

    Example:
        >>> import tempfile, numpy as np, sharpkit
        >>> from sharpkit.store import ResultStore
        >>> store = ResultStore(tempfile.mkdtemp() + "/results.zarr")
        >>> rid = store.write_run(
        ...     kind="measure",
        ...     attrs={"model": "mlp-bn", "lr": 0.1, "batch_size": 128},
        ...     metrics={"spectral": sharpkit.MetricResult(value=12.5, stderr=None)},
        ... )
        >>> [(r["metric"], r["value"], r["lr_over_batch"]) for r in store.records()]
        [('spectral', 12.5, 0.00078125)]

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
        self._check_or_init(create)

    def _check_or_init(self, create: bool) -> None:
        root_meta = self.path / "zarr.json"
        doc = self._read_root()
        if doc is None:
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
                atomic_write(root_meta, _group_doc(attrs), exclusive=True)
            except OSError as exc:
                msg = (
                    f"cannot create a results store at {self._where()}: {exc.strerror}"
                )
                raise StoreError(msg) from exc
            doc = self._read_root()
            if doc is None:  # pragma: no cover - deleted between write and read
                msg = f"{self._where()} vanished while it was being created"
                raise StoreError(msg)
        self._validate(doc)

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
    ) -> str:
        """Write one run; it becomes visible to readers only once complete.

        Args:
            kind: ``"measure"``, ``"train"`` or ``"probe"``.
            attrs: Provenance (checkpoint sha256 and path, model, dataset, ``lr``,
                ``batch_size``, seeds, versions, ``time``, ``command``, ...),
                JSON-compatible. Non-finite floats are stored as ``null``.
            metrics: ``{name: MetricResult}``; each becomes ``metrics/<name>``.
            probes: ``{name: ProbeResult}``; each becomes ``probes/<name>``.
            training: Per-epoch curves, all of the same length; ``epoch`` is the
                coordinate.

        Returns:
            The new run's id.

        Raises:
            StoreError: A name or array cannot be stored, or the filesystem
                refused the write (nothing is left visible in that case).
        """
        if kind not in KINDS:
            msg = f"run kind must be one of {', '.join(KINDS)}, got {kind!r}"
            raise StoreError(msg)
        plan = _Plan.build(kind, attrs, metrics or {}, probes or {}, training or {})
        run_id = _new_run_id()
        plan.run_attrs["run_id"] = run_id
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
        if self._infos or self._metric_keys or self._probe_keys:
            info = self._read_info(run_id)
            if info is not None:
                self._infos[run_id] = info
                self._infos = dict(sorted(self._infos.items()))
                self._index(info)
        return run_id

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
            if name == "zarr.json":
                continue
            path = self._staging_dir / name
            parts = name.rsplit(".", 2)
            host = parts[1] if len(parts) == 3 else None
            pid = _opt_int(parts[2]) if len(parts) == 3 else None
            if host == self._host and pid is not None:
                if pid == os.getpid() or _pid_alive(pid):
                    continue
                stale = True
            elif max_age is None:
                continue
            else:
                try:
                    stale = now - _newest_mtime(path) > max_age
                except FileNotFoundError:
                    continue
            if not stale:
                continue
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
            removed.append(name)
        return removed

    # ------------------------------------------------------------------ reading

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
            subs: dict[str, dict[str, Mapping[str, JSON]]] = {}
            for sub in ("metrics", "probes"):
                group = _read_json(base / sub / "zarr.json")
                if group is None:
                    subs[sub] = {}
                    continue
                order = (group.get("attributes") or {}).get("order")
                names = (
                    [str(n) for n in order]
                    if isinstance(order, list)
                    else sorted(n for n in os.listdir(base / sub) if n != "zarr.json")
                )
                found: dict[str, Mapping[str, JSON]] = {}
                for n in names:
                    member = _read_json(base / sub / n / "zarr.json")
                    if member is not None:
                        found[n] = member.get("attributes") or {}
                subs[sub] = found
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
            metrics=subs["metrics"],
            probes=subs["probes"],
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
        if kind is not None and kind not in KINDS:
            msg = f"run kind must be one of {', '.join(KINDS)}, got {kind!r}"
            raise ConfigError(msg)
        self._refresh()
        return [i for i in self._infos.values() if kind is None or i.kind == kind]

    def __contains__(self, run_id: object) -> bool:
        return isinstance(run_id, str) and self._run_dir(run_id) is not None

    def _run_dir(self, run_id: str) -> Path | None:
        if not run_id or "/" in run_id or "\\" in run_id or run_id.startswith("."):
            return None
        d = self._runs_dir / run_id
        return d if (d / "zarr.json").is_file() else None

    def _open_group(self, path: Path) -> zarr.Group:
        import zarr
        from zarr.storage import LocalStore

        return zarr.open_group(LocalStore(path, read_only=True), mode="r")

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
        group = self._open_group(d)
        attrs = dict(group.attrs.asdict())
        if attrs.get("complete") is not True:
            msg = f"run {run_id!r} in {self._where()} is not complete"
            raise RunNotFoundError(msg)
        member_names = {name for name, _ in group.groups()}
        metrics: dict[str, MetricResult] = {}
        probes: dict[str, ProbeResult] = {}
        training: dict[str, np.ndarray] = {}
        if "metrics" in member_names:
            mgroup = _subgroup(group, "metrics")
            for name in _ordered_members(mgroup):
                metrics[name] = _metric_from_group(name, _subgroup(mgroup, name))
        if "probes" in member_names:
            pgroup = _subgroup(group, "probes")
            for name in _ordered_members(pgroup):
                probes[name] = _probe_from_group(name, _subgroup(pgroup, name))
        if "training" in member_names:
            tgroup = _subgroup(group, "training")
            arrays = dict(tgroup.arrays())
            order = tgroup.attrs.get("variables")
            names = [n for n in order if n in arrays] if isinstance(order, list) else []
            names += sorted(n for n in arrays if n not in names)
            training = {n: np.asarray(arrays[n][...]) for n in names}
        return Run(
            run_id=run_id,
            kind=str(attrs.get("kind", "")),
            attrs=attrs,
            metrics=metrics,
            probes=probes,
            training=training,
        )

    def find_metric(self, key: str) -> MetricResult | None:
        """Return a stored metric result whose ``attrs["key"]`` is ``key``.

        Used to skip measuring the same checkpoint with the same settings twice.
        The newest match wins. The index is built once per store object and
        refreshed from disk when a lookup misses.
        """
        hit = self._lookup(self._metric_keys, key)
        if hit is None:
            return None
        run_id, name = hit
        try:
            return _metric_from_group(
                name, self._open_group(self._runs_dir / run_id / "metrics" / name)
            )
        except (FileNotFoundError, KeyError):  # deleted since it was indexed
            self._refresh()
            return None

    def find_probe(self, key: str) -> ProbeResult | None:
        """Return a stored probe result whose ``attrs["key"]`` is ``key`` (newest)."""
        hit = self._lookup(self._probe_keys, key)
        if hit is None:
            return None
        run_id, name = hit
        try:
            return _probe_from_group(
                name, self._open_group(self._runs_dir / run_id / "probes" / name)
            )
        except (FileNotFoundError, KeyError):
            self._refresh()
            return None

    def _lookup(
        self, table: dict[str, tuple[str, str]], key: str
    ) -> tuple[str, str] | None:
        hit = table.get(key)
        if hit is None or not (self._runs_dir / hit[0]).is_dir():
            self._refresh()
            hit = table.get(key)
        return hit

    # ------------------------------------------------------------------ the table

    def records(
        self,
        filter: Mapping[str, Any] | Sequence[str] | None = None,
        *,
        kind: str | None = None,
    ) -> list[dict[str, Any]]:
        """The tidy table: one row per run × metric (see :data:`COLUMNS`).

        * measure runs: one row per metric (``value``, ``stderr``, ``bound``, ...);
        * train runs: one row per final-epoch scalar (``train_accuracy``,
          ``test_loss``, tracked metrics, ...), ``value`` holding it;
        * probe runs: one row per summary readout, ``metric`` =
          ``<probe>.<readout>``; the second model's η, S, ... go to the ``*_b``
          columns.

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
        filters = _parse_filters(filter)
        rows: list[dict[str, Any]] = []
        for info in self.runs(kind=kind):
            rows.extend(_rows(info))
        return [
            row for row in rows if all(_compare(row[k], op, v) for k, op, v in filters)
        ]


def _subgroup(group: zarr.Group, name: str) -> zarr.Group:
    import zarr

    node = group[name]
    if not isinstance(node, zarr.Group):
        msg = f"{name!r} in {group.path!r} is an array where a group was expected"
        raise StoreError(msg)
    return node


def _ordered_members(group: zarr.Group) -> list[str]:
    names = [name for name, _ in group.groups()]
    order = group.attrs.get("order")
    if isinstance(order, list):
        first = [str(n) for n in order if str(n) in names]
        return first + sorted(n for n in names if n not in first)
    return sorted(names)


def _metric_from_group(name: str, group: zarr.Group) -> MetricResult:
    stored = dict(group.attrs.asdict())
    value = _opt_float(stored.get("value"))
    converged = stored.get("converged")
    return MetricResult(
        value=float("nan") if value is None else value,
        stderr=_opt_float(stored.get("stderr")),
        bound=_opt_float(stored.get("bound")),
        converged=converged if isinstance(converged, bool) else None,
        hvps=_opt_int(stored.get("hvps")),
        seconds=_opt_float(stored.get("seconds")),
        arrays={n: np.asarray(a[...]) for n, a in sorted(group.arrays())},
        attrs=_restore_attrs(stored),
        metric=str(stored.get("metric", name)),
    )


def _probe_from_group(name: str, group: zarr.Group) -> ProbeResult:
    stored: dict[str, Any] = dict(group.attrs.asdict())
    arrays = {n: np.asarray(a[...]) for n, a in group.arrays()}
    coord_names = [str(c) for c in stored.get("coords") or [] if str(c) in arrays]
    variables = stored.get("variables")
    var_names = (
        [str(v) for v in variables if str(v) in arrays]
        if isinstance(variables, list)
        else sorted(n for n in arrays if n not in coord_names)
    )
    summary = stored.get("summary")
    return ProbeResult(
        coords={c: arrays[c] for c in coord_names},
        arrays={v: arrays[v] for v in var_names},
        summary={
            str(k): (math.nan if v is None else float(v))
            for k, v in (summary.items() if isinstance(summary, Mapping) else ())
        },
        attrs=_restore_attrs(stored),
        seconds=_opt_float(stored.get("seconds")),
        probe=str(stored.get("probe", name)),
    )


# --------------------------------------------------------------------------- write plan


@dataclass
class _ArraySpec:
    name: str
    data: np.ndarray
    dims: list[str]
    attrs: dict[str, JSON]


@dataclass
class _GroupSpec:
    path: str
    attrs: dict[str, JSON]
    arrays: list[_ArraySpec] = field(default_factory=list)


@dataclass
class _Plan:
    """Everything a run writes, validated and converted before anything touches disk."""

    run_attrs: dict[str, JSON]
    groups: list[_GroupSpec]

    @classmethod
    def build(
        cls,
        kind: str,
        attrs: Mapping[str, JSON],
        metrics: Mapping[str, MetricResult],
        probes: Mapping[str, ProbeResult],
        training: Mapping[str, np.ndarray],
    ) -> _Plan:
        run_attrs: dict[str, JSON] = {
            str(k): _jsonable(v) for k, v in attrs.items() if k not in _RUN_RESERVED
        }
        run_attrs.setdefault("time", datetime.now(UTC).isoformat(timespec="seconds"))
        run_attrs["kind"] = kind
        run_attrs["complete"] = True
        groups: list[_GroupSpec] = []
        if metrics:
            groups.append(_GroupSpec("metrics", {"order": list(metrics)}))
            for name, mres in metrics.items():
                _check_name("metric", name)
                groups.append(_metric_group(name, mres))
        if probes:
            groups.append(_GroupSpec("probes", {"order": list(probes)}))
            for name, pres in probes.items():
                _check_name("probe", name)
                groups.append(_probe_group(name, pres))
        if training:
            groups.append(_training_group(training))
        plan = cls(run_attrs, groups)
        try:  # fail before writing anything if an attribute is not JSON
            json.dumps(run_attrs, allow_nan=False)
            for g in groups:
                json.dumps(g.attrs, allow_nan=False)
        except (TypeError, ValueError) as exc:  # pragma: no cover - _jsonable guards
            msg = f"run attributes are not JSON-compatible: {exc}"
            raise StoreError(msg) from exc
        return plan

    def write(self, entry: Path) -> None:
        """Write the run as a standalone zarr group at ``entry`` (its staging path)."""
        import zarr
        from zarr.storage import LocalStore

        root = zarr.open_group(LocalStore(entry), mode="w-", attributes=self.run_attrs)
        for spec in self.groups:
            group = root.create_group(spec.path, attributes=spec.attrs)
            for arr in spec.arrays:
                _write_array(group, arr)


def _write_array(group: zarr.Group, spec: _ArraySpec) -> None:
    data = spec.data
    kind = data.dtype.kind
    fill: Any = math.nan if kind == "f" else (False if kind == "b" else 0)
    target = group.create_array(
        spec.name,
        shape=data.shape,
        dtype=data.dtype,
        chunks=tuple(max(1, s) for s in data.shape),
        fill_value=fill,
        dimension_names=spec.dims if data.ndim else None,
        attributes=spec.attrs,
    )
    if data.size:
        target[...] = data


def _labels(name: str) -> dict[str, JSON]:
    return dict(_ARRAY_LABELS.get(name, {}))


def _metric_group(name: str, result: MetricResult) -> _GroupSpec:
    result_attrs, mapping = _store_attrs(result.attrs, _METRIC_RESERVED)
    defaults = {
        k: v for k, v in _METRIC_LABELS.get(name, {}).items() if k not in result_attrs
    }
    stored: dict[str, JSON] = {
        "metric": name,
        "value": _jsonable(float(result.value)),
        "stderr": _jsonable(result.stderr),
        "bound": _jsonable(result.bound),
        "converged": None if result.converged is None else bool(result.converged),
        "hvps": None if result.hvps is None else int(result.hvps),
        "seconds": _jsonable(result.seconds),
        **defaults,
        **result_attrs,
        "result_attrs": dict(mapping),
        "arrays": sorted(result.arrays),
    }
    declared = result.attrs.get("array_dims")
    dims_for: Mapping[str, Any] = declared if isinstance(declared, Mapping) else {}
    arrays: list[_ArraySpec] = []
    for aname, value in result.arrays.items():
        _check_name(f"array of metric {name!r}", aname)
        data = _as_array(f"array {aname!r} of metric {name!r}", value)
        want = dims_for.get(aname)
        dims = _array_dims(
            aname, data, want if isinstance(want, list | tuple) else None
        )
        arrays.append(_ArraySpec(aname, data, dims, _labels(aname)))
    return _GroupSpec(f"metrics/{name}", stored, arrays)


def _probe_group(name: str, result: ProbeResult) -> _GroupSpec:
    clash = set(result.coords) & set(result.arrays)
    if clash:
        msg = (
            f"probe {name!r} uses {sorted(clash)[0]!r} both as a coordinate and as a "
            "value array; rename one"
        )
        raise StoreError(msg)
    result_attrs, mapping = _store_attrs(result.attrs, _PROBE_RESERVED)
    stored: dict[str, JSON] = {
        "probe": name,
        "seconds": _jsonable(result.seconds),
        "summary": {str(k): _jsonable(float(v)) for k, v in result.summary.items()},
        "coords": list(result.coords),
        "variables": list(result.arrays),
        **result_attrs,
        "result_attrs": dict(mapping),
    }
    arrays: list[_ArraySpec] = []
    grid: list[int] = []
    for cname, value in result.coords.items():
        _check_name(f"coordinate of probe {name!r}", cname)
        data = _as_array(f"coordinate {cname!r} of probe {name!r}", value)
        dims = [cname] if data.ndim == 1 else _array_dims(cname, data, None)
        arrays.append(_ArraySpec(cname, data, dims, _labels(cname)))
        grid.append(data.shape[0] if data.ndim == 1 else -1)
    coord_dims = list(result.coords)
    for aname, value in result.arrays.items():
        _check_name(f"array of probe {name!r}", aname)
        data = _as_array(f"array {aname!r} of probe {name!r}", value)
        on_grid = -1 not in grid and list(data.shape) == grid
        dims = coord_dims if on_grid else _array_dims(aname, data, None)
        arrays.append(_ArraySpec(aname, data, dims, _labels(aname)))
    return _GroupSpec(f"probes/{name}", stored, arrays)


def _training_group(training: Mapping[str, Any]) -> _GroupSpec:
    data = {}
    for cname, value in training.items():
        _check_name("training curve", cname)
        data[cname] = _as_array(f"training curve {cname!r}", value)
    length = (
        data["epoch"].shape[0]
        if "epoch" in data and data["epoch"].ndim == 1
        else next((a.shape[0] for a in data.values() if a.ndim == 1), -1)
    )
    arrays = [
        _ArraySpec(
            cname,
            arr,
            ["epoch"]
            if arr.ndim == 1 and arr.shape[0] == length
            else _array_dims(cname, arr, None),
            _labels(cname),
        )
        for cname, arr in data.items()
    ]
    stored: dict[str, JSON] = {
        "variables": list(data),
        "final": {cname: _last_value(arr) for cname, arr in data.items()},
    }
    return _GroupSpec("training", stored, arrays)


# --------------------------------------------------------------------------- tidy rows


def _first(value: Any) -> Any:
    return value[0] if isinstance(value, list) and value else value


def _second(value: Any) -> Any:
    return value[1] if isinstance(value, list) and len(value) > 1 else None


def _ratio(lr: Any, batch: Any) -> float | None:
    a, b = _opt_float(lr), _opt_float(batch)
    return a / b if a is not None and b else None


def _scalar(value: Any) -> Any:
    """A JSON cell as a table cell: numbers and strings pass, lists/dicts do not."""
    if isinstance(value, list | dict):
        return None
    return value


def _rows(info: RunInfo) -> list[dict[str, Any]]:
    a = info.attrs
    final = a.get("final")
    final = final if isinstance(final, Mapping) else {}
    if info.training is not None:
        tfinal = info.training.get("final")
        if isinstance(tfinal, Mapping):
            final = {**tfinal, **final}
    lr, batch = a.get("lr"), a.get("batch_size")
    train_seed = a.get("train_seed", a.get("seed") if info.kind == "train" else None)
    epoch = a.get("epoch")
    if epoch is None and info.kind == "train":
        epoch = final.get("epoch", a.get("epochs"))
    base: dict[str, Any] = {
        "run_id": info.run_id,
        "kind": info.kind,
        "time": _scalar(a.get("time")),
        "model": _scalar(_first(a.get("model"))),
        "dataset": _scalar(a.get("dataset")),
        "lr": _opt_float(_first(lr)),
        "batch_size": _opt_int(_first(batch)),
        "lr_over_batch": _ratio(_first(lr), _first(batch)),
        "seed": _opt_int(a.get("seed")),
        "train_seed": _opt_int(_first(train_seed)),
        "epoch": _opt_int(epoch),
        "metric": None,
        "value": None,
        "stderr": None,
        "bound": None,
        "converged": None,
        "hvps": None,
        "seconds": None,
        **{k: _opt_float(final.get(k)) for k in _FINAL_COLUMNS},
        "checkpoint": _scalar(_first(a.get("checkpoint_path"))),
        "checkpoint_sha256": _scalar(_first(a.get("checkpoint_sha256"))),
        "lr_b": _opt_float(_second(lr)),
        "batch_size_b": _opt_int(_second(batch)),
        "lr_over_batch_b": _ratio(_second(lr), _second(batch)),
        "train_seed_b": _opt_int(_second(train_seed)),
        "checkpoint_b": _scalar(_second(a.get("checkpoint_path"))),
        "checkpoint_sha256_b": _scalar(_second(a.get("checkpoint_sha256"))),
    }
    rows: list[dict[str, Any]] = []
    for name, m in info.metrics.items():
        converged = m.get("converged")
        rows.append(
            {
                **base,
                "metric": name,
                "value": _opt_float(m.get("value")),
                "stderr": _opt_float(m.get("stderr")),
                "bound": _opt_float(m.get("bound")),
                "converged": converged if isinstance(converged, bool) else None,
                "hvps": _opt_int(m.get("hvps")),
                "seconds": _opt_float(m.get("seconds")),
            }
        )
    for name, p in info.probes.items():
        summary = p.get("summary")
        items = list(summary.items()) if isinstance(summary, Mapping) else []
        seconds = _opt_float(p.get("seconds"))
        if not items:
            rows.append({**base, "metric": name, "seconds": seconds})
        for key, value in items:
            rows.append(
                {
                    **base,
                    "metric": f"{name}.{key}",
                    "value": _opt_float(value),
                    "seconds": seconds,
                }
            )
    if info.kind == "train" and not info.metrics:
        for key, value in final.items():
            if key in _NOT_TRAIN_ROWS or isinstance(value, bool):
                continue
            number = _opt_float(value)
            if number is None and value is not None:
                continue
            rows.append({**base, "metric": str(key), "value": number})
    if not rows:
        rows.append(dict(base))
    return rows


# --------------------------------------------------------------------------- public


def open_results(
    path: str | os.PathLike[str],
    *,
    filter: Mapping[str, Any] | Sequence[str] | None = None,
    kind: str | None = None,
    as_frame: bool | None = None,
) -> pd.DataFrame | list[dict[str, Any]]:
    """Read a results store as a tidy table (one row per run × metric).

    Example:
        >>> import sharpkit
        >>> df = sharpkit.open_results("results.zarr")  # doctest: +SKIP
        >>> spectral = df[df.metric == "spectral"]  # doctest: +SKIP
        >>> spectral.plot.scatter("lr_over_batch", "value", logx=True)  # doctest: +SKIP

    Args:
        path: The store directory.
        filter: Row filter, as for :meth:`ResultStore.records`
            (``{"metric": "spectral"}`` or ``["batch_size>=128", ...]``).
        kind: Only rows of this kind of run (``"measure"``, ``"train"``,
            ``"probe"``).
        as_frame: ``True``: a pandas DataFrame (pandas must be installed);
            ``False``: a list of dicts; ``None`` (default): a DataFrame if pandas
            is installed, else a list of dicts.

    Returns:
        The table, with the columns listed in :data:`COLUMNS`.

    Raises:
        StoreError: ``path`` is not a results store.
        ConfigError: A bad filter, or ``as_frame=True`` without pandas.
    """
    rows = ResultStore(path, create=False).records(filter, kind=kind)
    if as_frame is False:
        return rows
    try:
        import pandas as pd
    except ImportError:
        if as_frame:
            msg = "as_frame=True needs pandas; `pip install pandas` or as_frame=False"
            raise ConfigError(msg) from None
        return rows
    frame = pd.DataFrame.from_records(rows, columns=list(COLUMNS))
    frame["time"] = pd.to_datetime(frame["time"], utc=True, errors="coerce")
    return frame


def to_csv(rows: Iterable[Mapping[str, Any]]) -> str:
    """Format table rows as CSV text with the :data:`COLUMNS` header."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(COLUMNS)
    for row in rows:
        writer.writerow(["" if row.get(c) is None else row.get(c) for c in COLUMNS])
    return buf.getvalue()
