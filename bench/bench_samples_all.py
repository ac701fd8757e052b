"""The cost of ``--samples all`` against a 2 048-image λ_max, through ``measure``.

Usage::

    python bench/bench_samples_all.py CHECKPOINT [--budget 4GiB] [--reps 1]

CHECKPOINT is an ``mlp-bn`` checkpoint trained by sharpkit on Fashion-MNIST
(its metadata names the data; all 60 000 training images are the split). The
script measures λ_max (``spectral``, Lanczos, tol 1e-3, the default start
vector) through the public front door, as ``sharpkit measure CKPT --samples
2048`` and ``--samples all --memory-budget BUDGET`` do, alternating the two,
``reps`` times each after one warm-up measurement on 2 048 images (which loads
the data). It reports the CPU time of this process (``time.process_time``,
one torch thread: on a shared machine wall time measures the other
processes' load, CPU time the work), the wall time, the products and λ_max,
and the ratio of the medians. Results go to
``bench/results/samples_all.json``.

Measured (2026-12-07, the paper-scale Fig. 1 point η = 0.005, S = 50 after 200
epochs, a shared 2-core VM): 2.02 s CPU for 2 048 images, 39.0 s for all 60 000,
a ratio of 19.3 at load average 6-8; 2.52 s and 42.1 s, 16.7, at load average
8-15 (10 products each; docs/reproducing.md).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch

import sharpkit

RESULTS = Path(__file__).resolve().parent / "results"


def _one(checkpoint: str, samples: int | str, budget: str) -> dict[str, float]:
    cpu, wall = time.process_time(), time.perf_counter()
    m = sharpkit.measure(
        checkpoint, metrics=["spectral"], samples=samples, memory_budget=budget
    )
    r = m["spectral"]
    return {
        "cpu_s": time.process_time() - cpu,
        "wall_s": time.perf_counter() - wall,
        "value": r.value,
        "bound": float(r.bound or 0.0),
        "hvps": float(r.hvps or 0),
        "samples": float(m.attrs["samples"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--budget", default="4GiB")
    parser.add_argument("--reps", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(1)
    _one(args.checkpoint, 2048, args.budget)  # warm-up: loads the data
    runs: dict[str, list[dict[str, float]]] = {"2048": [], "all": []}
    for _ in range(args.reps):
        for label, samples in (("2048", 2048), ("all", "all")):
            runs[label].append(_one(args.checkpoint, samples, args.budget))
            print(label, runs[label][-1], flush=True)
    med = {k: statistics.median(r["cpu_s"] for r in v) for k, v in runs.items()}
    out = {
        "checkpoint": args.checkpoint,
        "load_average": os.getloadavg(),
        "runs": runs,
        "median_cpu_s": med,
        "ratio_all_over_2048": med["all"] / med["2048"],
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "samples_all.json").write_text(json.dumps(out, indent=2))
    print(f"--samples all / --samples 2048 (CPU): {out['ratio_all_over_2048']:.1f}x")


if __name__ == "__main__":
    main()
