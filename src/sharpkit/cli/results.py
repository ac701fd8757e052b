"""``sharpkit results``: the tidy table of everything in a results store."""

from __future__ import annotations

import re
import sys
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any

import typer

from sharpkit.cli._options import DEFAULT_STORE, JsonOpt
from sharpkit.cli._render import fmt_number, out_console, print_json

if TYPE_CHECKING:
    from rich.table import Table

# Columns of the default table, in order. Columns empty in every row are left
# out, and those with one value in every row go to the caption (kept narrow).
_TABLE_COLUMNS = (
    ("run_id", "run"),
    ("kind", "kind"),
    ("model", "model"),
    ("dataset", "data"),
    ("loss", "loss"),
    ("lr", "η"),
    ("batch_size", "S"),
    ("lr_over_batch", "η/S"),
    ("seed", "seed"),
    ("samples", "N"),
    ("sample", "sample"),
    ("sample_seed", "draw"),
    ("epoch", "epoch"),
    ("step", "step"),
    ("metric", "metric"),
    ("value", "value"),
    ("stderr", "stderr"),
    ("data_stderr", "± data"),
    ("data_lower", "full ≥"),
    ("converged", "conv."),
    ("train_accuracy", "train acc."),
    ("test_accuracy", "test acc."),
    ("lr_b", "η (b)"),
    ("batch_size_b", "S (b)"),
)
_ALWAYS = frozenset({"run_id", "metric", "value"})
# Shown only where the runs differ in them (the selection: the first N of a
# split for most stores, which the caption need not repeat).
_IF_VARIED = frozenset({"samples", "sample", "sample_seed"})
_TEXT = frozenset({"run_id", "kind", "model", "dataset", "loss", "metric", "sample"})
_DROP_ORDER = (
    "data_lower",
    "sample_seed",
    "sample",
    "seed",
    "samples",
    "epoch",
    "step",
    "train_accuracy",
    "dataset",
    "loss",
    "converged",
    "batch_size_b",
    "lr_b",
    "kind",
    "model",
    "stderr",
    "data_stderr",
    "test_accuracy",
    "batch_size",
    "lr",
)


class RunKind(StrEnum):
    """Kinds of run in a store."""

    measure = "measure"
    train = "train"
    probe = "probe"
    track = "track"
    sweep = "sweep"


def results(
    path: Annotated[
        str,
        typer.Argument(
            help="The results store: a zarr directory or an object-store URL "
            "(s3://bucket/prefix/results.zarr).",
            metavar="STORE",
        ),
    ] = str(DEFAULT_STORE),
    json_output: JsonOpt = False,
    csv_output: Annotated[
        bool, typer.Option("--csv", help="Print CSV (all columns) on stdout.")
    ] = False,
    filters: Annotated[
        list[str] | None,
        typer.Option(
            "--filter",
            "-f",
            help=(
                "Keep rows where column=value (also !=, <, <=, >, >=; numbers "
                "compare numerically, * is a wildcard); repeatable, all must hold. "
                "E.g. --filter metric=spectral --filter batch_size=128."
            ),
        ),
    ] = None,
    kind: Annotated[
        RunKind | None,
        typer.Option("--kind", help="Only runs of this kind."),
    ] = None,
    gc: Annotated[
        bool,
        typer.Option(
            "--gc",
            help=(
                "First remove leftovers of writes that were killed (untouched for "
                "an hour, or whose process on this host is gone)."
            ),
        ),
    ] = False,
    check: Annotated[
        bool,
        typer.Option(
            "--check",
            help=(
                "Read every run in full and report the damaged ones, one line "
                "each; exit status 1 if any."
            ),
        ),
    ] = False,
    repair: Annotated[
        bool,
        typer.Option(
            "--repair",
            help=(
                "Rebuild the store's own metadata (e.g. a lost root zarr.json) "
                "from the intact runs and move damaged runs to damaged/."
            ),
        ),
    ] = False,
    merge: Annotated[
        list[str] | None,
        typer.Option(
            "--merge",
            help=(
                "Copy every intact run of this store into STORE (created if "
                "missing), skipping damaged and unfinished ones; repeatable. "
                "E.g. the stores of a sweep split between two machines."
            ),
            metavar="SOURCE",
        ),
    ] = None,
) -> None:
    """Show everything a results store holds: one row per run x metric.

    Rows carry η (lr), S (batch_size), η/S (lr_over_batch), the metric's value and
    standard error, and the checkpoint's final train/test accuracy. --json and
    --csv give every column (the store docs list them). --check and --repair
    look for damage instead; --merge gathers other stores' runs into STORE.
    """
    from sharpkit.cli._progress import err_console
    from sharpkit.errors import ConfigError
    from sharpkit.store import ResultStore, to_csv

    if json_output and csv_output:
        msg = "--json and --csv cannot be combined; pick one"
        raise ConfigError(msg)
    if merge:
        if check or repair or csv_output or filters or kind or gc:
            msg = "--merge takes only the store, the sources (and --json)"
            raise ConfigError(msg)
        _merge(path, merge, json_output=json_output)
        return
    if check or repair:
        if csv_output or filters or kind or gc:
            msg = "--check and --repair take only the store (and --json)"
            raise ConfigError(msg)
        _check(path, repair=repair, json_output=json_output)
        return
    store = ResultStore(path, create=False)
    if gc:
        removed = store.gc()
        err_console.print(
            f"removed {len(removed)} leftover(s) of killed writes from {path!r}",
            highlight=False,
        )
    rows = store.records(filters or None, kind=kind.value if kind else None)
    if json_output:
        print_json(rows)
        return
    if csv_output:
        sys.stdout.write(to_csv(rows))
        return
    if not rows:
        what = f"{kind.value} runs" if kind else "runs"
        text = (
            f"no rows in {path!r} match the filters"
            if filters
            else f"no {what} in {path!r} yet"
        )
        out_console.print(text, highlight=False)
        return
    _print_rows(rows, title=repr(path))


def _merge(path: str, sources: list[str], *, json_output: bool) -> None:
    """``--merge``: one line per source; exit 1 if a damaged run was skipped."""
    from dataclasses import asdict

    from sharpkit.store.merge import merge_stores

    reports = merge_stores(path, sources)
    if json_output:
        print_json([asdict(r) for r in reports])
    else:
        for r in reports:
            for rid, why in r.damaged:
                out_console.print(
                    f"skipped damaged run {rid} of {r.source!r}: {why}",
                    highlight=False,
                    markup=False,
                )
            out_console.print(
                f"{r.source!r} -> {path!r}: {len(r.copied)} run(s) copied, "
                f"{len(r.present)} already there, {len(r.damaged)} damaged and "
                f"{len(r.unfinished)} unfinished skipped",
                highlight=False,
                markup=False,
            )
    if any(r.damaged for r in reports):
        raise typer.Exit(1)


def _check(path: str, *, repair: bool, json_output: bool) -> None:
    """``--check`` / ``--repair``: one line per finding; exit 1 if damage is left."""
    from dataclasses import asdict

    from sharpkit.store import check_store, repair_store

    report = repair_store(path) if repair else check_store(path)
    if json_output:
        print_json({**asdict(report), "ok": report.ok})
    else:
        lines = [*report.actions, *report.problems]
        lines += [f"damaged run {rid}: {why}" for rid, why in report.damaged]
        if report.unfinished:
            lines.append(
                f"{len(report.unfinished)} unfinished write(s) (killed writers, or "
                "writing now); --gc removes those older than an hour"
            )
        for line in lines:
            out_console.print(line, highlight=False, markup=False)
        state = "ok" if report.ok else "DAMAGED"
        out_console.print(
            f"{report.location!r}: {state}: {report.intact} intact run(s), "
            f"{len(report.damaged)} damaged",
            highlight=False,
            markup=False,
        )
    if not report.ok:
        from sharpkit.errors import StoreError

        what = f"{len(report.damaged)} damaged run(s)" if report.damaged else ""
        what = ", ".join(x for x in (what, *report.problems) if x)
        hint = "" if repair else f"; `sharpkit results {path} --repair` repairs it"
        msg = f"the store {report.location!r} is damaged ({what}){hint}"
        raise StoreError(msg)


def _print_rows(rows: list[dict[str, Any]], *, title: str) -> None:
    from rich.measure import Measurement

    shown = [{**r, "run_id": _short(r["run_id"])} for r in rows]
    columns: list[tuple[str, str]] = []
    constant: list[str] = []
    for key, header in _TABLE_COLUMNS:
        values = {fmt_number(r.get(key), 4) for r in shown}
        if values == {"-"} or (key in _IF_VARIED and len(values - {"-"}) < 2):
            continue
        if len(values) == 1 and len(shown) > 1 and key not in _ALWAYS:
            constant.append(f"{header}={values.pop()}")
            continue
        columns.append((key, header))
    runs = len({r["run_id"] for r in rows})
    title = f"{title}: {runs} run(s), {len(rows)} row(s)"
    hidden: list[str] = []
    # Drop the least useful columns until the table fits the terminal, rather
    # than letting rich squash cells to "…"; --json/--csv always give them all.
    while True:
        table = _table(shown, columns, title, constant, hidden)
        wide = out_console.options.update(max_width=100_000)
        width = Measurement.get(out_console, wide, table).maximum
        drop = next((c for c in _DROP_ORDER if c in dict(columns)), None)
        if width <= out_console.width or drop is None:
            break
        hidden.append(dict(columns)[drop])
        columns = [c for c in columns if c[0] != drop]
    out_console.print(table)


def _table(
    rows: list[dict[str, Any]],
    columns: list[tuple[str, str]],
    title: str,
    constant: list[str],
    hidden: list[str],
) -> Table:
    from rich import box
    from rich.table import Table

    notes = []
    if constant:
        notes.append("all rows: " + "  ".join(constant))
    if hidden:
        notes.append("not shown: " + ", ".join(hidden) + " (see --json or --csv)")
    table = Table(
        title=title,
        caption="\n".join(notes) or None,
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    for key, header in columns:
        table.add_column(
            header, justify="left" if key in _TEXT else "right", no_wrap=True
        )
    for row in rows:
        table.add_row(*(fmt_number(row.get(key), 4) for key, _ in columns))
    return table


def _short(run_id: Any) -> str:
    """``20261128T163000.123456Z-1a2b3c4d`` -> ``1128T163000-1a2b`` (table only)."""
    text = str(run_id)
    m = re.match(r"^\d{4}(\d{4}T\d{6})(?:\.\d+)?Z-([0-9a-f]{4})", text)
    return f"{m.group(1)}-{m.group(2)}" if m else text
