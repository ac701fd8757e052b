"""``frobenius``: ‖H‖_F, exact on a Krylov subspace plus a stochastic remainder.

‖H‖_F² = tr H² is exact on the Krylov space the metrics share
(``ctx.krylov``, extending the ``spectral`` run's Lanczos process) plus a
Hutchinson estimate of the deflated remainder (paper Fig. 1b); up to
``exact_max`` parameters the Krylov space is the whole space.
"""

from __future__ import annotations

from sharpkit import AnalysisContext, ConfigError, MetricResult
from sharpkit.builtin.metrics._common import (
    EXACT_MAX,
    Run,
    check_basis,
    check_probes,
    exact_up_front,
    path_attrs,
    positive,
    raise_budget,
    warn,
)

__all__ = ["DATA_PROBES", "Frobenius"]

DATA_PROBES = 16
"""Probes of ``frobenius`` with ``data_error`` (its ``probes`` option overrides):
after the Krylov deflation their numerical error is well below the data's
(tests/sampling/test_data_coverage.py)."""


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
        data_error: Also give ``data_stderr``, the standard error of ‖H‖_F
            over the data the samples were drawn from: the estimate runs on
            :meth:`~sharpkit.AnalysisContext.chunked_hessian` (16 chunks; a
            Krylov basis of ``deflation`` steps of its own, exact chunk by
            chunk, plus ``probes`` shared probes, 16 by default) and
            :func:`~sharpkit.frobenius_estimate` gives the U-statistic over
            chunk pairs (``attrs["data_estimate"]``: unbiased for ‖H‖_F² of
            the distribution, where the sample value is biased up) and its
            jackknife standard error (``data_method="u-statistic"``). Off by
            default: see docs/benchmarks.md for its cost.
    """

    def __init__(
        self,
        rel_stderr: float = 0.003,
        deflation: int = 25,
        probes: int | None = None,
        exact_max: int = EXACT_MAX,
        data_error: bool = False,
    ) -> None:
        positive("rel_stderr", rel_stderr)
        if deflation < 0:
            msg = f"deflation must be >= 0, got {deflation}"
            raise ConfigError(msg)
        check_probes(probes)
        self.rel_stderr = rel_stderr
        self.deflation = deflation
        self.probes = probes
        self.exact_max = exact_max
        self.data_error = bool(data_error)

    def estimated_hvps(self, ctx: AnalysisContext) -> int | None:
        """Deflation plus about twenty probes, at most ``n``."""
        H = ctx.hessian
        guess = min(H.n, self.deflation + (self.probes or 20))
        if self._up_front(ctx):
            guess = H.n
        return guess if ctx.max_hvps is None else min(guess, ctx.max_hvps)

    def _up_front(self, ctx: AnalysisContext) -> str | None:
        from sharpkit.builtin.metrics._engine import FROBENIUS_MIN_PROBES

        fewest = self.deflation + (self.probes or FROBENIUS_MIN_PROBES)
        return exact_up_front(ctx, self.exact_max, fewest)

    def compute(self, ctx: AnalysisContext) -> MetricResult:
        """Estimate ‖H‖_F on ``ctx.hessian``."""
        from sharpkit import frobenius_norm

        run = Run(ctx, "frobenius")
        H = run.H
        up_front = self._up_front(ctx)
        steps = H.n if up_front else self.deflation
        check_basis(
            ctx, f"frobenius (deflation {self.deflation})", steps, H.n,
            "lower frobenius's deflation option",
        )  # fmt: skip
        if ctx.max_hvps is not None and not up_front:
            steps = min(steps, max(ctx.max_hvps // 2, 1))
        if self.data_error:  # (up front: a chunked basis of the whole space)
            return self._with_data(run, steps)
        deflation = ctx.krylov(steps, generator=run.gen) if steps > 0 else None
        used = run.hvps
        est = frobenius_norm(
            H,
            H.n,
            deflation=deflation,
            deflation_steps=0,
            probes=self.probes,
            max_matvecs=run.left(),
            target_rel_stderr=None if self.probes else self.rel_stderr,
            generator=run.gen,
            distribution="auto",
            progress=run.progress(used),
        )
        hvps = run.hvps
        converged = est.converged or (deflation is not None and deflation.rank >= H.n)
        if up_front:
            path = {"path": "exact", "path_reason": up_front}
        else:
            target = None if self.probes else self.rel_stderr
            path = path_attrs(est, H.n, target, hvps)
        if not converged:
            warn(
                "frobenius",
                f"relative stderr {est.stderr / max(est.value, 1e-300):.2g} > "
                f"{self.rel_stderr:g}",
                hvps,
                raise_budget(),
            )
        return run.result(
            value=est.value,
            stderr=est.stderr,
            converged=converged,
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

    def _with_data(self, run: Run, steps: int) -> MetricResult:
        """‖H‖_F and its data standard error on the chunked Hessian."""
        from sharpkit import frobenius_estimate
        from sharpkit.builtin.metrics._data_error import (
            chunked_krylov,
            chunked_result,
        )

        chunked, rec = chunked_krylov(run.ctx, steps, run.gen, gram=True)
        probes = self.probes or DATA_PROBES
        est = frobenius_estimate(
            chunked, recorder=rec, probes=probes, generator=run.gen
        )
        return chunked_result(
            run,
            est,
            meaning="standard error of ‖H‖_F over the data the samples were drawn "
            "from (U-statistic over chunk pairs, delete-a-chunk jackknife, widened "
            "for K-1 degrees of freedom); data_estimate is the U-statistic's ‖H‖_F",
            chunked=chunked,
            rec=rec,
            probes=probes,
            rel_stderr=self.rel_stderr,
            array="chunk_deleted",
        )
