"""The tidy table: rows, columns, filters, open_results."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from store_cases import (
    curves,
    frobenius,
    interp_result,
    make_legacy,
    measure_attrs,
    spectral,
)

from sharpkit.errors import ConfigError, StoreError
from sharpkit.store import COLUMNS, ResultStore, open_results

# ------------------------------------------------------------ tidy table


@pytest.fixture
def filled(store: ResultStore) -> ResultStore:
    for lr, batch in ((0.1, 128), (0.01, 128), (0.1, 1024)):
        store.write_run(
            kind="measure",
            attrs=measure_attrs(lr, batch),
            metrics={
                "spectral": spectral(10.0 * batch / lr / 1000, key=f"s{lr}{batch}"),
                "frobenius": frobenius(key=f"f{lr}{batch}"),
            },
        )
    store.write_run(
        kind="train",
        attrs={
            "model": "mlp-bn",
            "dataset": "fashion-mnist",
            "lr": 0.1,
            "batch_size": 128,
            "seed": 7,
            "epochs": 5,
            "final": {
                "train_accuracy": 0.8,
                "test_accuracy": 0.7,
                "epoch": 5,
                "lr": 0.05,
            },
        },
        training=curves(),
    )
    store.write_run(
        kind="probe",
        attrs={
            "probe": "interpolate",
            "lr": [0.1, 0.01],
            "batch_size": [128, 128],
            "train_seed": [3, 4],
            "checkpoint_path": ["/a.pt", "/b.pt"],
            "checkpoint_sha256": ["sa", "sb"],
            "seed": 0,
        },
        probes={"interpolate": interp_result()},
    )
    return store


def test_records_are_rectangular_and_typed(filled: ResultStore) -> None:
    rows = filled.records()
    assert all(tuple(r) == COLUMNS for r in rows)
    measure = [r for r in rows if r["kind"] == "measure"]
    assert [r["metric"] for r in measure] == ["spectral", "frobenius"] * 3
    first = measure[0]
    assert first["lr"] == 0.1
    assert first["batch_size"] == 128
    assert first["lr_over_batch"] == pytest.approx(0.1 / 128, rel=1e-15)
    assert first["value"] == pytest.approx(12.8)
    assert first["converged"] is True
    assert first["hvps"] == 42
    assert first["test_accuracy"] == 0.9
    assert first["train_accuracy"] == 1.0
    assert first["checkpoint"] == "/ckpt/lr0.1_s128.pt"
    assert first["train_seed"] == 3
    assert first["epoch"] == 200
    assert measure[1]["stderr"] == 0.25
    assert first["unit"] is None  # written without metric_labels


def test_records_train_rows_from_final_epoch(filled: ResultStore) -> None:
    rows = filled.records(kind="train")
    by_metric = {r["metric"]: r for r in rows}
    # attrs["final"] wins over the curves' last values; lr/epoch are not metrics
    assert by_metric["train_accuracy"]["value"] == 0.8
    assert by_metric["test_accuracy"]["value"] == 0.7
    assert by_metric["train_loss"]["value"] == pytest.approx(0.2)  # last curve value
    assert by_metric["spectral"]["value"] is None  # last epoch not tracked (NaN)
    assert "lr" not in by_metric
    assert "epoch" not in by_metric
    assert {r["epoch"] for r in rows} == {5}
    assert {r["train_seed"] for r in rows} == {7}
    assert {r["test_accuracy"] for r in rows} == {0.7}


def test_records_probe_rows_carry_both_models(filled: ResultStore) -> None:
    rows = filled.records(kind="probe")
    assert [r["metric"] for r in rows] == [
        "interpolate.width",
        "interpolate.flat_region",
    ]
    r = rows[0]
    assert (r["lr"], r["lr_b"], r["batch_size"], r["batch_size_b"]) == (
        0.1,
        0.01,
        128,
        128,
    )
    assert r["lr_over_batch_b"] == pytest.approx(0.01 / 128)
    assert (r["checkpoint"], r["checkpoint_b"]) == ("/a.pt", "/b.pt")
    assert (r["train_seed"], r["train_seed_b"]) == (3, 4)
    assert r["value"] == 1.25


def test_unit_column_reads_stores_written_before_units(store: ResultStore) -> None:
    rid = store.write_run(kind="measure", attrs={}, metrics={"spectral": spectral()})
    make_legacy(store.path / "runs" / rid)  # written before manifests, too
    meta = store.path / "runs" / rid / "metrics" / "spectral" / "zarr.json"
    doc = json.loads(meta.read_text())
    doc["attributes"]["unit"] = "loss / parameter²"  # as sharpkit wrote it before
    meta.write_text(json.dumps(doc))
    fresh = ResultStore(store.path)
    assert [r["unit"] for r in fresh.records()] == ["loss / parameter²"]
    assert fresh.run(rid).metric_labels == {"spectral": {"units": "loss / parameter²"}}
    assert fresh.records(["unit=loss*"]) == fresh.records()


@pytest.mark.parametrize(
    ("flt", "expected"),
    [
        (["metric=spectral"], 4),  # 3 measured + the train run's tracked value
        (["metric=spectral", "kind=measure"], 3),
        ({"metric": "spectral", "batch_size": 128, "kind": "measure"}, 2),
        (["metric=spectral", "batch_size>=1000"], 1),
        (["metric=spectral", "lr_over_batch=0.00078125"], 2),  # typed vs computed η/S
        (["metric==spectral", "lr!=0.1"], 1),
        (["metric=interp*"], 2),
        (["converged=true"], 3),
        (["stderr=none", "kind=measure"], 3),
        (["stderr!=none"], 3),
        (["kind=probe", "lr_b<0.05"], 2),
        (["time>=2000-01-01"], 13),
        ({"dataset": None}, 2),
    ],
)
def test_records_filter(filled: ResultStore, flt, expected: int) -> None:
    assert len(filled.records(flt)) == expected


@pytest.mark.parametrize(
    ("flt", "match"),
    [
        (["nope=1"], "unknown column 'nope'"),
        (["lr=fast"], "numeric column"),
        (["converged=maybe"], "yes/no"),
        (["metric"], "column=value"),
    ],
)
def test_records_bad_filter(filled: ResultStore, flt, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        filled.records(flt)


def test_open_results_frame_plots_fig1(filled: ResultStore) -> None:
    pd = pytest.importorskip("pandas")
    df = open_results(filled.path)
    assert isinstance(df, pd.DataFrame)
    assert list(df.columns) == list(COLUMNS)
    assert len(df) == 13
    spec = df[(df.metric == "spectral") & (df.kind == "measure")].sort_values(
        "lr_over_batch"
    )
    # Fig. 1a: λ_max against η/S, one point per (η, S)
    assert spec["lr_over_batch"].tolist() == pytest.approx(
        [0.01 / 128, 0.1 / 1024, 0.1 / 128]
    )
    assert spec["value"].tolist() == pytest.approx([128.0, 102.4, 12.8])
    assert str(df["time"].dtype).startswith("datetime64")
    assert spec["test_accuracy"].notna().all()


def test_open_results_records_and_without_pandas(
    filled: ResultStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = open_results(
        filled.path, filter=["metric=spectral"], kind="measure", as_frame=False
    )
    assert isinstance(rows, list)
    assert len(rows) == 3
    monkeypatch.setitem(sys.modules, "pandas", None)  # makes `import pandas` fail
    rows = open_results(filled.path, kind="measure")
    assert isinstance(rows, list)
    assert len(rows) == 6
    with pytest.raises(ConfigError, match="needs pandas"):
        open_results(filled.path, as_frame=True)


def test_open_results_does_not_create(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no results store"):
        open_results(tmp_path / "missing.zarr")
    assert not (tmp_path / "missing.zarr").exists()


def test_track_runs_give_one_row_per_metric_at_the_last_step(
    store: ResultStore,
) -> None:
    nan = float("nan")
    store.write_run(
        kind="track",
        attrs={"metrics": ["spectral", "trace"], "lr": 0.1, "batch_size": 50},
        training={
            "step": np.array([50, 100]),
            "spectral": np.array([4.0, 5.0]),
            "spectral_stderr": np.array([nan, nan]),
            "spectral_bound": np.array([1e-3, 2e-3]),
            "spectral_hvps": np.array([12.0, 7.0]),
            "spectral_seconds": np.array([0.5, 0.25]),
            "trace": np.array([40.0, 41.0]),
            "trace_stderr": np.array([0.5, 0.4]),
            "trace_hvps": np.array([60.0, 60.0]),
            "epoch": np.array([0.0, 1.0]),
            "train_loss": np.array([0.9, 0.7]),
        },
        metric_labels={"spectral": {"units": "loss / parameter²"}},
    )
    rows = store.records(kind="track")
    assert [(r["metric"], r["value"], r["step"]) for r in rows] == [
        ("spectral", 5.0, 100),
        ("trace", 41.0, 100),
    ]
    spectral, trace = rows
    assert spectral["bound"] == 2e-3
    assert spectral["stderr"] is None
    assert spectral["hvps"] == 7
    assert spectral["seconds"] == 0.25
    assert spectral["unit"] == "loss / parameter²"
    assert trace["unit"] is None
    assert trace["stderr"] == 0.4
    assert trace["bound"] is None  # no such curve
    assert spectral["epoch"] == 1
    assert spectral["train_loss"] == 0.7
    assert spectral["lr_over_batch"] == pytest.approx(0.1 / 50)
    assert store.records(["step>=100", "metric=trace"]) == [trace]
    # runs of other kinds have no step
    store.write_run(kind="train", attrs={}, training=curves())
    assert {r["step"] for r in store.records(kind="train")} == {None}
