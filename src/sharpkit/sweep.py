"""Batch analysis: a grid of (η, S, seed, ...) trained, measured and stored, resumably.

A sweep is described by a TOML file (or the equivalent dict)::

    [sweep]
    name = "fig1"
    out = "runs/fig1"            # one folder of checkpoints per grid point
    store = "results.zarr"       # every training curve, metric and probe goes here

    grid = "product"             # or "zip": the i-th values of every list go together

    [train]                      # arguments of sharpkit.train; lists span the grid
    model = "mlp-bn"
    data = "fashion-mnist"
    epochs = 20
    lr = [0.005, 0.02, 0.1]
    batch_size = [32, 128, 512]
    seed = 0

    [measure]                    # keyword arguments of sharpkit.measure
    metrics = ["spectral", "frobenius"]
    samples = 2048               # or "all"; sample = "random" draws them from seed

    [[interpolate]]              # optional: probes between two grid points
    a = { lr = 0.1, batch_size = 32 }
    b = { lr = 0.1, batch_size = 512 }

Every list-valued key of ``[train]`` is a grid axis: the grid is their Cartesian
product, or with ``grid = "zip"`` the lists (all of one length) are read in step,
which is how coupled settings such as the paper's η = 0.1β, S = 50β are written.
Running a sweep again continues where it stopped: a point whose
``final.pt`` exists is not trained again, an interrupted one resumes from its
``last.pt``, and measurements and probes already in the store are reused. Points
run in this process (``jobs=1``), in a local process pool, or on a Dask cluster
(``scheduler="dask"`` starts a ``LocalCluster``; ``scheduler="tcp://host:port"``
connects to a running one). A point that fails is reported with its error and
the others carry on.

Workers need no shared disk when ``out`` and ``store`` are object-store URLs
(``out = "s3://bucket/sweeps/fig1"``, ``store = "s3://bucket/results.zarr"``):
each point trains in a local scratch folder whose checkpoints are uploaded as
they are written, ``final.pt`` last, so whichever worker picks a point up
resumes it from the object store, and a point whose ``final.pt`` is there is
never trained again (``docs/scaling.md``).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
import time
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sharpkit.errors import ConfigError, SharpkitError
from sharpkit.interfaces import ProgressCallback, no_progress
from sharpkit.predict import SweepClock

if TYPE_CHECKING:
    from sharpkit.predict import SweepEstimate

__all__ = [
    "PointOutcome",
    "SweepConfig",
    "SweepPoint",
    "SweepResult",
    "load_sweep",
    "run_sweep",
]

_SECTIONS = {"sweep", "train", "measure", "interpolate"}
_TRAIN_REQUIRED = ("model", "data", "lr", "batch_size", "epochs")
_TRAIN_KEYS = {
    "model",
    "data",
    "lr",
    "batch_size",
    "epochs",
    "momentum",
    "weight_decay",
    "schedule",
    "seed",
    "subset",
    "augment",
    "checkpoint_every",
    "track",
    "track_every",
    "track_samples",
    "trainer",
    "trainer_options",
    "model_options",
    "data_options",
    "device",
}
_MEASURE_KEYS = {
    "metrics",
    "samples",
    "sample",
    "precision",
    "split",
    "batch_size",
    "seed",
    "tol",
    "max_hvps",
    "bn_mode",
    "dtype",
    "device",
    "options",
}
_INTERP_KEYS = {"a", "b", "alpha", "bn_reestimate", "options", "seed", "batch_size"}
# Keys whose value is itself a list or table: never a grid axis.
_NON_AXIS = {"track", "trainer_options", "model_options", "data_options"}


@dataclass(frozen=True)
class SweepPoint:
    """One grid point: the arguments of :func:`sharpkit.train` and where it goes."""

    index: int
    train: Mapping[str, Any]
    out_dir: Path | str
    """The point's folder: a local path, or an object-store URL (a prefix)."""

    @property
    def label(self) -> str:
        """Short name of the point, e.g. ``lr=0.1 batch_size=128 seed=0``.

        The trainer leads when the sweep names one (``trainer=sam lr=0.1 ...``).
        """
        keys = [k for k in ("trainer", "lr", "batch_size", "seed") if k in self.train]
        return " ".join(f"{k}={self.train[k]}" for k in keys)


@dataclass(frozen=True)
class SweepConfig:
    """A parsed sweep description (see the module docstring for the format)."""

    name: str
    out: Path | str
    store: Path | str | None
    train: Mapping[str, Any]
    measure: Mapping[str, Any] | None = None
    interpolate: Sequence[Mapping[str, Any]] = ()
    data_root: str | None = None
    grid: str = "product"
    keep_last: bool = False
    """Keep each point's ``last.pt`` beside its ``final.pt`` (default: removed)."""

    @classmethod
    def from_dict(
        cls, data: Mapping[str, Any], *, base: Path | None = None
    ) -> SweepConfig:
        """Validate and build a config; relative paths are taken from ``base``.

        Raises:
            ConfigError: Unknown sections or keys, or missing required keys.
        """
        unknown = set(data) - _SECTIONS
        if unknown:
            msg = (
                f"unknown sweep section {sorted(unknown)[0]!r}; "
                f"use {', '.join(sorted(_SECTIONS))}"
            )
            raise ConfigError(msg)
        for section in ("sweep", "train"):  # tables, before anything is read
            _check_keys(section, data.get(section, {}), None)
        head = dict(data.get("sweep", {}))
        train = dict(data.get("train", {}))
        _check_keys("train", train, _TRAIN_KEYS)
        missing = [k for k in _TRAIN_REQUIRED if k not in train]
        if missing:
            msg = f"[train] needs {', '.join(repr(m) for m in missing)}"
            raise ConfigError(msg)
        measure = data.get("measure")
        if measure is not None:
            _check_keys("measure", measure, _MEASURE_KEYS)
        raw_interps = data.get("interpolate", [])
        if not isinstance(raw_interps, list):
            msg = "[[interpolate]] must be an array of tables ([[interpolate]] each)"
            raise ConfigError(msg)
        interps = list(raw_interps)
        for item in interps:
            _check_keys("interpolate", item, _INTERP_KEYS)
            if "a" not in item or "b" not in item:
                msg = "each [[interpolate]] needs tables a and b selecting grid points"
                raise ConfigError(msg)
        _check_keys(
            "sweep", head, {"name", "out", "store", "data_root", "grid", "keep_last"}
        )
        grid = str(head.get("grid", "product"))
        if grid not in ("product", "zip"):
            msg = f"[sweep] grid must be 'product' or 'zip', got {grid!r}"
            raise ConfigError(msg)
        base = base or Path.cwd()
        name = str(head.get("name", "sweep"))
        out = _place(base, head.get("out", f"runs/{name}"))
        store = head.get("store", "sharpkit-results.zarr")
        return cls(
            name=name,
            out=out,
            store=_place(base, store) if store else None,
            train=train,
            measure=dict(measure) if measure is not None else None,
            interpolate=interps,
            data_root=head.get("data_root"),
            grid=grid,
            keep_last=bool(head.get("keep_last", False)),
        )

    def points(self) -> list[SweepPoint]:
        """Expand the grid from the list-valued train keys (product or zip)."""
        axes = {
            k: v
            for k, v in self.train.items()
            if isinstance(v, list) and k not in _NON_AXIS
        }
        for k, v in axes.items():
            if not v:
                msg = f"grid axis {k!r} is an empty list"
                raise ConfigError(msg)
        fixed = {k: v for k, v in self.train.items() if k not in axes}
        names = list(axes)
        out: list[SweepPoint] = []
        if self.grid == "zip":
            lengths = {len(v) for v in axes.values()}
            if len(lengths) > 1:
                msg = (
                    "with grid = 'zip' every list in [train] must have the same length"
                )
                raise ConfigError(msg)
            combos: Any = zip(*(axes[k] for k in names), strict=True)
        else:
            combos = itertools.product(*(axes[k] for k in names))
        for i, values in enumerate(combos):
            args = {**fixed, **dict(zip(names, values, strict=True))}
            _pick_trainer_options(args)
            folder = "_".join(
                f"{k}-{_slug(v)}" for k, v in zip(names, values, strict=True)
            )
            where = (
                f"{self.out}/{folder or 'run'}"
                if isinstance(self.out, str)
                else self.out / (folder or "run")
            )
            out.append(SweepPoint(i, args, where))
        from sharpkit.api.pointfolder import check_unique

        check_unique([(str(p.out_dir), dict(p.train)) for p in out])
        return out


def _pick_trainer_options(args: dict[str, Any]) -> None:
    """Resolve ``trainer_options`` given per trainer to the point's trainer's.

    ``trainer_options = { sam = { rho = 0.1 } }`` in a sweep over
    ``trainer = ["sgd", "sam"]`` gives ``{rho = 0.1}`` to the sam points and
    nothing to the sgd ones.

    Raises:
        ConfigError: A table that mixes options and per-trainer tables.
    """
    opts = args.get("trainer_options")
    if not isinstance(opts, Mapping) or not opts:
        return
    tables = [isinstance(v, Mapping) for v in opts.values()]
    if not any(tables):
        return
    if not all(tables):
        msg = (
            "[train] trainer_options must be one table of options or one table per "
            "trainer (e.g. trainer_options = { sam = { rho = 0.1 } }), not both"
        )
        raise ConfigError(msg)
    args["trainer_options"] = dict(opts.get(str(args.get("trainer", "sgd")), {}))


def _place(base: Path, value: Any) -> Path | str:
    """A path relative to the sweep file, or an object-store URL as it is."""
    from sharpkit.store.objects import location_of

    where = location_of(str(value))
    return where if isinstance(where, str) else base / where


def _slug(value: Any) -> str:
    text = str(value)
    if isinstance(value, float):  # shortest text that reads back as the value
        text = f"{value:g}" if float(f"{value:g}") == value else repr(value)
    return "".join(c if c.isalnum() or c in ".-" else "_" for c in text)


def _check_keys(section: str, table: object, allowed: set[str] | None) -> None:
    if not isinstance(table, Mapping):
        msg = f"[{section}] must be a table"
        raise ConfigError(msg)
    if allowed is None:
        return
    bad = sorted(set(table) - allowed)
    if bad:
        import difflib

        close = difflib.get_close_matches(bad[0], sorted(allowed), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        msg = f"unknown key {bad[0]!r} in [{section}]{hint}"
        raise ConfigError(msg)


def load_sweep(path: str | os.PathLike[str]) -> SweepConfig:
    """Read a sweep TOML file; relative paths in it are relative to the file.

    Raises:
        ConfigError: The file is missing, not TOML, or not a valid sweep.
    """
    p = Path(path)
    if not p.is_file():
        msg = f"sweep file {str(p)!r} not found"
        raise ConfigError(msg)
    try:
        data = tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as exc:
        msg = f"sweep file {str(p)!r} is not valid TOML: {exc}"
        raise ConfigError(msg) from exc
    return SweepConfig.from_dict(data, base=p.parent)


@dataclass(frozen=True)
class PointOutcome:
    """What happened to one grid point."""

    point: SweepPoint
    checkpoint: Path | str | None = None
    """``final.pt``: a local path, or its object-store URL (remote ``out``)."""
    trained: bool = False
    metrics: Mapping[str, float] = field(default_factory=dict)
    final: Mapping[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    error: str | None = None
    train_seconds: float = 0.0
    """Of ``seconds``, the training (0 when ``final.pt`` was there)."""
    predicted_seconds: float | None = None
    """What was predicted for the work left of the point (``None``: no estimate)."""


@dataclass(frozen=True)
class SweepResult:
    """The outcome of :func:`run_sweep`."""

    config: SweepConfig
    points: Sequence[PointOutcome]
    probes: Sequence[Mapping[str, Any]] = ()

    @property
    def failures(self) -> list[PointOutcome]:
        """Points that failed, with their error."""
        return [p for p in self.points if p.error is not None]


def _run_point(
    point: SweepPoint,
    measure: Mapping[str, Any] | None,
    store: str | None,
    data_root: str | None,
    threads: int | None = None,
    keep_last: bool = False,
) -> PointOutcome:
    """Train (or resume, or reuse) one point and measure it.

    A :class:`~sharpkit.SharpkitError` is caught and returned as the outcome's
    ``error``, so one bad point never stops a sweep.
    """
    from sharpkit import api
    from sharpkit.checkpoint import load_checkpoint

    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    start = time.perf_counter()
    where: Path | str
    try:
        if isinstance(point.out_dir, str):
            final, trained, where = _train_remote(point, store, data_root, keep_last)
        else:
            final, trained = _train_local(
                point, point.out_dir, store, data_root, keep_last
            )
            where = final
        trained_at = time.perf_counter()
        ckpt = load_checkpoint(final)
        values: dict[str, float] = {}
        if measure:
            m = dict(measure)
            metrics = m.pop("metrics", ["spectral"])
            result = api.measure(
                final, None, metrics, data_root=data_root, store=store, **m
            )
            values = {name: r.value for name, r in result.items()}
        return PointOutcome(
            point,
            where,
            trained,
            values,
            dict(ckpt.meta.final),
            time.perf_counter() - start,
            train_seconds=trained_at - start,
        )
    except SharpkitError as exc:
        return PointOutcome(point, seconds=time.perf_counter() - start, error=str(exc))


def _train_local(
    point: SweepPoint,
    out_dir: Path,
    store: str | None,
    data_root: str | None,
    keep_last: bool = False,
) -> tuple[Path, bool]:
    """Train the point into ``out_dir`` unless its ``final.pt`` is there.

    Once ``final.pt`` exists, ``last.pt`` (the same weights and training
    state, written every epoch so that a killed run resumes) is removed unless
    ``keep_last``: a point keeps one checkpoint on disk, not two. Continuing
    a finished point for more epochs starts from a copy of ``final.pt`` named
    ``last.pt``.
    """
    from sharpkit import api
    from sharpkit.api.pointfolder import check_local_folder, record_point

    final = out_dir / "final.pt"
    check_local_folder(out_dir, point.train)
    trained = not final.is_file()
    if trained:
        record_point(out_dir, point.train)
        api.train(
            **dict(point.train),
            out_dir=out_dir,
            resume=(out_dir / "last.pt").is_file(),
            data_root=data_root,
            store=store,
        )
    if not keep_last and final.is_file():
        (out_dir / "last.pt").unlink(missing_ok=True)
    return final, trained


def _train_remote(
    point: SweepPoint,
    store: str | None,
    data_root: str | None,
    keep_last: bool = False,
) -> tuple[Path, bool, str]:
    """Train the point with its checkpoints on an object store; no shared disk.

    A ``final.pt`` in the object store means the point is done: it is fetched
    (cached by ETag) and nothing is trained. Otherwise the point trains in a
    local scratch folder, starting from the object store's ``last.pt`` if a
    killed worker left one, uploading ``last.pt`` as it changes and
    ``final.pt`` last; then ``last.pt`` is removed unless ``keep_last``.

    Returns:
        The local ``final.pt``, whether it was trained now, and its URL.
    """
    import shutil
    import tempfile

    from sharpkit import api
    from sharpkit.store.transfer import FolderSync, fetch, local_copy_of

    url = str(point.out_dir)
    final_url = f"{url}/final.pt"
    done = fetch(final_url)
    if done is not None:
        from sharpkit.api.pointfolder import check_point_folder
        from sharpkit.checkpoint import load_checkpoint

        check_point_folder(url, point.train, load_checkpoint(done).meta)
        return done, False, final_url
    cache = local_copy_of(final_url).parent
    cache.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".train-", dir=cache))
    try:
        last = fetch(f"{url}/last.pt")
        if last is not None:
            shutil.copyfile(last, scratch / "last.pt")
        with FolderSync(scratch, url) as sync:
            api.train(
                **dict(point.train),
                out_dir=scratch,
                resume=last is not None,
                data_root=data_root,
                store=store,
            )
        sync.upload("final.pt")  # last: from now on the point is done
        if not keep_last:  # final.pt holds what last.pt did: keep one
            from sharpkit.store.objects import ObjectBackend

            ObjectBackend(url).delete(["last.pt"])
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    found = fetch(final_url)
    if found is None:  # pragma: no cover - deleted by someone else meanwhile
        msg = f"{final_url} vanished right after it was uploaded"
        raise SharpkitError(msg)
    return found, True, final_url


def _match(points: Sequence[PointOutcome], selector: Mapping[str, Any]) -> PointOutcome:
    found = [
        p
        for p in points
        if all(_same(p.point.train.get(k), v) for k, v in selector.items())
    ]
    if len(found) != 1:
        what = "no grid point" if not found else f"{len(found)} grid points"
        msg = (
            f"interpolation endpoint {dict(selector)!r} matches {what}; "
            "select exactly one"
        )
        raise ConfigError(msg)
    return found[0]


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, int | float) and isinstance(b, int | float):
        return math.isclose(float(a), float(b), rel_tol=1e-12)
    return bool(a == b)


def run_sweep(
    config: SweepConfig,
    *,
    jobs: int = 1,
    scheduler: str | None = None,
    progress: ProgressCallback | None = None,
    on_point: Callable[[PointOutcome], None] | None = None,
    estimate: SweepEstimate | None = None,
) -> SweepResult:
    """Run every grid point (train → measure → store), then the interpolations.

    Args:
        config: The sweep.
        jobs: Points run at once (processes locally, workers on a new
            ``LocalCluster``). Torch threads are split between them.
        scheduler: ``None`` (local), ``"dask"`` (a new Dask ``LocalCluster``) or
            the address of a Dask scheduler (``"tcp://host:8786"``).
        progress: Called with (points done, points total); with an
            ``estimate``, also with ``eta``, the predicted seconds left
            (:func:`sharpkit.predict.remaining_eta`).
        on_point: Called with each point's outcome as it finishes.
        estimate: The sweep's prediction (:mod:`sharpkit.predict`): each
            point's outcome carries its ``predicted_seconds``, and each point
            that did work is recorded in the store as a ``sweep`` run
            (predicted and actual seconds).

    Returns:
        Every point's outcome (failed points carry ``error``) and the probes run.
    """
    if jobs < 1:
        msg = f"jobs must be >= 1, got {jobs}"
        raise ConfigError(msg)
    progress = progress or no_progress
    _warn_if_local(config, scheduler)
    points = config.points()
    store = str(config.store) if config.store is not None else None
    threads = max(1, (os.cpu_count() or 1) // jobs) if jobs > 1 else None
    args = [
        (p, config.measure, store, config.data_root, threads, config.keep_last)
        for p in points
    ]
    outcomes: list[PointOutcome] = []
    total = len(points)
    clock = SweepClock(config.name, estimate, jobs=jobs, store=store)
    progress(0, total, description=f"{config.name}: {total} points", **clock.eta())

    def done(outcome: PointOutcome) -> None:
        p = outcome.point
        predicted = clock.finished(
            p.index, p.train, p.label, outcome.seconds, outcome.train_seconds,
            ok=outcome.error is None,
        )  # fmt: skip
        if predicted is not None:
            outcome = dataclasses.replace(outcome, predicted_seconds=predicted)
        outcomes.append(outcome)
        if on_point is not None:
            on_point(outcome)
        progress(len(outcomes), total, description=outcome.point.label, **clock.eta())

    if scheduler is None and jobs == 1:
        for a in args:
            done(_run_point(*a))
    elif scheduler is None:
        _run_pool(args, jobs, done)
    else:
        _run_dask(args, jobs, scheduler, done)
    outcomes.sort(key=lambda o: o.point.index)
    probes = _run_interpolations(config, outcomes, store, progress)
    return SweepResult(config, outcomes, probes)


def _run_pool(
    args: Sequence[tuple[Any, ...]], jobs: int, done: Callable[[PointOutcome], None]
) -> None:
    """Run the points in a local process pool; stop it at once on any exception.

    Ctrl-C, SIGTERM (raised here as :class:`~sharpkit._fs.Terminated`) or an
    error cancels the points not started and stops the workers (SIGTERM: each
    unwinds its point and exits, see :func:`sharpkit._fs.run_in_worker`), so no
    new point starts and no worker outlives the sweep. A worker that dies
    (``kill -9``, the out-of-memory killer) fails its point only; the others
    finish (:func:`sharpkit._pool.run_pool`).
    """
    from sharpkit._pool import run_pool

    def lost(a: tuple[Any, ...]) -> None:
        point = a[0]
        done(
            PointOutcome(
                point=point,
                error=(
                    f"point {point.label}: its worker process died (killed: out of "
                    "memory, or kill -9) even when it ran alone; the other points "
                    "went on"
                ),
            )
        )

    run_pool(_run_point, args, jobs, done, lost)


def _warn_if_local(config: SweepConfig, scheduler: str | None) -> None:
    """A cluster's workers see a local ``out``/``store`` only through a shared disk."""
    if scheduler in (None, "dask"):
        return
    local = [
        what
        for what, where in (("out", config.out), ("store", config.store))
        if isinstance(where, Path)
    ]
    if local:
        import warnings

        from sharpkit.errors import SharpkitWarning

        are = "is a local path" if len(local) == 1 else "are local paths"
        warnings.warn(
            f"[sweep] {' and '.join(local)} {are}: every Dask worker must see "
            "it at the same path (a shared disk); use object-store URLs "
            "otherwise (docs/scaling.md)",
            SharpkitWarning,
            stacklevel=3,
        )


def _run_dask(
    args: Sequence[tuple[Any, ...]],
    jobs: int,
    scheduler: str,
    done: Callable[[PointOutcome], None],
) -> None:
    try:
        from distributed import Client, LocalCluster
        from distributed import as_completed as dask_completed
    except ImportError as exc:
        msg = "Dask is not installed; pip install 'sharpkit[distributed]'"
        raise ConfigError(msg) from exc
    cluster = None
    if scheduler == "dask":
        cluster = LocalCluster(
            n_workers=jobs,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            # the scheduler serves HTTP even without a dashboard, by default on
            # port 8787: another cluster on the machine may hold it (a warning
            # and a leaked socket); a free local port instead
            scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
        )
        client = Client(cluster)
    else:
        try:
            client = Client(scheduler, timeout="10s")
        except OSError as exc:
            msg = f"cannot reach the Dask scheduler at {scheduler!r}: {exc}"
            raise ConfigError(msg) from exc
    futures = []
    try:
        futures = [client.submit(_run_point, *a, pure=False) for a in args]
        for fut in dask_completed(futures):
            done(fut.result())
    except BaseException:  # Ctrl-C, SIGTERM, an error: no point starts after it
        client.cancel(futures, force=True)
        raise
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def _run_interpolations(
    config: SweepConfig,
    outcomes: Sequence[PointOutcome],
    store: str | None,
    progress: ProgressCallback,
) -> list[Mapping[str, Any]]:
    from sharpkit import api

    results: list[Mapping[str, Any]] = []
    for item in config.interpolate:
        a = _match(outcomes, item["a"])
        b = _match(outcomes, item["b"])
        if a.checkpoint is None or b.checkpoint is None:
            results.append(
                {"a": a.point.label, "b": b.point.label, "error": "endpoint failed"}
            )
            continue
        progress(0, None, description=f"interpolate {a.point.label} -> {b.point.label}")
        extra = {k: v for k, v in item.items() if k not in ("a", "b")}
        try:
            probe = api.interpolate(
                _local(a.checkpoint),
                _local(b.checkpoint),
                data_root=config.data_root,
                store=store,
                progress=progress,
                **extra,
            )
        except SharpkitError as exc:
            results.append({"a": a.point.label, "b": b.point.label, "error": str(exc)})
            continue
        results.append(
            {"a": a.point.label, "b": b.point.label, "summary": dict(probe.summary)}
        )
    return results


def _local(checkpoint: Path | str) -> Path:
    """A checkpoint on this machine: fetched (cached) if it is an object-store URL."""
    if isinstance(checkpoint, Path):
        return checkpoint
    from sharpkit.store.transfer import fetch

    found = fetch(checkpoint)
    if found is None:
        msg = f"checkpoint {checkpoint!r} is not in the object store any more"
        raise SharpkitError(msg)
    return found
