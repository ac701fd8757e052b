"""``sharpkit.Tracker``: sharpness measured every N steps of your own training loop.

A :class:`Tracker` holds a fixed analysis set, resolved once, and calls
:func:`~sharpkit.measure` on the model being trained whenever a step is due,
warm-starting each λ_max computation from the top eigenvector of the previous one
(:attr:`~sharpkit.Measurement.warm_start`). Measuring leaves the training run
exactly as it was: the model (parameters, buffers, gradients, ``training``
flags) through :func:`~sharpkit.measure`'s analysis mode, and the random
number generators (torch's CPU and CUDA generators, NumPy's and Python's global
ones) by restoring their state afterwards, so a loop with a tracker ends with the
same weights, bit for bit, as the loop without one. The curve it keeps
(:attr:`Tracker.curves`) goes to a results store as one run of kind ``track``
when the tracker is closed.

The built-in ``sgd`` trainer's ``--track`` and the PyTorch Lightning callback
(:mod:`sharpkit.lightning`) both use this class, so there is one tracking
mechanism.
"""

from __future__ import annotations

import dataclasses
import math
import random
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final

from sharpkit._data import DataSplit
from sharpkit.api.executor import Executor
from sharpkit.api.fingerprint import data_digest
from sharpkit.api.job import Analysis, Inputs, Selection
from sharpkit.api.measure import Measurement, run_measure
from sharpkit.api.resolve import (
    DEFAULT_SAMPLES,
    DataLike,
    StoreLike,
    as_split,
    load_dataset,
    open_store,
)
from sharpkit.errors import ConfigError, StoreError
from sharpkit.interfaces import Dataset, ProgressCallback, no_progress
from sharpkit.registry import Registry, get_registry

if TYPE_CHECKING:
    import numpy as np
    import torch

    from sharpkit.curvature.blocks import BlockSpec

__all__ = ["BLOCK_CURVE", "Tracker", "block_curves"]

BLOCK_CURVE: Final = "blocks.{metric}.{block}"
"""Name of the curve of a metric's value on one block (``Tracker(blocks=...)``)."""

SUFFIXES: Final = ("", "_stderr", "_bound", "_hvps", "_seconds", "_data_stderr")
"""Curve names per tracked metric ``m``: ``m``, ``m_stderr``, ..., ``m_seconds``,
``m_data_stderr`` (the data's standard error, NaN where not measured)."""

# Measurement attributes that describe one state of the model, not the run.
_PER_STATE: Final = frozenset(
    {
        "checkpoint_sha256",
        "checkpoint_path",
        "checkpoint_format",
        "lr",
        "batch_size",
        "momentum",
        "train_seed",
        "epoch",
        "final",
    }
)


class Tracker:
    """Measure sharpness every ``every`` steps of your own training loop.

    Call :meth:`step` once per training step with the model being trained; when
    the step is due (``step % every == 0``, or ``force=True``) it measures
    ``metrics`` on the fixed analysis set and returns the values, else it returns
    ``None`` at no cost. Each λ_max computation starts from the previous one's top
    eigenvector, which typically saves Hessian-vector products when the model
    moved little in between. The model, its gradients and every global random
    generator are left exactly as they were, so the training run does not change.
    :meth:`close` (or leaving a ``with`` block) writes the curve to ``store`` as
    one run of kind ``"track"``.

    Examples:
        >>> import torch, sharpkit
        >>> _ = torch.manual_seed(0)
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(),
        ...                           torch.nn.Linear(8, 3))
        >>> x, y = torch.randn(64, 4), torch.randint(0, 3, (64,))
        >>> opt = torch.optim.SGD(net.parameters(), lr=0.1)
        >>> tracker = sharpkit.Tracker((x, y), ["spectral"], every=5)
        >>> for step in range(1, 11):
        ...     loss = torch.nn.functional.cross_entropy(net(x), y)
        ...     opt.zero_grad(); loss.backward(); opt.step()
        ...     _ = tracker.step(net, step=step)
        >>> tracker.curves["step"].tolist()
        [5, 10]
        >>> bool(tracker.curves["spectral"][-1] > 0)
        True

    Args:
        data: The analysis data, fixed for the whole run: an ``(inputs,
            targets)`` pair of tensors, a :class:`~sharpkit.DataSplit`, a torch
            ``Dataset`` or ``DataLoader`` (read once, its first ``samples``
            examples), a :class:`~sharpkit.Dataset` or a registered dataset name
            (its training split). Pass examples without augmentation.
        metrics: Metric names (``sharpkit plugins`` lists them).
        every: Measure at steps that are multiples of this.
        samples: Measure on ``samples`` examples of ``data`` (``None`` or
            ``"all"``: all).
        sample: Which ones, chosen once for the whole run: ``"first"`` or
            ``"random"`` (a class-stratified subset drawn from ``seed``); see
            :func:`~sharpkit.measure`. With ``options={"spectral":
            {"data_error": True}}`` each measurement also carries its data
            standard error (the ``m_data_stderr`` curve).
        loss: ``loss(outputs, targets) -> scalar`` with mean reduction; default
            cross-entropy.
        seed: Seed for every random choice of the measurements.
        tol: Relative tolerance of iterative methods.
        max_hvps: Hessian-vector-product budget per metric and measurement.
        bn_mode: ``"eval"`` (running statistics, default) or ``"train"``.
        batch_size: Examples per forward pass (never changes the values).
        dtype: ``"float32"`` or ``"float64"`` (default: the model's).
        device: Where to measure (default: where the model is).
        options: ``{metric name: {option: value}}``.
        warm_start: ``True``: start each λ_max computation from the previous
            top eigenvector; ``False``: start cold every time; a tensor: the start
            vector of the first measurement (then as ``True``).
        store: A results store path (or :class:`~sharpkit.ResultStore`) that
            :meth:`close` writes the curve to; ``None`` keeps it in memory only.
        attrs: Extra run attributes to store, e.g. ``{"model": "my-cnn", "lr":
            0.1, "batch_size": 128}`` (``lr`` and ``batch_size`` fill the columns
            of the same name in ``sharpkit results``).
        progress: Progress callback, called while measuring.
        registry: The registry to use (default: the process-wide one).
        blocks: Also measure ``spectral``, ``trace`` and ``frobenius`` per
            block of parameters at every measurement (as
            :func:`~sharpkit.measure`'s ``blocks``): each metric's value on
            block ``b`` becomes the curve ``blocks.<metric>.<b>``, and
            ``sharpkit plot --figure blocks-track`` draws them as a block x
            step heat map.

    Raises:
        ConfigError: A bad argument, an unknown metric or option.
        StoreError: ``store`` is not a results store.
    """

    def __init__(
        self,
        data: DataLike,
        metrics: str | Sequence[str] = ("spectral",),
        *,
        every: int = 50,
        samples: int | str | None = DEFAULT_SAMPLES,
        sample: str = "first",
        loss: Any = None,
        seed: int = 0,
        tol: float = 1e-3,
        max_hvps: int | None = None,
        bn_mode: str = "eval",
        batch_size: int = 2048,
        dtype: str | torch.dtype | None = None,
        device: str | torch.device | None = None,
        options: Mapping[str, Mapping[str, Any]] | None = None,
        warm_start: bool | torch.Tensor = True,
        store: StoreLike = None,
        attrs: Mapping[str, Any] | None = None,
        progress: ProgressCallback | None = None,
        registry: Registry | None = None,
        blocks: BlockSpec | None = None,
    ) -> None:
        if not _whole(every, 1):
            msg = f"every must be a whole number of steps >= 1, got {every!r}"
            raise ConfigError(msg)
        reg = registry or get_registry()
        self._analysis = Analysis(
            selection=Selection(samples=samples, sample=sample, seed=seed),
            batch_size=batch_size, tol=tol, max_hvps=max_hvps, bn_mode=bn_mode,
            dtype=dtype,
        )  # fmt: skip
        names = self._analysis.metric_names(metrics, options or {})
        ex = Executor(reg)  # unknown metrics and bad options fail now, not later
        self._specs = {
            n: ex.call("metric", n, (options or {}).get(n)).spec for n in names
        }
        self.metrics: tuple[str, ...] = tuple(names)
        self._blocks = blocks
        self._block_key: Any = None
        if blocks is not None:
            from sharpkit.api.blocks import check_block_metrics, spec_key

            check_block_metrics(blocks, names)
            self._block_key = spec_key(blocks)
        self.every = every
        self._inputs = Inputs(loss=loss, seed=seed, device=device)
        self._options = dict(options or {})
        self._registry = reg
        self._use_warm = warm_start is not False
        self._warm: torch.Tensor | None = (
            None if isinstance(warm_start, bool) else warm_start.detach().cpu()
        )
        self._progress = progress or no_progress
        self._attrs = dict(attrs or {})
        self._store = open_store(store)  # a bad path fails before training starts
        with _untouched_rng(None):  # a shuffled DataLoader draws from torch's RNG
            self._data, self._dataset, record = _analysis_split(
                data, self._analysis, reg
            )
        self._sample_seed: int | None = record.get("sample_seed")
        self._sample_sha256: str | None = record.get("sample_sha256")
        self._population: int | None = record.get("population")
        # the curve's data as used, as measure keys it (api/fingerprint.py)
        self._data_digest = data_digest(self._data)
        self._rows: list[dict[str, float]] = []
        self._next_step = 1
        self._last_step: int | None = None
        self._interrupted = False
        self._closed = False
        self.last: Measurement | None = None
        """The latest :class:`~sharpkit.Measurement` (``None`` before the first)."""
        self.run_id: str | None = None
        """The id of the stored run once :meth:`close` wrote it."""

    # ------------------------------------------------------------------ stepping

    def due(self, step: int) -> bool:
        """Whether :meth:`step` measures at ``step`` (without ``force``)."""
        return step % self.every == 0 and step != self._last_step

    def step(
        self,
        model: torch.nn.Module,
        step: int | None = None,
        *,
        force: bool = False,
        extra: Mapping[str, float] | None = None,
    ) -> dict[str, float] | None:
        """Measure ``model`` if ``step`` is due; return the values, else ``None``.

        Args:
            model: The model being trained, as it is now (not copied, not
                changed).
            step: The training step (default: one more than the previous call's,
                counting from 1).
            force: Measure even if the step is not a multiple of ``every``. A
                step already measured is never measured twice.
            extra: Values to record with this measurement, e.g. ``{"epoch": 3,
                "train_loss": 0.21}``; each becomes a curve (NaN where absent).

        Returns:
            ``{"step": ..., m: value, m + "_stderr": ..., m + "_bound": ...,
            m + "_hvps": ..., m + "_seconds": ... for each metric m, "seconds":
            ..., **extra}`` (NaN for what a metric does not report), or ``None``
            when nothing was measured.

        Raises:
            ConfigError: The tracker is closed, ``model`` is not a module, or
                ``step``/``extra`` are malformed.
        """
        import torch

        if self._closed:
            msg = (
                "this Tracker is closed (its curve was written); create a new "
                "Tracker to track another run"
            )
            raise ConfigError(msg)
        if not isinstance(model, torch.nn.Module):  # typed callers cannot get here
            got = type(model).__name__  # type: ignore[unreachable]
            msg = f"Tracker.step needs the torch.nn.Module being trained, got {got}"
            raise ConfigError(msg)
        step = self._next_step if step is None else step
        if not _whole(step, 0):
            msg = f"step must be a whole number >= 0, got {step!r}"
            raise ConfigError(msg)
        self._next_step = step + 1
        if step == self._last_step or not (force or self.due(step)):
            return None
        return self._measure(model, step, self._check_extra(extra))

    def _check_extra(self, extra: Mapping[str, float] | None) -> dict[str, float]:
        own = {"step", "seconds", *(m + s for m in self.metrics for s in SUFFIXES)}
        out: dict[str, float] = {}
        for key, given in (extra or {}).items():
            if key in own or str(key).startswith("blocks."):
                msg = f"extra value {key!r} clashes with a tracked curve; rename it"
                raise ConfigError(msg)
            # a tensor such as the loss: detached, so float() does not warn
            value = given.detach() if hasattr(given, "detach") else given
            try:
                out[str(key)] = float(value)
            except (TypeError, ValueError):
                msg = f"extra value {key!r} must be a number, got {value!r}"
                raise ConfigError(msg) from None
        return out

    def _measure(
        self, model: torch.nn.Module, step: int, extra: Mapping[str, float]
    ) -> dict[str, float]:
        import torch

        self._progress(0, None, description=f"measuring {', '.join(self.metrics)}")
        start = time.perf_counter()
        inputs = dataclasses.replace(self._inputs, data=self._data)
        with _untouched_rng(model), torch.enable_grad():
            result = run_measure(
                model, list(self.metrics), inputs,
                dataclasses.replace(self._analysis, selection=Selection()),
                options=self._options, progress=self._progress,
                warm_start=self._warm if self._use_warm else None,
                registry=self._registry, blocks=self._blocks,
            )  # fmt: skip
        seconds = time.perf_counter() - start
        if self._use_warm and result.warm_start is not None:
            self._warm = result.warm_start
        row: dict[str, float] = {"step": step}
        for name, res in result.items():
            for suffix, value in zip(
                SUFFIXES,
                (
                    res.value,
                    res.stderr,
                    res.bound,
                    res.hvps,
                    res.seconds,
                    res.data_stderr,
                ),
                strict=True,
            ):
                row[name + suffix] = math.nan if value is None else float(value)
        row["seconds"] = seconds
        row.update(self._block_values(result))
        row.update(extra)
        self._rows.append(row)
        self._last_step = step
        self.last = result
        return dict(row)

    def _block_values(self, result: Measurement) -> dict[str, float]:
        """``{blocks.<metric>.<block>: value}`` of the metrics measured per block."""
        out: dict[str, float] = {}
        for name, res in result.items():
            if "block_value" not in res.arrays:
                continue
            listed = res.attrs.get("blocks")
            names = [str(b) for b in listed] if isinstance(listed, list) else []
            for block, value in zip(names, res.arrays["block_value"], strict=True):
                out[BLOCK_CURVE.format(metric=name, block=block)] = float(value)
        return out

    # ------------------------------------------------------------------ results

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called (no more steps are taken)."""
        return self._closed

    @property
    def warm_start(self) -> torch.Tensor | None:
        """The start vector of the next λ_max computation (flat, on the CPU)."""
        return self._warm if self._use_warm else None

    @property
    def curves(self) -> dict[str, np.ndarray]:
        """The curve so far: one array per quantity, one entry per measurement.

        ``step`` (int64), then for each metric ``m``: ``m``, ``m_stderr``,
        ``m_bound``, ``m_hvps``, ``m_seconds``; then ``seconds`` (the whole
        measurement) and the ``extra`` values (float64, NaN where missing).
        """
        import numpy as np

        keys = ["step", *(m + s for m in self.metrics for s in SUFFIXES), "seconds"]
        for row in self._rows:
            keys += [k for k in row if k not in keys]
        out = {
            k: np.array([row.get(k, math.nan) for row in self._rows], dtype=np.float64)
            for k in keys
        }
        out["step"] = out["step"].astype(np.int64)
        return out

    def state_dict(self) -> dict[str, Any]:
        """Return the tracker's state, to save with a checkpoint of the training.

        Plain tensors, numbers and lists only, so ``torch.load(...,
        weights_only=True)`` reads it back; :meth:`load_state_dict` restores it
        in a fresh tracker, which then continues the curve and the warm start.
        """
        return {
            "metrics": list(self.metrics),
            "every": self.every,
            "rows": [dict(row) for row in self._rows],
            "warm_start": self._warm,
            "next_step": self._next_step,
            "last_step": self._last_step,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from :meth:`state_dict` (e.g. when resuming a training run).

        Raises:
            ConfigError: The state is malformed or tracked other metrics.
        """
        missing = {"metrics", "rows", "next_step", "last_step"} - set(state)
        if missing:
            msg = (
                f"not a Tracker state (no {sorted(missing)[0]!r}); pass what "
                "Tracker.state_dict() returned"
            )
            raise ConfigError(msg)
        if list(state["metrics"]) != list(self.metrics):
            msg = (
                f"the saved tracker state tracks {list(state['metrics'])!r}, not "
                f"{list(self.metrics)!r}; track the same metrics to continue it"
            )
            raise ConfigError(msg)
        self._rows = [dict(row) for row in state["rows"]]
        warm = state.get("warm_start")
        if self._use_warm and warm is not None:
            self._warm = warm.detach().cpu()
        self._next_step = int(state["next_step"])
        last = state["last_step"]
        self._last_step = None if last is None else int(last)

    def close(self, *, interrupted: bool = False) -> str | None:
        """Write the curve to the store as one run; return its id (idempotent).

        Nothing is written without a store or before the first measurement.

        Args:
            interrupted: Record that training stopped early (an exception), so
                the stored run says the curve is partial
                (``attrs["interrupted"]``).

        Raises:
            StoreError: The store refused the write.
        """
        if self._closed:
            return self.run_id
        self._closed = True
        self._interrupted = interrupted
        if self._store is None or self.last is None:
            return None
        self.run_id = Executor(self._registry, self._store).write(
            "track",
            self._run_attributes(self.last),
            training=self.curves,
            metric_labels={
                name: {"long_name": spec.long_name or name, "units": spec.unit}
                for name, spec in self._specs.items()
            },
        )
        return self.run_id

    def _run_attributes(self, last: Measurement) -> dict[str, Any]:
        base = {k: v for k, v in last.attrs.items() if k not in _PER_STATE}
        steps = [int(row["step"]) for row in self._rows]
        return {
            **base,
            "dataset": base.get("dataset") or self._dataset,
            "data_digest": self._data_digest,
            "metrics": list(self.metrics),
            "options": self._options,
            "every": self.every,
            "measurements": len(steps),
            "first_step": steps[0],
            "last_step": steps[-1],
            "warm_start": self._use_warm,
            "interrupted": self._interrupted,
            **(
                {"blocks": self._tracked_blocks(), "block_spec": self._block_key}
                if self._blocks is not None
                else {}
            ),
            # the selection was made once, before the first measurement
            "sample": self._analysis.selection.sample,
            "sample_seed": self._sample_seed,
            "sample_sha256": self._sample_sha256,
            "population": self._population,
            **self._attrs,
        }

    def _tracked_blocks(self) -> list[str]:
        """The blocks with a curve, in the order they were first measured."""
        out: list[str] = []
        for row in self._rows:
            for key in row:
                if key.startswith("blocks."):
                    block = key.split(".", 2)[2]
                    out += [] if block in out else [block]
        return out

    def __enter__(self) -> Tracker:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close; after an exception the curve so far is stored as interrupted."""
        if exc is None:
            self.close()
            return
        try:
            self.close(interrupted=True)
        except StoreError as err:  # keep the training loop's own error in front
            exc.add_note(f"sharpkit could not store the tracked curve: {err}")

    def __repr__(self) -> str:
        return (
            f"Tracker(metrics={list(self.metrics)!r}, every={self.every}, "
            f"measurements={len(self._rows)}, samples={len(self._data)})"
        )


# --------------------------------------------------------------------------- helpers


def _whole(value: object, minimum: int) -> bool:
    """Whether ``value`` is an int (not a bool) of at least ``minimum``."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def _analysis_split(
    data: DataLike, analysis: Analysis, registry: Registry
) -> tuple[DataSplit, str | None, dict[str, Any]]:
    """The analysis set ``data`` names (read once), its dataset's name, its record.

    The record is :meth:`~sharpkit.api.job.Selection.cut`'s (``sample``, ...).
    """
    if isinstance(data, str):
        data = load_dataset(data, registry=registry)
    selection = analysis.selection
    if isinstance(data, Dataset):
        split, record = selection.cut(data.train, default=None)
        return DataSplit(split.inputs, split.targets), data.name, record
    first = selection.sample == "first"
    split, record = selection.cut(
        as_split(data, selection.count(None) if first else None), default=None
    )
    if first and selection.count(None) is not None:
        record["population"] = None  # read no further than the selection
    if len(split) == 0:
        msg = "the tracker's analysis data is empty; pass at least one example"
        raise ConfigError(msg)
    return DataSplit(split.inputs, split.targets), None, record


@contextmanager
def _untouched_rng(model: torch.nn.Module | None) -> Iterator[None]:
    """Restore torch's (CPU and the model's CUDA device), NumPy's and Python's RNGs."""
    import numpy as np
    import torch

    devices = []
    if model is not None:
        param = next(model.parameters(), None)
        if param is not None and param.device.type == "cuda":
            devices = [param.device]
    np_state = np.random.get_state()  # noqa: NPY002 - restored, never drawn from
    py_state = random.getstate()
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        np.random.set_state(np_state)  # noqa: NPY002
        random.setstate(py_state)


def block_curves(
    training: Mapping[str, np.ndarray], metric: str
) -> dict[str, np.ndarray]:
    """``{block: curve}`` of ``metric``'s per-block curves in a tracked run."""
    prefix = BLOCK_CURVE.format(metric=metric, block="")
    return {k[len(prefix) :]: v for k, v in training.items() if k.startswith(prefix)}
