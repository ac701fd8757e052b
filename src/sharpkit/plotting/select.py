"""What a figure draws: rows or runs from a store, or plain records, filtered.

A figure reads either a results store (a path or a
:class:`~sharpkit.store.ResultStore`: the store filters its tidy table) or plain
Python values: tidy records (dicts) for ``fig1`` and ``sam``, runs (``Run``
objects or dicts with ``attrs``, ``probes``, ``training``, ``metrics``) for the
others. Plain values are filtered by :func:`sharpkit.store.table.select`, the
same rules as the store's.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from sharpkit.errors import ConfigError

if TYPE_CHECKING:
    from sharpkit.store import ResultStore

__all__ = ["Curves", "first", "get", "records", "runs", "second", "selection"]


@dataclass
class Curves:
    """One run's curves, whatever the source (store, Run object or plain dict)."""

    run_id: str
    attrs: Mapping[str, Any]
    coords: Mapping[str, np.ndarray] = field(default_factory=dict)
    arrays: Mapping[str, np.ndarray] = field(default_factory=dict)
    summary: Mapping[str, float] = field(default_factory=dict)
    censored: Sequence[str] = ()


def get(obj: Any, name: str, default: Any = None) -> Any:
    """Return ``obj[name]`` for a mapping, else ``obj.name`` (``default`` if absent)."""
    if isinstance(obj, Mapping):
        return obj.get(name, default)
    return getattr(obj, name, default)


def first(value: Any) -> Any:
    """Return the first model's value of a two-model attribute (``value`` if single)."""
    return value[0] if isinstance(value, list | tuple) and value else value


def second(value: Any) -> Any:
    """Return the second model's value of a two-model attribute (``None`` if single)."""
    return value[1] if isinstance(value, list | tuple) and len(value) > 1 else None


def open_store(source: Any) -> ResultStore | None:
    from sharpkit.store import ResultStore

    if isinstance(source, ResultStore):
        return source
    if isinstance(source, str | os.PathLike):
        return ResultStore(source, create=False)
    return None


def selection(
    filter: Mapping[str, Any] | Sequence[str] | None, selectors: Mapping[str, Any]
) -> list[str]:
    """Return ``filter`` and the keyword ``selectors`` as one list of filter strings."""
    items: list[str] = []
    if isinstance(filter, Mapping):
        items += [f"{k}={v}" for k, v in filter.items()]
    elif isinstance(filter, str):
        items.append(filter)
    elif filter is not None:
        items += [str(f) for f in filter]
    items += [f"{k}={v}" for k, v in selectors.items()]
    return items


def records(source: Any, items: Sequence[str]) -> list[dict[str, Any]]:
    """Return the tidy rows of a store, or the plain records, that pass ``items``."""
    store = open_store(source)
    if store is not None:
        return store.records(list(items))
    if isinstance(source, Sequence) and all(isinstance(r, Mapping) for r in source):
        from sharpkit.store.table import select

        return select(source, items)
    msg = (
        f"cannot read results from a {type(source).__name__}; pass a store path, a "
        "ResultStore or a list of record dicts"
    )
    raise ConfigError(msg)


def runs(source: Any, kind: str, items: Sequence[str]) -> list[Any]:
    """Runs (``Run`` objects or mappings with attrs/probes/training) of one kind."""
    store = open_store(source)
    if store is not None:
        wanted = {r["run_id"] for r in store.records(list(items), kind=kind)}
        return [
            store.run(i.run_id) for i in store.runs(kind=kind) if i.run_id in wanted
        ]
    if isinstance(source, Sequence) and not isinstance(source, str):
        from sharpkit.store.table import matches, parse_filters

        parsed = parse_filters(items)
        out = []
        for run in source:
            if get(run, "kind", kind) != kind:
                continue
            attrs = dict(get(run, "attrs", {}) or {})
            flat = {
                **attrs,
                "run_id": get(run, "run_id", attrs.get("run_id")),
                "model": first(attrs.get("model")),
                "lr": first(attrs.get("lr")),
                "batch_size": first(attrs.get("batch_size")),
            }
            if matches(flat, parsed):
                out.append(run)
        return out
    msg = (
        f"cannot read runs from a {type(source).__name__}; pass a store path, a "
        "ResultStore or a list of runs"
    )
    raise ConfigError(msg)
