"""Image folders: ``DIR/<class>/<image>`` as torchvision's ``ImageFolder`` reads them.

Only what is used is decoded: the files are put in a fixed seeded order from
their names alone, and :func:`read_folder` decodes the first ``limit`` of each
split (a selection of the first ``--samples`` examples needs no more), after
checking from one image's header that they fit in memory.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sharpkit._data import DataSplit
from sharpkit._hints import option_hint
from sharpkit._limits import check_bytes
from sharpkit._seed import generator
from sharpkit.errors import ConfigError, DataError

if TYPE_CHECKING:
    import torch

__all__ = ["IMAGE_OPTIONS", "FolderData", "read_folder"]

IMAGE_OPTIONS = ("size", "mean", "std", "channels", "num_classes")
OPTIONS_FLAG = ("data_options", "--data-option")
_IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


@dataclass(frozen=True)
class FolderData:
    """What :func:`read_folder` read.

    Attributes:
        classes: The class names (sorted sub-folder names).
        train: The training examples read (the first ``limit`` of its order).
        test: The test examples read (``None``: the folder has no test split).
        totals: How many images each split holds, read or not.
    """

    classes: list[str]
    train: DataSplit
    test: DataSplit | None
    totals: tuple[int, int]


def _image_files(folder: Path) -> tuple[list[str], list[tuple[Path, int]]]:
    """Classes (sorted sub-folder names) and ``(file, class index)`` as ImageFolder."""
    from torchvision.datasets.folder import IMG_EXTENSIONS

    classes = sorted(d.name for d in folder.iterdir() if d.is_dir())
    files = [
        (f, i)
        for i, c in enumerate(classes)
        for f in sorted((folder / c).rglob("*"))
        if f.is_file() and f.suffix.lower() in IMG_EXTENSIONS
    ]
    return classes, files


def _floats(value: Any, what: str) -> tuple[float, ...]:
    if isinstance(value, int | float):
        return (float(value),)
    if isinstance(value, Sequence) and not isinstance(value, str):
        return tuple(float(v) for v in value)
    try:
        return tuple(float(v) for v in str(value).split(","))
    except ValueError:
        msg = (
            f"data option {what}={value!r} must be a number or comma-separated numbers"
        )
        raise ConfigError(msg) from None


def _size(value: Any) -> tuple[int, ...] | None:
    if value is None:
        return None
    text = str(value).lower().replace(" ", "")
    try:
        parts = tuple(int(p) for p in text.split("x"))
    except ValueError:
        parts = ()
    if len(parts) not in (1, 2) or min(parts) < 1:
        msg = f"data option size={value!r} must be S (shorter side, centre crop) or HxW"
        raise ConfigError(msg)
    return parts


def read_folder(
    folder: Path, opts: Mapping[str, Any], seed: int, limit: int | None = None
) -> FolderData:
    """Read an image folder (``DIR/<class>/...`` or ``DIR/train|test|val/<class>/...``).

    Args:
        folder: The folder.
        opts: ``size``, ``mean``, ``std``, ``channels`` (see :data:`IMAGE_OPTIONS`).
        seed: Seed of the fixed example order.
        limit: Decode only the first ``limit`` images of each split's order
            (``None``: all of them).

    Raises:
        DataError: No images, different classes in train and test, or an
            image that cannot be read.
        ConfigError: A bad option, or images that would not fit in memory.
    """
    subs = {d.name for d in folder.iterdir() if d.is_dir()}
    test_name = next((n for n in ("test", "val") if n in subs), None)
    if "train" in subs and test_name is not None:
        classes, train_files = _image_files(folder / "train")
        test_classes, test_files = _image_files(folder / test_name)
        if test_classes != classes:
            msg = (
                f"{str(folder / 'train')!r} and {str(folder / test_name)!r} have "
                "different class folders; give both the same classes"
            )
            raise DataError(msg)
    else:
        classes, train_files = _image_files(folder)
        test_files = []
    if not train_files:
        msg = (
            f"no images in {str(folder)!r}; an image folder holds one sub-folder of "
            "images per class (DIR/cat/1.png, DIR/dog/2.png, ...)"
        )
        raise DataError(msg)
    mean, std = _normalisation(opts)
    channels = opts.get("channels")
    reader = _ImageReader(_size(opts.get("size")), mean, std, channels, train_files)
    n = len(train_files) + len(test_files)
    if limit is not None:
        n = min(limit, len(train_files)) + min(limit, len(test_files))
    reader.check_size(str(folder), n)
    train = reader.split(train_files, seed, "train", limit)
    test = reader.split(test_files, seed, "test", limit) if test_files else None
    return FolderData(classes, train, test, (len(train_files), len(test_files)))


def _normalisation(
    opts: Mapping[str, Any],
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    mean_opt, std_opt = opts.get("mean", 0.0), opts.get("std", 1.0)
    if str(mean_opt).lower() == "imagenet":
        mean_opt = _IMAGENET[0]
        std_opt = (
            _IMAGENET[1]
            if str(std_opt).lower() in ("1.0", "1", "imagenet")
            else std_opt
        )
    if str(std_opt).lower() == "imagenet":
        std_opt = _IMAGENET[1]
    mean, std = _floats(mean_opt, "mean"), _floats(std_opt, "std")
    if any(s <= 0 or not math.isfinite(s) for s in std):
        msg = f"data option std={std_opt!r} must be positive"
        raise ConfigError(msg)
    return mean, std


class _ImageReader:
    """Reads images as ``Resize``, ``CenterCrop``, ``ToTensor``, ``Normalize`` do."""

    def __init__(
        self,
        size: tuple[int, ...] | None,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        channels: Any,
        files: list[tuple[Path, int]],
    ) -> None:
        from PIL import Image

        self.size = size
        self.first = files[0][0]
        if channels is None:
            with Image.open(files[0][0]) as first:
                grey = first.mode in ("L", "1", "I", "I;16", "F", "LA")
            channels = 1 if grey else 3
        if int(channels) not in (1, 3):
            msg = f"data option channels={channels!r} must be 1 or 3"
            raise ConfigError(msg)
        self.mode = "L" if int(channels) == 1 else "RGB"
        n = 1 if self.mode == "L" else 3
        for what, values in (("mean", mean), ("std", std)):
            if len(values) not in (1, n):
                msg = f"data option {what} needs 1 or {n} values, got {len(values)}"
                raise ConfigError(msg)
        self.mean = mean * n if len(mean) == 1 else mean
        self.std = std * n if len(std) == 1 else std

    def check_size(self, folder: str, count: int) -> None:
        """Refuse, before decoding any, images that would not fit in memory.

        The size of one image comes from ``size`` (a side S gives S x S), else
        from the first image's header; every image is read as float32.

        Raises:
            ConfigError: ``count`` such images are over the memory limit.
        """
        from PIL import Image

        if self.size is not None:
            h, w = (self.size[0], self.size[0]) if len(self.size) == 1 else self.size
        else:
            with Image.open(self.first) as img:
                w, h = img.size
        channels = 1 if self.mode == "L" else 3
        check_bytes(
            f"the {count} images of {folder!r} at {h}x{w}",
            count * channels * h * w * 4,
            hint=f"resize them with {option_hint(OPTIONS_FLAG, 'size')}",
        )

    def read(self, path: Path) -> torch.Tensor:
        import torchvision.transforms.functional as tf
        from PIL import Image

        try:
            with Image.open(path) as img:
                pic = img.convert(self.mode)
        except Exception as exc:
            msg = f"cannot read image {str(path)!r} ({type(exc).__name__}: {exc})"
            raise DataError(msg) from exc
        if self.size is not None:
            if len(self.size) == 1:
                pic = tf.center_crop(tf.resize(pic, [self.size[0]]), [self.size[0]])
            else:
                pic = tf.resize(pic, list(self.size))
        x = tf.to_tensor(pic)
        out: torch.Tensor = tf.normalize(x, list(self.mean), list(self.std))
        return out

    def split(
        self,
        files: list[tuple[Path, int]],
        seed: int,
        stream: str,
        limit: int | None = None,
    ) -> DataSplit:
        """The first ``limit`` images of the files' seeded order (all: ``None``)."""
        import torch

        order = torch.randperm(
            len(files), generator=generator(seed, f"images:{stream}")
        )
        chosen = [files[int(i)] for i in order[:limit]]
        images = [self.read(f) for f, _ in chosen]
        shapes = {tuple(x.shape) for x in images}
        if len(shapes) > 1:
            a, b = sorted(shapes)[:2]
            msg = (
                f"the images differ in size ({a[1]}x{a[2]} and {b[1]}x{b[2]}); "
                f"pass {option_hint(OPTIONS_FLAG, 'size')} to resize them"
            )
            raise DataError(msg)
        targets = torch.tensor([c for _, c in chosen], dtype=torch.int64)
        return DataSplit(torch.stack(images), targets)
