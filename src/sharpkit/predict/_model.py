"""What a prediction is: timings, point and sweep estimates, and their arithmetic."""

from __future__ import annotations

import dataclasses
import heapq
import math
import os
import platform
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sharpkit.errors import ConfigError


@dataclass(frozen=True)
class TrainTiming:
    """Calibrated training cost of one (model, data, batch size) on this machine.

    Attributes:
        example_seconds: Training seconds per example at this batch size (the
            update steps only).
        eval_seconds: Seconds per example of an evaluation pass (forward only).
        overhead: Fixed seconds of a training run (data, model, checkpoints).
        n_train: Training examples in the full split (before any ``subset``).
        n_test: Test examples.
    """

    example_seconds: float
    eval_seconds: float
    overhead: float
    n_train: int
    n_test: int

    def epoch(self, n_train: int) -> float:
        """Seconds of one epoch over ``n_train`` examples (steps + test pass)."""
        return n_train * self.example_seconds + self.n_test * self.eval_seconds


@dataclass(frozen=True)
class MeasureTiming:
    """Calibrated cost of one measurement (all configured metrics).

    Attributes:
        seconds: Wall time of the measurement.
        examples: Examples it ran on (``None``: ``samples`` was set, and the
            cost does not depend on the training set's size).
    """

    seconds: float
    examples: int | None = None


@dataclass(frozen=True)
class PointEstimate:
    """The prediction for one grid point.

    Attributes:
        index: The point's index in the grid.
        label: The point's label (``lr=0.1 batch_size=128 seed=0``).
        epochs: Epochs the point trains in all.
        epochs_done: Epochs already trained (``last.pt``/``final.pt`` found).
        train_seconds: Predicted seconds of the whole training.
        epoch_seconds: Predicted seconds of one of its epochs.
        measure_seconds: Predicted seconds of the measurement.
        measured: Whether the store already holds the measurement.
        error: Why the point cannot be predicted (its calibration failed: the
            sweep will report the same error for the point); it counts 0 s.
    """

    index: int
    label: str
    epochs: int
    epochs_done: int
    train_seconds: float
    epoch_seconds: float
    measure_seconds: float
    measured: bool = False
    error: str | None = None

    @property
    def seconds(self) -> float:
        """Predicted seconds of the whole point (training and measurement)."""
        return self.train_seconds + self.measure_seconds

    @property
    def remaining(self) -> float:
        """Predicted seconds of what is left to do for the point."""
        if self.error is not None:
            return 0.0
        left = 0.0
        if self.epochs_done < self.epochs:
            left += self.train_seconds - self.epochs_done * self.epoch_seconds
        if not self.measured:
            left += self.measure_seconds
        return max(0.0, left)

    @property
    def status(self) -> str:
        """``done``, ``measure``, ``resume``, ``train`` or ``error``.

        ``measure``: trained, not measured yet; ``error``: not predicted.
        """
        if self.error is not None:
            return "error"
        if self.epochs_done >= self.epochs:
            return "done" if self.measured else "measure"
        return "resume" if self.epochs_done else "train"


@dataclass(frozen=True)
class SweepEstimate:
    """The prediction for a whole sweep.

    Attributes:
        points: One estimate per grid point, in grid order.
        jobs: Points run at once.
        threads: Torch threads per point the calibration used.
        machine: Where it was calibrated (:func:`machine`).
        calibration_seconds: Time spent calibrating now (0: all cached).
        extra_seconds: Predicted seconds after the grid (interpolations).
        startup_seconds: What a process pays once before its first point
            (imports); each worker pays it, at the same time.
        notes: What the prediction leaves out.
    """

    points: Sequence[PointEstimate]
    jobs: int
    threads: int
    machine: str
    calibration_seconds: float = 0.0
    extra_seconds: float = 0.0
    startup_seconds: float = 0.0
    notes: Sequence[str] = field(default_factory=tuple)

    @property
    def remaining(self) -> float:
        """Predicted wall time of what is left (points in ``jobs`` workers).

        Nothing once every point is done: the interpolations after them are
        then reused from the store as well (or cost seconds).
        """
        left = [p.remaining for p in self.points]
        if not any(left):  # interpolations of finished points are reused too
            return 0.0
        return makespan(left, self.jobs) + self.extra_seconds + self.startup_seconds

    @property
    def total(self) -> float:
        """Predicted wall time of the whole sweep from scratch."""
        return makespan([p.seconds for p in self.points], self.jobs) + (
            self.extra_seconds + self.startup_seconds
        )

    def by_index(self) -> dict[int, PointEstimate]:
        """The point estimates keyed by grid index."""
        return {p.index: p for p in self.points}

    def to_json(self) -> dict[str, Any]:
        """A JSON-compatible summary (``--estimate --json``)."""
        return {
            "machine": self.machine,
            "jobs": self.jobs,
            "threads": self.threads,
            "calibration_seconds": round(self.calibration_seconds, 2),
            "predicted_seconds": round(self.total, 1),
            "remaining_seconds": round(self.remaining, 1),
            "extra_seconds": round(self.extra_seconds, 1),
            "startup_seconds": round(self.startup_seconds, 1),
            "notes": list(self.notes),
            "points": [
                {
                    "index": p.index,
                    "point": p.label,
                    "status": p.status,
                    "epochs": p.epochs,
                    "epochs_done": p.epochs_done,
                    "predicted_seconds": round(p.seconds, 2),
                    "predicted_train_seconds": round(p.train_seconds, 2),
                    "predicted_measure_seconds": round(p.measure_seconds, 2),
                    "remaining_seconds": round(p.remaining, 2),
                    "error": p.error,
                }
                for p in self.points
            ],
        }


# --------------------------------------------------------------------------- arithmetic


def makespan(durations: Sequence[float], jobs: int) -> float:
    """Wall time of tasks given, in order, to whichever of ``jobs`` workers is free.

    This is how a process pool runs a sweep's points: each worker takes the
    next point when it finishes one.

    Examples:
        >>> makespan([3.0, 1.0, 1.0, 1.0], jobs=2)
        3.0
        >>> makespan([1.0, 1.0, 1.0], jobs=1)
        3.0
    """
    if jobs < 1:
        msg = f"jobs must be >= 1, got {jobs}"
        raise ConfigError(msg)
    free = [0.0] * jobs
    for d in durations:
        start = heapq.heappop(free)
        heapq.heappush(free, start + max(0.0, d))
    return max(free)


def point_seconds(
    timing: TrainTiming,
    *,
    epochs: int,
    n_train: int,
    measure: float,
) -> tuple[float, float]:
    """Predicted (training, per-epoch) seconds of a point; measurement apart.

    Training is the fixed overhead, ``epochs`` epochs over ``n_train`` examples
    and the test split, and the exact pass over the ``n_train`` training
    examples after the last epoch. ``measure`` is accepted for symmetry with
    the caller and checked to be non-negative.
    """
    if measure < 0 or epochs < 1 or n_train < 1:
        msg = "epochs and n_train must be positive and measure >= 0"
        raise ConfigError(msg)
    per_epoch = timing.epoch(n_train)
    train = timing.overhead + epochs * per_epoch + n_train * timing.eval_seconds
    return train, per_epoch


def remaining_eta(
    predicted: Sequence[float],
    done_predicted: float,
    done_actual: float,
    jobs: int,
) -> float:
    """ETA of the points left, corrected by how the finished ones went.

    The predictions of the points left are scaled by ``done_actual /
    done_predicted`` (how much slower or faster than predicted the points
    finished so far ran; clamped to [0.2, 5] so one odd point cannot swing
    it) and scheduled on ``jobs`` workers.

    Args:
        predicted: Predicted seconds of each point not finished, in order.
        done_predicted: Predicted seconds of the points finished in this run.
        done_actual: Their actual seconds.
        jobs: Points run at once.
    """
    ratio = 1.0
    if done_predicted > 0 and done_actual > 0:
        ratio = min(5.0, max(0.2, done_actual / done_predicted))
    return makespan([ratio * p for p in predicted], jobs)


def format_seconds(seconds: float) -> str:
    """``42 s``, ``12 min``, ``3.4 h``, ``2.1 days``: a duration for people."""
    if not math.isfinite(seconds):
        return "?"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def machine() -> str:
    """This machine, as the calibration cache keys it (host, CPU, torch)."""
    import torch

    cpu = platform.processor() or platform.machine()
    return f"{platform.node()} {cpu} {os.cpu_count()} cpus torch {torch.__version__}"


def smooth(timings: Mapping[int, TrainTiming]) -> dict[int, TrainTiming]:
    """One model's timings at several batch sizes, made consistent with each other.

    A training step costs ``α + β·S`` (a fixed part per step, a part per
    example), so an example costs ``β + α/S``: fitted to every batch size's
    calibration at once (least squares on the relative error), one noisy
    calibration — a burst of load on a shared machine — no longer decides its
    batch size's prediction alone. The evaluation cost and the fixed cost of
    a run do not depend on ``S``: their median over the calibrations is used.
    With a single batch size, or a fit that comes out negative, the
    calibrations are kept as they are (the fit then says nothing).

    Args:
        timings: ``{batch size: calibrated timing}`` of one model and data.

    Returns:
        ``{batch size: timing}`` with the fitted per-example cost.
    """
    import numpy as np

    if len(timings) < 2:
        return dict(timings)
    sizes = np.array(sorted(timings), dtype=np.float64)
    step = np.array([timings[int(s)].example_seconds * s for s in sizes])
    # rows (1/t_i, S_i/t_i) · (α, β) = 1: the relative error of each step time
    design = np.stack([1.0 / step, sizes / step], axis=1)
    (alpha, beta), *_ = np.linalg.lstsq(design, np.ones_like(step), rcond=None)
    if alpha < 0 or beta <= 0:
        return dict(timings)
    evals = float(np.median([t.eval_seconds for t in timings.values()]))
    overhead = float(np.median([t.overhead for t in timings.values()]))
    return {
        int(s): dataclasses.replace(
            timings[int(s)],
            example_seconds=float(beta + alpha / s),
            eval_seconds=evals,
            overhead=overhead,
        )
        for s in sizes
    }
