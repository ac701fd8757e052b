"""Learning-rate schedules of the ``sgd`` trainer (epochs are counted from 1).

* ``constant``: η throughout.
* ``step:M1,M2,...:F``: multiply η by ``F`` after each listed epoch (PyTorch's
  ``MultiStepLR`` stepped once per epoch). Preset ``resnet``: the paper's
  ResNet-56 schedule (÷10 at 60, 100, 140, 180).
* ``every:K:F``: multiply η by ``F`` every ``K`` epochs (``StepLR``). Preset
  ``vgg``: the paper's VGG-11 schedule (÷2 every 25 epochs).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from sharpkit import ConfigError

__all__ = ["SCHEDULE_PRESETS", "Schedule", "parse_schedule"]

SCHEDULE_PRESETS = {
    "resnet": "step:60,100,140,180:0.1",
    "vgg": "every:25:0.5",
}
_FORMS = (
    "constant, step:60,100,140,180:0.1, every:25:0.5, resnet (= step:60,100,140,"
    "180:0.1) or vgg (= every:25:0.5)"
)


@dataclass(frozen=True, slots=True)
class Schedule:
    """A learning-rate schedule: η for each epoch from the initial η.

    Attributes:
        kind: ``"constant"``, ``"step"`` or ``"every"``.
        milestones: Epochs after which η is multiplied by ``factor`` (``step``).
        period: Multiply η by ``factor`` every this many epochs (``every``).
        factor: The multiplier.
        text: The canonical spelling, e.g. ``"step:60,100,140,180:0.1"``.
    """

    kind: str
    milestones: tuple[int, ...] = ()
    period: int = 0
    factor: float = 1.0
    text: str = "constant"

    def lr(self, base: float, epoch: int) -> float:
        """Return η for ``epoch`` (counted from 1) given the initial ``base``."""
        if epoch < 1:
            msg = f"epochs are counted from 1, got {epoch}"
            raise ConfigError(msg)
        if self.kind == "step":
            drops = sum(1 for m in self.milestones if m < epoch)
        elif self.kind == "every":
            drops = (epoch - 1) // self.period
        else:
            drops = 0
        return base * self.factor**drops


def _bad_schedule(text: str, why: str) -> ConfigError:
    return ConfigError(f"bad schedule {text!r} ({why}); use {_FORMS}")


def _factor(text: str, raw: str) -> float:
    try:
        factor = float(raw)
    except ValueError:
        raise _bad_schedule(text, f"factor {raw!r} is not a number") from None
    if not (math.isfinite(factor) and factor > 0):
        raise _bad_schedule(text, "the factor must be a positive number")
    return factor


def parse_schedule(text: str) -> Schedule:
    """Parse ``constant``, ``step:M1,M2,...:F``, ``every:K:F``, ``resnet`` or ``vgg``.

    Raises:
        ConfigError: Anything else; the message lists the accepted forms.
    """
    spelled = text.strip().lower()
    spelled = SCHEDULE_PRESETS.get(spelled, spelled)
    if spelled == "constant":
        return Schedule("constant")
    parts = spelled.split(":")
    if parts[0] == "step":
        if len(parts) != 3:
            raise _bad_schedule(text, "step needs step:<epochs>:<factor>")
        try:
            milestones = tuple(int(m) for m in parts[1].split(","))
        except ValueError:
            raise _bad_schedule(text, "milestones must be whole epochs") from None
        if any(m < 1 for m in milestones) or list(milestones) != sorted(
            set(milestones)
        ):
            raise _bad_schedule(text, "milestones must be increasing positive epochs")
        factor = _factor(text, parts[2])
        canon = f"step:{','.join(map(str, milestones))}:{factor:g}"
        return Schedule("step", milestones=milestones, factor=factor, text=canon)
    if parts[0] == "every":
        if len(parts) != 3:
            raise _bad_schedule(text, "every needs every:<epochs>:<factor>")
        try:
            period = int(parts[1])
        except ValueError:
            raise _bad_schedule(text, "the period must be a whole number") from None
        if period < 1:
            raise _bad_schedule(text, "the period must be at least 1 epoch")
        factor = _factor(text, parts[2])
        return Schedule(
            "every", period=period, factor=factor, text=f"every:{period}:{factor:g}"
        )
    raise _bad_schedule(text, "unknown form")
