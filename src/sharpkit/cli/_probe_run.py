"""Run a loss-landscape probe and print its result (``probe``, ``interpolate``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sharpkit.cli._options import parse_options
from sharpkit.cli._progress import progress_display
from sharpkit.cli._render import fmt_number, out_console, print_json, print_table

if TYPE_CHECKING:
    from sharpkit.interfaces import ProbeResult, ProgressCallback

_COLUMN_NAMES = {
    "train_loss": "train loss",
    "train_accuracy": "train acc.",
    "test_loss": "test loss",
    "test_accuracy": "test acc.",
}


def _to_json(result: ProbeResult, checkpoints: Sequence[Path]) -> dict[str, Any]:
    def arr(a: np.ndarray) -> Any:
        return np.asarray(a, dtype=np.float64).tolist()

    return {
        "probe": result.probe,
        "checkpoints": [str(p) for p in checkpoints],
        "coords": {k: arr(v) for k, v in result.coords.items()},
        "arrays": {k: arr(v) for k, v in result.arrays.items()},
        "summary": dict(result.summary),
        "attrs": dict(result.attrs),
        "seconds": result.seconds,
        "run_id": result.attrs.get("run_id"),
    }


def _summary_rows(result: ProbeResult) -> list[dict[str, Any]]:
    censored = result.attrs.get("censored")
    lower = set(censored) if isinstance(censored, list) else set()
    rows = []
    for key, value in result.summary.items():
        note = ""
        if key in lower:
            edge = key.endswith(("_left", "_right"))
            note = "at the grid end" if edge else "lower bound (grid end reached)"
        rows.append({"readout": key, "value": value, "note": note})
    return rows


def _render(result: ProbeResult, title: str) -> None:
    coords = list(result.coords)
    names = list(result.arrays)
    if len(coords) == 1:
        coord = coords[0]
        values = result.coords[coord]
        rows = [
            {coord: float(values[i]), **{n: float(result.arrays[n][i]) for n in names}}
            for i in range(values.shape[0])
        ]
        columns = [(coord, "α" if coord == "alpha" else coord)]
        columns += [(n, _COLUMN_NAMES.get(n, n)) for n in names]
        print_table(rows, columns, title=title)
    elif len(coords) == 2 and "train_loss" in result.arrays:
        rows_name, cols_name = coords
        ys, xs = result.coords[rows_name], result.coords[cols_name]
        grid = result.arrays["train_loss"]
        if xs.shape[0] <= 15:
            rows = [
                {
                    rows_name: float(ys[i]),
                    **{f"c{j}": float(grid[i, j]) for j in range(xs.shape[0])},
                }
                for i in range(ys.shape[0])
            ]
            columns = [(rows_name, f"{rows_name} \\ {cols_name}")]
            columns += [(f"c{j}", fmt_number(float(x), 3)) for j, x in enumerate(xs)]
            print_table(rows, columns, title=f"{title}: training loss")
        else:
            out_console.print(
                f"{title}: training loss on a {ys.shape[0]}×{xs.shape[0]} grid "
                "(--json prints it)",
                highlight=False,
            )
    if result.summary:
        print_table(
            _summary_rows(result),
            [("readout", "readout"), ("value", "value"), ("note", "")],
            title="readouts (widths in grid units; *_distance in parameter units)",
        )
    run_id = result.attrs.get("run_id")
    if isinstance(run_id, str):
        out_console.print(f"stored as run {run_id}", highlight=False)


def probe_options(option: list[str] | None, name: str) -> dict[str, str]:
    """Return the ``-o key=value`` items given to the probe ``name``."""
    return parse_options(option, [name])[name] if option else {}


def show_probe(
    label: str,
    compute: Callable[[ProgressCallback], ProbeResult],
    *,
    checkpoints: Sequence[Path],
    title: str,
    json_output: bool,
) -> None:
    """Run ``compute(progress)`` under a progress display and print the result.

    Args:
        label: The progress display's label.
        compute: Runs the probe, reporting to the callback it is given.
        checkpoints: The checkpoints probed, for the JSON output.
        title: The title of the tables.
        json_output: Print JSON instead of tables.
    """
    with progress_display(label, enabled=not json_output) as cb:
        result = compute(cb)
    if json_output:
        print_json(_to_json(result, checkpoints))
        return
    _render(result, title)
