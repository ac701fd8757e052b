r"""Per-block traces with their data standard errors, and the exact-GGN split.

The data standard error of a trace is the chunks' spread (a trace is linear in
the chunks of the data, see :mod:`sharpkit.curvature.uncertainty`). Both ways
the whole-model ``trace`` metric gets one split by block the same way:

* **Exact (Gauss-Newton identity)**: :func:`exact_block_traces` makes one
  :func:`~sharpkit.curvature.ggn.ggn_block_traces` pass, whose per-example
  terms are summed per chunk and per block; each block's chunk values go to
  :func:`~sharpkit.curvature.sampling.linear_estimate`, as the whole trace's do
  in :func:`~sharpkit.curvature.uncertainty.exact_trace_estimate` (same
  chunks, same weights), so the blocks' chunk values add up to the whole
  model's.
* **λ_max per block**: :func:`chunked_block_spectra` runs each block's Lanczos
  on a :class:`~sharpkit.curvature.sampling.ChunkedHessian` over the block's
  parameters, recorded chunk by chunk, and
  :func:`~sharpkit.curvature.uncertainty.spectral_estimate` gives its
  delete-a-chunk jackknife error, as for the whole model's λ_max.
* **Estimated**: :func:`chunked_block_trace` runs the one-pass Hutch++ of
  :func:`~sharpkit.curvature.block_estimates.block_trace` on a
  :class:`~sharpkit.curvature.sampling.ChunkedHessian`: every product gives every
  chunk's product, so ``z_bᵀ(H_k z)_b`` (and the sketch's exact part) is known
  per chunk and per block at the cost of the whole-model estimate.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from sharpkit._data import DataSplit
from sharpkit.curvature.blocks import BlockPartition
from sharpkit.curvature.lanczos import LanczosResult, lanczos
from sharpkit.curvature.sampling import ChunkedHessian, DataEstimate, linear_estimate
from sharpkit.curvature.stopping import t_factor
from sharpkit.errors import ConfigError

__all__ = [
    "BlockDataTrace",
    "chunked_block_spectra",
    "chunked_block_trace",
    "exact_block_traces",
]


@dataclass(frozen=True, kw_only=True)
class BlockDataTrace:
    """``tr H_bb`` per block with numerical and data standard errors.

    Attributes:
        names: The blocks' names.
        values: ``tr H_bb`` per block (on the samples).
        stderrs: Their numerical standard errors (0 when exact).
        data: One :class:`~sharpkit.curvature.sampling.DataEstimate` per block
            (``None`` when not asked for).
        n_matvecs: Products of the whole operator used (0 for the exact path).
        exact: Whether the values are exact.
    """

    names: tuple[str, ...]
    values: np.ndarray
    stderrs: np.ndarray
    data: tuple[DataEstimate, ...] | None
    n_matvecs: int
    exact: bool

    @property
    def data_stderrs(self) -> np.ndarray | None:
        """The data standard error of each block (``None`` when not computed)."""
        if self.data is None:
            return None
        return np.array([d.stderr for d in self.data], dtype=np.float64)


def exact_block_traces(
    model: nn.Module,
    data: DataSplit,
    partition: BlockPartition,
    params: Sequence[Tensor],
    *,
    loss: Any = None,
    batch_size: int = 512,
    chunks: int | None = 16,
) -> BlockDataTrace:
    """Exact ``tr H_bb`` of every block from one Gauss-Newton pass.

    The caller checks that ``tr H = tr G`` holds (as for
    :func:`~sharpkit.curvature.ggn.ggn_trace`); then each block's diagonal is
    ``G``'s, so ``tr H_bb = tr G_bb`` too.

    Args:
        model: The network, in eval mode.
        data: The analysis set.
        partition: The blocks, over the flat vector of ``params``.
        params: The parameters the partition is made of (e.g. an operator's).
        loss: A :class:`~sharpkit.curvature.ggn.CrossEntropyForm` or ``None``.
        batch_size: Examples per forward pass (does not change the result).
        chunks: Chunks for the data standard errors (``None``: none), as
            :func:`~sharpkit.curvature.uncertainty.exact_trace_estimate` cuts.

    Raises:
        ConfigError: Fewer than 2 chunks of at least one example.
        NotImplementedError: A layer the Gauss-Newton pass cannot handle.
    """
    from sharpkit.curvature.ggn import CrossEntropyForm, ggn_block_traces
    from sharpkit.curvature.uncertainty import _example_weights

    form = loss if loss is not None else CrossEntropyForm()
    groups = [[params[i] for i in b.members] for b in partition.blocks]
    per: list[Tensor] = []
    values, _ = ggn_block_traces(
        model, data, groups, batch_size=batch_size, loss=form, per_example=per
    )
    estimates = None
    if chunks is not None:
        n = len(data)
        k = min(int(chunks), n)
        if k < 2:
            msg = f"a data standard error needs at least 2 chunks; got {n} examples"
            raise ConfigError(msg)
        contrib = torch.cat(per)  # (N, B)
        weight = _example_weights(form, data.targets)
        edges = list(itertools.pairwise([n * i // k for i in range(k + 1)]))
        sums = np.stack([contrib[a:b].sum(0).numpy() for a, b in edges])  # (K, B)
        counts = np.array([float(weight[a:b].sum()) for a, b in edges])
        per_chunk = np.divide(
            sums, counts[:, None], out=np.zeros_like(sums), where=counts[:, None] > 0
        )
        estimates = tuple(
            linear_estimate(per_chunk[:, j], counts, samples=n)
            for j in range(len(partition))
        )
    return BlockDataTrace(
        names=tuple(partition.names),
        values=np.asarray(values, dtype=np.float64),
        stderrs=np.zeros(len(partition)),
        data=estimates,
        n_matvecs=0,
        exact=True,
    )


def _rademacher(
    n: int, k: int, gen: torch.Generator | None, chunked: ChunkedHessian
) -> Tensor:
    z = torch.randint(0, 2, (n, k), generator=gen).to(chunked.dtype) * 2 - 1
    return z.to(chunked.device)


def chunked_block_trace(
    chunked: ChunkedHessian,
    partition: BlockPartition,
    *,
    probes: int = 32,
    sketch: int = 8,
    generator: torch.Generator | None = None,
) -> BlockDataTrace:
    """One-pass Hutch++ ``tr H_bb`` of every block, chunk by chunk.

    The estimator of :func:`~sharpkit.curvature.block_estimates.block_trace`
    (a sketch ``Q = orth(H S)`` whose part is exact, then Rademacher probes
    projected off it) with every product taken per chunk: each chunk's block
    traces are ``Σ_{i∈b}(H_k Q ∘ Q)_i + mean_z z_bᵀ(H_k z)_b``, and
    :func:`~sharpkit.curvature.sampling.linear_estimate` gives each block's
    data standard error from them (each chunk's probe noise included, so it
    errs high, as the whole-model trace's does).

    Args:
        chunked: The chunked Hessian.
        partition: The blocks.
        probes: Rademacher probes (at least 2).
        sketch: Columns of the sketch (``2 · sketch`` products; 0: none).
        generator: Random source.

    Raises:
        ConfigError: Fewer than 2 probes or a negative sketch.
    """
    if probes < 2 or sketch < 0:
        msg = f"probes must be >= 2 and sketch >= 0, got {probes} and {sketch}"
        raise ConfigError(msg)
    n, k = partition.n, chunked.chunks
    w = torch.as_tensor(chunked.weights, dtype=torch.float64)
    exact = np.zeros((k, len(partition)))
    q: Tensor | None = None
    if sketch:
        hs = chunked.chunk_products(_rademacher(n, sketch, generator, chunked))
        mixed = torch.einsum("k,kns->ns", w.to(hs), hs)
        q, _ = torch.linalg.qr(mixed)
        hq = chunked.chunk_products(q)
        exact = np.stack(
            [partition.sum_products(hq[c], q).sum(1).numpy() for c in range(k)]
        )
    z = _rademacher(n, probes, generator, chunked)
    if q is not None:
        z = z - q @ (q.T @ z)
        z = z - q @ (q.T @ z)
    hz = chunked.chunk_products(z)  # (K, n, probes)
    samples = np.stack([partition.sum_products(z, hz[c]).numpy() for c in range(k)])
    per_chunk = exact + samples.mean(axis=2)  # (K, B)
    mixed_samples = np.einsum("k,kbp->pb", chunked.weights, samples)  # (probes, B)
    stderrs = mixed_samples.std(axis=0, ddof=1) / np.sqrt(probes) * t_factor(probes - 1)
    estimates = tuple(
        linear_estimate(
            per_chunk[:, j],
            chunked.counts,
            samples=chunked.num_examples,
            numerical_stderr=float(stderrs[j]),
        )
        for j in range(len(partition))
    )
    return BlockDataTrace(
        names=tuple(partition.names),
        values=np.array([e.value for e in estimates]),
        stderrs=np.asarray(stderrs, dtype=np.float64),
        data=estimates,
        n_matvecs=probes + 2 * sketch,
        exact=False,
    )


def chunked_block_spectra(
    model: nn.Module,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    data: DataSplit,
    partition: BlockPartition,
    params: Sequence[Tensor],
    *,
    k: int = 1,
    tol: float = 1e-3,
    max_iter: int | None = None,
    generator: torch.Generator | None = None,
    chunks: int = 16,
    progress: Callable[[int, int, str], None] | None = None,
    **operator_options: Any,
) -> tuple[list[LanczosResult], list[DataEstimate]]:
    """Top-``k`` eigenvalues of every ``H_bb`` with the data error of the largest.

    Lanczos (as :func:`~sharpkit.curvature.block_estimates.block_spectra`,
    one run per block) on a :class:`~sharpkit.curvature.sampling.ChunkRecorder`
    of the chunked Hessian over the block's parameters: the same products,
    whose chunk parts give the delete-a-chunk Ritz values.

    Args:
        model: The model.
        loss_fn: ``loss(outputs, targets)``, mean reduction.
        data: The analysis set (consecutive chunks are cut from it).
        partition: The blocks, over the flat vector of ``params``.
        params: The parameters the partition is made of.
        k: Eigenvalues per block.
        tol: Relative tolerance of the bounds.
        max_iter: Most Lanczos steps per block.
        generator: Random source of the start vectors.
        chunks: ``K``.
        progress: ``progress(done, total, name)`` before each block.
        **operator_options: Passed to every chunk's operator (``bn_mode``...).

    Returns:
        The Lanczos results and the data estimate of each block's λ_max.

    Raises:
        ConfigError: Fewer than 2 chunks, or the record did not fit in memory.
    """
    from sharpkit.curvature.sampling import ChunkRecorder
    from sharpkit.curvature.uncertainty import spectral_estimate

    results, estimates = [], []
    for b, block in enumerate(partition.blocks):
        if progress is not None:
            progress(b, len(partition), block.name)
        chunked = ChunkedHessian.from_split(
            model, loss_fn, data, chunks=chunks,
            params=[params[i] for i in block.members], **operator_options,
        )  # fmt: skip
        rec = ChunkRecorder(chunked, gram=False)
        res = lanczos(
            rec, block.size, k=min(k, block.size), tol=tol, max_iter=max_iter,
            generator=generator, device=chunked.device, vector_dtype=chunked.dtype,
        )  # fmt: skip
        results.append(res)
        estimates.append(spectral_estimate(rec)[0])
    return results, estimates
