"""The conformance suite for dataset plugins: :class:`DatasetContract`."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import sharpkit
from sharpkit.testing._checks import check_spec, create, expect, global_rng

__all__ = ["DatasetContract"]

# One loaded dataset, shared by the tests of one contract class (pytest runs a
# class's tests one after another); real datasets take seconds to read.
_LAST: list[tuple[tuple[Any, ...], sharpkit.Dataset]] = []


class DatasetContract:
    """Base class of the dataset conformance tests; subclass it as ``Test<Name>``.

    Examples:
        ```python
        class TestMyData(DatasetContract):
            spec = MY_DATA_SPEC
            needs_files = True          # skip, with the reason, when they are absent
            root = os.environ.get("MY_DATA_DIR")
        ```

    The factory is called as sharpkit calls it,
    ``factory(root=..., download=False, subset=..., seed=..., **options)``; the
    suite never downloads anything.

    Attributes:
        spec: The dataset spec under test.
        options: Options passed to the factory (CLI strings or Python values).
        root: The folder passed as ``root`` (``None``: the dataset's own search).
        needs_files: The dataset reads files: when the factory raises
            :class:`~sharpkit.DataError` (not found), the tests are skipped with
            its message instead of failing.
        subset: Training examples the tests ask for (``subset=``).
    """

    spec: ClassVar[sharpkit.DatasetSpec]
    options: ClassVar[Mapping[str, Any]] = {}
    root: ClassVar[str | os.PathLike[str] | None] = None
    needs_files: ClassVar[bool] = False
    subset: ClassVar[int] = 32

    def load(self, *, subset: int | None, seed: int = 0) -> sharpkit.Dataset:
        """Call the factory as sharpkit does (a fresh load, never cached).

        Args:
            subset: Training examples to keep (``None``: all).
            seed: Seed of the subset.

        Raises:
            pytest.skip.Exception: ``needs_files`` is set and the data are absent.
        """
        root = Path(self.root) if self.root is not None else None
        try:
            ds = create(
                self.spec,
                self.options,
                root=root,
                download=False,
                subset=subset,
                seed=seed,
            )
        except sharpkit.DataError as exc:
            if not self.needs_files:
                raise
            import pytest

            pytest.skip(f"{self.spec.name}: data files not available: {exc}")
        expect(
            isinstance(ds, sharpkit.Dataset),
            f"the factory returned {type(ds).__name__}, which lacks the attributes "
            "of sharpkit.Dataset (name, input_shape, num_classes, train, test)",
        )
        return ds  # type: ignore[no-any-return]

    def dataset(self) -> sharpkit.Dataset:
        """Return the dataset loaded with ``subset``, seed 0 (cached per class)."""
        key = (type(self), self.spec, repr(sorted(self.options.items())), self.root)
        if _LAST and _LAST[0][0] == key:
            return _LAST[0][1]
        _LAST.clear()
        ds = self.load(subset=self.subset)
        _LAST.append((key, ds))
        return ds

    # ------------------------------------------------------------------ tests

    def test_spec_is_valid(self) -> None:
        """The spec passes :func:`check_spec`: the registry's rules and more."""
        check_spec(self.spec, "dataset")

    def test_factory_returns_dataset(self) -> None:
        """The factory returns a :class:`~sharpkit.Dataset` with sound metadata."""
        ds = self.dataset()
        expect(
            ds.name == self.spec.name,
            f"dataset name {ds.name!r} differs from the spec's {self.spec.name!r}",
        )
        shape: object = ds.input_shape
        expect(
            isinstance(shape, tuple)
            and len(shape) >= 1
            and all(isinstance(d, int) and d >= 1 for d in shape),
            f"input_shape must be a tuple of positive ints, got {shape!r}",
        )
        classes: object = ds.num_classes
        expect(
            isinstance(classes, int) and classes >= 2,
            f"num_classes must be an int >= 2, got {ds.num_classes!r}",
        )

    def test_splits_are_datasplits(self) -> None:
        """``train`` and ``test`` are non-empty DataSplits of matching lengths."""
        ds = self.dataset()
        for part in ("train", "test"):
            split = getattr(ds, part)
            expect(
                isinstance(split, sharpkit.DataSplit),
                f"{part} is a {type(split).__name__}, not a sharpkit.DataSplit",
            )
            expect(len(split) >= 1, f"{part} is empty")
            expect(
                split.inputs.shape[0] == split.targets.shape[0] == len(split),
                f"{part}: inputs and targets differ in length",
            )

    def test_inputs_are_float_with_input_shape(self) -> None:
        """Inputs are finite floating tensors of shape ``(N, *input_shape)``."""
        import torch

        ds = self.dataset()
        for part in ("train", "test"):
            x = getattr(ds, part).inputs
            expect(isinstance(x, torch.Tensor), f"{part}.inputs is not a tensor")
            expect(x.is_floating_point(), f"{part}.inputs is {x.dtype}, not floating")
            want = (len(x), *ds.input_shape)
            expect(
                tuple(x.shape) == want,
                f"{part}.inputs has shape {tuple(x.shape)}, expected {want}",
            )
            expect(bool(torch.isfinite(x).all()), f"{part}.inputs are not finite")

    def test_targets_are_class_indices(self) -> None:
        """Targets are 1-D int64 class indices in ``[0, num_classes)``."""
        import torch

        ds = self.dataset()
        for part in ("train", "test"):
            y = getattr(ds, part).targets
            expect(isinstance(y, torch.Tensor), f"{part}.targets is not a tensor")
            expect(y.dtype == torch.int64, f"{part}.targets is {y.dtype}, not int64")
            expect(y.ndim == 1, f"{part}.targets has shape {tuple(y.shape)}")
            lo, hi = int(y.min()), int(y.max())
            expect(
                lo >= 0 and hi < ds.num_classes,
                f"{part}.targets span [{lo}, {hi}], outside [0, {ds.num_classes})",
            )

    def test_subset_gives_n_training_examples(self) -> None:
        """``subset=n`` keeps exactly ``n`` training examples."""
        ds = self.dataset()
        expect(
            len(ds.train) == self.subset,
            f"subset={self.subset} gave {len(ds.train)} training examples",
        )

    def test_deterministic_for_seed(self) -> None:
        """The same ``subset`` and ``seed`` give the same data, whatever the global RNG.

        The first load is :meth:`dataset`'s; the second runs under another global
        seed.
        """
        import torch

        a = self.dataset()
        with global_rng(202):
            b = self.load(subset=self.subset, seed=0)
        for part in ("train", "test"):
            sa, sb = getattr(a, part), getattr(b, part)
            expect(
                torch.equal(sa.inputs, sb.inputs)
                and torch.equal(sa.targets, sb.targets),
                f"two loads with seed 0 gave different {part} splits; draw the "
                "subset from the seed, not from the global RNG",
            )

    def test_augmentation_is_seeded(self) -> None:
        """A training augmentation keeps shape and dtype and follows its generator."""
        import torch

        ds = self.dataset()
        augment = ds.train.augment
        if augment is None:
            return
        x = ds.train.inputs[:4].clone()
        original = x.clone()
        out_a = augment(x, torch.Generator().manual_seed(5))
        out_b = augment(x, torch.Generator().manual_seed(5))
        expect(torch.equal(x, original), "the augmentation changed its input in place")
        out: object = out_a
        expect(
            isinstance(out, torch.Tensor)
            and out.shape == x.shape
            and out.dtype == x.dtype,
            "the augmentation must return a tensor of the batch's shape and dtype",
        )
        expect(
            torch.equal(out_a, out_b),
            "the augmentation is not reproducible from its generator",
        )
