"""``sharpkit sweep`` and ``sharpkit reproduce``: grids of runs, resumable."""

from __future__ import annotations

import dataclasses
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from sharpkit.cli._options import DataRootOpt, JsonOpt
from sharpkit.cli._progress import err_console, progress_display
from sharpkit.cli._render import print_json, print_table

JobsOpt = Annotated[
    int, typer.Option("--jobs", "-j", help="Grid points run at once (processes).")
]
SchedulerOpt = Annotated[
    str | None,
    typer.Option(
        "--scheduler",
        help="'dask' starts a Dask LocalCluster; tcp://HOST:PORT uses a running one.",
    ),
]


class Scale(StrEnum):
    """How big a reproduction to run."""

    quick = "quick"
    paper = "paper"


def _report(result: Any, json_output: bool) -> list[dict[str, Any]]:
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
                err_console.print(
                    f"[red]interpolation {probe['a']} → {probe['b']}: {probe['error']}"
                )
    for o in result.failures:
        err_console.print(f"[red]error:[/] {o.point.label}: {o.error}", highlight=False)
    return rows


def sweep(
    config: Annotated[Path, typer.Argument(help="Sweep description (TOML).")],
    jobs: JobsOpt = 1,
    scheduler: SchedulerOpt = None,
    data_root: DataRootOpt = None,
    json_output: JsonOpt = False,
) -> None:
    """Train, measure and store a grid of runs; run it again to resume.

    The TOML format is described in the docs (Batch analyses): a [train] table
    whose list values span the grid, optional [measure] and [[interpolate]].
    """
    from sharpkit.sweep import load_sweep, run_sweep

    cfg = load_sweep(config)
    if data_root is not None:
        cfg = dataclasses.replace(cfg, data_root=str(data_root))
    with progress_display(cfg.name, enabled=not json_output) as cb:
        result = run_sweep(cfg, jobs=jobs, scheduler=scheduler, progress=cb)
    _report(result, json_output)
    if result.failures:
        raise typer.Exit(1)


def reproduce(
    experiment: Annotated[str, typer.Argument(help="demo, fig1, fig2, fig3 or fig4.")],
    scale: Annotated[
        Scale, typer.Option(help="quick: minutes on a CPU; paper: the paper's runs.")
    ] = Scale.quick,
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Folder for runs, store and figures."),
    ] = None,
    epochs: Annotated[
        int | None, typer.Option(help="Override the number of epochs.")
    ] = None,
    jobs: JobsOpt = 1,
    scheduler: SchedulerOpt = None,
    data_root: DataRootOpt = None,
    json_output: JsonOpt = False,
) -> None:
    """Reproduce one of the paper's experiments: train, measure, store, plot.

    Resumable: run the same command again after an interruption.
    """
    from sharpkit.api import open_results
    from sharpkit.plotting import plot_figure
    from sharpkit.reproduce import FIGURES
    from sharpkit.reproduce import experiment as get_experiment
    from sharpkit.sweep import run_sweep

    folder = out or Path(f"reproduce-{experiment}-{scale.value}")
    cfg = get_experiment(experiment, scale=scale.value, out=folder, epochs=epochs)
    if data_root is not None:
        cfg = dataclasses.replace(cfg, data_root=str(data_root))
    with progress_display(cfg.name, enabled=not json_output) as cb:
        result = run_sweep(cfg, jobs=jobs, scheduler=scheduler, progress=cb)
    _report(result, json_output)
    assert cfg.store is not None
    figures = []
    for fig in FIGURES[experiment]:
        path = folder / f"{fig}.png"
        plot_figure(cfg.store, fig, path)
        figures.append(str(path))
    if not json_output:
        table = open_results(cfg.store, kind="measure", as_frame=False)
        if table:
            print_table(
                table,
                [
                    ("lr", "η"),
                    ("batch_size", "S"),
                    ("lr_over_batch", "η/S"),
                    ("metric", "metric"),
                    ("value", "value"),
                    ("stderr", "stderr"),
                    ("bound", "bound"),
                ],
                title=f"{cfg.store}",
            )
        err_console.print("figures: " + ", ".join(figures))
    if result.failures:
        raise typer.Exit(1)
