"""Tracking λ_max during training: its overhead, and what the warm start saves.

Workload: the ``mlp-bn`` of ``bench/_workload.py`` (784-256-256-256-10 BN-ReLU
MLP, 336,650 parameters) trained from its seeded initialisation with plain SGD
(η = 0.05, S = 128) on the 60,000 Fashion-MNIST training images for ``--steps``
steps (default 1,000, about two epochs). Three loops, run side by side in one
process and interleaved for ``--rounds`` rounds:

* **untracked**: a hand-written PyTorch loop (``randperm``, index, forward,
  cross-entropy, backward, ``SGD.step``);
* **warm**: the same loop with ``sharpkit.Tracker(["spectral"], every=50)`` on
  the first 2,048 training images (the workload's analysis set), each λ_max
  warm-started from the previous top eigenvector;
* **cold**: the same with ``warm_start=False`` (each λ_max from the gradient
  start, as a separate ``sharpkit.measure`` would).

Tracking does not change the training, so the three loops end with bit-identical
weights (checked) and warm and cold measure the very same models: their
Hessian-vector products per measurement compare directly, and their λ_max agree
to the tolerance (1e-3 relative). Reported: the overhead ratio tracked /
untracked (wall and CPU time, median of the rounds), seconds per measurement,
HVPs warm vs cold at every measured step, and the largest relative difference of
the two λ_max curves.

Usage: ``python bench/bench_tracking.py [--steps N] [--every K] [--rounds R]
[--quick]``. Writes ``bench/results/tracking-<time>.json``.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # as bench_curvature.py
os.environ.setdefault("MKL_NUM_THREADS", "1")

import argparse
import copy
import json
import platform
import statistics
import time
from datetime import UTC, datetime

import numpy as np
import torch
from _workload import RESULTS, fashion_mnist_train, mlp_bn
from torch import nn

import sharpkit

LR = 0.05
BATCH = 128


def loop(model, x, y, steps: int, tracker: sharpkit.Tracker | None):
    """Train ``model`` in place; return (wall s, CPU s)."""
    gen = torch.Generator().manual_seed(0)
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    model.train()
    wall, cpu = time.perf_counter(), time.process_time()
    order = torch.randperm(len(x), generator=gen)
    pos = 0
    for step in range(1, steps + 1):
        if pos + BATCH > len(x):
            order, pos = torch.randperm(len(x), generator=gen), 0
        idx = order[pos : pos + BATCH]
        pos += BATCH
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if tracker is not None:
            tracker.step(model, step=step)
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--every", type=int, default=50)
    parser.add_argument("--samples", type=int, default=2048)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--threads",
        type=int,
        default=2,
        help="torch threads (2 as in the other benchmarks; 1 on a busy machine)",
    )
    parser.add_argument("--quick", action="store_true", help="smoke test")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.rounds, args.samples = 100, 1, 512
    torch.set_num_threads(args.threads)
    info = {
        "time": datetime.now(UTC).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "sharpkit": sharpkit.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "loadavg_start": os.getloadavg(),
        "args": vars(args),
    }
    x, y = fashion_mnist_train()
    analysis = (x[: args.samples], y[: args.samples])
    torch.manual_seed(0)
    init = mlp_bn()

    times: dict[str, list[tuple[float, float]]] = {
        "untracked": [],
        "warm": [],
        "cold": [],
    }
    curves: dict[str, dict[str, np.ndarray]] = {}
    finals: dict[str, dict[str, torch.Tensor]] = {}
    order = list(times)
    for r in range(args.rounds):
        for kind in order[r % 3 :] + order[: r % 3]:  # rotate who goes first
            model = copy.deepcopy(init)
            tracker = (
                None
                if kind == "untracked"
                else sharpkit.Tracker(
                    analysis,
                    ["spectral"],
                    every=args.every,
                    samples=None,
                    warm_start=kind == "warm",
                )
            )
            times[kind].append(loop(model, x, y, args.steps, tracker))
            if tracker is not None:
                curves[kind] = tracker.curves
            finals[kind] = copy.deepcopy(model.state_dict())
            wall, cpu = times[kind][-1]
            print(f"round {r + 1}/{args.rounds} {kind:9} {wall:7.1f} s wall, "
                  f"{cpu:7.1f} s CPU", flush=True)  # fmt: skip
    info["loadavg_end"] = os.getloadavg()

    identical = all(
        torch.equal(finals["untracked"][k], finals[kind][k])
        for kind in ("warm", "cold")
        for k in finals["untracked"]
    )
    med = {k: (statistics.median(w for w, _ in v), statistics.median(c for _, c in v))
           for k, v in times.items()}  # fmt: skip
    warm, cold = curves["warm"], curves["cold"]
    rel = np.abs(warm["spectral"] - cold["spectral"]) / np.abs(cold["spectral"])
    out = {
        "info": info,
        "rounds": times,
        "median_wall_s": {k: v[0] for k, v in med.items()},
        "median_cpu_s": {k: v[1] for k, v in med.items()},
        "overhead_wall": {k: med[k][0] / med["untracked"][0] for k in ("warm", "cold")},
        "overhead_cpu": {k: med[k][1] / med["untracked"][1] for k in ("warm", "cold")},
        "identical_weights": identical,
        "steps": warm["step"].tolist(),
        "lambda_warm": warm["spectral"].tolist(),
        "lambda_cold": cold["spectral"].tolist(),
        "max_rel_diff": float(rel.max()),
        "hvps_warm": warm["spectral_hvps"].tolist(),
        "hvps_cold": cold["spectral_hvps"].tolist(),
        "seconds_warm": warm["seconds"].tolist(),
        "seconds_cold": cold["seconds"].tolist(),
    }

    print(f"\n{'step':>6} {'λ_max warm':>11} {'λ_max cold':>11} "
          f"{'HVPs warm':>10} {'cold':>5}")  # fmt: skip
    for i, step in enumerate(out["steps"]):
        hvps = (warm["spectral_hvps"][i], cold["spectral_hvps"][i])
        print(f"{step:>6} {warm['spectral'][i]:>11.4f} {cold['spectral'][i]:>11.4f} "
              f"{hvps[0]:>10.0f} {hvps[1]:>5.0f}")  # fmt: skip
    hw, hc = sum(out["hvps_warm"]), sum(out["hvps_cold"])
    n = len(out["steps"])
    print(
        f"\nHVPs: warm {hw:.0f}, cold {hc:.0f} over {n} measurements "
        f"(warm/cold {hw / hc:.2f}); λ_max warm vs cold within "
        f"{out['max_rel_diff']:.1e}"
    )
    sec = {k: statistics.median(out[f"seconds_{k}"]) for k in ("warm", "cold")}
    print(
        f"seconds per measurement (median): warm {sec['warm']:.2f}, "
        f"cold {sec['cold']:.2f}"
    )
    for k in ("warm", "cold"):
        print(
            f"{args.steps} steps tracked every {args.every} ({k}) / untracked: "
            f"{out['overhead_wall'][k]:.2f}x wall, {out['overhead_cpu'][k]:.2f}x CPU "
            f"({med[k][0]:.1f} s vs {med['untracked'][0]:.1f} s)"
        )
    print(
        f"final weights identical with and without tracking: {identical}; load "
        f"average {info['loadavg_start'][0]:.1f} -> {info['loadavg_end'][0]:.1f}"
    )
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = RESULTS / f"tracking-{stamp}.json"
    path.write_text(json.dumps(out, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
