"""The exact-GGN trace split per block, and per-block data standard errors.

Ground truth: dense float64 Hessians by plain double backward
(:func:`block_cases.dense_reference`), of all the data and of each chunk.

Tolerances:

* exact paths (the Gauss-Newton pass, a sketch that spans the whole space)
  agree with the dense sub-block traces to ``1e-10`` relative to the largest
  trace: float64 sums of the same terms in another order (per-example squared
  gradient norms against rows of a double backward), rounding ~1e-15 per term
  over a few hundred terms;
* additivity (blocks against the whole exact trace, chunk by chunk) to
  ``1e-12`` relative: the same float64 numbers summed in another order;
* stochastic paths lie within 4 of their own standard errors of the truth.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from block_cases import Problem, bn_mlp, conv_net, dense_reference, transformer

import sharpkit
from sharpkit.curvature import HessianOperator
from sharpkit.curvature.block_data import chunked_block_trace, exact_block_traces
from sharpkit.curvature.blocks import BlockPartition, resolve_blocks
from sharpkit.curvature.ggn import ggn_block_traces, ggn_trace
from sharpkit.curvature.sampling import ChunkedHessian, linear_estimate
from sharpkit.curvature.uncertainty import exact_trace_estimate

EXACT = 1e-10
ADDITIVE = 1e-12


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _sub_traces(dense: torch.Tensor, part: BlockPartition) -> np.ndarray:
    return np.array([float(torch.diagonal(dense)[b.index].sum()) for b in part.blocks])


def _partition(problem: Problem, spec) -> tuple[BlockPartition, list[torch.Tensor]]:
    params = problem.params()
    return resolve_blocks(problem.model, spec, params=params), params


def _chunk(problem: Problem, lo: int, hi: int) -> Problem:
    return Problem(
        problem.id, problem.model, problem.loss_fn, problem.x[lo:hi], problem.y[lo:hi]
    )


@pytest.mark.parametrize("make", [bn_mlp, conv_net], ids=lambda f: f.__name__)
@pytest.mark.parametrize("spec", ["layers", ["weights=weight$"]])
def test_ggn_trace_splits_exactly_per_block(make, spec):
    problem = make()
    model = problem.model.eval()
    part, params = _partition(problem, spec)
    groups = [[params[i] for i in b.members] for b in part.blocks]
    values, count = ggn_block_traces(
        model, problem.data, groups, batch_size=problem.batch_size
    )
    total, _ = ggn_trace(model, problem.data, batch_size=problem.batch_size)
    assert count == len(problem.x)
    truth = _sub_traces(dense_reference(problem), part)
    np.testing.assert_allclose(values, truth, rtol=0, atol=EXACT * abs(truth).max())
    assert float(values.sum()) == pytest.approx(total, rel=ADDITIVE)


def test_ggn_groups_must_cover_and_not_overlap():
    problem = bn_mlp()
    params = problem.params()
    with pytest.raises(ValueError, match="every trainable parameter"):
        ggn_block_traces(problem.model.eval(), problem.data, [params[:2]])
    with pytest.raises(ValueError, match="two groups"):
        ggn_block_traces(problem.model.eval(), problem.data, [params, params[:1]])


def test_exact_block_data_stderr_matches_dense_chunks():
    problem = bn_mlp()
    model = problem.model.eval()
    part, params = _partition(problem, "layers")
    k, n = 4, len(problem.x)
    split = exact_block_traces(
        model, problem.data, part, params, batch_size=7, chunks=k
    )
    whole = exact_trace_estimate(model, problem.data, chunks=k, batch_size=7)
    assert split.data is not None
    edges = list(itertools.pairwise([n * i // k for i in range(k + 1)]))
    dense_chunks = np.stack(
        [_sub_traces(dense_reference(_chunk(problem, a, b)), part) for a, b in edges]
    )  # (K, B)
    scale = abs(dense_chunks).max()
    for j, est in enumerate(split.data):
        np.testing.assert_allclose(
            est.per_chunk, dense_chunks[:, j], rtol=0, atol=EXACT * scale
        )
        counts = [b - a for a, b in edges]
        want = linear_estimate(dense_chunks[:, j], counts)
        assert est.stderr == pytest.approx(want.stderr, rel=1e-8, abs=EXACT * scale)
    # the blocks' chunk values add up to the whole trace's, chunk by chunk
    summed = np.sum([e.per_chunk for e in split.data], axis=0)
    np.testing.assert_allclose(summed, whole.per_chunk, rtol=ADDITIVE)
    assert split.exact
    assert float(split.values.sum()) == pytest.approx(whole.value, rel=ADDITIVE)


def _chunked(problem: Problem, k: int) -> ChunkedHessian:
    return ChunkedHessian.from_split(
        problem.model.eval(), problem.loss_fn, problem.data, chunks=k
    )


def test_chunked_block_trace_with_a_spanning_sketch_is_exact():
    problem = transformer()
    part, _ = _partition(problem, "layers")
    k, n = 3, len(problem.x)
    chunked = _chunked(problem, k)
    gen = torch.Generator().manual_seed(0)
    # a sketch of n columns spans the space: every chunk's block traces are
    # exact and the (projected-out) probes add only rounding
    est = chunked_block_trace(chunked, part, probes=2, sketch=part.n, generator=gen)
    edges = list(itertools.pairwise([n * i // k for i in range(k + 1)]))
    dense_chunks = np.stack(
        [_sub_traces(dense_reference(_chunk(problem, a, b)), part) for a, b in edges]
    )
    assert est.data is not None
    scale = abs(dense_chunks).max()
    got = np.stack([e.per_chunk for e in est.data], axis=1)
    np.testing.assert_allclose(got, dense_chunks, rtol=0, atol=1e-8 * scale)
    truth = _sub_traces(dense_reference(problem), part)
    np.testing.assert_allclose(est.values, truth, rtol=0, atol=1e-8 * scale)


@pytest.mark.parametrize("sketch", [0, 4])
def test_chunked_block_trace_within_its_error(sketch):
    problem = transformer()
    part, _ = _partition(problem, "layers")
    est = chunked_block_trace(
        _chunked(problem, 4), part, probes=24, sketch=sketch,
        generator=torch.Generator().manual_seed(5),
    )  # fmt: skip
    truth = _sub_traces(dense_reference(problem), part)
    assert not est.exact
    assert est.n_matvecs == 24 + 2 * sketch
    assert np.all(np.abs(est.values - truth) <= 4 * est.stderrs + 1e-12)
    assert est.data_stderrs is not None
    assert np.all(est.data_stderrs > 0)


def test_measure_exact_trace_per_block_with_data_error():
    problem = bn_mlp()
    m = sharpkit.measure(  # exact_max=0: the Gauss-Newton path, not H on the identity
        problem.model, (problem.x, problem.y), metrics=["trace"], blocks="layers",
        options={"trace": {"data_error": True, "exact_max": 0}},
    )  # fmt: skip
    tr = m["trace"]
    assert tr.attrs["method"] == "exact-ggn"
    assert tr.attrs["block_exact"] is True
    part, _ = _partition(problem, "layers")
    truth = _sub_traces(dense_reference(problem), part)
    np.testing.assert_allclose(
        tr.arrays["block_value"], truth, rtol=0, atol=EXACT * abs(truth).max()
    )
    assert np.all(tr.arrays["block_stderr"] == 0)
    assert tr.arrays["block_value"].sum() == pytest.approx(tr.value, rel=ADDITIVE)
    ses = tr.arrays["block_data_stderr"]
    assert ses.shape == (len(part),)
    assert np.all(ses > 0)
    assert tr.attrs["block_data_stderrs"] == pytest.approx(list(ses))


def test_measure_estimated_trace_per_block_with_data_error():
    problem = transformer()  # LayerNorm: no Gauss-Newton identity, estimated
    m = sharpkit.measure(
        problem.model, (problem.x, problem.y), metrics=["trace"], blocks="layers",
        options={"trace": {"data_error": True, "exact_max": 0}},
    )  # fmt: skip
    tr = m["trace"]
    assert tr.attrs["method"] != "exact-ggn"
    part, _ = _partition(problem, "layers")
    truth = _sub_traces(dense_reference(problem), part)
    vals, ses = tr.arrays["block_value"], tr.arrays["block_stderr"]
    assert np.all(np.abs(vals - truth) <= 4 * ses + 1e-12)
    assert np.all(tr.arrays["block_data_stderr"] > 0)


def test_measure_without_data_error_has_no_block_data_stderr():
    problem = transformer()
    op = HessianOperator(problem.model, problem.loss_fn, problem.data)
    assert op.n == resolve_blocks(problem.model, "layers").n
    m = sharpkit.measure(
        problem.model, (problem.x, problem.y), metrics=["trace"], blocks="layers"
    )
    assert "block_data_stderr" not in m["trace"].arrays


def test_measure_exact_whole_trace_gives_exact_block_traces():
    problem = transformer()  # 169 parameters: tr H exactly, H on the identity
    m = sharpkit.measure(
        problem.model, (problem.x, problem.y), metrics=["trace"], blocks="layers"
    )
    tr = m["trace"]
    assert tr.attrs["method"] == "exact"
    assert tr.attrs["block_exact"] is True
    part, _ = _partition(problem, "layers")
    truth = _sub_traces(dense_reference(problem), part)
    np.testing.assert_allclose(
        tr.arrays["block_value"], truth, rtol=0, atol=1e-8 * abs(truth).max()
    )
    assert tr.arrays["block_value"].sum() == pytest.approx(tr.value, rel=1e-8)


def test_chunked_block_spectra_jackknife_matches_dense_chunks():
    from sharpkit.curvature.block_data import chunked_block_spectra
    from sharpkit.curvature.sampling import jackknife

    problem = bn_mlp()
    model = problem.model.eval()
    part, params = _partition(problem, "layers")
    k, n = 4, len(problem.x)
    results, data = chunked_block_spectra(
        model, problem.loss_fn, problem.data, part, params, tol=1e-14,
        max_iter=max(part.sizes), generator=torch.Generator().manual_seed(0),
        chunks=k,
    )  # fmt: skip
    # every run spanned its block: the recorded space is the whole block, so
    # the delete-a-chunk Ritz values are the dense deleted eigenvalues
    assert all(r.process is not None and r.process.exhausted for r in results)
    edges = list(itertools.pairwise([n * i // k for i in range(k + 1)]))
    w = np.array([b - a for a, b in edges], dtype=float)
    w /= w.sum()
    dense_chunks = [dense_reference(_chunk(problem, a, b)) for a, b in edges]
    for j, block in enumerate(part.blocks):
        subs = [d[block.index][:, block.index] for d in dense_chunks]
        full = sum(wi * h for wi, h in zip(w, subs, strict=True))
        lam = float(torch.linalg.eigvalsh(full)[-1])
        deleted = np.array(
            [
                float(torch.linalg.eigvalsh((full - w[i] * subs[i]) / (1 - w[i]))[-1])
                for i in range(k)
            ]
        )
        _, se = jackknife(lam, deleted)
        # Lanczos to exhaustion in float64: eigenvalues to ~1e-10 relative
        assert results[j].eigenvalues[0] == pytest.approx(lam, rel=1e-8)
        assert data[j].stderr == pytest.approx(se, rel=1e-6, abs=1e-10 * lam)


def test_measure_spectral_per_block_with_data_error():
    problem = bn_mlp()
    m = sharpkit.measure(
        problem.model, (problem.x, problem.y), metrics=["spectral"], blocks="layers",
        tol=1e-8, options={"spectral": {"data_error": True}},
    )  # fmt: skip
    sp = m["spectral"]
    assert sp.data_stderr is not None
    part, _ = _partition(problem, "layers")
    dense = dense_reference(problem)
    lam = [float(torch.linalg.eigvalsh(dense[b.index][:, b.index])[-1])
           for b in part.blocks]  # fmt: skip
    # tol=1e-8 on each block's Lanczos bound
    np.testing.assert_allclose(sp.arrays["block_value"], lam, rtol=1e-6)
    ses = sp.arrays["block_data_stderr"]
    assert ses.shape == (len(part),)
    assert np.all(ses > 0)
