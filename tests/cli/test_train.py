"""`sharpkit train`: options, output, checkpoints, the results store, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import sharpkit
import sharpkit.registry as registry_module
from sharpkit.builtin import _datasets as D
from sharpkit.cli import app
from sharpkit.registry import Registry

runner = CliRunner()

BASE = [
    "train",
    "--model", "mlp-bn",
    "--data", "synthetic",
    "--lr", "0.1",
    "--batch-size", "32",
    "-o", "width=16",
    "-o", "n_train=128",
]  # fmt: skip


@pytest.fixture(autouse=True)
def quiet_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """The installed plugins, without turning another plugin's load warning into
    a test error (pytest runs with filterwarnings=error)."""
    monkeypatch.setattr(registry_module, "_REGISTRY", Registry(warn=False))


def one_line_error(result) -> str:
    assert result.exit_code == 1, (result.exit_code, result.output)
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:")]
    assert len(errors) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return errors[0]


def test_train_json(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = runner.invoke(
        app, [*BASE, "--epochs", "3", "--out", str(out), "--no-store", "--json"]
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["checkpoint"] == str(out / "final.pt")
    assert data["run_id"] is None
    assert data["curves"]["epoch"] == [1, 2, 3]
    assert len(data["curves"]["test_accuracy"]) == 3
    assert data["final"]["epoch"] == 3
    ckpt = sharpkit.load_checkpoint(out / "final.pt")
    assert ckpt.meta.model == "mlp-bn"
    assert ckpt.meta.model_options == {"width": 16}
    assert ckpt.meta.dataset_options == {"n_train": 128}
    assert ckpt.meta.lr == 0.1
    assert ckpt.meta.batch_size == 32
    assert ckpt.meta.final["train_loss"] == pytest.approx(data["final"]["train_loss"])


def test_train_table_default_out_dir_and_resume(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, [*BASE, "--epochs", "2", "--no-store"])
    assert result.exit_code == 0, result.output
    out = Path("runs") / "mlp-bn_synthetic_lr0.1_bs32_seed0"
    assert f"checkpoint: {out / 'final.pt'}" in result.stdout
    assert "train acc" in result.stdout
    assert (out / "last.pt").is_file()
    # Running it again would overwrite the run: refused, with what to do.
    line = one_line_error(runner.invoke(app, [*BASE, "--epochs", "2", "--no-store"]))
    assert "--resume" in line
    again = runner.invoke(app, [*BASE, "--epochs", "3", "--resume", "--no-store"])
    assert again.exit_code == 0, again.output
    assert "resumed from epoch 2" in again.stdout
    assert sharpkit.load_checkpoint(out / "final.pt").meta.epoch == 3


def test_train_writes_the_curves_to_the_store(tmp_path: Path) -> None:
    from sharpkit.store import ResultStore

    store = tmp_path / "results.zarr"
    result = runner.invoke(
        app,
        [*BASE, "--epochs", "2", "--out", str(tmp_path / "run"),
         "--store", str(store), "--json", "--schedule", "step:1:0.5"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    run = ResultStore(store).run(data["run_id"])
    assert run.kind == "train"
    assert run.attrs["lr"] == 0.1
    assert run.attrs["batch_size"] == 32
    assert run.attrs["schedule"] == "step:1:0.5"
    np.testing.assert_allclose(run.training["lr"], [0.1, 0.05])
    np.testing.assert_allclose(
        run.training["train_loss"], data["curves"]["train_loss"], rtol=1e-12
    )


def test_scoped_options_reach_model_dataset_and_trainer(tmp_path: Path) -> None:
    result = runner.invoke(
        app,
        ["train", "--model", "mlp-bn", "--data", "synthetic", "--lr", "0.1",
         "--batch-size", "50", "--epochs", "1", "--out", str(tmp_path),
         "-o", "mlp-bn.depth=2", "-o", "synthetic.classes=3", "-o", "n_train=100",
         "-o", "sgd.drop_last=true", "--no-store", "--json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["attrs"]["steps_per_epoch"] == 2
    meta = sharpkit.load_checkpoint(tmp_path / "final.pt").meta
    assert meta.model_options == {"depth": 2}
    assert meta.extra["num_classes"] == 3
    assert meta.extra["trainer_options"]["drop_last"] is True


def test_bad_schedule_is_one_line(tmp_path: Path) -> None:
    line = one_line_error(
        runner.invoke(
            app,
            [
                *BASE,
                "--epochs",
                "1",
                "--schedule",
                "cosine",
                "--out",
                str(tmp_path),
                "--no-store",
            ],
        )
    )
    assert "bad schedule 'cosine'" in line
    assert "every:25:0.5" in line


def test_unknown_option_is_one_line(tmp_path: Path) -> None:
    line = one_line_error(
        runner.invoke(
            app, [*BASE, "--epochs", "1", "-o", "widht=3", "--out", str(tmp_path)]
        )
    )
    assert "'widht'" in line
    assert "width" in line


def test_missing_data_is_one_line(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("SHARPKIT_DATA", raising=False)
    monkeypatch.setattr(D, "DEBIAN_FASHION_MNIST", tmp_path / "none")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    line = one_line_error(
        runner.invoke(
            app,
            [
                "train",
                "--model",
                "mlp-bn",
                "--data",
                "fashion-mnist",
                "--lr",
                "0.1",
                "--batch-size",
                "32",
                "--epochs",
                "1",
                "--data-root",
                str(tmp_path),
                "--out",
                str(tmp_path / "run"),
                "--no-store",
            ],
        )
    )
    assert "dataset 'fashion-mnist' not found" in line
    assert "dataset-fashion-mnist" in line
    assert "--download" in line


def test_required_options_are_named() -> None:
    result = runner.invoke(app, ["train", "--model", "mlp-bn"])
    assert result.exit_code == 2
    assert "--data" in result.output
