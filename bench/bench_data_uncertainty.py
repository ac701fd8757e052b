"""Data uncertainty (issue 19): its cost, and whether its error bars hold on real data.

Usage::

    python bench/bench_data_uncertainty.py cost        # ratios to today's measurement
    python bench/bench_data_uncertainty.py subsets     # random subsets vs all 60 000
    python bench/bench_data_uncertainty.py all         # both

Workload: the BN-ReLU MLP of ``_workload.mlp_workload`` (784-256-256-256-10,
336,650 parameters, 3 epochs of SGD η=0.05, S=128 on Fashion-MNIST), eval
mode, mean cross-entropy.

``cost`` measures, in one process and alternating the two sides, each three
times (medians): λ_max by Lanczos (tol 1e-3, the same random start) on one
:class:`~sharpkit.curvature.HessianOperator` over the first 2048 images
(today) against a :class:`~sharpkit.curvature.sampling.ChunkedHessian` of 16
chunks through a :class:`~sharpkit.curvature.sampling.ChunkRecorder` plus
:func:`~sharpkit.curvature.uncertainty.spectral_estimate` (data error bars);
the exact trace (:func:`~sharpkit.curvature.ggn.ggn_trace`) against the same
chunk by chunk; ‖H‖_F with 16 probes on the Lanczos deflation against the
U-statistic estimate. Ratios are of wall time (products are equal by
construction: the chunked product is one product split in 16).

``subsets`` draws 12 random (class-stratified) 2048-image subsets of the
60 000 training images and reports each λ_max, its jackknife estimate and data
standard error, against λ_max on all 60 000 (one operator over the whole split
with the memory budget of the kept graph at 2 GiB: the ``--samples all``
path), and λ_max with its data interval for N = 256 ... 16 384. Results go to
``bench/results/data_uncertainty.json`` and the figure to
``docs/img/data-uncertainty.png``.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _workload import RESULTS, fashion_mnist_train, mlp_workload  # noqa: E402

from sharpkit import DataSplit  # noqa: E402
from sharpkit.curvature import HessianOperator, frobenius_norm, lanczos  # noqa: E402
from sharpkit.curvature.ggn import ggn_trace  # noqa: E402
from sharpkit.curvature.sampling import (  # noqa: E402
    ChunkedHessian,
    ChunkRecorder,
    sample_indices,
)
from sharpkit.curvature.stochastic import Deflation  # noqa: E402
from sharpkit.curvature.uncertainty import (  # noqa: E402
    exact_trace_estimate,
    frobenius_estimate,
    spectral_estimate,
)

CE = nn.functional.cross_entropy
CHUNKS = 16
TOL = 1e-3
ALL_BUDGET = 2 << 30


def _lanczos(matvec: Any, n: int, seed: int) -> Any:
    gen = torch.Generator().manual_seed(seed)
    return lanczos(matvec, n, tol=TOL, generator=gen, vector_dtype=torch.float32)


def _today_spectral(model: nn.Module, split: DataSplit, seed: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    op = HessianOperator(model, CE, split, batch_size=len(split))
    res = _lanczos(op, op.n, seed)
    return {
        "seconds": time.perf_counter() - t0,
        "products": op.hvp_count,
        "value": float(res.eigenvalues[0]),
        "result": res,
        "op": op,
    }


def _data_spectral(model: nn.Module, split: DataSplit, seed: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    ch = ChunkedHessian.from_split(model, CE, split, chunks=CHUNKS)
    rec = ChunkRecorder(ch)
    res = _lanczos(rec, ch.n, seed)
    est = spectral_estimate(rec)[0]
    return {
        "seconds": time.perf_counter() - t0,
        "products": ch.hvp_count,
        "value": float(res.eigenvalues[0]),
        "estimate": est.estimate,
        "stderr": est.stderr,
        "result": res,
        "chunked": ch,
        "recorder": rec,
    }


def cost() -> dict[str, Any]:
    """Ratios of wall time with data error bars to today's, medians of 3."""
    torch.set_num_threads(2)
    model, x, y = mlp_workload(2048)
    split = DataSplit(x, y)
    rows: dict[str, list[float]] = {k: [] for k in ("spec", "spec_d", "tr", "tr_d")}
    rows |= {"fro": [], "fro_d": []}
    last: dict[str, Any] = {}
    for rep in range(3):
        a = _today_spectral(model, split, rep)
        b = _data_spectral(model, split, rep)
        rows["spec"].append(a["seconds"])
        rows["spec_d"].append(b["seconds"])
        t0 = time.perf_counter()
        tr, _ = ggn_trace(model, split)
        rows["tr"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        trd = exact_trace_estimate(model, split, chunks=CHUNKS)
        rows["tr_d"].append(time.perf_counter() - t0)
        gen = torch.Generator().manual_seed(rep)
        t0 = time.perf_counter()
        fro = frobenius_norm(
            a["op"], a["op"].n, deflation=Deflation.from_lanczos(a["result"]),
            probes=16, generator=gen,
        )  # fmt: skip
        rows["fro"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        frd = frobenius_estimate(
            b["chunked"], recorder=b["recorder"], probes=16, generator=gen
        )
        rows["fro_d"].append(time.perf_counter() - t0)
        last = {
            "spectral": [a["value"], a["products"], b["value"], b["products"]],
            "spectral_data": [b["estimate"], b["stderr"]],
            "trace": [tr, trd.value, trd.stderr],
            "frobenius": [fro.value, fro.stderr, frd.value, frd.estimate, frd.stderr],
        }
        print(f"rep {rep}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in rows.items()))
    med = {k: statistics.median(v) for k, v in rows.items()}
    out = {
        "median_seconds": med,
        "ratio_spectral": med["spec_d"] / med["spec"],
        "ratio_trace_exact": med["tr_d"] / med["tr"],
        "ratio_frobenius_probes": med["fro_d"] / med["fro"],
        "last": last,
        "load": os.getloadavg(),
    }
    print(json.dumps(out, indent=1))
    return out


def _all_lambda(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, Any]:
    t0 = time.perf_counter()
    op = HessianOperator(
        model, CE, DataSplit(x, y), batch_size=2048, memory_budget=ALL_BUDGET
    )
    res = _lanczos(op, op.n, 0)
    return {
        "value": float(res.eigenvalues[0]),
        "bound": float(res.bounds[0]),
        "products": op.hvp_count,
        "seconds": time.perf_counter() - t0,
        "method": op.method,
    }


def subsets(count: int = 12) -> dict[str, Any]:
    """λ_max on random subsets and along N, against all 60 000 images."""
    torch.set_num_threads(2)
    model, _, _ = mlp_workload(2048)
    x, y = fashion_mnist_train()
    full = _all_lambda(model, x, y)
    print("all 60000:", full)
    first = _data_spectral(model, DataSplit(x[:2048], y[:2048]), 0)
    rows = []
    for seed in range(1, count + 1):
        idx = sample_indices(len(x), 2048, "random", seed=seed, targets=y)
        b = _data_spectral(model, DataSplit(x[idx], y[idx]), seed)
        rows.append([b["value"], b["estimate"], b["stderr"], b["seconds"]])
        print(f"subset {seed}: {rows[-1]}")
    along = []
    for size in (256, 512, 1024, 2048, 4096, 8192, 16384):
        idx = sample_indices(len(x), size, "random", seed=100 + size, targets=y)
        b = _data_spectral(model, DataSplit(x[idx], y[idx]), size)
        along.append([size, b["value"], b["estimate"], b["stderr"]])
        print(f"N={size}: {along[-1]}")
    a = np.array(rows)
    summary = {
        "all": full,
        "first_2048": [first["value"], first["estimate"], first["stderr"]],
        "subsets": rows,
        "sd_value": float(a[:, 0].std(ddof=1)),
        "mean_value": float(a[:, 0].mean()),
        "mean_estimate": float(a[:, 1].mean()),
        "mean_stderr": float(a[:, 2].mean()),
        "covered": int(np.sum(np.abs(a[:, 1] - full["value"]) <= 2 * a[:, 2])),
        "along": along,
        "load": os.getloadavg(),
    }
    print(json.dumps({k: v for k, v in summary.items() if k != "subsets"}, indent=1))
    _figure(summary)
    return summary


def _figure(summary: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    along = np.array(summary["along"])
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=120)
    ax.errorbar(
        along[:, 0], along[:, 2], yerr=2 * along[:, 3], fmt="o", capsize=3,
        label="estimate ± 2·data_stderr",
    )  # fmt: skip
    ax.plot(along[:, 0], along[:, 1], "x", color="C1", label="λ_max of the sample")
    ax.axhline(summary["all"]["value"], color="k", lw=1, label="λ_max on all 60 000")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("samples N (random, stratified)")
    ax.set_ylabel("λ_max")
    ax.legend(fontsize=8)
    fig.tight_layout()
    out = HERE.parent / "docs" / "img" / "data-uncertainty.png"
    fig.savefig(out)
    print("figure:", out)


def main() -> None:
    """Run the parts named on the command line."""
    part = sys.argv[1] if len(sys.argv) > 1 else "all"
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "data_uncertainty.json"
    saved = json.loads(path.read_text()) if path.exists() else {}
    if part in ("cost", "all"):
        saved["cost"] = cost()
        path.write_text(json.dumps(saved, indent=1))
    if part in ("subsets", "all"):
        saved["subsets"] = subsets()
        path.write_text(json.dumps(saved, indent=1))


if __name__ == "__main__":
    main()
