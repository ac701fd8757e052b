"""The held-out bracket on the front door: the measure table and `results` (#19).

A result with ``data_lower`` (``spectral`` with ``data_error`` and examples the
sample left out) shows ``full-data ≥ L ± s (held-out)`` in the measure table's
note column, and the store's table has ``data_lower``/``data_lower_stderr``
columns (``--json``, ``--csv``, and ``full ≥`` in the table). The numbers are
the stored result's own, printed at the table's 4 (value) and 2 (± s)
significant digits.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sharpkit.cli import _render, app
from sharpkit.cli._render import fmt_number

runner = CliRunner()
WIDE = {"COLUMNS": "250"}  # every column fits: none is dropped


@pytest.fixture
def checkpoint(mlp_bn_checkpoint: Path) -> Path:
    return mlp_bn_checkpoint


def test_measure_table_and_results_show_the_heldout_bracket(
    checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the tables' console took its width when first made: a wide one, for
    # every column (the note, `full ≥`) to be shown whatever ran before
    monkeypatch.setattr(_render.out_console, "width", 250)
    store = tmp_path / "r.zarr"
    args = [
        "measure", str(checkpoint), "--store", str(store), "--samples", "64",
        "--sample", "random", "-o", "spectral.data_error=true",
    ]  # fmt: skip
    done = runner.invoke(app, [*args, "--json"], env=WIDE)
    assert done.exit_code == 0, done.stderr
    attrs = json.loads(done.stdout)[0]["metrics"]["spectral"]["attrs"]
    lower, err = attrs["data_lower"], attrs["data_lower_stderr"]
    assert attrs["data_lower_samples"] == 64  # as many as the sample
    table = runner.invoke(app, args, env=WIDE)  # the stored result, as a table
    assert table.exit_code == 0, table.stderr
    want = f"full-data ≥ {fmt_number(lower, 4)} ± {fmt_number(err, 2)} (held-out)"
    assert want in table.stdout
    rows = json.loads(runner.invoke(app, ["results", str(store), "--json"]).stdout)
    (row,) = [r for r in rows if r["metric"] == "spectral"]
    assert (row["data_lower"], row["data_lower_stderr"]) == (lower, err)
    text = runner.invoke(app, ["results", str(store), "--csv"]).stdout
    (line,) = list(csv.DictReader(io.StringIO(text)))
    assert float(line["data_lower"]) == lower
    shown = runner.invoke(app, ["results", str(store)], env=WIDE).stdout
    assert "full ≥" in shown
    assert fmt_number(lower, 4) in shown, shown
    assert "not shown" not in shown


def test_no_bracket_without_heldout_examples(checkpoint: Path) -> None:
    """--samples all leaves no example out: no note, no data_lower."""
    done = runner.invoke(
        app,
        [
            "measure", str(checkpoint), "--no-store", "--samples", "all",
            "-o", "spectral.data_error=true", "--json",
        ],
    )  # fmt: skip
    assert done.exit_code == 0, done.stderr
    attrs = json.loads(done.stdout)[0]["metrics"]["spectral"]["attrs"]
    assert "data_lower" not in attrs
