"""The figures in docs/reliability.md are the suite's own counts.

The table between the ``figures`` markers of the page is rendered from the case
tables of this directory; a case added or removed changes it, and this test
fails until the page says so. To rewrite the table::

    python tests/reliability/test_figures.py
"""

from __future__ import annotations

import importlib
import math
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

HERE = Path(__file__).parent
PAGE = HERE.parent.parent / "docs" / "reliability.md"
START, END = "<!-- figures:start -->", "<!-- figures:end -->"
# (module, what its cases are)
CLASSES = [
    ("test_bad_options", "bad options (sizes, values, paths, markup)"),
    (
        "test_bad_checkpoints",
        "bad checkpoints (metadata, truncation, zip bombs, weights)",
    ),
    ("test_store_damage", "damaged stores (metadata, chunks, root, random damage)"),
    ("test_plugins", "plugin contract violations"),
    ("test_signals", "signals to single- and multi-process commands, kill -9"),
    ("test_fuzz", "property-based fuzzing of parsers and checkpoint readers"),
    (
        "test_reuse_keys",
        "same key, other computation (model, loss, data, options, checkpoint race, "
        "plugins, sweeps)",
    ),
    ("test_fingerprint", "the reuse key's digests (behaviour, data, code)"),
    (
        "test_plugin_isolation",
        "plugins changing data, loss, hooks or flags for others; bad result numbers",
    ),
    (
        "test_bounded_files",
        "sparse files, zip bombs (.npz, .pt data, .pt2), endless data sources",
    ),
    (
        "test_one_liners",
        "checkpoints damaged on disk (CRC), sparse or meta weights; user code that "
        "exits; options and paths that raised or were accepted",
    ),
    (
        "test_fuzz_keys",
        "property-based fuzzing of plugin results, data files and the data digest",
    ),
    (
        "test_limits",
        "sizes asking for unbounded work (options, metadata, processes, images); "
        "fuzzed model sizes",
    ),
    ("test_probe_track_keys", "same probe or tracker key, other computation"),
    (
        "test_plugin_loading",
        "plugins whose import hangs, fails or exits; --version and --help",
    ),
    (
        "test_read_what_is_used",
        "a selection of the first examples read no further (image folders, code "
        "data that streams or holds 10⁹ items)",
    ),
]


def _cases(fn: Any) -> int:
    """How many inputs one test function tries: its parameter sets, or examples."""
    settings = getattr(fn, "_hypothesis_internal_use_settings", None)
    if settings is not None:
        return int(settings.max_examples)
    sizes = [
        len(mark.args[1])
        for mark in getattr(fn, "pytestmark", [])
        if mark.name == "parametrize"
    ]
    return math.prod(sizes) if sizes else 1


def _inputs(module: ModuleType) -> int:
    return sum(
        _cases(getattr(module, name))
        for name in dir(module)
        if name.startswith("test_")
    )


def _one_line_errors(mods: dict[str, ModuleType]) -> int:
    """Cases whose expected outcome is exactly one ``error:`` line."""
    opts, ckpts, plugins, signals = (
        mods["test_bad_options"],
        mods["test_bad_checkpoints"],
        mods["test_plugins"],
        mods["test_signals"],
    )
    return (
        sum(1 for c in opts.BAD_OPTIONS if c[2] == "error")
        + len(opts.USAGE_ERRORS)
        + len(ckpts.BAD_CHECKPOINTS)
        + len(ckpts.BRACKETED)
        + 1  # the bad checkpoint in a batch of three
        + len(plugins.VIOLATIONS)
        + len(mods["test_plugin_isolation"].CORRUPTIONS)
        + 2  # a sparse checkpoint and a .pt2 zip bomb from the CLI
        + 3  # a checkpoint whose CRC fails; sparse and meta weights
        + len(mods["test_one_liners"].USER_CASES)
        + len(mods["test_one_liners"].OPTION_CASES)
        + 1  # --json to a full device
        + 1  # train --out ''
        + len(mods["test_one_liners"].BAD_ENDPOINTS)
        + 1  # every target -100
        + len(plugins.BAD_DISABLE)
        + 2  # a factory that raises; a duplicate name (the advice line)
        + len(signals.TRAIN_SIGNALS)
        + len(signals.SWEEP_SIGNALS)
        + 2  # SIGTERM to a Dask sweep, to measure
        + 2  # SIGINT, SIGTERM while a later metric runs (the finished one kept)
        + mods["test_limits"].ONE_LINE
    )


def _one_line_warnings(mods: dict[str, ModuleType]) -> int:
    """Cases accepted with exactly one ``warning:`` line."""
    opts = mods["test_bad_options"]
    return (
        sum(1 for c in opts.BAD_OPTIONS if c[2] == "warning")
        + 2  # plugin loads
        + 1  # --disable-plugin naming no plugin
        + 1  # half the targets -100 (cross-entropy's ignore_index)
    )


def render() -> str:
    """The figures table, as the page must hold it."""
    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))
    mods = {name: importlib.import_module(name) for name, _ in CLASSES}
    counts = {name: _inputs(mods[name]) for name, _ in CLASSES}
    rows = [
        "| class of input | test file | inputs tried |",
        "|---|---|---:|",
        *(
            f"| {what} | `tests/reliability/{name}.py` | {counts[name]} |"
            for name, what in CLASSES
        ),
        f"| **all** | | **{sum(counts.values())}** |",
        "",
        "| outcome | count |",
        "|---|---:|",
        f"| refused with one `error:` line (exit 1; 2 for usage; 128 + signal) | "
        f"{_one_line_errors(mods)} |",
        f"| accepted with one `warning:` line | {_one_line_warnings(mods)} |",
        "| tracebacks | 0 |",
        "| hangs | 0 |",
        "| runs lost | 0 |",
        "| wrong results reused | 0 |",
    ]
    return "\n".join(rows)


def _block(text: str) -> str:
    start, end = text.index(START) + len(START), text.index(END)
    return text[start:end].strip()


def test_the_page_states_the_suites_own_figures() -> None:
    assert _block(PAGE.read_text()) == render(), (
        "docs/reliability.md is stale; run `python tests/reliability/test_figures.py`"
    )


if __name__ == "__main__":
    text = PAGE.read_text()
    head, tail = text[: text.index(START) + len(START)], text[text.index(END) :]
    PAGE.write_text(f"{head}\n{render()}\n{tail}")
    print(f"wrote the figures to {PAGE}")
