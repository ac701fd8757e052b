"""Chunked Hessians and the data standard errors, against exact dense Hessians.

A float64 tanh MLP (no batch norm, so the dense Hessians from plain double
backward are the ground truth) on 400 synthetic examples in 8 chunks: every
chunk's Hessian is formed densely, and each estimator is checked against what
it must equal when the recorded space is the whole parameter space (so there is
no Krylov or probe error left): the delete-a-chunk λ_max, the chunk traces, the
U-statistic of ‖H‖_F². Tolerances are 1e-9 relative: sums of a few hundred
float64 products.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from sharpkit import DataSplit
from sharpkit.curvature import HessianOperator, lanczos
from sharpkit.curvature.sampling import (
    ChunkedHessian,
    ChunkRecorder,
    jackknife,
    linear_estimate,
    sample_indices,
    samples_for_precision,
)
from sharpkit.curvature.stopping import t_factor
from sharpkit.curvature.uncertainty import (
    exact_trace_estimate,
    frobenius_estimate,
    heldout_rayleigh,
    spectral_estimate,
    trace_estimate,
)
from sharpkit.errors import ConfigError

CE = nn.functional.cross_entropy
K = 8


@pytest.fixture(scope="module")
def setup() -> dict:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(400, 4, generator=gen, dtype=torch.float64)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long() + (x[:, 2] > 0.8).long()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    split = DataSplit(x, y)
    chunked = ChunkedHessian.from_split(model, CE, split, chunks=K)
    dense = [op.to_dense() for op in chunked.operators]
    w = chunked.weights
    full = sum(wi * d for wi, d in zip(w, dense, strict=True))
    return {
        "model": model,
        "split": split,
        "chunked": chunked,
        "dense": dense,
        "H": full,
    }


def _everything(chunked: ChunkedHessian) -> ChunkRecorder:
    """A recorder that has seen a basis of the whole space."""
    rec = ChunkRecorder(chunked)
    rec(torch.eye(chunked.n, dtype=torch.float64))
    return rec


def test_chunks_sum_to_the_operator_over_all_the_data(setup: dict) -> None:
    op = HessianOperator(setup["model"], CE, setup["split"], batch_size=64)
    v = torch.randn(
        op.n, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1)
    )
    torch.testing.assert_close(setup["chunked"] @ v, op @ v, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(setup["H"], op.to_dense(), rtol=1e-12, atol=1e-12)
    assert setup["chunked"].num_examples == 400
    assert np.allclose(setup["chunked"].weights, 1 / K)


def test_chunks_of_a_batch_norm_net_in_eval_mode_are_exact() -> None:
    """Eval-mode batch norm: examples do not interact, chunking changes nothing."""
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(96, 4, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (96,), generator=gen)
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3))
    net = net.double()
    net.train()
    net(x)  # running statistics that are not the identity
    net.eval()
    split = DataSplit(x, y)
    chunked = ChunkedHessian.from_split(net, CE, split, chunks=6)
    op = HessianOperator(net, CE, split)
    v = torch.randn(op.n, dtype=torch.float64, generator=gen)
    torch.testing.assert_close(chunked @ v, op @ v, rtol=1e-12, atol=1e-12)
    with pytest.raises(ConfigError, match="bn_mode='eval'"):
        ChunkedHessian.from_split(net, CE, split, chunks=6, bn_mode="train")


def test_recorder_projections_are_the_chunk_hessians(setup: dict) -> None:
    rec = _everything(setup["chunked"])
    c = rec.projections()
    for k, d in enumerate(setup["dense"]):
        torch.testing.assert_close(c[k], d, rtol=1e-10, atol=1e-12)
    dense = setup["dense"]
    gram = torch.tensor(
        [[torch.trace(a @ b).item() for b in dense] for a in dense], dtype=torch.float64
    )
    torch.testing.assert_close(rec.gram, gram, rtol=1e-10, atol=1e-12)


def test_spectral_jackknife_is_the_delete_a_chunk_lambda_max(setup: dict) -> None:
    dense, w, H = setup["dense"], setup["chunked"].weights, setup["H"]
    est = spectral_estimate(_everything(setup["chunked"]), k=2)
    lam = torch.linalg.eigvalsh(H).flip(0)
    deleted = np.array(
        [
            torch.linalg.eigvalsh((H - w[i] * d) / (1 - w[i]))[-1].item()
            for i, d in enumerate(dense)
        ]
    )
    assert est[0].value == pytest.approx(lam[0].item(), rel=1e-10)
    assert est[1].value == pytest.approx(lam[1].item(), rel=1e-10)
    np.testing.assert_allclose(est[0].per_chunk, deleted, rtol=1e-10)
    mean = deleted.mean()
    se = math.sqrt((K - 1) / K * np.sum((deleted - mean) ** 2)) * t_factor(K - 1)
    assert est[0].estimate == pytest.approx(
        K * lam[0].item() - (K - 1) * mean, rel=1e-10
    )
    assert est[0].stderr == pytest.approx(se, rel=1e-10)
    assert est[0].method == "jackknife-ritz"
    assert est[0].chunks == K
    assert est[0].samples == 400


def test_lanczos_through_the_recorder_gives_lambda_max_and_its_jackknife(
    setup: dict,
) -> None:
    """The recorded Krylov space of a converged Lanczos run gives the same
    delete-a-chunk values as the whole space, to within the Lanczos tolerance."""
    rec = ChunkRecorder(setup["chunked"])
    res = lanczos(rec, rec.n, tol=1e-10, generator=torch.Generator().manual_seed(0))
    full = spectral_estimate(_everything(setup["chunked"]))[0]
    krylov = spectral_estimate(rec)[0]
    assert krylov.value == pytest.approx(res.eigenvalues[0], rel=1e-9)
    assert krylov.value == pytest.approx(full.value, rel=1e-8)
    # delete-a-chunk values from the Krylov space are lower bounds (Rayleigh-Ritz);
    # the space holds the top eigenvector to 1e-10, so they agree to second order in
    # the perturbation (1/K of H): 1e-3 relative is far above that and far below
    # the spread (stderr ~ 2 %).
    assert np.all(krylov.per_chunk <= full.per_chunk * (1 + 1e-9))
    np.testing.assert_allclose(krylov.per_chunk, full.per_chunk, rtol=1e-3)
    assert krylov.stderr == pytest.approx(full.stderr, rel=0.05)


def test_heldout_rayleigh_is_the_quotient_on_other_examples(setup: dict) -> None:
    rec = ChunkRecorder(setup["chunked"])
    res = lanczos(rec, rec.n, tol=1e-8, generator=torch.Generator().manual_seed(0))
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(200, 4, generator=gen, dtype=torch.float64)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long() + (x[:, 2] > 0.8).long()
    other = ChunkedHessian.from_split(setup["model"], CE, DataSplit(x, y), chunks=4)
    v = res.eigenvectors[:, 0]
    got = heldout_rayleigh(other, v * 3.0)  # scale does not matter
    h = HessianOperator(setup["model"], CE, DataSplit(x, y)).to_dense()
    assert got.value == pytest.approx(float(v @ h @ v / (v @ v)), rel=1e-10)
    assert got.value <= torch.linalg.eigvalsh(h)[-1].item() + 1e-12
    assert got.method == "heldout-rayleigh"
    assert got.samples == 200


def test_trace_chunks_are_exact_on_a_full_deflation(setup: dict) -> None:
    est = trace_estimate(
        setup["chunked"], recorder=_everything(setup["chunked"]), probes=2
    )
    truth = [torch.trace(d).item() for d in setup["dense"]]
    # the probes are projected off the whole space: nothing is left for them
    np.testing.assert_allclose(est.per_chunk, truth, rtol=1e-10)
    assert est.value == pytest.approx(torch.trace(setup["H"]).item(), rel=1e-10)
    assert est.stderr == pytest.approx(linear_estimate(truth).stderr, rel=1e-10)
    assert est.numerical_stderr < 1e-10


def test_trace_without_deflation_is_hutchinson_per_chunk(setup: dict) -> None:
    """Unbiased: the mean over 10 seeds of 8 probes is within 4 standard errors."""
    values = [
        trace_estimate(
            setup["chunked"], probes=8, generator=torch.Generator().manual_seed(s)
        )
        for s in range(10)
    ]
    truth = torch.trace(setup["H"]).item()
    mean = np.mean([v.value for v in values])
    se = np.std([v.value for v in values], ddof=1) / math.sqrt(len(values))
    assert abs(mean - truth) < 4 * se
    assert all(v.numerical_stderr > 0 for v in values)


def test_exact_trace_chunks_match_the_dense_chunks(setup: dict) -> None:
    """ggn_trace per chunk (tr G != tr H for a tanh net: compare with ggn_trace)."""
    from sharpkit.curvature.ggn import ggn_trace

    est = exact_trace_estimate(setup["model"], setup["split"], chunks=K)
    whole, _ = ggn_trace(setup["model"], setup["split"])
    assert est.value == pytest.approx(whole, rel=1e-10)
    assert est.chunks == K
    assert est.stderr > 0


@pytest.mark.parametrize(
    "form",
    [
        None,
        {"weight": [0.5, 2.0, 1.0], "ignore_index": 1},
        {"label_smoothing": 0.1, "weight": [1.0, 3.0, 0.2]},
    ],
)
def test_exact_trace_chunks_are_each_chunks_own_trace(setup: dict, form: dict) -> None:
    """One pass at any batch size, summed per chunk = ggn_trace of each chunk alone.

    The per-example terms of one pass (batches of 64, across chunk edges) must
    give each chunk's own exact trace, class weights, ``ignore_index`` and label
    smoothing included (each example's weight in the loss does not depend on
    its batch). Rounding: float64 sums of a few hundred terms, rel 1e-10.
    """
    from sharpkit.curvature.ggn import CrossEntropyForm, ggn_trace

    ce = (
        CrossEntropyForm()
        if form is None
        else CrossEntropyForm(
            **{
                k: torch.tensor(v, dtype=torch.float64) if k == "weight" else v
                for k, v in form.items()
            }
        )
    )
    split = setup["split"]
    est = exact_trace_estimate(setup["model"], split, chunks=K, loss=ce, batch_size=64)
    n = len(split)
    own = [
        ggn_trace(
            setup["model"], split.take(torch.arange(n * i // K, n * (i + 1) // K)),
            batch_size=n, loss=ce,
        )[0]
        for i in range(K)
    ]  # fmt: skip
    np.testing.assert_allclose(est.per_chunk, own, rtol=1e-10)
    whole, _ = ggn_trace(setup["model"], split, loss=ce)
    assert est.value == pytest.approx(whole, rel=1e-10)


def test_frobenius_u_statistic_is_the_mean_over_chunk_pairs(setup: dict) -> None:
    dense, H = setup["dense"], setup["H"]
    est = frobenius_estimate(
        setup["chunked"], recorder=_everything(setup["chunked"]), probes=2
    )
    g = np.array([[torch.trace(a @ b).item() for b in dense] for a in dense])
    off = g[~np.eye(K, dtype=bool)]
    assert est.value == pytest.approx(torch.linalg.norm(H).item(), rel=1e-10)
    assert est.estimate == pytest.approx(math.sqrt(off.mean()), rel=1e-10)
    assert est.estimate < est.value  # the sample value is biased upward
    deleted = [
        math.sqrt(
            np.delete(np.delete(g, i, 0), i, 1)[~np.eye(K - 1, dtype=bool)].mean()
        )
        for i in range(K)
    ]
    np.testing.assert_allclose(est.per_chunk, deleted, rtol=1e-10)
    # with the split's size given, the estimate moves towards the sample value
    # by N/M of the removed bias
    split = frobenius_estimate(
        setup["chunked"],
        recorder=_everything(setup["chunked"]),
        probes=2,
        population=800,
    )
    sq = off.mean() + (est.value**2 - off.mean()) * 400 / 800
    assert split.estimate == pytest.approx(math.sqrt(sq), rel=1e-10)


def test_jackknife_of_a_mean_is_the_standard_error() -> None:
    v = np.array([1.0, 2.0, 4.0, 7.0])
    est, se = jackknife(v.mean(), (v.sum() - v) / 3)
    assert est == pytest.approx(v.mean())
    assert se == pytest.approx(v.std(ddof=1) / 2 * t_factor(3))
    with pytest.raises(ConfigError):
        jackknife(1.0, np.array([1.0]))


def test_sample_indices_first_random_and_stratified() -> None:
    targets = torch.tensor([0] * 600 + [1] * 300 + [2] * 100)
    assert torch.equal(sample_indices(1000, 10, "first"), torch.arange(10))
    assert torch.equal(sample_indices(1000, None, "random"), torch.arange(1000))
    a = sample_indices(1000, 101, "random", seed=3, targets=targets)
    b = sample_indices(1000, 101, "random", seed=3, targets=targets)
    c = sample_indices(1000, 101, "random", seed=4, targets=targets)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert len(torch.unique(a)) == 101
    assert bool((a[1:] > a[:-1]).all())
    counts = torch.bincount(targets[a], minlength=3).tolist()
    # shares 60.6, 30.3, 10.1: floors 60, 30, 10, one more to the largest remainder
    assert counts == [61, 30, 10]
    plain = sample_indices(1000, 100, "random", seed=3)  # no labels: uniform
    assert len(torch.unique(plain)) == 100
    with pytest.raises(ConfigError, match="sample must be one of"):
        sample_indices(1000, 10, "last")
    with pytest.raises(ConfigError, match="samples must be >= 1"):
        sample_indices(1000, 0, "first")


def test_samples_for_precision_scales_as_one_over_sqrt_n() -> None:
    est = linear_estimate([9.0, 11.0, 10.0, 10.0], samples=1000)
    rel = est.stderr / est.estimate  # 4.1 % with 4 chunks
    assert samples_for_precision(est, rel / 2) == 4000
    assert samples_for_precision(est, rel * 2) == 1000  # met: never fewer
    with pytest.raises(ConfigError, match="precision must be > 0"):
        samples_for_precision(est, 0.0)


def test_bad_input_is_a_config_error(setup: dict) -> None:
    with pytest.raises(ConfigError, match="at least 2 chunks"):
        ChunkedHessian(setup["chunked"].operators[:1])
    with pytest.raises(ConfigError, match="at least 2 chunks"):
        ChunkedHessian.from_split(setup["model"], CE, setup["split"].head(1))
    rec = ChunkRecorder(setup["chunked"], max_bytes=10)
    rec(torch.ones(setup["chunked"].n, dtype=torch.float64))
    assert not rec.complete
    with pytest.raises(ConfigError, match="not recorded"):
        spectral_estimate(rec)
    with pytest.raises(ConfigError, match="probes must be >= 2"):
        trace_estimate(setup["chunked"], probes=1)


@pytest.mark.parametrize("case_name", ["mlp", "bn_mlp"])
@pytest.mark.parametrize("chunks", [4, 5, 16])
def test_batched_chunk_products_equal_the_per_chunk_operators(
    case_name: str, chunks: int
) -> None:
    """One backward pass for all chunks (vmap over per-chunk parameter copies).

    The same ``H_k v`` as one operator per chunk, to float64 rounding (rel
    1e-12), for a tanh MLP and a BN-ReLU MLP in eval mode, chunks of equal and
    of unequal sizes (37 or 41 examples), vectors and blocks.
    """
    import cases

    case = getattr(cases, case_name)()
    args = (case.model, case.loss_fn, case.data)
    fast = ChunkedHessian.from_split(*args, chunks=chunks, batched=True)
    slow = ChunkedHessian.from_split(*args, chunks=chunks)
    assert fast.batched is not None
    assert slow.batched is None
    gen = torch.Generator().manual_seed(0)
    v = torch.randn(fast.n, 3, generator=gen, dtype=torch.float64)
    want = slow.chunk_products(v)
    got = fast.chunk_products(v)
    assert got.shape == want.shape == (chunks, fast.n, 3)
    scale = float(want.abs().max())
    assert float((got - want).abs().max()) <= 1e-12 * scale
    one = fast.chunk_products(v[:, 0])
    assert float((one - want[:, :, 0]).abs().max()) <= 1e-12 * scale


def test_batched_falls_back_where_chunks_cannot_be_batched() -> None:
    """A weighted loss (chunks weigh their targets' class weights): per chunk."""
    import cases

    case = cases.mlp()
    weighted = nn.CrossEntropyLoss(weight=torch.tensor([1.0, 2.0, 0.5]).double())
    chunked = ChunkedHessian.from_split(
        case.model, weighted, case.data, chunks=4, batched=True
    )
    assert chunked.batched is None
    v = torch.ones(chunked.n, dtype=torch.float64)
    assert torch.isfinite(chunked.chunk_products(v)).all()
