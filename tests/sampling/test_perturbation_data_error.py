"""``data_error`` of ``adaptive`` (average case): do the error bars hold?

Set-up: a float64 tanh MLP (6-16-4) trained on a 4-class Gaussian mixture,
and a split of 24 000 examples cut into 60 *disjoint* subsets of 400. The
metric runs on each subset exactly as a user runs it (its ``compute`` on an
:class:`~sharpkit.interfaces.AnalysisContext` of the subset); the seed is the
same, so the Gaussian draws are too, and the truth is the metric's value on all
24 000 examples at those draws (what ``data_stderr`` claims to be the error
against: the draws' own noise is ``stderr``). The claims, with the issue's
thresholds: ``value ± 2·data_stderr`` covers the truth in at least 90 % of the
subsets, and the mean ``data_stderr`` is within a factor 1.5 of the actual
spread of ``value - truth``. Measured (these seeds): coverage 98 %, ratio 1.23
(the t widening is 1.09; the jackknife errs high).

The worst case has no data error, and this is why (measured on the same
set-up, ρ = 0.05, 8 steps, with the chunks' spread of the loss increase at
the perturbation found, evaluated against the same perturbation on the whole
split): coverage 33 %, bias of the value 0.017 against a mean reported
standard error of 0.007 (the value itself 0.029). The ascent fits the
perturbation to the samples' noise (at a minimum its first-order gain is
``ρ‖|θ| ⊙ ∇L_sample‖``, the sample gradient being pure noise), so the value is
biased upward by more than any chunk spread shows; ``adaptive`` refuses
``data_error`` there (tested below).
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from torch import nn

from sharpkit import ConfigError, DataSplit
from sharpkit.builtin.perturbation import AdaptiveSharpness
from sharpkit.interfaces import AnalysisContext

SPLIT = 24_000
SUBSET = 400
CE = nn.functional.cross_entropy


def _ctx(model: nn.Module, x: torch.Tensor, y: torch.Tensor, **kw) -> AnalysisContext:
    return AnalysisContext(
        model=model,
        loss_fn=CE,
        data=DataSplit(x, y),
        batch_size=len(x),
        device=torch.device("cpu"),
        dtype=torch.float64,
        seed=0,
        **kw,
    )


def _metric(data_error: bool = True) -> AdaptiveSharpness:
    return AdaptiveSharpness(kind="average", rho=0.3, samples=4, data_error=data_error)


@pytest.fixture(scope="module")
def runs() -> np.ndarray:
    gen = torch.Generator().manual_seed(0)
    centers = torch.randn(4, 6, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 4, (SPLIT,), generator=gen)
    x = centers[y] + 1.2 * torch.randn(SPLIT, 6, generator=gen, dtype=torch.float64)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 4)).double()
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(100):
        opt.zero_grad()
        CE(model(x[:4000]), y[:4000]).backward()
        opt.step()
    model.eval()
    truth = _metric(data_error=False).compute(_ctx(model, x, y)).value
    rows = []
    for i in range(SPLIT // SUBSET):
        part = slice(i * SUBSET, (i + 1) * SUBSET)
        result = _metric().compute(_ctx(model, x[part], y[part]))
        assert result.data_stderr is not None
        assert result.data_method == "jackknife-linear"
        rows.append((result.value, result.data_stderr, truth))
    return np.array(rows)


def test_two_data_stderrs_cover_the_whole_split_at_the_same_draws(
    runs: np.ndarray,
) -> None:
    value, se, truth = runs.T
    covered = np.abs(value - truth) <= 2 * se
    assert covered.mean() >= 0.90, covered.mean()


def test_average_case_data_stderr_matches_the_spread(runs: np.ndarray) -> None:
    value, se, truth = runs.T
    ratio = se.mean() / (value - truth).std(ddof=1)
    assert 1 / 1.5 <= ratio <= 1.5, ratio


def test_the_value_is_unchanged_and_the_worst_case_refuses() -> None:
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(64, 6, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 4, (64,), generator=gen)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 4)).double()
    with_error = _metric().compute(_ctx(model, x, y))
    plain = _metric(data_error=False).compute(_ctx(model, x, y))
    # the same draws; the loss summed per chunk instead of per batch (rounding)
    assert with_error.value == pytest.approx(plain.value, rel=1e-10)
    assert with_error.stderr == pytest.approx(plain.stderr, rel=1e-8)
    assert plain.data_stderr is None
    with pytest.raises(ConfigError, match="kind='average'"):
        AdaptiveSharpness(kind="worst", data_error=True)
    with pytest.raises(ConfigError, match="bn_mode"):
        _metric().compute(_ctx(model, x, y, bn_mode="train"))


@pytest.mark.parametrize("batch_size", [7, 64, 1000])
def test_chunk_losses_are_each_chunks_own_mean_loss(batch_size: int) -> None:
    """Batches cut at the chunks' edges: each chunk's loss alone (rel 1e-12)."""
    from sharpkit.builtin._perturber import Perturber

    gen = torch.Generator().manual_seed(4)
    x = torch.randn(100, 6, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 4, (100,), generator=gen)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 4)).double()
    ctx = _ctx(model, x, y)
    ctx.batch_size = batch_size
    losses, sizes = Perturber(ctx).chunk_losses(16)
    edges = [100 * i // 16 for i in range(17)]
    want = [_loss(model, x[a:b], y[a:b]) for a, b in itertools.pairwise(edges)]
    np.testing.assert_allclose(losses, want, rtol=1e-12)
    np.testing.assert_array_equal(sizes, np.diff(edges))
    assert float(sizes @ losses / 100) == pytest.approx(_loss(model, x, y), rel=1e-12)


def _loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float(CE(model(x), y))
