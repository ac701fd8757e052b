"""Sweeps and ``reproduce`` store the held-out bracket, as ``measure`` does (#19).

A sweep point is measured by :func:`sharpkit.measure` on its checkpoint, so the
examples its selection left out reach the metrics (``ctx.heldout_data``) and the
stored ``spectral`` result carries ``data_lower``. ``override_measure`` is what
``sharpkit sweep``/``sharpkit reproduce --data-error --sample random`` apply to
the experiment's ``[measure]`` table. Checked against ``measure`` of the same
checkpoint with the same settings (the same computation again: rel 1e-6, float32
products in another process order at most).
"""

from __future__ import annotations

from pathlib import Path

import pytest

import sharpkit
from sharpkit.cli._options import Sample
from sharpkit.cli._selection import override_measure
from sharpkit.sweep import SweepConfig, run_sweep


def test_a_sweep_point_stores_the_heldout_bracket(tmp_path: Path) -> None:
    cfg = SweepConfig.from_dict(
        {
            "sweep": {"name": "t", "out": "runs", "store": "results.zarr"},
            "train": {
                "model": "mlp-bn",
                "model_options": {"depth": 1, "width": 8},
                "data": "synthetic",
                "data_options": {"n_train": 160, "n_test": 32, "shape": "8"},
                "epochs": 1,
                "seed": 0,
                "lr": 0.05,
                "batch_size": 32,
            },
            "measure": {"metrics": ["spectral"], "samples": 64},
        },
        base=tmp_path,
    )
    cfg = override_measure(cfg, sample=Sample.random, data_error=True)
    done = run_sweep(cfg)
    assert not done.failures
    rows = sharpkit.open_results(tmp_path / "results.zarr", as_frame=False)
    assert isinstance(rows, list)
    (row,) = [r for r in rows if r["metric"] == "spectral"]
    assert row["data_lower"] is not None
    assert row["data_lower_stderr"] is not None
    (point,) = done.points
    assert point.checkpoint is not None
    direct = sharpkit.measure(
        point.checkpoint, None, ["spectral"], samples=64, sample="random",
        options={"spectral": {"data_error": True}},
    )  # fmt: skip
    attrs = direct["spectral"].attrs
    assert attrs["data_lower_samples"] == 64
    assert row["data_lower"] == pytest.approx(attrs["data_lower"], rel=1e-6)
