"""Grids of points and the resumable sweep over them.

A grid option is ``"start:stop:num"`` (inclusive) or comma-separated values
(:func:`parse_grid`). :func:`sweep` evaluates every point of a grid of any
dimension in C order. With a :class:`Checkpointer` it saves the partial grid
after every point to ``<resume_dir>/<probe>-<key>.npz`` (written to a temporary
file and renamed, :func:`sharpkit._fs.atomic_file`) and, when started again with
the same models, data, options and seed (the same key), skips the points already
done. The file is deleted when the grid is complete.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sharpkit import ConfigError, DataError, ProbeContext
from sharpkit._fs import atomic_file
from sharpkit._meta import stable_key

if TYPE_CHECKING:
    import torch

    from sharpkit.builtin._landscape.evaluation import Evaluator

__all__ = [
    "MAX_GRID_POINTS",
    "Checkpointer",
    "check_points",
    "grid_text",
    "parse_grid",
    "sweep",
]

_SNAP = 1e-9
# Each point is at least one pass over the evaluation data (and a batch-norm
# re-estimate): 100k points is days of work already, and 1e8 would need
# gigabytes before the first point. A grid (or a plane's x*y) is held to it.
MAX_GRID_POINTS = 100_000


def check_points(count: int, what: str) -> None:
    """Refuse a grid of more than :data:`MAX_GRID_POINTS` points, before any work.

    Raises:
        ConfigError: ``count`` exceeds the limit.
    """
    if count > MAX_GRID_POINTS:
        msg = (
            f"{what} asks for {count} points; the limit is {MAX_GRID_POINTS} "
            "(each point is a pass over the data): use fewer points"
        )
        raise ConfigError(msg)


def parse_grid(text: str, *, name: str = "alpha") -> np.ndarray:
    """Parse a grid option: ``"start:stop:num"`` (inclusive) or ``"a,b,c"``.

    Values within 1e-9 of 0 or 1 are snapped to exactly 0 or 1, so that the
    minima themselves are grid points whenever the grid passes through them.

    Args:
        text: The option value.
        name: The option's name (for error messages).

    Returns:
        The grid as a strictly increasing float64 array.

    Raises:
        ConfigError: A malformed, empty, non-finite or non-increasing grid, an
            empty item in a list (``"0,,1"``), or more than
            :data:`MAX_GRID_POINTS` points.
    """
    raw = str(text).strip()
    try:
        if ":" in raw:
            parts = raw.split(":")
            if len(parts) != 3:
                raise ValueError(raw)
            start, stop, num = float(parts[0]), float(parts[1]), int(parts[2])
            if num < 1 or not (math.isfinite(start) and math.isfinite(stop)):
                raise ValueError(raw)
            check_points(num, f"option {name!r} ({text!r})")
            values = np.linspace(start, stop, num, dtype=np.float64)
        else:
            items = raw.split(",")
            if len(items) > 1 and not all(v.strip() for v in items):
                msg = (
                    f"option {name!r} has an empty value in {text!r}; write "
                    "comma-separated numbers such as '0,0.5,1'"
                )
                raise ConfigError(msg)
            check_points(len(items), f"option {name!r}")
            values = np.array([float(v) for v in items if v.strip()], dtype=np.float64)
    except ConfigError:
        raise  # already says what is wrong (a ConfigError is a ValueError too)
    except ValueError:
        msg = (
            f"option {name!r} must be 'start:stop:num' (e.g. '-1:2:31') or "
            f"comma-separated values, got {text!r}"
        )
        raise ConfigError(msg) from None
    if values.size == 0 or not np.all(np.isfinite(values)):
        msg = f"option {name!r} needs at least one finite value, got {text!r}"
        raise ConfigError(msg)
    if values.size > 1 and not np.all(np.diff(values) > 0):
        msg = f"option {name!r} must be strictly increasing, got {text!r}"
        raise ConfigError(msg)
    for target in (0.0, 1.0):
        values[np.abs(values - target) < _SNAP] = target
    return values


def grid_text(values: np.ndarray) -> str:
    """Return a grid as exact comma-separated values (for attributes and keys)."""
    return ",".join(repr(float(v)) for v in values)


class Checkpointer:
    """Saves a partially evaluated grid and restores it on the next run.

    Args:
        directory: The ``resume_dir`` option.
        probe: The probe's name (the file's prefix).
        settings: Everything the grid's values depend on; its
            :func:`~sharpkit._meta.stable_key` names the file and is checked on
            loading, so a partial grid is only resumed by the same computation.
    """

    def __init__(self, directory: str, probe: str, settings: Mapping[str, Any]) -> None:
        self.dir = Path(directory).expanduser()
        self.key = stable_key(settings)
        self.path = self.dir / f"{probe}-{self.key[:20]}.npz"

    def load(
        self, shape: tuple[int, ...], names: Sequence[str]
    ) -> tuple[dict[str, np.ndarray], np.ndarray] | None:
        """Return the saved arrays and done-mask, or ``None`` if none fits.

        Raises:
            DataError: The file exists but cannot be read.
        """
        if not self.path.is_file():
            return None
        try:
            with np.load(self.path, allow_pickle=False) as data:
                if str(data["key"]) != self.key:
                    return None
                done = np.array(data["done"], dtype=bool)
                arrays = {
                    n: np.array(data[f"array_{n}"], dtype=np.float64) for n in names
                }
        except (OSError, KeyError, ValueError) as exc:
            msg = (
                f"cannot read the partial grid {str(self.path)!r} ({exc}); delete it "
                "to start the probe afresh"
            )
            raise DataError(msg) from exc
        if done.shape != shape or any(a.shape != shape for a in arrays.values()):
            return None
        return arrays, done

    def save(self, arrays: Mapping[str, np.ndarray], done: np.ndarray) -> None:
        """Write the arrays and the done-mask atomically."""
        self.dir.mkdir(parents=True, exist_ok=True)
        payload: dict[str, Any] = {"key": np.array(self.key), "done": done}
        payload.update({f"array_{n}": a for n, a in arrays.items()})
        with atomic_file(self.path) as tmp, tmp.open("wb") as fh:
            np.savez(fh, **payload)

    def finish(self) -> None:
        """Delete the partial grid (the grid is complete)."""
        self.path.unlink(missing_ok=True)


def sweep(
    ctx: ProbeContext,
    work: torch.nn.Module,
    shape: tuple[int, ...],
    set_point: Callable[[tuple[int, ...]], str],
    evaluator: Evaluator,
    checkpointer: Checkpointer | None,
) -> tuple[dict[str, np.ndarray], int]:
    """Evaluate every grid point (resuming where a checkpoint left off).

    Args:
        ctx: The probe's context (its progress callback is called per point).
        work: The model that ``set_point`` moves and ``evaluator`` evaluates.
        shape: The grid's shape; points are visited in C order.
        set_point: Moves ``work`` to the point at an index; returns its label.
        evaluator: Evaluates ``work`` at the current point.
        checkpointer: Where the partial grid is saved, or ``None``.

    Returns:
        The arrays, and how many points were restored from the checkpoint.
    """
    names = evaluator.names
    arrays = {n: np.full(shape, np.nan) for n in names}
    done = np.zeros(shape, dtype=bool)
    if checkpointer is not None:
        restored = checkpointer.load(shape, names)
        if restored is not None:
            arrays, done = restored
    resumed = int(done.sum())
    total = int(np.prod(shape))
    completed = resumed
    ctx.progress(completed, total)
    for idx in np.ndindex(*shape):
        if done[idx]:
            continue
        label = set_point(idx)
        values = evaluator(work)
        for n in names:
            arrays[n][idx] = values[n]
        done[idx] = True
        completed += 1
        if checkpointer is not None:
            checkpointer.save(arrays, done)
        ctx.progress(
            completed, total, description=label, train_loss=values["train_loss"]
        )
    if checkpointer is not None:
        checkpointer.finish()
    return arrays, resumed
