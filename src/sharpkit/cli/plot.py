"""``sharpkit plot``: the paper's figures from a results store."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from sharpkit.cli._options import JsonOpt
from sharpkit.cli._render import out_console, print_json
from sharpkit.errors import ConfigError

# A 6 x 4 inch figure at 1200 dpi is 35 megapixels (140 MB while drawn); at
# 100 000 dpi matplotlib asks for 960 GB and dies with std::bad_alloc.
MAX_DPI = 1200


def check_dpi(dpi: int) -> None:
    """Refuse a resolution that cannot be drawn or would not fit in memory.

    Raises:
        ConfigError: ``dpi`` is not between 1 and :data:`MAX_DPI`.
    """
    if not 1 <= dpi <= MAX_DPI:
        msg = (
            f"--dpi {dpi} is outside 1 to {MAX_DPI}; 150 suits a screen, 300 to 600 "
            "print (for any size, write .pdf or .svg)"
        )
        raise ConfigError(msg)


class FigureName(StrEnum):
    """The figures ``sharpkit plot`` draws."""

    fig1 = "fig1"
    fig2 = "fig2"
    fig3 = "fig3"
    fig4 = "fig4"
    density = "density"
    correlate = "correlate"
    sam = "sam"
    rescale = "rescale"
    blocks = "blocks"
    blocks_track = "blocks-track"


class EndLabel(StrEnum):
    """How interpolation panels name their two minima."""

    eta_s = "eta-s"
    beta = "beta"


def plot(
    store: Annotated[
        Path,
        typer.Argument(
            help="The results store (a zarr directory).", show_default=False
        ),
    ],
    figure: Annotated[
        FigureName,
        typer.Option(
            "--figure",
            help="fig1: λ_max, log ‖H‖_F and validation accuracy against η/S; "
            "fig2/fig3: interpolation curves; fig4: learning curves; density: "
            "Hessian eigenvalue densities (measure -m density); correlate: each "
            "measure against --target with Kendall's τ and Ψ; sam: fig1 plus adaptive "
            "sharpness, SGD and SAM as two series; rescale: the rescale probe; "
            "blocks: curvature per block (measure --blocks); blocks-track: block x "
            "step heat maps of runs tracked with Tracker(blocks=...).",
            show_default=False,
        ),
    ],
    output: Annotated[
        Path,
        typer.Option(
            "--output",
            "-o",
            help="Image file to write: .png, .pdf or .svg.",
            show_default=False,
        ),
    ],
    filters: Annotated[
        list[str] | None,
        typer.Option(
            "--filter",
            "-f",
            help="Use only rows where column=value (also !=, <, <=, >, >=), as for "
            "`sharpkit results`; repeatable. E.g. --filter dataset=cifar10.",
        ),
    ] = None,
    label: Annotated[
        EndLabel | None,
        typer.Option(
            "--label",
            help="Name the minima of interpolation panels by η and S (eta-s, fig2's "
            "default) or by β = S / --beta-base (beta, fig3's default).",
        ),
    ] = None,
    beta_base: Annotated[
        float,
        typer.Option("--beta-base", help="Batch size at β = 1 (the paper: S = 50β)."),
    ] = 50.0,
    title: Annotated[str | None, typer.Option("--title", help="Figure title.")] = None,
    dpi: Annotated[
        int,
        typer.Option(
            "--dpi", help=f"Resolution of .png output (1 to {MAX_DPI} dots per inch)."
        ),
    ] = 150,
    target: Annotated[
        str,
        typer.Option(
            "--target", help="For --figure correlate: gap, loss_gap, test_accuracy, ..."
        ),
    ] = "gap",
    json_output: JsonOpt = False,
) -> None:
    """Draw one of the paper's figures from the results in STORE.

    E.g. `sharpkit plot results.zarr --figure fig1 -o fig1.png`. The figure shows
    every matching run: narrow it down with --filter.
    """
    from sharpkit.plotting import plot_figure

    check_dpi(dpi)
    path = plot_figure(
        store,
        figure.value,
        output,
        filter=filters or None,
        label=label.value if label is not None else None,
        beta_base=beta_base,
        title=title,
        dpi=dpi,
        target=target,
    )
    if json_output:
        print_json({"figure": figure.value, "path": str(path)})
    else:
        out_console.print(f"wrote {path}", highlight=False)
