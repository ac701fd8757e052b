"""Evaluation at one grid point, with batch-norm statistics re-estimated first.

Batch-norm running statistics are re-estimated where a probe's ``bn_reestimate``
option is on: they are reset, and a fixed, seeded set of training examples is
passed through the model with only the batch-norm layers in training mode and
``momentum=None`` (a cumulative average over batches, as in
``torch.optim.swa_utils.update_bn``; Izmailov, Podoprikhin, Garipov, Vetrov &
Wilson, 2018, UAI, "Averaging weights leads to wider optima and better
generalization"). The subsets evaluated and the re-estimation batches are drawn
once per probe run from the probe's seeded streams, so every grid point sees the
same examples.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable
from typing import Any

import torch

from sharpkit import ConfigError, DataSplit, ProbeContext, evaluate
from sharpkit.builtin._landscape.geometry import tensor_bytes

__all__ = [
    "DEFAULT_BN_BATCH_SIZE",
    "DEFAULT_BN_SAMPLES",
    "DEFAULT_EVAL_SAMPLES",
    "DEFAULT_PLANE_EVAL_SAMPLES",
    "Evaluator",
    "bn_batches",
    "reestimate_bn",
    "split_digest",
    "subset",
]

DEFAULT_EVAL_SAMPLES = 10_000
"""Training and test examples evaluated per grid point (1-D probes).

10 000 is the whole Fashion-MNIST / CIFAR-10 test set and a seeded sixth (a
fifth) of the training set: enough for a loss whose sampling error (≈1e-2
relative at the minima, far less where the loss is large) is invisible in the
paper's figures, while a ResNet-56 × 31 α stays within an hour on a laptop CPU.
"""
DEFAULT_PLANE_EVAL_SAMPLES = 2_048
"""Examples evaluated per point of a 2-D grid (a 21×21 grid has 441 points)."""
DEFAULT_BN_SAMPLES = 4_096
"""Training examples used to re-estimate batch-norm statistics at each point."""
DEFAULT_BN_BATCH_SIZE = 256
"""Batch size of the re-estimation passes (batch statistics normalise each batch)."""


def subset(split: DataSplit, n: int, gen: torch.Generator) -> DataSplit:
    """Return a seeded subset of ``n`` examples (all if ``n`` is 0 or too big)."""
    if n <= 0 or n >= len(split):
        return split
    idx = torch.randperm(len(split), generator=gen)[:n].sort().values
    return split.take(idx)


def split_digest(split: DataSplit | None) -> str:
    """Return a sha256 of a split's inputs and targets (``"none"`` for no split)."""
    if split is None:
        return "none"
    digest = hashlib.sha256()
    digest.update(str(tuple(split.inputs.shape)).encode())
    digest.update(tensor_bytes(split.inputs))
    digest.update(tensor_bytes(split.targets))
    return digest.hexdigest()


# --------------------------------------------------------------------------- batch norm


def _bn_layers(model: torch.nn.Module) -> list[torch.nn.modules.batchnorm._BatchNorm]:
    return [
        m
        for m in model.modules()
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
        and m.track_running_stats
    ]


def reestimate_bn(model: torch.nn.Module, batches: Iterable[torch.Tensor]) -> int:
    """Re-estimate batch-norm running statistics from ``batches`` of inputs.

    The statistics are reset, then every batch is passed forward (without
    gradients) with only the batch-norm layers in training mode and
    ``momentum=None``, so each running mean and variance ends as the plain
    average over batches of the batch mean and the unbiased batch variance.
    Dropout and other layers stay in eval mode. Momenta and train/eval modes are
    restored afterwards.

    Args:
        model: The model; its batch-norm buffers are overwritten.
        batches: Input tensors, already on the model's device and dtype.

    Returns:
        The number of batch-norm layers re-estimated.
    """
    layers = _bn_layers(model)
    if not layers:
        return 0
    momenta = [m.momentum for m in layers]
    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()
        for m in layers:
            m.reset_running_stats()
            m.momentum = None
            m.train()
        with torch.no_grad():
            for x in batches:
                model(x)
    finally:
        for layer, momentum in zip(layers, momenta, strict=True):
            layer.momentum = momentum
        for module, mode in modes.items():
            module.training = mode
    return len(layers)


def bn_batches(
    split: DataSplit,
    n: int,
    batch_size: int,
    gen: torch.Generator,
    device: torch.device,
    dtype: torch.dtype,
) -> list[torch.Tensor]:
    """Return a fixed, seeded set of training inputs in near-equal batches (≥ 2 each).

    Raises:
        ConfigError: Fewer than 2 examples to re-estimate from.
    """
    sub = subset(split, n, gen)
    if len(sub) < 2:
        msg = (
            f"batch-norm re-estimation needs at least 2 training examples, have "
            f"{len(sub)}; raise bn_samples or pass bn_reestimate=false"
        )
        raise ConfigError(msg)
    n_batches = max(1, math.ceil(len(sub) / batch_size))
    n_batches = min(n_batches, len(sub) // 2)
    chunks = torch.tensor_split(sub.inputs, n_batches)
    # Integer inputs (token ids) keep their dtype; only floating ones are cast.
    return [
        c.to(device=device, dtype=dtype) if c.is_floating_point() else c.to(device)
        for c in chunks
    ]


# --------------------------------------------------------------------------- evaluation


class Evaluator:
    """Evaluates a model at one grid point: optional BN re-estimation, then losses.

    The subsets are drawn from the streams ``<stream>:train``, ``<stream>:test``
    and ``<stream>:bn`` of the context's seed (:meth:`ProbeContext.generator`).

    Args:
        ctx: The probe's context (data, loss, batch size, device, seed).
        dtype: The model's dtype (inputs are cast to it).
        eval_samples: Training and test examples evaluated (0: all).
        test: Also evaluate on the test split, if the context has one.
        bn_reestimate: Re-estimate batch-norm statistics before evaluating.
        bn_samples: Training examples for the re-estimation (0: all).
        bn_batch_size: Batch size of the re-estimation passes.
        stream: Prefix of the seeded streams (the probe's name).
    """

    def __init__(
        self,
        ctx: ProbeContext,
        *,
        dtype: torch.dtype,
        eval_samples: int,
        test: bool,
        bn_reestimate: bool,
        bn_samples: int,
        bn_batch_size: int,
        stream: str,
    ) -> None:
        self.ctx = ctx
        self.dtype = dtype
        self.train = subset(
            ctx.train_data, eval_samples, ctx.generator(f"{stream}:train")
        )
        self.test: DataSplit | None = None
        if test and ctx.test_data is not None and len(ctx.test_data) > 0:
            self.test = subset(
                ctx.test_data, eval_samples, ctx.generator(f"{stream}:test")
            )
        self.bn_batches: list[torch.Tensor] | None = None
        if bn_reestimate:
            self.bn_batches = bn_batches(
                ctx.train_data,
                bn_samples,
                bn_batch_size,
                ctx.generator(f"{stream}:bn"),
                ctx.device,
                dtype,
            )
        self.names = ["train_loss", "train_accuracy"]
        if self.test is not None:
            self.names += ["test_loss", "test_accuracy"]

    def attrs(self) -> dict[str, Any]:
        """Return how many examples and batches each evaluation uses."""
        return {
            "train_samples": len(self.train),
            "test_samples": len(self.test) if self.test is not None else 0,
            "bn_samples": sum(len(b) for b in self.bn_batches)
            if self.bn_batches is not None
            else 0,
            "bn_batches": len(self.bn_batches) if self.bn_batches is not None else 0,
        }

    def digest(self) -> str:
        """Return what identifies the evaluated data (for the partial-grid key)."""
        return (
            split_digest(self.train)
            + split_digest(self.test)
            + ("bn" if self.bn_batches is not None else "nobn")
        )

    def __call__(self, model: torch.nn.Module) -> dict[str, float]:
        """Return the losses and accuracies of ``model`` (its BN buffers may change)."""
        ctx = self.ctx
        if self.bn_batches is not None:
            reestimate_bn(model, self.bn_batches)
        kw: dict[str, Any] = {
            "batch_size": ctx.batch_size,
            "device": ctx.device,
            "dtype": self.dtype,
        }
        loss, acc = evaluate(model, self.train, ctx.loss_fn, **kw)
        out = {"train_loss": loss, "train_accuracy": acc}
        if self.test is not None:
            loss, acc = evaluate(model, self.test, ctx.loss_fn, **kw)
            out.update(test_loss=loss, test_accuracy=acc)
        return out
