"""``--blocks``: the option, and the table of a measurement's values per block."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from sharpkit.cli._render import fmt_number, print_table

BlocksOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--blocks",
        metavar="SPEC",
        help=(
            "Also measure spectral, trace and frobenius per block of parameters: "
            "'layers' (each module with parameters), 'depth=N' (submodules at "
            "depth N, e.g. ResNet stages), or NAME=REGEX, repeatable (groups "
            "of parameter names; the rest is one more block)."
        ),
        show_default=False,
    ),
]


def blocks_spec(given: list[str] | None) -> list[str] | None:
    """The ``blocks=`` value of the API for ``--blocks`` (``None``: not given)."""
    return list(given) if given else None


def _pm(value: float | None, err: Any) -> str:
    if value is None:
        return "-"
    text = fmt_number(float(value), 4)
    if err is None:
        return text
    err = float(err)
    return f"{text} ±{fmt_number(err, 2)}" if err > 0 else f"{text} (exact)"


def _block_columns(result: Any) -> dict[str, list[str]]:
    """``{column: a cell per block}`` of the metrics that were measured per block."""
    out: dict[str, list[str]] = {}
    spectral, trace, fro = (result.get(n) for n in ("spectral", "trace", "frobenius"))
    if spectral is not None and "block_value" in spectral.arrays:
        vals, bounds = spectral.arrays["block_value"], spectral.arrays["block_bound"]
        out["λ_max"] = [_pm(v, b) for v, b in zip(vals, bounds, strict=True)]
        if "block_mass" in spectral.arrays:
            out["v₁ mass"] = [f"{m:.3f}" for m in spectral.arrays["block_mass"]]
    for label, r in (("trace", trace), ("‖H‖_F", fro)):
        if r is not None and "block_value" in r.arrays:
            vals, ses = r.arrays["block_value"], r.arrays["block_stderr"]
            out[label] = [_pm(v, s) for v, s in zip(vals, ses, strict=True)]
    for label, r in (("λ_max", spectral), ("trace", trace)):
        if r is not None and "block_data_stderr" in r.arrays:
            data = r.arrays["block_data_stderr"]
            out[f"{label} data ±"] = [fmt_number(float(d), 2) for d in data]
    return out


def _whole_row(result: Any, columns: dict[str, list[str]]) -> dict[str, str]:
    """The whole model's values, beside the blocks."""
    row = {"block": "whole model"}
    for label, name in (
        ("λ_max", "spectral"),
        ("trace", "trace"),
        ("‖H‖_F", "frobenius"),
    ):
        r = result.get(name)
        if label in columns and r is not None:
            row[label] = _pm(r.value, r.stderr if r.stderr is not None else r.bound)
    if "v₁ mass" in columns:
        row["v₁ mass"] = "1"
    for label, name in (("λ_max", "spectral"), ("trace", "trace")):
        r = result.get(name)
        column = f"{label} data ±"
        if column in columns and r is not None and r.data_stderr is not None:
            row[column] = fmt_number(float(r.data_stderr), 2)
    return row


def print_blocks(measured: list[tuple[str, Any]]) -> None:
    """Print a table per block of each ``(label, measurement)`` measured with blocks."""
    for label, result in measured:
        _print_one(label, result)


def _print_one(label: str, result: Any) -> None:
    """Print one checkpoint's values per block, the whole model's in the last row."""
    columns = _block_columns(result)
    if not columns:
        return
    first = next(r for r in result.values() if "blocks" in r.attrs)
    names, sizes = first.attrs["blocks"], first.attrs["block_sizes"]
    rows: list[dict[str, Any]] = [
        {"block": n, "size": s, **{c: cells[i] for c, cells in columns.items()}}
        for i, (n, s) in enumerate(zip(names, sizes, strict=True))
    ]
    rows.append({"size": sum(sizes), **_whole_row(result, columns)})
    fro = result.get("frobenius")
    title = f"{label}: per block"
    if fro is not None and "off_block_share" in fro.attrs:
        share = _pm(fro.attrs["off_block_share"], fro.attrs["off_block_share_stderr"])
        title += f" (off the block diagonal: {share} of ‖H‖_F²)"
    print_table(
        rows,
        [("block", "block"), ("size", "size"), *((c, c) for c in columns)],
        title=title,
        drop=("size",),
    )
