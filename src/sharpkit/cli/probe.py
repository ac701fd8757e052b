"""``sharpkit probe``: any registered loss-landscape probe of one or two checkpoints."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from sharpkit.cli._options import (
    AnalysisOptions,
    BatchSizeOpt,
    JsonOpt,
    OptionOpt,
    Sample,
    complete_probe,
    parse_samples,
    samples_text,
    with_analysis_options,
)
from sharpkit.cli._probe_run import probe_options, show_probe
from sharpkit.cli._progress import print_line
from sharpkit.cli._threads import ThreadsOpt, use_threads

if TYPE_CHECKING:
    from sharpkit.interfaces import ProbeResult, ProgressCallback

_SamplesOpt = Annotated[
    str | None,
    typer.Option(
        "--samples",
        metavar="N|all",
        parser=samples_text,
        help="Cut the training and the test split each to N examples before "
        "the probe (default: all; the probe's eval_samples and bn_samples draw "
        "from them).",
    ),
]
_SampleOpt = Annotated[
    Sample,
    typer.Option(
        "--sample",
        help="Which examples: first (default) or random (class-stratified, "
        "drawn from --sample-seed).",
    ),
]
_SampleSeedOpt = Annotated[
    int | None,
    typer.Option(
        "--sample-seed",
        help="Seed of the --sample random draw (default: --seed, which also "
        "draws the directions).",
        show_default=False,
    ),
]


@with_analysis_options
def probe(
    name: Annotated[
        str,
        typer.Argument(
            help="Probe: interpolate, direction, plane, plane-between, ...",
            autocompletion=complete_probe,
            show_default=False,
        ),
    ],
    checkpoints: Annotated[
        list[Path] | None,
        typer.Argument(
            help="The checkpoint(s) or .pt2 file(s) the probe takes (none with "
            "--model hf:PATH).",
            show_default=False,
        ),
    ] = None,
    option: OptionOpt = None,
    *,
    analysis: AnalysisOptions,
    samples: _SamplesOpt = None,
    sample: _SampleOpt = Sample.first,
    sample_seed: _SampleSeedOpt = None,
    batch_size: BatchSizeOpt = 1024,
    threads: ThreadsOpt = None,
    json_output: JsonOpt = False,
) -> None:
    """Run a loss-landscape probe on one or two checkpoints.

    E.g. `sharpkit probe direction ckpt.pt -o alpha=-1:1:41` (loss along a random
    filter-normalised direction) or `sharpkit probe plane ckpt.pt -o x=-1:1:21 -o
    y=-1:1:21 -o resume_dir=partial/` (a resumable 2-D grid).
    """
    from sharpkit.api.job import Selection
    from sharpkit.api.probe import run_probe
    from sharpkit.registry import get_registry

    get_registry().get("probe", name)  # fail fast with "did you mean"
    extra = probe_options(option, name)
    use_threads(threads)
    models, inputs = analysis.targets(checkpoints)
    seed = analysis.seed if sample_seed is None else sample_seed
    selection = Selection(
        samples=parse_samples(samples), sample=sample.value, seed=seed
    )
    done: list[ProbeResult] = []

    def compute(cb: ProgressCallback) -> ProbeResult:
        result = run_probe(
            name, models, inputs, options=extra, batch_size=batch_size,
            progress=cb, selection=selection,
        )  # fmt: skip
        done.append(result)
        return done[-1]

    show_probe(
        name,
        compute,
        checkpoints=[Path(m) for m in models],
        title=f"{name} {' '.join(Path(m).name for m in models)}",
        json_output=json_output,
    )
    if done and not json_output and done[0].attrs.get("sample_seed") is not None:
        print_line("note", _drawn(done[0].attrs))


def _drawn(attrs: Mapping[str, Any]) -> str:
    """The line that says a probe ran on a random draw."""
    return (
        f"probed on {attrs['samples']} random examples of each split (of "
        f"{attrs['population']} training examples; class-stratified, seed "
        f"{attrs['sample_seed']})"
    )
