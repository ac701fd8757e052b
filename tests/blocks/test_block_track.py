"""``Tracker(..., blocks=...)``: per-block curves of a training run, and their heat map.

Ground truth: at every measured step, the dense float64 Hessian of the model
as it was then (plain double backward); its diagonal blocks' top eigenvalues
and traces. Tolerances: λ_max to 1e-6 relative (``tol=1e-8`` on each block's
Lanczos bound); block traces exact (the whole trace is exact on a model this
small, so the blocks take the diagonal of the same products: float64
rounding, 1e-8 relative to the largest).
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from block_cases import Problem, bn_mlp, dense_reference
from typer.testing import CliRunner

import sharpkit
from sharpkit.cli import app
from sharpkit.curvature.blocks import resolve_blocks
from sharpkit.errors import ConfigError, DataError


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _train(store: Path | None, steps: int = 4):
    problem = bn_mlp()
    model = problem.model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    snapshots = {}
    tracker = sharpkit.Tracker(
        (problem.x, problem.y), ["spectral", "trace"], every=2, tol=1e-8,
        blocks="layers", store=store,
    )  # fmt: skip
    with tracker:
        for step in range(1, steps + 1):
            loss = problem.loss_fn(model(problem.x), problem.y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if tracker.step(model, step=step) is not None:
                snapshots[step] = copy.deepcopy(model)
    return problem, tracker, snapshots


def test_tracker_records_every_block_at_every_step(tmp_path: Path) -> None:
    problem, tracker, snapshots = _train(tmp_path / "r.zarr")
    curves = tracker.curves
    assert curves["step"].tolist() == [2, 4]
    part = resolve_blocks(problem.model, "layers")
    for i, step in enumerate(curves["step"]):
        then = Problem("then", snapshots[int(step)], problem.loss_fn, problem.x,
                       problem.y)  # fmt: skip
        dense = dense_reference(then)
        for b in part.blocks:
            sub = dense[b.index][:, b.index]
            lam = float(torch.linalg.eigvalsh(sub)[-1])
            got = curves[f"blocks.spectral.{b.name}"][i]
            assert got == pytest.approx(lam, rel=1e-6)
            tr = float(torch.trace(sub))
            scale = float(torch.diagonal(dense).abs().sum())
            assert curves[f"blocks.trace.{b.name}"][i] == pytest.approx(
                tr, abs=1e-8 * scale
            )
    # stored as plain curves of the track run, the blocks named in its attrs
    results = sharpkit.ResultStore(tmp_path / "r.zarr", create=False)
    stored = results.run(results.runs(kind="track")[0].run_id)
    assert stored.attrs["blocks"] == part.names
    assert stored.attrs["block_spec"] == ["layers"]
    np.testing.assert_array_equal(
        stored.training["blocks.spectral.0"], curves["blocks.spectral.0"]
    )


def test_blocks_track_heat_map(tmp_path: Path) -> None:
    store = tmp_path / "r.zarr"
    _train(store)
    out = tmp_path / "heat.png"
    runner = CliRunner()
    result = runner.invoke(
        app, ["plot", str(store), "--figure", "blocks-track", "-o", str(out)]
    )
    assert result.exit_code == 0, result.stderr
    assert out.stat().st_size > 0
    fig = sharpkit.build_figure(store, "blocks-track")
    axes = [ax for ax in fig.axes if ax.get_title()]
    # one heat map per tracked metric: λ_max and the trace
    assert [ax.get_title().split(": ")[1] for ax in axes] == ["λ_max(H_bb)", "tr H_bb"]
    labels = [t.get_text() for t in axes[0].get_yticklabels()]
    assert labels == ["0", "1", "3", "4", "6"]


def test_blocks_track_needs_tracked_blocks(tmp_path: Path) -> None:
    problem = bn_mlp()
    store = tmp_path / "r.zarr"
    with sharpkit.Tracker((problem.x, problem.y), ["spectral"], every=1,
                          store=store) as tracker:  # fmt: skip
        tracker.step(problem.model, step=1)
    with pytest.raises(DataError, match="no tracked runs with per-block curves"):
        sharpkit.build_figure(store, "blocks-track")


def test_tracker_blocks_checked_up_front() -> None:
    problem = bn_mlp()
    with pytest.raises(ConfigError, match="blocks apply to the metrics"):
        sharpkit.Tracker((problem.x, problem.y), ["density"], blocks="layers")
