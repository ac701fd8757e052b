"""The data error bars of ``frobenius``, ``trace`` and ``density`` (issue 19).

Each metric's ``data_error`` option runs its estimator on
:meth:`~sharpkit.AnalysisContext.chunked_hessian` (16 chunks of the analysis
set) instead of ``ctx.hessian``: the same operator, whose products also give
every chunk's product. The helpers here build the chunked Krylov basis the
estimators deflate, and turn a :class:`~sharpkit.DataEstimate` into the
result's fields.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from sharpkit import (
        AnalysisContext,
        ChunkedHessian,
        ChunkRecorder,
        DataEstimate,
        HessianOperator,
        MetricResult,
    )
    from sharpkit.builtin.metrics._common import Run

__all__ = ["ProbeChunks", "chunked_krylov", "chunked_result", "data_fields"]


def chunked_krylov(
    ctx: AnalysisContext, steps: int, gen: torch.Generator, *, gram: bool
) -> tuple[ChunkedHessian, ChunkRecorder]:
    """``steps`` Lanczos steps on the chunked Hessian, recorded chunk by chunk.

    The recorder's inputs are then an orthonormal Krylov basis (full
    reorthogonalization) that :func:`~sharpkit.trace_estimate` and
    :func:`~sharpkit.frobenius_estimate` deflate exactly, chunk by chunk.

    Args:
        ctx: The analysis context.
        steps: Krylov dimension (0: none).
        gen: Random source of the start vector.
        gram: Record the cross-chunk Gram (``frobenius`` needs it).
    """
    from sharpkit import ChunkRecorder, LanczosProcess

    chunked = ctx.chunked_hessian()
    rec = ChunkRecorder(chunked, gram=gram)
    steps = min(steps, chunked.n)
    if steps > 0:
        proc = LanczosProcess(
            rec,
            chunked.n,
            generator=gen,
            max_basis_bytes=ctx.basis_budget(),
            steps_hint=steps,
        )
        while proc.m < min(steps, proc.max_steps) and not proc.exhausted:
            proc.step()
    return chunked, rec


def data_fields(
    est: DataEstimate, meaning: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(result fields, attrs)`` that carry ``est`` on a :class:`MetricResult`.

    Args:
        est: The data estimate.
        meaning: What ``data_stderr`` is the error of, for ``data_meaning``.
    """
    fields = {"data_stderr": est.stderr, "data_method": est.method}
    attrs = {
        "data_estimate": est.estimate,
        "data_chunks": est.chunks,
        "data_meaning": meaning,
    }
    return fields, attrs


def chunked_result(
    run: Run,
    est: DataEstimate,
    *,
    meaning: str,
    chunked: ChunkedHessian,
    rec: ChunkRecorder,
    probes: int,
    rel_stderr: float,
    array: str,
    extra: dict[str, Any] | None = None,
) -> MetricResult:
    """The result of a deflated Hutchinson estimate on the chunked Hessian.

    Args:
        run: The metric's run.
        est: The data estimate (value, numerical and data standard errors).
        meaning: What ``data_stderr`` is the error of (see :func:`data_fields`).
        chunked: The chunked Hessian (its product count is the result's).
        rec: The recorder whose Krylov basis was deflated.
        probes: Probes drawn.
        rel_stderr: The metric's relative standard-error target.
        array: Name of the per-chunk array stored with the result.
        extra: More attributes.
    """
    fields, attrs = data_fields(est, meaning)
    return run.result(
        **fields,
        value=est.value,
        stderr=est.numerical_stderr,
        converged=True,
        hvps=chunked.hvp_count,
        arrays={array: est.per_chunk},
        attrs={
            **attrs,
            "method": "chunked deflated hutchinson",
            "deflation_rank": rec.m,
            "probes": probes,
            "rel_stderr_target": rel_stderr,
            "hvp_method": run.H.method,
            "path": "estimate",
            "path_reason": "data_error: a fixed number of probes on the "
            "chunked Hessian",
            **(extra or {}),
        },
    )


class ProbeChunks:
    """A matvec for SLQ that sends each probe's start vector through the chunks.

    :func:`~sharpkit.slq_density`'s value is ``n · mean_j q_jᵀ H q_j`` over
    its probes' start vectors ``q_j = z_j / sqrt(n)`` (Rademacher ``z_j``: every
    entry has the same magnitude, which no later Lanczos vector has). Their
    product goes through the chunked Hessian (the same ``H q``, to rounding)
    and :attr:`values` keeps ``n · q_jᵀ H_k q_j`` for every chunk ``k``: the
    value is their weighted mean over chunks, exactly, so its chunk-to-chunk
    spread is its data standard error for these probes. Every other product
    goes to ``H``.

    Args:
        hessian: ``ctx.hessian``.
        chunked: ``ctx.chunked_hessian()``.
    """

    def __init__(self, hessian: HessianOperator, chunked: ChunkedHessian) -> None:
        self.hessian = hessian
        self.chunked = chunked
        self.n = hessian.n
        self.values: list[torch.Tensor] = []

    @property
    def dtype(self) -> torch.dtype:
        """Dtype of vectors."""
        return self.hessian.dtype

    @property
    def device(self) -> torch.device:
        """Device of vectors."""
        return self.hessian.device

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        """``H v``; chunk by chunk for a probe's start vector."""
        size = v.abs()
        top = float(size.max())
        if v.dim() != 1 or top == 0 or float(size.min()) < top * (1 - 1e-6):
            return self.hessian.matvec(v)
        parts = self.chunked.chunk_products(v)
        norm = float(v.double() @ v.double())
        self.values.append((parts @ v).double().cpu() * (self.n / norm))
        return self.chunked.combine(parts)
