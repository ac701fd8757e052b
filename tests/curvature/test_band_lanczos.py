"""Band (block) Lanczos: near-degenerate top pairs and repeated eigenvalues (#22).

A single start vector sees one vector per eigenspace: of a pair 0.3 % apart
the one its start favours converges first with a residual below the gap, and
a repeated eigenvalue shows once. Known spectra (random orthogonal eigenbasis,
float64) make the truth exact; every claim is "λ₁ lies within the reported
bound", checked over 50 seeds (the issue's criterion: ≥ 49 of 50).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from cases import random_symmetric

from sharpkit.curvature.lanczos import (
    BAND_MIN_GAP,
    MIN_GAP,
    BandLanczosProcess,
    lanczos,
    subsample_start,
)
from sharpkit.curvature.stochastic import Deflation, krylov_deflation
from sharpkit.errors import ConfigError

F64 = torch.float64


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def pair_matrix(gap: float, n: int = 300) -> torch.Tensor:
    """λ₁ = 10, λ₂ = 10(1 - gap), a bulk uniform in [-1, 4]."""
    g = gen(7)
    bulk = torch.rand(n - 2, generator=g, dtype=F64) * 5 - 1
    evals = torch.cat([torch.tensor([10.0, 10.0 * (1 - gap)], dtype=F64), bulk])
    A, _ = random_symmetric(evals, 3)
    return A


def covered(A: torch.Tensor, block: int, seeds: int = 50) -> int:
    """Runs (of ``seeds``) whose λ_max ± bound contains λ₁ = 10."""
    hits = 0
    for seed in range(seeds):
        res = lanczos(
            lambda v: A @ v,
            A.shape[0],
            tol=1e-3,
            generator=gen(seed),
            vector_dtype=F64,
            block=block,
        )
        assert res.converged
        hits += int(abs(res.eigenvalues[0] - 10.0) <= res.bounds[0])
    return hits


@pytest.mark.parametrize("gap", [0.003, 0.01])
def test_block_of_two_covers_lambda_1_of_a_near_degenerate_pair(gap: float) -> None:
    A = pair_matrix(gap)
    assert covered(A, block=2) >= 49
    # a single start vector is the defect: it misses λ₁ in several runs
    assert covered(A, block=1) <= 47


def test_band_relation_holds() -> None:
    """``H Q_m = Q_m T_m + P C`` with an orthonormal basis (to rounding)."""
    A, _ = random_symmetric(torch.linspace(-1, 5, 120, dtype=F64), 2)
    proc = BandLanczosProcess(lambda v: A @ v, 120, block=3, generator=gen(), dtype=F64)
    for _ in range(20):
        proc.step()
    Q = proc.basis.T
    assert Q.shape == (120, 20)
    eye = torch.eye(20, dtype=F64)
    assert float((Q.T @ Q - eye).abs().max()) < 1e-12
    P = proc._Q[20 : 20 + proc.pending].T
    lhs = A @ Q
    rhs = Q @ proc.tridiagonal() + P @ torch.from_numpy(proc._leak())
    assert float((lhs - rhs).abs().max()) < 1e-10
    # Ritz residuals from C equal the true ones
    theta, S, res = proc.ritz()
    Y = Q @ S
    true = torch.linalg.vector_norm(A @ Y - Y * torch.from_numpy(theta), dim=0)
    assert np.allclose(res, true.numpy(), atol=1e-10)


def test_repeated_top_eigenvalue_is_found_with_its_multiplicity() -> None:
    """λ = 10 three times, then 9, 8: top-3 is 10, 10, 10 (the block widens)."""
    evals = torch.cat(
        [
            torch.tensor([10.0, 10.0, 10.0, 9.0, 8.0], dtype=F64),
            torch.linspace(-1, 4, 195, dtype=F64),
        ]
    )
    A, _ = random_symmetric(evals, 4)
    for seed in range(5):
        res = lanczos(
            lambda v: A @ v,
            200,
            k=3,
            tol=1e-6,
            generator=gen(seed),
            block=2,
            vector_dtype=F64,
        )
        assert res.converged
        assert res.block >= 3
        assert np.allclose(res.eigenvalues, 10.0, atol=1e-6 * 10), res.eigenvalues
        k5 = lanczos(
            lambda v: A @ v,
            200,
            k=5,
            tol=1e-6,
            generator=gen(seed),
            block=2,
            vector_dtype=F64,
        )
        assert k5.converged
        assert np.allclose(k5.eigenvalues, [10, 10, 10, 9, 8], atol=1e-5)
    # a single vector sees one copy: top-3 would be 10, 9, 8
    single = lanczos(
        lambda v: A @ v, 200, k=3, tol=1e-6, generator=gen(0), vector_dtype=F64
    )
    assert np.allclose(single.eigenvalues, [10, 9, 8], atol=1e-5)


def test_out_of_products_before_the_multiplicity_is_known_says_so() -> None:
    evals = torch.cat(
        [
            torch.tensor([10.0] * 4, dtype=F64),
            torch.linspace(-1, 4, 96, dtype=F64),
        ]
    )
    A, _ = random_symmetric(evals, 5)
    res = lanczos(
        lambda v: A @ v,
        100,
        k=3,
        tol=1e-3,
        generator=gen(),
        block=2,
        max_matvecs=16,
        vector_dtype=F64,
    )
    assert not res.converged
    assert res.stopped_by == "multiplicity"


def test_band_process_deflates_like_a_lanczos_one() -> None:
    """Continued by krylov_deflation (as frobenius does after spectral): the
    deflation's projected matrix and leak are exact for the band basis."""
    A, _ = random_symmetric(torch.linspace(-2, 6, 80, dtype=F64), 6)
    res = lanczos(
        lambda v: A @ v, 80, tol=1e-6, generator=gen(), block=2, vector_dtype=F64
    )
    assert res.process is not None
    d = krylov_deflation(lambda v: A @ v, 80, 30, process=res.process)
    exact = Deflation.compute(lambda v: A @ v, res.process.basis.T.clone())
    assert torch.allclose(d.projected, exact.projected, atol=1e-10)
    assert d.leak == pytest.approx(exact.leak, rel=1e-8, abs=1e-10)


class BlockMatrix:
    """A dense matrix as an operator that multiplies a block in one call."""

    block_products = True

    def __init__(self, A: torch.Tensor) -> None:
        self.A = A
        self.dtype = A.dtype
        self.calls = 0
        self.vectors = 0

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        self.vectors += 1 if v.dim() == 1 else v.shape[1]
        return self.A @ v


@pytest.mark.parametrize("gap", [0.003, 0.1])
def test_block_products_run_the_same_recurrence_in_half_the_calls(gap: float) -> None:
    """Band Lanczos multiplies its pending rows together, with the same result.

    The rows are never changed once written, so the products taken early are
    the products the one-at-a-time run takes later: the same Ritz values (to
    float64 rounding of a different summation order, 1e-12 relative), the
    same steps, and about half the operator calls for a block of two.
    """
    A = pair_matrix(gap)
    for seed in range(5):
        one = lanczos(
            lambda v: A @ v,
            A.shape[0],
            tol=1e-3,
            generator=gen(seed),
            block=2,
            vector_dtype=F64,
        )
        op = BlockMatrix(A)
        both = lanczos(op, A.shape[0], tol=1e-3, generator=gen(seed), block=2)
        assert both.converged
        assert one.converged
        assert len(both.eigenvalues) == len(one.eigenvalues)
        np.testing.assert_allclose(both.eigenvalues, one.eigenvalues, rtol=1e-12)
        np.testing.assert_allclose(both.bounds, one.bounds, rtol=1e-6, atol=1e-12)
        # a block product may compute the next pending row's product before
        # the run stops: at most block - 1 = 1 product more
        assert one.n_matvecs <= both.n_matvecs <= one.n_matvecs + 1
        assert op.vectors == both.n_matvecs
        assert op.calls <= (both.n_matvecs + 1) // 2 + 2  # + the widening steps


def test_block_products_keep_the_coverage_of_a_near_degenerate_pair() -> None:
    A = pair_matrix(0.003)
    hits = 0
    for seed in range(50):
        res = lanczos(
            BlockMatrix(A), A.shape[0], tol=1e-3, generator=gen(seed), block=2
        )
        hits += int(abs(res.eigenvalues[0] - 10.0) <= res.bounds[0])
    assert hits >= 49


def test_block_products_stay_within_max_matvecs() -> None:
    A = pair_matrix(0.003)
    for limit in (5, 6, 7):
        op = BlockMatrix(A)
        res = lanczos(
            op, A.shape[0], tol=1e-9, generator=gen(0), block=2, max_matvecs=limit
        )
        assert res.n_matvecs <= limit
        assert op.vectors <= limit


def test_a_matvec_without_blocks_is_refused_in_one_line() -> None:
    A = pair_matrix(0.1)
    proc = BandLanczosProcess(
        lambda v: A @ v[:, 0], A.shape[0], dtype=F64, block_products=True
    )
    with pytest.raises(ConfigError, match="block_products=False"):
        proc.step()


def swapped_pair(gap: float, n: int = 300) -> tuple[torch.Tensor, torch.Tensor]:
    """A full matrix (λ₁ = 10 on e₁) and a 'subsample' whose top is λ₂'s vector.

    The subsample shares the eigenbasis but swaps the pair and moves the bulk
    a little: its top Ritz vector points at the *wrong* eigenvector, the worst
    case for a warm start.
    """
    g = gen(7)
    bulk = torch.rand(n - 2, generator=g, dtype=F64) * 5 - 1
    top = torch.tensor([10.0, 10.0 * (1 - gap)], dtype=F64)
    full = torch.cat([top, bulk])
    sub = torch.cat([top.flip(0), bulk * 1.05])
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=F64))
    return (q * full) @ q.T, (q * sub) @ q.T


def test_a_subsample_start_cannot_hide_lambda_1() -> None:
    """Started from a subsample that favours λ₂, the full run still covers λ₁.

    The random part of the start and the second start vector of the block
    reach λ₁: ≥ 49 of 50 seeds (the issue-22 criterion), at a 1 % gap.
    """
    A, S = swapped_pair(0.01)
    hits = 0
    for seed in range(50):
        g = gen(seed)
        v0 = subsample_start(S.__matmul__, A.shape[0], generator=g, vector_dtype=F64)
        res = lanczos(A.__matmul__, A.shape[0], tol=1e-3, v0=v0, generator=g, block=2)
        assert res.converged
        hits += int(abs(res.eigenvalues[0] - 10.0) <= res.bounds[0])
    assert hits >= 49


def test_a_good_subsample_start_saves_full_products() -> None:
    """A subsample close to the full matrix (the trained-classifier case) saves.

    ``S = A + E`` with ‖E‖ = 1 % of ‖A‖, a 10 % gap: the full run from the
    subsample's Ritz vector needs fewer full products than from two random
    vectors (medians over 10 seeds), with the same certified answer, under
    the same stopping rule (a warm start keeps the 1 % safeguard that random
    starts relax to 5 %, so the cold run is held to it here).
    """
    A = pair_matrix(0.1)
    E = torch.randn(300, 300, generator=gen(5), dtype=F64)
    E = (E + E.T) / 2
    S = A + 0.1 * E / torch.linalg.matrix_norm(E, ord=2)
    cold, warm = [], []
    for seed in range(10):
        ref = lanczos(
            A.__matmul__,
            300,
            tol=1e-3,
            generator=gen(seed),
            block=2,
            vector_dtype=F64,
            min_gap=MIN_GAP,
        )
        g = gen(seed)
        v0 = subsample_start(S.__matmul__, 300, generator=g, vector_dtype=F64)
        res = lanczos(A.__matmul__, 300, tol=1e-3, v0=v0, generator=g, block=2)
        assert abs(res.eigenvalues[0] - 10.0) <= res.bounds[0]
        assert abs(ref.eigenvalues[0] - 10.0) <= ref.bounds[0]
        cold.append(ref.n_matvecs)
        warm.append(res.n_matvecs)
    assert np.median(warm) < np.median(cold)


def test_subsample_start_refuses_no_steps() -> None:
    with pytest.raises(ConfigError, match="steps must be >= 1"):
        subsample_start(lambda v: v, 10, steps=0)


def outliers_matrix(n: int = 400) -> torch.Tensor:
    """A trained classifier's shape: ten outliers 12-45 % apart over a bulk near 0."""
    g = gen(9)
    top = torch.tensor([51.6, 45.6, 38.3, 32.9, 29.3, 25, 20, 15, 12, 9], dtype=F64)
    bulk = torch.rand(n - 10, generator=g, dtype=F64) ** 6 * 5
    A, _ = random_symmetric(torch.cat([top, bulk - 0.3]), 8)
    return A


def test_random_blocks_trust_the_gap_from_five_percent() -> None:
    """A block of random start vectors relaxes the gap bound's safeguard.

    ``BAND_MIN_GAP`` (0.05) instead of ``MIN_GAP`` (0.01): on an outliers-over-
    a-bulk spectrum (the benchmark MLP's shape) the run stops earlier (median
    over 10 seeds, at least one product fewer), and on the spectrum that
    motivated the safeguard (10, 9, 8.5 over a bulk: one start vector
    without it claims too much, ``test_lanczos.py``) every bound of the block
    stays honest over 30 seeds.
    """
    A = outliers_matrix()
    relaxed, strict = [], []
    for seed in range(10):
        for out, mg in ((relaxed, None), (strict, MIN_GAP)):
            res = lanczos(
                A.__matmul__,
                400,
                tol=1e-3,
                generator=gen(seed),
                block=2,
                vector_dtype=F64,
                min_gap=mg,
            )
            assert res.converged
            assert abs(res.eigenvalues[0] - 51.6) <= res.bounds[0]
            out.append(res.n_matvecs)
    assert np.median(relaxed) <= np.median(strict) - 1
    g = gen(11)
    bulk = torch.rand(297, generator=g, dtype=F64) * 4 - 1
    B, _ = random_symmetric(
        torch.cat([torch.tensor([10.0, 9.0, 8.5], dtype=F64), bulk]), 5
    )
    for seed in range(30):
        res = lanczos(
            B.__matmul__, 300, tol=1e-3, generator=gen(seed), block=2, vector_dtype=F64
        )
        assert res.converged
        assert abs(res.eigenvalues[0] - 10.0) <= res.bounds[0], seed


def test_a_warm_start_keeps_the_one_percent_safeguard() -> None:
    """With ``v0`` the relaxed safeguard would let a start near λ₂ stop early.

    The subsample start that favours λ₂ of a pair 1 % apart, held to
    ``BAND_MIN_GAP``, misses λ₁ in some of 50 seeds; the default for a warm
    start (``MIN_GAP``) misses none (``test_a_subsample_start_cannot_hide_lambda_1``).
    """
    A, S = swapped_pair(0.01)
    misses = 0
    for seed in range(50):
        g = gen(seed)
        v0 = subsample_start(S.__matmul__, 300, generator=g, vector_dtype=F64)
        res = lanczos(
            A.__matmul__,
            300,
            tol=1e-3,
            v0=v0,
            generator=g,
            block=2,
            min_gap=BAND_MIN_GAP,
        )
        misses += int(abs(res.eigenvalues[0] - 10.0) > res.bounds[0])
    assert misses > 0
