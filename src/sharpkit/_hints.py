"""Name an argument in an error message the way the caller wrote it.

The same check fails for a script (``sharpkit.measure(..., model_name=...)``)
and for the command line (``sharpkit measure ... --model ...``); its message
should name what that caller can actually type. The CLI's error boundary runs
commands inside :func:`cli_hints`; everywhere else the Python keyword is named.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

__all__ = [
    "arg",
    "cli_hints",
    "in_cli",
    "option_hint",
    "spelled",
    "traceback_hint",
]

_CLI: ContextVar[bool] = ContextVar("sharpkit_cli_hints", default=False)


@contextmanager
def cli_hints() -> Iterator[None]:
    """Inside the block, :func:`arg` names command-line flags."""
    token = _CLI.set(True)
    try:
        yield
    finally:
        _CLI.reset(token)


def in_cli() -> bool:
    """Whether the code runs under the command line's error boundary."""
    return _CLI.get()


def traceback_hint() -> str:
    """Where the traceback is: ``--debug`` on the command line.

    In Python the exception's ``__cause__`` holds it already, so nothing is said.
    """
    return " (--debug shows the traceback)" if _CLI.get() else ""


def arg(python: str, cli: str, value: str | None = None) -> str:
    """Return ``cli`` (with ``value``) on the command line, else ``python=value``.

    Examples:
        >>> arg("model_name", "--model", "mypkg.nets:Net")
        "model_name='mypkg.nets:Net'"
        >>> with cli_hints():
        ...     arg("model_name", "--model", "mypkg.nets:Net")
        '--model mypkg.nets:Net'
        >>> arg("data", "--data")
        'data='
    """
    if _CLI.get():
        return cli if value is None else f"{cli} {value}"
    return f"{python}=" if value is None else f"{python}={value!r}"


def option_hint(flag: tuple[str, str], key: str) -> str:
    """How the caller gives group option ``key``: ``--model-option key=...``, a dict.

    Examples:
        >>> option_hint(("model_options", "--model-option"), "width")
        "model_options={'width': ...}"
        >>> with cli_hints():
        ...     option_hint(("model_options", "--model-option"), "width")
        '--model-option width=...'
    """
    if _CLI.get():
        return f"{flag[1]} {key}=..."
    return f"{flag[0]}={{{key!r}: ...}}"


def spelled(python: str, cli: str) -> str:
    """A whole phrase as the caller writes it: ``cli`` under the CLI, else ``python``.

    Examples:
        >>> spelled("bn_reestimate=False", "-o bn_reestimate=false")
        'bn_reestimate=False'
    """
    return cli if _CLI.get() else python
