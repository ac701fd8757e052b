"""Learning curves of several training runs overlaid (``fig4``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from sharpkit.plotting.select import Curves, get
from sharpkit.plotting.style import canvas, eta_s, lr_over_batch
from sharpkit.store.encoding import opt_float

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["plot_fig4", "train_curves"]


def train_curves(runs: Sequence[Any]) -> list[Curves]:
    """Return the per-epoch curves of each run that has them."""
    out = []
    for run in runs:
        training = get(run, "training", {}) or {}
        arrays = {k: np.asarray(v) for k, v in training.items()}
        if "epoch" not in arrays:
            continue
        out.append(
            Curves(
                run_id=str(get(run, "run_id", "")),
                attrs=dict(get(run, "attrs", {}) or {}),
                arrays=arrays,
            )
        )
    return out


def plot_fig4(curves: Sequence[Curves], title: str | None) -> Figure:
    """Draw ``fig4``: training and validation accuracy over epochs, overlaid."""
    from matplotlib import colormaps

    fig = canvas(2)
    axes = fig.subplots(1, 2, sharey=True)
    cmap = colormaps["tab10"]
    order = sorted(
        range(len(curves)),
        key=lambda i: (
            opt_float(curves[i].attrs.get("batch_size")) or 0.0,
            opt_float(curves[i].attrs.get("lr")) or 0.0,
        ),
    )
    for n, i in enumerate(order):
        c = curves[i]
        lr, batch = c.attrs.get("lr"), c.attrs.get("batch_size")
        ratio = lr_over_batch(lr, batch)
        label = eta_s(lr, batch) + (f" (η/S={ratio:.2g})" if ratio is not None else "")
        color = cmap(n % 10)
        for ax, name in zip(axes, ("train_accuracy", "test_accuracy"), strict=True):
            if name in c.arrays:
                ax.plot(
                    c.arrays["epoch"], c.arrays[name], "-", color=color, label=label
                )
    for ax, sub in zip(axes, ("training accuracy", "validation accuracy"), strict=True):
        ax.set_xlabel("epoch")
        ax.set_title(sub)
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel("accuracy")
    fig.legend(
        *axes[0].get_legend_handles_labels(), loc="outside right center", fontsize=8
    )
    fig.suptitle(title or "Learning curves")
    return fig
