"""Perturbation sharpness: Keskar's ε-sharpness, adaptive sharpness, PAC-Bayes σ*.

(The PAC-Bayes flatness of Jiang et al. (2020), ``pacbayes-sigma`` and
``pacbayes-mag-sigma``, lives in :mod:`sharpkit.builtin._pacbayes` and is
registered here.)

* ``epsilon``: ε-sharpness of Keskar, Mudigere, Nocedal, Smelyanskiy & Tang
  (2017, ICLR, "On large-batch training for deep learning: generalization gap
  and sharp minima"), in the full parameter space (their ``A = I``)::

      φ_ε(θ) = 100 · (max_{δ ∈ C_ε} L(θ+δ) - L(θ)) / (1 + L(θ)),
      C_ε = {δ : |δ_i| ≤ ε (|θ_i| + 1)}.

* ``adaptive``: adaptive sharpness (Kwon, Kim, Park & Choi, 2021, ICML, "ASAM";
  Andriushchenko, Croce, Müller, Hein & Flammarion, 2023, ICML, "A modern look at
  the relationship between sharpness and generalization"). Worst case::

      S_max(θ) = max_{‖δ / |θ|‖_p ≤ ρ} L(θ+δ) - L(θ),   p ∈ {2, ∞},

  and average case ``S_avg(θ) = E_z L(θ + ρ |θ| ⊙ z) - L(θ)``, ``z ~ N(0, I)``.

Solver. Both maxima are found by projected gradient ascent on the full loss over
the analysis set (every step is one exact gradient of the mean loss, not a
mini-batch), in the scaled coordinates ``u = δ / w`` where ``w`` is the box
half-width (``ε(|θ|+1)`` or ``ρ|θ|``):

* box constraints (``epsilon``; ``adaptive`` with ``norm=inf``): signed gradient
  steps ``u ← clip(u + η·sign(∇_u L), -1, 1)``, the ℓ∞ steepest ascent of PGD
  (Madry, Makelov, Schmidt, Tsipras & Vladu, 2018, ICLR);
* ball constraint (``adaptive`` with ``norm=2``): normalised gradient steps
  ``u ← Π_ρ(u + η·ρ·∇_u L / ‖∇_u L‖₂)``.

The step size ``η`` defaults to ``2.5 / steps`` (Madry et al.'s rule: the ascent
can cross the box 2.5 times). A coordinate whose gradient is exactly zero (as at
an exact minimum) gets a random sign (random direction for ``ℓ2``) from the
metric's seeded stream, so the ascent can leave a stationary point. The value is
the best loss over all iterates. Keskar et al. used L-BFGS-B instead; both are
local solvers, so the reported value is a *lower bound* on the true maximum
(which is NP-hard to find in general, even for a convex quadratic on a box).
``epsilon`` can run several restarts: the first from ``δ = 0``, the others from
uniform random points of the box; it reports the best and the spread.

The model's parameters are restored bit for bit afterwards, and every buffer
(batch-norm running statistics, also when the context's ``bn_mode`` is
``"train"``) is restored too.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from sharpkit import (
    AnalysisContext,
    ConfigError,
    MetricResult,
    MetricSpec,
    hookimpl,
)
from sharpkit.builtin._pacbayes import pacbayes_specs
from sharpkit.builtin._perturber import (
    Perturber,
    check_data_error,
    check_finite,
    increase_data,
)
from sharpkit.builtin._spec import check_choice, signature_options

if TYPE_CHECKING:
    import torch

__all__ = [
    "AdaptiveSharpness",
    "EpsilonSharpness",
    "sharpkit_register_metrics",
]

_LOWER_BOUND_NOTE = (
    "lower bound: the maximum is found by a local ascent method from a finite "
    "number of starts; the true maximum over the set can only be larger"
)


def _random_signs(
    shape: torch.Size, gen: torch.Generator, like: torch.Tensor
) -> torch.Tensor:
    import torch

    signs = torch.randint(0, 2, shape, generator=gen, dtype=torch.int64) * 2 - 1
    return signs.to(device=like.device, dtype=like.dtype)


def _box_ascent(
    pert: Perturber,
    widths: Sequence[torch.Tensor],
    start: Sequence[torch.Tensor],
    *,
    steps: int,
    step_size: float,
    gen: torch.Generator,
    progress: Callable[[], None],
) -> tuple[float, list[float]]:
    """Signed-gradient ascent on ``θ + w ⊙ u``, ``u ∈ [-1, 1]ⁿ``.

    Returns:
        The best loss over all iterates and the loss at every iterate.
    """
    import torch

    u = [s.clone() for s in start]
    curve: list[float] = []
    for _ in range(steps):
        pert.set([w * ui for w, ui in zip(widths, u, strict=True)])
        value, grads = pert.loss_and_grad()
        check_finite(value, "the ascent")
        curve.append(value)
        with torch.no_grad():
            for i, (g, w) in enumerate(zip(grads, widths, strict=True)):
                sign = torch.sign(g * w)
                zero = (sign == 0) & (w > 0)
                if bool(zero.any()):
                    sign = torch.where(zero, _random_signs(sign.shape, gen, sign), sign)
                u[i] = (u[i] + step_size * sign).clamp_(-1.0, 1.0)
        progress()
    pert.set([w * ui for w, ui in zip(widths, u, strict=True)])
    final = pert.loss()
    check_finite(final, "the ascent")
    curve.append(final)
    return max(curve), curve


def _ball_ascent(
    pert: Perturber,
    scale: Sequence[torch.Tensor],
    rho: float,
    *,
    steps: int,
    step_size: float,
    gen: torch.Generator,
    progress: Callable[[], None],
) -> tuple[float, list[float]]:
    """Normalised-gradient ascent on ``θ + s ⊙ u``, ``‖u‖₂ ≤ ρ``.

    Returns:
        The best loss over all iterates and the loss at every iterate.
    """
    import torch

    u = [torch.zeros_like(s) for s in scale]
    curve: list[float] = []
    for _ in range(steps):
        pert.set([s * ui for s, ui in zip(scale, u, strict=True)])
        value, grads = pert.loss_and_grad()
        check_finite(value, "the ascent")
        curve.append(value)
        with torch.no_grad():
            gu = [g * s for g, s in zip(grads, scale, strict=True)]
            norm = math.sqrt(sum(float((g.double() ** 2).sum()) for g in gu))
            if norm == 0.0:
                gu = [
                    torch.randn(s.shape, generator=gen, dtype=torch.float64).to(
                        device=s.device, dtype=s.dtype
                    )
                    * (s != 0)
                    for s in scale
                ]
                norm = math.sqrt(sum(float((g.double() ** 2).sum()) for g in gu))
                if norm == 0.0:  # every scaled coordinate is fixed (θ = 0)
                    break
            u = [ui + (step_size * rho / norm) * g for ui, g in zip(u, gu, strict=True)]
            u_norm = math.sqrt(sum(float((ui.double() ** 2).sum()) for ui in u))
            if u_norm > rho:
                u = [ui * (rho / u_norm) for ui in u]
        progress()
    pert.set([s * ui for s, ui in zip(scale, u, strict=True)])
    final = pert.loss()
    check_finite(final, "the ascent")
    curve.append(final)
    return max(curve), curve


def _check_steps(steps: int, step_size: float | None) -> float:
    if steps < 1:
        msg = f"steps must be >= 1, got {steps}"
        raise ConfigError(msg)
    eta = 2.5 / steps if step_size is None else float(step_size)
    if not (eta > 0 and math.isfinite(eta)):
        msg = f"step_size must be positive, got {step_size}"
        raise ConfigError(msg)
    return eta


class EpsilonSharpness:
    """Keskar et al. (2017) ε-sharpness, in percent of ``1 + L(θ)``.

    Args:
        epsilon: Box size: ``|δ_i| ≤ ε (|θ_i| + 1)`` (Keskar et al. use 1e-3 and 5e-4).
        steps: Gradient-ascent steps per start.
        step_size: Step in units of the box half-width (default ``2.5 / steps``).
        restarts: Starts: the first from ``δ = 0``, the others uniform in the box.
        block: Perturb only this block's parameters (a module path or
            ``NAME=REGEX``, see :func:`~sharpkit.select_block`); empty: all.
    """

    def __init__(
        self,
        *,
        epsilon: float = 1e-3,
        steps: int = 20,
        step_size: float | None = None,
        restarts: int = 1,
        block: str = "",
    ) -> None:
        if not (epsilon > 0 and math.isfinite(epsilon)):
            msg = f"epsilon must be positive, got {epsilon}"
            raise ConfigError(msg)
        if restarts < 1:
            msg = f"restarts must be >= 1, got {restarts}"
            raise ConfigError(msg)
        self.epsilon = float(epsilon)
        self.steps = int(steps)
        self.step_size = _check_steps(steps, step_size)
        self.restarts = int(restarts)
        self.block = str(block).strip()

    def compute(self, ctx: AnalysisContext, /) -> MetricResult:
        """Maximise the loss over the ε-box around the model's parameters."""
        import torch

        start_time = time.perf_counter()
        pert = Perturber(ctx, self.block)
        gen = ctx.generator("epsilon")
        total = self.restarts * self.steps
        done = [0]

        def tick() -> None:
            done[0] += 1
            ctx.progress(done[0], total)

        try:
            base = pert.loss()
            check_finite(base, "the evaluation at θ")
            widths = [self.epsilon * (t.abs() + 1.0) for t in pert.theta]
            best_values: list[float] = []
            best_curve: list[float] = []
            for r in range(self.restarts):
                if r == 0:
                    start = [torch.zeros_like(w) for w in widths]
                else:
                    start = [
                        (
                            torch.rand(w.shape, generator=gen, dtype=torch.float64) * 2
                            - 1
                        ).to(device=w.device, dtype=w.dtype)
                        for w in widths
                    ]
                best, curve = _box_ascent(
                    pert,
                    widths,
                    start,
                    steps=self.steps,
                    step_size=self.step_size,
                    gen=gen,
                    progress=tick,
                )
                if not best_values or best > max(best_values):
                    best_curve = curve
                best_values.append(best)
        finally:
            pert.restore()
        sharp = [100.0 * (b - base) / (1.0 + base) for b in best_values]
        value = max(sharp)
        attrs: dict[str, Any] = {
            "epsilon": self.epsilon,
            "steps": self.steps,
            "step_size": self.step_size,
            "restarts": self.restarts,
            "loss": base,
            "perturbed_loss": max(best_values),
            "spread": max(sharp) - min(sharp),
            "gradient_evaluations": pert.gradients,
            "loss_evaluations": pert.evaluations,
            "solver": "signed projected gradient ascent on the box (PGD); "
            "Keskar et al. (2017) used L-BFGS-B",
            "unit": "percent of 1 + L(θ)",
            "note": _LOWER_BOUND_NOTE,
            **pert.block_attrs,
        }
        return MetricResult(
            value=value,
            stderr=None,
            converged=None,
            hvps=0,
            seconds=time.perf_counter() - start_time,
            arrays={
                "restart_values": np.asarray(sharp, dtype=np.float64),
                "ascent_loss": np.asarray(best_curve, dtype=np.float64),
            },
            attrs=attrs,
        )


_BLOCK_HELP = (
    "Perturb only this block's parameters: a module path (fc1, layer2: the names "
    "of --blocks layers or depth=N) or NAME=REGEX; empty: all."
)

_DEFAULT_RHO = {("worst", "inf"): 2e-3, ("worst", "2"): 0.5, ("average", "2"): 0.1}


class AdaptiveSharpness:
    """Adaptive sharpness (Kwon et al., 2021; Andriushchenko et al., 2023).

    Args:
        rho: Radius of ``δ / |θ|``. Default: 0.002 for worst-case ℓ∞, 0.5 for
            worst-case ℓ2, 0.1 for average-case (values in the ranges
            Andriushchenko et al. evaluate for CIFAR-10 ResNets).
        steps: Gradient-ascent steps (worst case).
        norm: ``"2"`` or ``"inf"`` (worst case; average case is Gaussian).
        kind: ``"worst"`` or ``"average"``.
        samples: Gaussian draws for the average case.
        step_size: Step in units of ``ρ`` (default ``2.5 / steps``).
        data_error: Average case only: also give ``data_stderr``, the loss
            increase at the same Gaussian draws on each of 16 chunks of the
            data and their spread (``data_method="jackknife-linear"``; no
            extra pass; the draws' own spread stays in ``stderr``). The worst
            case refuses it: its perturbation is fitted to the samples (at a
            minimum its first-order gain is the sample gradient's noise), so
            the chunks' spread at it understates the error several times
            (docs/concepts/curvature.md, "Two kinds of uncertainty").
        block: Perturb only this block's parameters (a module path or
            ``NAME=REGEX``, see :func:`~sharpkit.select_block`); empty: all.
    """

    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {
        "norm": ("2", "inf"),
        "kind": ("worst", "average"),
    }

    def __init__(
        self,
        *,
        rho: float | None = None,
        steps: int = 20,
        norm: str = "inf",
        kind: str = "worst",
        samples: int = 16,
        step_size: float | None = None,
        data_error: bool = False,
        block: str = "",
    ) -> None:
        check_choice("norm", norm, self.CHOICES["norm"])
        check_choice("kind", kind, self.CHOICES["kind"])
        if rho is None:
            rho = _DEFAULT_RHO[(kind, norm if kind == "worst" else "2")]
        if not (rho > 0 and math.isfinite(rho)):
            msg = f"rho must be positive, got {rho}"
            raise ConfigError(msg)
        if kind == "average" and samples < 2:
            msg = f"samples must be >= 2 for a standard error, got {samples}"
            raise ConfigError(msg)
        self.rho = float(rho)
        self.steps = int(steps)
        self.step_size = _check_steps(steps, step_size)
        self.norm = norm
        self.kind = kind
        if data_error and kind != "average":
            msg = (
                "data_error needs kind='average': the worst-case perturbation is "
                "fitted to the samples, so no chunk spread at it is an honest error"
            )
            raise ConfigError(msg)
        self.samples = int(samples)
        self.data_error = bool(data_error)
        self.block = str(block).strip()

    def compute(self, ctx: AnalysisContext, /) -> MetricResult:
        """Measure adaptive sharpness of the model in ``ctx``."""
        if self.data_error:
            check_data_error(ctx)
        start_time = time.perf_counter()
        pert = Perturber(ctx, self.block)
        gen = ctx.generator("adaptive")
        self._chunks: tuple[np.ndarray, np.ndarray] | None = None
        try:
            if self.data_error:
                losses, sizes = pert.chunk_losses()
                self._chunks = (losses, sizes)
                base = float(sizes @ losses / sizes.sum())
            else:
                base = pert.loss()
            check_finite(base, "the evaluation at θ")
            scale = [t.abs() for t in pert.theta]
            if self.kind == "average":
                result = self._average(ctx, pert, scale, base, gen)
            else:
                result = self._worst(ctx, pert, scale, base, gen)
        finally:
            pert.restore()
        value, stderr, arrays, extra = result
        data = {k: extra.pop(k) for k in ("data_stderr", "data_method") if k in extra}
        attrs: dict[str, Any] = {
            "rho": self.rho,
            "kind": self.kind,
            "norm": self.norm if self.kind == "worst" else "gaussian",
            "loss": base,
            "gradient_evaluations": pert.gradients,
            "loss_evaluations": pert.evaluations,
            "unit": "loss increase",
            **extra,
            **pert.block_attrs,
        }
        return MetricResult(
            **data,
            value=value,
            stderr=stderr,
            converged=None,
            hvps=0,
            seconds=time.perf_counter() - start_time,
            arrays=arrays,
            attrs=attrs,
        )

    def _worst(
        self,
        ctx: AnalysisContext,
        pert: Perturber,
        scale: list[torch.Tensor],
        base: float,
        gen: torch.Generator,
    ) -> tuple[float, float | None, dict[str, np.ndarray], dict[str, Any]]:
        import torch

        done = [0]

        def tick() -> None:
            done[0] += 1
            ctx.progress(done[0], self.steps)

        if self.norm == "inf":
            widths = [self.rho * s for s in scale]
            best, curve = _box_ascent(
                pert,
                widths,
                [torch.zeros_like(w) for w in widths],
                steps=self.steps,
                step_size=self.step_size,
                gen=gen,
                progress=tick,
            )
            solver = "signed projected gradient ascent on the box (PGD)"
        else:
            best, curve = _ball_ascent(
                pert,
                scale,
                self.rho,
                steps=self.steps,
                step_size=self.step_size,
                gen=gen,
                progress=tick,
            )
            solver = "normalised projected gradient ascent on the ℓ2 ball"
        extra = {
            "steps": self.steps,
            "step_size": self.step_size,
            "perturbed_loss": best,
            "solver": solver,
            "note": _LOWER_BOUND_NOTE,
        }
        arrays = {"ascent_loss": np.asarray(curve, dtype=np.float64)}
        return best - base, None, arrays, extra

    def _average(
        self,
        ctx: AnalysisContext,
        pert: Perturber,
        scale: list[torch.Tensor],
        base: float,
        gen: torch.Generator,
    ) -> tuple[float, float | None, dict[str, np.ndarray], dict[str, Any]]:
        import torch

        increases = np.empty(self.samples, dtype=np.float64)
        tops = []
        for k in range(self.samples):
            delta = [
                self.rho
                * s
                * torch.randn(s.shape, generator=gen, dtype=torch.float64).to(
                    device=s.device, dtype=s.dtype
                )
                for s in scale
            ]
            pert.set(delta)
            if self._chunks is not None:
                top, sizes = pert.chunk_losses()
                tops.append(top)
                value = float(sizes @ top / sizes.sum())
            else:
                value = pert.loss()
            check_finite(value, "the average-case sampling")
            increases[k] = value - base
            ctx.progress(k + 1, self.samples)
        mean = float(increases.mean())
        stderr = float(increases.std(ddof=1) / math.sqrt(self.samples))
        extra: dict[str, Any] = {"samples": self.samples}
        if self._chunks is not None:
            est = increase_data(np.stack(tops), *self._chunks)
            extra |= {
                "data_stderr": est.stderr,
                "data_method": est.method,
                "data_meaning": "standard error over the data the samples were "
                "drawn from of the mean loss increase at these Gaussian draws "
                "(16 chunks' spread, delete-a-chunk jackknife, widened for K-1 "
                "degrees of freedom)",
            }
        return mean, stderr, {"increases": increases}, extra


@hookimpl
def sharpkit_register_metrics() -> list[MetricSpec]:
    """Register epsilon, adaptive, pacbayes-sigma and pacbayes-mag-sigma."""
    return [
        MetricSpec(
            name="epsilon",
            factory=EpsilonSharpness,
            description="Keskar et al. (2017) ε-sharpness: worst relative loss "
            "increase in the box ε(|θ|+1), in %.",
            options=signature_options(
                EpsilonSharpness,
                {
                    "epsilon": "Box size: |δ_i| ≤ ε(|θ_i|+1).",
                    "steps": "Ascent steps per start.",
                    "step_size": "Step in units of the box half-width "
                    "(default 2.5/steps).",
                    "restarts": "Starts (first at δ=0, others uniform in the box); "
                    "the best is reported.",
                    "block": _BLOCK_HELP,
                },
            ),
            stochastic=False,
            unit="% of 1+L",
            long_name="ε-sharpness (Keskar et al., 2017)",
        ),
        MetricSpec(
            name="adaptive",
            factory=AdaptiveSharpness,
            description="Adaptive sharpness max/mean of L(θ+δ)-L(θ) over "
            "‖δ/|θ|‖ ≤ ρ (Kwon et al., 2021; Andriushchenko et al., 2023).",
            options=signature_options(
                AdaptiveSharpness,
                {
                    "rho": "Radius of δ/|θ| (default 0.002 worst ℓ∞, 0.5 worst ℓ2, "
                    "0.1 average).",
                    "steps": "Ascent steps (worst case).",
                    "norm": "Norm of the worst-case set.",
                    "kind": "Worst case (ascent) or average case "
                    "(Gaussian δ = ρ|θ|⊙z).",
                    "samples": "Gaussian draws for kind=average (stderr over them).",
                    "step_size": "Step in units of ρ (default 2.5/steps).",
                    "data_error": "Also the standard error over the data "
                    "(kind=average, 16 chunks).",
                    "block": _BLOCK_HELP,
                },
                choices=AdaptiveSharpness.CHOICES,
            ),
            stochastic=False,
            unit="loss increase",
            long_name="adaptive sharpness (Kwon et al., 2021)",
        ),
        *pacbayes_specs(),
    ]
