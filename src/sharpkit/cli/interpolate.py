"""``sharpkit interpolate``: the loss along the line between two checkpoints."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from sharpkit.cli._options import (
    AnalysisOptions,
    BatchSizeOpt,
    JsonOpt,
    OptionOpt,
    Sample,
    with_analysis_options,
)
from sharpkit.cli._probe_run import probe_options, show_probe
from sharpkit.cli.probe import (
    SampleOpt,
    SampleSeedOpt,
    SamplesOpt,
    say_drawn,
    selection,
)

if TYPE_CHECKING:
    from sharpkit.interfaces import ProbeResult, ProgressCallback


@with_analysis_options
def interpolate(
    a: Annotated[Path, typer.Argument(help="Checkpoint at α = 0.", show_default=False)],
    b: Annotated[Path, typer.Argument(help="Checkpoint at α = 1.", show_default=False)],
    alpha: Annotated[
        str,
        typer.Option(
            "--alpha", help="Grid of α: start:stop:num or comma-separated values."
        ),
    ] = "-1:2:31",
    bn_reestimate: Annotated[
        bool,
        typer.Option(
            "--bn-reestimate/--no-bn-reestimate",
            help="Re-estimate batch-norm statistics on training data at every α "
            "(off: interpolate the running statistics too).",
        ),
    ] = True,
    *,
    analysis: AnalysisOptions,
    option: OptionOpt = None,
    samples: SamplesOpt = None,
    sample: SampleOpt = Sample.first,
    sample_seed: SampleSeedOpt = None,
    batch_size: BatchSizeOpt = 1024,
    json_output: JsonOpt = False,
) -> None:
    """Loss and accuracy along the line (1-α)·θa + α·θb between two checkpoints.

    The probe behind Figs. 2-3 of the paper (Goodfellow et al.'s interpolation).
    Batch-norm statistics are re-estimated at every α on a fixed, seeded set of
    training examples. Options of the probe (eval_samples, bn_samples,
    width_delta, resume_dir, ...) go in -o key=value; `sharpkit plugins` lists
    them; --samples/--sample choose the examples as for `sharpkit probe`.
    Prints the curve and the width readouts: for each minimum, the
    α-interval where the training loss stays within width_delta of its own.
    """
    from sharpkit.api.probe import line_options, run_probe

    options = line_options(alpha, bn_reestimate, probe_options(option, "interpolate"))
    inputs = analysis.inputs()
    chosen = selection(analysis, samples, sample, sample_seed)
    done: list[ProbeResult] = []

    def compute(cb: ProgressCallback) -> ProbeResult:
        result = run_probe(
            "interpolate", [a, b], inputs, options=options, batch_size=batch_size,
            progress=cb, selection=chosen,
        )  # fmt: skip
        done.append(result)
        return result

    show_probe(
        "interpolate",
        compute,
        checkpoints=[a, b],
        title=f"interpolate {a.name} (α=0) → {b.name} (α=1)",
        json_output=json_output,
    )
    if done and not json_output:
        say_drawn(done[0])
