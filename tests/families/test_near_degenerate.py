"""A near-degenerate top pair through ``sharpkit.measure`` (issue 22).

Least squares ``L(w) = mean((Xw - y)²)`` has the Hessian ``H = (2/N) XᵀX``
exactly, so its spectrum is set by the singular values of ``X``: here
λ₁ = 10, λ₂ = 10(1 - gap) and a bulk in [0.1, 4]. The residual ``Xw - y`` is
chosen so that the loss gradient (``spectral``'s default start direction)
lies mostly along the eigenvector of λ₂, as it happened to on a ReLU network
in the issue: a single start vector then converges to λ₂ with a residual below
the gap and reports a bound that does not reach λ₁.

Criterion (the issue's): the reported ``λ_max ± bound`` contains λ₁ in at
least 49 of 50 seeds, at 0.3 % and at 1 % gaps.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import sharpkit

F64 = torch.float64
N, D = 200, 40


def problem(gap: float) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    lam = torch.cat(
        [
            torch.tensor([10.0, 10.0 * (1 - gap)], dtype=F64),
            0.1 + 3.9 * torch.rand(D - 2, generator=g, dtype=F64),
        ]
    )
    U, _ = torch.linalg.qr(torch.randn(N, D, generator=g, dtype=F64))
    V, _ = torch.linalg.qr(torch.randn(D, D, generator=g, dtype=F64))
    s = torch.sqrt(lam * N / 2)  # (2/N) XᵀX = V diag(lam) Vᵀ
    X = U @ torch.diag(s) @ V.T
    model = nn.Linear(D, 1, bias=False).to(F64)
    with torch.no_grad():
        model.weight.copy_(torch.randn(1, D, generator=g, dtype=F64))
    # residual Xw - y = U c: gradient (2/N) V (s * c), mostly along v₂
    c = 0.05 * torch.randn(D, generator=g, dtype=F64)
    c[1], c[0] = 1.0, 0.01
    with torch.no_grad():
        y = model(X) - (U @ c).unsqueeze(1)
    return model, X, y


def covered(gap: float, seeds: int = 50) -> int:
    model, X, y = problem(gap)
    hits = 0
    for seed in range(seeds):
        m = sharpkit.measure(
            model, (X, y), ["spectral"], loss="mse", seed=seed, batch_size=N
        )
        spec = m["spectral"]
        assert spec.converged
        hits += int(abs(spec.value - 10.0) <= spec.bound)
    return hits


@pytest.mark.parametrize("gap", [0.003, 0.01])
def test_lambda_1_within_the_bound_in_49_of_50_seeds(gap: float) -> None:
    assert covered(gap) >= 49
