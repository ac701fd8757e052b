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

import difflib
import inspect
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import (
    TYPE_CHECKING,
    Any,
    ClassVar,
    Protocol,
    TypeAlias,
    runtime_checkable,
)

import numpy as np

from sharpkit._data import DataSplit
from sharpkit._seed import generator as _generator
from sharpkit.errors import ConfigError, PluginContractError

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

    kind: ClassVar[str] = "component"
    supplied: ClassVar[tuple[str, ...]] = ()
    """Keyword arguments sharpkit passes to the factory itself."""

    def option(self, name: str) -> Option | None:
        """Return the option called ``name``, or ``None``."""
        for opt in self.options:
            if opt.name == name:
                return opt
        return None

    def arguments(self) -> tuple[str, ...]:
        """The keyword arguments sharpkit passes to this spec's factory itself."""
        return self.supplied

    def parse_options(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """Validate ``options`` against :attr:`options` and convert their values.

        CLI strings become the option's type (``"5"`` → ``5``).

        Raises:
            ConfigError: An unknown option name (with the closest known one) or a
                value of the wrong type.
        """
        parsed: dict[str, Any] = {}
        for key, value in options.items():
            opt = self.option(key)
            if opt is None:
                known = [o.name for o in self.options]
                close = difflib.get_close_matches(key, known, n=1)
                hint = f"did you mean {close[0]!r}? " if close else ""
                listing = ", ".join(known) if known else "none"
                msg = (
                    f"{self.kind} {self.name!r} has no option {key!r}; {hint}"
                    f"its options: {listing}"
                )
                raise ConfigError(msg)
            parsed[key] = opt.parse(value)
        return parsed

    def validate(self, *, strict: bool = False) -> None:
        """Check the spec against the plugin contract (the registry calls this).

        The name is kebab-case; the description is one non-empty line; options
        are :class:`Option` objects with unique names that do not shadow an
        argument sharpkit passes itself; the factory is callable, takes no
        ``*args``, accepts every option and every argument sharpkit passes, and
        requires nothing else. With ``strict`` (the conformance suites in
        :mod:`sharpkit.testing`) each documented default must also parse to its
        option's type and equal the factory's own default.

        Raises:
            PluginContractError: The spec breaks the contract; the message says how.
        """
        where = f"{self.kind} {self.name!r}"
        name: object = self.name  # plugins may hand in anything
        if not isinstance(name, str) or not _NAME_RE.match(name):
            msg = f"{self.kind} name {self.name!r} is not kebab-case (e.g. 'my-metric')"
            raise PluginContractError(msg)
        desc: object = self.description
        if not isinstance(desc, str) or not desc.strip() or "\n" in desc.strip():
            msg = f"{where}: description must be one non-empty line"
            raise PluginContractError(msg)
        factory: object = self.factory
        if not callable(factory):
            msg = f"{where}: factory is not callable"
            raise PluginContractError(msg)
        self._validate_options(where, strict=strict)
        try:
            params = inspect.signature(self.factory).parameters
        except (TypeError, ValueError):  # builtins without a signature
            return
        _check_factory(where, params, [o.name for o in self.options], self.arguments())
        if strict:
            _check_defaults(where, params, self.options)

    def _validate_options(self, where: str, *, strict: bool) -> None:
        options: object = self.options
        if not isinstance(options, tuple) or not all(
            isinstance(o, Option) for o in options
        ):
            msg = f"{where}: options must be a tuple of sharpkit.Option"
            raise PluginContractError(msg)
        seen: set[str] = set()
        for opt in self.options:
            if opt.name in seen:
                msg = f"{where}: option {opt.name!r} is declared twice"
                raise PluginContractError(msg)
            seen.add(opt.name)
            if opt.name in self.arguments():
                msg = (
                    f"{where}: option {opt.name!r} shadows an argument sharpkit "
                    "passes to the factory itself; rename it"
                )
                raise PluginContractError(msg)
            if strict and opt.default is not None:
                try:
                    parsed = opt.parse(opt.default)
                except ConfigError as exc:
                    msg = f"{where}: default of option {opt.name!r}: {exc}"
                    raise PluginContractError(msg) from None
                if parsed != opt.default:
                    msg = (
                        f"{where}: default {opt.default!r} of option {opt.name!r} "
                        f"is not a {opt.type.__name__}"
                    )
                    raise PluginContractError(msg)


def _check_factory(
    where: str,
    params: Mapping[str, inspect.Parameter],
    options: Sequence[str],
    supplied: Sequence[str],
) -> None:
    """The factory accepts the options and sharpkit's arguments, needs no other."""
    if any(p.kind is p.VAR_POSITIONAL for p in params.values()):
        msg = f"{where}: factory must not take *args"
        raise PluginContractError(msg)
    needed = [*options, *supplied]
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        missing = [n for n in needed if n not in params]
        if missing:
            listing = ", ".join(repr(m) for m in missing)
            msg = f"{where}: factory does not accept {listing}"
            raise PluginContractError(msg)
    required = [
        n
        for n, p in params.items()
        if p.default is p.empty
        and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY, p.POSITIONAL_ONLY)
        and n not in needed
    ]
    if required:
        listing = ", ".join(repr(r) for r in required)
        msg = (
            f"{where}: factory requires {listing} which is neither an option nor "
            "supplied by sharpkit"
        )
        raise PluginContractError(msg)


def _check_defaults(
    where: str, params: Mapping[str, inspect.Parameter], options: Sequence[Option]
) -> None:
    """Each documented default is the factory's own."""
    for opt in options:
        param = params.get(opt.name)
        if param is None or param.default is param.empty or opt.default is None:
            continue
        if param.default != opt.default:
            msg = (
                f"{where}: option {opt.name!r} documents default {opt.default!r} "
                f"but the factory's default is {param.default!r}"
            )
            raise PluginContractError(msg)


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

    kind: ClassVar[str] = "model"
    supplied: ClassVar[tuple[str, ...]] = ("input_shape", "num_classes")

    def arguments(self) -> tuple[str, ...]:
        """``input_shape`` and ``num_classes``, and ``variant`` for a prefix."""
        return (*self.supplied, "variant") if self.prefix else self.supplied


@dataclass(frozen=True, slots=True, kw_only=True)
class DatasetSpec(_Spec):
    """A dataset.

    The factory is called as
    ``factory(root=Path | None, download=bool, subset=int | None, seed=int, **options)``
    and returns a :class:`Dataset`.
    """

    kind: ClassVar[str] = "dataset"
    supplied: ClassVar[tuple[str, ...]] = ("root", "download", "subset", "seed")


@dataclass(frozen=True, slots=True, kw_only=True)
class TrainerSpec(_Spec):
    """A training algorithm; the factory returns a :class:`Trainer`."""

    kind: ClassVar[str] = "trainer"


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

    kind: ClassVar[str] = "metric"


@dataclass(frozen=True, slots=True, kw_only=True)
class ProbeSpec(_Spec):
    """A loss-landscape probe; the factory returns a :class:`Probe`.

    Attributes:
        n_models: How many models the probe takes (1: around one minimum;
            2: between two minima).
    """

    n_models: int = 1

    kind: ClassVar[str] = "probe"

    def validate(self, *, strict: bool = False) -> None:
        """Check the spec as every spec is checked, and that ``n_models`` is 1 or 2.

        Raises:
            PluginContractError: The spec breaks the contract.
        """
        super(ProbeSpec, self).validate(strict=strict)
        if self.n_models not in (1, 2):
            msg = f"probe {self.name!r}: n_models must be 1 or 2, got {self.n_models!r}"
            raise PluginContractError(msg)


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
        memory_budget: Bytes sharpkit may keep between products (``None``: no
            limit beyond the operator's default): up to half for the gradient
            graph :attr:`hessian` keeps, the rest for Krylov bases (pass
            :meth:`basis_budget` to the Lanczos routines).
        tf32: Let float32 products use TF32 / bf16 kernels (off: full precision).
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
    memory_budget: int | None = None
    tf32: bool = False
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
                memory_budget=(
                    None if self.memory_budget is None else self.memory_budget // 2
                ),
                allow_tf32=self.tf32,
            )
        return self._hessian

    def basis_budget(self) -> int | None:
        """Bytes left for Krylov bases: the budget less the kept gradient graph.

        ``None`` without a :attr:`memory_budget`. Builds :attr:`hessian`.
        """
        if self.memory_budget is None:
            return None
        return max(self.memory_budget - self.hessian.graph_bytes, 0)

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
