"""Turning what a caller names into objects: devices, stores, datasets, data.

Shared by every job (:mod:`~sharpkit.api.job` resolves a job's inputs through
it): a device or dtype by name, a memory size, a results store, a dataset given
by name (loaded once per :func:`reuse_datasets` block), a data file, folder or
code (:mod:`~sharpkit.api.datafiles`), or data given as tensors, a ``Dataset``
or a ``DataLoader``. Models are :mod:`~sharpkit.api.models`'.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

from sharpkit._data import DataSplit
from sharpkit._hints import arg
from sharpkit.api.datafiles import (
    SourceDataset,
    as_split,
    is_data_source,
    load_data,
)
from sharpkit.api.usercode import is_code_spec
from sharpkit.checkpoint import (
    Checkpoint,
    CheckpointMeta,
)
from sharpkit.errors import ConfigError, PluginContractError
from sharpkit.interfaces import Dataset
from sharpkit.registry import Registry, get_registry

if TYPE_CHECKING:
    import torch

    from sharpkit.store import ResultStore

__all__ = [
    "DEFAULT_SAMPLES",
    "DataLike",
    "ModelLike",
    "StoreLike",
    "as_split",
    "load_dataset",
    "load_registered",
    "load_training_data",
    "open_store",
    "recorded_data",
    "resolve_data",
    "resolve_device",
    "resolve_dtype",
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
    if dev.type == "meta":
        msg = (
            f"device {device!r} holds no values to measure; use "
            f"{arg('device', '--device', 'cpu')} or 'cuda'"
        )
        raise ConfigError(msg)
    if dev.type not in ("cpu", "cuda") and not _works(dev):
        msg = (
            f"device {device!r} is not available here; use "
            f"{arg('device', '--device', 'cpu')} or 'cuda'"
        )
        raise ConfigError(msg)
    return dev


def _works(dev: torch.device) -> bool:
    """Whether a small tensor can be made on ``dev`` (mps, xpu, ... where built)."""
    import torch

    try:
        torch.zeros(1, device=dev)
    except (RuntimeError, AssertionError, ValueError, NotImplementedError):
        return False
    return True


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
    if not 1 <= size < 2**63:  # inf and NaN too: a size, not a wish
        msg = f"{hint} must be a positive, finite size, got {value!r}"
        raise ConfigError(msg)
    return int(size)


def open_store(store: StoreLike) -> ResultStore | None:
    """Open ``store`` (a path or a :class:`~sharpkit.ResultStore`); ``None`` stays."""
    if store is None:
        return None
    from sharpkit.store import ResultStore

    if isinstance(store, ResultStore):
        return store
    _check_store_url(str(store))
    return ResultStore(store)


# a scheme, then nothing or slashes: "lr:0.1/x.zarr" is a local path
_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+):(/+(.*))?$")


def _check_store_url(text: str) -> None:
    """A store is a local path or ``s3://bucket/...``: no other URL is written to.

    ``ftp://host/x`` (or ``ftp:/host/x``, as a path type prints it) would
    otherwise become a local folder named ``ftp:``.
    """
    match = _URL.match(text)
    if match is None:
        return  # a local path
    scheme, rest = match.group(1), match.group(3) or ""
    if scheme.lower() != "s3":
        msg = (
            f"--store {text!r}: {scheme}:// is not a store sharpkit can write; give "
            "a local folder or s3://bucket/path"
        )
        raise ConfigError(msg)
    if not rest.split("/", 1)[0]:
        msg = f"--store {text!r} names no bucket; give s3://bucket/path"
        raise ConfigError(msg)


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
    limit: int | None = None,
) -> Any:
    """Load ``data`` when it names a file, a folder or code; else return it as is.

    ``limit``: read no more than the first ``limit`` examples of each split
    where the source can stop early (see :func:`~sharpkit.api.datafiles.load_data`).
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
    key = ("source", text, stamp, repr(sorted((options or {}).items())), limit)
    if cache is not None and key in cache:
        return cache[key]
    ds = load_data(text, options=options, limit=limit)
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
