"""Metrics that change what the metrics after them compute on (issue 21, section 2).

None of them touches a parameter or a buffer: each changes the data, the loss,
the hooks or the flags of the analysis context, or returns numbers a result
may not hold, or prints.
"""

import math

import torch

import sharpkit


class MutatesData:
    """Scales the analysis inputs in place."""

    def compute(self, ctx):
        ctx.data.inputs.mul_(3.0)
        return sharpkit.MetricResult(value=1.0)


class ReplacesData:
    """Puts other data in the context."""

    def compute(self, ctx):
        x = ctx.data.inputs * 2.0
        ctx.data = type(ctx.data)(x, ctx.data.targets)
        return sharpkit.MetricResult(value=1.0)


class ReplacesLoss:
    """Scales the loss for everyone after it."""

    def compute(self, ctx):
        old = ctx.loss_fn
        ctx.loss_fn = lambda out, y: 10.0 * old(out, y)
        return sharpkit.MetricResult(value=1.0)


class AddsHook:
    """Leaves a forward hook that doubles the first layer's output."""

    def compute(self, ctx):
        first = next(m for m in ctx.model.modules() if isinstance(m, torch.nn.Linear))
        first.register_forward_hook(lambda mod, inp, out: 2.0 * out)
        return sharpkit.MetricResult(value=1.0)


class GlobalHook:
    """Leaves a global forward hook on every module."""

    def compute(self, ctx):
        def hook(mod, inp, out):
            return 1.5 * out if isinstance(mod, torch.nn.Linear) else out

        torch.nn.modules.module.register_module_forward_hook(hook)
        return sharpkit.MetricResult(value=1.0)


class FreezesParameters:
    """Sets requires_grad_(False) on the first half of the parameters."""

    def compute(self, ctx):
        params = list(ctx.model.parameters())
        for p in params[: len(params) // 2]:
            p.requires_grad_(False)
        return sharpkit.MetricResult(value=1.0)


class TrainMode:
    """Leaves the model in train mode (batch statistics for the next metric)."""

    def compute(self, ctx):
        ctx.model.train()
        return sharpkit.MetricResult(value=1.0)


class Returns:
    """Returns a result with one field as given."""

    def __init__(self, **fields):
        self.fields = fields

    def compute(self, ctx):
        return sharpkit.MetricResult(value=1.0, **self.fields)


class Prints:
    """Prints to stdout while computing."""

    def compute(self, ctx):
        print("progress of the prints metric: 50%")
        return sharpkit.MetricResult(value=4.0)


def _returns(**fields):
    return lambda: Returns(**fields)


_METRICS = {
    "mutates-data": MutatesData,
    "replaces-data": ReplacesData,
    "replaces-loss": ReplacesLoss,
    "adds-hook": AddsHook,
    "global-hook": GlobalHook,
    "freezes-parameters": FreezesParameters,
    "train-mode": TrainMode,
    "nan-stderr": _returns(stderr=math.nan),
    "inf-bound": _returns(bound=math.inf),
    "negative-stderr": _returns(stderr=-0.5),
    "negative-bound": _returns(bound=-1.0),
    "text-converged": _returns(converged="yes"),
    "int-converged": _returns(converged=1),
    "negative-hvps": _returns(hvps=-3),
    "prints": Prints,
}


@sharpkit.hookimpl
def sharpkit_register_metrics():
    return [
        sharpkit.MetricSpec(name=name, factory=factory, description=name)
        for name, factory in _METRICS.items()
    ]
