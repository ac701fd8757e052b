"""``sharpkit measure --blocks``: a table per checkpoint, the whole model beside."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from typer.testing import CliRunner

import sharpkit
from sharpkit.cli import app

runner = CliRunner()


def _checkpoint(tmp_path: Path) -> str:
    import sharpkit.builtin._models as models

    meta = sharpkit.CheckpointMeta(
        model="mlp-bn", model_options={"depth": 2, "width": 6}, dataset="synthetic"
    )
    torch.manual_seed(0)
    net = models.build_mlp_bn(input_shape=(16,), num_classes=4, depth=2, width=6)
    path = tmp_path / "final.pt"
    sharpkit.save_checkpoint(path, net, meta)
    return str(path)


def test_measure_blocks_table_and_json(tmp_path: Path) -> None:
    path = _checkpoint(tmp_path)
    args = ["measure", path, "-m", "spectral", "-m", "trace", "--no-store"]
    args += ["--blocks", "layers", "--samples", "256"]
    result = runner.invoke(app, args, env={"COLUMNS": "120"})
    assert result.exit_code == 0, result.stderr
    out = result.stdout
    assert "final.pt: per block" in out
    assert "whole model" in out
    assert "v₁ mass" in out
    as_json = runner.invoke(app, [*args, "--json"], env={"COLUMNS": "120"})
    assert as_json.exit_code == 0, as_json.stderr
    spectral = json.loads(as_json.stdout)[0]["metrics"]["spectral"]
    names = spectral["attrs"]["blocks"]
    for name in names:
        assert name in out
    lam = spectral["arrays"]["block_value"]
    assert len(lam) == len(names)
    # a diagonal block's top eigenvalue never exceeds the whole Hessian's
    # (Cauchy interlacing), up to the two runs' bounds
    bound = spectral["bound"] + max(spectral["arrays"]["block_bound"])
    assert max(lam) <= spectral["value"] + bound
    assert abs(sum(spectral["arrays"]["block_mass"]) - 1) < 1e-9


def test_measure_bad_blocks_is_one_line(tmp_path: Path) -> None:
    path = _checkpoint(tmp_path)
    args = ["measure", path, "--no-store", "--blocks", "head=nothing"]
    result = runner.invoke(app, args)
    assert result.exit_code != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "matches no parameter name" in lines[0]
    assert "Traceback" not in result.stderr


def test_measure_blocks_table_shows_data_errors(tmp_path: Path) -> None:
    path = _checkpoint(tmp_path)
    args = ["measure", path, "-m", "spectral", "-m", "trace", "--no-store"]
    args += ["--blocks", "layers", "--samples", "256"]
    args += ["-o", "spectral.data_error=true", "-o", "trace.data_error=true"]
    result = runner.invoke(app, [*args, "--json"], env={"COLUMNS": "160"})
    assert result.exit_code == 0, result.stderr
    metrics = json.loads(result.stdout)[0]["metrics"]
    for name in ("spectral", "trace"):
        data = metrics[name]["arrays"]["block_data_stderr"]
        assert len(data) == len(metrics[name]["attrs"]["blocks"])
        assert all(d > 0 for d in data)
    shown = runner.invoke(app, args, env={"COLUMNS": "160"})
    assert shown.exit_code == 0, shown.stderr
    assert "λ_max data ±" in shown.stdout
    assert "trace data ±" in shown.stdout
