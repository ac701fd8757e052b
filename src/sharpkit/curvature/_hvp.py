"""Hessian-vector product strategies of one batch, over a flat parameter vector.

:class:`ParamSpace` maps between a flat vector and the parameters' shapes;
:func:`backward_columns` differentiates a graph-connected gradient against a
block of vectors (double backward, Pearlmutter's R-operator); :class:`FuncProduct`
is the forward-over-reverse product (``torch.func.jvp`` of ``torch.func.grad``),
``vmap``-ped over a block of vectors and optionally under ``torch.compile``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from sharpkit.errors import ConfigError

__all__ = ["FuncProduct", "ParamSpace", "backward_columns", "once_differentiable"]

_VMAP_CHUNK = 16
"""Vectors per vmapped forward-over-reverse call (bounds its memory)."""

_BATCH_CHUNK = 8
"""Vectors per batched backward pass through a gradient graph (bounds its memory)."""


class ParamSpace:
    """The parameters as one flat vector of ``n`` entries, in a dtype and device.

    Args:
        params: The parameters, in flat-vector order.
        dtype: Floating dtype of flat vectors.
        device: Device of flat vectors.
    """

    def __init__(
        self, params: Sequence[Tensor], dtype: torch.dtype, device: torch.device
    ) -> None:
        self.params = list(params)
        self.dtype = dtype
        self.device = device
        self.sizes = [p.numel() for p in self.params]
        self.n = int(sum(self.sizes))

    def flat(self, grads: Sequence[Tensor | None]) -> Tensor:
        """Concatenate per-parameter tensors (``None``: zeros) into ``(n,)``."""
        parts = [
            torch.zeros(p.numel(), dtype=self.dtype, device=self.device)
            if g is None
            else g.reshape(-1)
            for g, p in zip(grads, self.params, strict=True)
        ]
        return torch.cat(parts)

    def unflat(self, v: Tensor) -> list[Tensor]:
        """Split a flat ``(n,)`` vector into views shaped like the parameters."""
        out, offset = [], 0
        for p in self.params:
            out.append(v[offset : offset + p.numel()].view_as(p))
            offset += p.numel()
        return out

    def zeros(self, k: int) -> Tensor:
        """A ``(n, k)`` block of zeros."""
        return torch.zeros(self.n, k, dtype=self.dtype, device=self.device)


def backward_columns(
    space: ParamSpace,
    g: Tensor,
    v: Tensor,
    *,
    retain_last: bool,
    batched: bool = False,
) -> Tensor:
    """Return ``∂(g·v_j)/∂θ`` for each column ``v_j`` of ``v`` (``(n, k)``).

    Args:
        space: The parameters ``g`` is differentiated against.
        g: A flat gradient ``(n,)`` connected to the parameters' graph.
        v: The vectors, one per column.
        retain_last: Keep the graph after the last column.
        batched: Take up to :data:`_BATCH_CHUNK` columns through one backward
            pass (``is_grads_batched``: autograd ``vmap``s the backward over
            them, so each operation runs once on a stacked batch instead of
            once per column).

    Raises:
        RuntimeError: ``batched`` and an operation of the graph has no
            batching rule (the caller falls back to ``batched=False``).
    """
    k = v.shape[1]
    if not g.requires_grad:  # the gradient does not depend on the parameters
        return space.zeros(k)
    out = torch.empty(space.n, k, dtype=space.dtype, device=space.device)
    if batched and k > 1:
        for lo in range(0, k, _BATCH_CHUNK):
            hi = min(k, lo + _BATCH_CHUNK)
            with warnings.catch_warnings():
                # an operation without a batching rule is looped over inside
                # vmap (still exact); torch says so once per call
                warnings.filterwarnings("ignore", message=".*performance drop")
                cols = torch.autograd.grad(
                    g,
                    space.params,
                    grad_outputs=v[:, lo:hi].T.contiguous(),
                    retain_graph=retain_last or hi < k,
                    allow_unused=True,
                    is_grads_batched=True,
                )
            found: Sequence[Tensor | None] = cols  # None: an unused parameter
            offset = 0
            for c, size in zip(found, space.sizes, strict=True):
                part = out[offset : offset + size, lo:hi]
                if c is None:
                    part.zero_()
                else:
                    part.copy_(c.reshape(hi - lo, size).T)
                offset += size
        return out
    for j in range(k):
        cols = torch.autograd.grad(
            g,
            space.params,
            grad_outputs=v[:, j],
            retain_graph=retain_last or j < k - 1,
            allow_unused=True,
        )
        out[:, j] = space.flat(cols)
    return out


def once_differentiable(loss: Tensor) -> str:
    """The first ``@once_differentiable`` custom Function in ``loss``'s graph.

    Returns "" if there is none. Its backward runs without recording a graph,
    so a Hessian-vector product through it silently drops the
    second-derivative terms it should carry (torch raises nothing when the
    gradient it returns is used again): every curvature number would be wrong.
    """
    stack = [loss.grad_fn]
    seen: set[Any] = set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        fwd = getattr(node, "_forward_cls", None)
        backward = getattr(fwd, "backward", None)
        code = getattr(backward, "__code__", None)
        if code is not None and "once_differentiable" in code.co_qualname:
            return str(getattr(fwd, "__qualname__", type(node).__name__))
        stack.extend(nxt for nxt, _ in node.next_functions)
    return ""


class FuncProduct:
    """Forward-over-reverse ``size * H_b @ v`` of one batch (``torch.func``).

    Args:
        model: The model (its buffers are read in place, so they must not be
            replaced between calls; :func:`analysis_mode` restores them in place).
        loss_fn: ``loss(outputs, targets) -> scalar``.
        space: The parameters differentiated against.
        names: Each parameter's name in ``model`` (``None``: not a parameter of it).
        compile: ``torch.compile`` the single-vector product.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Callable[[Tensor, Tensor], Tensor],
        space: ParamSpace,
        names: Sequence[str | None],
        *,
        compile: bool = False,
    ) -> None:
        self.model = model
        self.loss_fn = loss_fn
        self.space = space
        self.names = list(names)
        self.compile = compile
        self._hvp: Any = None

    def _setup(self) -> Any:
        if self._hvp is not None:
            return self._hvp
        from torch.func import functional_call, grad, jvp

        if any(n is None for n in self.names):
            msg = (
                "method 'forward-over-reverse' needs params= to be parameters of "
                "the model; use method='double-backward'"
            )
            raise ConfigError(msg)
        names = [n for n in self.names if n is not None]
        chosen = set(names)
        model, loss_fn = self.model, self.loss_fn
        # Buffers are restored in place by analysis_mode, so the same tensor
        # objects stay valid for every call.
        fixed: dict[str, Tensor] = {
            k: t.detach() for k, t in model.named_parameters() if k not in chosen
        }
        fixed.update(dict(model.named_buffers()))

        def loss_of(p: tuple[Tensor, ...], x: Any, y: Any) -> Tensor:
            state = dict(fixed)
            state.update(zip(names, p, strict=True))
            args = x if isinstance(x, tuple) else (x,)
            out = functional_call(model, state, args)
            return loss_fn(out, y).reshape(())

        def hvp(
            primals: tuple[Tensor, ...],
            tangents: tuple[Tensor, ...],
            x: Any,
            y: Any,
        ) -> tuple[Tensor, ...]:
            g = grad(loss_of)
            if isinstance(y, Tensor) and y.is_floating_point():
                # Give floating targets an explicit zero tangent: left implicit,
                # it is a ZeroTensor, which the forward derivative of
                # mse_loss_backward writes to ("ZeroTensors are immutable").
                return jvp(  # type: ignore[no-any-return]
                    lambda p, t: g(p, x, t),
                    (primals, y),
                    (tangents, torch.zeros_like(y)),
                )[1]
            return jvp(lambda p: g(p, x, y), (primals,), (tangents,))[1]  # type: ignore[no-any-return]

        self._hvp = torch.compile(hvp) if self.compile else hvp
        return self._hvp

    def __call__(self, x: Any, y: Any, size: float, v: Tensor) -> Tensor:
        """Return ``size * H_b @ v`` for the batch ``(x, y)``, ``v`` of shape (n, k)."""
        from torch.func import vmap

        hvp = self._setup()
        space = self.space
        primals = tuple(p.detach() for p in space.params)
        k = v.shape[1]
        out = torch.empty(space.n, k, dtype=space.dtype, device=space.device)
        if k == 1 or self.compile:  # compiled: one vector at a time
            for j in range(k):
                res = hvp(primals, tuple(space.unflat(v[:, j])), x, y)
                out[:, j] = space.flat(res)
        else:
            for lo in range(0, k, _VMAP_CHUNK):
                block = v[:, lo : lo + _VMAP_CHUNK].T.contiguous()  # (c, n)
                tangents = tuple(
                    t.reshape(block.shape[0], *p.shape)
                    for t, p in zip(
                        torch.split(block, space.sizes, dim=1),
                        space.params,
                        strict=True,
                    )
                )
                res = vmap(lambda t: hvp(primals, t, x, y))(tangents)
                flat = torch.cat([r.reshape(r.shape[0], -1) for r in res], dim=1)
                out[:, lo : lo + block.shape[0]] = flat.T
        return out * size
