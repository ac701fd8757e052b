"""The Hessian eigenvalue density of each measured checkpoint (``density``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sharpkit.plotting.select import first, get
from sharpkit.plotting.style import canvas, eta_s, fmt, lr_over_batch
from sharpkit.store.encoding import opt_float

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["densities", "plot_density"]


@dataclass
class _Spectrum:
    """One checkpoint's smoothed eigenvalue density."""

    label: str
    ratio: float | None
    grid: np.ndarray
    density: np.ndarray
    sigma: float | None
    lambda_max: float | None


def densities(runs: Sequence[Any]) -> list[_Spectrum]:
    """The newest density per checkpoint, ordered by η/S (then by label)."""
    newest: dict[str, tuple[str, _Spectrum]] = {}
    for run in runs:
        metrics = get(run, "metrics", {}) or {}
        dens = metrics.get("density")
        if dens is None:
            continue
        arrays = get(dens, "arrays", {}) or {}
        if "grid" not in arrays or "density" not in arrays:
            continue
        attrs = dict(get(run, "attrs", {}) or {})
        lr, batch = first(attrs.get("lr")), first(attrs.get("batch_size"))
        ckpt = attrs.get("checkpoint_path") or attrs.get("run_id") or "model"
        name = Path(str(ckpt))
        short = f"{name.parent.name}/{name.name}" if name.parent.name else name.name
        label = eta_s(lr, batch) if lr is not None and batch is not None else short
        spectral = metrics.get("spectral")
        lam = opt_float(get(spectral, "value")) if spectral is not None else None
        spectrum = _Spectrum(
            label=label,
            ratio=lr_over_batch(lr, batch),
            grid=np.asarray(arrays["grid"], dtype=float).ravel(),
            density=np.asarray(arrays["density"], dtype=float).ravel(),
            sigma=opt_float((get(dens, "attrs", {}) or {}).get("sigma")),
            lambda_max=lam,
        )
        key = str(attrs.get("checkpoint_sha256") or ckpt)
        stamp = str(attrs.get("time") or "")  # runs come oldest first: ties go later
        if key not in newest or stamp >= newest[key][0]:
            newest[key] = (stamp, spectrum)
    out = [sp for _, sp in newest.values()]
    out.sort(key=lambda sp: (sp.ratio is None, sp.ratio or 0.0, sp.label))
    return out


def plot_density(spectra: Sequence[_Spectrum], title: str | None) -> Figure:
    """Draw ``density``: the smoothed eigenvalue densities, overlaid, log scale."""
    from matplotlib import colormaps

    fig = canvas(1, width=6.4, height=4.2)
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
        ylabel += f" (Gaussian σ = {fmt(next(iter(sigmas)))})"
    ax.set_ylabel(ylabel)
    if any(sp.lambda_max is not None for sp in spectra):
        ax.plot([], [], color="0.4", ls="--", lw=0.9, label="λ_max (spectral)")
    ax.legend(fontsize="small", frameon=False)
    ax.grid(True, which="major", alpha=0.3)
    ax.set_title(title or "Hessian eigenvalue density (stochastic Lanczos quadrature)")
    return fig
