"""Metrics that break the plugin contract, one way each (the reliability suite)."""

import sys

import torch

import sharpkit


def _norm(model):
    return sum(float((p.detach() ** 2).sum()) for p in model.parameters()) ** 0.5


class ScalesWeights:
    """Multiplies every parameter by 10 in place, then reports their norm."""

    def compute(self, ctx):
        with torch.no_grad():
            for p in ctx.model.parameters():
                p.mul_(10.0)
        return sharpkit.MetricResult(value=_norm(ctx.model))


class ShiftsBuffers:
    """Changes only the batch-norm running means."""

    def compute(self, ctx):
        for name, b in ctx.model.named_buffers():
            if name.endswith("running_mean"):
                b.add_(1.0)
        return sharpkit.MetricResult(value=1.0)


class ReplacesParameter:
    """Swaps one parameter for a new tensor (not in place)."""

    def compute(self, ctx):
        module = next(m for m in ctx.model.modules() if isinstance(m, torch.nn.Linear))
        module.weight = torch.nn.Parameter(torch.zeros_like(module.weight))
        return sharpkit.MetricResult(value=2.0)


class CastsModel:
    """Converts the model to float64 (every parameter's dtype changes)."""

    def compute(self, ctx):
        ctx.model.double()
        return sharpkit.MetricResult(value=3.0)


class TextValue:
    def compute(self, ctx):
        return sharpkit.MetricResult(value="abc")


class TextStderr:
    def compute(self, ctx):
        return sharpkit.MetricResult(value=1.0, stderr="small")


class Exits:
    def compute(self, ctx):
        sys.exit(0)


class ReturnsNone:
    def compute(self, ctx):
        return None


class ReturnsNan:
    def compute(self, ctx):
        return sharpkit.MetricResult(value=float("nan"))


class Raises:
    def compute(self, ctx):
        raise RuntimeError("boom")


def _factory_raises():
    raise ValueError("cannot build")


_METRICS = {
    "scales-weights": ScalesWeights,
    "shifts-buffers": ShiftsBuffers,
    "replaces-parameter": ReplacesParameter,
    "casts-model": CastsModel,
    "text-value": TextValue,
    "text-stderr": TextStderr,
    "exits": Exits,
    "returns-none": ReturnsNone,
    "returns-nan": ReturnsNan,
    "raises": Raises,
    "factory-raises": _factory_raises,
}


@sharpkit.hookimpl
def sharpkit_register_metrics():
    return [
        sharpkit.MetricSpec(name=name, factory=factory, description=name)
        for name, factory in _METRICS.items()
    ]
