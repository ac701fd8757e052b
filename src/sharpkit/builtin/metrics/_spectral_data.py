"""``spectral``'s data error bar: per-example terms, the tail check, the bracket.

Lanczos runs on :meth:`~sharpkit.AnalysisContext.chunked_hessian` through a
:class:`~sharpkit.ChunkRecorder` (the chunk jackknife's bias-corrected
estimate); then every example's term ``v_jᵀH_i v_j`` of each Ritz vector
(:func:`~sharpkit.example_rayleigh`, one second-order forward pass over the
analysis set per eigenvalue) gives ``data_stderr`` with ``N - 1`` degrees of
freedom (:func:`~sharpkit.example_estimate`) and the tail check that says when
no standard error from these examples can be trusted. Why not the jackknife's
standard error: on a trained zero-loss ``mlp-bn`` a few examples carry the top
curvature and 16 chunks under-cover (docs/concepts/curvature.md, "Two kinds of
uncertainty").
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from typing import TYPE_CHECKING, Any

import numpy as np

from sharpkit import SharpkitWarning, arg_hint

if TYPE_CHECKING:
    import torch

    from sharpkit import AnalysisContext, ChunkRecorder, DataEstimate, MetricResult

__all__ = ["with_data_error"]

_TERMS_RTOL = 1e-3
"""Largest ``|mean_i q_i - θ| / |θ_1|`` for which the per-example terms count as
the Ritz value's (float32 forward passes agree to ~1e-6; a loss that is not a
plain mean over examples, e.g. class-weighted, misses by far more)."""


def _terms(
    ctx: AnalysisContext, vectors: torch.Tensor, values: np.ndarray
) -> tuple[np.ndarray | None, str]:
    """Per-example terms ``(N, k)`` of the Ritz vectors, or ``None`` and why."""
    from sharpkit import ConfigError, example_rayleigh

    try:
        q = example_rayleigh(ctx.hessian, vectors).numpy()
    except (ConfigError, RuntimeError, NotImplementedError, TypeError) as exc:
        return None, f"per-example terms failed ({type(exc).__name__}: {exc})"
    scale = max(abs(float(values[0])), 1e-300)
    miss = np.abs(q.mean(0) - values[: q.shape[1]]) / scale
    if not np.all(np.isfinite(q)) or float(miss.max()) > _TERMS_RTOL:
        return None, (
            "the per-example terms do not average to the Ritz values (a loss that "
            "is not a plain mean over examples)"
        )
    return q, "ok"


def _heldout(ctx: AnalysisContext, vector: torch.Tensor) -> dict[str, Any]:
    """The held-out Rayleigh quotient of the top vector, as attributes."""
    from sharpkit import HessianOperator, example_estimate, example_rayleigh

    data = ctx.heldout_data
    if data is None or len(data) < 2:
        return {}
    op = HessianOperator(
        ctx.model,
        ctx.loss_fn,
        data,
        batch_size=ctx.batch_size,
        bn_mode=ctx.bn_mode,
        allow_tf32=ctx.tf32,
    )
    est = example_estimate(example_rayleigh(op, vector)[:, 0], method="heldout")
    return {
        "data_lower": est.value,
        "data_lower_stderr": est.stderr,
        "data_lower_samples": est.samples,
        "data_lower_meaning": "the Rayleigh quotient of the top eigenvector on "
        "held-out examples: unbiased for vᵀH_pop v <= λ_max(H_pop), the lower "
        "end of a bracket for the population's λ_max (the sample's value is "
        "biased up, E λ_max(Ĥ) >= λ_max(H_pop))",
    }


def _warn_tail(ctx: AnalysisContext, est: DataEstimate, share: float) -> None:
    train = ctx.train_data
    whole = train is not None and len(ctx.data) >= len(train)
    what = (
        "it is this split's value, and another split of the same data can differ "
        "by more than the error bar says; compare models on the same examples"
        if whole
        else "another draw of samples can differ by more than the error bar says; "
        f"measure on more samples ({arg_hint('samples', '--samples', 'all')}) and "
        "compare"
    )
    warnings.warn(
        f"spectral: data_stderr is not reliable: a few of the {est.samples} "
        f"examples carry the top curvature (the largest carries {share:.0%} of "
        f"vᵀHv; tail index {est.tail_index:.2f} > {_limit(est.samples):.2f}), "
        f"so {what}",
        SharpkitWarning,
        stacklevel=5,
    )


def _limit(n: int) -> float:
    from sharpkit import tail_limit

    return tail_limit(n)


def with_data_error(
    result: MetricResult,
    recorder: ChunkRecorder,
    ctx: AnalysisContext,
    vectors: torch.Tensor,
    values: np.ndarray,
) -> MetricResult:
    """``result`` with its data standard error, tail check and bracket.

    Args:
        result: The Lanczos result on the chunked Hessian.
        recorder: The recorder the run went through.
        ctx: The analysis context.
        vectors: The Ritz vectors ``(n, k)``, largest first.
        values: Their Ritz values.
    """
    from sharpkit import example_estimate, spectral_estimate

    jack = spectral_estimate(recorder)[0]
    q, why = _terms(ctx, vectors, values)
    attrs: dict[str, Any] = {
        "data_estimate": jack.estimate,
        "data_chunks": jack.chunks,
        "data_jackknife_stderr": jack.stderr,
    }
    arrays: dict[str, np.ndarray] = {}
    if q is None:
        stderr, method = jack.stderr, jack.method
        attrs["data_terms"] = why
        warnings.warn(
            f"spectral: {why}; data_stderr is the chunk jackknife's, which can "
            "under-cover where a few examples carry the curvature (zero-loss minima)",
            SharpkitWarning,
            stacklevel=4,
        )
        attrs["data_meaning"] = (
            "standard error of λ over the data the samples were drawn from "
            "(delete-a-chunk jackknife in the Krylov space, widened for K-1 "
            "degrees of freedom); data_estimate is the bias-corrected λ"
        )
    else:
        ests = [example_estimate(q[:, j]) for j in range(q.shape[1])]
        top = ests[0]
        total = float(q[:, 0].sum())
        share = float(q[:, 0].max()) / total if total > 0 else math.nan
        stderr, method = top.stderr, top.method
        attrs.update(
            data_reliable=top.reliable,
            data_tail_index=top.tail_index,
            data_tail_limit=_limit(top.samples),
            data_top_share=share,
            data_meaning="standard error of λ over the data the samples were "
            "drawn from: the spread of the examples' terms vᵀH_i v of the top "
            "eigenvector over sqrt(N) (λ's infinitesimal jackknife); "
            "data_reliable is false when those terms are so heavy-tailed "
            "(data_tail_index, a Pareto shape, above data_tail_limit) that no "
            "standard error from these examples can be trusted; data_estimate "
            "is the chunk jackknife's bias-corrected λ",
        )
        arrays["data_stderrs"] = np.array([e.stderr for e in ests])
        arrays["data_top_terms"] = top.per_chunk
        if not top.reliable:
            _warn_tail(ctx, top, share)
    attrs.update(_heldout(ctx, vectors[:, :1]))
    return dataclasses.replace(
        result,
        hvps=recorder.chunked.hvp_count,
        data_stderr=stderr,
        data_method=method,
        arrays={**result.arrays, **arrays},
        attrs={**result.attrs, **attrs},
    )
