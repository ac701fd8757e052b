"""Run every ``>>>`` example in ``src/sharpkit`` as a test (pytest's doctest runner).

Only the package's own modules are collected as doctests: the test tree holds
several ``conftest.py`` files, which ``--doctest-modules`` would import under one
name.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from _pytest.doctest import DoctestModule

SRC = Path(__file__).parent / "src" / "sharpkit"


def pytest_collect_file(
    file_path: Path, parent: pytest.Collector
) -> pytest.Module | None:
    """Collect the modules of ``src/sharpkit`` for their docstring examples."""
    if file_path.suffix == ".py" and SRC in file_path.parents:
        if file_path == SRC / "lightning.py" and not importlib.util.find_spec(
            "lightning"
        ):
            return None  # the optional extra is not installed
        return DoctestModule.from_parent(parent, path=file_path)
    return None
