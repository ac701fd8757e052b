"""MetricContract: every built-in metric passes it; each broken metric fails it.

(The Fisher-Rao plugin runs the same contract in its own tests.)
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import pytest
import torch
from contract_cases import Case, contract_classes

import sharpkit
from sharpkit.testing import MetricContract, check_metric_spec

# Small budgets: the contract's properties, not the metrics' accuracy, are tested
# here (tests/builtin/ has the ground truth).
CASES = {
    "spectral": Case("spectral"),
    "frobenius": Case(
        "frobenius", {"options": {"exact_max": 0, "probes": 3, "deflation": 3}}
    ),
    "trace": Case("trace", {"options": {"exact_max": 0, "probes": 3, "sketch": 3}}),
    "density": Case("density", {"options": {"exact_max": 0, "probes": 2, "steps": 8}}),
    "epsilon": Case("epsilon", {"options": {"steps": 3, "restarts": 1}}),
    "adaptive": Case("adaptive", {"options": {"steps": 3}}),
    "pacbayes-sigma": Case("pacbayes-sigma", {"options": {"samples": 3, "rtol": 0.05}}),
    "pacbayes-mag-sigma": Case(
        "pacbayes-mag-sigma", {"options": {"samples": 3, "rtol": 0.05}}
    ),
}
globals().update(contract_classes(MetricContract, "metric", CASES, __name__))


# --------------------------------------------------------------------------- broken


class ToyMetric:
    """Hutchinson estimate of tr(H) with a few probes; defects by flags."""

    def __init__(self, **bug: bool) -> None:
        self.bug = bug

    def compute(self, ctx: sharpkit.AnalysisContext) -> sharpkit.MetricResult:
        model = ctx.model
        if self.bug.get("updates_bn"):
            model.train()
            with torch.no_grad():
                model(ctx.data.inputs)  # updates the running statistics
            model.eval()
        if self.bug.get("leaves_train_mode"):
            model.train()
        gen = None if self.bug.get("global_rng") else ctx.generator("toy-trace")
        n = ctx.hessian.shape[0]
        samples = []
        for _ in range(3):
            v = torch.randint(0, 2, (n,), generator=gen).to(ctx.dtype) * 2 - 1
            samples.append(float(v @ (ctx.hessian @ v)))
        value = sum(samples) / len(samples)
        stderr = float(torch.tensor(samples).std()) / math.sqrt(len(samples))
        if self.bug.get("tensor_value"):
            return sharpkit.MetricResult(value=torch.tensor(value))  # type: ignore[arg-type]
        if self.bug.get("nan_value"):
            value = math.nan
        if self.bug.get("freezes_parameters"):
            for p in model.parameters():
                p.requires_grad_(False)
        return sharpkit.MetricResult(
            value=value, stderr=None if self.bug.get("no_stderr") else stderr
        )


def toy_spec(**bug: bool) -> sharpkit.MetricSpec:
    def make() -> ToyMetric:
        return ToyMetric(**bug)

    return sharpkit.MetricSpec(
        name="toy-trace", factory=make, description="A toy trace", stochastic=True
    )


def contract(**bug: bool) -> MetricContract:
    class TestToy(MetricContract):
        spec: ClassVar[sharpkit.MetricSpec] = toy_spec(**bug)

    return TestToy()


TESTS = [n for n in dir(MetricContract) if n.startswith("test_")]


def test_the_correct_toy_passes_every_test() -> None:
    for name in TESTS:
        getattr(contract(), name)()


@pytest.mark.parametrize(
    ("bug", "test", "message"),
    [
        ("updates_bn", "test_model_left_unchanged", "buffer '1.running_mean'"),
        ("leaves_train_mode", "test_model_left_unchanged", "left in train mode"),
        ("freezes_parameters", "test_model_left_unchanged", "requires_grad"),
        ("global_rng", "test_deterministic_for_seed", "global RNG"),
        ("tensor_value", "test_returns_finite_metric_result", "not a float"),
        ("nan_value", "test_returns_finite_metric_result", "not finite"),
        ("no_stderr", "test_stochastic_reports_stderr", "no stderr"),
    ],
)
def test_a_broken_metric_fails(bug: str, test: str, message: str) -> None:
    with pytest.raises(AssertionError, match=message):
        getattr(contract(**{bug: True}), test)()


def test_a_factory_returning_no_metric_fails() -> None:
    class TestNotAMetric(MetricContract):
        spec: ClassVar[sharpkit.MetricSpec] = sharpkit.MetricSpec(
            name="not-a-metric", factory=object, description="Wrong"
        )

    with pytest.raises(AssertionError, match="has no compute"):
        TestNotAMetric().test_factory_returns_metric()


def test_check_metric_spec_rejects_other_kinds() -> None:
    spec: Any = sharpkit.ProbeSpec(name="p", factory=object, description="A probe")
    with pytest.raises(sharpkit.PluginContractError, match="metric specs"):
        check_metric_spec(spec)
