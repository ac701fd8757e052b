"""Peak memory of one gradient or one Hessian-vector product, in a fresh process.

Run as ``python bench/_memory.py WHAT`` (WHAT: gradient, graph, double-backward,
forward-over-reverse); prints ``{"what": ..., "peak_mib": ...}``. The analysis
set and weights are loaded from ``bench/results/`` (written by
bench_curvature.py). RSS is sampled every 0.2 ms from a second thread while the
computation runs; the parent sets ``MALLOC_MMAP_THRESHOLD_`` so that freed
tensors return to the OS at once and RSS tracks live memory. The figure is the
peak RSS above the RSS just before the computation (so the dataset, the weights
and torch itself are excluded; for "graph" the kept gradient graph is included).
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

PAGE = os.sysconf("SC_PAGE_SIZE")


def _rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * PAGE


def peak_above_baseline(fn) -> float:
    stop = threading.Event()
    peak = [_rss()]

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], _rss())
            time.sleep(0.0002)

    base = _rss()
    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    fn()
    peak[0] = max(peak[0], _rss())
    stop.set()
    thread.join()
    return (peak[0] - base) / 2**20


def main(what: str) -> None:
    from _workload import RESULTS, mlp_bn

    torch.set_num_threads(2)
    blob = torch.load(RESULTS / "mlp_analysis.pt", weights_only=True)
    model = mlp_bn()
    model.load_state_dict(blob["state"])
    model.eval()
    x, y = blob["x"], blob["y"]
    loss_fn = torch.nn.functional.cross_entropy
    params = list(model.parameters())
    v = torch.randn(sum(p.numel() for p in params))

    if what == "gradient":

        def fn() -> None:
            torch.autograd.grad(loss_fn(model(x), y), params)

    else:
        from sharpkit.curvature.operator import HessianOperator

        def fn() -> None:
            H = HessianOperator(model, loss_fn, [(x, y)], method=what)
            H @ v

    print(json.dumps({"what": what, "peak_mib": peak_above_baseline(fn)}))


if __name__ == "__main__":
    main(sys.argv[1])
