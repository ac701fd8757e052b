"""Big models: λ_max, top-5 and trace of timm's ResNet-50 (25.6 M parameters).

``timm.create_model("resnet50")`` (random weights, 1000 classes, no download)
on the first ``--images`` CIFAR-10 training images upsampled to 224x224
(bilinear), float32, batch norm in eval mode, mean cross-entropy. Each run is a
fresh process, so its peak memory is its own: resident memory is sampled every
millisecond from a second thread and reported above the resident memory after
the model and data were loaded (by default ``MALLOC_MMAP_THRESHOLD_`` makes
freed tensors return to the OS at once, so RSS tracks live memory, as in
``_memory.py``; this costs page faults, so ``--mmap-threshold ''`` keeps
glibc's default, faster, and RSS then includes memory glibc keeps for reuse).

Runs:

* ``sharpkit-lmax``: ``sharpkit.measure(..., "spectral", memory_budget=...)``
  (tol 1e-3, relative bound);
* ``sharpkit-top5-trace``: ``spectral`` with ``top_k=5`` and ``trace`` (Hutch++
  on a Krylov sketch; ``--trace-rel-stderr``) in one call, under the budget;
* ``pyhessian-lmax``: PyHessian 0.1 ``hessian(...).eigenvalues(top_n=1)``
  (power iteration, its defaults: tol 1e-3, at most 100 products).

    python bench/bench_big_model.py            # ~30 min on a quiet 2-core machine
    python bench/bench_big_model.py --runs sharpkit-lmax --images 8
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _workload import RESULTS, cifar10_train

RUNS = ("sharpkit-lmax", "sharpkit-top5-trace", "pyhessian-lmax")
PAGE = os.sysconf("SC_PAGE_SIZE")


def _rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * PAGE


class Peak:
    """The peak resident memory while the block runs, above that at its start."""

    def __enter__(self) -> Peak:
        self.base = _rss()
        self.peak = self.base
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss())
            time.sleep(0.001)

    def __exit__(self, *exc: object) -> None:
        self.peak = max(self.peak, _rss())
        self._stop.set()
        self._thread.join()

    @property
    def mib(self) -> float:
        return (self.peak - self.base) / 2**20


def workload(images: int) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    import timm

    torch.manual_seed(0)
    model = timm.create_model("resnet50", pretrained=False, num_classes=1000)
    model.eval()
    x, y = cifar10_train()
    x = torch.nn.functional.interpolate(
        x[:images], size=(224, 224), mode="bilinear", align_corners=False
    ).contiguous()
    return model, x, y[:images].contiguous()


def one(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """Run ``name`` in this process; return its figures."""
    torch.set_num_threads(args.threads)
    model, x, y = workload(args.images)
    n = sum(p.numel() for p in model.parameters())
    out: dict[str, Any] = {"run": name, "parameters": n, "images": len(x)}
    start = time.perf_counter()
    with Peak() as peak:
        if name.startswith("sharpkit"):
            out.update(_sharpkit(name, model, x, y, args))
        else:
            out.update(_pyhessian(model, x, y))
    out["seconds"] = time.perf_counter() - start
    out["peak_mib"] = peak.mib
    return out


def _sharpkit(name: str, model, x, y, args: argparse.Namespace) -> dict[str, Any]:
    import sharpkit

    common = {
        "batch_size": args.batch_size,
        "memory_budget": args.memory_budget,
        "samples": len(x),
    }
    if name == "sharpkit-lmax":
        m = sharpkit.measure(model, (x, y), "spectral", **common)
        s = m["spectral"]
        return {
            "lambda_max": s.value,
            "hvps": s.hvps,
            "bound": float(s.arrays["residual_bounds"][0]),
            "stopped_by": s.attrs.get("stopped_by"),
            "hvp_method": s.attrs.get("hvp_method"),
        }
    m = sharpkit.measure(
        model,
        (x, y),
        ["spectral", "trace"],
        options={
            "spectral": {"top_k": 5},
            "trace": (
                {"probes": args.trace_probes}
                if args.trace_probes
                else {"rel_stderr": args.trace_rel_stderr}
            ),
        },
        **common,
    )
    s, t = m["spectral"], m["trace"]
    return {
        "top5": [float(v) for v in s.arrays["eigenvalues"]],
        "top5_bounds": [float(v) for v in s.arrays["residual_bounds"]],
        "top5_hvps": s.hvps,
        "stopped_by": s.attrs.get("stopped_by"),
        "trace": t.value,
        "trace_stderr": t.stderr,
        "trace_hvps": t.hvps,
        "trace_method": t.attrs.get("method"),
        "hvps": s.hvps + t.hvps,
    }


def _pyhessian(model, x, y) -> dict[str, Any]:
    import pyhessian.hessian  # noqa: F401 - the package re-exports a class by that name

    ph = sys.modules["pyhessian.hessian"]
    calls = [0]
    original = ph.hessian_vector_product

    def counting(*a: Any) -> Any:
        calls[0] += 1
        return original(*a)

    ph.hessian_vector_product = counting
    h = ph.hessian(model, torch.nn.functional.cross_entropy, data=(x, y), cuda=False)
    values, _ = h.eigenvalues(top_n=1)
    return {"lambda_max": float(values[0]), "hvps": calls[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", nargs="+", default=list(RUNS), choices=RUNS)
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--memory-budget", default="6GiB")
    parser.add_argument("--trace-rel-stderr", type=float, default=0.05)
    parser.add_argument("--trace-probes", type=int, default=0, help="fixed probes")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--mmap-threshold",
        default="65536",
        help="MALLOC_MMAP_THRESHOLD_ for the runs ('' for glibc's default)",
    )
    parser.add_argument("--timeout", type=float, default=3600)
    parser.add_argument("--one", choices=RUNS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.one, args)))
        return
    env = dict(os.environ)
    if args.mmap_threshold:
        env["MALLOC_MMAP_THRESHOLD_"] = args.mmap_threshold
    rows = []
    for name in args.runs:
        cmd = [sys.executable, __file__, "--one", name, "--images", str(args.images)]
        cmd += ["--batch-size", str(args.batch_size), "--threads", str(args.threads)]
        cmd += ["--memory-budget", args.memory_budget]
        cmd += ["--trace-rel-stderr", str(args.trace_rel_stderr)]
        cmd += ["--trace-probes", str(args.trace_probes)]
        load = os.getloadavg()[0]
        try:
            done = subprocess.run(
                cmd,
                capture_output=True,
                text=True,
                env=env,
                timeout=args.timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            row: dict[str, Any] = {"run": name, "error": f"timeout {args.timeout} s"}
        else:
            if done.returncode == 0:
                row = json.loads(done.stdout.strip().splitlines()[-1])
            else:
                tail = (done.stderr.strip().splitlines() or ["?"])[-1]
                row = {"run": name, "error": f"exit {done.returncode}: {tail}"}
        row["load_1min_before"] = load
        rows.append(row)
        print(json.dumps(row), flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    dest = RESULTS / "bench_big_model.json"
    dest.write_text(json.dumps(rows, indent=1))
    print(f"figures written to {dest}")


if __name__ == "__main__":
    main()
