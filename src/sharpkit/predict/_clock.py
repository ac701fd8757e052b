"""A running sweep's ETA, and the record of predicted vs actual time per point."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping, Sequence
from typing import Any

from sharpkit.predict._model import (
    PointEstimate,
    SweepEstimate,
    machine,
    remaining_eta,
)


class SweepClock:
    """A running sweep's ETA, and the record of each point's predicted vs actual time.

    Args:
        sweep: The sweep's name (recorded with each point).
        estimate: The prediction (``None``: no ETA, nothing recorded).
        jobs: Points run at once.
        store: Where points are recorded (``None``: nowhere).
    """

    def __init__(
        self,
        sweep: str,
        estimate: SweepEstimate | None,
        *,
        jobs: int = 1,
        store: str | None = None,
    ) -> None:
        self._sweep = sweep
        self._by_index = estimate.by_index() if estimate is not None else {}
        self._extra = estimate.extra_seconds if estimate is not None else 0.0
        self._threads = estimate.threads if estimate is not None else 0
        self._jobs = jobs
        self._store = store
        self._left = dict.fromkeys(self._by_index)
        # With a pool, each worker's first point also starts its process.
        todo = [i for i, p in self._by_index.items() if p.remaining > 0]
        startup = estimate.startup_seconds if estimate is not None else 0.0
        self._startup = dict.fromkeys(todo[:jobs] if jobs > 1 else [], startup)
        self.predicted_done = 0.0
        self.actual_done = 0.0

    def eta(self) -> dict[str, float]:
        """``{"eta": seconds left}`` while there is a prediction, else ``{}``."""
        if not self._by_index:
            return {}
        left = [self._predicted(i) for i in self._left]
        eta = remaining_eta(left, self.predicted_done, self.actual_done, self._jobs)
        return {"eta": eta + self._extra}

    def _predicted(self, index: int) -> float:
        return self._by_index[index].remaining + self._startup.get(index, 0.0)

    def finished(
        self,
        index: int,
        train: Mapping[str, Any],
        label: str,
        seconds: float,
        train_seconds: float,
        *,
        ok: bool = True,
    ) -> float | None:
        """Account for a finished point and record it in the store.

        Only a point that succeeded and had work predicted is a sample of the
        prediction (counted in the ETA's correction, recorded).

        Returns:
            The seconds predicted for the point's work (``None``: no estimate).
        """
        predicted = self._by_index.get(index)
        if predicted is None:
            return None
        self._left.pop(index, None)
        if not ok or predicted.remaining <= 0:
            return predicted.remaining
        self.predicted_done += self._predicted(index)
        self.actual_done += seconds
        if self._store is not None:
            from sharpkit.errors import SharpkitError

            # a timing is never worth a sweep: a store that refuses it is skipped
            with contextlib.suppress(SharpkitError):
                record_point(
                    self._store,
                    sweep=self._sweep,
                    train=train,
                    label=label,
                    predicted=predicted,
                    seconds=seconds,
                    train_seconds=train_seconds,
                    jobs=self._jobs,
                    threads=self._threads,
                    startup=self._startup.get(index, 0.0),
                )
        return self._predicted(index)


def record_point(
    store: str,
    *,
    sweep: str,
    train: Mapping[str, Any],
    label: str,
    predicted: PointEstimate,
    seconds: float,
    train_seconds: float,
    jobs: int,
    threads: int,
    startup: float = 0.0,
) -> str:
    """Store a point's predicted and actual seconds as a ``sweep`` run.

    The run's metrics are ``seconds`` (actual wall time of the point in this
    sweep run) and ``predicted_seconds`` (what was predicted for the work that
    was left of it, plus ``startup`` for a pool worker's first point), so
    ``sharpkit results --kind sweep`` lists both; the attributes split them
    into training and measurement.

    Returns:
        The run's id.
    """
    from sharpkit.interfaces import MetricResult
    from sharpkit.store import ResultStore

    left_train = max(0.0, predicted.remaining - _left_measure(predicted)) + startup
    attrs: dict[str, Any] = {
        "sweep": sweep,
        "point": label,
        "index": predicted.index,
        **{
            k: train.get(k)
            for k in ("model", "lr", "batch_size", "seed", "epochs", "trainer")
        },
        "dataset": train.get("data"),
        "train_seed": train.get("seed"),
        "epochs_done_before": predicted.epochs_done,
        "jobs": jobs,
        "threads": threads,
        "machine": machine(),
        "train_seconds": train_seconds,
        "measure_seconds": max(0.0, seconds - train_seconds),
        "predicted_train_seconds": left_train,
        "predicted_measure_seconds": _left_measure(predicted),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime()),
    }
    return ResultStore(store).write_run(
        kind="sweep",
        attrs=attrs,
        metrics={
            "seconds": MetricResult(value=seconds, seconds=seconds),
            "predicted_seconds": MetricResult(value=predicted.remaining + startup),
        },
        metric_labels={
            "seconds": {"long_name": "wall time of the point", "units": "s"},
            "predicted_seconds": {"long_name": "predicted wall time", "units": "s"},
        },
    )


def _left_measure(p: PointEstimate) -> float:
    return 0.0 if p.measured else p.measure_seconds


def recorded_seconds(store: str | None, points: Sequence[Any]) -> dict[int, float]:
    """Seconds the store shows each point took, for points it holds.

    A point's time is the sum of its training's per-epoch ``seconds`` curve
    (the whole training, across resumes) and of the ``seconds`` of the newest
    measurement of each metric of its final checkpoint. That is what any
    sweep recorded, with or without a prediction; the fixed cost of starting
    a run (seconds) is not in it.

    Args:
        store: The results store (``None``: nothing recorded).
        points: The sweep's points (``index``, ``train``).

    Returns:
        ``{point index: seconds}`` for the points trained into the store.
    """
    from sharpkit.errors import SharpkitError
    from sharpkit.store import ResultStore

    if store is None:
        return {}
    try:
        rs = ResultStore(store, create=False)
        trains = rs.runs(kind="train")
        measures = rs.runs(kind="measure")
    except SharpkitError:
        return {}
    measured: dict[str, dict[str, float]] = {}
    for info in measures:  # oldest first: the newest of each metric wins
        sha = info.attrs.get("checkpoint_sha256")
        for name, m in info.metrics.items():
            sec = m.get("seconds")
            if isinstance(sha, str) and isinstance(sec, int | float):
                measured.setdefault(sha, {})[name] = float(sec)
    out: dict[int, float] = {}
    for p in points:
        found = [i for i in trains if _same_point(i.attrs, p.train)]
        if not found:
            continue
        info = found[-1]
        try:
            curves = rs.run(info.run_id).training
        except SharpkitError:
            continue
        seconds = curves.get("seconds") if curves else None
        if seconds is None or len(seconds) < int(p.train["epochs"]):
            continue
        sha = info.attrs.get("checkpoint_sha256")
        extra = sum(measured.get(sha, {}).values()) if isinstance(sha, str) else 0.0
        out[p.index] = float(sum(float(s) for s in seconds)) + extra
    return out


def _same_point(attrs: Mapping[str, Any], train: Mapping[str, Any]) -> bool:
    """Whether a train run's attributes are those of the point's training."""
    for key in ("model", "lr", "batch_size", "epochs", "seed"):
        a, b = attrs.get(key), train.get(key)
        if isinstance(a, int | float) and isinstance(b, int | float):
            if abs(float(a) - float(b)) > 1e-12 * max(1.0, abs(float(b))):
                return False
        elif a != b:
            return False
    if attrs.get("dataset") != train.get("data"):
        return False
    return str(attrs.get("trainer", "sgd")) == str(train.get("trainer", "sgd"))
