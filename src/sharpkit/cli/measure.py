"""``sharpkit measure``: sharpness metrics of one or more checkpoints."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from sharpkit.cli._blocks import BlocksOpt, blocks_spec, print_blocks
from sharpkit.cli._options import (
    AnalysisOptions,
    BatchSizeOpt,
    BNMode,
    DType,
    JsonOpt,
    MemoryBudgetOpt,
    MetricOpt,
    OptionOpt,
    PrecisionOpt,
    Sample,
    SampleOpt,
    SamplesOpt,
    TF32Opt,
    distribute_options,
    parse_precision,
    parse_samples,
    with_analysis_options,
)
from sharpkit.cli._progress import print_line, progress_display
from sharpkit.cli._render import fmt_number, print_json, print_table
from sharpkit.cli._threads import ThreadsOpt, use_threads

if TYPE_CHECKING:
    from sharpkit.api.job import Analysis, Inputs
    from sharpkit.cli._distributed import RankSession


def _uncertainty(value: Any) -> str:
    return "-" if value is None else f"±{fmt_number(value, 2)}"


def _data(data_stderr: float | None) -> str | None:
    """The data's standard error, for the ``± data`` column (None: not measured)."""
    return None if data_stderr is None else f"±{fmt_number(data_stderr, 2)}"


def _kind(stderr: float | None, bound: float | None) -> str:
    """What the ± column is: a standard error, a bound, or nothing (exact)."""
    err = stderr if stderr is not None else bound
    if err is None:
        return "-"
    if err == 0:
        return "exact"
    return "stderr" if stderr is not None else "bound"


def _labels(paths: list[Path]) -> tuple[list[str], str | None]:
    """Short names for the table: paths below their common folder, and that folder."""
    if len(paths) < 2:
        return [str(p) for p in paths], None
    resolved = [p.resolve() for p in paths]
    common = Path(os.path.commonpath([str(p.parent) for p in resolved]))
    if common == Path(common.anchor):
        return [str(p) for p in paths], None
    return [str(p.relative_to(common)) for p in resolved], str(common)


def _targets(
    checkpoints: list[Path] | None, analysis: AnalysisOptions
) -> tuple[list[Path | str], Inputs]:
    """The models to measure: the checkpoints, else a ``--model`` that is one."""
    from sharpkit.errors import ConfigError

    targets, inputs = analysis.targets(checkpoints)
    if not targets:
        msg = (
            "give a checkpoint to measure (or --model hf:PATH, or --model "
            "package.module:name for code that loads its own weights)"
        )
        raise ConfigError(msg)
    return targets, inputs


@with_analysis_options
def measure(
    checkpoints: Annotated[
        list[Path] | None,
        typer.Argument(
            help=(
                "Checkpoint files (.pt, .pth, .safetensors) or torch.export "
                "archives (.pt2); none with --model hf:PATH."
            ),
            show_default=False,
        ),
    ] = None,
    metric: MetricOpt = None,
    samples: SamplesOpt = None,
    sample: SampleOpt = Sample.first,
    precision: PrecisionOpt = None,
    split: Annotated[
        str, typer.Option(help="Dataset split to analyse: train or test.")
    ] = "train",
    batch_size: BatchSizeOpt = 2048,
    top_k: Annotated[
        int | None,
        typer.Option(
            "--top-k",
            help="Eigenvalues spectral reports (as -o spectral.top_k=K).",
        ),
    ] = None,
    tol: Annotated[
        float, typer.Option(help="Relative tolerance of iterative methods.")
    ] = 1e-3,
    max_hvps: Annotated[
        int | None,
        typer.Option(
            "--max-hvps",
            help="Hessian-vector-product budget per metric (with --precision: "
            "over all its measurements together).",
        ),
    ] = None,
    bn_mode: Annotated[
        BNMode,
        typer.Option(
            "--bn-mode",
            help="eval: batch norm uses running statistics (the model as deployed); "
            "train: batch statistics (the loss SGD saw).",
        ),
    ] = BNMode.eval,
    dtype: Annotated[
        DType | None, typer.Option(help="Compute in this dtype (default: the model's).")
    ] = None,
    memory_budget: MemoryBudgetOpt = None,
    tf32: TF32Opt = False,
    blocks: BlocksOpt = None,
    nproc: Annotated[
        int,
        typer.Option(
            "--nproc",
            help="Processes to shard the analysis set over on this machine (gloo "
            "on the CPU, one GPU each with --device cuda); torchrun -m sharpkit "
            "does the same across machines.",
        ),
    ] = 1,
    threads: ThreadsOpt = None,
    *,
    analysis: AnalysisOptions,
    option: OptionOpt = None,
    json_output: JsonOpt = False,
) -> None:
    """Measure sharpness (λ_max, ‖H‖_F, trace, ...) of trained checkpoints.

    Every value comes with its uncertainty: a residual bound for eigenvalues, a
    standard error for stochastic estimates. Results are stored (see --store) and
    a checkpoint measured before with the same settings is not measured again.
    """
    from sharpkit.api.job import Analysis, Selection
    from sharpkit.cli._distributed import check_nproc, rank_session

    metrics, per_metric = _metric_options(metric, option, top_k)
    use_threads(threads)
    targets, inputs = _targets(checkpoints, analysis)
    if nproc != 1:
        check_nproc(nproc, analysis.device)
    if nproc > 1:
        _launch(nproc)
    selection = Selection(
        samples=parse_samples(samples), split=split, sample=sample.value,
        seed=analysis.seed,
    )  # fmt: skip
    how = Analysis(
        selection=selection, batch_size=batch_size, tol=tol, max_hvps=max_hvps,
        bn_mode=bn_mode.value, dtype=dtype.value if dtype is not None else None,
        memory_budget=memory_budget, tf32=tf32,
        precision=parse_precision(precision),
    )  # fmt: skip
    with rank_session(analysis.device) as session:
        job = _Job(
            metrics, dataclasses.replace(inputs, device=session.device), how,
            per_metric, blocks_spec(blocks),
        )  # fmt: skip
        _measure_all(targets, job, session=session, json_output=json_output)


@dataclass(frozen=True)
class _Job:
    """What every checkpoint is measured with."""

    metrics: list[str]
    inputs: Inputs
    analysis: Analysis
    options: dict[str, dict[str, Any]]
    blocks: list[str] | None = None


def _launch(nproc: int) -> None:
    """Run this command again as ``nproc`` ranks; exit with their status."""
    from sharpkit.cli import _STATE
    from sharpkit.cli._distributed import launch, without_nproc
    from sharpkit.errors import ConfigError

    argv = _STATE.get("argv")
    if not argv:
        msg = (
            "--nproc starts the command again in each process, so it works from "
            "the command line (sharpkit or python -m sharpkit); from Python start "
            "the processes with torchrun"
        )
        raise ConfigError(msg)
    raise typer.Exit(launch(nproc, without_nproc(argv)))


def _measure_all(
    targets: list[Path | str],
    job: _Job,
    *,
    session: RankSession,
    json_output: bool,
) -> None:
    """Measure every target; rank 0 prints.

    Across processes any error ends the command: a rank that went on to the
    next checkpoint alone would wait for the others forever.
    """
    from sharpkit import api
    from sharpkit.api.measure import run_measure
    from sharpkit.errors import DistributedError, MeasurementError, SharpkitError

    outputs: list[dict[str, Any]] = []
    rows: list[dict[str, Any]] = []
    measured: list[tuple[str, Any]] = []
    failed = 0
    partial: MeasurementError | None = None
    quiet = not session.leader
    stop_at_error = len(targets) == 1 or session.world > 1
    with api.reuse_datasets():  # the data are loaded once for all checkpoints
        for path in targets:
            label = path.name if isinstance(path, Path) else str(path)
            try:
                with progress_display(label, enabled=not (json_output or quiet)) as cb:
                    result = run_measure(
                        os.fspath(path), job.metrics, job.inputs, job.analysis,
                        options=job.options, progress=cb, blocks=job.blocks,
                    )  # fmt: skip
            except MeasurementError as exc:
                # some metrics failed: show the others, then the one error line
                failed += 1
                result = exc.measurement
                if stop_at_error:
                    partial = exc
                else:
                    print_line("error", f"{path}: {exc}")
            except SharpkitError as exc:
                if stop_at_error or isinstance(exc, DistributedError):
                    raise
                failed += 1
                print_line("error", f"{path}: {exc}")
                continue
            _say(label, result.attrs, enabled=not (quiet or json_output))
            outputs.append({"checkpoint": os.fspath(path), **result.to_dict()})
            rows.extend(_rows(os.fspath(path), result))
            measured.append((label, result))
    if quiet:
        pass  # the other ranks computed the same values; rank 0 prints them
    elif json_output:
        print_json(outputs)
    elif rows:
        _print_rows(rows, [Path(r["checkpoint"]) for r in outputs])
        print_blocks(measured)
    if partial is not None:
        raise partial  # the error boundary prints it as one line, exit status 1
    if failed:
        raise typer.Exit(1)


def _say(label: str, attrs: dict[str, Any], *, enabled: bool) -> None:
    """Print :func:`_notes` on stderr, one line each (when ``enabled``)."""
    for note in _notes(attrs) if enabled else []:
        print_line("note", f"{label}: {note}")


def _notes(attrs: dict[str, Any]) -> list[str]:
    """Lines to say beside the table: a random draw, and what ``--precision`` did."""
    out = []
    if attrs.get("sample_seed") is not None:
        of = attrs.get("population")
        whole = f" of {of}" if of is not None else ""
        out.append(
            f"measured on {attrs['samples']} random examples{whole} "
            f"(class-stratified, seed {attrs['sample_seed']})"
        )
    if attrs.get("precision_note") and attrs.get("precision_stop") != "max_hvps":
        out.append(str(attrs["precision_note"]))  # else a warning said it
    return out


def _metric_options(
    metric: list[str] | None, option: list[str] | None, top_k: int | None
) -> tuple[list[str], dict[str, dict[str, Any]]]:
    """The metric names (checked, with "did you mean") and their options."""
    from sharpkit.errors import ConfigError
    from sharpkit.registry import get_registry

    metrics = list(metric or ["spectral"])
    for name in metrics:
        get_registry().get("metric", name)  # fail fast with "did you mean"
    per_metric: dict[str, dict[str, Any]] = {}
    if option:
        per_metric.update(distribute_options(option, "metric", metrics))
    if top_k is not None:
        if "spectral" not in metrics:
            msg = "--top-k applies to the spectral metric; add --metric spectral"
            raise ConfigError(msg)
        per_metric.setdefault("spectral", {})["top_k"] = top_k
    return metrics, per_metric


def _print_rows(rows: list[dict[str, Any]], measured: list[Path]) -> None:
    """Print the table: checkpoints named below their common folder."""
    labels, common = _labels(measured)
    short = dict(zip((str(p) for p in measured), labels, strict=True))
    for row in rows:
        row["checkpoint"] = short[row["checkpoint"]]
        if isinstance(row.get("seconds"), float):
            row["seconds"] = fmt_number(row["seconds"], 3)
    print_table(
        rows,
        [
            ("checkpoint", "checkpoint"),
            ("metric", "metric"),
            ("value", "value"),
            *([("data", "± data")] if any(r.get("data") for r in rows) else []),
            ("uncertainty", "±"),
            ("kind", "of"),
            ("converged", "conv."),
            ("hvps", "HVPs"),
            ("seconds", "s"),
        ]
        + ([("note", "note")] if any(r["note"] for r in rows) else []),
        title=None if common is None else f"checkpoints under {common}",
        drop=("seconds", "hvps", "converged", "note", "kind", "data"),
    )


def _rows(path: str, result: Any) -> list[dict[str, Any]]:
    """Table rows of one checkpoint's measurement.

    ``spectral`` gets a second row, λ_min, when its Ritz values found a
    negative eigenvalue (at no extra cost; see the metric's ``lambda_min``).
    """
    rows = []
    for name, r in result.items():
        stored = "stored" if name in result.reused else ""
        rows.append(
            {
                "checkpoint": path,
                "metric": name,
                "value": r.value,
                "uncertainty": _uncertainty(
                    r.stderr if r.stderr is not None else r.bound
                ),
                "kind": _kind(r.stderr, r.bound),
                "data": _data(r.data_stderr),
                "converged": r.converged,
                "hvps": r.hvps,
                "seconds": r.seconds,
                "note": stored,
            }
        )
        if "lambda_min" in r.attrs:
            rows[-1]["metric"] = f"{name} λ_max"
            bound = r.attrs.get("lambda_min_bound")
            rows.append(
                {
                    "checkpoint": path,
                    "metric": f"{name} λ_min",
                    "value": r.attrs["lambda_min"],
                    "uncertainty": _uncertainty(bound),
                    "kind": _kind(None, bound),
                    "converged": r.attrs.get("lambda_min_converged"),
                    "note": stored or "λ_min ≤ value: H is indefinite",
                }
            )
    return rows
