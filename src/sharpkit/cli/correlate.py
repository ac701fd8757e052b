"""``sharpkit correlate``: does each stored measure predict generalization?"""

from __future__ import annotations

import csv
import io
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from sharpkit.cli._options import DEFAULT_STORE, JsonOpt
from sharpkit.cli._render import fmt_number, print_json, print_table


class Target(StrEnum):
    """What the measures are correlated with."""

    gap = "gap"
    loss_gap = "loss_gap"
    test_accuracy = "test_accuracy"
    test_loss = "test_loss"
    train_accuracy = "train_accuracy"
    train_loss = "train_loss"


_CSV_FIELDS = (
    "measure",
    "target",
    "n",
    "kendall",
    "kendall_low",
    "kendall_high",
    "spearman",
    "spearman_low",
    "spearman_high",
    "psi",
    "psi_low",
    "psi_high",
)


def _interval(value: Any, low: Any, high: Any) -> str:
    if low is None or high is None:
        return fmt_number(value, 3)
    return f"{fmt_number(value, 3)} [{fmt_number(low, 3)}, {fmt_number(high, 3)}]"


def _flat(item: dict[str, Any]) -> dict[str, Any]:
    out = {"measure": item["measure"], "target": item["target"], "n": item["n"]}
    for name in ("kendall", "spearman", "psi"):
        out[name] = item[name]["value"]
        out[f"{name}_low"] = item[name]["low"]
        out[f"{name}_high"] = item[name]["high"]
    return out


def correlate(
    path: Annotated[
        Path, typer.Argument(help="The results store (a zarr directory).")
    ] = DEFAULT_STORE,
    target: Annotated[
        Target,
        typer.Option(
            "--target",
            help="gap = train minus validation accuracy; loss_gap = validation "
            "minus train loss; or a final accuracy or loss.",
        ),
    ] = Target.gap,
    metrics: Annotated[
        list[str] | None,
        typer.Option(
            "--metric",
            "-m",
            help="Only these measures (repeatable; default: every stored one).",
        ),
    ] = None,
    axes: Annotated[
        list[str] | None,
        typer.Option(
            "--axis",
            help="Hyperparameter axes for Ψ (repeatable; default: those that vary "
            "among model, dataset, trainer, lr, batch_size, momentum, "
            "weight_decay, epoch).",
        ),
    ] = None,
    filters: Annotated[
        list[str] | None,
        typer.Option(
            "--filter",
            "-f",
            help="Keep rows where column=value (as in `sharpkit results`); repeatable.",
        ),
    ] = None,
    bootstrap: Annotated[
        int,
        typer.Option(
            "--bootstrap", help="Bootstrap resamples of the models for the intervals."
        ),
    ] = 1000,
    confidence: Annotated[
        float, typer.Option("--confidence", help="Level of the intervals.")
    ] = 0.95,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the bootstrap.")] = 0,
    json_output: JsonOpt = False,
    csv_output: Annotated[
        bool, typer.Option("--csv", help="Print CSV on stdout.")
    ] = False,
) -> None:
    """Rank-correlate every stored measure with the generalization gap.

    Across the models (checkpoints) in the store: Kendall's τ, Spearman's ρ and
    Jiang et al.'s (2020) granulated Kendall Ψ (τ where one hyperparameter varies
    and the others are fixed, averaged over the axes), each with a bootstrap
    interval over models.
    """
    from sharpkit.correlation import correlate as run
    from sharpkit.errors import ConfigError
    from sharpkit.store import ResultStore

    if json_output and csv_output:
        msg = "--json and --csv cannot be combined; pick one"
        raise ConfigError(msg)
    ResultStore(path, create=False)  # a clear error for a path that is not a store
    results = run(
        path,
        target=target.value,
        measures=metrics or None,
        axes=axes or None,
        filter=filters or None,
        bootstrap=bootstrap,
        confidence=confidence,
        seed=seed,
    )
    items = [r.to_dict() for r in results]
    if json_output:
        print_json(items)
        return
    if csv_output:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=_CSV_FIELDS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(_flat(i) for i in items)
        print(buf.getvalue(), end="")
        return
    rows = [
        {
            "measure": i["measure"],
            "n": i["n"],
            **{
                name: _interval(i[name]["value"], i[name]["low"], i[name]["high"])
                for name in ("kendall", "spearman", "psi")
            },
            "axes": ", ".join(
                f"{a} {fmt_number(v, 2)}" for a, v in i["psi_axes"].items()
            ),
        }
        for i in items
    ]
    level = f"{confidence:.0%}"
    print_table(
        rows,
        [
            ("measure", "measure"),
            ("n", "models"),
            ("kendall", f"Kendall τ [{level}]"),
            ("spearman", f"Spearman ρ [{level}]"),
            ("psi", f"Ψ [{level}]"),
            ("axes", "ψ per axis"),
        ],
        title=f"Rank correlation with {target.value}",
    )
