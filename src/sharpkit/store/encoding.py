"""The zarr encoding of results: how a run's groups and arrays are written and read.

A run is converted and validated into a :class:`Plan` before anything touches
storage; :meth:`Plan.encode` then encodes it as a standalone zarr v3 group, a
set of objects in memory that :mod:`sharpkit.store.layout` commits. Reading
opens the verified objects of a group (:func:`group_from_objects`) and turns
them back into :class:`~sharpkit.MetricResult`,
:class:`~sharpkit.ProbeResult` and :class:`Run`. ``docs/store.md`` describes
every group, attribute and array.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

import numpy as np

from sharpkit._meta import json_safe
from sharpkit.errors import StoreError
from sharpkit.interfaces import JSON, MetricResult, ProbeResult

if TYPE_CHECKING:
    import zarr

__all__ = [
    "LABEL_KEYS",
    "TRAINING_DIMS",
    "Plan",
    "Run",
    "group_from_objects",
    "labels_of",
    "metric_from_group",
    "opt_float",
    "opt_int",
    "probe_from_group",
    "run_from_group",
]

LABEL_KEYS: Final = ("long_name", "units")
"""The label attributes a writer may give each metric group (``metric_labels``)."""

# Keys the store owns in a metric / probe group; a result attribute with one of
# these names is stored as "attr_<name>" (see ``result_attrs``).
_METRIC_RESERVED: Final = frozenset(
    {"metric", "value", "stderr", "bound", "converged", "hvps", "seconds"}
    | {"data_stderr", "data_method", "result_attrs", "arrays"}
)
_PROBE_RESERVED: Final = frozenset(
    {"probe", "seconds", "summary", "coords", "variables", "result_attrs"}
)
_RUN_RESERVED: Final = frozenset({"kind", "run_id", "complete"})

# long_name / units for arrays whose meaning is fixed across sharpkit.
_ARRAY_LABELS: Final[Mapping[str, Mapping[str, str]]] = {
    "epoch": {"long_name": "epoch"},
    "step": {"long_name": "training step"},
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

TRAINING_DIMS: Final[Mapping[str, str]] = {"train": "epoch", "track": "step"}
"""The dimension (and coordinate array) of a run's ``training`` curves, by kind."""

_NAME_RE: Final = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")


@dataclass(frozen=True, kw_only=True)
class Run:
    """A complete run with its arrays, as returned by :meth:`ResultStore.run`.

    Attributes:
        run_id: The run's id.
        kind: ``"measure"``, ``"train"``, ``"probe"`` or ``"track"``.
        attrs: Provenance attributes.
        metrics: ``{name: MetricResult}`` (arrays loaded).
        probes: ``{name: ProbeResult}`` (coordinates and values loaded).
        training: ``{curve name: 1-D array}``, over epochs (train runs) or over
            training steps (track runs).
        metric_labels: ``{name: {"long_name": ..., "units": ...}}`` of each
            metric that has labels (only the non-empty ones).
    """

    run_id: str
    kind: str
    attrs: Mapping[str, JSON]
    metrics: Mapping[str, MetricResult] = field(default_factory=dict)
    probes: Mapping[str, ProbeResult] = field(default_factory=dict)
    training: Mapping[str, np.ndarray] = field(default_factory=dict)
    metric_labels: Mapping[str, Mapping[str, str]] = field(default_factory=dict)


# --------------------------------------------------------------------------- values


def opt_float(value: Any) -> float | None:
    """Return a stored value or table cell as a finite float, else ``None``.

    Examples:
        >>> opt_float("0.5"), opt_float(None), opt_float(float("nan")), opt_float(True)
        (0.5, None, None, None)
    """
    if value is None or isinstance(value, bool):
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def opt_int(value: Any) -> int | None:
    """Return a stored value or table cell as an int, else ``None``."""
    if value is None or isinstance(value, bool):
        return None
    try:
        return int(value)
    except (TypeError, ValueError, OverflowError):
        return None


def labels_of(stored: Mapping[str, Any]) -> dict[str, str]:
    """The non-empty ``long_name`` / ``units`` of a stored metric group.

    Stores written before ``metric_labels`` existed may carry ``unit`` instead
    of ``units``; it is read as ``units``.
    """
    out: dict[str, str] = {}
    for key in LABEL_KEYS:
        value = stored.get(key)
        if key == "units" and not value:
            value = stored.get("unit")
        if isinstance(value, str) and value:
            out[key] = value
    return out


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


def _array_labels(name: str) -> dict[str, JSON]:
    return dict(_ARRAY_LABELS.get(name, {}))


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
        stored[target] = json_safe(value)
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
    out: JSON = json_safe(arr[-1])
    return out


def _check_labels(name: str, labels: Mapping[str, str] | None) -> dict[str, JSON]:
    """The non-empty labels of metric ``name``, checked to be :data:`LABEL_KEYS`."""
    out: dict[str, JSON] = {}
    for key, value in (labels or {}).items():
        if key not in LABEL_KEYS:
            msg = (
                f"metric label {key!r} of {name!r} cannot be stored; give "
                f"{' and '.join(LABEL_KEYS)}"
            )
            raise StoreError(msg)
        if value:
            out[key] = str(value)
    return out


# --------------------------------------------------------------------------- writing


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
class Plan:
    """Everything a run writes, validated and converted before anything touches disk.

    Attributes:
        run_attrs: The run group's attributes (provenance, ``kind``,
            ``complete``; the writer adds ``run_id``).
        groups: The member groups with their attributes and arrays.
    """

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
        metric_labels: Mapping[str, Mapping[str, str]],
    ) -> Plan:
        """Convert and check a run (arguments as for :meth:`ResultStore.write_run`).

        Raises:
            StoreError: A name, label or array cannot be stored.
        """
        run_attrs: dict[str, JSON] = {
            str(k): json_safe(v) for k, v in attrs.items() if k not in _RUN_RESERVED
        }
        run_attrs.setdefault("time", datetime.now(UTC).isoformat(timespec="seconds"))
        run_attrs["kind"] = kind
        run_attrs["complete"] = True
        groups: list[_GroupSpec] = []
        if metrics:
            groups.append(_GroupSpec("metrics", {"order": list(metrics)}))
            for name, mres in metrics.items():
                _check_name("metric", name)
                labels = _check_labels(name, metric_labels.get(name))
                groups.append(_metric_group(name, mres, labels))
        if probes:
            groups.append(_GroupSpec("probes", {"order": list(probes)}))
            for name, pres in probes.items():
                _check_name("probe", name)
                groups.append(_probe_group(name, pres))
        if training:
            dim = TRAINING_DIMS.get(kind, "epoch")
            groups.append(_training_group(training, dim, metric_labels))
        try:  # fail before writing anything if an attribute is not JSON
            json.dumps(run_attrs, allow_nan=False)
            for g in groups:
                json.dumps(g.attrs, allow_nan=False)
        except (TypeError, ValueError) as exc:  # pragma: no cover - json_safe guards
            msg = f"run attributes are not JSON-compatible: {exc}"
            raise StoreError(msg) from exc
        return cls(run_attrs, groups)

    def encode(self) -> dict[str, bytes]:
        """The run's objects: ``{key relative to the run: bytes}``, run doc included.

        Every array is one chunk, and its chunk is stored even when it holds only
        fill values, so that each array's data is an object the manifest names.
        """
        import zarr
        from zarr.storage import MemoryStore

        objects: dict[str, Any] = {}
        root = zarr.open_group(
            MemoryStore(objects), mode="w-", attributes=self.run_attrs
        )
        for spec in self.groups:
            group = root.create_group(spec.path, attributes=spec.attrs)
            for arr in spec.arrays:
                _write_array(group, arr)
        return {key: buf.to_bytes() for key, buf in sorted(objects.items())}


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
        config={"write_empty_chunks": True},
    )
    if data.size:
        target[...] = data


def _metric_group(
    name: str, result: MetricResult, labels: Mapping[str, JSON]
) -> _GroupSpec:
    result_attrs, mapping = _store_attrs(result.attrs, _METRIC_RESERVED)
    stored: dict[str, JSON] = {
        "metric": name,
        "value": json_safe(float(result.value)),
        "stderr": json_safe(result.stderr),
        "bound": json_safe(result.bound),
        "converged": None if result.converged is None else bool(result.converged),
        "hvps": None if result.hvps is None else int(result.hvps),
        "seconds": json_safe(result.seconds),
        "data_stderr": json_safe(result.data_stderr),
        "data_method": result.data_method,
        # the metric's own attributes of the same name win over the writer's labels
        **{k: v for k, v in labels.items() if k not in result_attrs},
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
        arrays.append(_ArraySpec(aname, data, dims, _array_labels(aname)))
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
        "seconds": json_safe(result.seconds),
        "summary": {str(k): json_safe(float(v)) for k, v in result.summary.items()},
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
        arrays.append(_ArraySpec(cname, data, dims, _array_labels(cname)))
        grid.append(data.shape[0] if data.ndim == 1 else -1)
    coord_dims = list(result.coords)
    for aname, value in result.arrays.items():
        _check_name(f"array of probe {name!r}", aname)
        data = _as_array(f"array {aname!r} of probe {name!r}", value)
        on_grid = -1 not in grid and list(data.shape) == grid
        dims = coord_dims if on_grid else _array_dims(aname, data, None)
        arrays.append(_ArraySpec(aname, data, dims, _array_labels(aname)))
    return _GroupSpec(f"probes/{name}", stored, arrays)


def _training_group(
    training: Mapping[str, Any],
    dim: str,
    metric_labels: Mapping[str, Mapping[str, str]],
) -> _GroupSpec:
    data = {}
    for cname, value in training.items():
        _check_name("training curve", cname)
        data[cname] = _as_array(f"training curve {cname!r}", value)
    # A curve named after a metric (and its _stderr, _bound) carries its labels.
    labels = {
        name: _check_labels(name, metric_labels[name])
        for name in data
        if name in metric_labels
    }
    curve_labels = {
        name + suffix: {"units": found["units"]} if suffix else found
        for name, found in labels.items()
        for suffix in ("", "_stderr", "_bound")
        if (not suffix or "units" in found) and name + suffix in data
    }
    length = (
        data[dim].shape[0]
        if dim in data and data[dim].ndim == 1
        else next((a.shape[0] for a in data.values() if a.ndim == 1), -1)
    )
    arrays = [
        _ArraySpec(
            cname,
            arr,
            [dim]
            if arr.ndim == 1 and arr.shape[0] == length
            else _array_dims(cname, arr, None),
            {**_array_labels(cname), **curve_labels.get(cname, {})},
        )
        for cname, arr in data.items()
    ]
    stored: dict[str, JSON] = {
        "variables": list(data),
        "final": {cname: _last_value(arr) for cname, arr in data.items()},
    }
    if labels:
        stored["metric_labels"] = {k: v for k, v in labels.items() if v}
    return _GroupSpec("training", stored, arrays)


# --------------------------------------------------------------------------- reading


def group_from_objects(objects: Mapping[str, bytes]) -> zarr.Group:
    """Open, read-only, the zarr group made of ``objects`` (keys relative to it)."""
    import zarr
    from zarr.core.buffer import Buffer, cpu
    from zarr.storage import MemoryStore

    buffers: dict[str, Buffer] = {
        k: cpu.Buffer.from_bytes(v) for k, v in objects.items()
    }
    return zarr.open_group(MemoryStore(buffers, read_only=True), mode="r")


def run_from_group(run_id: str, group: zarr.Group) -> Run:
    """Read a run group (``runs/<run_id>``) with all its arrays."""
    attrs = dict(group.attrs.asdict())
    member_names = {name for name, _ in group.groups()}
    metrics: dict[str, MetricResult] = {}
    labels: dict[str, dict[str, str]] = {}
    probes: dict[str, ProbeResult] = {}
    training: dict[str, np.ndarray] = {}
    if "metrics" in member_names:
        mgroup = _subgroup(group, "metrics")
        for name in _ordered_members(mgroup):
            member = _subgroup(mgroup, name)
            metrics[name] = metric_from_group(name, member)
            found = labels_of(member.attrs.asdict())
            if found:
                labels[name] = found
    if "probes" in member_names:
        pgroup = _subgroup(group, "probes")
        for name in _ordered_members(pgroup):
            probes[name] = probe_from_group(name, _subgroup(pgroup, name))
    if "training" in member_names:
        training = _training_from_group(_subgroup(group, "training"))
    return Run(
        run_id=run_id,
        kind=str(attrs.get("kind", "")),
        attrs=attrs,
        metrics=metrics,
        probes=probes,
        training=training,
        metric_labels=labels,
    )


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


def _training_from_group(group: zarr.Group) -> dict[str, np.ndarray]:
    arrays = dict(group.arrays())
    order = group.attrs.get("variables")
    names = [n for n in order if n in arrays] if isinstance(order, list) else []
    names += sorted(n for n in arrays if n not in names)
    return {n: np.asarray(arrays[n][...]) for n in names}


def metric_from_group(name: str, group: zarr.Group) -> MetricResult:
    """Read a ``metrics/<name>`` group back into the result that was written."""
    stored = dict(group.attrs.asdict())
    value = opt_float(stored.get("value"))
    converged = stored.get("converged")
    return MetricResult(
        value=float("nan") if value is None else value,
        stderr=opt_float(stored.get("stderr")),
        bound=opt_float(stored.get("bound")),
        converged=converged if isinstance(converged, bool) else None,
        hvps=opt_int(stored.get("hvps")),
        seconds=opt_float(stored.get("seconds")),
        arrays={n: np.asarray(a[...]) for n, a in sorted(group.arrays())},
        attrs=_restore_attrs(stored),
        metric=str(stored.get("metric", name)),
        data_stderr=opt_float(stored.get("data_stderr")),  # None in older stores
        data_method=(
            None if stored.get("data_method") is None else str(stored["data_method"])
        ),
    )


def probe_from_group(name: str, group: zarr.Group) -> ProbeResult:
    """Read a ``probes/<name>`` group back into the result that was written."""
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
        seconds=opt_float(stored.get("seconds")),
        probe=str(stored.get("probe", name)),
    )
