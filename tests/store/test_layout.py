"""The store on disk: layout, opening, the key index, gc, and the guarantees (kill
mid-write, concurrent writers) with real processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr
from store_cases import (
    assert_metric_equal,
    assert_probe_equal,
    frobenius,
    interp_result,
    measure_attrs,
    snapshot,
    spectral,
)
from store_processes import concurrent_writers, kill_mid_write

import sharpkit
from sharpkit.errors import RunNotFoundError, SharpkitWarning, StoreError
from sharpkit.store import SCHEMA_VERSION, ResultStore

# ------------------------------------------------------------ layout


def test_new_store_layout_is_plain_zarr_v3(store: ResultStore) -> None:
    rid = store.write_run(
        kind="measure",
        attrs=measure_attrs(),
        metrics={"spectral": spectral()},
        metric_labels={"spectral": {"units": "loss / parameter²"}},
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
    assert m.attrs["units"] == "loss / parameter²"
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


# ------------------------------------------------------------ opening


def test_missing_path_without_create(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no results store at") as info:
        ResultStore(tmp_path / "nope.zarr", create=False)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "nope.zarr").exists()


def test_a_concurrent_creator_wins_the_race(tmp_path: Path) -> None:
    # Two writers open a new location at once: both find no root, one writes it,
    # the other then finds the location non-empty. It must open the winner's
    # store, not call it "not a results store" (seen with 4 writers on S3).
    first = ResultStore(tmp_path / "r.zarr")
    late = object.__new__(ResultStore)  # the loser, between its two looks
    late.__dict__.update(first.__dict__)
    assert late._init_root(create=True) == first._read_root()


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


def test_unreadable_run_is_skipped_with_a_warning(store: ResultStore) -> None:
    good = store.write_run(kind="train", attrs={})
    bad = store.write_run(kind="train", attrs={})
    (store.path / "runs" / bad / "zarr.json").write_text("{not json")
    fresh = ResultStore(store.path)
    with pytest.warns(SharpkitWarning, match="is damaged .*not valid JSON"):
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


@pytest.mark.slow
def test_concurrent_writers_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "shared.zarr"  # created by the writers themselves, concurrently
    concurrent_writers(tmp_path, str(path), writers=4, n=6)
    assert os.listdir(path / "staging") == ["zarr.json"]


@pytest.mark.slow
def test_kill_mid_write_leaves_no_half_run(tmp_path: Path) -> None:
    path = tmp_path / "killed.zarr"
    staging = path / "staging"

    def leftovers() -> set[str]:
        return {e for e in os.listdir(staging) if e != "zarr.json"}

    left = kill_mid_write(tmp_path, str(path), leftovers, reaped_on_write=True)
    store = ResultStore(path, create=False)
    assert sorted(store.gc(max_age=None)) == sorted(left)  # writers dead, reaped
    assert os.listdir(staging) == ["zarr.json"]


def test_public_surface_names_no_internal_type() -> None:
    """The store's public methods take and return public types only, and its
    internal damage error is inside the SharpkitError tree (issue 20)."""
    import inspect

    from sharpkit.store.integrity import Damage

    assert issubclass(Damage, StoreError)
    public = [
        (name, member)
        for name, member in inspect.getmembers(ResultStore)
        if not name.startswith("_") and callable(member)
    ]
    assert {"run", "runs", "records", "write_run", "find_metric"} <= {
        n for n, _ in public
    }
    for name, member in public:
        text = str(inspect.signature(member))
        for internal in ("Manifest", "Damage", "Backend", "zarr."):
            assert internal not in text, (name, text)
