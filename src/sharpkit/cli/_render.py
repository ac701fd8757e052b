"""Rendering helpers: JSON and rich tables on stdout."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

from rich.console import Console
from rich.measure import Measurement
from rich.table import Table

# Text only: no markup, emoji codes or highlighting in paths, names and numbers.
out_console = Console(soft_wrap=True, markup=False, emoji=False, highlight=False)


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


def print_table(
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[tuple[str, str]],
    *,
    title: str | None = None,
) -> None:
    """Print ``rows`` as a rich table with ``(key, header)`` columns."""
    table = Table(title=title, show_lines=False)
    for _, header in columns:
        table.add_column(header, overflow="fold")
    for row in rows:
        table.add_row(*(fmt_number(row.get(key)) for key, _ in columns))
    if out_console.is_terminal:
        out_console.print(table, soft_wrap=False)  # soft wrap: no centred title
        return
    # Piped or logged: there is no terminal to fit, so never fold a path or a
    # number across lines (up to 200 columns).
    natural = Measurement.get(
        out_console, out_console.options.update(max_width=200), table
    ).maximum
    width = out_console.width
    out_console.width = max(width, natural)
    try:
        out_console.print(table, soft_wrap=False)  # soft wrap: no centred title
    finally:
        out_console.width = width
