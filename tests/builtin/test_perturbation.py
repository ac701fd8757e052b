"""ε-sharpness and adaptive sharpness against closed forms on quadratics.

The "model" returns ``L(θ) = ½ Σ a_i θ_i²`` for every example whatever the
input, and the loss is the mean of the outputs, so the analysis loss is exactly
this quadratic. With a diagonal ``A ⪰ 0`` the maxima over boxes are attained at
known vertices and the ℓ2 maximum solves a one-dimensional secular equation.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np
import pytest
import torch

import sharpkit
from sharpkit.builtin import perturbation
from sharpkit.builtin.perturbation import AdaptiveSharpness, EpsilonSharpness
from sharpkit.errors import ConfigError, NumericalError
from sharpkit.interfaces import AnalysisContext, DataSplit, MetricSpec
from sharpkit.registry import Registry
from sharpkit.testing import MetricContract, tiny_context

SPECS = {s.name: s for s in perturbation.sharpkit_register_metrics()}


class Quadratic(torch.nn.Module):
    """``forward`` returns ``½ Σ a_i θ_i²`` once per example (inputs ignored)."""

    def __init__(self, theta: torch.Tensor, a: torch.Tensor) -> None:
        super().__init__()
        self.theta = torch.nn.Parameter(theta.clone())
        self.register_buffer("a", a.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = 0.5 * (self.a * self.theta**2).sum()
        return q.expand(x.shape[0])


def quad_loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return out.mean()


# θ has a zero coordinate (zero gradient at δ = 0: the ascent must break the tie)
# and a coordinate with a_i = 0 (flat: contributes nothing).
THETA = torch.tensor([0.8, -1.5, 0.0, 2.0, -0.3, 0.7], dtype=torch.float64)
A = torch.tensor([2.0, 0.5, 3.0, 1.0, 4.0, 0.0], dtype=torch.float64)


def quad_context(
    theta: torch.Tensor = THETA, a: torch.Tensor = A, seed: int = 0
) -> AnalysisContext:
    x = torch.zeros(10, 1, dtype=torch.float64)
    y = torch.zeros(10, dtype=torch.long)
    return AnalysisContext(
        model=Quadratic(theta, a),
        loss_fn=quad_loss,
        data=DataSplit(x, y),
        batch_size=4,  # three batches, the last one short
        device=torch.device("cpu"),
        dtype=torch.float64,
        seed=seed,
    )


def q(theta: torch.Tensor, a: torch.Tensor) -> float:
    return float(0.5 * (a * theta**2).sum())


def secular_l2_max(c: np.ndarray, rho: float) -> float:
    """max_{‖s‖₂ ≤ ρ} ½ Σ c_i (1 + s_i)² for c ≥ 0 (trust-region subproblem).

    The maximiser is s_i = c_i / (λ - c_i) with λ > max c and ‖s‖ = ρ; λ is found
    by bisection to machine precision.
    """
    cmax = c.max()

    def norm(lam: float) -> float:
        return float(np.sqrt(((c / (lam - c)) ** 2).sum()))

    lo, hi = cmax * (1 + 1e-15) + 1e-300, cmax + 1.0
    while norm(hi) > rho:
        hi = cmax + 2 * (hi - cmax)
    for _ in range(400):
        mid = 0.5 * (lo + hi)
        if norm(mid) > rho:
            lo = mid
        else:
            hi = mid
    s = c / (hi - c)
    return float(0.5 * (c * (1 + s) ** 2).sum())


# --------------------------------------------------------------------------- epsilon


def test_epsilon_matches_closed_form() -> None:
    eps = 1e-2
    ctx = quad_context()
    result = EpsilonSharpness(epsilon=eps).compute(ctx)
    w = eps * (THETA.abs() + 1)
    worst = q(THETA.abs() + w, A)  # every coordinate pushed outward to its box edge
    base = q(THETA, A)
    expected = 100 * (worst - base) / (1 + base)
    # float64 and an exact vertex: only rounding separates the two (|x| ~ 1).
    assert result.value == pytest.approx(expected, rel=1e-12)
    assert result.attrs["loss"] == pytest.approx(base, rel=1e-14)
    assert result.stderr is None
    assert "lower bound" in str(result.attrs["note"])
    assert result.attrs["gradient_evaluations"] == 20


def test_epsilon_default_is_keskar_1e3() -> None:
    ctx = quad_context()
    result = EpsilonSharpness().compute(ctx)
    w = 1e-3 * (THETA.abs() + 1)
    base = q(THETA, A)
    expected = 100 * (q(THETA.abs() + w, A) - base) / (1 + base)
    assert result.attrs["epsilon"] == 1e-3
    assert result.value == pytest.approx(expected, rel=1e-10)


def test_epsilon_restarts_report_best_and_spread() -> None:
    ctx = quad_context()
    result = EpsilonSharpness(epsilon=1e-2, restarts=4).compute(ctx)
    values = result.arrays["restart_values"]
    assert values.shape == (4,)
    assert result.value == values.max()
    assert result.attrs["spread"] == pytest.approx(values.max() - values.min())
    # Every restart of a separable convex quadratic ends at the optimal vertex or
    # below it; none can exceed the closed form.
    w = 1e-2 * (THETA.abs() + 1)
    base = q(THETA, A)
    expected = 100 * (q(THETA.abs() + w, A) - base) / (1 + base)
    assert values.max() <= expected * (1 + 1e-12)


def test_epsilon_beats_one_shot_sign_vertex_on_a_network() -> None:
    """On a real (non-quadratic) BN-MLP the ascent does at least as well as FGSM."""
    ctx = tiny_context(seed=1)
    eps = 1e-3
    result = EpsilonSharpness(epsilon=eps).compute(ctx)
    params = list(ctx.model.parameters())

    def loss() -> float:
        with torch.no_grad():
            return float(ctx.loss_fn(ctx.model(ctx.data.inputs), ctx.data.targets))

    value = ctx.loss_fn(ctx.model(ctx.data.inputs), ctx.data.targets)
    grads = torch.autograd.grad(value, params)
    base = loss()
    saved = [p.detach().clone() for p in params]
    with torch.no_grad():
        for p, g in zip(params, grads, strict=True):
            p.add_(eps * (p.abs() + 1) * g.sign())
    fgsm = 100 * (loss() - base) / (1 + base)
    with torch.no_grad():
        for p, s in zip(params, saved, strict=True):
            p.copy_(s)
    # The ascent's best iterate reaches (near) the same vertex after 8 steps; allow
    # 1e-9 relative for float64 rounding in the loss sums.
    assert result.value >= fgsm * (1 - 1e-9)
    assert result.value > 0


def test_epsilon_is_invariant_to_batch_size() -> None:
    a = EpsilonSharpness(epsilon=1e-2).compute(tiny_context(seed=2, batch_size=64))
    b = EpsilonSharpness(epsilon=1e-2).compute(tiny_context(seed=2, batch_size=7))
    # Same mean loss and gradient up to summation order (float64).
    assert a.value == pytest.approx(b.value, rel=1e-9)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"epsilon": 0.0},
        {"epsilon": -1.0},
        {"steps": 0},
        {"restarts": 0},
        {"step_size": 0.0},
    ],
)
def test_epsilon_rejects_bad_options(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        EpsilonSharpness(**kwargs)


# --------------------------------------------------------------------------- adaptive


@pytest.mark.parametrize("rho", [1e-3, 0.05])
def test_adaptive_linf_worst_matches_closed_form(rho: float) -> None:
    result = AdaptiveSharpness(rho=rho, norm="inf").compute(quad_context())
    # δ_i = ρ|θ_i| sign(θ_i): L = ½ Σ a_i θ_i² (1+ρ)²; θ_i = 0 cannot move.
    expected = q(THETA, A) * ((1 + rho) ** 2 - 1)
    assert result.value == pytest.approx(expected, rel=1e-12)
    assert result.stderr is None


@pytest.mark.parametrize("rho", [0.1, 0.5, 1.0])
def test_adaptive_l2_worst_matches_secular_equation(rho: float) -> None:
    c = (A * THETA**2).numpy()
    expected = secular_l2_max(c, rho) - 0.5 * c.sum()
    result = AdaptiveSharpness(rho=rho, norm="2", steps=100, step_size=0.5).compute(
        quad_context()
    )
    # With steps of ρ/2, projected normalised ascent converges geometrically to the
    # KKT point of a convex quadratic on the ball; 100 steps reach it to rounding.
    assert result.value == pytest.approx(expected, rel=1e-8)
    assert result.value <= expected * (1 + 1e-12)  # a lower bound, never above


def test_adaptive_l2_default_steps_close() -> None:
    rho = 0.5
    c = (A * THETA**2).numpy()
    expected = secular_l2_max(c, rho) - 0.5 * c.sum()
    result = AdaptiveSharpness(rho=rho, norm="2").compute(quad_context())
    # 20 steps of size 2.5ρ/20: within 1 % of the maximum on this problem.
    assert result.value == pytest.approx(expected, rel=1e-2)
    assert result.value <= expected * (1 + 1e-12)


def test_adaptive_average_matches_expectation() -> None:
    rho, samples = 0.1, 400
    result = AdaptiveSharpness(rho=rho, kind="average", samples=samples).compute(
        quad_context()
    )
    a, t = A.numpy(), THETA.numpy()
    mean = 0.5 * rho**2 * float((a * t**2).sum())
    # Increase = Σ a_i ρ θ_i|θ_i| z_i + ½ a_i ρ² θ_i² z_i²: variance in closed form.
    sd = math.sqrt(float((a**2 * t**4).sum()) * (rho**2 + rho**4 / 2))
    assert result.stderr is not None
    # The estimated standard error is within 15 % of the true one (the relative
    # sd of a sample sd over 400 near-Gaussian draws is about 3.5 %).
    assert result.stderr == pytest.approx(sd / math.sqrt(samples), rel=0.15)
    # The mean lies within 4 standard errors of the truth (fails 6e-5 of seeds).
    assert abs(result.value - mean) < 4 * sd / math.sqrt(samples)
    assert result.arrays["increases"].shape == (samples,)


def test_adaptive_average_stderr_shrinks_with_samples() -> None:
    few = AdaptiveSharpness(rho=0.1, kind="average", samples=25).compute(quad_context())
    many = AdaptiveSharpness(rho=0.1, kind="average", samples=400).compute(
        quad_context()
    )
    assert few.stderr is not None
    assert many.stderr is not None
    # stderr ∝ 1/√samples: a ratio of 4, up to the noise in two sd estimates.
    assert 2.5 < few.stderr / many.stderr < 6.5


def test_adaptive_default_rho_depends_on_kind_and_norm() -> None:
    assert AdaptiveSharpness().rho == 2e-3
    assert AdaptiveSharpness(norm="2").rho == 0.5
    assert AdaptiveSharpness(kind="average").rho == 0.1
    assert AdaptiveSharpness(rho=0.3, norm="2").rho == 0.3


@pytest.mark.parametrize(
    "kwargs",
    [
        {"norm": "1"},
        {"kind": "best"},
        {"rho": 0.0},
        {"steps": 0},
        {"kind": "average", "samples": 1},
    ],
)
def test_adaptive_rejects_bad_options(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        AdaptiveSharpness(**kwargs)


# --------------------------------------------------------------------------- both


@pytest.mark.parametrize(
    "metric",
    [
        EpsilonSharpness(epsilon=0.05, restarts=2, steps=5),
        AdaptiveSharpness(rho=0.05, norm="inf", steps=5),
        AdaptiveSharpness(rho=0.5, norm="2", steps=5),
        AdaptiveSharpness(kind="average", samples=4),
    ],
    ids=["epsilon", "adaptive-inf", "adaptive-2", "adaptive-average"],
)
def test_parameters_and_bn_buffers_restored_in_train_bn_mode(metric: Any) -> None:
    """With BN in train mode every forward updates the running stats: they come back."""
    ctx = tiny_context(seed=4, bn_mode="train")
    ctx.model[1].train()  # the BatchNorm1d
    before = {k: v.clone() for k, v in ctx.model.state_dict().items()}
    grads_before = [p.grad for p in ctx.model.parameters()]
    metric.compute(ctx)
    for k, v in ctx.model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert [p.grad for p in ctx.model.parameters()] == grads_before  # untouched (None)


def test_non_finite_loss_raises() -> None:
    theta = torch.tensor([1e154, 1.0], dtype=torch.float64)
    a = torch.tensor([1.0, 1.0], dtype=torch.float64)
    ctx = quad_context(theta, a)
    before = ctx.model.theta.detach().clone()
    with pytest.raises(NumericalError):
        AdaptiveSharpness(rho=1.0, norm="inf").compute(ctx)
    assert torch.equal(ctx.model.theta.detach(), before)


def test_through_sharpkit_measure() -> None:
    reg = Registry(entry_points=False, warn=False)
    reg.register_plugin(perturbation, "builtin.perturbation")
    model = Quadratic(THETA, A)
    x = torch.zeros(10, 1, dtype=torch.float64)
    y = torch.zeros(10, dtype=torch.long)
    m = sharpkit.api.measure(
        model,
        (x, y),
        metrics=["epsilon", "adaptive"],
        loss=quad_loss,
        options={"epsilon": {"epsilon": "0.01"}, "adaptive": {"rho": "0.05"}},
        registry=reg,
    )
    base = q(THETA, A)
    w = 0.01 * (THETA.abs() + 1)
    assert m["epsilon"].value == pytest.approx(
        100 * (q(THETA.abs() + w, A) - base) / (1 + base), rel=1e-12
    )
    assert m["adaptive"].value == pytest.approx(base * (1.05**2 - 1), rel=1e-12)
    assert torch.equal(model.theta.detach(), THETA)


def test_same_seed_same_value_other_seed_other_draws() -> None:
    def run(seed: int) -> float:
        return (
            AdaptiveSharpness(kind="average", samples=8)
            .compute(quad_context(seed=seed))
            .value
        )

    assert run(5) == run(5)
    assert run(5) != run(6)


# --------------------------------------------------------------------------- contract


class TestEpsilonContract(MetricContract):
    spec: ClassVar[MetricSpec] = SPECS["epsilon"]
    options: ClassVar[dict[str, Any]] = {
        "epsilon": "0.01",
        "steps": "5",
        "restarts": "2",
    }


class TestAdaptiveWorstInfContract(MetricContract):
    spec: ClassVar[MetricSpec] = SPECS["adaptive"]
    options: ClassVar[dict[str, Any]] = {"steps": "5"}


class TestAdaptiveWorstL2Contract(MetricContract):
    spec: ClassVar[MetricSpec] = SPECS["adaptive"]
    options: ClassVar[dict[str, Any]] = {"steps": "5", "norm": "2"}


class TestAdaptiveAverageContract(MetricContract):
    spec: ClassVar[MetricSpec] = SPECS["adaptive"]
    options: ClassVar[dict[str, Any]] = {"kind": "average", "samples": "4"}
