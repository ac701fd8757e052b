"""The store on object storage, against a real S3-compatible server (moto, localhost).

The same guarantees as the local store (a run is visible only when complete,
killed and concurrent writers lose nothing, dedupe by key), reached without a
rename: a run's group document, which carries the manifest, is its last object.
Everything written is read back with plain zarr too.
"""

from __future__ import annotations

import hashlib
import json
import socket
from pathlib import Path

import numpy as np
import pytest
import zarr
from store_cases import (
    assert_metric_equal,
    assert_probe_equal,
    curves,
    frobenius,
    interp_result,
    measure_attrs,
    spectral,
)
from store_processes import concurrent_writers, kill_mid_write
from typer.testing import CliRunner

from sharpkit.cli import app
from sharpkit.errors import ConfigError, SharpkitWarning, StoreError
from sharpkit.store import ResultStore, check_store, repair_store
from sharpkit.store.objects import location_of

runner = CliRunner()


def _bucket_key(url: str) -> tuple[str, str]:
    rest = url.removeprefix("s3://")
    bucket, _, prefix = rest.partition("/")
    return bucket, prefix


def _keys(s3_server, url: str, under: str = "") -> list[str]:  # type: ignore[no-untyped-def]
    bucket, prefix = _bucket_key(url)
    pages = s3_server.client().get_paginator("list_objects_v2")
    out = []
    for page in pages.paginate(Bucket=bucket, Prefix=f"{prefix}/{under}"):
        out += [o["Key"][len(prefix) + 1 :] for o in page.get("Contents", [])]
    return sorted(out)


def _plain_zarr(url: str) -> zarr.Group:
    from obstore.store import from_url
    from zarr.storage import ObjectStore

    return zarr.open_group(ObjectStore(from_url(url), read_only=True), mode="r")


def _orphans(s3_server, url: str) -> set[str]:  # type: ignore[no-untyped-def]
    """Run prefixes without their group document: what a killed writer leaves."""
    keys = _keys(s3_server, url, "runs/")
    runs = {k.split("/")[1] for k in keys if k.count("/") >= 2}
    return {r for r in runs if f"runs/{r}/zarr.json" not in keys}


# ------------------------------------------------------------ layout and reading


def test_s3_store_round_trip_and_plain_zarr(s3_url: str) -> None:
    store = ResultStore(s3_url)
    assert not store.is_local
    assert store.location == s3_url
    rid = store.write_run(
        kind="measure",
        attrs=measure_attrs(),
        metrics={"spectral": spectral(), "frobenius": frobenius()},
        metric_labels={"spectral": {"units": "loss / parameter²"}},
    )
    pid = store.write_run(
        kind="probe", attrs={}, probes={"interpolate": interp_result()}
    )
    tid = store.write_run(kind="train", attrs={"lr": 0.1}, training=curves())
    fresh = ResultStore(s3_url, create=False)
    assert [r.run_id for r in fresh.runs()] == [rid, pid, tid]
    run = fresh.run(rid)
    assert_metric_equal(run.metrics["spectral"], spectral())
    assert "manifest" not in run.attrs
    found = fresh.find_probe("k-interp")
    assert found is not None
    assert_probe_equal(found, interp_result())
    units = {r["metric"]: r["unit"] for r in fresh.records(kind="measure")}
    assert units == {"spectral": "loss / parameter²", "frobenius": None}
    # plain zarr (zarr.storage.ObjectStore) reads the same hierarchy
    root = _plain_zarr(s3_url)
    assert root.attrs["schema_version"] == 1
    assert sorted(n for n, _ in root["runs"].groups()) == [rid, pid, tid]
    ritz = root[f"runs/{rid}/metrics/spectral/ritz_values"]
    np.testing.assert_array_equal(ritz[...], spectral().arrays["ritz_values"])
    np.testing.assert_array_equal(
        root[f"runs/{tid}/training/spectral"][...], curves()["spectral"]
    )
    # the manifest names every object of the run but its own document
    manifest = root[f"runs/{rid}"].attrs["manifest"]
    run_keys = [k.split("/", 2)[2] for k in _keys_of(s3_url, f"runs/{rid}/")]
    assert sorted(manifest["objects"]) == sorted(
        k for k in run_keys if k != "zarr.json"
    )


def _keys_of(url: str, under: str) -> list[str]:
    from sharpkit.store.objects import open_backend

    return [o.key for o in open_backend(url).walk(under)]


def test_s3_dedupe_sees_other_writers(s3_url: str) -> None:
    a = ResultStore(s3_url)
    a.write_run(kind="measure", attrs={}, metrics={"s": spectral(1.0, key="one")})
    assert a.find_metric("one") is not None
    b = ResultStore(s3_url)  # another process, as far as the store can tell
    b.write_run(kind="measure", attrs={}, metrics={"s": spectral(2.0, key="two")})
    found = a.find_metric("two")  # a miss refreshes the listing
    assert found is not None
    assert found.value == 2.0


def test_s3_opening_is_safe(s3_server, s3_url: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(StoreError, match="no results store") as info:
        ResultStore(s3_url, create=False)
    assert "\n" not in str(info.value)
    first = ResultStore(s3_url)
    created = _plain_zarr(s3_url).attrs["created"]
    ResultStore(s3_url)  # a second creator opens the first one's store
    assert _plain_zarr(s3_url).attrs["created"] == created
    # a prefix holding something else is left alone
    bucket, _ = _bucket_key(s3_url)
    s3_server.client().put_object(Bucket=bucket, Key="photos/a.jpg", Body=b"\xff")
    with pytest.raises(StoreError, match="not a sharpkit results store"):
        ResultStore(f"s3://{bucket}/photos")
    assert _keys(s3_server, f"s3://{bucket}/photos") == ["a.jpg"]
    assert first.runs() == []


def test_s3_bad_locations_are_one_line(
    s3_server,
    monkeypatch: pytest.MonkeyPatch,  # type: ignore[no-untyped-def]
) -> None:
    for key, value in s3_server.env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(StoreError, match="bucket does not exist") as info:
        ResultStore("s3://no-such-bucket/results.zarr")
    assert "\n" not in str(info.value)
    with socket.socket() as sock:  # a port where nothing listens
        sock.bind(("127.0.0.1", 0))
        dead = sock.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{dead}")
    monkeypatch.setenv("SHARPKIT_STORE_TIMEOUT", "2")
    with pytest.raises(StoreError, match="cannot read") as info:
        ResultStore("s3://anything/results.zarr")
    assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="cannot keep results at a ftp:// URL"):
        ResultStore("ftp://host/results.zarr")
    with pytest.raises(ConfigError, match="names no bucket"):
        ResultStore("s3://")


def test_urls_survive_pathlib() -> None:
    # typer options typed as Path turn s3://b/x into s3:/b/x; the store restores it
    assert (
        location_of(Path("s3://bucket/a/results.zarr")) == "s3://bucket/a/results.zarr"
    )
    assert location_of("gs://bucket/x/") == "gs://bucket/x"
    assert location_of("file:///tmp/x.zarr") == Path("/tmp/x.zarr")
    assert location_of(Path("relative/s3:/x")) == Path("relative/s3:/x")


# ------------------------------------------------------------ the commit protocol


def test_s3_run_without_its_manifest_is_invisible_and_collected(
    s3_server,
    s3_url: str,  # type: ignore[no-untyped-def]
) -> None:
    store = ResultStore(s3_url)
    rid = store.write_run(kind="measure", attrs={}, metrics={"s": spectral()})
    # a killed writer: its objects landed, its group document (the manifest) not
    bucket, prefix = _bucket_key(s3_url)
    client = s3_server.client()
    for key in ("metrics/zarr.json", "metrics/s/zarr.json", "metrics/s/block/c/0/0"):
        client.put_object(
            Bucket=bucket,
            Key=f"{prefix}/runs/20990101T000000.000000Z-0000dead/{key}",
            Body=b"{}",
        )
    fresh = ResultStore(s3_url, create=False)
    assert [r.run_id for r in fresh.runs()] == [rid]  # no warning: not a run yet
    report = check_store(s3_url)
    assert report.ok
    assert report.unfinished == ("runs/20990101T000000.000000Z-0000dead",)
    assert fresh.gc() == []  # an hour has not passed: it may be being written
    assert fresh.gc(max_age=0) == ["20990101T000000.000000Z-0000dead"]
    assert _orphans(s3_server, s3_url) == set()
    assert [r.run_id for r in ResultStore(s3_url).runs()] == [rid]


@pytest.mark.slow
def test_s3_concurrent_writers_lose_nothing(tmp_path: Path, s3_url: str) -> None:
    concurrent_writers(tmp_path, s3_url, writers=3, n=4)
    assert check_store(s3_url).ok


@pytest.mark.slow
def test_s3_kill_mid_write_leaves_no_half_run(
    tmp_path: Path,
    s3_server,
    s3_url: str,  # type: ignore[no-untyped-def]
) -> None:
    left = kill_mid_write(
        tmp_path, s3_url, lambda: _orphans(s3_server, s3_url), reaped_on_write=False
    )
    store = ResultStore(s3_url, create=False)
    before = {r.run_id for r in store.runs()}
    assert set(store.gc(max_age=0)) == left  # every writer is dead now
    assert _orphans(s3_server, s3_url) == set()
    assert {r.run_id for r in ResultStore(s3_url).runs()} == before
    assert check_store(s3_url).ok


# ------------------------------------------------------------ damage and the CLI


def test_s3_damaged_chunk_is_never_reused_and_repaired(
    s3_server,
    s3_url: str,  # type: ignore[no-untyped-def]
) -> None:
    store = ResultStore(s3_url)
    bad = store.write_run(kind="measure", attrs={}, metrics={"s": spectral(key="k")})
    bucket, prefix = _bucket_key(s3_url)
    key = f"{prefix}/runs/{bad}/metrics/s/ritz_values/c/0"
    s3_server.client().put_object(Bucket=bucket, Key=key, Body=b"garbage")
    fresh = ResultStore(s3_url)
    with pytest.warns(SharpkitWarning, match="is damaged .*ritz_values/c/0"):
        assert fresh.find_metric("k") is None
    result = runner.invoke(app, ["results", s3_url, "--check"])
    assert result.exit_code == 1
    assert f"damaged run {bad}" in result.stdout
    assert "--repair" in result.stderr
    fixed = repair_store(s3_url)
    assert fixed.ok
    assert fixed.intact == 0
    assert any("moved damaged run" in a for a in fixed.actions)
    assert _keys(s3_server, s3_url, f"damaged/{bad}/metrics/s/ritz_values/c/0")
    assert ResultStore(s3_url).runs() == []


def test_s3_results_cli(s3_url: str) -> None:
    store = ResultStore(s3_url)
    store.write_run(kind="measure", attrs=measure_attrs(), metrics={"s": spectral()})
    result = runner.invoke(app, ["results", s3_url, "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [(r["metric"], r["value"]) for r in rows] == [("s", 12.5)]
    ok = runner.invoke(app, ["results", s3_url, "--check"])
    assert ok.exit_code == 0, ok.output
    assert "ok: 1 intact run(s), 0 damaged" in ok.stdout


def test_measure_stores_to_and_reuses_from_s3(s3_url: str, tmp_path: Path) -> None:
    import sharpkit
    import sharpkit.builtin._models as models

    net = models.build_mlp_bn(input_shape=(16,), num_classes=4, depth=1, width=4)
    meta = sharpkit.CheckpointMeta(
        model="mlp-bn",
        model_options={"depth": 1, "width": 4},
        dataset="synthetic",
        dataset_options={"subset": 64},
        seed=0,
    )
    ckpt = sharpkit.save_checkpoint(tmp_path / "a.pt", net, meta)
    args = ["measure", str(ckpt), "-m", "spectral", "--store", s3_url, "--json"]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    second = runner.invoke(app, args)
    assert second.exit_code == 0, second.output
    a, b = (json.loads(r.stdout)[0]["metrics"]["spectral"] for r in (first, second))
    assert (a["reused"], b["reused"]) == (False, True)
    assert a["value"] == b["value"]
    rows = sharpkit.open_results(s3_url, as_frame=False)
    assert [r["metric"] for r in rows] == ["spectral"]
    assert rows[0]["checkpoint_sha256"] == hashlib.sha256(ckpt.read_bytes()).hexdigest()
