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


@pytest.fixture
def own_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A user's project (tests/own_project.py) in the working directory.

    sharpkit imports ``tinynets``, ``tinyloss`` and ``tinydata`` from there when a
    test names them; the imports and ``sys.path`` are undone afterwards.
    """
    from own_project import forget_modules, make_project

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    forget_modules()
    yield make_project(tmp_path)
    forget_modules()
