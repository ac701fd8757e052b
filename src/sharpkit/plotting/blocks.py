"""Curvature per block of parameters: ``blocks`` and ``blocks-track``.

``blocks``: one panel per quantity measured with ``--blocks`` (``λ_max(H_bb)``,
the share of the top eigenvector in each block, ``tr H_bb``, ``‖H_bb‖_F``); in
each, one group of bars per block and in a group one bar per checkpoint,
ordered by η/S, with the bound or two standard errors as error bars.

``blocks-track``: for each run tracked with ``Tracker(..., blocks=...)``, a
block x step heat map per quantity tracked per block (colour: its value, on a
log scale when the values span more than two decades).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sharpkit.plotting.select import first, get
from sharpkit.plotting.style import canvas, eta_s, lr_over_batch

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "BlockTrack",
    "block_series",
    "block_tracks",
    "plot_blocks",
    "plot_blocks_track",
]

# (metric, array of the value, array of its error, error multiplier, axis label)
_PANELS = (
    ("spectral", "block_value", "block_bound", 1.0, "λ_max of the block's Hessian"),
    ("spectral", "block_mass", None, 0.0, "share of the top eigenvector ‖v_b‖²"),
    ("trace", "block_value", "block_stderr", 2.0, "trace of the block's Hessian"),
    ("frobenius", "block_value", "block_stderr", 2.0, "‖H_bb‖_F"),
)


@dataclass
class _Checkpoint:
    """One measured checkpoint's values per block."""

    label: str
    ratio: float | None
    blocks: list[str]
    values: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)
    errors: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)


def _label(attrs: dict[str, Any]) -> tuple[str, float | None]:
    lr, batch = first(attrs.get("lr")), first(attrs.get("batch_size"))
    if lr is not None and batch is not None:
        return eta_s(lr, batch), lr_over_batch(lr, batch)
    ckpt = Path(str(attrs.get("checkpoint_path") or attrs.get("run_id") or "model"))
    return (f"{ckpt.parent.name}/{ckpt.name}" if ckpt.parent.name else ckpt.name), None


def _one(run: Any) -> _Checkpoint | None:
    metrics = get(run, "metrics", {}) or {}
    found: _Checkpoint | None = None
    for metric, arr, err, mult, _ in _PANELS:
        result = metrics.get(metric)
        arrays = (get(result, "arrays", {}) or {}) if result is not None else {}
        if arr not in arrays:
            continue
        if found is None:
            names = list((get(result, "attrs", {}) or {}).get("blocks") or [])
            found = _Checkpoint(*_label(dict(get(run, "attrs", {}) or {})), names)
        found.values[(metric, arr)] = np.asarray(arrays[arr], dtype=float).ravel()
        if err is not None and err in arrays:
            errors = np.asarray(arrays[err], dtype=float).ravel() * mult
            found.errors[(metric, arr)] = errors
    return found


def block_series(runs: Sequence[Any]) -> list[_Checkpoint]:
    """The newest per-block measurement of each checkpoint, ordered by η/S."""
    newest: dict[str, tuple[str, _Checkpoint]] = {}
    for run in runs:
        found = _one(run)
        if found is None or not found.blocks:
            continue
        attrs = dict(get(run, "attrs", {}) or {})
        key = str(attrs.get("checkpoint_sha256") or attrs.get("checkpoint_path"))
        stamp = str(attrs.get("time") or "")
        if key not in newest or stamp >= newest[key][0]:
            newest[key] = (stamp, found)
    out = [c for _, c in newest.values()]
    out.sort(key=lambda c: (c.ratio is None, c.ratio or 0.0, c.label))
    return out


def plot_blocks(series: Sequence[_Checkpoint], title: str | None) -> Figure:
    """Draw ``blocks``: a panel per quantity, bars per block and checkpoint."""
    from matplotlib import colormaps

    names: list[str] = []
    for c in series:
        names += [b for b in c.blocks if b not in names]
    panels = [p for p in _PANELS if any((p[0], p[1]) in c.values for c in series)]
    wide = max(6.4, 0.4 * len(names) * len(series) + 2)
    fig = canvas(1, len(panels), width=wide, height=2.4)
    cmap = colormaps["viridis"]
    width = 0.8 / len(series)
    x = np.arange(len(names))
    for row, (metric, arr, _, _, ylabel) in enumerate(panels):
        ax = fig.add_subplot(len(panels), 1, row + 1)
        for i, c in enumerate(series):
            values = c.values.get((metric, arr))
            if values is None:
                continue
            pos = [names.index(b) for b in c.blocks]
            errors = c.errors.get((metric, arr))
            ax.bar(
                x[pos] - 0.4 + (i + 0.5) * width,
                values,
                width,
                yerr=errors,
                color=cmap(0.9 * i / max(len(series) - 1, 1)),
                label=c.label,
                capsize=2,
            )
        positive = [
            c.values[(metric, arr)] for c in series if (metric, arr) in c.values
        ]
        if arr != "block_mass" and _spans_decades(positive):
            ax.set_yscale("log")
        ax.set_ylabel(ylabel, fontsize="small")
        ax.set_xticks(x, names if row == len(panels) - 1 else [""] * len(names))
        ax.grid(True, axis="y", alpha=0.3)
        if row == 0:
            ax.legend(fontsize="small", frameon=False, ncols=min(len(series), 4))
    fig.suptitle(title or "Where is the sharpness? Curvature per block of parameters")
    return fig


def _spans_decades(arrays: Sequence[np.ndarray]) -> bool:
    """Whether positive values span more than two decades (then: log axis)."""
    if not arrays:
        return False
    vals = np.concatenate([a[np.isfinite(a)] for a in arrays])
    if vals.size == 0 or np.any(vals <= 0):
        return False
    return bool(vals.max() / vals.min() > 100)


_TRACK_LABELS = {
    "spectral": "λ_max(H_bb)",
    "trace": "tr H_bb",
    "frobenius": "‖H_bb‖_F",
}


@dataclass
class BlockTrack:
    """One tracked run's per-block curves of one metric.

    Attributes:
        label: What the run is (η and S, else its model or id).
        metric: The metric.
        blocks: The blocks, in the run's order.
        steps: The training steps measured.
        values: ``(blocks, steps)``.
    """

    label: str
    metric: str
    blocks: list[str]
    steps: np.ndarray
    values: np.ndarray


def block_tracks(runs: Sequence[Any]) -> list[BlockTrack]:
    """The per-block curves of tracked runs, one entry per run and metric."""
    out: list[BlockTrack] = []
    for run in runs:
        training = dict(get(run, "training", {}) or {})
        attrs = dict(get(run, "attrs", {}) or {})
        if "step" not in training:
            continue
        order = [str(b) for b in attrs.get("blocks") or []]
        label = (
            _label(attrs)[0]
            if attrs.get("lr") is not None
            else str(attrs.get("model") or get(run, "run_id", "run"))
        )
        for metric in _TRACK_LABELS:
            prefix = f"blocks.{metric}."
            curves = {
                k[len(prefix) :]: np.asarray(v, dtype=float)
                for k, v in training.items()
                if k.startswith(prefix)
            }
            if not curves:
                continue
            names = [b for b in order if b in curves]
            names += [b for b in curves if b not in names]
            steps = np.asarray(training["step"]).ravel()
            values = np.stack([curves[b].ravel() for b in names])
            out.append(BlockTrack(label, metric, names, steps, values))
    return out


def plot_blocks_track(tracks: Sequence[BlockTrack], title: str | None) -> Figure:
    """Draw ``blocks-track``: a block x step heat map per run and metric."""
    from matplotlib.colors import LogNorm

    fig = canvas(1, len(tracks), width=max(6.4, 0.3 * tracks[0].steps.size + 3),
                 height=0.35 * max(len(t.blocks) for t in tracks) + 1.6)  # fmt: skip
    for row, t in enumerate(tracks):
        ax = fig.add_subplot(len(tracks), 1, row + 1)
        finite = t.values[np.isfinite(t.values)]
        log = _spans_decades([finite])
        norm = LogNorm(vmin=finite.min(), vmax=finite.max()) if log else None
        edges = _edges(t.steps.astype(float))
        mesh = ax.pcolormesh(
            edges, np.arange(len(t.blocks) + 1), t.values, norm=norm,
            cmap="magma", shading="flat",
        )  # fmt: skip
        ax.set_yticks(np.arange(len(t.blocks)) + 0.5, t.blocks, fontsize="small")
        ax.invert_yaxis()
        ax.set_xlabel("training step")
        ax.set_title(f"{t.label}: {_TRACK_LABELS[t.metric]}", fontsize="medium")
        fig.colorbar(mesh, ax=ax, label=_TRACK_LABELS[t.metric])
    fig.suptitle(title or "Where is the sharpness, step by step?")
    return fig


def _edges(steps: np.ndarray) -> np.ndarray:
    """Cell edges around the measured steps (half-way between neighbours)."""
    if steps.size == 1:
        return np.array([steps[0] - 0.5, steps[0] + 0.5])
    mid = (steps[1:] + steps[:-1]) / 2
    return np.concatenate(
        [[steps[0] - (mid[0] - steps[0])], mid, [steps[-1] + (steps[-1] - mid[-1])]]
    )
