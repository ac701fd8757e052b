"""The held-out end of λ_max's bracket, wired from the selection (issue 19, point 2).

``Selection.rest`` gives examples of the split that the analysis set does not
hold; ``sharpkit.measure`` hands them to the metrics as
``AnalysisContext.heldout_data``, and ``spectral``'s ``data_error`` reports the
Rayleigh quotient of its eigenvector on them (``data_lower``). Checked against
``vᵀHv/vᵀv`` of a :class:`~sharpkit.HessianOperator` over the same held-out
examples (float64: rel 1e-8, the same quantity by a different product).
"""

from __future__ import annotations

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


def _rows(part: DataSplit) -> set[tuple[float, ...]]:
    return {tuple(r.tolist()) for r in part.inputs}


def test_rest_is_disjoint_seeded_and_as_large_as_the_sample() -> None:
    split = _data()
    for how in ("first", "random"):
        sel = Selection(samples=100, sample=how, seed=3)
        picked = sel.pick(split)
        rest = sel.rest(split)
        assert rest is not None
        assert len(rest) == 100
        assert not _rows(picked) & _rows(rest)
        again = sel.rest(split)
        assert again is not None
        assert torch.equal(rest.inputs, again.inputs)
    assert Selection(samples="all").rest(split) is None
    assert Selection(samples=550).rest(split) is not None
    small = Selection(samples=550).rest(split)
    assert small is not None
    assert len(small) == 50  # fewer are left than the sample takes


def test_measure_reports_the_heldout_rayleigh_quotient() -> None:
    split = _data()
    sel = Selection(samples=200, sample="random", seed=1)
    m = sharpkit.measure(
        _net(), (split.inputs, split.targets), samples=200, sample="random",
        seed=1, options={"spectral": {"data_error": True}},
    )  # fmt: skip
    attrs = m["spectral"].attrs
    assert attrs["data_lower_samples"] == 200
    rest = sel.rest(split, default=None)
    assert rest is not None
    v = m.warm_start
    assert v is not None
    v = v.reshape(-1).double()
    op = sharpkit.HessianOperator(
        _net(), torch.nn.functional.cross_entropy, rest, batch_size=64
    )
    truth = float(v @ op.matvec(v) / (v @ v))
    assert abs(attrs["data_lower"] - truth) <= 1e-8 * abs(truth)
    # the full sample's λ_max is the bracket's other end (biased up)
    assert attrs["data_lower"] <= m["spectral"].value + 2 * attrs["data_lower_stderr"]
