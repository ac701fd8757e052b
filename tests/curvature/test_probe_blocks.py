"""Independent probes multiplied in blocks (issue 24): the same estimate, honest counts.

:class:`~sharpkit.curvature.probes.ProbeProducts` draws up to ``PROBE_BLOCK``
Rademacher or Gaussian probes and multiplies them in one block product when
the operator says it can (``block_products``). The probes are drawn from the
same generator in the same order, so the estimate must be *identical* (the
same probe values; float64 products of a dense matrix, whose columns a block
product computes by one GEMM instead of GEMVs: 1e-12 relative), and every
product taken, used or not, must be counted.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from cases import CASES, random_symmetric

from sharpkit.curvature.frobenius import frobenius_norm
from sharpkit.curvature.operator import HessianOperator
from sharpkit.curvature.probes import PROBE_BLOCK
from sharpkit.curvature.trace import hutchinson_trace, hutchpp_trace

F64 = torch.float64


class BlockMatrix:
    """A dense matrix that multiplies a block in one call, and counts calls."""

    block_products = True

    def __init__(self, A: torch.Tensor) -> None:
        self.A, self.dtype = A, A.dtype
        self.calls = 0
        self.vectors = 0

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        self.vectors += 1 if v.dim() == 1 else v.shape[1]
        return self.A @ v


def matrix(n: int = 200) -> torch.Tensor:
    evals = torch.linspace(-1, 5, n, dtype=F64)
    A, _ = random_symmetric(evals, 4)
    return A


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("kind", ["rademacher", "gaussian"])
@pytest.mark.parametrize("probes", [5, 8, 30])
def test_blocked_hutchinson_is_the_same_estimate(kind: str, probes: int) -> None:
    A = matrix()
    plain = hutchinson_trace(
        A.__matmul__,
        200,
        probes=probes,
        generator=gen(),
        distribution=kind,
        vector_dtype=F64,
    )
    op = BlockMatrix(A)
    blocked = hutchinson_trace(
        op, 200, probes=probes, generator=gen(), distribution=kind
    )
    np.testing.assert_allclose(blocked.samples, plain.samples, rtol=1e-12)
    assert blocked.value == pytest.approx(plain.value, rel=1e-12)
    assert blocked.stderr == pytest.approx(plain.stderr, rel=1e-9)
    # a fixed number of probes: no product taken ahead is wasted
    assert blocked.n_matvecs == op.vectors == probes
    assert op.calls == math.ceil(probes / PROBE_BLOCK)


def test_products_taken_ahead_are_counted() -> None:
    """A target stops the loop mid-block: the unused products still count."""
    A = matrix()
    op = BlockMatrix(A)
    est = hutchinson_trace(
        op,
        200,
        target_rel_stderr=0.2,
        min_probes=3,
        generator=gen(),
        distribution="rademacher",
    )
    assert est.n_matvecs == op.vectors
    assert len(est.samples) <= est.n_matvecs < len(est.samples) + PROBE_BLOCK
    assert op.calls == math.ceil(op.vectors / PROBE_BLOCK)


def test_orthogonal_probes_stay_one_at_a_time() -> None:
    """Each orthogonal probe depends on the ones before: no block."""
    A = matrix()
    op = BlockMatrix(A)
    est = hutchinson_trace(
        op, 200, probes=10, generator=gen(), distribution="orthogonal"
    )
    assert op.calls == op.vectors == est.n_matvecs == 10


def test_blocked_frobenius_and_hutchpp_are_the_same_estimate() -> None:
    A = matrix()
    kw = {"probes": 20, "distribution": "rademacher"}
    plain_f = frobenius_norm(A.__matmul__, 200, generator=gen(), vector_dtype=F64, **kw)
    op = BlockMatrix(A)
    blocked_f = frobenius_norm(op, 200, generator=gen(), **kw)
    assert blocked_f.value == pytest.approx(plain_f.value, rel=1e-12)
    assert blocked_f.stderr == pytest.approx(plain_f.stderr, rel=1e-9)
    assert blocked_f.n_matvecs == op.vectors
    plain_t = hutchpp_trace(A.__matmul__, 200, generator=gen(), vector_dtype=F64, **kw)
    op = BlockMatrix(A)
    blocked_t = hutchpp_trace(op, 200, generator=gen(), **kw)
    assert blocked_t.value == pytest.approx(plain_t.value, rel=1e-12)
    assert blocked_t.n_matvecs == op.vectors == plain_t.n_matvecs


@pytest.mark.parametrize("name", ["bn-mlp", "conv"])
def test_the_operator_count_matches_the_estimate(name: str) -> None:
    """Through a real HessianOperator: its product count is the estimate's."""
    case = CASES[name]()
    H = HessianOperator(case.model, case.loss_fn, case.data, batch_size=case.batch_size)
    assert H.block_products
    est = hutchinson_trace(
        H,
        H.n,
        target_rel_stderr=0.3,
        min_probes=3,
        generator=gen(),
        distribution="rademacher",
    )
    assert H.hvp_count == est.n_matvecs
