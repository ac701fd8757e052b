"""``sharpkit reproduce``: one of the paper's experiments, run and plotted."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from sharpkit.cli._options import (
    DataRootOpt,
    JobsOpt,
    JsonOpt,
    SchedulerOpt,
    SweepDeviceOpt,
)
from sharpkit.cli._progress import err_console
from sharpkit.cli._render import print_table
from sharpkit.cli._selection import (
    DataErrorOpt,
    SweepSampleOpt,
    SweepSamplesOpt,
    override_measure,
)
from sharpkit.cli._sweep_run import EstimateOpt, PredictOpt, run_and_report
from sharpkit.reproduce import EXPERIMENTS


class Scale(StrEnum):
    """How big a reproduction to run."""

    quick = "quick"
    paper = "paper"


def _complete_experiment(incomplete: str) -> list[str]:
    return [n for n in EXPERIMENTS if n.startswith(incomplete)]


def _print_measurements(store: Path | str) -> None:
    from sharpkit.store import open_results

    rows = open_results(store, as_frame=False)
    trainers = {
        r["checkpoint_sha256"]: r["trainer"]
        for r in rows
        if r["kind"] == "train" and r["checkpoint_sha256"] and r["trainer"]
    }
    table = [
        {**r, "trainer": r["trainer"] or trainers.get(r["checkpoint_sha256"])}
        for r in rows
        if r["kind"] == "measure"
    ]
    several = len({r["trainer"] for r in table}) > 1
    if table:
        print_table(
            table,
            [
                *([("trainer", "trainer")] if several else []),
                ("lr", "η"),
                ("batch_size", "S"),
                ("lr_over_batch", "η/S"),
                ("metric", "metric"),
                ("value", "value"),
                ("stderr", "stderr"),
                ("bound", "bound"),
                *(
                    [("data_stderr", "± data")]
                    if any(r["data_stderr"] is not None for r in table)
                    else []
                ),
            ],
            title=f"{store}",
        )


def reproduce(
    experiment: Annotated[
        str,
        typer.Argument(
            help=f"{', '.join(EXPERIMENTS[:-1])} or {EXPERIMENTS[-1]}.",
            autocompletion=_complete_experiment,
        ),
    ],
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
    device: SweepDeviceOpt = None,
    data_root: DataRootOpt = None,
    show: Annotated[
        bool,
        typer.Option(
            "--show",
            help="Print the experiment's sweep file for --scale and exit "
            "(a starting point for `sharpkit sweep`).",
        ),
    ] = False,
    samples: SweepSamplesOpt = None,
    sample: SweepSampleOpt = None,
    data_error: DataErrorOpt = False,
    predict: PredictOpt = True,
    estimate: EstimateOpt = False,
    json_output: JsonOpt = False,
) -> None:
    """Reproduce one of the paper's experiments: train, measure, store, plot.

    Resumable: run the same command again after an interruption. The wall
    time is predicted first (a short calibration on this machine, cached);
    --estimate prints the prediction per point and exits.
    """
    from sharpkit.plotting import plot_figure
    from sharpkit.reproduce import FIGURES, preset_text
    from sharpkit.reproduce import experiment as get_experiment

    if show:
        typer.echo(preset_text(experiment, scale=scale.value), nl=False)
        return
    folder = out or Path(f"reproduce-{experiment}-{scale.value}")
    cfg = get_experiment(experiment, scale=scale.value, out=folder, epochs=epochs)
    cfg = override_measure(cfg, samples=samples, sample=sample, data_error=data_error)
    result = run_and_report(
        cfg,
        jobs=jobs,
        scheduler=scheduler,
        data_root=data_root,
        json_output=json_output,
        device=device,
        predict=predict,
        estimate_only=estimate,
    )
    if result is None:
        return
    assert cfg.store is not None
    figures = []
    for fig in FIGURES[experiment]:
        path = folder / f"{fig}.png"
        plot_figure(cfg.store, fig, path)
        figures.append(str(path))
    if not json_output:
        _print_measurements(cfg.store)
        err_console.print("figures: " + ", ".join(figures))
    if result.failures:
        raise typer.Exit(1)
