"""What decides a result, as digests: the reuse key's honest parts.

A stored result may be returned only for the very computation that made it.
Naming the inputs (a file path, a class name, a dataset name, a version) is not
enough: a helper module can be edited, a data root can hold another copy, a
plugin can change the default dtype. The digests here are taken from the
things themselves, after every choice has been made:

- :func:`data_digest`: the analysis set actually used (inputs and targets
  after sample selection: shapes, dtypes and bytes);
- :func:`behaviour_fingerprint`: what the model and the loss *do*: the loss,
  a projection of the outputs and projections of the gradient on a fixed
  probe batch, in float64 where the model allows it. Any edit that changes the
  function (its code, a helper module it imports, an option, the class, the
  loss or a module the loss imports) changes these numbers;
- :func:`code_digest`: the source files of the package that defines an object
  (a plugin whose code changed while its version did not).

The behavioural fingerprint rounds each number to :data:`DIGITS` significant
digits: in float64 the same computation on another thread count differs by
~1e-15 relatively, so a rerun finds its stored result, while any change of the
function bigger than ~1e-10 relatively gives another key. A rounding flip only
costs a recomputation, never a wrong reuse.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import os
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sharpkit._fs import is_interrupt

if TYPE_CHECKING:
    import torch

    from sharpkit._data import DataSplit

__all__ = [
    "DIGITS",
    "PROBE_EXAMPLES",
    "behaviour_fingerprint",
    "code_digest",
    "data_digest",
    "key_fields",
    "probe_key_fields",
    "tensor_digest",
]

DIGITS = 10
PROBE_EXAMPLES = 8
# Gradient projections on seeded random directions (plus the gradient's norm):
# a change of the gradient anywhere moves at least one of them.
_DIRECTIONS = 3
# Beyond this many parameters the float64 copy is not made (its memory is 2x
# the parameters again): the fingerprint is taken in the model's own dtype.
_FLOAT64_LIMIT = 50_000_000
# A package of more source than this is hashed by its files' sizes and times.
_CODE_LIMIT = 64 << 20
_CHUNK = 1 << 24


def tensor_digest(tensor: torch.Tensor, digest: Any | None = None) -> str:
    """The sha256 of a tensor's shape, dtype and bytes (in chunks: no full copy).

    Args:
        tensor: Any tensor, on any device; sparse and meta tensors are refused.
        digest: A ``hashlib`` object to update instead of a fresh one.

    Raises:
        ValueError: A sparse or meta tensor (it has no bytes to hash).
    """
    import torch

    h = digest if digest is not None else hashlib.sha256()
    if tensor.is_sparse or tensor.is_meta:
        msg = f"a {tensor.layout} tensor on {tensor.device} has no bytes to hash"
        raise ValueError(msg)
    h.update(f"{tuple(tensor.shape)}{tensor.dtype}".encode())
    flat = tensor.detach().reshape(-1)
    step = max(1, _CHUNK // max(1, flat.element_size()))
    for start in range(0, flat.numel(), step):
        part = flat[start : start + step].cpu().contiguous()
        if part.dtype == torch.bool:
            part = part.to(torch.uint8)
        h.update(part.view(torch.uint8).numpy().tobytes())
    return str(h.hexdigest())


def data_digest(split: DataSplit) -> str:
    """The sha256 of the analysis set as used: inputs, targets and input names.

    Taken after sample selection, so it names exactly the examples a result
    was computed on, whatever file, root, plugin or default dtype produced them.
    """
    h = hashlib.sha256()
    tensor_digest(split.inputs, h)
    tensor_digest(split.targets, h)
    h.update(repr(split.input_names).encode())
    return str(h.hexdigest())


def _rounded(value: float) -> str:
    return f"{value:.{DIGITS - 1}e}"


def _structure(model: torch.nn.Module) -> str:
    """The model's class and its parameters' and buffers' names, shapes, dtypes."""
    kind = type(model)
    parts = [f"{kind.__module__}.{kind.__qualname__}"]
    parts += [
        f"{n}:{tuple(p.shape)}:{p.dtype}:{p.requires_grad}"
        for n, p in model.named_parameters()
    ]
    parts += [f"{n}:{tuple(b.shape)}:{b.dtype}" for n, b in model.named_buffers()]
    parts += [f"{n}:{type(m).__qualname__}" for n, m in model.named_modules()]
    return "\n".join(parts)


def behaviour_fingerprint(
    model: torch.nn.Module,
    loss_fn: Callable[[Any, Any], Any],
    data: DataSplit,
    *,
    examples: int = PROBE_EXAMPLES,
) -> str:
    """A digest of what ``model`` and ``loss_fn`` compute on a fixed probe batch.

    The probe batch is the first ``examples`` examples of ``data`` (the
    analysis set, itself keyed by :func:`data_digest`). On it, with the model
    in eval mode and every random generator seeded, the fingerprint records
    the loss, a seeded projection of the outputs, the squared gradient norm and
    the gradient's projections on seeded random directions, each rounded to
    :data:`DIGITS` significant digits, together with the model's class and the
    names, shapes and dtypes of its parameters, buffers and submodules. It is
    computed in float64 on copies of the parameters and buffers (the model and
    its ``.grad`` are left untouched); a model that cannot run in float64 is
    fingerprinted in its own dtype.

    Args:
        model: The model, weights loaded.
        loss_fn: ``loss_fn(outputs, targets)``, a scalar.
        data: The analysis set.
        examples: Size of the probe batch.

    Returns:
        A hex sha256. A model or loss that fails on the probe batch gives a
        digest of the failure's type (the result's own checks say what is wrong).
    """
    import torch

    h = hashlib.sha256(_structure(model).encode())
    x, y = data.inputs[:examples], data.targets[:examples]
    wide = sum(p.numel() for p in model.parameters()) <= _FLOAT64_LIMIT
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        values = None
        if wide:
            try:
                values = _probe(model, loss_fn, x, y, torch.float64)
            except BaseException as exc:  # no float64 path: its own dtype below
                if is_interrupt(exc):
                    raise
                values = None
        if values is None:
            values = _probe(model, loss_fn, x, y, None)
        h.update(("float64" if wide else "native").encode())
        h.update(" ".join(_rounded(v) for v in values).encode())
    except BaseException as exc:  # the fit checks report it in one line
        if is_interrupt(exc):  # sys.exit() in a forward is not the user's Ctrl-C
            raise
        h.update(f"failed:{type(exc).__name__}".encode())
    finally:
        for m, training in modes.items():  # the flags alone: no train() hooks
            m.training = training
    return str(h.hexdigest())


def _probe(
    model: torch.nn.Module,
    loss_fn: Callable[[Any, Any], Any],
    x: torch.Tensor,
    y: torch.Tensor,
    dtype: torch.dtype | None,
) -> list[float]:
    """Loss, output projection, gradient norm² and projections on ``x, y``."""
    import torch
    from torch.func import functional_call

    device = next(model.parameters()).device

    def cast(t: torch.Tensor) -> torch.Tensor:
        t = t.detach().to(device)
        return t.to(dtype) if dtype is not None and t.is_floating_point() else t

    params = {
        n: cast(p).clone().requires_grad_(p.is_floating_point())
        for n, p in model.named_parameters()
    }
    buffers = {n: cast(b).clone() for n, b in model.named_buffers()}
    with torch.random.fork_rng(devices=_devices(device)):
        torch.manual_seed(0)
        out = functional_call(model, {**params, **buffers}, (cast(x),))
        loss = loss_fn(out, cast(y))
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            msg = "the loss is not a scalar tensor"
            raise TypeError(msg)
        trainable = [p for p in params.values() if p.requires_grad]
        grads = torch.autograd.grad(
            loss, trainable, allow_unused=True, materialize_grads=True
        )
    gen = torch.Generator().manual_seed(0)
    values = [float(loss.detach())]
    if isinstance(out, torch.Tensor) and out.is_floating_point():
        r = torch.randn(out.shape, generator=gen, dtype=torch.float64)
        values.append(float((out.detach().double().cpu() * r).sum()))
    norm2 = 0.0
    proj = [0.0] * _DIRECTIONS
    for g in grads:
        flat = g.detach().double().cpu()
        norm2 += float((flat * flat).sum())
        for k in range(_DIRECTIONS):
            r = torch.randn(flat.shape, generator=gen, dtype=torch.float64)
            proj[k] += float((flat * r).sum())
    return [*values, norm2, *proj]


def _devices(device: torch.device) -> list[int]:
    return [device.index or 0] if device.type == "cuda" else []


def key_fields(
    model: torch.nn.Module,
    loss_fn: Callable[[Any, Any], Any],
    analysis: DataSplit,
    *,
    batch_size: int,
) -> dict[str, Any]:
    """The reuse-key entries taken from the computation itself.

    Args:
        model: The model as it will be measured (weights loaded, on its device).
        loss_fn: The loss.
        analysis: The analysis set after sample selection.
        batch_size: Examples per forward pass: with batch statistics (batch
            norm in train mode, or without running statistics) it changes the
            value; in eval mode it changes the order of the sums, so it is
            always part of the key.

    Returns:
        ``{"data_digest", "behaviour", "batch_size"}``, for
        :func:`~sharpkit.api.provenance.result_key`.
    """
    return {
        "data_digest": data_digest(analysis),
        "behaviour": behaviour_fingerprint(model, loss_fn, analysis),
        "batch_size": int(batch_size),
    }


def probe_key_fields(
    models: Iterable[torch.nn.Module],
    loss_fn: Callable[[Any, Any], Any],
    train: DataSplit,
    test: DataSplit,
    *,
    batch_size: int,
) -> dict[str, Any]:
    """The reuse-key entries of a probe, taken from the computation itself.

    As :func:`key_fields`, for a probe over several models and both splits: the
    digests of the training and test sets as used, one behavioural fingerprint
    per model (on the training set's first examples), and the batch size (it
    sets the batches batch-norm statistics are re-estimated on).

    Args:
        models: The models as they will be probed (weights loaded, on device).
        loss_fn: The loss.
        train: The training split the probe evaluates and re-estimates on.
        test: The test split.
        batch_size: Examples per forward pass.

    Returns:
        ``{"data_digest", "behaviour", "batch_size"}``.
    """
    return {
        "data_digest": [data_digest(train), data_digest(test)],
        "behaviour": [behaviour_fingerprint(m, loss_fn, train) for m in models],
        "batch_size": int(batch_size),
    }


def code_digest(obj: object) -> str | None:
    """The sha256 of the source of the package that defines ``obj``.

    Every ``.py`` file under the top-level package of ``obj``'s module (or the
    module's own file, for a module outside a package), by relative path and
    content: a plugin whose code changed gives another digest even when its
    version did not. ``None`` for an object without a source file. Taken once
    per process and package, as close as can be to when the code was imported:
    a file edited after that is not the code this process runs.
    """
    module = sys.modules.get(getattr(obj, "__module__", "") or "")
    if module is None:
        module = inspect.getmodule(obj)
    if module is None:
        return None
    return _package_digest(module.__name__.split(".")[0], module.__name__)


@functools.lru_cache(maxsize=256)
def _package_digest(top_name: str, name: str) -> str | None:
    module = sys.modules.get(name)
    if module is None:  # pragma: no cover - looked up from sys.modules just before
        return None
    top = sys.modules.get(top_name, module)
    roots = list(getattr(top, "__path__", []) or [])
    if roots:
        files = sorted(
            (Path(r), f)
            for r in roots
            if os.path.isdir(r)
            for f in Path(r).rglob("*.py")
        )
    else:
        where = getattr(module, "__file__", None)
        if where is None or not os.path.isfile(where):
            return None
        files = [(Path(where).parent, Path(where))]
    return _hash_files(files)


def _hash_files(files: Iterable[tuple[Path, Path]]) -> str:
    h = hashlib.sha256()
    total = 0
    for root, f in files:
        try:
            stat = f.stat()
            h.update(str(f.relative_to(root)).encode())
            total += stat.st_size
            if total > _CODE_LIMIT:  # a huge tree: its files' sizes and times
                h.update(f"{stat.st_size}:{stat.st_mtime_ns}".encode())
            else:
                h.update(hashlib.sha256(f.read_bytes()).digest())
        except OSError as exc:
            h.update(f"unreadable:{exc.errno}".encode())
    return str(h.hexdigest())
