"""Turning what a caller names into a model: a module, checkpoint, archive or code.

A model is given as a module, a checkpoint (its metadata names the
architecture), a ``.pt2`` archive, an ``hf:`` folder or the user's code
(:mod:`~sharpkit.api.sources`). :func:`model_kind` classifies a model name
once; :func:`resolve_model` returns a :class:`ResolvedModel`, the module with
where it came from.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sharpkit._data import DataSplit
from sharpkit._hints import arg
from sharpkit._seed import seeded
from sharpkit.api.datafiles import as_split, infer_num_classes
from sharpkit.api.provenance import state_sha256
from sharpkit.api.resolve import (
    DataLike,
    ModelLike,
    load_dataset,
    recorded_data,
    resolve_data,
)
from sharpkit.api.sources import (
    EXPORT_SUFFIX,
    build_code_model,
    is_hf_spec,
    load_exported,
    load_hf,
)
from sharpkit.api.usercode import is_code_spec
from sharpkit.checkpoint import (
    Checkpoint,
    CheckpointMeta,
    load_checkpoint,
    load_state_dict_into,
)
from sharpkit.errors import ConfigError, DataError, PluginContractError
from sharpkit.interfaces import Dataset
from sharpkit.registry import Registry, get_registry

if TYPE_CHECKING:
    import torch

__all__ = [
    "ModelKind",
    "ResolvedModel",
    "adapt_model",
    "build_classified",
    "build_model",
    "check_finite",
    "is_code_model",
    "load_model",
    "model_kind",
    "model_prefixes",
    "prepare_model",
    "resolve_model",
]


def model_prefixes(registry: Registry) -> tuple[str, ...]:
    """Registered prefix model names (``timm``): ``timm:x`` is theirs, not code."""
    return tuple(
        name
        for name, spec in registry.specs("model").items()
        if getattr(spec, "prefix", False)
    )


class ModelKind(StrEnum):
    """What a model name names; :func:`model_kind` decides it once per name."""

    REGISTERED = "registered"
    """A registered architecture (``mlp-bn``, ``timm:resnet18``)."""
    CODE = "code"
    """The user's code: ``package.module:name`` or ``path/to/file.py:name``."""
    HF = "hf"
    """A Hugging Face ``save_pretrained`` folder, ``hf:PATH``."""


def model_kind(name: str, registry: Registry) -> ModelKind:
    """Classify a model name: ``hf:PATH``, the user's code, or a registered name.

    ``<prefix>:<variant>`` of a registered prefix model (``timm:resnet18``) is
    registered, not code.
    """
    if is_hf_spec(name):
        return ModelKind.HF
    if is_code_spec(name, model_prefixes(registry)):
        return ModelKind.CODE
    return ModelKind.REGISTERED


def is_code_model(name: object, registry: Registry) -> bool:
    """Whether ``name`` is a code spec (``pkg.mod:Net``, ``file.py:Net``)."""
    return isinstance(name, str) and model_kind(name, registry) is ModelKind.CODE


def build_model(
    name: str,
    *,
    input_shape: Sequence[int] | None,
    num_classes: int | None,
    options: Mapping[str, Any] | None = None,
    seed: int | None = None,
    registry: Registry | None = None,
) -> torch.nn.Module:
    """Build an architecture: a registered one, or a class or factory in your code.

    Examples:
        >>> import sharpkit
        >>> net = sharpkit.build_model(
        ...     "torch.nn:Linear", input_shape=None, num_classes=None,
        ...     options={"in_features": 4, "out_features": 2}, seed=0,
        ... )
        >>> tuple(net.weight.shape)
        (2, 4)

    Args:
        name: A registered model name (``"mlp-bn"``, ``"timm:resnet18"``, ...),
            or ``"package.module:name"`` / ``"path/to/file.py:name"``: a class or
            function of your own, called with ``options`` and, where its
            signature takes them, ``input_shape`` and ``num_classes``.
        input_shape: Shape of one input, e.g. ``(1, 28, 28)`` (``None``: unknown,
            for code that does not need it).
        num_classes: Number of output classes (``None``: unknown, likewise).
        options: Model options (``sharpkit plugins`` lists those of registered
            models; for your code, its keyword arguments).
        seed: Seed the initialisation (without touching the global RNG state).
        registry: The registry to use (default: the process-wide one).

    Raises:
        ConfigError: An ``hf:`` folder (load those with :func:`load_model`), or
            code that cannot be imported or called.
    """
    reg = registry or get_registry()
    return build_classified(
        name, model_kind(name, reg), input_shape=input_shape,
        num_classes=num_classes, options=options, seed=seed, registry=reg,
    )  # fmt: skip


def build_classified(
    name: str,
    kind: ModelKind,
    *,
    input_shape: Sequence[int] | None,
    num_classes: int | None,
    options: Mapping[str, Any] | None,
    seed: int | None,
    registry: Registry,
) -> torch.nn.Module:
    """:func:`build_model` of a name the caller classified already (``kind``)."""
    import torch

    reg = registry
    if kind is ModelKind.HF:
        msg = (
            f"{name} is a saved model, not an architecture to build; load it with "
            "sharpkit.load_model(name) or measure it directly"
        )
        raise ConfigError(msg)
    if kind is ModelKind.CODE:
        net, _ = build_code_model(
            name,
            input_shape=input_shape,
            num_classes=num_classes,
            options=options,
            seed=seed,
        )
        return net
    if input_shape is None or num_classes is None:
        msg = (
            f"model {name!r} needs the input shape and number of classes; "
            "name the data it is for"
        )
        raise ConfigError(msg)
    shape, classes = tuple(int(d) for d in input_shape), int(num_classes)

    def make() -> Any:
        return reg.create(
            "model", name, options, input_shape=shape, num_classes=classes
        )

    if seed is None:
        model = make()
    else:
        with seeded(seed):
            model = make()
    if not isinstance(model, torch.nn.Module):
        msg = f"model {name!r} factory returned {type(model).__name__}, not a Module"
        raise PluginContractError(msg)
    return model


def load_model(
    checkpoint: str | os.PathLike[str] | Checkpoint,
    *,
    model: str | None = None,
    model_options: Mapping[str, Any] | None = None,
    input_shape: Sequence[int] | None = None,
    num_classes: int | None = None,
    data: str | None = None,
    data_root: str | os.PathLike[str] | None = None,
    registry: Registry | None = None,
) -> tuple[torch.nn.Module, Checkpoint]:
    """Load a trained model: a checkpoint, a ``.pt2`` archive or a Hugging Face folder.

    For a checkpoint the architecture comes from its metadata, or from ``model``
    (and ``model_options``) for a bare ``state_dict``: a registered name, your
    own ``"package.module:name"`` / ``"path/to/file.py:name"`` (imported only
    because you name it here, never because a checkpoint does), or
    ``"hf:PATH"`` (a ``save_pretrained`` folder whose weights the checkpoint
    replaces). Input shape and number of classes come from the arguments, else
    from the checkpoint, else from ``data``.

    ``checkpoint`` may also be a ``.pt2`` file from ``torch.export.save``
    (architecture and weights in one file) or ``"hf:PATH"``; neither takes
    ``model``.

    Returns:
        The model (weights loaded, on the CPU, in eval mode) and the checkpoint
        (for ``.pt2`` and ``hf:``, one that describes the file or folder).

    Raises:
        ConfigError: The architecture or the data shape cannot be determined.
        StateDictMismatchError: The weights do not fit the architecture.
    """
    net, ckpt, _ = _load_model(
        checkpoint,
        model=model,
        model_options=model_options,
        input_shape=input_shape,
        num_classes=num_classes,
        data=data,
        data_root=data_root,
        registry=registry or get_registry(),
        flag=("model", "--model"),
    )
    return net, ckpt


def _self_contained(
    checkpoint: str | os.PathLike[str] | Checkpoint, model: str | None
) -> tuple[torch.nn.Module, Checkpoint] | None:
    """Load a ``.pt2`` archive or an ``hf:`` folder (``None``: neither)."""
    if isinstance(checkpoint, Checkpoint):
        return None
    text = os.fspath(checkpoint)
    exported = text.endswith(EXPORT_SUFFIX) and not is_hf_spec(text)
    if not exported and not is_hf_spec(text):
        return None
    if model is not None:
        what = "an exported program" if exported else "a Hugging Face folder"
        msg = (
            f"{text!r} is {what}, which holds its own architecture; drop the "
            f"model name ({model!r})"
        )
        raise ConfigError(msg)
    return load_exported(text) if exported else load_hf(text)


def _load_model(
    checkpoint: str | os.PathLike[str] | Checkpoint,
    *,
    model: str | None,
    model_options: Mapping[str, Any] | None,
    input_shape: Sequence[int] | None,
    num_classes: int | None,
    data: Any,
    data_root: str | os.PathLike[str] | None,
    registry: Registry,
    flag: tuple[str, str],
) -> tuple[torch.nn.Module, Checkpoint, str | None]:
    """:func:`load_model`, naming ``flag`` in messages; also the code's sha256."""
    loaded = _self_contained(checkpoint, model)
    if loaded is not None:
        loaded[0].eval()
        return loaded[0], loaded[1], None
    ckpt = (
        checkpoint
        if isinstance(checkpoint, Checkpoint)
        else load_checkpoint(checkpoint)
    )
    meta = ckpt.meta
    name = model or meta.model
    where = str(ckpt.path)
    if name is None:
        msg = (
            f"checkpoint {where!r} does not say which architecture it holds; name "
            f"it with {arg(flag[0], flag[1], 'NAME')}: a registered model (e.g. "
            "mlp-bn), your own package.module:Class or file.py:Class, or hf:PATH"
        )
        raise ConfigError(msg)
    kind = model_kind(name, registry)
    if model is None and kind is ModelKind.CODE:
        msg = (
            f"checkpoint {where!r} was made with the code {name}, which sharpkit "
            f"imports only when you name it: pass {arg(flag[0], flag[1], name)}"
        )
        raise ConfigError(msg)
    opts: dict[str, Any] = dict(meta.model_options)
    if model is not None and model != meta.model:
        opts = {}
    opts.update(model_options or {})
    code_sha: str | None = None
    source = f"checkpoint {where!r}"
    if kind is ModelKind.HF:
        net, _ = load_hf(name)
        from sharpkit.api.wrappers import unwrap

        load_state_dict_into(unwrap(net), ckpt.state_dict, source=source)
        net.eval()
        return net, ckpt, None
    code = kind is ModelKind.CODE
    input_shape, num_classes = _shape_of(
        ckpt, input_shape, num_classes, data, data_root, registry, required=not code
    )
    if code:
        net, code_sha = build_code_model(
            name,
            input_shape=input_shape,
            num_classes=num_classes,
            options=opts,
            seed=0,
        )
    else:
        net = build_classified(
            name,
            kind,
            input_shape=input_shape,
            num_classes=num_classes,
            options=opts,
            seed=None,
            registry=registry,
        )
    load_state_dict_into(net, ckpt.state_dict, source=source)
    net.eval()
    return net, ckpt, code_sha


def _shape_of(
    ckpt: Checkpoint,
    input_shape: Sequence[int] | None,
    num_classes: int | None,
    data: Any,
    data_root: str | os.PathLike[str] | None,
    registry: Registry,
    *,
    required: bool,
) -> tuple[Sequence[int] | None, int | None]:
    """Input shape and classes: given, else recorded, else from the data."""
    if input_shape is not None and num_classes is not None:
        return input_shape, num_classes
    shape, classes = (
        ckpt.meta.extra.get("input_shape"),
        ckpt.meta.extra.get("num_classes"),
    )
    if shape is not None and classes is not None:
        return input_shape or tuple(shape), num_classes or int(classes)
    ds_name = data if data is not None else recorded_data(ckpt.meta)
    if ds_name is None:
        if not required:
            return input_shape, num_classes
        msg = (
            f"cannot tell the input shape of {str(ckpt.path)!r}; name its data "
            f"with {arg('data', '--data')}"
        )
        raise ConfigError(msg)
    ds = resolve_data(ds_name, registry=registry, root=data_root)
    if not isinstance(ds, Dataset):
        ds = load_dataset(ds_name, root=data_root, subset=None, registry=registry)
    return input_shape or ds.input_shape, num_classes or ds.num_classes


# --------------------------------------------------------------------------- models


@dataclass(frozen=True, kw_only=True)
class ResolvedModel:
    """A model ready to analyse, and where it came from.

    Attributes:
        net: The module (the caller's own, or rebuilt from a checkpoint).
        meta: The checkpoint's metadata (empty for a module given directly).
        sha256: The checkpoint file's hash, or of the module's state for a module.
        path: The checkpoint's absolute path (``None`` for a module).
        format: The checkpoint's format (``None`` for a module).
        code_sha256: The sha256 of the user's code that built the model, if any.
    """

    net: torch.nn.Module
    meta: CheckpointMeta = field(default_factory=CheckpointMeta)
    sha256: str
    path: str | None = None
    format: str | None = None
    code_sha256: str | None = None

    def attrs(self) -> dict[str, Any]:
        """The provenance attributes every stored run records about its model."""
        out: dict[str, Any] = {
            "checkpoint_sha256": self.sha256,
            "checkpoint_path": self.path,
        }
        if self.format is not None:
            out["checkpoint_format"] = self.format
        return out

    def expects(self) -> str | None:
        """What the model was built for, when recorded: ``inputs of shape (...)``."""
        shape = self.meta.extra.get("input_shape")
        if not isinstance(shape, list | tuple) or any(int(d) < 0 for d in shape):
            return None
        return f"inputs of shape {tuple(int(d) for d in shape)}"


def _data_shape(data: Any) -> tuple[tuple[int, ...] | None, int | None]:
    """Input shape and number of classes of data given as objects."""
    if isinstance(data, tuple | list) and len(data) == 2:
        data = as_split(data, None)
    if isinstance(data, DataSplit):
        return tuple(data.inputs.shape[1:]), infer_num_classes(data.targets)
    if isinstance(data, Dataset):
        return tuple(data.input_shape), int(data.num_classes)
    return None, None


def _input_names(data: Any) -> tuple[str, ...] | None:
    """The names of packed inputs (:attr:`DataSplit.input_names`), if any."""
    if isinstance(data, Dataset):
        data = data.train
    if (
        isinstance(data, tuple | list)
        and len(data) == 2
        and isinstance(data[0], Mapping)
    ):
        return tuple(str(k) for k in data[0])
    return data.input_names if isinstance(data, DataSplit) else None


def adapt_model(
    net: torch.nn.Module, input_names: tuple[str, ...] | None
) -> torch.nn.Module:
    """Wrap a Hugging Face model to answer logits; feed it ``input_names``."""
    from sharpkit.api.wrappers import HFClassifier, is_hf_model

    if is_hf_model(net):
        wrapped = HFClassifier(net)
        wrapped.training = net.training
        net = wrapped
    if isinstance(net, HFClassifier):
        return net.with_inputs(input_names)
    return net


def resolve_model(
    model: ModelLike,
    *,
    data: DataLike = None,
    model_name: str | None = None,
    model_options: Mapping[str, Any] | None = None,
    data_root: str | os.PathLike[str] | None = None,
    registry: Registry,
) -> ResolvedModel:
    """Return the module ``model`` names.

    ``model`` is a module; a checkpoint path (``.pt``, ``.pth``,
    ``.safetensors``) or object; a ``.pt2`` archive; ``"hf:PATH"``; or
    ``"package.module:name"`` / ``"path/to/file.py:name"``, whose factory builds
    the trained model itself. For a checkpoint the input shape and number of
    classes come from the data when it is given as objects.

    Raises:
        ConfigError: ``model`` is none of these.
    """
    import torch

    names = _input_names(data)
    if isinstance(model, os.PathLike):
        model = os.fspath(model)
    if isinstance(model, torch.nn.Module):
        return ResolvedModel(net=adapt_model(model, names), sha256=state_sha256(model))
    given: object = model
    if not isinstance(given, str | os.PathLike | Checkpoint):
        msg = (
            f"cannot measure a {type(model).__name__}; pass a torch.nn.Module, a "
            "checkpoint path, a .pt2 file, 'hf:PATH' or 'package.module:name'"
        )
        raise ConfigError(msg)
    input_shape, num_classes = _data_shape(data)
    if (
        isinstance(model, str)
        and not os.path.exists(model)  # a file is not classified as a name
        and is_code_model(model, registry)
    ):
        return _code_model(model, model_name, model_options, data)
    net, ckpt, code_sha = _load_model(
        model,
        model=model_name,
        model_options=model_options,
        input_shape=input_shape,
        num_classes=num_classes,
        data=data if isinstance(data, str) else None,
        data_root=data_root,
        registry=registry,
        flag=("model_name", "--model"),
    )
    return ResolvedModel(
        net=adapt_model(net, names),
        meta=ckpt.meta,
        sha256=ckpt.sha256,
        path=str(Path(ckpt.path).resolve()),
        format=ckpt.format,
        code_sha256=code_sha,
    )


def _code_model(
    spec: str,
    model_name: str | None,
    model_options: Mapping[str, Any] | None,
    data: Any,
) -> ResolvedModel:
    """A model built by the user's code alone (its factory loads the weights)."""
    if model_name is not None:
        msg = (
            f"{spec} already names the model; drop {arg('model_name', '--model')} "
            f"({model_name!r}) or give a checkpoint for it"
        )
        raise ConfigError(msg)
    shape, classes = _data_shape(data)
    net, code_sha = build_code_model(
        spec, input_shape=shape, num_classes=classes, options=model_options, seed=0
    )
    net.eval()
    meta = CheckpointMeta(model=spec, model_options=dict(model_options or {}))
    return ResolvedModel(
        net=adapt_model(net, _input_names(data)),
        meta=meta,
        sha256=state_sha256(net),
        code_sha256=code_sha,
    )


def check_finite(model: torch.nn.Module, what: str) -> None:
    """Raise :class:`~sharpkit.DataError` if a floating state entry is not finite."""
    import torch

    for pname, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            msg = (
                f"{what} has non-finite values in {pname!r}; the run diverged, "
                "use an earlier checkpoint or a smaller learning rate"
            )
            raise DataError(msg)


def prepare_model(
    model: torch.nn.Module, device: torch.device, dtype: torch.dtype | None
) -> torch.nn.Module:
    """Return the model on device/dtype, copying only if a conversion is needed."""
    params = list(model.parameters())
    if not params:
        msg = "the model has no parameters to measure"
        raise ConfigError(msg)
    cur_dtype, cur_dev = params[0].dtype, params[0].device
    if (dtype is None or dtype == cur_dtype) and cur_dev == device:
        return model
    out = copy.deepcopy(model)
    if dtype is not None:
        out = out.to(dtype)
    return out.to(device)
