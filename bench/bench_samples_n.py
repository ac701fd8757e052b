"""How many samples? λ_max and its data interval against N, through ``measure``.

Usage::

    python bench/bench_samples_n.py CHECKPOINT [--sizes 256,512,...] [--draws 3]

CHECKPOINT is an ``mlp-bn`` checkpoint trained by sharpkit on Fashion-MNIST
(the issue-19 model: ``sharpkit train --model mlp-bn --data fashion-mnist --lr
0.02 --batch-size 128 --epochs 8 --subset 20000``). For each N, ``draws``
class-stratified random subsets of all 60 000 training images (seeds 1 ...
draws) are measured as ``sharpkit measure CKPT --data fashion-mnist --samples N
--sample random --seed S -o spectral.data_error=true`` measures them (the
public :func:`sharpkit.measure`, the full training split passed as a dataset
so that the draws come from all 60 000 images, not the model's 20 000);
then λ_max on all 60 000 (``samples="all"``, the kept graph within a 2 GiB
memory budget). Each row: N, the draw's seed, λ_max of the sample with its
Lanczos bound, the jackknife's bias-corrected estimate and data standard
error, the products, and this process's CPU time (one torch thread).

Writes ``docs/results/samples-n.csv`` and ``docs/img/samples-n.png`` (the
figure of docs/concepts/curvature.md, "How many samples?").
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import csv
import time
import warnings
from pathlib import Path
from typing import Any

import torch

import sharpkit

DOCS = Path(__file__).resolve().parent.parent / "docs"
SIZES = (256, 512, 1024, 2048, 4096, 8192, 16384)
FIELDS = (
    "samples", "seed", "lambda_max", "bound", "data_estimate", "data_stderr",
    "hvps", "cpu_s", "load",
)  # fmt: skip


def _row(checkpoint: str, data: Any, samples: int | str, seed: int) -> dict[str, Any]:
    cpu = time.process_time()
    with warnings.catch_warnings():
        # the model was trained on 20 000 of the images: said once, on purpose
        warnings.simplefilter("ignore", sharpkit.SharpkitWarning)
        m = sharpkit.measure(
            checkpoint, data, metrics=["spectral"], samples=samples,
            sample="random", seed=seed, memory_budget="2GiB",
            options={"spectral": {"data_error": samples != "all"}},
        )  # fmt: skip
    r = m["spectral"]
    return {
        "samples": int(m.attrs["samples"]),
        "seed": seed,
        "lambda_max": r.value,
        "bound": r.bound,
        "data_estimate": r.attrs.get("data_estimate", ""),
        "data_stderr": "" if r.data_stderr is None else r.data_stderr,
        "hvps": r.hvps,
        "cpu_s": round(time.process_time() - cpu, 2),
        "load": round(os.getloadavg()[0], 1),
    }


def _figure(rows: list[dict[str, Any]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    full = next(r for r in rows if r["data_stderr"] == "")
    sub = [r for r in rows if r["data_stderr"] != ""]
    seeds = sorted({r["seed"] for r in sub})
    fig, ax = plt.subplots(figsize=(6.4, 3.8), dpi=120)
    for i, seed in enumerate(seeds):
        pts = [r for r in sub if r["seed"] == seed]
        n = np.array([r["samples"] for r in pts], dtype=float)
        n = n * 2 ** (0.08 * (i - (len(seeds) - 1) / 2))  # side by side
        value = np.array([r["lambda_max"] for r in pts])
        err = 2 * np.array([r["data_stderr"] for r in pts])
        ax.errorbar(
            n, value, yerr=err, fmt="o", ms=4, capsize=2, color=f"C{i}",
            label=f"draw {seed}: λ_max ± 2·data_stderr",
        )  # fmt: skip
        ax.plot(n, [r["data_estimate"] for r in pts], "_", ms=8, color=f"C{i}")
    ax.axhline(
        full["lambda_max"], color="k", lw=1,
        label=f"λ_max on all {full['samples']} images",
    )  # fmt: skip
    ax.set_xscale("log", base=2)
    ax.set_xlabel("samples N (random, class-stratified)")
    ax.set_ylabel("λ_max")
    ax.set_title("mlp-bn, 8 epochs on 20 000 Fashion-MNIST images", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)))
    parser.add_argument("--draws", type=int, default=3)
    parser.add_argument("--csv", type=Path, default=DOCS / "results" / "samples-n.csv")
    parser.add_argument("--png", type=Path, default=DOCS / "img" / "samples-n.png")
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = sharpkit.load_dataset("fashion-mnist")  # all 60 000 training images
    rows = []
    start = time.perf_counter()
    for size in (int(s) for s in args.sizes.split(",")):
        for seed in range(1, args.draws + 1):
            rows.append(_row(args.checkpoint, data, size, seed))
            print(rows[-1], flush=True)
    rows.append(_row(args.checkpoint, data, "all", 0))
    print(rows[-1], flush=True)
    print(f"wall {time.perf_counter() - start:.0f} s", flush=True)
    args.csv.parent.mkdir(parents=True, exist_ok=True)
    with args.csv.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    _figure(rows, args.png)
    print("wrote", args.csv, args.png)


if __name__ == "__main__":
    main()
