"""Curvature benchmark: sharpkit vs PyHessian, hessian-eigenthings and curvlinops.

Usage::

    python bench/bench_curvature.py            # full run (about 20 min on 2 cores)
    python bench/bench_curvature.py --quick    # a few seeds, cached truth, no ResNet

Workload (issue 3): a 784-256-256-256-10 BN-ReLU MLP (336,650 parameters)
trained 3 epochs with SGD (η=0.05, S=128) on Fashion-MNIST, eval mode, mean
cross-entropy over the first 2048 training images, 2 torch threads; BLAS of
numpy/scipy on 1 thread (``OPENBLAS_NUM_THREADS=1``, set before numpy loads).
Every tool runs in this process on the same model and data; each timed run
includes building its operator (sharpkit's gradient graph, PyHessian's, ...).

Ground truth comes from tight solves, cached in ``bench/results/``:
λ₁..λ₅ from float64 Lanczos at tol 1e-10; tr H and ‖H‖_F from a 100-dimensional
Krylov deflation plus thousands of probes (their standard errors are printed).

A run "reaches" an accuracy when its *true* relative error is within it; a
tool reaches it only if every one of its runs does (a wrong eigenvalue reported
as converged is a failure). sharpkit's reported bounds are also checked against
the true error in every run.

Competitors (installed in the benchmark environment only, never imported by
sharpkit): pyhessian 0.1, hessian-eigenthings 1.0.0a5, curvlinops-for-pytorch
3.0.1 with scipy's ``eigsh``.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import argparse
import hashlib
import json
import math
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _workload import RESULTS, mlp_workload, resnet_workload  # noqa: E402

from sharpkit.builtin.metrics import Frobenius, Spectral, Trace  # noqa: E402
from sharpkit.curvature import (  # noqa: E402
    HessianOperator,
    frobenius_norm,
    hutchinson_trace,
    krylov_deflation,
    lanczos,
)
from sharpkit.interfaces import AnalysisContext, DataSplit  # noqa: E402

LOSS = torch.nn.functional.cross_entropy
LOSS_MODULE = torch.nn.CrossEntropyLoss()  # curvlinops needs .reduction
THREADS = 2


# --------------------------------------------------------------------------- helpers


def med(xs: list[float]) -> float:
    return float(statistics.median(xs)) if xs else math.nan


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def state_hash(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def clear_grads(model: torch.nn.Module) -> None:
    for p in model.parameters():
        p.grad = None


class Counter:
    def __init__(self) -> None:
        self.n = 0


def context(model, x, y, seed: int, **kw: Any) -> AnalysisContext:
    return AnalysisContext(
        model=model,
        loss_fn=LOSS,
        data=DataSplit(x, y),
        batch_size=len(x),
        device=torch.device("cpu"),
        dtype=torch.float32,
        seed=seed,
        **kw,
    )


def summary(
    name: str, runs: list[dict[str, Any]], truth: float | np.ndarray, acc: float
) -> dict[str, Any]:
    """Aggregate runs: time, HVPs, true relative error, whether all reach ``acc``."""
    errs = [r["rel_error"] for r in runs]
    out = {
        "tool": name,
        "runs": len(runs),
        "seconds_median": med([r["seconds"] for r in runs]),
        "seconds_worst": max(r["seconds"] for r in runs),
        "hvps_median": med([r["hvps"] for r in runs]),
        "rel_error_median": med(errs),
        "rel_error_worst": max(errs),
        "reaches": all(e <= acc for e in errs),
    }
    if all("bound_ok" in r for r in runs):
        out["bound_ok_all"] = all(r["bound_ok"] for r in runs)
        out["rel_bound_median"] = med([r["rel_bound"] for r in runs])
    return out


def print_table(title: str, rows: list[dict[str, Any]], ours: str, acc: float) -> None:
    print(f"\n### {title}\n")
    base = next(r for r in rows if r["tool"] == ours)
    print(
        "| tool | runs | time median (worst) | HVPs | true rel. error median / worst "
        f"| all runs within {acc:g} | sharpkit speed-up |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        ratio = r["seconds_median"] / base["seconds_median"]
        extra = ""
        if "bound_ok_all" in r:
            extra = f" (bound covers error: {'yes' if r['bound_ok_all'] else 'NO'})"
        print(
            f"| {r['tool']} | {r['runs']} | {r['seconds_median']:.3f} s "
            f"({r['seconds_worst']:.3f}) | {r['hvps_median']:.0f} | "
            f"{r['rel_error_median']:.1e} / {r['rel_error_worst']:.1e} | "
            f"{'yes' if r['reaches'] else 'no'}{extra} | "
            f"{'—' if r is base else f'{ratio:.2f}x'} |"
        )


# --------------------------------------------------------------------------- truth


def mlp_truth(model, x, y, quick: bool) -> dict[str, Any]:
    path = RESULTS / f"truth_mlp_{state_hash(model)}.json"
    if path.exists():
        cached = json.loads(path.read_text())
        if quick or not cached.get("quick", False):
            return cached
    print("computing ground truth (cached afterwards) ...", flush=True)
    gen = torch.Generator().manual_seed(12345)
    H64 = HessianOperator(model, LOSS, [(x, y)], dtype=torch.float64)
    top = lanczos(H64, H64.n, k=6, tol=1e-10, max_iter=300, generator=gen)
    H = HessianOperator(model, LOSS, [(x, y)])
    defl = krylov_deflation(H, H.n, 100, generator=gen)
    probes = 400 if quick else 4000
    tr = hutchinson_trace(H, H.n, probes=probes, deflation=defl, generator=gen)
    fr = frobenius_norm(
        H, H.n, deflation=defl, probes=100 if quick else 400, generator=gen
    )
    out = {
        "eigenvalues": top.eigenvalues.tolist(),
        "eigenvalue_bounds": top.bounds.tolist(),
        "eigen_converged": top.converged,
        "trace": tr.value,
        "trace_stderr": tr.stderr,
        "frobenius": fr.value,
        "frobenius_stderr": fr.stderr,
        "quick": quick,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1))
    return out


# --------------------------------------------------------------------------- cost


def cost_section(model, x, y) -> dict[str, Any]:
    """HVP / gradient cost ratios per method, in-process, interleaved medians."""
    params = list(model.parameters())
    n = sum(p.numel() for p in params)
    gen = torch.Generator().manual_seed(0)
    v = torch.randn(n, generator=gen)
    V8 = torch.randn(n, 8, generator=gen)

    def gradient() -> None:
        torch.autograd.grad(LOSS(model(x), y), params)

    ops = {
        "graph": HessianOperator(model, LOSS, [(x, y)], method="graph"),
        "graph, BN not fused": HessianOperator(
            model, LOSS, [(x, y)], method="graph", fuse_bn=False
        ),
        "double-backward": HessianOperator(
            model, LOSS, [(x, y)], method="double-backward"
        ),
        "forward-over-reverse": HessianOperator(
            model, LOSS, [(x, y)], method="forward-over-reverse"
        ),
    }
    for H in ops.values():
        H.gradient()  # build graphs outside the timing
    fns: dict[str, tuple[Callable[[], Any], int]] = {"gradient": (gradient, 1)}
    for name, H in ops.items():
        fns[f"sharpkit {name}"] = (lambda H=H: H @ v, 1)
    fns["sharpkit graph, block of 8"] = (lambda: ops["graph"].matvec(V8), 8)
    fns["sharpkit forward-over-reverse, vmap block of 8"] = (
        lambda: ops["forward-over-reverse"].matvec(V8),
        8,
    )
    try:
        from pyhessian.hessian import hessian as PyHessian
        from pyhessian.utils import hessian_vector_product

        ph = PyHessian(model, LOSS, data=(x, y), cuda=False)
        vl = [
            t.reshape(p.shape)
            for t, p in zip(v.split([p.numel() for p in params]), params, strict=True)
        ]
        fns["PyHessian (graph reuse)"] = (
            lambda: hessian_vector_product(ph.gradsH, ph.params, vl),
            1,
        )
    except ImportError:
        ph = None
    try:
        from hessian_eigenthings import HessianOperator as EOp
        from hessian_eigenthings import supervised_loss

        eop = EOp(model, [(x, y)], supervised_loss(LOSS))
        fns["hessian-eigenthings"] = (lambda: eop.matvec(v), 1)
    except ImportError:
        pass
    try:
        from curvlinops import HessianLinearOperator

        cop = HessianLinearOperator(
            model, LOSS_MODULE, params, [(x, y)], check_deterministic=False
        )
        fns["curvlinops"] = (lambda: cop @ v, 1)
    except ImportError:
        pass
    for fn, _ in fns.values():
        fn()  # warm up
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(7):
        for k, (fn, per) in fns.items():
            _, t = timed(fn)
            times[k].append(t / per)
    base = med(times["gradient"])
    rows = {k: {"seconds": med(t), "ratio": med(t) / base} for k, t in times.items()}
    if ph is not None:
        clear_grads(model)
        del ph
    print("\n### Cost of one Hessian-vector product (gradient = 1.0)\n")
    print("| method | ms per vector | / gradient |")
    print("|---|---|---|")
    for k, r in rows.items():
        print(f"| {k} | {1e3 * r['seconds']:.1f} | {r['ratio']:.2f} |")
    return rows


def memory_section(model, x, y) -> dict[str, Any]:
    RESULTS.mkdir(parents=True, exist_ok=True)
    torch.save(
        {"state": model.state_dict(), "x": x, "y": y}, RESULTS / "mlp_analysis.pt"
    )
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072")
    out: dict[str, float] = {}
    for what in ("gradient", "graph", "double-backward", "forward-over-reverse"):
        peaks = []
        for _ in range(3):
            proc = subprocess.run(
                [sys.executable, str(HERE / "_memory.py"), what],
                capture_output=True,
                text=True,
                env=env,
                check=True,
            )
            line = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")][-1]
            peaks.append(json.loads(line)["peak_mib"])
        out[what] = med(peaks)
    print("\n### Peak memory above the loaded model and data (MiB, median of 3)\n")
    print("| computation | peak MiB | / gradient |")
    print("|---|---|---|")
    for k, mib in out.items():
        label = "one gradient" if k == "gradient" else f"build + one HVP ({k})"
        print(f"| {label} | {mib:.1f} | {mib / out['gradient']:.2f} |")
    return out


# ------------------------------------------------------------------ λ_max / top-k


def run_sharpkit_spectral(model, x, y, seed, top_k, truth_ev, tol=1e-3):
    def go():
        ctx = context(model, x, y, seed, tol=tol)
        return Spectral(top_k=top_k).compute(ctx)

    res, secs = timed(go)
    ev = np.asarray(res.arrays["eigenvalues"])
    true = np.asarray(truth_ev[:top_k])
    err = np.abs(ev - true) / np.abs(true)
    bounds = np.asarray(res.arrays["residual_bounds"])
    return {
        "seconds": secs,
        "hvps": res.hvps,
        "rel_error": float(err.max()),
        "bound_ok": bool(np.all(np.abs(ev - true) <= bounds)),
        "rel_bound": float(np.max(bounds / np.abs(ev))),
        "converged": res.converged,
    }


def run_pyhessian_top(model, x, y, seed, top_n, truth_ev):
    import pyhessian.hessian  # noqa: F401 - the package re-exports a class by that name

    ph_mod = sys.modules["pyhessian.hessian"]

    counter = Counter()
    orig = ph_mod.hessian_vector_product

    def counting(*a: Any) -> Any:
        counter.n += 1
        return orig(*a)

    ph_mod.hessian_vector_product = counting
    try:
        torch.manual_seed(seed)

        def go():
            return ph_mod.hessian(model, LOSS, data=(x, y), cuda=False).eigenvalues(
                top_n=top_n
            )

        (evs, _), secs = timed(go)
    finally:
        ph_mod.hessian_vector_product = orig
        clear_grads(model)
    ev = np.sort(np.asarray(evs))[::-1]
    true = np.asarray(truth_ev[:top_n])
    return {
        "seconds": secs,
        "hvps": counter.n,
        "rel_error": float(np.max(np.abs(ev - true) / np.abs(true))),
    }


def eigenthings_operator(model, x, y, counter: Counter) -> Any:
    """hessian-eigenthings' operator on ``(x, y)``, counting its products."""
    from hessian_eigenthings import HessianOperator as EOp
    from hessian_eigenthings import supervised_loss

    op = EOp(model, [(x, y)], supervised_loss(LOSS))
    orig = op.matvec

    def counting(v):
        counter.n += 1
        return orig(v)

    op.matvec = counting
    return op


def run_eigenthings_top(model, x, y, seed, k_report, truth_ev, k=5):
    from hessian_eigenthings import lanczos as elanczos

    counter = Counter()

    def go():
        op = eigenthings_operator(model, x, y, counter)
        return elanczos(op, k=k, which="LA", seed=seed)

    res, secs = timed(go)
    ev = np.sort(res.eigenvalues.double().numpy())[::-1][:k_report]
    true = np.asarray(truth_ev[:k_report])
    return {
        "seconds": secs,
        "hvps": counter.n,
        "rel_error": float(np.max(np.abs(ev - true) / np.abs(true))),
    }


def run_curvlinops_top(model, x, y, seed, k, truth_ev, tol=1e-3):
    from curvlinops import HessianLinearOperator
    from scipy.sparse.linalg import LinearOperator, eigsh

    counter = Counter()
    params = list(model.parameters())
    n = sum(p.numel() for p in params)

    def go():
        H = HessianLinearOperator(
            model, LOSS_MODULE, params, [(x, y)], check_deterministic=False
        )

        def mv(v: np.ndarray) -> np.ndarray:
            counter.n += 1
            out = H @ torch.as_tensor(v.reshape(-1), dtype=torch.float32)
            return out.detach().numpy().astype(np.float32)

        A = LinearOperator((n, n), matvec=mv, dtype=np.float32)
        v0 = np.random.default_rng(seed).standard_normal(n).astype(np.float32)
        return eigsh(A, k=k, which="LA", tol=tol, v0=v0)[0]

    evs, secs = timed(go)
    ev = np.sort(np.asarray(evs, dtype=np.float64))[::-1]
    true = np.asarray(truth_ev[:k])
    return {
        "seconds": secs,
        "hvps": counter.n,
        "rel_error": float(np.max(np.abs(ev - true) / np.abs(true))),
    }


# -------------------------------------------------------------- trace / Frobenius


def run_sharpkit_trace(model, x, y, seed, truth, rel_stderr, method="auto"):
    def go():
        metric = Trace(rel_stderr=rel_stderr, method=method)
        return metric.compute(context(model, x, y, seed))

    res, secs = timed(go)
    return {
        "seconds": secs,
        "hvps": res.hvps,
        "rel_error": abs(res.value - truth) / abs(truth),
        "stderr_rel": res.stderr / abs(res.value),
        # an exact value has no error of its own: the truth's (stochastic) one counts
        "within_3se": abs(res.value - truth) <= 3 * res.stderr if res.stderr else None,
    }


def run_sharpkit_frobenius(model, x, y, seed, truth, rel_stderr):
    def go():
        return Frobenius(rel_stderr=rel_stderr).compute(context(model, x, y, seed))

    res, secs = timed(go)
    return {
        "seconds": secs,
        "hvps": res.hvps,
        "rel_error": abs(res.value - truth) / abs(truth),
        "stderr_rel": res.stderr / abs(res.value),
        "within_3se": abs(res.value - truth) <= 3 * res.stderr,
    }


def run_pyhessian_trace(model, x, y, seed, truth):
    from pyhessian.hessian import hessian as PyHessian

    torch.manual_seed(seed)

    def go():
        return PyHessian(model, LOSS, data=(x, y), cuda=False).trace()

    samples, secs = timed(go)
    clear_grads(model)
    value = float(np.mean(samples))
    return {
        "seconds": secs,
        "hvps": len(samples),
        "rel_error": abs(value - truth) / truth,
    }


def run_eigenthings_trace(model, x, y, seed, truth, matvecs=100):
    from hessian_eigenthings import trace as etrace

    counter = Counter()

    def go():
        op = eigenthings_operator(model, x, y, counter)
        return etrace(op, num_matvecs=matvecs, method="hutch++", seed=seed)

    res, secs = timed(go)
    return {
        "seconds": secs,
        "hvps": counter.n,
        "rel_error": abs(res.estimate - truth) / truth,
    }


def run_curvlinops(model, x, y, seed, truth, what, matvecs):
    from curvlinops import HessianLinearOperator, hutchinson_squared_fro, hutchpp_trace

    params = list(model.parameters())

    def go():
        torch.manual_seed(seed)
        H = HessianLinearOperator(
            model, LOSS_MODULE, params, [(x, y)], check_deterministic=False
        )
        if what == "trace":
            return float(hutchpp_trace(H, num_matvecs=matvecs))
        return math.sqrt(float(hutchinson_squared_fro(H, num_matvecs=matvecs)))

    value, secs = timed(go)
    return {"seconds": secs, "hvps": matvecs, "rel_error": abs(value - truth) / truth}


# --------------------------------------------------------------------------- main


def mlp_section(args: argparse.Namespace) -> dict[str, Any]:
    t0 = time.perf_counter()
    model, x, y = mlp_workload()
    print(f"model + data ready in {time.perf_counter() - t0:.1f} s", flush=True)
    truth = mlp_truth(model, x, y, args.quick)
    ev = truth["eigenvalues"]
    print(
        f"\nGround truth: λ1..λ5 = {', '.join(f'{e:.4f}' for e in ev[:5])}; "
        f"tr H = {truth['trace']:.2f} ± {truth['trace_stderr']:.2f}; "
        f"‖H‖_F = {truth['frobenius']:.3f} ± {truth['frobenius_stderr']:.3f}"
    )
    out: dict[str, Any] = {"truth": truth}
    out["cost"] = cost_section(model, x, y)
    if not args.skip_memory:
        out["memory"] = memory_section(model, x, y)

    seeds = range(args.seeds)
    few = range(max(2, args.seeds // 4))
    rows: list[dict[str, Any]] = []
    runs = [run_sharpkit_spectral(model, x, y, s, 1, ev) for s in seeds]
    rows.append(summary("sharpkit spectral (tol 1e-3)", runs, ev[0], 1e-3))
    rows.append(
        summary(
            "PyHessian eigenvalues(top_n=1)",
            [run_pyhessian_top(model, x, y, s, 1, ev) for s in seeds],
            ev[0],
            1e-3,
        )
    )
    et = [run_eigenthings_top(model, x, y, s, 1, ev) for s in seeds]
    rows.append(summary("hessian-eigenthings lanczos(k=5)", et, ev[0], 1e-3))
    rows.append(
        summary(
            "curvlinops + eigsh(k=1, tol=1e-3)",
            [run_curvlinops_top(model, x, y, s, 1, ev) for s in few],
            ev[0],
            1e-3,
        )
    )
    print_table("λ_max, certified relative error 1e-3", rows, rows[0]["tool"], 1e-3)
    out["lambda_max"] = rows

    rows5: list[dict[str, Any]] = []
    rows5.append(
        summary(
            "sharpkit spectral top_k=5 (tol 1e-3)",
            [run_sharpkit_spectral(model, x, y, s, 5, ev) for s in seeds],
            ev[0],
            1e-3,
        )
    )
    rows5.append(
        summary(
            "hessian-eigenthings lanczos(k=5)",
            [run_eigenthings_top(model, x, y, s, 5, ev) for s in seeds],
            ev[0],
            1e-3,
        )
    )
    rows5.append(
        summary(
            "curvlinops + eigsh(k=5, tol=1e-3)",
            [run_curvlinops_top(model, x, y, s, 5, ev) for s in few],
            ev[0],
            1e-3,
        )
    )
    rows5.append(
        summary(
            "PyHessian eigenvalues(top_n=5)",
            [run_pyhessian_top(model, x, y, s, 5, ev) for s in few],
            ev[0],
            1e-3,
        )
    )
    print_table("top-5 eigenvalues (worst of the five)", rows5, rows5[0]["tool"], 1e-3)
    out["top5"] = rows5

    tr = truth["trace"]
    rows_t: list[dict[str, Any]] = []
    # auto: the exact Gauss-Newton identity applies to this ReLU/BN net; hutch++:
    # the stochastic path that networks without that structure get
    half = range(max(3, args.seeds // 2))
    for method, target, trace_seeds in (
        ("auto", 0.01, seeds),
        ("hutch++", 0.01, seeds),
        ("hutch++", 0.004, half),
    ):
        runs_t = [
            run_sharpkit_trace(model, x, y, s, tr, target, method) for s in trace_seeds
        ]
        name = "exact" if method == "auto" else f"{method}, rel_stderr {target:g}"
        row = summary(f"sharpkit trace ({name})", runs_t, tr, 0.01)
        covered = [r["within_3se"] for r in runs_t if r["within_3se"] is not None]
        row["within_3se"] = float(np.mean(covered)) if covered else None
        rows_t.append(row)
    rows_t.append(
        summary(
            "PyHessian trace()",
            [run_pyhessian_trace(model, x, y, s, tr) for s in seeds],
            tr,
            0.01,
        )
    )
    rows_t.append(
        summary(
            "hessian-eigenthings trace(hutch++, 100)",
            [run_eigenthings_trace(model, x, y, s, tr) for s in few],
            tr,
            0.01,
        )
    )
    rows_t.append(
        summary(
            "curvlinops hutchpp_trace(99)",
            [run_curvlinops(model, x, y, s, tr, "trace", 99) for s in few],
            tr,
            0.01,
        )
    )
    print_table("trace, within 1 % of the truth", rows_t, rows_t[0]["tool"], 0.01)
    out["trace"] = rows_t

    fro = truth["frobenius"]
    rows_f: list[dict[str, Any]] = []
    runs_f = [run_sharpkit_frobenius(model, x, y, s, fro, 0.003) for s in seeds]
    row = summary("sharpkit frobenius (rel_stderr 0.003)", runs_f, fro, 0.01)
    row["within_3se"] = float(np.mean([r["within_3se"] for r in runs_f]))
    rows_f.append(row)
    rows_f.append(
        summary(
            "curvlinops hutchinson_squared_fro(100)",
            [run_curvlinops(model, x, y, s, fro, "fro", 100) for s in few],
            fro,
            0.01,
        )
    )
    print_table(
        "Frobenius norm, within 1 % of the truth", rows_f, rows_f[0]["tool"], 0.01
    )
    out["frobenius"] = rows_f
    out["goals"] = goals(out)
    return out


def _fastest(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    others = [r for r in rows if not r["tool"].startswith("sharpkit") and r["reaches"]]
    return min(others, key=lambda r: r["seconds_median"]) if others else None


def goals(out: dict[str, Any]) -> dict[str, Any]:
    """The issue's goals, each as the measured ratio and whether it is met."""
    res: dict[str, Any] = {}
    print("\n### Goals (ratios of median times, measured in this run)\n")
    for key, label in (("lambda_max", "λ_max"), ("top5", "top-5")):
        rows = out[key]
        ours = rows[0]
        best = _fastest(rows)
        if best is None:
            line = f"{label}: no competitor reached 1e-3 in every run"
            ratio = math.inf
        else:
            ratio = best["seconds_median"] / ours["seconds_median"]
            line = (
                f"{label}: {ratio:.2f}x faster than {best['tool']} (the fastest "
                "competitor within 1e-3 in every run); goal >= 2x"
            )
        ok = ours["reaches"] and ours.get("bound_ok_all", True) and ratio >= 2.0
        print(f"- {line}: {'met' if ok else 'NOT met'}")
        res[key] = {"ratio": ratio, "met": ok}
    for key, label in (("trace", "trace"), ("frobenius", "Frobenius")):
        rows = out[key]
        ours = [r for r in rows if r["tool"].startswith("sharpkit") and r["reaches"]]
        if not ours:
            print(f"- {label}: no sharpkit setting within 1 % in every run: NOT met")
            res[key] = {"met": False}
            continue
        mine = min(ours, key=lambda r: r["seconds_median"])
        parts, met = [], True
        for r in rows:
            if r["tool"].startswith(("curvlinops", "hessian-eigenthings")):
                ratio = r["seconds_median"] / mine["seconds_median"]
                met = met and ratio >= 5.0
                within = "within" if r["reaches"] else "NOT within"
                parts.append(f"{ratio:.2f}x vs {r['tool']} ({within} 1 % in every run)")
        verdict = "met" if met else "NOT met"
        print(f"- {label} ({mine['tool']}): {'; '.join(parts)}; goal >= 5x: {verdict}")
        res[key] = {"met": met, "tool": mine["tool"]}
    return res


def resnet_section(args: argparse.Namespace) -> dict[str, Any]:
    try:
        model, x, y = resnet_workload()
    except Exception as exc:  # the model plugin may be missing
        print(f"\nResNet-56 skipped: {exc}")
        return {"skipped": str(exc)}
    path = RESULTS / f"truth_resnet_{state_hash(model)}.json"
    if path.exists():
        truth = json.loads(path.read_text())
    else:
        print("computing ResNet-56 ground truth ...", flush=True)
        H = HessianOperator(model, LOSS, [(x, y)])
        res = lanczos(
            H,
            H.n,
            k=2,
            tol=1e-6,
            bound="residual",
            max_iter=80,
            generator=torch.Generator().manual_seed(99),
        )
        truth = {"eigenvalues": res.eigenvalues.tolist(), "bounds": res.bounds.tolist()}
        path.write_text(json.dumps(truth))
    ev = truth["eigenvalues"]
    print(
        f"\nResNet-56 (853k parameters, 256 images): λ1 = {ev[0]:.4f}, λ2 = {ev[1]:.4f}"
    )
    seeds = range(args.resnet_seeds)
    rows = [
        summary(
            "sharpkit spectral (tol 1e-3)",
            [run_sharpkit_spectral(model, x, y, s, 1, ev) for s in seeds],
            ev[0],
            1e-3,
        ),
        summary(
            "PyHessian eigenvalues(top_n=1)",
            [run_pyhessian_top(model, x, y, s, 1, ev) for s in seeds],
            ev[0],
            1e-3,
        ),
        summary(
            "hessian-eigenthings lanczos(k=5)",
            [run_eigenthings_top(model, x, y, s, 1, ev) for s in seeds],
            ev[0],
            1e-3,
        ),
        summary(
            "curvlinops + eigsh(k=1, tol=1e-3)",
            [run_curvlinops_top(model, x, y, s, 1, ev) for s in range(1)],
            ev[0],
            1e-3,
        ),
    ]
    print_table("ResNet-56 λ_max", rows, rows[0]["tool"], 1e-3)
    return {"truth": truth, "lambda_max": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few seeds, no ResNet")
    parser.add_argument("--seeds", type=int, default=None)
    parser.add_argument("--resnet-seeds", type=int, default=2)
    parser.add_argument("--skip-resnet", action="store_true")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--only-resnet", action="store_true")
    args = parser.parse_args()
    if args.seeds is None:
        args.seeds = 3 if args.quick else 20
    torch.set_num_threads(THREADS)
    warnings.simplefilter("ignore", FutureWarning)
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[attr-defined]
    print(
        f"# sharpkit curvature benchmark\n\ntorch {torch.__version__}, "
        f"{THREADS} threads, {os.cpu_count()} CPUs; seeds {args.seeds}"
    )
    out: dict[str, Any] = {"torch": torch.__version__, "threads": THREADS}
    if not args.only_resnet:
        out["mlp"] = mlp_section(args)
    if args.only_resnet or not (args.quick or args.skip_resnet):
        out["resnet56"] = resnet_section(args)
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = "bench_curvature"
    if args.quick:
        name += "_quick"
    elif args.only_resnet:
        name += "_resnet"
    dest = RESULTS / f"{name}.json"
    dest.write_text(json.dumps(out, indent=1, default=float))
    print(f"\nfigures written to {dest}")


if __name__ == "__main__":
    main()
