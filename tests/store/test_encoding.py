"""The zarr encoding: round trips of every kind of result, readers without
sharpkit (zarr, xarray), and input the store refuses."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from store_cases import (
    assert_metric_equal,
    assert_probe_equal,
    curves,
    frobenius,
    interp_result,
    measure_attrs,
    plane_result,
    spectral,
)

from sharpkit.errors import StoreError
from sharpkit.interfaces import MetricResult, ProbeResult
from sharpkit.store import ResultStore

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


def test_track_runs_have_a_step_dimension_and_metric_labels(
    store: ResultStore,
) -> None:
    xr = pytest.importorskip("xarray")
    rid = store.write_run(
        kind="track",
        attrs={"metrics": ["spectral"]},
        training={
            "step": np.array([0, 50, 100]),
            "spectral": np.array([3.0, 9.0, 12.0]),
            "spectral_bound": np.array([1e-4, 1e-4, 2e-4]),
            "spectral_hvps": np.array([20.0, 9.0, 8.0]),
            "epoch": np.array([0.0, 0.0, 1.0]),
        },
        metric_labels={"spectral": {"long_name": "λ_max", "units": "loss / p²"}},
    )
    ds = xr.open_zarr(store.path, group=f"runs/{rid}/training", consolidated=False)
    assert dict(ds.sizes) == {"step": 3}
    assert ds["spectral"].dims == ds["epoch"].dims == ("step",)
    np.testing.assert_array_equal(ds["step"].values, [0, 50, 100])
    assert ds["spectral"].attrs["long_name"] == "λ_max"
    assert ds["spectral_bound"].attrs["units"] == "loss / p²"
    assert "units" not in ds["spectral_hvps"].attrs
    assert ds["step"].attrs["long_name"] == "training step"
    info = store.runs(kind="track")[0]
    assert info.training is not None
    assert info.training["metric_labels"] == {
        "spectral": {"long_name": "λ_max", "units": "loss / p²"}
    }
    # train runs keep "epoch" as their dimension
    train = store.write_run(kind="train", attrs={}, training={"epoch": np.arange(2)})
    back = xr.open_zarr(store.path, group=f"runs/{train}/training", consolidated=False)
    assert dict(back.sizes) == {"epoch": 2}


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


# ------------------------------------------------------------ metric labels


def test_metric_labels_round_trip(store: ResultStore) -> None:
    labels = {
        "spectral": {
            "long_name": "largest Hessian eigenvalue λ_max",
            "units": "loss / parameter²",
        },
        # a plugin's metric, whose name and unit the store has never heard of
        "fisher-rao": {"long_name": "Fisher-Rao norm", "units": "nats^(1/2)"},
        "frobenius": {"long_name": "", "units": ""},  # empty labels are left out
        "not-measured": {"units": "s"},  # labels of absent metrics are ignored
    }
    metrics = {
        "spectral": spectral(),
        "fisher-rao": MetricResult(value=0.75, stderr=0.01, metric="fisher-rao"),
        "frobenius": frobenius(),
    }
    rid = store.write_run(
        kind="measure", attrs=measure_attrs(), metrics=metrics, metric_labels=labels
    )
    run = store.run(rid)
    assert run.metric_labels == {
        "spectral": labels["spectral"],
        "fisher-rao": labels["fisher-rao"],
    }
    for name in metrics:  # the labels are not the result's attributes
        assert_metric_equal(run.metrics[name], metrics[name])
    (info,) = store.runs()
    assert info.metrics["fisher-rao"]["long_name"] == "Fisher-Rao norm"
    assert info.metrics["fisher-rao"]["units"] == "nats^(1/2)"
    assert "units" not in info.metrics["frobenius"]
    assert "long_name" not in info.metrics["frobenius"]
    units = {r["metric"]: r["unit"] for r in store.records()}
    assert units == {
        "spectral": "loss / parameter²",
        "fisher-rao": "nats^(1/2)",
        "frobenius": None,
    }
    group = zarr.open_group(store.path / "runs" / rid / "metrics" / "fisher-rao")
    assert group.attrs["units"] == "nats^(1/2)"  # plain zarr (and xarray) see them


def test_a_metrics_own_label_attribute_wins(store: ResultStore) -> None:
    r = MetricResult(value=1.0, attrs={"units": "mine"})
    rid = store.write_run(
        kind="measure",
        attrs={},
        metrics={"m": r},
        metric_labels={"m": {"long_name": "M", "units": "the spec's"}},
    )
    run = store.run(rid)
    assert run.metrics["m"].attrs == {"units": "mine"}
    assert run.metric_labels == {"m": {"long_name": "M", "units": "mine"}}


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
        store.write_run(kind="nonsense", attrs={})  # "sweep" is a kind now (#25)
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


def test_unknown_metric_label_writes_nothing(store: ResultStore) -> None:
    with pytest.raises(StoreError, match="metric label 'unit' of 'm'") as info:
        store.write_run(
            kind="measure",
            attrs={},
            metrics={"m": MetricResult(value=1.0)},
            metric_labels={"m": {"unit": "s"}},
        )
    assert "\n" not in str(info.value)
    assert store.runs() == []
