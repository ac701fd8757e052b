"""``data_stderr``: the ``spectral`` metric, the store, ``--json``, the tables (#19).

The metric's number is checked against the engine run by hand on the same
inputs (same chunks, same generator, same Lanczos settings): the computation
is deterministic, so they agree to rounding (rel 1e-10). The store keeps the
float as JSON, so it reads back exactly.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from cases import bn_mlp, mlp
from typer.testing import CliRunner

import sharpkit
from sharpkit import (
    ChunkRecorder,
    example_estimate,
    example_rayleigh,
    lanczos,
    spectral_estimate,
)
from sharpkit.builtin.metrics._spectral import BLOCK, Spectral
from sharpkit.cli import app
from sharpkit.interfaces import AnalysisContext, MetricResult
from sharpkit.store import ResultStore, open_results

runner = CliRunner()


def _ctx(case_of: Any = mlp) -> AnalysisContext:
    return case_of().context()


def test_spectral_data_stderr_is_the_engines() -> None:
    result = Spectral(data_error=True).compute(_ctx())
    ctx = _ctx()
    chunked = ctx.chunked_hessian()
    assert chunked.chunks >= 2
    rec = ChunkRecorder(chunked)
    gen = ctx.generator("spectral")
    res = lanczos(
        rec, rec.n, k=1, which="largest", tol=ctx.tol, generator=gen,
        bound="gap", block=BLOCK,
    )  # fmt: skip
    est = spectral_estimate(rec)[0]
    terms = example_estimate(example_rayleigh(ctx.hessian, res.eigenvectors)[:, 0])
    assert result.value == pytest.approx(float(res.eigenvalues[0]), rel=1e-10)
    # the per-example terms' error bar; the chunk jackknife's beside it
    assert result.data_stderr == pytest.approx(terms.stderr, rel=1e-10)
    assert result.attrs["data_jackknife_stderr"] == pytest.approx(est.stderr, rel=1e-10)
    assert result.attrs["data_estimate"] == pytest.approx(est.estimate, rel=1e-10)
    assert result.data_stderr is not None
    assert result.data_stderr > 0
    assert result.data_method == "per-example"
    assert result.hvps == chunked.hvp_count
    # off by default: no data error, as before
    assert Spectral().compute(_ctx()).data_stderr is None


def test_data_error_refuses_power_iteration() -> None:
    with pytest.raises(sharpkit.ConfigError, match="data_error"):
        Spectral(method="power", data_error=True)


def test_stored_read_back_and_shown(tmp_path: Path) -> None:
    store = ResultStore(tmp_path / "r.zarr")
    store.write_run(
        kind="measure",
        attrs={"model": "mlp", "dataset": "synthetic"},
        metrics={
            "spectral": MetricResult(
                value=258.8, bound=0.002, data_stderr=21.7, data_method="jackknife-ritz"
            ),
            "trace": MetricResult(value=3.0, stderr=0.1),  # no data error: None
        },
    )
    back = store.run(store.runs()[0].run_id).metrics
    assert back["spectral"].data_stderr == 21.7
    assert back["spectral"].data_method == "jackknife-ritz"
    assert back["trace"].data_stderr is None
    assert back["trace"].data_method is None
    rows = {r["metric"]: r for r in open_results(store.path).to_dict("records")}
    assert rows["spectral"]["data_stderr"] == 21.7
    assert np.isnan(rows["trace"]["data_stderr"])  # pandas: a missing float is NaN
    out = runner.invoke(app, ["results", str(store.path)], env={"COLUMNS": "200"})
    assert out.exit_code == 0, out.output
    assert "± data" in out.stdout
    assert "21.7" in out.stdout
    as_json = runner.invoke(app, ["results", str(store.path), "--json"])
    assert {r["metric"]: r["data_stderr"] for r in json.loads(as_json.stdout)} == {
        "spectral": 21.7,
        "trace": None,
    }


def test_old_store_without_the_field_reads_as_none(tmp_path: Path) -> None:
    """A metric group as written before #19 (no data_stderr / data_method)."""
    import zarr

    from sharpkit.store.encoding import metric_from_group

    group = zarr.open_group(str(tmp_path / "old.zarr"), mode="w")
    group.attrs.update(
        {"metric": "spectral", "value": 1.5, "stderr": None, "bound": 0.01,
         "converged": True, "hvps": 9, "seconds": 0.1, "result_attrs": {},
         "arrays": []}
    )  # fmt: skip
    back = metric_from_group("spectral", group)
    assert back.value == 1.5
    assert back.bound == 0.01
    assert back.data_stderr is None
    assert back.data_method is None


def test_cli_measure_json_and_table(tmp_path: Path) -> None:
    import sharpkit.builtin._models as models

    meta = sharpkit.CheckpointMeta(
        model="mlp-bn", model_options={"depth": 2, "width": 6}, dataset="synthetic"
    )
    torch.manual_seed(0)
    net = models.build_mlp_bn(input_shape=(16,), num_classes=4, depth=2, width=6)
    path = tmp_path / "final.pt"
    sharpkit.save_checkpoint(path, net, meta)
    store = tmp_path / "r.zarr"
    args = ["measure", str(path), "-m", "spectral", "-o", "spectral.data_error=true"]
    # the option is part of the reuse key: a plain spectral stored first is not reused
    plain = runner.invoke(app, [*args[:4], "--store", str(store)])
    assert plain.exit_code == 0, plain.output
    out = runner.invoke(app, [*args, "--store", str(store), "--json"])
    assert out.exit_code == 0, out.output
    entry = json.loads(out.stdout)
    entry = entry[0] if isinstance(entry, list) else entry
    spectral = entry["metrics"]["spectral"]
    assert spectral["data_method"] == "per-example"
    assert spectral["data_stderr"] > 0
    assert spectral["reused"] is False
    rows = [
        r for r in open_results(store).to_dict("records") if r["metric"] == "spectral"
    ]
    assert (
        sorted(rows, key=lambda r: r["time"])[-1]["data_stderr"]
        == (spectral["data_stderr"])
    )
    for width in ("60", "80", "120"):
        table = runner.invoke(app, [*args, "--no-store"], env={"COLUMNS": width})
        assert table.exit_code == 0, table.output
        assert f"±{spectral['data_stderr']:.2g}" in table.stdout or width == "60"


def test_exact_trace_data_stderr_is_the_engines() -> None:
    """The exact-ggn trace per chunk: equal to the engine's to rounding (rel 1e-10)."""
    from sharpkit import exact_trace_estimate
    from sharpkit.builtin.metrics._engine import cross_entropy_form
    from sharpkit.builtin.metrics._trace import Trace

    ctx = _ctx(bn_mlp)  # ReLU + eval-mode BN: the identity holds
    result = Trace(method="exact-ggn", exact_max=0, data_error=True).compute(ctx)
    plain = Trace(method="exact-ggn", exact_max=0).compute(_ctx(bn_mlp))
    form, _ = cross_entropy_form(ctx.loss_fn)
    est = exact_trace_estimate(ctx.model, ctx.data, loss=form)
    assert result.data_method == "jackknife-linear"
    assert result.data_stderr == pytest.approx(est.stderr, rel=1e-10)
    assert result.data_stderr > 0
    # the value is the same exact trace, summed chunk by chunk (rounding: 1e-10)
    assert result.value == pytest.approx(plain.value, rel=1e-10)
    assert plain.data_stderr is None
