"""``sharpkit plot STORE --figure figN -o FILE``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from sharpkit.cli import app
from sharpkit.interfaces import MetricResult, ProbeResult
from sharpkit.store import ResultStore

runner = CliRunner()


@pytest.fixture
def store(tmp_path: Path) -> Path:
    st = ResultStore(tmp_path / "results.zarr")
    for lr, batch in [(0.1, 32), (0.1, 512), (0.01, 32)]:
        st.write_run(
            kind="measure",
            attrs={
                "model": "mlp-bn",
                "dataset": "fashion-mnist",
                "lr": lr,
                "batch_size": batch,
                "checkpoint_sha256": f"{lr}-{batch}",
                "final": {"test_accuracy": 0.85},
            },
            metrics={
                "spectral": MetricResult(value=batch / lr),
                "frobenius": MetricResult(value=2 * batch / lr, stderr=1.0),
            },
        )
    alpha = np.linspace(-1, 2, 13)
    for lr_b, batch_b in [(0.1, 1024), (0.01, 128)]:
        loss = (alpha - 0.5) ** 2
        st.write_run(
            kind="probe",
            attrs={
                "lr": [0.1, lr_b],
                "batch_size": [128, batch_b],
                "dataset": "cifar10",
            },
            probes={
                "interpolate": ProbeResult(
                    coords={"alpha": alpha},
                    arrays={"train_loss": loss, "train_accuracy": np.exp(-loss)},
                    summary={"width_0": 1.0, "width_1": 1.0},
                )
            },
        )
    return st.path


def one_line_error(result: Any) -> str:
    assert result.exit_code == 1, (result.exit_code, result.output)
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error:")
    return lines[0]


@pytest.mark.parametrize(
    ("figure", "suffix"), [("fig1", ".png"), ("fig2", ".pdf"), ("fig3", ".svg")]
)
def test_plot_writes_the_figure(
    store: Path, tmp_path: Path, figure: str, suffix: str
) -> None:
    out = tmp_path / "figs" / f"{figure}{suffix}"
    result = runner.invoke(
        app, ["plot", str(store), "--figure", figure, "-o", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert f"wrote {out}" in result.stdout
    head = out.read_bytes()[:8]
    assert {
        ".png": head == b"\x89PNG\r\n\x1a\n",
        ".pdf": head[:5] == b"%PDF-",
        ".svg": b"<?xml" in out.read_bytes()[:100],
    }[suffix]


def test_plot_filter_and_json(store: Path, tmp_path: Path) -> None:
    out = tmp_path / "f.png"
    result = runner.invoke(
        app,
        [
            "plot",
            str(store),
            "--figure",
            "fig2",
            "-o",
            str(out),
            "--filter",
            "batch_size_b=128",
            "--label",
            "beta",
            "--beta-base",
            "128",
            "--title",
            "mine",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"figure": "fig2", "path": str(out)}
    assert out.stat().st_size > 0


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--figure", "fig4", "-o", "x.png"], "no training runs"),
        (
            ["--figure", "fig2", "-o", "x.png", "--filter", "dataset=mnist"],
            "no interpolate runs",
        ),
        (["--figure", "fig1", "-o", "x.gif"], "image format"),
        (
            ["--figure", "fig1", "-o", "x.png", "--filter", "colour=red"],
            "unknown column",
        ),
    ],
)
def test_plot_bad_input_one_line(
    store: Path, tmp_path: Path, args: list[str], needle: str
) -> None:
    args = [a if a not in ("x.png", "x.gif") else str(tmp_path / a) for a in args]
    err = one_line_error(runner.invoke(app, ["plot", str(store), *args]))
    assert needle in err
    assert not (tmp_path / "x.png").exists()


def test_plot_missing_store(tmp_path: Path) -> None:
    err = one_line_error(
        runner.invoke(
            app,
            [
                "plot",
                str(tmp_path / "nope.zarr"),
                "--figure",
                "fig1",
                "-o",
                str(tmp_path / "a.png"),
            ],
        )
    )
    assert "nope.zarr" in err


def test_plot_unknown_figure_is_a_usage_error(store: Path, tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["plot", str(store), "--figure", "fig9", "-o", str(tmp_path / "a.png")]
    )
    assert result.exit_code == 2
