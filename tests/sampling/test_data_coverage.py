"""Do the data error bars hold? Coverage of the full-split value over random subsets.

The claim under test (issue 19, point 4): over random subsets of a split,
``estimate ± 2·data_stderr`` covers the value on the *whole split* at least 90 %
of the time for λ_max, ‖H‖_F and tr H, and the reported ``data_stderr`` is
within a factor 1.5 of the actual spread of the estimates across subsets.

Set-up: a float64 tanh MLP (6-8-8-4, 164 parameters) trained to 8 % error on
a 20 000-example split of a 4-class Gaussian mixture. The split is cut into 200
blocks of 100 consecutive examples (the examples are i.i.d., so a random set of
blocks is a random set of examples); each block's Hessian is formed densely
once (``torch.func.hessian``, exact for a net without normalisation layers,
and checked against :class:`~sharpkit.curvature.HessianOperator` over the
whole split). A subset is 16 random blocks (1 600 examples, 8 % of the split),
and the estimators run on it exactly as on a model (Lanczos through a
:class:`~sharpkit.curvature.sampling.ChunkRecorder` at tol 1e-6; the trace and
‖H‖_F with their default probes), each block a chunk, on the blocks' dense
matrices instead of re-running autograd: the estimators are the code under test
(the chunk operators are checked against dense Hessians in ``test_sampling``),
and 100 subsets then take about a second instead of minutes on the CI's 2 cores.
The split's own values are exact (dense eigen-decomposition of the mean).

Measured (these seeds, 100 subsets): coverage λ_max 96 %, ‖H‖_F 93 %, trace
93 %; mean reported stderr over the actual spread of the estimates 1.07, 1.12,
0.98 (the standard errors are widened by t_{0.975,15}/1.96 = 1.09; the
jackknife variance errs high, Efron & Stein, 1981). The thresholds are the
issue's: 90 % and a factor 1.5.

The same at the settings the metrics' ``data_error`` options use (a chunked
Krylov basis of 25 steps and 16 probes for ``frobenius``, 40 steps and 32 probes
for the estimated ``trace``, and ``density``'s per-probe chunks with 4 SLQ
probes, judged against the whole split at the same probes): coverage 93 %, 96 %,
96 %; ratio 1.14, 1.16, 1.22. 100 subsets rather than the issue's minimum of
40 because a miss is then 1 %, not 2.5 %, of the coverage: the test measures the
method, not the luck of 40 draws.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import Tensor, nn
from torch.func import functional_call, hessian

from sharpkit import DataSplit, LanczosProcess, linear_estimate, slq_density
from sharpkit.builtin.metrics._data_error import ProbeChunks
from sharpkit.curvature import HessianOperator, lanczos
from sharpkit.curvature.sampling import ChunkedHessian, ChunkRecorder
from sharpkit.curvature.uncertainty import (
    frobenius_estimate,
    spectral_estimate,
    trace_estimate,
)

SPLIT = 20_000
BLOCK = 100
CHUNKS = 16
SUBSETS = 100


class _Dense:
    """A chunk operator from a dense matrix (the :class:`ChunkOperator` protocol)."""

    def __init__(self, matrix: Tensor, examples: int) -> None:
        self.matrix = matrix
        self.n = matrix.shape[0]
        self.num_examples = examples

    @property
    def dtype(self) -> torch.dtype:
        return self.matrix.dtype

    @property
    def device(self) -> torch.device:
        return self.matrix.device

    def matvec(self, v: Tensor) -> Tensor:
        return self.matrix @ v


def _block_hessians(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def loss(theta: Tensor, xb: Tensor, yb: Tensor) -> Tensor:
        parts = torch.split(theta, [math.prod(s) for s in shapes])
        params = {n: p.view(s) for n, p, s in zip(names, parts, shapes, strict=True)}
        return nn.functional.cross_entropy(functional_call(model, params, (xb,)), yb)

    xs = x.view(-1, BLOCK, x.shape[1])
    ys = y.view(-1, BLOCK)
    per_block = torch.vmap(hessian(loss), in_dims=(None, 0, 0))
    return torch.cat(
        [per_block(flat, xs[i : i + 20], ys[i : i + 20]) for i in range(0, len(xs), 20)]
    )


@pytest.fixture(scope="module")
def split() -> dict:
    """The trained model's dense block Hessians, their mean and its values."""
    gen = torch.Generator().manual_seed(0)
    centers = torch.randn(4, 6, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 4, (SPLIT,), generator=gen)
    x = centers[y] + torch.randn(SPLIT, 6, generator=gen, dtype=torch.float64)
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 4)
    ).double()
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(150):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    blocks = _block_hessians(model, x, y)
    full = blocks.mean(0)
    # ground truth check of the dense blocks: plain double backward over the
    # whole split (one product suffices: H v for a random v), 1e-10 relative
    op = HessianOperator(
        model, nn.functional.cross_entropy, DataSplit(x, y), batch_size=SPLIT
    )
    v = torch.randn(op.n, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(full @ v, op @ v, rtol=1e-10, atol=1e-12)
    truth = {
        "spectral": torch.linalg.eigvalsh(full)[-1].item(),
        "frobenius": torch.linalg.norm(full).item(),
        "trace": torch.trace(full).item(),
    }
    return {"blocks": blocks, "full": full, "truth": truth}


def _subsets(blocks: Tensor) -> list[ChunkedHessian]:
    """The same 100 random 16-block subsets for every fixture (seed 1)."""
    pick = torch.Generator().manual_seed(1)
    out = []
    for _ in range(SUBSETS):
        chosen = torch.randperm(len(blocks), generator=pick)[:CHUNKS]
        out.append(ChunkedHessian([_Dense(blocks[i], BLOCK) for i in chosen]))
    return out


@pytest.fixture(scope="module")
def runs(split: dict) -> dict:
    truth = split["truth"]
    rows: dict[str, list[tuple[float, ...]]] = {k: [] for k in truth}
    for r, chunked in enumerate(_subsets(split["blocks"])):
        rec = ChunkRecorder(chunked)
        lanczos(rec, rec.n, tol=1e-6, generator=torch.Generator().manual_seed(r))
        gen_r = torch.Generator().manual_seed(1000 + r)
        found = {
            "spectral": spectral_estimate(rec, population=SPLIT)[0],
            "frobenius": frobenius_estimate(
                chunked, recorder=rec, generator=gen_r, population=SPLIT
            ),
            "trace": trace_estimate(chunked, recorder=rec, generator=gen_r),
        }
        for k, est in found.items():
            rows[k].append((est.estimate, est.stderr))
    return {"truth": truth, "rows": {k: np.array(v) for k, v in rows.items()}}


@pytest.fixture(scope="module")
def metric_runs(split: dict) -> dict:
    """The metric settings' rows ``(estimate, stderr, truth)`` on the same subsets."""
    rows: dict[str, list[tuple[float, ...]]] = {
        "frobenius@25": [],
        "trace@40": [],
        "density": [],
    }
    for r, chunked in enumerate(_subsets(split["blocks"])):
        _metric_settings(chunked, split["full"], r, rows)
    return {k: np.array(v, dtype=float) for k, v in rows.items()}


def _metric_settings(
    chunked: ChunkedHessian, full: Tensor, r: int, rows: dict[str, list]
) -> None:
    """The estimators as the metrics run them with ``data_error`` (rows: 3 floats).

    ``frobenius``: a chunked Krylov basis of 25 steps and 16 probes; ``trace``
    (hutch++): 40 steps and 32 probes; ``density``: SLQ with 4 probes of 20
    steps, each probe's first product through the chunks
    (:class:`ProbeChunks`), whose truth is the full split's value *at the same
    probes* (its probe noise is ``stderr``, not the data's).
    """
    gen = torch.Generator().manual_seed(2000 + r)
    for name, steps, gram in (("frobenius@25", 25, True), ("trace@40", 40, False)):
        rec = ChunkRecorder(chunked, gram=gram)
        proc = LanczosProcess(rec, rec.n, generator=gen)
        for _ in range(steps):
            proc.step()
        if gram:
            est = frobenius_estimate(
                chunked, recorder=rec, probes=16, generator=gen, population=SPLIT
            )
            rows[name].append((est.estimate, est.stderr, torch.linalg.norm(full)))
        else:
            est = trace_estimate(chunked, recorder=rec, probes=32, generator=gen)
            rows[name].append((est.estimate, est.stderr, torch.trace(full)))
    probes = ProbeChunks(chunked, chunked)  # type: ignore[arg-type]
    seed = torch.Generator().manual_seed(3000 + r)
    slq_density(probes, probes.n, probes=4, steps=20, generator=seed)
    per_chunk = torch.stack(probes.values).mean(0).numpy()
    est = linear_estimate(per_chunk, chunked.weights)
    # the same probes on the whole split: regenerate them (the first draws)
    seed = torch.Generator().manual_seed(3000 + r)
    again = ProbeChunks(_Dense(full, SPLIT), _Whole(full))  # type: ignore[arg-type]
    slq_density(again, again.n, probes=4, steps=20, generator=seed)
    rows["density"].append(
        (est.estimate, est.stderr, float(torch.stack(again.values).mean()))
    )


class _Whole(ChunkedHessian):
    """The whole split as a "chunked" operator of two equal halves of ``full``."""

    def __init__(self, full: Tensor) -> None:
        super().__init__([_Dense(full, SPLIT // 2), _Dense(full, SPLIT // 2)])


@pytest.mark.parametrize("quantity", ["spectral", "frobenius", "trace"])
def test_two_data_stderrs_cover_the_full_split_value(runs: dict, quantity: str) -> None:
    est, se = runs["rows"][quantity].T
    covered = np.abs(est - runs["truth"][quantity]) <= 2 * se
    assert covered.mean() >= 0.90, (quantity, covered.mean())


@pytest.mark.parametrize("quantity", ["spectral", "frobenius", "trace"])
def test_data_stderr_matches_the_spread_across_subsets(
    runs: dict, quantity: str
) -> None:
    est, se = runs["rows"][quantity].T
    ratio = se.mean() / est.std(ddof=1)
    assert 1 / 1.5 <= ratio <= 1.5, (quantity, ratio)


@pytest.mark.slow
@pytest.mark.parametrize("setting", ["frobenius@25", "trace@40", "density"])
def test_metric_settings_cover_and_match_the_spread(
    metric_runs: dict, setting: str
) -> None:
    """As above, at the metrics' own settings (``data_error=True``; ~20 s)."""
    est, se, truth = metric_runs[setting].T
    covered = np.abs(est - truth) <= 2 * se
    assert covered.mean() >= 0.90, (setting, covered.mean())
    ratio = se.mean() / (est - truth).std(ddof=1)
    assert 1 / 1.5 <= ratio <= 1.5, (setting, ratio)
