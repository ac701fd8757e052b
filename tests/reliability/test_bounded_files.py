"""Files are looked at before they are read (issue 21, section 3).

A sparse file of a gigabyte named ``.pt`` is refused after its first bytes,
not hashed whole; zip bombs as ``.npz`` or ``.pt`` data and as ``.pt2``
programs are refused from their archive's directory, before anything is
inflated. Each is one line that says the size and the limit.
"""

from __future__ import annotations

import io
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from _rel import cli, one_line

import sharpkit
from sharpkit.api.datafiles import load_data
from sharpkit.checkpoint import load_checkpoint

GB = 1 << 30
MB = 1 << 20


def _bytes_read() -> int:
    """Bytes this process has read through read() calls (Linux: /proc/self/io)."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    pytest.skip("no /proc/self/io")  # pragma: no cover


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_a_sparse_gigabyte_is_refused_after_its_first_bytes(
    tmp_path: Path, suffix: str
) -> None:
    path = tmp_path / f"big{suffix}"
    with path.open("wb") as fh:
        fh.truncate(GB)  # zeros, taking no disk space
    before = _bytes_read()
    with pytest.raises(sharpkit.CorruptCheckpointError, match="starts with bytes 00"):
        load_checkpoint(path)
    assert _bytes_read() - before < MB  # looked at, not read


def test_a_sparse_checkpoint_is_one_line_from_the_cli(tmp_path: Path) -> None:
    path = tmp_path / "big.pt"
    with path.open("wb") as fh:
        fh.truncate(GB)
    line = one_line(cli("measure", path, "--no-store"))
    assert "not a PyTorch checkpoint" in line
    assert "1.0 GB" in line


def _bomb(path: Path, entries: dict[str, int], *, header: bytes = b"") -> Path:
    """A zip whose entries inflate to ``entries[name]`` zero bytes each."""
    chunk = bytes(MB)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        for name, size in entries.items():
            with zf.open(name, "w", force_zip64=True) as fh:
                fh.write(header)
                for _ in range(size // MB):
                    fh.write(chunk)
    return path


def _npy_header(shape: tuple[int, ...]) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": "<f4", "fortran_order": False, "shape": shape}
    )
    return buf.getvalue()


def test_an_npz_zip_bomb_is_refused_before_it_inflates(tmp_path: Path) -> None:
    n = 384 * MB // (4 * 4096)  # 384 MB of float32 zeros in ~400 KB
    path = tmp_path / "bomb.npz"
    _bomb(path, {"x.npy": 384 * MB}, header=_npy_header((n, 4096)))
    with zipfile.ZipFile(path, "a") as zf:
        buf = io.BytesIO()
        np.save(buf, np.zeros(n, dtype=np.int64))
        zf.writestr("y.npy", buf.getvalue())
    assert path.stat().st_size < 2 * MB
    before = _bytes_read()
    with pytest.raises(sharpkit.DataError) as info:
        load_data(str(path))
    message = str(info.value)
    assert "declares 384.2 MB" in message
    assert "200x" in message
    assert _bytes_read() - before < 4 * MB


def test_a_pt_data_file_with_compressed_entries_is_refused(tmp_path: Path) -> None:
    """torch.save stores entries as they are: one that inflates 100x is a bomb."""
    path = _bomb(tmp_path / "bomb.pt", {"archive/data.pkl": 96 * MB})
    with pytest.raises(sharpkit.DataError, match=r"declares 96\.0 MB.*2x"):
        load_data(str(path))


def test_a_pt2_zip_bomb_is_refused_before_torch_reads_it(tmp_path: Path) -> None:
    good = tmp_path / "good.pt2"
    program = torch.export.export(torch.nn.Linear(3, 2).eval(), (torch.randn(1, 3),))
    torch.export.save(program, good)
    path = tmp_path / "bomb.pt2"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(path, "w") as dst:
        for info in src.infolist():
            dst.writestr(info, src.read(info))
    with (
        zipfile.ZipFile(path, "a", zipfile.ZIP_DEFLATED) as zf,
        zf.open("good/data/weights/bomb", "w", force_zip64=True) as fh,
    ):
        for _ in range(96):
            fh.write(bytes(MB))
    line = one_line(cli("measure", path, "--data", "synthetic", "--no-store"))
    assert "exported program" in line
    assert "declares" in line


HUGE_SOURCES = '''
import torch

READS = [0]


def _count():
    READS[0] += 1
    if READS[0] > 20000:
        raise RuntimeError("read far more than needed")


class Huge(torch.utils.data.Dataset):
    """10^9 examples of 4 KB each: 4 TB."""

    def __len__(self):
        return 10**9

    def __getitem__(self, i):
        _count()
        return torch.zeros(1024), 0


class Endless(torch.utils.data.IterableDataset):
    def __iter__(self):
        while True:
            _count()
            yield torch.zeros(1 << 16), 0


def huge():
    return Huge()


def endless():
    return torch.utils.data.DataLoader(Endless(), batch_size=64)
'''


@pytest.mark.parametrize(
    ("name", "says"),
    [("huge", "1000000000 examples"), ("endless", "more than")],
)
def test_a_data_source_too_big_for_memory_is_refused_before_it_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, says: str
) -> None:
    (tmp_path / "bigdata.py").write_text(HUGE_SOURCES)
    monkeypatch.setattr(
        "sharpkit.api.datafiles.available_memory", lambda: 2 * GB, raising=False
    )
    try:
        with pytest.raises(sharpkit.DataError) as info:
            load_data(f"{tmp_path / 'bigdata.py'}:{name}")
    finally:
        for mod in [m for m in sys.modules if m.startswith("sharpkit_user_bigdata")]:
            del sys.modules[mod]
    assert says in str(info.value)
    assert "1.0 GiB" in str(info.value)  # the limit: half the memory free


# ---------------------------------------------------------------- image bombs


def _folder_with(tmp_path: Path, odd: tuple[int, int]) -> Path:
    """Six 8x8 grey images in two classes, and one of size ``odd`` (w, h)."""
    from PIL import Image

    folder = tmp_path / "imgs"
    for i in range(6):
        sub = folder / ("a" if i % 2 else "b")
        sub.mkdir(parents=True, exist_ok=True)
        Image.new("L", (8, 8), color=i).save(sub / f"{i}.png")
    Image.new("L", odd).save(folder / "a" / "odd.png")
    return folder


def _count_decoded(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    from sharpkit.api.imagefolder import _ImageReader

    decoded: list[Path] = []
    read = _ImageReader.read

    def counting(self: object, path: Path) -> torch.Tensor:
        decoded.append(path)
        return read(self, path)  # type: ignore[arg-type]

    monkeypatch.setattr(_ImageReader, "read", counting)
    return decoded


@pytest.mark.timeout(120)
def test_a_png_decompression_bomb_is_refused_from_its_header(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 10000 x 10000 black pixels: a 97 KB file that decodes to 100 megapixels.
    # Pillow only warns between 89 and 179 megapixels and decodes them anyway
    # (before: a warning, then 300 MB decoded and resized); with size=8 the
    # folder's other images fit, so only the header can tell
    folder = _folder_with(tmp_path, (10_000, 10_000))
    assert (folder / "a" / "odd.png").stat().st_size < MB
    decoded = _count_decoded(monkeypatch)
    with pytest.raises(sharpkit.DataError, match=r"odd\.png.*decompression bomb"):
        load_data(folder, options={"size": "8"})
    assert decoded == []  # refused before any image was decoded
    line = one_line(cli("measure", "tinynet", "--data", folder, "--no-store"))
    assert "decompression bomb" in line


@pytest.mark.timeout(120)
def test_images_of_another_size_are_refused_before_any_is_decoded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = _folder_with(tmp_path, (16, 8))
    decoded = _count_decoded(monkeypatch)
    with pytest.raises(sharpkit.DataError, match=r"differ in size .*odd\.png.* 8x16"):
        load_data(folder)
    assert decoded == []
    assert len(load_data(folder, options={"size": "8"}).train) == 7  # resized: fine
