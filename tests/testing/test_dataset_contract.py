"""DatasetContract: every built-in dataset passes it; each broken dataset fails it.

Fashion-MNIST and CIFAR-10 need their files (the Debian package and
``$SHARPKIT_DATA``); without them their cases are skipped with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch
from contract_cases import Case, contract_classes

import sharpkit
from sharpkit.testing import DatasetContract

CASES = {
    "synthetic": Case(
        "synthetic", {"options": {"n_train": "48", "n_test": "16", "shape": "2x3x3"}}
    ),
    "fashion-mnist": Case(
        "fashion-mnist", {"needs_files": True, "subset": 20}, marks=(pytest.mark.slow,)
    ),
    "cifar10": Case(
        "cifar10", {"needs_files": True, "subset": 20}, marks=(pytest.mark.slow,)
    ),
}
globals().update(contract_classes(DatasetContract, "dataset", CASES, __name__))


# --------------------------------------------------------------------------- broken


@dataclass(eq=False)
class Toy:
    name: str
    input_shape: tuple[int, ...]
    num_classes: int
    train: sharpkit.DataSplit
    test: sharpkit.DataSplit


def toy_spec(**bug: bool) -> sharpkit.DatasetSpec:
    def load_toy(
        root: Path | None = None,
        download: bool = False,
        subset: int | None = None,
        seed: int = 0,
        *,
        n_train: int = 40,
    ) -> Any:
        if bug.get("missing_files"):
            msg = "toy: files not found under /nowhere; pass --data-root"
            raise sharpkit.DataError(msg)
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(n_train + 10, 2, 3, generator=gen)
        y = torch.arange(n_train + 10) % 4
        if bug.get("float_targets"):
            y = y.float()
        if bug.get("labels_from_one"):
            y = y + 1
        if bug.get("flat_inputs"):
            x = x.flatten(1)
        train, test = (
            sharpkit.DataSplit(x[:n_train], y[:n_train]),
            sharpkit.DataSplit(x[n_train:], y[n_train:]),
        )
        if subset is not None and not bug.get("ignores_subset"):
            order = (
                torch.randperm(n_train)  # the global RNG
                if bug.get("global_rng")
                else torch.randperm(
                    n_train, generator=torch.Generator().manual_seed(seed)
                )
            )
            train = train.take(order[:subset])
        if bug.get("no_splits"):
            return {"train": train, "test": test}
        return Toy(
            name="toy-data",
            input_shape=(2, 3),
            num_classes=4,
            train=train,
            test=test,
        )

    return sharpkit.DatasetSpec(
        name="toy-data",
        factory=load_toy,
        description="A toy dataset",
        options=(sharpkit.Option(name="n_train", type=int, default=40),),
    )


def contract(**bug: bool) -> DatasetContract:
    class TestToy(DatasetContract):
        spec: ClassVar[sharpkit.DatasetSpec] = toy_spec(**bug)
        subset = 12

    return TestToy()


TESTS = [n for n in dir(DatasetContract) if n.startswith("test_")]


def test_the_correct_toy_passes_every_test() -> None:
    for name in TESTS:
        getattr(contract(), name)()


@pytest.mark.parametrize(
    ("bug", "test", "message"),
    [
        ("float_targets", "test_targets_are_class_indices", "not int64"),
        ("labels_from_one", "test_targets_are_class_indices", r"outside \[0, 4\)"),
        ("flat_inputs", "test_inputs_are_float_with_input_shape", "expected"),
        ("ignores_subset", "test_subset_gives_n_training_examples", "gave 40"),
        ("global_rng", "test_deterministic_for_seed", "global RNG"),
        ("no_splits", "test_factory_returns_dataset", "lacks the attributes"),
    ],
)
def test_a_broken_dataset_fails(bug: str, test: str, message: str) -> None:
    with pytest.raises(AssertionError, match=message):
        getattr(contract(**{bug: True}), test)()


def test_missing_files_skip_with_the_reason_when_declared() -> None:
    case = contract(missing_files=True)
    with pytest.raises(sharpkit.DataError):  # not declared: a failure
        case.test_factory_returns_dataset()
    type(case).needs_files = True
    with pytest.raises(pytest.skip.Exception, match="files not found under /nowhere"):
        case.test_factory_returns_dataset()


def test_augmentation_must_follow_its_generator() -> None:
    def bad_augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return x + torch.randn(x.shape)  # ignores the generator

    def shift_in_place(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return x.add_(1.0)

    for augment, message in (
        (bad_augment, "not reproducible"),
        (shift_in_place, "in place"),
    ):
        case = contract()
        ds = case.dataset()
        ds.train.augment = augment
        with pytest.raises(AssertionError, match=message):
            case.test_augmentation_is_seeded()
