"""Built-in trainer plugin ``sgd``: mini-batch SGD with the paper's schedules.

Plain SGD (no momentum, no weight decay) is the default, because the η/S
argument of Jastrzębski et al. (2017), "Finding flatter minima with SGD" (ICLR
2018 workshop; the longer version is "Three Factors Influencing Minima in SGD",
arXiv:1711.04623) is about vanilla SGD; momentum and weight decay are available.
Learning-rate schedules (epochs are counted from 1):

* ``constant``: η throughout.
* ``step:M1,M2,...:F``: multiply η by ``F`` after each listed epoch, so with
  ``step:60,100,140,180:0.1`` epochs 1-60 use η, 61-100 use η/10, and so on
  (PyTorch's ``MultiStepLR`` stepped once per epoch). Preset ``resnet``: the
  paper's ResNet-56 schedule (÷10 at 60, 100, 140, 180).
* ``every:K:F``: multiply η by ``F`` every ``K`` epochs (``StepLR``): with
  ``every:25:0.5`` epochs 1-25 use η, 26-50 use η/2, ... Preset ``vgg``: the
  paper's VGG-11 schedule (÷2 every 25 epochs).

The loop indexes the in-memory training tensors directly (one random permutation
per epoch from a dedicated :class:`torch.Generator`, which also drives the
augmentation), accumulates the running loss and accuracy on-tensor, and reads
them back once per epoch, so it costs no more per step than a hand-written loop.
The curves' training loss and accuracy are the **running** means over the epoch's
mini-batches (model in train mode, changing during the epoch); test loss and
accuracy are computed after the epoch with the model in eval mode. After the last
epoch the final model is also evaluated once, in eval mode, on the whole training
split (without augmentation): those exact values are the checkpoint's (and the
result's) ``final["train_loss"]`` and ``final["train_accuracy"]``, so the
generalization gap is computed from numbers of one model on both splits; the last
epoch's running means stay in ``final["train_loss_running"]`` and
``final["train_accuracy_running"]`` (and in the curves).

The loop is shared: a subclass changes how one mini-batch updates the parameters
by overriding :meth:`SGDTrainer._update` (``sam`` and ``asam`` in
:mod:`sharpkit.builtin._sam` do), and keeps the schedules, checkpoints, tracking
and exact resume.

Files in ``out_dir`` (each is a complete sharpkit checkpoint: weights, metadata
and the training state needed to resume):

* ``last.pt``: replaced atomically at the end of every epoch;
* ``epoch-0010.pt``: kept every ``checkpoint_every`` epochs (if > 0);
* ``final.pt``: written when the last epoch is done;
* ``curves.csv``: the per-epoch curves so far, rewritten every epoch.

Wall-clock time (the ``seconds`` curve) is kept out of the checkpoints, which
hold only what the computation determines: two identical trainings write
identical bytes, so their sha256 (the key of stored measurements) is the same
and a retrain reuses what the store has. It is in ``curves.csv`` and the store.

Resuming (``resume=True``) reloads ``last.pt``: weights and batch-norm buffers,
optimizer state, the shuffling generator, torch's global RNG (dropout) and the
curves, so the continued run is bit-for-bit the run that was not interrupted.
"""

from __future__ import annotations

import csv
import io
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

import sharpkit
from sharpkit import (
    CheckpointMeta,
    ConfigError,
    Dataset,
    DataSplit,
    NumericalError,
    Option,
    ProgressCallback,
    Tracker,
    TrainConfig,
    TrainerSpec,
    TrainResult,
    arg_hint,
    derived_seed,
    evaluate,
    load_checkpoint,
    no_progress,
    save_checkpoint,
    seeded_generator,
)
from sharpkit._fs import atomic_write
from sharpkit.builtin._schedules import SCHEDULE_PRESETS, Schedule, parse_schedule
from sharpkit.checkpoint import load_state_dict_into

__all__ = [
    "CURVES",
    "SCHEDULE_PRESETS",
    "TRAIN_METRICS",
    "Closure",
    "SGDTrainer",
    "Schedule",
    "parse_schedule",
    "sgd_options",
    "sharpkit_register_trainers",
]

CURVES = (*TrainResult.BASE_CURVES, "seconds")
"""The curves ``sgd`` records every epoch (before any tracked metric's)."""
_RESUME_FIELDS = (
    "model",
    "model_options",
    "dataset",
    "dataset_options",
    "lr",
    "batch_size",
    "momentum",
    "weight_decay",
    "schedule",
    "seed",
)
_TRACK_SUFFIXES = ("", "_stderr", "_bound", "_hvps")
# Wall-clock curves: in curves.csv and the store, never in a checkpoint's bytes.
_TIMING = ("seconds",)
_EXACT = ("train_loss", "train_accuracy")  # re-evaluated on the final model
TRAIN_METRICS = (
    "final train_loss/train_accuracy: the final model in eval mode on the whole "
    "training split (no augmentation); curves and final *_running: running means "
    "over the epoch's mini-batches"
)
"""What ``extra["train_metrics"]`` of a checkpoint says about its training values."""
Closure = Callable[[], "tuple[torch.Tensor, torch.Tensor]"]
"""Evaluates the current mini-batch: ``() -> (outputs, mean loss)``, with a graph."""
_PROGRESS_INTERVAL = 0.25  # seconds between progress reports inside an epoch


# --------------------------------------------------------------------------- schedules
# --------------------------------------------------------------------------- helpers


def _out_arg() -> str:
    """The output directory as the caller names it: ``--out`` or ``out_dir=``."""
    return arg_hint("out_dir", "--out")


def _evaluate(
    model: nn.Module, split: DataSplit, batch_size: int, device: torch.device
) -> tuple[float, float]:
    """Return mean cross-entropy and accuracy of ``model`` (as it is) on ``split``."""
    if len(split) == 0:
        return math.nan, math.nan
    return evaluate(
        model,
        split,
        nn.functional.cross_entropy,
        batch_size=batch_size,
        device=device,
    )


def _write_csv(path: Path, curves: Mapping[str, Sequence[float]]) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf)
    keys = list(curves)
    writer.writerow(keys)
    for row in zip(*(curves[k] for k in keys), strict=True):
        writer.writerow([f"{v:.10g}" if isinstance(v, float) else v for v in row])
    atomic_write(path, buf.getvalue())


def _with_timing(
    saved: Mapping[str, Sequence[float]], out_dir: Path | None, epochs: int
) -> dict[str, list[float]]:
    """The saved curves plus the wall-clock ones, read back from ``curves.csv``.

    Checkpoints do not hold timing (see the module docstring); a resumed run
    takes it from the curves file beside them, or NaN where that is gone.
    """
    out = {k: list(v) for k, v in saved.items()}
    missing = [k for k in _TIMING if k not in out]
    if not missing:
        return out  # a checkpoint written before timing was kept out
    rows: list[dict[str, str]] = []
    path = out_dir / "curves.csv" if out_dir is not None else None
    if path is not None and path.is_file():
        with path.open(newline="") as fh:
            rows = list(csv.DictReader(fh))[:epochs]
    for key in missing:
        values = [_number(r.get(key)) for r in rows]
        out[key] = values if len(values) == epochs else [math.nan] * epochs
    return out


def _number(text: str | None) -> float:
    try:
        return float(text) if text is not None else math.nan
    except ValueError:
        return math.nan


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        try:
            return math.isclose(float(a), float(b), rel_tol=1e-12, abs_tol=0.0)
        except (TypeError, ValueError):
            return False
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return set(a) == set(b) and all(_same(a[k], b[k]) for k in a)
    return bool(a == b)


def _batch_closure(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Closure:
    """The closure the update step calls to evaluate the mini-batch ``(x, y)``."""

    def closure() -> tuple[torch.Tensor, torch.Tensor]:
        out = model(x)
        return out, nn.functional.cross_entropy(out, y)

    return closure


def _exact_from(final: Mapping[str, Any]) -> dict[str, float]:
    """The exact final values a checkpoint recorded (none from older versions)."""
    keys = (*_EXACT, *(f"{k}_running" for k in _EXACT))
    if not all(k in final for k in keys):
        return {}
    return {k: float(final[k]) for k in keys}


# --------------------------------------------------------------------------- trainer


@dataclass(eq=False)
class _Run:
    """A training run in progress: what the steps of :meth:`SGDTrainer.fit` share."""

    model: nn.Module
    data: Dataset
    config: TrainConfig
    schedule: Schedule
    progress: ProgressCallback
    device: torch.device
    steps: int
    """Mini-batches per epoch."""
    optimizer: torch.optim.Optimizer
    order_gen: torch.Generator
    """Shuffles every epoch and drives the augmentation."""
    curves: dict[str, list[float]]
    warm_start: torch.Tensor | None = None
    tracker: Tracker | None = None
    first_epoch: int = 1
    exact: dict[str, float] = field(default_factory=dict)
    """The final model's exact training loss and accuracy (last epoch only)."""
    trained_samples: int = 0
    train_seconds: float = 0.0
    x_train: torch.Tensor = field(init=False)
    y_train: torch.Tensor = field(init=False)
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None

    @property
    def n(self) -> int:
        """Training examples."""
        return len(self.data.train)

    @property
    def total(self) -> int:
        """Mini-batches in the whole run (for progress)."""
        return self.config.epochs * self.steps


class SGDTrainer:
    """Mini-batch SGD over in-memory tensors (see the module docstring).

    Args:
        eval_batch_size: Batch size for evaluation (no effect on values).
        drop_last: Skip the last, shorter mini-batch of each epoch.
    """

    name: ClassVar[str] = "sgd"
    """The registered name, recorded in checkpoints as ``extra["trainer"]``."""

    def __init__(self, *, eval_batch_size: int = 1024, drop_last: bool = False) -> None:
        if eval_batch_size < 1:
            msg = f"eval_batch_size must be >= 1, got {eval_batch_size}"
            raise ConfigError(msg)
        self.eval_batch_size = eval_batch_size
        self.drop_last = drop_last

    # ------------------------------------------------------------------ checks

    @staticmethod
    def _check(config: TrainConfig) -> Schedule:
        schedule = parse_schedule(config.schedule)
        checks = (
            ("lr", config.lr > 0 and math.isfinite(config.lr), "must be positive"),
            ("batch_size", config.batch_size >= 1, "must be >= 1"),
            ("epochs", config.epochs >= 1, "must be >= 1"),
            ("momentum", 0 <= config.momentum < 1, "must be in [0, 1)"),
            ("weight_decay", config.weight_decay >= 0, "must be >= 0"),
            ("checkpoint_every", config.checkpoint_every >= 0, "must be >= 0"),
            ("track_every", config.track_every >= 1, "must be >= 1"),
            ("track_samples", config.track_samples >= 1, "must be >= 1"),
        )
        for name, ok, why in checks:
            if not ok:
                msg = f"{name} {why}, got {getattr(config, name)!r}"
                raise ConfigError(msg)
        if config.resume and config.out_dir is None:
            msg = (
                "resume needs an output directory "
                f"({arg_hint('out_dir', '--out')}) holding last.pt"
            )
            raise ConfigError(msg)
        return schedule

    def _meta(
        self,
        config: TrainConfig,
        data: Dataset,
        epoch: int,
        row: Mapping[str, float],
    ) -> CheckpointMeta:
        return CheckpointMeta(
            model=config.model_name or None,
            model_options=dict(config.model_options),
            dataset=config.dataset_name or data.name,
            dataset_options=dict(config.dataset_options),
            lr=config.lr,
            batch_size=config.batch_size,
            momentum=config.momentum,
            weight_decay=config.weight_decay,
            schedule=config.schedule,
            seed=config.seed,
            epoch=epoch,
            epochs=config.epochs,
            sharpkit_version=sharpkit.__version__,
            final={
                k: float(v)
                for k, v in row.items()
                if math.isfinite(v) and k not in _TIMING
            },
            extra={
                "input_shape": [int(d) for d in data.input_shape],
                "num_classes": int(data.num_classes),
                "trainer": self.name,
                "trainer_options": self._options(),
                "augment": config.augment,
                "train_samples": len(data.train),
                "train_metrics": TRAIN_METRICS,
                "track": list(config.track),
                "track_every": config.track_every,
                "track_samples": config.track_samples,
            },
        )

    def _options(self) -> dict[str, Any]:
        return {"eval_batch_size": self.eval_batch_size, "drop_last": self.drop_last}

    # ------------------------------------------------------------------ one step

    def _update(
        self, model: nn.Module, optimizer: torch.optim.Optimizer, closure: Closure
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Update the parameters on one mini-batch: here, one SGD step.

        Subclasses override this (and only this) to change the algorithm.

        Args:
            model: The model, in train mode.
            optimizer: The SGD optimizer over ``model``'s parameters (momentum,
                weight decay and the epoch's η are its settings).
            closure: Evaluates the mini-batch at the current parameters.

        Returns:
            The outputs and loss of the first evaluation (at the parameters
            before the update): they feed the running means and the progress.
        """
        out, loss = closure()
        optimizer.zero_grad(set_to_none=True)
        torch.autograd.backward(loss)
        optimizer.step()
        return out, loss

    def _check_resume(
        self, meta: CheckpointMeta, config: TrainConfig, data: Dataset, path: Path
    ) -> None:
        want = self._meta(config, data, 0, {})
        for name in _RESUME_FIELDS:
            old, new = getattr(meta, name), getattr(want, name)
            if name == "schedule" and isinstance(old, str):  # compare meanings
                old, new = parse_schedule(old).text, parse_schedule(new).text
            if not _same(old, new):
                msg = (
                    f"{path} was trained with {name}={old!r}, not {new!r}; resume "
                    f"with the same settings or choose another {_out_arg()}"
                )
                raise ConfigError(msg)
        for name in ("augment", "trainer_options"):
            old, new = meta.extra.get(name), want.extra.get(name)
            if not _same(old, new):
                msg = (
                    f"{path} was trained with {name}={old!r}, not {new!r}; resume "
                    f"with the same settings or choose another {_out_arg()}"
                )
                raise ConfigError(msg)
        if meta.epoch is not None and meta.epoch > config.epochs:
            msg = (
                f"{path} is already at epoch {meta.epoch}, past the "
                f"{config.epochs} epochs asked for; raise "
                f"{arg_hint('epochs', '--epochs')} to continue it"
            )
            raise ConfigError(msg)

    # ------------------------------------------------------------------ fit

    def fit(
        self,
        model: nn.Module,
        data: Dataset,
        config: TrainConfig,
        /,
        *,
        progress: ProgressCallback | None = None,
    ) -> TrainResult:
        """Train ``model`` on ``data.train`` with SGD, evaluating on ``data.test``.

        Args:
            model: The freshly initialised model (it is trained in place).
            data: The dataset; ``data.train.augment`` is used if ``config.augment``.
            config: Hyper-parameters, output directory, tracking.
            progress: Called with ``(step, total_steps, description=..., loss=...,
                samples_s=...)`` a few times per second.

        Returns:
            Per-epoch curves, the last epoch's values, and the final checkpoint.

        Raises:
            ConfigError: Bad settings, an output directory that already holds a
                run (without ``resume``), or a resume with different settings.
            NumericalError: The training loss became non-finite (divergence).
        """
        start_time = time.perf_counter()
        schedule = self._check(config)
        run = self._start(model, data, config, schedule, progress or no_progress)
        devices = [run.device] if run.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(derived_seed(config.seed, "sgd:global"))
            self._resume(run)
            resumed_from = run.first_epoch - 1
            self._train(run)
        final_path = self._final(config.out_dir, resumed_from, config.epochs)
        return self._result(run, final_path, resumed_from, start_time)

    def _start(
        self,
        model: nn.Module,
        data: Dataset,
        config: TrainConfig,
        schedule: Schedule,
        progress: ProgressCallback,
    ) -> _Run:
        """Check the data against the settings; set up the model and optimizer."""
        device = torch.device(config.device)
        if config.augment and data.train.augment is None:
            msg = (
                f"dataset {data.name!r} has no training augmentation; drop "
                f"{arg_hint('augment', '--augment')}"
            )
            raise ConfigError(msg)
        n, size = len(data.train), config.batch_size
        steps = n // size if self.drop_last else -(-n // size)
        if steps == 0:
            msg = (
                f"batch_size {size} exceeds the {n} training examples with "
                f"drop_last; lower {arg_hint('batch_size', '--batch-size')}"
            )
            raise ConfigError(msg)
        model.to(device)
        optimizer = torch.optim.SGD(
            model.parameters(),
            lr=config.lr,
            momentum=config.momentum,
            weight_decay=config.weight_decay,
        )
        curves: dict[str, list[float]] = {k: [] for k in CURVES}
        for metric in config.track:
            for suffix in _TRACK_SUFFIXES:
                curves[metric + suffix] = []
        return _Run(
            model=model,
            data=data,
            config=config,
            schedule=schedule,
            progress=progress,
            device=device,
            steps=steps,
            optimizer=optimizer,
            order_gen=seeded_generator(config.seed, "sgd:order"),
            curves=curves,
        )

    def _resume(self, run: _Run) -> None:
        """Continue from ``out_dir``'s ``last.pt`` if any (see the module docstring).

        Raises:
            ConfigError: There is one but ``resume`` is off, it holds no training
                state, or it was trained with other settings.
        """
        config, out_dir = run.config, run.config.out_dir
        last_path = out_dir / "last.pt" if out_dir is not None else None
        if last_path is None or not last_path.exists():
            return
        if not config.resume:
            msg = (
                f"{out_dir} already holds a training run ({last_path.name}); "
                f"pass {arg_hint('resume', '--resume')} to continue it or "
                f"choose another {_out_arg()}"
            )
            raise ConfigError(msg)
        ckpt = load_checkpoint(last_path)
        if ckpt.train_state is None:
            msg = f"{last_path} has no training state to resume from"
            raise ConfigError(msg)
        self._check_resume(ckpt.meta, config, run.data, last_path)
        state = ckpt.train_state
        load_state_dict_into(run.model, ckpt.state_dict, source=str(last_path))
        run.optimizer.load_state_dict(state["optimizer"])
        run.order_gen.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        if run.device.type == "cuda" and state.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(state["cuda_rng"], run.device)
        saved = _with_timing(state["curves"], out_dir, int(state["epoch"]))
        for key in run.curves:
            run.curves[key] = [float(v) for v in saved[key]]
        run.warm_start = state.get("warm_start")
        run.first_epoch = int(state["epoch"]) + 1
        run.exact = _exact_from(ckpt.meta.final)

    def _train(self, run: _Run) -> None:
        """The epochs from ``run.first_epoch`` on (the tracker set up first)."""
        config = run.config
        run.x_train = run.data.train.inputs.to(run.device)
        run.y_train = run.data.train.targets.to(run.device)
        run.augment = run.data.train.augment if config.augment else None
        if config.track:
            # seeded like the measurements before; the same Tracker that
            # tracks a user's own loop (sharpkit.Tracker)
            run.tracker = Tracker(
                run.data.train,
                list(config.track),
                every=config.track_every,
                samples=config.track_samples,
                seed=config.seed,
                device=run.device,
                warm_start=True if run.warm_start is None else run.warm_start,
                progress=run.progress,
            )
        for epoch in range(run.first_epoch, config.epochs + 1):
            self._epoch(run, epoch)

    def _epoch(self, run: _Run, epoch: int) -> None:
        """Train one epoch, evaluate, track, record and save."""
        config, model = run.config, run.model
        epoch_start = time.perf_counter()
        lr = run.schedule.lr(config.lr, epoch)
        for group in run.optimizer.param_groups:
            group["lr"] = lr
        label = f"epoch {epoch}/{config.epochs}"
        train_loss, train_acc = self._pass(run, epoch, label, epoch_start)
        if not math.isfinite(train_loss):
            msg = (
                f"training diverged in epoch {epoch} (train loss "
                f"{train_loss}) at lr={lr:g}, batch_size={config.batch_size}; "
                f"lower {arg_hint('lr', '--lr')}"
            )
            raise NumericalError(msg)
        model.eval()
        test_loss, test_acc = _evaluate(
            model, run.data.test, self.eval_batch_size, run.device
        )
        row: dict[str, float] = {
            "epoch": float(epoch),
            "lr": lr,
            "train_loss": train_loss,
            "train_accuracy": train_acc,
            "test_loss": test_loss,
            "test_accuracy": test_acc,
        }
        last = epoch == config.epochs
        if last:
            run.exact = self._exact(model, run.data, run.device, row)
        self._track(run, epoch, row)
        model.train()
        row["seconds"] = time.perf_counter() - epoch_start
        for key, values in run.curves.items():
            values.append(row[key])
        run.progress(
            epoch * run.steps,
            run.total,
            description=label,
            loss=train_loss,
            acc=round(train_acc, 4),
            test_acc=round(test_acc, 4),
        )
        if config.out_dir is not None:
            self._save(
                config.out_dir, model, run.optimizer, run.order_gen, run.device,
                config, run.data, epoch, {**row, **run.exact} if last else row,
                run.curves, run.warm_start,
            )  # fmt: skip

    def _pass(
        self, run: _Run, epoch: int, label: str, epoch_start: float
    ) -> tuple[float, float]:
        """One pass over the shuffled training split; its running loss and accuracy."""
        model, device, size, n = run.model, run.device, run.config.batch_size, run.n
        model.train()
        order = torch.randperm(n, generator=run.order_gen).to(device)
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        correct = torch.zeros((), dtype=torch.int64, device=device)
        last_report = time.monotonic()
        run.progress((epoch - 1) * run.steps, run.total, description=label)
        for i in range(run.steps):
            idx = order[i * size : (i + 1) * size]
            x, y = run.x_train[idx], run.y_train[idx]
            if run.augment is not None:
                x = run.augment(x, run.order_gen)
            out, loss = self._update(model, run.optimizer, _batch_closure(model, x, y))
            # On-tensor running sums (no host sync; argmax builds no graph).
            loss_sum.add_(loss.detach(), alpha=len(y))
            correct.add_(out.argmax(1).eq(y).sum())
            now = time.monotonic()
            if now - last_report >= _PROGRESS_INTERVAL:
                last_report = now
                elapsed = time.perf_counter() - epoch_start
                run.progress(
                    (epoch - 1) * run.steps + i + 1,
                    run.total,
                    loss=float(loss.detach()),
                    samples_s=round(min((i + 1) * size, n) / elapsed),
                )
        seen = min(run.steps * size, n)
        run.train_seconds += time.perf_counter() - epoch_start
        run.trained_samples += seen
        return float(loss_sum) / seen, int(correct) / seen

    @staticmethod
    def _track(run: _Run, epoch: int, row: dict[str, float]) -> None:
        """Measure the tracked metrics (when due) into ``row``."""
        if run.tracker is None:
            return
        force = epoch == run.config.epochs
        tracked = run.tracker.step(run.model, step=epoch, force=force) or {}
        run.warm_start = run.tracker.warm_start
        for metric in run.config.track:
            for suffix in _TRACK_SUFFIXES:
                row[metric + suffix] = tracked.get(metric + suffix, math.nan)

    @staticmethod
    def _final(out_dir: Path | None, resumed_from: int, epochs: int) -> Path | None:
        """Write ``final.pt`` (a copy of ``last.pt``) unless it is there already."""
        if out_dir is None:
            return None
        final_path = out_dir / "final.pt"
        if not final_path.exists() or resumed_from < epochs:
            ckpt = load_checkpoint(out_dir / "last.pt")
            save_checkpoint(
                final_path, ckpt.state_dict, ckpt.meta, train_state=ckpt.train_state
            )
        return final_path

    def _result(
        self, run: _Run, final_path: Path | None, resumed_from: int, start_time: float
    ) -> TrainResult:
        arrays = {k: np.asarray(v, dtype=np.float64) for k, v in run.curves.items()}
        arrays["epoch"] = arrays["epoch"].astype(np.int64)
        final = {k: float(v[-1]) for k, v in run.curves.items() if v}
        final.update(run.exact)
        out_dir = run.config.out_dir
        return TrainResult(
            checkpoint=final_path,
            curves=arrays,
            final=final,
            seconds=time.perf_counter() - start_time,
            attrs={
                "resumed_from_epoch": resumed_from,
                "out_dir": str(out_dir) if out_dir is not None else None,
                "steps_per_epoch": run.steps,
                "samples_per_second": run.trained_samples / run.train_seconds
                if run.train_seconds > 0
                else None,
                "train_metrics": TRAIN_METRICS,
                "trainer": self.name,
                "device": str(run.device),
            },
        )

    def _exact(
        self,
        model: nn.Module,
        data: Dataset,
        device: torch.device,
        row: Mapping[str, float],
    ) -> dict[str, float]:
        """The final model (in eval mode) on the whole training split, exactly.

        Returns ``train_loss`` and ``train_accuracy`` of that evaluation and the
        epoch's running means as ``train_loss_running``/``train_accuracy_running``.
        Evaluation draws no random numbers and changes no buffer (eval mode), so
        it leaves the training itself, and resuming, untouched.
        """
        loss, acc = _evaluate(model, data.train, self.eval_batch_size, device)
        out = {f"{k}_running": float(row[k]) for k in _EXACT}
        out.update(train_loss=loss, train_accuracy=acc)
        return out

    # ------------------------------------------------------------------ saving

    def _save(
        self,
        out_dir: Path,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        order_gen: torch.Generator,
        device: torch.device,
        config: TrainConfig,
        data: Dataset,
        epoch: int,
        row: Mapping[str, float],
        curves: Mapping[str, list[float]],
        warm_start: torch.Tensor | None,
    ) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        meta = self._meta(config, data, epoch, row)
        state: dict[str, Any] = {
            "epoch": epoch,
            "optimizer": optimizer.state_dict(),
            "generator": order_gen.get_state(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state(device)
            if device.type == "cuda"
            else None,
            "curves": {k: list(v) for k, v in curves.items() if k not in _TIMING},
            "warm_start": warm_start,
        }
        save_checkpoint(out_dir / "last.pt", model, meta, train_state=state)
        if config.checkpoint_every and epoch % config.checkpoint_every == 0:
            save_checkpoint(
                out_dir / f"epoch-{epoch:04d}.pt", model, meta, train_state=state
            )
        _write_csv(out_dir / "curves.csv", curves)


# --------------------------------------------------------------------------- hook


def sgd_options() -> tuple[Option, ...]:
    """The options of ``sgd``, which the trainers built on its loop share."""
    return (
        Option(
            name="eval_batch_size",
            type=int,
            default=1024,
            help="Batch size for evaluation (test set; final training-set pass)",
        ),
        Option(
            name="drop_last",
            type=bool,
            default=False,
            help="Skip each epoch's last, shorter mini-batch",
        ),
    )


def sharpkit_register_trainers() -> list[TrainerSpec]:
    """Register the ``sgd`` trainer."""
    return [
        TrainerSpec(
            name="sgd",
            factory=SGDTrainer,
            description=(
                "Mini-batch SGD (plain by default) with the paper's step schedules, "
                "checkpoints and exact resume"
            ),
            options=sgd_options(),
        )
    ]
