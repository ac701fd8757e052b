"""Data uncertainty (issue 19): its cost, and whether its error bars hold on real data.

Usage::

    python bench/bench_data_uncertainty.py cost        # ratios to today's measurement
    python bench/bench_data_uncertainty.py subsets     # random subsets vs all 60 000
    python bench/bench_data_uncertainty.py all         # both

Workload: the BN-ReLU MLP of ``_workload.mlp_workload`` (784-256-256-256-10,
336,650 parameters, 3 epochs of SGD η=0.05, S=128 on Fashion-MNIST), eval
mode, mean cross-entropy.

``cost`` measures the CPU time of this process (``time.process_time``, one
torch thread: on a shared machine wall time measures the other processes' load,
CPU time the work) of each metric as a user runs it (``compute`` on a fresh
:class:`~sharpkit.interfaces.AnalysisContext` over the first 2048 images,
float32), without and with its ``data_error`` option, alternating the two
sides in one process, ``reps`` times (medians of the ratios): ``spectral``
(Lanczos on the 16-chunk Hessian through a recorder, the jackknife), ``frobenius``
(16 probes either way; 25 chunked Krylov steps, the U-statistic), the exact
``trace`` (the per-example terms of one pass summed per chunk), the estimated
``trace`` (Hutch++ with 32 probes either way), ``density`` (its probes' first
products through the chunks) and average-case ``adaptive`` (the losses per
chunk).

``subsets`` draws 8 random (class-stratified) 2048-image subsets of the
60 000 training images and reports each λ_max, its jackknife estimate and data
standard error, against λ_max on all 60 000 (one operator over the whole split
with the memory budget of the kept graph at 2 GiB: the ``--samples all``
path), and λ_max with its data interval for N = 512 ... 8 192. Results go to
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
from sharpkit.curvature import HessianOperator, lanczos  # noqa: E402
from sharpkit.curvature.sampling import (  # noqa: E402
    ChunkedHessian,
    ChunkRecorder,
    sample_indices,
)
from sharpkit.curvature.uncertainty import (  # noqa: E402
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
    t0 = time.process_time()
    op = HessianOperator(model, CE, split, batch_size=len(split))
    res = _lanczos(op, op.n, seed)
    return {
        "seconds": time.process_time() - t0,
        "products": op.hvp_count,
        "value": float(res.eigenvalues[0]),
        "result": res,
        "op": op,
    }


def _data_spectral(model: nn.Module, split: DataSplit, seed: int) -> dict[str, Any]:
    t0 = time.process_time()
    ch = ChunkedHessian.from_split(model, CE, split, chunks=CHUNKS)
    rec = ChunkRecorder(ch)
    res = _lanczos(rec, ch.n, seed)
    est = spectral_estimate(rec)[0]
    return {
        "seconds": time.process_time() - t0,
        "products": ch.hvp_count,
        "value": float(res.eigenvalues[0]),
        "estimate": est.estimate,
        "stderr": est.stderr,
        "result": res,
        "chunked": ch,
        "recorder": rec,
    }


def _ctx(model: nn.Module, split: DataSplit) -> Any:
    from sharpkit.interfaces import AnalysisContext

    return AnalysisContext(
        model=model,
        loss_fn=CE,
        data=split,
        batch_size=len(split),
        device=torch.device("cpu"),
        dtype=torch.float32,
        seed=0,
    )


def _pairs() -> dict[str, tuple[Any, Any]]:
    """Each metric as a user runs it, without and with ``data_error``."""
    from sharpkit.builtin.metrics import Density, Frobenius, Spectral, Trace
    from sharpkit.builtin.perturbation import AdaptiveSharpness

    return {
        "spectral": (Spectral(), Spectral(data_error=True)),
        "frobenius": (Frobenius(probes=16), Frobenius(probes=16, data_error=True)),
        "trace exact-ggn": (
            Trace(method="exact-ggn"),
            Trace(method="exact-ggn", data_error=True),
        ),
        "trace hutch++ (32 probes)": (
            Trace(method="hutch++", probes=32),
            Trace(method="hutch++", probes=32, data_error=True),
        ),
        "density": (Density(), Density(data_error=True)),
        "adaptive average": (
            AdaptiveSharpness(kind="average"),
            AdaptiveSharpness(kind="average", data_error=True),
        ),
    }


def cost(reps: int = 3) -> dict[str, Any]:
    """CPU time of each metric with ``data_error`` over without, medians of ``reps``.

    Each metric alone on a fresh context (so nothing is shared between them),
    the two sides alternated in one process: ``ratio`` is the median of the
    per-repetition ratios.
    """
    torch.set_num_threads(1)
    model, x, y = mlp_workload(2048)
    split = DataSplit(x, y)
    rows: dict[str, dict[str, list[float]]] = {}
    for rep in range(reps):
        for name, (plain, data) in _pairs().items():
            row = rows.setdefault(name, {"plain": [], "data": [], "ratio": []})
            seconds = []
            for metric in (plain, data):
                t0 = time.process_time()
                result = metric.compute(_ctx(model, split))
                seconds.append(time.process_time() - t0)
            row["plain"].append(seconds[0])
            row["data"].append(seconds[1])
            row["ratio"].append(seconds[1] / seconds[0])
            row["hvps"] = [float(result.hvps)]
            row["value"] = [result.value]
            row["data_stderr"] = [float(result.data_stderr or float("nan"))]
            print(f"rep {rep} {name}: {seconds[0]:.2f}s -> {seconds[1]:.2f}s "
                  f"({seconds[1] / seconds[0]:.2f}x) {result.value:.4g} "
                  f"± {result.data_stderr} (data)", flush=True)  # fmt: skip
    out = {
        name: {k: statistics.median(v) for k, v in row.items()}
        for name, row in rows.items()
    }
    out["load"] = list(os.getloadavg())  # type: ignore[assignment]
    print(json.dumps(out, indent=1))
    return out


def _all_lambda(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, Any]:
    t0 = time.process_time()
    op = HessianOperator(
        model, CE, DataSplit(x, y), batch_size=2048, memory_budget=ALL_BUDGET
    )
    res = _lanczos(op, op.n, 0)
    return {
        "value": float(res.eigenvalues[0]),
        "bound": float(res.bounds[0]),
        "products": op.hvp_count,
        "seconds": time.process_time() - t0,
        "method": op.method,
    }


def subsets(count: int = 8) -> dict[str, Any]:
    """λ_max on random subsets and along N, against all 60 000 images."""
    torch.set_num_threads(1)
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
    for size in (512, 1024, 2048, 4096, 8192):
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
    if part in ("cost", "all"):
        out = cost(int(sys.argv[2]) if len(sys.argv) > 2 else 3)
        saved = json.loads(path.read_text()) if path.exists() else {}
        path.write_text(json.dumps(saved | {"cost": out}, indent=1))
    if part in ("subsets", "all"):
        out = subsets()
        saved = json.loads(path.read_text()) if path.exists() else {}
        path.write_text(json.dumps(saved | {"subsets": out}, indent=1))


if __name__ == "__main__":
    main()
