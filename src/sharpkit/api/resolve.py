"""Turning what a caller names into objects: devices, datasets, models, data.

Everything here is shared by :mod:`~sharpkit.api.measure`,
:mod:`~sharpkit.api.train` and :mod:`~sharpkit.api.probe`: a model given as a
module, a checkpoint, a ``.pt2`` archive, an ``hf:`` folder or the user's code
(:mod:`~sharpkit.api.sources`); a dataset given by name (loaded once per
:func:`reuse_datasets` block), a data file, folder or code
(:mod:`~sharpkit.api.datafiles`), or data given as tensors, a ``Dataset`` or a
``DataLoader``.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

from sharpkit._data import DataSplit
from sharpkit._hints import arg
from sharpkit._seed import seeded
from sharpkit.api.datafiles import (
    SourceDataset,
    as_split,
    infer_num_classes,
    is_data_source,
    load_data,
)
from sharpkit.api.provenance import state_sha256
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

    from sharpkit.store import ResultStore

__all__ = [
    "DEFAULT_SAMPLES",
    "DataLike",
    "ModelKind",
    "ModelLike",
    "ResolvedModel",
    "StoreLike",
    "adapt_model",
    "as_split",
    "build_classified",
    "build_model",
    "check_finite",
    "is_code_model",
    "load_dataset",
    "load_model",
    "load_registered",
    "load_training_data",
    "model_kind",
    "model_prefixes",
    "open_store",
    "prepare_model",
    "recorded_data",
    "resolve_data",
    "resolve_device",
    "resolve_dtype",
    "resolve_model",
    "reuse_datasets",
]

ModelLike: TypeAlias = "torch.nn.Module | str | os.PathLike[str] | Checkpoint"
DataLike: TypeAlias = (
    "str | DataSplit | Dataset | tuple[torch.Tensor, torch.Tensor] | Any | None"
)
StoreLike: TypeAlias = "str | os.PathLike[str] | ResultStore | None"

DEFAULT_SAMPLES = 2048
"""Analysis-set size when the data is given by name: the first N training examples."""


# --------------------------------------------------------------------------- devices


def resolve_device(device: str | torch.device | None) -> torch.device:
    """Return the device ``device`` names (``None``/``"auto"``: CUDA if present).

    Raises:
        ConfigError: Not a device, or CUDA asked for where there is none.
    """
    import torch

    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        msg = f"unknown device {device!r}; use 'cpu', 'cuda' or 'cuda:N'"
        raise ConfigError(msg) from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        msg = (
            f"device {device!r} requested but no CUDA device is available; "
            f"use {arg('device', '--device', 'cpu')}"
        )
        raise ConfigError(msg)
    return dev


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """Return the floating dtype ``dtype`` names (``None`` stays ``None``).

    Raises:
        ConfigError: Not float32 or float64.
    """
    import torch

    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    table = {
        "float32": torch.float32,
        "float": torch.float32,
        "fp32": torch.float32,
        "float64": torch.float64,
        "double": torch.float64,
        "fp64": torch.float64,
    }
    if dtype not in table:
        msg = f"unsupported dtype {dtype!r}; use 'float32' or 'float64'"
        raise ConfigError(msg)
    return table[dtype]


_UNITS = {
    "": 1,
    "b": 1,
    "k": 2**10,
    "kib": 2**10,
    "kb": 10**3,
    "m": 2**20,
    "mib": 2**20,
    "mb": 10**6,
    "g": 2**30,
    "gib": 2**30,
    "gb": 10**9,
    "t": 2**40,
    "tib": 2**40,
    "tb": 10**12,
}


def memory_bytes(value: int | str | None) -> int | None:
    """Return the bytes a memory size names: ``8GiB``, ``8G``, ``500MB``, ``2e9``.

    ``K``/``M``/``G``/``T`` and ``KiB``... are powers of 1024, ``KB``/``MB``/
    ``GB``/``TB`` powers of 1000; a bare number is bytes.

    Raises:
        ConfigError: Not a positive size.
    """
    if value is None:
        return None
    hint = arg("memory_budget", "--memory-budget")
    text = str(value).strip().replace(" ", "").lower()
    number = text.rstrip("kmgtib")
    unit = text[len(number) :]
    try:
        size = float(number) * _UNITS[unit]
    except (ValueError, KeyError):
        msg = f"{hint} must be a size such as 8GiB, 500MB or 2e9 bytes, got {value!r}"
        raise ConfigError(msg) from None
    if not size >= 1:
        msg = f"{hint} must be positive, got {value!r}"
        raise ConfigError(msg)
    return int(size)


def open_store(store: StoreLike) -> ResultStore | None:
    """Open ``store`` (a path or a :class:`~sharpkit.ResultStore`); ``None`` stays."""
    if store is None:
        return None
    from sharpkit.store import ResultStore

    if isinstance(store, ResultStore):
        return store
    return ResultStore(store)


# --------------------------------------------------------------------------- components


def load_dataset(
    name: str,
    *,
    root: str | os.PathLike[str] | None = None,
    download: bool = False,
    subset: int | None = None,
    seed: int = 0,
    options: Mapping[str, Any] | None = None,
    registry: Registry | None = None,
) -> Dataset:
    """Load a registered dataset (``"fashion-mnist"``, ``"cifar10"``) or your data.

    Args:
        name: Registered dataset name; or a tensor file (``.pt``, ``.npz``,
            ``.safetensors``), an image folder, or ``"package.module:name"``
            (``options`` are then its data options; ``root``, ``download``,
            ``subset`` and ``seed`` apply to registered datasets only).
        root: Where to look for the files first (else ``$SHARPKIT_DATA``, then the
            standard places; see the dataset's docs).
        download: Fetch the files with torchvision if they are not found.
        subset: Keep a stratified, seeded subset of this many training examples.
        seed: Seed for the subset.
        options: Dataset options (``sharpkit plugins`` lists them).
        registry: The registry to use (default: the process-wide one).

    Returns:
        The dataset with in-memory ``train`` and ``test`` splits.
    """
    reg = registry or get_registry()
    if is_data_source(name, reg.names("dataset")):
        source: Dataset = resolve_data(name, options=options, registry=reg)
        return source
    return load_registered(
        name, root=root, download=download, subset=subset, seed=seed,
        options=options, registry=reg,
    )  # fmt: skip


def load_registered(
    name: str,
    *,
    root: str | os.PathLike[str] | None,
    download: bool,
    subset: int | None,
    seed: int,
    options: Mapping[str, Any] | None,
    registry: Registry,
) -> Dataset:
    """:func:`load_dataset` of a name known to be a registered dataset."""
    reg = registry
    _check_root(root)
    if subset is not None and subset < 1:
        msg = f"subset must be a positive number of examples, got {subset}"
        raise ConfigError(msg)
    cache = _DATASETS.get()
    key = (
        id(reg),
        name,
        None if root is None else str(Path(root).resolve()),
        subset,
        seed,
        repr(sorted((options or {}).items())),
    )
    if cache is not None and key in cache:
        return cache[key]
    ds = reg.create(
        "dataset",
        name,
        options,
        root=Path(root) if root is not None else None,
        download=download,
        subset=subset,
        seed=seed,
    )
    if not isinstance(ds, Dataset):
        msg = f"dataset {name!r} factory returned {type(ds).__name__}, not a Dataset"
        raise PluginContractError(msg)
    if cache is not None:
        cache[key] = ds
    return ds


#: Datasets loaded inside a :func:`reuse_datasets` block, by their arguments.
_DATASETS: ContextVar[dict[tuple[Any, ...], Dataset] | None] = ContextVar(
    "sharpkit_datasets", default=None
)


@contextmanager
def reuse_datasets() -> Iterator[None]:
    """Inside the block, each dataset is loaded once and then shared.

    For scripts that measure many checkpoints: every :func:`measure`,
    :func:`probe` or :func:`load_dataset` call in the block that asks for the
    same dataset (name, root, subset, seed and options) gets the same in-memory
    object instead of reading the files again (about a second for CIFAR-10).
    The data are only read, never changed; they are released when the block
    ends. Nested blocks share the outermost one. ``sharpkit measure`` with
    several checkpoints does this for you.

    Examples:
        >>> import sharpkit
        >>> with sharpkit.reuse_datasets():
        ...     a = sharpkit.load_dataset("synthetic")
        ...     b = sharpkit.load_dataset("synthetic")
        >>> a is b
        True
        >>> sharpkit.load_dataset("synthetic") is a
        False
    """
    if _DATASETS.get() is not None:
        yield
        return
    token = _DATASETS.set({})
    try:
        yield
    finally:
        _DATASETS.reset(token)


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


def _check_root(root: str | os.PathLike[str] | None) -> None:
    """Refuse a data root that names something other than a folder.

    Raises:
        ConfigError: ``root`` exists and is not a directory.
    """
    if root is not None and os.path.exists(root) and not os.path.isdir(root):
        msg = (
            f"{arg('root', '--data-root')} {os.fspath(root)!r} is not a directory; "
            "name the folder that holds the dataset's files"
        )
        raise ConfigError(msg)


def resolve_data(
    data: Any,
    *,
    options: Mapping[str, Any] | None = None,
    registry: Registry,
    root: str | os.PathLike[str] | None = None,
) -> Any:
    """Load ``data`` when it names a file, a folder or code; else return it as is.

    Inside a :func:`reuse_datasets` block each source is loaded once (a file is
    read again if it changed).
    """
    if not is_data_source(data, registry.names("dataset")):
        if options and isinstance(data, str):
            return data  # a registered dataset: its options go to load_dataset
        if options:
            msg = (
                "data options apply to data named by a path or by code; pass the "
                "data itself already prepared"
            )
            raise ConfigError(msg)
        return data
    text = os.fspath(data)
    cache = _DATASETS.get()
    stamp: tuple[Any, ...] = ()
    if os.path.exists(text):
        st = os.stat(text)
        stamp = (str(Path(text).resolve()), st.st_mtime_ns, st.st_size)
    key = ("source", text, stamp, repr(sorted((options or {}).items())))
    if cache is not None and key in cache:
        return cache[key]
    ds = load_data(text, options=options)
    if cache is not None:
        cache[key] = ds
    return ds


def recorded_data(meta: CheckpointMeta) -> str | None:
    """The data a checkpoint says it was trained on, unless that is code.

    Raises:
        ConfigError: The checkpoint names a code spec, which sharpkit imports
            only when the caller names it.
    """
    name = meta.dataset
    if name is not None and is_code_spec(name) and not os.path.exists(name):
        msg = (
            f"the model was trained on data from the code {name}, which sharpkit "
            f"imports only when you name it: pass {arg('data', '--data', name)}"
        )
        raise ConfigError(msg)
    return name


def load_training_data(
    name: str,
    meta: CheckpointMeta,
    *,
    root: str | os.PathLike[str] | None,
    download: bool,
    registry: Registry,
    with_subset: bool = True,
    options: Mapping[str, Any] | None = None,
    registered: bool = False,
) -> tuple[Dataset, int | None]:
    """Load the dataset ``name`` as the checkpoint with ``meta`` was trained on it.

    When the model was trained on this dataset, its options apply, and (with
    ``with_subset``) its training split is the same seeded subset the model saw:
    "the training loss" is the loss on what the model was trained on. ``name``
    may also be a data file, folder or code spec (see :func:`resolve_data`).

    ``registered``: the caller classified ``name`` already as a registered
    dataset (:func:`resolve_data` returned it as a name), so it is not again.

    Returns:
        The dataset and the training-subset size (``None``: the full split).
    """
    if not registered:
        source = resolve_data(name, options=options, registry=registry, root=root)
        if isinstance(source, SourceDataset):
            return source, None
    options = {
        **(dict(meta.dataset_options) if name == meta.dataset else {}),
        **(options or {}),
    }
    subset = options.pop("subset", None)
    train_subset = int(subset) if with_subset and subset is not None else None
    ds = load_registered(
        name,
        root=root,
        download=download,
        subset=train_subset,
        seed=meta.seed or 0,
        options=options,
        registry=registry,
    )
    return ds, train_subset


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
