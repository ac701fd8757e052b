"""Losses by name (``cross-entropy``, ``mse``, ``bce-logits``, ``nll``) or from code.

Every loss is mean-reduced over the batch, so the Hessian is that of the mean
loss over the analysis set. The name, or the code spec of the user's own loss,
is recorded with every result and is part of its reuse key.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sharpkit._hints import arg
from sharpkit.api.usercode import call_with, is_code_spec, load_object, source_sha256
from sharpkit.errors import ConfigError, DataError

if TYPE_CHECKING:
    import torch

__all__ = ["LOSSES", "ResolvedLoss", "resolve_loss"]


def _targets_like(out: torch.Tensor, target: torch.Tensor, name: str) -> torch.Tensor:
    """``target`` as a float tensor of ``out``'s shape, for losses on values.

    Integer class indices ``(N,)`` against ``(N, C)`` outputs become one-hot rows;
    ``(N,)`` against ``(N, 1)`` is reshaped. Any other mismatch is an error
    rather than silent broadcasting.
    """
    import torch

    classes = out.ndim == 2 and target.ndim == 1 and out.shape[1] > 1
    if not target.is_floating_point() and classes:
        target = torch.nn.functional.one_hot(target.long(), out.shape[1])
    target = target.to(out.dtype)
    if target.shape != out.shape and target.numel() == out.numel():
        target = target.reshape(out.shape)
    if target.shape != out.shape:
        msg = (
            f"the {name} loss needs targets shaped like the outputs, got outputs "
            f"{tuple(out.shape)} and targets {tuple(target.shape)}; check the data's "
            "targets or pick another loss"
        )
        raise DataError(msg)
    return target


def mse(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error; integer class targets become one-hot rows."""
    import torch

    return torch.nn.functional.mse_loss(out, _targets_like(out, target, "mse"))


def bce_logits(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy on logits (each output its own yes/no), mean over all."""
    import torch

    return torch.nn.functional.binary_cross_entropy_with_logits(
        out, _targets_like(out, target, "bce-logits")
    )


def _builtin(name: str) -> Callable[..., Any]:
    import torch

    table: dict[str, Callable[..., Any]] = {
        # The torch functions themselves, so that e.g. the trace metric still
        # recognises plain cross-entropy (its Gauss-Newton part is exact).
        "cross-entropy": torch.nn.functional.cross_entropy,
        "nll": torch.nn.functional.nll_loss,
        "mse": mse,
        "bce-logits": bce_logits,
    }
    return table[name]


LOSSES = ("cross-entropy", "mse", "bce-logits", "nll")
"""The built-in loss names."""


@dataclass(frozen=True)
class ResolvedLoss:
    """A loss ready to use and what to record about it.

    Attributes:
        fn: ``loss(outputs, targets) -> scalar``.
        label: What a stored result records (``"cross-entropy"``, a code spec,
            or a callable's qualified name).
        code_sha256: The sha256 of the file that defines a user's loss, else
            ``None``.
    """

    fn: Callable[[Any, Any], Any]
    label: str
    code_sha256: str | None = None


def resolve_loss(loss: Any) -> ResolvedLoss:
    """Return the loss ``loss`` names.

    Args:
        loss: ``None`` (mean cross-entropy), a built-in name (:data:`LOSSES`), a
            code spec (``package.module:name`` or ``file.py:name``: a function,
            or a class instantiated without arguments such as
            ``torch.nn:HuberLoss``), or a callable.

    Raises:
        ConfigError: An unknown name, or a code spec that does not give a callable.
    """
    if loss is None:
        loss = "cross-entropy"
    if isinstance(loss, str):
        if loss in LOSSES:
            return ResolvedLoss(_builtin(loss), loss)
        if is_code_spec(loss):
            return _from_code(loss)
        close = difflib.get_close_matches(loss, LOSSES, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        msg = (
            f"unknown loss {loss!r}; {hint}use one of {', '.join(LOSSES)}, or your "
            f"own as {arg('loss', '--loss', 'package.module:name')}"
        )
        raise ConfigError(msg)
    if not callable(loss):
        msg = (
            f"loss must be a callable loss(outputs, targets) or a name, got "
            f"{type(loss).__name__}"
        )
        raise ConfigError(msg)
    for name in LOSSES:
        if loss is _builtin(name):
            return ResolvedLoss(loss, name)
    label = getattr(loss, "__qualname__", type(loss).__name__)
    return ResolvedLoss(loss, label)


def _from_code(spec: str) -> ResolvedLoss:
    obj, _ = load_object(spec, flag=("loss", "--loss"))
    fn = obj
    if inspect.isclass(obj):
        fn = call_with(obj, {}, {}, what=f"loss {spec}", flag=("loss", "--loss"))
    if not callable(fn):
        msg = (
            f"{spec} is a {type(fn).__name__}, not a loss; name a function "
            "loss(outputs, targets) or a class whose instances are one"
        )
        raise ConfigError(msg)
    return ResolvedLoss(fn, spec, source_sha256(obj))
