"""The examples of docs/blocks.md run as written (on a small checkpoint)."""

from __future__ import annotations

import contextlib
import io
import re
import shlex
from pathlib import Path

import torch
from typer.testing import CliRunner

import sharpkit
from sharpkit.cli import app

ROOT = Path(__file__).resolve().parents[2]
PAGE = (ROOT / "docs" / "blocks.md").read_text()


def _code(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", PAGE, flags=re.S)


def _checkpoints(folder: Path) -> None:
    import sharpkit.builtin._models as models

    for name, seed in (("sharp.pt", 0), ("flat.pt", 1)):
        meta = sharpkit.CheckpointMeta(
            model="mlp-bn", model_options={"depth": 2, "width": 6}, dataset="synthetic"
        )
        torch.manual_seed(seed)
        net = models.build_mlp_bn(input_shape=(16,), num_classes=4, depth=2, width=6)
        sharpkit.save_checkpoint(folder / name, net, meta)


def test_blocks_page_examples_run(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    _checkpoints(tmp_path)
    runner = CliRunner()
    first = _code("console")[0]
    for line in first.strip().splitlines():
        argv = shlex.split(line.removeprefix("$ "))
        assert argv[0] == "sharpkit"
        result = runner.invoke(app, argv[1:])
        assert result.exit_code == 0, (line, result.stdout, result.stderr)
    assert (tmp_path / "blocks.png").stat().st_size > 0
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(_code("python")[0], "blocks.md", "exec"), {})
    printed = out.getvalue()
    assert "λ_max(H_bb)" in printed
    assert "off the block diagonal:" in printed
    # the results command of the page shows a row per block
    results = next(b for b in _code("console") if "sharpkit results" in b)
    argv = shlex.split(results.strip().removeprefix("$ "))
    shown = runner.invoke(app, [*argv[1:], "--csv"])
    assert shown.exit_code == 0, shown.stderr
    assert "spectral:" in shown.stdout


def test_probes_per_block_examples_run(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    _checkpoints(tmp_path)
    runner = CliRunner()
    block = next(b for b in _code("console") if "block=fc1" in b)
    for line in block.strip().splitlines():
        argv = [*shlex.split(line.removeprefix("$ ")), "--no-store"]
        assert argv[0] == "sharpkit"
        result = runner.invoke(app, argv[1:])
        assert result.exit_code == 0, (line, result.stdout, result.stderr)
    code = next(c for c in _code("python") if 'options={"block"' in c)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "blocks.md", "exec"), {"sharpkit": sharpkit})
    assert "fc1.weight" in out.getvalue()
