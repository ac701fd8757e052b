"""Checking a store for damage and repairing it (``sharpkit results --check/--repair``).

:func:`check_store` reads every run in full, every object against the run's
manifest, and reports the damaged ones, the leftovers of killed writers and
problems with the store's own metadata (the root, ``runs/``, ``staging/``
documents). It works on a store that cannot be opened any more, e.g. one whose
root ``zarr.json`` was lost.

:func:`repair_store` rebuilds the store's own metadata, sets damaged runs aside
under ``damaged/<run id>`` (nothing is deleted; inspect or remove them by hand)
and removes stale leftovers, after which every intact run is reachable again.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from sharpkit.errors import StoreError
from sharpkit.store.encoding import run_from_group
from sharpkit.store.integrity import Damage, parse_run_doc
from sharpkit.store.layout import (
    LAYOUT_GROUPS,
    SCHEMA_VERSION,
    SEALED,
    ResultStore,
    group_doc,
    root_attrs,
    valid_run_id,
)
from sharpkit.store.objects import LocalBackend
from sharpkit.store.reader import load_info, read_group

__all__ = ["StoreCheck", "check_store", "repair_store"]

_DAMAGED = "damaged"


@dataclass(frozen=True)
class StoreCheck:
    """What :func:`check_store` found (and :func:`repair_store` did).

    Attributes:
        location: The store's path or URL.
        intact: How many runs read back completely and unchanged.
        damaged: ``(run id, reason)`` of each damaged run.
        unfinished: Leftovers of writes that did not complete (staging entries
            locally, run prefixes without a manifest on an object store);
            ``--gc`` removes the stale ones.
        problems: What is wrong with the store's own metadata.
        actions: What :func:`repair_store` did, one line each.
    """

    location: str
    intact: int
    damaged: tuple[tuple[str, str], ...] = ()
    unfinished: tuple[str, ...] = ()
    problems: tuple[str, ...] = ()
    actions: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        """Whether nothing is damaged (unfinished writes are not damage)."""
        return not self.damaged and not self.problems


def _root_problem(store: ResultStore) -> str | None:
    """What is wrong with the root ``zarr.json`` (``None``: nothing).

    Raises:
        StoreError: The root belongs to a newer sharpkit, or the location holds
            no sharpkit store at all (nothing to check or repair).
    """
    raw = store._backend.get("zarr.json")
    runs = "runs" in store._backend.children("")
    problem: str | None = None
    if raw is None:
        problem = "the root zarr.json is missing"
    else:
        try:
            doc: Any = json.loads(raw)
        except ValueError:
            doc = None
        attrs = doc.get("attributes") if isinstance(doc, dict) else None
        version = attrs.get("schema_version") if isinstance(attrs, dict) else None
        node = (doc.get("zarr_format"), doc.get("node_type")) if attrs else None
        if not isinstance(version, int) or isinstance(version, bool):
            problem = "the root zarr.json is not a sharpkit store's (unreadable)"
        elif node != (3, "group"):  # a zarr v2 reader would see another thing
            problem = (
                f"the root zarr.json says zarr format {node[0] if node else None} "
                f"{node[1] if node else None}, not a format-3 group"
            )
        elif version > SCHEMA_VERSION:
            msg = (
                f"{store.location!r} was written by a newer sharpkit (store schema "
                f"{version}); upgrade with `pip install -U sharpkit` before "
                "checking or repairing it"
            )
            raise StoreError(msg)
    if problem is not None and not runs:
        msg = (
            f"no results store at {store.location!r} (no root zarr.json and no "
            "runs/); nothing to check or repair"
        )
        raise StoreError(msg)
    return problem


def _sealed(store: ResultStore) -> bool:
    """Whether the root says every run has a manifest (an unreadable root: no)."""
    try:
        doc = json.loads(store._backend.get("zarr.json") or b"{}")
    except ValueError:
        return False
    attrs = doc.get("attributes") if isinstance(doc, dict) else None
    return isinstance(attrs, dict) and attrs.get(SEALED) is True


def _layout_problems(store: ResultStore) -> list[str]:
    subs = LAYOUT_GROUPS if store.is_local else {"runs": ""}
    out = []
    for sub in subs:
        raw = store._backend.get(f"{sub}/zarr.json")
        if raw is None and (sub == "staging" or not store._backend.children(sub)):
            continue  # created on the first write; a store only opened has none
        try:
            ok = raw is not None and json.loads(raw).get("node_type") == "group"
        except (ValueError, AttributeError):
            ok = False
        if not ok:
            out.append(f"{sub}/zarr.json is missing or unreadable")
    return out


def _check_run(store: ResultStore, run_id: str, sealed: bool) -> bool:
    """Read a run in full; whether it is committed at all.

    Raises:
        Damage: The run is damaged.
    """
    backend = store._backend
    if load_info(backend, run_id, local=store.is_local, sealed=sealed) is None:
        return False
    raw = backend.get(f"runs/{run_id}/zarr.json")
    if raw is None:  # deleted meanwhile
        return False
    _, manifest = parse_run_doc(raw, sealed=sealed)
    read_group(
        backend,
        run_id,
        "",
        lambda g: run_from_group(run_id, g),
        manifest=manifest,
        doc=raw,
    )
    return True


def _unchecked(location: str | os.PathLike[str]) -> ResultStore:
    store = ResultStore._unchecked(location)
    backend = store._backend
    if isinstance(backend, LocalBackend) and not backend.root.is_dir():
        msg = f"no results store at {store.location!r}; check the path"
        raise StoreError(msg)
    return store


def check_store(location: str | os.PathLike[str]) -> StoreCheck:
    """Read every run of a store in full and report what is damaged.

    Args:
        location: The store's path or object-store URL.

    Raises:
        StoreError: Nothing at ``location`` looks like a sharpkit store, or it
            was written by a newer sharpkit.
    """
    store = _unchecked(location)
    problems = [p for p in [_root_problem(store)] if p is not None]
    problems += _layout_problems(store)
    sealed = _sealed(store)
    intact = 0
    damaged: list[tuple[str, str]] = []
    unfinished: list[str] = []
    for run_id in store._backend.children("runs"):
        if not valid_run_id(run_id):
            continue
        try:
            if _check_run(store, run_id, sealed):
                intact += 1
            else:
                unfinished.append(f"runs/{run_id}")
        except Damage as exc:
            damaged.append((run_id, str(exc)))
    if store.is_local:
        staging = store._backend.children("staging")
        unfinished += [f"staging/{name}" for name in staging]
    return StoreCheck(
        location=store.location,
        intact=intact,
        damaged=tuple(damaged),
        unfinished=tuple(unfinished),
        problems=tuple(problems),
    )


def repair_store(location: str | os.PathLike[str]) -> StoreCheck:
    """Make every intact run of a store reachable again, losing nothing.

    Rebuilds the root, ``runs/`` and ``staging/`` metadata documents where they
    are missing or unreadable, moves damaged runs to ``damaged/<run id>`` (kept
    for inspection; delete them by hand), and removes leftovers of killed
    writers older than an hour.

    Returns:
        The check after the repair, with ``actions`` saying what was done.

    Raises:
        StoreError: As :func:`check_store`, or the storage refused a write.
    """
    before = check_store(location)
    store = _unchecked(location)
    actions: list[str] = []
    if _root_problem(store) is not None:
        now = datetime.now(UTC).isoformat(timespec="seconds")
        # sealed only if it was: a rebuilt root must not turn runs written
        # before manifests into damage
        attrs = {**root_attrs(), SEALED: _sealed(store), "repaired": now}
        store._backend.put("zarr.json", group_doc(attrs))
        actions.append("rebuilt the root zarr.json")
    for problem in _layout_problems(store):
        sub = problem.split("/", 1)[0]
        store._backend.put(
            f"{sub}/zarr.json", group_doc({"description": LAYOUT_GROUPS[sub]})
        )
        actions.append(f"rebuilt {sub}/zarr.json")
    if before.damaged:
        store._backend.put(
            f"{_DAMAGED}/zarr.json",
            group_doc(
                {"description": "damaged runs set aside by `sharpkit results --repair`"}
            ),
        )
    for run_id, reason in before.damaged:
        _set_aside(store, run_id)
        actions.append(f"moved damaged run {run_id} to {_DAMAGED}/{run_id} ({reason})")
    removed = store.gc()
    if removed:
        actions.append(f"removed {len(removed)} stale leftover(s) of killed writers")
    after = check_store(location)
    return replace(after, actions=tuple(actions))


def _set_aside(store: ResultStore, run_id: str) -> None:
    """Move ``runs/<id>`` to ``damaged/<id>``: out of every listing, nothing lost."""
    backend = store._backend
    if isinstance(backend, LocalBackend):
        target = backend.root / _DAMAGED / run_id
        target.parent.mkdir(exist_ok=True)
        os.rename(backend.root / "runs" / run_id, target)
        return
    base = f"runs/{run_id}/"
    keys = [o.key for o in backend.walk(base)]
    for key in keys:
        data = backend.get(key)
        if data is not None:
            backend.put(f"{_DAMAGED}/{run_id}/{key[len(base) :]}", data)
    # the run's document first: from then on it is invisible, whatever happens
    backend.delete([k for k in keys if k == base + "zarr.json"])
    backend.delete([k for k in keys if k != base + "zarr.json"])
