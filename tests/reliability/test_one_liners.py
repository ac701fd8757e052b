"""Inputs accepted silently or with a traceback before (issue 21, section 5).

Each is now one ``error:`` line: a checkpoint damaged on disk (its zip CRC no
longer matches: λ_max 3.4e35 was printed as a result), and weights stored as
sparse or meta tensors.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from _rel import cli, one_line

from sharpkit.checkpoint import FORMAT_NAME, load_checkpoint


def _payload(tiny: Path, state: dict[str, torch.Tensor]) -> dict[str, object]:
    meta = load_checkpoint(tiny).meta
    return {
        "format": FORMAT_NAME,
        "format_version": 1,
        "state_dict": state,
        "meta": meta.to_dict(),
    }


def test_a_checkpoint_damaged_on_disk_is_refused(tiny: Path, tmp_path: Path) -> None:
    ckpt = load_checkpoint(tiny)
    state = {k: v.clone() for k, v in ckpt.state_dict.items()}
    name = next(k for k, v in state.items() if v.is_floating_point() and v.numel() > 64)
    state[name] = torch.full_like(state[name], 0.123456789)
    path = tmp_path / "damaged.pt"
    torch.save(_payload(tiny, state), path)
    raw = bytearray(path.read_bytes())
    pattern = torch.tensor([0.123456789] * 4).numpy().tobytes()
    at = bytes(raw).find(pattern)
    assert at > 0
    raw[at + 3] ^= 0x7F  # one byte of one weight, as a bad disk sector would
    path.write_bytes(bytes(raw))
    line = one_line(cli("measure", path, "--no-store"))
    assert "CRC-32" in line
    assert "damaged" in line


@pytest.mark.parametrize("kind", ["sparse", "meta"])
def test_weights_without_dense_values_are_one_line(
    tiny: Path, tmp_path: Path, kind: str
) -> None:
    state = load_checkpoint(tiny).state_dict
    convert = (
        (lambda t: t.to_sparse()) if kind == "sparse" else (lambda t: t.to("meta"))
    )
    path = tmp_path / f"{kind}.pt"
    torch.save(_payload(tiny, {k: convert(v) for k, v in state.items()}), path)
    line = one_line(cli("measure", path, "--no-store"))
    assert "re-save them dense" in line
