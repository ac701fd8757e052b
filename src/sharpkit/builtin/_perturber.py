"""The perturbation metrics' shared evaluator: the loss at ``θ + δ``, ``θ`` restored.

Used by ``epsilon`` and ``adaptive`` (:mod:`sharpkit.builtin.perturbation`) and
by the PAC-Bayes σ* metrics (:mod:`sharpkit.builtin._pacbayes`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from sharpkit import AnalysisContext, ConfigError, NumericalError

if TYPE_CHECKING:
    import torch

__all__ = ["Perturber", "check_finite"]


class Perturber:
    """Evaluates the loss (and its gradient) at ``θ + δ`` and restores ``θ`` exactly."""

    def __init__(self, ctx: AnalysisContext) -> None:
        self.ctx = ctx
        self.params = [
            p
            for p in ctx.model.parameters()
            if p.requires_grad and p.is_floating_point()
        ]
        if not self.params:
            msg = "the model has no trainable floating-point parameters to perturb"
            raise ConfigError(msg)
        self.theta = [p.detach().clone() for p in self.params]
        self.buffers = [(b, b.detach().clone()) for b in ctx.model.buffers()]
        self.count = sum(len(x) for x, _ in ctx.data.batches(ctx.batch_size))
        if self.count == 0:
            msg = "the analysis data is empty"
            raise ConfigError(msg)
        self.gradients = 0
        self.evaluations = 0

    def set(self, delta: Sequence[torch.Tensor] | None) -> None:
        import torch

        with torch.no_grad():
            if delta is None:
                for p, t in zip(self.params, self.theta, strict=True):
                    p.copy_(t)
            else:
                for p, t, d in zip(self.params, self.theta, delta, strict=True):
                    p.copy_(t + d)

    def restore(self) -> None:
        import torch

        self.set(None)
        with torch.no_grad():
            for buf, saved in self.buffers:
                buf.copy_(saved)

    def loss(self) -> float:
        import torch

        total = 0.0
        with torch.no_grad():
            for x, y in self.ctx.data.batches(self.ctx.batch_size):
                total += float(self.ctx.loss_fn(self.ctx.model(x), y)) * len(x)
        self.evaluations += 1
        return total / self.count

    def loss_and_grad(self) -> tuple[float, list[torch.Tensor]]:
        import torch

        total = 0.0
        grads = [torch.zeros_like(p) for p in self.params]
        for x, y in self.ctx.data.batches(self.ctx.batch_size):
            value = self.ctx.loss_fn(self.ctx.model(x), y)
            weight = len(x) / self.count
            parts = torch.autograd.grad(value * weight, self.params, allow_unused=True)
            for g, part in zip(grads, parts, strict=True):
                if part is not None:
                    g.add_(part)
            total += float(value.detach()) * len(x)
        self.gradients += 1
        return total / self.count, grads


def check_finite(value: float, what: str) -> None:
    """Refuse a non-finite loss met while perturbing.

    Raises:
        NumericalError: ``value`` is not finite.
    """
    if not math.isfinite(value):
        msg = (
            f"the loss became non-finite ({value}) during {what}; reduce the "
            "perturbation radius"
        )
        raise NumericalError(msg)
