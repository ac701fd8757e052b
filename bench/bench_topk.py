"""Top-k eigenvalues with block products (issue 24): sharpkit vs PyHessian, one run.

Usage::

    python bench/bench_topk.py                 # 2 seeds, k = 5
    python bench/bench_topk.py --seeds 3 --k 5 --skip-pyhessian

On the benchmark MLP (``_workload.mlp_workload``: the 336,650-parameter BN-MLP
on 2048 Fashion-MNIST images, float32, tol 1e-3) ``spectral top_k=k`` runs
with a band of one start vector (before issue 22), of two (issue 22), and of
``k`` (one batched product of the ``k`` pending vectors per call, issue 24),
and PyHessian's ``eigenvalues(top_n=k)`` (power iteration with deflation),
interleaved seed by seed in one process so that the time ratios are of one
run on one load. The truth is a float64 band Lanczos run to a bound of 1e-10
relative, cached in ``bench/results/``. A run counts as accurate when all
``k`` values are within 1e-3 of the truth; sharpkit's bounds must cover their
true errors.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from sharpkit.curvature.lanczos import lanczos  # noqa: E402
from sharpkit.curvature.operator import HessianOperator  # noqa: E402

LOSS = torch.nn.functional.cross_entropy
RESULTS = HERE / "results"


def truth(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, k: int) -> Any:
    """The top ``k + 1`` eigenvalues in float64 (cached)."""
    from bench_curvature import state_hash

    path = RESULTS / f"topk_truth_{state_hash(model)}_{k + 1}.json"
    if path.exists():
        return np.asarray(json.loads(path.read_text()))
    print("computing the float64 truth (cached afterwards) ...", flush=True)
    H64 = HessianOperator(model, LOSS, [(x, y)], dtype=torch.float64)
    res = lanczos(
        H64,
        H64.n,
        k=k + 1,
        tol=1e-10,
        max_iter=400,
        block=2,
        generator=torch.Generator().manual_seed(12345),
    )
    assert res.converged, res.stopped_by
    RESULTS.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(res.eigenvalues.tolist()))
    return res.eigenvalues


def run_sharpkit(model, x, y, seed: int, k: int, block: int) -> dict[str, Any]:
    from bench_curvature import context

    from sharpkit.builtin.metrics import Spectral

    metric = Spectral(top_k=k)
    metric.block = block
    t0 = time.perf_counter()
    res = metric.compute(context(model, x, y, seed, tol=1e-3))
    return {
        "seconds": time.perf_counter() - t0,
        "hvps": res.hvps,
        "values": np.asarray(res.arrays["eigenvalues"]),
        "bounds": np.asarray(res.arrays["residual_bounds"]),
    }


def run_pyhessian(model, x, y, seed: int, true: np.ndarray) -> dict[str, Any]:
    from bench_curvature import run_pyhessian_top

    return run_pyhessian_top(model, x, y, seed, len(true), true)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--blocks", default="1,2,k")
    parser.add_argument("--skip-pyhessian", action="store_true")
    args = parser.parse_args()
    from _workload import mlp_workload

    torch.set_num_threads(2)
    model, x, y = mlp_workload()
    k = args.k
    true = truth(model, x, y, k)[:k]
    print("truth:", ", ".join(f"{v:.5f}" for v in true), flush=True)
    blocks = [k if b == "k" else int(b) for b in args.blocks.split(",")]
    rows: dict[str, list[dict[str, Any]]] = {}
    for seed in range(args.seeds):
        for b in blocks:
            r = run_sharpkit(model, x, y, seed, k, b)
            err = np.abs(r["values"] - true)
            r["rel_error"] = float(np.max(err / np.abs(true)))
            r["covered"] = bool(np.all(err <= r["bounds"]))
            rows.setdefault(f"sharpkit top_k={k}, band of {b}", []).append(r)
        if not args.skip_pyhessian:
            try:
                r = run_pyhessian(model, x, y, seed, true)
            except ImportError:
                args.skip_pyhessian = True
            else:
                rows.setdefault(f"PyHessian eigenvalues(top_n={k})", []).append(r)
        print(f"seed {seed} done", flush=True)
    report(rows, true)


def report(rows: dict[str, list[dict[str, Any]]], true: np.ndarray) -> None:
    print(f"\n### Top-{len(true)} eigenvalues, tol 1e-3 (interleaved, one process)\n")
    print(
        "| tool | products, median | time, median (worst) | worst relative error "
        "| bound covers | vs band of 2 |"
    )
    print("|---|---|---|---|---|---|")
    ref = next(v for name, v in rows.items() if name.endswith("band of 2"))
    base = statistics.median(r["seconds"] for r in ref)
    for name, rs in rows.items():
        t = statistics.median(r["seconds"] for r in rs)
        cover = (
            ("yes" if all(r.get("covered", True) for r in rs) else "**no**")
            if "covered" in rs[0]
            else "—"
        )
        print(
            f"| {name} | {statistics.median(r['hvps'] for r in rs):g} | "
            f"{t:.1f} s ({max(r['seconds'] for r in rs):.1f}) | "
            f"{max(r['rel_error'] for r in rs):.1e} | {cover} | "
            f"{base / t:.2f}x |",
            flush=True,
        )


if __name__ == "__main__":
    main()
