"""The plugin contract's types: component Protocols, spec and result dataclasses.

Plugins return *specs* (name, factory, one-line description, options) from the
hooks in :mod:`sharpkit.hookspecs`; the registry validates them and calls the
factory with the user's options. What a factory returns must satisfy one of the
Protocols below (structurally: no inheritance needed):

* a model factory returns a :class:`torch.nn.Module`;
* a dataset factory returns a :class:`Dataset` (in-memory :class:`DataSplit` objects);
* a trainer factory returns a :class:`Trainer`;
* a metric factory returns a :class:`Metric`, which gets an :class:`AnalysisContext`
  and returns a :class:`MetricResult`;
* a probe factory returns a :class:`Probe`, which gets a :class:`ProbeContext` and
  returns a :class:`ProbeResult`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias, runtime_checkable

import numpy as np

from sharpkit._data import DataSplit
from sharpkit._seed import generator as _generator
from sharpkit.errors import ConfigError

if TYPE_CHECKING:
    import torch

    from sharpkit.curvature.operator import HessianOperator

__all__ = [
    "JSON",
    "AnalysisContext",
    "DataSplit",
    "Dataset",
    "DatasetSpec",
    "LossFn",
    "Metric",
    "MetricResult",
    "MetricSpec",
    "ModelSpec",
    "Option",
    "Probe",
    "ProbeContext",
    "ProbeResult",
    "ProbeSpec",
    "ProgressCallback",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "TrainerSpec",
]

JSON: TypeAlias = (
    str | int | float | bool | Sequence["JSON"] | Mapping[str, "JSON"] | None
)
"""A value that can be stored as a zarr (JSON) attribute."""

LossFn: TypeAlias = "Callable[[torch.Tensor, torch.Tensor], torch.Tensor]"
"""``loss(outputs, targets) -> scalar``, mean-reduced over the batch."""

_NAME_RE = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")
_OPTION_RE = re.compile(r"^[a-z][a-z0-9_]*$")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


# --------------------------------------------------------------------------- options


@dataclass(frozen=True, slots=True, kw_only=True)
class Option:
    """One option of a component, settable as ``--option name=value`` on the CLI.

    Attributes:
        name: A snake_case keyword parameter of the spec's factory.
        type: ``int``, ``float``, ``str`` or ``bool``; CLI strings are parsed to it.
        default: The value used when the option is not given (for documentation;
            the factory's own default is what applies).
        help: One line for ``sharpkit plugins`` and the docs.
        choices: The allowed values, if the option is a closed choice.
    """

    name: str
    type: type = str
    default: Any = None
    help: str = ""
    choices: tuple[Any, ...] | None = None

    def __post_init__(self) -> None:
        if not _OPTION_RE.match(self.name):
            msg = f"option name {self.name!r} must be snake_case"
            raise ConfigError(msg)
        if self.type not in (int, float, str, bool):
            msg = f"option {self.name!r}: type must be int, float, str or bool"
            raise ConfigError(msg)

    def parse(self, value: Any) -> Any:
        """Convert ``value`` (a CLI string or a Python value) to this option's type.

        Raises:
            ConfigError: The value cannot be converted or is not one of ``choices``.
        """
        out: Any
        try:
            if self.type is bool:
                if isinstance(value, bool):
                    out = value
                elif str(value).lower() in _TRUE:
                    out = True
                elif str(value).lower() in _FALSE:
                    out = False
                else:
                    raise ValueError(value)
            elif self.type is int:
                if isinstance(value, float) and not value.is_integer():
                    raise ValueError(value)
                out = int(value)
            elif self.type is float:
                out = float(value)
                if not math.isfinite(out):
                    raise ValueError(value)
            else:
                out = str(value)
        except (TypeError, ValueError):
            msg = f"option {self.name!r} expects {self.type.__name__}, got {value!r}"
            raise ConfigError(msg) from None
        if self.choices is not None and out not in self.choices:
            allowed = ", ".join(repr(c) for c in self.choices)
            msg = f"option {self.name!r} must be one of {allowed}, got {value!r}"
            raise ConfigError(msg)
        return out


# --------------------------------------------------------------------------- specs


@dataclass(frozen=True, slots=True, kw_only=True)
class _Spec:
    name: str
    factory: Callable[..., Any]
    description: str
    options: tuple[Option, ...] = ()

    def option(self, name: str) -> Option | None:
        """Return the option called ``name``, or ``None``."""
        for opt in self.options:
            if opt.name == name:
                return opt
        return None


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelSpec(_Spec):
    """A model architecture.

    The factory is called as ``factory(input_shape=..., num_classes=..., **options)``
    and returns a :class:`torch.nn.Module` mapping a batch of inputs to logits.
    A *prefix* spec (``prefix=True``, e.g. ``timm``) matches ``<name>:<variant>``
    and its factory additionally receives ``variant=<variant>``.

    Attributes:
        source: Where the architecture comes from (paper, repository).
    """

    prefix: bool = False
    source: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class DatasetSpec(_Spec):
    """A dataset.

    The factory is called as
    ``factory(root=Path | None, download=bool, subset=int | None, seed=int, **options)``
    and returns a :class:`Dataset`.
    """


@dataclass(frozen=True, slots=True, kw_only=True)
class TrainerSpec(_Spec):
    """A training algorithm; the factory returns a :class:`Trainer`."""


@dataclass(frozen=True, slots=True, kw_only=True)
class MetricSpec(_Spec):
    """A sharpness metric; the factory returns a :class:`Metric`.

    Attributes:
        stochastic: Whether the metric is a random estimate; then its result
            must carry a standard error and be reproducible from the seed.
        unit: The value's unit (e.g. ``"loss / parameter²"``), stored with every
            result as the ``units`` attribute.
        long_name: What the value is, for tables, figures and the stored
            ``long_name`` attribute (e.g. ``"largest Hessian eigenvalue λ_max"``);
            default: the name.
    """

    stochastic: bool = False
    unit: str = ""
    long_name: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class ProbeSpec(_Spec):
    """A loss-landscape probe; the factory returns a :class:`Probe`.

    Attributes:
        n_models: How many models the probe takes (1: around one minimum;
            2: between two minima).
    """

    n_models: int = 1


# --------------------------------------------------------------------------- data


@runtime_checkable
class Dataset(Protocol):
    """A dataset as a dataset factory returns it: metadata and two splits."""

    name: str
    input_shape: tuple[int, ...]
    num_classes: int
    train: DataSplit
    test: DataSplit


# --------------------------------------------------------------------------- progress


class ProgressCallback(Protocol):
    """Report progress of long work: ``progress(completed, total, **info)``.

    ``total`` may be ``None`` when unknown. ``info`` holds short display fields,
    e.g. ``estimate=51.37`` or ``loss=0.21``; ``description`` replaces the task
    label. Calls must be cheap; implementations may throttle.
    """

    def __call__(
        self,
        completed: float,
        total: float | None = None,
        /,
        *,
        description: str | None = None,
        **info: Any,
    ) -> None:
        """Report that ``completed`` of ``total`` units are done."""
        ...


def _no_progress(
    completed: float,
    total: float | None = None,
    /,
    *,
    description: str | None = None,
    **info: Any,
) -> None:
    return None


# --------------------------------------------------------------------------- analysis


@dataclass(kw_only=True, eq=False)
class AnalysisContext:
    """What a :class:`Metric` gets: the model at its minimum and how to probe it.

    Attributes:
        model: The model in analysis mode (dropout off; batch norm in eval mode
            unless ``bn_mode="train"``), on ``device`` and in ``dtype``.
        loss_fn: ``loss(outputs, targets) -> scalar``, mean reduction.
        data: The analysis set; the loss is the mean over all of it.
        batch_size: Batch size for passes over ``data`` (the value never depends
            on it: batches are weighted by size).
        device: Where computation runs.
        dtype: Floating dtype of the model and data.
        seed: Seed for every random choice; see :meth:`generator`.
        bn_mode: ``"eval"`` (running statistics) or ``"train"`` (batch statistics).
        tol: Relative tolerance requested for iterative methods.
        max_hvps: Budget of Hessian-vector products per metric (``None``: no cap).
        progress: Progress callback; call it as work advances.
        train_data: The training split, where known (BN re-estimation, probes).
        cache: Shared between metrics measured in one call on one model, so that
            e.g. ``frobenius`` can reuse the Krylov space ``spectral`` built. Keys
            are owned by whoever writes them; prefix them with the plugin name.
        warm_start: A flat, parameter-sized start vector for iterative
            eigensolvers (e.g. the top eigenvector of the previous measurement
            while tracking during training), or ``None``.
        eigenvectors: Hessian eigenvectors ``(n_params, k)``, largest first, set
            by a metric that finds them; ``sharpkit.measure`` returns the first
            as :attr:`~sharpkit.Measurement.warm_start` for the next measurement.
    """

    model: torch.nn.Module
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    data: DataSplit
    batch_size: int = 2048
    device: torch.device
    dtype: torch.dtype
    seed: int = 0
    bn_mode: str = "eval"
    tol: float = 1e-3
    max_hvps: int | None = None
    progress: ProgressCallback = _no_progress
    train_data: DataSplit | None = None
    cache: dict[str, Any] = field(default_factory=dict)
    warm_start: torch.Tensor | None = field(default=None, repr=False)
    eigenvectors: torch.Tensor | None = field(default=None, repr=False)
    _hessian: HessianOperator | None = field(default=None, repr=False)

    @property
    def hessian(self) -> HessianOperator:
        """The Hessian of the mean loss over ``data``, built on first use and shared."""
        if self._hessian is None:
            from sharpkit.curvature.operator import HessianOperator

            self._hessian = HessianOperator(
                self.model,
                self.loss_fn,
                self.data,
                batch_size=self.batch_size,
                bn_mode=self.bn_mode,
            )
        return self._hessian

    def generator(self, stream: str = "") -> torch.Generator:
        """Return a fresh generator seeded from ``seed`` and a stream name.

        Different metrics should use different stream names so that their random
        draws are independent yet each is reproducible on its own.
        """
        return _generator(self.seed, stream)


@dataclass(kw_only=True, eq=False)
class ProbeContext:
    """What a :class:`Probe` gets.

    Attributes:
        models: One or two models (``ProbeSpec.n_models``), in eval mode, on device.
        loss_fn: ``loss(outputs, targets) -> scalar``, mean reduction.
        train_data: Training split (evaluated, and used to re-estimate BN statistics).
        test_data: Held-out split, or ``None``.
        batch_size: Batch size for evaluation passes.
        device: Where computation runs.
        seed: Seed for random directions and BN re-estimation order.
        progress: Progress callback.
    """

    models: Sequence[torch.nn.Module]
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    train_data: DataSplit
    test_data: DataSplit | None = None
    batch_size: int = 1024
    device: torch.device
    seed: int = 0
    progress: ProgressCallback = _no_progress

    def generator(self, stream: str = "") -> torch.Generator:
        """Return a fresh generator seeded from ``seed`` and a stream name."""
        return _generator(self.seed, stream)


# --------------------------------------------------------------------------- results


@dataclass(frozen=True, kw_only=True)
class MetricResult:
    """The outcome of one metric on one model.

    Attributes:
        value: The number (e.g. λ_max).
        stderr: Standard error of a stochastic estimate (``None`` if exact or
            deterministic).
        bound: A deterministic error bound on ``value`` in its own units (e.g. the
            Lanczos residual bound), or ``None``.
        converged: Whether the stopping criterion was met (``None``: not iterative).
        hvps: Hessian-vector products used (filled in by ``measure`` if left out).
        seconds: Wall time (filled in by ``measure`` if left out).
        arrays: Named arrays behind the value (e.g. ``ritz_values``).
        attrs: JSON-serialisable details (method, tolerance, probes, ...).
        metric: The metric's registered name (filled in by ``measure``).
    """

    value: float
    stderr: float | None = None
    bound: float | None = None
    converged: bool | None = None
    hvps: int | None = None
    seconds: float | None = None
    arrays: Mapping[str, np.ndarray] = field(default_factory=dict)
    attrs: Mapping[str, JSON] = field(default_factory=dict)
    metric: str = ""


@dataclass(frozen=True, kw_only=True)
class ProbeResult:
    """The outcome of one probe.

    Attributes:
        coords: Grid coordinates, in dimension order (e.g. ``{"alpha": ...}`` or
            ``{"x": ..., "y": ...}``).
        arrays: Values on the grid (e.g. ``train_loss``); each has the shape of the
            grid spanned by ``coords``.
        summary: Scalar readouts (e.g. the width of the low-loss interval).
        attrs: JSON-serialisable details.
        seconds: Wall time.
        probe: The probe's registered name (filled in by the caller).
    """

    coords: Mapping[str, np.ndarray]
    arrays: Mapping[str, np.ndarray]
    summary: Mapping[str, float] = field(default_factory=dict)
    attrs: Mapping[str, JSON] = field(default_factory=dict)
    seconds: float | None = None
    probe: str = ""


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Hyper-parameters and bookkeeping of one training run.

    Attributes:
        lr: Learning rate η (the initial one, before any schedule).
        batch_size: Batch size S.
        epochs: Number of passes over the training split.
        momentum: SGD momentum (0: plain SGD, as in the paper's η/S argument).
        weight_decay: L2 penalty coefficient.
        schedule: ``"constant"``, ``"step:60,100,140,180:0.1"``, ``"every:25:0.5"``,
            or a named preset.
        seed: Seed for initialisation, shuffling and augmentation.
        augment: Apply the dataset's training augmentation.
        out_dir: Where checkpoints go (``None``: keep nothing on disk).
        checkpoint_every: Also save every this many epochs (0: only the last).
        resume: Continue from the newest checkpoint in ``out_dir``.
        track: Metric names to measure during training (e.g. ``("spectral",)``).
        track_every: Measure them every this many epochs.
        track_samples: Size of the analysis set used for tracking.
        device: Where to train.
        model_name: Registered model name (stored in checkpoints).
        model_options: Options the model was built with.
        dataset_name: Registered dataset name.
        dataset_options: Options the dataset was built with (subset, ...).
    """

    lr: float
    batch_size: int
    epochs: int
    momentum: float = 0.0
    weight_decay: float = 0.0
    schedule: str = "constant"
    seed: int = 0
    augment: bool = False
    out_dir: Path | None = None
    checkpoint_every: int = 0
    resume: bool = False
    track: tuple[str, ...] = ()
    track_every: int = 1
    track_samples: int = 2048
    device: str = "cpu"
    model_name: str = ""
    model_options: Mapping[str, JSON] = field(default_factory=dict)
    dataset_name: str = ""
    dataset_options: Mapping[str, JSON] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class TrainResult:
    """The outcome of a training run.

    Attributes:
        checkpoint: Path of the final checkpoint (``None`` if nothing was saved).
        curves: Per-epoch arrays, all of the same length: ``epoch``, ``lr``,
            ``train_loss``, ``train_accuracy``, ``test_loss``, ``test_accuracy``,
            and for each tracked metric ``<name>`` and ``<name>_stderr``/``_bound``.
        final: The last epoch's scalars.
        seconds: Wall time of this call (not of earlier, resumed-from calls).
        attrs: JSON-serialisable details.
    """

    checkpoint: Path | None
    curves: Mapping[str, np.ndarray]
    final: Mapping[str, float]
    seconds: float
    attrs: Mapping[str, JSON] = field(default_factory=dict)


# --------------------------------------------------------------------------- protocols


@runtime_checkable
class Metric(Protocol):
    """A sharpness metric: one number (with its uncertainty) per model.

    Optionally also ``estimated_hvps(ctx) -> int | None``: the Hessian-vector
    products the metric expects to need, shown in the progress display with the
    expected time once the first product has been timed.
    """

    def compute(self, ctx: AnalysisContext, /) -> MetricResult:
        """Measure the model in ``ctx``."""
        ...


@runtime_checkable
class Probe(Protocol):
    """A loss-landscape probe: values on a grid of parameter-space points."""

    def run(self, ctx: ProbeContext, /) -> ProbeResult:
        """Evaluate the probe on the models in ``ctx``."""
        ...


@runtime_checkable
class Trainer(Protocol):
    """A training algorithm."""

    def fit(
        self,
        model: torch.nn.Module,
        data: Dataset,
        config: TrainConfig,
        /,
        *,
        progress: ProgressCallback | None = None,
    ) -> TrainResult:
        """Train ``model`` on ``data.train`` (evaluating on ``data.test``)."""
        ...


def validate_name(name: str) -> bool:
    """Return whether ``name`` is a valid kebab-case component name."""
    return bool(_NAME_RE.match(name))
