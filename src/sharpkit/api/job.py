"""A job's inputs as one typed value, resolved once.

:class:`Inputs` is what a caller names (the model's architecture and options,
the data and where its files are, the loss, the seed, the device, the store);
the command line builds it from its option group, the public functions from
their keyword arguments. :class:`Analysis` holds the analysis options of
:func:`~sharpkit.measure` and :class:`~sharpkit.Tracker`, and
:class:`Selection` which examples are analysed. :func:`resolve` turns
:class:`Inputs` into a :class:`Job`: device, loss and data resolved once, the
data classified once (a registered name, a file/folder/code source, or objects).
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sharpkit._data import DataSplit
from sharpkit._hints import arg
from sharpkit.api.datafiles import SourceDataset
from sharpkit.api.losses import ResolvedLoss, resolve_loss
from sharpkit.api.models import ResolvedModel, resolve_model
from sharpkit.api.provenance import split_sha256
from sharpkit.api.resolve import (
    DEFAULT_SAMPLES,
    ModelLike,
    StoreLike,
    as_split,
    load_training_data,
    recorded_data,
    resolve_data,
    resolve_device,
)
from sharpkit.errors import ConfigError, DataError, SharpkitWarning
from sharpkit.interfaces import Dataset
from sharpkit.registry import Registry

if TYPE_CHECKING:
    import torch

__all__ = [
    "Analysis",
    "AnalysisData",
    "Inputs",
    "Job",
    "Selection",
    "analysis_data",
    "resolve",
]


@dataclass(frozen=True, kw_only=True)
class Inputs:
    """Where a job's models and data come from, its loss, and where results go.

    Attributes:
        data: A dataset name, data file, folder or code spec, or data objects
            (``None``: what the checkpoint names).
        data_options: Options of data named by a string.
        data_root: Where dataset files are looked for first.
        download: Let a named dataset download missing files.
        model_name: Architecture of a bare ``state_dict`` checkpoint.
        model_options: Options for that architecture.
        loss: The loss (see :func:`~sharpkit.api.losses.resolve_loss`).
        seed: Seed for every random choice.
        device: Where to compute (``None``: CUDA if present, else the CPU).
        store: The results store to reuse from and write to.
        force: Recompute even what the store holds.
    """

    data: Any = None
    data_options: Mapping[str, Any] | None = None
    data_root: str | os.PathLike[str] | None = None
    download: bool = False
    model_name: str | None = None
    model_options: Mapping[str, Any] | None = None
    loss: Any = None
    seed: int = 0
    device: str | torch.device | None = None
    store: StoreLike = None
    force: bool = False


ALL = "all"
"""``samples=ALL``: every example of the split (no default cut)."""


@dataclass(frozen=True, kw_only=True)
class Selection:
    """Which examples are analysed: ``samples`` of ``split``, chosen by ``sample``.

    The one place an analysis set is cut from its data. ``"first"`` takes the
    first ``samples`` examples: every checkpoint is then measured on the same
    examples, so differences between models are not blurred by which examples
    each was measured on. ``"random"`` draws a seeded uniform subset, stratified
    by class where the targets are class indices
    (:func:`~sharpkit.curvature.sampling.sample_indices`): independent draws
    across seeds, what the data's error bar is about.

    Attributes:
        samples: How many (``None``: 2048 of data named by a string, else all;
            ``"all"``: the whole split).
        split: ``"train"`` or ``"test"``, for a dataset given by name.
        sample: ``"first"`` or ``"random"``.
        seed: Seed of the ``"random"`` draw.
    """

    samples: int | str | None = None
    split: str = "train"
    sample: str = "first"
    seed: int = 0

    def check(self) -> None:
        """Check the selection's values.

        Raises:
            ConfigError: ``samples`` neither a positive count nor ``"all"``, or
                an unknown ``sample``.
        """
        from sharpkit.curvature.sampling import SELECTIONS

        n = self.samples
        if n is not None and n != ALL and not (_whole(n) and int(n) >= 1):
            msg = f"samples must be a positive count or 'all', got {n!r}"
            raise ConfigError(msg)
        if self.sample not in SELECTIONS:
            msg = f"sample must be one of {', '.join(SELECTIONS)}, got {self.sample!r}"
            raise ConfigError(msg)

    def count(self, default: int | None = DEFAULT_SAMPLES) -> int | None:
        """How many examples to take (``None``: all of them)."""
        if self.samples == ALL:
            return None
        return int(self.samples) if self.samples is not None else default

    def read_limit(self, default: int | None = DEFAULT_SAMPLES) -> int | None:
        """How many examples of a split a data source need give (``None``: all).

        The first ``samples`` for ``"first"``; a ``"random"`` draw needs the
        whole split (its size and classes decide the draw).
        """
        self.check()
        return self.count(default) if self.sample == "first" else None

    def indices(
        self, split: DataSplit, *, default: int | None = DEFAULT_SAMPLES
    ) -> torch.Tensor:
        """The indices of the selected examples of ``split``, in order."""
        from sharpkit.curvature.sampling import sample_indices

        self.check()
        return sample_indices(
            len(split),
            self.count(default),
            self.sample,
            seed=self.seed,
            targets=split.targets,
        )

    def rest(
        self, split: DataSplit, *, default: int | None = DEFAULT_SAMPLES
    ) -> DataSplit | None:
        """Examples of ``split`` the selection left out: held-out data.

        As many as the selection takes (fewer if fewer are left), a seeded
        random draw (stratified by class, like ``"random"``) from the examples
        not selected, so that an order of the split does not bias them;
        ``None`` when the selection takes the whole split.
        """
        import torch

        from sharpkit.curvature.sampling import sample_indices

        n = self.count(default)
        if n is None or n >= len(split):
            return None
        taken = self.indices(split, default=default)
        keep = torch.ones(len(split), dtype=torch.bool)
        keep[taken] = False
        others = torch.nonzero(keep).flatten()
        labels = split.targets
        pick = sample_indices(
            len(others),
            min(n, len(others)),
            "random",
            seed=self.seed + 1,
            targets=labels[others] if labels.dim() == 1 else None,
        )
        return split.take(others[pick])

    def pick(
        self, split: DataSplit, *, default: int | None = DEFAULT_SAMPLES
    ) -> DataSplit:
        """The selected examples of ``split`` (``default`` if ``samples`` is unset)."""
        return self.cut(split, default=default)[0]

    def cut(
        self, split: DataSplit, *, default: int | None = DEFAULT_SAMPLES
    ) -> tuple[DataSplit, dict[str, Any]]:
        """The selected examples of ``split`` and what a stored run records of them.

        The record: ``sample`` and ``population`` (the split's size) always;
        for a random draw that is not the whole split also its ``sample_seed``
        and ``sample_sha256`` (the digest of the indices drawn), ``None``
        otherwise. Those two are part of a result's reuse key, beside the
        digest of the examples themselves, which any other selection changes.
        """
        self.check()
        n = self.count(default)
        record: dict[str, Any] = {
            "sample": self.sample,
            "sample_seed": None,
            "sample_sha256": None,
            "population": len(split),
        }
        if n is None or n >= len(split):
            return split, record
        if self.sample == "first":
            return split.head(n), record
        idx = self.indices(split, default=default)
        digest = hashlib.sha256(idx.cpu().numpy().astype("<i8").tobytes())
        record.update(sample_seed=int(self.seed), sample_sha256=digest.hexdigest())
        return split.take(idx), record


def _whole(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True, kw_only=True)
class Analysis:
    """How a model is analysed: what :func:`~sharpkit.measure` takes besides its inputs.

    Attributes:
        selection: Which examples.
        batch_size: Examples per forward pass.
        tol: Relative tolerance of iterative methods.
        max_hvps: Hessian-vector-product budget per metric.
        bn_mode: ``"eval"`` or ``"train"``.
        dtype: ``"float32"``/``"float64"`` (``None``: the model's).
        memory_budget: What may be kept between products (bytes or ``"8GiB"``).
        tf32: Allow TF32/bf16 kernels for float32 products.
        precision: The relative data standard error wanted (e.g. ``0.02``):
            the sample count is chosen to reach it (``None``: as selected).
    """

    selection: Selection = Selection()
    batch_size: int = 2048
    tol: float = 1e-3
    max_hvps: int | None = None
    bn_mode: str = "eval"
    dtype: str | torch.dtype | None = None
    memory_budget: int | str | None = None
    tf32: bool = False
    precision: float | None = None

    def metric_names(
        self, metrics: str | Sequence[str], options: Mapping[str, Any]
    ) -> list[str]:
        """Check these options and the metric list; return the metric names.

        Raises:
            ConfigError: No metric, one listed twice, a bad value, or options
                for a metric not listed.
        """
        names = [metrics] if isinstance(metrics, str) else list(metrics)
        if not names:
            msg = "no metric requested; pass at least one, e.g. metrics=['spectral']"
            raise ConfigError(msg)
        if len(set(names)) != len(names):
            msg = f"metric listed twice in {names!r}"
            raise ConfigError(msg)
        if self.bn_mode not in ("eval", "train"):
            msg = f"bn_mode must be 'eval' or 'train', got {self.bn_mode!r}"
            raise ConfigError(msg)
        if not (0 < self.tol < 1):
            msg = f"tol must be in (0, 1), got {self.tol}"
            raise ConfigError(msg)
        self.selection.check()
        if self.precision is not None and not (0 < self.precision < 1):
            msg = (
                f"precision must be a relative error in (0, 1), e.g. 0.02 for 2 %, "
                f"got {self.precision}"
            )
            raise ConfigError(msg)
        for label, value in (
            ("max_hvps", self.max_hvps),
            ("batch_size", self.batch_size),
        ):
            if value is not None and value < 1:
                msg = f"{label} must be positive, got {value}"
                raise ConfigError(msg)
        unknown = [k for k in options if k not in names]
        if unknown:
            msg = f"options given for {unknown[0]!r}, which is not one of {names!r}"
            raise ConfigError(msg)
        return names


@dataclass(frozen=True, kw_only=True)
class Job:
    """:class:`Inputs` resolved: the registry, device, loss and data, each once.

    Attributes:
        inputs: What the caller named.
        registry: Where components are looked up.
        device: Where to compute.
        loss: The loss function and its label.
        data: The data: a registered name (``str``), a loaded source or
            :class:`~sharpkit.Dataset`, data objects, or ``None``.
        limit: The most examples of each split a source was read for (see
            :meth:`Selection.read_limit`; ``None``: all of them).
    """

    inputs: Inputs
    registry: Registry
    device: torch.device
    loss: ResolvedLoss
    data: Any
    limit: int | None = None

    def model(self, model: ModelLike) -> ResolvedModel:
        """Resolve one model (module, checkpoint, ``.pt2``, ``hf:``, code)."""
        data = self.data
        return resolve_model(
            model,
            data=data,
            model_name=self.inputs.model_name,
            model_options=self.inputs.model_options,
            data_root=self.inputs.data_root,
            registry=self.registry,
        )

    def training_data(
        self,
        name: str,
        source: ResolvedModel,
        *,
        with_subset: bool = True,
        registered: bool = False,
    ) -> tuple[Dataset, int | None]:
        """The dataset ``name`` as ``source``'s model was trained on it.

        ``registered``: ``name`` came out of :func:`resolve_data` as a name,
        so it is a registered dataset and is not classified again.
        """
        return load_training_data(
            name,
            source.meta,
            root=self.inputs.data_root,
            download=self.inputs.download,
            registry=self.registry,
            with_subset=with_subset,
            options=self.inputs.data_options,
            registered=registered,
        )

    def recorded(self, source: ResolvedModel) -> Any:
        """The data itself, or else what ``source``'s checkpoint was trained on."""
        if self.data is not None:
            return self.data
        return resolve_data(
            recorded_data(source.meta),
            options=self.inputs.data_options,
            registry=self.registry,
            root=self.inputs.data_root,
            limit=self.limit,
        )


def resolve(inputs: Inputs, registry: Registry, *, limit: int | None = None) -> Job:
    """Resolve ``inputs`` once: device, loss and data (a file or code is loaded).

    ``limit``: read no more than the first ``limit`` examples of each split of
    a source that can stop early (an image folder, data from code): what a
    selection of the first examples needs (:meth:`Selection.read_limit`).

    Raises:
        ConfigError: A bad device, loss or data option.
    """
    return Job(
        inputs=inputs,
        registry=registry,
        device=resolve_device(inputs.device),
        loss=resolve_loss(inputs.loss),
        data=resolve_data(
            inputs.data,
            options=inputs.data_options,
            registry=registry,
            root=inputs.data_root,
            limit=limit,
        ),
        limit=limit,
    )


# ---------------------------------------------------------------------- analysis set


@dataclass(frozen=True, kw_only=True)
class AnalysisData:
    """The analysis set, the training split (if known) and how they were chosen."""

    analysis: DataSplit
    train: DataSplit | None = None
    dataset: str | None = None
    split: str | None = None
    train_subset: int | None = None
    registered: bool = False
    code_sha256: str | None = None
    selection: Mapping[str, Any] = field(default_factory=dict)
    """What :meth:`Selection.cut` recorded: ``sample``, ``sample_seed``, ..."""
    heldout: DataSplit | None = None
    """Examples of the same split not in ``analysis`` (:meth:`Selection.rest`)."""

    def sha256(self) -> str | None:
        """The analysis set's hash, for data not named by a registered dataset."""
        return None if self.registered else split_sha256(self.analysis)


def analysis_data(
    job: Job, source: ResolvedModel, selection: Selection
) -> AnalysisData:
    """Return the analysis set that ``job``'s data names for the model in ``source``."""
    data = job.recorded(source)
    split = selection.split
    if data is None:
        msg = (
            "no data given and the model does not name its dataset; pass "
            f"{arg('data', '--data')}"
        )
        raise ConfigError(msg)
    if isinstance(data, str):
        if split not in ("train", "test"):
            msg = f"split must be 'train' or 'test', got {split!r}"
            raise ConfigError(msg)
        ds, train_subset = job.training_data(
            data, source, with_subset=split == "train", registered=True
        )
        whole = ds.train if split == "train" else ds.test
        picked, record = selection.cut(whole)
        out = AnalysisData(
            analysis=picked,
            selection=record,
            heldout=selection.rest(whole),
            train=ds.train,
            dataset=data,
            split=split,
            train_subset=train_subset,
            registered=True,
        )
    elif isinstance(data, Dataset):
        _warn_if_not_the_training_subset(data, source, split)
        if split == "test" and not getattr(data, "has_test", True):
            msg = (
                f"{data.name!r} holds no test split (x_test/y_test, or a test/ "
                f"folder); measure on {arg('split', '--split', 'train')}"
            )
            raise ConfigError(msg)
        whole = data.train if split == "train" else data.test
        picked, record = selection.cut(whole)
        partial = isinstance(data, SourceDataset) and data.totals is not None
        if isinstance(data, SourceDataset) and partial:  # read up to the selection
            record["population"] = data.population(split)
        out = AnalysisData(
            analysis=picked,
            selection=record,
            heldout=None if partial else selection.rest(whole),
            train=None if partial else data.train,
            dataset=data.name,
            split=split,
            code_sha256=getattr(data, "code_sha256", None),
        )
    else:
        first = selection.sample == "first"
        whole = as_split(data, selection.count(None) if first else None)
        picked, record = selection.cut(whole, default=None)
        if first and selection.count(None) is not None:
            record["population"] = None  # read no further than the selection
        out = AnalysisData(
            analysis=picked,
            selection=record,
            heldout=None if first else selection.rest(whole, default=None),
        )
    _check_size(out.analysis, selection.count(None))
    return out


def _check_size(analysis: DataSplit, samples: int | None) -> None:
    if len(analysis) == 0:
        msg = "the analysis data is empty"
        raise DataError(msg)
    if samples is not None and samples > len(analysis):
        n = len(analysis)
        warnings.warn(
            f"{arg('samples', '--samples')} {samples} asks for {samples} examples, "
            f"but the analysis data has {n}: all {n} are used",
            SharpkitWarning,
            stacklevel=5,
        )


def _warn_if_not_the_training_subset(
    data: Dataset, source: ResolvedModel, split: str
) -> None:
    trained_on = source.meta.dataset_options.get("subset")
    held = (
        data.population("train") if isinstance(data, SourceDataset) else len(data.train)
    )
    if (
        split == "train"
        and trained_on is not None
        and data.name == source.meta.dataset
        and held is not None
        and held != int(trained_on)
    ):
        warnings.warn(
            f"the model was trained on a {trained_on}-example subset of "
            f"{data.name!r}, but the analysis set comes from the dataset "
            f"passed in ({held} training examples); pass data=None "
            "to measure on the training subset",
            SharpkitWarning,
            stacklevel=5,
        )
