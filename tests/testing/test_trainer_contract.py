"""TrainerContract: the built-in trainer passes it; each broken trainer fails it.

The broken trainers are one small, correct, resumable SGD loop (written against
the public API only, as a plugin would be) with one defect switched on at a time.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import torch
from contract_cases import Case, contract_classes

import sharpkit
from sharpkit.testing import TrainerContract

CASES = {
    "sgd": Case("sgd", {"config": {"momentum": 0.9}}),
    "sgd-drop-last": Case("sgd", {"options": {"drop_last": "true"}}),
    "sam": Case("sam", {"options": {"rho": "0.1"}, "config": {"momentum": 0.9}}),
    "asam": Case("asam", {"config": {"weight_decay": 1e-3}}),
}
globals().update(contract_classes(TrainerContract, "trainer", CASES, __name__))


# --------------------------------------------------------------------------- broken


class ToyTrainer:
    """Plain SGD with exact resume from ``out_dir/last.pt``; defects by flags."""

    def __init__(self, **bug: bool) -> None:
        self.bug = bug

    def fit(
        self,
        model: torch.nn.Module,
        data: sharpkit.Dataset,
        config: sharpkit.TrainConfig,
        /,
        *,
        progress: sharpkit.ProgressCallback | None = None,
    ) -> sharpkit.TrainResult:
        start = time.perf_counter()
        opt = torch.optim.SGD(model.parameters(), lr=config.lr)
        gen = torch.Generator().manual_seed(config.seed)
        curves: dict[str, list[float]] = {
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
        if self.bug.get("no_test_accuracy"):
            del curves["test_accuracy"]
        first = 1
        out = config.out_dir
        if self.bug.get("writes_elsewhere") and out is not None:
            out = out.parent / (out.name + "-elsewhere")
        last = out / "last.pt" if out is not None else None
        resume = config.resume and not self.bug.get("ignores_resume")
        if resume and last is not None and last.exists():
            ckpt = sharpkit.load_checkpoint(last)
            assert ckpt.train_state is not None
            model.load_state_dict(ckpt.state_dict)
            opt.load_state_dict(ckpt.train_state["optimizer"])
            if not self.bug.get("forgets_order"):
                gen.set_state(ckpt.train_state["generator"])
            curves = {k: list(v) for k, v in ckpt.train_state["curves"].items()}
            first = int(ckpt.train_state["epoch"]) + 1
        if self.bug.get("normalises_in_place"):
            data.train.inputs.sub_(data.train.inputs.mean())
        x, y = data.train.inputs, data.train.targets
        for epoch in range(first, config.epochs + 1):
            model.train()
            order = (
                torch.randperm(len(x))
                if self.bug.get("global_rng")
                else torch.randperm(len(x), generator=gen)
            )
            total, correct = 0.0, 0
            for i in range(0, len(x), config.batch_size):
                idx = order[i : i + config.batch_size]
                logits = model(x[idx])
                loss = torch.nn.functional.cross_entropy(logits, y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(idx)
                correct += int((logits.argmax(1) == y[idx]).sum())
            model.eval()
            with torch.no_grad():
                logits = model(data.test.inputs)
                test_loss = float(
                    torch.nn.functional.cross_entropy(logits, data.test.targets)
                )
                test_acc = float((logits.argmax(1) == data.test.targets).float().mean())
            row = {
                "epoch": float(epoch),
                "lr": config.lr,
                "train_loss": total / len(x),
                "train_accuracy": correct / len(x),
                "test_loss": test_loss,
                "test_accuracy": test_acc,
            }
            for k, values in curves.items():
                values.append(row[k])
            if out is not None:
                state = {
                    "epoch": epoch,
                    "optimizer": opt.state_dict(),
                    "generator": gen.get_state(),
                    "curves": curves,
                }
                meta = sharpkit.CheckpointMeta(epoch=epoch, seed=config.seed)
                sharpkit.save_checkpoint(last, model, meta, train_state=state)
        final_path = None
        if out is not None and not self.bug.get("no_checkpoint"):
            final_path = Path(out) / "final.pt"
            ckpt = sharpkit.load_checkpoint(Path(out) / "last.pt")
            sharpkit.save_checkpoint(final_path, ckpt.state_dict, ckpt.meta)
        arrays = {k: np.asarray(v, dtype=np.float64) for k, v in curves.items()}
        if self.bug.get("short_curve"):
            arrays["lr"] = arrays["lr"][:1]
        final = {k: float(v[-1]) for k, v in arrays.items()}
        if self.bug.get("final_from_first_epoch"):
            final["train_loss"] = float(arrays["train_loss"][0])
        seconds = time.perf_counter() - start
        return sharpkit.TrainResult(
            checkpoint=final_path, curves=arrays, final=final, seconds=seconds
        )


def toy_spec(**bug: bool) -> sharpkit.TrainerSpec:
    def make() -> ToyTrainer:
        return ToyTrainer(**bug)

    return sharpkit.TrainerSpec(name="toy-sgd", factory=make, description="Toy SGD")


def contract(**bug: bool) -> TrainerContract:
    class TestToy(TrainerContract):
        spec: ClassVar[sharpkit.TrainerSpec] = toy_spec(**bug)

    return TestToy()


TESTS = [n for n in dir(TrainerContract) if n.startswith("test_")]


def test_the_correct_toy_passes_every_test() -> None:
    for name in TESTS:
        getattr(contract(), name)()


@pytest.mark.parametrize(
    ("bug", "test", "message"),
    [
        ("no_test_accuracy", "test_curves_have_one_value_per_epoch", "lack"),
        ("short_curve", "test_curves_have_one_value_per_epoch", "'lr' must be"),
        ("final_from_first_epoch", "test_curves_have_one_value_per_epoch", "ends at"),
        ("global_rng", "test_deterministic_for_seed", "global RNG"),
        ("writes_elsewhere", "test_checkpoint_in_out_dir_is_loadable", "not a file"),
        ("no_checkpoint", "test_checkpoint_in_out_dir_is_loadable", "no checkpoint"),
        ("normalises_in_place", "test_data_left_unchanged", "in place"),
        ("ignores_resume", "test_resume_equals_uninterrupted", "differs"),
        ("forgets_order", "test_resume_equals_uninterrupted", "differs"),
    ],
)
def test_a_broken_trainer_fails(bug: str, test: str, message: str) -> None:
    with pytest.raises(AssertionError, match=message):
        getattr(contract(**{bug: True}), test)()


def test_resume_is_skipped_when_not_supported() -> None:
    case = contract(ignores_resume=True)
    type(case).supports_resume = False
    with pytest.raises(pytest.skip.Exception, match="does not support resume"):
        case.test_resume_equals_uninterrupted()


def test_the_loss_goes_down_on_the_tiny_data() -> None:
    # The default problem is learnable, so authors can add convergence checks.
    result = contract().fit(contract().make_config(epochs=5, lr=0.2))
    loss = result.curves["train_loss"]
    assert loss[-1] < 0.5 * loss[0]
    assert math.isfinite(result.final["test_accuracy"])


def test_trainer_receives_a_progress_callback() -> None:
    seen: list[Any] = []

    class Spy(ToyTrainer):
        def fit(self, *args: Any, **kwargs: Any) -> sharpkit.TrainResult:
            seen.append(kwargs.get("progress"))
            return super().fit(*args, **kwargs)

    class TestSpy(TrainerContract):
        spec: ClassVar[sharpkit.TrainerSpec] = sharpkit.TrainerSpec(
            name="spy", factory=Spy, description="Spy"
        )

    TestSpy().test_no_out_dir_no_checkpoint()
    assert callable(seen[0])
