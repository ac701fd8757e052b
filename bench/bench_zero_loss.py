"""λ_max's data error bar at a trained zero-loss minimum (issue 19): diagnosis and cost.

Usage::

    python bench/bench_zero_loss.py CHECKPOINT diagnose [draws]   # per-example terms
    python bench/bench_zero_loss.py CHECKPOINT cost [reps]        # CPU-time ratios

``CHECKPOINT`` is a trained model (the issue's: ``mlp-bn`` on Fashion-MNIST,
η = 0.005, S = 50, 200 epochs, train accuracy 1.0). Each draw is a seeded,
class-stratified random 2 048 of the 60 000 training images.

``diagnose`` runs ``spectral`` with ``data_error`` on each draw, with 2 048
other random training images as :attr:`~sharpkit.AnalysisContext.heldout_data`,
and prints λ_max, the per-example and the chunk-jackknife standard errors, the
tail index and the largest example's share of ``vᵀHv``, and the held-out
Rayleigh quotient (the lower end of the bracket).

``cost`` measures the CPU time of this process (``time.process_time``, one
torch thread) of, on one draw, alternating in one process: plain ``spectral``
(Lanczos on ``ctx.hessian``), the previous ``data_error`` (Lanczos on the
16-chunk Hessian through a recorder and the chunk jackknife, run by hand) and
today's ``data_error`` (that, plus the per-example terms and the tail check).
Ratios per repetition and their medians.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import statistics
import sys
import time
import warnings
from typing import Any

import torch
from torch import nn

import sharpkit
from sharpkit import AnalysisContext, ChunkRecorder, lanczos, spectral_estimate
from sharpkit.builtin.metrics._spectral import BLOCK, Spectral
from sharpkit.curvature.sampling import sample_indices

SAMPLES = 2048


def _setup(path: str) -> tuple[nn.Module, sharpkit.DataSplit]:
    torch.set_num_threads(1)
    model, _ = sharpkit.load_model(path)
    return model.eval(), sharpkit.load_dataset("fashion-mnist").train


def _ctx(model: nn.Module, data: Any, seed: int, **kw: Any) -> AnalysisContext:
    return AnalysisContext(
        model=model, loss_fn=nn.functional.cross_entropy, data=data,
        device=torch.device("cpu"), dtype=torch.float32, seed=seed, **kw,
    )  # fmt: skip


def diagnose(path: str, draws: int) -> None:
    model, train = _setup(path)
    n = len(train)
    for seed in range(draws):
        idx = sample_indices(n, SAMPLES, "random", seed=seed, targets=train.targets)
        rest = torch.ones(n, dtype=torch.bool)
        rest[idx] = False
        others = torch.nonzero(rest).flatten()
        gen = torch.Generator().manual_seed(1000 + seed)
        held = others[torch.randperm(len(others), generator=gen)[:SAMPLES]]
        ctx = _ctx(model, train.take(idx), seed, heldout_data=train.take(held))
        start = time.process_time()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            r = Spectral(data_error=True).compute(ctx)
        a = r.attrs
        print(
            f"draw {seed}: λ_max {r.value:.2f} ± {r.data_stderr:.2f} (per-example) "
            f"± {a['data_jackknife_stderr']:.2f} (chunk jackknife); tail index "
            f"{a['data_tail_index']:.2f} (limit {a['data_tail_limit']:.2f}), "
            f"reliable {a['data_reliable']}, largest example {a['data_top_share']:.0%} "
            f"of vᵀHv; held-out {a['data_lower']:.2f} ± {a['data_lower_stderr']:.2f}; "
            f"{r.hvps} products, {time.process_time() - start:.1f} CPU s",
            flush=True,
        )


def _old_data_error(ctx: AnalysisContext) -> float:
    """The previous ``data_error``: chunked Lanczos and the jackknife only."""
    rec = ChunkRecorder(ctx.chunked_hessian(), gram=False)
    gen = ctx.generator("spectral")
    lanczos(
        rec, ctx.hessian.n, k=1, which="largest", tol=ctx.tol, generator=gen,
        bound="gap", block=BLOCK, max_basis_bytes=ctx.basis_budget(),
    )  # fmt: skip
    return spectral_estimate(rec)[0].stderr


def cost(path: str, reps: int) -> None:
    model, train = _setup(path)
    idx = sample_indices(len(train), SAMPLES, "random", seed=1, targets=train.targets)
    data = train.take(idx)
    sides = {
        "plain": lambda: Spectral().compute(_ctx(model, data, 0)),
        "previous": lambda: _old_data_error(_ctx(model, data, 0)),
        "today": lambda: Spectral(data_error=True).compute(_ctx(model, data, 0)),
    }
    times: dict[str, list[float]] = {k: [] for k in sides}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(reps):
            for name, run in sides.items():
                start = time.process_time()
                run()
                times[name].append(time.process_time() - start)
    for name, ts in times.items():
        print(name, " ".join(f"{t:.2f}" for t in ts))
    for a, b in (("today", "plain"), ("today", "previous"), ("previous", "plain")):
        ratios = [x / y for x, y in zip(times[a], times[b], strict=True)]
        print(
            f"{a}/{b}: "
            + ", ".join(f"{r:.2f}" for r in ratios)
            + f"; median {statistics.median(ratios):.2f}"
        )


if __name__ == "__main__":
    what = sys.argv[2] if len(sys.argv) > 2 else "diagnose"
    count = int(sys.argv[3]) if len(sys.argv) > 3 else 3
    (diagnose if what == "diagnose" else cost)(sys.argv[1], count)
