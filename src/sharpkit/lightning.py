"""Sharpness tracked during PyTorch Lightning training: :class:`SharpnessCallback`.

Install with ``pip install 'sharpkit[lightning]'``; ``import sharpkit`` never
imports this module (nor Lightning). The callback is a thin layer over
:class:`sharpkit.Tracker`: every N training steps (or epochs) it measures the
model on a fixed analysis set, warm-started from the previous measurement, logs
the values to every logger of the trainer (``trainer.loggers``) under
``sharpness/<metric>``, and when fitting ends writes the curve to a results
store as one run of kind ``track``. Measuring leaves the training exactly as it
was (model, gradients, optimizer, random generators), and the tracker's state
is saved in Lightning's checkpoints, so a resumed fit continues the same curve.

Only the global-rank-zero process measures (under DDP each rank holds the same
model); sharded strategies (FSDP, DeepSpeed) are not supported.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

try:
    import lightning.pytorch as pl
except ImportError as exc:  # pragma: no cover - exercised in a subprocess test
    msg = (
        "sharpkit.lightning needs PyTorch Lightning (the `lightning` package); "
        "install it with: pip install 'sharpkit[lightning]'"
    )
    raise ImportError(msg) from exc

from sharpkit import ConfigError, Tracker

if TYPE_CHECKING:
    import torch

__all__ = ["SharpnessCallback"]

ModuleSelector = Callable[["pl.LightningModule"], "torch.nn.Module"]
_OWN = frozenset({"data", "metrics", "every", "store"})
_LOGGED = ("", "_stderr", "_bound", "_hvps")


class SharpnessCallback(pl.Callback):
    """Track sharpness every N steps (or epochs) of a Lightning ``Trainer.fit``.

    Usage (the [tracking guide](../tracking.md#pytorch-lightning) has a complete,
    tested example):

    ```python
    callback = SharpnessCallback((x[:512], y[:512]), ["spectral"],
                                 every_n_steps=50, store="results.zarr")
    lightning.pytorch.Trainer(callbacks=[callback]).fit(model, loader)
    callback.tracker.curves["spectral"]
    ```

    Args:
        data: The fixed analysis data, as for :class:`sharpkit.Tracker`: an
            ``(inputs, targets)`` pair, a ``DataSplit``, a torch ``Dataset`` or
            ``DataLoader`` (its first ``samples`` examples, read once), ...
        metrics: Metric names (``sharpkit plugins`` lists them).
        every_n_steps: Measure after every this many optimizer steps
            (``trainer.global_step``); the default, 50, applies when neither
            this nor ``every_n_epochs`` is given.
        every_n_epochs: Measure at the end of every this many training epochs
            instead.
        module: What to measure: ``None`` for the LightningModule itself (its
            ``forward`` must return the outputs the loss takes), the name of an
            attribute holding the network (``"net"``), or a function of the
            LightningModule returning it.
        prefix: Prefix of the logged names (``sharpness/spectral``,
            ``sharpness/spectral_bound``, ...).
        store: A results store path the curve is written to when fitting ends
            (or stops with an exception, marked ``interrupted``).
        **tracker_options: Any other keyword argument of
            :class:`sharpkit.Tracker`: ``samples``, ``loss``, ``seed``, ``tol``,
            ``max_hvps``, ``bn_mode``, ``dtype``, ``device``, ``options``,
            ``warm_start``, ``attrs``, ``progress``, ``registry``.

    Attributes:
        tracker: The :class:`sharpkit.Tracker` doing the work; its ``curves``
            hold every measurement so far.
        run_id: The id of the stored run once fitting ended (``None`` before, or
            without a store).

    Raises:
        ConfigError: Bad arguments (as for :class:`sharpkit.Tracker`, plus both
            or neither of ``every_n_steps``/``every_n_epochs``).
    """

    def __init__(
        self,
        data: Any,
        metrics: str | Sequence[str] = ("spectral",),
        *,
        every_n_steps: int | None = None,
        every_n_epochs: int | None = None,
        module: str | ModuleSelector | None = None,
        prefix: str = "sharpness/",
        store: Any = None,
        **tracker_options: Any,
    ) -> None:
        if every_n_steps is not None and every_n_epochs is not None:
            msg = "give every_n_steps or every_n_epochs, not both"
            raise ConfigError(msg)
        if every_n_steps is None and every_n_epochs is None:
            every_n_steps = 50
        for name, value in (
            ("every_n_steps", every_n_steps),
            ("every_n_epochs", every_n_epochs),
        ):
            ok = isinstance(value, int) and not isinstance(value, bool) and value >= 1
            if value is not None and not ok:
                msg = f"{name} must be a whole number >= 1, got {value!r}"
                raise ConfigError(msg)
        known = set(inspect.signature(Tracker).parameters) - _OWN
        unknown = sorted(set(tracker_options) - known)
        if unknown:
            msg = (
                f"SharpnessCallback got an unknown keyword argument {unknown[0]!r}; "
                f"it takes those of sharpkit.Tracker: {', '.join(sorted(known))}"
            )
            raise ConfigError(msg)
        self.every_n_steps = every_n_steps
        self.every_n_epochs = every_n_epochs
        self.module = module
        self.prefix = prefix
        self._args: dict[str, Any] = {
            "data": data,
            "metrics": metrics,
            "every": every_n_steps or 1,
            "store": store,
            **tracker_options,
        }
        self.tracker: Tracker = self._make()  # bad arguments fail here, early
        self.run_id: str | None = None

    @property
    def state_key(self) -> str:
        """Key of this callback's state in a checkpoint (one per configuration)."""
        return self._generate_state_key(
            metrics=list(self.tracker.metrics),
            every_n_steps=self.every_n_steps,
            every_n_epochs=self.every_n_epochs,
        )

    # ------------------------------------------------------------------ hooks

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Start a fresh curve if a previous ``fit`` closed this one."""
        if self.tracker.closed:
            self.tracker = self._make()
            self.run_id = None

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        """Measure when ``trainer.global_step`` is a multiple of ``every_n_steps``."""
        step = trainer.global_step
        if self.every_n_steps is not None and self.tracker.due(step):
            self._measure(trainer, pl_module, step)

    def on_train_epoch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule
    ) -> None:
        """Measure after every ``every_n_epochs``-th training epoch."""
        n = self.every_n_epochs
        if n is not None and (trainer.current_epoch + 1) % n == 0:
            self._measure(trainer, pl_module, trainer.global_step)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Write the curve to the store."""
        if trainer.is_global_zero:
            self.run_id = self.tracker.close()

    def on_exception(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        exception: BaseException,
    ) -> None:
        """Keep the curve so far: store it marked ``interrupted``."""
        if trainer.is_global_zero and not self.tracker.closed:
            self.run_id = self.tracker.close(interrupted=True)

    def state_dict(self) -> dict[str, Any]:
        """The tracker's state (curve and warm start), saved with checkpoints."""
        return self.tracker.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Continue the saved curve and warm start (``fit(..., ckpt_path=...)``)."""
        if self.tracker.closed:
            self.tracker = self._make()
        self.tracker.load_state_dict(state_dict)

    # ------------------------------------------------------------------ helpers

    def _make(self) -> Tracker:
        return Tracker(**self._args)

    def _network(self, pl_module: pl.LightningModule) -> torch.nn.Module:
        import torch

        chosen: object
        if self.module is None:
            chosen = pl_module
        elif isinstance(self.module, str):
            chosen = getattr(pl_module, self.module, None)
        else:
            chosen = self.module(pl_module)
        if not isinstance(chosen, torch.nn.Module):
            msg = (
                f"SharpnessCallback(module={self.module!r}) gave "
                f"{type(chosen).__name__}, not a torch.nn.Module; name the "
                "attribute that holds the network or pass a function returning it"
            )
            raise ConfigError(msg)
        return chosen

    def _measure(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, step: int
    ) -> None:
        if not trainer.is_global_zero:
            return
        row = self.tracker.step(
            self._network(pl_module),
            step=step,
            force=True,
            extra={"epoch": trainer.current_epoch},
        )
        if row is None:
            return
        values = _loggable(row, self.tracker.metrics, self.prefix)
        for logger in trainer.loggers:
            logger.log_metrics(values, step=step)


def _loggable(
    row: Mapping[str, float], metrics: Sequence[str], prefix: str
) -> dict[str, float]:
    """The finite values, stderrs, bounds and products of a row, prefixed."""
    return {
        prefix + name + suffix: row[name + suffix]
        for name in metrics
        for suffix in _LOGGED
        if math.isfinite(row[name + suffix])
    }
