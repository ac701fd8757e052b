"""Bad checkpoint files: each is refused with one line that says what it is.

Every case is a file made from the tiny trained checkpoint (or from nothing),
read twice: by :func:`sharpkit.load_checkpoint` (the error class) and by
``sharpkit measure`` (one ``error:`` line, no traceback). A batch of several
checkpoints measures the good ones when one of them is bad.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import struct
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from _rel import cli, one_line

import sharpkit
from sharpkit.checkpoint import FORMAT_NAME


def _payload(tiny: Path, **changes: object) -> dict[str, object]:
    obj = torch.load(tiny, weights_only=True)
    obj.pop("train_state", None)
    obj.update(changes)
    return obj


def _save(path: Path, obj: object) -> Path:
    torch.save(obj, path)
    return path


def _meta(value: object) -> Callable[[Path, Path], Path]:
    return lambda tiny, d: _save(d / "m.pt", _payload(tiny, meta=value))


def _meta_field(**fields: object) -> Callable[[Path, Path], Path]:
    def make(tiny: Path, d: Path) -> Path:
        meta = dict(torch.load(tiny, weights_only=True)["meta"])
        meta.update(fields)
        return _save(d / "m.pt", _payload(tiny, meta=meta))

    return make


def _safetensors(header_meta: str | None) -> Callable[[Path, Path], Path]:
    def make(tiny: Path, d: Path) -> Path:
        from safetensors.torch import save_file

        state = sharpkit.load_checkpoint(tiny).state_dict
        path = d / "m.safetensors"
        meta = {"format": FORMAT_NAME}
        if header_meta is not None:
            meta["sharpkit"] = header_meta
        save_file(state, path, metadata=meta)
        return path

    return make


def _bytes(data: bytes, name: str = "x.pt") -> Callable[[Path, Path], Path]:
    def make(tiny: Path, d: Path) -> Path:
        (d / name).write_bytes(data)
        return d / name

    return make


def _cut(fraction: float, suffix: str = ".pt") -> Callable[[Path, Path], Path]:
    def make(tiny: Path, d: Path) -> Path:
        if suffix == ".safetensors":
            src = _safetensors(None)(tiny, d).read_bytes()
        else:
            src = tiny.read_bytes()
        path = d / f"cut{suffix}"
        path.write_bytes(src[: max(1, int(len(src) * fraction))])
        return path

    return make


def _weights(
    fn: Callable[[torch.Tensor], torch.Tensor],
) -> Callable[[Path, Path], Path]:
    def make(tiny: Path, d: Path) -> Path:
        obj = _payload(tiny)
        state = dict(obj["state_dict"])  # type: ignore[call-overload]
        first = next(k for k in state if k.endswith("weight"))
        state[first] = fn(state[first])
        obj["state_dict"] = state
        return _save(d / "w.pt", obj)

    return make


def zip_bomb(tiny: Path, d: Path, *, declared: int = 1 << 30) -> Path:
    """A torch zip archive whose one extra entry inflates ``declared`` zero bytes.

    The deflate stream is one compressed MiB of zeros repeated (each block
    flushed to a byte boundary, so copies can follow each other), written by
    hand: 1 GiB declared in about 1 MiB on disk. Its CRC is left 0: a reader
    checks it only after inflating everything, which is what must not happen.
    """
    path = d / "bomb.pt"
    with zipfile.ZipFile(tiny) as src, zipfile.ZipFile(path, "w") as dst:
        for info in src.infolist():
            dst.writestr(info, src.read(info.filename))
        prefix = src.namelist()[0].split("/")[0]
    chunk = 1 << 20
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = comp.compress(bytes(chunk)) + comp.flush(zlib.Z_FULL_FLUSH)
    tail = comp.flush(zlib.Z_FINISH)
    copies = declared // chunk
    _append_entry(path, f"{prefix}/data/bomb", block, copies, tail, declared, 0)
    return path


def _append_entry(
    path: Path, name: str, block: bytes, copies: int, tail: bytes, size: int, crc: int
) -> None:
    """Append a deflated (zip64) entry to a zip file and rewrite its directory."""
    with zipfile.ZipFile(path) as z:
        entries = z.infolist()
        start_of_cd = z.start_dir
    raw = path.read_bytes()
    body, central = raw[:start_of_cd], raw[start_of_cd:]
    end = central.find(b"PK\x05\x06")
    records = central[:end]
    zip64 = struct.pack("<HHQQ", 1, 16, size, len(block) * copies + len(tail))
    local = (
        struct.pack(
            "<IHHHHHIIIHH", 0x04034B50, 45, 0, 8, 0, 0, crc, 0xFFFFFFFF,
            0xFFFFFFFF, len(name), len(zip64),
        )
        + name.encode()
        + zip64
    )  # fmt: skip
    offset = len(body)
    cd_extra = struct.pack(
        "<HHQQQ", 1, 24, size, len(block) * copies + len(tail), offset
    )
    record = (
        struct.pack(
            "<IHHHHHHIIIHHHHHII", 0x02014B50, 45, 45, 0, 8, 0, 0, crc, 0xFFFFFFFF,
            0xFFFFFFFF, len(name), len(cd_extra), 0, 0, 0, 0, 0xFFFFFFFF,
        )
        + name.encode()
        + cd_extra
    )  # fmt: skip
    with path.open("wb") as fh:
        fh.write(body)
        fh.write(local)
        for _ in range(copies):
            fh.write(block)
        fh.write(tail)
        cd_start = fh.tell()
        fh.write(records + record)
        cd_end = fh.tell()
        n = len(entries) + 1
        fh.write(
            struct.pack(
                "<IQHHIIQQQQ", 0x06064B50, 44, 45, 45, 0, 0, n, n,
                cd_end - cd_start, cd_start,
            )
        )  # fmt: skip
        fh.write(struct.pack("<IIQI", 0x07064B50, 0, cd_end, 1))
        fh.write(
            struct.pack(
                "<IHHHHIIH", 0x06054B50, 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF,
                0xFFFFFFFF, 0,
            )
        )  # fmt: skip


class _Evil:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, ("true",))


def _unsafe(tiny: Path, d: Path) -> Path:
    path = d / "evil.pt"
    with path.open("wb") as fh:
        pickle.dump({"state_dict": {}, "x": _Evil()}, fh, protocol=2)
    return path


# (id, how the file is made, error class, what the one line says)
BAD_CHECKPOINTS: list[tuple[str, Callable[[Path, Path], Path], type, str]] = [
    ("meta-not-a-dict", _meta("notadict"), sharpkit.CorruptCheckpointError,
     r"metadata .*str"),
    ("meta-a-list", _meta([1, 2]), sharpkit.CorruptCheckpointError, r"metadata .*list"),
    ("meta-lr-text", _meta_field(lr="fast"), sharpkit.CorruptCheckpointError,
     r"metadata field 'lr'"),
    ("meta-model-number", _meta_field(model=5), sharpkit.CorruptCheckpointError,
     r"metadata field 'model'"),
    ("meta-options-list", _meta_field(model_options=[1]),
     sharpkit.CorruptCheckpointError, r"metadata field 'model_options'"),
    ("meta-final-text", _meta_field(final={"test_accuracy": "high"}),
     sharpkit.CorruptCheckpointError, r"metadata field 'final'"),
    ("safetensors-meta-list", _safetensors("[1, 2]"), sharpkit.CorruptCheckpointError,
     r"metadata .*list"),
    ("safetensors-meta-not-json", _safetensors("{"), sharpkit.CorruptCheckpointError,
     r"metadata"),
    ("safetensors-truncated", _cut(0.5, ".safetensors"),
     sharpkit.CorruptCheckpointError, r"truncated"),
    ("zip-cut-10-bytes", lambda tiny, d: _bytes(tiny.read_bytes()[:10])(tiny, d),
     sharpkit.CorruptCheckpointError, r"truncated"),
    ("zip-cut-half", _cut(0.5), sharpkit.CorruptCheckpointError, r"truncated"),
    ("zip-cut-last-byte", _cut(0.99999), sharpkit.CorruptCheckpointError, r"truncated"),
    ("empty", _bytes(b""), sharpkit.CorruptCheckpointError, r"empty"),
    ("random-bytes", _bytes(bytes(range(256)) * 40), sharpkit.CorruptCheckpointError,
     r"not a PyTorch checkpoint"),
    ("random-after-pickle-magic", _bytes(b"\x80\x02" + bytes(range(7, 256)) * 9),
     sharpkit.CorruptCheckpointError, r"not a PyTorch checkpoint|damaged"),
    ("text", _bytes(b"hello, I am not a checkpoint\n"), sharpkit.CorruptCheckpointError,
     r"not a PyTorch checkpoint"),
    ("zip-bomb", zip_bomb, sharpkit.CorruptCheckpointError, r"declares .* GB"),
    ("integer-weights", _weights(lambda t: t.round().to(torch.int64)),
     sharpkit.StateDictMismatchError, r"int64.*float32"),
    ("complex-weights", _weights(lambda t: t.to(torch.complex64)),
     sharpkit.StateDictMismatchError, r"complex64.*float32"),
    ("nan-weights", _weights(lambda t: t * float("nan")), sharpkit.DataError,
     r"non-finite"),
    ("unsafe-pickle", _unsafe, sharpkit.UnsafeCheckpointError, r"would load"),
    ("directory", lambda tiny, d: d, sharpkit.CheckpointNotFoundError, r"directory"),
    ("missing", lambda tiny, d: d / "nope.pt", sharpkit.CheckpointNotFoundError,
     r"no such file"),
]  # fmt: skip
# These load as files: what is wrong shows only against the model.
_NEEDS_MODEL = {"integer-weights", "complex-weights", "nan-weights"}


@pytest.mark.parametrize(
    ("make", "error", "says"),
    [c[1:] for c in BAD_CHECKPOINTS],
    ids=[c[0] for c in BAD_CHECKPOINTS],
)
def test_bad_checkpoint_is_one_line(
    make: Callable[[Path, Path], Path],
    error: type,
    says: str,
    tiny: Path,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    path = make(tiny, tmp_path)
    if request.node.callspec.id not in _NEEDS_MODEL:
        with pytest.raises(error, match=says):
            sharpkit.load_checkpoint(path)
    line = one_line(cli("measure", path, "--no-store"))
    assert re.search(says, line), line


def test_bomb_is_refused_before_it_is_read(tiny: Path, tmp_path: Path) -> None:
    import resource

    path = zip_bomb(tiny, tmp_path, declared=3 << 30)  # 3 GiB in ~3 MiB
    assert path.stat().st_size < 8 << 20
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    with pytest.raises(sharpkit.CorruptCheckpointError, match="declares"):
        sharpkit.load_checkpoint(path)
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown < 256 << 10, f"peak memory grew by {grown} KiB"


def test_one_bad_checkpoint_does_not_stop_a_batch(tiny: Path, tmp_path: Path) -> None:
    bad = _meta("notadict")(tiny, tmp_path)
    result = cli("measure", tiny, bad, tiny, "--no-store", "--json")
    line = one_line(result)
    assert str(bad) in line, line
    measured = json.loads(result.stdout)
    assert [m["checkpoint"] for m in measured] == [str(tiny), str(tiny)]


BRACKETED = (
    "run[lr=0.1].pt",
    "a[/].pt",
    "[red]x[/red].pt",
    "b[bold].pt",
    "step:a:b.pt",
)


def test_square_brackets_in_a_path_survive(
    tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    named = tmp_path / "run[lr=0.1].pt"
    named.write_bytes(tiny.read_bytes())
    monkeypatch.chdir(tmp_path)  # the name whole in an 80-column table cell
    table = cli("measure", named.name, "--no-store")
    assert table.exit_code == 0, table.output
    assert "run[lr=0.1].pt" in table.stdout
    for name in BRACKETED:
        line = one_line(cli("measure", tmp_path / "missing" / name, "--no-store"))
        assert name in line, line
