"""Sharpness against η/S and against generalization: ``fig1``, ``sam``, ``correlate``.

``fig1`` (the paper's Fig. 1): λ_max, log ‖H‖_F and validation accuracy against
η/S, coloured by S. ``sam``: the same panels plus adaptive sharpness, SGD and
SAM as two series. ``correlate``: each measure against a generalization target,
with Kendall's τ and Jiang et al.'s Ψ.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from sharpkit.errors import DataError
from sharpkit.plotting.style import batch_colors, canvas
from sharpkit.store.encoding import opt_float

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["plot_correlate", "plot_fig1", "plot_sam"]


def _fig1_points(rows: Sequence[Mapping[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Newest row per checkpoint and quantity; measure rows win over train rows."""
    points: dict[str, dict[Any, dict[str, Any]]] = {
        "spectral": {},
        "frobenius": {},
        "test_accuracy": {},
    }
    rank = {"measure": 2, "train": 1}
    for row in rows:  # oldest first: later rows replace earlier ones
        kind = str(row.get("kind"))
        if kind not in rank:
            continue
        x = opt_float(row.get("lr_over_batch"))
        batch = row.get("batch_size")
        if x is None or batch is None:
            continue
        key = row.get("checkpoint_sha256") or ("run", row.get("run_id"))
        metric = row.get("metric")
        entries: list[tuple[str, float | None, float | None]] = []
        if metric in ("spectral", "frobenius"):
            entries.append((str(metric), opt_float(row.get("value")), _error(row)))
        if opt_float(row.get("test_accuracy")) is not None:
            entries.append(("test_accuracy", opt_float(row.get("test_accuracy")), None))
        for name, value, err in entries:
            if value is None:
                continue
            old = points[name].get(key)
            if old is not None and rank[old["kind"]] > rank[kind]:
                continue
            points[name][key] = {
                "x": x,
                "y": value,
                "err": err,
                "batch_size": int(batch),
                "lr": opt_float(row.get("lr")),
                "kind": kind,
            }
    return {k: list(v.values()) for k, v in points.items()}


def _error(row: Mapping[str, Any]) -> float | None:
    """One standard error of a stored value: the data's and the numerical one.

    The two are independent (which examples; which probes on them), so they
    add in quadrature. ``None``: neither was stored.
    """
    errs = [opt_float(row.get(k)) for k in ("stderr", "data_stderr")]
    known = [e for e in errs if e is not None]
    return math.hypot(*known) if known else None


DATA_NOTE = (
    "error bars: ±1 standard error, the data's (which examples) and the "
    "numerical one in quadrature"
)
"""The footnote of a ``fig1`` whose values carry a data standard error."""


def plot_fig1(rows: Sequence[Mapping[str, Any]], title: str | None) -> Figure:
    """Draw ``fig1``: λ_max, log ‖H‖_F and validation accuracy against η/S.

    Error bars are one standard error: the numerical one, and where the store
    holds it (``-o spectral.data_error=true``) the data's, in quadrature.
    """
    points = _fig1_points(rows)
    if not points["spectral"] and not points["frobenius"]:
        msg = (
            "no spectral or frobenius measurements with a known η and S in the "
            "selection; run `sharpkit measure CKPT -m spectral -m frobenius` on "
            "checkpoints trained by sharpkit first"
        )
        raise DataError(msg)
    sizes = [p["batch_size"] for pts in points.values() for p in pts]
    colors = batch_colors(sizes)
    fig = canvas(3)
    axes = fig.subplots(1, 3)
    panels = (
        ("spectral", "λ_max (largest Hessian eigenvalue)", "(a) spectral norm", False),
        ("frobenius", "log ‖H‖_F (natural log)", "(b) Frobenius norm", True),
        ("test_accuracy", "validation accuracy", "(c) validation accuracy", False),
    )
    for ax, (name, ylabel, subtitle, log) in zip(axes, panels, strict=True):
        ax.set_xscale("log")
        ax.set_xlabel("η / S")
        ax.set_ylabel(ylabel)
        ax.set_title(subtitle)
        ax.grid(True, which="both", alpha=0.3)
        pts = points[name]
        if not pts:
            ax.text(
                0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes
            )
            continue
        for size in sorted({p["batch_size"] for p in pts}):
            group = sorted(
                (p for p in pts if p["batch_size"] == size), key=lambda p: p["x"]
            )
            xs = np.array([p["x"] for p in group])
            ys = np.array([p["y"] for p in group])
            errs = np.array([p["err"] if p["err"] is not None else 0.0 for p in group])
            if log:
                positive = ys > 0
                xs, errs, ys = (
                    xs[positive],
                    errs[positive] / ys[positive],
                    np.log(ys[positive]),
                )
            ax.errorbar(
                xs,
                ys,
                yerr=errs if np.any(errs > 0) else None,
                fmt="o",
                color=colors[size],
                label=f"S = {size}",
                capsize=2,
                markersize=5,
            )
    handles, labels = [], []
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    order = sorted(range(len(labels)), key=lambda i: int(labels[i].split("=")[1]))
    fig.legend(
        [handles[i] for i in order],
        [labels[i] for i in order],
        loc="outside right center",
        title="batch size",
    )
    fig.suptitle(title or "Sharpness and validation accuracy against η/S")
    if any(r.get("data_stderr") is not None for r in rows):
        fig.supxlabel(DATA_NOTE, fontsize=8, color="0.3")
    return fig


_SAM_PANELS = (
    ("spectral", "λ_max (largest Hessian eigenvalue)", "(a) spectral norm", False),
    ("frobenius", "log ‖H‖_F (natural log)", "(b) Frobenius norm", True),
    ("adaptive", "adaptive sharpness (loss rise)", "(c) adaptive sharpness", False),
    ("test_accuracy", "validation accuracy", "(d) validation accuracy", False),
)


_TRAINER_MARKERS = {"sgd": ("o", "full"), "sam": ("s", "none"), "asam": ("D", "none")}


def _trainers(rows: Sequence[Mapping[str, Any]]) -> dict[Any, str]:
    """The trainer of each checkpoint, from the train runs that wrote them."""
    out: dict[Any, str] = {}
    for row in rows:
        sha, trainer = row.get("checkpoint_sha256"), row.get("trainer")
        if row.get("kind") == "train" and sha and trainer:
            out.setdefault(sha, str(trainer))
    return out


def _sam_points(
    rows: Sequence[Mapping[str, Any]],
) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """``{(quantity, trainer): points}``: the newest value per checkpoint."""
    trainers = _trainers(rows)
    points: dict[tuple[str, str], dict[Any, dict[str, Any]]] = {}
    for row in rows:  # oldest first: later rows replace earlier ones
        sha = row.get("checkpoint_sha256")
        x, batch = opt_float(row.get("lr_over_batch")), row.get("batch_size")
        if row.get("kind") != "measure" or not sha or x is None or batch is None:
            continue
        trainer = str(row.get("trainer") or trainers.get(sha, "sgd"))
        metric = row.get("metric")
        entries: list[tuple[str, float | None, float | None]] = [
            ("test_accuracy", opt_float(row.get("test_accuracy")), None)
        ]
        if metric in ("spectral", "frobenius", "adaptive"):
            value, err = opt_float(row.get("value")), opt_float(row.get("stderr"))
            entries.append((str(metric), value, err))
        for name, value, err in entries:
            if value is not None:
                points.setdefault((name, trainer), {})[sha] = {
                    "x": x, "y": value, "err": err, "batch_size": int(batch),
                }  # fmt: skip
    return {k: list(v.values()) for k, v in points.items()}


def plot_sam(rows: Sequence[Mapping[str, Any]], title: str | None) -> Figure:
    """Draw ``sam``: Fig. 1's panels and adaptive sharpness, SGD and SAM apart."""
    points = _sam_points(rows)
    if not any(k[0] == "spectral" for k in points):
        msg = (
            "no spectral measurements with a known η and S in the selection; run "
            "`sharpkit reproduce sam` or measure SGD and SAM checkpoints with "
            "-m spectral -m frobenius -m adaptive first"
        )
        raise DataError(msg)
    colors = batch_colors([p["batch_size"] for v in points.values() for p in v])
    fig = canvas(4, width=4.0, height=3.5)
    axes = fig.subplots(1, 4)
    trainers = sorted({t for _, t in points}, key=lambda t: (t != "sgd", t))
    for ax, (name, ylabel, subtitle, log) in zip(axes, _SAM_PANELS, strict=True):
        ax.set_xscale("log")
        ax.set_xlabel("η / S")
        ax.set_ylabel(ylabel)
        ax.set_title(subtitle)
        ax.grid(True, which="both", alpha=0.3)
        for trainer in trainers:
            marker, fill = _TRAINER_MARKERS.get(trainer, ("^", "none"))
            for p in points.get((name, trainer), []):
                y, err = p["y"], p["err"] or 0.0
                if log:
                    if y <= 0:
                        continue
                    y, err = math.log(y), err / y
                color = colors[p["batch_size"]]
                ax.errorbar(
                    p["x"], y, yerr=err or None, fmt=marker, fillstyle=fill,
                    color=color, markersize=6, capsize=2,
                )  # fmt: skip
    for trainer in trainers:
        marker, fill = _TRAINER_MARKERS.get(trainer, ("^", "none"))
        axes[0].plot(
            [], [], marker, fillstyle=fill, color="0.3", ls="none", label=trainer
        )
    for size, color in sorted(colors.items()):
        axes[0].plot([], [], "o", color=color, ls="none", label=f"S = {size}")
    fig.legend(loc="outside right center", fontsize=8)
    fig.suptitle(title or "SGD and SAM at the same η/S: sharpness and accuracy")
    return fig


def plot_correlate(results: Sequence[Any], title: str | None) -> Figure:
    """One scatter per measure: the measure against the target, τ and Ψ on top."""
    from matplotlib.ticker import NullFormatter

    n = len(results)
    ncols = min(n, 3)
    nrows = math.ceil(n / ncols)
    fig = canvas(ncols, nrows, width=4.4, height=3.6)
    grid = fig.subplots(nrows, ncols, squeeze=False)
    sizes = [int(opt_float(h.get("batch_size")) or 0) for r in results for h in r.hyper]
    colors = batch_colors(sizes)
    # one marker per trainer (SGD against SAM), colour by batch size
    trainers = sorted({str(h.get("trainer") or "") for r in results for h in r.hyper})
    markers = dict(zip(trainers, "os^Dv<>p*", strict=False))
    for k, ax in enumerate(grid.flat):
        if k >= n:
            ax.set_visible(False)
            continue
        r = results[k]
        batch = np.array([int(opt_float(h.get("batch_size")) or 0) for h in r.hyper])
        trainer = np.array([str(h.get("trainer") or "") for h in r.hyper])
        for name, marker in markers.items():
            sel = trainer == name
            ax.scatter(
                np.asarray(r.values)[sel],
                np.asarray(r.targets)[sel],
                c=[colors[b] for b in batch[sel]],
                s=22,
                marker=marker,
                edgecolors="none",
            )
        if np.all(r.values > 0) and r.values.max() > 10 * r.values.min():
            ax.set_xscale("log")
            # labels on the decades only: minor labels overlap on a 1-2 decade axis
            ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel(r.measure)
        ax.set_ylabel(r.target)
        ax.grid(True, alpha=0.3)
        ax.set_title(
            f"τ = {_interval(r.kendall)}\nΨ = {_interval(r.psi)}  (n = {r.n})",
            fontsize=9,
        )
    for size, color in sorted(colors.items()):
        grid.flat[0].scatter([], [], color=color, label=f"S = {size}")
    if len(markers) > 1:
        for name, marker in markers.items():
            grid.flat[0].scatter(
                [], [], color="0.4", marker=marker, label=name or "unknown trainer"
            )
    fig.legend(loc="outside right center", title="batch size, trainer", fontsize=8)
    fig.suptitle(title or f"Sharpness measures against {results[0].target}")
    return fig


def _interval(i: Any) -> str:
    text = f"{i.value:+.2f}" if math.isfinite(i.value) else "n/a"
    if math.isfinite(i.low) and math.isfinite(i.high):
        text += f" [{i.low:+.2f}, {i.high:+.2f}]"
    return text
