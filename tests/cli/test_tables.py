"""Tables fit the terminal and never split a number across lines (issue 26)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import sharpkit
from sharpkit.cli import app

runner = CliRunner()
WIDTHS = (60, 80, 120)
TOKEN = re.compile(r"[-+±]?\d[\d.]*(?:e[-+]?\d+)?")


def _checkpoints(tmp_path: Path) -> list[str]:
    """Two small BN-MLPs under long folder names (long paths must fold, not numbers)."""
    import sharpkit.builtin._models as models

    meta = sharpkit.CheckpointMeta(
        model="mlp-bn", model_options={"depth": 2, "width": 6}, dataset="synthetic"
    )
    paths = []
    for run in ("large-ratio-lr0.1-batch32", "small-ratio-lr0.02-batch512"):
        torch.manual_seed(len(run))
        net = models.build_mlp_bn(input_shape=(16,), num_classes=4, depth=2, width=6)
        path = tmp_path / "runs" / run / "final.pt"
        sharpkit.save_checkpoint(path, net, meta)
        paths.append(str(path))
    return paths


def _tokens(text: str) -> set[str]:
    return set(TOKEN.findall(text))


def _shown(value: float, tokens: set[str], digits: tuple[int, ...] = (6, 4)) -> bool:
    """Whether ``value`` appears whole, at one of the precisions tables use."""
    return any(f"{value:.{d}g}" in tokens for d in digits)


@pytest.mark.parametrize("width", WIDTHS)
def test_measure_table_fits_and_keeps_numbers_whole(tmp_path: Path, width: int) -> None:
    paths = _checkpoints(tmp_path)
    args = ["measure", *paths, "-m", "spectral", "-m", "trace", "--no-store"]
    env = {"COLUMNS": str(width)}
    as_json = runner.invoke(app, [*args, "--json"], env=env)
    assert as_json.exit_code == 0, as_json.stderr
    result = runner.invoke(app, args, env=env)
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert max(len(line) for line in lines) <= width, result.stdout
    tokens = _tokens(result.stdout)
    values = 0
    for entry in json.loads(as_json.stdout):
        for name, metric in entry["metrics"].items():
            assert _shown(metric["value"], tokens), (name, metric, result.stdout)
            values += 1
            lam_min = metric.get("attrs", {}).get("lambda_min")
            if lam_min is not None:
                assert _shown(lam_min, tokens), (lam_min, result.stdout)
            err = metric["stderr"] if metric["stderr"] is not None else metric["bound"]
            if err:  # the ± column: two significant digits
                assert f"±{err:.2g}" in tokens, (err, result.stdout)
    assert values == 4
    if width >= 120:  # room for every column: nothing left out
        assert "not shown" not in result.stdout
        assert "HVPs" in result.stdout


def test_measure_table_leaves_out_columns_it_says(tmp_path: Path) -> None:
    paths = _checkpoints(tmp_path)
    args = ["measure", *paths, "-m", "spectral", "-m", "trace", "--no-store"]
    result = runner.invoke(app, args, env={"COLUMNS": "60"})
    assert result.exit_code == 0, result.stderr
    caption = next(ln for ln in result.stdout.splitlines() if "not shown" in ln)
    assert all(word in caption for word in ("s,", "HVPs", "--json"))
    header = next(ln for ln in result.stdout.splitlines() if "metric" in ln)
    assert all(word in header for word in ("value", "±"))


@pytest.mark.parametrize("width", WIDTHS)
def test_any_table_shortens_stacks_or_drops_but_never_splits(
    width: int, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The shared renderer, on a table too wide for 60 and 80 columns."""
    from sharpkit.cli import _render

    monkeypatch.setenv("COLUMNS", str(width))
    values = [-1.3465612, 27.904812, 0.00041997, 1234567.0, 3e-9]
    rows = [
        {
            "name": f"a/long/path/to/run-{i}/final.pt",
            **{f"c{j}": v for j, v in enumerate(values)},
        }
        for i in range(3)
    ]
    columns = [("name", "checkpoint")] + [
        (f"c{j}", f"column number {j}") for j in range(len(values))
    ]
    _render.print_table(rows, columns, title="a wide table", drop=("c4",))
    out = capsys.readouterr().out
    assert max(len(line) for line in out.splitlines()) <= width, out
    tokens = _tokens(out)
    for v in values[:4]:
        assert _shown(v, tokens), (v, out)
    if not _shown(values[4], tokens):  # left out, and the caption says so
        assert "not shown: column number 4" in out
    # paths stay whole while a column can be left out instead
    assert _shown(values[4], tokens) == (width >= 120)


def test_very_narrow_terminal_stacks_rows(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from sharpkit.cli import _render

    monkeypatch.setenv("COLUMNS", "30")
    rows = [{"epoch": 1, "train_loss": 0.440172, "test_accuracy": 0.8123}]
    columns = [
        ("epoch", "epoch"),
        ("train_loss", "train loss"),
        ("test_accuracy", "x" * 30),
    ]
    _render.print_table(rows, columns)
    out = capsys.readouterr().out
    assert re.search(r"^train loss +0\.4402$", out, flags=re.M), out
    assert all(_shown(v, _tokens(out)) for v in (0.440172, 0.8123))
