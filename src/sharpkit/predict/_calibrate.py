"""Calibration on this machine (cached) and the estimate of a sweep's points."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from sharpkit.errors import SharpkitError
from sharpkit.predict._model import (
    MeasureTiming,
    PointEstimate,
    SweepEstimate,
    TrainTiming,
    machine,
    point_seconds,
    smooth,
)

_MIN_EXAMPLES = 1024  # examples per calibration epoch (at least 4 steps)
_MIN_STEPS = 4
_CAL_EPOCHS = 2
_CACHE_VERSION = 1
# Keys of [train] that change the cost of a step (lr, schedule, seed do not).
_STEP_KEYS = (
    "model",
    "model_options",
    "data",
    "data_options",
    "augment",
    "trainer",
    "trainer_options",
    "device",
)


# --------------------------------------------------------------------------- cache


def calibration_path() -> Path:
    """The calibration cache file.

    ``$SHARPKIT_CALIBRATION`` if set, else
    ``$XDG_CACHE_HOME/sharpkit/calibration.json`` (``~/.cache`` by default).
    """
    named = os.environ.get("SHARPKIT_CALIBRATION")
    if named:
        return Path(named)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "sharpkit" / "calibration.json"


def _key(kind: str, parts: Mapping[str, Any], threads: int) -> str:
    text = json.dumps(
        {"kind": kind, "machine": machine(), "threads": threads, **parts},
        sort_keys=True,
        default=str,
    )
    return kind + ":" + hashlib.sha256(text.encode()).hexdigest()[:24]


class _Cache:
    """The calibration cache file: read once, written after each new entry."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.entries: dict[str, dict[str, Any]] = {}
        if path is not None and path.is_file():
            try:
                doc = json.loads(path.read_text())
            except (OSError, ValueError):
                doc = {}
            if isinstance(doc, dict) and doc.get("version") == _CACHE_VERSION:
                found = doc.get("entries")
                self.entries = dict(found) if isinstance(found, dict) else {}

    def get(self, key: str) -> dict[str, Any] | None:
        return self.entries.get(key)

    def put(self, key: str, value: dict[str, Any]) -> None:
        self.entries[key] = {**value, "measured": time.time()}
        if self.path is None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            doc = {"version": _CACHE_VERSION, "entries": self.entries}
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".cal-")
            with os.fdopen(fd, "w") as fh:
                json.dump(doc, fh, indent=1, sort_keys=True)
            os.replace(tmp, self.path)
        except OSError:  # a cache that cannot be written only costs time
            pass


# ------------------------------------------------------------------- calibration


def _threads(threads: int | None) -> Callable[[], None]:
    """Set torch's thread count for the calibration; return the undo."""
    import torch

    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    return lambda: torch.set_num_threads(before)


def _warm_up() -> float | None:
    """Pay what a process pays once: torch's first optimizer.

    Creating the first ``torch.optim`` optimizer imports ``torch._dynamo``
    (seconds on a busy CPU); counted in a calibration it would be charged to
    every point, so the calibration pays it first, apart.

    Returns:
        Its seconds, or ``None`` if this process had paid it already.
    """
    import sys

    import torch

    fresh = "torch._dynamo" not in sys.modules
    start = time.perf_counter()
    torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    return time.perf_counter() - start if fresh else None


def _sizes(train: Mapping[str, Any], data_root: str | None) -> tuple[int, int]:
    """Training (full split) and test examples of the point's dataset."""
    from sharpkit.api.job import Inputs
    from sharpkit.api.train import _training_data
    from sharpkit.registry import get_registry

    inputs = Inputs(
        data=str(train["data"]),
        data_options=train.get("data_options"),
        data_root=data_root,
        seed=int(train.get("seed", 0)),
    )
    ds, _ = _training_data(inputs, subset=None, registry=get_registry())
    return len(ds.train.inputs), len(ds.test.inputs)


def _calibrate_train(
    train: Mapping[str, Any], data_root: str | None, folder: Path
) -> dict[str, Any]:
    """Two epochs of the real trainer on a small subset, timed.

    Returns:
        The fields of a :class:`TrainTiming`.
    """
    from sharpkit import api
    from sharpkit.registry import get_registry

    n_train, n_test = _sizes(train, data_root)
    size = int(train["batch_size"])
    examples = min(n_train, max(_MIN_EXAMPLES, _MIN_STEPS * size))
    registered = str(train["data"]) in get_registry().names("dataset")
    args = {k: train[k] for k in _STEP_KEYS if k in train}
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = api.train(
            **args,
            lr=1e-3,  # the cost of a step does not depend on it; nothing diverges
            batch_size=size,
            epochs=_CAL_EPOCHS,
            seed=int(train.get("seed", 0)),
            subset=examples if registered and examples < n_train else None,
            out_dir=folder,
            data_root=data_root,
        )
    wall = time.perf_counter() - start
    used = examples if registered else n_train
    seconds = [float(s) for s in result.curves.get("seconds", [])]
    sps = result.attrs.get("samples_per_second")
    if len(seconds) != _CAL_EPOCHS or not isinstance(sps, int | float) or sps <= 0:
        # a trainer without the sgd loop's timing: all of it counts as steps
        return {
            "example_seconds": wall / (_CAL_EPOCHS * used),
            "eval_seconds": 0.0,
            "overhead": 0.0,
            "n_train": n_train,
            "n_test": n_test,
        }
    steps = _CAL_EPOCHS * used / float(sps)
    evals = max(0.0, sum(seconds) - steps) / (_CAL_EPOCHS * n_test + used)
    return {
        "example_seconds": 1.0 / float(sps),
        "eval_seconds": evals,
        "overhead": max(0.0, wall - sum(seconds)),
        "n_train": n_train,
        "n_test": n_test,
    }


def _calibrate_measure(
    train: Mapping[str, Any],
    measure: Mapping[str, Any],
    checkpoint: Path,
    data_root: str | None,
) -> dict[str, Any]:
    """One measurement of the configured metrics on the calibration model, timed."""
    from sharpkit import api

    m = dict(measure)
    metrics = m.pop("metrics", ["spectral"])
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        api.measure(
            checkpoint,
            str(train["data"]),
            metrics,
            data_options=train.get("data_options"),
            data_root=data_root,
            **m,
        )
    seconds = time.perf_counter() - start
    examples = None
    if m.get("samples") is None:
        examples, _ = _sizes(train, data_root)
    return {"seconds": seconds, "examples": examples}


def _train_parts(train: Mapping[str, Any]) -> dict[str, Any]:
    return {
        **{k: train.get(k) for k in _STEP_KEYS},
        "batch_size": train["batch_size"],
    }


def _measure_parts(
    train: Mapping[str, Any], measure: Mapping[str, Any]
) -> dict[str, Any]:
    return {
        **{k: train.get(k) for k in ("model", "model_options", "data", "data_options")},
        "measure": dict(measure),
    }


def _model_key(train: Mapping[str, Any]) -> str:
    return _key("model", _measure_parts(train, {}), 0)


class Calibrator:
    """Times, caches and hands out the calibrations a sweep needs.

    Args:
        data_root: Where datasets are looked for first.
        threads: Torch threads to calibrate with (``None``: as now).
        cache: The cache file (``None``: keep nothing between calls).
        progress: Called with a line of text before each calibration.
    """

    def __init__(
        self,
        *,
        data_root: str | None = None,
        threads: int | None = None,
        cache: Path | None = None,
        progress: Callable[[str], None] | None = None,
    ) -> None:
        import torch

        self.data_root = data_root
        self.threads = threads or torch.get_num_threads()
        self._asked = threads
        self._cache = _Cache(cache)
        self._say = progress or (lambda _text: None)
        self.seconds = 0.0
        self._checkpoints: dict[str, Path] = {}
        self._folder = Path(tempfile.mkdtemp(prefix="sharpkit-calibration-"))

    def close(self) -> None:
        """Remove the calibration models."""
        import shutil

        shutil.rmtree(self._folder, ignore_errors=True)

    def startup(self) -> float:
        """Seconds a new process pays once before its first point (cached)."""
        key = _key("startup", {}, 0)
        took = _warm_up()
        if took is not None:
            self._cache.put(key, {"seconds": took})
            return took
        found = self._cache.get(key)
        return float(found["seconds"]) if found else 0.0

    def train(
        self, train: Mapping[str, Any], *, need_model: bool = False
    ) -> TrainTiming:
        """The training timing of ``train``'s model, data and batch size.

        Args:
            train: The point's ``[train]`` arguments.
            need_model: Calibrate even if cached, when no calibration model of
                this architecture is at hand (the measurement needs one).
        """
        key = _key("train", _train_parts(train), self.threads)
        found = self._cache.get(key)
        model = _model_key(train)
        if found is None or (need_model and model not in self._checkpoints):
            self._say(f"calibrating training at batch_size={train['batch_size']}")
            folder = self._folder / key.replace(":", "-")
            undo = _threads(self._asked)
            start = time.perf_counter()
            try:
                value = _calibrate_train(train, self.data_root, folder)
            finally:
                undo()
                self.seconds += time.perf_counter() - start
            self._checkpoints[model] = folder / "final.pt"
            if found is None:
                self._cache.put(key, value)
                found = value
        return TrainTiming(**{k: found[k] for k in TrainTiming.__dataclass_fields__})

    def measure(
        self, train: Mapping[str, Any], measure: Mapping[str, Any]
    ) -> MeasureTiming:
        """The timing of one measurement of ``train``'s model with ``measure``."""
        key = _key("measure", _measure_parts(train, measure), self.threads)
        found = self._cache.get(key)
        if found is None:
            model = _model_key(train)
            if model not in self._checkpoints:
                self.train(train, need_model=True)
            self._say("calibrating the measurement")
            undo = _threads(self._asked)
            start = time.perf_counter()
            try:
                found = _calibrate_measure(
                    train, measure, self._checkpoints[model], self.data_root
                )
            finally:
                undo()
                self.seconds += time.perf_counter() - start
            self._cache.put(key, found)
        return MeasureTiming(seconds=found["seconds"], examples=found.get("examples"))


# --------------------------------------------------------------------------- estimate


def _epochs_done(out_dir: Path | str, epochs: int) -> int:
    """Epochs a point's folder already holds (``final.pt``: all; ``last.pt``: its)."""
    if not isinstance(out_dir, Path):
        return 0  # an object-store folder: not looked at (a rough upper bound)
    if (out_dir / "final.pt").is_file():
        return epochs
    last = out_dir / "last.pt"
    if not last.is_file():
        return 0
    from sharpkit.checkpoint import load_checkpoint
    from sharpkit.errors import SharpkitError

    try:
        epoch = load_checkpoint(last).meta.epoch
    except SharpkitError:
        return 0
    return min(epochs, int(epoch or 0))


def _measured_shas(store: str | None, metrics: Sequence[str]) -> set[str]:
    """Checkpoints (sha256) the store holds a measurement of every metric of."""
    if store is None:
        return set()
    from sharpkit.errors import SharpkitError
    from sharpkit.store import ResultStore

    try:
        rs = ResultStore(store, create=False)
        runs = rs.runs(kind="measure")
    except SharpkitError:
        return set()
    have: dict[str, set[str]] = {}
    for info in runs:
        sha = info.attrs.get("checkpoint_sha256")
        if isinstance(sha, str):
            have.setdefault(sha, set()).update(info.metrics)
    return {sha for sha, names in have.items() if set(metrics) <= names}


def _interpolation_seconds(item: Mapping[str, Any], timing: TrainTiming) -> float:
    """One ``[[interpolate]]``'s predicted seconds, from the evaluation cost.

    At each α the probe evaluates at most ``eval_samples`` training and test
    examples and, with ``bn_reestimate`` (the sweep's default), runs forward
    passes over ``bn_samples`` training examples (0 means all): the probe's
    own defaults unless the item sets them.
    """
    from sharpkit.registry import get_registry

    spec = get_registry().get("probe", "interpolate")
    opts: dict[str, Any] = {o.name: o.default for o in spec.options}
    opts["bn_reestimate"] = item.get("bn_reestimate", True)
    opts.update(item.get("options") or {})

    def cap(n: int, limit: Any) -> int:
        return n if not limit else min(n, int(limit))

    examples = cap(timing.n_train, opts.get("eval_samples")) + cap(
        timing.n_test, opts.get("eval_samples")
    )
    if opts["bn_reestimate"]:
        examples += cap(timing.n_train, opts.get("bn_samples"))
    return _alphas(item) * examples * timing.eval_seconds


def _alphas(item: Mapping[str, Any]) -> int:
    alpha = item.get("alpha", "-1:2:31")
    if isinstance(alpha, str):
        parts = alpha.split(":")
        return int(parts[2]) if len(parts) == 3 else len(alpha.split(","))
    return len(alpha)


def _timings(
    points: Sequence[Any], calibrator: Calibrator
) -> dict[int, TrainTiming | SharpkitError]:
    """Each point's training timing, smoothed over its model's batch sizes."""
    raw: dict[int, TrainTiming | SharpkitError] = {}
    groups: dict[str, dict[int, TrainTiming]] = {}
    for p in points:
        try:
            timing = calibrator.train(p.train)
        except SharpkitError as exc:  # the sweep reports it for the point too
            raw[p.index] = exc
            continue
        raw[p.index] = timing
        group = json.dumps(
            {k: p.train.get(k) for k in _STEP_KEYS}, sort_keys=True, default=str
        )
        groups.setdefault(group, {})[int(p.train["batch_size"])] = timing
    fitted = {g: smooth(by_size) for g, by_size in groups.items()}
    for p in points:
        if isinstance(raw[p.index], TrainTiming):
            group = json.dumps(
                {k: p.train.get(k) for k in _STEP_KEYS}, sort_keys=True, default=str
            )
            raw[p.index] = fitted[group][int(p.train["batch_size"])]
    return raw


def _estimate_point(
    p: Any,
    measure: Mapping[str, Any] | None,
    calibrator: Calibrator,
    shas: set[str],
    timing: TrainTiming,
) -> PointEstimate:
    """One point's estimate from its training timing."""
    from sharpkit.checkpoint import file_sha256

    train = p.train
    epochs = int(train["epochs"])
    subset = train.get("subset")
    n = min(int(subset), timing.n_train) if subset else timing.n_train
    seconds, per_epoch = point_seconds(timing, epochs=epochs, n_train=n)
    m_seconds = 0.0
    if measure:
        mt = calibrator.measure(train, measure)
        m_seconds = mt.seconds * (n / mt.examples if mt.examples else 1.0)
    done = _epochs_done(p.out_dir, epochs)
    measured = False
    if measure and done >= epochs and isinstance(p.out_dir, Path):
        measured = file_sha256(p.out_dir / "final.pt") in shas
    return PointEstimate(
        index=p.index,
        label=p.label,
        epochs=epochs,
        epochs_done=done,
        train_seconds=seconds,
        epoch_seconds=per_epoch,
        measure_seconds=m_seconds,
        measured=measured or not measure,
    )


def estimate_points(
    points: Sequence[Any],
    measure: Mapping[str, Any] | None,
    calibrator: Calibrator,
    *,
    store: str | None = None,
    jobs: int = 1,
    interpolate: Sequence[Mapping[str, Any]] = (),
) -> SweepEstimate:
    """Predict every point's time (see the module docstring), calibrating as needed.

    Args:
        points: The sweep's points (``index``, ``label``, ``train``, ``out_dir``).
        measure: The ``[measure]`` table, or ``None``.
        calibrator: Times what the cache does not hold yet.
        store: The sweep's store: measurements found there are not predicted.
        jobs: Points run at once.
        interpolate: The ``[[interpolate]]`` tables (costed roughly).

    Returns:
        The estimate, what is done already accounted for.
    """
    startup = calibrator.startup()
    metrics = list((measure or {}).get("metrics", ["spectral"]))
    shas = _measured_shas(store, metrics) if measure else set()
    out: list[PointEstimate] = []
    timing: TrainTiming | None = None
    timings = _timings(points, calibrator)
    for p in points:
        try:
            found = timings[p.index]
            if isinstance(found, SharpkitError):
                raise found
            estimate = _estimate_point(p, measure, calibrator, shas, found)
            timing = found
        except SharpkitError as exc:  # the sweep reports it for the point too
            estimate = PointEstimate(
                index=p.index, label=p.label, epochs=0, epochs_done=0,
                train_seconds=0.0, epoch_seconds=0.0, measure_seconds=0.0,
                error=str(exc),
            )  # fmt: skip
        out.append(estimate)
    extra = 0.0
    if timing is not None:
        extra = sum(_interpolation_seconds(item, timing) for item in interpolate)
    notes = [f"{e.label}: cannot be predicted ({e.error})" for e in out if e.error]
    if any(p.train.get("track") for p in points):
        notes.append("tracking during training is not predicted")
    if interpolate:
        notes.append("interpolations are costed roughly, from the evaluation cost")
    return SweepEstimate(
        points=out,
        jobs=jobs,
        threads=calibrator.threads,
        machine=machine(),
        calibration_seconds=calibrator.seconds,
        extra_seconds=extra,
        startup_seconds=startup,
        notes=tuple(notes),
    )
