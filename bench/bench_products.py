"""Cheaper Hessian products (issue 24): block products and a subsample start.

Usage::

    python bench/bench_products.py                  # both sections
    python bench/bench_products.py --skip-start     # block products only
    python bench/bench_products.py --seeds 5        # more seeds for the start

1. **Block products.** On the benchmark MLP (``_workload.mlp_workload``: the
   336,650-parameter BN-MLP on 2048 Fashion-MNIST images, float32, the kept
   gradient graph), the seconds of a block of ``k`` products through one
   batched backward pass (``block_products=True``) against ``k`` single
   passes (``False``), interleaved repetition by repetition in one process;
   the minimum of the repetitions (the least disturbed by the machine's load).
2. **Subsample start.** ``spectral``'s Lanczos run (tol 1e-3, a block of two)
   from two random vectors (the default) against a start from a data
   subsample (:func:`sharpkit.curvature.lanczos.subsample_start`: 8 steps on
   the first 256 of the 2048 images, then its top Ritz vector plus an equal
   random part, and the second random vector of the block): full-set
   products, subsample products (each about 1/8 of a full one), time, and
   λ_max ± bound, seed by seed in one process.
3. **Probe blocks.** Hutch++ (10 Lanczos sketch steps, 32 Rademacher probes)
   with the probes one at a time against blocks of 8 (``PROBE_BLOCK``), the
   same probes, interleaved.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from sharpkit.curvature.lanczos import lanczos, subsample_start  # noqa: E402
from sharpkit.curvature.operator import HessianOperator  # noqa: E402

LOSS = nn.functional.cross_entropy


def block_section(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, reps: int
) -> None:
    ops = {
        flag: HessianOperator(
            model, LOSS, [(x, y)], method="graph", block_products=flag
        )
        for flag in (False, True)
    }
    gen = torch.Generator().manual_seed(0)
    n = ops[True].n
    for op in ops.values():
        op @ torch.randn(n, 2, generator=gen)  # build the graph, warm up
    print("\n### Block products through the kept graph (minimum of", reps, "runs)\n")
    print(
        "| k | k single passes | one batched pass | ratio | per vector, vs 1 product |"
    )
    print("|---|---|---|---|---|")
    single = None
    for k in (1, 2, 4, 8):
        V = torch.randn(n, k, generator=gen)
        best = {False: float("inf"), True: float("inf")}
        for _ in range(reps):
            for flag, op in ops.items():
                t0 = time.perf_counter()
                op @ V
                best[flag] = min(best[flag], time.perf_counter() - t0)
        if k == 1:
            single = best[False]
        assert single is not None
        print(
            f"| {k} | {best[False]:.3f} s | {best[True]:.3f} s | "
            f"{best[True] / best[False]:.2f} | {best[True] / k / single:.2f} |",
            flush=True,
        )


def start_section(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, seeds: int
) -> None:
    H = HessianOperator(model, LOSS, [(x, y)], method="graph")
    sub = HessianOperator(model, LOSS, [(x[:256], y[:256])], method="graph")
    H.gradient()
    sub.gradient()  # both graphs built before the clock starts
    rows: dict[str, list[tuple[int, int, float, float, float]]] = {
        "random (default)": [],
        "subsample start (1/8 of the data, 8 steps)": [],
    }
    for seed in range(seeds):
        for name in rows:
            gen = torch.Generator().manual_seed(seed)
            t0 = time.perf_counter()
            before_sub = sub.hvp_count
            v0 = None
            if name.startswith("subsample"):
                v0 = subsample_start(sub, H.n, steps=8, generator=gen)
            res = lanczos(H, H.n, tol=1e-3, v0=v0, generator=gen, block=2)
            seconds = time.perf_counter() - t0
            rows[name].append(
                (
                    res.n_matvecs,
                    sub.hvp_count - before_sub,
                    seconds,
                    float(res.eigenvalues[0]),
                    float(res.bounds[0]),
                )
            )
    print("\n### Subsample start, λ_max at tol 1e-3, block of 2 (interleaved)\n")
    print(
        "| start | full products, median (max) | subsample products | "
        "time, median | vs random | λ_max ± bound (range) |"
    )
    print("|---|---|---|---|---|---|")
    base = statistics.median(r[2] for r in rows["random (default)"])
    for name, rs in rows.items():
        full = statistics.median(r[0] for r in rs)
        t = statistics.median(r[2] for r in rs)
        lo = min(r[3] - r[4] for r in rs)
        hi = max(r[3] + r[4] for r in rs)
        print(
            f"| {name} | {full:g} ({max(r[0] for r in rs)}) | "
            f"{statistics.median(r[1] for r in rs):g} | {t:.2f} s | "
            f"{t / base:.2f}x | {lo:.5f}..{hi:.5f} |",
            flush=True,
        )


def probe_section(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, reps: int
) -> None:
    from sharpkit.curvature.trace import hutchpp_trace

    ops = {
        flag: HessianOperator(
            model, LOSS, [(x, y)], method="graph", block_products=flag
        )
        for flag in (False, True)
    }
    for op in ops.values():
        op.gradient()
    times: dict[bool, list[float]] = {False: [], True: []}
    values: dict[bool, list[float]] = {False: [], True: []}
    for rep in range(reps):
        for flag, op in ops.items():
            t0 = time.perf_counter()
            est = hutchpp_trace(
                op,
                op.n,
                sketch_size=10,
                probes=32,
                distribution="rademacher",
                generator=torch.Generator().manual_seed(rep),
            )
            times[flag].append(time.perf_counter() - t0)
            values[flag].append(est.value)
    print("\n### Hutch++ trace, 10 sketch + 32 Rademacher probes (interleaved)\n")
    print("| probes | time, median | vs one at a time | trace (per seed) |")
    print("|---|---|---|---|")
    base = statistics.median(times[False])
    for flag, label in ((False, "one at a time"), (True, "blocks of 8")):
        t = statistics.median(times[flag])
        vals = ", ".join(f"{v:.2f}" for v in values[flag])
        print(f"| {label} | {t:.1f} s | {t / base:.2f}x | {vals} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--skip-blocks", action="store_true")
    parser.add_argument("--skip-start", action="store_true")
    parser.add_argument("--skip-probes", action="store_true")
    args = parser.parse_args()
    from _workload import mlp_workload

    torch.set_num_threads(2)
    model, x, y = mlp_workload()
    if not args.skip_blocks:
        block_section(model, x, y, args.reps)
    if not args.skip_start:
        start_section(model, x, y, args.seeds)
    if not args.skip_probes:
        probe_section(model, x, y, max(1, args.seeds - 1))


if __name__ == "__main__":
    main()
