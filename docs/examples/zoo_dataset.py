"""A dataset plugin: seeded Gaussian blobs, registered under the name ``blobs``.

A dataset factory returns in-memory splits (``sharpkit.DataSplit``: float inputs,
int64 class targets). It honours ``subset`` (that many training examples, the
same ones for the same ``seed``) and never downloads unless ``download=True``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import sharpkit


@dataclass
class Blobs:
    """What a dataset factory returns: metadata and two splits."""

    name: str
    input_shape: tuple[int, ...]
    num_classes: int
    train: sharpkit.DataSplit
    test: sharpkit.DataSplit


def load_blobs(
    *,
    root: Path | None,
    download: bool,
    subset: int | None,
    seed: int,
    classes: int = 3,
    dim: int = 8,
) -> Blobs:
    """``classes`` Gaussian blobs in ``dim`` dimensions; 256 train, 128 test examples.

    The data depend only on ``classes`` and ``dim`` (their own fixed generator);
    ``seed`` chooses the training subset. ``root`` and ``download`` are unused:
    nothing is read from disk.
    """
    import torch

    gen = torch.Generator().manual_seed(1234)
    centres = 3 * torch.randn(classes, dim, generator=gen)

    def split(n: int) -> sharpkit.DataSplit:
        y = torch.arange(n) % classes
        return sharpkit.DataSplit(centres[y] + torch.randn(n, dim, generator=gen), y)

    train, test = split(256), split(128)
    if subset is not None:
        pick = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
        train = train.take(pick[:subset].sort().values)
    return Blobs("blobs", (dim,), classes, train, test)


BLOBS = sharpkit.DatasetSpec(
    name="blobs",
    factory=load_blobs,
    description="Seeded Gaussian blobs (no files), for quick experiments.",
    options=(
        sharpkit.Option(name="classes", type=int, default=3, help="Number of blobs."),
        sharpkit.Option(name="dim", type=int, default=8, help="Input dimension."),
    ),
)


@sharpkit.hookimpl
def sharpkit_register_datasets() -> list[sharpkit.DatasetSpec]:
    """Register the dataset."""
    return [BLOBS]
