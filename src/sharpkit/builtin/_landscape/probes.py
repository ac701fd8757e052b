"""The four built-in landscape probes, their shared base, and their specs.

* :class:`Interpolate` (``interpolate``): the line ``(1-α)·θ1 + α·θ2`` between
  two minima (Goodfellow, Vinyals & Saxe, 2015).
* :class:`Direction` (``direction``): the line ``θ + α·d`` along a random
  filter-normalised direction (Li et al., 2018).
* :class:`Plane` (``plane``): the grid ``θ + x·d1 + y·d2`` of two such
  directions.
* :class:`PlaneBetween` (``plane-between``): the grid ``θ1 + x·(θ2-θ1) + y·v``
  through two minima (Garipov et al., 2018).

Each probe is a dataclass of its options: the field defaults are the factory's
defaults *and* the defaults its :class:`~sharpkit.interfaces.ProbeSpec`
documents (:meth:`_GridProbe.spec`), so the two cannot drift apart.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any, ClassVar, NamedTuple

import numpy as np
import torch

from sharpkit import (
    ConfigError,
    Option,
    ProbeContext,
    ProbeResult,
    ProbeSpec,
    select_block,
)
from sharpkit.builtin._landscape.evaluation import (
    DEFAULT_BN_BATCH_SIZE,
    DEFAULT_BN_SAMPLES,
    DEFAULT_EVAL_SAMPLES,
    DEFAULT_PLANE_EVAL_SAMPLES,
    Evaluator,
)
from sharpkit.builtin._landscape.geometry import (
    BIAS_BN_CHOICES,
    check_bias_bn,
    clone_buffers,
    clone_params,
    combine,
    dot,
    filter_normalized_direction,
    interpolate_buffers,
    model_dtype,
    named_params,
    norm,
    set_params,
    state_digest,
)
from sharpkit.builtin._landscape.grid import (
    Checkpointer,
    check_points,
    grid_text,
    parse_grid,
    sweep,
)
from sharpkit.builtin._landscape.readouts import (
    Readouts,
    minimum_readouts,
    plane_readouts,
    two_minima_readouts,
)

__all__ = [
    "Direction",
    "Interpolate",
    "Plane",
    "PlaneBetween",
    "sharpkit_register_probes",
]

# Options more than one probe takes; each probe's spec gets those it has fields
# for, with the probe's own default.
_SHARED_OPTIONS = (
    Option(
        name="bias_bn",
        type=str,
        default="zero",
        choices=BIAS_BN_CHOICES,
        help="Direction on biases and BN parameters: zero (Li et al.) or a copy of θ.",
    ),
    Option(
        name="bn_reestimate",
        type=bool,
        default=False,
        help="Re-estimate batch-norm running statistics on training data at "
        "every grid point.",
    ),
    Option(
        name="bn_samples",
        type=int,
        default=DEFAULT_BN_SAMPLES,
        help="Training examples (a fixed, seeded subset) for BN re-estimation; 0: all.",
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
        default=DEFAULT_EVAL_SAMPLES,
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
        name="block",
        type=str,
        default="",
        help="Move only this block's parameters: a module path (fc1, layer2: the "
        "names of --blocks layers or depth=N) or NAME=REGEX; empty: all.",
    ),
    Option(
        name="resume_dir",
        type=str,
        default="",
        help="Save the partial grid here after every point and resume from it.",
    ),
)


class _Line(NamedTuple):
    """A 1-D grid evaluated, with the points added beyond the requested ones."""

    grid: np.ndarray
    extra: list[float]
    arrays: dict[str, np.ndarray]
    resumed: int
    evaluator: Evaluator


def _restrict(
    vectors: Sequence[torch.Tensor], mask: Sequence[bool] | None
) -> list[torch.Tensor]:
    """``vectors`` with the parameters outside the block (``mask`` False) zeroed."""
    if mask is None:
        return list(vectors)
    return [v if k else torch.zeros_like(v) for v, k in zip(vectors, mask, strict=True)]


@dataclass(kw_only=True, eq=False)
class _GridProbe:
    """Options and machinery shared by the landscape probes.

    A subclass declares its name, description, model count and grid options as
    class variables, its own options as fields, and implements :meth:`_run`.

    Args:
        bn_reestimate: Re-estimate batch-norm statistics at every grid point.
        bn_samples: Training examples used for re-estimation (0: all).
        bn_batch_size: Batch size of the re-estimation passes.
        eval_samples: Training and test examples evaluated per point (0: all).
        test: Also evaluate on the test split.
        width_delta: Basin threshold above the training loss at each minimum.
        resume_dir: Directory for the resumable partial grid ("": none).
        block: Move only the parameters of this block (a module path or
            ``NAME=REGEX``, see :func:`~sharpkit.select_block`); the others stay
            at the first model's values. Empty: all.

    Raises:
        ConfigError: A negative sample count, ``bn_batch_size < 2`` or a
            non-positive ``width_delta``.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    n_models: ClassVar[int] = 1
    grid_options: ClassVar[tuple[tuple[str, str], ...]] = ()
    """Grid options (strings, first in the spec, parsed on creation) and their span."""

    bn_reestimate: bool = False
    bn_samples: int = DEFAULT_BN_SAMPLES
    bn_batch_size: int = DEFAULT_BN_BATCH_SIZE
    eval_samples: int = DEFAULT_EVAL_SAMPLES
    test: bool = True
    width_delta: float = 1.0
    resume_dir: str = ""
    block: str = ""
    _grids: dict[str, np.ndarray] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._check()
        self._grids = {
            name: parse_grid(getattr(self, name), name=name)
            for name, _ in self.grid_options
        }
        sizes = [len(g) for g in self._grids.values()]
        if len(sizes) > 1:
            shown = " x ".join(str(s) for s in sizes)
            check_points(math.prod(sizes), f"the {self.name!r} grid ({shown})")

    def _check(self) -> None:
        """Validate and normalise the options (before the grids are parsed)."""
        for label, value in (
            ("bn_samples", self.bn_samples),
            ("eval_samples", self.eval_samples),
        ):
            if value < 0:
                msg = f"{label} must be >= 0 (0: all examples), got {value}"
                raise ConfigError(msg)
        if self.bn_batch_size < 2:
            msg = f"bn_batch_size must be >= 2, got {self.bn_batch_size}"
            raise ConfigError(msg)
        if not self.width_delta > 0:
            msg = f"width_delta must be positive, got {self.width_delta}"
            raise ConfigError(msg)
        self.bn_reestimate = bool(self.bn_reestimate)
        self.bn_samples = int(self.bn_samples)
        self.bn_batch_size = int(self.bn_batch_size)
        self.eval_samples = int(self.eval_samples)
        self.test = bool(self.test)
        self.width_delta = float(self.width_delta)
        self.resume_dir = str(self.resume_dir)
        self.block = str(self.block).strip()

    @classmethod
    def spec(cls) -> ProbeSpec:
        """Return the probe's spec; every option's default is the field's."""
        defaults = {f.name: f.default for f in fields(cls) if f.init}
        options = [
            Option(
                name=name,
                type=str,
                default=defaults[name],
                help=f"Grid of {what}: 'start:stop:num' or comma-separated values.",
            )
            for name, what in cls.grid_options
        ]
        options += [
            replace(o, default=defaults[o.name])
            for o in _SHARED_OPTIONS
            if o.name in defaults
        ]
        return ProbeSpec(
            name=cls.name,
            factory=cls,
            description=cls.description,
            options=tuple(options),
            n_models=cls.n_models,
        )

    def run(self, ctx: ProbeContext, /) -> ProbeResult:
        """Evaluate the probe on the models in ``ctx``.

        Raises:
            ConfigError: The wrong number of models, models of different
                architectures, or too little data for BN re-estimation.
        """
        self._check_models(ctx)
        start = time.perf_counter()
        result = self._run(ctx)
        return replace(result, seconds=time.perf_counter() - start, probe=self.name)

    def _run(self, ctx: ProbeContext) -> ProbeResult:
        raise NotImplementedError

    def _check_models(self, ctx: ProbeContext) -> None:
        n = self.n_models
        if len(ctx.models) != n:
            msg = f"probe {self.name!r} takes {n} model(s), got {len(ctx.models)}"
            raise ConfigError(msg)
        shapes = [[tuple(p.shape) for _, p in named_params(m)] for m in ctx.models]
        if any(s != shapes[0] for s in shapes[1:]):
            msg = (
                f"probe {self.name!r}: the models have different parameter shapes; "
                "they must be the same architecture"
            )
            raise ConfigError(msg)

    def _settings(self) -> dict[str, Any]:
        return {
            "bn_reestimate": self.bn_reestimate,
            "bn_samples": self.bn_samples,
            "bn_batch_size": self.bn_batch_size,
            "eval_samples": self.eval_samples,
            "test": self.test,
            "width_delta": self.width_delta,
            **({"block": self.block} if self.block else {}),
        }

    def _block(
        self, model: torch.nn.Module
    ) -> tuple[list[bool] | None, dict[str, Any]]:
        """Which parameters move (``None``: all) and the attributes that say so."""
        if not self.block:
            return None, {}
        names = [n for n, _ in named_params(model)]
        name, chosen = select_block(names, self.block)
        keep = set(chosen)
        size = sum(p.numel() for n, p in named_params(model) if n in keep)
        info = {"block_name": name, "block_params": chosen, "block_size": size}
        return [n in keep for n in names], info

    def _attrs(
        self, head: Mapping[str, Any], evaluator: Evaluator, tail: Mapping[str, Any]
    ) -> dict[str, Any]:
        """``head`` (grids, directions), the settings, the data used, ``tail``."""
        return {**head, **self._settings(), **evaluator.attrs(), **tail}

    def _evaluate(
        self,
        ctx: ProbeContext,
        work: torch.nn.Module,
        axes: Mapping[str, np.ndarray],
        set_point: Callable[[tuple[int, ...]], str],
        key: Mapping[str, Any],
    ) -> tuple[dict[str, np.ndarray], int, Evaluator]:
        """Sweep ``work`` over the grid of ``axes`` (in dimension order).

        ``key`` holds what else the values depend on (directions' settings), for
        the partial grid's key.
        """
        evaluator = Evaluator(
            ctx,
            dtype=model_dtype(work),
            eval_samples=self.eval_samples,
            test=self.test,
            bn_reestimate=self.bn_reestimate,
            bn_samples=self.bn_samples,
            bn_batch_size=self.bn_batch_size,
            stream=self.name,
        )
        checkpointer = self._checkpointer(
            ctx, evaluator, {**{n: grid_text(g) for n, g in axes.items()}, **key}
        )
        shape = tuple(g.size for g in axes.values())
        arrays, resumed = sweep(ctx, work, shape, set_point, evaluator, checkpointer)
        return arrays, resumed, evaluator

    def _checkpointer(
        self, ctx: ProbeContext, evaluator: Evaluator, extra: Mapping[str, Any]
    ) -> Checkpointer | None:
        """The partial grid's keeper, keyed by everything the values depend on."""
        if not self.resume_dir:
            return None
        settings = {
            "probe": self.name,
            "settings": self._settings(),
            "extra": extra,
            "seed": ctx.seed,
            "models": state_digest(ctx.models),
            "data": evaluator.digest(),
            "loss": getattr(ctx.loss_fn, "__qualname__", type(ctx.loss_fn).__name__),
        }
        return Checkpointer(self.resume_dir, self.name, settings)

    # The 1-D probes: a grid option ``alpha`` along which ``set_alpha`` moves.

    def _evaluate_line(
        self,
        ctx: ProbeContext,
        work: torch.nn.Module,
        minima: Sequence[float],
        set_alpha: Callable[[float], None],
        key: Mapping[str, Any],
    ) -> _Line:
        """Sweep ``work`` along ``alpha`` plus the ``minima`` the grid misses."""
        alpha = self._grids["alpha"]
        extra = [a for a in minima if not np.any(alpha == a)]
        grid = np.concatenate([alpha, np.array(extra, dtype=np.float64)])

        def set_point(idx: tuple[int, ...]) -> str:
            a = float(grid[idx[0]])
            set_alpha(a)
            return f"α={a:.3g}"

        arrays, resumed, evaluator = self._evaluate(
            ctx, work, {"alpha": grid}, set_point, key
        )
        return _Line(grid, extra, arrays, resumed, evaluator)

    def _line_result(
        self,
        line: _Line,
        head: Mapping[str, Any],
        readouts: Readouts,
        notes: Mapping[str, Any],
    ) -> ProbeResult:
        """The result on the requested ``alpha`` (without the extra minima)."""
        alpha = self._grids["alpha"]
        summary, censored = readouts
        attrs = self._attrs(
            {"alpha": grid_text(alpha), **head},
            line.evaluator,
            {
                "extra_alpha": [float(a) for a in line.extra],
                "resumed_points": line.resumed,
                "censored": censored,
                **notes,
            },
        )
        return ProbeResult(
            coords={"alpha": alpha.copy()},
            arrays={k: v[: alpha.size].copy() for k, v in line.arrays.items()},
            summary=summary,
            attrs=attrs,
        )


@dataclass(kw_only=True, eq=False)
class _RandomDirections(_GridProbe):
    """A probe along random filter-normalised directions (Li et al., 2018).

    Args:
        bias_bn: Direction on 1-D parameters: ``"zero"`` (Li et al.) or ``"copy"``.

    Raises:
        ConfigError: ``bias_bn`` is neither.
    """

    bias_bn: str = "zero"

    def _check(self) -> None:
        super()._check()
        check_bias_bn(self.bias_bn)

    def _direction(
        self, theta: Sequence[torch.Tensor], gen: torch.Generator
    ) -> list[torch.Tensor]:
        return filter_normalized_direction(theta, gen, bias_bn=self.bias_bn)


# -------------------------------------------------------------------------- interpolate


@dataclass(kw_only=True, eq=False)
class Interpolate(_GridProbe):
    """Loss and accuracy along ``(1-α)·θ1 + α·θ2`` (Goodfellow et al., 2015).

    Options as in :class:`_GridProbe`; BN statistics are re-estimated by default
    (without, the floating buffers are interpolated like the parameters).

    Args:
        alpha: Grid of α: ``"start:stop:num"`` or comma-separated values.
    """

    name: ClassVar[str] = "interpolate"
    description: ClassVar[str] = (
        "Loss and accuracy along (1-α)θ1 + αθ2 between two minima "
        "(Goodfellow et al., 2015)."
    )
    n_models: ClassVar[int] = 2
    grid_options: ClassVar[tuple[tuple[str, str], ...]] = (("alpha", "α"),)

    alpha: str = "-1:2:31"
    bn_reestimate: bool = True

    def _run(self, ctx: ProbeContext) -> ProbeResult:
        m1, m2 = ctx.models
        work = copy.deepcopy(m1).eval()
        theta1, theta2 = clone_params(m1), clone_params(m2)
        bufs1, bufs2 = clone_buffers(m1), clone_buffers(m2)
        mask, info = self._block(m1)
        moves = [True] * len(theta1) if mask is None else list(mask)
        step = _restrict([t2 - t1 for t1, t2 in zip(theta1, theta2, strict=True)], mask)

        def set_alpha(a: float) -> None:
            set_params(
                work,
                [
                    (1.0 - a) * t1 + a * t2 if k else t1
                    for t1, t2, k in zip(theta1, theta2, moves, strict=True)
                ],
            )
            interpolate_buffers(work, bufs1, bufs2, a)

        # The minima themselves are evaluated too, if the grid misses them.
        line = self._evaluate_line(ctx, work, (0.0, 1.0), set_alpha, {})
        distance = norm(step)
        summary, censored = two_minima_readouts(
            line.grid, line.arrays["train_loss"], self.width_delta, distance
        )
        return self._line_result(
            line,
            info,
            ({"distance": distance, **summary}, censored),
            {
                "width_definition": (
                    "basin around each minimum where the training loss stays <= "
                    "its loss + width_delta; edges by linear interpolation on the "
                    "grid; width_*_outer = half-width on the side away from the "
                    "other minimum; *_distance = α units × ‖θ2-θ1‖"
                ),
                "buffers": "bn re-estimated"
                if self.bn_reestimate
                else "floating buffers interpolated; running_var clamped at 0",
            },
        )


# ---------------------------------------------------------------------------- direction


@dataclass(kw_only=True, eq=False)
class Direction(_RandomDirections):
    """Loss along ``θ + α·d``, ``d`` a random filter-normalised direction.

    Li et al. (2018). Options as in :class:`_RandomDirections`; BN statistics
    are not re-estimated by default (the buffers of θ are kept, as Li et al.
    evaluate in eval mode), and the basin is the one around ``α = 0``.

    Args:
        alpha: Grid of α (in units of ``d``, whose filters have the norms of θ's).
    """

    name: ClassVar[str] = "direction"
    description: ClassVar[str] = (
        "Loss along a random filter-normalised direction (Li et al., 2018)."
    )
    grid_options: ClassVar[tuple[tuple[str, str], ...]] = (("alpha", "α"),)

    alpha: str = "-1:1:41"

    def _run(self, ctx: ProbeContext) -> ProbeResult:
        model = ctx.models[0]
        work = copy.deepcopy(model).eval()
        theta = clone_params(model)
        mask, info = self._block(model)
        direction = _restrict(self._direction(theta, ctx.generator(self.name)), mask)

        def set_alpha(a: float) -> None:
            set_params(work, combine(theta, [(a, direction)]))

        line = self._evaluate_line(
            ctx, work, (0.0,), set_alpha, {"bias_bn": self.bias_bn}
        )
        d_norm = norm(direction)
        summary, censored = minimum_readouts(
            line.grid, line.arrays["train_loss"], self.width_delta, d_norm
        )
        return self._line_result(
            line,
            {"bias_bn": self.bias_bn, **info},
            ({"direction_norm": d_norm, **summary}, censored),
            {
                "normalization": "filter (Li et al., 2018)",
                "parameter_norm": norm(theta),
            },
        )


# ------------------------------------------------------------------------------- planes


class _Axes(NamedTuple):
    """A plane ``θ + x·d1 + y·d2``: its directions, their norms, what they are."""

    d1: Sequence[torch.Tensor]
    d2: Sequence[torch.Tensor]
    norms: tuple[float, float]
    info: dict[str, Any]


@dataclass(kw_only=True, eq=False)
class Plane(_RandomDirections):
    """Loss on the grid ``θ + x·d1 + y·d2`` of two random filter-normalised directions.

    Arrays have shape ``(len(y), len(x))`` (rows are y). The two directions are
    drawn one after the other from the probe's seeded stream and not
    orthogonalised (in high dimension they are nearly orthogonal; their cosine is
    reported in ``attrs``). Options as in :class:`_RandomDirections`; BN
    statistics are not re-estimated by default, and the basins are the ones
    along x and y through the origin.

    Args:
        x: Grid along ``d1``.
        y: Grid along ``d2``.
    """

    name: ClassVar[str] = "plane"
    description: ClassVar[str] = (
        "Loss on a 2-D grid of two random filter-normalised directions "
        "(Li et al., 2018)."
    )
    grid_options: ClassVar[tuple[tuple[str, str], ...]] = (
        ("x", "x (first direction)"),
        ("y", "y (second direction)"),
    )
    centers: ClassVar[tuple[tuple[str, tuple[float, float]], ...]] = (("", (0.0, 0.0)),)
    """Where the width readouts are taken: (summary prefix, (x, y))."""

    x: str = "-1:1:21"
    y: str = "-1:1:21"
    eval_samples: int = DEFAULT_PLANE_EVAL_SAMPLES

    def _axes(
        self, ctx: ProbeContext, thetas: Sequence[Sequence[torch.Tensor]]
    ) -> _Axes:
        """Two random directions at the model's point ``θ``."""
        theta = thetas[0]
        gen = ctx.generator(self.name)
        mask, block = self._block(ctx.models[0])
        d1 = _restrict(self._direction(theta, gen), mask)
        d2 = _restrict(self._direction(theta, gen), mask)
        n1, n2 = norm(d1), norm(d2)
        cosine = dot(d1, d2) / (n1 * n2) if n1 > 0 and n2 > 0 else math.nan
        info = {"cosine_d1_d2": cosine, "bias_bn": self.bias_bn, **block}
        return _Axes(d1, d2, (n1, n2), info)

    def _run(self, ctx: ProbeContext) -> ProbeResult:
        thetas = [clone_params(m) for m in ctx.models]
        axes = self._axes(ctx, thetas)
        theta = thetas[0]
        work = copy.deepcopy(ctx.models[0]).eval()
        x, y = self._grids["x"], self._grids["y"]

        def set_point(idx: tuple[int, ...]) -> str:
            a, b = float(x[idx[1]]), float(y[idx[0]])
            set_params(work, combine(theta, [(a, axes.d1), (b, axes.d2)]))
            return f"x={a:.3g} y={b:.3g}"

        arrays, resumed, evaluator = self._evaluate(
            ctx, work, {"y": y, "x": x}, set_point, axes.info
        )
        summary: dict[str, float] = {"norm_x": axes.norms[0], "norm_y": axes.norms[1]}
        censored: list[str] = []
        for prefix, center in self.centers:
            plane_readouts(
                x,
                y,
                arrays["train_loss"],
                center,
                self.width_delta,
                axes.norms,
                prefix,
                summary,
                censored,
            )
        attrs = self._attrs(
            {"x": grid_text(x), "y": grid_text(y), **axes.info},
            evaluator,
            {
                "resumed_points": resumed,
                "censored": censored,
                "layout": "arrays[i, j] is the point (x[j], y[i])",
            },
        )
        return ProbeResult(
            coords={"y": y.copy(), "x": x.copy()},
            arrays=arrays,
            summary=summary,
            attrs=attrs,
        )


@dataclass(kw_only=True, eq=False)
class PlaneBetween(Plane):
    """Loss on the grid ``θ1 + x·(θ2-θ1) + y·v`` through two minima.

    ``(0, 0)`` is θ1 and ``(1, 0)`` is θ2. ``v`` is a random filter-normalised
    direction at θ1, made orthogonal to ``θ2-θ1`` and rescaled to its length, so
    both axes are in units of ``‖θ2-θ1‖`` (as in Garipov, Izmailov, Podoprikhin,
    Vetrov & Wilson, 2018, NeurIPS, "Loss surfaces, mode connectivity, and fast
    ensembling of DNNs"). Options as in :class:`Plane`, but batch-norm statistics
    are re-estimated at every point by default (as for ``interpolate``), and the
    basins are the ones through each minimum.

    Args:
        x: Grid along ``θ2-θ1``.
        y: Grid along ``v``.
    """

    name: ClassVar[str] = "plane-between"
    description: ClassVar[str] = (
        "Loss on the plane through two minima and a random direction orthogonal "
        "to their difference."
    )
    n_models: ClassVar[int] = 2
    grid_options: ClassVar[tuple[tuple[str, str], ...]] = (
        ("x", "x (along θ2-θ1)"),
        ("y", "y (random orthogonal direction)"),
    )
    centers: ClassVar[tuple[tuple[str, tuple[float, float]], ...]] = (
        ("min0_", (0.0, 0.0)),
        ("min1_", (1.0, 0.0)),
    )

    x: str = "-0.5:1.5:21"
    bn_reestimate: bool = True

    def _axes(
        self, ctx: ProbeContext, thetas: Sequence[Sequence[torch.Tensor]]
    ) -> _Axes:
        """``θ2-θ1`` and a random direction orthogonal to it, of the same length.

        Raises:
            ConfigError: The two models are identical, or (by a rare draw) the
                random direction is parallel to ``θ2-θ1``.
        """
        theta1, theta2 = thetas
        mask, block = self._block(ctx.models[0])
        u = _restrict([t2 - t1 for t1, t2 in zip(theta1, theta2, strict=True)], mask)
        u_norm = norm(u)
        if u_norm == 0.0:
            msg = (
                "the two models are identical; plane-between needs two different minima"
            )
            raise ConfigError(msg)
        v = _restrict(self._direction(theta1, ctx.generator(self.name)), mask)
        proj = dot(v, u) / (u_norm * u_norm)
        v = [vi - proj * ui for vi, ui in zip(v, u, strict=True)]
        v_norm = norm(v)
        if v_norm == 0.0:
            msg = "the random direction is parallel to θ2-θ1; use another seed"
            raise ConfigError(msg)
        v = [vi * (u_norm / v_norm) for vi in v]
        info = {"bias_bn": self.bias_bn, "distance": u_norm, **block}
        return _Axes(u, v, (u_norm, u_norm), info)


# ------------------------------------------------------------------------- registration


def sharpkit_register_probes() -> list[ProbeSpec]:
    """Return the landscape probes' specs (``interpolate`` first) and ``rescale``."""
    from sharpkit.builtin._landscape.rescale import Rescale

    grid = [cls.spec() for cls in (Interpolate, Direction, Plane, PlaneBetween)]
    return [*grid, Rescale.spec()]
