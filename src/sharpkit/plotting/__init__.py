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
* ``blocks``: not in the paper; the curvature of each block of parameters
  (``sharpkit measure --blocks``): bars per block, the checkpoints side by side
  ordered by η/S, one panel per quantity measured per block.
* ``blocks-track``: not in the paper; runs tracked with
  ``Tracker(..., blocks=...)``: a block x step heat map per quantity tracked
  per block (colour: λ_max, trace or ‖H_bb‖_F of each block).
* ``density``: not in the paper; the Hessian eigenvalue density of each measured
  checkpoint (the ``density`` metric: stochastic Lanczos quadrature, smoothed
  with a Gaussian) on a log scale, overlaid and labelled by η and S, with
  λ_max as a dashed line where ``spectral`` was measured in the same run.

Figures are built with matplotlib's object API on the Agg canvas (no pyplot, no
global backend state), imported only when a figure is drawn. The output format
follows the file suffix: ``.png``, ``.pdf`` or ``.svg``.

One module per job: :mod:`~sharpkit.plotting.select` (what to draw: store rows
and runs, or plain records, filtered), :mod:`~sharpkit.plotting.style` (shared
drawing helpers), and the figures by kind: :mod:`~sharpkit.plotting.sharpness`
(``fig1``, ``sam``, ``correlate``), :mod:`~sharpkit.plotting.landscape`
(``fig2``, ``fig3``, ``rescale``), :mod:`~sharpkit.plotting.training` (``fig4``)
and :mod:`~sharpkit.plotting.spectrum` (``density``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sharpkit.errors import ConfigError, DataError
from sharpkit.plotting.blocks import (
    block_series,
    block_tracks,
    plot_blocks,
    plot_blocks_track,
)
from sharpkit.plotting.landscape import interp_curves, plot_interp, plot_rescale
from sharpkit.plotting.select import records, runs, selection
from sharpkit.plotting.sharpness import plot_correlate, plot_fig1, plot_sam
from sharpkit.plotting.spectrum import densities, plot_density
from sharpkit.plotting.style import check_path, save
from sharpkit.plotting.training import plot_fig4, train_curves

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["FIGURES", "build_figure", "plot_figure"]

FIGURES = (
    "fig1",
    "fig2",
    "fig3",
    "fig4",
    "density",
    "correlate",
    "sam",
    "rescale",
    "blocks",
    "blocks-track",
)
"""The figures :func:`plot_figure` draws."""


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
            η/S), ``"rescale"`` (the ``rescale`` probe), ``"blocks"``
            (curvature per block of parameters, ``measure --blocks``) or
            ``"blocks-track"`` (block x step heat maps of runs tracked with
            ``Tracker(..., blocks=...)``).
        filter: Row filters as for ``ResultStore.records`` (``["dataset=cifar10",
            "batch_size>=128"]`` or ``{"model": "mlp-bn"}``); plain records and runs
            are filtered by the same rules.
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
    items = selection(filter, selectors)
    if figure == "fig1":
        return plot_fig1(records(source, items), title)
    if figure in ("fig2", "fig3"):
        curves = interp_curves(runs(source, "probe", items), "interpolate")
        if not curves:
            msg = (
                "no interpolate runs in the selection; run `sharpkit interpolate "
                "A.pt B.pt --store STORE` first"
            )
            raise DataError(msg)
        return plot_interp(curves, label, beta_base, title, figure)
    if figure == "correlate":
        from sharpkit.correlation import correlate

        return plot_correlate(
            correlate(source, target=target, filter=items or None, bootstrap=500),
            title,
        )
    return _build_other(source, figure, items, title)


def _found(found: Any, what: str, how: str) -> Any:
    """``found``, else one line: the selection has no ``what``; ``how`` to get it."""
    if not found:
        msg = f"no {what} in the selection; {how} first"
        raise DataError(msg)
    return found


def _build_other(
    source: Any, figure: str, items: list[str], title: str | None
) -> Figure:
    """``sam``, ``rescale``, ``blocks``, ``blocks-track``, ``density`` and ``fig4``."""
    if figure == "sam":
        return plot_sam(records(source, items), title)
    if figure == "rescale":
        return plot_rescale(runs(source, "probe", items), title)
    if figure == "blocks":
        series = block_series(runs(source, "measure", items))
        how = "run `sharpkit measure CKPT -m spectral --blocks layers --store STORE`"
        return plot_blocks(_found(series, "per-block results", how), title)
    if figure == "blocks-track":
        tracks = block_tracks(runs(source, "track", items))
        what = "tracked runs with per-block curves"
        how = "track with sharpkit.Tracker(..., blocks='layers', store=STORE)"
        return plot_blocks_track(_found(tracks, what, how), title)
    if figure == "density":
        spectra = densities(runs(source, "measure", items))
        how = "run `sharpkit measure CKPT -m density --store STORE`"
        return plot_density(_found(spectra, "density results", how), title)
    curves = train_curves(runs(source, "train", items))
    what = "training runs with learning curves"
    how = "run `sharpkit train ... --store STORE`"
    return plot_fig4(_found(curves, what, how), title)


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
            "batch_size>=128"]`` or ``{"model": "mlp-bn"}``); plain records and runs
            are filtered by the same rules.
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
    out = check_path(path)
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
    return save(fig, out, dpi)
