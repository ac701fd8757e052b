"""A selection of the first examples reads no more than them (issue 21, section 3).

``--samples 2`` on an image folder of thousands of files, or on a ``module:name``
source that streams or holds 10⁹ items, used to read the whole source before
the selection applied: minutes of decoding, or a refusal for memory the
measurement never needed. The count is now passed into the reading: an image
folder decodes the first ``samples`` images of its fixed seeded order, code
data is read up to ``samples`` examples. Each test checks what was read
(decoded images counted, items past the selection raising) and that the
analysis set is the same examples as a whole read cut afterwards: the same
``data_sha256``, the digest of the analysis tensors, bit for bit.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import sharpkit
from sharpkit.errors import ConfigError


def _images(folder: Path, n: int, side: int) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(n):
        sub = folder / ("cat" if i % 2 else "dog")
        sub.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(sub / f"{i}.png")
    return folder


def _net(features: int) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(features, 3))


def _counted(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    from sharpkit.api.imagefolder import _ImageReader

    decoded: list[Path] = []
    read = _ImageReader.read

    def counting(self: Any, path: Path) -> torch.Tensor:
        decoded.append(path)
        return read(self, path)

    monkeypatch.setattr(_ImageReader, "read", counting)
    return decoded


@pytest.mark.timeout(300)
def test_two_samples_of_an_image_folder_decode_two_images(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = _images(tmp_path / "imgs", 60, 8)
    net = _net(3 * 8 * 8)
    decoded = _counted(monkeypatch)
    got = sharpkit.measure(net, str(folder), samples=2, metrics=["spectral"])
    assert len(decoded) == 2
    # the population is the folder's, not what was read (the precision loop and
    # the stored run rely on it)
    assert got.attrs["population"] == 60
    assert got.attrs["samples"] == 2
    # the same two examples a whole read gives first: identical analysis tensors
    whole = sharpkit.load_dataset(str(folder))
    want = sharpkit.measure(net, whole.train.head(2), metrics=["spectral"])
    assert got.attrs["data_sha256"] == want.attrs["data_sha256"]
    assert got["spectral"].value == want["spectral"].value  # same inputs, same code


@pytest.mark.timeout(300)
def test_a_folder_too_big_for_memory_is_measured_on_the_samples_asked_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the 200 images of 1500² with --samples 2, scaled down: 40 images
    # of 64x64 take 40 x 3 x 64² x 4 = 1.9 MiB as float32, over a 1 MiB limit;
    # two of them take 96 KiB
    folder = _images(tmp_path / "imgs", 40, 64)
    monkeypatch.setenv("SHARPKIT_LIMITS", "memory=1MiB")
    net = _net(3 * 64 * 64)
    with pytest.raises(ConfigError, match=r"the 40 images .* would take 1\.9 MiB"):
        sharpkit.measure(net, str(folder), samples="all", metrics=["spectral"])
    decoded = _counted(monkeypatch)
    got = sharpkit.measure(net, str(folder), samples=2, metrics=["spectral"])
    assert len(decoded) == 2
    assert got.attrs["population"] == 40


@pytest.mark.timeout(300)
def test_a_random_draw_still_reads_the_whole_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a stratified random draw needs every example's class and the split's size
    folder = _images(tmp_path / "imgs", 12, 8)
    decoded = _counted(monkeypatch)
    got = sharpkit.measure(
        _net(3 * 8 * 8), str(folder), samples=4, sample="random", metrics=["trace"]
    )
    assert len(decoded) == 12
    assert got.attrs["population"] == 12


_CODE = """
import math
import torch

LIMIT = 200  # reading past this means the whole source was being read


def example(i):
    x = torch.tensor([math.sin(0.37 * i + k) for k in range(4)])
    return x, i % 3


class Endless(torch.utils.data.IterableDataset):
    def __iter__(self):
        i = 0
        while True:
            if i >= LIMIT:
                raise RuntimeError(f"read item {i}: the whole stream was asked for")
            yield example(i)
            i += 1


class Huge(torch.utils.data.Dataset):
    def __len__(self):
        return 10**9

    def __getitem__(self, i):
        if i >= LIMIT:
            raise RuntimeError(f"read item {i}: the whole dataset was asked for")
        return example(i)


def stream():
    return torch.utils.data.DataLoader(Endless(), batch_size=16)


def huge():
    return Huge()
"""


@pytest.mark.timeout(300)
@pytest.mark.parametrize(("name", "population"), [("stream", None), ("huge", 10**9)])
def test_code_data_is_read_no_further_than_the_samples(
    tmp_path: Path, name: str, population: int | None
) -> None:
    import importlib.util

    path = tmp_path / "lots.py"
    path.write_text(textwrap.dedent(_CODE))
    got = sharpkit.measure(_net(4), f"{path}:{name}", samples=64, metrics=["spectral"])
    assert got.attrs["samples"] == 64
    assert got.attrs["population"] == population
    spec = importlib.util.spec_from_file_location("lots_copy", path)
    assert spec is not None
    assert spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    xs, ys = zip(*(mod.example(i) for i in range(64)), strict=True)
    want = sharpkit.measure(
        _net(4), (torch.stack(xs), torch.tensor(ys)), metrics=["spectral"]
    )
    assert got.attrs["data_sha256"] == want.attrs["data_sha256"]
