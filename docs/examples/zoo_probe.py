"""A probe plugin: the loss along the gradient, registered as ``gradient-line``.

A probe gets the model(s) in ``ctx.models`` and returns values on a grid: here
the training loss at ``θ + α·g/‖g‖`` for α on a grid, where ``g`` is the gradient
of the training loss at the minimum. It works on a copy, so the model passed in
is left exactly as it was, and it draws no random numbers.
"""

from __future__ import annotations

import sharpkit


class GradientLine:
    """Loss along the normalised gradient, ``alpha = "start:stop:num"``."""

    def __init__(self, alpha: str = "-1:1:11") -> None:
        start, stop, num = alpha.split(":")
        self.alpha = (float(start), float(stop), int(num))

    def run(self, ctx: sharpkit.ProbeContext) -> sharpkit.ProbeResult:
        """Evaluate the training loss along the line."""
        import copy

        import numpy as np
        import torch

        if len(ctx.models) != 1:
            msg = f"gradient-line takes one model, got {len(ctx.models)}"
            raise sharpkit.ConfigError(msg)
        model = copy.deepcopy(ctx.models[0]).eval()
        params = [p for p in model.parameters() if p.requires_grad]
        x, y = (
            ctx.train_data.inputs.to(ctx.device),
            ctx.train_data.targets.to(ctx.device),
        )
        grads = torch.autograd.grad(ctx.loss_fn(model(x), y), params)
        norm = torch.sqrt(sum((g * g).sum() for g in grads))
        start = [p.detach().clone() for p in params]
        alphas = np.linspace(*self.alpha)
        losses = []
        with torch.no_grad():
            for a in alphas:
                for p, p0, g in zip(params, start, grads, strict=True):
                    p.copy_(p0 + float(a) * g / norm)
                losses.append(float(ctx.loss_fn(model(x), y)))
                ctx.progress(len(losses), len(alphas))
        loss = np.array(losses)
        return sharpkit.ProbeResult(
            coords={"alpha": alphas},
            arrays={"train_loss": loss},
            summary={
                "gradient_norm": float(norm),
                "max_increase": float(loss.max() - loss[np.argmin(np.abs(alphas))]),
            },
        )


GRADIENT_LINE = sharpkit.ProbeSpec(
    name="gradient-line",
    factory=GradientLine,
    description="Training loss along the normalised gradient through the minimum.",
    options=(
        sharpkit.Option(
            name="alpha", type=str, default="-1:1:11", help="Grid: start:stop:num."
        ),
    ),
    n_models=1,
)


@sharpkit.hookimpl
def sharpkit_register_probes() -> list[sharpkit.ProbeSpec]:
    """Register the probe."""
    return [GRADIENT_LINE]
