"""The loss landscape along probes: interpolation (``fig2``, ``fig3``) and ``rescale``.

``fig2`` / ``fig3``: one panel per ``interpolate`` run, training and validation
loss on the left axis and accuracy on a twin right axis, each minimum's outer
half-width under the axis. ``rescale``: each metric of the ``rescale`` probe
relative to its value at c = 1, against c on log-log axes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from sharpkit.errors import DataError
from sharpkit.plotting.select import Curves, first, get, second
from sharpkit.plotting.style import (
    ACC_COLOR,
    LOSS_COLOR,
    canvas,
    eta_s,
    fmt,
    lr_over_batch,
)
from sharpkit.store.encoding import opt_float

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["interp_curves", "plot_interp", "plot_rescale"]


def interp_curves(runs: Sequence[Any], probe: str) -> list[Curves]:
    """Return the curves of each run's ``probe`` result that has an α grid."""
    out = []
    for run in runs:
        probes = get(run, "probes", {}) or {}
        result = probes.get(probe) if isinstance(probes, Mapping) else None
        if result is None:
            continue
        coords = get(result, "coords", {}) or {}
        if "alpha" not in coords:
            continue
        out.append(
            Curves(
                run_id=str(get(run, "run_id", "")),
                attrs=dict(get(run, "attrs", {}) or {}),
                coords={k: np.asarray(v) for k, v in coords.items()},
                arrays={
                    k: np.asarray(v)
                    for k, v in (get(result, "arrays", {}) or {}).items()
                },
                summary=dict(get(result, "summary", {}) or {}),
                censored=[str(c) for c in _censored(result)],
            )
        )
    return out


def _censored(result: Any) -> list[Any]:
    attrs = get(result, "attrs", {}) or {}
    value = attrs.get("censored") if isinstance(attrs, Mapping) else None
    return list(value) if isinstance(value, list | tuple) else []


def _width_text(c: Curves) -> str | None:
    """The outer half-widths of both minima (≥ where the grid end was reached)."""
    lines = []
    for label, side in (("0", "left"), ("1", "right")):
        key = f"width_{label}_outer"
        value = opt_float(c.summary.get(key))
        if value is None:
            return None
        sign = "≥ " if key in c.censored else ""
        lines.append(f"α={label}: {sign}{value:.2f} ({side})")
    return "outer half-width: " + ",  ".join(lines)


def _end_label(
    attrs: Mapping[str, Any], which: int, label: str, beta_base: float
) -> str:
    pick = first if which == 0 else second
    lr, batch = pick(attrs.get("lr")), pick(attrs.get("batch_size"))
    if label == "beta":
        b = opt_float(batch)
        beta = "?" if b is None else f"{b / beta_base:.3g}"
        return f"β={beta}"
    ratio = lr_over_batch(lr, batch)
    tail = f" (η/S={ratio:.2g})" if ratio is not None else ""
    return eta_s(lr, batch) + tail


def plot_interp(
    curves: Sequence[Curves],
    label: str,
    beta_base: float,
    title: str | None,
    figure: str,
) -> Figure:
    """Draw ``fig2``/``fig3``: one panel per interpolation, loss and accuracy."""
    n = len(curves)
    ncols = min(n, 3)
    nrows = math.ceil(n / ncols)
    fig = canvas(ncols, nrows, width=5.0, height=3.8)
    grid = fig.subplots(nrows, ncols, squeeze=False)
    legend_lines: list[Any] = []
    for k, ax in enumerate(grid.flat):
        if k >= n:
            ax.set_visible(False)
            continue
        c = curves[k]
        alpha = c.coords["alpha"]
        lines = []
        ax.axvline(0.0, color="0.6", linestyle=":", linewidth=1)
        ax.axvline(1.0, color="0.6", linestyle=":", linewidth=1)
        if "train_loss" in c.arrays:
            lines += ax.plot(
                alpha,
                c.arrays["train_loss"],
                "-",
                color=LOSS_COLOR,
                label="train loss",
            )
        if "test_loss" in c.arrays:
            lines += ax.plot(
                alpha,
                c.arrays["test_loss"],
                "--",
                color=LOSS_COLOR,
                label="validation loss",
            )
        ax.set_xlabel("α")
        ax.set_ylabel("loss", color=LOSS_COLOR)
        ax.tick_params(axis="y", labelcolor=LOSS_COLOR)
        twin = ax.twinx()
        if (
            "train_accuracy" in c.arrays
            and np.isfinite(c.arrays["train_accuracy"]).any()
        ):
            lines += twin.plot(
                alpha,
                c.arrays["train_accuracy"],
                "-",
                color=ACC_COLOR,
                label="train accuracy",
            )
        if "test_accuracy" in c.arrays and np.isfinite(c.arrays["test_accuracy"]).any():
            lines += twin.plot(
                alpha,
                c.arrays["test_accuracy"],
                "--",
                color=ACC_COLOR,
                label="validation accuracy",
            )
        twin.set_ylabel("accuracy", color=ACC_COLOR)
        twin.tick_params(axis="y", labelcolor=ACC_COLOR)
        twin.set_ylim(-0.02, 1.02)
        left = _end_label(c.attrs, 0, label, beta_base)
        right = _end_label(c.attrs, 1, label, beta_base)
        ax.set_title(f"α=0: {left}\nα=1: {right}", fontsize=9)
        text = _width_text(c)
        if text is not None:  # under the axis, where it cannot hide a curve
            ax.set_xlabel(f"α\n{text}", fontsize=9)
        if k == 0:
            legend_lines = lines
    fig.legend(
        legend_lines,
        [ln.get_label() for ln in legend_lines],
        loc="outside lower center",
        ncols=4 if ncols > 1 else 2,  # one panel is too narrow for four entries
        fontsize=8,
    )
    default = (
        "Interpolation between minima (different η/S)"
        if figure == "fig2"
        else "Interpolation between minima (same η/S, different β)"
    )
    fig.suptitle(title or default)
    return fig


def plot_rescale(runs: Sequence[Any], title: str | None) -> Figure:
    """Each measure relative to c = 1 against c; one panel per probe run."""
    results = [
        r
        for run in runs
        if (r := (get(run, "probes", {}) or {}).get("rescale")) is not None
    ]
    if not results:
        msg = (
            "no rescale probes in the selection; run `sharpkit probe rescale "
            "CKPT --store STORE` first"
        )
        raise DataError(msg)
    fig = canvas(len(results), width=5.6, height=4.2)
    axes = fig.subplots(1, len(results), squeeze=False)[0]
    for ax, result in zip(axes, results, strict=True):
        c = np.asarray(get(result, "coords", {})["c"], dtype=float)
        arrays = get(result, "arrays", {}) or {}
        attrs = get(result, "attrs", {}) or {}
        one = int(np.argmin(np.abs(c - 1.0)))
        for name in attrs.get("metrics") or []:
            v = np.asarray(arrays.get(name, []), dtype=float)
            if v.size != c.size or not v[one] > 0:
                continue
            err = np.asarray(arrays.get(f"{name}_stderr", np.full_like(v, np.nan)))
            err = np.where(np.isfinite(err), err, 0.0) / v[one]
            ax.errorbar(
                c, v / v[one], yerr=err if err.any() else None, marker="o",
                capsize=2, label=name,
            )  # fmt: skip
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("c (layer a × c, layer b × 1/c)")
        ax.set_ylabel("value / value at c = 1")
        ax.grid(True, which="both", alpha=0.3)
        change = opt_float((get(result, "summary", {}) or {}).get("max_output_change"))
        layers = " → ".join(str(x) for x in attrs.get("layers") or [])
        ax.set_title(f"layers {layers}; max output change {fmt(change)}", fontsize=9)
        ax.legend(fontsize="small", frameon=False)
    fig.suptitle(title or "Which measures survive a function-preserving rescaling?")
    return fig
