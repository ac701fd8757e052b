"""Data sharpkit did not register: tensor files, image folders, the user's code.

``data`` (``--data``) may name, besides a registered dataset:

* a tensor file, ``.pt``/``.pth`` (read with ``weights_only=True``), ``.npz``
  (read without pickles) or ``.safetensors``, with the inputs and targets under
  the keys of :data:`INPUT_KEYS` and :data:`TARGET_KEYS` (``--data-option
  inputs=KEY targets=KEY`` for others), and optionally a test split under
  :data:`TEST_KEYS`; inputs may be a dict of tensors (for ``hf:`` models);
* an image folder, ``DIR/<class>/<image>`` as torchvision's ``ImageFolder``
  reads it (or ``DIR/train/<class>/...`` and ``DIR/test/<class>/...``);
* ``package.module:name`` or ``path/to/file.py:name``: a function or class
  (called with the ``--data-option`` values) or an object that is a torch
  ``Dataset``, a ``DataLoader``, an ``(inputs, targets)`` pair, a
  :class:`~sharpkit.DataSplit` or a :class:`~sharpkit.Dataset`.

The input shape and the number of classes come from the data.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sharpkit._data import DataSplit
from sharpkit._fs import available_memory
from sharpkit._hints import option_hint
from sharpkit.api.imagefolder import IMAGE_OPTIONS, read_folder
from sharpkit.api.usercode import (
    call_with,
    is_code_spec,
    load_object,
    source_sha256,
)
from sharpkit.checkpoint import check_archive
from sharpkit.errors import ConfigError, DataError, first_line
from sharpkit.interfaces import Dataset

if TYPE_CHECKING:
    import torch

__all__ = [
    "IMAGE_OPTIONS",
    "INPUT_KEYS",
    "TARGET_KEYS",
    "TENSOR_SUFFIXES",
    "TEST_KEYS",
    "SourceDataset",
    "as_split",
    "infer_num_classes",
    "is_data_source",
    "load_data",
    "pack_inputs",
]

TENSOR_SUFFIXES = (".pt", ".pth", ".npz", ".safetensors")
_IGNORED = -100  # torch's default ignore_index
INPUT_KEYS = ("inputs", "x", "x_train")
# How far a compressed .npz may inflate: real arrays (images, token ids, floats)
# compress by well under 100x; a zip bomb by ~1000x.
_NPZ_INFLATION = 200.0
"""Keys tried, in order, for the inputs (the training split, or the only one)."""
TARGET_KEYS = ("targets", "y", "labels", "y_train")
"""Keys tried, in order, for the targets."""
TEST_KEYS = (("inputs_test", "targets_test"), ("x_test", "y_test"))
"""Key pairs tried, in order, for an optional test split."""
TENSOR_OPTIONS = ("inputs", "targets", "num_classes")
DATA_FLAG = ("data", "--data")
OPTIONS_FLAG = ("data_options", "--data-option")


@dataclass(eq=False)
class SourceDataset:
    """Data from a file, a folder or the user's code (a :class:`~sharpkit.Dataset`).

    Attributes:
        name: The source as given (path or code spec).
        input_shape: Shape of one input (for packed named inputs, ``(k, ...)``).
        num_classes: Number of classes (or outputs, for value targets).
        train: The examples (all of them when the source has one split).
        test: The test split (empty when the source has none).
        has_test: Whether the source holds a test split.
        code_sha256: The sha256 of the user's code that made the data, if any.
        totals: How many examples the source's train and test splits hold
            when only the first of each were read (see ``limit`` in
            :func:`load_data`; a count is ``None`` where it is not known, as
            for a stream); ``None`` when everything was read.
    """

    name: str
    input_shape: tuple[int, ...]
    num_classes: int
    train: DataSplit
    test: DataSplit
    has_test: bool = False
    code_sha256: str | None = None
    totals: tuple[int | None, int | None] | None = None

    def population(self, split: str) -> int | None:
        """How many examples ``split`` (``"train"``/``"test"``) holds, read or not."""
        held = self.train if split == "train" else self.test
        if self.totals is None:
            return len(held)
        return self.totals[0 if split == "train" else 1]


def is_data_source(data: object, registered: Sequence[str] = ()) -> bool:
    """Whether ``data`` names a file, folder or code rather than a registered dataset.

    A registered name wins; then a code spec, an existing path, or a name with a
    tensor-file suffix (so that a missing file is reported as such).
    """
    if not isinstance(data, str | os.PathLike):
        return False
    text = os.fspath(data)
    if text in registered:
        return False
    return (
        is_code_spec(text)
        or os.path.exists(text)
        or text.endswith(TENSOR_SUFFIXES)
        or os.sep in text
    )


def load_data(
    source: str | os.PathLike[str],
    *,
    options: Mapping[str, Any] | None = None,
    seed: int = 0,
    limit: int | None = None,
) -> SourceDataset:
    """Load the data a path or a code spec names.

    Args:
        source: A tensor file, an image folder or ``package.module:name``.
        options: ``inputs``/``targets`` keys of a tensor file; ``size``,
            ``mean``, ``std``, ``channels`` of an image folder; ``num_classes``
            for either (default: from the targets); the keyword arguments of a
            function or class named by a code spec.
        seed: Seed of the image folder's fixed example order.
        limit: Read no more than the first ``limit`` examples of each split
            of an image folder or of data from code (a stream, or a torch
            ``Dataset`` of any length); ``None``: all of them. A tensor file
            is read whole (its size was checked before).

    Raises:
        DataError: The file or folder is missing or holds no usable data.
        ConfigError: An unknown option, or code that gives no data.
    """
    text = os.fspath(source)
    opts = dict(options or {})
    if is_code_spec(text) and not os.path.exists(text):
        return _from_code(text, opts, limit)
    path = Path(text).expanduser()
    if path.is_dir():
        _check_options(opts, IMAGE_OPTIONS, "an image folder")
        return _image_folder(path, opts, seed, limit)
    if not path.is_file():
        msg = (
            f"data {text!r} not found; give a registered dataset (sharpkit plugins "
            "lists them), a tensor file (.pt, .npz, .safetensors), an image folder, "
            "or package.module:name"
        )
        raise DataError(msg)
    if path.suffix not in TENSOR_SUFFIXES:
        msg = (
            f"cannot read {text!r}: data files are {', '.join(TENSOR_SUFFIXES)} "
            "or an image folder"
        )
        raise DataError(msg)
    _check_options(opts, TENSOR_OPTIONS, "a tensor file")
    return _tensor_file(path, opts)


def _check_options(opts: Mapping[str, Any], known: Sequence[str], what: str) -> None:
    for key in opts:
        if key not in known:
            msg = (
                f"{what} takes no data option {key!r}; its options: {', '.join(known)}"
            )
            raise ConfigError(msg)


# ---------------------------------------------------------------------- splits


def infer_num_classes(targets: torch.Tensor) -> int:
    """The number of classes (or outputs) the targets imply.

    Integer class indices ``(N,)``: the largest + 1 (``-100``, which
    cross-entropy ignores, left out). Rows ``(N, k)`` (one-hot,
    multi-label, multi-output): ``k``. Float values ``(N,)``: 1.

    Examples:
        >>> import torch
        >>> infer_num_classes(torch.tensor([0, 3, 1]))
        4
        >>> infer_num_classes(torch.zeros(5, 2))
        2
    """
    if targets.ndim >= 2:
        return int(targets.shape[1])
    if targets.is_floating_point() or targets.numel() == 0:
        return 1
    counted = targets[targets != _IGNORED]  # cross-entropy's ignore_index
    return int(counted.max().item()) + 1 if counted.numel() else 1


def pack_inputs(inputs: Mapping[str, Any]) -> tuple[torch.Tensor, tuple[str, ...]]:
    """Stack named inputs of one shape and dtype along dimension 1.

    A Hugging Face model takes ``input_ids``, ``attention_mask``, ...; sharpkit
    batches one tensor, so they travel packed (``packed[:, i]`` is the i-th name)
    and :class:`~sharpkit.api.wrappers.HFClassifier` unpacks them.

    Raises:
        DataError: The inputs differ in shape or dtype, or are not tensors.
    """
    import torch

    names = tuple(str(k) for k in inputs)
    tensors = [_tensor(v, f"input {k!r}") for k, v in inputs.items()]
    if not tensors:
        msg = "the inputs dict is empty; give at least one named input tensor"
        raise DataError(msg)
    first = tensors[0]
    for name, t in zip(names, tensors, strict=True):
        if t.shape != first.shape or t.dtype != first.dtype:
            msg = (
                f"named inputs must share one shape and dtype, but {names[0]!r} is "
                f"{tuple(first.shape)} {first.dtype} and {name!r} is "
                f"{tuple(t.shape)} {t.dtype}"
            )
            raise DataError(msg)
    if len(tensors) == 1:
        return tensors[0], names
    return torch.stack(tensors, dim=1), names


def _tensor(value: Any, what: str) -> torch.Tensor:
    import numpy as np
    import torch

    if isinstance(value, np.ndarray):
        if value.dtype == object:
            msg = f"{what} is an array of Python objects; store numbers"
            raise DataError(msg)
        return torch.from_numpy(np.ascontiguousarray(value))
    if isinstance(value, torch.Tensor):
        return value
    try:
        return torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError):
        msg = f"{what} is a {type(value).__name__}, not a tensor"
        raise DataError(msg) from None


def make_split(inputs: Any, targets: Any) -> DataSplit:
    """A :class:`DataSplit` of ``inputs`` (a tensor or a dict of tensors) and targets.

    Integer targets become int64 (what cross-entropy takes); float targets and
    the targets' shape are kept.
    """
    import torch

    names: tuple[str, ...] | None = None
    if isinstance(inputs, Mapping):
        x, names = pack_inputs(inputs)
    else:
        x = _tensor(inputs, "the inputs")
    y = _tensor(targets, "the targets")
    if not y.is_floating_point() and y.dtype is not torch.bool:
        y = y.long()
    if x.ndim == 0 or y.ndim == 0:
        msg = "inputs and targets must have one row per example"
        raise DataError(msg)
    return DataSplit(x, y, input_names=names)


def as_split(data: Any, samples: int | None) -> DataSplit:
    """Turn tensors, a torch Dataset or a DataLoader into an in-memory split.

    Targets keep their dtype and shape (integer ones become int64): float
    targets for a regression, ``(N, k)`` rows for multi-label losses.
    Inputs may be a dict of named tensors (see :func:`pack_inputs`).
    """
    import torch

    if isinstance(data, DataSplit):
        return data.head(samples) if samples is not None else data
    if isinstance(data, tuple | list) and len(data) == 2 and _is_batch_part(data[0]):
        split = make_split(data[0], data[1])
        return split.head(samples) if samples is not None else split
    xs: list[Any] = []
    ys: list[torch.Tensor] = []
    count = 0
    budget = _read_budget()
    if isinstance(data, torch.utils.data.DataLoader):
        held = 0
        for batch in data:
            x, y = batch[0], batch[1]
            xs.append(x)
            ys.append(torch.as_tensor(y))
            count += len(ys[-1])
            held += _nbytes(xs[-1]) + _nbytes(ys[-1])
            if samples is not None and count >= samples:
                break
            if held > budget:
                _too_big(type(data).__name__, f"more than {count} examples", budget)
    elif isinstance(data, torch.utils.data.Dataset) and hasattr(data, "__len__"):
        n = len(data)
        n = n if samples is None else min(samples, n)
        for i in range(n):
            item = data[i]
            xs.append(_one(item[0]))
            ys.append(torch.as_tensor(item[1]).unsqueeze(0))
            if i == 0 and n * (_nbytes(xs[0]) + _nbytes(ys[0])) > budget:
                _too_big(type(data).__name__, f"{n} examples", budget)
    else:
        msg = (
            f"cannot use {type(data).__name__} as data; pass a dataset name, a "
            "data file, a DataSplit, an (inputs, targets) pair, a torch Dataset or "
            "a DataLoader"
        )
        raise ConfigError(msg)
    if not xs:
        msg = "the data is empty"
        raise DataError(msg)
    inputs: Any = (
        {k: torch.cat([torch.as_tensor(x[k]) for x in xs]) for k in xs[0]}
        if isinstance(xs[0], Mapping)
        else torch.cat([torch.as_tensor(x) for x in xs])
    )
    split = make_split(inputs, torch.cat(ys))
    return split.head(samples) if samples is not None else split


def _read_budget() -> int:
    """What a data source may take in memory: half the memory free (else 8 GiB)."""
    free = available_memory()
    return free // 2 if free is not None else 8 << 30


def _nbytes(value: Any) -> int:
    import torch

    if isinstance(value, Mapping):
        return sum(_nbytes(v) for v in value.values())
    t = torch.as_tensor(value)
    return int(t.numel() * t.element_size())


def _too_big(kind: str, what: str, budget: int) -> None:
    msg = (
        f"the data ({kind}) holds {what}, more than the {budget / 2**30:.1f} GiB "
        "it may take in memory (half the memory free); it was refused before "
        "reading it all: give a source of fewer examples (e.g. an argument of "
        f"your data function, {option_hint(OPTIONS_FLAG, 'n')})"
    )
    raise DataError(msg)


def _is_batch_part(value: Any) -> bool:
    import numpy as np
    import torch

    if isinstance(value, Mapping):
        return all(isinstance(v, torch.Tensor | np.ndarray) for v in value.values())
    return isinstance(value, torch.Tensor | np.ndarray)


def _one(x: Any) -> Any:
    """One example with a leading batch dimension of 1."""
    import torch

    if isinstance(x, Mapping):
        return {k: torch.as_tensor(v).unsqueeze(0) for k, v in x.items()}
    return torch.as_tensor(x).unsqueeze(0)


def _dataset(
    name: str,
    train: DataSplit,
    test: DataSplit | None,
    num_classes: Any = None,
    code_sha256: str | None = None,
) -> SourceDataset:
    if len(train) == 0:
        msg = f"data {name!r} holds no examples"
        raise DataError(msg)
    y = train.targets
    if y.ndim == 1 and not y.is_floating_point() and bool((y == _IGNORED).all()):
        msg = (
            f"every target of {name!r} is {_IGNORED}, which cross-entropy ignores "
            "(ignore_index): no example would count; check the targets"
        )
        raise DataError(msg)
    if num_classes is None:
        classes = infer_num_classes(train.targets)
        if test is not None and len(test) and not test.targets.is_floating_point():
            classes = max(classes, infer_num_classes(test.targets))
    else:
        try:
            classes = int(str(num_classes))
        except ValueError:
            classes = 0
        if classes < 1:
            msg = (
                f"data option num_classes={num_classes!r} must be a whole number "
                f">= 1; pass {option_hint(OPTIONS_FLAG, 'num_classes')}"
            )
            raise ConfigError(msg)
    empty = DataSplit(
        train.inputs[:0], train.targets[:0], input_names=train.input_names
    )
    return SourceDataset(
        name=name,
        input_shape=tuple(int(d) for d in train.inputs.shape[1:]),
        num_classes=classes,
        train=train,
        test=test if test is not None else empty,
        has_test=test is not None,
        code_sha256=code_sha256,
    )


# ---------------------------------------------------------------- tensor files


def _read_tensor_file(path: Path) -> Mapping[str, Any]:
    import pickle

    # Zip archives are looked at before anything is inflated: np.savez_compressed
    # gains a few x on real data, torch.save stores entries as they are.
    compressed = path.suffix == ".npz"
    check_archive(
        path, what="data file", max_inflation=_NPZ_INFLATION if compressed else 2.0
    )
    try:
        if path.suffix == ".npz":
            import numpy as np

            with np.load(path, allow_pickle=False) as npz:
                return {k: npz[k] for k in npz.files}
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        import torch

        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        msg = (
            f"data file {str(path)!r} holds a pickle of more than tensors; it was "
            "not loaded. Save a dict of tensors: torch.save({'inputs': x, "
            "'targets': y}, path)"
        )
        raise DataError(msg) from exc
    except Exception as exc:
        first = first_line(exc)
        msg = f"cannot read data file {str(path)!r} ({type(exc).__name__}: {first})"
        raise DataError(msg) from exc
    if isinstance(obj, tuple | list) and len(obj) == 2:
        return {"inputs": obj[0], "targets": obj[1]}
    if not isinstance(obj, Mapping):
        msg = (
            f"data file {str(path)!r} holds a {type(obj).__name__}; save a dict "
            "of tensors such as {'inputs': x, 'targets': y}"
        )
        raise DataError(msg)
    return obj


def _pick(
    found: Mapping[str, Any], keys: Sequence[str], override: Any
) -> tuple[str, Any] | None:
    """The first of ``keys`` present (a flat ``key.name`` group counts as a dict)."""
    for key in [str(override)] if override is not None else keys:
        if key in found:
            return key, found[key]
        group = {
            k[len(key) + 1 :]: v for k, v in found.items() if k.startswith(key + ".")
        }
        if group:
            return key, group
    return None


def _tensor_file(path: Path, opts: Mapping[str, Any]) -> SourceDataset:
    found = _read_tensor_file(path)
    x = _pick(found, INPUT_KEYS, opts.get("inputs"))
    y = _pick(found, TARGET_KEYS, opts.get("targets"))
    if x is None or y is None:
        missing = "inputs" if x is None else "targets"
        keys = INPUT_KEYS if x is None else TARGET_KEYS
        listing = ", ".join(sorted(found)[:8]) or "none"
        msg = (
            f"data file {str(path)!r} has no {missing} under {' / '.join(keys)} "
            f"(its keys: {listing}); rename them or pass "
            f"{option_hint(OPTIONS_FLAG, missing)}"
        )
        raise DataError(msg)
    train = make_split(x[1], y[1])
    test = None
    for kx, ky in TEST_KEYS:
        tx, ty = _pick(found, (kx,), None), _pick(found, (ky,), None)
        if tx is not None and ty is not None:
            test = make_split(tx[1], ty[1])
            break
    return _dataset(str(path), train, test, opts.get("num_classes"))


# ------------------------------------------------------------------------ code


def _from_code(
    spec: str, opts: Mapping[str, Any], limit: int | None = None
) -> SourceDataset:
    import torch

    obj, _ = load_object(spec, flag=DATA_FLAG)
    made: Any = obj
    callable_source = isinstance(obj, type) or (
        callable(obj)
        and not isinstance(obj, torch.utils.data.Dataset | torch.utils.data.DataLoader)
    )
    if callable_source:
        made = call_with(obj, opts, {}, what=f"data {spec}", flag=OPTIONS_FLAG)
    elif opts:
        msg = f"{spec} is a {type(obj).__name__}, not a function; it takes no options"
        raise ConfigError(msg)
    sha = source_sha256(obj)
    if isinstance(made, Dataset) and not isinstance(made, SourceDataset):
        return SourceDataset(
            name=spec,
            input_shape=tuple(made.input_shape),
            num_classes=int(made.num_classes),
            train=made.train,
            test=made.test,
            has_test=len(made.test) > 0,
            code_sha256=sha,
        )
    if isinstance(made, SourceDataset):
        return made
    try:
        split = as_split(made, limit)
    except ConfigError:
        msg = (
            f"{spec} gave a {type(made).__name__}; return a torch Dataset, a "
            "DataLoader, an (inputs, targets) pair or a sharpkit.DataSplit"
        )
        raise ConfigError(msg) from None
    ds = _dataset(spec, split, None, code_sha256=sha)
    if limit is not None and len(split) >= limit:
        total = _count(made)
        if total is None or total > len(split):
            ds.totals = (total, 0)
    return ds


def _count(data: Any) -> int | None:
    """How many examples ``data`` says it holds (``None``: a stream does not say)."""
    import torch

    if isinstance(data, tuple | list) and len(data) == 2:
        return len(data[1])  # (inputs, targets), as as_split took it
    if isinstance(data, torch.utils.data.DataLoader):
        return None  # its len() counts batches, or raises for a stream
    try:
        return len(data)
    except TypeError:
        return None


def _image_folder(
    folder: Path, opts: Mapping[str, Any], seed: int, limit: int | None
) -> SourceDataset:
    read = read_folder(folder, opts, seed, limit)
    num_classes = opts.get("num_classes") or len(read.classes)
    ds = _dataset(str(folder), read.train, read.test, num_classes)
    held = (len(read.train), len(read.test) if read.test is not None else 0)
    if held != read.totals:
        ds.totals = read.totals
    return ds
