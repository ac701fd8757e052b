"""A trainer plugin: full-batch gradient descent, registered as ``full-batch-gd``.

``fit`` trains the model it is given on ``data.train``, evaluates on
``data.test`` every epoch, writes its final checkpoint to ``config.out_dir``
(when set) and returns per-epoch curves. Full-batch steps use no randomness, so
the same initial model gives the same run, bit for bit.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import sharpkit

if TYPE_CHECKING:
    import torch


class FullBatchGD:
    """Plain gradient descent on the whole training split (cross-entropy)."""

    def __init__(self, eval_batch_size: int = 1024) -> None:
        self.eval_batch_size = eval_batch_size

    def fit(
        self,
        model: torch.nn.Module,
        data: sharpkit.Dataset,
        config: sharpkit.TrainConfig,
        /,
        *,
        progress: sharpkit.ProgressCallback | None = None,
    ) -> sharpkit.TrainResult:
        """Train ``model`` for ``config.epochs`` steps of size ``config.lr``."""
        import numpy as np
        import torch

        if config.resume:
            msg = "full-batch-gd does not resume; start the run again"
            raise sharpkit.ConfigError(msg)
        start = time.perf_counter()
        device = torch.device(config.device)
        model.to(device)
        x, y = data.train.inputs.to(device), data.train.targets.to(device)
        opt = torch.optim.SGD(model.parameters(), lr=config.lr)
        curves = {
            k: []
            for k in (
                "epoch",
                "lr",
                "train_loss",
                "train_accuracy",
                "test_loss",
                "test_accuracy",
            )
        }
        for epoch in range(1, config.epochs + 1):
            model.train()
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
            model.eval()
            for part, split in (("train", data.train), ("test", data.test)):
                loss, acc = self._evaluate(model, split, device)
                curves[f"{part}_loss"].append(loss)
                curves[f"{part}_accuracy"].append(acc)
            curves["epoch"].append(epoch)
            curves["lr"].append(config.lr)
            if progress is not None:
                progress(epoch, config.epochs, loss=curves["train_loss"][-1])
        arrays = {k: np.asarray(v, dtype=np.float64) for k, v in curves.items()}
        final = {k: float(v[-1]) for k, v in arrays.items()}
        checkpoint = None
        if config.out_dir is not None:
            meta = sharpkit.CheckpointMeta(
                model=config.model_name or None,
                model_options=dict(config.model_options),
                dataset=config.dataset_name or data.name,
                lr=config.lr,
                batch_size=len(data.train),
                seed=config.seed,
                epoch=config.epochs,
                epochs=config.epochs,
                final=final,
                extra={
                    "input_shape": list(data.input_shape),
                    "num_classes": data.num_classes,
                    "trainer": "full-batch-gd",
                },
            )
            checkpoint = sharpkit.save_checkpoint(
                config.out_dir / "final.pt", model, meta
            )
        return sharpkit.TrainResult(
            checkpoint=checkpoint,
            curves=arrays,
            final=final,
            seconds=time.perf_counter() - start,
        )

    def _evaluate(
        self, model: torch.nn.Module, split: sharpkit.DataSplit, device: torch.device
    ) -> tuple[float, float]:
        import torch

        total, correct = 0.0, 0
        with torch.no_grad():
            for xb, yb in split.batches(self.eval_batch_size, device=device):
                out = model(xb)
                total += float(torch.nn.functional.cross_entropy(out, yb)) * len(xb)
                correct += int((out.argmax(1) == yb).sum())
        return total / len(split), correct / len(split)


FULL_BATCH_GD = sharpkit.TrainerSpec(
    name="full-batch-gd",
    factory=FullBatchGD,
    description="Full-batch gradient descent (no noise: the S = N end of η/S).",
    options=(
        sharpkit.Option(
            name="eval_batch_size",
            type=int,
            default=1024,
            help="Examples per forward pass when evaluating.",
        ),
    ),
)


@sharpkit.hookimpl
def sharpkit_register_trainers() -> list[sharpkit.TrainerSpec]:
    """Register the trainer."""
    return [FULL_BATCH_GD]
