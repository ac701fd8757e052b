"""Sample outputs in the docs come from real runs: compare, or rewrite on request.

A test runs the documented command, then :func:`check_block` compares what it
printed with the ```console block that shows it. Words must match exactly;
numbers within a tolerance the test states (training on another CPU or BLAS
rounds differently). With ``SHARPKIT_UPDATE_DOCS=1`` the block is rewritten
from the run instead, so a change of output is one command away from the docs.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

# A token is a number (with its sign and a leading ±) or a run of other
# characters; whitespace and rich's box-drawing characters separate tokens.
_TOKEN = re.compile(r"±?-?\d[\d,]*\.?\d*(?:e[-+]?\d+)?|[^\s\u2500-\u257f\d±]+|±")
_NUMBER = re.compile(r"^(±?)(-?\d[\d,]*\.?\d*(?:e[-+]?\d+)?)$")


def tokens(text: str) -> list[str]:
    return _TOKEN.findall(text)


def differences(
    shown: str, printed: str, *, rtol: float, err_factor: float
) -> list[str]:
    """How ``printed`` differs from ``shown`` (empty: the same).

    Args:
        shown: The output in the docs.
        printed: The output of the run.
        rtol: Relative tolerance of plain numbers.
        err_factor: ``±`` numbers (error bars, themselves rounding-level
            quantities) may differ by this factor either way.
    """
    a, b = tokens(shown), tokens(printed)
    if len(a) != len(b):
        return [f"{len(a)} tokens shown, {len(b)} printed"]
    out = []
    for x, y in zip(a, b, strict=True):
        mx, my = _NUMBER.match(x), _NUMBER.match(y)
        if mx is None or my is None:
            if x != y:
                out.append(f"{x!r} shown, {y!r} printed")
            continue
        if mx[1] != my[1]:
            out.append(f"{x!r} shown, {y!r} printed")
            continue
        u, v = float(mx[2].replace(",", "")), float(my[2].replace(",", ""))
        if mx[1] == "±":
            ok = u == v or (
                u > 0 and v > 0 and abs(math.log(u / v)) <= math.log(err_factor)
            )
        else:
            ok = abs(u - v) <= rtol * max(abs(u), abs(v))
        if not ok:
            out.append(f"{x} shown, {y} printed")
    return out


def mask_columns(text: str, headers: tuple[str, ...]) -> str:
    """``text`` with the cells of the rich-table columns named ``headers`` as ``~``.

    For columns whose numbers no tolerance can pin (wall-clock seconds): the
    table's layout and every other cell are still compared.
    """
    out: list[str] = []
    masked: set[int] = set()
    for line in text.splitlines():
        if "┃" in line:  # a header row: find the columns to mask
            cells = line.split("┃")
            masked = {i for i, c in enumerate(cells) if c.strip() in headers}
        elif "│" in line and masked:
            cells = line.split("│")
            for i in masked & set(range(len(cells))):
                cells[i] = " ~ "
            line = "│".join(cells)
        out.append(line)
    return "\n".join(out)


def check_block(
    page: Path,
    command: str,
    printed: str,
    *,
    rtol: float,
    err_factor: float = 100.0,
    mask: tuple[str, ...] = (),
) -> None:
    """The console block of ``page`` after ``$ command`` shows ``printed``.

    Raises:
        AssertionError: It does not (unless ``SHARPKIT_UPDATE_DOCS=1``, which
            rewrites the block).
    """
    text = page.read_text()
    head = f"```console\n$ {command}\n"
    start = text.index(head) + len(head)
    end = text.index("```", start)
    shown = text[start:end]
    printed = "\n".join(line.rstrip() for line in printed.strip("\n").splitlines())
    if os.environ.get("SHARPKIT_UPDATE_DOCS") == "1":
        page.write_text(text[:start] + printed + "\n" + text[end:])
        return
    diff = differences(
        mask_columns(shown, mask), mask_columns(printed, mask),
        rtol=rtol, err_factor=err_factor,
    )  # fmt: skip
    assert not diff, (
        f"{page.name}: the output of `{command}` drifted from the docs "
        f"({'; '.join(diff[:5])}); refresh it with SHARPKIT_UPDATE_DOCS=1 "
        f"pytest {'tests/test_docs.py'}\n{printed}"
    )
