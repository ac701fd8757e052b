"""The paper's experiments as ready-made sweeps, at a quick and at the paper's scale.

Jastrzębski, Kenton, Arpit, Ballas, Fischer, Bengio & Storkey (2017), "Finding
flatter minima with SGD", ICLR 2018 workshop track:

* ``fig1``: a 4-layer batch-normalised ReLU MLP on Fashion-MNIST over a grid of
  η ∈ [5e-3, 1e-1] and S ∈ [25, 1000]; λ_max, ‖H‖_F and validation accuracy
  against η/S.
* ``fig2``: ResNet-56 on CIFAR-10, baseline η=0.1, S=128 against η=0.1, S=1024 and
  η=0.01, S=128; loss along the line between the minima.
* ``fig3``: VGG-11 on CIFAR-10 with η = 0.1β, S = 50β for β ∈ {0.25, 1, 4} (S is
  rounded to 12 for β = 0.25); the interpolations β=1→4 and β=1→0.25.
* ``fig4``: ResNet-56, baseline η=0.1, S=50 against S=500 with η ∈ {0.2, 0.316,
  0.5, 1, 1.2}; learning curves (η ÷10 at epochs 60, 100, 140, 180).
* ``demo``: the README's main job: two MLPs with different η/S on Fashion-MNIST,
  measured, interpolated and plotted in under a minute on a laptop CPU.

``scale="paper"`` uses the paper's architectures, data and 200 epochs (days on a
CPU, hours on a GPU); ``scale="quick"`` keeps each experiment's design — the same
η/S contrasts — but trains smaller models (ResNet-20 for ResNet-56) on subsets for
fewer epochs, so it runs in minutes. Quick results show the paper's trends; they
are not the paper's numbers.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from sharpkit.errors import ConfigError
from sharpkit.sweep import SweepConfig

__all__ = ["EXPERIMENTS", "FIGURES", "experiment"]

_MEASURE = {"metrics": ["spectral", "frobenius"], "samples": 2048}
# CIFAR interpolations at quick scale: fewer examples per α for BN statistics and
# for the losses (the probe's defaults, 4096 and 10000, suit the paper scale).
_QUICK_PROBE = {"bn_samples": 2048, "eval_samples": 2000}

_EXPERIMENTS: dict[str, dict[str, dict[str, Any]]] = {
    "demo": {
        "quick": {
            "sweep": {"grid": "zip"},
            "train": {
                "model": "mlp-bn",
                "data": "fashion-mnist",
                "lr": [0.1, 0.02],
                "batch_size": [32, 512],
                "epochs": 8,
                "subset": 20000,
                "seed": 0,
            },
            "measure": _MEASURE,
            "interpolate": [
                {"a": {"batch_size": 32}, "b": {"batch_size": 512}},
            ],
        },
    },
    "fig1": {
        "quick": {
            "train": {
                "model": "mlp-bn",
                "data": "fashion-mnist",
                "lr": [0.005, 0.02, 0.1],
                "batch_size": [32, 128, 512],
                "epochs": 10,
                "subset": 20000,
                "seed": 0,
            },
            "measure": _MEASURE,
        },
        "paper": {
            "train": {
                "model": "mlp-bn",
                "data": "fashion-mnist",
                "lr": [0.005, 0.01, 0.025, 0.05, 0.1],
                "batch_size": [25, 50, 100, 250, 500, 1000],
                "epochs": 200,
                "seed": 0,
            },
            "measure": _MEASURE,
        },
    },
    "fig2": {
        "quick": {
            "sweep": {"grid": "zip"},
            "train": {
                "model": "resnet-cifar",
                "model_options": {"depth": 20},
                "data": "cifar10",
                "lr": [0.1, 0.1, 0.01],
                "batch_size": [128, 1024, 128],
                "epochs": 10,
                "subset": 5000,
                "augment": True,
                "seed": 0,
            },
            "interpolate": [
                {
                    "a": {"lr": 0.1, "batch_size": 128},
                    "b": {"lr": 0.1, "batch_size": 1024},
                },
                {
                    "a": {"lr": 0.1, "batch_size": 128},
                    "b": {"lr": 0.01, "batch_size": 128},
                },
            ],
        },
        "paper": {
            "sweep": {"grid": "zip"},
            "train": {
                "model": "resnet-cifar",
                "model_options": {"depth": 56},
                "data": "cifar10",
                "lr": [0.1, 0.1, 0.01],
                "batch_size": [128, 1024, 128],
                "epochs": 200,
                "schedule": "resnet",
                "augment": True,
                "seed": 0,
            },
            "interpolate": [
                {
                    "a": {"lr": 0.1, "batch_size": 128},
                    "b": {"lr": 0.1, "batch_size": 1024},
                },
                {
                    "a": {"lr": 0.1, "batch_size": 128},
                    "b": {"lr": 0.01, "batch_size": 128},
                },
            ],
        },
    },
    "fig3": {
        "quick": {
            "sweep": {"grid": "zip"},
            "train": {
                "model": "vgg-cifar",
                "model_options": {"depth": 11},
                "data": "cifar10",
                "lr": [0.1, 0.4, 0.025],
                "batch_size": [50, 200, 12],
                "epochs": 5,
                "subset": 5000,
                "augment": True,
                "seed": 0,
            },
            "interpolate": [
                {"a": {"batch_size": 50}, "b": {"batch_size": 200}},
                {"a": {"batch_size": 50}, "b": {"batch_size": 12}},
            ],
        },
        "paper": {
            "sweep": {"grid": "zip"},
            "train": {
                "model": "vgg-cifar",
                "model_options": {"depth": 11},
                "data": "cifar10",
                "lr": [0.1, 0.4, 0.025],
                "batch_size": [50, 200, 12],
                "epochs": 200,
                "schedule": "vgg",
                "augment": True,
                "seed": 0,
            },
            "interpolate": [
                {"a": {"batch_size": 50}, "b": {"batch_size": 200}},
                {"a": {"batch_size": 50}, "b": {"batch_size": 12}},
            ],
        },
    },
    "fig4": {
        "quick": {
            "sweep": {"grid": "zip"},
            "train": {
                "model": "resnet-cifar",
                "model_options": {"depth": 20},
                "data": "cifar10",
                "lr": [0.1, 0.2, 0.316, 0.5, 1.0, 1.2],
                "batch_size": [50, 500, 500, 500, 500, 500],
                "epochs": 10,
                "subset": 5000,
                "augment": True,
                "seed": 0,
            },
        },
        "paper": {
            "sweep": {"grid": "zip"},
            "train": {
                "model": "resnet-cifar",
                "model_options": {"depth": 56},
                "data": "cifar10",
                "lr": [0.1, 0.2, 0.316, 0.5, 1.0, 1.2],
                "batch_size": [50, 500, 500, 500, 500, 500],
                "epochs": 200,
                "schedule": "resnet",
                "augment": True,
                "seed": 0,
            },
        },
    },
}

for _name in ("fig2", "fig3"):
    for _item in _EXPERIMENTS[_name]["quick"]["interpolate"]:
        _item["options"] = dict(_QUICK_PROBE)

EXPERIMENTS: tuple[str, ...] = tuple(_EXPERIMENTS)
FIGURES: dict[str, tuple[str, ...]] = {
    "demo": ("fig1", "fig2"),
    "fig1": ("fig1",),
    "fig2": ("fig2",),
    "fig3": ("fig3",),
    "fig4": ("fig4",),
}


def experiment(
    name: str, *, scale: str = "quick", out: Path, epochs: int | None = None
) -> SweepConfig:
    """Return the sweep for one of the paper's experiments.

    Args:
        name: ``demo``, ``fig1``, ``fig2``, ``fig3`` or ``fig4``.
        scale: ``quick`` or ``paper``.
        out: Folder for checkpoints; the store is ``out/results.zarr``.
        epochs: Override the number of epochs (e.g. for a smoke test).

    Raises:
        ConfigError: Unknown experiment or scale.
    """
    if name not in _EXPERIMENTS:
        msg = f"unknown experiment {name!r}; one of {', '.join(EXPERIMENTS)}"
        raise ConfigError(msg)
    scales = _EXPERIMENTS[name]
    if scale not in scales:
        msg = f"experiment {name!r} has no scale {scale!r}; one of {', '.join(scales)}"
        raise ConfigError(msg)
    data = copy.deepcopy(scales[scale])
    data.setdefault("sweep", {})
    data["sweep"].update(
        {
            "name": f"{name}-{scale}",
            "out": str(out / "runs"),
            "store": str(out / "results.zarr"),
        }
    )
    if epochs is not None:
        data["train"]["epochs"] = epochs
    return SweepConfig.from_dict(data, base=Path.cwd())
