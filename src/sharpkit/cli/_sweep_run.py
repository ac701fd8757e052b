"""Run a sweep and report its points (``sweep``, ``reproduce``)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from sharpkit.cli._progress import print_line, progress_display
from sharpkit.cli._render import print_json, print_table

if TYPE_CHECKING:
    from sharpkit.predict import SweepEstimate
    from sharpkit.sweep import SweepConfig, SweepResult

PredictOpt = Annotated[
    bool,
    typer.Option(
        "--predict/--no-predict",
        help="Print the predicted wall time before the sweep (a short calibration "
        "on this machine, cached) and show an ETA while it runs.",
    ),
]
EstimateOpt = Annotated[
    bool,
    typer.Option(
        "--estimate",
        help="Only print the predicted time of each point and of the sweep "
        "(what is done already accounted for) and exit.",
    ),
]


def _report(result: SweepResult, json_output: bool) -> None:
    rows = []
    for o in result.points:
        rows.append(
            {
                "point": o.point.label,
                "checkpoint": str(o.checkpoint) if o.checkpoint else None,
                "trained": o.trained,
                "test_accuracy": o.final.get("test_accuracy"),
                **dict(o.metrics),
                "seconds": round(o.seconds, 1),
                # 3 decimals in --json, as ``--estimate`` records (a 2-epoch point
                # of a tiny model is predicted at a few hundredths of a second);
                # the table shows 0.1 s, as it shows the time taken
                "predicted_seconds": None
                if o.predicted_seconds is None
                else round(o.predicted_seconds, 3 if json_output else 1),
                "error": o.error,
            }
        )
    sizes = disk_sizes(result.config)
    if json_output:
        print_json({"points": rows, "probes": list(result.probes), **sizes})
    else:
        metric_cols = sorted({k for o in result.points for k in o.metrics})
        print_table(
            rows,
            [("point", "point"), ("test_accuracy", "test acc")]
            + [(m, m) for m in metric_cols]
            + [("trained", "trained now"), ("seconds", "s")]
            + (
                [("predicted_seconds", "predicted s")]
                if any(o.predicted_seconds is not None for o in result.points)
                else []
            ),
            title=result.config.name,
        )
        for probe in result.probes:
            if "error" in probe:
                print_line(
                    "error",
                    f"interpolation {probe['a']} → {probe['b']}: {probe['error']}",
                )
        if sizes:
            print_line("disk", _sizes_line(sizes))
    for o in result.failures:
        print_line("error", f"{o.point.label}: {o.error}")


def disk_sizes(cfg: SweepConfig) -> dict[str, int]:
    """Bytes on disk of the sweep's store and checkpoints (local folders only)."""
    out: dict[str, int] = {}
    for key, where in (("store_bytes", cfg.store), ("checkpoint_bytes", cfg.out)):
        if isinstance(where, Path) and where.exists():
            out[key] = sum(f.stat().st_size for f in where.rglob("*") if f.is_file())
    if isinstance(cfg.out, Path) and cfg.out.exists():
        out["checkpoints"] = sum(1 for _ in cfg.out.rglob("*.pt"))
    return out


def _sizes_line(sizes: dict[str, int]) -> str:
    def mb(n: int) -> str:
        return f"{n / 1e6:.1f} MB"

    parts = []
    if "store_bytes" in sizes:
        parts.append(f"store {mb(sizes['store_bytes'])}")
    if "checkpoint_bytes" in sizes:
        parts.append(
            f"checkpoints {mb(sizes['checkpoint_bytes'])} "
            f"({sizes.get('checkpoints', 0)} files)"
        )
    return ", ".join(parts)


def with_device(cfg: SweepConfig, device: str) -> SweepConfig:
    """``cfg`` training and measuring on ``device`` (``--device`` of the command)."""
    from sharpkit.api.resolve import resolve_device

    resolve_device(device)  # a bad or missing device fails before anything runs
    train = {**cfg.train, "device": device}
    measure = None if cfg.measure is None else {**cfg.measure, "device": device}
    return dataclasses.replace(cfg, train=train, measure=measure)


def run_and_report(
    cfg: SweepConfig,
    *,
    jobs: int,
    scheduler: str | None,
    data_root: Path | None,
    json_output: bool,
    device: str | None = None,
    predict: bool = True,
    estimate_only: bool = False,
) -> SweepResult | None:
    """Run a sweep under a progress display and print a row per grid point.

    Args:
        cfg: The sweep.
        jobs: Grid points run at once.
        scheduler: ``dask`` or the address of a Dask scheduler.
        data_root: Overrides the sweep's ``data_root`` when given.
        json_output: Print JSON instead of a table.
        device: Overrides the sweep's ``device`` (training and measuring) when
            given.
        predict: Predict the sweep's time first (not with a ``scheduler``: the
            points then run on other machines).
        estimate_only: Print the prediction and return without running.

    Returns:
        The sweep's outcome (``None`` with ``estimate_only``); failed points
        are already reported on stderr.
    """
    from sharpkit._limits import check_processes
    from sharpkit.errors import ConfigError
    from sharpkit.sweep import run_sweep

    if scheduler in (None, "dask"):  # processes on this machine
        check_processes("-j", jobs)
    if data_root is not None:
        cfg = dataclasses.replace(cfg, data_root=str(data_root))
    if device is not None:
        cfg = with_device(cfg, device)
    if estimate_only and scheduler is not None:
        msg = "--estimate predicts this machine's time; drop --scheduler"
        raise ConfigError(msg)
    estimate = None
    # on a cluster the points run on other machines: this one's timing says nothing
    if estimate_only or (predict and scheduler is None):
        estimate = predict_sweep(cfg, jobs=jobs, quiet=json_output and estimate_only)
    if estimate_only:
        assert estimate is not None
        report_estimate(cfg, estimate, json_output)
        return None
    with progress_display(cfg.name, enabled=not json_output) as cb:
        result = run_sweep(
            cfg, jobs=jobs, scheduler=scheduler, progress=cb, estimate=estimate
        )
    _report(result, json_output)
    return result


def predict_sweep(cfg: SweepConfig, *, jobs: int, quiet: bool) -> SweepEstimate:
    """Calibrate (or read the cache) and predict; print the prediction's line."""
    import os

    from sharpkit.predict import Calibrator, calibration_path, estimate_points

    threads = max(1, (os.cpu_count() or 1) // jobs) if jobs > 1 else None

    def say(text: str) -> None:
        if not quiet:
            print_line("predict", text)

    cal = Calibrator(
        data_root=cfg.data_root, threads=threads, cache=calibration_path(), progress=say
    )
    try:
        est = estimate_points(
            cfg.points(),
            cfg.measure,
            cal,
            store=None if cfg.store is None else str(cfg.store),
            jobs=jobs,
            interpolate=cfg.interpolate,
        )
    finally:
        cal.close()
    say(summary(est))
    return est


def summary(est: SweepEstimate) -> str:
    """One line: the predicted time left, of the whole sweep, and where."""
    from sharpkit.predict import format_seconds

    todo = [p for p in est.points if p.remaining > 0]
    done = len(est.points) - len(todo)
    cal = (
        f"calibrated in {format_seconds(est.calibration_seconds)}"
        if est.calibration_seconds
        else "calibration cached"
    )
    return (
        f"{format_seconds(est.remaining)} for {len(todo)} of {len(est.points)} "
        f"points ({done} done; {format_seconds(est.total)} from scratch) with "
        f"-j {est.jobs}, {est.threads} thread(s) each; {cal} on {est.machine}"
    )


def report_estimate(cfg: SweepConfig, est: SweepEstimate, json_output: bool) -> None:
    """Print each point's prediction, beside what the store recorded, if anything."""
    from sharpkit.predict import recorded_seconds

    points = cfg.points()
    store = None if cfg.store is None else str(cfg.store)
    recorded = recorded_seconds(store, points)
    doc = est.to_json()
    for row in doc["points"]:
        sec = recorded.get(row["index"])
        row["recorded_seconds"] = None if sec is None else round(sec, 3)
    pairs = [(est.by_index()[i].seconds, sec) for i, sec in recorded.items() if sec > 0]
    if pairs:
        predicted, actual = sum(p for p, _ in pairs), sum(a for _, a in pairs)
        doc["recorded"] = {
            "points": len(pairs),
            "predicted_seconds": round(predicted, 1),
            "recorded_seconds": round(actual, 1),
            "ratio": round(predicted / actual, 3),
        }
    if json_output:
        print_json(doc)
        return
    print_table(
        doc["points"],
        [
            ("point", "point"),
            ("status", "status"),
            ("predicted_seconds", "predicted s"),
            ("remaining_seconds", "left s"),
        ]
        + ([("recorded_seconds", "recorded s")] if recorded else []),
        title=f"{cfg.name}: predicted",
    )
    if "recorded" in doc:
        r = doc["recorded"]
        print_line(
            "predict",
            f"{r['points']} points recorded in the store: predicted "
            f"{r['predicted_seconds']} s, recorded {r['recorded_seconds']} s "
            f"(ratio {r['ratio']})",
        )
