"""The zarr results store: layout, round trips, readers without sharpkit, the tidy
table, and the guarantees (kill mid-write, concurrent writers) with real processes."""

from __future__ import annotations

import json
import math
import os
import random
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import sharpkit
from sharpkit.errors import ConfigError, RunNotFoundError, SharpkitWarning, StoreError
from sharpkit.interfaces import MetricResult, ProbeResult
from sharpkit.store import COLUMNS, SCHEMA_VERSION, ResultStore, open_results

# ------------------------------------------------------------ data


def spectral(value: float = 12.5, key: str = "k-spectral") -> MetricResult:
    return MetricResult(
        value=value,
        stderr=None,
        bound=1e-4,
        converged=True,
        hvps=42,
        seconds=1.5,
        arrays={
            "ritz_values": np.array([value, 3.0, 0.5, -0.25]),
            "block": np.arange(6, dtype=np.int64).reshape(2, 3),
        },
        # "value" and "metric" collide with names the store owns: kept apart.
        attrs={"key": key, "method": "lanczos", "value": "mine", "metric": [1, 2]},
        metric="spectral",
    )


def frobenius(value: float = 30.0, key: str = "k-frob") -> MetricResult:
    return MetricResult(
        value=value,
        stderr=0.25,
        converged=None,
        hvps=100,
        seconds=2.0,
        attrs={"key": key, "probes": 64},
        metric="frobenius",
    )


def measure_attrs(lr: float = 0.1, batch: int = 128, **extra) -> dict:
    return {
        "model": "mlp-bn",
        "model_options": {"width": 64},
        "dataset": "fashion-mnist",
        "lr": lr,
        "batch_size": batch,
        "seed": 0,
        "train_seed": 3,
        "epoch": 200,
        "checkpoint_path": f"/ckpt/lr{lr}_s{batch}.pt",
        "checkpoint_sha256": f"sha-{lr}-{batch}",
        "final": {"train_accuracy": 1.0, "test_accuracy": 0.9, "epoch": 200},
        "sharpkit_version": "0.1.0",
        "torch_version": "2.x",
        "command": "sharpkit measure ...",
        **extra,
    }


def interp_result(key: str = "k-interp") -> ProbeResult:
    alpha = np.linspace(-1.0, 2.0, 7)
    return ProbeResult(
        coords={"alpha": alpha},
        arrays={
            "train_loss": (alpha - 0.5) ** 2,
            "test_accuracy": 1.0 - 0.1 * alpha**2,
        },
        summary={"width": 1.25, "flat_region": 0.5},
        attrs={"key": key, "bn_reestimate": True},
        seconds=3.0,
        probe="interpolate",
    )


def plane_result() -> ProbeResult:
    x, y = np.linspace(-1, 1, 3), np.linspace(-1, 1, 4)
    return ProbeResult(
        coords={"x": x, "y": y},
        arrays={"loss": np.add.outer(x**2, y**2)},
        summary={},
        attrs={"key": "k-plane"},
        seconds=None,
        probe="plane",
    )


def curves(epochs: int = 5) -> dict[str, np.ndarray]:
    e = np.arange(1, epochs + 1)
    return {
        "epoch": e,
        "lr": np.full(epochs, 0.1),
        "train_loss": 1.0 / e,
        "train_accuracy": 1.0 - 0.5 / e,
        "test_loss": 1.2 / e,
        "test_accuracy": 0.9 - 0.5 / e,
        "spectral": np.where(e % 2 == 0, 10.0 / e, np.nan),  # tracked every 2 epochs
    }


def assert_metric_equal(a: MetricResult, b: MetricResult) -> None:
    for name in ("value", "stderr", "bound", "converged", "hvps", "seconds", "metric"):
        assert getattr(a, name) == getattr(b, name), name
    assert dict(a.attrs) == dict(b.attrs)
    assert set(a.arrays) == set(b.arrays)
    for k in a.arrays:
        np.testing.assert_array_equal(a.arrays[k], b.arrays[k])  # exact: stored bitwise
        assert a.arrays[k].dtype == b.arrays[k].dtype


def assert_probe_equal(a: ProbeResult, b: ProbeResult) -> None:
    assert list(a.coords) == list(b.coords)
    assert list(a.arrays) == list(b.arrays)
    for k in a.coords:
        np.testing.assert_array_equal(a.coords[k], b.coords[k])
    for k in a.arrays:
        np.testing.assert_array_equal(a.arrays[k], b.arrays[k])
    assert dict(a.summary) == dict(b.summary)
    assert dict(a.attrs) == dict(b.attrs)
    assert a.seconds == b.seconds
    assert a.probe == b.probe


def snapshot(root: Path) -> dict[str, tuple[bytes | None, float]]:
    """Every path under root with its bytes and mtime: to prove nothing changed."""
    out: dict[str, tuple[bytes | None, float]] = {
        str(root): (None, root.stat().st_mtime)
    }
    for p in sorted(root.rglob("*")):
        out[str(p)] = (p.read_bytes() if p.is_file() else None, p.stat().st_mtime)
    return out


@pytest.fixture
def store(tmp_path: Path) -> ResultStore:
    return ResultStore(tmp_path / "results.zarr")


# ------------------------------------------------------------ layout


def test_new_store_layout_is_plain_zarr_v3(store: ResultStore) -> None:
    rid = store.write_run(
        kind="measure", attrs=measure_attrs(), metrics={"spectral": spectral()}
    )
    root = zarr.open_group(store.path, mode="r")
    assert root.metadata.zarr_format == 3
    assert root.attrs["schema_version"] == SCHEMA_VERSION
    assert root.attrs["sharpkit_version"] == sharpkit.__version__
    runs = root["runs"]
    assert [name for name, _ in runs.groups()] == [rid]
    run = runs[rid]
    assert run.attrs["complete"] is True
    assert run.attrs["kind"] == "measure"
    assert run.attrs["run_id"] == rid
    assert run.attrs["model_options"] == {"width": 64}
    m = run["metrics/spectral"]
    assert m.attrs["value"] == 12.5
    assert m.attrs["hvps"] == 42
    assert m.attrs["key"] == "k-spectral"
    assert m.attrs["unit"] == "loss / parameter²"
    ritz = m["ritz_values"]
    assert ritz.metadata.dimension_names == ("ritz_values_index",)
    assert "long_name" in ritz.attrs
    np.testing.assert_array_equal(ritz[...], [12.5, 3.0, 0.5, -0.25])
    assert m["block"].metadata.dimension_names == ("block_dim_0", "block_dim_1")


def test_run_ids_sort_by_time_and_are_unique(store: ResultStore) -> None:
    ids = [store.write_run(kind="train", attrs={"i": i}) for i in range(5)]
    assert ids == sorted(ids)
    assert len(set(ids)) == 5
    assert [r.attrs["i"] for r in store.runs()] == list(range(5))


def test_staging_leftover_is_invisible_to_plain_zarr_listing(
    store: ResultStore,
) -> None:
    rid = store.write_run(kind="train", attrs={})
    # a killed writer's leftover: a directory without metadata
    (store.path / "staging" / "x.otherhost.1").mkdir()
    (store.path / "staging" / "x.otherhost.1" / "junk").write_bytes(b"x")
    runs = zarr.open_group(store.path, mode="r")["runs"]
    assert [name for name, _ in runs.groups()] == [rid]  # no warning (warnings=error)
    assert [r.run_id for r in store.runs()] == [rid]


# ------------------------------------------------------------ round trips


def test_measure_run_round_trip(store: ResultStore) -> None:
    m = {"spectral": spectral(), "frobenius": frobenius()}
    rid = store.write_run(kind="measure", attrs=measure_attrs(), metrics=m)
    run = store.run(rid)
    assert run.kind == "measure"
    assert list(run.metrics) == ["spectral", "frobenius"]  # order kept
    for name in m:
        assert_metric_equal(run.metrics[name], m[name])
    assert run.attrs["lr"] == 0.1
    assert run.attrs["final"] == {
        "train_accuracy": 1.0,
        "test_accuracy": 0.9,
        "epoch": 200,
    }


def test_probe_run_round_trip(store: ResultStore) -> None:
    probes = {"interpolate": interp_result(), "plane": plane_result()}
    rid = store.write_run(kind="probe", attrs={"lr": [0.1, 0.01]}, probes=probes)
    run = store.run(rid)
    for name in probes:
        assert_probe_equal(run.probes[name], probes[name])


def test_training_round_trip_keeps_nan_and_dtypes(store: ResultStore) -> None:
    c = curves()
    rid = store.write_run(kind="train", attrs={"lr": 0.1}, training=c)
    run = store.run(rid)
    assert list(run.training) == list(c)
    for k, v in c.items():
        np.testing.assert_array_equal(run.training[k], v)  # NaN == NaN here
        assert run.training[k].dtype == v.dtype


def test_non_finite_scalars_stored_as_null(store: ResultStore) -> None:
    r = MetricResult(value=math.inf, stderr=math.nan, attrs={"x": math.nan})
    rid = store.write_run(kind="measure", attrs={"lr": math.nan}, metrics={"m": r})
    doc = json.loads(
        (store.path / "runs" / rid / "metrics" / "m" / "zarr.json").read_text()
    )
    assert doc["attributes"]["value"] is None
    assert doc["attributes"]["stderr"] is None
    back = store.run(rid).metrics["m"]
    assert math.isnan(back.value)
    assert back.stderr is None
    assert back.attrs == {"x": None}
    assert store.run(rid).attrs["lr"] is None


def test_zero_dim_and_empty_arrays(store: ResultStore) -> None:
    r = MetricResult(
        value=1.0, arrays={"scalar": np.float64(2.5), "empty": np.zeros((0,))}
    )
    rid = store.write_run(kind="measure", attrs={}, metrics={"m": r})
    back = store.run(rid).metrics["m"]
    assert back.arrays["scalar"].shape == ()
    assert float(back.arrays["scalar"]) == 2.5
    assert back.arrays["empty"].shape == (0,)


def test_declared_array_dims_are_used(store: ResultStore) -> None:
    grid = np.linspace(0, 1, 5)
    r = MetricResult(
        value=1.0,
        arrays={"grid": grid, "density": grid**2},
        attrs={"array_dims": {"grid": ["grid"], "density": ["grid"]}},
    )
    rid = store.write_run(kind="measure", attrs={}, metrics={"density": r})
    g = zarr.open_group(store.path / "runs" / rid / "metrics" / "density", mode="r")
    assert g["density"].metadata.dimension_names == ("grid",)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**62), 2**62)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=8,
)
# attribute names include the ones the store owns, to exercise the renaming
attr_names = st.sampled_from(["value", "metric", "key", "result_attrs", "unit"]) | (
    st.text(max_size=10)
)
numeric_arrays = hnp.arrays(
    dtype=st.sampled_from([np.float64, np.float32, np.int64, np.int8, np.bool_]),
    shape=hnp.array_shapes(min_dims=0, max_dims=2, min_side=0, max_side=4),
)


@settings(max_examples=30, deadline=None)
@given(
    attrs=st.dictionaries(attr_names, json_values, max_size=5),
    arrays=st.dictionaries(
        st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True),
        numeric_arrays,
        max_size=3,
    ),
    value=st.floats(allow_nan=False, allow_infinity=False),
)
def test_any_metric_round_trips(attrs, arrays, value) -> None:
    result = MetricResult(value=value, arrays=arrays, attrs=attrs, metric="m")
    with tempfile.TemporaryDirectory() as tmp:
        store = ResultStore(Path(tmp) / "s.zarr")
        rid = store.write_run(kind="measure", attrs={"a": attrs}, metrics={"m": result})
        back = store.run(rid)
        assert back.attrs["a"] == attrs
        assert_metric_equal(back.metrics["m"], result)


# ------------------------------------------------------------ xarray


def test_xarray_reads_training_with_labelled_epoch(store: ResultStore) -> None:
    xr = pytest.importorskip("xarray")
    rid = store.write_run(kind="train", attrs={}, training=curves())
    ds = xr.open_zarr(store.path, group=f"runs/{rid}/training", consolidated=False)
    assert dict(ds.sizes) == {"epoch": 5}
    assert "epoch" in ds.coords
    np.testing.assert_array_equal(ds["epoch"].values, np.arange(1, 6))
    assert ds["train_loss"].dims == ("epoch",)
    # fill_value must not mask real values: epoch 0-based or losses equal to 0
    np.testing.assert_array_equal(ds["spectral"].values, curves()["spectral"])
    assert ds["train_loss"].attrs["long_name"] == "training loss"


def test_xarray_reads_probes_on_their_grid(store: ResultStore) -> None:
    xr = pytest.importorskip("xarray")
    rid = store.write_run(
        kind="probe",
        attrs={},
        probes={"interpolate": interp_result(), "plane": plane_result()},
    )
    line = xr.open_zarr(
        store.path, group=f"runs/{rid}/probes/interpolate", consolidated=False
    )
    assert line["train_loss"].dims == ("alpha",)
    np.testing.assert_allclose(line["alpha"].values, np.linspace(-1, 2, 7), rtol=0)
    assert line.attrs["summary"] == {"width": 1.25, "flat_region": 0.5}
    plane = xr.open_zarr(
        store.path, group=f"runs/{rid}/probes/plane", consolidated=False
    )
    assert plane["loss"].dims == ("x", "y")
    assert dict(plane.sizes) == {"x": 3, "y": 4}
    # label-based selection works: loss at x=1, y=-1 is 1 + 1
    assert float(plane["loss"].sel(x=1.0, y=-1.0)) == 2.0


def test_xarray_reads_metric_arrays(store: ResultStore) -> None:
    xr = pytest.importorskip("xarray")
    rid = store.write_run(kind="measure", attrs={}, metrics={"spectral": spectral()})
    ds = xr.open_zarr(
        store.path, group=f"runs/{rid}/metrics/spectral", consolidated=False
    )
    assert ds["ritz_values"].dims == ("ritz_values_index",)
    assert ds.attrs["value"] == 12.5


# ------------------------------------------------------------ opening


def test_missing_path_without_create(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no results store at") as info:
        ResultStore(tmp_path / "nope.zarr", create=False)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "nope.zarr").exists()


def test_empty_directory(tmp_path: Path) -> None:
    d = tmp_path / "empty"
    d.mkdir()
    with pytest.raises(StoreError, match="empty"):
        ResultStore(d, create=False)
    assert list(d.iterdir()) == []
    ResultStore(d)  # an empty directory becomes a store
    assert zarr.open_group(d, mode="r").attrs["schema_version"] == SCHEMA_VERSION


def test_a_file_is_not_a_store(tmp_path: Path) -> None:
    f = tmp_path / "results.zarr"
    f.write_bytes(b"hello")
    with pytest.raises(StoreError, match="is a file"):
        ResultStore(f)
    assert f.read_bytes() == b"hello"


def test_random_directory_is_left_alone(tmp_path: Path) -> None:
    d = tmp_path / "photos"
    (d / "sub").mkdir(parents=True)
    (d / "a.jpg").write_bytes(b"\xff\xd8")
    (d / "sub" / "b.txt").write_text("keep me")
    before = snapshot(d)
    with pytest.raises(StoreError, match="not a sharpkit results store") as info:
        ResultStore(d)
    assert "\n" not in str(info.value)
    assert snapshot(d) == before


def test_zarr_v2_store_is_left_alone(tmp_path: Path) -> None:
    d = tmp_path / "old.zarr"
    g = zarr.open_group(d, mode="w", zarr_format=2)
    g.create_array("x", shape=(3,), dtype="f8")[...] = 1.0
    before = snapshot(d)
    with pytest.raises(StoreError, match="zarr v2"):
        ResultStore(d)
    assert snapshot(d) == before


def test_foreign_zarr_v3_store_is_left_alone(tmp_path: Path) -> None:
    d = tmp_path / "other.zarr"
    g = zarr.open_group(d, mode="w", attributes={"owner": "someone else"})
    g.create_array("x", shape=(3,), dtype="f8")[...] = 1.0
    before = snapshot(d)
    with pytest.raises(StoreError, match="not a sharpkit results store"):
        ResultStore(d)
    assert snapshot(d) == before


def test_zarr_array_at_root_is_not_a_store(tmp_path: Path) -> None:
    d = tmp_path / "arr.zarr"
    zarr.create_array(d, shape=(2,), dtype="i4")
    with pytest.raises(StoreError, match="zarr array"):
        ResultStore(d)


def test_newer_schema_is_refused(store: ResultStore) -> None:
    meta = store.path / "zarr.json"
    doc = json.loads(meta.read_text())
    doc["attributes"]["schema_version"] = SCHEMA_VERSION + 1
    meta.write_text(json.dumps(doc))
    with pytest.raises(StoreError, match="newer sharpkit") as info:
        ResultStore(store.path)
    assert "upgrade" in str(info.value)
    assert "\n" not in str(info.value)


def test_run_not_found(store: ResultStore) -> None:
    with pytest.raises(RunNotFoundError, match="no run 'nope'"):
        store.run("nope")
    with pytest.raises(KeyError):  # RunNotFoundError is a KeyError too
        store.run("../runs")
    assert "nope" not in store


# ------------------------------------------------------------ bad input


def test_bad_names_and_arrays_write_nothing(store: ResultStore) -> None:
    with pytest.raises(StoreError, match="cannot be stored"):
        store.write_run(
            kind="measure", attrs={}, metrics={"a/b": MetricResult(value=1.0)}
        )
    with pytest.raises(StoreError, match="dtype"):
        store.write_run(
            kind="measure",
            attrs={},
            metrics={"m": MetricResult(value=1.0, arrays={"s": np.array(["a", "b"])})},
        )
    with pytest.raises(StoreError, match="run kind"):
        store.write_run(kind="sweep", attrs={})
    with pytest.raises(StoreError, match="both as a coordinate"):
        store.write_run(
            kind="probe",
            attrs={},
            probes={
                "p": ProbeResult(coords={"a": np.ones(2)}, arrays={"a": np.ones(2)})
            },
        )
    assert store.runs() == []
    staging = store.path / "staging"
    assert not staging.exists() or os.listdir(staging) == ["zarr.json"]


def test_store_owned_attrs_cannot_be_overridden(store: ResultStore) -> None:
    rid = store.write_run(
        kind="train", attrs={"kind": "measure", "complete": False, "run_id": "x"}
    )
    attrs = store.run(rid).attrs
    assert (attrs["kind"], attrs["complete"], attrs["run_id"]) == ("train", True, rid)


def test_unreadable_run_is_skipped_with_a_warning(store: ResultStore) -> None:
    good = store.write_run(kind="train", attrs={})
    bad = store.write_run(kind="train", attrs={})
    (store.path / "runs" / bad / "zarr.json").write_text("{not json")
    fresh = ResultStore(store.path)
    with pytest.warns(SharpkitWarning, match="unreadable"):
        ids = [r.run_id for r in fresh.runs()]
    assert ids == [good]


# ------------------------------------------------------------ dedup index


def test_find_metric_and_probe(store: ResultStore) -> None:
    assert store.find_metric("k-spectral") is None
    store.write_run(
        kind="measure",
        attrs=measure_attrs(),
        metrics={"spectral": spectral(), "frobenius": frobenius()},
    )
    store.write_run(kind="probe", attrs={}, probes={"interpolate": interp_result()})
    found = store.find_metric("k-frob")
    assert found is not None
    assert_metric_equal(found, frobenius())
    probe = store.find_probe("k-interp")
    assert probe is not None
    assert_probe_equal(probe, interp_result())
    assert store.find_metric("k-interp") is None
    assert store.find_probe("k-frob") is None


def test_find_sees_runs_written_by_another_writer(store: ResultStore) -> None:
    store.write_run(kind="measure", attrs={}, metrics={"spectral": spectral(key="a")})
    assert store.find_metric("a") is not None  # index built
    other = ResultStore(store.path)  # stands in for another process
    other.write_run(kind="measure", attrs={}, metrics={"spectral": spectral(key="b")})
    assert store.find_metric("b") is not None  # a miss refreshes the index


def test_find_returns_the_newest_of_equal_keys(store: ResultStore) -> None:
    store.write_run(kind="measure", attrs={}, metrics={"s": spectral(1.0, key="same")})
    store.write_run(kind="measure", attrs={}, metrics={"s": spectral(2.0, key="same")})
    found = ResultStore(store.path).find_metric("same")
    assert found is not None
    assert found.value == 2.0


def test_find_after_a_run_is_deleted(store: ResultStore) -> None:
    import shutil

    rid = store.write_run(kind="measure", attrs={}, metrics={"s": spectral(key="gone")})
    assert store.find_metric("gone") is not None
    shutil.rmtree(store.path / "runs" / rid)
    assert store.find_metric("gone") is None
    assert store.runs() == []


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


# ------------------------------------------------------------ gc


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()  # reaped: the pid is free
    return proc.pid


def test_gc_removes_dead_and_stale_leftovers_only(store: ResultStore) -> None:
    store.write_run(kind="train", attrs={})  # creates staging/
    staging = store.path / "staging"
    host = store._host
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        names = {
            "dead": f"20260101T000000.000000Z-00000001.{host}.{_dead_pid()}",
            "live": f"20260101T000000.000000Z-00000002.{host}.{live.pid}",
            "old_foreign": "20260101T000000.000000Z-00000003.elsewhere.1",
            "new_foreign": "20260101T000000.000000Z-00000004.elsewhere.2",
        }
        for name in names.values():
            (staging / name).mkdir()
            (staging / name / "zarr.json").write_text("{}")
        old = time.time() - 7200
        for p in (
            (staging / names["old_foreign"]),
            staging / names["old_foreign"] / "zarr.json",
            staging / names["live"],
            staging / names["live"] / "zarr.json",
        ):
            os.utime(p, (old, old))
        assert store.gc(max_age=None) == [names["dead"]]
        removed = store.gc()  # default: an hour
        assert removed == [names["old_foreign"]]
        left = sorted(os.listdir(staging))
        assert left == sorted(["zarr.json", names["live"], names["new_foreign"]])
    finally:
        live.kill()
        live.wait()
    assert (store.path / "staging" / "zarr.json").exists()
    assert len(store.runs()) == 1


# ------------------------------------------------------------ processes

WRITER = textwrap.dedent(
    """
    import sys
    import numpy as np
    from sharpkit.interfaces import MetricResult
    from sharpkit.store import ResultStore

    path, tag, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    store = ResultStore(path)
    i = 0
    while count < 0 or i < count:
        arrays = {f"a{j}": np.full(2000, float(i * 100 + j)) for j in range(12)}
        metrics = {
            f"m{k}": MetricResult(
                value=float(i), arrays=arrays, attrs={"key": f"{tag}-{i}-{k}"}
            )
            for k in range(2)
        }
        attrs = {"tag": tag, "i": i}
        rid = store.write_run(kind="measure", attrs=attrs, metrics=metrics)
        print(rid, tag, i, flush=True)
        i += 1
    """
)


def check_run_complete(store: ResultStore, rid: str) -> tuple[str, int]:
    run = store.run(rid)
    tag, i = run.attrs["tag"], run.attrs["i"]
    assert set(run.metrics) == {"m0", "m1"}
    for k in range(2):
        m = run.metrics[f"m{k}"]
        assert m.value == float(i)
        assert m.attrs == {"key": f"{tag}-{i}-{k}"}
        assert set(m.arrays) == {f"a{j}" for j in range(12)}
        for j in range(12):
            np.testing.assert_array_equal(
                m.arrays[f"a{j}"], np.full(2000, float(i * 100 + j))
            )
    return tag, i


@pytest.mark.slow
def test_concurrent_writers_lose_nothing(tmp_path: Path) -> None:
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    path = tmp_path / "shared.zarr"  # created by the writers themselves, concurrently
    n = 6
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(path), f"w{w}", str(n)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for w in range(4)
    ]
    reported = set()
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        reported |= {line.split()[0] for line in out.splitlines()}
    store = ResultStore(path, create=False)
    ids = [r.run_id for r in store.runs()]
    assert len(ids) == 4 * n
    assert set(ids) == reported
    seen = {check_run_complete(store, rid) for rid in ids}
    assert seen == {(f"w{w}", i) for w in range(4) for i in range(n)}
    assert os.listdir(path / "staging") == ["zarr.json"]
    assert len(store.records()) == 2 * 4 * n


@pytest.mark.slow
def test_kill_mid_write_leaves_no_half_run(tmp_path: Path) -> None:
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    path = tmp_path / "killed.zarr"
    rng = random.Random(0)
    reported: set[str] = set()
    leftovers_seen = 0
    previous: list[str] = []
    staging = path / "staging"
    kills = 5
    for attempt in range(kills):
        proc = subprocess.Popen(
            [sys.executable, str(script), str(path), f"k{attempt}", "-1"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        first = proc.stdout.readline()  # it is writing in a loop now
        assert first, proc.stderr.read() if proc.stderr else ""
        reported.add(first.split()[0])
        # the new writer's first write removed the killed writer's leftovers
        assert not [name for name in previous if (staging / name).exists()]
        time.sleep(rng.uniform(0.0, 0.3))
        proc.send_signal(signal.SIGKILL)
        out, _ = proc.communicate(timeout=30)
        reported |= {line.split()[0] for line in out.splitlines() if line.strip()}
        previous = [e for e in os.listdir(staging) if e != "zarr.json"]
        leftovers_seen += len(previous)
        # every run listed now is complete, and no reported run was lost
        store = ResultStore(path, create=False)
        ids = {r.run_id for r in store.runs()}
        assert reported <= ids
        # at most one run per kill can be complete on disk but not yet reported
        assert len(ids - reported) <= attempt + 1
        for rid in ids:
            check_run_complete(store, rid)
    # a SIGKILL during a write leaves its staging entry behind, and nothing else
    assert leftovers_seen >= 1, "no kill landed mid-write; the test proved nothing"
    store = ResultStore(path, create=False)
    assert sorted(store.gc(max_age=None)) == sorted(previous)  # writers dead, reaped
    assert os.listdir(staging) == ["zarr.json"]
    assert len(store.runs()) >= len(reported)
