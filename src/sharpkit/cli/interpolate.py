"""``sharpkit interpolate`` and ``sharpkit probe``: landscape probes of checkpoints."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import numpy as np
import typer

from sharpkit.cli._options import (
    DEFAULT_STORE,
    DataOpt,
    DataRootOpt,
    DeviceOpt,
    DownloadOpt,
    ForceOpt,
    JsonOpt,
    ModelOpt,
    ModelOptionOpt,
    NoStoreOpt,
    OptionOpt,
    SeedOpt,
    StoreOpt,
    parse_options,
    parse_pairs,
)
from sharpkit.cli._progress import progress_display
from sharpkit.cli._render import fmt_number, out_console, print_json, print_table

if TYPE_CHECKING:
    from sharpkit.interfaces import ProbeResult

BatchSizeOpt = Annotated[
    int, typer.Option("--batch-size", help="Examples per forward pass.")
]

_COLUMN_NAMES = {
    "train_loss": "train loss",
    "train_accuracy": "train acc.",
    "test_loss": "test loss",
    "test_accuracy": "test acc.",
}


def _complete_probe(incomplete: str) -> list[str]:
    try:
        from sharpkit.registry import get_registry

        names = get_registry().names("probe")
    except Exception:  # completion must never fail loudly
        return []
    return [n for n in names if n.startswith(incomplete)]


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


def _probe_options(option: list[str] | None, name: str) -> dict[str, str]:
    return parse_options(option, [name])[name] if option else {}


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
    data: DataOpt = None,
    model: ModelOpt = None,
    model_option: ModelOptionOpt = None,
    option: OptionOpt = None,
    batch_size: BatchSizeOpt = 1024,
    seed: SeedOpt = 0,
    device: DeviceOpt = "cpu",
    data_root: DataRootOpt = None,
    download: DownloadOpt = False,
    store: StoreOpt = DEFAULT_STORE,
    no_store: NoStoreOpt = False,
    force: ForceOpt = False,
    json_output: JsonOpt = False,
) -> None:
    """Loss and accuracy along the line (1-α)·θa + α·θb between two checkpoints.

    The probe behind Figs. 2-3 of the paper (Goodfellow et al.'s interpolation).
    Batch-norm statistics are re-estimated at every α on a fixed, seeded set of
    training examples. Options of the probe (eval_samples, bn_samples,
    width_delta, resume_dir, ...) go in -o key=value; `sharpkit plugins` lists
    them. Prints the curve and the width readouts: for each minimum, the
    α-interval where the training loss stays within width_delta of its own.
    """
    from sharpkit import api

    extra = _probe_options(option, "interpolate")
    with progress_display("interpolate", enabled=not json_output) as cb:
        result = api.interpolate(
            a,
            b,
            data,
            alpha=alpha,
            bn_reestimate=bn_reestimate,
            options=extra,
            batch_size=batch_size,
            seed=seed,
            device=device,
            model_name=model,
            model_options=parse_pairs(model_option, "--model-option"),
            data_root=data_root,
            download=download,
            progress=cb,
            store=None if no_store else store,
            force=force,
        )
    if json_output:
        print_json(_to_json(result, [a, b]))
        return
    _render(result, f"interpolate {a.name} (α=0) → {b.name} (α=1)")


def probe(
    name: Annotated[
        str,
        typer.Argument(
            help="Probe: interpolate, direction, plane, plane-between, ...",
            autocompletion=_complete_probe,
            show_default=False,
        ),
    ],
    checkpoints: Annotated[
        list[Path],
        typer.Argument(help="The checkpoint(s) the probe takes.", show_default=False),
    ],
    option: OptionOpt = None,
    data: DataOpt = None,
    model: ModelOpt = None,
    model_option: ModelOptionOpt = None,
    batch_size: BatchSizeOpt = 1024,
    seed: SeedOpt = 0,
    device: DeviceOpt = "cpu",
    data_root: DataRootOpt = None,
    download: DownloadOpt = False,
    store: StoreOpt = DEFAULT_STORE,
    no_store: NoStoreOpt = False,
    force: ForceOpt = False,
    json_output: JsonOpt = False,
) -> None:
    """Run a loss-landscape probe on one or two checkpoints.

    E.g. `sharpkit probe direction ckpt.pt -o alpha=-1:1:41` (loss along a random
    filter-normalised direction) or `sharpkit probe plane ckpt.pt -o x=-1:1:21 -o
    y=-1:1:21 -o resume_dir=partial/` (a resumable 2-D grid).
    """
    from sharpkit import api
    from sharpkit.registry import get_registry

    get_registry().get("probe", name)  # fail fast with "did you mean"
    with progress_display(name, enabled=not json_output) as cb:
        result = api.probe(
            name,
            list(checkpoints),
            data,
            options=_probe_options(option, name),
            batch_size=batch_size,
            seed=seed,
            device=device,
            model_name=model,
            model_options=parse_pairs(model_option, "--model-option"),
            data_root=data_root,
            download=download,
            progress=cb,
            store=None if no_store else store,
            force=force,
        )
    if json_output:
        print_json(_to_json(result, checkpoints))
        return
    _render(result, f"{name} {' '.join(p.name for p in checkpoints)}")
