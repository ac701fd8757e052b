"""Per-block curvature against dense float64 Hessian sub-blocks (plain double backward).

Tolerances:

* exact paths (Lanczos that spans a block, ``H`` applied to the identity) agree
  with the dense reference to ``1e-8`` relative: both are float64 sums of the
  same products in a different order, and the Lanczos tridiagonal's
  eigenvalues carry the rounding of ``m ≤ 600`` reorthogonalised steps;
* stochastic paths are deterministic given the seed and must lie within 4 of
  their own standard errors of the truth (a 4-sigma miss has probability
  ~6e-5 per value for a well-calibrated error).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from block_cases import PROBLEMS, Problem, bn_mlp, conv_net, dense_reference, tied
from torch import nn

from sharpkit.curvature import HessianOperator, frobenius_norm, lanczos
from sharpkit.curvature.block_estimates import (
    block_frobenius,
    block_mass,
    block_spectra,
    block_trace,
)
from sharpkit.curvature.blocks import BlockPartition, resolve_blocks
from sharpkit.errors import ConfigError
from sharpkit.interfaces import DataSplit

EXACT = 1e-8


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _setup(make, spec="layers"):
    problem: Problem = make()
    dense = dense_reference(problem)
    op = HessianOperator(
        problem.model, problem.loss_fn, problem.data, batch_size=problem.batch_size
    )
    part = resolve_blocks(problem.model, spec, params=op.params)
    return problem, dense, op, part


def _sub(dense: torch.Tensor, part: BlockPartition, b: int) -> torch.Tensor:
    idx = part.blocks[b].index
    return dense[idx][:, idx]


@pytest.mark.parametrize("make", PROBLEMS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("method", ["pad", "sub"])
def test_block_top_eigenvalues_match_dense_sub_blocks(make, method):
    _, dense, op, part = _setup(make)
    results = block_spectra(
        op,
        part,
        k=2,
        tol=1e-10,
        method=method,
        generator=torch.Generator().manual_seed(0),
    )
    assert len(results) == len(part) >= 2
    for b, res in enumerate(results):
        truth = torch.linalg.eigvalsh(_sub(dense, part, b)).flip(0).numpy()
        k = len(res.eigenvalues)
        assert k == min(2, part.blocks[b].size)
        scale = max(abs(truth[0]), 1e-12)
        np.testing.assert_allclose(res.eigenvalues, truth[:k], atol=EXACT * scale)
        # the bound covers the error (it is the certificate users read)
        assert np.all(np.abs(res.eigenvalues - truth[:k]) <= res.bounds + EXACT * scale)


def _truth(dense, part):
    tr = np.array([float(torch.trace(_sub(dense, part, b))) for b in range(len(part))])
    fro = np.array(
        [
            float(torch.linalg.matrix_norm(_sub(dense, part, b)))
            for b in range(len(part))
        ]
    )
    return tr, fro, float(torch.linalg.matrix_norm(dense))


@pytest.mark.parametrize("make", PROBLEMS, ids=lambda f: f.__name__)
def test_exact_block_traces_and_frobenius_match_dense(make):
    _, dense, op, part = _setup(make)
    tr = block_trace(op, part, probes=op.n)  # probes >= n: H on the identity
    gen = torch.Generator().manual_seed(0)
    # Lanczos runs that span each block make every block's deflation exact
    spectra = block_spectra(op, part, tol=1e-14, max_iter=op.n, generator=gen)
    assert all(r.process is not None and r.process.exhausted for r in spectra)
    whole = frobenius_norm(op, op.n, deflation_steps=op.n, probes=2, generator=gen)
    fro = block_frobenius(
        op, part, spectra=spectra, whole=(whole.value, whole.stderr), generator=gen
    )
    assert tr.exact
    assert all(e.exhausted for e in fro.blocks)
    assert whole.exhausted
    diag, frob, total_f = _truth(dense, part)
    scale = float(dense.abs().max())
    np.testing.assert_allclose(tr.values, diag, atol=EXACT * scale * op.n)
    # additivity: the block traces sum to tr H
    assert tr.total == pytest.approx(
        float(torch.trace(dense)), abs=EXACT * scale * op.n
    )
    np.testing.assert_allclose(fro.values, frob, rtol=EXACT, atol=EXACT * scale)
    assert fro.whole == pytest.approx(total_f, rel=EXACT)
    off = 1 - float((frob**2).sum()) / total_f**2
    assert fro.off_share == pytest.approx(off, abs=EXACT)
    assert fro.off_share_stderr == 0


@pytest.mark.parametrize("make", [bn_mlp, tied], ids=lambda f: f.__name__)
@pytest.mark.parametrize("sketch", [0, 6])
def test_stochastic_block_trace_within_its_error(make, sketch):
    _, dense, op, part = _setup(make)
    est = block_trace(
        op, part, probes=24, sketch=sketch, generator=torch.Generator().manual_seed(3)
    )
    assert not est.exact
    assert est.n_matvecs == 24 + 2 * sketch
    truth = np.array(
        [float(torch.trace(_sub(dense, part, b))) for b in range(len(part))]
    )
    assert np.all(np.abs(est.values - truth) <= 4 * est.stderrs + 1e-12)
    assert abs(est.total - truth.sum()) <= 4 * est.total_stderr
    # additivity holds probe by probe, not only in expectation
    assert est.total == pytest.approx(float(est.values.sum()), rel=1e-12)


def test_block_trace_is_unbiased():
    """The mean of 40 independent 4-probe estimates is within 4 standard errors."""
    _, dense, op, part = _setup(bn_mlp)
    gen = torch.Generator().manual_seed(11)
    runs = np.stack(
        [block_trace(op, part, probes=4, generator=gen).values for _ in range(40)]
    )
    truth = np.array(
        [float(torch.trace(_sub(dense, part, b))) for b in range(len(part))]
    )
    se = runs.std(axis=0, ddof=1) / np.sqrt(len(runs))
    assert np.all(np.abs(runs.mean(axis=0) - truth) <= 4 * se)


def test_hutchpp_block_trace_is_exact_for_low_rank_hessian():
    """Least squares on 3 examples: rank(H) ≤ 3, so a 4-column sketch spans it."""
    gen = torch.Generator().manual_seed(0)
    model = nn.Linear(10, 1).double()
    x = torch.randn(3, 10, generator=gen, dtype=torch.float64)
    y = torch.randn(3, 1, generator=gen, dtype=torch.float64)
    op = HessianOperator(model, nn.functional.mse_loss, [(x, y)])
    part = resolve_blocks(model, ["w=weight"])
    est = block_trace(op, part, probes=2, sketch=4, generator=gen)
    assert not est.exact
    assert part.names == ["w", "rest"]
    dense = op.to_dense()
    truth = [float(torch.trace(_sub(dense, part, b))) for b in range(2)]
    # rounding only: the remainder probes see (I - QQᵀ) H = 0 to float64 precision
    np.testing.assert_allclose(est.values, truth, rtol=1e-10)
    np.testing.assert_allclose(est.stderrs, 0, atol=1e-10 * max(truth))


@pytest.mark.parametrize("make", [bn_mlp, conv_net, tied], ids=lambda f: f.__name__)
def test_stochastic_block_frobenius_within_its_error(make):
    _, dense, op, part = _setup(make)
    gen = torch.Generator().manual_seed(5)
    est = block_frobenius(op, part, deflation_steps=6, probes=16, generator=gen)
    assert any(not e.exhausted for e in est.blocks)
    _, frob, total = _truth(dense, part)
    assert np.all(np.abs(est.values - frob) <= 4 * est.stderrs + 1e-12)
    assert abs(est.whole - total) <= 4 * est.whole_stderr
    off = 1 - float((frob**2).sum()) / total**2
    assert abs(est.off_share - off) <= 4 * est.off_share_stderr
    assert est.n_matvecs > sum(e.n_matvecs for e in est.blocks)  # the whole, too


@pytest.mark.parametrize("make", PROBLEMS, ids=lambda f: f.__name__)
def test_top_eigenvector_mass_per_block(make):
    _, dense, op, part = _setup(make)
    evals, evecs = torch.linalg.eigh(dense)
    top = evecs[:, -1]
    mass = block_mass(top, part)
    assert mass.sum() == pytest.approx(1.0, abs=1e-12)
    want = [float((top[b.index] ** 2).sum()) for b in part.blocks]
    np.testing.assert_allclose(mass, want, atol=1e-12)
    # from the whole-model Lanczos run: the same shares (the vector's sign cancels)
    res = lanczos(op, op.n, k=2, tol=1e-10, generator=torch.Generator().manual_seed(0))
    both = block_mass(res.eigenvectors, part)
    assert both.shape == (len(part), 2)
    np.testing.assert_allclose(both.sum(axis=0), 1.0, atol=1e-12)
    gap = float(evals[-1] - evals[-2])
    # eigenvector error ~ (residual / gap); the residual is below 1e-10 |λ|
    np.testing.assert_allclose(both[:, 0], want, atol=1e-6 * float(evals[-1]) / gap)


def test_generic_matvec_pads_and_loops():
    """A plain function of vectors works too (``method='pad'``, column loop)."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(9, 9, generator=gen, dtype=torch.float64)
    h = a @ a.T
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))  # 6 + 3 = 9 entries
    part = resolve_blocks(model, "layers")
    res = block_spectra(
        lambda v: h @ v, part, tol=1e-12, generator=gen, vector_dtype=torch.float64
    )
    for b, r in enumerate(res):
        top = float(torch.linalg.eigvalsh(_sub(h, part, b))[-1])
        assert r.eigenvalues[0] == pytest.approx(top, rel=1e-10)
    est = block_trace(lambda v: h @ v, part, probes=9, vector_dtype=torch.float64)
    assert est.exact
    assert est.total == pytest.approx(float(torch.trace(h)), rel=1e-12)
    with pytest.raises(ConfigError, match="needs a HessianOperator"):
        block_spectra(lambda v: h @ v, part, method="sub")
    with pytest.raises(ConfigError, match="probes must be >= 2"):
        block_trace(lambda v: h @ v, part, probes=1)


def test_dataloader_data_and_uneven_batches():
    """Data as a list of uneven batches: the blocks of the size-weighted mean loss."""
    problem = bn_mlp()
    dense = dense_reference(problem)
    batches = [(problem.x[:10], problem.y[:10]), (problem.x[10:], problem.y[10:])]
    op = HessianOperator(problem.model, problem.loss_fn, batches)
    part = resolve_blocks(problem.model, "depth=1", params=op.params)
    res = block_spectra(op, part, tol=1e-10, generator=torch.Generator().manual_seed(0))
    for b, r in enumerate(res):
        top = float(torch.linalg.eigvalsh(_sub(dense, part, b))[-1])
        assert r.eigenvalues[0] == pytest.approx(top, rel=EXACT)
    assert isinstance(problem.data, DataSplit)
