r"""Exact tr H for networks that are piecewise multilinear in their parameters.

For a loss ``L = (1/N) Σ_i ℓ(f(θ, x_i), y_i)`` the Hessian splits into the
generalised Gauss-Newton matrix and a curvature term of the network itself
(Schraudolph, 2002, Neural Computation; Martens, 2020, JMLR):

.. math::

    H = \\frac{1}{N} \\sum_i J_i^\\top \\Lambda_i J_i
      + \\frac{1}{N} \\sum_i \\sum_k \\frac{\\partial \\ell}{\\partial f_k}
        \\nabla^2_\\theta f_k(\\theta, x_i),

with ``J_i`` the Jacobian of the logits and ``Λ_i`` the Hessian of the loss with
respect to them. When the network is built only from operations that are linear
in each of their inputs (linear and convolution layers, batch norm in eval mode,
sums, padding, pooling by averaging) and piecewise-linear activations (ReLU,
max-pooling), with the inputs of every product depending on *disjoint* sets of
parameters, every logit is a polynomial of degree at most one in each single
parameter, almost everywhere. Then every diagonal entry of ``∇²_θ f_k`` is zero
and

.. math:: \\operatorname{tr} H = \\operatorname{tr} G
    = \\frac{1}{N} \\sum_i \\sum_c p_{ic} \\lVert J_{ic} \\rVert^2
      - \\lVert \\textstyle\\sum_c p_{ic} J_{ic} \\rVert^2

for the cross-entropy loss, whose Hessian with respect to the logits is
``diag(p) - p pᵀ`` for any target distribution (``J_ic`` is the gradient of logit
``c`` of example ``i``). This is an exact trace — no probes, no standard error —
for the ReLU and batch-norm networks of the paper (MLP, ResNet, VGG), at the cost
of one backward pass per class (plus one) over the data.

The options of ``nn.CrossEntropyLoss`` only rescale that Hessian per example
(:func:`cross_entropy_form`): with class weights ``w``, label smoothing ``ε``
and ``ignore_index``, the mean loss of a batch is
``Σ_i [(1-ε) w_{y_i} ℓ(y_i) + (ε/C) Σ_c w_c ℓ(c)] / Σ_i w_{y_i}`` over the
examples not ignored, so example ``i`` enters ``tr G`` with the factor
``((1-ε) w_{y_i} + (ε/C) Σ_c w_c) / Σ_j w_{y_j}`` (zero if ignored); with
probability targets ``q`` it is ``Σ_c w_c q'_ic / N`` (``q'`` smoothed). These
factors are computed per batch, as the loss computes them. Logits of shape
``(B, C, d1, ...)`` (a class per position, softmax over dimension 1) are
handled as ``B·d1·...`` examples, at one backward pass per class and position.

:func:`multilinear_check` decides whether the identity holds by walking the
autograd graph of one forward pass; :func:`ggn_trace` computes the trace for
networks whose parameters sit in linear, convolution and batch-norm layers
(:func:`supported_layers`).
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeGuard

import numpy as np
import torch
from torch import Tensor, nn

from sharpkit._data import DataSplit

__all__ = [
    "CrossEntropyForm",
    "cross_entropy_form",
    "ggn_block_traces",
    "ggn_trace",
    "logits_obstacle",
    "multilinear_check",
    "supported_layers",
]

# Operations linear in every input (products are checked for disjoint inputs).
_LINEAR = {
    "Add",
    "Sub",
    "Neg",
    "Sum",
    "Mean",
    "View",
    "Reshape",
    "ReshapeAlias",
    "UnsafeView",
    "Alias",
    "T",
    "Transpose",
    "Permute",
    "Expand",
    "Squeeze",
    "Unsqueeze",
    "Clone",
    "ToCopy",
    "Cat",
    "Stack",
    "Slice",
    "Select",
    "Index",
    "Split",
    "SplitWithSizes",
    "Unbind",
    "Narrow",
    "ConstantPadNd",
    "AvgPool1D",
    "AvgPool2D",
    "AvgPool3D",
    "AdaptiveAvgPool1D",
    "AdaptiveAvgPool2D",
    "AdaptiveAvgPool3D",
    "Flatten",
    "AsStrided",
}
# Piecewise-linear activations of one input.
_PIECEWISE = {
    "Relu",
    "Threshold",
    "LeakyRelu",
    "Hardtanh",
    "Abs",
    "Clamp",
    "ClampMin",
    "ClampMax",
    "MaxPool1DWithIndices",
    "MaxPool2DWithIndices",
    "MaxPool3DWithIndices",
    "AdaptiveMaxPool1D",
    "AdaptiveMaxPool2D",
    "AdaptiveMaxPool3D",
}
# Multilinear products: their differentiable inputs must depend on disjoint parameters.
_PRODUCT = {
    "Mm",
    "Addmm",
    "Bmm",
    "Baddbmm",
    "Mv",
    "Addmv",
    "Matmul",
    "Mul",
    "Convolution",
    "MkldnnConvolution",
    "CudnnConvolution",
    "NativeBatchNorm",
    "CudnnBatchNorm",
    "NativeLayerNorm_never",  # layer norm normalises by data: never linear
}
_NAME = re.compile(r"^(.*?)Backward\d*$")
# Batch-norm kernels: linear in their input only with running statistics
# (their node records which: ``_saved_training``).
_BATCH_NORM = {"NativeBatchNorm", "CudnnBatchNorm", "MiopenBatchNorm"}


def _batch_statistics(m: nn.Module) -> str:
    """Why ``m`` normalises with statistics of its input ("" if it does not).

    Batch norm in training mode, or without running statistics (then it uses
    batch statistics even in eval mode), and instance norm by default.
    """
    if not isinstance(m, nn.modules.batchnorm._NormBase):
        return ""
    if m.training:
        return f"{type(m).__name__} uses batch statistics (bn_mode='train')"
    if not m.track_running_stats or m.running_mean is None:
        return (
            f"{type(m).__name__} has no running statistics, so it normalises with "
            "statistics of the batch"
        )
    return ""


def _base(node: Any) -> str:
    name = type(node).__name__
    found = _NAME.match(name)
    return found.group(1) if found else name


def multilinear_check(model: nn.Module, example: Tensor) -> tuple[bool, str]:
    """Decide whether tr H = tr G holds exactly for ``model`` (see the module doc).

    Args:
        model: The network, in the mode it will be analysed in.
        example: A small input batch (one example is enough).

    Returns:
        ``(True, "")`` when every operation between the parameters and the logits
        is linear or piecewise linear in each parameter; otherwise ``False`` and
        the reason (the first operation that is not).
    """
    for m in model.modules():
        why = _batch_statistics(m)
        if why:
            return False, why
        if isinstance(m, nn.Dropout | nn.modules.dropout._DropoutNd) and m.training:
            return False, "dropout is active"
    with torch.enable_grad():
        out = model(example)
    if not isinstance(out, Tensor) or out.grad_fn is None:
        return False, "the output does not depend on the parameters"
    names = {id(p): name for name, p in model.named_parameters() if p.requires_grad}
    params = set(names)
    deps: dict[Any, frozenset[int]] = {}
    order: list[Any] = []
    stack: list[tuple[Any, bool]] = [(out.grad_fn, False)]
    seen: set[Any] = set()
    while stack:  # iterative post-order: deep ResNets exceed the recursion limit
        node, expanded = stack.pop()
        if expanded:
            order.append(node)
            continue
        if node in seen:
            continue
        seen.add(node)
        stack.append((node, True))
        for nxt, _ in node.next_functions:
            if nxt is not None and nxt not in seen:
                stack.append((nxt, False))
    for node in order:
        inputs = [nxt for nxt, _ in node.next_functions if nxt is not None]
        if type(node).__name__ == "AccumulateGrad":
            var = node.variable
            deps[node] = frozenset({id(var)} if id(var) in params else ())
            continue
        sets = [deps.get(n, frozenset()) for n in inputs]
        union = frozenset().union(*sets)
        deps[node] = union
        if not union:
            continue  # a constant branch: anything goes
        if isinstance(node, torch.autograd.function.BackwardCFunction):
            # a Python autograd.Function: its name says nothing of what it does
            return False, (
                f"a custom autograd.Function ({type(node).__name__}) whose "
                "linearity cannot be checked"
            )
        base = _base(node)
        if base in _LINEAR or base in _PIECEWISE:
            continue
        if base in _BATCH_NORM and getattr(node, "_saved_training", True):
            # normalised by statistics of the data: not linear in the input
            return False, "a batch norm normalises with batch statistics"
        if base == "Div":
            if len(sets) > 1 and sets[1]:
                return False, "a division by a parameter-dependent tensor"
            continue
        if base in _PRODUCT and not base.endswith("_never"):
            live = [s for s in sets if s]
            for i, a in enumerate(live):
                for b in live[i + 1 :]:
                    if a & b:
                        return False, f"{base} multiplies a parameter with itself"
            continue
        return False, f"operation {type(node).__name__} is not piecewise linear"
    why = _shared_use(order, names)
    return (False, why) if why else (True, "")


def _shared_use(order: Sequence[Any], names: dict[int, str]) -> str:
    """Why a trainable parameter enters the graph more than once ("" if none does).

    A weight tied across two layers, a layer called twice per forward pass
    (a Siamese network) or a layer's weight also used outside it: the
    identity may still hold, but :func:`ggn_trace` takes each layer's
    per-example gradient from one call of it, and the square of a sum is not
    the sum of squares.
    """
    uses: dict[Any, int] = {}
    for node in order:
        for nxt, _ in node.next_functions:
            if nxt is not None and type(nxt).__name__ == "AccumulateGrad":
                uses[nxt] = uses.get(nxt, 0) + 1
    for leaf, count in uses.items():
        name = names.get(id(leaf.variable))
        if name is not None and count > 1:
            return (
                f"parameter {name} is used {count} times in one forward pass "
                "(a shared or tied weight, or a layer called twice)"
            )
    return ""


@dataclass(frozen=True)
class CrossEntropyForm:
    """The options of a mean cross-entropy loss (they fix its logit Hessian).

    Attributes:
        weight: Class weights ``(C,)`` or ``None``.
        ignore_index: Class index whose examples are left out.
        label_smoothing: ``ε`` in ``[0, 1]``.
    """

    weight: Tensor | None = None
    ignore_index: int = -100
    label_smoothing: float = 0.0

    def describe(self) -> dict[str, Any]:
        """JSON-compatible summary (for a result's attributes)."""
        return {
            "weighted": self.weight is not None,
            "ignore_index": self.ignore_index,
            "label_smoothing": self.label_smoothing,
        }


_CE_OPTIONS = {"weight", "ignore_index", "label_smoothing", "reduction"}


def cross_entropy_form(
    loss_fn: Callable[..., Any],
) -> tuple[CrossEntropyForm | None, str]:
    """Return the options of ``loss_fn`` if it is mean cross-entropy, else a reason.

    Recognised: ``F.cross_entropy``, ``functools.partial`` of it with keyword
    options, and ``nn.CrossEntropyLoss`` (not a subclass with its own
    ``forward``). Every option is covered: ``weight``, ``ignore_index`` and
    ``label_smoothing`` rescale the logit Hessian per example (see the module
    docstring); any ``reduction`` but ``"mean"`` is refused.

    Returns:
        ``(form, "")`` or ``(None, why)``.
    """
    f = nn.functional.cross_entropy
    if loss_fn is f:
        return CrossEntropyForm(), ""
    if isinstance(loss_fn, functools.partial) and loss_fn.func is f:
        kw = dict(loss_fn.keywords)
        if loss_fn.args or not set(kw) <= _CE_OPTIONS:
            return None, "a partial of cross_entropy with options it cannot read"
        reduction = kw.pop("reduction", "mean")
        opts = kw
    elif isinstance(loss_fn, nn.CrossEntropyLoss):
        if type(loss_fn).forward is not nn.CrossEntropyLoss.forward:
            return None, f"{type(loss_fn).__name__} overrides CrossEntropyLoss.forward"
        reduction = loss_fn.reduction
        opts = {
            "weight": loss_fn.weight,
            "ignore_index": loss_fn.ignore_index,
            "label_smoothing": loss_fn.label_smoothing,
        }
    else:
        return None, "the loss is not cross-entropy"
    if reduction != "mean":
        return None, f"cross-entropy with reduction={reduction!r}"
    weight = opts.get("weight")
    return (
        CrossEntropyForm(
            weight=weight.detach() if isinstance(weight, Tensor) else None,
            ignore_index=int(opts.get("ignore_index", -100)),
            label_smoothing=float(opts.get("label_smoothing", 0.0)),
        ),
        "",
    )


def logits_obstacle(logits_shape: Sequence[int], targets: Tensor) -> str:
    """Why ``targets`` are not cross-entropy targets for these logits ("" if fine).

    Class indices need the logits' shape without dimension 1; probabilities
    need the logits' shape. ``targets`` may hold fewer examples than the logits.
    """
    shape = tuple(logits_shape)
    if len(shape) < 2:
        return f"outputs of shape {shape} are not (batch, classes, ...) logits"
    got = tuple(targets.shape[1:])
    want = shape[1:] if targets.is_floating_point() else shape[2:]
    if got != want:
        kind = "probability" if targets.is_floating_point() else "class-index"
        return (
            f"{kind} targets of per-example shape {got} do not fit logits of "
            f"shape {shape} (cross-entropy takes classes along dimension 1)"
        )
    return ""


def _example_factors(form: CrossEntropyForm, logits: Tensor, y: Tensor) -> Tensor:
    """Factor of each example (and position) in the batch's logit Hessian.

    ``logits`` is ``(B, C, P)``; the batch's mean loss has the logit Hessian
    ``Σ_ip a_ip (diag p_ip - p_ip p_ipᵀ)``; returns ``a``, ``(B, P)`` float64.
    """
    b, c, p = logits.shape
    w = None if form.weight is None else form.weight.to(logits.device, torch.float64)
    eps = form.label_smoothing
    if y.is_floating_point():  # probabilities: mean over the B·P elements
        q = y.reshape(b, c, p).to(torch.float64) * (1 - eps) + eps / c
        if w is not None:
            q = q * w.view(1, c, 1)
        return q.sum(1) / (b * p)
    y = y.reshape(b, p)
    keep = y != form.ignore_index
    safe = torch.where(keep, y, torch.zeros_like(y))
    valid = keep.to(torch.float64)  # a bool times a float is float32: cast first
    w_y = (w[safe] if w is not None else torch.ones_like(valid)) * valid
    w_all = float(w.sum()) if w is not None else float(c)
    numer = (1 - eps) * w_y + (eps / c) * w_all * valid
    return numer / w_y.sum()


_HOOKED = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.modules.batchnorm._BatchNorm)


def supported_layers(model: nn.Module) -> tuple[bool, str]:
    """Whether every trainable parameter sits in a layer :func:`ggn_trace` handles.

    Those are ``Linear``, ``Conv1d``/``Conv2d`` (one group) and batch norm in eval
    mode, each holding only ``weight`` and ``bias``.
    """
    owned: set[int] = set()
    for m in model.modules():
        own = [p for p in m.parameters(recurse=False) if p.requires_grad]
        if not own:
            continue
        if not isinstance(m, _HOOKED):
            return False, f"parameters in a {type(m).__name__} layer"
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and _batch_statistics(m):
            return False, _batch_statistics(m)
        if isinstance(m, nn.Conv1d | nn.Conv2d):
            if m.groups != 1:
                return False, "a grouped convolution"
            if isinstance(m.padding, str) or m.padding_mode != "zeros":
                return False, "a convolution with non-zero or named padding"
        owned.update(id(p) for p in own)
    total = {id(p) for p in model.parameters() if p.requires_grad}
    if owned != total:
        return False, "parameters outside Linear/Conv/BatchNorm layers"
    return True, ""


def _trainable(p: object) -> TypeGuard[Tensor]:
    return isinstance(p, Tensor) and p.requires_grad


def _conv_unfold(m: nn.Conv1d | nn.Conv2d, a: Tensor) -> Tensor:
    """Im2col of the layer's input: (B, C_in·k, L) (zero, numeric padding only)."""
    pad = tuple(int(v) for v in m.padding)  # supported_layers refused named padding
    if isinstance(m, nn.Conv1d):
        return nn.functional.unfold(
            a.unsqueeze(-1),
            (m.kernel_size[0], 1),
            dilation=(m.dilation[0], 1),
            padding=(pad[0], 0),
            stride=(m.stride[0], 1),
        )
    return nn.functional.unfold(
        a, m.kernel_size, dilation=m.dilation, padding=pad, stride=m.stride
    )


#: Elements of the largest temporary a chunk of examples may create (256 MiB).
_CHUNK_ELEMENTS = 64 * 2**20


def _conv_weight_sq_norms(m: nn.Conv1d | nn.Conv2d, a: Tensor, d3: Tensor) -> Tensor:
    """Per-example ``‖∂/∂W‖²`` of a convolution, in chunks of examples.

    The per-example weight gradient is ``G = D Uᵀ`` with ``D`` the output
    gradient (C_out × L positions) and ``U`` the unfolded input (K = C_in·k × L).
    Either form ``G`` (C_out·K numbers per example, C_out·K·L work) or use
    ``‖D Uᵀ‖² = Σ (DᵀD) ∘ (UᵀU)`` (L² numbers, L²·(C_out + K) work; the "ghost
    norm" of Li et al., 2022, arXiv:2110.05679), whichever costs less: deep
    layers have few positions and many channels, early layers the reverse.
    """
    b, c_out, positions = d3.shape
    k = m.in_channels * math.prod(m.kernel_size)
    ghost = positions * (k + c_out) < c_out * k
    per_example = max(
        k * positions,  # the unfolded input
        positions * positions if ghost else c_out * k,
    )
    step = max(1, _CHUNK_ELEMENTS // per_example)
    parts = []
    for lo in range(0, b, step):
        u = _conv_unfold(m, a[lo : lo + step])
        dc = d3[lo : lo + step]
        if ghost:
            gram_u = torch.bmm(u.transpose(1, 2), u)
            gram_d = torch.bmm(dc.transpose(1, 2), dc)
            parts.append((gram_u.double() * gram_d.double()).sum((1, 2)))
        else:
            g = torch.bmm(dc, u.transpose(1, 2))
            parts.append(g.double().pow(2).sum((1, 2)))
    return torch.cat(parts)


def _sq_norms(m: nn.Module, a: Tensor, d: Tensor) -> list[tuple[Tensor, Tensor]]:
    """Per-example squared norm of the gradient of each of ``m``'s parameters.

    ``a`` is the layer's input and ``d`` the gradient of the scalar with respect
    to the layer's output, both with the batch first (examples do not interact:
    eval mode). Returns ``(parameter, (B,) float64)`` for each trainable one.
    """
    b = a.shape[0]
    out: list[tuple[Tensor, Tensor]] = []
    if isinstance(m, nn.Linear):
        if a.dim() == 2:
            if _trainable(m.weight):
                out.append(
                    (m.weight, (a * a).sum(-1).double() * (d * d).sum(-1).double())
                )
            if _trainable(m.bias):
                out.append((m.bias, (d * d).sum(-1).double()))
        else:  # (B, ..., in): the gradient sums outer products over positions
            a3, d3 = a.reshape(b, -1, a.shape[-1]), d.reshape(b, -1, d.shape[-1])
            if _trainable(m.weight):
                g = torch.einsum("bto,bti->boi", d3, a3)
                out.append((m.weight, g.double().pow(2).sum((1, 2))))
            if _trainable(m.bias):
                out.append((m.bias, d3.sum(1).double().pow(2).sum(-1)))
    elif isinstance(m, nn.Conv1d | nn.Conv2d):
        d3 = d.reshape(b, d.shape[1], -1)
        if _trainable(m.weight):
            out.append((m.weight, _conv_weight_sq_norms(m, a, d3)))
        if _trainable(m.bias):
            out.append((m.bias, d3.sum(-1).double().pow(2).sum(-1)))
    elif isinstance(m, nn.modules.batchnorm._BatchNorm):
        assert m.running_mean is not None
        assert m.running_var is not None
        shape = (1, -1) + (1,) * (a.dim() - 2)
        xhat = (a - m.running_mean.reshape(shape)) / torch.sqrt(
            m.running_var.reshape(shape) + m.eps
        )
        dims = tuple(range(2, a.dim()))
        if _trainable(m.weight):
            gw = (d * xhat).sum(dims) if dims else d * xhat
            out.append((m.weight, gw.double().pow(2).sum(-1)))
        if _trainable(m.bias):
            gb = d.sum(dims) if dims else d
            out.append((m.bias, gb.double().pow(2).sum(-1)))
    return out


def ggn_trace(
    model: nn.Module,
    data: DataSplit | Iterable[tuple[Tensor, Tensor]],
    *,
    batch_size: int = 512,
    progress: Callable[[int], None] | None = None,
    loss: CrossEntropyForm | None = None,
    per_example: list[Tensor] | None = None,
) -> tuple[float, int]:
    """Return ``(tr G, examples)`` of the mean cross-entropy over ``data``.

    ``tr G`` equals ``tr H`` when :func:`multilinear_check` passes. Per-example
    gradient norms are computed from layer inputs and output gradients
    (Goodfellow, 2015, "Efficient per-example gradient computations", arXiv:
    1510.01799), one backward pass per class plus one (per position, for logits
    ``(B, C, d1, ...)``), without materialising per-example gradients of linear
    layers; accumulated in float64. Batches are weighted by what their mean
    divides by (their size, or ``Σ w_{y_i}`` with class weights and
    ``ignore_index``), as in
    :class:`~sharpkit.curvature.operator.HessianOperator`, and each example by
    its factor in its batch's loss (class weights, ``ignore_index``, label
    smoothing: see the module docstring). The model must pass
    :func:`supported_layers` and be in eval mode (examples must not interact).

    Args:
        model: The network.
        data: The analysis set.
        batch_size: Examples per forward pass.
        progress: Called with the number of examples done.
        loss: The cross-entropy's options (default: plain mean cross-entropy).
        per_example: A list to append each batch's per-example contributions
            to (float64, ``(B,)``): example ``i``'s term of ``Σ_b W_b tr G_b``,
            which does not depend on its batch (its weight in the loss times
            its logit-Hessian trace term), so the trace of any subset is the
            sum of its contributions over the sum of its examples' weights
            (:func:`~sharpkit.curvature.uncertainty.exact_trace_estimate`).

    Raises:
        NotImplementedError: A layer or target shape this method cannot handle.
    """
    total, count, per = _ggn_pass(
        model, data, None, batch_size=batch_size, progress=progress, loss=loss
    )
    if per_example is not None:
        per_example.extend(p[:, 0] for p in per)
    return float(total[0]), count


def ggn_block_traces(
    model: nn.Module,
    data: DataSplit | Iterable[tuple[Tensor, Tensor]],
    groups: Sequence[Sequence[Tensor]],
    *,
    batch_size: int = 512,
    progress: Callable[[int], None] | None = None,
    loss: CrossEntropyForm | None = None,
    per_example: list[Tensor] | None = None,
) -> tuple[np.ndarray, int]:
    """Return ``(tr G_bb per group, examples)``: :func:`ggn_trace` split by blocks.

    ``tr G = Σ_i Σ_p ‖∂f/∂θ_p‖²``-type sums split over parameters, so one pass
    over the data gives the trace of every diagonal block ``G_bb`` (equal to
    ``tr H_bb`` where the identity holds: the diagonal of ``H`` is the
    diagonal of ``G``), and the blocks add up to :func:`ggn_trace`'s total.

    Args:
        model: The network (as for :func:`ggn_trace`).
        data: The analysis set.
        groups: Disjoint groups of parameters that together hold every
            trainable parameter of ``model``.
        batch_size: Examples per forward pass.
        progress: Called with the number of examples done.
        loss: The cross-entropy's options.
        per_example: A list to append each batch's ``(B, G)`` float64
            per-example contributions to (see :func:`ggn_trace`).

    Raises:
        NotImplementedError: As :func:`ggn_trace`.
        ValueError: Groups that overlap or miss a trainable parameter.
    """
    total, count, per = _ggn_pass(
        model, data, groups, batch_size=batch_size, progress=progress, loss=loss
    )
    if per_example is not None:
        per_example.extend(per)
    return total.numpy(), count


def _group_index(
    model: nn.Module, groups: Sequence[Sequence[Tensor]] | None
) -> dict[int, int]:
    """``id(parameter) -> group`` for every trainable parameter (all in 0 if none)."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    if groups is None:
        return {id(p): 0 for p in trainable}
    out: dict[int, int] = {}
    for g, members in enumerate(groups):
        for p in members:
            if id(p) in out:
                msg = "a parameter is in two groups"
                raise ValueError(msg)
            out[id(p)] = g
    if any(id(p) not in out for p in trainable):
        msg = "every trainable parameter must be in a group"
        raise ValueError(msg)
    return out


def _ggn_pass(
    model: nn.Module,
    data: DataSplit | Iterable[tuple[Tensor, Tensor]],
    groups: Sequence[Sequence[Tensor]] | None,
    *,
    batch_size: int,
    progress: Callable[[int], None] | None,
    loss: CrossEntropyForm | None,
) -> tuple[Tensor, int, list[Tensor]]:
    """The pass of :func:`ggn_trace`: totals per group, examples, per-example terms."""
    form = loss if loss is not None else CrossEntropyForm()
    ok, why = supported_layers(model)
    if not ok:
        msg = f"ggn_trace cannot handle {why}"
        raise NotImplementedError(msg)
    group_of = _group_index(model, groups)
    n_groups = 1 if groups is None else len(groups)
    layers = [
        m
        for m in model.modules()
        if any(p.requires_grad for p in m.parameters(recurse=False))
    ]
    seen: dict[nn.Module, list[tuple[Tensor, Tensor]]] = {m: [] for m in layers}

    def hook(m: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        seen[m].append((inputs[0].detach(), output))

    handles = [m.register_forward_hook(hook) for m in layers]
    batches = data.batches(batch_size) if isinstance(data, DataSplit) else data
    total = torch.zeros(n_groups, dtype=torch.float64)
    count = 0
    weights = 0.0
    per: list[Tensor] = []
    try:
        for x, y in batches:
            logits, taps = _tapped_forward(model, x, y, seen, layers)
            count += logits.shape[0]
            weight = _batch_weight(form, logits, y)
            if weight > 0:  # all targets ignored: no say in the mean loss
                part = weight * _batch_ggn(logits, y, taps, form, group_of, n_groups)
                total += part.sum(0)
                weights += weight
            else:
                part = torch.zeros(logits.shape[0], n_groups, dtype=torch.float64)
            per.append(part)
            if progress is not None:
                progress(count)
    finally:
        for h in handles:
            h.remove()
        for v in seen.values():
            v.clear()
    return (total / weights if weights > 0 else total * 0), count, per


def _tapped_forward(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    seen: dict[nn.Module, list[tuple[Tensor, Tensor]]],
    layers: list[nn.Module],
) -> tuple[Tensor, list[tuple[nn.Module, Tensor, Tensor]]]:
    """One forward pass: the logits and each layer's (input, output) tap."""
    for v in seen.values():
        v.clear()
    with torch.enable_grad():
        logits = model(x)
    if any(len(v) != 1 for v in seen.values()):
        msg = "a layer is called more than once per forward pass"
        raise NotImplementedError(msg)
    why = logits_obstacle(logits.shape, y)
    if why:
        raise NotImplementedError(why)
    return logits, [(m, seen[m][0][0], seen[m][0][1]) for m in layers]


def _batch_weight(form: CrossEntropyForm, logits: Tensor, y: Tensor) -> float:
    """The batch's weight in the mean loss: what its mean divides by.

    ``Σ_i w_{y_i}`` over the examples (and positions) not ignored for class
    indices, the number of elements for probabilities; as
    :func:`sharpkit._data.loss_weight` computes it for the Hessian operator.
    """
    b, c = logits.shape[0], logits.shape[1]
    p = logits[0, 0].numel() if logits.dim() > 2 else 1
    if y.is_floating_point():
        return float(b * p)
    y = y.reshape(-1)
    keep = y != form.ignore_index
    if form.weight is None:
        return float(keep.sum())
    w = form.weight.detach().to(y.device, torch.float64)
    return float(w[y[keep].long()].sum()) if c else 0.0


def _batch_ggn(
    logits: Tensor,
    y: Tensor,
    taps: list[tuple[nn.Module, Tensor, Tensor]],
    form: CrossEntropyForm,
    group_of: dict[int, int],
    n_groups: int,
) -> Tensor:
    """``tr G_bb`` of one batch's mean loss, per example and group (``(B, G)``).

    ``taps`` holds each layer with its input and output in this forward pass;
    ``group_of`` maps ``id(parameter)`` to its group. Float64, on the CPU.
    """
    b, c = logits.shape[0], logits.shape[1]
    flat = logits.detach().reshape(b, c, -1)
    positions = flat.shape[2]
    probs = torch.softmax(flat.double(), dim=1)
    factors = _example_factors(form, flat, y).cpu()
    outs = [out for _, _, out in taps]
    terms = torch.zeros(b, positions, n_groups, dtype=torch.float64)
    last = positions * (c + 1) - 1
    for pos in range(positions):
        sq = torch.zeros(b, c, n_groups, dtype=torch.float64)
        for k in range(c + 1):
            g = torch.zeros_like(flat)
            if k < c:
                g[:, k, pos] = 1
            else:  # the probability-weighted logit: the cross term
                g[:, :, pos] = probs[:, :, pos].to(g.dtype)
            grads = torch.autograd.grad(
                logits,
                outs,
                grad_outputs=g.reshape(logits.shape),
                retain_graph=pos * (c + 1) + k < last,
            )
            col = torch.zeros(b, n_groups, dtype=torch.float64)
            for (m, a, _), d in zip(taps, grads, strict=True):
                for p, norms in _sq_norms(m, a, d):
                    col[:, group_of[id(p)]] += norms.cpu()
            if k < c:
                sq[:, k] = col
            else:
                p_pos = probs[:, :, pos].cpu().unsqueeze(-1)
                terms[:, pos] = (p_pos * sq).sum(1) - col
    return (factors.unsqueeze(-1) * terms).sum(1)
