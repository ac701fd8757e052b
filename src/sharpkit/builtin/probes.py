"""Built-in loss-landscape probes: interpolate, direction, plane, plane-between.

* ``interpolate`` evaluates loss and accuracy along the line
  ``(1-α)·θ1 + α·θ2`` between two trained models (Goodfellow, Vinyals & Saxe,
  2015, ICLR, "Qualitatively characterizing neural network optimization
  problems"), the probe behind Figs. 2 and 3 of Jastrzębski et al. (2017,
  "Finding flatter minima with SGD").
* ``direction`` evaluates the loss along ``θ + α·d`` for a random
  filter-normalised direction ``d`` (Li, Xu, Taylor, Studer & Goldstein, 2018,
  NeurIPS, "Visualizing the loss landscape of neural nets").
* ``plane`` evaluates a 2-D grid ``θ + x·d1 + y·d2`` spanned by two such
  directions; ``plane-between`` the grid ``θ1 + x·(θ2-θ1) + y·v`` through two
  minima, with ``v`` a random filter-normalised direction made orthogonal to
  ``θ2-θ1`` and scaled to its length (as in Garipov et al., 2018, NeurIPS).

Batch-norm running statistics are re-estimated at every grid point where the
probe's ``bn_reestimate`` option is on (the default for the two-model probes):
they are reset, and a fixed, seeded set of training examples is passed through
the model with only the batch-norm layers in training mode and ``momentum=None``
(a cumulative average over batches, as in ``torch.optim.swa_utils.update_bn``;
Izmailov et al., 2018, UAI). Without re-estimation the two-model probes
interpolate the floating-point buffers like the parameters (a running variance
that would turn negative outside ``[0, 1]`` is clamped at zero), and the
one-model probes keep the buffers of ``θ``.

Width readouts turn a curve into numbers: around a minimum at ``α = a`` with
training loss ``L_a``, the *basin* is the connected interval around ``a`` where
the training loss stays at or below ``L_a + width_delta`` (edges found by linear
interpolation between grid points). Widths are reported in α units and in
parameter-space distance (α units times ``‖θ2-θ1‖`` or ``‖d‖``). An edge that the
grid does not reach is *censored*: the grid end is reported and the readout is
listed in ``attrs["censored"]`` as a lower bound. ``interpolate`` also reports the
loss barrier ``max_{α∈[0,1]} L(α) - ((1-α)L_0 + αL_1)`` on the grid (Frankle,
Dziugaite, Roy & Carbin, 2020, ICML; Entezari et al., 2022, ICLR).

Large grids are resumable: with ``resume_dir`` set, the probe saves its partial
grid after every point to ``<resume_dir>/<probe>-<key>.npz`` (written to a
temporary file and renamed) and, when started again with the same models, data,
options and seed, skips the points already done. The file is deleted when the
grid is complete.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sharpkit._data import evaluate
from sharpkit._fs import atomic_file
from sharpkit.errors import ConfigError, DataError
from sharpkit.hookspecs import hookimpl
from sharpkit.interfaces import DataSplit, Option, ProbeContext, ProbeResult, ProbeSpec

if TYPE_CHECKING:
    import torch

__all__ = [
    "DEFAULT_BN_BATCH_SIZE",
    "DEFAULT_BN_SAMPLES",
    "DEFAULT_EVAL_SAMPLES",
    "DEFAULT_PLANE_EVAL_SAMPLES",
    "Direction",
    "Interpolate",
    "Plane",
    "PlaneBetween",
    "basin_edges",
    "evaluate",
    "filter_normalized_direction",
    "parse_grid",
    "reestimate_bn",
    "sharpkit_register_probes",
]

DEFAULT_EVAL_SAMPLES = 10_000
"""Training and test examples evaluated per grid point (1-D probes).

10 000 is the whole Fashion-MNIST / CIFAR-10 test set and a seeded sixth (a
fifth) of the training set: enough for a loss whose sampling error (≈1e-2
relative at the minima, far less where the loss is large) is invisible in the
paper's figures, while a ResNet-56 × 31 α stays within an hour on a laptop CPU.
"""
DEFAULT_PLANE_EVAL_SAMPLES = 2_048
"""Examples evaluated per point of a 2-D grid (a 21×21 grid has 441 points)."""
DEFAULT_BN_SAMPLES = 4_096
"""Training examples used to re-estimate batch-norm statistics at each point."""
DEFAULT_BN_BATCH_SIZE = 256
"""Batch size of the re-estimation passes (batch statistics normalise each batch)."""

_SNAP = 1e-9


# -------------------------------------------------------------------------------- grids


def parse_grid(text: str, *, name: str = "alpha") -> np.ndarray:
    """Parse a grid option: ``"start:stop:num"`` (inclusive) or ``"a,b,c"``.

    Values within 1e-9 of 0 or 1 are snapped to exactly 0 or 1, so that the
    minima themselves are grid points whenever the grid passes through them.

    Args:
        text: The option value.
        name: The option's name (for error messages).

    Returns:
        The grid as a strictly increasing float64 array.

    Raises:
        ConfigError: A malformed, empty, non-finite or non-increasing grid.
    """
    raw = str(text).strip()
    try:
        if ":" in raw:
            parts = raw.split(":")
            if len(parts) != 3:
                raise ValueError(raw)
            start, stop, num = float(parts[0]), float(parts[1]), int(parts[2])
            if num < 1 or not (math.isfinite(start) and math.isfinite(stop)):
                raise ValueError(raw)
            values = np.linspace(start, stop, num, dtype=np.float64)
        else:
            values = np.array(
                [float(v) for v in raw.split(",") if v.strip()], dtype=np.float64
            )
    except ValueError:
        msg = (
            f"option {name!r} must be 'start:stop:num' (e.g. '-1:2:31') or "
            f"comma-separated values, got {text!r}"
        )
        raise ConfigError(msg) from None
    if values.size == 0 or not np.all(np.isfinite(values)):
        msg = f"option {name!r} needs at least one finite value, got {text!r}"
        raise ConfigError(msg)
    if values.size > 1 and not np.all(np.diff(values) > 0):
        msg = f"option {name!r} must be strictly increasing, got {text!r}"
        raise ConfigError(msg)
    for target in (0.0, 1.0):
        values[np.abs(values - target) < _SNAP] = target
    return values


def _grid_text(values: np.ndarray) -> str:
    return ",".join(repr(float(v)) for v in values)


# --------------------------------------------------------------------------------- data


def _model_dtype(model: torch.nn.Module) -> torch.dtype:
    import torch

    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.get_default_dtype()


def _subset(split: DataSplit, n: int, gen: torch.Generator) -> DataSplit:
    """A seeded random subset of ``n`` examples (all if ``n`` is 0 or too big)."""
    import torch

    if n <= 0 or n >= len(split):
        return split
    idx = torch.randperm(len(split), generator=gen)[:n].sort().values
    return split.take(idx)


# --------------------------------------------------------------------------- batch norm


def _bn_layers(model: torch.nn.Module) -> list[torch.nn.modules.batchnorm._BatchNorm]:
    import torch

    return [
        m
        for m in model.modules()
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
        and m.track_running_stats
    ]


def reestimate_bn(model: torch.nn.Module, batches: Iterable[torch.Tensor]) -> int:
    """Re-estimate batch-norm running statistics from ``batches`` of inputs.

    The statistics are reset, then every batch is passed forward (without
    gradients) with only the batch-norm layers in training mode and
    ``momentum=None``, so each running mean and variance ends as the plain
    average over batches of the batch mean and the unbiased batch variance.
    Dropout and other layers stay in eval mode. Momenta and train/eval modes are
    restored afterwards.

    Args:
        model: The model; its batch-norm buffers are overwritten.
        batches: Input tensors, already on the model's device and dtype.

    Returns:
        The number of batch-norm layers re-estimated.
    """
    import torch

    layers = _bn_layers(model)
    if not layers:
        return 0
    momenta = [m.momentum for m in layers]
    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()
        for m in layers:
            m.reset_running_stats()
            m.momentum = None
            m.train()
        with torch.no_grad():
            for x in batches:
                model(x)
    finally:
        for layer, momentum in zip(layers, momenta, strict=True):
            layer.momentum = momentum
        for module, mode in modes.items():
            module.training = mode
    return len(layers)


def _bn_batches(
    split: DataSplit,
    n: int,
    batch_size: int,
    gen: torch.Generator,
    device: torch.device,
    dtype: torch.dtype,
) -> list[torch.Tensor]:
    """A fixed, seeded set of training inputs cut into near-equal batches (≥ 2 each)."""
    import torch

    sub = _subset(split, n, gen)
    if len(sub) < 2:
        msg = (
            f"batch-norm re-estimation needs at least 2 training examples, have "
            f"{len(sub)}; raise bn_samples or pass bn_reestimate=false"
        )
        raise ConfigError(msg)
    n_batches = max(1, math.ceil(len(sub) / batch_size))
    n_batches = min(n_batches, len(sub) // 2)
    chunks = torch.tensor_split(sub.inputs, n_batches)
    return [c.to(device=device, dtype=dtype) for c in chunks]


# --------------------------------------------------------------------------- directions


def _named_params(model: torch.nn.Module) -> list[tuple[str, torch.Tensor]]:
    return [(n, p) for n, p in model.named_parameters() if p.is_floating_point()]


def _clone_params(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for _, p in _named_params(model)]


def _norm(vectors: Sequence[torch.Tensor]) -> float:
    return math.sqrt(sum(float((v.double() ** 2).sum()) for v in vectors))


def _dot(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> float:
    return sum(
        float((x.double() * y.double()).sum()) for x, y in zip(a, b, strict=True)
    )


def filter_normalized_direction(
    params: Sequence[torch.Tensor],
    gen: torch.Generator,
    *,
    bias_bn: str = "zero",
) -> list[torch.Tensor]:
    """A random Gaussian direction, filter-normalised as in Li et al. (2018).

    For a parameter with two or more dimensions (linear and convolution weights),
    each *filter* (slice along dimension 0: an output neuron or channel) of the
    direction is rescaled to the norm of the same filter in ``params``. For
    one-dimensional parameters (biases, batch-norm scales and shifts) the
    direction is zero (``bias_bn="zero"``, Li et al.'s default) or a copy of the
    parameter itself (``bias_bn="copy"``, their alternative).

    Args:
        params: The parameters ``θ`` (their shapes, dtypes and devices are used).
        gen: CPU generator; draws are made in float64 and then cast, so a seed
            gives the same direction in float32 and float64.
        bias_bn: ``"zero"`` or ``"copy"``.

    Returns:
        One tensor per parameter.
    """
    import torch

    if bias_bn not in ("zero", "copy"):
        msg = f"bias_bn must be 'zero' or 'copy', got {bias_bn!r}"
        raise ConfigError(msg)
    out: list[torch.Tensor] = []
    for p in params:
        d = torch.randn(p.shape, generator=gen, dtype=torch.float64)
        w = p.detach().to(device="cpu", dtype=torch.float64)
        if p.ndim <= 1:
            d = w.clone() if bias_bn == "copy" else torch.zeros_like(w)
        else:
            w_norm = w.reshape(w.shape[0], -1).norm(dim=1)
            d_norm = d.reshape(d.shape[0], -1).norm(dim=1)
            scale = torch.where(d_norm > 0, w_norm / d_norm, torch.zeros_like(d_norm))
            d = d * scale.reshape(-1, *([1] * (d.ndim - 1)))
        out.append(d.to(device=p.device, dtype=p.dtype))
    return out


# ------------------------------------------------------------------------- model points


def _set_params(model: torch.nn.Module, values: Sequence[torch.Tensor]) -> None:
    import torch

    with torch.no_grad():
        for (_, p), v in zip(_named_params(model), values, strict=True):
            p.copy_(v)


def _combine(
    base: Sequence[torch.Tensor],
    terms: Sequence[tuple[float, Sequence[torch.Tensor]]],
) -> list[torch.Tensor]:
    """``base + Σ c·d`` per parameter."""
    out = []
    for i, b in enumerate(base):
        v = b.clone()
        for c, d in terms:
            if c != 0.0:
                v.add_(d[i], alpha=c)
        out.append(v)
    return out


def _float_buffers(model: torch.nn.Module) -> list[tuple[str, torch.Tensor]]:
    return [(n, b) for n, b in model.named_buffers() if b.is_floating_point()]


def _interpolate_buffers(
    work: torch.nn.Module,
    first: Sequence[torch.Tensor],
    second: Sequence[torch.Tensor],
    alpha: float,
) -> None:
    """Set floating buffers to ``(1-α)·b1 + α·b2``; running variances clamped at 0."""
    import torch

    with torch.no_grad():
        for (name, buf), b1, b2 in zip(
            _float_buffers(work), first, second, strict=True
        ):
            value = (1.0 - alpha) * b1 + alpha * b2
            if name.endswith("running_var"):
                value = value.clamp_min(0.0)
            buf.copy_(value)


def _state_digest(models: Sequence[torch.nn.Module]) -> str:
    digest = hashlib.sha256()
    for m in models:
        for name, tensor in sorted(m.state_dict().items()):
            digest.update(name.encode())
            digest.update(str(tuple(tensor.shape)).encode())
            digest.update(str(tensor.dtype).encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _split_digest(split: DataSplit | None) -> str:
    if split is None:
        return "none"
    digest = hashlib.sha256()
    digest.update(str(tuple(split.inputs.shape)).encode())
    digest.update(split.inputs.detach().cpu().contiguous().numpy().tobytes())
    digest.update(split.targets.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


# --------------------------------------------------------------------------- evaluation


class _Evaluator:
    """Evaluates a model at one grid point: optional BN re-estimation, then losses."""

    def __init__(
        self,
        ctx: ProbeContext,
        *,
        dtype: torch.dtype,
        eval_samples: int,
        test: bool,
        bn_reestimate: bool,
        bn_samples: int,
        bn_batch_size: int,
        stream: str,
    ) -> None:
        self.ctx = ctx
        self.dtype = dtype
        self.train = _subset(
            ctx.train_data, eval_samples, ctx.generator(f"{stream}:train")
        )
        self.test: DataSplit | None = None
        if test and ctx.test_data is not None and len(ctx.test_data) > 0:
            self.test = _subset(
                ctx.test_data, eval_samples, ctx.generator(f"{stream}:test")
            )
        self.bn_batches: list[torch.Tensor] | None = None
        if bn_reestimate:
            self.bn_batches = _bn_batches(
                ctx.train_data,
                bn_samples,
                bn_batch_size,
                ctx.generator(f"{stream}:bn"),
                ctx.device,
                dtype,
            )
        self.names = ["train_loss", "train_accuracy"]
        if self.test is not None:
            self.names += ["test_loss", "test_accuracy"]

    def attrs(self) -> dict[str, Any]:
        return {
            "train_samples": len(self.train),
            "test_samples": len(self.test) if self.test is not None else 0,
            "bn_samples": sum(len(b) for b in self.bn_batches)
            if self.bn_batches is not None
            else 0,
            "bn_batches": len(self.bn_batches) if self.bn_batches is not None else 0,
        }

    def digest(self) -> str:
        return (
            _split_digest(self.train)
            + _split_digest(self.test)
            + ("bn" if self.bn_batches is not None else "nobn")
        )

    def __call__(self, model: torch.nn.Module) -> dict[str, float]:
        ctx = self.ctx
        if self.bn_batches is not None:
            reestimate_bn(model, self.bn_batches)
        kw: dict[str, Any] = {
            "batch_size": ctx.batch_size,
            "device": ctx.device,
            "dtype": self.dtype,
        }
        loss, acc = evaluate(model, self.train, ctx.loss_fn, **kw)
        out = {"train_loss": loss, "train_accuracy": acc}
        if self.test is not None:
            loss, acc = evaluate(model, self.test, ctx.loss_fn, **kw)
            out.update(test_loss=loss, test_accuracy=acc)
        return out


class _Checkpointer:
    """Saves a partially evaluated grid and restores it on the next run."""

    def __init__(self, directory: str, probe: str, key: str) -> None:
        self.dir = Path(directory).expanduser()
        self.key = key
        self.path = self.dir / f"{probe}-{key[:20]}.npz"

    def load(
        self, shape: tuple[int, ...], names: Sequence[str]
    ) -> tuple[dict[str, np.ndarray], np.ndarray] | None:
        if not self.path.is_file():
            return None
        try:
            with np.load(self.path, allow_pickle=False) as data:
                if str(data["key"]) != self.key:
                    return None
                done = np.array(data["done"], dtype=bool)
                arrays = {
                    n: np.array(data[f"array_{n}"], dtype=np.float64) for n in names
                }
        except (OSError, KeyError, ValueError) as exc:
            msg = (
                f"cannot read the partial grid {str(self.path)!r} ({exc}); delete it "
                "to start the probe afresh"
            )
            raise DataError(msg) from exc
        if done.shape != shape or any(a.shape != shape for a in arrays.values()):
            return None
        return arrays, done

    def save(self, arrays: Mapping[str, np.ndarray], done: np.ndarray) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        payload: dict[str, Any] = {"key": np.array(self.key), "done": done}
        payload.update({f"array_{n}": a for n, a in arrays.items()})
        with atomic_file(self.path) as tmp, tmp.open("wb") as fh:
            np.savez(fh, **payload)

    def finish(self) -> None:
        self.path.unlink(missing_ok=True)


def _sweep(
    ctx: ProbeContext,
    work: torch.nn.Module,
    shape: tuple[int, ...],
    set_point: Callable[[tuple[int, ...]], str],
    evaluator: _Evaluator,
    checkpointer: _Checkpointer | None,
) -> tuple[dict[str, np.ndarray], int]:
    """Evaluate every grid point (resuming where a checkpoint left off).

    Returns:
        The arrays, and how many points were restored from the checkpoint.
    """
    names = evaluator.names
    arrays = {n: np.full(shape, np.nan) for n in names}
    done = np.zeros(shape, dtype=bool)
    if checkpointer is not None:
        restored = checkpointer.load(shape, names)
        if restored is not None:
            arrays, done = restored
    resumed = int(done.sum())
    total = int(np.prod(shape))
    completed = resumed
    ctx.progress(completed, total)
    for idx in np.ndindex(*shape):
        if done[idx]:
            continue
        label = set_point(idx)
        values = evaluator(work)
        for n in names:
            arrays[n][idx] = values[n]
        done[idx] = True
        completed += 1
        if checkpointer is not None:
            checkpointer.save(arrays, done)
        ctx.progress(
            completed, total, description=label, train_loss=values["train_loss"]
        )
    if checkpointer is not None:
        checkpointer.finish()
    return arrays, resumed


# ----------------------------------------------------------------------------- readouts


def basin_edges(
    coords: np.ndarray, loss: np.ndarray, center: float, threshold: float
) -> tuple[float, float, bool, bool]:
    """Edges of the interval around ``center`` where ``loss <= threshold``.

    ``coords`` must be strictly increasing and contain ``center``. Walking out from
    ``center``, the first grid point above the threshold (or with a non-finite
    loss) ends the interval; the edge is placed by linear interpolation between it
    and the last point below (at that last point if the loss there is not finite).

    Returns:
        ``(left, right, left_censored, right_censored)``; a censored edge is the
        grid end, reached without crossing the threshold.
    """
    coords = np.asarray(coords, dtype=np.float64)
    loss = np.asarray(loss, dtype=np.float64)
    hits = np.flatnonzero(coords == center)
    if hits.size != 1:
        msg = f"the grid does not contain the centre {center}"
        raise ConfigError(msg)
    c = int(hits[0])

    def walk(step: int) -> tuple[float, bool]:
        i = c
        while 0 <= i + step < coords.size:
            j = i + step
            lj = loss[j]
            if not np.isfinite(lj):
                return float(coords[i]), False
            if lj > threshold:
                li = loss[i]
                frac = (threshold - li) / (lj - li) if lj != li else 0.0
                frac = min(max(frac, 0.0), 1.0)
                return float(coords[i] + frac * (coords[j] - coords[i])), False
            i = j
        return float(coords[i]), True

    if not np.isfinite(loss[c]) or loss[c] > threshold:
        return float(center), float(center), False, False
    left, left_c = walk(-1)
    right, right_c = walk(+1)
    return left, right, left_c, right_c


def _width_summary(
    prefix: str,
    coords: np.ndarray,
    loss: np.ndarray,
    center: float,
    delta: float,
    scale: float,
    summary: dict[str, float],
    censored: list[str],
) -> None:
    c = int(np.flatnonzero(coords == center)[0])
    threshold = float(loss[c]) + delta
    left, right, lc, rc = basin_edges(coords, loss, center, threshold)
    summary[f"{prefix}_left"] = left
    summary[f"{prefix}_right"] = right
    summary[prefix] = right - left
    summary[f"{prefix}_distance"] = (right - left) * scale
    if lc:
        censored.append(f"{prefix}_left")
    if rc:
        censored.append(f"{prefix}_right")
    if lc or rc:
        censored.extend([prefix, f"{prefix}_distance"])


# ------------------------------------------------------------------------------ options


def _common_options(
    *,
    bn_default: bool,
    eval_default: int,
) -> tuple[Option, ...]:
    return (
        Option(
            name="bn_reestimate",
            type=bool,
            default=bn_default,
            help="Re-estimate batch-norm running statistics on training data at "
            "every grid point.",
        ),
        Option(
            name="bn_samples",
            type=int,
            default=DEFAULT_BN_SAMPLES,
            help="Training examples (a fixed, seeded subset) for BN re-estimation; "
            "0: all.",
        ),
        Option(
            name="bn_batch_size",
            type=int,
            default=DEFAULT_BN_BATCH_SIZE,
            help="Batch size of the BN re-estimation passes.",
        ),
        Option(
            name="eval_samples",
            type=int,
            default=eval_default,
            help="Training and test examples (fixed, seeded subsets) evaluated at "
            "each point; 0: all.",
        ),
        Option(
            name="test",
            type=bool,
            default=True,
            help="Also evaluate loss and accuracy on the test split.",
        ),
        Option(
            name="width_delta",
            type=float,
            default=1.0,
            help="Width readouts: the basin is where the training loss stays "
            "within this much above the minimum's loss.",
        ),
        Option(
            name="resume_dir",
            type=str,
            default="",
            help="Save the partial grid here after every point and resume from it.",
        ),
    )


def _check_common(
    *, bn_samples: int, bn_batch_size: int, eval_samples: int, width_delta: float
) -> None:
    for label, value in (("bn_samples", bn_samples), ("eval_samples", eval_samples)):
        if value < 0:
            msg = f"{label} must be >= 0 (0: all examples), got {value}"
            raise ConfigError(msg)
    if bn_batch_size < 2:
        msg = f"bn_batch_size must be >= 2, got {bn_batch_size}"
        raise ConfigError(msg)
    if not width_delta > 0:
        msg = f"width_delta must be positive, got {width_delta}"
        raise ConfigError(msg)


class _GridProbe:
    """Shared option handling of the built-in probes."""

    name = ""

    def __init__(
        self,
        *,
        bn_reestimate: bool,
        bn_samples: int,
        bn_batch_size: int,
        eval_samples: int,
        test: bool,
        width_delta: float,
        resume_dir: str,
    ) -> None:
        _check_common(
            bn_samples=bn_samples,
            bn_batch_size=bn_batch_size,
            eval_samples=eval_samples,
            width_delta=width_delta,
        )
        self.bn_reestimate = bool(bn_reestimate)
        self.bn_samples = int(bn_samples)
        self.bn_batch_size = int(bn_batch_size)
        self.eval_samples = int(eval_samples)
        self.test = bool(test)
        self.width_delta = float(width_delta)
        self.resume_dir = str(resume_dir)

    def _settings(self) -> dict[str, Any]:
        return {
            "bn_reestimate": self.bn_reestimate,
            "bn_samples": self.bn_samples,
            "bn_batch_size": self.bn_batch_size,
            "eval_samples": self.eval_samples,
            "test": self.test,
            "width_delta": self.width_delta,
        }

    def _evaluator(self, ctx: ProbeContext, dtype: torch.dtype) -> _Evaluator:
        return _Evaluator(
            ctx,
            dtype=dtype,
            eval_samples=self.eval_samples,
            test=self.test,
            bn_reestimate=self.bn_reestimate,
            bn_samples=self.bn_samples,
            bn_batch_size=self.bn_batch_size,
            stream=self.name,
        )

    def _checkpointer(
        self,
        ctx: ProbeContext,
        evaluator: _Evaluator,
        extra: Mapping[str, Any],
    ) -> _Checkpointer | None:
        if not self.resume_dir:
            return None
        payload = {
            "probe": self.name,
            "settings": self._settings(),
            "extra": extra,
            "seed": ctx.seed,
            "models": _state_digest(ctx.models),
            "data": evaluator.digest(),
            "loss": getattr(ctx.loss_fn, "__qualname__", type(ctx.loss_fn).__name__),
        }
        text = json.dumps(payload, sort_keys=True, default=str)
        key = hashlib.sha256(text.encode()).hexdigest()
        return _Checkpointer(self.resume_dir, self.name, key)

    def _check_models(self, ctx: ProbeContext, n: int) -> None:
        if len(ctx.models) != n:
            msg = f"probe {self.name!r} takes {n} model(s), got {len(ctx.models)}"
            raise ConfigError(msg)
        shapes = [[tuple(p.shape) for _, p in _named_params(m)] for m in ctx.models]
        if any(s != shapes[0] for s in shapes[1:]):
            msg = (
                f"probe {self.name!r}: the models have different parameter shapes; "
                "they must be the same architecture"
            )
            raise ConfigError(msg)


@contextmanager
def _timed() -> Iterator[list[float]]:
    box = [0.0]
    start = time.perf_counter()
    try:
        yield box
    finally:
        box[0] = time.perf_counter() - start


# -------------------------------------------------------------------------- interpolate


class Interpolate(_GridProbe):
    """Loss and accuracy along ``(1-α)·θ1 + α·θ2`` (Goodfellow et al., 2015).

    Args:
        alpha: Grid of α: ``"start:stop:num"`` or comma-separated values.
        bn_reestimate: Re-estimate BN statistics at every α (else interpolate
            the buffers like the parameters).
        bn_samples: Training examples used for re-estimation (0: all).
        bn_batch_size: Batch size of the re-estimation passes.
        eval_samples: Training and test examples evaluated per α (0: all).
        test: Also evaluate on the test split.
        width_delta: Basin threshold above each minimum's training loss.
        resume_dir: Directory for the resumable partial grid ("": none).
    """

    name = "interpolate"

    def __init__(
        self,
        *,
        alpha: str = "-1:2:31",
        bn_reestimate: bool = True,
        bn_samples: int = DEFAULT_BN_SAMPLES,
        bn_batch_size: int = DEFAULT_BN_BATCH_SIZE,
        eval_samples: int = DEFAULT_EVAL_SAMPLES,
        test: bool = True,
        width_delta: float = 1.0,
        resume_dir: str = "",
    ) -> None:
        super().__init__(
            bn_reestimate=bn_reestimate,
            bn_samples=bn_samples,
            bn_batch_size=bn_batch_size,
            eval_samples=eval_samples,
            test=test,
            width_delta=width_delta,
            resume_dir=resume_dir,
        )
        self.alpha = parse_grid(alpha, name="alpha")

    def run(self, ctx: ProbeContext, /) -> ProbeResult:
        """Evaluate the two models in ``ctx`` along the line between them."""
        self._check_models(ctx, 2)
        with _timed() as elapsed:
            result = self._run(ctx)
        return ProbeResult(
            coords=result.coords,
            arrays=result.arrays,
            summary=result.summary,
            attrs=result.attrs,
            seconds=elapsed[0],
            probe=self.name,
        )

    def _run(self, ctx: ProbeContext) -> ProbeResult:
        m1, m2 = ctx.models
        work = copy.deepcopy(m1).eval()
        dtype = _model_dtype(work)
        theta1, theta2 = _clone_params(m1), _clone_params(m2)
        bufs1 = [b.detach().clone() for _, b in _float_buffers(m1)]
        bufs2 = [b.detach().clone() for _, b in _float_buffers(m2)]
        evaluator = self._evaluator(ctx, dtype)
        # Points beyond the grid: the minima themselves, if the grid misses them.
        extra = [a for a in (0.0, 1.0) if not np.any(self.alpha == a)]
        grid = np.concatenate([self.alpha, np.array(extra, dtype=np.float64)])
        checkpointer = self._checkpointer(ctx, evaluator, {"alpha": _grid_text(grid)})

        def set_point(idx: tuple[int, ...]) -> str:
            a = float(grid[idx[0]])
            values = [
                (1.0 - a) * t1 + a * t2 for t1, t2 in zip(theta1, theta2, strict=True)
            ]
            _set_params(work, values)
            _interpolate_buffers(work, bufs1, bufs2, a)
            return f"α={a:.3g}"

        arrays, resumed = _sweep(
            ctx, work, (grid.size,), set_point, evaluator, checkpointer
        )
        n = self.alpha.size
        out = {k: v[:n].copy() for k, v in arrays.items()}

        # Readouts on the grid plus the minima (sorted).
        order = np.argsort(grid, kind="stable")
        coords, train_loss = grid[order], arrays["train_loss"][order]
        distance = _norm([t2 - t1 for t1, t2 in zip(theta1, theta2, strict=True)])
        summary: dict[str, float] = {"distance": distance}
        censored: list[str] = []
        for center, label in ((0.0, "0"), (1.0, "1")):
            i = int(np.flatnonzero(coords == center)[0])
            summary[f"train_loss_at_{label}"] = float(train_loss[i])
            _width_summary(
                f"width_{label}",
                coords,
                train_loss,
                center,
                self.width_delta,
                distance,
                summary,
                censored,
            )
        # Outer half-widths: each minimum on the side away from the other one,
        # where the other basin cannot merge with it.
        for label, edge, outer in (
            ("0", "width_0_left", -1.0),
            ("1", "width_1_right", 1.0),
        ):
            half = outer * (summary[edge] - float(label))
            summary[f"width_{label}_outer"] = half
            summary[f"width_{label}_outer_distance"] = half * distance
            if edge in censored:
                censored.extend(
                    [f"width_{label}_outer", f"width_{label}_outer_distance"]
                )
        inside = (coords >= 0.0) & (coords <= 1.0)
        l0, l1 = summary["train_loss_at_0"], summary["train_loss_at_1"]
        excess = train_loss[inside] - (
            (1.0 - coords[inside]) * l0 + coords[inside] * l1
        )
        finite = excess[np.isfinite(excess)]
        summary["barrier"] = float(finite.max()) if finite.size else math.nan
        if finite.size:
            summary["barrier_alpha"] = float(
                coords[inside][np.isfinite(excess)][int(np.argmax(finite))]
            )

        attrs: dict[str, Any] = {
            "alpha": _grid_text(self.alpha),
            **self._settings(),
            **evaluator.attrs(),
            "extra_alpha": [float(a) for a in extra],
            "resumed_points": resumed,
            "censored": censored,
            "width_definition": (
                "basin around each minimum where the training loss stays <= its "
                "loss + width_delta; edges by linear interpolation on the grid; "
                "width_*_outer = half-width on the side away from the other "
                "minimum; *_distance = α units × ‖θ2-θ1‖"
            ),
            "buffers": "bn re-estimated"
            if self.bn_reestimate
            else "floating buffers interpolated; running_var clamped at 0",
        }
        return ProbeResult(
            coords={"alpha": self.alpha.copy()},
            arrays=out,
            summary=summary,
            attrs=attrs,
        )


# ---------------------------------------------------------------------------- direction


class Direction(_GridProbe):
    """Loss along ``θ + α·d``, ``d`` a random filter-normalised direction.

    Li et al. (2018).

    Args:
        alpha: Grid of α (in units of ``d``, whose filters have the norms of θ's).
        bias_bn: Direction on 1-D parameters: ``"zero"`` (Li et al.) or ``"copy"``.
        bn_reestimate: Re-estimate BN statistics at every α (default off: the
            buffers of θ are kept, as Li et al. evaluate in eval mode).
        bn_samples: Training examples used for re-estimation (0: all).
        bn_batch_size: Batch size of the re-estimation passes.
        eval_samples: Training and test examples evaluated per α (0: all).
        test: Also evaluate on the test split.
        width_delta: Basin threshold above the training loss at α = 0.
        resume_dir: Directory for the resumable partial grid ("": none).
    """

    name = "direction"

    def __init__(
        self,
        *,
        alpha: str = "-1:1:41",
        bias_bn: str = "zero",
        bn_reestimate: bool = False,
        bn_samples: int = DEFAULT_BN_SAMPLES,
        bn_batch_size: int = DEFAULT_BN_BATCH_SIZE,
        eval_samples: int = DEFAULT_EVAL_SAMPLES,
        test: bool = True,
        width_delta: float = 1.0,
        resume_dir: str = "",
    ) -> None:
        super().__init__(
            bn_reestimate=bn_reestimate,
            bn_samples=bn_samples,
            bn_batch_size=bn_batch_size,
            eval_samples=eval_samples,
            test=test,
            width_delta=width_delta,
            resume_dir=resume_dir,
        )
        if bias_bn not in ("zero", "copy"):
            msg = f"bias_bn must be 'zero' or 'copy', got {bias_bn!r}"
            raise ConfigError(msg)
        self.bias_bn = bias_bn
        self.alpha = parse_grid(alpha, name="alpha")

    def run(self, ctx: ProbeContext, /) -> ProbeResult:
        """Evaluate the model in ``ctx`` along one random direction."""
        self._check_models(ctx, 1)
        start = time.perf_counter()
        model = ctx.models[0]
        work = copy.deepcopy(model).eval()
        dtype = _model_dtype(work)
        theta = _clone_params(model)
        direction = filter_normalized_direction(
            theta, ctx.generator(self.name), bias_bn=self.bias_bn
        )
        evaluator = self._evaluator(ctx, dtype)
        extra = [] if np.any(self.alpha == 0.0) else [0.0]
        grid = np.concatenate([self.alpha, np.array(extra, dtype=np.float64)])
        checkpointer = self._checkpointer(
            ctx, evaluator, {"alpha": _grid_text(grid), "bias_bn": self.bias_bn}
        )

        def set_point(idx: tuple[int, ...]) -> str:
            a = float(grid[idx[0]])
            _set_params(work, _combine(theta, [(a, direction)]))
            return f"α={a:.3g}"

        arrays, resumed = _sweep(
            ctx, work, (grid.size,), set_point, evaluator, checkpointer
        )
        n = self.alpha.size
        out = {k: v[:n].copy() for k, v in arrays.items()}
        order = np.argsort(grid, kind="stable")
        coords, train_loss = grid[order], arrays["train_loss"][order]
        d_norm = _norm(direction)
        summary: dict[str, float] = {
            "direction_norm": d_norm,
            "train_loss_at_0": float(train_loss[int(np.flatnonzero(coords == 0.0)[0])]),
        }
        censored: list[str] = []
        _width_summary(
            "width",
            coords,
            train_loss,
            0.0,
            self.width_delta,
            d_norm,
            summary,
            censored,
        )
        attrs: dict[str, Any] = {
            "alpha": _grid_text(self.alpha),
            "bias_bn": self.bias_bn,
            **self._settings(),
            **evaluator.attrs(),
            "extra_alpha": [float(a) for a in extra],
            "resumed_points": resumed,
            "censored": censored,
            "normalization": "filter (Li et al., 2018)",
            "parameter_norm": _norm(theta),
        }
        return ProbeResult(
            coords={"alpha": self.alpha.copy()},
            arrays=out,
            summary=summary,
            attrs=attrs,
            seconds=time.perf_counter() - start,
            probe=self.name,
        )


# ------------------------------------------------------------------------------- planes


def _plane_readouts(
    x: np.ndarray,
    y: np.ndarray,
    loss: np.ndarray,
    origin: tuple[float, float],
    delta: float,
    scales: tuple[float, float],
    prefix: str,
    summary: dict[str, float],
    censored: list[str],
) -> None:
    """Widths along the x row and y column through ``origin`` (if on the grid)."""
    ox, oy = origin
    ix, iy = np.flatnonzero(x == ox), np.flatnonzero(y == oy)
    if ix.size != 1 or iy.size != 1:
        return
    row = loss[int(iy[0]), :]
    col = loss[:, int(ix[0])]
    key = f"{prefix}train_loss" if prefix else "train_loss_at_origin"
    summary[key] = float(row[int(ix[0])])
    _width_summary(f"{prefix}width_x", x, row, ox, delta, scales[0], summary, censored)
    _width_summary(f"{prefix}width_y", y, col, oy, delta, scales[1], summary, censored)


class Plane(_GridProbe):
    """Loss on the grid ``θ + x·d1 + y·d2`` of two random filter-normalised directions.

    Arrays have shape ``(len(y), len(x))`` (rows are y). The two directions are
    drawn one after the other from the probe's seeded stream and not
    orthogonalised (in high dimension they are nearly orthogonal; their cosine is
    reported in ``attrs``).

    Args:
        x: Grid along ``d1``.
        y: Grid along ``d2``.
        bias_bn: Direction on 1-D parameters: ``"zero"`` (Li et al.) or ``"copy"``.
        bn_reestimate: Re-estimate BN statistics at every point (default off).
        bn_samples: Training examples used for re-estimation (0: all).
        bn_batch_size: Batch size of the re-estimation passes.
        eval_samples: Training and test examples evaluated per point (0: all).
        test: Also evaluate on the test split.
        width_delta: Basin threshold above the training loss at the origin.
        resume_dir: Directory for the resumable partial grid ("": none).
    """

    name = "plane"

    def __init__(
        self,
        *,
        x: str = "-1:1:21",
        y: str = "-1:1:21",
        bias_bn: str = "zero",
        bn_reestimate: bool = False,
        bn_samples: int = DEFAULT_BN_SAMPLES,
        bn_batch_size: int = DEFAULT_BN_BATCH_SIZE,
        eval_samples: int = DEFAULT_PLANE_EVAL_SAMPLES,
        test: bool = True,
        width_delta: float = 1.0,
        resume_dir: str = "",
    ) -> None:
        super().__init__(
            bn_reestimate=bn_reestimate,
            bn_samples=bn_samples,
            bn_batch_size=bn_batch_size,
            eval_samples=eval_samples,
            test=test,
            width_delta=width_delta,
            resume_dir=resume_dir,
        )
        if bias_bn not in ("zero", "copy"):
            msg = f"bias_bn must be 'zero' or 'copy', got {bias_bn!r}"
            raise ConfigError(msg)
        self.bias_bn = bias_bn
        self.x = parse_grid(x, name="x")
        self.y = parse_grid(y, name="y")

    def _directions(
        self, ctx: ProbeContext, theta: Sequence[torch.Tensor]
    ) -> tuple[
        list[torch.Tensor], list[torch.Tensor], tuple[float, float], dict[str, Any]
    ]:
        gen = ctx.generator(self.name)
        d1 = filter_normalized_direction(theta, gen, bias_bn=self.bias_bn)
        d2 = filter_normalized_direction(theta, gen, bias_bn=self.bias_bn)
        n1, n2 = _norm(d1), _norm(d2)
        cosine = _dot(d1, d2) / (n1 * n2) if n1 > 0 and n2 > 0 else math.nan
        return d1, d2, (n1, n2), {"cosine_d1_d2": cosine, "bias_bn": self.bias_bn}

    def run(self, ctx: ProbeContext, /) -> ProbeResult:
        """Evaluate the model in ``ctx`` on the plane of two random directions."""
        self._check_models(ctx, 1)
        start = time.perf_counter()
        model = ctx.models[0]
        theta = _clone_params(model)
        d1, d2, norms, info = self._directions(ctx, theta)
        return self._grid(ctx, model, theta, d1, d2, norms, info, start)

    def _grid(
        self,
        ctx: ProbeContext,
        model: torch.nn.Module,
        theta: Sequence[torch.Tensor],
        d1: Sequence[torch.Tensor],
        d2: Sequence[torch.Tensor],
        norms: tuple[float, float],
        info: dict[str, Any],
        start: float,
        centers: Sequence[tuple[str, tuple[float, float]]] = (("", (0.0, 0.0)),),
    ) -> ProbeResult:
        work = copy.deepcopy(model).eval()
        dtype = _model_dtype(work)
        evaluator = self._evaluator(ctx, dtype)
        checkpointer = self._checkpointer(
            ctx,
            evaluator,
            {"x": _grid_text(self.x), "y": _grid_text(self.y), **info},
        )
        x, y = self.x, self.y

        def set_point(idx: tuple[int, ...]) -> str:
            a, b = float(x[idx[1]]), float(y[idx[0]])
            _set_params(work, _combine(theta, [(a, d1), (b, d2)]))
            return f"x={a:.3g} y={b:.3g}"

        arrays, resumed = _sweep(
            ctx, work, (y.size, x.size), set_point, evaluator, checkpointer
        )
        summary: dict[str, float] = {"norm_x": norms[0], "norm_y": norms[1]}
        censored: list[str] = []
        for prefix, center in centers:
            _plane_readouts(
                x,
                y,
                arrays["train_loss"],
                center,
                self.width_delta,
                norms,
                prefix,
                summary,
                censored,
            )
        attrs: dict[str, Any] = {
            "x": _grid_text(x),
            "y": _grid_text(y),
            **info,
            **self._settings(),
            **evaluator.attrs(),
            "resumed_points": resumed,
            "censored": censored,
            "layout": "arrays[i, j] is the point (x[j], y[i])",
        }
        return ProbeResult(
            coords={"y": y.copy(), "x": x.copy()},
            arrays=arrays,
            summary=summary,
            attrs=attrs,
            seconds=time.perf_counter() - start,
            probe=self.name,
        )


class PlaneBetween(Plane):
    """Loss on the grid ``θ1 + x·(θ2-θ1) + y·v`` through two minima.

    ``(0, 0)`` is θ1 and ``(1, 0)`` is θ2. ``v`` is a random filter-normalised
    direction at θ1, made orthogonal to ``θ2-θ1`` and rescaled to its length, so
    both axes are in units of ``‖θ2-θ1‖``. Batch-norm statistics are re-estimated
    at every point by default (as for ``interpolate``).

    Args:
        x: Grid along ``θ2-θ1``.
        y: Grid along ``v``.
        bias_bn: Direction on 1-D parameters: ``"zero"`` (Li et al.) or ``"copy"``.
        bn_reestimate: Re-estimate BN statistics at every point.
        bn_samples: Training examples used for re-estimation (0: all).
        bn_batch_size: Batch size of the re-estimation passes.
        eval_samples: Training and test examples evaluated per point (0: all).
        test: Also evaluate on the test split.
        width_delta: Basin threshold above each minimum's training loss.
        resume_dir: Directory for the resumable partial grid ("": none).
    """

    name = "plane-between"

    def __init__(
        self,
        *,
        x: str = "-0.5:1.5:21",
        y: str = "-1:1:21",
        bias_bn: str = "zero",
        bn_reestimate: bool = True,
        bn_samples: int = DEFAULT_BN_SAMPLES,
        bn_batch_size: int = DEFAULT_BN_BATCH_SIZE,
        eval_samples: int = DEFAULT_PLANE_EVAL_SAMPLES,
        test: bool = True,
        width_delta: float = 1.0,
        resume_dir: str = "",
    ) -> None:
        super().__init__(
            x=x,
            y=y,
            bias_bn=bias_bn,
            bn_reestimate=bn_reestimate,
            bn_samples=bn_samples,
            bn_batch_size=bn_batch_size,
            eval_samples=eval_samples,
            test=test,
            width_delta=width_delta,
            resume_dir=resume_dir,
        )

    def run(self, ctx: ProbeContext, /) -> ProbeResult:
        """Evaluate the plane through the two models in ``ctx``."""
        self._check_models(ctx, 2)
        start = time.perf_counter()
        m1, m2 = ctx.models
        theta1, theta2 = _clone_params(m1), _clone_params(m2)
        u = [t2 - t1 for t1, t2 in zip(theta1, theta2, strict=True)]
        u_norm = _norm(u)
        if u_norm == 0.0:
            msg = (
                "the two models are identical; plane-between needs two different minima"
            )
            raise ConfigError(msg)
        v = filter_normalized_direction(
            theta1, ctx.generator(self.name), bias_bn=self.bias_bn
        )
        proj = _dot(v, u) / (u_norm * u_norm)
        v = [vi - proj * ui for vi, ui in zip(v, u, strict=True)]
        v_norm = _norm(v)
        if v_norm == 0.0:
            msg = "the random direction is parallel to θ2-θ1; use another seed"
            raise ConfigError(msg)
        v = [vi * (u_norm / v_norm) for vi in v]
        info = {"bias_bn": self.bias_bn, "distance": u_norm}
        return self._grid(
            ctx,
            m1,
            theta1,
            u,
            v,
            (u_norm, u_norm),
            info,
            start,
            centers=(("min0_", (0.0, 0.0)), ("min1_", (1.0, 0.0))),
        )


# ------------------------------------------------------------------------- registration


def _grid_option(name: str, default: str, what: str) -> Option:
    return Option(
        name=name,
        type=str,
        default=default,
        help=f"Grid of {what}: 'start:stop:num' or comma-separated values.",
    )


_BIAS_BN = Option(
    name="bias_bn",
    type=str,
    default="zero",
    choices=("zero", "copy"),
    help="Direction on biases and BN parameters: zero (Li et al.) or a copy of θ.",
)


@hookimpl
def sharpkit_register_probes() -> list[ProbeSpec]:
    """Register ``interpolate``, ``direction``, ``plane`` and ``plane-between``."""
    return [
        ProbeSpec(
            name="interpolate",
            factory=Interpolate,
            description="Loss and accuracy along (1-α)θ1 + αθ2 between two minima "
            "(Goodfellow et al., 2015).",
            options=(
                _grid_option("alpha", "-1:2:31", "α"),
                *_common_options(bn_default=True, eval_default=DEFAULT_EVAL_SAMPLES),
            ),
            n_models=2,
        ),
        ProbeSpec(
            name="direction",
            factory=Direction,
            description="Loss along a random filter-normalised direction "
            "(Li et al., 2018).",
            options=(
                _grid_option("alpha", "-1:1:41", "α"),
                _BIAS_BN,
                *_common_options(bn_default=False, eval_default=DEFAULT_EVAL_SAMPLES),
            ),
            n_models=1,
        ),
        ProbeSpec(
            name="plane",
            factory=Plane,
            description="Loss on a 2-D grid of two random filter-normalised "
            "directions (Li et al., 2018).",
            options=(
                _grid_option("x", "-1:1:21", "x (first direction)"),
                _grid_option("y", "-1:1:21", "y (second direction)"),
                _BIAS_BN,
                *_common_options(
                    bn_default=False, eval_default=DEFAULT_PLANE_EVAL_SAMPLES
                ),
            ),
            n_models=1,
        ),
        ProbeSpec(
            name="plane-between",
            factory=PlaneBetween,
            description="Loss on the plane through two minima and a random "
            "direction orthogonal to their difference.",
            options=(
                _grid_option("x", "-0.5:1.5:21", "x (along θ2-θ1)"),
                _grid_option("y", "-1:1:21", "y (random orthogonal direction)"),
                _BIAS_BN,
                *_common_options(
                    bn_default=True, eval_default=DEFAULT_PLANE_EVAL_SAMPLES
                ),
            ),
            n_models=2,
        ),
    ]
