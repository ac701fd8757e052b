"""The CLI's progress display (fed by ProgressCallbacks) and its lines on stderr.

Everything the CLI prints is text, never rich markup or emoji codes: the
consoles have both off, so a path such as ``run[lr=0.1].pt`` or ``a[/].pt``, an
option such as ``step:a:b`` or a plugin's description prints as it is. Styles
(the red ``error:``) are applied to :class:`~rich.text.Text`, not parsed.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from sharpkit.interfaces import ProgressCallback

err_console = Console(
    stderr=True, markup=False, emoji=False, highlight=False, soft_wrap=True
)
_STYLES = {"error": "red", "warning": "yellow", "interrupted": "red"}


def print_line(kind: str, text: str) -> None:
    """Print ``<kind>: <text>`` on stderr as one line of plain text.

    Args:
        kind: ``"error"``, ``"warning"`` or ``"interrupted"`` (its colour).
        text: The message; line breaks in it become spaces.
    """
    flat = text.replace("\r", " ").replace("\n", " ")
    err_console.print(Text.assemble((f"{kind}:", _STYLES.get(kind, "")), " ", flat))


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


class _Callback:
    """A ProgressCallback that drives one rich task, throttled to ~10 updates/s."""

    def __init__(self, progress: Progress, label: str) -> None:
        self._progress = progress
        self._label = label
        self._task: TaskID = progress.add_task(
            label, total=None, info="", deadline=None
        )
        self._last = 0.0

    def __call__(
        self,
        completed: float,
        total: float | None = None,
        /,
        *,
        description: str | None = None,
        **info: Any,
    ) -> None:
        now = time.monotonic()
        eta = info.pop("eta", None)
        if isinstance(eta, int | float):  # a predicted ETA: counted down from now
            self._progress.update(self._task, deadline=now + float(eta))
        finished = total is not None and completed >= total
        if description is None and not finished and now - self._last < 0.1:
            return
        self._last = now
        fields = "  ".join(f"{k}={_fmt(v)}" for k, v in info.items())
        kwargs: dict[str, Any] = {
            "completed": completed,
            "total": total,
            "info": fields,
        }
        if description is not None:
            kwargs["description"] = f"{self._label}: {description}"
        self._progress.update(self._task, **kwargs)


class _Remaining(TimeRemainingColumn):
    """Time left: the caller's prediction (``eta=`` seconds) if it gave one.

    A sweep's points differ in cost (S = 25 trains for far longer than S =
    1000), so rich's own estimate from the points done so far is wrong; the
    sweep passes its prediction instead, corrected as points finish.
    """

    def render(self, task: Task) -> Text:
        deadline = task.fields.get("deadline")
        if not isinstance(deadline, float) or task.finished:
            return super().render(task)
        left = max(0, int(deadline - time.monotonic()))
        hours, rest = divmod(left, 3600)
        minutes, seconds = divmod(rest, 60)
        return Text(f"{hours}:{minutes:02d}:{seconds:02d}", style="progress.remaining")


@contextmanager
def progress_display(label: str, *, enabled: bool = True) -> Iterator[ProgressCallback]:
    """Show a progress display on stderr while the block runs.

    Turns itself off when stderr is not a terminal (logs, pipes, CI).
    """
    progress = Progress(
        SpinnerColumn(),
        TextColumn("{task.description}", style="progress.description", markup=False),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}", markup=False),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        _Remaining(),
        console=err_console,
        transient=True,
        disable=not enabled or not err_console.is_terminal,
    )
    with progress:
        yield _Callback(progress, label)
