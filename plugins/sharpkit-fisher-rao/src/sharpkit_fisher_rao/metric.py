"""The Fisher-Rao norm (Liang, Poggio, Rakhlin & Stokes, AISTATS 2019).

For parameters θ and per-example loss ℓ, the Fisher-Rao norm is

    ‖θ‖_fr² = θᵀ F(θ) θ = E_x E_y [ (d/dt ℓ(f_{θ+tθ}(x), y) |_{t=0})² ],

i.e. the mean squared directional derivative of the loss along θ itself. With
``fisher="model"`` (the default, the true Fisher) y is drawn from the model's own
predictive distribution p = softmax(f(x)); for cross-entropy the inner expectation
is exact: with ḟ = d/dt f_{θ+tθ}(x), the derivative for label c is
-(ḟ_c - pᵀḟ), so E_y[...] = Var_p(ḟ). With ``fisher="empirical"`` y is the data's
label and the analysis context's own loss function is differentiated, so any loss
works. ḟ for a whole batch costs one forward-mode pass (``torch.func.jvp``).

The value is exact on the analysis set; ``stderr`` is the standard error over
examples (delta method for the square root), i.e. how much the number would move
with a different sample of the same size.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING

import sharpkit

if TYPE_CHECKING:
    import torch


class FisherRaoNorm:
    """Compute ‖θ‖_fr over the analysis set.

    Args:
        fisher: ``"model"`` (labels from the model, needs logits and cross-entropy
            semantics) or ``"empirical"`` (labels from the data, any loss).
    """

    def __init__(self, fisher: str = "model") -> None:
        if fisher not in ("model", "empirical"):
            msg = f"fisher must be 'model' or 'empirical', got {fisher!r}"
            raise sharpkit.ConfigError(msg)
        self.fisher = fisher

    def _per_example(
        self, ctx: sharpkit.AnalysisContext, x: torch.Tensor, y: torch.Tensor
    ) -> torch.Tensor:
        import torch
        from torch.func import functional_call, jvp, vmap

        model = ctx.model
        params = {k: v.detach() for k, v in model.named_parameters() if v.requires_grad}
        # clone buffers: batch norm in train mode would update them in place
        buffers = {k: v.detach().clone() for k, v in model.named_buffers()}

        if self.fisher == "model":

            def logits(p: dict[str, torch.Tensor]) -> torch.Tensor:
                return functional_call(model, (p, buffers), (x,))

            out, dout = jvp(logits, (params,), (params,))
            prob = torch.softmax(out, dim=-1)
            mean = (prob * dout).sum(-1, keepdim=True)
            return (prob * (dout - mean) ** 2).sum(-1)

        def losses(p: dict[str, torch.Tensor]) -> torch.Tensor:
            out = functional_call(model, (p, buffers), (x,))
            return vmap(lambda o, t: ctx.loss_fn(o[None], t[None]))(out, y)

        _, dloss = jvp(losses, (params,), (params,))
        return dloss**2

    def compute(self, ctx: sharpkit.AnalysisContext) -> sharpkit.MetricResult:
        """Measure the Fisher-Rao norm of ``ctx.model`` on ``ctx.data``."""
        import torch

        start = time.perf_counter()
        chunks = []
        n = len(ctx.data)
        done = 0
        for x, y in ctx.data.batches(ctx.batch_size):
            with torch.no_grad():
                chunks.append(self._per_example(ctx, x, y).double())
            done += len(x)
            ctx.progress(done, n)
        sq = torch.cat(chunks)
        mean = float(sq.mean())
        if not math.isfinite(mean):
            msg = "the Fisher-Rao norm is not finite; check the model and the data"
            raise sharpkit.NumericalError(msg)
        value = math.sqrt(max(mean, 0.0))
        se_mean = (
            float(sq.std(unbiased=True)) / math.sqrt(len(sq)) if len(sq) > 1 else 0.0
        )
        stderr = se_mean / (2 * value) if value > 0 else se_mean
        return sharpkit.MetricResult(
            value=value,
            stderr=stderr,
            hvps=0,
            seconds=time.perf_counter() - start,
            arrays={"per_example_squared": sq.cpu().numpy()} if len(sq) <= 4096 else {},
            attrs={"fisher": self.fisher, "examples": len(sq)},
        )
