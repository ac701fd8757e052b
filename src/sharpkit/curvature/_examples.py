r"""Per-example terms of a Rayleigh quotient: ``vᵀ H_i v`` for every example.

The Hessian of a mean loss is the mean of the examples' Hessians, so for a fixed
``v`` the Rayleigh quotient ``vᵀHv / vᵀv`` is the mean of the per-example terms
``q_i = vᵀ H_i v / vᵀv = d²/dt² ℓ_i(θ + t v) / vᵀv``. All of them come from one
second-order forward pass (a ``jvp`` of a ``jvp`` along ``v``, no backward):
the model runs on the batch as usual and the loss on each example alone
(``vmap`` over batches of one), so the terms need a loss whose value on a batch
is the mean of its values on the examples (a plain mean; a class-weighted loss
is not, and the caller checks that the terms' mean is the Rayleigh quotient).

They give the data standard error of a Rayleigh quotient with ``N - 1`` degrees
of freedom instead of a chunk jackknife's ``K - 1`` and show how the curvature
is spread over the examples: near zero loss a handful of examples carry most of
``vᵀHv`` (see :func:`~sharpkit.curvature.uncertainty.tail_index`).
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from sharpkit.curvature._batching import iter_batches
from sharpkit.curvature._modes import analysis_mode
from sharpkit.errors import ConfigError

if TYPE_CHECKING:
    from sharpkit.curvature.operator import HessianOperator

__all__ = ["example_rayleigh"]


def _per_example_loss(loss_fn: Any, out: Tensor, y: Tensor) -> Tensor:
    """``loss_fn`` on every example alone: ``(B,)``."""
    from torch.func import vmap

    def one(o: Tensor, t: Tensor) -> Tensor:
        value: Tensor = loss_fn(o.unsqueeze(0), t.unsqueeze(0))
        return value.reshape(())

    result: Tensor = vmap(one)(out, y)
    return result


def _batch_terms(
    model: Any,
    loss_fn: Any,
    state: dict[str, Tensor],
    moved: list[tuple[str, Tensor, Tensor]],
    x: Any,
    y: Any,
) -> Tensor:
    """``d²/dt² ℓ_i(θ + t d)`` at ``t = 0`` for the examples of one batch."""
    from torch.func import functional_call, jvp

    args = x if isinstance(x, tuple) else (x,)
    like = moved[0][1]
    zero = torch.zeros((), dtype=like.dtype, device=like.device)
    one = torch.ones((), dtype=like.dtype, device=like.device)

    def loss_at(t: Tensor) -> Tensor:
        now = dict(state)
        now.update((n, p + t * d) for n, p, d in moved)
        return _per_example_loss(loss_fn, functional_call(model, now, args), y)

    def slope(t: Tensor) -> Tensor:
        out: Tensor = jvp(loss_at, (t,), (one,))[1]
        return out

    with warnings.catch_warnings():
        # torch.func's first forward-mode use scripts a helper and torch warns
        # about its own call (not the user's to act on)
        warnings.filterwarnings("ignore", ".*torch.jit.script.*", FutureWarning)
        second: Tensor = jvp(slope, (zero,), (one,))[1]
    return second.double().cpu()


def example_rayleigh(op: HessianOperator, vectors: Tensor) -> Tensor:
    """Return ``q_ij = v_jᵀ H_i v_j / v_jᵀ v_j`` for every example ``i``.

    Args:
        op: The operator whose model, loss, data and parameters define ``H``
            (one process: a ``process_group`` is not used).
        vectors: ``(n,)`` or ``(n, k)`` directions.

    Returns:
        ``(N, k)`` float64 on the CPU, in the order of the data.

    Raises:
        ConfigError: ``bn_mode="train"`` (the examples interact) or parameters
            that are not the model's.
    """
    if op.bn_mode == "train":
        msg = "per-example terms need examples that do not interact; use bn_mode='eval'"
        raise ConfigError(msg)
    names = [str(n) for n in op._param_names if n is not None]
    if len(names) != len(op.params):
        msg = "per-example terms need params= to be parameters of the model"
        raise ConfigError(msg)
    model, loss_fn = op.model, op.loss_fn
    vs = vectors.reshape(op.n, -1).to(device=op.device, dtype=op.dtype)
    out: list[Tensor] = []
    with analysis_mode(model, op.bn_mode, fuse_bn=op.fuse_bn), torch.no_grad():
        chosen = set(names)
        state = {k: t.detach() for k, t in model.named_parameters() if k not in chosen}
        state.update(dict(model.named_buffers()))
        base = [p.detach() for p in op.params]
        batches = iter_batches(
            op.data,
            op.batch_size,
            rank=0,
            world=1,
            loss_fn=loss_fn,
            device=op.device,
            dtype=op.dtype,
            count=lambda _: None,
        )
        for x, y, _ in batches:
            cols = [
                _batch_terms(
                    model,
                    loss_fn,
                    state,
                    list(zip(names, base, op._space.unflat(vs[:, j]), strict=True)),
                    x,
                    y,
                )
                for j in range(vs.shape[1])
            ]
            out.append(torch.stack(cols, dim=1))
    norms = (vs.double() * vs.double()).sum(0).cpu()
    return torch.cat(out) / norms
