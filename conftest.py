"""Settings for every test, and the ``>>>`` examples of ``src/sharpkit`` as tests.

**One torch thread per test process.** The tests run many tiny problems; with
torch's default of one intra-op thread per core, two threads on a two-core
machine spin against each other and against any other CPU-bound job: the suite
took 4 min 18 s on a quiet machine and 63 min next to one other busy process.
With one thread it degrades in proportion to the load instead. The environment
variables reach the subprocesses tests start (the CLI, sweeps' process pools,
Dask workers, ``torchrun``); a test that needs more threads says so with
``@pytest.mark.threads(n)``. ``SHARPKIT_TEST_THREADS=n`` changes the default.

Only the package's own modules are collected as doctests: the test tree holds
several ``conftest.py`` files, which ``--doctest-modules`` would import under one
name.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from _pytest.doctest import DoctestModule

SRC = Path(__file__).parent / "src" / "sharpkit"
THREADS = int(os.environ.get("SHARPKIT_TEST_THREADS", "1"))
# before anything imports torch, so its thread pools start at this size too
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = str(THREADS)


@pytest.fixture(autouse=True)
def _torch_threads(request: pytest.FixtureRequest) -> Iterator[None]:
    """Run each test with ``THREADS`` torch threads (``threads(n)`` marker: ``n``).

    torch is not imported for a test that does not use it: the environment
    variables above set its threads when it is first imported.
    """
    marker = request.node.get_closest_marker("threads")
    if marker is not None or "torch" in sys.modules:
        import torch

        torch.set_num_threads(int(marker.args[0]) if marker else THREADS)
    yield
    torch_module = sys.modules.get("torch")
    if torch_module is not None:  # a test that changed it does not leak it
        torch_module.set_num_threads(THREADS)


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
