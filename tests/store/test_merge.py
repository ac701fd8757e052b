"""Merging stores (a sweep split between two machines): every intact run, no damage."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import sharpkit
from sharpkit.cli import app
from sharpkit.store import ResultStore
from sharpkit.store.merge import merge_stores

runner = CliRunner()


def _write(store: ResultStore, lr: float, size: int) -> str:
    """A measure run and a train run with curves, as a sweep point writes them."""
    store.write_run(
        kind="train",
        attrs={"model": "mlp-bn", "lr": lr, "batch_size": size, "seed": 0},
        training={
            "epoch": np.arange(1, 4),
            "seconds": np.array([1.5, 1.25, 1.0]),
            "train_loss": np.array([2.0, 1.0, 0.5]),
        },
    )
    return store.write_run(
        kind="measure",
        attrs={"model": "mlp-bn", "lr": lr, "batch_size": size, "seed": 0},
        metrics={
            "spectral": sharpkit.MetricResult(
                value=10.0 * lr * size,
                stderr=None,
                arrays={"ritz_values": np.array([3.0, 2.0, 1.0])},
            )
        },
    )


def _table(path: Path) -> list[tuple[str, str | None, float | None]]:
    rows = ResultStore(path, create=False).records()
    return sorted((r["run_id"], r["metric"], r["value"]) for r in rows)


@pytest.fixture
def two_machines(tmp_path: Path) -> tuple[Path, Path, str]:
    """Two stores, points split between them; one run of the second is damaged."""
    a, b = tmp_path / "a.zarr", tmp_path / "b.zarr"
    sa, sb = ResultStore(a), ResultStore(b)
    _write(sa, 0.1, 32)
    _write(sa, 0.1, 128)
    _write(sb, 0.01, 32)
    bad = _write(sb, 0.01, 128)
    # flip the bytes of one of its arrays: its manifest no longer matches
    chunks = [
        p for p in (b / "runs" / bad).rglob("*") if p.is_file() and "c" in p.parts
    ]
    assert chunks
    chunks[0].write_bytes(b"\x00" + chunks[0].read_bytes()[1:] + b"junk")
    # a killed writer's leftover: a run folder with no zarr.json yet
    (b / "staging" / "20990101T000000.000000Z-dead.otherhost.1").mkdir(parents=True)
    return a, b, bad


def test_merge_keeps_every_intact_run_and_skips_damage(
    tmp_path: Path, two_machines: tuple[Path, Path, str]
) -> None:
    a, b, bad = two_machines
    before_a, before_b = _table(a), sorted(p.name for p in (b / "runs").iterdir())
    out = tmp_path / "merged.zarr"
    # the table reads metadata only: the damaged run's chunk is not read there
    intact_b = [row for row in _table(b) if row[0] != bad]
    reports = merge_stores(out, [a, b])
    assert [len(r.copied) for r in reports] == [4, 3]
    assert reports[1].damaged[0][0] == bad
    merged = _table(out)
    assert merged == sorted(before_a + intact_b)
    # arrays came along intact, and the merged store passes a full check
    run = ResultStore(out).run(reports[0].copied[-1])
    assert list(run.metrics["spectral"].arrays["ritz_values"]) == [3.0, 2.0, 1.0]
    assert sharpkit.store.check_store(out).ok
    # the sources are untouched
    assert _table(a) == before_a
    assert sorted(p.name for p in (b / "runs").iterdir()) == before_b
    # merging again copies nothing: the runs are there already (same ids)
    again = merge_stores(out, [a, b])
    assert [len(r.copied) for r in again] == [0, 0]
    assert [len(r.present) for r in again] == [4, 3]


def test_merge_refuses_itself_and_non_stores(tmp_path: Path) -> None:
    a = tmp_path / "a.zarr"
    _write(ResultStore(a), 0.1, 32)
    with pytest.raises(sharpkit.StoreError, match="into itself"):
        merge_stores(a, [tmp_path / "." / "a.zarr"])
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "x.txt").write_text("x")
    with pytest.raises(sharpkit.StoreError):
        merge_stores(tmp_path / "m.zarr", [tmp_path / "junk"])


def test_cli_merge_reports_and_fails_on_damage(
    tmp_path: Path, two_machines: tuple[Path, Path, str]
) -> None:
    a, b, bad = two_machines
    out = tmp_path / "merged.zarr"
    ok = runner.invoke(app, ["results", str(out), "--merge", str(a)])
    assert ok.exit_code == 0, ok.output
    assert "4 run(s) copied" in ok.stdout
    res = runner.invoke(app, ["results", str(out), "--merge", str(b), "--json"])
    assert res.exit_code == 1  # a damaged run was left behind: say so
    report = json.loads(res.stdout)
    assert len(report[0]["copied"]) == 3
    assert report[0]["damaged"][0][0] == bad
    bad_mix = runner.invoke(app, ["results", str(out), "--merge", str(a), "--check"])
    assert bad_mix.exit_code != 0
    assert "--merge takes only" in bad_mix.output
