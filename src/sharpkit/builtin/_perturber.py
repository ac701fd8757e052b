"""The perturbation metrics' shared evaluator: the loss at ``θ + δ``, ``θ`` restored.

Used by ``epsilon`` and ``adaptive`` (:mod:`sharpkit.builtin.perturbation`) and
by the PAC-Bayes σ* metrics (:mod:`sharpkit.builtin._pacbayes`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from sharpkit import AnalysisContext, ConfigError, NumericalError

if TYPE_CHECKING:
    import torch

    from sharpkit import DataEstimate

__all__ = [
    "DATA_CHUNKS",
    "Perturber",
    "check_data_error",
    "check_finite",
    "increase_data",
]

DATA_CHUNKS = 16
"""Chunks of the analysis set for a perturbation metric's ``data_error`` (as
the Hessian metrics': 15 degrees of freedom)."""


class Perturber:
    """Evaluates the loss (and its gradient) at ``θ + δ`` and restores ``θ`` exactly."""

    def __init__(self, ctx: AnalysisContext, block: str = "") -> None:
        self.ctx = ctx
        named = [
            (n, p)
            for n, p in ctx.model.named_parameters()
            if p.requires_grad and p.is_floating_point()
        ]
        self.block_attrs: dict[str, object] = {}
        if block:  # only this block's parameters move
            from sharpkit import select_block

            name, chosen = select_block([n for n, _ in named], block)
            keep = set(chosen)
            named = [(n, p) for n, p in named if n in keep]
            self.block_attrs = {
                "block": block,
                "block_name": name,
                "block_params": chosen,
                "block_size": sum(p.numel() for _, p in named),
            }
        self.params = [p for _, p in named]
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

    def chunk_losses(self, chunks: int = DATA_CHUNKS) -> tuple[np.ndarray, np.ndarray]:
        """The mean loss of each of ``chunks`` consecutive chunks, and their sizes.

        One pass over the data in the usual batches, as :meth:`loss` (counted
        as one evaluation): each batch's outputs are cut at the chunks' edges
        and the loss taken on each piece; the size-weighted mean of the
        chunks' losses is :meth:`loss`.
        """
        import torch

        n = len(self.ctx.data)
        k = min(chunks, n)
        bounds = np.array([n * i // k for i in range(k + 1)])
        losses = np.zeros(k)
        start = 0
        with torch.no_grad():
            for x, y in self.ctx.data.batches(self.ctx.batch_size):
                out = self.ctx.model(x)
                stop = start + len(x)
                first = int(np.searchsorted(bounds, start, side="right")) - 1
                for c in range(first, k):
                    lo, hi = max(start, bounds[c]), min(stop, bounds[c + 1])
                    if lo >= hi:
                        break
                    piece = slice(lo - start, hi - start)
                    value = float(self.ctx.loss_fn(out[piece], y[piece]))
                    losses[c] += value * (hi - lo)
                start = stop
        self.evaluations += 1
        sizes = np.diff(bounds).astype(np.float64)
        return losses / sizes, sizes

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


def check_data_error(ctx: AnalysisContext) -> None:
    """Refuse a data error the context cannot give.

    Raises:
        ConfigError: Fewer than 2 examples, or batch statistics (the chunks'
            losses would depend on how the data are cut).
    """
    if ctx.bn_mode == "train":
        msg = (
            "data_error needs examples that do not interact, but with "
            "bn_mode='train' batch statistics enter every loss; use bn_mode='eval'"
        )
        raise ConfigError(msg)
    if len(ctx.data) < 2:
        msg = "data_error needs at least 2 examples to cut into chunks"
        raise ConfigError(msg)


def increase_data(top: np.ndarray, base: np.ndarray, sizes: np.ndarray) -> DataEstimate:
    """The data standard error of a mean loss increase ``L(θ+δ) - L(θ)``.

    Linear in the chunks: their increases' spread (delete-a-chunk jackknife).

    Args:
        top: Chunk losses at ``θ + δ`` (for several ``δ``: ``(draws, K)``, averaged).
        base: Chunk losses at ``θ``.
        sizes: Chunk sizes.
    """
    from sharpkit import linear_estimate

    per_chunk = np.atleast_2d(top).mean(0) - base
    return linear_estimate(per_chunk, sizes, method="jackknife-linear")
