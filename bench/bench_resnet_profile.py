"""ResNet-56 λ_max: sharpkit vs PyHessian in one run, and where a product's time goes.

The ResNet-56 workload of ``bench_curvature.py`` (853,018 parameters, the first
256 CIFAR-10 training images, eval mode, float32, 2 threads). Part 1 times
sharpkit's ``spectral`` (tol 1e-3) and PyHessian's ``eigenvalues(top_n=1)``
interleaved (ABAB...) with ``bench_curvature``'s own runners, so both see the
same machine state. Their true relative error is taken against the cached
ground truth of ``bench_curvature.py`` when there is one, else against
``--truth`` (λ₁ of docs/benchmarks.md for this checkpoint). Part 2 profiles one
product through the kept gradient graph with ``torch.profiler`` and one
gradient for scale, and prints the operators that take the time.

    python bench/bench_resnet_profile.py              # ~4 min on a quiet 2-core machine
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_curvature as bc
from _workload import RESULTS, resnet_workload


def ratio_section(model, x, y, truth: list[float], rounds: int) -> dict[str, Any]:
    runs: dict[str, list[dict[str, Any]]] = {"sharpkit": [], "pyhessian": []}
    for seed in range(rounds):
        order = (
            ["sharpkit", "pyhessian"] if seed % 2 == 0 else ["pyhessian", "sharpkit"]
        )
        for tool in order:
            load = os.getloadavg()[0]
            if tool == "sharpkit":
                row = bc.run_sharpkit_spectral(model, x, y, seed, 1, truth)
            else:
                row = bc.run_pyhessian_top(model, x, y, seed, 1, truth)
            row["load_1min"] = load
            runs[tool].append(row)
            print(f"{tool} seed {seed}: {json.dumps(row)}", flush=True)
    ours = bc.med([r["seconds"] for r in runs["sharpkit"]])
    theirs = bc.med([r["seconds"] for r in runs["pyhessian"]])
    print(f"median {ours:.1f} s vs {theirs:.1f} s: {theirs / ours:.2f}x", flush=True)
    return {"runs": runs, "ratio": theirs / ours}


def profile_section(model, x, y) -> dict[str, Any]:
    from torch.profiler import ProfilerActivity, profile

    params = [p for p in model.parameters() if p.requires_grad]
    start = time.perf_counter()
    torch.autograd.grad(bc.LOSS(model(x), y), params)
    gradient_s = time.perf_counter() - start
    H = bc.HessianOperator(model, bc.LOSS, [(x, y)])
    v = torch.randn(H.n, generator=torch.Generator().manual_seed(0))
    start = time.perf_counter()
    H @ v  # builds the graph
    first_s = time.perf_counter() - start
    times = []
    for _ in range(2):
        start = time.perf_counter()
        H @ v
        times.append(time.perf_counter() - start)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        H @ v
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    top = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:15]
    rows = [
        {
            "op": e.key,
            "self_ms": e.self_cpu_time_total / 1e3,
            "share": e.self_cpu_time_total / total,
            "calls": e.count,
        }
        for e in top
    ]
    print(
        f"gradient {gradient_s:.2f} s; setup + first product {first_s:.2f} s; "
        f"product {min(times):.2f} s (method {H.method})"
    )
    for r in rows:
        print(
            f"  {r['share']:6.1%} {r['self_ms']:9.1f} ms  {r['calls']:5d}x  {r['op']}"
        )
    return {
        "gradient_s": gradient_s,
        "setup_and_first_product_s": first_s,
        "product_s": min(times),
        "top_ops": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--truth", type=float, nargs=2, default=[8568.80, 1080.91])
    parser.add_argument("--skip-profile", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(bc.THREADS)
    model, x, y = resnet_workload()
    cached = RESULTS / f"truth_resnet_{bc.state_hash(model)}.json"
    truth = (
        json.loads(cached.read_text())["eigenvalues"] if cached.exists() else args.truth
    )
    print(f"torch {torch.__version__}, load {os.getloadavg()}, truth {truth}")
    out: dict[str, Any] = {"truth": truth, "truth_cached": cached.exists()}
    out["lambda_max"] = ratio_section(model, x, y, truth, args.rounds)
    if not args.skip_profile:
        out["profile"] = profile_section(model, x, y)
    dest = RESULTS / "bench_resnet_profile.json"
    dest.write_text(json.dumps(out, indent=1, default=float))
    print(f"figures written to {dest}")


if __name__ == "__main__":
    main()
