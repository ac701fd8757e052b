"""``--samples``, ``--sample`` and ``--data-error`` of ``sweep`` and ``reproduce``.

They override the ``[measure]`` table of the sweep file (or of the experiment's
preset), so the same sweep can be measured on another selection, or with the
data's error bars, without editing it.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Annotated, Any

import typer

from sharpkit.cli._options import Sample, parse_samples, samples_text
from sharpkit.errors import ConfigError

if TYPE_CHECKING:
    from sharpkit.sweep import SweepConfig

SweepSamplesOpt = Annotated[
    str | None,
    typer.Option(
        "--samples",
        metavar="N|all",
        parser=samples_text,
        help="Measure every point on N examples, or all (default: the sweep "
        "file's \\[measure] samples).",
    ),
]
SweepSampleOpt = Annotated[
    Sample | None,
    typer.Option(
        "--sample",
        help="Which examples: first or random (drawn from the \\[measure] seed); "
        "default: the sweep file's, else first.",
    ),
]
DataErrorOpt = Annotated[
    bool,
    typer.Option(
        "--data-error",
        help="Also measure the data's standard error (-o data_error=true for "
        "the metrics that have it): plot fig1 then draws error bars.",
    ),
]


def override_measure(
    cfg: SweepConfig,
    *,
    samples: str | None = None,
    sample: Sample | None = None,
    data_error: bool = False,
) -> SweepConfig:
    """``cfg`` with its ``[measure]`` table changed by the command-line options.

    Raises:
        ConfigError: An option given for a sweep that measures nothing, a bad
            ``--samples``, or ``--data-error`` with no metric that has it.
    """
    if samples is None and sample is None and not data_error:
        return cfg
    if cfg.measure is None:
        msg = (
            f"sweep {cfg.name!r} measures nothing (no [measure] table) for "
            "--samples, --sample or --data-error to change"
        )
        raise ConfigError(msg)
    measure: dict[str, Any] = dict(cfg.measure)
    if samples is not None:
        measure["samples"] = parse_samples(samples)
    if sample is not None:
        measure["sample"] = sample.value
    if data_error:
        measure["options"] = _with_data_error(measure)
    return dataclasses.replace(cfg, measure=measure)


def _with_data_error(measure: dict[str, Any]) -> dict[str, dict[str, Any]]:
    from sharpkit.registry import get_registry

    metrics = list(measure.get("metrics", ["spectral"]))
    options = {k: dict(v) for k, v in dict(measure.get("options", {})).items()}
    able = [m for m in metrics if get_registry().get("metric", m).option("data_error")]
    if not able:
        msg = (
            f"--data-error: none of {', '.join(metrics)} reports the data's "
            "standard error (those with a data_error option do)"
        )
        raise ConfigError(msg)
    for name in able:
        options.setdefault(name, {})["data_error"] = True
    return options
