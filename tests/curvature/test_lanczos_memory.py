"""What sharpkit keeps between products: the Lanczos basis under a memory budget.

Ground truth: a 200x200 float64 matrix with a known spectrum (outliers 10, 8,
7.5, 5 above a bulk in [-1, 2]). A float32 basis for float64 vectors keeps its
rows orthonormal to ~1e-7 only, so the Ritz values are exact to about float32's
epsilon times ‖T‖ (~1e-6 here): the tests ask for 1e-5 relative, and check that
the reported bounds (which then carry float32's rounding allowance) still cover
the true error.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from cases import random_symmetric

from sharpkit.curvature.lanczos import LanczosProcess, basis_plan, lanczos
from sharpkit.curvature.operator import full_precision
from sharpkit.curvature.stochastic import krylov_deflation, slq_density
from sharpkit.errors import ConfigError

F64 = torch.float64
N = 200


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def spectrum_matrix() -> tuple[torch.Tensor, np.ndarray]:
    g = gen(100)
    bulk = torch.rand(N - 4, generator=g, dtype=F64) * 3 - 1
    evals = torch.cat([torch.tensor([10.0, 8.0, 7.5, 5.0], dtype=F64), bulk])
    A, _ = random_symmetric(evals, 0)
    return A, np.sort(evals.numpy())[::-1]


def test_basis_plan_keeps_the_dtype_when_it_fits() -> None:
    assert basis_plan(N, F64, 41, None) == (F64, 41)
    assert basis_plan(N, F64, 41, 41 * N * 8) == (F64, 41)
    # 41 float64 rows do not fit, 41 float32 rows do: half the bytes per row
    assert basis_plan(N, F64, 41, 41 * N * 8 - 1) == (torch.float32, 41)
    # not even float32 fits them all: as many float32 rows as fit
    assert basis_plan(N, F64, 41, 20 * N * 4) == (torch.float32, 20)
    # float32 vectors are never stored in less: fewer rows instead
    assert basis_plan(N, torch.float32, 41, 20 * N * 4) == (torch.float32, 20)


def test_basis_plan_refuses_a_budget_below_two_steps() -> None:
    with pytest.raises(ConfigError, match="less than 3 vectors of 200 parameters"):
        basis_plan(N, F64, 41, 2 * N * 4)


def test_float32_basis_for_float64_vectors_is_accurate_and_bounded() -> None:
    A, truth = spectrum_matrix()
    full = lanczos(lambda v: A @ v, N, k=3, tol=1e-8, generator=gen(), vector_dtype=F64)
    budget = (full.n_matvecs + 1) * N * 8 - 1  # float64 does not fit, float32 does
    res = lanczos(
        lambda v: A @ v,
        N,
        k=3,
        tol=1e-4,  # float32's rounding allowance, 64 eps ‖T‖, is ~1e-5 relative
        generator=gen(),
        vector_dtype=F64,
        max_basis_bytes=budget,
    )
    proc = res.process
    assert proc is not None
    assert proc.basis_dtype == torch.float32
    assert proc.basis_bytes <= budget
    assert res.converged
    assert res.stopped_by == "converged"
    assert res.eigenvectors.dtype == F64  # returned in the vectors' precision
    np.testing.assert_allclose(res.eigenvalues, truth[:3], rtol=1e-5)
    assert np.all(np.abs(res.eigenvalues - truth[:3]) <= res.bounds)
    # the rounding allowance is float32's now: no bound below it is claimed
    assert proc.eps == torch.finfo(torch.float32).eps


def test_budget_caps_the_steps_and_says_so() -> None:
    A, truth = spectrum_matrix()
    rows = 8  # 7 steps: too few for 1e-10 on this spectrum
    res = lanczos(
        lambda v: A @ v,
        N,
        k=1,
        tol=1e-10,
        generator=gen(),
        vector_dtype=F64,
        max_basis_bytes=rows * N * 4,
    )
    assert not res.converged
    assert res.stopped_by == "memory"
    assert res.n_matvecs == rows - 1
    proc = res.process
    assert proc is not None
    assert proc.basis_bytes <= rows * N * 4
    assert abs(res.eigenvalues[0] - truth[0]) <= res.bounds[0]  # still honest
    with pytest.raises(ConfigError, match="memory budget holds 7 Lanczos vectors"):
        proc.step()
    unlimited = lanczos(
        lambda v: A @ v,
        N,
        k=1,
        tol=1e-10,
        max_iter=7,
        generator=gen(),
        vector_dtype=F64,
    )
    assert unlimited.stopped_by == "steps"


def test_float32_basis_deflation_and_density_stay_exact_on_the_spectrum() -> None:
    A, truth = spectrum_matrix()
    defl = krylov_deflation(
        lambda v: A @ v, N, 30, generator=gen(), vector_dtype=F64,
        max_basis_bytes=31 * N * 8 - 1,
    )  # fmt: skip
    assert defl.basis.dtype == torch.float32
    assert defl.trace == pytest.approx(float(defl.basis.double().T.mm(A).mm(
        defl.basis.double()).trace()), rel=1e-5)  # fmt: skip
    # projecting out a float32 basis leaves ~float32 eps of it in the vector
    v = torch.randn(N, generator=gen(3), dtype=F64)
    out = defl.project(v)
    assert out.dtype == F64
    assert float(torch.linalg.vector_norm(defl.basis.double().T @ out)) < 1e-5
    est = slq_density(
        lambda v: A @ v, N, steps=40, probes=2, generator=gen(), vector_dtype=F64,
        max_basis_bytes=21 * N * 4,
    )  # fmt: skip
    assert est.nodes.shape[1] == 20  # the budget held 20 steps per probe
    np.testing.assert_allclose(est.weights.sum(axis=1), 1.0, rtol=1e-6)
    # Σ wθ is zᵀAz/‖z‖², an unbiased estimate of the mean eigenvalue: its
    # standard deviation over 2 Rademacher probes is ~0.1 here; 0.5 is 5 sigma
    mean = float((est.nodes * est.weights).sum(axis=1).mean())
    assert mean == pytest.approx(float(np.mean(truth)), abs=0.5)


def test_process_allocates_the_budgeted_basis_once() -> None:
    A, _ = spectrum_matrix()
    proc = LanczosProcess(
        lambda v: A @ v, N, generator=gen(), dtype=F64,
        max_basis_bytes=50 * N * 8, steps_hint=40,
    )  # fmt: skip
    assert proc.max_steps == 40
    first = proc.basis_bytes
    for _ in range(40):
        proc.step()
    assert proc.basis_bytes == first == 41 * N * 8


def _fp32_flags() -> list[str]:
    b = torch.backends
    found = []
    for flag in (b.cuda.matmul, b.cudnn.conv, b.mkldnn.matmul, b.mkldnn.conv):
        value = getattr(flag, "fp32_precision", None)
        if value is not None:
            found.append(value)
    return found


def test_full_precision_turns_reduced_precision_off_and_restores_it() -> None:
    if not hasattr(torch.backends.mkldnn.matmul, "fp32_precision"):
        pytest.skip("this torch has no per-backend fp32_precision")
    mm, conv = torch.backends.mkldnn.matmul, torch.backends.cudnn.conv
    saved = mm.fp32_precision, conv.fp32_precision
    mm.fp32_precision, conv.fp32_precision = "bf16", "tf32"
    try:
        with full_precision():
            assert set(_fp32_flags()) == {"ieee"}
        assert (mm.fp32_precision, conv.fp32_precision) == ("bf16", "tf32")
        with full_precision(enabled=False):
            assert (mm.fp32_precision, conv.fp32_precision) == ("bf16", "tf32")
    finally:
        mm.fp32_precision, conv.fp32_precision = saved
