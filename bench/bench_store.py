"""Results-store costs: writing a run, the tidy table over 500 runs, dedup lookups.

Side by side with what a user would otherwise do with plain zarr-python: open every
run group (and its metric groups) through ``zarr.open_group`` and read the
attributes. ``ResultStore`` reads the same ``zarr.json`` documents directly, once
per store object, so the ratio is the point, not the absolute times.

Run: ``.venv/bin/python bench/bench_store.py [--runs 500]``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import zarr

from sharpkit.interfaces import MetricResult
from sharpkit.store import ResultStore, open_results


def typical_measure(i: int) -> tuple[dict, dict[str, MetricResult]]:
    lr = [0.005, 0.01, 0.05, 0.1][i % 4]
    batch = [25, 128, 512, 1000][(i // 4) % 4]
    attrs = {
        "model": "mlp-bn",
        "model_options": {"width": 256, "depth": 4},
        "dataset": "fashion-mnist",
        "lr": lr,
        "batch_size": batch,
        "seed": 0,
        "train_seed": i,
        "epoch": 200,
        "checkpoint_path": f"/runs/ckpt_{i}.pt",
        "checkpoint_sha256": f"{i:064x}",
        "final": {"train_accuracy": 1.0, "test_accuracy": 0.9, "train_loss": 0.01},
        "sharpkit_version": "0.1.0",
        "torch_version": "2.14.1",
        "command": "sharpkit measure ...",
    }
    metrics = {
        "spectral": MetricResult(
            value=100.0 * batch / lr / 1e5,
            bound=1e-3,
            converged=True,
            hvps=40,
            seconds=3.0,
            arrays={"ritz_values": np.linspace(10, 0, 20)},
            attrs={"key": f"spectral-{i}", "method": "lanczos", "tol": 1e-3},
        ),
        "frobenius": MetricResult(
            value=30.0,
            stderr=0.2,
            hvps=120,
            seconds=8.0,
            arrays={"top_eigenvalues": np.linspace(10, 1, 10)},
            attrs={"key": f"frobenius-{i}", "probes": 64},
        ),
    }
    return attrs, metrics


def plain_zarr_table(path: Path) -> list[dict]:
    """What a user without sharpkit does: walk the groups with zarr-python."""
    rows = []
    runs = zarr.open_group(path, mode="r")["runs"]
    for rid, run in runs.groups():
        attrs = run.attrs.asdict()
        for name, metric in run["metrics"].groups():
            rows.append(
                {
                    "run_id": rid,
                    "lr": attrs["lr"],
                    "metric": name,
                    "value": metric.attrs["value"],
                }
            )
    return rows


def timed(fn, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=500)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.zarr"
        store = ResultStore(path)
        write_times = []
        for i in range(args.runs):
            attrs, metrics = typical_measure(i)
            start = time.perf_counter()
            store.write_run(kind="measure", attrs=attrs, metrics=metrics)
            write_times.append(time.perf_counter() - start)
        n = args.runs
        med = 1e3 * statistics.median(write_times)
        print(f"write_run (2 metrics, 2 arrays): median {med:.1f} ms per run, {n} runs")

        t_store = timed(lambda: ResultStore(path, create=False).records())
        t_zarr = timed(lambda: plain_zarr_table(path), repeat=1)
        rows = ResultStore(path, create=False).records()
        assert len(rows) == 2 * n == len(plain_zarr_table(path))
        print(
            f"tidy table over {n} runs, cold: ResultStore.records {t_store:.3f} s, "
            f"plain zarr walk {t_zarr:.3f} s (ratio {t_zarr / t_store:.1f}x)"
        )
        warm = ResultStore(path, create=False)
        warm.records()
        print(
            f"records() again on the same object (index warm): "
            f"{1e3 * timed(warm.records):.1f} ms"
        )
        t_frame = timed(lambda: open_results(path))
        print(f"open_results -> DataFrame over {n} runs: {t_frame:.3f} s")

        cold = ResultStore(path, create=False)
        t0 = time.perf_counter()
        hit = cold.find_metric(f"spectral-{n // 2}")
        t_first = time.perf_counter() - t0
        assert hit is not None
        t_hit = timed(lambda: cold.find_metric(f"spectral-{n // 3}"), repeat=20)
        t_miss = timed(lambda: cold.find_metric("no-such-key"), repeat=20)
        print(
            f"find_metric: first (builds index) {1e3 * t_first:.0f} ms, "
            f"hit {1e3 * t_hit:.2f} ms (reads the metric's arrays), "
            f"miss {1e3 * t_miss:.2f} ms (relists runs/)"
        )
        rid = warm.runs()[n // 2].run_id
        print(
            f"run(id) with all arrays: {1e3 * timed(lambda: warm.run(rid), 5):.1f} ms"
        )


if __name__ == "__main__":
    main()
