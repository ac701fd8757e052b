"""Fixtures of the reliability suite: tiny trained checkpoints, a clean registry."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from _rel import train_tiny

import sharpkit.registry as registry_module


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A trained tiny checkpoint (read-only: copy it to change it)."""
    return train_tiny(tmp_path_factory.mktemp("tiny") / "a")


@pytest.fixture(scope="session")
def tiny_b(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second tiny checkpoint (another seed), for two-model probes."""
    return train_tiny(tmp_path_factory.mktemp("tiny") / "b", seed=1)


@pytest.fixture(scope="session")
def wide(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 330k-parameter checkpoint (width 400): too big for a dense n x n basis."""
    return train_tiny(tmp_path_factory.mktemp("wide") / "w", width=400)


@pytest.fixture
def fresh_registry_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No plugin disabled from the environment; the registry rebuilt after."""
    monkeypatch.delenv("SHARPKIT_DISABLE_PLUGINS", raising=False)
    monkeypatch.delenv("SHARPKIT_DISABLE", raising=False)
    registry_module._REGISTRY = None
    yield
    registry_module._REGISTRY = None


@pytest.fixture(scope="session")
def truth(tiny: Path) -> float:
    """λ_max of the tiny checkpoint, measured by the built-in alone."""
    from _rel import cli, metric_values, ok

    result = ok(cli("measure", tiny, "-m", "spectral", "--no-store", "--json"))
    return metric_values(result.stdout)["spectral"]
