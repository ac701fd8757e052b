"""The store every store test starts from."""

from __future__ import annotations

from pathlib import Path

import pytest

from sharpkit.store import ResultStore


@pytest.fixture
def store(tmp_path: Path) -> ResultStore:
    return ResultStore(tmp_path / "results.zarr")
