"""The public functions behind ``sharpkit.*`` and the CLI.

The CLI is a thin layer over these: every command parses its arguments, calls one
of these functions, and renders what it returns. Scripts call the same functions
(``sharpkit.measure``, ``sharpkit.train``, ``sharpkit.interpolate``, ...).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import math
import os
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

from sharpkit._meta import json_safe, provenance, stable_key
from sharpkit._seed import seeded
from sharpkit.checkpoint import (
    Checkpoint,
    CheckpointMeta,
    load_checkpoint,
    load_state_dict_into,
)
from sharpkit.errors import (
    ConfigError,
    DataError,
    NumericalError,
    PluginContractError,
    PluginLoadError,
    SharpkitError,
    SharpkitWarning,
)
from sharpkit.interfaces import (
    AnalysisContext,
    Dataset,
    DataSplit,
    Metric,
    MetricResult,
    Probe,
    ProbeContext,
    ProbeResult,
    ProgressCallback,
    TrainConfig,
    Trainer,
    TrainResult,
    _no_progress,
)
from sharpkit.registry import Registry, get_registry

if TYPE_CHECKING:
    import torch

    from sharpkit.store import ResultStore

__all__ = [
    "Measurement",
    "build_model",
    "interpolate",
    "load_dataset",
    "load_model",
    "measure",
    "open_results",
    "probe",
    "reuse_datasets",
    "train",
]

ModelLike: TypeAlias = "torch.nn.Module | str | os.PathLike[str] | Checkpoint"
DataLike: TypeAlias = (
    "str | DataSplit | Dataset | tuple[torch.Tensor, torch.Tensor] | Any | None"
)
StoreLike: TypeAlias = "str | os.PathLike[str] | ResultStore | None"

DEFAULT_SAMPLES = 2048
"""Analysis-set size when the data is given by name: the first N training examples."""


# --------------------------------------------------------------------------- helpers


def _resolve_device(device: str | torch.device | None) -> torch.device:
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


def _resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
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


def _state_sha256(model: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _open_store(store: StoreLike) -> ResultStore | None:
    if store is None:
        return None
    from sharpkit.store import ResultStore

    if isinstance(store, ResultStore):
        return store
    return ResultStore(store)


def _fail_plugin(
    reg: Registry, kind: str, name: str, action: str, exc: Exception
) -> PluginLoadError:
    rec = reg.provider(kind, name)
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    detail = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    msg = (
        f"{kind} {name!r} ({rec.provider}) failed while {action}: {detail}; "
        "rerun with --debug for the traceback"
    )
    return PluginLoadError(
        msg, plugin=rec.name, distribution=rec.distribution, phase=action
    )


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

    Example:
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


def _as_split(data: Any, samples: int | None) -> DataSplit:
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


# --------------------------------------------------------------------------- measure


class Measurement(Mapping[str, MetricResult]):
    """The results of :func:`measure`: ``{metric name: MetricResult}`` plus provenance.

    Attributes:
        attrs: Provenance (checkpoint sha256/path, model, dataset, η, S, seed, ...).
        run_id: The id of the run written to the store, if one was written.
        reused: Names of metrics taken from the store instead of recomputed.
    """

    def __init__(
        self,
        results: Mapping[str, MetricResult],
        attrs: Mapping[str, Any],
        run_id: str | None = None,
        reused: Sequence[str] = (),
    ) -> None:
        self._results = dict(results)
        self.attrs = dict(attrs)
        self.run_id = run_id
        self.reused = tuple(reused)

    def __getitem__(self, key: str) -> MetricResult:
        return self._results[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._results)

    def __len__(self) -> int:
        return len(self._results)

    def __repr__(self) -> str:
        parts = ", ".join(
            f"{k}={v.value:.6g}" + (f"±{v.stderr:.2g}" if v.stderr is not None else "")
            for k, v in self._results.items()
        )
        return f"Measurement({parts})"

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-compatible dict (what ``--json`` prints)."""
        out: dict[str, Any] = {"attrs": json_safe(self.attrs), "run_id": self.run_id}
        out["metrics"] = {
            name: {
                "value": json_safe(r.value),
                "stderr": json_safe(r.stderr),
                "bound": json_safe(r.bound),
                "converged": r.converged,
                "hvps": r.hvps,
                "seconds": json_safe(r.seconds),
                "reused": name in self.reused,
                "attrs": json_safe(dict(r.attrs)),
                "arrays": {
                    k: json_safe([float(x) for x in v.reshape(-1)])
                    for k, v in r.arrays.items()
                    if v.size <= 64
                },
            }
            for name, r in self._results.items()
        }
        return out


def _check_finite(model: torch.nn.Module, what: str) -> None:
    import torch

    for pname, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            msg = (
                f"{what} has non-finite values in {pname!r}; the run diverged, "
                "use an earlier checkpoint or a smaller learning rate"
            )
            raise DataError(msg)


def _prepare_model(
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


def _model_and_meta(
    model: ModelLike,
    *,
    data: DataLike,
    model_name: str | None,
    model_options: Mapping[str, Any] | None,
    data_root: str | os.PathLike[str] | None,
    reg: Registry,
) -> tuple[torch.nn.Module, dict[str, Any], CheckpointMeta]:
    import torch

    if isinstance(model, torch.nn.Module):
        attrs = {"checkpoint_sha256": _state_sha256(model), "checkpoint_path": None}
        return model, attrs, CheckpointMeta()
    given: object = model
    if not isinstance(given, str | os.PathLike | Checkpoint):
        msg = (
            f"cannot measure a {type(model).__name__}; pass a torch.nn.Module or a "
            "checkpoint path"
        )
        raise ConfigError(msg)
    input_shape = num_classes = None
    ds_name = data if isinstance(data, str) else None
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
        data=ds_name,
        data_root=data_root,
        registry=reg,
    )
    meta = ckpt.meta
    attrs = {
        "checkpoint_sha256": ckpt.sha256,
        "checkpoint_path": str(Path(ckpt.path).resolve()),
        "checkpoint_format": ckpt.format,
    }
    return net, attrs, meta


@reuse_datasets()
def measure(
    model: ModelLike,
    data: DataLike = None,
    metrics: str | Sequence[str] = ("spectral",),
    *,
    loss: Any = None,
    samples: int | None = None,
    split: str = "train",
    batch_size: int = 2048,
    seed: int = 0,
    tol: float = 1e-3,
    max_hvps: int | None = None,
    bn_mode: str = "eval",
    dtype: str | torch.dtype | None = None,
    device: str | torch.device | None = None,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    model_name: str | None = None,
    model_options: Mapping[str, Any] | None = None,
    data_root: str | os.PathLike[str] | None = None,
    download: bool = False,
    progress: ProgressCallback | None = None,
    cache: dict[str, Any] | None = None,
    store: StoreLike = None,
    force: bool = False,
    registry: Registry | None = None,
) -> Measurement:
    """Measure the sharpness of a model's minimum.

    Example:
        >>> import torch, sharpkit
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 3))
        >>> x, y = torch.randn(32, 4), torch.randint(0, 3, (32,))
        >>> m = sharpkit.measure(net, (x, y), metrics=["spectral"])
        >>> m["spectral"].converged
        True

    Args:
        model: A ``torch.nn.Module``, or a checkpoint path (its metadata names the
            architecture; else give ``model_name``).
        data: A registered dataset name, a :class:`~sharpkit.DataSplit`, an
            ``(inputs, targets)`` pair of tensors, a torch ``Dataset`` or a
            ``DataLoader``. ``None``: the dataset the checkpoint was trained on.
        metrics: Metric names (``sharpkit plugins`` lists them).
        loss: ``loss(outputs, targets) -> scalar`` with mean reduction; default
            cross-entropy. Any differentiable callable works.
        samples: Use the first ``samples`` examples of the data (default: 2048 for
            a dataset given by name, all of it for data given directly).
        split: ``"train"`` or ``"test"``, for a dataset given by name.
        batch_size: Examples per forward pass (never changes the value).
        seed: Seed for every random choice; results are reproducible from it.
        tol: Relative tolerance for iterative methods.
        max_hvps: Hessian-vector-product budget per metric.
        bn_mode: ``"eval"`` (running statistics, default) or ``"train"`` (batch
            statistics: the Hessian of the loss as seen during training).
        dtype: ``"float32"`` or ``"float64"`` (default: the model's).
        device: ``"cpu"``, ``"cuda"``, ... (default: where the model is, or CPU).
        options: ``{metric name: {option: value}}``.
        model_name: Architecture of a bare ``state_dict`` checkpoint.
        model_options: Options for that architecture.
        data_root: Where dataset files are looked for first.
        download: Let a named dataset download its files if missing.
        progress: Progress callback.
        cache: Shared state between calls (e.g. warm starts when tracking during
            training); a fresh dict by default.
        store: A results store path: results are written there, and metrics already
            measured with the same checkpoint and settings are reused.
        force: Recompute even what the store already has.
        registry: The registry to use (default: the process-wide one).

    Returns:
        ``{metric name: MetricResult}`` with provenance in ``.attrs``.
    """
    import torch

    reg = registry or get_registry()
    names = [metrics] if isinstance(metrics, str) else list(metrics)
    if not names:
        msg = "no metric requested; pass at least one, e.g. metrics=['spectral']"
        raise ConfigError(msg)
    if len(set(names)) != len(names):
        msg = f"metric listed twice in {names!r}"
        raise ConfigError(msg)
    if bn_mode not in ("eval", "train"):
        msg = f"bn_mode must be 'eval' or 'train', got {bn_mode!r}"
        raise ConfigError(msg)
    if not (0 < tol < 1):
        msg = f"tol must be in (0, 1), got {tol}"
        raise ConfigError(msg)
    if max_hvps is not None and max_hvps < 1:
        msg = f"max_hvps must be positive, got {max_hvps}"
        raise ConfigError(msg)
    if samples is not None and samples < 1:
        msg = f"samples must be positive, got {samples}"
        raise ConfigError(msg)
    if batch_size < 1:
        msg = f"batch_size must be positive, got {batch_size}"
        raise ConfigError(msg)
    options = dict(options or {})
    unknown = [k for k in options if k not in names]
    if unknown:
        msg = f"options given for {unknown[0]!r}, which is not one of {names!r}"
        raise ConfigError(msg)
    specs = {n: reg.get("metric", n) for n in names}  # unknown names fail early
    parsed_opts = {n: reg.parse_options(specs[n], options.get(n, {})) for n in names}
    progress = progress or _no_progress
    dev = _resolve_device(device)
    want_dtype = _resolve_dtype(dtype)

    net, attrs, meta = _model_and_meta(
        model,
        data=data,
        model_name=model_name,
        model_options=model_options,
        data_root=data_root,
        reg=reg,
    )
    what = attrs["checkpoint_path"] or "the model"
    _check_finite(net, what)

    ds_name: str | None = None
    train_split: DataSplit | None = None
    train_subset: int | None = None
    if data is None:
        ds_name = meta.dataset
        if ds_name is None:
            msg = "no data given and the model does not name its dataset; pass --data"
            raise ConfigError(msg)
    elif isinstance(data, str):
        ds_name = data
    if ds_name is not None:
        if split not in ("train", "test"):
            msg = f"split must be 'train' or 'test', got {split!r}"
            raise ConfigError(msg)
        ds_opts = dict(meta.dataset_options) if ds_name == meta.dataset else {}
        # The training loss is the loss on what the model was trained on: the
        # same seeded subset when it was trained on one.
        train_subset = ds_opts.pop("subset", None) if split == "train" else None
        ds = load_dataset(
            ds_name,
            root=data_root,
            download=download,
            subset=train_subset,
            seed=meta.seed or 0,
            options=ds_opts,
            registry=reg,
        )
        full = ds.train if split == "train" else ds.test
        analysis = full.head(samples or DEFAULT_SAMPLES)
        train_split = ds.train
    elif isinstance(data, Dataset):
        analysis = (data.train if split == "train" else data.test).head(
            samples or DEFAULT_SAMPLES
        )
        train_split = data.train
        ds_name = data.name
        trained_on = meta.dataset_options.get("subset")
        if (
            split == "train"
            and trained_on is not None
            and data.name == meta.dataset
            and len(data.train) != int(trained_on)
        ):
            warnings.warn(
                f"the model was trained on a {trained_on}-example subset of "
                f"{data.name!r}, but the analysis set comes from the dataset "
                f"passed in ({len(data.train)} training examples); pass data=None "
                "to measure on the training subset",
                SharpkitWarning,
                stacklevel=2,
            )
    else:
        analysis = _as_split(data, samples)
    if len(analysis) == 0:
        msg = "the analysis data is empty"
        raise DataError(msg)

    if want_dtype is None:
        want_dtype = next(net.parameters()).dtype
    work = _prepare_model(net, dev, want_dtype)
    loss_fn = loss or torch.nn.functional.cross_entropy
    loss_name = getattr(loss_fn, "__qualname__", type(loss_fn).__name__)

    attrs.update(
        {
            "model": meta.model or model_name or type(net).__name__,
            "model_options": dict(meta.model_options),
            "dataset": ds_name,
            "split": split if ds_name is not None else None,
            "train_subset": train_subset,
            "samples": len(analysis),
            "lr": meta.lr,
            "batch_size": meta.batch_size,
            "momentum": meta.momentum,
            "train_seed": meta.seed,
            "epoch": meta.epoch,
            "seed": seed,
            "tol": tol,
            "max_hvps": max_hvps,
            "bn_mode": bn_mode,
            "dtype": str(want_dtype).removeprefix("torch."),
            "device": str(dev),
            "loss": loss_name,
            "final": dict(meta.final),
        }
    )
    settings = {
        k: attrs[k]
        for k in (
            "checkpoint_sha256",
            "dataset",
            "split",
            "train_subset",
            "samples",
            "seed",
            "tol",
            "max_hvps",
            "bn_mode",
            "dtype",
            "loss",
        )
    }
    rs = _open_store(store)
    results: dict[str, MetricResult] = {}
    reused: list[str] = []
    keys: dict[str, str] = {}
    for name in names:
        keys[name] = stable_key(
            {"metric": name, "options": parsed_opts[name], **settings}
        )
        if rs is not None and not force:
            found = rs.find_metric(keys[name])
            if found is not None:
                results[name] = found
                reused.append(name)

    todo = [n for n in names if n not in results]
    if todo:
        from sharpkit.curvature.operator import analysis_mode

        with analysis_mode(work, bn_mode, fuse_bn=False):
            ctx = AnalysisContext(
                model=work,
                loss_fn=loss_fn,
                data=DataSplit(
                    analysis.inputs.to(dev, want_dtype), analysis.targets.to(dev)
                ),
                batch_size=batch_size,
                device=dev,
                dtype=want_dtype,
                seed=seed,
                bn_mode=bn_mode,
                tol=tol,
                max_hvps=max_hvps,
                progress=progress,
                train_data=train_split,
                cache=cache if cache is not None else {},
            )
            _check_loss(ctx)
            for name in todo:
                results[name] = _run_metric(reg, name, parsed_opts[name], ctx)
    ordered = {n: results[n] for n in names}
    run_id = None
    if rs is not None and todo:
        new = {
            n: dataclasses.replace(
                ordered[n], attrs={**ordered[n].attrs, "key": keys[n]}
            )
            for n in todo
        }
        run_attrs = {**attrs, **provenance(), "kind": "measure"}
        run_id = rs.write_run(kind="measure", attrs=json_safe(run_attrs), metrics=new)
        ordered.update(new)
    return Measurement(ordered, attrs, run_id=run_id, reused=reused)


def _check_loss(ctx: AnalysisContext) -> None:
    import torch

    total, count = 0.0, 0
    with torch.no_grad():
        for x, y in ctx.data.batches(ctx.batch_size):
            out = ctx.model(x)
            value = ctx.loss_fn(out, y)
            if value.ndim != 0:
                msg = (
                    "the loss must return a scalar (mean reduction), got shape "
                    f"{tuple(value.shape)}"
                )
                raise ConfigError(msg)
            total += float(value) * len(x)
            count += len(x)
            if not math.isfinite(total):
                msg = (
                    "the loss is not finite on the analysis data; check the "
                    "checkpoint, the data normalisation and the loss function"
                )
                raise DataError(msg)
    ctx.cache.setdefault("loss", total / max(count, 1))


def _run_metric(
    reg: Registry, name: str, options: Mapping[str, Any], ctx: AnalysisContext
) -> MetricResult:
    metric = reg.create("metric", name, options)
    if not isinstance(metric, Metric):
        got = type(metric).__name__
        msg = f"metric {name!r} factory returned {got} without compute()"
        raise PluginContractError(msg)
    hvps_before = ctx._hessian.hvp_count if ctx._hessian is not None else 0
    estimate = getattr(metric, "estimated_hvps", None)
    n_est = 0
    if callable(estimate):
        try:
            n_est = int(estimate(ctx) or 0)
        except SharpkitError:
            raise
        except Exception as exc:
            raise _fail_plugin(reg, "metric", name, "estimating its cost", exc) from exc
    outer = ctx.progress
    if n_est:
        outer(0, float(n_est), description=f"{name} (≈{n_est} HVPs)")
        ctx.progress = _CostAnnouncer(ctx, outer, name, n_est)
    else:
        outer(0, None, description=name)
    start = time.perf_counter()
    try:
        result: object = metric.compute(ctx)
    except SharpkitError:
        raise
    except Exception as exc:
        raise _fail_plugin(reg, "metric", name, "computing", exc) from exc
    finally:
        ctx.progress = outer
    seconds = time.perf_counter() - start
    if not isinstance(result, MetricResult):
        msg = f"metric {name!r} returned {type(result).__name__}, expected MetricResult"
        raise PluginContractError(msg)
    if not math.isfinite(result.value):
        msg = f"metric {name!r} returned a non-finite value ({result.value})"
        raise NumericalError(msg)
    spec = reg.get("metric", name)
    if spec.stochastic and result.stderr is None:
        warnings.warn(
            f"metric {name!r} is stochastic but reported no standard error",
            stacklevel=2,
        )
    hvps_after = ctx._hessian.hvp_count if ctx._hessian is not None else 0
    return dataclasses.replace(
        result,
        metric=name,
        hvps=result.hvps if result.hvps is not None else hvps_after - hvps_before,
        seconds=result.seconds if result.seconds is not None else seconds,
    )


class _CostAnnouncer:
    """Progress wrapper that adds the time estimate once a product has been timed.

    The estimate is ``estimated_hvps × seconds per product``, shown in the task
    description as soon as the metric's first product is done; no product is
    spent on timing alone.
    """

    def __init__(
        self, ctx: AnalysisContext, outer: ProgressCallback, name: str, n_est: int
    ) -> None:
        self._ctx = ctx
        self._outer = outer
        self._name = name
        self._n_est = n_est
        self._announced = False

    def __call__(
        self,
        completed: float,
        total: float | None = None,
        /,
        *,
        description: str | None = None,
        **info: Any,
    ) -> None:
        op = self._ctx._hessian
        if not self._announced and description is None and op is not None:
            per = op.mean_hvp_seconds
            if per is not None:
                self._announced = True
                secs = self._n_est * per
                description = (
                    f"{self._name} (≈{self._n_est} HVPs, ≈{_fmt_seconds(secs)})"
                )
        self._outer(completed, total, description=description, **info)


def _fmt_seconds(secs: float) -> str:
    if secs < 60:
        return f"{secs:.1f} s"
    if secs < 3600:
        return f"{secs / 60:.1f} min"
    return f"{secs / 3600:.1f} h"


# --------------------------------------------------------------------------- train


def train(
    model: str,
    data: str,
    *,
    lr: float,
    batch_size: int,
    epochs: int,
    momentum: float = 0.0,
    weight_decay: float = 0.0,
    schedule: str = "constant",
    seed: int = 0,
    subset: int | None = None,
    augment: bool = False,
    out_dir: str | os.PathLike[str] | None = None,
    checkpoint_every: int = 0,
    resume: bool = False,
    track: Sequence[str] = (),
    track_every: int = 1,
    track_samples: int = DEFAULT_SAMPLES,
    trainer: str = "sgd",
    trainer_options: Mapping[str, Any] | None = None,
    model_options: Mapping[str, Any] | None = None,
    data_options: Mapping[str, Any] | None = None,
    data_root: str | os.PathLike[str] | None = None,
    download: bool = False,
    device: str | None = "cpu",
    progress: ProgressCallback | None = None,
    store: StoreLike = None,
    registry: Registry | None = None,
) -> TrainResult:
    """Train a registered model on a registered dataset with SGD.

    Args:
        model: Registered model name (e.g. ``"mlp-bn"``).
        data: Registered dataset name (e.g. ``"fashion-mnist"``).
        lr: Learning rate η.
        batch_size: Batch size S.
        epochs: Number of epochs.
        momentum: SGD momentum (0: plain SGD, the paper's setting).
        weight_decay: L2 penalty.
        schedule: ``"constant"``, ``"step:60,100,140,180:0.1"``,
            ``"every:25:0.5"`` or a preset name (``"resnet"``, ``"vgg"``).
        seed: Seed for initialisation, order and augmentation.
        subset: Train on a stratified, seeded subset of this many examples.
        augment: Use the dataset's training augmentation.
        out_dir: Directory for checkpoints (``None``: keep none).
        checkpoint_every: Also keep a checkpoint every this many epochs.
        resume: Continue an interrupted run from ``out_dir``.
        track: Metrics to measure during training (e.g. ``["spectral"]``).
        track_every: Measure them every this many epochs.
        track_samples: Analysis-set size for tracking.
        trainer: Registered trainer name.
        trainer_options: Trainer options.
        model_options: Model options.
        data_options: Dataset options.
        data_root: Where dataset files are looked for first.
        download: Let the dataset download its files if missing.
        device: Where to train.
        progress: Progress callback.
        store: A results store path to record the curves in.
        registry: The registry to use (default: the process-wide one).

    Returns:
        Curves, final metrics and the checkpoint path.
    """
    reg = registry or get_registry()
    for label, value in (("lr", lr), ("batch_size", batch_size), ("epochs", epochs)):
        if not value > 0:
            msg = f"{label} must be positive, got {value}"
            raise ConfigError(msg)
    for t in track:
        reg.get("metric", t)
    ds = load_dataset(
        data,
        root=data_root,
        download=download,
        subset=subset,
        seed=seed,
        options=data_options,
        registry=reg,
    )
    net = build_model(
        model,
        input_shape=ds.input_shape,
        num_classes=ds.num_classes,
        options=model_options,
        seed=seed,
        registry=reg,
    )
    spec_m = reg.get("model", model)
    ds_opts: dict[str, Any] = dict(
        reg.parse_options(reg.get("dataset", data), data_options or {})
    )
    if subset is not None:
        ds_opts["subset"] = subset
    config = TrainConfig(
        lr=lr,
        batch_size=batch_size,
        epochs=epochs,
        momentum=momentum,
        weight_decay=weight_decay,
        schedule=schedule,
        seed=seed,
        augment=augment,
        out_dir=Path(out_dir) if out_dir is not None else None,
        checkpoint_every=checkpoint_every,
        resume=resume,
        track=tuple(track),
        track_every=track_every,
        track_samples=track_samples,
        device=str(_resolve_device(device)),
        model_name=model,
        model_options=dict(reg.parse_options(spec_m, model_options or {})),
        dataset_name=data,
        dataset_options=ds_opts,
    )
    algo = reg.create("trainer", trainer, trainer_options)
    if not isinstance(algo, Trainer):
        msg = (
            f"trainer {trainer!r} factory returned {type(algo).__name__} without fit()"
        )
        raise PluginContractError(msg)
    try:
        result = algo.fit(net, ds, config, progress=progress or _no_progress)
    except SharpkitError:
        raise
    except Exception as exc:
        raise _fail_plugin(reg, "trainer", trainer, "training", exc) from exc
    rs = _open_store(store)
    if rs is not None:
        attrs = {
            "kind": "train",
            "model": model,
            "model_options": config.model_options,
            "dataset": data,
            "dataset_options": ds_opts,
            "lr": lr,
            "batch_size": batch_size,
            "momentum": momentum,
            "weight_decay": weight_decay,
            "schedule": schedule,
            "seed": seed,
            "epochs": epochs,
            "checkpoint_path": str(result.checkpoint.resolve())
            if result.checkpoint
            else None,
            "checkpoint_sha256": _file_sha(result.checkpoint),
            "final": dict(result.final),
            **provenance(),
        }
        run_id = rs.write_run(
            kind="train", attrs=json_safe(attrs), training=dict(result.curves)
        )
        result = dataclasses.replace(result, attrs={**result.attrs, "run_id": run_id})
    return result


def _file_sha(path: Path | None) -> str | None:
    from sharpkit.checkpoint import file_sha256

    return file_sha256(path) if path is not None and path.is_file() else None


# --------------------------------------------------------------------------- probes


def probe(
    name: str,
    models: Sequence[ModelLike],
    data: str | Dataset | None = None,
    *,
    options: Mapping[str, Any] | None = None,
    loss: Any = None,
    batch_size: int = 1024,
    seed: int = 0,
    device: str | torch.device | None = None,
    model_name: str | None = None,
    model_options: Mapping[str, Any] | None = None,
    data_root: str | os.PathLike[str] | None = None,
    download: bool = False,
    progress: ProgressCallback | None = None,
    store: StoreLike = None,
    force: bool = False,
    registry: Registry | None = None,
) -> ProbeResult:
    """Run a loss-landscape probe (``interpolate``, ``direction``, ``plane``, ...).

    Args:
        name: Registered probe name.
        models: One or two models or checkpoint paths (as the probe needs).
        data: Dataset name or :class:`~sharpkit.Dataset` (default: the one the
            first checkpoint names).
        options: Probe options (``sharpkit plugins`` lists them).
        loss: ``loss(outputs, targets) -> scalar`` (default cross-entropy).
        batch_size: Examples per forward pass.
        seed: Seed for random directions and BN re-estimation order.
        device: Where to compute.
        model_name: Architecture of bare ``state_dict`` checkpoints.
        model_options: Options for that architecture.
        data_root: Where dataset files are looked for first.
        download: Let the dataset download its files if missing.
        progress: Progress callback.
        store: A results store path to record the result in.
        force: Recompute even if the store has this probe with these settings.
        registry: The registry to use (default: the process-wide one).

    Returns:
        The probe's curves or grid, with width readouts in ``summary``.
    """
    import torch

    reg = registry or get_registry()
    spec = reg.get("probe", name)
    parsed = reg.parse_options(spec, options or {})
    if len(models) != spec.n_models:
        msg = f"probe {name!r} takes {spec.n_models} model(s), got {len(models)}"
        raise ConfigError(msg)
    dev = _resolve_device(device)
    loaded: list[torch.nn.Module] = []
    metas: list[CheckpointMeta] = []
    shas: list[str] = []
    paths: list[str | None] = []
    ds: Dataset | None = data if isinstance(data, Dataset) else None
    for m in models:
        if isinstance(m, torch.nn.Module):
            loaded.append(m)
            metas.append(CheckpointMeta())
            shas.append(_state_sha256(m))
            paths.append(None)
            continue
        net, ckpt = load_model(
            m,
            model=model_name,
            model_options=model_options,
            input_shape=ds.input_shape if ds is not None else None,
            num_classes=ds.num_classes if ds is not None else None,
            data=data if isinstance(data, str) else None,
            data_root=data_root,
            registry=reg,
        )
        loaded.append(net)
        metas.append(ckpt.meta)
        shas.append(ckpt.sha256)
        paths.append(str(Path(ckpt.path).resolve()))
    archs = {type(m).__name__ for m in loaded}
    shapes = [{k: tuple(v.shape) for k, v in m.state_dict().items()} for m in loaded]
    if len(archs) > 1 or any(s != shapes[0] for s in shapes[1:]):
        msg = (
            "the models have different architectures; a probe between them needs "
            "the same model and options for both"
        )
        raise ConfigError(msg)
    for m, what in zip(loaded, paths, strict=True):
        _check_finite(m, what or "a model")
    if ds is None:
        ds_name = data if isinstance(data, str) else metas[0].dataset
        if ds_name is None:
            msg = "no data given and the checkpoints do not name a dataset; pass --data"
            raise ConfigError(msg)
        ds_opts = dict(metas[0].dataset_options) if ds_name == metas[0].dataset else {}
        # "Training data" is what the first model was trained on: the same seeded
        # subset when it was trained on one (the paper's train-loss curves).
        train_subset = ds_opts.pop("subset", None)
        ds = load_dataset(
            ds_name,
            root=data_root,
            download=download,
            subset=train_subset,
            seed=metas[0].seed or 0,
            options=ds_opts,
            registry=reg,
        )
    settings = {
        "train_subset": [len(ds.train), metas[0].seed],
        "probe": name,
        "options": parsed,
        "checkpoints": shas,
        "dataset": ds.name,
        "seed": seed,
    }
    key = stable_key(settings)
    rs = _open_store(store)
    if rs is not None and not force:
        found = rs.find_probe(key)
        if found is not None:
            return found
    work = [copy.deepcopy(m).to(dev).eval() for m in loaded]
    ctx = ProbeContext(
        models=work,
        loss_fn=loss or torch.nn.functional.cross_entropy,
        train_data=ds.train,
        test_data=ds.test,
        batch_size=batch_size,
        device=dev,
        seed=seed,
        progress=progress or _no_progress,
    )
    instance = reg.create("probe", name, parsed)
    if not isinstance(instance, Probe):
        msg = f"probe {name!r} factory returned {type(instance).__name__} without run()"
        raise PluginContractError(msg)
    start = time.perf_counter()
    try:
        outcome: object = instance.run(ctx)
    except SharpkitError:
        raise
    except Exception as exc:
        raise _fail_plugin(reg, "probe", name, "running", exc) from exc
    if not isinstance(outcome, ProbeResult):
        msg = f"probe {name!r} returned {type(outcome).__name__}, expected ProbeResult"
        raise PluginContractError(msg)
    result = dataclasses.replace(
        outcome,
        probe=name,
        seconds=outcome.seconds
        if outcome.seconds is not None
        else time.perf_counter() - start,
        attrs={**outcome.attrs, "key": key},
    )
    if rs is not None:
        attrs = {
            "kind": "probe",
            "probe": name,
            "checkpoint_sha256": shas,
            "checkpoint_path": paths,
            "model": metas[0].model,
            "dataset": ds.name,
            "lr": [m.lr for m in metas],
            "batch_size": [m.batch_size for m in metas],
            "train_seed": [m.seed for m in metas],
            "seed": seed,
            **provenance(),
        }
        run_id = rs.write_run(
            kind="probe", attrs=json_safe(attrs), probes={name: result}
        )
        result = dataclasses.replace(result, attrs={**result.attrs, "run_id": run_id})
    return result


def interpolate(
    a: ModelLike,
    b: ModelLike,
    data: str | Dataset | None = None,
    *,
    alpha: str | Sequence[float] = "-1:2:31",
    bn_reestimate: bool = True,
    **kwargs: Any,
) -> ProbeResult:
    """Loss and accuracy along ``(1-α)·θa + α·θb`` (Goodfellow et al., 2015).

    Batch-norm running statistics are re-estimated on training data at every α
    unless ``bn_reestimate=False``. Other keyword arguments go to :func:`probe`.

    Args:
        a: The model at α = 0 (module or checkpoint path).
        b: The model at α = 1.
        data: Dataset name or :class:`~sharpkit.Dataset`.
        alpha: ``"start:stop:num"`` or explicit values.
        bn_reestimate: Re-estimate BN statistics at every α.
        **kwargs: Passed to :func:`probe`.
    """
    if not isinstance(alpha, str):
        alpha = ",".join(repr(float(v)) for v in alpha)
    opts = {"alpha": alpha, "bn_reestimate": bn_reestimate}
    opts.update(kwargs.pop("options", None) or {})
    return probe("interpolate", [a, b], data, options=opts, **kwargs)


def open_results(
    path: str | os.PathLike[str],
    *,
    filter: Mapping[str, Any] | Sequence[str] | None = None,
    kind: str | None = None,
    as_frame: bool | None = None,
) -> Any:
    """Open a results store as a tidy table: one row per run × metric.

    Columns include ``run_id``, ``model``, ``dataset``, ``lr`` (η),
    ``batch_size`` (S), ``lr_over_batch`` (η/S), ``seed``, ``metric``, ``value``,
    ``stderr`` and ``bound``; see the store documentation for the full list.

    Args:
        path: The store (a ``.zarr`` directory).
        filter: Keep rows whose columns equal these values
            (``{"metric": "spectral"}``), or conditions such as
            ``["batch_size>=128"]``.
        kind: Only rows of this kind of run (``"measure"``, ``"train"``,
            ``"probe"``).
        as_frame: Return a pandas DataFrame (default: when pandas is installed)
            or a list of dicts.
    """
    from sharpkit.store import open_results as _open

    return _open(path, filter=filter, kind=kind, as_frame=as_frame)
