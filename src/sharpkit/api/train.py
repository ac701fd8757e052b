"""``sharpkit.train``: a registered model trained on a registered dataset.

The trainer plugin does the training; this function resolves the names, checks
the arguments, and records the curves and the final checkpoint in the store.
Everything that can fail without training is checked before the first step:
the output directory must be writable and the store must open, so a typo in
``--out`` or ``--store`` costs seconds, not a training run.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sharpkit._fs import remove_stale_temps
from sharpkit._hints import arg
from sharpkit.api.datafiles import SourceDataset
from sharpkit.api.executor import Executor
from sharpkit.api.job import Inputs
from sharpkit.api.models import ModelKind, build_classified, model_kind
from sharpkit.api.provenance import file_sha
from sharpkit.api.resolve import (
    DEFAULT_SAMPLES,
    StoreLike,
    load_registered,
    open_store,
    resolve_data,
    resolve_device,
)
from sharpkit.errors import ConfigError
from sharpkit.interfaces import (
    Dataset,
    ProgressCallback,
    TrainConfig,
    TrainResult,
    no_progress,
)
from sharpkit.registry import Registry, get_registry

if TYPE_CHECKING:
    import torch

__all__ = ["run_train", "train"]


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
    """Train a model on a dataset with SGD (mean cross-entropy).

    Args:
        model: Registered model name (e.g. ``"mlp-bn"``), or your own
            ``"package.module:name"`` / ``"path/to/file.py:name"`` (a class or
            function called with ``model_options`` and, where its signature
            takes them, ``input_shape`` and ``num_classes``). Checkpoints record
            it; measuring them later needs the same name again, since sharpkit
            imports code only when the caller names it.
        data: Registered dataset name (e.g. ``"fashion-mnist"``), or a tensor
            file, an image folder or ``"package.module:name"`` with a test split
            (see :func:`measure`).
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
        model_options: Model options (your code's keyword arguments).
        data_options: Dataset options (those of a data file or folder, or your
            data function's keyword arguments).
        data_root: Where dataset files are looked for first.
        download: Let the dataset download its files if missing.
        device: Where to train.
        progress: Progress callback.
        store: A results store path to record the curves in.
        registry: The registry to use (default: the process-wide one).

    Returns:
        Curves, final metrics and the checkpoint path.
    """
    inputs = Inputs(
        data=data, data_options=data_options, data_root=data_root,
        download=download, model_name=model, model_options=model_options,
        seed=seed, device=device, store=store,
    )  # fmt: skip
    plan = TrainConfig(
        lr=lr, batch_size=batch_size, epochs=epochs, momentum=momentum,
        weight_decay=weight_decay, schedule=schedule, seed=seed, augment=augment,
        out_dir=Path(out_dir) if out_dir is not None else None,
        checkpoint_every=checkpoint_every, resume=resume, track=tuple(track),
        track_every=track_every, track_samples=track_samples,
    )  # fmt: skip
    return run_train(
        inputs, plan, subset=subset, trainer=trainer,
        trainer_options=trainer_options, progress=progress, registry=registry,
    )  # fmt: skip


def run_train(
    inputs: Inputs,
    plan: TrainConfig,
    *,
    subset: int | None = None,
    trainer: str = "sgd",
    trainer_options: Mapping[str, Any] | None = None,
    progress: ProgressCallback | None = None,
    registry: Registry | None = None,
) -> TrainResult:
    """:func:`train` with its inputs and hyper-parameters as typed values.

    ``plan``'s device, model and dataset fields are filled in here from
    ``inputs`` (whose ``model_name`` is the model to build, ``data`` the data).
    """
    ex = Executor(registry or get_registry())
    for label in ("lr", "batch_size", "epochs"):
        if not getattr(plan, label) > 0:
            msg = f"{label} must be positive, got {getattr(plan, label)}"
            raise ConfigError(msg)
    for t in plan.track:
        ex.registry.get("metric", t)
    call = ex.call("trainer", trainer, trainer_options)
    model, data = str(inputs.model_name), str(inputs.data)
    ds, ds_opts = _training_data(inputs, subset=subset, registry=ex.registry)
    net, model_opts = _model(model, ds, inputs, ex.registry)
    config = dataclasses.replace(
        plan,
        device=str(resolve_device(inputs.device)),
        model_name=model,
        model_options=model_opts,
        dataset_name=ds.name if isinstance(ds, SourceDataset) else data,
        dataset_options=ds_opts,
    )
    algo = ex.create(call)
    if config.out_dir is not None:
        _check_writable(config.out_dir)
        if config.resume:  # what a killed run was writing when it died
            remove_stale_temps(config.out_dir)
    ex.store = open_store(inputs.store)  # a bad store fails now, not after training
    result: TrainResult = ex.run(
        call, "training", algo.fit, net, ds, config, progress=progress or no_progress
    )
    attrs = {
        "model": model, "model_options": config.model_options,
        "dataset": config.dataset_name, "dataset_options": ds_opts,
        "lr": config.lr, "batch_size": config.batch_size,
        "momentum": config.momentum, "weight_decay": config.weight_decay,
        "schedule": config.schedule, "seed": config.seed, "epochs": config.epochs,
        "trainer": trainer, "trainer_options": dict(call.options),
        "checkpoint_path": str(result.checkpoint.resolve())
        if result.checkpoint else None,
        "checkpoint_sha256": file_sha(result.checkpoint),
        "final": dict(result.final),
    }  # fmt: skip
    run_id = ex.write("train", attrs, training=dict(result.curves))
    if run_id is not None:
        result = dataclasses.replace(result, attrs={**result.attrs, "run_id": run_id})
    return result


def _model(
    name: str, ds: Dataset, inputs: Inputs, registry: Registry
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The model to train (seeded) and the options its checkpoints record."""
    kind = model_kind(name, registry)  # the one place the name is classified
    net = build_classified(
        name,
        kind,
        input_shape=ds.input_shape,
        num_classes=ds.num_classes,
        options=inputs.model_options,
        seed=inputs.seed,
        registry=registry,
    )
    given = inputs.model_options or {}
    if kind is ModelKind.CODE:
        return net, dict(given)
    return net, dict(registry.parse_options(registry.get("model", name), given))


def _check_writable(out_dir: Path) -> None:
    """Create ``out_dir`` and write a file there, or say why that fails.

    Raises:
        ConfigError: The directory cannot be created or written to.
    """
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=out_dir, prefix=".", suffix=".tmp")
        os.close(fd)
        os.unlink(name)
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
        msg = (
            f"cannot write checkpoints to {arg('out_dir', '--out')} "
            f"{str(out_dir)!r} ({why}); choose a directory you can write to"
        )
        raise ConfigError(msg) from exc


def _training_data(
    inputs: Inputs, *, subset: int | None, registry: Registry
) -> tuple[Dataset, dict[str, Any]]:
    """The dataset to train on and the options to record for it."""
    data, options = str(inputs.data), inputs.data_options
    source = resolve_data(
        data, options=options, registry=registry, root=inputs.data_root
    )
    if isinstance(source, SourceDataset):
        if subset is not None:
            msg = (
                f"{arg('subset', '--subset')} applies to registered datasets; "
                f"save the examples to train on in {data!r} instead"
            )
            raise ConfigError(msg)
        if not source.has_test:
            msg = (
                f"training evaluates on a test split every epoch and {data!r} has "
                "none; add x_test/y_test to the file, or test/ beside train/ in "
                "an image folder"
            )
            raise ConfigError(msg)
        if source.train.targets.is_floating_point() or source.train.targets.ndim != 1:
            msg = (
                f"training minimises cross-entropy, so {data!r} needs integer "
                "class targets of shape (N,)"
            )
            raise ConfigError(msg)
        if os.path.exists(data):
            source.name = str(Path(data).resolve())  # found again from elsewhere
        return source, dict(options or {})
    ds = load_registered(  # resolve_data classified it: a registered name
        data,
        root=inputs.data_root,
        download=inputs.download,
        subset=subset,
        seed=inputs.seed,
        options=options,
        registry=registry,
    )
    opts: dict[str, Any] = dict(
        registry.parse_options(registry.get("dataset", data), options or {})
    )
    if subset is not None:
        opts["subset"] = subset
    return ds, opts
