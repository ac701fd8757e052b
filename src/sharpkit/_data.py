"""In-memory data: the :class:`DataSplit` that components pass around, and one loop.

This is a leaf module (it imports only :mod:`sharpkit.errors`), so the numerical
engine in :mod:`sharpkit.curvature` can take a :class:`DataSplit` without
knowing anything of plugins. It is public as ``sharpkit.DataSplit``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sharpkit.errors import ConfigError, DataError

if TYPE_CHECKING:
    import torch

__all__ = ["DataSplit", "evaluate"]


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

    The loss is the size-weighted mean of the batches' mean losses, accumulated
    in float64. Accuracy is the fraction of examples whose arg-max output equals
    the integer target; it is NaN when the outputs are not ``(batch, classes ≥ 2)``
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
    count = 0
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
            total += float(loss.double()) * n
            count += n
            if (
                has_accuracy
                and out.ndim == 2
                and out.shape[1] >= 2
                and y.ndim == 1
                and not y.is_floating_point()
                and out.shape[0] == y.shape[0]
            ):
                correct += int((out.argmax(dim=1) == y).sum())
            else:
                has_accuracy = False
    return total / count, (correct / count if has_accuracy else math.nan)
