"""Run a sweep and report its points (``sweep``, ``reproduce``)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

from sharpkit.cli._progress import print_line, progress_display
from sharpkit.cli._render import print_json, print_table

if TYPE_CHECKING:
    from sharpkit.sweep import SweepConfig, SweepResult


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
                "error": o.error,
            }
        )
    if json_output:
        print_json({"points": rows, "probes": list(result.probes)})
    else:
        metric_cols = sorted({k for o in result.points for k in o.metrics})
        print_table(
            rows,
            [("point", "point"), ("test_accuracy", "test acc")]
            + [(m, m) for m in metric_cols]
            + [("trained", "trained now"), ("seconds", "s")],
            title=result.config.name,
        )
        for probe in result.probes:
            if "error" in probe:
                print_line(
                    "error",
                    f"interpolation {probe['a']} → {probe['b']}: {probe['error']}",
                )
    for o in result.failures:
        print_line("error", f"{o.point.label}: {o.error}")


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
) -> SweepResult:
    """Run a sweep under a progress display and print a row per grid point.

    Args:
        cfg: The sweep.
        jobs: Grid points run at once.
        scheduler: ``dask`` or the address of a Dask scheduler.
        data_root: Overrides the sweep's ``data_root`` when given.
        json_output: Print JSON instead of a table.
        device: Overrides the sweep's ``device`` (training and measuring) when
            given.

    Returns:
        The sweep's outcome; failed points are already reported on stderr.
    """
    from sharpkit.sweep import run_sweep

    if data_root is not None:
        cfg = dataclasses.replace(cfg, data_root=str(data_root))
    if device is not None:
        cfg = with_device(cfg, device)
    with progress_display(cfg.name, enabled=not json_output) as cb:
        result = run_sweep(cfg, jobs=jobs, scheduler=scheduler, progress=cb)
    _report(result, json_output)
    return result
