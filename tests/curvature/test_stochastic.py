"""Stochastic estimators against exact traces, Frobenius norms and spectra.

Statistical checks use fixed seeds, so they are deterministic: each would fail
for a biased estimator or a wrong standard error, and passes for a correct one
with the stated margins (coverage of a 3-stderr interval is ~99 % in theory; the
tests demand 90 % over 40 seeds because each stderr is itself estimated from few
probes).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from cases import CASES, random_symmetric
from cases import reference_hessian as ref_h

from sharpkit.curvature.lanczos import lanczos
from sharpkit.curvature.operator import HessianOperator
from sharpkit.curvature.stochastic import (
    FROBENIUS_MIN_PROBES,
    Deflation,
    frobenius_norm,
    hutchinson_trace,
    hutchpp_trace,
    krylov_deflation,
    slq_density,
    t_factor,
)
from sharpkit.errors import ConfigError

F64 = torch.float64
SEEDS = range(40)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def outlier_matrix(n: int = 120, seed: int = 0) -> torch.Tensor:
    """Outliers 40, 25, 15, 10 over a bulk in [-0.5, 2]: a Hessian-like spectrum."""
    g = gen(seed + 50)
    bulk = torch.rand(n - 4, generator=g, dtype=F64) * 2.5 - 0.5
    evals = torch.cat([torch.tensor([40.0, 25.0, 15.0, 10.0], dtype=F64), bulk])
    A, _ = random_symmetric(evals, seed)
    return A


def check_coverage(values, stderrs, truth, probes: int) -> None:
    values, stderrs = np.asarray(values), np.asarray(stderrs)
    inside = np.abs(values - truth) <= 3 * stderrs
    assert inside.mean() >= 0.9, (inside.mean(), values, truth)
    # unbiased: the mean over seeds is within 3 of its own standard errors
    spread = values.std(ddof=1) / math.sqrt(len(values))
    assert abs(values.mean() - truth) <= 3 * spread
    # the reported stderr, without its Student-t widening, matches the spread
    # across seeds: never much below it (an honest error bar) and at most 35 %
    # above (the variance bound it may use is conservative by design)
    plain = stderrs / t_factor(probes - 1)
    ratio = np.sqrt(np.mean(plain**2)) / values.std(ddof=1)
    assert 0.8 < ratio < 1.35, ratio


@pytest.mark.parametrize("distribution", ["rademacher", "gaussian", "orthogonal"])
def test_hutchinson_is_unbiased_with_honest_stderr(distribution: str) -> None:
    A = outlier_matrix()
    truth = float(torch.trace(A))
    runs = [
        hutchinson_trace(
            lambda v: A @ v,
            120,
            probes=16,
            generator=gen(s),
            distribution=distribution,
            vector_dtype=F64,
        )
        for s in SEEDS
    ]
    check_coverage([r.value for r in runs], [r.stderr for r in runs], truth, 16)
    assert all(r.n_matvecs == 16 for r in runs)


def test_error_shrinks_as_probes_grow() -> None:
    A = outlier_matrix()
    truth = float(torch.trace(A))

    def mean_abs_error(probes: int) -> float:
        errs = [
            abs(
                hutchinson_trace(
                    lambda v: A @ v,
                    120,
                    probes=probes,
                    generator=gen(s),
                    vector_dtype=F64,
                ).value
                - truth
            )
            for s in range(30)
        ]
        return float(np.mean(errs))

    e8, e64 = mean_abs_error(8), mean_abs_error(64)
    assert e64 < 0.6 * e8  # sqrt(8) = 2.8x in theory


@pytest.mark.parametrize("sketch", ["lanczos", "random"])
def test_hutchpp_is_unbiased_and_beats_hutchinson(sketch: str) -> None:
    A = outlier_matrix()
    truth = float(torch.trace(A))
    runs = [
        hutchpp_trace(
            lambda v: A @ v,
            120,
            sketch=sketch,
            sketch_size=8,
            probes=16,
            generator=gen(s),
            vector_dtype=F64,
        )
        for s in SEEDS
    ]
    check_coverage([r.value for r in runs], [r.stderr for r in runs], truth, 16)
    plain = [
        hutchinson_trace(
            lambda v: A @ v, 120, probes=16, generator=gen(s), vector_dtype=F64
        )
        for s in SEEDS
    ]
    assert np.mean([r.stderr for r in runs]) < 0.5 * np.mean([r.stderr for r in plain])
    expected = 8 + 16 if sketch == "lanczos" else 2 * 8 + 16
    assert runs[0].n_matvecs == expected
    assert runs[0].deflation_rank == 8


def test_frobenius_is_unbiased_with_honest_stderr() -> None:
    A = outlier_matrix()
    truth = float(torch.linalg.matrix_norm(A))
    runs = [
        frobenius_norm(
            lambda v: A @ v,
            120,
            deflation_steps=6,
            probes=12,
            generator=gen(s),
            vector_dtype=F64,
        )
        for s in SEEDS
    ]
    # ‖H‖_F = sqrt(S) is a (slightly) biased function of an unbiased S; the
    # bias (~se²/F) is far below the 3-stderr margin here. Check S itself too.
    check_coverage([r.value for r in runs], [r.stderr for r in runs], truth, 12)
    squares = [r.value**2 for r in runs]
    assert abs(np.mean(squares) - truth**2) <= 3 * np.std(squares) / math.sqrt(40)
    assert runs[0].n_matvecs == 6 + 12


def test_frobenius_deflation_reduces_variance() -> None:
    A = outlier_matrix()

    def stderr(steps: int) -> float:
        return float(
            np.mean(
                [
                    frobenius_norm(
                        lambda v: A @ v,
                        120,
                        deflation_steps=steps,
                        probes=12,
                        generator=gen(s),
                        vector_dtype=F64,
                    ).stderr
                    for s in range(10)
                ]
            )
        )

    assert stderr(8) < 0.2 * stderr(0)


def test_t_factor_matches_student_quantiles() -> None:
    # t_{0.975, df} from tables (R: qt(0.975, df)); 3e-5 is the expansion's
    # stated relative accuracy beyond the exact table (df <= 6)
    known = {1: 12.7062047, 3: 3.1824463, 6: 2.4469118, 7: 2.3646243,
             10: 2.2281389, 30: 2.0422725, 100: 1.9839715, 1000: 1.9623391}  # fmt: skip
    for df, q in known.items():
        assert t_factor(df) * 1.959963984540054 == pytest.approx(q, rel=3e-5), df
    assert t_factor(10**6) == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(ConfigError, match="degrees of freedom"):
        t_factor(0)


@pytest.mark.parametrize("deflate", [0, 10])
def test_orthogonal_probes_become_exact_and_never_exceed_n(deflate: int) -> None:
    n = 60
    A = outlier_matrix(n)
    mv = lambda v: A @ v  # noqa: E731
    D = krylov_deflation(mv, n, deflate, generator=gen(1), vector_dtype=F64)
    D = D if deflate else None
    tr = hutchinson_trace(
        mv, n, deflation=D, target_rel_stderr=1e-9, generator=gen(2), vector_dtype=F64
    )
    # a target that independent probes could reach only after ~1e18 products:
    # the orthogonal probes span the rest of the space and the value is exact
    assert tr.distribution == "orthogonal"
    assert tr.exhausted
    assert tr.converged
    assert tr.n_matvecs == n - deflate
    assert tr.expected_matvecs is not None
    assert tr.expected_matvecs >= n
    assert tr.stderr == 0.0
    assert tr.value == pytest.approx(float(torch.trace(A)), rel=1e-10)
    fro = frobenius_norm(
        mv,
        n,
        deflation=D,
        deflation_steps=0,
        target_rel_stderr=1e-9,
        generator=gen(3),
        vector_dtype=F64,
    )
    assert fro.exhausted
    assert fro.n_matvecs == n - deflate
    assert fro.value == pytest.approx(float(torch.linalg.matrix_norm(A)), rel=1e-10)
    # independent probes would go on to the 10,000-probe cap instead
    capped = hutchinson_trace(
        mv,
        n,
        target_rel_stderr=1e-9,
        max_matvecs=3 * n,
        generator=gen(2),
        distribution="rademacher",
        vector_dtype=F64,
    )
    assert not capped.converged
    assert capped.n_matvecs == 3 * n


def test_orthogonal_probes_have_the_finite_population_variance() -> None:
    # k = d/2 orthogonal probes: the spread over seeds is sqrt(1/2) of that of
    # independent ones, and the reported stderr follows it (check_coverage)
    A = outlier_matrix()
    truth = float(torch.trace(A))

    def runs(distribution: str) -> list:
        return [
            hutchinson_trace(
                lambda v: A @ v,
                120,
                probes=60,
                generator=gen(s),
                distribution=distribution,
                vector_dtype=F64,
            )
            for s in SEEDS
        ]

    ortho, gauss = runs("orthogonal"), runs("gaussian")
    check_coverage([r.value for r in ortho], [r.stderr for r in ortho], truth, 60)
    ratio = np.std([r.value for r in ortho]) / np.std([r.value for r in gauss])
    # theory: sqrt((d - k)/(d - 1)) ≈ 0.71 times the (slightly larger) Gaussian
    # variance; 40 seeds estimate each spread to ~11 %
    assert 0.5 < ratio < 0.85, ratio


def test_frobenius_waits_for_sixteen_probes() -> None:
    A = outlier_matrix()
    est = frobenius_norm(
        lambda v: A @ v,
        120,
        deflation_steps=40,
        target_rel_stderr=0.5,
        generator=gen(0),
        vector_dtype=F64,
    )
    assert est.converged
    assert est.n_matvecs == 40 + FROBENIUS_MIN_PROBES == 56


def test_full_rank_deflation_is_exact() -> None:
    A = outlier_matrix(30)
    est = frobenius_norm(
        lambda v: A @ v, 30, deflation_steps=30, generator=gen(0), vector_dtype=F64
    )
    assert est.stderr == 0.0
    assert est.value == pytest.approx(float(torch.linalg.matrix_norm(A)), rel=1e-10)
    D = krylov_deflation(lambda v: A @ v, 30, 30, generator=gen(0), vector_dtype=F64)
    assert D.trace == pytest.approx(float(torch.trace(A)), rel=1e-10)


def test_deflation_constructors_agree_with_explicit_formulas() -> None:
    A = outlier_matrix()
    mv = lambda v: A @ v  # noqa: E731
    D = krylov_deflation(mv, 120, 10, generator=gen(1), vector_dtype=F64)
    Q = D.basis
    P = torch.eye(120, dtype=F64) - Q @ Q.T
    np.testing.assert_allclose(D.projected.numpy(), (Q.T @ A @ Q).numpy(), atol=1e-10)
    assert D.leak == pytest.approx(
        float(torch.linalg.matrix_norm(P @ A @ Q) ** 2), rel=1e-8
    )
    E = Deflation.compute(mv, Q)
    assert E.n_matvecs == 10
    np.testing.assert_allclose(E.projected.numpy(), D.projected.numpy(), atol=1e-10)
    assert E.leak == pytest.approx(D.leak, rel=1e-8)
    res = lanczos(mv, 120, k=3, tol=1e-3, generator=gen(2), vector_dtype=F64)
    R = Deflation.from_ritz(res.eigenvectors, res.eigenvalues, res.residuals)
    Y = res.eigenvectors
    Py = torch.eye(120, dtype=F64) - Y @ Y.T
    assert R.leak == pytest.approx(
        float(torch.linalg.matrix_norm(Py @ A @ Y) ** 2), rel=1e-6
    )
    np.testing.assert_allclose(R.projected.numpy(), (Y.T @ A @ Y).numpy(), atol=1e-9)
    L = Deflation.from_lanczos(res)
    assert L.rank == res.n_matvecs
    # projecting twice leaves a vector orthogonal to the basis
    v = torch.randn(120, generator=gen(3), dtype=F64)
    assert float((L.basis.T @ L.project(v)).abs().max()) < 1e-12


def test_continuing_a_lanczos_process() -> None:
    A = outlier_matrix()
    mv = lambda v: A @ v  # noqa: E731
    res = lanczos(mv, 120, k=1, tol=1e-3, generator=gen(4), vector_dtype=F64)
    assert res.process is not None
    m = res.n_matvecs
    D = krylov_deflation(mv, 120, m + 5, process=res.process)
    assert D.n_matvecs == 5
    assert D.rank == m + 5


@pytest.mark.parametrize("name", ["bn-mlp", "conv"])
def test_network_trace_and_frobenius(name: str) -> None:
    case = CASES[name]()
    dense = ref_h(case)
    H = HessianOperator(case.model, case.loss_fn, case.data, batch_size=case.batch_size)
    tr = [
        hutchpp_trace(H, H.n, sketch_size=6, probes=10, generator=gen(s))
        for s in range(20)
    ]
    truth = float(torch.trace(dense))
    inside = [abs(r.value - truth) <= 3 * r.stderr for r in tr]
    assert np.mean(inside) >= 0.9
    fr = [
        frobenius_norm(H, H.n, deflation_steps=6, probes=10, generator=gen(s))
        for s in range(20)
    ]
    ftruth = float(torch.linalg.matrix_norm(dense))
    inside = [abs(r.value - ftruth) <= 3 * r.stderr for r in fr]
    assert np.mean(inside) >= 0.9


def test_target_and_budget_stopping() -> None:
    A = outlier_matrix()
    mv = lambda v: A @ v  # noqa: E731
    est = hutchinson_trace(
        mv, 120, target_rel_stderr=0.02, generator=gen(0), vector_dtype=F64
    )
    assert est.converged
    assert est.stderr <= 0.02 * abs(est.value)
    assert est.n_matvecs >= 8  # min_probes
    capped = hutchinson_trace(
        mv,
        120,
        target_rel_stderr=1e-6,
        max_matvecs=12,
        generator=gen(0),
        vector_dtype=F64,
    )
    assert not capped.converged
    assert capped.n_matvecs == 12
    fro = frobenius_norm(
        mv,
        120,
        target_rel_stderr=1e-9,
        max_matvecs=20,
        generator=gen(0),
        vector_dtype=F64,
    )
    assert not fro.converged
    assert fro.n_matvecs == 20
    pp = hutchpp_trace(mv, 120, max_matvecs=30, generator=gen(0), vector_dtype=F64)
    assert pp.n_matvecs == 30
    with pytest.raises(ConfigError, match="leaves"):
        hutchpp_trace(mv, 120, sketch_size=10, max_matvecs=11, vector_dtype=F64)


def test_reproducible_from_a_generator() -> None:
    A = outlier_matrix()
    mv = lambda v: A @ v  # noqa: E731
    a = frobenius_norm(mv, 120, probes=5, generator=gen(9), vector_dtype=F64)
    b = frobenius_norm(mv, 120, probes=5, generator=gen(9), vector_dtype=F64)
    c = frobenius_norm(mv, 120, probes=5, generator=gen(10), vector_dtype=F64)
    assert a.value == b.value
    assert a.value != c.value
    d1 = slq_density(mv, 120, probes=2, steps=10, generator=gen(9), vector_dtype=F64)
    d2 = slq_density(mv, 120, probes=2, steps=10, generator=gen(9), vector_dtype=F64)
    np.testing.assert_array_equal(d1.nodes, d2.nodes)


def test_slq_density_integrates_to_one_with_the_right_moments() -> None:
    A = outlier_matrix()
    n = 120
    est = slq_density(
        lambda v: A @ v, n, probes=60, steps=20, generator=gen(0), vector_dtype=F64
    )
    np.testing.assert_allclose(est.weights.sum(axis=1), 1.0, atol=1e-12)
    assert np.trapezoid(est.density, est.grid) == pytest.approx(1.0, abs=1e-3)
    first, second = est.moments()
    per_probe_first = (est.weights * est.nodes).sum(axis=1)
    per_probe_second = (est.weights * est.nodes**2).sum(axis=1)
    se1 = per_probe_first.std(ddof=1) / math.sqrt(60)
    se2 = per_probe_second.std(ddof=1) / math.sqrt(60)
    assert abs(first - float(torch.trace(A)) / n) <= 3 * se1
    assert abs(second - float(torch.trace(A @ A)) / n) <= 3 * se2
    # the smoothed density keeps the mean and adds sigma² to the second moment
    m1 = np.trapezoid(est.grid * est.density, est.grid)
    m2 = np.trapezoid(est.grid**2 * est.density, est.grid)
    assert m1 == pytest.approx(first, abs=1e-3 * max(1, abs(first)))
    assert m2 == pytest.approx(second + est.sigma**2, rel=1e-3)
    # the scalar is the Hutchinson trace with its stderr
    assert est.trace == pytest.approx(n * first, rel=1e-10)
    assert abs(est.trace - float(torch.trace(A))) <= 3 * est.trace_stderr
    assert est.n_matvecs == 60 * 20


def test_slq_with_full_krylov_space_recovers_the_spectrum() -> None:
    evals = torch.tensor([5.0, 3.0, 1.0, -1.0, 0.5], dtype=F64)
    A, _ = random_symmetric(evals, 3)
    est = slq_density(
        lambda v: A @ v, 5, probes=3, steps=10, generator=gen(0), vector_dtype=F64
    )
    assert est.nodes.shape == (3, 5)
    np.testing.assert_allclose(
        np.sort(est.nodes[0]), np.sort(evals.numpy()), atol=1e-10
    )


def test_slq_on_a_network_hessian() -> None:
    case = CASES["bn-mlp"]()
    dense = ref_h(case)
    H = HessianOperator(case.model, case.loss_fn, case.data, batch_size=16)
    est = slq_density(H, H.n, probes=30, steps=15, generator=gen(1))
    truth = float(torch.trace(dense))
    assert abs(est.trace - truth) <= 3 * est.trace_stderr
    assert est.nodes.max() <= float(torch.linalg.eigvalsh(dense).max()) + 1e-8


def test_bad_arguments() -> None:
    A = outlier_matrix()
    mv = lambda v: A @ v  # noqa: E731
    with pytest.raises(ConfigError, match="distribution"):
        hutchinson_trace(mv, 120, distribution="uniform", vector_dtype=F64)
    with pytest.raises(ConfigError, match="distribution"):
        frobenius_norm(mv, 120, distribution="uniform", vector_dtype=F64)
    with pytest.raises(ConfigError, match="distribution"):
        hutchpp_trace(mv, 120, distribution="sobol", vector_dtype=F64)
    with pytest.raises(ConfigError, match="target"):
        hutchinson_trace(mv, 120, target_rel_stderr=0, vector_dtype=F64)
    with pytest.raises(ConfigError, match="min_probes"):
        hutchinson_trace(mv, 120, min_probes=1, vector_dtype=F64)
    with pytest.raises(ConfigError, match="max_matvecs"):
        hutchinson_trace(mv, 120, max_matvecs=0, vector_dtype=F64)
    with pytest.raises(ConfigError, match="sketch"):
        hutchpp_trace(mv, 120, sketch="gauss", vector_dtype=F64)
    with pytest.raises(ConfigError, match="probes and steps"):
        slq_density(mv, 120, probes=0, vector_dtype=F64)
    with pytest.raises(ConfigError, match="sigma"):
        slq_density(mv, 120, sigma=-1.0, vector_dtype=F64)


def test_slq_target_and_budget() -> None:
    A = outlier_matrix()
    mv = lambda v: A @ v  # noqa: E731
    est = slq_density(
        mv,
        120,
        probes=2,
        steps=10,
        target_rel_stderr=0.05,
        generator=gen(0),
        vector_dtype=F64,
    )
    assert est.trace_stderr <= 0.05 * abs(est.trace)
    assert est.nodes.shape[0] == len(est.samples) >= 2
    capped = slq_density(
        mv,
        120,
        probes=2,
        steps=10,
        target_rel_stderr=1e-9,
        max_matvecs=35,
        generator=gen(0),
        vector_dtype=F64,
    )
    assert capped.n_matvecs == 30  # a fourth probe could exceed the budget
    assert capped.nodes.shape == (3, 10)
    with pytest.raises(ConfigError, match="less than one probe"):
        slq_density(mv, 120, steps=10, max_matvecs=5, vector_dtype=F64)
