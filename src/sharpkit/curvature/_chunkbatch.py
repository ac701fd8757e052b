"""Every chunk's Hessian-vector product from one backward pass.

:class:`~sharpkit.curvature.sampling.ChunkedHessian` needs ``H_k v`` for each of
its ``K`` chunks. One :class:`~sharpkit.curvature.operator.HessianOperator` per
chunk gives them with ``K`` backward passes through ``K`` small graphs, and the
per-operation overhead of ``K`` passes over batches ``K`` times smaller is what
made the chunked product cost about 1.5 products of the whole set on a BN-MLP.

:class:`BatchedChunks` gives each chunk its own copy of the parameters,
``P = (θ_1, ..., θ_K)`` all equal to ``θ``, and evaluates chunk ``k`` at
``θ_k`` with :func:`torch.func.vmap` over the chunks (one batched forward over
all the examples, weights batched as the chunks are). ``Σ_k L_k(θ_k)`` has the
gradient ``(∇L_1, ..., ∇L_K)`` with respect to ``P`` (chunk ``k``'s loss
depends on ``θ_k`` only), and a backward pass of ``Σ_k ∇L_k · v`` through that
gradient's kept graph gives ``(H_1 v, ..., H_K v)`` at once: one pass over
batched matrices instead of ``K``.

It applies where the chunks can be batched: tensor inputs, a plain-mean loss
(each chunk weighs its size), a model that ``vmap`` can run, and a kept graph
that fits the memory budget; :meth:`ChunkedHessian.from_split
<sharpkit.curvature.sampling.ChunkedHessian.from_split>` falls back to one
operator per chunk elsewhere.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from sharpkit._data import DataSplit, loss_weight
from sharpkit.curvature._modes import analysis_mode, full_precision

__all__ = ["BatchedChunks"]

_SAFETY = 2.0
"""Peak memory of a backward over the saved tensors (as the operator's)."""


class BatchedChunks:
    """The products of ``K`` consecutive chunks' Hessians, all from one backward.

    Args:
        model: The model (its parameters' dtype and device are the operator's).
        loss_fn: ``loss(outputs, targets)``, mean reduction.
        data: The analysis set, tensor inputs.
        chunks: ``K``.
        bn_mode: ``"eval"`` only (batch statistics would couple the examples).
        memory_budget: Bytes the kept graph may use (``None``: no limit).
        allow_tf32: As for :class:`~sharpkit.curvature.operator.HessianOperator`.

    Raises:
        ValueError: The chunks cannot be batched (a non-tensor input, a
            weighted loss, a graph over the budget); the caller falls back.
        RuntimeError: ``vmap`` cannot run the model.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Callable[[Tensor, Tensor], Tensor],
        data: DataSplit,
        chunks: int,
        *,
        bn_mode: str = "eval",
        memory_budget: int | None = None,
        allow_tf32: bool = False,
    ) -> None:
        named = [(k, p) for k, p in model.named_parameters() if p.requires_grad]
        if not named or bn_mode != "eval" or not isinstance(data.inputs, Tensor):
            msg = "chunks cannot be batched: no parameters, bn_mode or inputs"
            raise ValueError(msg)
        self.names = [k for k, _ in named]
        self.shapes = [p.shape for _, p in named]
        first = named[0][1]
        self._dtype, self._device = first.dtype, first.device
        self.n = sum(p.numel() for _, p in named)
        size = len(data)
        self.k = k = int(chunks)
        self.bounds = [size * i // k for i in range(k + 1)]
        self.counts = [self.bounds[i + 1] - self.bounds[i] for i in range(k)]
        for i in range(k):
            y = data.targets[self.bounds[i] : self.bounds[i + 1]]
            if loss_weight(loss_fn, y, self.counts[i]) != self.counts[i]:
                msg = "a weighted-mean loss: chunks weigh more than their size"
                raise ValueError(msg)
        self.allow_tf32 = allow_tf32
        self.setup_seconds = 0.0
        start = time.perf_counter()
        with full_precision(not allow_tf32):
            self._build(model, loss_fn, data, memory_budget)
        self.setup_seconds = time.perf_counter() - start

    @property
    def dtype(self) -> torch.dtype:
        """Dtype of vectors and products."""
        return self._dtype

    @property
    def device(self) -> torch.device:
        """Device of vectors and products."""
        return self._device

    def _groups(self) -> list[tuple[int, int, int]]:
        """Runs of equal-size chunks: ``(first chunk, last + 1, size)``."""
        out: list[tuple[int, int, int]] = []
        for i, c in enumerate(self.counts):
            if out and out[-1][2] == c:
                out[-1] = (out[-1][0], i + 1, c)
            else:
                out.append((i, i + 1, c))
        return out

    def _build(
        self,
        model: nn.Module,
        loss_fn: Callable[[Tensor, Tensor], Tensor],
        data: DataSplit,
        budget: int | None,
    ) -> None:
        from torch.func import functional_call, vmap

        params = dict(model.named_parameters())
        chosen = set(self.names)
        fixed: dict[str, Tensor] = {
            k: p.detach() for k, p in params.items() if k not in chosen
        }
        fixed.update(dict(model.named_buffers()))
        self.P = [
            params[k]
            .detach()
            .unsqueeze(0)
            .expand(self.k, *params[k].shape)
            # a copy per chunk: batched matmuls on a stride-0 batch would copy
            .contiguous()
            .requires_grad_()
            for k in self.names
        ]
        names = self.names

        def loss_of(ps: tuple[Tensor, ...], x: Tensor, y: Tensor) -> Tensor:
            state = dict(fixed)
            state.update(zip(names, ps, strict=True))
            return loss_fn(functional_call(model, state, (x,)), y).reshape(())

        x_all = data.inputs.to(device=self._device)
        if x_all.is_floating_point():
            x_all = x_all.to(self._dtype)
        y_all = data.targets.to(device=self._device)
        if y_all.is_floating_point():
            y_all = y_all.to(self._dtype)
        saved = [0]

        def pack(t: Tensor) -> Tensor:
            saved[0] += t.numel() * t.element_size()
            return t

        total: Tensor | None = None
        with (
            analysis_mode(model, "eval"),
            torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t),
        ):
            for lo, hi, size in self._groups():
                a, b = self.bounds[lo], self.bounds[hi]
                xs = x_all[a:b].reshape(hi - lo, size, *x_all.shape[1:])
                ys = y_all[a:b].reshape(hi - lo, size, *y_all.shape[1:])
                part = tuple(p[lo:hi] for p in self.P)
                losses = vmap(loss_of)(part, xs, ys).sum()
                total = losses if total is None else total + losses
            assert total is not None
            grads = torch.autograd.grad(
                total, self.P, create_graph=True, allow_unused=True,
                materialize_grads=True,
            )  # fmt: skip
        if not any(g.requires_grad for g in grads):
            msg = "the gradient does not depend on the parameters"
            raise ValueError(msg)
        # a part of the gradient without a graph (the loss is linear in those
        # parameters) adds nothing to a product: leave it out of the backward
        self.live = [i for i, g in enumerate(grads) if g.requires_grad]
        self.g = [grads[i] for i in self.live]
        self.graph_bytes = int(saved[0] * _SAFETY)
        if budget is not None and self.graph_bytes > budget:
            msg = "the batched chunks' graph exceeds the memory budget"
            raise ValueError(msg)

    def products(self, v: Tensor) -> Tensor:
        """``H_k v`` for every chunk: ``(K, n)``; ``(K, n, b)`` for ``v`` ``(n, b)``."""
        cols = v.reshape(self.n, -1).to(device=self._device, dtype=self._dtype)
        sizes = [s.numel() for s in self.shapes]
        found = []
        with full_precision(not self.allow_tf32):
            for j in range(cols.shape[1]):
                parts = torch.split(cols[:, j], sizes)
                outs = [
                    t.view(s).unsqueeze(0).expand(self.k, *s)
                    for t, s in zip(parts, self.shapes, strict=True)
                ]
                hv: Any = torch.autograd.grad(
                    self.g,
                    self.P,
                    grad_outputs=[outs[i] for i in self.live],
                    retain_graph=True,
                    allow_unused=True,
                    materialize_grads=True,
                )
                found.append(torch.cat([h.reshape(self.k, -1) for h in hv], 1))
        if v.dim() == 1:
            return found[0]
        return torch.stack(found, dim=2)
