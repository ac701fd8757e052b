"""The paper's experiments as sweeps: every one is well formed and matches the paper."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from sharpkit.errors import ConfigError
from sharpkit.reproduce import EXPERIMENTS, FIGURES, experiment
from sharpkit.sweep import PointOutcome, _match


@pytest.mark.parametrize("name", EXPERIMENTS)
@pytest.mark.parametrize("scale", ["quick", "paper"])
def test_experiments_are_valid_sweeps(name: str, scale: str, tmp_path: Path) -> None:
    try:
        cfg = experiment(name, scale=scale, out=tmp_path)
    except ConfigError:
        assert name == "demo"
        assert scale == "paper"
        return
    points = cfg.points()
    assert points
    assert cfg.store == tmp_path / "results.zarr"
    outcomes = [PointOutcome(p) for p in points]
    for item in cfg.interpolate:  # every endpoint selects exactly one grid point
        assert _match(outcomes, item["a"]) is not _match(outcomes, item["b"])
    assert FIGURES[name]


def test_paper_scale_uses_the_papers_settings(tmp_path: Path) -> None:
    fig1 = experiment("fig1", scale="paper", out=tmp_path)
    lrs = {p.train["lr"] for p in fig1.points()}
    sizes = {p.train["batch_size"] for p in fig1.points()}
    assert min(lrs) == 0.005
    assert max(lrs) == 0.1
    assert min(sizes) == 25
    assert max(sizes) == 1000
    assert all(p.train["epochs"] == 200 for p in fig1.points())
    fig2 = experiment("fig2", scale="paper", out=tmp_path)
    assert {(p.train["lr"], p.train["batch_size"]) for p in fig2.points()} == {
        (0.1, 128),
        (0.1, 1024),
        (0.01, 128),
    }
    assert all(p.train["model_options"] == {"depth": 56} for p in fig2.points())
    fig3 = experiment("fig3", scale="paper", out=tmp_path)
    ratios = {round(p.train["lr"] / p.train["batch_size"], 4) for p in fig3.points()}
    assert ratios == {0.002, 0.0021}  # η = 0.1β, S = 50β; S = 12 for β = 0.25
    fig4 = experiment("fig4", scale="paper", out=tmp_path)
    assert [p.train["lr"] for p in fig4.points()] == [0.1, 0.2, 0.316, 0.5, 1.0, 1.2]
    assert all(p.train["schedule"] == "resnet" for p in fig4.points())


def test_sam_compares_the_trainers_at_equal_eta_over_s(tmp_path: Path) -> None:
    for scale in ("quick", "paper"):
        points = experiment("sam", scale=scale, out=tmp_path).points()
        by_trainer: dict[str, set[tuple[float, int]]] = {}
        for p in points:
            by_trainer.setdefault(p.train["trainer"], set()).add(
                (p.train["lr"], p.train["batch_size"])
            )
        assert set(by_trainer) == {"sgd", "sam"}
        assert by_trainer["sgd"] == by_trainer["sam"]  # every η/S for both
        assert {p.train["model"] for p in points} == {"mlp-bn"}
        assert {p.train["data"] for p in points} == {"fashion-mnist"}
    assert FIGURES["sam"] == ("sam",)


def test_unknown_experiment_and_scale(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown experiment"):
        experiment("fig9", out=tmp_path)
    with pytest.raises(ConfigError, match="no scale"):
        experiment("demo", scale="paper", out=tmp_path)


def test_reproduce_cli_unknown_experiment_is_one_line(tmp_path: Path) -> None:
    from sharpkit.cli import app

    result = CliRunner().invoke(app, ["reproduce", "fig9", "--out", str(tmp_path)])
    assert result.exit_code == 1
    assert result.stderr.strip().startswith("error: unknown experiment 'fig9'")
