"""One torch thread for the conformance-suite tests.

The suites run many tiny problems; with two threads on a shared two-core
machine, thread start-up and spinning cost up to ten times the work itself
(a ResNet-20 Hessian-vector product: 1.6 s of CPU with two threads, 0.1 s with
one).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
