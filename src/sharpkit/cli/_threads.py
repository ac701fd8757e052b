"""``--threads`` for the commands that compute (measure, train, probe)."""

from __future__ import annotations

from typing import Annotated

import typer

ThreadsOpt = Annotated[
    str | None,
    typer.Option(
        "--threads",
        metavar="N|auto",
        help=(
            "CPU threads for torch (default: $SHARPKIT_THREADS, else auto: the "
            "cores other work leaves free, at least 1; torch's one thread per "
            "core runs many times slower beside other CPU-bound jobs)."
        ),
        show_default=False,
    ),
]


def use_threads(value: str | None) -> None:
    """Apply ``--threads`` (or the default).

    When the default chose fewer threads than cores, a terminal is told so on
    stderr (logs are not: one line that changes with the load would make them
    differ from run to run).
    """
    from sharpkit._threads import apply_threads, choose_threads
    from sharpkit.cli._progress import err_console, print_line
    from sharpkit.errors import ConfigError

    try:
        choice = choose_threads(value)
    except ValueError as exc:
        raise ConfigError(f"{exc} (--threads or SHARPKIT_THREADS)") from exc
    apply_threads(choice)
    if choice.reduced and err_console.is_terminal:
        print_line("note", choice.reason)
