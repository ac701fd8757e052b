"""``sharpkit.train``: a registered model trained on a registered dataset.

The trainer plugin does the training; this function resolves the names, checks
the arguments, and records the curves and the final checkpoint in the store.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from sharpkit.api.provenance import file_sha, run_attrs
from sharpkit.api.resolve import (
    DEFAULT_SAMPLES,
    StoreLike,
    build_model,
    load_dataset,
    open_store,
    resolve_device,
)
from sharpkit.errors import ConfigError, PluginContractError
from sharpkit.interfaces import (
    ProgressCallback,
    TrainConfig,
    Trainer,
    TrainResult,
    _no_progress,
)
from sharpkit.registry import Registry, get_registry

__all__ = ["train"]


def train(
    model: str,
    data: str,
    *,
    lr: float,
    batch_size: int,
    epochs: int,
    momentum: float = 0.0,
    weight_decay: float = 0.0,
    schedule: str = "constant",
    seed: int = 0,
    subset: int | None = None,
    augment: bool = False,
    out_dir: str | os.PathLike[str] | None = None,
    checkpoint_every: int = 0,
    resume: bool = False,
    track: Sequence[str] = (),
    track_every: int = 1,
    track_samples: int = DEFAULT_SAMPLES,
    trainer: str = "sgd",
    trainer_options: Mapping[str, Any] | None = None,
    model_options: Mapping[str, Any] | None = None,
    data_options: Mapping[str, Any] | None = None,
    data_root: str | os.PathLike[str] | None = None,
    download: bool = False,
    device: str | None = "cpu",
    progress: ProgressCallback | None = None,
    store: StoreLike = None,
    registry: Registry | None = None,
) -> TrainResult:
    """Train a registered model on a registered dataset with SGD.

    Args:
        model: Registered model name (e.g. ``"mlp-bn"``).
        data: Registered dataset name (e.g. ``"fashion-mnist"``).
        lr: Learning rate η.
        batch_size: Batch size S.
        epochs: Number of epochs.
        momentum: SGD momentum (0: plain SGD, the paper's setting).
        weight_decay: L2 penalty.
        schedule: ``"constant"``, ``"step:60,100,140,180:0.1"``,
            ``"every:25:0.5"`` or a preset name (``"resnet"``, ``"vgg"``).
        seed: Seed for initialisation, order and augmentation.
        subset: Train on a stratified, seeded subset of this many examples.
        augment: Use the dataset's training augmentation.
        out_dir: Directory for checkpoints (``None``: keep none).
        checkpoint_every: Also keep a checkpoint every this many epochs.
        resume: Continue an interrupted run from ``out_dir``.
        track: Metrics to measure during training (e.g. ``["spectral"]``).
        track_every: Measure them every this many epochs.
        track_samples: Analysis-set size for tracking.
        trainer: Registered trainer name.
        trainer_options: Trainer options.
        model_options: Model options.
        data_options: Dataset options.
        data_root: Where dataset files are looked for first.
        download: Let the dataset download its files if missing.
        device: Where to train.
        progress: Progress callback.
        store: A results store path to record the curves in.
        registry: The registry to use (default: the process-wide one).

    Returns:
        Curves, final metrics and the checkpoint path.
    """
    reg = registry or get_registry()
    for label, value in (("lr", lr), ("batch_size", batch_size), ("epochs", epochs)):
        if not value > 0:
            msg = f"{label} must be positive, got {value}"
            raise ConfigError(msg)
    for t in track:
        reg.get("metric", t)
    ds = load_dataset(
        data,
        root=data_root,
        download=download,
        subset=subset,
        seed=seed,
        options=data_options,
        registry=reg,
    )
    net = build_model(
        model,
        input_shape=ds.input_shape,
        num_classes=ds.num_classes,
        options=model_options,
        seed=seed,
        registry=reg,
    )
    spec_m = reg.get("model", model)
    ds_opts: dict[str, Any] = dict(
        reg.parse_options(reg.get("dataset", data), data_options or {})
    )
    if subset is not None:
        ds_opts["subset"] = subset
    config = TrainConfig(
        lr=lr,
        batch_size=batch_size,
        epochs=epochs,
        momentum=momentum,
        weight_decay=weight_decay,
        schedule=schedule,
        seed=seed,
        augment=augment,
        out_dir=Path(out_dir) if out_dir is not None else None,
        checkpoint_every=checkpoint_every,
        resume=resume,
        track=tuple(track),
        track_every=track_every,
        track_samples=track_samples,
        device=str(resolve_device(device)),
        model_name=model,
        model_options=dict(reg.parse_options(spec_m, model_options or {})),
        dataset_name=data,
        dataset_options=ds_opts,
    )
    algo = reg.create("trainer", trainer, trainer_options)
    if not isinstance(algo, Trainer):
        msg = (
            f"trainer {trainer!r} factory returned {type(algo).__name__} without fit()"
        )
        raise PluginContractError(msg)
    with reg.guard("trainer", trainer, "training"):
        result = algo.fit(net, ds, config, progress=progress or _no_progress)
    rs = open_store(store)
    if rs is not None:
        attrs = {
            "model": model,
            "model_options": config.model_options,
            "dataset": data,
            "dataset_options": ds_opts,
            "lr": lr,
            "batch_size": batch_size,
            "momentum": momentum,
            "weight_decay": weight_decay,
            "schedule": schedule,
            "seed": seed,
            "epochs": epochs,
            "trainer": trainer,
            "trainer_options": dict(
                reg.parse_options(reg.get("trainer", trainer), trainer_options or {})
            ),
            "checkpoint_path": str(result.checkpoint.resolve())
            if result.checkpoint
            else None,
            "checkpoint_sha256": file_sha(result.checkpoint),
            "final": dict(result.final),
        }
        run_id = rs.write_run(
            kind="train",
            attrs=run_attrs("train", attrs),
            training=dict(result.curves),
        )
        result = dataclasses.replace(result, attrs={**result.attrs, "run_id": run_id})
    return result
