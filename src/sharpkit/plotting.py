"""The paper's figures, drawn from a results store (or from plain records).

Jastrzębski, Kenton, Arpit, Ballas, Fischer, Bengio & Storkey (2017), "Finding
flatter minima with SGD", ICLR 2018 workshop track:

* ``fig1``: λ_max, log ‖H‖_F and validation accuracy against η/S (log x axis), one
  panel each, points coloured by the batch size S (measure runs of ``spectral``
  and ``frobenius``; the accuracy is the checkpoint's final test accuracy).
* ``fig2`` / ``fig3``: interpolation curves, one panel per ``interpolate`` run:
  training and validation loss on the left axis and accuracy on a twin right axis,
  the two minima's η and S (``fig3``: β = S / 50, as in the paper's η = 0.1β,
  S = 50β) in the panel title, and each minimum's outer half-width (the
  ``interpolate`` readouts ``width_0_outer`` and ``width_1_outer``) in a corner.
* ``fig4``: learning curves of several training runs overlaid, training and
  validation accuracy over epochs, labelled by η and S.
* ``sam``: not in the paper; Fig. 1's panels with SGD and SAM (Foret et al.,
  2021) as two series at the same η/S (``sharpkit reproduce sam``): λ_max,
  log ‖H‖_F, adaptive sharpness and validation accuracy against η/S, filled
  markers for SGD and open ones for SAM, coloured by S.
* ``rescale``: not in the paper; each metric of the ``rescale`` probe (one
  ReLU layer times c, the next times 1/c: the same function, Dinh et al.,
  2017) relative to its value at c = 1, against c on log-log axes.
* ``density``: not in the paper; the Hessian eigenvalue density of each measured
  checkpoint (the ``density`` metric: stochastic Lanczos quadrature, smoothed
  with a Gaussian) on a log scale, overlaid and labelled by η and S, with
  λ_max as a dashed line where ``spectral`` was measured in the same run.

Figures are built with matplotlib's object API on the Agg canvas (no pyplot, no
global backend state), imported only when a figure is drawn. The output format
follows the file suffix: ``.png``, ``.pdf`` or ``.svg``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sharpkit.errors import ConfigError, DataError
from sharpkit.store.encoding import opt_float

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from sharpkit.store import ResultStore

__all__ = ["FIGURES", "build_figure", "plot_figure"]

FIGURES = ("fig1", "fig2", "fig3", "fig4", "density", "correlate", "sam", "rescale")
"""The figures :func:`plot_figure` draws."""

_SUFFIXES = (".png", ".pdf", ".svg")
_LOSS_COLOR = "tab:blue"
_ACC_COLOR = "tab:red"


# --------------------------------------------------------------------------- inputs


@dataclass
class _Curves:
    """One run's curves, whatever the source (store, Run object or plain dict)."""

    run_id: str
    attrs: Mapping[str, Any]
    coords: Mapping[str, np.ndarray] = field(default_factory=dict)
    arrays: Mapping[str, np.ndarray] = field(default_factory=dict)
    summary: Mapping[str, float] = field(default_factory=dict)
    censored: Sequence[str] = ()


def _get(obj: Any, name: str, default: Any = None) -> Any:
    if isinstance(obj, Mapping):
        return obj.get(name, default)
    return getattr(obj, name, default)


def _first(value: Any) -> Any:
    return value[0] if isinstance(value, list | tuple) and value else value


def _second(value: Any) -> Any:
    return value[1] if isinstance(value, list | tuple) and len(value) > 1 else None


def _open_store(source: Any) -> ResultStore | None:
    from sharpkit.store import ResultStore

    if isinstance(source, ResultStore):
        return source
    if isinstance(source, str | os.PathLike):
        return ResultStore(source, create=False)
    return None


def _selection(
    filter: Mapping[str, Any] | Sequence[str] | None, selectors: Mapping[str, Any]
) -> list[str]:
    items: list[str] = []
    if isinstance(filter, Mapping):
        items += [f"{k}={v}" for k, v in filter.items()]
    elif isinstance(filter, str):
        items.append(filter)
    elif filter is not None:
        items += [str(f) for f in filter]
    items += [f"{k}={v}" for k, v in selectors.items()]
    return items


def _match(row: Mapping[str, Any], items: Sequence[str]) -> bool:
    """Equality filters for plain records (the store does richer filtering itself)."""
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key:
            msg = f"filter {item!r} must look like key=value"
            raise ConfigError(msg)
        key = key.strip()
        cell = row.get(key)
        if cell is None:
            return False
        number = opt_float(cell)
        if number is not None and not isinstance(cell, str):
            try:
                want = float(text)
            except ValueError:
                return False
            if not math.isclose(number, want, rel_tol=1e-9):
                return False
        elif str(cell) != text:
            return False
    return True


def _records(source: Any, items: Sequence[str]) -> list[dict[str, Any]]:
    store = _open_store(source)
    if store is not None:
        return store.records(list(items))
    if isinstance(source, Sequence) and all(isinstance(r, Mapping) for r in source):
        return [dict(r) for r in source if _match(r, items)]
    msg = (
        f"cannot read results from a {type(source).__name__}; pass a store path, a "
        "ResultStore or a list of record dicts"
    )
    raise ConfigError(msg)


def _runs(source: Any, kind: str, items: Sequence[str]) -> list[Any]:
    """Runs (``Run`` objects or mappings with attrs/probes/training) of one kind."""
    store = _open_store(source)
    if store is not None:
        wanted = {r["run_id"] for r in store.records(list(items), kind=kind)}
        return [
            store.run(i.run_id) for i in store.runs(kind=kind) if i.run_id in wanted
        ]
    if isinstance(source, Sequence) and not isinstance(source, str):
        out = []
        for run in source:
            if _get(run, "kind", kind) != kind:
                continue
            attrs = dict(_get(run, "attrs", {}) or {})
            flat = {
                **attrs,
                "run_id": _get(run, "run_id", attrs.get("run_id")),
                "model": _first(attrs.get("model")),
                "lr": _first(attrs.get("lr")),
                "batch_size": _first(attrs.get("batch_size")),
            }
            if _match(flat, items):
                out.append(run)
        return out
    msg = (
        f"cannot read runs from a {type(source).__name__}; pass a store path, a "
        "ResultStore or a list of runs"
    )
    raise ConfigError(msg)


# --------------------------------------------------------------------------- helpers


def _figure(
    ncols: int, nrows: int = 1, *, width: float = 4.6, height: float = 3.6
) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * ncols, height * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _fmt(value: Any) -> str:
    number = opt_float(value)
    if number is None:
        return "?"
    return f"{number:.3g}"


def _fmt_batch(value: Any) -> str:
    number = opt_float(value)
    if number is None:
        return "?"
    return str(int(number)) if number.is_integer() else f"{number:.4g}"


def _eta_s(lr: Any, batch: Any) -> str:
    return f"η={_fmt(lr)}, S={_fmt_batch(batch)}"


def _ratio(lr: Any, batch: Any) -> float | None:
    a, b = opt_float(lr), opt_float(batch)
    return a / b if a is not None and b else None


def _save(fig: Figure, path: Path, dpi: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    return path


def _check_path(path: str | os.PathLike[str]) -> Path:
    out = Path(path)
    if out.suffix.lower() not in _SUFFIXES:
        msg = (
            f"cannot tell the image format of {str(out)!r}; end the file name with "
            + ", ".join(_SUFFIXES)
        )
        raise ConfigError(msg)
    return out


def _batch_colors(sizes: Sequence[int]) -> dict[int, Any]:
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    uniq = sorted(set(sizes))
    if len(uniq) == 1:
        return {uniq[0]: cmap(0.35)}
    return {s: cmap(0.9 * i / (len(uniq) - 1)) for i, s in enumerate(uniq)}


# --------------------------------------------------------------------------- fig1


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
            entries.append(
                (str(metric), opt_float(row.get("value")), opt_float(row.get("stderr")))
            )
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


def _plot_fig1(rows: Sequence[Mapping[str, Any]], title: str | None) -> Figure:
    points = _fig1_points(rows)
    if not points["spectral"] and not points["frobenius"]:
        msg = (
            "no spectral or frobenius measurements with a known η and S in the "
            "selection; run `sharpkit measure CKPT -m spectral -m frobenius` on "
            "checkpoints trained by sharpkit first"
        )
        raise DataError(msg)
    sizes = [p["batch_size"] for pts in points.values() for p in pts]
    colors = _batch_colors(sizes)
    fig = _figure(3)
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
    return fig


# ------------------------------------------------------------------------- fig2 / fig3


def _interp_curves(runs: Sequence[Any], probe: str) -> list[_Curves]:
    out = []
    for run in runs:
        probes = _get(run, "probes", {}) or {}
        result = probes.get(probe) if isinstance(probes, Mapping) else None
        if result is None:
            continue
        coords = _get(result, "coords", {}) or {}
        if "alpha" not in coords:
            continue
        out.append(
            _Curves(
                run_id=str(_get(run, "run_id", "")),
                attrs=dict(_get(run, "attrs", {}) or {}),
                coords={k: np.asarray(v) for k, v in coords.items()},
                arrays={
                    k: np.asarray(v)
                    for k, v in (_get(result, "arrays", {}) or {}).items()
                },
                summary=dict(_get(result, "summary", {}) or {}),
                censored=[str(c) for c in _censored(result)],
            )
        )
    return out


def _censored(result: Any) -> list[Any]:
    attrs = _get(result, "attrs", {}) or {}
    value = attrs.get("censored") if isinstance(attrs, Mapping) else None
    return list(value) if isinstance(value, list | tuple) else []


def _width_text(c: _Curves) -> str | None:
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
    pick = _first if which == 0 else _second
    lr, batch = pick(attrs.get("lr")), pick(attrs.get("batch_size"))
    if label == "beta":
        b = opt_float(batch)
        beta = "?" if b is None else f"{b / beta_base:.3g}"
        return f"β={beta}"
    ratio = _ratio(lr, batch)
    tail = f" (η/S={ratio:.2g})" if ratio is not None else ""
    return _eta_s(lr, batch) + tail


def _plot_interp(
    curves: Sequence[_Curves],
    label: str,
    beta_base: float,
    title: str | None,
    figure: str,
) -> Figure:
    n = len(curves)
    ncols = min(n, 3)
    nrows = math.ceil(n / ncols)
    fig = _figure(ncols, nrows, width=5.0, height=3.8)
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
                color=_LOSS_COLOR,
                label="train loss",
            )
        if "test_loss" in c.arrays:
            lines += ax.plot(
                alpha,
                c.arrays["test_loss"],
                "--",
                color=_LOSS_COLOR,
                label="validation loss",
            )
        ax.set_xlabel("α")
        ax.set_ylabel("loss", color=_LOSS_COLOR)
        ax.tick_params(axis="y", labelcolor=_LOSS_COLOR)
        twin = ax.twinx()
        if (
            "train_accuracy" in c.arrays
            and np.isfinite(c.arrays["train_accuracy"]).any()
        ):
            lines += twin.plot(
                alpha,
                c.arrays["train_accuracy"],
                "-",
                color=_ACC_COLOR,
                label="train accuracy",
            )
        if "test_accuracy" in c.arrays and np.isfinite(c.arrays["test_accuracy"]).any():
            lines += twin.plot(
                alpha,
                c.arrays["test_accuracy"],
                "--",
                color=_ACC_COLOR,
                label="validation accuracy",
            )
        twin.set_ylabel("accuracy", color=_ACC_COLOR)
        twin.tick_params(axis="y", labelcolor=_ACC_COLOR)
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


# --------------------------------------------------------------------------- fig4


def _train_curves(runs: Sequence[Any]) -> list[_Curves]:
    out = []
    for run in runs:
        training = _get(run, "training", {}) or {}
        arrays = {k: np.asarray(v) for k, v in training.items()}
        if "epoch" not in arrays:
            continue
        out.append(
            _Curves(
                run_id=str(_get(run, "run_id", "")),
                attrs=dict(_get(run, "attrs", {}) or {}),
                arrays=arrays,
            )
        )
    return out


def _plot_fig4(curves: Sequence[_Curves], title: str | None) -> Figure:
    from matplotlib import colormaps

    fig = _figure(2)
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
        ratio = _ratio(lr, batch)
        label = _eta_s(lr, batch) + (f" (η/S={ratio:.2g})" if ratio is not None else "")
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


# --------------------------------------------------------------------------- public


# --------------------------------------------------------------------------- density


@dataclass
class _Spectrum:
    """One checkpoint's smoothed eigenvalue density."""

    label: str
    ratio: float | None
    grid: np.ndarray
    density: np.ndarray
    sigma: float | None
    lambda_max: float | None


def _densities(runs: Sequence[Any]) -> list[_Spectrum]:
    """The newest density per checkpoint, ordered by η/S (then by label)."""
    newest: dict[str, tuple[str, _Spectrum]] = {}
    for run in runs:
        metrics = _get(run, "metrics", {}) or {}
        dens = metrics.get("density")
        if dens is None:
            continue
        arrays = _get(dens, "arrays", {}) or {}
        if "grid" not in arrays or "density" not in arrays:
            continue
        attrs = dict(_get(run, "attrs", {}) or {})
        lr, batch = _first(attrs.get("lr")), _first(attrs.get("batch_size"))
        ckpt = attrs.get("checkpoint_path") or attrs.get("run_id") or "model"
        name = Path(str(ckpt))
        short = f"{name.parent.name}/{name.name}" if name.parent.name else name.name
        label = _eta_s(lr, batch) if lr is not None and batch is not None else short
        spectral = metrics.get("spectral")
        lam = opt_float(_get(spectral, "value")) if spectral is not None else None
        spectrum = _Spectrum(
            label=label,
            ratio=_ratio(lr, batch),
            grid=np.asarray(arrays["grid"], dtype=float).ravel(),
            density=np.asarray(arrays["density"], dtype=float).ravel(),
            sigma=opt_float((_get(dens, "attrs", {}) or {}).get("sigma")),
            lambda_max=lam,
        )
        key = str(attrs.get("checkpoint_sha256") or ckpt)
        stamp = str(attrs.get("time") or "")  # runs come oldest first: ties go later
        if key not in newest or stamp >= newest[key][0]:
            newest[key] = (stamp, spectrum)
    out = [sp for _, sp in newest.values()]
    out.sort(key=lambda sp: (sp.ratio is None, sp.ratio or 0.0, sp.label))
    return out


def _plot_density(spectra: Sequence[_Spectrum], title: str | None) -> Figure:
    from matplotlib import colormaps

    fig = _figure(1, width=6.4, height=4.2)
    ax = fig.add_subplot(1, 1, 1)
    cmap = colormaps["viridis"]
    peak = max(float(np.max(sp.density)) for sp in spectra)
    floor = peak * 1e-7  # below this a Gaussian tail is noise, not spectrum
    for i, sp in enumerate(spectra):
        color = cmap(0.9 * i / max(len(spectra) - 1, 1))
        ax.semilogy(
            sp.grid, np.maximum(sp.density, floor), color=color, lw=1.4, label=sp.label
        )
        if sp.lambda_max is not None:
            ax.axvline(sp.lambda_max, color=color, ls="--", lw=0.9)
    ax.set_ylim(floor, peak * 3)
    ax.set_xlabel("eigenvalue λ of the Hessian")
    sigmas = {round(sp.sigma, 6) for sp in spectra if sp.sigma is not None}
    ylabel = "density"
    if len(sigmas) == 1:
        ylabel += f" (Gaussian σ = {_fmt(next(iter(sigmas)))})"
    ax.set_ylabel(ylabel)
    if any(sp.lambda_max is not None for sp in spectra):
        ax.plot([], [], color="0.4", ls="--", lw=0.9, label="λ_max (spectral)")
    ax.legend(fontsize="small", frameon=False)
    ax.grid(True, which="major", alpha=0.3)
    ax.set_title(title or "Hessian eigenvalue density (stochastic Lanczos quadrature)")
    return fig


# --------------------------------------------------------------------------- sam

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


def _plot_sam(rows: Sequence[Mapping[str, Any]], title: str | None) -> Figure:
    points = _sam_points(rows)
    if not any(k[0] == "spectral" for k in points):
        msg = (
            "no spectral measurements with a known η and S in the selection; run "
            "`sharpkit reproduce sam` or measure SGD and SAM checkpoints with "
            "-m spectral -m frobenius -m adaptive first"
        )
        raise DataError(msg)
    colors = _batch_colors([p["batch_size"] for v in points.values() for p in v])
    fig = _figure(4, width=4.0, height=3.5)
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


# --------------------------------------------------------------------------- rescale


def _plot_rescale(runs: Sequence[Any], title: str | None) -> Figure:
    """Each measure relative to c = 1 against c; one panel per probe run."""
    results = [
        r
        for run in runs
        if (r := (_get(run, "probes", {}) or {}).get("rescale")) is not None
    ]
    if not results:
        msg = (
            "no rescale probes in the selection; run `sharpkit probe rescale "
            "CKPT --store STORE` first"
        )
        raise DataError(msg)
    fig = _figure(len(results), width=5.6, height=4.2)
    axes = fig.subplots(1, len(results), squeeze=False)[0]
    for ax, result in zip(axes, results, strict=True):
        c = np.asarray(_get(result, "coords", {})["c"], dtype=float)
        arrays = _get(result, "arrays", {}) or {}
        attrs = _get(result, "attrs", {}) or {}
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
        change = opt_float((_get(result, "summary", {}) or {}).get("max_output_change"))
        layers = " → ".join(str(x) for x in attrs.get("layers") or [])
        ax.set_title(f"layers {layers}; max output change {_fmt(change)}", fontsize=9)
        ax.legend(fontsize="small", frameon=False)
    fig.suptitle(title or "Which measures survive a function-preserving rescaling?")
    return fig


# --------------------------------------------------------------------------- correlate


def _plot_correlate(results: Sequence[Any], title: str | None) -> Figure:
    """One scatter per measure: the measure against the target, τ and Ψ on top."""
    from matplotlib.ticker import NullFormatter

    n = len(results)
    ncols = min(n, 3)
    nrows = math.ceil(n / ncols)
    fig = _figure(ncols, nrows, width=4.4, height=3.6)
    grid = fig.subplots(nrows, ncols, squeeze=False)
    sizes = [int(opt_float(h.get("batch_size")) or 0) for r in results for h in r.hyper]
    colors = _batch_colors(sizes)
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


def build_figure(
    source: Any,
    figure: str,
    *,
    filter: Mapping[str, Any] | Sequence[str] | None = None,
    label: str | None = None,
    beta_base: float = 50.0,
    title: str | None = None,
    target: str = "gap",
    **selectors: Any,
) -> Figure:
    """Build one of the paper's figures as a matplotlib ``Figure`` (not saved).

    Use this to adjust a figure before saving it; :func:`plot_figure` builds and
    saves in one call. The arguments are those of :func:`plot_figure`.

    Args:
        source: A results store (path or :class:`~sharpkit.store.ResultStore`).
            Without a store: for ``fig1`` a list of tidy records (dicts with
            ``kind``, ``metric``, ``value``, ``stderr``, ``lr``, ``batch_size``,
            ``lr_over_batch``, ``test_accuracy``, ``checkpoint_sha256``); for the
            others a list of runs (``Run`` objects or dicts with ``attrs``,
            ``probes`` and/or ``training``).
        figure: ``"fig1"``, ``"fig2"``, ``"fig3"``, ``"fig4"``, ``"density"``,
            ``"correlate"`` (each measure against ``target``, with Kendall's τ
            and Jiang et al.'s Ψ and their intervals; see
            :func:`sharpkit.correlate`), ``"sam"`` (SGD and SAM at the same
            η/S) or ``"rescale"`` (the ``rescale`` probe).
        filter: Row filters as for ``ResultStore.records`` (``["dataset=cifar10",
            "batch_size>=128"]`` or ``{"model": "mlp-bn"}``); for plain records,
            equality only.
        label: How interpolation panels name their end points: ``"eta-s"`` (η
            and S; the default for ``fig2``) or ``"beta"`` (β = S / ``beta_base``;
            the default for ``fig3``).
        beta_base: The batch size at β = 1 (the paper's S = 50β).
        title: Figure title (default: a description of the figure).
        target: For ``correlate``: the target the measures are plotted against.
        **selectors: Further equality filters, e.g. ``dataset="cifar10"``.

    Returns:
        The figure, on an Agg canvas.

    Raises:
        ConfigError: Unknown figure, format or label; a bad filter.
        DataError: Nothing to plot in the selection.
    """
    if figure not in FIGURES:
        msg = f"unknown figure {figure!r}; choose one of {', '.join(FIGURES)}"
        raise ConfigError(msg)
    if label is None:
        label = "beta" if figure == "fig3" else "eta-s"
    if label not in ("eta-s", "beta"):
        msg = f"label must be 'eta-s' or 'beta', got {label!r}"
        raise ConfigError(msg)
    if not beta_base > 0:
        msg = f"beta_base must be positive, got {beta_base}"
        raise ConfigError(msg)
    items = _selection(filter, selectors)
    if figure == "fig1":
        return _plot_fig1(_records(source, items), title)
    if figure in ("fig2", "fig3"):
        curves = _interp_curves(_runs(source, "probe", items), "interpolate")
        if not curves:
            msg = (
                "no interpolate runs in the selection; run `sharpkit interpolate "
                "A.pt B.pt --store STORE` first"
            )
            raise DataError(msg)
        return _plot_interp(curves, label, beta_base, title, figure)
    if figure == "correlate":
        from sharpkit.correlation import correlate

        return _plot_correlate(
            correlate(source, target=target, filter=items or None, bootstrap=500),
            title,
        )
    return _build_other(source, figure, items, title)


def _build_other(
    source: Any, figure: str, items: list[str], title: str | None
) -> Figure:
    """``sam``, ``rescale``, ``density`` and ``fig4``."""
    if figure == "sam":
        return _plot_sam(_records(source, items), title)
    if figure == "rescale":
        return _plot_rescale(_runs(source, "probe", items), title)
    if figure == "density":
        spectra = _densities(_runs(source, "measure", items))
        if not spectra:
            msg = (
                "no density results in the selection; run `sharpkit measure CKPT "
                "-m density --store STORE` first"
            )
            raise DataError(msg)
        return _plot_density(spectra, title)
    curves = _train_curves(_runs(source, "train", items))
    if not curves:
        msg = (
            "no training runs with learning curves in the selection; run "
            "`sharpkit train ... --store STORE` first"
        )
        raise DataError(msg)
    return _plot_fig4(curves, title)


def plot_figure(
    source: Any,
    figure: str,
    path: str | os.PathLike[str],
    *,
    filter: Mapping[str, Any] | Sequence[str] | None = None,
    label: str | None = None,
    beta_base: float = 50.0,
    title: str | None = None,
    dpi: int = 150,
    target: str = "gap",
    **selectors: Any,
) -> Path:
    """Draw one of the paper's figures from stored results and save it.

    Examples:
        >>> from sharpkit.plotting import plot_figure
        >>> plot_figure("results.zarr", "fig1", "fig1.png")  # doctest: +SKIP
        PosixPath('fig1.png')

    Args:
        source: A results store (path or :class:`~sharpkit.store.ResultStore`).
            Without a store: for ``fig1`` a list of tidy records (dicts with
            ``kind``, ``metric``, ``value``, ``stderr``, ``lr``, ``batch_size``,
            ``lr_over_batch``, ``test_accuracy``, ``checkpoint_sha256``); for the
            others a list of runs (``Run`` objects or dicts with ``attrs``,
            ``probes`` and/or ``training``).
        figure: One of :data:`FIGURES` (see :func:`build_figure`).
        path: Output file; ``.png``, ``.pdf`` or ``.svg``.
        filter: Row filters as for ``ResultStore.records`` (``["dataset=cifar10",
            "batch_size>=128"]`` or ``{"model": "mlp-bn"}``); for plain records,
            equality only.
        label: How interpolation panels name their end points: ``"eta-s"`` (η
            and S; the default for ``fig2``) or ``"beta"`` (β = S / ``beta_base``;
            the default for ``fig3``).
        beta_base: The batch size at β = 1 (the paper's S = 50β).
        title: Figure title (default: a description of the figure).
        dpi: Resolution of raster output.
        target: For ``correlate``: the target the measures are plotted against.
        **selectors: Further equality filters, e.g. ``dataset="cifar10"``.

    Returns:
        The path written.

    Raises:
        ConfigError: Unknown figure, format or label; a bad filter.
        DataError: Nothing to plot in the selection.
    """
    out = _check_path(path)
    fig = build_figure(
        source,
        figure,
        filter=filter,
        label=label,
        beta_base=beta_base,
        title=title,
        target=target,
        **selectors,
    )
    return _save(fig, out, dpi)
