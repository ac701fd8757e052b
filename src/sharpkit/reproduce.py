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
* ``sam``: beyond the paper: SGD against SAM (Foret, Kleiner, Mobahi &
  Neyshabur, 2021) at the same η/S on Fig. 1's setting, with λ_max, ‖H‖_F,
  adaptive sharpness and validation accuracy (figure ``sam``).

``scale="paper"`` uses the paper's architectures, data and 200 epochs (days on a
CPU, hours on a GPU); ``scale="quick"`` keeps each experiment's design — the same
η/S contrasts — but trains smaller models (ResNet-20 for ResNet-56) on subsets for
fewer epochs, so it runs in minutes. Quick results show the paper's trends; they
are not the paper's numbers.

Each experiment at each scale is a sweep file shipped with the package,
``sharpkit/experiments/<name>-<scale>.toml``, in the format of
:mod:`sharpkit.sweep`; the experiments are the files present. ``sharpkit
reproduce fig1 --show`` prints one, as a starting point for a sweep of your own.
"""

from __future__ import annotations

import tomllib
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING

from sharpkit.errors import ConfigError
from sharpkit.sweep import SweepConfig

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

__all__ = ["EXPERIMENTS", "FIGURES", "SCALES", "experiment", "preset_text"]

_PRESETS = files("sharpkit") / "experiments"


def _scales_by_experiment() -> dict[str, tuple[str, ...]]:
    """Read ``<name>-<scale>.toml`` file names into ``{name: (scale, ...)}``."""
    found: dict[str, list[str]] = {}
    for item in _PRESETS.iterdir():
        name, dash, scale = item.name.removesuffix(".toml").rpartition("-")
        if item.name.endswith(".toml") and dash:
            found.setdefault(name, []).append(scale)
    return {name: tuple(sorted(found[name])) for name in sorted(found)}


SCALES: dict[str, tuple[str, ...]] = _scales_by_experiment()
EXPERIMENTS: tuple[str, ...] = tuple(SCALES)
# The figures an experiment draws: its own, unless it is not named after one.
FIGURES: dict[str, tuple[str, ...]] = {
    name: {"demo": ("fig1", "fig2")}.get(name, (name,)) for name in EXPERIMENTS
}


def _preset(name: str, scale: str) -> Traversable:
    if name not in SCALES:
        msg = f"unknown experiment {name!r}; one of {', '.join(EXPERIMENTS)}"
        raise ConfigError(msg)
    if scale not in SCALES[name]:
        msg = (
            f"experiment {name!r} has no scale {scale!r}; "
            f"one of {', '.join(SCALES[name])}"
        )
        raise ConfigError(msg)
    return _PRESETS / f"{name}-{scale}.toml"


def preset_text(name: str, *, scale: str = "quick") -> str:
    """Return the sweep file of one experiment at one scale, as shipped.

    Args:
        name: ``demo``, ``fig1``, ``fig2``, ``fig3``, ``fig4`` or ``sam``.
        scale: ``quick`` or ``paper``.

    Raises:
        ConfigError: Unknown experiment or scale.
    """
    return _preset(name, scale).read_text(encoding="utf-8")


def experiment(
    name: str, *, scale: str = "quick", out: Path, epochs: int | None = None
) -> SweepConfig:
    """Return the sweep for one of the paper's experiments.

    Args:
        name: ``demo``, ``fig1``, ``fig2``, ``fig3``, ``fig4`` or ``sam``.
        scale: ``quick`` or ``paper``.
        out: Folder for checkpoints; the store is ``out/results.zarr``.
        epochs: Override the number of epochs (e.g. for a smoke test).

    Raises:
        ConfigError: Unknown experiment or scale.
    """
    data = tomllib.loads(preset_text(name, scale=scale))
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
