"""``plot --figure fig1`` draws the data's error bars when the store holds them (#19).

Two small checkpoints (different η/S) measured with ``-o
spectral.data_error=true`` into a store; the figure built from that store must
draw, on the λ_max panel, one error bar per point whose half-length is the
stored ``data_stderr`` (in quadrature with the numerical standard error, none
for λ_max), and say what the bars are.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from matplotlib.container import ErrorbarContainer
from typer.testing import CliRunner

import sharpkit
from sharpkit.cli import app
from sharpkit.plotting import build_figure
from sharpkit.plotting.sharpness import DATA_NOTE

runner = CliRunner()


def _checkpoints(tmp_path: Path) -> list[Path]:
    import sharpkit.builtin._models as models

    out = []
    for lr, batch in ((0.1, 32), (0.01, 256)):
        torch.manual_seed(int(lr * 100) + batch)
        net = models.build_mlp_bn(input_shape=(16,), num_classes=4, depth=2, width=6)
        meta = sharpkit.CheckpointMeta(
            model="mlp-bn",
            model_options={"depth": 2, "width": 6},
            dataset="synthetic",
            lr=lr,
            batch_size=batch,
        )
        path = tmp_path / f"lr{lr}-S{batch}.pt"
        sharpkit.save_checkpoint(path, net, meta)
        out.append(path)
    return out


def _bars(ax: Any) -> list[tuple[float, float, float]]:
    """``(x, y, half-length)`` of every vertical error bar drawn on ``ax``."""
    found = []
    for container in ax.containers:
        if not isinstance(container, ErrorbarContainer) or not container.has_yerr:
            continue
        for segment in container.lines[2][0].get_segments():
            (x, lo), (_, hi) = segment
            found.append((float(x), (lo + hi) / 2, (hi - lo) / 2))
    return sorted(found)


def test_fig1_has_data_error_bars(tmp_path: Path) -> None:
    store = tmp_path / "r.zarr"
    ckpts = _checkpoints(tmp_path)
    args = ["measure", *map(str, ckpts), "--store", str(store), "--samples", "512"]
    plain = runner.invoke(app, args)
    assert plain.exit_code == 0, plain.stderr
    before = build_figure(sharpkit.open_results(store, as_frame=False), "fig1")
    assert _bars(before.axes[0]) == []  # λ_max alone: a bound of ~0, no bars
    assert before.get_supxlabel() == ""
    with_data = runner.invoke(app, [*args, "-o", "spectral.data_error=true"])
    assert with_data.exit_code == 0, with_data.stderr
    rows = sharpkit.open_results(store, as_frame=False)
    stored = {
        r["lr_over_batch"]: r["data_stderr"]
        for r in rows
        if r["metric"] == "spectral" and r["data_stderr"] is not None
    }
    assert len(stored) == 2
    fig = build_figure(rows, "fig1")
    bars = _bars(fig.axes[0])
    assert [b[0] for b in bars] == pytest.approx(sorted(stored))
    # the bar is ±1 standard error: the data's (λ_max has no numerical stderr)
    for x, _, half in bars:
        assert half == pytest.approx(stored[min(stored, key=lambda k: abs(k - x))])
        assert half > 0
    assert fig.get_supxlabel() == DATA_NOTE
    # from the command line too: the file is written
    png = tmp_path / "fig1.png"
    done = runner.invoke(
        app, ["plot", str(store), "--figure", "fig1", "--output", str(png)]
    )
    assert done.exit_code == 0, done.output
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_numerical_and_data_errors_add_in_quadrature() -> None:
    from sharpkit.plotting.sharpness import _error

    assert _error({"stderr": 3.0, "data_stderr": 4.0}) == 5.0
    assert _error({"stderr": None, "data_stderr": 4.0}) == 4.0
    assert _error({"stderr": 2.0}) == 2.0
    assert _error({}) is None
    assert math.isclose(_error({"stderr": 0.0, "data_stderr": 0.5}) or 0, 0.5)
