"""The conformance suite for trainer plugins: :class:`TrainerContract`."""

from __future__ import annotations

import math
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import sharpkit
from sharpkit.testing._checks import (
    check_spec,
    create,
    expect,
    global_rng,
    is_number,
    same_arrays,
)
from sharpkit.testing._fixtures import tiny_dataset, tiny_model

if TYPE_CHECKING:
    import torch

__all__ = ["BASE_CURVES", "TrainerContract"]

BASE_CURVES = sharpkit.TrainResult.BASE_CURVES
"""The per-epoch curves every :class:`~sharpkit.TrainResult` carries."""


@contextmanager
def _tmpdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="sharpkit-contract-") as tmp:
        yield Path(tmp)


def _same_state(
    a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor], what: str
) -> None:
    expect(list(a) == list(b), f"{what}: different state_dict keys")
    for key, value in a.items():
        expect(sharpkit.same_bits(value, b[key]), f"{what}: {key!r} differs")


class TrainerContract:
    """Base class of the trainer conformance tests; subclass it as ``Test<Name>``.

    Examples:
        ```python
        class TestMyTrainer(TrainerContract):
            spec = MY_TRAINER_SPEC
            options = {"warmup": 1}
            supports_resume = False     # if it cannot continue from out_dir
        ```

    The tests train :func:`tiny_model` (float32) on :func:`tiny_dataset` for
    :attr:`epochs` epochs; override :meth:`make_dataset` and :meth:`make_model`
    together for a trainer with needs.

    Attributes:
        spec: The trainer spec under test.
        options: Options passed to the factory (CLI strings or Python values).
        epochs: Epochs of each test run (at least 2, for the resume test).
        config: Extra :class:`~sharpkit.TrainConfig` fields (``lr``,
            ``batch_size``, ``momentum``, ...) for every run.
        supports_resume: Whether the trainer continues from ``out_dir`` when
            ``config.resume`` is set; then a run split in two calls must equal an
            uninterrupted one.
    """

    spec: ClassVar[sharpkit.TrainerSpec]
    options: ClassVar[Mapping[str, Any]] = {}
    epochs: ClassVar[int] = 2
    config: ClassVar[Mapping[str, Any]] = {}
    supports_resume: ClassVar[bool] = True

    def make_dataset(self) -> sharpkit.Dataset:
        """Return the training data (default: :func:`tiny_dataset`)."""
        return tiny_dataset()

    def make_model(self, seed: int = 0) -> torch.nn.Module:
        """Return a freshly initialised model for :meth:`make_dataset`'s data.

        Args:
            seed: Seed of the initialisation.
        """
        import torch

        return tiny_model(seed=seed, dtype=torch.float32)

    def make_config(self, **overrides: Any) -> sharpkit.TrainConfig:
        """Return a run's configuration: defaults, then :attr:`config`, ``overrides``.

        Args:
            **overrides: TrainConfig fields for this run (``out_dir``, ``resume``...).
        """
        fields: dict[str, Any] = {
            "lr": 0.05,
            "batch_size": 16,
            "epochs": self.epochs,
            "seed": 0,
            "model_name": "tiny",
            "dataset_name": "tiny",
        }
        fields.update(self.config)
        fields.update(overrides)
        return sharpkit.TrainConfig(**fields)

    def make_trainer(self) -> sharpkit.Trainer:
        """Build the trainer from the spec with :attr:`options`, as sharpkit does."""
        trainer: sharpkit.Trainer = create(self.spec, self.options)
        return trainer

    def fit(
        self,
        config: sharpkit.TrainConfig,
        data: sharpkit.Dataset | None = None,
        *,
        model_seed: int | None = None,
    ) -> sharpkit.TrainResult:
        """Train a fresh model as sharpkit does.

        Args:
            config: The run's configuration.
            data: The data (default: :meth:`make_dataset`).
            model_seed: Seed of the model's initialisation (default:
                ``config.seed``, as ``sharpkit.train`` does).
        """

        def progress(
            completed: float,
            total: float | None = None,
            /,
            *,
            description: str | None = None,
            **info: Any,
        ) -> None:
            return None

        model = self.make_model(seed=config.seed if model_seed is None else model_seed)
        data = self.make_dataset() if data is None else data
        result = self.make_trainer().fit(model, data, config, progress=progress)
        expect(
            isinstance(result, sharpkit.TrainResult),
            f"fit returned {type(result).__name__}, not a TrainResult",
        )
        return result

    def _checkpoint(self, result: sharpkit.TrainResult) -> sharpkit.Checkpoint:
        expect(result.checkpoint is not None, "no checkpoint although out_dir is set")
        assert result.checkpoint is not None  # for the type checker
        return sharpkit.load_checkpoint(result.checkpoint)

    # ------------------------------------------------------------------ tests

    def test_spec_is_valid(self) -> None:
        """The spec passes :func:`check_spec`: the registry's rules and more."""
        check_spec(self.spec, "trainer")

    def test_factory_returns_trainer(self) -> None:
        """The factory returns an object with ``fit(model, data, config)``."""
        trainer = self.make_trainer()
        expect(
            isinstance(trainer, sharpkit.Trainer),
            f"the factory returned {type(trainer).__name__}, which has no fit()",
        )

    def test_curves_have_one_value_per_epoch(self) -> None:
        """The curves include the base curves, one value per epoch; ``final`` agrees.

        ``final[name]`` equals the last value of the curve ``name``, except that a
        trainer may replace it by an exact evaluation of the final model (as the
        built-in trainers do for ``train_loss`` and ``train_accuracy``) when it
        keeps the curve's last value as ``final[name + "_running"]``.
        """
        import numpy as np

        result = self.fit(self.make_config())
        curves = result.curves
        missing = [c for c in BASE_CURVES if c not in curves]
        expect(not missing, f"curves lack {missing}")
        for name, values in curves.items():
            array: object = values
            expect(
                isinstance(array, np.ndarray) and array.shape == (self.epochs,),
                f"curve {name!r} must be a 1-D array of {self.epochs} values "
                f"(one per epoch), got {getattr(values, 'shape', values)!r}",
            )
        expect(
            [int(e) for e in curves["epoch"]] == list(range(1, self.epochs + 1)),
            f"epoch curve is {list(curves['epoch'])}, expected 1..{self.epochs}",
        )
        expect(
            bool(np.isfinite(curves["train_loss"]).all()), "train_loss is not finite"
        )
        for name, value in result.final.items():
            expect(
                is_number(value),
                f"final {name!r} is a {type(value).__name__}, not a float",
            )
            if name in curves:
                # A trainer may report an exact end-of-training evaluation as
                # final[name] when final[name + "_running"] keeps the curve's value.
                kept = f"{name}_running"
                shown = result.final.get(kept, value)
                last = float(curves[name][-1])
                expect(
                    shown == last or (math.isnan(shown) and math.isnan(last)),
                    f"final {kept if kept in result.final else name!r} = {shown} "
                    f"but the curve ends at {last}",
                )
        expect(
            is_number(result.seconds) and result.seconds >= 0,
            f"seconds must be a non-negative float, got {result.seconds!r}",
        )

    def test_deterministic_for_seed(self) -> None:
        """The same seed gives the same final weights and curves, bit for bit."""
        with _tmpdir() as tmp:
            with global_rng(101):
                a = self.fit(self.make_config(out_dir=tmp / "a"))
            with global_rng(202):
                b = self.fit(self.make_config(out_dir=tmp / "b"))
            _same_state(
                self._checkpoint(a).state_dict,
                self._checkpoint(b).state_dict,
                "two runs with seed 0 (draw from config.seed, not the global RNG)",
            )
        for name in BASE_CURVES:
            expect(
                same_arrays(a.curves[name], b.curves[name]),
                f"curve {name!r} differs between two runs with seed 0",
            )

    def test_checkpoint_in_out_dir_is_loadable(self) -> None:
        """The final checkpoint lies in ``out_dir`` and loads into a fresh model."""
        with _tmpdir() as tmp:
            out = tmp / "run"
            result = self.fit(self.make_config(out_dir=out))
            expect(result.checkpoint is not None, "out_dir is set but no checkpoint")
            assert result.checkpoint is not None  # for the type checker
            path = Path(result.checkpoint)
            expect(
                path.resolve().parent == out.resolve() and path.is_file(),
                f"the checkpoint {path} is not a file in out_dir {out}",
            )
            ckpt = sharpkit.load_checkpoint(path)  # weights_only=True
        model = self.make_model(seed=99)
        model.load_state_dict(ckpt.state_dict, strict=True)
        epoch = ckpt.meta.epoch
        expect(
            epoch is None or epoch == self.epochs,
            f"the final checkpoint says epoch {epoch}, expected {self.epochs}",
        )

    def test_no_out_dir_no_checkpoint(self) -> None:
        """With ``out_dir=None`` nothing is kept: ``checkpoint`` is ``None``."""
        result = self.fit(self.make_config(out_dir=None))
        expect(
            result.checkpoint is None,
            f"out_dir is None but fit reports checkpoint {result.checkpoint}",
        )

    def test_data_left_unchanged(self) -> None:
        """Training reads the dataset's tensors and never writes to them."""
        import torch

        data = self.make_dataset()
        before = {
            part: (
                getattr(data, part).inputs.clone(),
                getattr(data, part).targets.clone(),
            )
            for part in ("train", "test")
        }
        self.fit(self.make_config(), data)
        for part, (x, y) in before.items():
            split = getattr(data, part)
            expect(
                torch.equal(split.inputs, x) and torch.equal(split.targets, y),
                f"fit changed the {part} split in place",
            )

    def test_resume_equals_uninterrupted(self) -> None:
        """A run stopped after one epoch and resumed equals the uninterrupted run.

        The resumed call gets a model initialised from another seed, so only
        continuing from ``out_dir`` (weights, optimizer state, data order, RNG)
        reproduces the uninterrupted run's weights and curves bit for bit.
        Skipped when :attr:`supports_resume` is ``False``.
        """
        if not self.supports_resume:
            import pytest

            pytest.skip(f"{self.spec.name} does not support resume")
        expect(self.epochs >= 2, "set epochs >= 2 to test resuming")
        with _tmpdir() as tmp:
            with global_rng(101):
                whole = self.fit(self.make_config(out_dir=tmp / "whole"))
            with global_rng(202):
                self.fit(self.make_config(out_dir=tmp / "split", epochs=1))
            with global_rng(303):
                resumed = self.fit(
                    self.make_config(out_dir=tmp / "split", resume=True),
                    model_seed=12345,
                )
            _same_state(
                self._checkpoint(whole).state_dict,
                self._checkpoint(resumed).state_dict,
                "resumed run vs uninterrupted run",
            )
        for name in BASE_CURVES:
            expect(
                same_arrays(whole.curves[name], resumed.curves[name]),
                f"curve {name!r} of the resumed run differs from the uninterrupted "
                "one (the curves cover every epoch, the resumed ones included)",
            )
