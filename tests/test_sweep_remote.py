"""Sweeps without a shared disk: checkpoints and results on an object store (moto).

Each grid point trains in a local scratch folder whose checkpoints go to the
object store as they are written (``final.pt`` last), so any worker can resume
or measure any point. Tested in this process, and with a Dask LocalCluster of
two worker processes that is killed with SIGKILL mid-sweep and resumed.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

import sharpkit
from sharpkit.store import check_store
from sharpkit.sweep import SweepConfig, run_sweep

TRAIN = {
    "model": "mlp-bn",
    "model_options": {"depth": 1, "width": 8},
    "data": "synthetic",
    "data_options": {"n_train": 96, "n_test": 32, "shape": "8"},
    "epochs": 2,
    "seed": 0,
}


def remote_config(s3_url: str, base: Path, **train) -> SweepConfig:
    bucket = s3_url.removeprefix("s3://").split("/")[0]
    return SweepConfig.from_dict(
        {
            "sweep": {
                "name": "remote",
                "out": f"s3://{bucket}/sweeps/remote",
                "store": f"s3://{bucket}/results.zarr",
            },
            "train": {**TRAIN, "lr": [0.05, 0.1], "batch_size": 16, **train},
            "measure": {"metrics": ["fisher-rao"], "samples": 32},
        },
        base=base,
    )


def objects(s3_server, bucket: str, prefix: str) -> list[str]:  # type: ignore[no-untyped-def]
    pages = s3_server.client().get_paginator("list_objects_v2")
    out = []
    for page in pages.paginate(Bucket=bucket, Prefix=prefix):
        out += [o["Key"] for o in page.get("Contents", [])]
    return sorted(out)


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This machine's cache of downloaded objects (a worker's local disk)."""
    monkeypatch.setenv("SHARPKIT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_urls_in_a_sweep_file_stay_urls(tmp_path: Path) -> None:
    cfg = remote_config("s3://bkt/x", tmp_path)
    assert cfg.out == "s3://bkt/sweeps/remote"
    assert cfg.store == "s3://bkt/results.zarr"
    assert [p.out_dir for p in cfg.points()] == [
        "s3://bkt/sweeps/remote/lr-0.05",
        "s3://bkt/sweeps/remote/lr-0.1",
    ]


@pytest.mark.slow
def test_sweep_on_an_object_store_needs_no_local_state(
    s3_server,
    s3_url: str,
    cache: Path,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    cfg = remote_config(s3_url, tmp_path)
    cfg = SweepConfig.from_dict(
        {
            "sweep": {"name": "remote", "out": str(cfg.out), "store": str(cfg.store)},
            "train": {**TRAIN, "lr": [0.05, 0.1], "batch_size": 16},
            "measure": {"metrics": ["fisher-rao"], "samples": 32},
            "interpolate": [{"a": {"lr": 0.05}, "b": {"lr": 0.1}, "alpha": "0:1:3"}],
        },
        base=tmp_path,
    )
    first = run_sweep(cfg)
    assert not first.failures, first.failures
    assert all(p.trained for p in first.points)
    assert [p.checkpoint for p in first.points] == [
        f"{p.out_dir}/final.pt" for p in cfg.points()
    ]
    assert "summary" in first.probes[0]
    bucket = s3_url.removeprefix("s3://").split("/")[0]
    keys = objects(s3_server, bucket, "sweeps/remote/lr-0.05/")
    assert keys == [
        f"sweeps/remote/lr-0.05/{name}"
        for name in ("curves.csv", "final.pt")  # last.pt goes once final.pt is up
    ]
    assert not list(tmp_path.glob("runs*"))  # nothing written beside the sweep file
    rows = sharpkit.open_results(str(cfg.store), kind="measure", as_frame=False)
    assert sorted(r["lr"] for r in rows if r["metric"] == "fisher-rao") == [0.05, 0.1]
    # another machine: an empty cache; nothing is trained or measured again
    shutil.rmtree(cache)
    second = run_sweep(cfg)
    assert not any(p.trained for p in second.points)
    assert [p.metrics for p in second.points] == [p.metrics for p in first.points]
    again = sharpkit.open_results(str(cfg.store), kind="measure", as_frame=False)
    assert len([r for r in again if r["metric"] == "fisher-rao"]) == 2
    assert check_store(str(cfg.store)).ok


@pytest.mark.slow
def test_a_point_resumes_from_the_object_stores_last_checkpoint(
    s3_server,
    s3_url: str,
    cache: Path,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    """What a killed worker leaves (last.pt, no final.pt) is where the point goes on."""
    cfg = remote_config(s3_url, tmp_path, lr=0.1, epochs=3)
    (point,) = cfg.points()
    args = {**TRAIN, "lr": 0.1, "batch_size": 16, "epochs": 3}
    whole = sharpkit.train(**args, out_dir=tmp_path / "whole", checkpoint_every=1)
    # the state after epoch 2, nudged so that resuming and retraining differ
    epoch2 = sharpkit.load_checkpoint(tmp_path / "whole" / "epoch-0002.pt")
    state = {k: v.clone() for k, v in epoch2.state_dict.items()}
    first = next(k for k, v in state.items() if v.is_floating_point())
    state[first] += 0.25
    killed = tmp_path / "killed"
    killed.mkdir()
    sharpkit.save_checkpoint(
        killed / "last.pt", state, epoch2.meta, train_state=epoch2.train_state
    )
    bucket = s3_url.removeprefix("s3://").split("/")[0]
    prefix = str(point.out_dir).removeprefix(f"s3://{bucket}/")
    s3_server.client().upload_file(str(killed / "last.pt"), bucket, f"{prefix}/last.pt")
    # what resuming that file on one machine gives
    local = tmp_path / "local"
    local.mkdir()
    shutil.copyfile(killed / "last.pt", local / "last.pt")
    resumed = sharpkit.train(**args, out_dir=local, resume=True)
    (outcome,) = run_sweep(cfg).points
    assert outcome.error is None, outcome.error
    assert outcome.trained
    final = sharpkit.load_checkpoint(cache_path(cache, outcome.checkpoint))
    want = sharpkit.load_checkpoint(resumed.checkpoint)
    other = sharpkit.load_checkpoint(whole.checkpoint)
    for name, value in want.state_dict.items():
        assert torch.equal(final.state_dict[name], value), name  # bit for bit
    assert not torch.equal(final.state_dict[first], other.state_dict[first])
    assert final.meta.epoch == 3


def cache_path(cache: Path, url: object) -> Path:
    from sharpkit.store.transfer import local_copy_of

    path = local_copy_of(str(url))
    assert cache in path.parents
    return path


SWEEP_TOML = textwrap.dedent(
    """
    [sweep]
    name = "cluster"
    out = "s3://{bucket}/sweeps/cluster"
    store = "s3://{bucket}/results.zarr"

    [train]
    model = "mlp-bn"
    model_options = {{ depth = 1, width = 8 }}
    data = "synthetic"
    data_options = {{ n_train = 96, n_test = 32, shape = "8" }}
    epochs = 2
    lr = [0.05, 0.1]
    batch_size = [16, 32]
    seed = 0

    [measure]
    metrics = ["fisher-rao"]
    samples = 32
    """
)


@pytest.mark.slow
@pytest.mark.distributed
def test_dask_workers_share_only_the_object_store_killed_and_resumed(
    s3_server,
    s3_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,  # type: ignore[no-untyped-def]
) -> None:
    pytest.importorskip("distributed")
    bucket = s3_url.removeprefix("s3://").split("/")[0]
    toml = tmp_path / "sweep.toml"
    toml.write_text(SWEEP_TOML.format(bucket=bucket))
    # every process has its own cache: the workers share nothing but the bucket
    monkeypatch.setenv("SHARPKIT_CACHE", str(tmp_path / "cache-first"))
    cli = "from sharpkit.cli import main; main()"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            cli,
            "sweep",
            str(toml),
            "--scheduler",
            "dask",
            "-j",
            "2",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,  # its own process group: the cluster dies with it
    )

    def finished() -> set[str]:
        keys = objects(s3_server, bucket, "sweeps/cluster/")
        return {k.split("/")[2] for k in keys if k.endswith("/final.pt")}

    deadline = time.monotonic() + 240
    while not finished():
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        assert time.monotonic() < deadline, "no point finished in 240 s"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the client, the scheduler and the workers
    proc.wait(timeout=30)
    if proc.stderr is not None:
        proc.stderr.close()
    done_before = finished()
    assert 0 < len(done_before) < 4, done_before  # the kill landed mid-sweep
    # resume on "another machine": a new cluster, an empty cache
    monkeypatch.setenv("SHARPKIT_CACHE", str(tmp_path / "cache-second"))
    cfg = sharpkit.load_sweep(toml)
    result = run_sweep(cfg, jobs=2, scheduler="dask")
    assert not result.failures, [p.error for p in result.failures]
    assert len(result.points) == 4
    for outcome in result.points:
        folder = str(outcome.point.out_dir).rsplit("/", 1)[1]
        # finished points are never trained again; the others are, or resume
        assert outcome.trained == (folder not in done_before), folder
        assert outcome.metrics["fisher-rao"] > 0
    assert finished() == {str(p.out_dir).rsplit("/", 1)[1] for p in cfg.points()}
    rows = sharpkit.open_results(str(cfg.store), kind="measure", as_frame=False)
    assert len(rows) == 4  # one measurement per point: none lost, none twice
    report = check_store(str(cfg.store))
    assert report.ok  # the killed writers left at most unfinished leftovers
    assert report.intact >= 8  # a train run and a measure run per point
