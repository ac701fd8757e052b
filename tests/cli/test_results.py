"""`sharpkit results`: table, JSON, CSV, filters, empty and missing stores."""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from sharpkit.cli import app
from sharpkit.interfaces import MetricResult, ProbeResult
from sharpkit.store import COLUMNS, ResultStore

runner = CliRunner()


def one_line_error(result) -> str:
    assert result.exit_code == 1, (result.exit_code, result.output)
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert result.stdout == ""
    return lines[0]


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    store = ResultStore(tmp_path / "r.zarr")
    for lr, batch in ((0.1, 128), (0.01, 128), (0.1, 1024)):
        store.write_run(
            kind="measure",
            attrs={
                "model": "mlp-bn",
                "dataset": "fashion-mnist",
                "lr": lr,
                "batch_size": batch,
                "seed": 0,
                "final": {"test_accuracy": 0.9 - lr},
            },
            metrics={
                "spectral": MetricResult(
                    value=lr * 1000 / batch,
                    bound=1e-3,
                    converged=True,
                    hvps=30,
                    arrays={"ritz_values": np.array([1.0, 0.5])},
                    attrs={"key": f"s{lr}{batch}"},
                ),
                "frobenius": MetricResult(value=2.0, stderr=0.1, attrs={"key": "f"}),
            },
        )
    store.write_run(
        kind="probe",
        attrs={"lr": [0.1, 0.01], "batch_size": [128, 128]},
        probes={
            "interpolate": ProbeResult(
                coords={"alpha": np.linspace(-1, 2, 4)},
                arrays={"train_loss": np.ones(4)},
                summary={"width": 1.5},
            )
        },
    )
    return store.path


def test_json_lists_every_row(store_path: Path) -> None:
    result = runner.invoke(app, ["results", str(store_path), "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert len(rows) == 7
    assert all(list(r) == list(COLUMNS) for r in rows)
    spectral = [r for r in rows if r["metric"] == "spectral"]
    assert [r["lr_over_batch"] for r in spectral] == pytest.approx(
        [0.1 / 128, 0.01 / 128, 0.1 / 1024]
    )
    # final test accuracy from the checkpoint metadata, exactly as stored
    assert [r["test_accuracy"] for r in spectral] == [0.9 - 0.1, 0.9 - 0.01, 0.9 - 0.1]


def test_filters_and_kind(store_path: Path) -> None:
    args = ["results", str(store_path), "--json"]
    result = runner.invoke(
        app, [*args, "--filter", "metric=spectral", "--filter", "batch_size=128"]
    )
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert sorted(r["lr"] for r in rows) == [0.01, 0.1]
    rows = json.loads(runner.invoke(app, [*args, "-f", "lr_over_batch<1e-4"]).stdout)
    assert {(r["lr"], r["batch_size"]) for r in rows} == {(0.01, 128), (0.1, 1024)}
    rows = json.loads(runner.invoke(app, [*args, "--kind", "probe"]).stdout)
    assert [r["metric"] for r in rows] == ["interpolate.width"]
    assert rows[0]["lr_b"] == 0.01


def test_csv(store_path: Path) -> None:
    result = runner.invoke(
        app, ["results", str(store_path), "--csv", "--filter", "metric=frobenius"]
    )
    assert result.exit_code == 0, result.output
    reader = csv.DictReader(io.StringIO(result.stdout))
    assert tuple(reader.fieldnames or ()) == COLUMNS
    rows = list(reader)
    assert len(rows) == 3
    assert {r["stderr"] for r in rows} == {"0.1"}
    assert {r["converged"] for r in rows} == {""}  # missing -> empty cell


def test_table_fits_80_columns(store_path: Path) -> None:
    result = runner.invoke(app, ["results", str(store_path)])  # not a tty: 80 wide
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "4 run(s), 7 row(s)" in out
    for word in ("spectral", "frobenius", "interpolate.width", "η/S", "value"):
        assert word in out
    assert "0.000781" in out  # η/S of η=0.1, S=128
    assert "not shown:" in out  # columns dropped rather than squashed
    assert "…" not in out
    body = [line for line in out.splitlines() if line.startswith(" ")]  # the grid
    assert len(body) == 7 + 4  # rows + blank, header, rule, blank
    assert max(len(line) for line in body) <= 80
    assert result.stderr == ""


def test_table_wide_terminal_shows_all(
    store_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sharpkit.cli import _render

    monkeypatch.setattr(_render.out_console, "width", 250)
    result = runner.invoke(app, ["results", str(store_path)])
    assert result.exit_code == 0, result.output
    assert "not shown" not in result.stdout
    for header in ("kind", "model", "stderr", "test acc.", "η (b)"):
        assert header in result.stdout
    # columns equal in every row are summarised once, under the table
    assert "all rows: data=fashion-mnist" not in result.stdout  # probe row has none
    assert "seed" in result.stdout


def test_empty_store(tmp_path: Path) -> None:
    path = ResultStore(tmp_path / "empty.zarr").path
    result = runner.invoke(app, ["results", str(path)])
    assert result.exit_code == 0, result.output
    assert "no runs" in result.stdout
    result = runner.invoke(app, ["results", str(path), "--json"])
    assert result.exit_code == 0
    assert json.loads(result.stdout) == []
    result = runner.invoke(app, ["results", str(path), "--csv"])
    assert result.stdout.strip() == ",".join(COLUMNS)


def test_no_matching_rows(store_path: Path) -> None:
    result = runner.invoke(app, ["results", str(store_path), "-f", "metric=nothing"])
    assert result.exit_code == 0
    assert "match the filters" in result.stdout


def test_missing_store_is_one_line(tmp_path: Path) -> None:
    line = one_line_error(runner.invoke(app, ["results", str(tmp_path / "nope.zarr")]))
    assert "no results store" in line
    assert not (tmp_path / "nope.zarr").exists()


def test_not_a_store_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    line = one_line_error(runner.invoke(app, ["results", str(tmp_path)]))
    assert "not a sharpkit results store" in line
    assert (tmp_path / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["--filter", "nope=1"], "unknown column 'nope'"),
        (["--filter", "lr=fast"], "numeric column"),
        (["--filter", "metric"], "column=value"),
        (["--json", "--csv"], "cannot be combined"),
    ],
)
def test_bad_options_are_one_line(store_path: Path, args, match: str) -> None:
    line = one_line_error(runner.invoke(app, ["results", str(store_path), *args]))
    assert match in line


def test_bad_kind_is_a_usage_error(store_path: Path) -> None:
    result = runner.invoke(app, ["results", str(store_path), "--kind", "bogus"])
    assert result.exit_code == 2


def test_gc_reports_removed_leftovers(store_path: Path) -> None:
    leftover = store_path / "staging" / "20260101T000000.000000Z-00000000.gone.1"
    leftover.mkdir()
    os.utime(leftover, (0, 0))
    result = runner.invoke(app, ["results", str(store_path), "--gc", "--json"])
    assert result.exit_code == 0, result.output
    assert "removed 1 leftover(s) of killed writes" in result.stderr
    assert not leftover.exists()
    assert len(json.loads(result.stdout)) == 7
