"""Reading one committed run, every document and object checked.

A run's metadata (:class:`RunInfo`) comes from the ``zarr.json`` group documents
alone, read directly from the backend; its arrays come through zarr, opened on
the run's objects. Each object read is verified against the run's manifest
(:mod:`sharpkit.store.integrity`); runs written before manifests are checked for
shape and type instead. Anything that does not read back as it was written
raises :class:`~sharpkit.store.integrity.Damage`, which the store turns into a
warning (listing) or a :class:`~sharpkit.StoreError` (reading one run).
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, TypeGuard, TypeVar

from sharpkit.errors import first_line
from sharpkit.interfaces import JSON
from sharpkit.store.encoding import group_from_objects
from sharpkit.store.integrity import (
    Damage,
    Manifest,
    check_member_attrs,
    group_attrs,
    parse_run_doc,
)
from sharpkit.store.objects import Backend

if TYPE_CHECKING:
    import zarr

__all__ = ["RunInfo", "load_info", "read_group"]

_T = TypeVar("_T")
_MEMBER_RE: Final = re.compile(r"^(metrics|probes)/([^/]+)/zarr\.json$")
_NAME_RE: Final = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")
_GROUPS: Final = ("metrics/zarr.json", "probes/zarr.json", "training/zarr.json")


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


def load_info(
    backend: Backend, run_id: str, *, local: bool, sealed: bool = False
) -> tuple[RunInfo, Manifest | None] | None:
    """Read and check a run's metadata documents (no arrays).

    Args:
        backend: The store's storage.
        run_id: The run.
        local: Whether the store is a local directory (where a run without its
            ``zarr.json`` but with other objects is damage, not one being
            written).
        sealed: Every run of the store has a manifest (its root says so).

    Returns:
        The run and its manifest (``None``: written before manifests), or
        ``None`` if no run is committed under this id (on an object store:
        being written, or a killed writer's leftover).

    Raises:
        Damage: The run is damaged.
    """
    base = f"runs/{run_id}/"
    raw = backend.get(base + "zarr.json")
    if raw is None:
        if local and backend.walk(base):
            msg = "its zarr.json is missing"
            raise Damage(msg)
        return None
    attrs, manifest = parse_run_doc(raw, sealed=sealed)
    check_member_attrs("run", "zarr.json", attrs)
    docs = _member_docs(backend, run_id, manifest)
    training = docs.get("training/zarr.json")
    info = RunInfo(
        run_id=run_id,
        kind=str(attrs["kind"]),
        attrs=attrs,
        metrics=_members(docs, "metrics"),
        probes=_members(docs, "probes"),
        training=training,
    )
    return info, manifest


def _member_docs(
    backend: Backend, run_id: str, manifest: Manifest | None
) -> dict[str, dict[str, Any]]:
    """The attributes of the run's metric/probe/training group documents."""
    base = f"runs/{run_id}/"
    if manifest is not None:
        keys = [k for k in manifest.under() if k in _GROUPS or _MEMBER_RE.match(k)]
        got = backend.get_many([base + k for k in keys])
        raws = {k: manifest.verify(k, got[base + k]) for k in keys}
    else:
        raws = _legacy_member_docs(backend, base)
    docs: dict[str, dict[str, Any]] = {}
    for key, raw in raws.items():
        attrs = group_attrs(raw, key)
        parts = key.split("/")
        kind = "training" if parts[0] == "training" else parts[0]
        if len(parts) == 3 or kind == "training":
            check_member_attrs(kind, key.removesuffix("/zarr.json"), attrs)
        elif "order" in attrs and not _is_texts(attrs["order"]):
            msg = f"{key}: attribute 'order' has the wrong type"
            raise Damage(msg)
        docs[key] = attrs
    return docs


def _legacy_member_docs(backend: Backend, base: str) -> dict[str, bytes]:
    """The group documents of a run written before manifests, every one present."""
    got = backend.get_many([base + k for k in _GROUPS])
    raws = {k: raw for k in _GROUPS if (raw := got[base + k]) is not None}
    keys: list[str] = []
    for sub in ("metrics", "probes"):
        key = f"{sub}/zarr.json"
        if key not in raws:
            continue
        order = group_attrs(raws[key], key).get("order")
        names = list(order) if _is_texts(order) else backend.children(base + sub)
        bad = [n for n in names if not _NAME_RE.match(n)]
        if bad:
            msg = f"{key} names a member {bad[0][:40]!r} that cannot exist"
            raise Damage(msg)
        keys += [f"{sub}/{n}/zarr.json" for n in names]
    members = backend.get_many([base + k for k in keys])
    for k in keys:
        raw = members[base + k]
        if raw is None:
            msg = f"{k} is missing"
            raise Damage(msg)
        raws[k] = raw
    return raws


def _objects(
    backend: Backend, run_id: str, prefix: str, manifest: Manifest | None
) -> dict[str, bytes]:
    """The run's objects under ``prefix``, checked, keyed relative to it."""
    base = f"runs/{run_id}/"
    if manifest is not None:
        keys = manifest.under(prefix)
        got = backend.get_many([base + k for k in keys])
        return {k[len(prefix) :]: manifest.verify(k, got[base + k]) for k in keys}
    infos = backend.walk(base + prefix)
    got = backend.get_many([i.key for i in infos])
    cut = len(base + prefix)
    return {k[cut:]: v for k, v in got.items() if v is not None}


def read_group(
    backend: Backend,
    run_id: str,
    prefix: str,
    read: Callable[[zarr.Group], _T],
    *,
    manifest: Manifest | None,
    doc: bytes | None = None,
) -> _T:
    """Read the run's group at ``prefix`` with ``read``, every object checked.

    Args:
        backend: The store's storage.
        run_id: The run.
        prefix: ``""`` (the whole run) or a group such as ``"metrics/spectral/"``.
        read: Turns the opened zarr group into the result.
        manifest: The run's manifest (``None``: written before manifests).
        doc: The run's ``zarr.json`` (needed when ``prefix`` is ``""``).

    Raises:
        Damage: An object is missing or changed, an array does not decode,
            or (runs without a manifest) a metric array's data is missing.
    """
    objects = _objects(backend, run_id, prefix, manifest)
    if doc is not None:
        objects["zarr.json"] = doc
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            group = group_from_objects(objects)
            if manifest is None:
                _check_chunks(group, prefix)
                _decode_all(group, prefix)
            return read(group)
    except Damage:
        raise
    except Exception as exc:  # zarr's decoders raise many kinds on bad bytes
        first = first_line(exc, limit=120) or type(exc).__name__
        msg = f"{prefix or 'the run'} cannot be decoded ({first})"
        raise Damage(msg) from None


def _is_texts(value: Any) -> TypeGuard[list[str]]:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _members(
    docs: Mapping[str, dict[str, Any]], sub: str
) -> dict[str, Mapping[str, JSON]]:
    """``{name: attributes}`` of the groups in ``metrics/`` or ``probes/``, in order."""
    found = {
        m.group(2): attrs
        for key, attrs in docs.items()
        if (m := _MEMBER_RE.match(key)) is not None and m.group(1) == sub
    }
    order = docs.get(f"{sub}/zarr.json", {}).get("order")
    first = [n for n in order if n in found] if _is_texts(order) else []
    return {n: found[n] for n in first + sorted(n for n in found if n not in first)}


def _decode_all(group: zarr.Group, prefix: str) -> None:
    """Runs without a manifest: decode every array, naming the first that fails."""
    import zarr

    for path, node in group.members(max_depth=None):
        if isinstance(node, zarr.Array):
            try:
                node[...]
            except Exception as exc:  # the codecs raise many kinds on bad bytes
                first = first_line(exc, limit=120) or type(exc).__name__
                msg = f"{prefix}{path} cannot be decoded ({first})"
                raise Damage(msg) from None


def _check_chunks(group: zarr.Group, prefix: str) -> None:
    """Runs without a manifest: a metric array whose data is missing is damage.

    Stores written before manifests left out chunks that held only fill values,
    so a missing chunk cannot be told from a deleted one in general. Float
    metric arrays (Ritz values, eigenvalues, densities, ...) are never all NaN
    in practice, and they are what is reused, so there a missing chunk counts;
    a boolean or integer array may legitimately be all False or 0.
    """
    import zarr

    if prefix.startswith("metrics/"):
        groups = [(prefix, group)]
    elif not prefix and "metrics" in group:
        metrics = group["metrics"]
        assert isinstance(metrics, zarr.Group)
        groups = [(f"metrics/{n}/", g) for n, g in metrics.groups()]
    else:
        return
    for where, member in groups:
        for name, array in member.arrays():
            floats = array.dtype.kind == "f"
            if floats and array.size and array.nchunks_initialized < array.nchunks:
                msg = f"{where}{name}: its data is missing"
                raise Damage(msg)
