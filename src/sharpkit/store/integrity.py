"""Integrity of stored runs: the manifest a run is committed with, and the checks.

A run's group document (``runs/<id>/zarr.json``) carries, in its ``manifest``
attribute, the size and SHA-256 of every other object of the run and the SHA-256
of its own attributes. Every read checks what it reads against it, so a flipped
byte, a truncated or deleted chunk, or a hand-edited value makes the run
*damaged*: it is skipped with one warning and never reused, instead of being
read back as garbage, NaN or a traceback. Runs written before manifests existed
are checked for what can be checked without one: JSON documents of the right
shape and types, arrays that decode, and metric arrays whose chunks exist.

This module knows documents and bytes, not where they are stored.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from sharpkit.errors import StoreError, first_line

__all__ = [
    "MANIFEST_FORMAT",
    "Damage",
    "Manifest",
    "check_member_attrs",
    "group_attrs",
    "parse_run_doc",
    "seal",
]

MANIFEST_FORMAT: Final = 1
"""Version of the ``manifest`` attribute's layout."""

_MANIFEST: Final = "manifest"


class Damage(StoreError):
    """A run cannot be read as it was written; the message says why (one line).

    Internal to the store, which reports it as a warning (a damaged run is
    skipped) or as a :class:`~sharpkit.StoreError` naming the run; a
    :class:`~sharpkit.StoreError` itself, so none can escape the error tree.
    """


# --------------------------------------------------------------------------- JSON


def _no_constant(name: str) -> Any:
    msg = f"non-standard JSON constant {name}"
    raise ValueError(msg)


def loads(raw: bytes, what: str) -> Any:
    """Parse a stored JSON document (sharpkit never writes NaN or Infinity)."""
    try:
        return json.loads(raw, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:
        msg = f"{what} is not valid JSON ({first_line(exc, limit=80)})"
        raise Damage(msg) from None


def _canonical(attrs: Mapping[str, Any]) -> bytes:
    return json.dumps(
        attrs, sort_keys=True, separators=(",", ":"), allow_nan=False
    ).encode()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------- writing


def seal(objects: dict[str, bytes]) -> bytes:
    """Take the run's group document out of ``objects`` and return it with a manifest.

    Args:
        objects: The run's encoded objects, keyed relative to the run, with its
            ``zarr.json`` among them (removed here).

    Returns:
        The run's ``zarr.json``: its attributes plus ``manifest`` naming the size
        and SHA-256 of every object left in ``objects``.
    """
    doc = json.loads(objects.pop("zarr.json"))
    attrs = doc["attributes"]
    listed = {k: [len(v), _sha256(v)] for k, v in sorted(objects.items())}
    attrs[_MANIFEST] = {
        "format": MANIFEST_FORMAT,
        "hash": "sha256",
        "attributes": _sha256(_canonical(attrs)),
        # the list itself is checked too: a changed name would hide an object
        "index": _sha256(_canonical(listed)),
        "objects": listed,
    }
    return json.dumps(doc, indent=2, allow_nan=False).encode()


# --------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class Manifest:
    """The objects a run was committed with: ``{key: (size, sha256)}``."""

    objects: Mapping[str, tuple[int, str]]

    def under(self, prefix: str = "") -> list[str]:
        """The keys under ``prefix`` (``"metrics/spectral/"``; ``""``: all)."""
        return sorted(k for k in self.objects if k.startswith(prefix))

    def verify(self, key: str, raw: bytes | None) -> bytes:
        """Return ``raw`` if it is the object ``key`` as committed.

        Raises:
            Damage: ``key`` is not in the manifest, is missing, or differs.
        """
        want = self.objects.get(key)
        if want is None:
            msg = f"{key} is not among the objects the run was written with"
            raise Damage(msg)
        if raw is None:
            msg = f"{key} is missing"
            raise Damage(msg)
        if len(raw) != want[0] or _sha256(raw) != want[1]:
            msg = f"{key} is not what was written (size or checksum differs)"
            raise Damage(msg)
        return raw

    @classmethod
    def parse(cls, value: Any, attrs: Mapping[str, Any]) -> Manifest:
        """Check a ``manifest`` attribute against the other ``attrs`` and read it.

        Raises:
            Damage: The manifest is malformed or the attributes were changed.
        """
        if (
            not isinstance(value, Mapping)
            or value.get("format") != MANIFEST_FORMAT
            or value.get("hash") != "sha256"
            or not isinstance(value.get("objects"), Mapping)
        ):
            msg = "the run's manifest is malformed"
            raise Damage(msg)
        if value.get("attributes") != _sha256(_canonical(attrs)):
            msg = "the run's attributes are not what was written (checksum differs)"
            raise Damage(msg)
        # "index" is absent only in manifests from before it existed (same format)
        if "index" in value and value["index"] != _checked_index(value["objects"]):
            msg = "the run's manifest is not what was written (checksum differs)"
            raise Damage(msg)
        objects: dict[str, tuple[int, str]] = {}
        for key, entry in value["objects"].items():
            ok = (
                isinstance(entry, list)
                and len(entry) == 2
                and _is_int(entry[0])
                and isinstance(entry[1], str)
            )
            if not ok or key == "zarr.json" or key.startswith("/") or ".." in key:
                msg = "the run's manifest is malformed"
                raise Damage(msg)
            objects[key] = (int(entry[0]), entry[1])
        return cls(objects)


def _checked_index(objects: Mapping[str, Any]) -> str | None:
    try:
        return _sha256(_canonical(objects))
    except (TypeError, ValueError):  # not JSON-serialisable as written: damaged
        return None


def parse_run_doc(
    raw: bytes, *, sealed: bool = False
) -> tuple[dict[str, Any], Manifest | None]:
    """Read and check a run's ``zarr.json``: its attributes and manifest.

    Runs written before manifests existed have none (``None``); in a store
    created since (``sealed``: its root says every run has one), a run without
    one lost it.

    Raises:
        Damage: Not a complete run's group document, or it was changed.
    """
    attrs = group_attrs(raw, "zarr.json")
    if attrs.get("complete") is not True:
        msg = "zarr.json is not a complete run's (complete is not true)"
        raise Damage(msg)
    if not isinstance(attrs.get("kind"), str):
        msg = "zarr.json has no kind"
        raise Damage(msg)
    for key in ("run_id", "time"):
        if key in attrs and not isinstance(attrs[key], str):
            msg = f"zarr.json: {key} is not text"
            raise Damage(msg)
    if _MANIFEST not in attrs:
        if sealed:
            msg = (
                f"zarr.json has no {_MANIFEST} attribute, which every run of this "
                "store has (it was removed)"
            )
            raise Damage(msg)
        return attrs, None
    rest = {k: v for k, v in attrs.items() if k != _MANIFEST}
    return rest, Manifest.parse(attrs[_MANIFEST], rest)


def group_attrs(raw: bytes, what: str) -> dict[str, Any]:
    """The attributes of a zarr v3 group document.

    Raises:
        Damage: Not JSON, not a group document, or attributes not an object.
    """
    doc = loads(raw, what)
    if not isinstance(doc, dict) or doc.get("node_type") != "group":
        msg = f"{what} is not a zarr group document"
        raise Damage(msg)
    if doc.get("zarr_format") != 3:
        msg = f"{what} is not zarr format 3"
        raise Damage(msg)
    attrs = doc.get("attributes", {})
    if not isinstance(attrs, dict):
        msg = f"{what}: attributes are not a JSON object"
        raise Damage(msg)
    return attrs


# --------------------------------------------------------------------------- types


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return _is_int(v) or (isinstance(v, float) and math.isfinite(v))


def _opt_number(v: Any) -> bool:
    return v is None or _is_number(v)


def _opt_int(v: Any) -> bool:
    return v is None or _is_int(v)


def _opt_bool(v: Any) -> bool:
    return v is None or isinstance(v, bool)


def _text(v: Any) -> bool:
    return isinstance(v, str)


def _opt_text(v: Any) -> bool:
    return v is None or _text(v)


def _texts(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) for x in v)


def _text_map(v: Any) -> bool:
    return isinstance(v, dict) and all(isinstance(x, str) for x in v.values())


def _number_map(v: Any) -> bool:
    return isinstance(v, dict) and all(_opt_number(x) for x in v.values())


def _map(v: Any) -> bool:
    return isinstance(v, dict)


# The attributes sharpkit reads back and the types they must have when present.
_TYPES: Final[Mapping[str, Mapping[str, Callable[[Any], bool]]]] = {
    "metrics": {
        "metric": _text,
        "value": _opt_number,
        "stderr": _opt_number,
        "data_stderr": _opt_number,
        "data_method": _opt_text,
        "bound": _opt_number,
        "seconds": _opt_number,
        "converged": _opt_bool,
        "hvps": _opt_int,
        "key": _text,
        "arrays": _texts,
        "result_attrs": _text_map,
        "long_name": _text,
        "units": _text,
    },
    "probes": {
        "probe": _text,
        "seconds": _opt_number,
        "summary": _number_map,
        "coords": _texts,
        "variables": _texts,
        "key": _text,
        "result_attrs": _text_map,
    },
    "training": {"variables": _texts, "final": _map, "metric_labels": _map},
    "run": {"final": _map},
}


def check_member_attrs(kind: str, name: str, attrs: Mapping[str, Any]) -> None:
    """Check the types of the attributes sharpkit reads from a stored group.

    Args:
        kind: ``"metrics"``, ``"probes"``, ``"training"`` or ``"run"``.
        name: The group's path in the run, for the message.
        attrs: Its attributes.

    Raises:
        Damage: An attribute has a type sharpkit never writes there.
    """
    for key, ok in _TYPES[kind].items():
        if key in attrs and not ok(attrs[key]):
            got = type(attrs[key]).__name__
            msg = f"{name}: attribute {key!r} has the wrong type ({got})"
            raise Damage(msg)
