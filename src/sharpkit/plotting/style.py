"""Drawing helpers shared by the figures: canvases, labels, colours, saving."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sharpkit.errors import ConfigError
from sharpkit.store.encoding import opt_float

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "ACC_COLOR",
    "LOSS_COLOR",
    "SUFFIXES",
    "batch_colors",
    "canvas",
    "check_path",
    "eta_s",
    "fmt",
    "fmt_batch",
    "lr_over_batch",
    "save",
]

SUFFIXES = (".png", ".pdf", ".svg")


LOSS_COLOR = "tab:blue"


ACC_COLOR = "tab:red"


def canvas(
    ncols: int, nrows: int = 1, *, width: float = 4.6, height: float = 3.6
) -> Figure:
    """Return an empty figure of ``ncols`` x ``nrows`` panels on an Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * ncols, height * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def fmt(value: Any) -> str:
    """Format a number with 3 significant digits (``?`` if unknown)."""
    number = opt_float(value)
    if number is None:
        return "?"
    return f"{number:.3g}"


def fmt_batch(value: Any) -> str:
    """Format a batch size (an integer when it is one; ``?`` if unknown)."""
    number = opt_float(value)
    if number is None:
        return "?"
    return str(int(number)) if number.is_integer() else f"{number:.4g}"


def eta_s(lr: Any, batch: Any) -> str:
    """Return ``η=..., S=...`` for a legend or title."""
    return f"η={fmt(lr)}, S={fmt_batch(batch)}"


def lr_over_batch(lr: Any, batch: Any) -> float | None:
    """Return η/S, or ``None`` when either is unknown or S is 0."""
    a, b = opt_float(lr), opt_float(batch)
    return a / b if a is not None and b else None


def save(fig: Figure, path: Path, dpi: int) -> Path:
    """Save ``fig`` to ``path`` (its folder created) and return the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    return path


def check_path(path: str | os.PathLike[str]) -> Path:
    """Return ``path`` if its suffix names a format the figures can be saved in."""
    out = Path(path)
    if out.suffix.lower() not in SUFFIXES:
        msg = (
            f"cannot tell the image format of {str(out)!r}; end the file name with "
            + ", ".join(SUFFIXES)
        )
        raise ConfigError(msg)
    return out


def batch_colors(sizes: Sequence[int]) -> dict[int, Any]:
    """Return a viridis colour for each batch size, in increasing order."""
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    uniq = sorted(set(sizes))
    if len(uniq) == 1:
        return {uniq[0]: cmap(0.35)}
    return {s: cmap(0.9 * i / (len(uniq) - 1)) for i, s in enumerate(uniq)}
