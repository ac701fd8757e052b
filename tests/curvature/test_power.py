"""Power iteration on known spectra (PyHessian's stopping rule)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from cases import bn_mlp, random_symmetric
from cases import reference_hessian as ref_h

from sharpkit.curvature.operator import HessianOperator
from sharpkit.curvature.power import power_iteration
from sharpkit.errors import ConfigError

F64 = torch.float64


def test_converges_to_dominant_eigenvalue() -> None:
    evals = torch.cat([torch.tensor([10.0, 5.0]), torch.linspace(-1, 2, 98)]).double()
    A, U = random_symmetric(evals)
    res = power_iteration(
        lambda v: A @ v,
        100,
        tol=1e-10,
        max_iter=500,
        generator=torch.Generator().manual_seed(0),
        vector_dtype=F64,
    )
    assert res.converged
    # ratio 0.5 per step: relative change 1e-10 means ~1e-10 error
    assert res.eigenvalue == pytest.approx(10.0, rel=1e-8)
    assert abs(float(res.eigenvector @ U[:, 0])) == pytest.approx(1.0, abs=1e-4)
    # the residual is rigorous: an eigenvalue within it
    assert np.min(np.abs(evals.numpy() - res.eigenvalue)) <= res.residual
    assert res.n_matvecs == len(res.history)


def test_relative_change_criterion_stops_early() -> None:
    """Why power iteration is never the default: from a start vector that is
    mostly the second eigenvector (λ₂/λ₁ = 0.99), the Rayleigh quotient changes
    by far less than 1e-3 per step, so PyHessian's test stops at λ₂ and calls it
    converged. (A Krylov method from such a start can be fooled as well; a random
    start makes it improbable, which is why the residual only certifies that
    *some* eigenvalue is near.)"""
    evals = torch.cat([torch.tensor([10.0, 9.9]), torch.linspace(0, 1, 98)]).double()
    A, U = random_symmetric(evals, 1)
    v0 = U[:, 1] + 1e-3 * U[:, 0]
    res = power_iteration(lambda v: A @ v, 100, tol=1e-3, v0=v0)
    assert res.converged
    assert abs(res.eigenvalue - 9.9) < 1e-3  # λ₂, 1 % below λ₁
    assert abs(res.eigenvalue - 9.9) <= res.residual + 1e-12


def test_hessian_of_bn_mlp() -> None:
    case = bn_mlp()
    dense = ref_h(case)
    evals = torch.linalg.eigvalsh(dense)
    dominant = float(evals[evals.abs().argmax()])
    H = HessianOperator(case.model, case.loss_fn, case.data, batch_size=16)
    res = power_iteration(
        H, H.n, tol=1e-12, max_iter=2000, generator=torch.Generator().manual_seed(1)
    )
    assert res.eigenvalue == pytest.approx(dominant, rel=1e-6)
    assert H.hvp_count == res.n_matvecs


def test_budget_and_arguments() -> None:
    A, _ = random_symmetric(torch.linspace(1, 2, 50).double())
    res = power_iteration(lambda v: A @ v, 50, tol=1e-15, max_iter=3, vector_dtype=F64)
    assert not res.converged
    assert res.n_matvecs == 3
    with pytest.raises(ConfigError):
        power_iteration(lambda v: A @ v, 50, tol=0)
    with pytest.raises(ConfigError):
        power_iteration(lambda v: A @ v, 50, max_iter=0)
    with pytest.raises(ConfigError):
        power_iteration(lambda v: A @ v, 50, v0=torch.zeros(50, dtype=F64))
    zero = power_iteration(lambda v: 0 * v, 50, vector_dtype=F64)
    assert zero.converged
    assert zero.eigenvalue == 0.0
