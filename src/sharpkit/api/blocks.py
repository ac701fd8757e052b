"""``measure(..., blocks=...)``: the curvature of each block of parameters.

The whole-model metrics run first; then each of ``spectral``, ``trace`` and
``frobenius`` that was computed gets its per-block values added to its result
as arrays along a ``block`` dimension (zarr ``dimension_names``, so
``xarray.open_zarr`` reads them as such), with the block names, sizes and the
spec in its attributes. The spec is part of every metric's reuse key, so a
stored result without blocks is never taken for one with them.

Arrays added (``B`` blocks, ``k`` eigenvalues):

* ``spectral``: ``block_value`` (``λ_max(H_bb)``), ``block_bound``,
  ``block_eigenvalues`` (``B x k``), ``block_hvps``, and ``block_mass``: the
  share ``‖v_b‖²`` of the whole model's top eigenvector in each block;
* ``trace``: ``block_value`` (``tr H_bb``, summing to the total of the same
  probes), ``block_stderr``;
* ``frobenius``: ``block_value`` (``‖H_bb‖_F``), ``block_stderr``, and the
  attributes ``off_block_share`` / ``off_block_share_stderr``: the share of
  ``‖H‖_F²`` off the block diagonal.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from torch import Tensor

from sharpkit.api.wrappers import unwrap
from sharpkit.curvature.block_estimates import (
    block_frobenius,
    block_mass,
    block_spectra,
    block_trace,
)
from sharpkit.curvature.blocks import BlockPartition, BlockSpec, resolve_blocks
from sharpkit.errors import ConfigError
from sharpkit.interfaces import AnalysisContext, MetricResult

__all__ = [
    "BLOCK_METRICS",
    "TRACE_PROBES",
    "TRACE_SKETCH",
    "add_blocks",
    "check_block_metrics",
    "run_blocks",
    "spec_key",
]

BLOCK_METRICS = ("spectral", "trace", "frobenius")
"""The metrics that have a per-block counterpart."""
TRACE_PROBES = 32
"""Probes of the per-block trace (one pass serves every block)."""
TRACE_SKETCH = 8
"""Columns of its Hutch++ sketch (16 products: exact part of every block)."""
DATA_CHUNKS = 16
"""Chunks of the exact trace's data standard error (as the ``trace`` metric's)."""
FROBENIUS_PROBES = 16
"""Probes per block of ``‖H_bb‖_F`` (after deflating the block's Krylov basis)."""


def spec_key(spec: BlockSpec | None) -> Any:
    """A JSON form of ``spec`` for the reuse key (``None``: no blocks)."""
    if spec is None:
        return None
    if isinstance(spec, str):
        return [spec]
    if isinstance(spec, Mapping):
        out: dict[str, list[str]] = {}
        for name, members in spec.items():
            listed = [members] if isinstance(members, str | Tensor) else members
            if any(isinstance(m, Tensor) for m in listed):
                msg = (
                    "blocks given as tensors cannot key a stored result; "
                    "name the parameters (e.g. {'head': ['fc.weight']})"
                )
                raise ConfigError(msg)
            out[str(name)] = [str(m) for m in listed]
        return out
    return [str(s) for s in spec]


def check_block_metrics(spec: BlockSpec | None, names: Sequence[str]) -> None:
    """Refuse blocks when none of the metrics has a per-block counterpart."""
    if spec is None or any(n in BLOCK_METRICS for n in names):
        return
    msg = (
        f"blocks apply to the metrics {', '.join(BLOCK_METRICS)}; "
        f"add one of them (-m spectral) to {', '.join(names)}"
    )
    raise ConfigError(msg)


def run_blocks(
    results: dict[str, MetricResult],
    names: Sequence[str],
    ctx: AnalysisContext,
    spec: BlockSpec,
) -> None:
    """:func:`add_blocks` in analysis mode and full precision, as the metrics ran."""
    from sharpkit.curvature.operator import analysis_mode, full_precision

    with (
        analysis_mode(ctx.model, ctx.bn_mode, fuse_bn=False),
        full_precision(not ctx.tf32),
    ):
        add_blocks(results, names, ctx, spec)


def _reporter(ctx: AnalysisContext, metric: str) -> Callable[[int, int, str], None]:
    def report(done: int, total: int, name: str) -> None:
        ctx.progress(done, total, description=f"{metric} per block: {name}")

    return report


def _attrs(
    part: BlockPartition,
    spec: Any,
    arrays: Mapping[str, np.ndarray],
    error: tuple[str, str],
) -> dict[str, Any]:
    """The attributes a per-block result carries (the values too, for the table)."""
    kind, name = error
    return {
        "blocks": part.names,
        "block_values": [float(v) for v in arrays["block_value"]],
        "block_errors": [float(v) for v in arrays[name]],
        "block_error_kind": kind,
        "block_sizes": part.sizes,
        "block_spec": spec,
        "array_dims": {
            a: ["block", "block_eigenvalue"] if a == "block_eigenvalues" else ["block"]
            for a in arrays
        },
    }


def _with(
    result: MetricResult,
    arrays: Mapping[str, np.ndarray],
    attrs: Mapping[str, Any],
) -> MetricResult:
    old = result.attrs.get("array_dims")
    declared: dict[str, Any] = dict(old) if isinstance(old, Mapping) else {}
    declared.update(attrs["array_dims"])
    return dataclasses.replace(
        result,
        arrays={**result.arrays, **arrays},
        attrs={**result.attrs, **attrs, "array_dims": declared},
    )


def add_blocks(
    results: dict[str, MetricResult],
    names: Sequence[str],
    ctx: AnalysisContext,
    spec: BlockSpec,
) -> None:
    """Add the per-block arrays to the results of ``names`` (see the module doc).

    Args:
        results: The results computed now, updated in place.
        names: The metrics computed now.
        ctx: Their analysis context (its Hessian and eigenvectors are reused).
        spec: The blocks.
    """
    key = spec_key(spec)
    op = ctx.hessian
    part = resolve_blocks(unwrap(ctx.model), spec, params=op.params)
    spectra = None
    if "spectral" in names and "spectral" in results:
        spectra = _spectral(results, ctx, part, key)
    if "trace" in names and "trace" in results:
        ctx.progress(0, 1, description="trace per block (one pass for all)")
        results["trace"] = _trace(results["trace"], ctx, part, key)
    if "frobenius" in names and "frobenius" in results:
        whole = results["frobenius"]
        fro = block_frobenius(
            op,
            part,
            spectra=spectra,
            whole=(whole.value, whole.stderr or 0.0),
            probes=FROBENIUS_PROBES,
            generator=ctx.generator("blocks-frobenius"),
            progress=_reporter(ctx, "frobenius"),
        )
        arrays = {"block_value": fro.values, "block_stderr": fro.stderrs}
        attrs = _attrs(part, key, arrays, ("stderr", "block_stderr"))
        attrs.update(
            off_block_share=fro.off_share,
            off_block_share_stderr=fro.off_share_stderr,
            block_hvps=fro.n_matvecs,
        )
        results["frobenius"] = _with(results["frobenius"], arrays, attrs)


def _spectral(
    results: dict[str, MetricResult],
    ctx: AnalysisContext,
    part: BlockPartition,
    key: Any,
) -> list[Any]:
    whole = results["spectral"]
    k = max(1, len(np.atleast_1d(whole.arrays.get("eigenvalues", [0.0]))))
    data_stderr = None
    if whole.data_stderr is not None:  # each block's run on its chunked Hessian
        from sharpkit.curvature.block_data import chunked_block_spectra

        spectra, data = chunked_block_spectra(
            ctx.model, ctx.loss_fn, ctx.data, part, ctx.hessian.params, k=k,
            tol=ctx.tol, max_iter=ctx.max_hvps,
            generator=ctx.generator("blocks-spectral"),
            progress=_reporter(ctx, "spectral"), chunks=DATA_CHUNKS,
            bn_mode=ctx.bn_mode, allow_tf32=ctx.tf32,
        )  # fmt: skip
        data_stderr = np.array([d.stderr for d in data])
    else:
        spectra = block_spectra(
            ctx.hessian, part, k=k, tol=ctx.tol, max_iter=ctx.max_hvps,
            generator=ctx.generator("blocks-spectral"),
            progress=_reporter(ctx, "spectral"),
        )  # fmt: skip
    eig = np.full((len(part), k), np.nan)
    for b, r in enumerate(spectra):
        eig[b, : len(r.eigenvalues)] = r.eigenvalues
    arrays = {
        "block_value": np.array([r.eigenvalues[0] for r in spectra]),
        "block_bound": np.array([r.bounds[0] for r in spectra]),
        "block_eigenvalues": eig,
        "block_hvps": np.array([r.n_matvecs for r in spectra], dtype=np.int64),
    }
    if ctx.eigenvectors is not None and ctx.eigenvectors.shape[0] == part.n:
        arrays["block_mass"] = block_mass(ctx.eigenvectors[:, 0], part)
    if data_stderr is not None:
        arrays["block_data_stderr"] = data_stderr
    attrs = _attrs(part, key, arrays, ("bound", "block_bound"))
    if data_stderr is not None:
        attrs["block_data_stderrs"] = [float(v) for v in data_stderr]
    attrs["block_converged"] = all(r.converged for r in spectra)
    results["spectral"] = _with(whole, arrays, attrs)
    return spectra


def _trace(
    whole: MetricResult, ctx: AnalysisContext, part: BlockPartition, key: Any
) -> MetricResult:
    """The trace's per-block arrays, split as the whole trace was computed.

    The exact Gauss-Newton trace splits exactly (one more pass of it); an
    estimated trace with a data standard error splits on the chunked Hessian;
    else one Hutch++ pass on the whole operator serves every block.
    """
    data_stderr: np.ndarray | None = None
    if whole.attrs.get("method") == "exact-ggn":
        from sharpkit.curvature.block_data import exact_block_traces
        from sharpkit.curvature.ggn import cross_entropy_form

        form, _ = cross_entropy_form(ctx.loss_fn)
        split = exact_block_traces(
            ctx.model, ctx.data, part, ctx.hessian.params, loss=form,
            batch_size=ctx.batch_size,
            chunks=DATA_CHUNKS if whole.data_stderr is not None else None,
        )  # fmt: skip
        values, stderrs, hvps, exact = split.values, split.stderrs, 0, True
        data_stderr = split.data_stderrs
    elif whole.data_stderr is not None:
        from sharpkit.curvature.block_data import chunked_block_trace

        split = chunked_block_trace(
            ctx.chunked_hessian(), part, probes=TRACE_PROBES, sketch=TRACE_SKETCH,
            generator=ctx.generator("blocks-trace"),
        )  # fmt: skip
        values, stderrs, hvps, exact = (
            split.values,
            split.stderrs,
            split.n_matvecs,
            False,
        )
        data_stderr = split.data_stderrs
    else:  # exact as the whole one was (H on the identity) or one Hutch++ pass
        exact = whole.attrs.get("method") == "exact"
        est = block_trace(
            ctx.hessian, part, probes=part.n if exact else TRACE_PROBES,
            sketch=0 if exact else TRACE_SKETCH,
            generator=ctx.generator("blocks-trace"),
        )  # fmt: skip
        values, stderrs, hvps, exact = est.values, est.stderrs, est.n_matvecs, est.exact
    arrays = {"block_value": values, "block_stderr": stderrs}
    if data_stderr is not None:
        arrays["block_data_stderr"] = data_stderr
    attrs = _attrs(part, key, arrays, ("stderr", "block_stderr"))
    attrs.update(block_total=float(values.sum()), block_hvps=hvps, block_exact=exact)
    if data_stderr is not None:
        attrs["block_data_stderrs"] = [float(v) for v in data_stderr]
    return _with(whole, arrays, attrs)
