"""The paper's experiment presets as shipped TOML files: nothing changed in the move.

``OLD`` is the Python dict that held the presets before they became files
(sharpkit 0.1, with the quick-scale probe options its loop injected written
out), plus the presets added since; every shipped file must hold the same
values, of the same types, and ``experiment`` must build the same sweep from it.
"""

from __future__ import annotations

import json
import tomllib
from importlib.resources import as_file, files
from pathlib import Path
from typing import Any

import pytest

from sharpkit.reproduce import EXPERIMENTS, FIGURES, SCALES, experiment, preset_text
from sharpkit.sweep import load_sweep

ROOT = Path(__file__).resolve().parents[1]
MEASURE = {"metrics": ["spectral", "frobenius"], "samples": 2048}
SAM_MEASURE = {"metrics": ["spectral", "frobenius", "adaptive"], "samples": 2048}
QUICK_PROBE = {"bn_samples": 2048, "eval_samples": 2000}
FIG2_PAIRS = [
    {"a": {"lr": 0.1, "batch_size": 128}, "b": {"lr": 0.1, "batch_size": 1024}},
    {"a": {"lr": 0.1, "batch_size": 128}, "b": {"lr": 0.01, "batch_size": 128}},
]
FIG3_PAIRS = [
    {"a": {"batch_size": 50}, "b": {"batch_size": 200}},
    {"a": {"batch_size": 50}, "b": {"batch_size": 12}},
]
MLP = {"model": "mlp-bn", "data": "fashion-mnist"}
RESNET = {"model": "resnet-cifar", "data": "cifar10"}
VGG11 = {"model": "vgg-cifar", "model_options": {"depth": 11}, "data": "cifar10"}
FIG4_LR = [0.1, 0.2, 0.316, 0.5, 1.0, 1.2]
FIG4_S = [50, 500, 500, 500, 500, 500]
ZIP = {"grid": "zip"}

OLD: dict[str, dict[str, dict[str, Any]]] = {
    "demo": {
        "quick": {
            "sweep": ZIP,
            "train": {**MLP, "lr": [0.1, 0.02], "batch_size": [32, 512],
                      "epochs": 8, "subset": 20000, "seed": 0},
            "measure": MEASURE,
            "interpolate": [{"a": {"batch_size": 32}, "b": {"batch_size": 512}}],
        },
    },
    "fig1": {
        "quick": {
            "train": {**MLP, "lr": [0.005, 0.02, 0.1], "batch_size": [32, 128, 512],
                      "epochs": 10, "subset": 20000, "seed": 0},
            "measure": MEASURE,
        },
        "paper": {
            "train": {**MLP, "lr": [0.005, 0.01, 0.025, 0.05, 0.1],
                      "batch_size": [25, 50, 100, 250, 500, 1000],
                      "epochs": 200, "seed": 0},
            # changed on purpose (#25): the paper scale measures on all the data
            "measure": {**MEASURE, "samples": "all"},
        },
    },
    "fig2": {
        "quick": {
            "sweep": ZIP,
            "train": {**RESNET, "model_options": {"depth": 20},
                      "lr": [0.1, 0.1, 0.01], "batch_size": [128, 1024, 128],
                      "epochs": 10, "subset": 5000, "augment": True, "seed": 0},
            "interpolate": [{**p, "options": QUICK_PROBE} for p in FIG2_PAIRS],
        },
        "paper": {
            "sweep": ZIP,
            "train": {**RESNET, "model_options": {"depth": 56},
                      "lr": [0.1, 0.1, 0.01], "batch_size": [128, 1024, 128],
                      "epochs": 200, "schedule": "resnet", "augment": True,
                      "seed": 0},
            "interpolate": FIG2_PAIRS,
        },
    },
    "fig3": {
        "quick": {
            "sweep": ZIP,
            "train": {**VGG11, "lr": [0.1, 0.4, 0.025], "batch_size": [50, 200, 12],
                      "epochs": 5, "subset": 5000, "augment": True, "seed": 0},
            "interpolate": [{**p, "options": QUICK_PROBE} for p in FIG3_PAIRS],
        },
        "paper": {
            "sweep": ZIP,
            "train": {**VGG11, "lr": [0.1, 0.4, 0.025], "batch_size": [50, 200, 12],
                      "epochs": 200, "schedule": "vgg", "augment": True, "seed": 0},
            "interpolate": FIG3_PAIRS,
        },
    },
    "fig4": {
        "quick": {
            "sweep": ZIP,
            "train": {**RESNET, "model_options": {"depth": 20}, "lr": FIG4_LR,
                      "batch_size": FIG4_S, "epochs": 10, "subset": 5000,
                      "augment": True, "seed": 0},
        },
        "paper": {
            "sweep": ZIP,
            "train": {**RESNET, "model_options": {"depth": 56}, "lr": FIG4_LR,
                      "batch_size": FIG4_S, "epochs": 200, "schedule": "resnet",
                      "augment": True, "seed": 0},
        },
    },
    # added since (sharpkit 0.2): SGD against SAM at the same η/S
    "sam": {
        "quick": {
            "train": {**MLP, "trainer": ["sgd", "sam"], "lr": [0.02, 0.1],
                      "batch_size": [32, 256], "epochs": 8, "subset": 10000,
                      "seed": 0},
            "measure": SAM_MEASURE,
        },
        "paper": {
            "train": {**MLP, "trainer": ["sgd", "sam"],
                      "lr": [0.005, 0.01, 0.025, 0.05, 0.1],
                      "batch_size": [25, 50, 100, 250, 500, 1000],
                      "epochs": 200, "seed": 0},
            "measure": SAM_MEASURE,
        },
    },
}  # fmt: skip

CASES = [(name, scale) for name in OLD for scale in OLD[name]]


def typed(value: Any) -> str:
    """JSON, so that 1 and 1.0, or True and 1, compare unequal."""
    return json.dumps(value, sort_keys=True, default=str)


def test_the_files_are_the_experiments() -> None:
    assert EXPERIMENTS == ("demo", "fig1", "fig2", "fig3", "fig4", "sam")
    assert {(n, s) for n in SCALES for s in SCALES[n]} == set(CASES)
    assert set(FIGURES) == set(EXPERIMENTS)
    assert FIGURES["demo"] == ("fig1", "fig2")
    assert all(FIGURES[n] == (n,) for n in EXPERIMENTS if n != "demo")


@pytest.mark.parametrize(("name", "scale"), CASES)
def test_each_file_holds_the_preset_it_replaced(name: str, scale: str) -> None:
    data = tomllib.loads(preset_text(name, scale=scale))
    head = data.pop("sweep")
    old = dict(OLD[name][scale])
    assert head == {
        "name": f"{name}-{scale}",
        "out": "runs",
        "store": "results.zarr",
        **old.pop("sweep", {}),
    }
    assert typed(data) == typed(old)


@pytest.mark.parametrize(("name", "scale"), CASES)
@pytest.mark.parametrize("epochs", [None, 1])
def test_experiment_builds_the_sweep_it_built_before(
    name: str, scale: str, epochs: int | None, tmp_path: Path
) -> None:
    cfg = experiment(name, scale=scale, out=tmp_path, epochs=epochs)
    old = OLD[name][scale]
    train = {**old["train"], **({} if epochs is None else {"epochs": epochs})}
    assert cfg.name == f"{name}-{scale}"
    assert cfg.out == tmp_path / "runs"
    assert cfg.store == tmp_path / "results.zarr"
    assert cfg.grid == old.get("sweep", {}).get("grid", "product")
    assert typed(cfg.train) == typed(train)
    assert typed(cfg.measure) == typed(old.get("measure"))
    assert typed(list(cfg.interpolate)) == typed(old.get("interpolate", []))
    assert cfg.data_root is None


def test_relative_out_is_taken_from_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = experiment("fig1", out=Path("here"))
    assert cfg.out == tmp_path / "here" / "runs"
    assert cfg.store == tmp_path / "here" / "results.zarr"


def shipped() -> list[str]:
    return sorted(
        p.name for p in (files("sharpkit") / "experiments").iterdir() if p.is_file()
    )


@pytest.mark.parametrize("filename", shipped())
def test_every_shipped_file_is_a_sweep_a_user_can_run(
    filename: str, tmp_path: Path
) -> None:
    assert filename.endswith(".toml")
    name, _, scale = filename.removesuffix(".toml").rpartition("-")
    with as_file(files("sharpkit") / "experiments" / filename) as path:
        cfg = load_sweep(path)
        folder = path.parent
    assert cfg.name == filename.removesuffix(".toml")
    # Copied next to a sweep of one's own, it keeps reproduce's layout.
    assert cfg.out == folder / "runs"
    assert cfg.store == folder / "results.zarr"
    copy_ = tmp_path / "mine.toml"
    copy_.write_text(preset_text(name, scale=scale))
    assert load_sweep(copy_).train == cfg.train


def test_the_files_ship_as_package_data() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    data = pyproject["tool"]["setuptools"]["package-data"]["sharpkit"]
    assert "experiments/*.toml" in data
