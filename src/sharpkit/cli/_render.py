"""Rendering helpers: JSON and rich tables on stdout."""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

from rich.cells import cell_len
from rich.console import Console
from rich.table import Table

# Text only: no markup, emoji codes or highlighting in paths, names and numbers.
out_console = Console(soft_wrap=True, markup=False, emoji=False, highlight=False)

# A cell that is one number, with its sign, ± or unit: it never wraps.
_NUMBER = re.compile(
    r"^[-+±~≈<>≤≥]?\s?(\d[\d,]*\.?\d*|\.\d+)([eE][-+]?\d+)?\s?%?$|^(-|nan|inf|-inf)$"
)
# The narrowest a text column (a path, a note) gets, in cells.
_TEXT_MIN = 12


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def print_json(data: Any) -> None:
    """Print ``data`` as JSON on stdout (NaN/inf become null)."""
    print(json.dumps(_clean(data), indent=2, sort_keys=False, default=str))


def fmt_number(value: Any, digits: int = 6) -> str:
    """Format a number for a table cell."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return "nan"
        return f"{value:.{digits}g}"
    return str(value)


def _is_number(text: str) -> bool:
    return bool(_NUMBER.match(text))


def _fit_width() -> int:
    """The width tables must fit.

    A terminal's own width; when piped or logged, ``COLUMNS`` if it is set,
    else 200 (no terminal to fit, so never fold a path or a number).
    """
    if out_console.is_terminal:
        return out_console.width
    columns = os.environ.get("COLUMNS", "")
    return int(columns) if columns.isdigit() and int(columns) > 0 else 200


def _cells(
    rows: Sequence[Mapping[str, Any]], keys: Sequence[str], digits: int
) -> list[list[str]]:
    return [[fmt_number(row.get(key), digits) for key in keys] for row in rows]


def _min_width(columns: Sequence[tuple[str, str]], cells: list[list[str]]) -> int:
    """The narrowest this table gets without splitting a number or a word of a header.

    Number columns never wrap; a text column may fold down to
    :data:`_TEXT_MIN` cells. Each column adds 3 cells (padding and its left
    rule), the table 1 (its right rule).
    """
    total = 1
    for i, (_, header) in enumerate(columns):
        column = [row[i] for row in cells]
        head = max((cell_len(line) for line in header.splitlines()), default=0)
        wide = max([head, *(cell_len(c) for c in column)])
        if all(_is_number(c) for c in column):
            total += wide + 3
        else:
            word = max((cell_len(w) for w in header.split()), default=1)
            total += max(min(wide, _TEXT_MIN), word) + 3
    return total


def _stack_headers(columns: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """Headers one word a line (``train loss`` over two lines)."""
    return [(key, "\n".join(header.split())) for key, header in columns]


def print_table(
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[tuple[str, str]],
    *,
    title: str | None = None,
    drop: Sequence[str] = (),
    digits: int = 6,
) -> None:
    """Print ``rows`` as a rich table with ``(key, header)`` columns.

    The table fits the terminal without ever splitting a number across lines:
    text cells (paths, notes) may wrap; if the table is still too wide, headers
    are stacked a word a line, numbers shortened to 4 significant digits, the
    columns in ``drop`` left out in that order (a caption says which; ``--json``
    has them all), and as a last resort each row is printed as ``header: value``
    lines.

    Args:
        rows: The rows, one mapping per row.
        columns: ``(key, header)`` of each column, in order.
        title: A title above the table.
        drop: Keys of the columns that may be left out to fit, least useful first.
        digits: Significant digits of float cells.
    """
    width = _fit_width()
    shown = list(columns)
    hidden: list[str] = []
    cells = _cells(rows, [k for k, _ in shown], digits)
    if _min_width(shown, cells) > width:
        shown = _stack_headers(shown)
    if _min_width(shown, cells) > width and digits > 4:
        digits = 4
        cells = _cells(rows, [k for k, _ in shown], digits)
    for key in drop:
        if _min_width(shown, cells) <= width:
            break
        if key in dict(shown):
            hidden.append(dict(columns)[key] or key)
            shown = [c for c in shown if c[0] != key]
            cells = _cells(rows, [k for k, _ in shown], digits)
    if _min_width(shown, cells) > width:
        _print_stacked(rows, columns, title, digits)
        return
    caption = f"not shown: {', '.join(hidden)} (see --json)" if hidden else None
    table = Table(title=title, caption=caption, show_lines=False)
    for i, (_, header) in enumerate(shown):
        number = all(_is_number(row[i]) for row in cells)
        table.add_column(
            header, justify="right" if number else "left", no_wrap=number,
            overflow="fold",
        )  # fmt: skip
    for row in cells:
        table.add_row(*row)
    saved = out_console.width
    out_console.width = width
    try:
        out_console.print(table, soft_wrap=False)  # soft wrap: no centred title
    finally:
        out_console.width = saved


def _print_stacked(
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[tuple[str, str]],
    title: str | None,
    digits: int,
) -> None:
    """Each row as ``header: value`` lines, rows apart: for very narrow terminals."""
    if title:
        out_console.print(title)
    name = max(cell_len(h or k) for k, h in columns)
    for i, row in enumerate(rows):
        if i:
            out_console.print()
        for key, header in columns:
            label = (header or key).ljust(name)
            out_console.print(f"{label}  {fmt_number(row.get(key), digits)}")
