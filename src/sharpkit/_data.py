"""In-memory data: the :class:`DataSplit` that components pass around, and one loop.

This is a leaf module (it imports only :mod:`sharpkit.errors`), so the numerical
engine in :mod:`sharpkit.curvature` can take a :class:`DataSplit` without
knowing anything of plugins. It is public as ``sharpkit.DataSplit``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sharpkit.errors import ConfigError, DataError

if TYPE_CHECKING:
    import torch

__all__ = ["DataSplit", "evaluate", "knows_weights", "loss_weight"]


@dataclass(eq=False, slots=True)
class DataSplit:
    """An in-memory split: inputs and targets, iterated in batches.

    Targets are whatever the loss takes, kept as they are: ``(N,)`` int64 class
    indices for cross-entropy (what the built-in datasets hold), float values
    for a regression, ``(N, k)`` rows for multi-label or multi-output targets.
    Inputs keep their dtype too: floating inputs take the analysis dtype when
    batched, integer inputs (token ids for an ``nn.Embedding``) stay integers.

    Args:
        inputs: ``(N, *input_shape)`` tensor, already normalised.
        targets: ``(N, ...)`` tensor of targets.
        augment: Optional ``augment(batch, generator) -> batch`` applied on the fly
            when :meth:`batches` is called with ``augment=True`` (training only).
        input_names: Set when the inputs are several named tensors of one shape
            packed along dimension 1 (``inputs[:, i]`` is ``input_names[i]``), as
            for the ``input_ids`` and ``attention_mask`` of a Hugging Face model;
            ``None`` for a single input tensor.
    """

    inputs: torch.Tensor
    targets: torch.Tensor
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None
    input_names: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.inputs.shape[0] != self.targets.shape[0]:
            msg = (
                f"inputs and targets differ in length "
                f"({self.inputs.shape[0]} vs {self.targets.shape[0]})"
            )
            raise ConfigError(msg)

    def __len__(self) -> int:
        return int(self.inputs.shape[0])

    def head(self, n: int) -> DataSplit:
        """Return the first ``n`` examples (all of them if ``n`` exceeds the size)."""
        return DataSplit(
            self.inputs[:n], self.targets[:n], self.augment, self.input_names
        )

    def take(self, indices: torch.Tensor) -> DataSplit:
        """Return the examples at ``indices``."""
        return DataSplit(
            self.inputs[indices], self.targets[indices], self.augment, self.input_names
        )

    def batches(
        self,
        batch_size: int,
        *,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
        drop_last: bool = False,
        augment: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield ``(inputs, targets)`` batches; the last one may be shorter.

        Args:
            batch_size: Examples per batch.
            shuffle: Visit examples in a random order drawn from ``generator``.
            generator: The random source for shuffling and augmentation.
            drop_last: Skip a final batch shorter than ``batch_size``.
            augment: Apply the split's augmentation (if any).
            device: Move each batch there.
            dtype: Cast floating inputs to this floating dtype (integer inputs,
                such as token ids, keep theirs).
        """
        import torch

        if batch_size < 1:
            msg = f"batch_size must be >= 1, got {batch_size}"
            raise ConfigError(msg)
        n = len(self)
        order = torch.randperm(n, generator=generator) if shuffle else None
        stop = n - n % batch_size if drop_last else n
        for start in range(0, stop, batch_size):
            if order is None:
                x = self.inputs[start : start + batch_size]
                y = self.targets[start : start + batch_size]
            else:
                idx = order[start : start + batch_size]
                x, y = self.inputs[idx], self.targets[idx]
            if augment and self.augment is not None:
                gen = generator if generator is not None else torch.default_generator
                x = self.augment(x, gen)
            if dtype is not None and x.is_floating_point():
                x = x.to(dtype)
            if device is not None:
                x, y = x.to(device), y.to(device)
            yield x, y


_CLASS_LOSSES = ("cross_entropy", "nll_loss")
_CLASS_MODULES = ("CrossEntropyLoss", "NLLLoss")


def _class_loss_options(loss_fn: Any) -> dict[str, Any] | None:
    """``weight`` and ``ignore_index`` of a torch cross-entropy / NLL loss, or ``None``.

    Recognised: ``F.cross_entropy``, ``F.nll_loss``, a ``functools.partial`` of
    either, and ``nn.CrossEntropyLoss`` / ``nn.NLLLoss`` (not subclasses with
    their own ``forward``).
    """
    import torch

    funcs = {getattr(torch.nn.functional, name) for name in _CLASS_LOSSES}
    if loss_fn in funcs:
        return {}
    if isinstance(loss_fn, functools.partial) and loss_fn.func in funcs:
        return dict(loss_fn.keywords)
    for name in _CLASS_MODULES:
        cls = getattr(torch.nn, name)
        if isinstance(loss_fn, cls) and type(loss_fn).forward is cls.forward:
            return {"weight": loss_fn.weight, "ignore_index": loss_fn.ignore_index}
    return None


def knows_weights(loss_fn: Any) -> bool:
    """Whether :func:`loss_weight` knows the weights ``loss_fn`` divides by."""
    return callable(getattr(loss_fn, "batch_weight", None)) or (
        _class_loss_options(loss_fn) is not None
    )


def loss_weight(loss_fn: Any, targets: Any, size: int) -> float:
    """The weight a batch's mean loss carries in the dataset's mean loss.

    A weighted-mean loss divides by the sum of its examples' weights, ``Σ wᵢ``,
    not by the batch size: class weights (``weight=``) and ``ignore_index`` of
    torch's cross-entropy and NLL losses, or per-example weights of the
    user's own loss. The dataset-level loss is ``Σ_b W_b ℓ_b / Σ_b W_b`` with
    ``W_b`` the batch's ``Σ wᵢ``, which does not depend on the batch size (the
    mean of batch means would). A batch whose targets are all ignored weighs 0.

    Recognised: torch's ``cross_entropy`` / ``nll_loss`` (function, partial or
    module) with class-index targets, and any loss with a
    ``batch_weight(targets)`` method returning its ``Σ wᵢ``; anything else is
    a plain mean, weighing ``size``.

    Args:
        loss_fn: The loss.
        targets: The batch's targets.
        size: Examples in the batch.
    """
    import torch

    own = getattr(loss_fn, "batch_weight", None)
    if callable(own):
        w = own(targets)
        value = float(w.sum()) if isinstance(w, torch.Tensor) else float(w)
        if not (math.isfinite(value) and value >= 0):
            msg = f"the loss's batch_weight returned {value}; it must be >= 0"
            raise ConfigError(msg)
        return value
    opts = _class_loss_options(loss_fn)
    if opts is None or not isinstance(targets, torch.Tensor):
        return float(size)
    if targets.is_floating_point() or opts.get("reduction", "mean") != "mean":
        return float(size)  # class probabilities: torch divides by the batch size
    y = targets.reshape(-1)
    keep = y != int(opts.get("ignore_index", -100))
    weight = opts.get("weight")
    if weight is None:
        return float(keep.sum())
    y = y[keep].long()
    return float(weight.detach().to(y.device).double()[y].sum())


def evaluate(
    model: torch.nn.Module,
    split: DataSplit,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    *,
    batch_size: int,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> tuple[float, float]:
    """Mean loss and accuracy of ``model`` (as it is) over ``split``.

    The loss is the mean of the batches' mean losses weighted by
    :func:`loss_weight` (their size, or ``Σ wᵢ`` for a weighted-mean loss, so
    the value does not depend on ``batch_size``), accumulated in float64.
    Accuracy is the fraction of examples whose arg-max output equals the
    integer target; it is NaN when the outputs are not ``(batch, classes ≥ 2)``
    logits with integer targets (e.g. a regression model).

    Returns:
        ``(loss, accuracy)``.

    Raises:
        DataError: The split is empty.
        ConfigError: The loss is not a scalar.
    """
    import torch

    if len(split) == 0:
        msg = "cannot evaluate on an empty split"
        raise DataError(msg)
    total = 0.0
    correct = 0
    count = 0.0
    has_accuracy = True
    with torch.no_grad():
        for x, y in split.batches(batch_size, device=device, dtype=dtype):
            out = model(x)
            loss = loss_fn(out, y)
            if loss.ndim != 0:
                msg = (
                    "the loss must return a scalar (mean reduction), got shape "
                    f"{tuple(loss.shape)}"
                )
                raise ConfigError(msg)
            n = len(x)
            w = loss_weight(loss_fn, y, n)
            if w > 0:  # all targets ignored: the batch has no say (and is NaN)
                total += float(loss.double()) * w
            count += w
            if (
                has_accuracy
                and isinstance(out, torch.Tensor)  # not a dict or tuple of outputs
                and out.ndim == 2
                and out.shape[1] >= 2
                and y.ndim == 1
                and not y.is_floating_point()
                and out.shape[0] == y.shape[0]
            ):
                correct += int((out.argmax(dim=1) == y).sum())
            else:
                has_accuracy = False
    examples = len(split)
    loss_value = total / count if count > 0 else math.nan
    return loss_value, (correct / examples if has_accuracy else math.nan)
