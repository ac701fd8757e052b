"""Losses by name (``cross-entropy``, ``mse``, ``next-token``, ...) or from code.

Every loss is mean-reduced over the batch (``next-token`` and ``masked-token``:
over its target tokens), so the Hessian is that of the mean loss over the
analysis set. The name, or the code spec of the user's own loss, is recorded
with every result and is part of its reuse key.
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
    """Mean squared error over examples *and* output dimensions.

    ``torch.nn.functional.mse_loss`` with its default ``reduction="mean"``: for
    ``k`` outputs the value (and every curvature number) is ``1/k`` of the sum
    of squares per example. Integer class targets become one-hot rows.
    """
    import torch

    return torch.nn.functional.mse_loss(out, _targets_like(out, target, "mse"))


def bce_logits(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy on logits (each output its own yes/no), mean over all."""
    import torch

    return torch.nn.functional.binary_cross_entropy_with_logits(
        out, _targets_like(out, target, "bce-logits")
    )


IGNORE_INDEX = -100
"""Target tokens with this id are left out of the token losses (padding, and
the unmasked positions of a masked language model), as in ``transformers``."""


def _check_tokens(logits: torch.Tensor, labels: torch.Tensor, name: str) -> None:
    if logits.ndim != 3 or labels.shape != logits.shape[:2]:
        msg = (
            f"the {name} loss needs logits (batch, length, vocabulary) and integer "
            f"targets (batch, length), got outputs {tuple(logits.shape)} and targets "
            f"{tuple(labels.shape)}; use a language-model head and token targets"
        )
        raise DataError(msg)


def _token_cross_entropy(
    logits: torch.Tensor, labels: torch.Tensor, name: str
) -> torch.Tensor:
    """Cross-entropy per token, mean over the tokens whose label is not ignored."""
    import torch

    _check_tokens(logits, labels, name)
    if labels.is_floating_point():
        msg = (
            f"the {name} loss needs integer token targets, got {labels.dtype}; "
            f"save the labels as int64 (padding {IGNORE_INDEX})"
        )
        raise DataError(msg)
    labels = labels.long()
    if not bool((labels != IGNORE_INDEX).any()):
        msg = (
            f"every target token of a batch is {IGNORE_INDEX} (ignored), so the "
            f"{name} loss has nothing to average; check the targets"
        )
        raise DataError(msg)
    return torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]),
        labels.reshape(-1),
        ignore_index=IGNORE_INDEX,
    )


def next_token(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Causal language modelling: the logits at position t predict token t + 1.

    ``out`` is ``(batch, length, vocabulary)``, ``target`` the ``(batch,
    length)`` token ids (the inputs themselves, with :data:`IGNORE_INDEX` at
    padding): targets are shifted left by one, as ``transformers`` does when a
    causal LM is given ``labels``. Mean over the target tokens not ignored.
    """
    _check_tokens(out, target, "next-token")
    return _token_cross_entropy(out[:, :-1], target[:, 1:], "next-token")


def masked_token(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Masked language modelling: the logits at position t predict token t.

    ``target`` holds the original ids at the masked positions and
    :data:`IGNORE_INDEX` elsewhere (what a masked-LM data collator returns as
    ``labels``). Mean over the target tokens not ignored.
    """
    return _token_cross_entropy(out, target, "masked-token")


def _builtin(name: str) -> Callable[..., Any]:
    import torch

    table: dict[str, Callable[..., Any]] = {
        # The torch functions themselves, so that e.g. the trace metric still
        # recognises plain cross-entropy (its Gauss-Newton part is exact).
        "cross-entropy": torch.nn.functional.cross_entropy,
        "nll": torch.nn.functional.nll_loss,
        "mse": mse,
        "bce-logits": bce_logits,
        "next-token": next_token,
        "masked-token": masked_token,
    }
    return table[name]


LOSSES = ("cross-entropy", "mse", "bce-logits", "nll", "next-token", "masked-token")
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
