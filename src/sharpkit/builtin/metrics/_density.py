"""``density``: the Hessian's eigenvalue density by stochastic Lanczos quadrature.

Ubaru, Chen & Saad, 2017, SIAM J. Matrix Anal. Appl.; Ghorbani, Krishnan &
Xiao, 2019, ICML. Its value is the quadrature's trace estimate. Where SLQ would
cost no fewer products than ``n``, the exact spectrum comes from the Krylov
basis the metrics share (``ctx.krylov``).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from sharpkit import AnalysisContext, ConfigError, MetricResult, arg_hint
from sharpkit.builtin.metrics._common import (
    EXACT_MAX,
    Run,
    check_basis,
    check_probes,
    exact_up_front,
    positive,
    raise_budget,
    warn,
)

__all__ = ["MAX_DENSITY_GRID", "Density"]

MAX_DENSITY_GRID = 100_000
"""The most points of a smoothed density (finer than any plot)."""


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
        data_error: Also give ``data_stderr`` of the value (the quadrature's
            trace estimate) over the data the samples were drawn from: each
            probe's first product goes through
            :meth:`~sharpkit.AnalysisContext.chunked_hessian` (16 chunks), whose
            chunk-to-chunk spread of ``n·qᵀH_k q`` is the standard error for
            these probes (``data_method="jackknife-linear"``; see
            :class:`~sharpkit.builtin.metrics._data_error.ProbeChunks`). The
            exact path (small models) gives none.
    """

    def __init__(
        self,
        probes: int = 4,
        steps: int = 64,
        sigma: float | None = None,
        grid: int = 256,
        exact_max: int = EXACT_MAX,
        data_error: bool = False,
    ) -> None:
        check_probes(probes)
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
            positive("sigma", sigma)
        self.probes = probes
        self.steps = steps
        self.sigma = sigma
        self.grid = grid
        self.exact_max = exact_max
        self.data_error = bool(data_error)

    def _up_front(self, ctx: AnalysisContext) -> str | None:
        """Why the exact spectrum is computed (None: SLQ is cheaper)."""
        n = ctx.hessian.n
        cost = self.probes * min(self.steps, n)
        why = exact_up_front(ctx, self.exact_max, cost)
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

    def _shape(self, ctx: AnalysisContext, n: int) -> tuple[int, int, bool]:
        """``(probes, steps, limited)`` within the product budget."""
        probes, steps = self.probes, min(self.steps, n)
        limited = False
        if ctx.max_hvps is not None and probes * steps > ctx.max_hvps:
            limited = True
            steps = min(steps, ctx.max_hvps)
            probes = max(1, ctx.max_hvps // steps)
        return probes, steps, limited

    def compute(self, ctx: AnalysisContext) -> MetricResult:
        """Run stochastic Lanczos quadrature on ``ctx.hessian``."""
        from sharpkit import slq_density

        run = Run(ctx, "density")
        H = run.H
        up_front = self._up_front(ctx)
        check_basis(
            ctx, f"density (steps {self.steps})", H.n if up_front else self.steps,
            H.n, "lower density's steps option",
        )  # fmt: skip
        if up_front:
            return self._exact(run, up_front)
        probes, steps, limited = self._shape(ctx, H.n)
        matvec: Any = H
        if self.data_error:
            from sharpkit.builtin.metrics._data_error import ProbeChunks

            matvec = ProbeChunks(H, ctx.chunked_hessian())
        est = slq_density(
            matvec,
            H.n,
            probes=probes,
            steps=steps,
            sigma=self.sigma,
            grid=self.grid,
            generator=run.gen,
            progress=run.progress(),
            max_basis_bytes=ctx.basis_budget(),
        )
        if est.nodes.shape[1] < steps:  # the memory budget held fewer steps
            limited = True
            steps = int(est.nodes.shape[1])
            warn(
                "density",
                f"the memory budget held {steps} Lanczos vectors per probe",
                est.n_matvecs,
                f"raise {arg_hint('memory_budget', '--memory-budget')}",
            )
        elif limited:
            warn(
                "density",
                f"the budget allowed {probes} probe(s) of {steps} steps",
                est.n_matvecs,
                raise_budget(),
            )
        stderr = est.trace_stderr if math.isfinite(est.trace_stderr) else None
        data, data_attrs = _data(matvec)
        return run.result(
            **data,
            hvps=run.hvps + (matvec.chunked.hvp_count if data else 0),
            value=est.trace,
            stderr=stderr,
            converged=not limited,
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
                **data_attrs,
                "value_is": "trace estimate n·mean(vᵀHv) of the quadrature probes",
                "hvp_method": H.method,
                "path": "estimate",
                "path_reason": f"SLQ costs {probes} x {steps} = {probes * steps} "
                f"products, fewer than the n = {H.n} of the exact spectrum",
            },
        )

    def _exact(self, run: Run, why: str) -> MetricResult:
        from sharpkit import smooth_density

        deflation = run.ctx.krylov(run.H.n, generator=run.gen)
        evals = np.linalg.eigvalsh(deflation.projected.numpy())[::-1].copy()
        lo, hi = float(evals.min()), float(evals.max())
        sigma = self.sigma or max(0.01 * (hi - lo), 1e-12 * max(abs(lo), abs(hi), 1.0))
        grid = np.linspace(lo - 6 * sigma, hi + 6 * sigma, self.grid)
        nodes = evals.reshape(1, -1)
        weights = np.full_like(nodes, 1.0 / len(evals))
        density = smooth_density(nodes, weights, grid, sigma)
        return run.result(
            value=float(evals.sum()),
            stderr=0.0,
            converged=True,
            arrays={
                "nodes": nodes,
                "weights": weights,
                "grid": grid,
                "density": density,
            },
            attrs={
                "method": "exact",
                "probes": 0,
                "steps": int(run.H.n),
                "sigma": sigma,
                "value_is": "exact trace",
                "hvp_method": run.H.method,
                "path": "exact",
                "path_reason": why,
            },
        )


def _data(matvec: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """The data standard error of SLQ's trace from a ``ProbeChunks`` matvec."""
    from sharpkit.builtin.metrics._data_error import ProbeChunks, data_fields

    if not isinstance(matvec, ProbeChunks) or not matvec.values:
        return {}, {}
    import torch

    from sharpkit import linear_estimate

    per_chunk = torch.stack(matvec.values).mean(0).numpy()
    est = linear_estimate(
        per_chunk, matvec.chunked.weights, samples=matvec.chunked.num_examples
    )
    return data_fields(
        est,
        "standard error of the trace estimate over the data the samples were "
        "drawn from, for these probes (the chunks' spread of n·qᵀH_k q, "
        "delete-a-chunk jackknife, widened for K-1 degrees of freedom)",
    )
