"""Modules that adapt models sharpkit did not build to ``model(inputs) -> logits``.

* :class:`ExportedModel`: a ``torch.export`` program (``.pt2``), whose train/eval
  behaviour was fixed when it was exported;
* :class:`HFClassifier`: a Hugging Face ``transformers`` classification model,
  called with its named inputs, answering with the output's ``logits``.

This module imports torch; :mod:`sharpkit.api.sources` imports it on first use.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["ExportedModel", "HFClassifier", "is_hf_model", "unwrap"]


class ExportedModel(nn.Module):
    """A ``torch.export`` program as an ordinary module.

    Its graph was traced in one mode: batch norm and dropout do what they did at
    export time whatever ``train()``/``eval()`` say, so those only set this
    wrapper's flag (the program's own module refuses them).

    Args:
        program: ``ExportedProgram.module()``.
        source: Where it came from, for messages.
        input_shape: Shape of one input as traced (``None`` for a dynamic size).
        batch: The batch size the program was traced for if it is static, else
            ``None`` (a dynamic batch dimension).
        input_dtype: The traced input dtype.
        training_ops: Operations in the graph that run in training mode
            (batch norm with batch statistics, dropout).
    """

    def __init__(
        self,
        program: nn.Module,
        *,
        source: str,
        input_shape: tuple[int | None, ...],
        batch: int | None,
        input_dtype: torch.dtype,
        training_ops: tuple[str, ...] = (),
    ) -> None:
        super().__init__()
        self.program = program
        self.source = source
        self.input_shape = input_shape
        self.batch = batch
        self.input_dtype = input_dtype
        self.training_ops = training_ops
        self.training = False

    def forward(self, x: torch.Tensor) -> Any:
        """Run the program on a batch."""
        return self.program(x)

    def train(self, mode: bool = True) -> ExportedModel:
        """Set this wrapper's flag only: the program's modes are fixed at export."""
        self.training = mode
        return self

    def expected(self) -> str:
        """The input the program takes, as text: ``(batch, 3, 32, 32) float32``."""
        dims = ["batch" if self.batch is None else str(self.batch)]
        dims += ["*" if d is None else str(d) for d in self.input_shape]
        return f"({', '.join(dims)}) {str(self.input_dtype).removeprefix('torch.')}"


class HFClassifier(nn.Module):
    """A Hugging Face classification model as ``model(inputs) -> logits``.

    Args:
        model: A ``transformers`` model whose output has ``logits`` (a sequence
            or image classification head).
        input_names: The keyword arguments the inputs go to. One name: the
            input tensor is passed as that argument (default: the model's
            ``main_input_name``, ``input_ids`` or ``pixel_values``). Several:
            the inputs are packed along dimension 1, ``inputs[:, i]`` going to
            ``input_names[i]`` (see :attr:`sharpkit.DataSplit.input_names`).
    """

    def __init__(self, model: nn.Module, input_names: tuple[str, ...] | None = None):
        super().__init__()
        self.model = model
        main = str(getattr(model, "main_input_name", "input_ids"))
        self.input_names: tuple[str, ...] = tuple(input_names or (main,))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the logits for a batch of (packed) inputs."""
        if len(self.input_names) == 1:
            kwargs = {self.input_names[0]: x}
        else:
            kwargs = {n: x[:, i] for i, n in enumerate(self.input_names)}
        out = self.model(**kwargs)
        logits = getattr(out, "logits", None)
        if not isinstance(logits, torch.Tensor):
            msg = (
                f"{type(self.model).__name__} returned {type(out).__name__} without "
                "logits; use a model with a classification head"
            )
            raise TypeError(msg)
        return logits

    def with_inputs(self, input_names: tuple[str, ...] | None) -> HFClassifier:
        """The same model (shared parameters) fed ``input_names``."""
        if input_names is None or tuple(input_names) == self.input_names:
            return self
        out = HFClassifier(self.model, tuple(input_names))
        out.train(self.training)
        return out


def is_hf_model(model: object) -> bool:
    """Whether ``model`` is a ``transformers`` model (never imports transformers)."""
    import sys

    tf = sys.modules.get("transformers")
    base = getattr(tf, "PreTrainedModel", None) if tf is not None else None
    return base is not None and isinstance(model, base)


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a wrapper (the model itself when it is not wrapped)."""
    if isinstance(model, HFClassifier):
        return model.model
    return model
