"""Honest bounds on clustered spectra (issue 22): coverage and cost, in one run.

Usage::

    python bench/bench_bounds.py                 # coverage tables + the MLP cost
    python bench/bench_bounds.py --seeds 10      # more seeds on the MLP
    python bench/bench_bounds.py --skip-mlp      # coverage only (seconds)

1. **Coverage.** Constructed spectra (n = 300, random orthogonal eigenbasis,
   float64): λ₁ = 10, λ₂ = 10(1 - gap), a bulk in [-1, 4]. For gaps 0.3 %, 1 %,
   10 %: in how many of 50 seeds ``λ_max ± bound`` contains λ₁, and the
   products, for one start vector (before issue 22) and for the band Lanczos
   block of two (now).
2. **Cost on the benchmark MLP** (``_workload.mlp_workload``: the 336,650
   parameter BN-MLP on 2048 Fashion-MNIST images, tol 1e-3), or with
   ``--workload resnet56`` on ResNet-56 (256 CIFAR-10 images): ``spectral``
   as before issue 22 (one start vector, the gradient start), the block of two
   random vectors with the 1 % safeguard of issue 22, and the block with the
   5 % safeguard for random blocks (``BAND_MIN_GAP``, the default now), both
   with block products, interleaved seed by seed in one process, so the time
   ratio is of one run on one load.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from sharpkit.curvature.lanczos import lanczos  # noqa: E402

F64 = torch.float64


def pair_matrix(gap: float, n: int = 300) -> torch.Tensor:
    g = torch.Generator().manual_seed(7)
    bulk = torch.rand(n - 2, generator=g, dtype=F64) * 5 - 1
    evals = torch.cat([torch.tensor([10.0, 10.0 * (1 - gap)], dtype=F64), bulk])
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=F64))
    return (q * evals) @ q.T


def coverage(seeds: int) -> None:
    print("\n### Constructed pairs: λ₁ inside λ_max ± bound (tol 1e-3)\n")
    print("| gap | start vectors | λ₁ covered | products, median (max) |")
    print("|---|---|---|---|")
    for gap in (0.003, 0.01, 0.1):
        A = pair_matrix(gap)
        for block in (1, 2):
            hits, used = 0, []
            for seed in range(seeds):
                res = lanczos(
                    A.__matmul__,
                    A.shape[0],
                    tol=1e-3,
                    generator=torch.Generator().manual_seed(seed),
                    vector_dtype=F64,
                    block=block,
                )
                hits += int(abs(res.eigenvalues[0] - 10.0) <= res.bounds[0])
                used.append(res.n_matvecs)
            label = "1 (before)" if block == 1 else "2 (band, now)"
            print(
                f"| {gap:.1%} | {label} | {hits}/{seeds} | "
                f"{statistics.median(used):g} ({max(used)}) |",
                flush=True,
            )


def mlp_cost(seeds: int, workload: str = "mlp", strict: bool = True) -> None:
    import importlib

    from _workload import mlp_workload, resnet_workload
    from bench_curvature import context

    from sharpkit.builtin.metrics import Spectral

    # the module (``sharpkit.curvature.lanczos`` is also the function's name)
    lanczos_module = importlib.import_module("sharpkit.curvature.lanczos")
    torch.set_num_threads(2)
    model, x, y = mlp_workload() if workload == "mlp" else resnet_workload()
    relaxed = lanczos_module.BAND_MIN_GAP
    # (block, start, block products, the band's safeguard)
    variants = {
        "before: 1 vector, gradient start": (1, "gradient", False, relaxed),
        "#22: block of 2 random, 1 % safeguard": (2, "random", True, 0.01),
        "now: block of 2 random, 5 % safeguard": (2, "random", True, relaxed),
    }
    if not strict:
        del variants["#22: block of 2 random, 1 % safeguard"]
    rows: dict[str, list[tuple[int, float, float, float]]] = {k: [] for k in variants}
    for seed in range(seeds):
        for name, (block, start, together, band_gap) in variants.items():
            ctx = context(model, x, y, seed, tol=1e-3)
            ctx.hessian.block_products = together
            metric = Spectral(start=start)
            metric.block = block
            lanczos_module.BAND_MIN_GAP = band_gap
            t0 = time.perf_counter()
            try:
                res = metric.compute(ctx)
            finally:
                lanczos_module.BAND_MIN_GAP = relaxed
            rows[name].append(
                (res.hvps, time.perf_counter() - t0, res.value, res.bound or 0.0)
            )
            print(f"seed {seed} {name}: {res.hvps} products", flush=True)
    title = "Benchmark MLP" if workload == "mlp" else "ResNet-56, 256 CIFAR-10 images"
    print(f"\n### {title}, λ_max at tol 1e-3 (interleaved, one process)\n")
    print(
        "| spectral | products, median (max) | time, median | vs before "
        "| λ_max ± bound |"
    )
    print("|---|---|---|---|---|")
    base_h = statistics.median(r[0] for r in rows["before: 1 vector, gradient start"])
    base_t = statistics.median(r[1] for r in rows["before: 1 vector, gradient start"])
    for name, rs in rows.items():
        h = statistics.median(r[0] for r in rs)
        t = statistics.median(r[1] for r in rs)
        vals = ", ".join(f"{r[2]:.5f} ± {r[3]:.1e}" for r in rs)
        print(
            f"| {name} | {h:g} ({max(r[0] for r in rs)}) | {t:.1f} s | "
            f"{h / base_h:.2f}x products, {t / base_t:.2f}x time | {vals} |",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5, help="seeds on the MLP")
    parser.add_argument("--pair-seeds", type=int, default=50)
    parser.add_argument("--skip-mlp", action="store_true")
    parser.add_argument("--skip-coverage", action="store_true")
    parser.add_argument("--workload", choices=("mlp", "resnet56"), default="mlp")
    parser.add_argument(
        "--skip-strict", action="store_true", help="no run with the 1 % safeguard"
    )
    args = parser.parse_args()
    if not args.skip_coverage:
        coverage(args.pair_seeds)
    if not args.skip_mlp:
        mlp_cost(args.seeds, args.workload, strict=not args.skip_strict)


if __name__ == "__main__":
    main()
