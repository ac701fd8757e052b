"""Turning what a caller names into objects: devices, datasets, models, data.

Everything here is shared by :mod:`~sharpkit.api.measure`,
:mod:`~sharpkit.api.train` and :mod:`~sharpkit.api.probe`: a model given as a
module or a checkpoint, a dataset given by name (loaded once per
:func:`reuse_datasets` block), data given as tensors, a ``Dataset`` or a
``DataLoader``.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

from sharpkit._data import DataSplit
from sharpkit._seed import seeded
from sharpkit.api.provenance import state_sha256
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
    "ModelLike",
    "ResolvedModel",
    "StoreLike",
    "as_split",
    "build_model",
    "check_finite",
    "load_dataset",
    "load_model",
    "load_training_data",
    "open_store",
    "prepare_model",
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
            "use --device cpu"
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
    """Load a registered dataset (e.g. ``"fashion-mnist"``, ``"cifar10"``).

    Args:
        name: Registered dataset name.
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


def build_model(
    name: str,
    *,
    input_shape: Sequence[int],
    num_classes: int,
    options: Mapping[str, Any] | None = None,
    seed: int | None = None,
    registry: Registry | None = None,
) -> torch.nn.Module:
    """Build a registered architecture (``"mlp-bn"``, ``"timm:resnet18"``, ...).

    Args:
        name: Registered model name.
        input_shape: Shape of one input, e.g. ``(1, 28, 28)``.
        num_classes: Number of output classes.
        options: Model options (``sharpkit plugins`` lists them).
        seed: Seed the initialisation (without touching the global RNG state).
        registry: The registry to use (default: the process-wide one).
    """
    import torch

    reg = registry or get_registry()

    def make() -> Any:
        return reg.create(
            "model",
            name,
            options,
            input_shape=tuple(int(d) for d in input_shape),
            num_classes=int(num_classes),
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
    """Load a checkpoint and rebuild its model.

    The architecture comes from the checkpoint's metadata, or from ``model`` (and
    ``model_options``) for a bare ``state_dict``. Input shape and number of
    classes come from the arguments, else from the dataset the checkpoint names.

    Returns:
        The model (weights loaded, on the CPU, in eval mode) and the checkpoint.

    Raises:
        ConfigError: The architecture or the data shape cannot be determined.
        StateDictMismatchError: The weights do not fit the architecture.
    """
    reg = registry or get_registry()
    ckpt = (
        checkpoint
        if isinstance(checkpoint, Checkpoint)
        else load_checkpoint(checkpoint)
    )
    meta = ckpt.meta
    name = model or meta.model
    if name is None:
        msg = (
            f"checkpoint {str(ckpt.path)!r} does not say which architecture it holds; "
            "name it with --model (e.g. --model mlp-bn) and its --option values"
        )
        raise ConfigError(msg)
    opts: dict[str, Any] = dict(meta.model_options) if model is None else {}
    opts.update(model_options or {})
    if input_shape is None or num_classes is None:
        shape_info = meta.extra.get("input_shape"), meta.extra.get("num_classes")
        if shape_info[0] is not None and shape_info[1] is not None:
            input_shape = input_shape or tuple(shape_info[0])
            num_classes = num_classes or int(shape_info[1])
        else:
            ds_name = data or meta.dataset
            if ds_name is None:
                msg = (
                    f"cannot tell the input shape of {str(ckpt.path)!r}; "
                    "name its dataset with --data"
                )
                raise ConfigError(msg)
            ds = load_dataset(ds_name, root=data_root, subset=None, registry=reg)
            input_shape = input_shape or ds.input_shape
            num_classes = num_classes or ds.num_classes
    net = build_model(
        name,
        input_shape=input_shape,
        num_classes=num_classes,
        options=opts,
        registry=reg,
    )
    load_state_dict_into(net, ckpt.state_dict, source=f"checkpoint {str(ckpt.path)!r}")
    net.eval()
    return net, ckpt


def as_split(data: Any, samples: int | None) -> DataSplit:
    """Turn tensors, a torch Dataset or a DataLoader into an in-memory split."""
    import torch

    if isinstance(data, DataSplit):
        return data.head(samples) if samples is not None else data
    if (
        isinstance(data, tuple | list)
        and len(data) == 2
        and all(isinstance(t, torch.Tensor) for t in data)
    ):
        split = DataSplit(data[0], data[1])
        return split.head(samples) if samples is not None else split
    xs: list[torch.Tensor] = []
    ys: list[torch.Tensor] = []
    count = 0
    if isinstance(data, torch.utils.data.DataLoader):
        for batch in data:
            x, y = batch[0], batch[1]
            xs.append(x)
            ys.append(torch.as_tensor(y))
            count += len(x)
            if samples is not None and count >= samples:
                break
    elif isinstance(data, torch.utils.data.Dataset) and hasattr(data, "__len__"):
        n = len(data)
        n = n if samples is None else min(samples, n)
        for i in range(n):
            item = data[i]
            xs.append(torch.as_tensor(item[0]).unsqueeze(0))
            ys.append(torch.as_tensor(item[1]).reshape(1))
    else:
        msg = (
            f"cannot use {type(data).__name__} as data; pass a dataset name, a "
            "DataSplit, an (inputs, targets) pair, a torch Dataset or a DataLoader"
        )
        raise ConfigError(msg)
    if not xs:
        msg = "the data is empty"
        raise DataError(msg)
    split = DataSplit(torch.cat(xs), torch.cat(ys).long())
    return split.head(samples) if samples is not None else split


def load_training_data(
    name: str,
    meta: CheckpointMeta,
    *,
    root: str | os.PathLike[str] | None,
    download: bool,
    registry: Registry,
    with_subset: bool = True,
) -> tuple[Dataset, int | None]:
    """Load the dataset ``name`` as the checkpoint with ``meta`` was trained on it.

    When the model was trained on this dataset, its options apply, and (with
    ``with_subset``) its training split is the same seeded subset the model saw:
    "the training loss" is the loss on what the model was trained on.

    Returns:
        The dataset and the training-subset size (``None``: the full split).
    """
    options = dict(meta.dataset_options) if name == meta.dataset else {}
    subset = options.pop("subset", None)
    train_subset = int(subset) if with_subset and subset is not None else None
    ds = load_dataset(
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
    """

    net: torch.nn.Module
    meta: CheckpointMeta = field(default_factory=CheckpointMeta)
    sha256: str
    path: str | None = None
    format: str | None = None

    def attrs(self) -> dict[str, Any]:
        """The provenance attributes every stored run records about its model."""
        out: dict[str, Any] = {
            "checkpoint_sha256": self.sha256,
            "checkpoint_path": self.path,
        }
        if self.format is not None:
            out["checkpoint_format"] = self.format
        return out


def resolve_model(
    model: ModelLike,
    *,
    data: DataLike = None,
    model_name: str | None = None,
    model_options: Mapping[str, Any] | None = None,
    data_root: str | os.PathLike[str] | None = None,
    registry: Registry,
) -> ResolvedModel:
    """Return the module ``model`` names (a module, a checkpoint path or object).

    For a checkpoint the input shape and number of classes come from the data
    when it is given as tensors or a :class:`~sharpkit.Dataset`.

    Raises:
        ConfigError: ``model`` is neither a module nor a checkpoint.
    """
    import torch

    if isinstance(model, torch.nn.Module):
        return ResolvedModel(net=model, sha256=state_sha256(model))
    given: object = model
    if not isinstance(given, str | os.PathLike | Checkpoint):
        msg = (
            f"cannot measure a {type(model).__name__}; pass a torch.nn.Module or a "
            "checkpoint path"
        )
        raise ConfigError(msg)
    input_shape = num_classes = None
    if isinstance(data, DataSplit | tuple):
        inputs, targets = (
            (data.inputs, data.targets) if isinstance(data, DataSplit) else data
        )
        input_shape = tuple(inputs.shape[1:])
        num_classes = int(targets.max().item()) + 1
    elif isinstance(data, Dataset):
        input_shape, num_classes = data.input_shape, data.num_classes
    net, ckpt = load_model(
        model,
        model=model_name,
        model_options=model_options,
        input_shape=input_shape,
        num_classes=num_classes,
        data=data if isinstance(data, str) else None,
        data_root=data_root,
        registry=registry,
    )
    return ResolvedModel(
        net=net,
        meta=ckpt.meta,
        sha256=ckpt.sha256,
        path=str(Path(ckpt.path).resolve()),
        format=ckpt.format,
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
