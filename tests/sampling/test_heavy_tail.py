"""λ_max's data error bar at a zero-loss minimum: per-example terms and the tail check.

Near zero training loss the per-example Hessian weight ``p(1-p)`` is tiny for
all but a few examples, so a few examples carry ``vᵀHv`` and no standard error
from a sample can see what the sample lacks. Checked here:

* the per-example terms ``vᵀH_i v`` (one second-order forward pass) against
  plain double backward per example in float64 (rel 1e-10: the same function,
  differentiated two ways, in float64);
* the tail index against generalized Pareto samples of known shape;
* ``spectral``'s ``data_error`` against the engine, its fallback for a loss
  that is not a plain mean, and the held-out lower end;
* honesty (issue 19): over 40 random subsets of a split whose λ_max is known
  exactly, ``value ± 2·data_stderr`` covers it, or the result says it is not
  reliable (and warns): at a zero-loss minimum (where it under-covers and the
  flag is what makes it honest) and at a minimum with loss (where it covers
  at >= 90 % and the flag stays down).
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import pytest
import torch
from cases import Case, bn_mlp, conv_net, mlp
from torch import Tensor, nn

import sharpkit
from sharpkit import (
    DataSplit,
    HessianOperator,
    example_estimate,
    example_rayleigh,
    tail_index,
    tail_limit,
)
from sharpkit.builtin.metrics._spectral import Spectral
from sharpkit.curvature.sampling import sample_indices
from sharpkit.interfaces import AnalysisContext


def _double_backward_terms(case: Case, v: Tensor) -> Tensor:
    """``vᵀH_i v / vᵀv`` per example by plain double backward (ground truth)."""
    params = [p for p in case.model.parameters() if p.requires_grad]
    parts = list(v.split([p.numel() for p in params]))
    out = []
    case.model.eval()
    for x, y in case.data.batches(1):
        loss = case.loss_fn(case.model(x), y)
        grads = torch.autograd.grad(loss, params, create_graph=True)
        dot = sum((g * d.view_as(g)).sum() for g, d in zip(grads, parts, strict=True))
        hv = torch.autograd.grad(dot, params)
        out.append(
            sum((h * d.view_as(h)).sum() for h, d in zip(hv, parts, strict=True))
        )
    return torch.stack(out).detach() / (v @ v)


@pytest.mark.parametrize("case_of", [mlp, bn_mlp, conv_net])
def test_example_terms_are_double_backward(case_of: Any) -> None:
    case = case_of()
    op = HessianOperator(
        case.model, case.loss_fn, case.data, batch_size=case.batch_size
    )
    gen = torch.Generator().manual_seed(1)
    vs = torch.randn(op.n, 2, generator=gen, dtype=torch.float64)
    q = example_rayleigh(op, vs)
    assert q.shape == (len(case.data), 2)
    for j in range(2):
        truth = _double_backward_terms(case, vs[:, j])
        assert torch.allclose(
            q[:, j], truth, rtol=1e-10, atol=1e-12 * truth.abs().max()
        )
        # and their mean is the Rayleigh quotient of the mean loss's Hessian
        ray = float(vs[:, j] @ op.matvec(vs[:, j]) / (vs[:, j] @ vs[:, j]))
        assert float(q[:, j].mean()) == pytest.approx(ray, rel=1e-10)


@pytest.mark.parametrize("shape", [0.2, 0.5, 1.0])
def test_tail_index_recovers_a_pareto_shape(shape: float) -> None:
    # generalized Pareto draws of shape k (inverse CDF); the fit's spread at
    # N = 4000 (189 tail values) is 0.09-0.15 (measured over 200 seeds), so the
    # mean of 20 seeds is within 0.1 of k (3 of its standard errors)
    fits = []
    for seed in range(20):
        u = np.random.default_rng(seed).random(4000)
        fits.append(tail_index((u**-shape - 1) / shape))
    assert abs(float(np.mean(fits)) - shape) < 0.1
    # a light tail reads as about 0 (normal: -0.08 on average, at most 0.12)
    light = tail_index(np.random.default_rng(0).normal(size=4000))
    assert light < tail_limit(4000)
    assert math.isnan(tail_index(np.ones(50)))


def test_tail_limit() -> None:
    assert tail_limit(50) == 0.5
    assert tail_limit(1000) == pytest.approx(1 - 1 / 3)
    assert tail_limit(60_000) == 0.7


def test_example_estimate_is_the_mean_and_its_stderr() -> None:
    q = np.random.default_rng(0).normal(3.0, 2.0, size=500)
    est = example_estimate(q)
    assert est.value == pytest.approx(q.mean(), rel=1e-12)
    # the t widening at 499 degrees of freedom is 1.002
    assert est.stderr == pytest.approx(
        q.std(ddof=1) / math.sqrt(500) * 1.0020, rel=1e-3
    )
    assert est.reliable
    with pytest.raises(sharpkit.ConfigError, match="at least 2"):
        example_estimate(q[:1])


def test_spectral_data_error_is_the_engines() -> None:
    ctx = mlp().context()
    result = Spectral(data_error=True).compute(ctx)
    v = ctx.eigenvectors
    assert v is not None
    est = example_estimate(example_rayleigh(mlp().context().hessian, v)[:, 0])
    assert result.data_method == "per-example"
    assert result.data_stderr == pytest.approx(est.stderr, rel=1e-8)
    assert result.attrs["data_reliable"] is est.reliable
    assert result.attrs["data_jackknife_stderr"] > 0
    assert result.attrs["data_top_share"] == pytest.approx(
        float(est.per_chunk[0]) / (est.value * est.samples), rel=1e-8
    )


def test_a_weighted_loss_falls_back_to_the_jackknife() -> None:
    case = mlp()
    weight = torch.tensor([1.0, 3.0, 0.5], dtype=torch.float64)

    def weighted(out: Tensor, y: Tensor) -> Tensor:
        return nn.functional.cross_entropy(out, y, weight=weight)

    case.loss_fn = weighted
    ctx = case.context()
    with pytest.warns(sharpkit.SharpkitWarning, match="chunk jackknife's"):
        result = Spectral(data_error=True).compute(ctx)
    assert result.data_method == "jackknife-ritz"
    assert result.data_stderr == result.attrs["data_jackknife_stderr"]
    assert "plain mean" in result.attrs["data_terms"]


def test_heldout_lower_end() -> None:
    case = mlp()
    heldout = mlp(seed=5).data  # other examples (the same model: seed 0's)
    ctx = case.context(heldout_data=heldout)
    result = Spectral(data_error=True).compute(ctx)
    v = ctx.eigenvectors[:, 0]
    op = HessianOperator(case.model, case.loss_fn, heldout, batch_size=64)
    truth = float(v @ op.matvec(v) / (v @ v))
    assert result.attrs["data_lower"] == pytest.approx(truth, rel=1e-8)
    assert result.attrs["data_lower_samples"] == len(heldout)
    assert result.attrs["data_lower_stderr"] > 0


# --------------------------------------------------------------------------- honesty

SPLIT = 4000
SAMPLES = 400
SUBSETS = 40


def _trained(separation: float, steps: int) -> tuple[nn.Module, DataSplit]:
    """A 6-12-4 tanh MLP (136 parameters) trained by full-batch Adam, float64."""
    gen = torch.Generator().manual_seed(0)
    means = torch.randn(4, 6, generator=gen, dtype=torch.float64) * separation
    y = torch.randint(0, 4, (SPLIT,), generator=gen)
    x = means[y] + torch.randn(SPLIT, 6, generator=gen, dtype=torch.float64)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 12), nn.Tanh(), nn.Linear(12, 4)).double()
    opt = torch.optim.Adam(net.parameters(), lr=0.05)
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    return net, DataSplit(x, y)


def _subsets(net: nn.Module, split: DataSplit) -> tuple[float, list[dict[str, Any]]]:
    """λ_max of the split (exact) and each random subset's metric result."""
    op = HessianOperator(net, nn.functional.cross_entropy, split, batch_size=SPLIT)
    full = float(torch.linalg.eigvalsh(op.to_dense())[-1])
    rows = []
    for s in range(SUBSETS):
        idx = sample_indices(
            SPLIT, SAMPLES, "random", seed=100 + s, targets=split.targets
        )
        ctx = AnalysisContext(
            model=net, loss_fn=nn.functional.cross_entropy, data=split.take(idx),
            device=torch.device("cpu"), dtype=torch.float64, seed=s, tol=1e-6,
        )  # fmt: skip
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            r = Spectral(data_error=True).compute(ctx)
        said = [w for w in caught if issubclass(w.category, sharpkit.SharpkitWarning)]
        rows.append(
            {"r": r, "warned": any("not reliable" in str(w.message) for w in said)}
        )
    return full, rows


@pytest.mark.slow
def test_zero_loss_error_bar_covers_or_says_so() -> None:
    # 1 500 Adam steps on well-separated classes: train loss 5e-4, accuracy 1;
    # the split's λ_max is 0.43, subsets of 400 give 0.016-1.38, the largest
    # example carries 74 % of vᵀHv (median), tail index 1.95-3.79 (measured)
    net, split = _trained(3.5, 1500)
    with torch.no_grad():
        out = net(split.inputs)
    assert float(nn.functional.cross_entropy(out, split.targets)) < 1e-3
    full, rows = _subsets(net, split)
    covered = [abs(x["r"].value - full) <= 2 * x["r"].data_stderr for x in rows]
    flagged = [not x["r"].attrs["data_reliable"] for x in rows]
    # the regime is the hard one: the bar alone under-covers (measured 75 %;
    # the chunk jackknife's 72 %)
    assert np.mean(covered) < 0.9
    # ...and every subset it misses says so, in its attributes and a warning
    for x, c, f in zip(rows, covered, flagged, strict=True):
        assert c or f
        assert x["warned"] == f
        if f:
            assert x["r"].attrs["data_tail_index"] > x["r"].attrs["data_tail_limit"]


@pytest.mark.slow
def test_error_bar_with_loss_covers_and_stays_unflagged() -> None:
    # 150 steps on overlapping classes: train loss 0.08, accuracy 0.965, tail
    # index -0.24..0.33; measured coverage 100 %, none flagged, stderr / spread
    # 1.13 (the chunk jackknife's: 97.5 %, 1.21)
    net, split = _trained(2.0, 150)
    full, rows = _subsets(net, split)
    values = np.array([x["r"].value for x in rows])
    stderr = np.array([x["r"].data_stderr for x in rows])
    covered = np.abs(values - full) <= 2 * stderr
    flagged = np.array([not x["r"].attrs["data_reliable"] for x in rows])
    assert covered.mean() >= 0.9
    assert flagged.mean() <= 0.1
    # the reported stderr is within 1.5x of the spread across subsets
    assert 1 / 1.5 <= float(stderr.mean() / values.std(ddof=1)) <= 1.5


def test_the_warning_on_a_whole_split_does_not_ask_for_more_samples() -> None:
    # 300 Adam steps on 400 well-separated examples: loss 5e-4, tail index 2.1
    gen = torch.Generator().manual_seed(0)
    means = torch.randn(4, 6, generator=gen, dtype=torch.float64) * 3.5
    y = torch.randint(0, 4, (400,), generator=gen)
    x = means[y] + torch.randn(400, 6, generator=gen, dtype=torch.float64)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 12), nn.Tanh(), nn.Linear(12, 4)).double()
    opt = torch.optim.Adam(net.parameters(), lr=0.05)
    for _ in range(300):
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    data = DataSplit(x, y)
    for train, says in ((data, "this split's value"), (None, "more samples")):
        ctx = AnalysisContext(
            model=net, loss_fn=nn.functional.cross_entropy, data=data,
            train_data=train, device=torch.device("cpu"), dtype=torch.float64,
        )  # fmt: skip
        with pytest.warns(sharpkit.SharpkitWarning, match="not reliable") as said:
            result = Spectral(data_error=True).compute(ctx)
        assert not result.attrs["data_reliable"]
        line = next(str(w.message) for w in said if "not reliable" in str(w.message))
        assert says in line
        assert "\n" not in line
