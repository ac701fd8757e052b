"""Width readouts: a loss curve or surface turned into numbers.

Around a minimum at ``α = a`` with training loss ``L_a``, the *basin* is the
connected interval around ``a`` where the training loss stays at or below
``L_a + width_delta`` (edges found by linear interpolation between grid points).
Widths are reported in α units and in parameter-space distance (α units times
``‖θ2-θ1‖`` or ``‖d‖``). An edge that the grid does not reach is *censored*: the
grid end is reported and the readout is listed in ``attrs["censored"]`` as a
lower bound. On the line between two minima, the loss barrier
``max_{α∈[0,1]} L(α) - ((1-α)L_0 + αL_1)`` is also read off the grid (Frankle,
Dziugaite, Roy & Carbin, 2020, ICML, "Linear mode connectivity and the lottery
ticket hypothesis"; Entezari, Sedghi, Saukh & Neyshabur, 2022, ICLR, "The role
of permutation invariance in linear mode connectivity of neural networks").
"""

from __future__ import annotations

import math

import numpy as np

from sharpkit import ConfigError

__all__ = [
    "Readouts",
    "basin_edges",
    "minimum_readouts",
    "plane_readouts",
    "two_minima_readouts",
    "width_summary",
]

Readouts = tuple[dict[str, float], list[str]]
"""A summary of scalar readouts and the names among them that are lower bounds."""


def basin_edges(
    coords: np.ndarray, loss: np.ndarray, center: float, threshold: float
) -> tuple[float, float, bool, bool]:
    """Return the edges of the interval around ``center`` where ``loss <= threshold``.

    ``coords`` must be strictly increasing and contain ``center``. Walking out from
    ``center``, the first grid point above the threshold (or with a non-finite
    loss) ends the interval; the edge is placed by linear interpolation between it
    and the last point below (at that last point if the loss there is not finite).

    Returns:
        ``(left, right, left_censored, right_censored)``; a censored edge is the
        grid end, reached without crossing the threshold.

    Raises:
        ConfigError: ``center`` is not a grid point.
    """
    coords = np.asarray(coords, dtype=np.float64)
    loss = np.asarray(loss, dtype=np.float64)
    hits = np.flatnonzero(coords == center)
    if hits.size != 1:
        msg = f"the grid does not contain the centre {center}"
        raise ConfigError(msg)
    c = int(hits[0])

    def walk(step: int) -> tuple[float, bool]:
        i = c
        while 0 <= i + step < coords.size:
            j = i + step
            lj = loss[j]
            if not np.isfinite(lj):
                return float(coords[i]), False
            if lj > threshold:
                li = loss[i]
                frac = (threshold - li) / (lj - li) if lj != li else 0.0
                frac = min(max(frac, 0.0), 1.0)
                return float(coords[i] + frac * (coords[j] - coords[i])), False
            i = j
        return float(coords[i]), True

    if not np.isfinite(loss[c]) or loss[c] > threshold:
        return float(center), float(center), False, False
    left, left_c = walk(-1)
    right, right_c = walk(+1)
    return left, right, left_c, right_c


def width_summary(
    prefix: str,
    coords: np.ndarray,
    loss: np.ndarray,
    center: float,
    delta: float,
    scale: float,
    summary: dict[str, float],
    censored: list[str],
) -> None:
    """Add the basin around ``center`` to ``summary`` (and ``censored``).

    Adds ``<prefix>_left``, ``<prefix>_right``, ``<prefix>`` (the width in grid
    units) and ``<prefix>_distance`` (the width times ``scale``).
    """
    c = int(np.flatnonzero(coords == center)[0])
    threshold = float(loss[c]) + delta
    left, right, lc, rc = basin_edges(coords, loss, center, threshold)
    summary[f"{prefix}_left"] = left
    summary[f"{prefix}_right"] = right
    summary[prefix] = right - left
    summary[f"{prefix}_distance"] = (right - left) * scale
    if lc:
        censored.append(f"{prefix}_left")
    if rc:
        censored.append(f"{prefix}_right")
    if lc or rc:
        censored.extend([prefix, f"{prefix}_distance"])


def _sorted(grid: np.ndarray, loss: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(grid, kind="stable")
    return grid[order], loss[order]


def minimum_readouts(
    grid: np.ndarray, loss: np.ndarray, delta: float, scale: float
) -> Readouts:
    """Readouts of a line ``θ + α·d`` through one minimum at ``α = 0``.

    Args:
        grid: The α values evaluated (containing 0; in any order).
        loss: The training loss at each of them.
        delta: The basin threshold above the loss at ``α = 0``.
        scale: ``‖d‖``, for the widths in parameter-space distance.

    Returns:
        ``train_loss_at_0`` and the basin ``width*`` around 0; the censored names.
    """
    coords, train_loss = _sorted(grid, loss)
    summary = {
        "train_loss_at_0": float(train_loss[int(np.flatnonzero(coords == 0.0)[0])])
    }
    censored: list[str] = []
    width_summary("width", coords, train_loss, 0.0, delta, scale, summary, censored)
    return summary, censored


def two_minima_readouts(
    grid: np.ndarray, loss: np.ndarray, delta: float, distance: float
) -> Readouts:
    """Readouts of the line ``(1-α)·θ1 + α·θ2`` through minima at ``α = 0, 1``.

    Args:
        grid: The α values evaluated (containing 0 and 1; in any order).
        loss: The training loss at each of them.
        delta: The basin threshold above each minimum's loss.
        distance: ``‖θ2-θ1‖``, for the widths in parameter-space distance.

    Returns:
        Per minimum its loss, basin width and outer half-width, then the loss
        barrier between them; the censored names.
    """
    coords, train_loss = _sorted(grid, loss)
    summary: dict[str, float] = {}
    censored: list[str] = []
    for center, label in ((0.0, "0"), (1.0, "1")):
        i = int(np.flatnonzero(coords == center)[0])
        summary[f"train_loss_at_{label}"] = float(train_loss[i])
        width_summary(
            f"width_{label}",
            coords,
            train_loss,
            center,
            delta,
            distance,
            summary,
            censored,
        )
    _outer_half_widths(distance, summary, censored)
    summary.update(_barrier(coords, train_loss, summary))
    return summary, censored


def _outer_half_widths(
    distance: float, summary: dict[str, float], censored: list[str]
) -> None:
    """Each minimum's half-width on the side away from the other one.

    There the other basin cannot merge with it.
    """
    for label, edge, outer in (
        ("0", "width_0_left", -1.0),
        ("1", "width_1_right", 1.0),
    ):
        half = outer * (summary[edge] - float(label))
        summary[f"width_{label}_outer"] = half
        summary[f"width_{label}_outer_distance"] = half * distance
        if edge in censored:
            censored.extend([f"width_{label}_outer", f"width_{label}_outer_distance"])


def _barrier(
    coords: np.ndarray, train_loss: np.ndarray, summary: dict[str, float]
) -> dict[str, float]:
    """The largest excess of the loss over the chord between the minima on [0, 1]."""
    inside = (coords >= 0.0) & (coords <= 1.0)
    l0, l1 = summary["train_loss_at_0"], summary["train_loss_at_1"]
    excess = train_loss[inside] - ((1.0 - coords[inside]) * l0 + coords[inside] * l1)
    finite = excess[np.isfinite(excess)]
    if not finite.size:
        return {"barrier": math.nan}
    return {
        "barrier": float(finite.max()),
        "barrier_alpha": float(
            coords[inside][np.isfinite(excess)][int(np.argmax(finite))]
        ),
    }


def plane_readouts(
    x: np.ndarray,
    y: np.ndarray,
    loss: np.ndarray,
    origin: tuple[float, float],
    delta: float,
    scales: tuple[float, float],
    prefix: str,
    summary: dict[str, float],
    censored: list[str],
) -> None:
    """Add the widths along the x row and y column through ``origin`` (if on the grid).

    ``loss`` has shape ``(len(y), len(x))``. Adds the loss at the origin
    (``<prefix>train_loss``, or ``train_loss_at_origin`` without a prefix) and
    the basins ``<prefix>width_x*`` and ``<prefix>width_y*``.
    """
    ox, oy = origin
    ix, iy = np.flatnonzero(x == ox), np.flatnonzero(y == oy)
    if ix.size != 1 or iy.size != 1:
        return
    row = loss[int(iy[0]), :]
    col = loss[:, int(ix[0])]
    key = f"{prefix}train_loss" if prefix else "train_loss_at_origin"
    summary[key] = float(row[int(ix[0])])
    width_summary(f"{prefix}width_x", x, row, ox, delta, scales[0], summary, censored)
    width_summary(f"{prefix}width_y", y, col, oy, delta, scales[1], summary, censored)
