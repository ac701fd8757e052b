"""Merging results stores: the runs of several stores gathered into one.

A sweep split between machines (two preemptible nodes, a laptop and a
cluster) leaves one store per machine. Merging copies every complete, intact
run of each source into the destination, object for object, so the run keeps
its id, its manifest and its checksums; a run already in the destination (the
same id: both stores began as copies of one) is left as it is. A damaged run
(a missing or changed object, an array that does not decode) is skipped and
named, and so is a run a killed writer left unfinished: nothing damaged
enters the destination, and nothing in the sources is changed.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

from sharpkit.errors import StoreError
from sharpkit.store.integrity import Damage, parse_run_doc, seal
from sharpkit.store.layout import ResultStore, valid_run_id
from sharpkit.store.repair import _check_run, _sealed, _unchecked

__all__ = ["MergeReport", "merge_stores"]


@dataclass(frozen=True)
class MergeReport:
    """What merging one source store did.

    Attributes:
        source: The source store's location.
        copied: Ids of the runs copied into the destination.
        present: Ids of the runs the destination already held.
        damaged: ``(run id, reason)`` of the damaged runs, skipped.
        unfinished: Ids of runs a killed writer left incomplete, skipped.
    """

    source: str
    copied: tuple[str, ...] = ()
    present: tuple[str, ...] = ()
    damaged: tuple[tuple[str, str], ...] = ()
    unfinished: tuple[str, ...] = ()


def merge_stores(
    destination: str | os.PathLike[str],
    sources: Sequence[str | os.PathLike[str]],
) -> list[MergeReport]:
    """Copy every intact run of ``sources`` into ``destination``.

    Args:
        destination: The store to merge into; created if it does not exist.
        sources: The stores to merge from (left unchanged).

    Returns:
        One report per source, in order.

    Raises:
        StoreError: A source is not a sharpkit store, is the destination, or
            the destination cannot be written.
    """
    dest = ResultStore(destination)
    reports = []
    for source in sources:
        src = _unchecked(source)
        if _same_place(src, dest):
            msg = f"cannot merge the store {dest.location!r} into itself"
            raise StoreError(msg)
        ResultStore(source, create=False)  # a sharpkit store, readable by us
        reports.append(_merge_one(dest, src))
    return reports


def _same_place(a: ResultStore, b: ResultStore) -> bool:
    if a.is_local and b.is_local:
        return os.path.realpath(a.path) == os.path.realpath(b.path)
    return a.location == b.location


def _merge_one(dest: ResultStore, src: ResultStore) -> MergeReport:
    copied: list[str] = []
    present: list[str] = []
    damaged: list[tuple[str, str]] = []
    unfinished: list[str] = []
    sealed = _sealed(src)
    for run_id in sorted(src._backend.children("runs")):
        if not valid_run_id(run_id):
            continue
        if run_id in dest:
            present.append(run_id)
            continue
        try:
            if not _check_run(src, run_id, sealed):
                unfinished.append(run_id)
                continue
        except Damage as exc:
            damaged.append((run_id, str(exc)))
            continue
        base = f"runs/{run_id}/"
        keys = [i.key for i in src._backend.walk(base)]
        got = src._backend.get_many(keys)
        doc = got.pop(base + "zarr.json", None)
        if doc is None:  # pragma: no cover - removed between check and copy
            unfinished.append(run_id)
            continue
        objects = {k[len(base) :]: v for k, v in got.items() if v is not None}
        if dest.sealed and parse_run_doc(doc)[1] is None:
            # a run from before manifests, read and checked above, gets one: in
            # a store whose runs all have one, a run without is damage
            doc = seal({**objects, "zarr.json": doc})
        dest._commit(run_id, objects, doc)
        try:  # what landed is what was checked
            _check_run(dest, run_id, dest.sealed)
        except Damage as exc:  # pragma: no cover - a source changing under us
            msg = f"run {run_id!r} changed while it was copied ({exc}); merge again"
            raise StoreError(msg) from None
        copied.append(run_id)
    return MergeReport(
        source=src.location,
        copied=tuple(copied),
        present=tuple(present),
        damaged=tuple(damaged),
        unfinished=tuple(unfinished),
    )
