"""ResNet-56 λ_max: sharpkit vs PyHessian in one run, and where a product's time goes.

The ResNet-56 workload of ``bench_curvature.py`` (853,018 parameters, the first
256 CIFAR-10 training images, eval mode, float32, 2 threads). Part 1 times
sharpkit's ``spectral`` (tol 1e-3) and PyHessian's ``eigenvalues(top_n=1)``
interleaved (ABAB...) with ``bench_curvature``'s own runners, so both see the
same machine state. Their true relative error is taken against the cached
ground truth of ``bench_curvature.py`` when there is one, else against
``--truth`` (λ₁ of docs/benchmarks.md for this checkpoint). Part 2 profiles one
product through the kept gradient graph with ``torch.profiler`` and one
gradient for scale, and prints the operators that take the time. Part 3
(``steps``) runs sharpkit's Lanczos from the gradient start (tol 1e-3), marks
where its stopping rule stops, continues the same process to ``--steps``
products and prints, after each, the top Ritz value, its true error, its
residual and bound. Part 4 (``variants``) times the gradient-graph build and
three products, interleaved, for the plain ``torch.autograd.grad`` way
(PyHessian's), sharpkit's operator with and without its batch-norm fusion, and
plain autograd on a channels-last copy.

    python bench/bench_resnet_profile.py       # ~15 min on a quiet 2-core machine
    python bench/bench_resnet_profile.py --parts steps variants
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_curvature as bc
from _workload import RESULTS, resnet_workload


def ratio_section(model, x, y, truth: list[float], rounds: int) -> dict[str, Any]:
    runs: dict[str, list[dict[str, Any]]] = {"sharpkit": [], "pyhessian": []}
    for seed in range(rounds):
        order = (
            ["sharpkit", "pyhessian"] if seed % 2 == 0 else ["pyhessian", "sharpkit"]
        )
        for tool in order:
            load = os.getloadavg()[0]
            if tool == "sharpkit":
                row = bc.run_sharpkit_spectral(model, x, y, seed, 1, truth)
            else:
                row = bc.run_pyhessian_top(model, x, y, seed, 1, truth)
            row["load_1min"] = load
            runs[tool].append(row)
            print(f"{tool} seed {seed}: {json.dumps(row)}", flush=True)
    ours = bc.med([r["seconds"] for r in runs["sharpkit"]])
    theirs = bc.med([r["seconds"] for r in runs["pyhessian"]])
    print(f"median {ours:.1f} s vs {theirs:.1f} s: {theirs / ours:.2f}x", flush=True)
    return {"runs": runs, "ratio": theirs / ours}


def profile_section(model, x, y) -> dict[str, Any]:
    from torch.profiler import ProfilerActivity, profile

    params = [p for p in model.parameters() if p.requires_grad]
    start = time.perf_counter()
    torch.autograd.grad(bc.LOSS(model(x), y), params)
    gradient_s = time.perf_counter() - start
    H = bc.HessianOperator(model, bc.LOSS, [(x, y)])
    v = torch.randn(H.n, generator=torch.Generator().manual_seed(0))
    start = time.perf_counter()
    H @ v  # builds the graph
    first_s = time.perf_counter() - start
    times = []
    for _ in range(2):
        start = time.perf_counter()
        H @ v
        times.append(time.perf_counter() - start)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        H @ v
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    top = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:15]
    rows = [
        {
            "op": e.key,
            "self_ms": e.self_cpu_time_total / 1e3,
            "share": e.self_cpu_time_total / total,
            "calls": e.count,
        }
        for e in top
    ]
    print(
        f"gradient {gradient_s:.2f} s; setup + first product {first_s:.2f} s; "
        f"product {min(times):.2f} s (method {H.method})"
    )
    for r in rows:
        print(
            f"  {r['share']:6.1%} {r['self_ms']:9.1f} ms  {r['calls']:5d}x  {r['op']}"
        )
    return {
        "gradient_s": gradient_s,
        "setup_and_first_product_s": first_s,
        "product_s": min(times),
        "top_ops": rows,
    }


def steps_section(model, x, y, truth: list[float], steps: int) -> dict[str, Any]:
    """sharpkit's Lanczos step by step, and where its own stopping rule stops."""
    import numpy as np

    from sharpkit.builtin.metrics import _mixed_start
    from sharpkit.curvature.lanczos import lanczos, ritz_bounds

    H = bc.HessianOperator(model, bc.LOSS, [(x, y)])
    gen = torch.Generator().manual_seed(0)
    v0 = _mixed_start(H.gradient(), H.n, gen, torch.empty(0, dtype=H.dtype))
    # The real rule decides where to stop; the same process then runs on to
    # ``steps`` products so that the table shows what the later ones add.
    res = lanczos(H, H.n, tol=1e-3, v0=v0, generator=gen)
    proc = res.process
    assert proc is not None
    while proc.m < steps and not proc.exhausted:
        proc.step()
    a, b = proc.alphas, proc.betas
    rows: list[dict[str, Any]] = []
    for m in range(1, len(a) + 1):
        T = np.diag(a[:m]) + np.diag(b[: m - 1], 1) + np.diag(b[: m - 1], -1)
        w, S = np.linalg.eigh(T)
        w, S = w[::-1], S[:, ::-1]
        beta = b[m - 1] if m < len(a) else proc.beta
        r = np.abs(beta * S[-1, :])
        bounds, _ = ritz_bounds(w, r, eps=proc.eps)
        theta = float(w[0])
        rows.append(
            {
                "products": m,
                "theta": theta,
                "true_rel_error": abs(theta - truth[0]) / abs(truth[0]),
                "rel_residual": float(r[0]) / theta,
                "rel_bound": float(bounds[0]) / theta,
                "stop": m == res.n_matvecs,
            }
        )
        print(
            f"  {m:2d} θ₁ {theta:.6f} true err {rows[-1]['true_rel_error']:.1e} "
            f"r/θ {rows[-1]['rel_residual']:.1e} bound/θ {rows[-1]['rel_bound']:.1e}"
            f"{' STOP (tol 1e-3)' if m == res.n_matvecs else ''}",
            flush=True,
        )
    return {"rows": rows, "stopped_at": res.n_matvecs}


def variants_section(model, x, y, rounds: int) -> dict[str, Any]:
    """Graph build and product times: plain autograd, sharpkit, channels-last."""
    import copy

    F = torch.nn.functional
    n = sum(p.numel() for p in model.parameters())
    v = torch.randn(n, generator=torch.Generator().manual_seed(0))
    cl_model = copy.deepcopy(model).to(memory_format=torch.channels_last)
    cl_x = x.contiguous(memory_format=torch.channels_last)

    def plain(m, inputs) -> tuple[float, list[float]]:
        ps = list(m.parameters())
        t0 = time.perf_counter()
        g = torch.autograd.grad(F.cross_entropy(m(inputs), y), ps, create_graph=True)
        build = time.perf_counter() - t0
        parts = torch.split(v, [p.numel() for p in ps])
        vs = [c.view_as(p) for c, p in zip(parts, ps, strict=True)]
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            torch.autograd.grad(g, ps, vs, retain_graph=True)
            times.append(time.perf_counter() - t0)
        return build, times

    def operator(fuse: bool) -> tuple[float, list[float]]:
        H = bc.HessianOperator(model, bc.LOSS, [(x, y)], fuse_bn=fuse)
        H.gradient()
        for _ in range(3):
            H(v)
        return H.setup_seconds, list(H._hvp_seconds)

    variants = {
        "plain autograd (PyHessian's way)": lambda: plain(model, x),
        "sharpkit operator": lambda: operator(True),
        "sharpkit operator, fuse_bn=False": lambda: operator(False),
        "plain autograd, channels-last": lambda: plain(cl_model, cl_x),
    }
    out: dict[str, list[dict[str, Any]]] = {k: [] for k in variants}
    for _ in range(rounds):
        for name, run in variants.items():
            build, times = run()
            out[name].append({"build_s": build, "products_s": times})
            print(
                f"  {name}: build {build:.1f} s, products "
                f"{', '.join(f'{t:.1f}' for t in times)} s",
                flush=True,
            )
    return out


PARTS = ("ratio", "profile", "steps", "variants")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--truth",
        type=float,
        nargs=2,
        help="λ₁ λ₂ of this checkpoint (default: the cache of bench_curvature.py)",
    )
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--skip-profile", action="store_true")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--images", type=int, default=256)
    args = parser.parse_args()
    if args.skip_profile:
        args.parts = [p for p in args.parts if p != "profile"]
    torch.set_num_threads(bc.THREADS)
    model, x, y = resnet_workload(args.images)
    cached = RESULTS / f"truth_resnet_{bc.state_hash(model)}.json"
    if cached.exists() and args.images == 256:
        truth = json.loads(cached.read_text())["eigenvalues"]
    elif args.truth:
        truth = list(args.truth)
    else:
        sys.exit(
            "no ground truth for this checkpoint: run "
            "`python bench/bench_curvature.py --only-resnet` first, or pass --truth"
        )
    print(f"torch {torch.__version__}, load {os.getloadavg()}, truth {truth}")
    out: dict[str, Any] = {"truth": truth, "truth_cached": cached.exists()}
    if "ratio" in args.parts:
        out["lambda_max"] = ratio_section(model, x, y, truth, args.rounds)
    if "profile" in args.parts:
        out["profile"] = profile_section(model, x, y)
    if "steps" in args.parts:
        print("Lanczos step by step:")
        out["steps"] = steps_section(model, x, y, truth, args.steps)
    if "variants" in args.parts:
        print("graph build and products, interleaved:")
        out["variants"] = variants_section(model, x, y, args.rounds)
    dest = RESULTS / "bench_resnet_profile.json"
    if dest.exists():  # keep the parts not run this time
        out = {**json.loads(dest.read_text()), **out}
    dest.write_text(json.dumps(out, indent=1, default=float))
    print(f"figures written to {dest}")


if __name__ == "__main__":
    main()
