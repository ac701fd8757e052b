"""Does the data fit the model? One forward pass and one loss, before any real work.

Data that does not fit (``--data synthetic`` on a model built for 28×28 images,
targets a loss cannot take) would otherwise fail deep inside a metric with a
long traceback. :func:`check_fit` tries the model and the loss on two examples
and turns a failure into one line naming both shapes.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sharpkit._data import DataSplit
from sharpkit._fs import is_interrupt
from sharpkit._hints import arg
from sharpkit.errors import ConfigError, DataError, first_line

if TYPE_CHECKING:
    import torch

__all__ = ["check_fit", "describe_inputs"]


def describe_inputs(split: DataSplit) -> str:
    """One example's inputs as text: ``(1, 28, 28) float32`` or named inputs."""
    x = split.inputs
    dtype = str(x.dtype).removeprefix("torch.")
    if split.input_names is not None and len(split.input_names) > 1:
        per = tuple(x.shape[2:])
        return f"inputs {', '.join(split.input_names)} of shape {per} {dtype}"
    return f"inputs of shape {tuple(x.shape[1:])} {dtype}"


def _first_line(exc: BaseException) -> str:
    return first_line(exc, limit=200) or type(exc).__name__


def check_fit(
    model: torch.nn.Module,
    split: DataSplit,
    loss_fn: Callable[[Any, Any], Any],
    *,
    model_label: str,
    data_label: str,
    expects: str | None = None,
    loss_label: str = "the loss",
    second_order: bool = False,
) -> None:
    """Run ``model`` and ``loss_fn`` on the first two examples of ``split``.

    The model must already be in the mode (and on the device and dtype) it will
    be analysed in; its state is not changed (no gradients, batch norm as set).

    Args:
        model: The model.
        split: The data.
        loss_fn: The loss.
        model_label: The model, for the message (``"cnn.pt (mypkg:Net)"``).
        data_label: The data, for the message.
        expects: What the model takes, when known (``"inputs of shape (1, 28, 28)"``).
        loss_label: The loss, for the message.
        second_order: Also check that the loss can be differentiated twice with
            respect to the parameters (one Hessian-vector product).

    Raises:
        DataError: The model or the loss fails on the data.
        ConfigError: The model cannot be differentiated twice.
    """
    import torch

    from sharpkit.api.wrappers import ExportedModel, HFClassifier

    have = describe_inputs(split)
    packed = split.input_names is not None and len(split.input_names) > 1
    if packed and not isinstance(model, HFClassifier):
        names = ", ".join(split.input_names or ())
        msg = (
            f"{data_label} holds named inputs ({names}) for a Hugging Face model, "
            f"but {model_label} takes one tensor; pass "
            f"{arg('model', '--model', 'hf:PATH')} or save one inputs tensor"
        )
        raise DataError(msg)
    if isinstance(model, ExportedModel):
        _check_exported(model, split, model_label, data_label)
        expects = expects or f"inputs of shape {model.expected()}"
    n = model.batch if isinstance(model, ExportedModel) and model.batch else 2
    x, y = next(split.batches(n, dtype=_dtype(model), device=_device(model)))
    try:
        with torch.no_grad():
            out = model(x)
    except BaseException as exc:  # sys.exit() in a forward too: one line
        if is_interrupt(exc):
            raise
        wants = f" built for {expects}" if expects else ""
        msg = (
            f"the data do not fit the model: {data_label} has {have}, but "
            f"{model_label}{wants} fails on them ({type(exc).__name__}: "
            f"{_first_line(exc)}); pass data that fits, or the model it was made for"
        )
        raise DataError(msg) from exc
    _check_loss_on(out, y, loss_fn, loss_label=loss_label, data_label=data_label)
    if second_order:
        _check_second_order(model, x, y, loss_fn, model_label)


def _check_loss_on(
    out: Any,
    y: torch.Tensor,
    loss_fn: Callable[[Any, Any], Any],
    *,
    loss_label: str,
    data_label: str,
) -> None:
    try:
        loss = loss_fn(out, y)
    except DataError:
        raise
    except BaseException as exc:  # sys.exit() in a loss too: one line
        if is_interrupt(exc):
            raise
        shape = tuple(out.shape) if hasattr(out, "shape") else type(out).__name__
        ydesc = f"{tuple(y.shape)} {str(y.dtype).removeprefix('torch.')}"
        msg = (
            f"{loss_label} cannot take the model's outputs {shape} with the targets "
            f"{ydesc} of {data_label} ({type(exc).__name__}: {_first_line(exc)}); "
            f"pick a loss for these targets with {arg('loss', '--loss')}"
        )
        raise DataError(msg) from exc
    import torch

    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        got = (
            f"a tensor of shape {tuple(loss.shape)}"
            if isinstance(loss, torch.Tensor)
            else f"a {type(loss).__name__}"
        )
        msg = (
            f"{loss_label} returned {got}, not a scalar tensor; return the mean "
            "loss as a tensor computed from the outputs (its gradient is what is "
            "measured)"
        )
        raise ConfigError(msg)


def _dtype(model: torch.nn.Module) -> torch.dtype | None:
    p = next(model.parameters(), None)
    return p.dtype if p is not None else None


def _device(model: torch.nn.Module) -> torch.device | None:
    p = next(model.parameters(), None)
    return p.device if p is not None else None


def _check_exported(
    model: Any, split: DataSplit, model_label: str, data_label: str
) -> None:
    per = tuple(split.inputs.shape[1:])
    want = model.input_shape
    fits = len(per) == len(want) and all(
        w is None or w == d for w, d in zip(want, per, strict=True)
    )
    if not fits:
        msg = (
            f"the data do not fit the model: {data_label} has "
            f"{describe_inputs(split)}, but {model_label} was exported for "
            f"{model.expected()}; pass data of that shape"
        )
        raise DataError(msg)
    if model.batch is not None:
        msg = (
            f"{model_label} was exported for batches of exactly {model.batch}; "
            "export it with a dynamic batch dimension: torch.export.export(model, "
            "(x,), dynamic_shapes=({0: torch.export.Dim('batch')},))"
        )
        raise ConfigError(msg)


def _check_second_order(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    loss_fn: Callable[[Any, Any], Any],
    model_label: str,
) -> None:
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        msg = f"{model_label} has no trainable parameters to measure"
        raise ConfigError(msg)
    why: BaseException | None = None
    try:
        with warnings.catch_warnings(record=True) as caught, torch.enable_grad():
            # torch only warns (and treats the derivative as zero) where an
            # operator registered without an autograd kernel is differentiated.
            warnings.simplefilter("always")
            loss = loss_fn(model(x), y)
            grads = torch.autograd.grad(loss, params, create_graph=True)
            live = [g for g in grads if g.requires_grad]
            if live:  # else the gradient does not depend on the parameters: H = 0
                dot = torch.stack([g.sum() for g in live]).sum()
                torch.autograd.grad(dot, params, allow_unused=True)
        why = next(
            (
                UserWarning(str(w.message))
                for w in caught
                if "autograd kernel was not registered" in str(w.message)
            ),
            None,
        )
    except RuntimeError as exc:
        why = exc
    if why is not None:
        msg = (
            f"{model_label} cannot be differentiated twice ({_first_line(why)}); "
            "curvature needs second derivatives: give the model as a module with a "
            f"state_dict ({arg('model_name', '--model', 'package.module:Class')}), "
            "or give the operation a differentiable backward"
        )
        raise ConfigError(msg) from why
