"""Shared fixtures; plugin discovery uses real fake-distribution folders on sys.path."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

PLUGIN_DISTS = Path(__file__).parent / "data" / "plugin_dists"


@pytest.fixture
def plugin_dists(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., None]]:
    """Install fake distributions (tests/data/plugin_dists/<name>) for one test.

    Each folder holds a ``*.dist-info`` with ``entry_points.txt`` and the plugin
    module, so discovery goes through the real ``importlib.metadata`` machinery.
    """
    added_modules: set[str] = set()

    def install(*names: str) -> None:
        for name in names:
            folder = PLUGIN_DISTS / name
            assert folder.is_dir(), folder
            monkeypatch.syspath_prepend(str(folder))
            added_modules.update(p.stem for p in folder.glob("*.py"))
        importlib.invalidate_caches()

    yield install
    for mod in added_modules:
        sys.modules.pop(mod, None)
    importlib.invalidate_caches()


@pytest.fixture
def fresh_registry(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Make the process-wide registry be rebuilt for (and after) this test."""
    import sharpkit.registry as registry

    monkeypatch.setattr(registry, "_REGISTRY", None)
    yield
    registry._REGISTRY = None
