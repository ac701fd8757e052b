"""Tests of the Fisher-Rao plugin: sharpkit's conformance suite + closed forms."""

from __future__ import annotations

import math
from typing import ClassVar

import pytest
import torch
from sharpkit_fisher_rao.metric import FisherRaoNorm
from sharpkit_fisher_rao.plugin import sharpkit_register_metrics

import sharpkit
from sharpkit.testing import MetricContract, tiny_context

SPEC = sharpkit_register_metrics()[0]


class TestFisherRaoContract(MetricContract):
    spec = SPEC


class TestFisherRaoEmpiricalContract(MetricContract):
    spec = SPEC
    options: ClassVar[dict[str, str]] = {"fisher": "empirical"}


def _ctx(
    model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor
) -> sharpkit.AnalysisContext:
    return sharpkit.AnalysisContext(
        model=model,
        loss_fn=torch.nn.functional.cross_entropy,
        data=sharpkit.DataSplit(x, y),
        batch_size=7,  # does not divide 20: exercises the short last batch
        device=torch.device("cpu"),
        dtype=torch.float64,
    )


def _data(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(20, 5, generator=gen, dtype=torch.float64), torch.randint(
        0, 4, (20,), generator=gen
    )


def test_linear_model_closed_form() -> None:
    # f(x) = Wx is linear in W, so the derivative of f along θ=W is f itself;
    # the model-Fisher norm² is then E_x Var_{softmax(f)}(f) (Liang et al., Lemma 2.1).
    torch.manual_seed(0)
    net = torch.nn.Linear(5, 4, bias=False).double()
    x, y = _data()
    result = FisherRaoNorm().compute(_ctx(net, x, y))
    with torch.no_grad():
        f = net(x)
        p = torch.softmax(f, -1)
        var = (p * (f - (p * f).sum(-1, keepdim=True)) ** 2).sum(-1)
    # float64 throughout: agreement to round-off
    assert result.value == pytest.approx(math.sqrt(float(var.mean())), rel=1e-12)


def test_empirical_linear_model_closed_form() -> None:
    # With data labels: dℓ/dt = -(f_y - pᵀf) for the same reason.
    torch.manual_seed(1)
    net = torch.nn.Linear(5, 4, bias=False).double()
    x, y = _data(1)
    result = FisherRaoNorm("empirical").compute(_ctx(net, x, y))
    with torch.no_grad():
        f = net(x)
        p = torch.softmax(f, -1)
        d = f.gather(1, y[:, None])[:, 0] - (p * f).sum(-1)
    assert result.value == pytest.approx(math.sqrt(float((d**2).mean())), rel=1e-12)


def test_homogeneity_of_bias_free_relu_network() -> None:
    # A bias-free ReLU net with L weight layers is L-homogeneous in θ, so the
    # derivative of f along θ is L·f (Euler); the norm scales by exactly L
    # relative to treating f as linear.
    torch.manual_seed(2)
    net = torch.nn.Sequential(
        torch.nn.Linear(5, 9, bias=False),
        torch.nn.ReLU(),
        torch.nn.Linear(9, 9, bias=False),
        torch.nn.ReLU(),
        torch.nn.Linear(9, 4, bias=False),
    ).double()
    x, y = _data(2)
    result = FisherRaoNorm().compute(_ctx(net, x, y))
    with torch.no_grad():
        f = 3 * net(x)
        p = torch.softmax(net(x), -1)
        var = (p * (f - (p * f).sum(-1, keepdim=True)) ** 2).sum(-1)
    assert result.value == pytest.approx(math.sqrt(float(var.mean())), rel=1e-10)


def test_batch_size_does_not_change_value() -> None:
    ctx_a = tiny_context(batch_size=64)
    ctx_b = tiny_context(batch_size=5)
    a = FisherRaoNorm().compute(ctx_a).value
    b = FisherRaoNorm().compute(ctx_b).value
    assert a == pytest.approx(b, rel=1e-12)


def test_bad_option_is_config_error() -> None:
    with pytest.raises(sharpkit.ConfigError, match="fisher"):
        FisherRaoNorm("bogus")
