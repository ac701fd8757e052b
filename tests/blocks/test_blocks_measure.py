"""``measure(..., blocks=...)``: per-block arrays along a ``block`` dimension."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import zarr
from block_cases import bn_mlp, dense_reference

import sharpkit
from sharpkit.errors import ConfigError


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _measure(store=None, blocks="layers", metrics=("spectral", "trace", "frobenius")):
    problem = bn_mlp()
    return problem, sharpkit.measure(
        problem.model,
        (problem.x, problem.y),
        metrics=list(metrics),
        tol=1e-8,
        blocks=blocks,
        store=store,
    )


def test_measure_adds_blocks_that_match_the_dense_sub_blocks(tmp_path):
    problem, m = _measure(tmp_path / "r.zarr")
    dense = dense_reference(problem)
    names = m["spectral"].attrs["blocks"]
    assert names == ["0", "1", "3", "4", "6"]
    sizes = m["spectral"].attrs["block_sizes"]
    offsets = np.cumsum([0, *sizes])
    subs = [dense[lo:hi, lo:hi] for lo, hi in itertools.pairwise(offsets)]
    lam = [float(torch.linalg.eigvalsh(h)[-1]) for h in subs]
    # tol=1e-8 on each block's Lanczos run: its bound certifies ~1e-8 relative
    np.testing.assert_allclose(m["spectral"].arrays["block_value"], lam, rtol=1e-6)
    mass = m["spectral"].arrays["block_mass"]
    assert mass.sum() == pytest.approx(1.0, abs=1e-9)
    tr = m["trace"]
    truth = np.array([float(torch.trace(h)) for h in subs])
    assert np.all(
        np.abs(tr.arrays["block_value"] - truth) <= 4 * tr.arrays["block_stderr"] + 1e-9
    )
    fro = m["frobenius"]
    want = np.array([float(torch.linalg.matrix_norm(h)) for h in subs])
    assert np.all(
        np.abs(fro.arrays["block_value"] - want)
        <= 4 * fro.arrays["block_stderr"] + 1e-9 * want
    )
    assert 0 < fro.attrs["off_block_share"] < 1
    # stored along a named `block` dimension (what xarray reads)
    root = zarr.open_group(str(tmp_path / "r.zarr"), mode="r")
    run = root["runs"][m.run_id]
    arr = run["metrics/spectral/block_value"]
    assert arr.metadata.dimension_names == ("block",)
    assert run["metrics/spectral/block_eigenvalues"].metadata.dimension_names[0] == (
        "block"
    )
    assert run["metrics/frobenius"].attrs["blocks"] == names
    # `sharpkit results` / open_results: a row per block, metric:block
    table = sharpkit.open_results(tmp_path / "r.zarr")
    rows = table[table["metric"].str.startswith("spectral:")]
    assert list(rows["metric"]) == [f"spectral:{n}" for n in names]
    np.testing.assert_allclose(rows["value"], m["spectral"].arrays["block_value"])
    np.testing.assert_allclose(rows["bound"], m["spectral"].arrays["block_bound"])
    tr_rows = table[table["metric"].str.startswith("trace:")]
    np.testing.assert_allclose(tr_rows["stderr"], tr.arrays["block_stderr"])


def test_blocks_are_part_of_the_key(tmp_path):
    store = tmp_path / "r.zarr"
    _, first = _measure(store, blocks=None, metrics=("spectral",))
    _, blocked = _measure(store, metrics=("spectral",))
    assert blocked.reused == ()  # not taken for the run without blocks
    assert "block_value" in blocked["spectral"].arrays
    _, again = _measure(store, metrics=("spectral",))
    assert again.reused == ("spectral",)
    np.testing.assert_array_equal(
        again["spectral"].arrays["block_value"],
        blocked["spectral"].arrays["block_value"],
    )
    _, other = _measure(store, blocks="depth=1", metrics=("spectral",))
    assert other.reused == ()
    assert "block_value" not in first["spectral"].arrays


def test_bad_blocks_fail_before_any_work():
    with pytest.raises(ConfigError, match="matches no parameter name"):
        _measure(blocks=["x=nothing"])
    with pytest.raises(ConfigError, match="blocks apply to the metrics"):
        _measure(metrics=("density",))


def test_plot_blocks_figure(tmp_path):
    from sharpkit.errors import DataError
    from sharpkit.plotting import build_figure, plot_figure

    store = tmp_path / "r.zarr"
    _measure(store, blocks=None, metrics=("spectral",))
    with pytest.raises(DataError, match="no per-block results"):
        build_figure(store, "blocks")
    _, m = _measure(store, metrics=("spectral", "frobenius"))
    fig = build_figure(store, "blocks")
    # λ_max, the top eigenvector's shares, ‖H_bb‖_F: one panel each
    assert len(fig.axes) == 3
    bars = fig.axes[0].patches
    np.testing.assert_allclose(
        [b.get_height() for b in bars], m["spectral"].arrays["block_value"]
    )
    assert [t.get_text() for t in fig.axes[-1].get_xticklabels()] == m[
        "spectral"
    ].attrs["blocks"]
    path = plot_figure(store, "blocks", tmp_path / "blocks.png")
    assert path.stat().st_size > 0
