"""``data_error`` of ``frobenius``, ``trace`` and ``density``: the metric is the engine.

Each metric with ``data_error=True`` must report exactly what the engine
gives on the same inputs (the same chunked Hessian, Krylov steps, probes and
generator): the computation is deterministic, so they agree to rounding (rel
1e-10). Whether the engine's error bars are honest is
``test_data_coverage.py``'s question; the value itself is checked against the
dense Hessian here (the 75-parameter MLP's Krylov basis of 25 or 40 steps, or
all 75, leaves a probe error that the stated numerical stderr bounds).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from cases import bn_mlp, mlp

from sharpkit import (
    LanczosProcess,
    frobenius_estimate,
    linear_estimate,
    slq_density,
    trace_estimate,
)
from sharpkit.builtin.metrics._data_error import ProbeChunks, chunked_krylov
from sharpkit.builtin.metrics._density import Density
from sharpkit.builtin.metrics._frobenius import DATA_PROBES, Frobenius
from sharpkit.builtin.metrics._trace import Trace
from sharpkit.interfaces import AnalysisContext


def _ctx(case_of: Any = mlp, **kw: Any) -> AnalysisContext:
    return case_of().context(**kw)


def _dense(ctx: AnalysisContext) -> torch.Tensor:
    return ctx.hessian.to_dense()


@pytest.mark.parametrize("exact_max", [0, 10_000])
def test_frobenius_data_error_is_the_engines(exact_max: int) -> None:
    result = Frobenius(data_error=True, exact_max=exact_max).compute(_ctx())
    ctx = _ctx()
    steps = 25 if exact_max == 0 else ctx.hessian.n
    chunked, rec = chunked_krylov(ctx, steps, ctx.generator("frobenius"), gram=True)
    est = frobenius_estimate(
        chunked, recorder=rec, probes=DATA_PROBES, generator=ctx.generator("x")
    )
    assert result.data_method == "u-statistic"
    assert result.data_stderr is not None
    assert result.data_stderr > 0
    assert result.hvps == chunked.hvp_count
    assert result.attrs["data_estimate"] < result.value  # the sample's bias is up
    # the same chunks and basis: the U-statistic's deleted values agree exactly
    # when the basis is the whole space (no probe part); else to the probe error
    truth = float(torch.linalg.norm(_dense(_ctx())))
    tol = 1e-10 * truth if exact_max else 4 * (result.stderr or 0.0) + 1e-10 * truth
    assert abs(result.value - truth) <= tol
    if exact_max:
        assert result.data_stderr == pytest.approx(est.stderr, rel=1e-8)
        assert result.attrs["data_estimate"] == pytest.approx(est.estimate, rel=1e-8)


@pytest.mark.parametrize("method", ["hutch++", "hutchinson"])
def test_estimated_trace_data_error_is_the_engines(method: str) -> None:
    result = Trace(method=method, exact_max=0, data_error=True).compute(_ctx())
    ctx = _ctx()
    gen = ctx.generator("trace")
    chunked, rec = chunked_krylov(
        ctx, 0 if method == "hutchinson" else 40, gen, gram=False
    )
    est = trace_estimate(chunked, recorder=rec, probes=32, generator=gen)
    assert result.value == pytest.approx(est.value, rel=1e-10)
    assert result.data_stderr == pytest.approx(est.stderr, rel=1e-10)
    assert result.stderr == pytest.approx(est.numerical_stderr, rel=1e-10)
    assert result.data_method == "jackknife-linear"
    assert result.hvps == chunked.hvp_count
    truth = float(torch.trace(_dense(_ctx())))
    assert abs(result.value - truth) <= 4 * result.stderr + 1e-10 * abs(truth)


def test_density_data_error_is_the_chunks_spread_of_its_own_probes() -> None:
    result = Density(data_error=True, exact_max=0, probes=4, steps=8).compute(_ctx())
    plain = Density(exact_max=0, probes=4, steps=8).compute(_ctx())
    # the same probes (same stream): the chunked first products equal H's to rounding
    assert result.value == pytest.approx(plain.value, rel=1e-9)
    ctx = _ctx()
    chunks = ProbeChunks(ctx.hessian, ctx.chunked_hessian())
    est = slq_density(
        chunks, chunks.n, probes=4, steps=8, generator=ctx.generator("density")
    )
    assert len(chunks.values) == 4  # one start vector per probe, no other product
    per_chunk = torch.stack(chunks.values).mean(0).numpy()
    w = chunks.chunked.weights
    assert float(w @ per_chunk) == pytest.approx(est.trace, rel=1e-10)
    expected = linear_estimate(per_chunk, w)
    assert result.data_stderr == pytest.approx(expected.stderr, rel=1e-10)
    assert result.data_method == "jackknife-linear"
    # the 4 start products go to the chunks instead of H: as many products
    assert result.hvps == plain.hvps


def test_density_exact_path_and_off_by_default_give_no_data_error() -> None:
    assert Density(data_error=True).compute(_ctx()).data_stderr is None
    assert Frobenius().compute(_ctx()).data_stderr is None
    assert Trace(method="hutch++", exact_max=0).compute(_ctx()).data_stderr is None


def test_chunked_krylov_is_orthonormal_and_records_each_chunk() -> None:
    ctx = _ctx(bn_mlp)
    chunked, rec = chunked_krylov(ctx, 12, ctx.generator("k"), gram=True)
    x = rec.inputs
    assert rec.m == 12
    np.testing.assert_allclose((x @ x.T).numpy(), np.eye(12), atol=1e-10)
    assert rec.gram is not None
    proc = LanczosProcess(ctx.hessian, ctx.hessian.n, generator=ctx.generator("k"))
    for _ in range(12):
        proc.step()
    # the chunked operator is ctx.hessian: the same Lanczos run to rounding
    np.testing.assert_allclose(
        torch.tensordot(torch.as_tensor(chunked.weights), rec.projections(), dims=1)
        .diagonal()
        .numpy(),
        np.array(proc.alphas),
        rtol=1e-8,
    )


def test_cli_gives_every_metrics_data_error(tmp_path: Any) -> None:
    """``-o <metric>.data_error=true`` from the command line, in ``--json``."""
    import json

    from typer.testing import CliRunner

    import sharpkit
    import sharpkit.builtin._models as models
    from sharpkit.cli import app

    meta = sharpkit.CheckpointMeta(
        model="mlp-bn", model_options={"depth": 2, "width": 6}, dataset="synthetic"
    )
    torch.manual_seed(0)
    net = models.build_mlp_bn(input_shape=(16,), num_classes=4, depth=2, width=6)
    path = tmp_path / "final.pt"
    sharpkit.save_checkpoint(path, net, meta)
    args = ["measure", str(path), "--no-store", "--json"]
    for name in ("frobenius", "trace", "density", "adaptive"):
        args += ["-m", name, "-o", f"{name}.data_error=true"]
    args += ["-o", "adaptive.kind=average", "-o", "trace.method=hutch++"]
    args += ["-o", "frobenius.exact_max=0", "-o", "trace.exact_max=0"]
    args += ["-o", "density.exact_max=0", "-o", "density.steps=8"]
    out = CliRunner().invoke(app, args)
    assert out.exit_code == 0, out.output
    entry = json.loads(out.stdout)
    entry = entry[0] if isinstance(entry, list) else entry
    for name, method in (
        ("frobenius", "u-statistic"),
        ("trace", "jackknife-linear"),
        ("density", "jackknife-linear"),
        ("adaptive", "jackknife-linear"),
    ):
        got = entry["metrics"][name]
        assert got["data_method"] == method, (name, got)
        assert got["data_stderr"] > 0, (name, got)
    refused = CliRunner().invoke(
        app, ["measure", str(path), "--no-store", "-m", "adaptive",
              "-o", "adaptive.data_error=true"],
    )  # fmt: skip
    assert refused.exit_code != 0
    assert "kind='average'" in refused.output
    assert "Traceback" not in refused.output
