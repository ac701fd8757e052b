"""Measure across processes: ``sharpkit measure --nproc N`` for N = 1, 2 on ResNet-56.

The ResNet-56 workload of ``bench_curvature.py`` (trained one epoch on 5,000
CIFAR-10 images; ``_workload.resnet_workload``) saved as a sharpkit checkpoint,
and λ_max (``spectral``, tol 1e-3) on the first 256 CIFAR-10 training images,
batch norm in eval mode, float32, through the command line a user runs:

    sharpkit measure r56.pt -m spectral --split train --samples 256 --no-store \
        --json --nproc N

Each N runs as a fresh command (set-up and loading included in the wall time);
the whole machine's cores are shared by the ranks (2 threads for one process,
1 each for two). The JSON gives the metric's own time and products.

    python bench/bench_distributed.py               # ~3 min on a quiet 2-core machine
    python bench/bench_distributed.py --nproc 1 2 4
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _workload import RESULTS, resnet_workload

import sharpkit

SRC = Path(sharpkit.__file__).resolve().parents[1]


def checkpoint() -> Path:
    """The ResNet-56 workload as a sharpkit checkpoint (written once)."""
    path = RESULTS / "resnet56_cifar_n5000_e1_s0.sharpkit.pt"
    if not path.exists():
        model, _, _ = resnet_workload()
        meta = sharpkit.CheckpointMeta(
            model="resnet-cifar", model_options={"depth": 56}, dataset="cifar10"
        )
        sharpkit.save_checkpoint(path, model, meta)
    return path


def run(ckpt: Path, nproc: int, samples: int) -> dict[str, Any]:
    """One ``sharpkit measure`` command with ``nproc`` ranks; its figures."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(SRC), *filter(None, [env.get("PYTHONPATH")])]
    )
    cores = os.cpu_count() or 1
    env["OMP_NUM_THREADS"] = str(max(1, cores // nproc))
    cmd = [sys.executable, "-m", "sharpkit", "measure", str(ckpt), "-m", "spectral"]
    cmd += ["--split", "train", "--samples", str(samples), "--no-store", "--json"]
    cmd += ["--nproc", str(nproc)]
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        msg = f"nproc {nproc} failed: {done.stderr.strip()}"
        raise RuntimeError(msg)
    result = json.loads(done.stdout)[0]["metrics"]["spectral"]
    return {
        "nproc": nproc,
        "threads_per_rank": int(env["OMP_NUM_THREADS"]),
        "wall_s": wall,
        "metric_s": result["seconds"],
        "hvps": result["hvps"],
        "lambda_max": result["value"],
        "load_1min": os.getloadavg()[0],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nproc", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--samples", type=int, default=256)
    args = parser.parse_args()
    ckpt = checkpoint()
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, load {os.getloadavg()}")
    rows = []
    for n in args.nproc:
        row = run(ckpt, n, args.samples)
        rows.append(row)
        print(
            f"nproc {n}: wall {row['wall_s']:.1f} s, spectral {row['metric_s']:.1f} s, "
            f"{row['hvps']} HVPs, λ_max {row['lambda_max']:.4f}, "
            f"load {row['load_1min']:.1f}",
            flush=True,
        )
    dest = RESULTS / "bench_distributed.json"
    dest.write_text(json.dumps(rows, indent=1))
    print(f"figures written to {dest}")


if __name__ == "__main__":
    main()
