"""Sweeps: grid expansion, validation, resumability, process pool and Dask executors."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import sharpkit
from sharpkit.errors import ConfigError
from sharpkit.sweep import SweepConfig, load_sweep, run_sweep

SMALL_SWEEP = Path(__file__).parent / "data" / "small-sweep.toml"
TRAIN = {
    "model": "mlp-bn",
    "model_options": {"depth": 2, "width": 16},
    "data": "synthetic",
    "data_options": {"n_train": 96, "n_test": 48, "shape": "8"},
    "epochs": 2,
    "seed": 0,
}


def config(tmp_path: Path, **train) -> SweepConfig:
    return SweepConfig.from_dict(
        {
            "sweep": {"name": "t", "out": "runs", "store": "results.zarr"},
            "train": {**TRAIN, "lr": [0.05, 0.1], "batch_size": [16, 32], **train},
            "measure": {"metrics": ["fisher-rao"], "samples": 64},
        },
        base=tmp_path,
    )


def test_grid_product_and_zip(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    points = cfg.points()
    assert [(p.train["lr"], p.train["batch_size"]) for p in points] == [
        (0.05, 16),
        (0.05, 32),
        (0.1, 16),
        (0.1, 32),
    ]
    assert points[0].out_dir == tmp_path / "runs" / "lr-0.05_batch_size-16"
    assert points[0].label == "lr=0.05 batch_size=16 seed=0"
    zipped = SweepConfig.from_dict(
        {
            "sweep": {"grid": "zip"},
            "train": {**TRAIN, "lr": [0.1, 0.4], "batch_size": [50, 200]},
        },
        base=tmp_path,
    ).points()
    assert [(p.train["lr"], p.train["batch_size"]) for p in zipped] == [
        (0.1, 50),
        (0.4, 200),
    ]


def test_trainer_axis_and_options_per_trainer(tmp_path: Path) -> None:
    cfg = config(
        tmp_path,
        lr=0.1,
        batch_size=16,
        trainer=["sgd", "sam", "asam"],
        trainer_options={"sam": {"rho": 0.1}, "asam": {"eta": 0.02}},
    )
    points = cfg.points()
    assert [(p.train["trainer"], p.train["trainer_options"]) for p in points] == [
        ("sgd", {}),
        ("sam", {"rho": 0.1}),
        ("asam", {"eta": 0.02}),
    ]
    assert points[1].label == "trainer=sam lr=0.1 batch_size=16 seed=0"
    assert points[1].out_dir == tmp_path / "runs" / "trainer-sam"
    # one table of options still goes to every point
    plain = config(tmp_path, trainer="sam", trainer_options={"rho": 0.2}).points()
    assert {p.train["trainer_options"]["rho"] for p in plain} == {0.2}
    mixed = config(tmp_path, trainer_options={"sam": {"rho": 0.1}, "drop_last": True})
    with pytest.raises(ConfigError, match="one table per trainer"):
        mixed.points()


def test_bad_sweeps_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="did you mean 'epochs'"):
        SweepConfig.from_dict(
            {"train": {**TRAIN, "lr": 0.1, "batch_size": 8, "epoch": 3}}
        )
    with pytest.raises(ConfigError, match="needs 'lr'"):
        SweepConfig.from_dict({"train": dict(TRAIN) | {"batch_size": 8}})
    with pytest.raises(ConfigError, match="unknown sweep section"):
        SweepConfig.from_dict({"trian": {}})
    bad_zip = SweepConfig.from_dict(
        {
            "sweep": {"grid": "zip"},
            "train": {**TRAIN, "lr": [0.1], "batch_size": [1, 2]},
        }
    )
    with pytest.raises(ConfigError, match="same length"):
        bad_zip.points()
    (tmp_path / "s.toml").write_text("[train\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_sweep(tmp_path / "s.toml")
    with pytest.raises(ConfigError, match="not found"):
        load_sweep(tmp_path / "missing.toml")


@pytest.mark.slow
def test_sweep_runs_resumes_and_interpolates(tmp_path: Path) -> None:
    toml = tmp_path / "sweep.toml"
    shutil.copy(SMALL_SWEEP, toml)
    cfg = load_sweep(toml)
    first = run_sweep(cfg)
    assert not first.failures
    assert all(p.trained for p in first.points)
    assert all("fisher-rao" in p.metrics for p in first.points)
    assert "summary" in first.probes[0]
    table = sharpkit.open_results(tmp_path / "results.zarr", as_frame=False)
    measured = [r for r in table if r.get("metric") == "fisher-rao"]
    assert len(measured) == 2
    assert sorted(r["lr_over_batch"] for r in measured) == pytest.approx(
        sorted([0.1 / 16, 0.02 / 48])
    )
    # Run again: nothing is trained or measured again, the results are the same.
    second = run_sweep(cfg)
    assert not any(p.trained for p in second.points)
    assert [p.metrics for p in second.points] == [p.metrics for p in first.points]
    again = sharpkit.open_results(tmp_path / "results.zarr", as_frame=False)
    assert len([r for r in again if r.get("metric") == "fisher-rao"]) == 2


@pytest.mark.slow
def test_failed_point_is_reported_and_others_continue(tmp_path: Path) -> None:
    cfg = SweepConfig.from_dict(
        {
            "sweep": {"out": "runs", "store": "results.zarr"},
            "train": {**TRAIN, "lr": [0.1, -1.0], "batch_size": 16},
        },
        base=tmp_path,
    )
    result = run_sweep(cfg)
    assert len(result.failures) == 1
    assert "lr must be positive" in (result.failures[0].error or "")
    assert result.points[0].checkpoint is not None


@pytest.mark.slow
@pytest.mark.distributed
def test_process_pool_and_dask_local_cluster(tmp_path: Path) -> None:
    pool = run_sweep(config(tmp_path / "pool", epochs=1), jobs=2)
    assert not pool.failures
    dask = run_sweep(config(tmp_path / "dask", epochs=1), jobs=2, scheduler="dask")
    assert not dask.failures
    # same seeds, same data: the executors agree exactly
    assert [p.metrics for p in dask.points] == [p.metrics for p in pool.points]
