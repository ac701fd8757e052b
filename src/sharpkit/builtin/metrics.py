"""Hessian metrics: ``spectral``, ``frobenius``, ``trace`` and ``density``.

Each metric measures the Hessian of the mean loss over the analysis set
(``ctx.hessian``, see :mod:`sharpkit.curvature.operator`):

* ``spectral``: the largest eigenvalue λ_max (or the top/bottom ``top_k``) by
  Lanczos with full reorthogonalization, certified to a relative bound
  ``ctx.tol`` (Lanczos, 1950; bounds as in Parlett, 1998, *The Symmetric
  Eigenvalue Problem*); power iteration (as in PyHessian: Yao et al., 2020, IEEE
  BigData) on request. The value is the paper's sharpness measure (Jastrzębski
  et al., 2017, "Three factors influencing minima in SGD", Fig. 1a).
* ``frobenius``: ‖H‖_F, exact on a Krylov subspace plus a Hutchinson estimate
  of the deflated remainder (paper Fig. 1b).
* ``trace``: tr H exactly for networks that are piecewise multilinear in their
  parameters (ReLU, linear/convolution layers, batch norm in eval mode: then
  tr H = tr G, see :mod:`sharpkit.curvature.ggn`), else by Hutch++ (Meyer, Musco,
  Musco & Woodruff, 2021, SOSA),
  deflated by a Lanczos basis (Chen & Hallman, 2023, SIAM J. Matrix Anal.
  Appl.), or plain Hutchinson (1990).
* ``density``: the eigenvalue density by stochastic Lanczos quadrature (Ubaru,
  Chen & Saad, 2017, SIAM J. Matrix Anal. Appl.; Ghorbani, Krishnan & Xiao, 2019,
  ICML); its value is the quadrature's trace estimate.

Sharing within one measurement: ``spectral`` (with ``which="largest"``) sets
``ctx.eigenvectors`` to the Ritz vectors it found, which ``sharpkit.measure``
returns as ``Measurement.warm_start``, and starts from ``ctx.warm_start`` when
one is given (a flat vector, e.g. the previous epoch's top eigenvector). The
Lanczos process behind it is kept under ``ctx.cache["krylov:process"]``;
``frobenius`` and ``trace`` extend that process to the Krylov dimension they
deflate instead of starting a new one, so the products ``spectral`` spent are
not repeated.

Heavy modules (torch, the engine) are imported inside the methods so that
loading the plugin (``sharpkit --help``, ``sharpkit plugins``) stays cheap.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from sharpkit import (
    AnalysisContext,
    ConfigError,
    ConvergenceWarning,
    MetricResult,
    MetricSpec,
    hookimpl,
)
from sharpkit.builtin._spec import check_choice, signature_options

if TYPE_CHECKING:
    import torch

    from sharpkit.curvature.lanczos import LanczosProcess
    from sharpkit.curvature.operator import HessianOperator
    from sharpkit.curvature.stochastic import Deflation, Estimate

__all__ = [
    "Density",
    "Frobenius",
    "Spectral",
    "Trace",
    "sharpkit_register_metrics",
]

KRYLOV_KEY = "krylov:process"
EXACT_MAX = 256
MAX_DENSITY_GRID = 100_000
"""Up to this many parameters, trace, Frobenius norm and density are computed
exactly: ``n`` Lanczos steps span the whole space, and the three metrics share
that one process. Above it the estimators never spend more than ``n`` products
either (their probes are orthogonal up to ``ORTHOGONAL_MAX`` dimensions and
become the exact path when independent probes would cost ``n`` or more)."""


def _progress(ctx: AnalysisContext, offset: int = 0) -> Callable[..., None]:
    def report(done: float, total: float | None = None, **info: Any) -> None:
        fields: dict[str, Any] = {k: float(v) for k, v in info.items() if v is not None}
        ctx.progress(done + offset, None if total is None else total + offset, **fields)

    return report


def _warn(metric: str, what: str, hvps: int, hint: str) -> None:
    warnings.warn(
        f"{metric}: {what} after {hvps} Hessian-vector products; the result is "
        f"approximate ({hint})",
        ConvergenceWarning,
        stacklevel=3,
    )


def _budget_left(ctx: AnalysisContext, used: int) -> int | None:
    if ctx.max_hvps is None:
        return None
    return max(ctx.max_hvps - used, 0)


def _exact_fits(ctx: AnalysisContext) -> bool:
    """Whether the memory budget holds the exact path's basis of ``n`` vectors."""
    from sharpkit.curvature.lanczos import basis_plan

    budget = ctx.basis_budget()
    if budget is None:
        return True
    H = ctx.hessian
    try:
        rows = basis_plan(H.n, H.dtype, H.n + 1, budget)[1]
    except ConfigError:  # not even two steps: the estimator will say so
        return False
    return rows > H.n


def _exact_up_front(ctx: AnalysisContext, exact_max: int, fewest: int) -> str | None:
    """Why a metric computes exactly without trying its estimator (None: it tries).

    Never when the memory budget cannot hold ``n`` Lanczos vectors.

    Args:
        ctx: The analysis context (its Hessian's ``n`` and memory budget).
        exact_max: The metric's ``exact_max`` option.
        fewest: The fewest products the estimator can spend (deflation plus the
            minimum number of probes, or its fixed cost).
    """
    n = ctx.hessian.n
    if not _exact_fits(ctx):
        return None
    if n <= exact_max:
        return f"n = {n} <= exact_max = {exact_max}"
    if n <= fewest:
        return f"n = {n} <= {fewest} products, the fewest the estimator spends"
    return None


def _path_attrs(
    est: Estimate, n: int, target: float | None, hvps: int
) -> dict[str, Any]:
    """Which path a probe estimate took and why, for a result's attributes."""
    from sharpkit.curvature.stochastic import ORTHOGONAL_MAX

    expected = est.expected_matvecs
    path = "exact" if est.exhausted else "estimate"
    if est.exhausted and expected is not None and expected >= n:
        why = (
            f"independent probes were expected to need about {expected:.0f} "
            f"products for rel_stderr {target:g}, no fewer than the n = {n} of the "
            "exact path: orthogonal probes went on to span the space"
        )
    elif est.exhausted:
        why = "the orthogonal probes spanned the whole space"
    elif target is None:
        why = f"a fixed number of probes ({len(est.samples)})"
    elif est.converged and est.distribution == "orthogonal":
        why = (
            f"the standard error met rel_stderr {target:g} after {hvps} products, "
            f"fewer than the n = {n} of the exact path"
        )
    elif est.converged:
        why = (
            f"the standard error met rel_stderr {target:g} after {hvps} products; "
            f"with more than {ORTHOGONAL_MAX} dimensions left the probes are "
            "independent and no exact path is tried (it would keep n vectors of n)"
        )
    else:
        why = "the budget (--max-hvps) ran out before rel_stderr was met"
    out: dict[str, Any] = {
        "path": path,
        "path_reason": why,
        "probe_distribution": est.distribution,
    }
    if expected is not None:
        out["expected_hvps"] = round(expected, 1) if math.isfinite(expected) else -1
    return out


def _check_basis(
    ctx: AnalysisContext, what: str, k: int, n: int, advice: str, *, itemsize: int = 8
) -> None:
    """Refuse a Lanczos basis of ``k + 1`` vectors of ``n`` that would not fit.

    Checked before the first product, so an option such as ``deflation=1e9`` on
    a large model is one line, not hours of swapping (or the OOM killer). Under
    a memory budget the basis never exceeds it (float32 or fewer steps), so
    only the budget itself must fit.

    Raises:
        ConfigError: The basis needs more memory than is free on the device.
    """
    from sharpkit._fs import available_memory

    need = (min(k, n) + 1) * n * itemsize  # float64 by default: the worst case
    if ctx.memory_budget is not None:  # the basis is capped to the budget
        need = min(need, ctx.memory_budget)
    free = available_memory(ctx.device)
    if free is not None and need > free:
        msg = (
            f"{what} needs a Lanczos basis of {min(k, n) + 1} vectors of {n} "
            f"parameters ({need / 2**30:.1f} GB), more than the "
            f"{free / 2**30:.1f} GB of memory free; {advice}"
        )
        raise ConfigError(msg)


def _krylov(
    ctx: AnalysisContext, H: HessianOperator, steps: int, gen: torch.Generator
) -> Deflation:
    """Extend the shared Lanczos process to ``steps`` (or start one)."""
    from sharpkit.curvature.lanczos import LanczosProcess
    from sharpkit.curvature.stochastic import krylov_deflation

    proc = ctx.cache.get(KRYLOV_KEY)
    if not isinstance(proc, LanczosProcess) or proc.matvec is not H:
        proc = LanczosProcess(
            H,
            H.n,
            generator=gen,
            max_basis_bytes=ctx.basis_budget(),
            steps_hint=steps,
        )
        ctx.cache[KRYLOV_KEY] = proc
    if steps >= H.n and proc.max_steps < H.n:
        msg = (
            f"the exact path needs a Krylov basis of all {H.n:,} dimensions but the "
            f"memory budget holds {proc.max_steps}; raise the memory budget"
        )
        raise ConfigError(msg)
    return krylov_deflation(H, H.n, steps, process=proc)


def _mixed_start(
    direction: torch.Tensor | None, n: int, gen: torch.Generator, like: Any
) -> torch.Tensor | None:
    """``d/‖d‖ + z/‖z‖``: a prior direction plus an equal-weight random part.

    The random part keeps a component along every eigenvector (so Lanczos cannot
    miss λ_max because the prior is orthogonal to it); the prior direction
    starts it close to the top eigenspace.
    """
    import torch

    if direction is None:
        return None
    d = direction.detach().reshape(-1).to(device=like.device, dtype=like.dtype)
    norm = float(torch.linalg.vector_norm(d))
    if d.numel() != n or not math.isfinite(norm) or norm == 0.0:
        return None
    z = torch.randn(n, generator=gen, dtype=like.dtype).to(like.device)
    out: torch.Tensor = d / norm + z / torch.linalg.vector_norm(z)
    return out


# --------------------------------------------------------------------------- spectral


BLOCK = 2
"""Start vectors of ``spectral``'s Lanczos run (band Lanczos, see
:func:`sharpkit.curvature.lanczos.lanczos`): the start direction and a random
one, so that a near-degenerate top pair or a repeated eigenvalue cannot hide."""


class Spectral:
    """λ_max (or the ``top_k`` extreme eigenvalues) with a certified bound.

    λ_max is the largest *algebraic* eigenvalue (PyHessian and
    hessian-eigenthings report the largest in magnitude, which is λ_min at a
    saddle where ``|λ_min| > λ_max``). With ``which="largest"``, a negative
    smallest Ritz value is recorded as ``lambda_min`` (with
    ``lambda_min_bound`` and ``lambda_min_converged``) at no extra cost: it
    proves the Hessian indefinite, ``λ_min <= lambda_min < 0``.

    Args:
        top_k: Eigenvalues to compute (per end with ``which="both"``).
        which: ``"largest"``, ``"smallest"`` or ``"both"``.
        method: ``"lanczos"`` (default) or ``"power"`` (PyHessian's power
            iteration, for comparison; ``top_k`` must be 1).
        bound: ``"gap"`` (``min(r, r²/gap)``, the default) or ``"residual"``
            (``r``, rigorous but pessimistic); see
            :mod:`sharpkit.curvature.lanczos`.
        start: ``"gradient"`` (the loss gradient plus an equal random part; the
            gradient lies mostly in the top eigenspace) or ``"random"``. The
            context's ``warm_start`` vector, if any, takes the gradient's place.
    """

    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {
        "which": ("largest", "smallest", "both"),
        "method": ("lanczos", "power"),
        "bound": ("gap", "residual"),
        "start": ("gradient", "random"),
    }

    def __init__(
        self,
        top_k: int = 1,
        which: str = "largest",
        method: str = "lanczos",
        bound: str = "gap",
        start: str = "gradient",
    ) -> None:
        if top_k < 1:
            msg = f"top_k must be >= 1, got {top_k}"
            raise ConfigError(msg)
        for name, value in (
            ("which", which),
            ("method", method),
            ("bound", bound),
            ("start", start),
        ):
            check_choice(name, value, self.CHOICES[name])
        if method == "power" and (top_k != 1 or which != "largest"):
            msg = "method='power' finds only the dominant eigenvalue; use top_k=1"
            raise ConfigError(msg)
        self.top_k = top_k
        self.which = which
        self.method = method
        self.bound = bound
        self.start = start
        self.block = BLOCK

    def estimated_hvps(self, ctx: AnalysisContext) -> int | None:
        """A typical cost: ~10 products for λ_max, 3 more per extra eigenvalue."""
        guess = 10 + 3 * (self.top_k - 1) if self.method == "lanczos" else 20
        if self.which == "both":
            guess *= 2
        return guess if ctx.max_hvps is None else min(guess, ctx.max_hvps)

    def _start(
        self, ctx: AnalysisContext, H: HessianOperator, gen: torch.Generator
    ) -> tuple[torch.Tensor | None, str]:
        import torch

        like = torch.empty(0, dtype=H.dtype, device=H.device)
        warm = ctx.warm_start
        if warm is not None:
            v0 = _mixed_start(warm, H.n, gen, like)
            if v0 is not None:
                return v0, "warm"
        if self.start == "gradient":
            v0 = _mixed_start(H.gradient(), H.n, gen, like)
            if v0 is not None:
                return v0, "gradient"
        return None, "random"

    def _check_size(self, ctx: AnalysisContext, n: int, itemsize: int) -> None:
        """Refuse a ``top_k`` the job cannot take, before any product.

        Raises:
            ConfigError: More eigenvalues than the Hessian has, than
                ``max_hvps`` products can find, or whose Lanczos basis
                (``top_k + 1`` vectors of ``n``) would not fit in memory.
        """
        k = self.top_k * (2 if self.which == "both" else 1)
        if k > n:
            msg = (
                f"top_k {self.top_k} asks for {k} eigenvalues but the model has "
                f"{n} parameters (its Hessian has {n}); use top_k <= "
                f"{n // (2 if self.which == 'both' else 1)}"
            )
            raise ConfigError(msg)
        if ctx.max_hvps is not None and k > ctx.max_hvps:
            msg = (
                f"top_k {self.top_k} needs at least {k} Hessian-vector products, "
                f"more than --max-hvps {ctx.max_hvps}; raise --max-hvps or lower "
                "--top-k"
            )
            raise ConfigError(msg)
        _check_basis(
            ctx, f"top_k {self.top_k}", k, n, "lower --top-k", itemsize=itemsize
        )

    def compute(self, ctx: AnalysisContext) -> MetricResult:
        """Run Lanczos (or power iteration) on ``ctx.hessian``."""
        start = time.perf_counter()
        H = ctx.hessian
        self._check_size(ctx, H.n, H.dtype.itemsize)
        before = H.hvp_count
        gen = ctx.generator("spectral")
        v0, start_kind = self._start(ctx, H, gen)
        if self.method == "power":
            return self._power(ctx, H, v0, gen, start, before, start_kind)
        from sharpkit.curvature.lanczos import lanczos

        res = lanczos(
            H,
            H.n,
            k=self.top_k,
            which=self.which,
            tol=ctx.tol,
            max_matvecs=ctx.max_hvps,
            v0=v0,
            generator=gen,
            progress=_progress(ctx),
            bound=self.bound,
            max_basis_bytes=ctx.basis_budget(),
            block=self.block,
        )
        if self.which == "largest":
            ctx.eigenvectors = res.eigenvectors
        if res.process is not None:
            ctx.cache[KRYLOV_KEY] = res.process
        if not res.converged:
            worst = float(
                np.max(res.bounds / np.maximum(np.abs(res.eigenvalues), 1e-300))
            )
            what = (
                f"{res.block} equal Ritz values fill the block, so the eigenvalues "
                "after them may be further copies, not the next distinct ones,"
                if res.stopped_by == "multiplicity"
                else f"relative bound {worst:.2g} > tol {ctx.tol:g}"
            )
            _warn(
                "spectral",
                what,
                res.n_matvecs,
                "the memory budget held no more Lanczos vectors: raise --memory-budget"
                if res.stopped_by == "memory"
                else "raise --max-hvps or --tol",
            )
        idx = len(res.eigenvalues) - 1 if self.which == "smallest" else 0
        hvps = H.hvp_count - before
        bottom = (
            _negative_bottom(res.process, ctx.tol, self.bound)
            if self.which == "largest" and res.process is not None
            else {}
        )
        return MetricResult(
            value=float(res.eigenvalues[idx]),
            bound=float(res.bounds[idx]),
            converged=res.converged,
            hvps=hvps,
            seconds=time.perf_counter() - start,
            arrays={
                "eigenvalues": res.eigenvalues,
                "residual_bounds": res.bounds,
                "residuals": res.residuals,
                "ritz_values": res.ritz_values,
                "gap_resolved": res.gap_resolved.astype(np.int8),
            },
            attrs={
                "method": "lanczos",
                "which": self.which,
                "top_k": self.top_k,
                "tol": ctx.tol,
                "bound": self.bound,
                "start": start_kind,
                "restarts": res.restarts,
                "stopped_by": res.stopped_by,
                "block": res.block,
                "krylov_dim": int(res.n_matvecs),
                "hvp_method": H.method,
                "bound_meaning": (
                    "an eigenvalue of H lies within the bound of the value "
                    + (
                        "(r²/gap where the gap is resolved: a-posteriori estimate)"
                        if self.bound == "gap"
                        else "(residual norm: rigorous)"
                    )
                ),
                **bottom,
            },
        )

    def _power(
        self,
        ctx: AnalysisContext,
        H: HessianOperator,
        v0: torch.Tensor | None,
        gen: torch.Generator,
        start: float,
        before: int,
        start_kind: str,
    ) -> MetricResult:
        from sharpkit.curvature.power import power_iteration

        res = power_iteration(
            H,
            H.n,
            tol=ctx.tol,
            max_iter=ctx.max_hvps if ctx.max_hvps is not None else 100,
            v0=v0,
            generator=gen,
            progress=_progress(ctx),
        )
        ctx.eigenvectors = res.eigenvector.reshape(-1, 1)
        if not res.converged:
            _warn(
                "spectral",
                f"the relative change did not fall below tol {ctx.tol:g}",
                res.n_matvecs,
                "raise --max-hvps",
            )
        return MetricResult(
            value=res.eigenvalue,
            bound=res.residual,
            converged=res.converged,
            hvps=H.hvp_count - before,
            seconds=time.perf_counter() - start,
            arrays={"history": res.history},
            attrs={
                "method": "power",
                "tol": ctx.tol,
                "start": start_kind,
                "hvp_method": H.method,
                "bound_meaning": "residual norm: some eigenvalue lies within it "
                "(not necessarily λ_max); the stopping rule is PyHessian's "
                "relative change, which certifies nothing",
            },
        )


def _negative_bottom(process: LanczosProcess, tol: float, kind: str) -> dict[str, Any]:
    """λ_min from the Ritz values ``spectral`` already has, when it is negative.

    Ritz values lie in ``[λ_min, λ_max]``, so a negative smallest Ritz value θ
    proves that H has a negative eigenvalue, ``λ_min <= θ < 0``: the minimum is
    a saddle point along some direction. No product is spent: θ and its
    bound (the same kind as λ_max's; an eigenvalue lies within it of θ) come
    from the tridiagonal. Converged means bound <= tol·‖H‖ (the bottom end is
    certified relative to the norm, as with ``which="smallest"``).
    """
    from sharpkit.curvature.lanczos import ritz_bounds

    theta, _, residuals = process.ritz()
    if len(theta) < 2 or theta[-1] >= 0:
        return {}
    bounds, _ = ritz_bounds(
        theta, residuals, kind=kind, exact=process.exhausted, eps=process.eps
    )
    norm = float(np.max(np.abs(theta)))
    return {
        "lambda_min": float(theta[-1]),
        "lambda_min_bound": float(bounds[-1]),
        "lambda_min_converged": bool(bounds[-1] <= tol * norm),
        "lambda_min_meaning": "smallest Ritz value: λ_min <= it < 0 (H is "
        "indefinite); an eigenvalue lies within the bound of it",
    }


# --------------------------------------------------------------------------- frobenius


class Frobenius:
    """‖H‖_F = sqrt(tr H²), exact on a Krylov subspace plus a stochastic remainder.

    Args:
        rel_stderr: Stop once the standard error is at most this fraction of the
            value (≈ 1 % per probe after deflation on a BN-MLP, so the default
            0.3 % is met by the 16 probes the stopping rule waits for).
        deflation: Krylov dimension deflated exactly (extends the ``spectral``
            run's Lanczos process when there is one).
        probes: Use exactly this many probes instead of ``rel_stderr``.
        exact_max: Compute exactly (``n`` Lanczos steps) up to this many
            parameters. Above it the estimate never spends more than ``n``
            products either: where independent probes would need ``n`` or
            more, its orthogonal probes go on to the exact value (the result's
            ``path`` and ``path_reason`` attributes say which happened).
    """

    def __init__(
        self,
        rel_stderr: float = 0.003,
        deflation: int = 25,
        probes: int | None = None,
        exact_max: int = EXACT_MAX,
    ) -> None:
        _positive("rel_stderr", rel_stderr)
        if deflation < 0:
            msg = f"deflation must be >= 0, got {deflation}"
            raise ConfigError(msg)
        _check_probes(probes)
        self.rel_stderr = rel_stderr
        self.deflation = deflation
        self.probes = probes
        self.exact_max = exact_max

    def estimated_hvps(self, ctx: AnalysisContext) -> int | None:
        """Deflation plus about twenty probes, at most ``n``."""
        H = ctx.hessian
        guess = min(H.n, self.deflation + (self.probes or 20))
        if self._up_front(ctx):
            guess = H.n
        return guess if ctx.max_hvps is None else min(guess, ctx.max_hvps)

    def _up_front(self, ctx: AnalysisContext) -> str | None:
        from sharpkit.curvature.stochastic import FROBENIUS_MIN_PROBES

        fewest = self.deflation + (self.probes or FROBENIUS_MIN_PROBES)
        return _exact_up_front(ctx, self.exact_max, fewest)

    def compute(self, ctx: AnalysisContext) -> MetricResult:
        """Estimate ‖H‖_F on ``ctx.hessian``."""
        from sharpkit.curvature.stochastic import frobenius_norm

        start = time.perf_counter()
        H = ctx.hessian
        before = H.hvp_count
        gen = ctx.generator("frobenius")
        up_front = self._up_front(ctx)
        steps = H.n if up_front else self.deflation
        _check_basis(
            ctx, f"frobenius (deflation {self.deflation})", steps, H.n,
            "lower -o frobenius.deflation",
        )  # fmt: skip
        if ctx.max_hvps is not None and not up_front:
            steps = min(steps, max(ctx.max_hvps // 2, 1))
        deflation = _krylov(ctx, H, steps, gen) if steps > 0 else None
        used = H.hvp_count - before
        left = _budget_left(ctx, used)
        est = frobenius_norm(
            H,
            H.n,
            deflation=deflation,
            deflation_steps=0,
            probes=self.probes,
            max_matvecs=left,
            target_rel_stderr=None if self.probes else self.rel_stderr,
            generator=gen,
            distribution="auto",
            progress=_progress(ctx, used),
        )
        hvps = H.hvp_count - before
        converged = est.converged or (deflation is not None and deflation.rank >= H.n)
        if up_front:
            path = {"path": "exact", "path_reason": up_front}
        else:
            target = None if self.probes else self.rel_stderr
            path = _path_attrs(est, H.n, target, hvps)
        if not converged:
            _warn(
                "frobenius",
                f"relative stderr {est.stderr / max(est.value, 1e-300):.2g} > "
                f"{self.rel_stderr:g}",
                hvps,
                "raise --max-hvps",
            )
        return MetricResult(
            value=est.value,
            stderr=est.stderr,
            converged=converged,
            hvps=hvps,
            seconds=time.perf_counter() - start,
            arrays={"samples": est.samples},
            attrs={
                "method": est.method,
                "deflation_rank": est.deflation_rank,
                "exact_part_squared": est.exact_part,
                "probes": len(est.samples),
                "rel_stderr_target": self.rel_stderr,
                "hvp_method": H.method,
                **path,
            },
        )


# --------------------------------------------------------------------------- trace


class Trace:
    """tr H: exact where the Gauss-Newton identity holds, else Hutch++ or Hutchinson.

    Args:
        method: ``"auto"`` (exact-ggn where it applies and the model has at
            most ``GGN_AUTO_MAX_CLASSES`` = 100 classes, else hutch++),
            ``"exact-ggn"`` (an error where it does not apply), ``"hutch++"`` or
            ``"hutchinson"``.
        rel_stderr: Stop once the standard error is at most this fraction of the
            value. The remainder after deflation has many mid-size eigenvalues
            (≈ 10 % relative spread per probe on a BN-MLP), so a tighter target
            costs many probes: 1 % needs about 100.
        sketch: Dimension of the deflated subspace for Hutch++.
        sketch_method: ``"lanczos"`` (Krylov basis, one product per dimension;
            extends the ``spectral`` run's process when there is one) or
            ``"random"`` (Meyer et al.'s ``orth(H S)``, two per dimension).
        probes: Use exactly this many probes instead of ``rel_stderr``.
        exact_max: Compute exactly (``n`` Lanczos steps) up to this many
            parameters. Above it the estimate never spends more than ``n``
            products either: where independent probes would need ``n`` or
            more, its orthogonal probes go on to the exact value (the result's
            ``path`` and ``path_reason`` attributes say which happened).
    """

    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {
        "method": ("auto", "exact-ggn", "hutch++", "hutchinson"),
        "sketch_method": ("lanczos", "random"),
    }

    def __init__(
        self,
        method: str = "auto",
        rel_stderr: float = 0.01,
        sketch: int = 40,
        sketch_method: str = "lanczos",
        probes: int | None = None,
        exact_max: int = EXACT_MAX,
    ) -> None:
        _positive("rel_stderr", rel_stderr)
        if sketch < 1:
            msg = f"sketch must be >= 1, got {sketch}"
            raise ConfigError(msg)
        _check_probes(probes)
        check_choice("method", method, self.CHOICES["method"])
        check_choice("sketch_method", sketch_method, self.CHOICES["sketch_method"])
        self.method = method
        self.rel_stderr = rel_stderr
        self.sketch = sketch
        self.sketch_method = sketch_method
        self.probes = probes
        self.exact_max = exact_max

    def _fewest(self) -> int:
        """The fewest products the chosen estimator spends."""
        from sharpkit.curvature.stochastic import DEFAULT_MIN_PROBES

        probes = self.probes or DEFAULT_MIN_PROBES
        if self.method == "hutchinson":
            return probes
        return self.sketch * (2 if self.sketch_method == "random" else 1) + probes

    def estimated_hvps(self, ctx: AnalysisContext) -> int | None:
        """Sketch plus about sixty probes, at most ``n``."""
        H = ctx.hessian
        if _exact_up_front(ctx, self.exact_max, self._fewest()):
            guess = H.n
        elif (
            self.method in ("auto", "exact-ggn")
            and (
                _ggn_obstacle(ctx)
                if self.method == "exact-ggn"
                else _ggn_auto_obstacle(ctx)
            )
            is None
        ):
            guess = 6  # one backward pass per class: a few products' worth
        elif self.method == "hutchinson":
            guess = self.probes or 150
        else:
            size = self.sketch * (2 if self.sketch_method == "random" else 1)
            guess = min(H.n, size + (self.probes or 60))
        return guess if ctx.max_hvps is None else min(guess, ctx.max_hvps)

    def compute(self, ctx: AnalysisContext) -> MetricResult:
        """Estimate tr H on ``ctx.hessian``."""
        from sharpkit.curvature.stochastic import hutchinson_trace, hutchpp_trace

        start = time.perf_counter()
        H = ctx.hessian
        before = H.hvp_count
        gen = ctx.generator("trace")
        target = None if self.probes else self.rel_stderr
        up_front = _exact_up_front(ctx, self.exact_max, self._fewest())
        if self.method in ("auto", "hutch++") or up_front:
            _check_basis(
                ctx, f"trace (sketch {self.sketch})",
                H.n if up_front else self.sketch, H.n, "lower -o trace.sketch",
            )  # fmt: skip
        if up_front:
            return self._exact(ctx, H, gen, start, before, up_front)
        fallback = None
        if self.method in ("auto", "exact-ggn"):
            fallback = (
                _ggn_obstacle(ctx)
                if self.method == "exact-ggn"
                else _ggn_auto_obstacle(ctx)
            )
            if fallback is None:
                return self._ggn(ctx, start)
            if self.method == "exact-ggn":
                msg = (
                    f"trace method 'exact-ggn' does not apply: {fallback}; "
                    "use -o trace.method=hutch++"
                )
                raise ConfigError(msg)
        if self.method in ("auto", "hutch++"):
            deflation: Deflation | None = None
            size = self.sketch
            if self.sketch_method == "lanczos":
                if ctx.max_hvps is not None:
                    size = min(size, max(ctx.max_hvps // 2, 1))
                deflation = _krylov(ctx, H, size, gen)
            elif ctx.max_hvps is not None:
                size = max(1, min(size, ctx.max_hvps // 3))
            used = H.hvp_count - before
            est = hutchpp_trace(
                H,
                H.n,
                sketch=self.sketch_method,
                sketch_size=size,
                deflation=deflation,
                probes=self.probes,
                max_matvecs=_budget_left(ctx, used),
                target_rel_stderr=target,
                generator=gen,
                distribution="auto",
                progress=_progress(ctx, used),
            )
        else:
            est = hutchinson_trace(
                H,
                H.n,
                probes=self.probes,
                max_matvecs=ctx.max_hvps,
                target_rel_stderr=target,
                generator=gen,
                distribution="auto",
                progress=_progress(ctx),
            )
        hvps = H.hvp_count - before
        value, stderr, converged = est.value, est.stderr, est.converged
        if not converged:
            _warn(
                "trace",
                f"relative stderr {stderr / max(abs(value), 1e-300):.2g} > "
                f"{self.rel_stderr:g}",
                hvps,
                "raise --max-hvps",
            )
        return MetricResult(
            value=value,
            stderr=stderr,
            converged=converged,
            hvps=hvps,
            seconds=time.perf_counter() - start,
            arrays={"samples": est.samples},
            attrs={
                "method": est.method,
                "deflation_rank": est.deflation_rank,
                "exact_part": est.exact_part,
                "probes": len(est.samples),
                "rel_stderr_target": self.rel_stderr,
                "hvp_method": H.method,
                **_path_attrs(est, H.n, target, hvps),
                **({"exact_ggn_not_applicable": fallback} if fallback else {}),
            },
        )

    def _ggn(self, ctx: AnalysisContext, start: float) -> MetricResult:
        from sharpkit.curvature.ggn import cross_entropy_form, ggn_trace

        n = len(ctx.data)
        form, _ = cross_entropy_form(ctx.loss_fn)
        assert form is not None  # _ggn_obstacle checked it
        value, _ = ggn_trace(
            ctx.model,
            ctx.data,
            batch_size=ctx.batch_size,
            progress=lambda done: ctx.progress(done, n),
            loss=form,
        )
        return MetricResult(
            value=value,
            stderr=0.0,
            converged=True,
            hvps=0,
            seconds=time.perf_counter() - start,
            attrs={
                "method": "exact-ggn",
                "note": "tr H = tr G exactly: the network is piecewise multilinear "
                "in its parameters and the loss is cross-entropy",
                "cross_entropy": form.describe(),
                "rel_stderr_target": self.rel_stderr,
            },
        )

    def _exact(
        self,
        ctx: AnalysisContext,
        H: HessianOperator,
        gen: torch.Generator,
        start: float,
        before: int,
        why: str,
    ) -> MetricResult:
        deflation = _krylov(ctx, H, H.n, gen)
        return MetricResult(
            value=deflation.trace,
            stderr=0.0,
            converged=True,
            hvps=H.hvp_count - before,
            seconds=time.perf_counter() - start,
            arrays={"samples": np.zeros(0)},
            attrs={
                "method": "exact",
                "deflation_rank": deflation.rank,
                "exact_part": deflation.trace,
                "probes": 0,
                "rel_stderr_target": self.rel_stderr,
                "hvp_method": H.method,
                "path": "exact",
                "path_reason": why,
            },
        )


def _ggn_obstacle(ctx: AnalysisContext) -> str | None:
    """Why the exact Gauss-Newton trace does not apply to ``ctx`` (None: it does).

    Checks everything the identity tr H = tr G and :func:`ggn_trace` need:
    batch norm with running statistics, a cross-entropy loss whose every option
    is accounted for, supported layers, a network piecewise multilinear in its
    parameters (walking the autograd graph of a forward pass on two examples),
    and targets that fit the logits. Caches the reason and the logits' shape.
    """
    key = "trace:ggn_obstacle"
    if key not in ctx.cache:
        from sharpkit.curvature.ggn import cross_entropy_form

        why: str | None = None
        form, reason = cross_entropy_form(ctx.loss_fn)
        if ctx.bn_mode != "eval":
            why = "batch norm uses batch statistics (bn_mode='train')"
        elif form is None:
            why = reason
        else:
            why = _ggn_model_obstacle(ctx)
        ctx.cache[key] = why
    return ctx.cache[key]  # type: ignore[no-any-return]


def _ggn_model_obstacle(ctx: AnalysisContext) -> str | None:
    """The model and target checks of :func:`_ggn_obstacle`."""
    import torch

    from sharpkit.curvature.ggn import (
        logits_obstacle,
        multilinear_check,
        supported_layers,
    )

    ok, reason = supported_layers(ctx.model)
    if not ok:
        return reason
    example = ctx.data.inputs[:2]
    try:
        ok, reason = multilinear_check(ctx.model, example)
        with torch.no_grad():
            out = ctx.model(example)
    except (RuntimeError, ValueError, TypeError) as exc:
        # e.g. a layer that needs more examples: let the estimator decide
        return f"a forward pass on two examples failed ({type(exc).__name__})"
    if not ok:
        return reason
    if not isinstance(out, torch.Tensor):
        return f"the model returns {type(out).__name__}, not a logits tensor"
    ctx.cache["trace:logits_shape"] = tuple(out.shape)
    return logits_obstacle(out.shape, ctx.data.targets[:2]) or None


#: ``method="auto"`` takes the exact trace up to this many classes (times
#: positions, for per-position logits): it costs one backward pass per class
#: (plus one), Hutch++ to 1 % about 100 products of 1.6–2.3 gradients each.
GGN_AUTO_MAX_CLASSES = 100


def _ggn_auto_obstacle(ctx: AnalysisContext) -> str | None:
    """Why ``method="auto"`` does not take the exact trace (None: it does)."""
    why = _ggn_obstacle(ctx)
    if why is not None:
        return why
    shape = ctx.cache["trace:logits_shape"]
    classes, positions = int(shape[1]), math.prod(int(d) for d in shape[2:])
    if classes * positions > GGN_AUTO_MAX_CLASSES:
        where = f" at {positions} positions" if positions > 1 else ""
        passes = positions * (classes + 1)
        return (
            f"{classes} classes{where}: the exact path needs {passes} backward "
            "passes per batch, more than Hutch++ to 1 %; force it with "
            "method=exact-ggn"
        )
    return None


# --------------------------------------------------------------------------- density


class Density:
    """Eigenvalue density by stochastic Lanczos quadrature.

    Args:
        probes: Random probes (each ``steps`` products).
        steps: Lanczos steps per probe (the quadrature's resolution).
        sigma: Width of the Gaussian smoothing (default 1 % of the spectral
            range).
        grid: Points of the smoothed density.
        exact_max: Use the exact spectrum up to this many parameters, and
            wherever SLQ's ``probes x steps`` products are no fewer than ``n``.
    """

    def __init__(
        self,
        probes: int = 4,
        steps: int = 64,
        sigma: float | None = None,
        grid: int = 256,
        exact_max: int = EXACT_MAX,
    ) -> None:
        _check_probes(probes)
        if steps < 1 or grid < 2:
            msg = f"steps must be >= 1 and grid >= 2, got {steps} and {grid}"
            raise ConfigError(msg)
        if grid > MAX_DENSITY_GRID:
            # the smoothing holds a (nodes x grid) matrix: 1e9 points is gigabytes
            msg = (
                f"grid {grid} asks for {grid} density points; the limit is "
                f"{MAX_DENSITY_GRID} (finer than any plot): lower grid"
            )
            raise ConfigError(msg)
        if sigma is not None:
            _positive("sigma", sigma)
        self.probes = probes
        self.steps = steps
        self.sigma = sigma
        self.grid = grid
        self.exact_max = exact_max

    def _up_front(self, ctx: AnalysisContext) -> str | None:
        """Why the exact spectrum is computed (None: SLQ is cheaper)."""
        n = ctx.hessian.n
        cost = self.probes * min(self.steps, n)
        why = _exact_up_front(ctx, self.exact_max, cost)
        if why and n > self.exact_max:
            why = (
                f"SLQ costs {self.probes} x {min(self.steps, n)} = {cost} products, "
                f"no fewer than the n = {n} of the exact spectrum"
            )
        return why

    def estimated_hvps(self, ctx: AnalysisContext) -> int | None:
        """``probes x steps``, or ``n`` when the exact spectrum is cheaper."""
        H = ctx.hessian
        guess = H.n if self._up_front(ctx) else self.probes * self.steps
        return guess if ctx.max_hvps is None else min(guess, ctx.max_hvps)

    def compute(self, ctx: AnalysisContext) -> MetricResult:
        """Run stochastic Lanczos quadrature on ``ctx.hessian``."""
        from sharpkit.curvature.stochastic import slq_density

        start = time.perf_counter()
        H = ctx.hessian
        before = H.hvp_count
        gen = ctx.generator("density")
        up_front = self._up_front(ctx)
        _check_basis(
            ctx, f"density (steps {self.steps})", H.n if up_front else self.steps,
            H.n, "lower -o density.steps",
        )  # fmt: skip
        if up_front:
            return self._exact(ctx, H, gen, start, before, up_front)
        probes, steps = self.probes, min(self.steps, H.n)
        limited = False
        if ctx.max_hvps is not None and probes * steps > ctx.max_hvps:
            limited = True
            steps = min(steps, ctx.max_hvps)
            probes = max(1, ctx.max_hvps // steps)
        est = slq_density(
            H,
            H.n,
            probes=probes,
            steps=steps,
            sigma=self.sigma,
            grid=self.grid,
            generator=gen,
            progress=_progress(ctx),
            max_basis_bytes=ctx.basis_budget(),
        )
        if est.nodes.shape[1] < steps:  # the memory budget held fewer steps
            limited = True
            steps = int(est.nodes.shape[1])
            _warn(
                "density",
                f"the memory budget held {steps} Lanczos vectors per probe",
                est.n_matvecs,
                "raise --memory-budget",
            )
        elif limited:
            _warn(
                "density",
                f"the budget allowed {probes} probe(s) of {steps} steps",
                est.n_matvecs,
                "raise --max-hvps",
            )
        stderr = est.trace_stderr if math.isfinite(est.trace_stderr) else None
        return MetricResult(
            value=est.trace,
            stderr=stderr,
            converged=not limited,
            hvps=H.hvp_count - before,
            seconds=time.perf_counter() - start,
            arrays={
                "nodes": est.nodes,
                "weights": est.weights,
                "grid": est.grid,
                "density": est.density,
                "samples": est.samples,
            },
            attrs={
                "method": "slq",
                "probes": probes,
                "steps": steps,
                "sigma": est.sigma,
                "value_is": "trace estimate n·mean(vᵀHv) of the quadrature probes",
                "hvp_method": H.method,
                "path": "estimate",
                "path_reason": f"SLQ costs {probes} x {steps} = {probes * steps} "
                f"products, fewer than the n = {H.n} of the exact spectrum",
            },
        )

    def _exact(
        self,
        ctx: AnalysisContext,
        H: HessianOperator,
        gen: torch.Generator,
        start: float,
        before: int,
        why: str,
    ) -> MetricResult:
        from sharpkit.curvature.stochastic import smooth_density

        deflation = _krylov(ctx, H, H.n, gen)
        evals = np.linalg.eigvalsh(deflation.projected.numpy())[::-1].copy()
        lo, hi = float(evals.min()), float(evals.max())
        sigma = self.sigma or max(0.01 * (hi - lo), 1e-12 * max(abs(lo), abs(hi), 1.0))
        grid = np.linspace(lo - 6 * sigma, hi + 6 * sigma, self.grid)
        nodes = evals.reshape(1, -1)
        weights = np.full_like(nodes, 1.0 / len(evals))
        density = smooth_density(nodes, weights, grid, sigma)
        return MetricResult(
            value=float(evals.sum()),
            stderr=0.0,
            converged=True,
            hvps=H.hvp_count - before,
            seconds=time.perf_counter() - start,
            arrays={
                "nodes": nodes,
                "weights": weights,
                "grid": grid,
                "density": density,
            },
            attrs={
                "method": "exact",
                "probes": 0,
                "steps": int(H.n),
                "sigma": sigma,
                "value_is": "exact trace",
                "hvp_method": H.method,
                "path": "exact",
                "path_reason": why,
            },
        )


def _check_probes(probes: int | None) -> None:
    if probes is not None and probes < 2:
        msg = f"probes must be >= 2 (a standard error needs two), got {probes}"
        raise ConfigError(msg)


def _positive(name: str, value: float) -> None:
    if not (math.isfinite(value) and value > 0):
        msg = f"{name} must be a positive number, got {value!r}"
        raise ConfigError(msg)


# ----------------------------------------------------------------------- registration


# Help shared by the options of several metrics.
_HELP = {
    "rel_stderr": "Target relative standard error.",
    "probes": "Fixed number of probes (overrides rel_stderr).",
    "exact_max": "Compute exactly up to this many parameters.",
}


@hookimpl
def sharpkit_register_metrics() -> list[MetricSpec]:
    """Register ``spectral``, ``frobenius``, ``trace`` and ``density``."""
    return [
        MetricSpec(
            name="spectral",
            factory=Spectral,
            description="Largest Hessian eigenvalue λ_max (or top-k) by Lanczos, "
            "with a certified relative bound.",
            options=signature_options(
                Spectral,
                {
                    "top_k": "How many eigenvalues.",
                    "which": "Which end of the spectrum.",
                    "method": "Lanczos (certified) or power iteration (as PyHessian).",
                    "bound": "Stopping bound: r²/gap estimate or rigorous residual.",
                    "start": "Start vector: gradient plus random, or random.",
                },
                choices=Spectral.CHOICES,
            ),
            stochastic=False,
            unit="loss / parameter²",
            long_name="largest Hessian eigenvalue λ_max",
        ),
        MetricSpec(
            name="frobenius",
            factory=Frobenius,
            description="Hessian Frobenius norm ‖H‖_F: exact on a Krylov subspace "
            "plus a deflated Hutchinson estimate.",
            options=signature_options(
                Frobenius,
                {
                    "rel_stderr": _HELP["rel_stderr"],
                    "deflation": "Krylov dimension deflated exactly.",
                    "probes": _HELP["probes"],
                    "exact_max": _HELP["exact_max"],
                },
            ),
            stochastic=True,
            unit="loss / parameter²",
            long_name="Hessian Frobenius norm ‖H‖_F",
        ),
        MetricSpec(
            name="trace",
            factory=Trace,
            description="Hessian trace: exact for ReLU/BN networks (Gauss-Newton "
            "identity), else Krylov-deflated Hutch++ with a standard error.",
            options=signature_options(
                Trace,
                {
                    "method": "Estimator.",
                    "rel_stderr": _HELP["rel_stderr"],
                    "sketch": "Dimension of the deflated subspace (Hutch++).",
                    "sketch_method": "Krylov basis or Meyer et al.'s random sketch.",
                    "probes": _HELP["probes"],
                    "exact_max": _HELP["exact_max"],
                },
                choices=Trace.CHOICES,
            ),
            stochastic=True,
            unit="loss / parameter²",
            long_name="Hessian trace tr(H)",
        ),
        MetricSpec(
            name="density",
            factory=Density,
            description="Hessian eigenvalue density by stochastic Lanczos "
            "quadrature; value: its trace estimate.",
            options=signature_options(
                Density,
                {
                    "probes": "Random probes.",
                    "steps": "Lanczos steps per probe.",
                    "sigma": "Gaussian smoothing width (default 1 % of the range).",
                    "grid": "Density grid points.",
                    "exact_max": _HELP["exact_max"],
                },
            ),
            stochastic=True,
            unit="loss / parameter²",
            long_name="Hessian trace tr(H) from the eigenvalue density",
        ),
    ]
