"""``sharpkit sweep`` and ``sharpkit reproduce`` through the CLI, on synthetic data."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import sharpkit.reproduce
from sharpkit.cli import app
from sharpkit.reproduce import preset_text
from sharpkit.sweep import SweepConfig, load_sweep

runner = CliRunner()

SMALL_SWEEP = Path(__file__).parents[1] / "data" / "small-sweep.toml"


@pytest.fixture(autouse=True)
def _calibration_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The time prediction's calibration cache stays out of the home folder."""
    monkeypatch.setenv("SHARPKIT_CALIBRATION", str(tmp_path / "calibration.json"))


@pytest.mark.slow
def test_sweep_json_then_resume(tmp_path: Path) -> None:
    shutil.copy(SMALL_SWEEP, tmp_path / "small.toml")
    args = ["sweep", str(tmp_path / "small.toml"), "--json"]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    report = json.loads(first.stdout)
    assert [p["point"] for p in report["points"]] == [
        "lr=0.1 batch_size=16 seed=0",
        "lr=0.02 batch_size=48 seed=0",
    ]
    assert all(p["trained"] and p["fisher-rao"] > 0 for p in report["points"])
    assert "summary" in report["probes"][0]
    again = json.loads(runner.invoke(app, args).stdout)
    assert not any(p["trained"] for p in again["points"])


@pytest.mark.slow
def test_reproduce_runs_the_preset_and_draws_its_figure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shutil.copy(SMALL_SWEEP, tmp_path / "small.toml")
    small = load_sweep(tmp_path / "small.toml")
    asked = {}

    def experiment(
        name: str, *, scale: str, out: Path, epochs: int | None
    ) -> SweepConfig:
        asked.update(name=name, scale=scale, out=out, epochs=epochs)
        return small

    monkeypatch.setattr(sharpkit.reproduce, "experiment", experiment)
    out = tmp_path / "out"
    result = runner.invoke(
        app, ["reproduce", "fig2", "--out", str(out), "--epochs", "1"]
    )
    assert result.exit_code == 0, result.output
    assert asked == {"name": "fig2", "scale": "quick", "out": out, "epochs": 1}
    assert "small" in result.stdout  # the sweep's table
    assert "fisher-rao" in result.stdout  # the store's table
    figures = f"figures: {out / 'fig2.png'}"
    assert figures in " ".join(result.stderr.split())  # rich wraps long lines
    assert (out / "fig2.png").stat().st_size > 10_000


def test_reproduce_show_prints_the_preset_and_runs_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["reproduce", "fig1", "--show", "--scale", "paper"])
    assert result.exit_code == 0, result.output
    assert result.stdout == preset_text("fig1", scale="paper")
    assert list(tmp_path.iterdir()) == []  # nothing ran
    (tmp_path / "fig1.toml").write_text(result.stdout)
    assert load_sweep(tmp_path / "fig1.toml").train["epochs"] == 200


def test_reproduce_show_unknown_scale_is_one_line() -> None:
    result = runner.invoke(app, ["reproduce", "demo", "--show", "--scale", "paper"])
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        "error: experiment 'demo' has no scale 'paper'; one of quick"
    )


def test_device_overrides_the_sweep_files_for_training_and_measuring() -> None:
    from sharpkit.cli._sweep_run import with_device

    cfg = load_sweep(SMALL_SWEEP)
    moved = with_device(cfg, "cpu")
    assert moved.train["device"] == "cpu"
    assert moved.measure is not None
    assert moved.measure["device"] == "cpu"
    # the rest of the sweep (its grid axes) is untouched
    assert {k: v for k, v in moved.train.items() if k != "device"} == {
        k: v for k, v in cfg.train.items() if k != "device"
    }


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("command", ["sweep", "reproduce"])
def test_device_without_cuda_is_one_line_before_anything_runs(
    command: str, tmp_path: Path
) -> None:
    shutil.copy(SMALL_SWEEP, tmp_path / "small.toml")
    target = str(tmp_path / "small.toml") if command == "sweep" else "demo"
    args = [command, target, "--device", "cuda"]
    if command == "reproduce":
        args += ["--out", str(tmp_path / "out")]
    result = runner.invoke(app, args)
    assert result.exit_code == 1
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert lines == [
        "error: device 'cuda' requested but no CUDA device is available; "
        "use --device cpu"
    ]
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_sweep_estimate_then_run_with_prediction_and_disk_sizes(
    tmp_path: Path,
) -> None:
    shutil.copy(SMALL_SWEEP, tmp_path / "small.toml")
    toml = str(tmp_path / "small.toml")
    est = runner.invoke(app, ["sweep", toml, "--estimate", "--json"])
    assert est.exit_code == 0, est.output
    doc = json.loads(est.stdout)
    assert [p["status"] for p in doc["points"]] == ["train", "train"]
    assert all(p["predicted_seconds"] > 0 for p in doc["points"])
    assert doc["remaining_seconds"] == doc["predicted_seconds"] > 0
    assert not (tmp_path / "runs").exists()  # an estimate trains nothing
    run = runner.invoke(app, ["sweep", toml, "--json"])
    assert run.exit_code == 0, run.output
    report = json.loads(run.stdout)
    assert all(p["predicted_seconds"] > 0 for p in report["points"])
    # one checkpoint per point (final.pt), and the sizes are those on disk
    assert report["checkpoints"] == 2
    assert report["store_bytes"] > 0
    assert report["checkpoint_bytes"] >= sum(
        f.stat().st_size for f in (tmp_path / "runs").rglob("final.pt")
    )
    again = json.loads(
        runner.invoke(app, ["sweep", toml, "--estimate", "--json"]).stdout
    )
    assert [p["status"] for p in again["points"]] == ["done", "done"]
    assert again["remaining_seconds"] == 0
    assert all(p["recorded_seconds"] > 0 for p in again["points"])
    off = runner.invoke(app, ["sweep", toml, "--no-predict", "--json"])
    assert off.exit_code == 0, off.output
    assert all(p["predicted_seconds"] is None for p in json.loads(off.stdout)["points"])
