"""Curvature per block: sharpkit against the loop a curvlinops user writes (issue 23).

For every layer of the ``mlp-bn`` workload (784-256-256-256-10 BN-ReLU MLP on
2,048 Fashion-MNIST images, see ``_workload.py``), in one run:

* **λ_max per block**: sharpkit's :func:`block_spectra` (Lanczos on an operator
  over the block's parameters, to relative bound ``--tol``) against
  ``scipy.sparse.linalg.eigsh(k=1, which="LA", tol)`` on curvlinops'
  ``HessianLinearOperator(model, loss, params_b, data)``, one per block;
* **tr H_bb per block**: sharpkit's :func:`block_trace` (one Hutchinson pass of
  ``--probes`` products for all blocks) against curvlinops'
  ``hutchinson_trace`` on each block's operator with the same probes;
* the **whole-model trace** by :func:`hutchinson_trace` with the same probes, the
  cost every block's trace is compared with (goal: all blocks ≤ 1.2x it).

Every method builds its operators from scratch (setup included). The values are
compared too: the λ's must agree within the bounds, the traces within their
standard errors. Wall and CPU seconds; rounds interleaved (``--rounds``).

    python bench/bench_blocks.py                 # ~10 min on a busy 2-core machine
    python bench/bench_blocks.py --quick         # smoke test (256 images, 8 probes)
    python bench/bench_blocks.py --workload resnet56   # ResNet-56's stages
    python bench/bench_blocks.py --workload resnet56 --budget-minutes 20

With ``--budget-minutes M`` the curvlinops loops stop starting new blocks once
they have run ``M`` minutes (a block already started runs to its end); the
ratios are then taken over the blocks both sides finished, from per-block
times (sharpkit's too), and the report says how many blocks that is.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _workload import RESULTS, mlp_workload, resnet_workload

from sharpkit.curvature import HessianOperator, hutchinson_trace
from sharpkit.curvature.block_estimates import block_spectra, block_trace
from sharpkit.curvature.blocks import resolve_blocks


def _timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def _batches(x, y, size):
    return [(x[i : i + size], y[i : i + size]) for i in range(0, len(x), size)]


def sharpkit_runs(model, data, probes, tol, seed, spec, per_block=None):
    loss = nn.functional.cross_entropy

    def spectra():
        marks = [time.perf_counter()]
        op = HessianOperator(model, loss, data)
        part = resolve_blocks(model, spec, params=op.params)
        gen = torch.Generator().manual_seed(seed)
        res = block_spectra(
            op, part, tol=tol, generator=gen,
            progress=lambda b, _t, _n: marks.append(time.perf_counter()) if b else None,
        )  # fmt: skip
        marks.append(time.perf_counter())
        if per_block is not None:  # the set-up is counted with the first block
            per_block["sharpkit.spectra"] = np.diff(marks).tolist()
        return [float(r.eigenvalues[0]) for r in res], [float(r.bounds[0]) for r in res]

    def traces():
        op = HessianOperator(model, loss, data)
        part = resolve_blocks(model, spec, params=op.params)
        est = block_trace(
            op, part, probes=probes, generator=torch.Generator().manual_seed(seed)
        )
        return est.values.tolist(), est.stderrs.tolist()

    def whole():
        op = HessianOperator(model, loss, data)
        gen = torch.Generator().manual_seed(seed)
        est = hutchinson_trace(
            op, op.n, probes=probes, generator=gen, distribution="rademacher"
        )
        return est.value, est.stderr

    return {"spectra": spectra, "traces": traces, "whole_trace": whole}


def curvlinops_runs(model, data, probes, tol, seed, spec, budget=None, per_block=None):
    from curvlinops import HessianLinearOperator
    from curvlinops.trace.hutchinson import hutchinson_trace as cl_trace
    from scipy.sparse.linalg import eigsh

    groups = {  # the same blocks, as parameter lists
        b.name: [model.get_parameter(n) for n in b.params]
        for b in resolve_blocks(model, spec).blocks
    }
    loss = nn.CrossEntropyLoss()

    def op(params):
        return HessianLinearOperator(
            model, loss, params, data, check_deterministic=False
        )

    def within(what, fn):
        """Run ``fn`` per block until ``budget`` seconds are spent; NaN after."""
        start, out, spent = time.perf_counter(), [], []
        for params in groups.values():
            if budget is not None and time.perf_counter() - start > budget:
                out.append(math.nan)
                continue
            t = time.perf_counter()
            out.append(fn(params))
            spent.append(time.perf_counter() - t)
        if per_block is not None:
            per_block[f"curvlinops.{what}"] = spent
        return out

    def one_spectrum(params):
        rng = np.random.default_rng(seed)
        h = op(params).to_scipy()
        v0 = rng.standard_normal(h.shape[0])
        return float(eigsh(h, k=1, which="LA", tol=tol, v0=v0)[0][0])

    def spectra():
        return within("spectra", one_spectrum)

    def traces():
        torch.manual_seed(seed)  # curvlinops draws its probes from torch's global RNG
        return within("traces", lambda params: float(cl_trace(op(params), probes)))

    return {"spectra": spectra, "traces": traces}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--samples", type=int, default=2048)
    ap.add_argument("--probes", type=int, default=32)
    ap.add_argument("--tol", type=float, default=1e-3)
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument(
        "--budget-minutes",
        type=float,
        default=None,
        help="stop the curvlinops loops after this long (partial ratios)",
    )
    ap.add_argument(
        "--workload",
        choices=("mlp-bn", "resnet56"),
        default="mlp-bn",
        help="mlp-bn: every layer; resnet56: the stages (depth=1), 256 images",
    )
    args = ap.parse_args()
    if args.quick:
        args.samples, args.probes = 256, 8
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.workload == "resnet56":
        model, x, y = resnet_workload(min(args.samples, 256))
        spec = "depth=1"
    else:
        model, x, y = mlp_workload(args.samples)
        spec = "layers"
    data = _batches(x, y, args.batch_size)
    per_block: dict[str, list[float]] = {}
    budget = None if args.budget_minutes is None else 60 * args.budget_minutes
    ours = sharpkit_runs(model, data, args.probes, args.tol, 0, spec, per_block)
    theirs = curvlinops_runs(
        model, data, args.probes, args.tol, 0, spec, budget, per_block
    )
    times: dict[str, list[tuple[float, float]]] = {}
    values: dict[str, object] = {"names": resolve_blocks(model, spec).names}
    for r in range(args.rounds):
        order = [("sharpkit", ours), ("curvlinops", theirs)]
        for who, runs in order if r % 2 == 0 else order[::-1]:
            for what, fn in runs.items():
                out, wall, cpu = _timed(fn)
                times.setdefault(f"{who}.{what}", []).append((wall, cpu))
                values[f"{who}.{what}"] = out
                line = f"round {r} {who:10s} {what:12s} wall {wall:7.1f} s"
                print(f"{line}  cpu {cpu:7.1f} s")
    values["per_block_seconds"] = per_block
    report(args, times, values)


def report(args, times, values) -> None:
    med = {
        k: (float(np.median([t[0] for t in v])), float(np.median([t[1] for t in v])))
        for k, v in times.items()
    }
    lam, bounds = values["sharpkit.spectra"]
    lam_cl = values["curvlinops.spectra"]
    tr, se = values["sharpkit.traces"]
    tr_cl = values["curvlinops.traces"]
    whole, whole_se = values["sharpkit.whole_trace"]
    rows = {
        "lambda_max per block": med["curvlinops.spectra"][0]
        / med["sharpkit.spectra"][0],
        "trace per block": med["curvlinops.traces"][0] / med["sharpkit.traces"][0],
    }
    partial = _partial(values, lam_cl, tr_cl, med)
    if any(k.startswith("lambda") for k in partial):  # a total of part of the blocks
        del rows["lambda_max per block"]
    if any(k.startswith("trace") for k in partial):
        del rows["trace per block"]
    all_vs_whole = med["sharpkit.traces"][0] / med["sharpkit.whole_trace"][0]
    print()
    print(f"{'':24s} {'curvlinops / sharpkit (wall)':>30s} {'(cpu)':>8s}")
    for name, ratio in rows.items():
        key = "spectra" if "lambda" in name else "traces"
        cpu = med[f"curvlinops.{key}"][1] / med[f"sharpkit.{key}"][1]
        print(f"{name:24s} {ratio:30.2f} {cpu:8.2f}")
    for name, ratio in partial.items():
        print(f"{name:24s} {ratio:30.2f} {'-':>8s}")
    rows.update(partial)
    cpu_ratio = med["sharpkit.traces"][1] / med["sharpkit.whole_trace"][1]
    print(
        "all-block trace / whole-model trace (same probes): "
        f"{all_vs_whole:.2f} wall, {cpu_ratio:.2f} cpu (goal ≤ 1.2)"
    )
    print(f"sum of block traces {sum(tr):.4g} vs whole {whole:.4g} ± {whole_se:.2g}")
    rel = [abs(a - b) / abs(b) for a, b in zip(lam, lam_cl, strict=True) if b == b]
    if rel:
        print(f"λ_max per block: largest relative difference to eigsh {max(rel):.1e}")
    z = [
        abs(a - b) / s
        for a, b, s in zip(tr, tr_cl, se, strict=True)
        if s > 0 and b == b
    ]
    if z:
        print(f"trace per block: largest |sharpkit - curvlinops| / stderr {max(z):.1f}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"blocks-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(
        json.dumps(
            {
                "args": vars(args),
                "blocks": values.get("names"),
                "torch_threads": torch.get_num_threads(),
                "times": times,
                "ratios_wall": rows,
                "all_blocks_over_whole_trace": [all_vs_whole, cpu_ratio],
                "lambda": {"sharpkit": lam, "bounds": bounds, "curvlinops": lam_cl},
                "trace": {"sharpkit": tr, "stderr": se, "curvlinops": tr_cl},
                "whole_trace": [whole, whole_se],
                "load": list(__import__("os").getloadavg()),
            },
            indent=1,
            default=lambda o: (
                None if isinstance(o, float) and math.isnan(o) else str(o)
            ),
        )
    )
    print(f"wrote {out}")


def _partial(values, lam_cl, tr_cl, med) -> dict[str, float]:
    """Ratios over the blocks the curvlinops loops finished within the budget."""
    out: dict[str, float] = {}
    per = values.get("per_block_seconds", {})
    done_lam = [i for i, v in enumerate(lam_cl) if v == v]
    if len(done_lam) < len(lam_cl) and "sharpkit.spectra" in per:
        ours = sum(per["sharpkit.spectra"][i] for i in done_lam)
        theirs = sum(per.get("curvlinops.spectra", []))
        key = f"lambda_max, {len(done_lam)} of {len(lam_cl)} blocks (budget)"
        out[key] = theirs / ours if ours > 0 else math.nan
        print(f"curvlinops λ_max finished {len(done_lam)} of {len(lam_cl)} blocks")
    done_tr = [v for v in tr_cl if v == v]
    if len(done_tr) < len(tr_cl):
        # one pass serves every block: at least the whole pass per finished block
        theirs = sum(per.get("curvlinops.traces", []))
        key = f"trace, {len(done_tr)} of {len(tr_cl)} blocks (budget, lower bound)"
        out[key] = theirs / med["sharpkit.traces"][0]
        print(f"curvlinops traces finished {len(done_tr)} of {len(tr_cl)} blocks")
    return out


if __name__ == "__main__":
    main()
