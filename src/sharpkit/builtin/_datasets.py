"""Built-in dataset plugin: Fashion-MNIST, CIFAR-10 and a synthetic set for tests.

Both real datasets are held in memory as normalised ``float32`` tensors (60,000 ×
1×28×28 is 188 MB; 50,000 × 3×32×32 is 614 MB), so training and analysis index
tensors directly instead of going through a ``DataLoader``.

* ``fashion-mnist``: Xiao, Rasul and Vollgraf (2017), "Fashion-MNIST: a Novel
  Image Dataset for Benchmarking Machine Learning Algorithms", arXiv:1708.07747.
  Inputs ``(1, 28, 28)``, normalised with the training set's pixel mean 0.2860 and
  standard deviation 0.3530.
* ``cifar10``: Krizhevsky (2009), "Learning Multiple Layers of Features from Tiny
  Images", tech. report, University of Toronto. Inputs ``(3, 32, 32)``,
  normalised per channel with the training set's mean (0.4914, 0.4822, 0.4465)
  and standard deviation (0.2470, 0.2435, 0.2616). The training split carries the
  standard augmentation of He et al. (2016), "Deep Residual Learning for Image
  Recognition", CVPR: a random 32×32 crop of the image zero-padded by 4 pixels,
  then a horizontal flip with probability 1/2. It runs only when training asks
  for it (``sharpkit train --augment``).
* ``synthetic``: Gaussian classes with seeded means, tiny, for tests and examples.

Where files are looked for, in order: ``root`` (``--data-root``), ``$SHARPKIT_DATA``,
the Debian package's ``/usr/share/datasets/fashion-mnist`` (Fashion-MNIST only),
then the download cache (``$XDG_CACHE_HOME/sharpkit/datasets``, else
``~/.cache/sharpkit/datasets``). In each of those folders, and in its
``fashion-mnist/`` or ``cifar10/`` sub-folder, these layouts are recognised:

* Fashion-MNIST: the IDX files ``{train,t10k}-{images-idx3,labels-idx1}-ubyte``
  (with or without ``.gz``), also under torchvision's ``FashionMNIST/raw/``; or
  ``fashion-mnist_train.npz`` / ``fashion-mnist_test.npz`` holding ``x_train``,
  ``y_train`` / ``x_test``, ``y_test``.
* CIFAR-10: ``cifar10_train.npz`` / ``cifar10_test.npz`` (``x_*`` uint8
  ``(N, 32, 32, 3)``, ``y_*``); or torchvision's ``cifar-10-batches-py/``. The
  batch files there are pickles; they are read with an unpickler that accepts
  only numpy arrays, bytes, strings, numbers, lists and dicts, and refuses any
  other global, so a tampered file cannot run code.

Decoding is fast enough that nothing is cached: on two CPU cores Fashion-MNIST
loads in about 0.5 s and CIFAR-10 (compressed npz) in about 2 s.
"""

from __future__ import annotations

import math
import os
import pickle
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sharpkit import (
    ConfigError,
    DataError,
    DatasetSpec,
    DataSplit,
    Option,
    arg_hint,
    seeded_generator,
)

__all__ = [
    "CIFAR10_CLASSES",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "DEBIAN_FASHION_MNIST",
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_MEAN",
    "FASHION_MNIST_STD",
    "InMemoryDataset",
    "RandomCropFlip",
    "cache_dir",
    "load_cifar10",
    "load_fashion_mnist",
    "load_synthetic",
    "sharpkit_register_datasets",
    "stratified_subset",
]

FASHION_MNIST_MEAN = 0.2860
FASHION_MNIST_STD = 0.3530
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
"""Where the Debian package ``dataset-fashion-mnist`` installs the IDX files."""
ENV_DATA = "SHARPKIT_DATA"


@dataclass(eq=False)
class InMemoryDataset:
    """A dataset held in memory; satisfies :class:`sharpkit.Dataset`.

    Attributes:
        name: Registered name.
        input_shape: Shape of one input, e.g. ``(1, 28, 28)``.
        num_classes: Number of classes.
        train: The training split (with augmentation attached, if any).
        test: The test split (never subset, never augmented).
        classes: Class names, index = label.
        source: Where the data was read from (a folder), or how it was made.
        mean: Per-channel mean subtracted from the ``[0, 1]`` pixels.
        std: Per-channel standard deviation divided out.
    """

    name: str
    input_shape: tuple[int, ...]
    num_classes: int
    train: DataSplit
    test: DataSplit
    classes: tuple[str, ...] = ()
    source: str = ""
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()


# --------------------------------------------------------------------------- subset


def stratified_subset(
    targets: torch.Tensor, n: int, num_classes: int, seed: int
) -> torch.Tensor:
    """Return sorted indices of a stratified, seeded subset of ``n`` examples.

    Each class gets ``n`` times its share of ``targets``, rounded by the largest
    remainder method (ties go to the lower class index), so the class proportions
    are kept as closely as integers allow. Within a class the examples are drawn
    uniformly without replacement from a generator seeded from ``seed``. The
    indices are returned in increasing order, so the subset keeps the split's
    original order.

    Raises:
        ConfigError: ``n`` is not between 1 and ``len(targets)``, or too small
            to hold one example of every class present.
    """
    total = int(targets.shape[0])
    if not 1 <= n <= total:
        msg = f"subset must be between 1 and {total} (the training set size), got {n}"
        raise ConfigError(msg)
    counts = torch.bincount(targets, minlength=num_classes).tolist()
    present = sum(1 for c in counts if c > 0)
    if n < present:
        msg = (
            f"subset {n} cannot hold one example of each of the {present} classes "
            f"(a stratified subset keeps every class); use {present} or more"
        )
        raise ConfigError(msg)
    exact = [n * c / total for c in counts]
    quota = [math.floor(q) for q in exact]
    left = n - sum(quota)
    order = sorted(range(num_classes), key=lambda k: (-(exact[k] - quota[k]), k))
    for k in order[:left]:
        quota[k] += 1
    gen = seeded_generator(seed, "subset")
    picked = []
    for k in range(num_classes):
        members = torch.nonzero(targets == k).flatten()
        perm = torch.randperm(len(members), generator=gen)
        picked.append(members[perm[: quota[k]]])
    return torch.sort(torch.cat(picked)).values


# ------------------------------------------------------------------------- augmentation


class RandomCropFlip:
    """Random crop of the zero-padded image and random horizontal flip, per example.

    The standard CIFAR augmentation (He et al., 2016), vectorised over the batch:
    each image is padded by ``pad`` pixels on every side with the value a black
    pixel has after normalisation (``-mean / std`` per channel, i.e. torchvision's
    ``RandomCrop(32, padding=4)`` applied before ``Normalize``), an ``H × W``
    window is cut at an offset drawn uniformly from ``{0, ..., 2·pad}`` in each
    direction, and it is mirrored left-right with probability 1/2. All draws come
    from the generator passed in, in this order: row offsets, column offsets,
    flips (``B`` each).

    Args:
        fill: Per-channel padding value.
        pad: Padding in pixels.
    """

    def __init__(self, fill: Sequence[float], pad: int = 4) -> None:
        self.fill = torch.tensor([float(v) for v in fill])
        self.pad = pad

    def draw(
        self, batch: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Draw ``(row offsets, column offsets, flips)`` for ``batch`` images."""
        span = 2 * self.pad + 1
        dy = torch.randint(0, span, (batch,), generator=generator)
        dx = torch.randint(0, span, (batch,), generator=generator)
        flip = torch.randint(0, 2, (batch,), generator=generator).bool()
        return dy, dx, flip

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Augment a ``(B, C, H, W)`` batch; returns a new tensor."""
        b, c, h, w = x.shape
        dy, dx, flip = (t.to(x.device) for t in self.draw(b, generator))
        # One gather from the unpadded image: source row/column of every output
        # pixel, clamped into range, and the padding value where it falls outside.
        rows = dy[:, None] + torch.arange(h, device=x.device) - self.pad  # (b, h)
        cols = dx[:, None] + torch.arange(w, device=x.device) - self.pad  # (b, w)
        cols = torch.where(flip[:, None], cols.flip(1), cols)
        inside = ((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[
            :, None, :
        ]
        flat = rows.clamp(0, h - 1)[:, :, None] * w + cols.clamp(0, w - 1)[:, None, :]
        index = flat.view(b, 1, h * w).expand(b, c, h * w)
        out = torch.gather(x.reshape(b, c, h * w), 2, index).view(b, c, h, w)
        fill = self.fill.to(x.device, x.dtype).view(1, c, 1, 1)
        return torch.where(inside[:, None], out, fill)


# --------------------------------------------------------------------------- search


def cache_dir() -> Path:
    """Where ``download=True`` puts files when no root is given."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "sharpkit" / "datasets"


def _search_dirs(name: str, root: Path | None) -> list[Path]:
    dirs: list[Path] = []
    if root is not None:
        dirs.append(Path(root).expanduser())
    env = os.environ.get(ENV_DATA)
    if env:
        dirs.append(Path(env).expanduser())
    if name == "fashion-mnist":
        dirs.append(DEBIAN_FASHION_MNIST)
    dirs.append(cache_dir())
    out: list[Path] = []
    for d in dirs:
        if d not in out:
            out.append(d)
    return out


def _candidates(base: Path, sub: str) -> list[Path]:
    return [base, base / sub]


def _not_found(name: str, dirs: list[Path], layouts: str, extra: str = "") -> DataError:
    where = ", ".join(str(d) for d in dirs)
    msg = (
        f"dataset {name!r} not found; looked in {where} (and their {name}/ "
        f"sub-folders) for {layouts}; pass {arg_hint('data_root', '--data-root DIR')}, "
        f"set {ENV_DATA}, {extra}or add "
        f"{arg_hint('download', '--download')} to fetch it with torchvision"
    )
    return DataError(msg)


def _download(name: str, target: Path) -> None:
    """Fetch ``name`` with torchvision's downloader into ``target``."""
    import torchvision

    target.mkdir(parents=True, exist_ok=True)
    try:
        if name == "fashion-mnist":
            for train in (True, False):
                torchvision.datasets.FashionMNIST(
                    str(target), train=train, download=True
                )
        else:
            torchvision.datasets.CIFAR10(str(target), train=True, download=True)
    except Exception as exc:  # network errors come in many types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        msg = (
            f"downloading {name!r} into {target} failed ({type(exc).__name__}: "
            f"{first}); check the network, or put the files there yourself"
        )
        raise DataError(msg) from exc


def _download_target(root: Path | None) -> Path:
    if root is not None:
        return Path(root).expanduser()
    env = os.environ.get(ENV_DATA)
    return Path(env).expanduser() if env else cache_dir()


# --------------------------------------------------------------------------- readers


def _read_bytes(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
        if path.suffix == ".gz":
            return zlib.decompress(raw, 16 + zlib.MAX_WBITS)
    except (OSError, zlib.error, EOFError) as exc:
        msg = f"cannot read {path} ({exc}); re-fetch the file"
        raise DataError(msg) from exc
    return raw


def _read_idx(path: Path, ndim: int) -> np.ndarray:
    """Read an IDX file of unsigned bytes (LeCun's MNIST format)."""
    data = _read_bytes(path)
    if len(data) < 4 + 4 * ndim or data[:3] != b"\x00\x00\x08" or data[3] != ndim:
        msg = f"{path} is not a {ndim}-d IDX file of unsigned bytes; re-fetch it"
        raise DataError(msg)
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    count = math.prod(dims)
    offset = 4 + 4 * ndim
    if len(data) - offset != count:
        msg = (
            f"{path} holds {len(data) - offset} values, its header says {count}; "
            "the file is truncated or damaged, re-fetch it"
        )
        raise DataError(msg)
    return np.frombuffer(data, dtype=np.uint8, count=count, offset=offset).reshape(dims)


def _idx_file(folder: Path, stem: str) -> Path | None:
    for path in (folder / stem, folder / f"{stem}.gz"):
        if path.is_file():
            return path
    return None


_FMNIST_STEMS = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}


def _find_fmnist_idx(folder: Path) -> dict[str, Path] | None:
    files = {k: _idx_file(folder, s) for k, s in _FMNIST_STEMS.items()}
    if all(p is not None for p in files.values()):
        return {k: p for k, p in files.items() if p is not None}
    return None


def _read_npz(path: Path, keys: Sequence[str]) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [k for k in keys if k not in data]
            if missing:
                msg = f"{path} lacks the arrays {missing}; expected {list(keys)}"
                raise DataError(msg)
            return {k: np.asarray(data[k]) for k in keys}
    except (OSError, ValueError, zlib.error, EOFError) as exc:
        msg = f"cannot read {path} ({exc}); re-fetch the file"
        raise DataError(msg) from exc


def _check_arrays(
    x: np.ndarray, y: np.ndarray, shape: tuple[int, ...], classes: int, where: str
) -> None:
    if x.dtype != np.uint8 or tuple(x.shape[1:]) != shape:
        msg = (
            f"{where}: expected uint8 images of shape (N, "
            f"{', '.join(map(str, shape))}), got {x.dtype} {tuple(x.shape)}"
        )
        raise DataError(msg)
    if y.ndim != 1 or len(y) != len(x):
        msg = f"{where}: {len(x)} images but labels of shape {tuple(y.shape)}"
        raise DataError(msg)
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= classes):
        msg = f"{where}: labels outside 0..{classes - 1}"
        raise DataError(msg)


def _labels(y: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(y.astype(np.int64))


def _normalise_gray(x: np.ndarray, mean: float, std: float) -> torch.Tensor:
    out = torch.from_numpy(x.astype(np.float32)).unsqueeze(1)  # (N, 1, H, W)
    return out.div_(255.0).sub_(mean).div_(std)


def _normalise_rgb(
    x_nhwc: np.ndarray, mean: Sequence[float], std: Sequence[float]
) -> torch.Tensor:
    x = np.ascontiguousarray(x_nhwc)
    t = torch.from_numpy(x if x.flags.writeable else x.copy())
    t = (
        t.permute(0, 3, 1, 2).contiguous().float()
    )  # permute in uint8: 4x less memory traffic
    m = torch.tensor(mean).view(1, -1, 1, 1) * 255.0
    s = torch.tensor(std).view(1, -1, 1, 1) * 255.0
    return t.sub_(m).div_(s)


# -------------------------------------------------------------------------- safe pickle

_NUMPY_CORE = {
    "numpy.core.multiarray": "numpy._core.multiarray",
    "numpy.core.numeric": "numpy._core.numeric",
}
_ALLOWED_GLOBALS = {
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickle only dicts/lists/strings/bytes/numbers and numpy arrays.

    Any other global (``os.system``, ``builtins.eval``, a class, ...) is refused
    before it is looked up, so nothing in the file can run code.
    """

    def find_class(self, module: str, name: str) -> Any:
        if int(np.__version__.split(".")[0]) >= 2:
            module = _NUMPY_CORE.get(module, module)
        if (module, name) not in _ALLOWED_GLOBALS:
            msg = f"global {module}.{name} is not allowed"
            raise pickle.UnpicklingError(msg)
        return super().find_class(module, name)


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with path.open("rb") as fh:
            obj = _ArrayUnpickler(fh, encoding="bytes").load()
    except pickle.UnpicklingError as exc:
        msg = (
            f"{path} is not a plain CIFAR-10 batch ({exc}); it was not loaded. "
            "Replace it with the original file"
        )
        raise DataError(msg) from exc
    except (OSError, EOFError, ValueError, TypeError, KeyError, AttributeError) as exc:
        msg = f"cannot read {path} ({type(exc).__name__}: {exc}); re-fetch the file"
        raise DataError(msg) from exc
    if not isinstance(obj, dict):
        msg = f"{path} holds a {type(obj).__name__}, not a CIFAR-10 batch dict"
        raise DataError(msg)
    norm = {(k.decode() if isinstance(k, bytes) else k): v for k, v in obj.items()}
    data, labels = norm.get("data"), norm.get("labels")
    if not isinstance(data, np.ndarray) or data.ndim != 2 or data.shape[1] != 3072:
        msg = f"{path}: 'data' is not a (N, 3072) uint8 array"
        raise DataError(msg)
    y = np.asarray(labels)
    if y.dtype.kind not in "iu":
        msg = f"{path}: 'labels' are not integers"
        raise DataError(msg)
    x = data.astype(np.uint8, copy=False).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return x, y


# --------------------------------------------------------------------------- loaders


def _finish(ds: InMemoryDataset, subset: int | None, seed: int) -> InMemoryDataset:
    if subset is not None:
        idx = stratified_subset(ds.train.targets, subset, ds.num_classes, seed)
        ds.train = ds.train.take(idx)
    return ds


def _load_fmnist_from(folder: Path) -> InMemoryDataset | None:
    arrays: dict[str, np.ndarray] | None = None
    for where in (folder, folder / "FashionMNIST" / "raw"):
        files = _find_fmnist_idx(where)
        if files is not None:
            arrays = {
                k: _read_idx(p, 3 if k.startswith("x") else 1) for k, p in files.items()
            }
            source = where
            break
    if arrays is None:
        tr, te = folder / "fashion-mnist_train.npz", folder / "fashion-mnist_test.npz"
        if not (tr.is_file() and te.is_file()):
            return None
        arrays = {
            **_read_npz(tr, ("x_train", "y_train")),
            **_read_npz(te, ("x_test", "y_test")),
        }
        source = folder
    splits = {}
    for part in ("train", "test"):
        x, y = arrays[f"x_{part}"], arrays[f"y_{part}"]
        _check_arrays(x, y, (28, 28), 10, f"{source} ({part})")
        splits[part] = DataSplit(
            _normalise_gray(x, FASHION_MNIST_MEAN, FASHION_MNIST_STD), _labels(y)
        )

    return InMemoryDataset(
        name="fashion-mnist",
        input_shape=(1, 28, 28),
        num_classes=10,
        train=splits["train"],
        test=splits["test"],
        classes=FASHION_MNIST_CLASSES,
        source=str(source),
        mean=(FASHION_MNIST_MEAN,),
        std=(FASHION_MNIST_STD,),
    )


def _load_cifar_from(folder: Path) -> InMemoryDataset | None:
    tr, te = folder / "cifar10_train.npz", folder / "cifar10_test.npz"
    batches = folder / "cifar-10-batches-py"
    if tr.is_file() and te.is_file():
        arrays = {
            **_read_npz(tr, ("x_train", "y_train")),
            **_read_npz(te, ("x_test", "y_test")),
        }
        source = folder
    elif all(
        (batches / f).is_file()
        for f in (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch")
    ):
        parts = [_read_cifar_batch(batches / f"data_batch_{i}") for i in range(1, 6)]
        x_te, y_te = _read_cifar_batch(batches / "test_batch")
        arrays = {
            "x_train": np.concatenate([p[0] for p in parts]),
            "y_train": np.concatenate([p[1] for p in parts]),
            "x_test": x_te,
            "y_test": y_te,
        }
        source = batches
    else:
        return None
    for part in ("train", "test"):
        _check_arrays(
            arrays[f"x_{part}"],
            arrays[f"y_{part}"],
            (32, 32, 3),
            10,
            f"{source} ({part})",
        )
    augment = RandomCropFlip(
        [-m / s for m, s in zip(CIFAR10_MEAN, CIFAR10_STD, strict=True)]
    )
    train = DataSplit(
        _normalise_rgb(arrays["x_train"], CIFAR10_MEAN, CIFAR10_STD),
        _labels(arrays["y_train"]),
        augment,
    )
    test = DataSplit(
        _normalise_rgb(arrays["x_test"], CIFAR10_MEAN, CIFAR10_STD),
        _labels(arrays["y_test"]),
    )
    return InMemoryDataset(
        name="cifar10",
        input_shape=(3, 32, 32),
        num_classes=10,
        train=train,
        test=test,
        classes=CIFAR10_CLASSES,
        source=str(source),
        mean=CIFAR10_MEAN,
        std=CIFAR10_STD,
    )


def _load_real(
    name: str,
    reader: Callable[[Path], InMemoryDataset | None],
    layouts: str,
    extra: str,
    root: Path | None,
    download: bool,
) -> InMemoryDataset:
    dirs = _search_dirs(name, root)
    for base in dirs:
        for folder in _candidates(base, name):
            if folder.is_dir():
                ds = reader(folder)
                if ds is not None:
                    return ds
    if download:
        target = _download_target(root)
        _download(name, target)
        for folder in _candidates(target, name):
            if folder.is_dir():
                ds = reader(folder)
                if ds is not None:
                    return ds
        msg = f"downloaded {name!r} into {target} but could not find its files there"
        raise DataError(msg)
    raise _not_found(name, dirs, layouts, extra)


def load_fashion_mnist(
    root: Path | None = None,
    download: bool = False,
    subset: int | None = None,
    seed: int = 0,
) -> InMemoryDataset:
    """Load Fashion-MNIST (60,000 train / 10,000 test, 1×28×28, 10 classes).

    Args:
        root: Folder searched first (see the module docstring for the order).
        download: Fetch the files with torchvision if they are not found.
        subset: Keep a stratified, seeded subset of this many *training*
            examples; the test split stays whole.
        seed: Seed for the subset.

    Raises:
        DataError: Not found (the message lists where it looked), or unreadable.
    """
    ds = _load_real(
        "fashion-mnist",
        _load_fmnist_from,
        "{train,t10k}-*-ubyte[.gz], FashionMNIST/raw/ or "
        "fashion-mnist_{train,test}.npz",
        "install the Debian package dataset-fashion-mnist, ",
        root,
        download,
    )
    return _finish(ds, subset, seed)


def load_cifar10(
    root: Path | None = None,
    download: bool = False,
    subset: int | None = None,
    seed: int = 0,
) -> InMemoryDataset:
    """Load CIFAR-10 (50,000 train / 10,000 test, 3×32×32, 10 classes).

    Args:
        root: Folder searched first (see the module docstring for the order).
        download: Fetch the files with torchvision if they are not found.
        subset: Keep a stratified, seeded subset of this many *training*
            examples; the test split stays whole.
        seed: Seed for the subset.

    Raises:
        DataError: Not found (the message lists where it looked), or unreadable.
    """
    ds = _load_real(
        "cifar10",
        _load_cifar_from,
        "cifar10_{train,test}.npz or cifar-10-batches-py/",
        "",
        root,
        download,
    )
    return _finish(ds, subset, seed)


def _parse_shape(shape: str) -> tuple[int, ...]:
    try:
        dims = tuple(int(d) for d in shape.lower().split("x"))
    except ValueError:
        dims = ()
    if not dims or any(d < 1 for d in dims):
        msg = f"synthetic: shape must look like '16' or '3x8x8', got {shape!r}"
        raise ConfigError(msg)
    return dims


def load_synthetic(
    root: Path | None = None,
    download: bool = False,
    subset: int | None = None,
    seed: int = 0,
    *,
    n_train: int = 512,
    n_test: int = 256,
    classes: int = 4,
    shape: str = "16",
    noise: float = 1.0,
    data_seed: int = 0,
) -> InMemoryDataset:
    """A seeded Gaussian classification problem (no files; for tests and examples).

    Class ``k`` has a mean ``μ_k ~ N(0, I)`` (one draw per input element); an
    example is ``μ_y + noise · ε`` with ``ε ~ N(0, I)``. Labels are balanced
    (``i mod classes``, then shuffled). The same ``data_seed`` gives the same
    data whatever the training seed.

    Args:
        root: Ignored (no files).
        download: Ignored.
        subset: Stratified subset of the training split.
        seed: Seed for the subset.
        n_train: Training examples.
        n_test: Test examples.
        classes: Number of classes (≥ 2).
        shape: Input shape, ``"16"`` or ``"CxHxW"`` such as ``"3x8x8"``.
        noise: Standard deviation of the within-class noise.
        data_seed: Seed of the data itself.
    """
    dims = _parse_shape(shape)
    if classes < 2 or n_train < 1 or n_test < 1 or not noise >= 0:
        msg = (
            "synthetic: need classes >= 2, n_train >= 1, n_test >= 1, noise >= 0; "
            f"got {classes}, {n_train}, {n_test}, {noise}"
        )
        raise ConfigError(msg)
    gen = seeded_generator(data_seed, "synthetic")
    means = torch.randn(classes, *dims, generator=gen)

    def make(n: int) -> DataSplit:
        y = (torch.arange(n) % classes)[torch.randperm(n, generator=gen)]
        x = means[y] + noise * torch.randn(n, *dims, generator=gen)
        return DataSplit(x.contiguous(), y.long())

    train, test = make(n_train), make(n_test)
    ds = InMemoryDataset(
        name="synthetic",
        input_shape=dims,
        num_classes=classes,
        train=train,
        test=test,
        classes=tuple(str(k) for k in range(classes)),
        source=f"synthetic(data_seed={data_seed})",
    )
    return _finish(ds, subset, seed)


# --------------------------------------------------------------------------- hook


def sharpkit_register_datasets() -> list[DatasetSpec]:
    """Register ``fashion-mnist``, ``cifar10`` and ``synthetic``."""
    return [
        DatasetSpec(
            name="fashion-mnist",
            factory=load_fashion_mnist,
            description=(
                "Fashion-MNIST (Xiao et al. 2017): 60k/10k 28x28 grey images, "
                "10 classes"
            ),
        ),
        DatasetSpec(
            name="cifar10",
            factory=load_cifar10,
            description=(
                "CIFAR-10 (Krizhevsky 2009): 50k/10k 32x32 colour images, 10 classes, "
                "crop+flip augmentation"
            ),
        ),
        DatasetSpec(
            name="synthetic",
            factory=load_synthetic,
            description="Seeded Gaussian classes, tiny, no files (tests and examples)",
            options=(
                Option(name="n_train", type=int, default=512, help="Training examples"),
                Option(name="n_test", type=int, default=256, help="Test examples"),
                Option(name="classes", type=int, default=4, help="Number of classes"),
                Option(
                    name="shape",
                    type=str,
                    default="16",
                    help="Input shape: 16 or 3x8x8",
                ),
                Option(name="noise", type=float, default=1.0, help="Within-class std"),
                Option(
                    name="data_seed",
                    type=int,
                    default=0,
                    help="Seed of the data itself",
                ),
            ),
        ),
    ]
