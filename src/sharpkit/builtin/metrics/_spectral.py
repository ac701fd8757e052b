"""``spectral``: λ_max (or the ``top_k`` extreme eigenvalues) with a certified bound.

Lanczos with full reorthogonalization, certified to a relative bound ``ctx.tol``
(Lanczos, 1950; bounds as in Parlett, 1998, *The Symmetric Eigenvalue
Problem*); power iteration (as in PyHessian: Yao et al., 2020, IEEE BigData) on
request. The value is the paper's sharpness measure (Jastrzębski et al., 2017,
"Three factors influencing minima in SGD", Fig. 1a).

With ``which="largest"`` it sets ``ctx.eigenvectors`` to the Ritz vectors it
found and starts from ``ctx.warm_start`` when one is given; its Lanczos
process becomes ``ctx.krylov_process``, which later metrics extend.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from sharpkit import AnalysisContext, ConfigError, MetricResult, arg_hint
from sharpkit.builtin._spec import check_choice
from sharpkit.builtin.metrics._common import Run, check_basis, raise_budget, warn

if TYPE_CHECKING:
    import torch

    from sharpkit import ChunkRecorder, HessianOperator, LanczosProcess, LanczosResult

__all__ = ["Spectral", "mixed_start"]


def mixed_start(
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


BLOCK = 2
"""Start vectors of ``spectral``'s Lanczos run (band Lanczos, see
:func:`sharpkit.curvature.lanczos.lanczos`), so that a near-degenerate top pair
or a repeated eigenvalue cannot hide."""

MAX_BAND = 8
"""Widest band ``spectral`` runs for ``top_k``: a band of ``top_k`` start
vectors where the operator multiplies a block in one pass (issue 24)."""


def band_width(top_k: int, matvec: Any) -> int:
    """Start vectors of the band Lanczos run for ``top_k`` eigenvalues.

    ``top_k`` (at most ``MAX_BAND``) where ``matvec`` takes a block in one
    pass, else ``BLOCK``. A band of ``b`` vectors has ``b`` pending vectors at
    every step, all multiplied by one batched product, so the run takes about
    ``1/b`` of the passes over the data; it resolves clusters of up to ``b``
    eigenvalues among those asked for, but spends more products than a band
    of two (each sequence reaches a lower polynomial degree).
    """
    if top_k > BLOCK and bool(getattr(matvec, "block_products", False)):
        return min(top_k, MAX_BAND)
    return BLOCK


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
        start: ``"random"`` (the default: two independent random start
            vectors) or ``"gradient"`` (the loss gradient plus an equal random
            part, and one random vector). The gradient lies mostly in the top
            eigenspace, but unevenly: where it favours λ₂ of a near-degenerate
            pair, its sequence converges to λ₂ before the random one can show
            λ₁, and the bound does not reach λ₁ (3 of 30 seeds on a 0.3 % pair
            in ``tests/families/test_near_degenerate.py``; 0 of 30 from two
            random vectors). The context's ``warm_start`` vector, if any,
            takes the first vector's place.
        data_error: Also give ``data_stderr``, the standard error of λ over
            the data the samples were drawn from: Lanczos runs on
            ``ctx.hessian`` as without it (the same λ, the same products),
            then every example's term ``vᵀH_i v`` of each Ritz vector
            (:func:`~sharpkit.example_rayleigh`, one second-order forward pass
            per eigenvalue) gives the standard error
            (``data_method="per-example"``) and a check of their tail:
            ``attrs["data_reliable"]`` is ``False``, with a warning, when a
            few examples carry the curvature and no error bar from these
            samples can be trusted. Where the terms cannot be had (a loss
            that is not a plain mean over examples), Lanczos runs again on
            :meth:`~sharpkit.AnalysisContext.chunked_hessian` and the chunk
            jackknife gives it (:func:`~sharpkit.spectral_estimate`, with a
            warning; its products are counted). With
            :attr:`~sharpkit.AnalysisContext.heldout_data`, the held-out
            Rayleigh quotient is ``attrs["data_lower"]``. Off by default (its
            cost is in docs/benchmarks.md). Only with ``method="lanczos"`` and
            ``which="largest"``.
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
        start: str = "random",
        data_error: bool = False,
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
        if data_error and (method != "lanczos" or which != "largest"):
            msg = "data_error needs method='lanczos' and which='largest'"
            raise ConfigError(msg)
        self.start = start
        self.data_error = bool(data_error)
        self.block: int | None = None  # None: band_width(top_k, the operator)

    def estimated_hvps(self, ctx: AnalysisContext) -> int | None:
        """A typical cost: ~13 products for λ_max (a block of two), 5 per extra.

        (A band of ``top_k`` spends more products than a band of two, in
        fewer passes: 32 for the benchmark MLP's top 5, docs/benchmarks.md.)
        """
        guess = 13 + 5 * (self.top_k - 1) if self.method == "lanczos" else 20
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
            v0 = mixed_start(warm, H.n, gen, like)
            if v0 is not None:
                return v0, "warm"
        if self.start == "gradient":
            v0 = mixed_start(H.gradient(), H.n, gen, like)
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
                f"more than the {ctx.max_hvps} allowed; {raise_budget()} or lower "
                "top_k"
            )
            raise ConfigError(msg)
        check_basis(ctx, f"top_k {self.top_k}", k, n, "lower top_k", itemsize=itemsize)

    def compute(self, ctx: AnalysisContext) -> MetricResult:
        """Run Lanczos (or power iteration) on ``ctx.hessian``."""
        from sharpkit import lanczos

        run = Run(ctx, "spectral")
        H = run.H
        self._check_size(ctx, H.n, H.dtype.itemsize)
        v0, start_kind = self._start(ctx, H, run.gen)
        if self.method == "power":
            return self._power(run, v0, start_kind)
        res = lanczos(
            H,
            H.n,
            k=self.top_k,
            which=self.which,
            tol=ctx.tol,
            max_matvecs=ctx.max_hvps,
            v0=v0,
            generator=run.gen,
            progress=run.progress(),
            bound=self.bound,
            max_basis_bytes=ctx.basis_budget(),
            block=self.block or band_width(self.top_k, H),
        )
        if self.which == "largest":
            ctx.eigenvectors = res.eigenvectors
        if res.process is not None:
            ctx.krylov_process = res.process
        if not res.converged:
            self._warn_lanczos(ctx, res)
        result = self._lanczos_result(run, res, start_kind)
        if not self.data_error:
            return result
        from sharpkit.builtin.metrics._spectral_data import with_data_error

        return with_data_error(result, ctx, res, self._chunked_run)

    def _chunked_run(self, ctx: AnalysisContext) -> ChunkRecorder:
        """Lanczos again, on the chunked Hessian through a recorder (fallback)."""
        from sharpkit import ChunkRecorder, lanczos

        recorder = ChunkRecorder(ctx.chunked_hessian(), gram=False)
        lanczos(
            recorder,
            ctx.hessian.n,
            k=self.top_k,
            which=self.which,
            tol=ctx.tol,
            max_matvecs=ctx.max_hvps,
            generator=ctx.generator("spectral"),
            bound=self.bound,
            max_basis_bytes=ctx.basis_budget(),
            block=self.block or band_width(self.top_k, recorder),
        )
        return recorder

    def _warn_lanczos(self, ctx: AnalysisContext, res: LanczosResult) -> None:
        worst = float(np.max(res.bounds / np.maximum(np.abs(res.eigenvalues), 1e-300)))
        what = (
            f"{res.block} equal Ritz values fill the block, so the eigenvalues "
            "after them may be further copies, not the next distinct ones,"
            if res.stopped_by == "multiplicity"
            else f"relative bound {worst:.2g} > tol {ctx.tol:g}"
        )
        warn(
            "spectral",
            what,
            res.n_matvecs,
            "the memory budget held no more Lanczos vectors: raise "
            f"{arg_hint('memory_budget', '--memory-budget')}"
            if res.stopped_by == "memory"
            else f"{raise_budget()} or {arg_hint('tol', '--tol')}",
            stacklevel=4,
        )

    def _lanczos_result(
        self, run: Run, res: LanczosResult, start_kind: str
    ) -> MetricResult:
        idx = len(res.eigenvalues) - 1 if self.which == "smallest" else 0
        bottom = (
            negative_bottom(res.process, run.ctx.tol, self.bound)
            if self.which == "largest" and res.process is not None
            else {}
        )
        return run.result(
            value=float(res.eigenvalues[idx]),
            bound=float(res.bounds[idx]),
            converged=res.converged,
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
                "tol": run.ctx.tol,
                "bound": self.bound,
                "start": start_kind,
                "restarts": res.restarts,
                "stopped_by": res.stopped_by,
                "block": res.block,
                "krylov_dim": int(res.n_matvecs),
                "hvp_method": run.H.method,
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
        self, run: Run, v0: torch.Tensor | None, start_kind: str
    ) -> MetricResult:
        from sharpkit import power_iteration

        ctx, H = run.ctx, run.H
        res = power_iteration(
            H,
            H.n,
            tol=ctx.tol,
            max_iter=ctx.max_hvps if ctx.max_hvps is not None else 100,
            v0=v0,
            generator=run.gen,
            progress=run.progress(),
        )
        ctx.eigenvectors = res.eigenvector.reshape(-1, 1)
        if not res.converged:
            warn(
                "spectral",
                f"the relative change did not fall below tol {ctx.tol:g}",
                res.n_matvecs,
                raise_budget(),
            )
        return run.result(
            value=res.eigenvalue,
            bound=res.residual,
            converged=res.converged,
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


def negative_bottom(process: LanczosProcess, tol: float, kind: str) -> dict[str, Any]:
    """λ_min from the Ritz values ``spectral`` already has, when it is negative.

    Ritz values lie in ``[λ_min, λ_max]``, so a negative smallest Ritz value θ
    proves that H has a negative eigenvalue, ``λ_min <= θ < 0``: the minimum is
    a saddle point along some direction. No product is spent: θ and its
    bound (the same kind as λ_max's; an eigenvalue lies within it of θ) come
    from the tridiagonal. Converged means bound <= tol·‖H‖ (the bottom end is
    certified relative to the norm, as with ``which="smallest"``).
    """
    from sharpkit import ritz_bounds

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
