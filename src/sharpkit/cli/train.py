"""``sharpkit train``: train a registered model; keep checkpoints and curves."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any

import typer

from sharpkit.cli._options import (
    DEFAULT_STORE,
    DataOptionOpt,
    DataRootOpt,
    DeviceOpt,
    DownloadOpt,
    JsonOpt,
    ModelOptionOpt,
    NoStoreOpt,
    OptionOpt,
    SeedOpt,
    StoreOpt,
    complete_dataset,
    complete_metric,
    complete_model,
    parse_options,
    parse_pairs,
)
from sharpkit.cli._progress import progress_display
from sharpkit.cli._render import fmt_number, out_console, print_json, print_table
from sharpkit.cli._threads import ThreadsOpt, use_threads
from sharpkit.errors import ConfigError

MAX_ROWS = 12


def folder_path(text: str) -> Path:
    """``--out``'s value as a path; an empty one names no folder.

    ``Path("")`` is ``Path(".")``: ``--out ''`` (an unset shell variable) would
    write the run into the current folder, over what is there.

    Raises:
        typer.BadParameter: ``text`` is empty or blank.
    """
    if not text.strip():
        msg = "is empty; name the folder for the run, e.g. --out runs/first"
        raise typer.BadParameter(msg)
    return Path(text)


def default_out_dir(
    model: str, data: str, lr: float, batch_size: int, seed: int
) -> Path:
    """Return ``runs/<model>_<data>_lr<η>_bs<S>_seed<seed>``.

    Characters other than letters, digits, ``.``, ``_`` and ``-`` become ``-``
    (``timm:resnet18`` → ``timm-resnet18``; a data path → its name).
    """
    data = Path(data).name if "/" in data or os.sep in data else data
    name = f"{model}_{data}_lr{lr:g}_bs{batch_size}_seed{seed}"
    return Path("runs") / re.sub(r"[^A-Za-z0-9._-]", "-", name)


def _split_options(
    items: list[str] | None, model: str, data: str, trainer: str
) -> tuple[dict[str, str], dict[str, str], dict[str, str]]:
    """Route ``-o`` items to the model, the dataset or the trainer.

    ``name.key=value`` goes to the component called ``name``; an unscoped
    ``key=value`` goes to whichever of the three has an option ``key``.
    """
    from sharpkit.api.datafiles import is_data_source
    from sharpkit.api.models import is_code_model
    from sharpkit.registry import get_registry

    reg = get_registry()
    specs: dict[str, Any] = {trainer: reg.get("trainer", trainer)}
    if not is_code_model(model, reg):
        specs[model] = reg.get("model", model)
    if not is_data_source(data, reg.names("dataset")):
        specs[data] = reg.get("dataset", data)
    names = list(specs)
    scoped = parse_options(items, names)
    for item in items or []:
        key = item.partition("=")[0]
        if "." in key:
            continue
        owners = [n for n in names if specs[n].option(key) is not None]
        if not owners:
            known = sorted({o.name for s in specs.values() for o in s.options})
            msg = (
                f"neither {model!r}, {data!r} nor trainer {trainer!r} has an option "
                f"{key!r}; their options: {', '.join(known) or 'none'} (your own "
                "model and data take --model-option and --data-option)"
            )
            raise ConfigError(msg)
        for n in names:
            if n not in owners:
                scoped[n].pop(key, None)
    return scoped.get(model, {}), scoped.get(data, {}), scoped[trainer]


def _rows(curves: dict[str, Any]) -> list[dict[str, Any]]:
    """Every epoch if there are few; else epoch 1, every k-th epoch, and the last."""
    n = len(curves["epoch"])
    if n <= MAX_ROWS:
        picks = list(range(n))
    else:
        k = -(-n // (MAX_ROWS - 2))
        picks = sorted({0, n - 1} | set(range(k - 1, n, k)))
    return [{key: _scalar(v[i]) for key, v in curves.items()} for i in picks]


def _scalar(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def train(
    model: Annotated[
        str,
        typer.Option(
            "--model",
            help="Architecture: mlp-bn, resnet-cifar, vgg-cifar, timm:<name>, ..., "
            "or your own package.module:Class or path/to/file.py:Class.",
            autocompletion=complete_model,
        ),
    ],
    data: Annotated[
        str,
        typer.Option(
            "--data",
            "-d",
            help="Dataset: fashion-mnist, cifar10, synthetic, ..., or a tensor "
            "file, image folder or package.module:name with a test split.",
            autocompletion=complete_dataset,
        ),
    ],
    lr: Annotated[float, typer.Option("--lr", help="Initial learning rate η.")],
    batch_size: Annotated[
        int, typer.Option("--batch-size", "-b", help="Batch size S.")
    ],
    epochs: Annotated[
        int, typer.Option("--epochs", "-e", help="Passes over the data.")
    ],
    momentum: Annotated[
        float, typer.Option("--momentum", help="SGD momentum (0: plain SGD).")
    ] = 0.0,
    weight_decay: Annotated[
        float, typer.Option("--weight-decay", help="L2 penalty coefficient.")
    ] = 0.0,
    schedule: Annotated[
        str,
        typer.Option(
            "--schedule",
            help=(
                "constant, step:60,100,140,180:0.1 (×0.1 after those epochs), "
                "every:25:0.5 (×0.5 every 25 epochs), resnet or vgg."
            ),
        ),
    ] = "constant",
    seed: SeedOpt = 0,
    subset: Annotated[
        int | None,
        typer.Option(
            "--subset",
            help="Train on a stratified, seeded subset of N training examples.",
        ),
    ] = None,
    augment: Annotated[
        bool,
        typer.Option(
            "--augment/--no-augment",
            help="Use the dataset's training augmentation (CIFAR: crop + flip).",
        ),
    ] = False,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            parser=folder_path,
            metavar="<path>",
            help=(
                "Checkpoint directory "
                "(default: runs/<model>_<data>_lr<η>_bs<S>_seed<seed>)."
            ),
        ),
    ] = None,
    checkpoint_every: Annotated[
        int,
        typer.Option(
            "--checkpoint-every",
            help="Also keep epoch-NNNN.pt every K epochs (0: only last.pt/final.pt).",
        ),
    ] = 0,
    resume: Annotated[
        bool,
        typer.Option("--resume", help="Continue the run in --out from its last.pt."),
    ] = False,
    track: Annotated[
        list[str] | None,
        typer.Option(
            "--track",
            help="Metric to measure during training (e.g. spectral); repeatable.",
            autocompletion=complete_metric,
        ),
    ] = None,
    track_every: Annotated[
        int,
        typer.Option("--track-every", help="Measure tracked metrics every K epochs."),
    ] = 1,
    track_samples: Annotated[
        int,
        typer.Option(
            "--track-samples", help="Training examples in the tracking analysis set."
        ),
    ] = 2048,
    trainer: Annotated[
        str, typer.Option("--trainer", help="Registered trainer.")
    ] = "sgd",
    option: OptionOpt = None,
    model_option: ModelOptionOpt = None,
    data_option: DataOptionOpt = None,
    data_root: DataRootOpt = None,
    download: DownloadOpt = False,
    device: DeviceOpt = "cpu",
    store: StoreOpt = DEFAULT_STORE,
    no_store: NoStoreOpt = False,
    threads: ThreadsOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Train a model with SGD; write checkpoints, curves and a results-store run.

    Example: sharpkit train --model mlp-bn --data fashion-mnist --lr 0.1
    --batch-size 128 --epochs 200
    """
    from sharpkit.api.job import Inputs
    from sharpkit.api.train import run_train
    from sharpkit.interfaces import TrainConfig

    model_opts, data_opts, trainer_opts = _split_options(option, model, data, trainer)
    use_threads(threads)
    model_opts.update(parse_pairs(model_option, "--model-option"))
    data_opts.update(parse_pairs(data_option, "--data-option"))
    inputs = Inputs(
        data=data, data_options=data_opts, data_root=data_root, download=download,
        model_name=model, model_options=model_opts, seed=seed, device=device,
        store=None if no_store else store,
    )  # fmt: skip
    plan = TrainConfig(
        lr=lr, batch_size=batch_size, epochs=epochs, momentum=momentum,
        weight_decay=weight_decay, schedule=schedule, seed=seed, augment=augment,
        out_dir=out or default_out_dir(model, data, lr, batch_size, seed),
        checkpoint_every=checkpoint_every, resume=resume, track=tuple(track or ()),
        track_every=track_every, track_samples=track_samples,
    )  # fmt: skip
    with progress_display("train") as callback:
        result = run_train(
            inputs, plan, subset=subset, trainer=trainer,
            trainer_options=trainer_opts, progress=callback,
        )  # fmt: skip
    curves = {k: [_scalar(x) for x in v] for k, v in result.curves.items()}
    run_id = result.attrs.get("run_id")
    if json_out:
        print_json(
            {
                "checkpoint": str(result.checkpoint) if result.checkpoint else None,
                "run_id": run_id,
                "store": None if no_store else str(store),
                "final": dict(result.final),
                "seconds": result.seconds,
                "attrs": dict(result.attrs),
                "curves": curves,
            }
        )
        return
    columns = [
        ("epoch", "epoch"),
        ("lr", "lr"),
        ("train_loss", "train loss"),
        ("train_accuracy", "train acc"),
        ("test_loss", "test loss"),
        ("test_accuracy", "test acc"),
    ]
    for metric in track or ():
        columns.append((metric, metric))
    title = f"{model} on {data}: lr={lr:g}, batch size={batch_size}, seed={seed}"
    print_table(_rows(curves), columns, title=title)
    resumed = result.attrs.get("resumed_from_epoch")
    if resumed:
        out_console.print(f"resumed from epoch {resumed}", highlight=False)
    sps = result.attrs.get("samples_per_second")
    speed = f", {sps:,.0f} samples/s" if isinstance(sps, float) else ""
    out_console.print(f"{fmt_number(result.seconds, 4)} s{speed}", highlight=False)
    if result.checkpoint is not None:
        out_console.print(f"checkpoint: {result.checkpoint}", highlight=False)
    if run_id is not None:
        out_console.print(f"run: {run_id} in {store}", highlight=False)
