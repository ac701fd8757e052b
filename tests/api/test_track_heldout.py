"""The Tracker hands the held-out examples to its metrics as ``measure`` does (#19).

With ``data_error`` on, each tracked measurement's ``spectral`` carries the
held-out Rayleigh quotient of its eigenvector (``data_lower``), on the same
examples ``measure`` would use (``Selection.rest``), and the curve and the
stored run carry it (``spectral_data_lower``, ``spectral_data_lower_stderr``).
Checked against ``vᵀHv/vᵀv`` of a :class:`~sharpkit.HessianOperator` over those
examples (float64: rel 1e-8, the same quantity by a different product).
"""

from __future__ import annotations

from pathlib import Path

import torch

import sharpkit
from sharpkit._data import DataSplit
from sharpkit.api.job import Selection


def _data(n: int = 600) -> DataSplit:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, 4, generator=gen, dtype=torch.float64)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    return DataSplit(x, y)


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)
    ).double()


def test_tracker_reports_the_heldout_bracket(tmp_path: Path) -> None:
    split = _data()
    store = tmp_path / "r.zarr"
    tracker = sharpkit.Tracker(
        (split.inputs, split.targets), ["spectral"], samples=200, sample="random",
        seed=1, options={"spectral": {"data_error": True}}, store=store,
    )  # fmt: skip
    net = _net()
    row = tracker.step(net, 1, force=True)
    assert row is not None
    assert tracker.last is not None
    attrs = tracker.last["spectral"].attrs
    assert attrs["data_lower_samples"] == 200
    rest = Selection(samples=200, sample="random", seed=1).rest(split, default=None)
    assert rest is not None
    v = tracker.last.warm_start
    assert v is not None
    v = v.reshape(-1).double()
    op = sharpkit.HessianOperator(
        _net(), torch.nn.functional.cross_entropy, rest, batch_size=64
    )
    truth = float(v @ op.matvec(v) / (v @ v))
    assert abs(row["spectral_data_lower"] - truth) <= 1e-8 * abs(truth)
    assert row["spectral_data_lower_stderr"] == attrs["data_lower_stderr"] > 0
    # the same examples as measure takes for the same selection
    m = sharpkit.measure(
        _net(), (split.inputs, split.targets), samples=200, sample="random",
        seed=1, options={"spectral": {"data_error": True}},
    )  # fmt: skip
    assert abs(m["spectral"].attrs["data_lower"] - truth) <= 1e-8 * abs(truth)
    tracker.close()
    rows = sharpkit.open_results(store, kind="track", as_frame=False)
    assert isinstance(rows, list)
    (stored,) = [r for r in rows if r["metric"] == "spectral"]
    assert stored["data_lower"] == row["spectral_data_lower"]


def test_tracker_without_data_error_has_no_bracket() -> None:
    split = _data()
    tracker = sharpkit.Tracker(
        (split.inputs, split.targets), ["spectral"], samples=200, sample="random",
    )  # fmt: skip
    row = tracker.step(_net(), 1, force=True)
    assert row is not None
    assert "spectral_data_lower" not in row
