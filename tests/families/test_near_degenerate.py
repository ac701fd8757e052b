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
from sharpkit.curvature.lanczos import lanczos

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


def trained_relu_classifier() -> tuple[torch.Tensor, torch.Tensor]:
    """The closest top pair found for issue 22's ReLU MLP (docs/benchmarks.md).

    A 6-12-10 ReLU MLP, ``CrossEntropyLoss(ignore_index=0)`` on 128 Gaussian
    inputs with random labels, 20 full-batch SGD steps (η = 0.5) in float64:
    λ₂ = 0.548252 lies 1.36 % below λ₁ = 0.555830. Returns the dense Hessian
    (double backward, one row per parameter) and the loss gradient.
    """
    g = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 10)).to(F64)
    with torch.no_grad():
        for p in model.parameters():
            fan_in = p.shape[-1] if p.dim() > 1 else max(p.numel(), 1)
            p.copy_(torch.randn(p.shape, generator=g, dtype=F64) / fan_in**0.5)
    x = torch.randn(128, 6, generator=g, dtype=F64)
    y = torch.randint(0, 10, (128,), generator=g)
    loss_fn = nn.CrossEntropyLoss(ignore_index=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(20):
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()
    params = list(model.parameters())
    grads = torch.autograd.grad(loss_fn(model(x), y), params, create_graph=True)
    grad = torch.cat([t.reshape(-1) for t in grads])
    rows = [
        torch.cat(
            [t.reshape(-1) for t in torch.autograd.grad(gi, params, retain_graph=True)]
        )
        for gi in grad
    ]
    H = torch.stack(rows)
    return (H + H.T) / 2, grad.detach()


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.slow
def test_a_trained_relu_classifier_with_a_close_top_pair() -> None:
    """Issue 22's case on a trained network: the block covers λ₁ in ≥ 49/50 seeds.

    ``spectral``'s default (a block of two random start vectors) against the
    default before issue 22 (one vector, the gradient plus an equal random
    part), which misses λ₁ in several seeds of 50 on this pair.
    """
    H, grad = trained_relu_classifier()
    evals = torch.linalg.eigvalsh(H).flip(0)
    lam1 = float(evals[0])
    assert 0.01 < (lam1 - float(evals[1])) / lam1 < 0.015  # the pair is there
    block, single = 0, 0
    for seed in range(50):
        res = lanczos(
            H.__matmul__,
            H.shape[0],
            tol=1e-3,
            block=2,
            generator=gen(seed),
            vector_dtype=F64,
        )
        assert res.converged
        block += int(abs(res.eigenvalues[0] - lam1) <= res.bounds[0])
        g = gen(seed)
        z = torch.randn(H.shape[0], generator=g, dtype=F64)
        v0 = grad / grad.norm() + z / z.norm()
        one = lanczos(
            H.__matmul__, H.shape[0], tol=1e-3, v0=v0, generator=g, vector_dtype=F64
        )
        single += int(abs(one.eigenvalues[0] - lam1) <= one.bounds[0])
    assert block >= 49
    assert single <= 47
