"""Lanczos against known spectra and dense float64 Hessians.

Tolerances: in float64 with ``tol=1e-10`` the Ritz values converge to ~1e-12
relative, so "1e-6 relative vs torch.func.hessian" (the issue's figure) has a
wide margin; bounds are checked to cover the true error at every tolerance.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from cases import CASES, quadratic, random_symmetric
from cases import reference_hessian as ref_h

from sharpkit.curvature.lanczos import LanczosProcess, lanczos, ritz_bounds
from sharpkit.curvature.operator import HessianOperator
from sharpkit.errors import ConfigError

F64 = torch.float64


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def spectrum_matrix(seed: int = 0) -> tuple[torch.Tensor, np.ndarray]:
    """200x200 with outliers 10, 8, 7.5, 5 and a bulk in [-1, 2]."""
    g = gen(seed + 100)
    bulk = torch.rand(196, generator=g, dtype=F64) * 3 - 1
    evals = torch.cat([torch.tensor([10.0, 8.0, 7.5, 5.0], dtype=F64), bulk])
    A, _ = random_symmetric(evals, seed)
    return A, np.sort(evals.numpy())[::-1]


@pytest.mark.parametrize("k", [1, 3])
def test_known_spectrum_top_k(k: int) -> None:
    A, truth = spectrum_matrix()
    res = lanczos(
        lambda v: A @ v, 200, k=k, tol=1e-10, generator=gen(), vector_dtype=F64
    )
    assert res.converged
    np.testing.assert_allclose(res.eigenvalues, truth[:k], rtol=1e-9)
    assert res.eigenvectors.shape == (200, k)
    assert res.eigenvectors.dtype == F64
    # Ritz vectors are eigenvectors: explicit residuals match the reported ones
    for i in range(k):
        y = res.eigenvectors[:, i]
        explicit = float(torch.linalg.vector_norm(A @ y - res.eigenvalues[i] * y))
        assert explicit == pytest.approx(res.residuals[i], abs=1e-10)
    assert res.n_matvecs == len(res.alphas) == len(res.betas) + 1
    assert list(res.eigenvalues) == sorted(res.eigenvalues, reverse=True)


def test_smallest_and_both_ends() -> None:
    A, truth = spectrum_matrix()
    low = lanczos(
        lambda v: A @ v,
        200,
        k=2,
        which="smallest",
        tol=1e-8,
        generator=gen(),
        vector_dtype=F64,
    )
    assert low.converged
    np.testing.assert_allclose(low.eigenvalues, truth[-2:], atol=1e-7 * 10)
    both = lanczos(
        lambda v: A @ v,
        200,
        k=2,
        which="both",
        tol=1e-8,
        generator=gen(),
        vector_dtype=F64,
    )
    assert both.converged
    np.testing.assert_allclose(
        both.eigenvalues, np.r_[truth[:2], truth[-2:]], atol=1e-7 * 10
    )


@pytest.mark.parametrize("name", ["bn-mlp", "conv"])
def test_top_eigenvalues_of_networks_match_torch_func_hessian(
    name: str, device: str
) -> None:
    case = CASES[name]()
    dense = ref_h(case)
    truth = torch.linalg.eigvalsh(dense).flip(0).numpy()
    H = HessianOperator(
        case.model, case.loss_fn, case.data, batch_size=case.batch_size, device=device
    )
    res = lanczos(H, H.n, k=3, tol=1e-10, generator=gen(3))
    assert res.converged
    # the requirement: 1e-6 relative
    np.testing.assert_allclose(res.eigenvalues, truth[:3], rtol=1e-6)
    assert np.all(np.abs(res.eigenvalues - truth[:3]) <= res.bounds + 1e-12)
    assert res.n_matvecs == H.hvp_count


@pytest.mark.parametrize("bound", ["gap", "residual"])
@pytest.mark.parametrize("tol", [1e-2, 1e-4, 1e-8])
def test_bounds_cover_the_true_error(bound: str, tol: float) -> None:
    A, truth = spectrum_matrix(seed=1)
    for seed in range(5):
        res = lanczos(
            lambda v: A @ v,
            200,
            k=3,
            tol=tol,
            generator=gen(seed),
            vector_dtype=F64,
            bound=bound,
        )
        assert res.converged
        err = np.abs(res.eigenvalues - truth[:3])
        assert np.all(err <= res.bounds), (seed, err, res.bounds)
        assert np.all(res.bounds <= tol * np.abs(res.eigenvalues))


def test_gap_bound_is_tighter_and_needs_fewer_products() -> None:
    A, _ = spectrum_matrix()
    gap = lanczos(
        lambda v: A @ v, 200, k=1, tol=1e-6, generator=gen(), vector_dtype=F64
    )
    resid = lanczos(
        lambda v: A @ v,
        200,
        k=1,
        tol=1e-6,
        generator=gen(),
        vector_dtype=F64,
        bound="residual",
    )
    assert gap.n_matvecs < resid.n_matvecs
    assert gap.gap_resolved[0]


def test_ritz_bounds_formula() -> None:
    theta = np.array([10.0, 7.0, 1.0])
    r = np.array([0.1, 0.5, 0.2])
    bounds, resolved = ritz_bounds(theta, r)
    # δ_0 = min(|10-7| - 0.5, |10-1| - 0.2) = 2.5 -> r²/δ = 0.004
    assert bounds[0] == pytest.approx(0.01 / 2.5)
    assert resolved.all()
    rb, _ = ritz_bounds(theta, r, kind="residual")
    np.testing.assert_array_equal(rb, r)
    # unresolved gap: fall back to the residual
    b2, res2 = ritz_bounds(np.array([1.0, 0.9]), np.array([0.2, 0.2]))
    assert not res2.any()
    np.testing.assert_array_equal(b2, [0.2, 0.2])
    with pytest.raises(ConfigError):
        ritz_bounds(theta, r, kind="bogus")


def test_low_rank_operator_restarts_after_breakdown() -> None:
    # rank 3: the Krylov space from one vector is invariant after 3 steps
    evals = torch.zeros(40, dtype=F64)
    evals[:3] = torch.tensor([5.0, 3.0, -2.0])
    A, _ = random_symmetric(evals, 2)
    # zero eigenvalues can only be certified relative to the norm
    res = lanczos(
        lambda v: A @ v,
        40,
        k=5,
        tol=1e-8,
        generator=gen(),
        vector_dtype=F64,
        scale="norm",
    )
    assert res.converged
    assert res.restarts >= 1
    np.testing.assert_allclose(res.eigenvalues, [5.0, 3.0, 0.0, 0.0, 0.0], atol=1e-9)
    # the Lanczos relation still holds: the basis is orthonormal
    Q = res.basis
    np.testing.assert_allclose((Q @ Q.T).numpy(), np.eye(len(Q)), atol=1e-10)


def test_tiny_operator_is_solved_exactly() -> None:
    A, _ = random_symmetric(torch.tensor([3.0, 2.0, 1.0], dtype=F64), 0)
    res = lanczos(lambda v: A @ v, 3, k=2, tol=1e-12, generator=gen(), vector_dtype=F64)
    assert res.converged
    assert res.n_matvecs == 3
    np.testing.assert_allclose(res.eigenvalues, [3.0, 2.0], rtol=1e-12)


def test_budget_exhaustion_reports_not_converged() -> None:
    A, _ = spectrum_matrix()
    res = lanczos(
        lambda v: A @ v,
        200,
        k=3,
        tol=1e-10,
        max_matvecs=4,
        generator=gen(),
        vector_dtype=F64,
    )
    assert not res.converged
    assert res.n_matvecs == 4
    res = lanczos(
        lambda v: A @ v,
        200,
        k=3,
        tol=1e-10,
        max_iter=6,
        generator=gen(),
        vector_dtype=F64,
    )
    assert not res.converged
    assert res.n_matvecs == 6


def test_warm_start_converges_faster() -> None:
    A, _ = spectrum_matrix()
    cold = lanczos(lambda v: A @ v, 200, tol=1e-8, generator=gen(), vector_dtype=F64)
    top = cold.eigenvectors[:, 0]
    noise = torch.randn(200, generator=gen(5), dtype=F64)
    warm = lanczos(
        lambda v: A @ v,
        200,
        tol=1e-8,
        generator=gen(),
        vector_dtype=F64,
        v0=top + 1e-3 * noise,
    )
    assert warm.converged
    assert warm.n_matvecs < cold.n_matvecs
    assert warm.eigenvalues[0] == pytest.approx(cold.eigenvalues[0], rel=1e-8)


def test_deterministic_for_a_seed() -> None:
    case = quadratic()
    H = HessianOperator(case.model, case.loss_fn, case.data)
    a = lanczos(H, H.n, k=2, tol=1e-6, generator=gen(7))
    b = lanczos(H, H.n, k=2, tol=1e-6, generator=gen(7))
    c = lanczos(H, H.n, k=2, tol=1e-6, generator=gen(8))
    np.testing.assert_array_equal(a.eigenvalues, b.eigenvalues)
    np.testing.assert_array_equal(a.alphas, b.alphas)
    assert not np.array_equal(a.alphas, c.alphas)


def test_quadratic_case_known_spectrum() -> None:
    case = quadratic()
    assert case.spectrum is not None
    H = HessianOperator(case.model, case.loss_fn, case.data, batch_size=4)
    res = lanczos(H, H.n, k=4, tol=1e-10, generator=gen(), vector_dtype=F64)
    np.testing.assert_allclose(res.eigenvalues, case.spectrum[:4].numpy(), rtol=1e-9)


def test_float32_operator_keeps_float64_tridiagonal() -> None:
    A, truth = spectrum_matrix()
    A32 = A.float()
    res = lanczos(lambda v: A32 @ v, 200, k=1, tol=1e-4, generator=gen())
    # float32 products: the default dtype of a plain callable is torch's default
    assert res.eigenvectors.dtype == torch.float32
    assert res.alphas.dtype == np.float64
    assert abs(res.eigenvalues[0] - truth[0]) <= res.bounds[0]
    # the rounding allowance keeps a float32 bound from claiming 1e-12
    tight = lanczos(
        lambda v: A32 @ v, 200, k=1, tol=1e-12, max_iter=60, generator=gen()
    )
    assert not tight.converged
    assert tight.bounds[0] >= 0.99 * 64 * torch.finfo(torch.float32).eps * 10


def test_progress_is_reported() -> None:
    A, _ = spectrum_matrix()
    calls: list[tuple[float, float | None, dict[str, float]]] = []

    def progress(done: float, total: float | None = None, **info: float) -> None:
        calls.append((done, total, info))

    res = lanczos(
        lambda v: A @ v,
        200,
        tol=1e-6,
        generator=gen(),
        vector_dtype=F64,
        progress=progress,
    )
    assert len(calls) == res.n_matvecs
    assert calls[-1][2]["estimate"] == pytest.approx(res.eigenvalues[0])


def test_bad_arguments() -> None:
    A, _ = spectrum_matrix()

    def mv(v: torch.Tensor) -> torch.Tensor:
        return A @ v

    with pytest.raises(ConfigError, match="which"):
        lanczos(mv, 200, vector_dtype=F64, which="middle")
    with pytest.raises(ConfigError, match="k must"):
        lanczos(mv, 200, vector_dtype=F64, k=0)
    with pytest.raises(ConfigError, match="tol"):
        lanczos(mv, 200, vector_dtype=F64, tol=0)
    with pytest.raises(ConfigError, match="v0"):
        lanczos(mv, 200, vector_dtype=F64, v0=torch.zeros(200, dtype=F64))
    with pytest.raises(ConfigError, match="v0 must have shape"):
        lanczos(mv, 200, vector_dtype=F64, v0=torch.ones(3, dtype=F64))
    with pytest.raises(ConfigError, match="max_matvecs"):
        lanczos(mv, 200, vector_dtype=F64, max_matvecs=0)
    with pytest.raises(ConfigError, match="bound"):
        lanczos(mv, 200, vector_dtype=F64, bound="tight")
    with pytest.raises(ConfigError, match="shape"):
        lanczos(lambda v: v[:3], 200, v0=torch.ones(200, dtype=F64))


def test_process_relation() -> None:
    """H Q = Q T + β q e_mᵀ after m steps."""
    A, _ = spectrum_matrix()
    proc = LanczosProcess(lambda v: A @ v, 200, generator=gen(), dtype=F64)
    for _ in range(12):
        proc.step()
    Q = proc.basis.T  # (n, m)
    T = proc.tridiagonal()
    lhs = A @ Q
    rhs = Q @ T
    rhs[:, -1] += proc.beta * proc.next_vector()
    assert float((lhs - rhs).abs().max()) < 1e-10


def test_safeguards_against_an_unresolved_cluster() -> None:
    """Top eigenvalues 10, 9, 8.5 over a bulk: early on, the Krylov space has not
    resolved λ₂, the estimated gap is far too large and r²/gap too small. The
    safeguards (residual within sqrt(tol·min_gap), two consistent steps) keep
    every reported bound honest; without them some runs claim too much."""
    g = gen(11)
    bulk = torch.rand(297, generator=g, dtype=F64) * 4 - 1
    evals = torch.cat([torch.tensor([10.0, 9.0, 8.5], dtype=F64), bulk])
    A, _ = random_symmetric(evals, 5)

    def violations(**kw: object) -> int:
        count = 0
        for seed in range(12):
            res = lanczos(
                lambda v: A @ v,
                300,
                tol=1e-3,
                generator=gen(seed),
                vector_dtype=F64,
                **kw,
            )
            assert res.converged
            count += int(abs(res.eigenvalues[0] - 10.0) > res.bounds[0])
        return count

    assert violations() == 0
    assert violations(min_gap=0.0, confirm=False) > 0
