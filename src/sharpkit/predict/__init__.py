"""How long a sweep will take: calibration on this machine, prediction, ETA.

Before a sweep runs, a short calibration times the work it will do, here:

* per distinct model, data and batch size ``S``: two epochs of the real
  trainer on a small stratified subset (a few dozen steps at ``S``). They give
  the training cost per example at ``S`` (the trainer's own
  ``samples_per_second``, which counts the update steps only), the evaluation
  cost per example (each epoch's time beyond its steps is the test-set pass,
  and the last epoch's exact pass over the training examples), and the fixed
  cost of a run (loading data, building the model, writing checkpoints);
* per distinct model, data and ``[measure]`` table: one measurement of the
  configured metrics on the configured samples, of the calibration model.

The batch sizes of one model are then fitted together: a step costs
``α + β·S`` (:func:`smooth`), so one calibration disturbed by a burst of load
on a shared machine does not decide its batch size's prediction alone.
A point of ``E`` epochs on ``n`` training and ``m`` test examples is then
predicted to take ``overhead + E·(n·a(S) + m·e) + n·e + measure`` seconds, and
resumed points only what is left of that: a point whose ``final.pt`` exists is
not trained again, one with ``last.pt`` at epoch ``k`` trains ``E − k`` epochs,
and a measurement the store already holds costs nothing. With ``jobs`` points
at once the sweep's wall time is the end of the last point when the points go,
in order, to whichever worker is free first (:func:`makespan`); each worker
then has ``cpu_count // jobs`` threads, and the calibration times that many.

Calibrations are cached per machine and configuration in
``$XDG_CACHE_HOME/sharpkit/calibration.json`` (else ``~/.cache/...``), so a
sweep run again, or an estimate before a run, does not pay it twice.

What is not predicted: tracking during training (``track``), a third-party
trainer's own extra work, interpolations after the grid (their cost is added
roughly, from the evaluation cost), and a machine that is busier during the
sweep than during the calibration. The measurement is calibrated on a barely
trained model; Lanczos may need more or fewer products at a trained minimum.
"""

from __future__ import annotations

from sharpkit.predict._calibrate import Calibrator, calibration_path, estimate_points
from sharpkit.predict._clock import SweepClock, record_point, recorded_seconds
from sharpkit.predict._model import (
    MeasureTiming,
    PointEstimate,
    SweepEstimate,
    TrainTiming,
    format_seconds,
    machine,
    makespan,
    point_seconds,
    remaining_eta,
    smooth,
)

__all__ = [
    "Calibrator",
    "MeasureTiming",
    "PointEstimate",
    "SweepClock",
    "SweepEstimate",
    "TrainTiming",
    "calibration_path",
    "estimate_points",
    "format_seconds",
    "machine",
    "makespan",
    "point_seconds",
    "record_point",
    "recorded_seconds",
    "remaining_eta",
    "smooth",
]
