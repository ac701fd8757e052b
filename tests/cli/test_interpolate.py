"""``sharpkit interpolate`` and ``sharpkit probe`` on real checkpoint files."""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import sharpkit
import sharpkit.registry
from sharpkit.builtin import probes
from sharpkit.checkpoint import CheckpointMeta, save_checkpoint
from sharpkit.cli import app
from sharpkit.registry import Registry
from sharpkit.store import ResultStore

runner = CliRunner()
MODEL_OPTS = {"depth": 2, "width": 8}


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch) -> Registry:
    """The built-ins these commands need, as the process-wide registry."""
    reg = Registry(entry_points=False, warn=False)
    reg.register_plugin(probes, "builtin.probes")
    reg.register_plugin(
        importlib.import_module("sharpkit.builtin.datasets"), "builtin.datasets"
    )
    reg.register_plugin(
        importlib.import_module("sharpkit.builtin.models"), "builtin.models"
    )
    monkeypatch.setattr(sharpkit.registry, "_REGISTRY", reg)
    return reg


@pytest.fixture
def ckpts(tmp_path: Path, registry: Registry) -> tuple[Path, Path]:
    return make_ckpts(tmp_path, registry)


def make_ckpts(
    tmp_path: Path, registry: Registry, dataset_options: dict[str, Any] | None = None
) -> tuple[Path, Path]:
    paths = []
    for i, (lr, batch) in enumerate([(0.1, 32), (0.02, 256)]):
        net = sharpkit.api.build_model(
            "mlp-bn",
            input_shape=(16,),
            num_classes=4,
            options=MODEL_OPTS,
            seed=i,
            registry=registry,
        )
        meta = CheckpointMeta(
            model="mlp-bn",
            model_options=MODEL_OPTS,
            dataset="synthetic",
            dataset_options=dataset_options or {},
            lr=lr,
            batch_size=batch,
            seed=i,
            extra={"input_shape": [16], "num_classes": 4},
        )
        paths.append(save_checkpoint(tmp_path / f"m{i}.pt", net, meta))
    return paths[0], paths[1]


def one_line_error(result: Any) -> str:
    assert result.exit_code == 1, (result.exit_code, result.output)
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error:")
    return lines[0]


def test_interpolate_json_matches_the_api(
    ckpts: tuple[Path, Path], registry: Registry
) -> None:
    a, b = ckpts
    result = runner.invoke(
        app,
        ["interpolate", str(a), str(b), "--alpha", "-1:2:7", "--no-store", "--json"],
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["probe"] == "interpolate"
    assert data["coords"]["alpha"] == [-1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0]
    assert set(data["arrays"]) == {
        "train_loss",
        "train_accuracy",
        "test_loss",
        "test_accuracy",
    }
    assert data["attrs"]["bn_reestimate"] is True
    assert data["run_id"] is None
    direct = sharpkit.api.interpolate(a, b, alpha="-1:2:7", registry=registry)
    # Same checkpoints, data, seed and options: the CLI is the API, bit for bit.
    np.testing.assert_array_equal(
        data["arrays"]["train_loss"], direct.arrays["train_loss"]
    )
    np.testing.assert_array_equal(
        data["arrays"]["test_accuracy"], direct.arrays["test_accuracy"]
    )
    assert data["summary"]["distance"] == direct.summary["distance"]


def test_interpolate_table_and_readouts(ckpts: tuple[Path, Path]) -> None:
    a, b = ckpts
    result = runner.invoke(
        app,
        [
            "interpolate",
            str(a),
            str(b),
            "--alpha",
            "0:1:3",
            "--no-store",
            "-o",
            "width_delta=0.01",
        ],
    )
    assert result.exit_code == 0, result.output
    out = result.stdout
    for text in (
        "α",
        "train loss",
        "test acc.",
        "width_0",
        "width_1_distance",
        "barrier",
    ):
        assert text in out, text
    assert "m0.pt (α=0) → m1.pt (α=1)" in out


def test_interpolate_options_reach_the_probe(ckpts: tuple[Path, Path]) -> None:
    a, b = ckpts
    result = runner.invoke(
        app,
        [
            "interpolate",
            str(a),
            str(b),
            "--alpha",
            "0,1",
            "--no-bn-reestimate",
            "-o",
            "eval_samples=64",
            "-o",
            "interpolate.test=false",
            "--no-store",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["attrs"]["bn_reestimate"] is False
    assert data["attrs"]["train_samples"] == 64
    assert "test_loss" not in data["arrays"]


def test_interpolate_sample_options_are_the_api(
    ckpts: tuple[Path, Path], registry: Registry
) -> None:
    """--samples/--sample/--sample-seed reach interpolate() as in `probe` (#19)."""
    a, b = ckpts
    args = [
        "interpolate", str(a), str(b), "--alpha", "0,0.5,1", "--no-store",
        "--samples", "48", "--sample", "random", "--sample-seed", "3",
    ]  # fmt: skip
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    attrs = data["attrs"]
    assert (attrs["sample"], attrs["sample_seed"], attrs["samples"]) == (
        "random", 3, 48
    )  # fmt: skip
    direct = sharpkit.api.interpolate(
        a, b, alpha="0,0.5,1", samples=48, sample="random", sample_seed=3,
        registry=registry,
    )  # fmt: skip
    assert attrs["sample_sha256"] == direct.attrs["sample_sha256"]
    # the same 48 drawn examples: the CLI is the API, bit for bit
    np.testing.assert_array_equal(
        data["arrays"]["train_loss"], direct.arrays["train_loss"]
    )
    other = runner.invoke(app, [*args[:-1], "4", "--json"])
    assert json.loads(other.stdout)["attrs"]["sample_sha256"] != attrs["sample_sha256"]
    table = runner.invoke(app, args)  # one note line says the draw
    said = " ".join(table.stderr.split())
    assert "probed on 48 random examples of each split" in said
    assert "seed 3)" in said
    bad = runner.invoke(app, [*args[:6], "--samples", "0"])
    line = one_line_error(bad)
    assert line == "error: --samples must be a positive count or 'all', got '0'"


def test_interpolate_store_reuse_and_force(
    ckpts: tuple[Path, Path], tmp_path: Path
) -> None:
    a, b = ckpts
    store = tmp_path / "r.zarr"
    args = [
        "interpolate",
        str(a),
        str(b),
        "--alpha",
        "0:1:3",
        "--store",
        str(store),
        "--json",
    ]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    assert json.loads(first.stdout)["run_id"]
    second = runner.invoke(app, args)
    assert second.exit_code == 0
    assert json.loads(second.stdout)["arrays"] == json.loads(first.stdout)["arrays"]
    assert len(ResultStore(store).runs(kind="probe")) == 1  # recognised, not recomputed
    runner.invoke(app, [*args, "--force"])
    runs = ResultStore(store).runs(kind="probe")
    assert len(runs) == 2
    assert runs[0].attrs["lr"] == [0.1, 0.02]
    assert runs[0].attrs["batch_size"] == [32, 256]


def test_interpolate_train_data_is_the_training_subset(
    tmp_path: Path, registry: Registry
) -> None:
    """Checkpoints trained on a subset are evaluated on that subset as training data."""
    a, b = make_ckpts(tmp_path, registry, {"subset": 64})
    result = runner.invoke(
        app, ["interpolate", str(a), str(b), "--alpha", "0,1", "--no-store", "--json"]
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["attrs"]["train_samples"] == 64
    assert data["attrs"]["bn_samples"] == 64
    assert data["attrs"]["test_samples"] == 256  # the test split is whole
    ds = sharpkit.api.load_dataset("synthetic", subset=64, seed=0, registry=registry)
    direct = sharpkit.api.interpolate(a, b, ds, alpha="0,1", registry=registry)
    np.testing.assert_array_equal(
        data["arrays"]["train_loss"], direct.arrays["train_loss"]
    )


def test_interpolate_bare_state_dicts_need_model(
    ckpts: tuple[Path, Path], tmp_path: Path
) -> None:
    bare = []
    for i, p in enumerate(ckpts):
        state = sharpkit.load_checkpoint(p).state_dict
        out = tmp_path / f"bare{i}.pt"
        torch.save(dict(state), out)
        bare.append(str(out))
    err = one_line_error(runner.invoke(app, ["interpolate", *bare, "--no-store"]))
    assert "--model" in err
    result = runner.invoke(
        app,
        [
            "interpolate",
            *bare,
            "--model",
            "mlp-bn",
            "--model-option",
            "depth=2",
            "--model-option",
            "width=8",
            "--data",
            "synthetic",
            "--alpha",
            "0,1",
            "--no-store",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.stdout)["arrays"]["train_loss"]) == 2


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--alpha", "2:1:3"], "strictly increasing"),
        (["--alpha", "x"], "option 'alpha'"),
        (["-o", "nonsense=1"], "no option 'nonsense'"),
        (["-o", "eval_samples=many"], "expects int"),
        (["-o", "plane.x=1"], "not selected"),
    ],
)
def test_interpolate_bad_input_one_line(
    ckpts: tuple[Path, Path], extra: list[str], needle: str
) -> None:
    a, b = ckpts
    err = one_line_error(
        runner.invoke(app, ["interpolate", str(a), str(b), "--no-store", *extra])
    )
    assert needle in err


def test_interpolate_missing_checkpoint(
    ckpts: tuple[Path, Path], tmp_path: Path
) -> None:
    err = one_line_error(
        runner.invoke(
            app, ["interpolate", str(ckpts[0]), str(tmp_path / "nope.pt"), "--no-store"]
        )
    )
    assert "nope.pt" in err


# --------------------------------------------------------------------------- probe


def test_probe_direction_table(ckpts: tuple[Path, Path]) -> None:
    result = runner.invoke(
        app, ["probe", "direction", str(ckpts[0]), "-o", "alpha=-1:1:5", "--no-store"]
    )
    assert result.exit_code == 0, result.output
    assert "width_distance" in result.stdout
    assert "direction_norm" in result.stdout


def test_probe_plane_json_and_grid_table(ckpts: tuple[Path, Path]) -> None:
    args = [
        "probe",
        "plane",
        str(ckpts[0]),
        "-o",
        "x=-1:1:3",
        "-o",
        "y=0,1",
        "--no-store",
    ]
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert np.asarray(data["arrays"]["train_loss"]).shape == (2, 3)
    assert data["coords"]["x"] == [-1.0, 0.0, 1.0]
    table = runner.invoke(app, args)
    assert table.exit_code == 0
    assert "y \\ x" in table.stdout
    assert "training loss" in table.stdout


def test_probe_seed_changes_direction(ckpts: tuple[Path, Path]) -> None:
    def run(seed: str) -> list[float]:
        r = runner.invoke(
            app,
            [
                "probe",
                "direction",
                str(ckpts[0]),
                "-o",
                "alpha=1",
                "--seed",
                seed,
                "--no-store",
                "--json",
            ],
        )
        assert r.exit_code == 0, r.output
        return list(json.loads(r.stdout)["arrays"]["train_loss"])

    assert run("1") == run("1")
    assert run("1") != run("2")


def test_probe_errors(ckpts: tuple[Path, Path]) -> None:
    a, b = ckpts
    err = one_line_error(runner.invoke(app, ["probe", "planes", str(a), "--no-store"]))
    assert "did you mean 'plane'" in err
    err = one_line_error(
        runner.invoke(app, ["probe", "direction", str(a), str(b), "--no-store"])
    )
    assert "takes 1 model" in err
