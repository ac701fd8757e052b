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
from sharpkit._specs import (
    DatasetSpec,
    MetricSpec,
    ModelSpec,
    Option,
    ProbeSpec,
    TrainerSpec,
    validate_name,
)
from sharpkit._specs import _Spec as _Spec  # noqa: PLC0414 - re-exported for the registry

if TYPE_CHECKING:
    import torch

    from sharpkit.curvature.lanczos import LanczosProcess
    from sharpkit.curvature.operator import HessianOperator
    from sharpkit.curvature.sampling import ChunkedHessian
    from sharpkit.curvature.stochastic import Deflation

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
    "no_progress",
    "validate_name",
]

JSON: TypeAlias = (
    str | int | float | bool | Sequence["JSON"] | Mapping[str, "JSON"] | None
)
"""A value that can be stored as a zarr (JSON) attribute."""

LossFn: TypeAlias = "Callable[[torch.Tensor, torch.Tensor], torch.Tensor]"
"""``loss(outputs, targets) -> scalar``, mean-reduced over the batch."""

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


def no_progress(
    completed: float,
    total: float | None = None,
    /,
    *,
    description: str | None = None,
    **info: Any,
) -> None:
    """A :class:`ProgressCallback` that reports nothing (the default everywhere)."""
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
        heldout_data: Examples of the population ``data`` was drawn from that
            are not in ``data`` (e.g. the rest of the split a random sample
            came from), or ``None``. ``spectral``'s ``data_error`` evaluates the
            Rayleigh quotient of its eigenvector on them: an unbiased estimate
            of ``vᵀH_pop v <= λ_max(H_pop)``, the lower end of a bracket for
            the population's λ_max. :func:`sharpkit.measure` sets it to as
            many examples as ``data`` holds, drawn from those of the split the
            selection left out.
        cache: Shared between metrics measured in one call on one model, for a
            plugin's own memos (e.g. a check it need not repeat). Keys are owned
            by whoever writes them; prefix them with the plugin name. The Krylov
            space metrics share is :attr:`krylov_process`, not a cache entry.
        warm_start: A flat, parameter-sized start vector for iterative
            eigensolvers (e.g. the top eigenvector of the previous measurement
            while tracking during training), or ``None``.
        eigenvectors: Hessian eigenvectors ``(n_params, k)``, largest first, set
            by a metric that finds them; ``sharpkit.measure`` returns the first
            as :attr:`~sharpkit.Measurement.warm_start` for the next measurement.
        memory_budget: Bytes sharpkit may keep between products (``None``: no
            limit beyond the operator's default): up to half for the gradient
            graph :attr:`hessian` keeps, the rest for Krylov bases (pass
            :meth:`basis_budget` to the Lanczos routines); see also
            :meth:`krylov_capacity` and :meth:`free_memory`.
        tf32: Let float32 products use TF32 / bf16 kernels (off: full precision).

    Sharing Krylov work: ``spectral`` runs :func:`~sharpkit.lanczos` on
    :attr:`hessian` and hands its process over (``ctx.krylov_process =
    result.process``); ``frobenius``, ``trace`` and ``density`` then call
    :meth:`krylov` for the basis they deflate, which extends that process
    instead of repeating the products it spent. A third-party metric can do
    either side of this.
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
    progress: ProgressCallback = no_progress
    train_data: DataSplit | None = None
    heldout_data: DataSplit | None = None
    cache: dict[str, Any] = field(default_factory=dict)
    warm_start: torch.Tensor | None = field(default=None, repr=False)
    eigenvectors: torch.Tensor | None = field(default=None, repr=False)
    memory_budget: int | None = None
    tf32: bool = False
    _hessian: HessianOperator | None = field(default=None, repr=False)
    _krylov: LanczosProcess | None = field(default=None, init=False, repr=False)

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

    def chunked_hessian(self, chunks: int | None = None) -> ChunkedHessian:
        """:attr:`hessian` cut into chunks of ``data``, for a data standard error.

        The same operator as :attr:`hessian` (the mean of the chunks' Hessians
        weighted by their sizes) whose products also give every chunk's
        product; wrap it in :class:`~sharpkit.ChunkRecorder` and run
        :func:`~sharpkit.lanczos` on the recorder, then
        :func:`~sharpkit.spectral_estimate` gives the jackknife standard error
        over the data (see docs/concepts/curvature.md, "Two kinds of
        uncertainty"). Built on each call (its products are counted on it, not
        on :attr:`hessian`); ``data`` should be in random order.

        Args:
            chunks: ``K`` (default :data:`sharpkit.curvature.sampling.DEFAULT_CHUNKS`).

        Raises:
            ConfigError: Fewer than 2 examples, or ``bn_mode="train"``.
        """
        from sharpkit.curvature.sampling import DEFAULT_CHUNKS, ChunkedHessian

        return ChunkedHessian.from_split(
            self.model,
            self.loss_fn,
            self.data,
            chunks=DEFAULT_CHUNKS if chunks is None else chunks,
            memory_budget=(
                None if self.memory_budget is None else self.memory_budget // 2
            ),
            bn_mode=self.bn_mode,
            allow_tf32=self.tf32,
        )

    def basis_budget(self) -> int | None:
        """Bytes left for Krylov bases: the budget less the kept gradient graph.

        ``None`` without a :attr:`memory_budget`. Builds :attr:`hessian`.
        """
        if self.memory_budget is None:
            return None
        return max(self.memory_budget - self.hessian.graph_bytes, 0)

    def free_memory(self) -> int | None:
        """Bytes of memory free now on :attr:`device` (host RAM for the CPU).

        For refusing work that cannot fit before its first product, with one
        line instead of swapping or the out-of-memory killer. ``None`` where it
        cannot be told.
        """
        from sharpkit._fs import available_memory

        return available_memory(self.device)

    def krylov_capacity(self) -> int | None:
        """The most Lanczos steps on :attr:`hessian` the memory budget holds.

        At most ``hessian.n`` (a float64 basis falls back to float32 when that
        holds more); 0 when not even two steps fit; ``None`` without a
        :attr:`memory_budget`. Builds :attr:`hessian`.
        """
        from sharpkit.curvature.lanczos import basis_plan
        from sharpkit.errors import ConfigError

        budget = self.basis_budget()
        if budget is None:
            return None
        H = self.hessian
        try:
            rows = basis_plan(H.n, H.dtype, H.n + 1, budget)[1]
        except ConfigError:
            return 0
        return min(rows - 1, H.n)

    @property
    def krylov_process(self) -> LanczosProcess | None:
        """The Lanczos process on :attr:`hessian` that this measurement's metrics share.

        ``None`` until a metric sets it (``ctx.krylov_process =
        lanczos_result.process``, for a :func:`~sharpkit.lanczos` run on
        :attr:`hessian`) or calls :meth:`krylov`. A process on another operator
        (one built before the model changed) reads as ``None``.
        """
        proc = self._krylov
        if proc is None or self._hessian is None or proc.matvec is not self._hessian:
            return None
        return proc

    @krylov_process.setter
    def krylov_process(self, process: LanczosProcess | None) -> None:
        self._krylov = process

    def krylov(
        self, steps: int, *, generator: torch.Generator | None = None
    ) -> Deflation:
        """The shared Krylov basis of :attr:`hessian`, extended to ``steps`` vectors.

        Continues :attr:`krylov_process` (or starts it from a random vector of
        ``generator``, its basis within :meth:`basis_budget`) and returns the
        span as a :class:`~sharpkit.Deflation`, for the ``deflation`` argument
        of :func:`~sharpkit.frobenius_norm` and :func:`~sharpkit.hutchpp_trace`.
        Only the new steps cost products (``Deflation.n_matvecs``). Its rank is
        lower than ``steps`` where the memory budget holds fewer vectors or the
        space is exhausted.

        Raises:
            ConfigError: ``steps >= n`` (the exact path: the whole space) but the
                memory budget holds fewer vectors.
        """
        from sharpkit._hints import arg
        from sharpkit.curvature.lanczos import LanczosProcess
        from sharpkit.curvature.stochastic import krylov_deflation
        from sharpkit.errors import ConfigError

        H = self.hessian
        proc = self.krylov_process
        if proc is None:
            proc = LanczosProcess(
                H,
                H.n,
                generator=generator,
                max_basis_bytes=self.basis_budget(),
                steps_hint=steps,
            )
            self._krylov = proc
        if steps >= H.n and proc.max_steps < H.n:
            msg = (
                f"the exact path needs a Krylov basis of all {H.n:,} dimensions but "
                f"the memory budget holds {proc.max_steps}; raise "
                f"{arg('memory_budget', '--memory-budget')}"
            )
            raise ConfigError(msg)
        return krylov_deflation(H, H.n, steps, process=proc)

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
    progress: ProgressCallback = no_progress

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
        data_stderr: Standard error of ``value`` as an estimate of the same
            quantity over the data distribution the samples were drawn from
            (which examples were measured), ``None`` where not computed.
        data_method: How ``data_stderr`` was computed (e.g.
            ``"jackknife-ritz"``, ``"jackknife-linear"``), ``None`` with it.
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
    data_stderr: float | None = None
    data_method: str | None = None


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
        curves: Per-epoch arrays, all of the same length: the
            :attr:`BASE_CURVES` (``epoch``, ``lr``, ``train_loss``,
            ``train_accuracy``, ``test_loss``, ``test_accuracy``), and for each
            tracked metric ``<name>`` and ``<name>_stderr``/``_bound``.
        final: The last epoch's scalars.
        seconds: Wall time of this call (not of earlier, resumed-from calls).
        attrs: JSON-serialisable details.
    """

    BASE_CURVES: ClassVar[tuple[str, ...]] = (
        "epoch",
        "lr",
        "train_loss",
        "train_accuracy",
        "test_loss",
        "test_accuracy",
    )
    """The curves every trainer's result carries; a trainer may add more."""

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
