"""``sharpkit sweep``: a grid of runs from a TOML file, resumable."""

from __future__ import annotations

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
from sharpkit.cli._selection import (
    DataErrorOpt,
    SweepSampleOpt,
    SweepSamplesOpt,
    override_measure,
)
from sharpkit.cli._sweep_run import EstimateOpt, PredictOpt, run_and_report


def sweep(
    config: Annotated[Path, typer.Argument(help="Sweep description (TOML).")],
    jobs: JobsOpt = 1,
    scheduler: SchedulerOpt = None,
    device: SweepDeviceOpt = None,
    data_root: DataRootOpt = None,
    samples: SweepSamplesOpt = None,
    sample: SweepSampleOpt = None,
    data_error: DataErrorOpt = False,
    predict: PredictOpt = True,
    estimate: EstimateOpt = False,
    json_output: JsonOpt = False,
) -> None:
    r"""Train, measure and store a grid of runs; run it again to resume.

    The TOML format is described in the docs (Batch analyses): a \[train] table
    whose list values span the grid, optional \[measure] and \[\[interpolate]].
    Before it starts, the sweep's wall time is predicted from a short
    calibration on this machine (cached); --estimate prints only that.
    """
    from sharpkit.sweep import load_sweep

    cfg = override_measure(
        load_sweep(config), samples=samples, sample=sample, data_error=data_error
    )
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
    if result is not None and result.failures:
        raise typer.Exit(1)
