r"""Which examples a curvature number was measured on: the data's uncertainty.

A sharpness number is computed on ``N`` examples, but it stands for the same
quantity over the data distribution they were drawn from. The numerical error
bars of :mod:`~sharpkit.curvature.lanczos` and
:mod:`~sharpkit.curvature.stochastic` say how far a number is from the value on
*these* examples; this module says how far that is from the value over the
distribution (``data_stderr``), and removes what it can of the bias.

**Chunks.** The analysis set is cut into ``K`` chunks of (nearly) equal size
(:class:`ChunkedHessian`). The mean loss's Hessian is the size-weighted mean of
the chunks' Hessians, ``H = Σ_k w_k H_k`` (``w_k = n_k / N``), and a product
``H v`` is the same weighted sum of the chunk products ``H_k v``, which cost
together what one product over the whole set costs. Chunks of an exchangeable
(shuffled or randomly drawn) set are independent draws, so every quantity gets
a delete-a-chunk jackknife (Quenouille, 1956; Efron & Stein, 1981) from
the same products: the value ``θ_{-k}`` without chunk ``k``, the standard error
``sqrt((K-1)/K · Σ_k (θ_{-k} - θ̄)²)``, and the bias-corrected estimate
``K θ - (K-1) θ̄`` (the jackknife removes the ``1/N`` term of the bias).

* **Linear quantities** (the trace, a Rayleigh quotient ``vᵀHv`` of a fixed
  ``v``): the jackknife is the chunk-to-chunk standard error of the weighted
  mean and no bias exists (:func:`linear_estimate`, :func:`trace_estimate`).
* **‖H‖_F².** ``‖Ĥ‖_F²`` of a sample is biased upward by ``tr Σ / N`` (``Σ``
  the covariance of one example's Hessian); ``tr(H_a H_b)`` of two *different*
  chunks is unbiased for ``‖H_pop‖_F²``. :func:`frobenius_estimate` forms the
  ``K x K`` matrix ``G_ab = tr(H_a H_b)`` (exactly on a deflation basis, with
  shared probes on the rest; one chunk product per probe) and reports the
  U-statistic over chunk pairs ``a ≠ b`` (Hoeffding, 1948), its jackknife
  standard error, and, given the size ``M`` of the split the samples were
  drawn from, the estimate of that split's own (biased, ``tr Σ / M``) value.
* **λ_max.** ``E λ_max(Ĥ) >= λ_max(H_pop)`` (λ_max is convex in ``H``): the
  sample value is biased upward. The Lanczos products are recorded chunk by
  chunk (:class:`ChunkRecorder`, no extra product), which gives the projections
  ``Xᵀ H_k X`` of every chunk onto the Krylov space; λ_max of each
  delete-a-chunk Hessian is computed by Rayleigh-Ritz in that space
  (a lower bound on it, tight for the top of the spectrum that the space has
  converged on), and the jackknife gives the standard error and removes the
  ``1/N`` part of the bias (:func:`spectral_estimate`). With examples the
  Krylov space never saw (the rest of the split), the Rayleigh quotient of the
  converged vector on them is an unbiased estimate of ``vᵀ H_pop v <=
  λ_max(H_pop)``: a lower end that brackets the full-data value with the
  sample's λ_max, for one more product (:func:`heldout_rayleigh`).

Every standard error here is widened by ``t_{0.975, K-1}/1.96`` so that
``estimate ± 2·stderr`` is a 95 % interval with ``K`` chunks, as the
numerical standard errors of :mod:`~sharpkit.curvature.stochastic` are.
The quantity each number estimates is said in :class:`DataEstimate`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch
from torch import Tensor, nn

from sharpkit._data import DataSplit
from sharpkit.curvature.operator import HessianOperator

if TYPE_CHECKING:
    from sharpkit.curvature._chunkbatch import BatchedChunks
from sharpkit.curvature.stopping import t_factor
from sharpkit.errors import ConfigError

__all__ = [
    "DEFAULT_CHUNKS",
    "SELECTIONS",
    "ChunkOperator",
    "ChunkRecorder",
    "ChunkedHessian",
    "DataEstimate",
    "jackknife",
    "linear_estimate",
    "sample_indices",
    "samples_for_precision",
]

DEFAULT_CHUNKS = 16
"""Chunks of the analysis set: 15 degrees of freedom for the standard error
(its own relative error about ``1/sqrt(2·15)`` = 18 %, the t widening 9 %),
and chunks of 128 examples at the default 2 048 samples."""

SELECTIONS = ("first", "random")
"""How ``samples`` examples are chosen from a split (see :func:`sample_indices`)."""

_RECORD_BYTES = 1 << 30
"""Default memory :class:`ChunkRecorder` may use for its copy of the inputs."""


# --------------------------------------------------------------------------- selection


def sample_indices(
    size: int,
    samples: int | None,
    how: str = "first",
    *,
    seed: int = 0,
    targets: Tensor | None = None,
) -> Tensor:
    """Return the indices of ``samples`` examples of a split of ``size``.

    ``"first"`` takes ``0 .. samples-1``. ``"random"`` draws a uniform subset
    without replacement from ``seed``; with class-index ``targets`` (a 1-D
    integer tensor) it is stratified: each class gets its share of ``samples``
    rounded by largest remainder, drawn uniformly within the class, so the class
    proportions of the subset match the split's to one example. The indices are
    sorted, so the subset does not depend on the order examples are read in.

    Args:
        size: Examples in the split.
        samples: How many to take (``None``: all, in order).
        how: ``"first"`` or ``"random"``.
        seed: Seed of the random draw.
        targets: The split's targets; stratify by class when they are 1-D integers.

    Raises:
        ConfigError: An unknown ``how`` or a non-positive ``samples``.
    """
    if how not in SELECTIONS:
        msg = f"sample must be one of {', '.join(SELECTIONS)}, got {how!r}"
        raise ConfigError(msg)
    if samples is not None and samples < 1:
        msg = f"samples must be >= 1, got {samples}"
        raise ConfigError(msg)
    if samples is None or samples >= size:
        return torch.arange(size)
    if how == "first":
        return torch.arange(samples)
    gen = torch.Generator().manual_seed(int(seed))
    labels = targets
    if (
        labels is None
        or labels.dim() != 1
        or labels.is_floating_point()
        or labels.shape[0] != size
    ):
        return torch.randperm(size, generator=gen)[:samples].sort().values
    classes, counts = torch.unique(labels, return_counts=True)
    share = counts.double() * samples / size
    take = share.floor().long()
    short = samples - int(take.sum())
    if short > 0:  # largest remainders first, ties by class order
        order = torch.argsort(share - take, descending=True, stable=True)
        take[order[:short]] += 1
    picked = []
    for c, k in zip(classes.tolist(), take.tolist(), strict=True):
        members = torch.nonzero(labels == c).flatten()
        picked.append(members[torch.randperm(len(members), generator=gen)[:k]])
    return torch.cat(picked).sort().values


# --------------------------------------------------------------------------- operators


class ChunkOperator(Protocol):
    """What :class:`ChunkedHessian` needs of a chunk's operator.

    :class:`HessianOperator` has it; so can a dense matrix wrapper, in tests.
    """

    n: int

    @property
    def dtype(self) -> torch.dtype: ...  # noqa: D102

    @property
    def device(self) -> torch.device: ...  # noqa: D102

    @property
    def num_examples(self) -> int: ...  # noqa: D102

    def matvec(self, v: Tensor) -> Tensor: ...  # noqa: D102


class ChunkedHessian:
    """The Hessian of the mean loss as the weighted sum of its chunks' Hessians.

    ``H v = Σ_k w_k H_k v`` with ``H_k`` the Hessian of the mean loss over chunk
    ``k`` and ``w_k = n_k / N``: the same operator as one
    :class:`HessianOperator` over all the data, whose products also give every
    chunk's product (:meth:`chunk_products`) at the same cost.

    Args:
        operators: One operator per chunk (disjoint data), e.g.
            :class:`HessianOperator`; any :class:`ChunkOperator`.
        weights: ``w_k``; default: each operator's example count over the total.

    Raises:
        ConfigError: Fewer than two chunks, or operators of different sizes.
    """

    def __init__(
        self, operators: Sequence[ChunkOperator], weights: Sequence[float] | None = None
    ) -> None:
        if len(operators) < 2:
            msg = (
                "need at least 2 chunks for a data standard error, "
                f"got {len(operators)}"
            )
            raise ConfigError(msg)
        if len({op.n for op in operators}) != 1:
            msg = "the chunk operators differ in size; give operators of one model"
            raise ConfigError(msg)
        self.operators = list(operators)
        counts = np.array(
            [op.num_examples for op in operators] if weights is None else weights,
            dtype=np.float64,
        )
        self.counts = counts
        self.weights = counts / counts.sum()
        self.n = operators[0].n
        self.calls = 0  # products of the whole operator (a block counts its columns)
        self.batched: BatchedChunks | None = None  # set by from_split

    @classmethod
    def from_split(
        cls,
        model: nn.Module,
        loss_fn: Callable[[Tensor, Tensor], Tensor],
        data: DataSplit,
        *,
        chunks: int = DEFAULT_CHUNKS,
        memory_budget: int | None = None,
        method: str = "auto",
        batched: bool = False,
        **operator_options: Any,
    ) -> ChunkedHessian:
        """Cut ``data`` into ``chunks`` consecutive, nearly equal chunks.

        The first chunk's operator resolves ``method="auto"`` (with a share
        ``1/chunks`` of ``memory_budget``) and the others reuse its choice, so
        the set-up is measured once. With ``batched=True``, where that choice
        is the kept graph, the chunks' products come from one backward pass over
        all of them (:class:`~sharpkit.curvature._chunkbatch.BatchedChunks`)
        when the model, loss and data allow it, else from one operator per
        chunk (the same products, to rounding). Off by default: on the 2-core
        CPU measured (BN-MLP, 2 048 images, 16 chunks) a batched product cost
        1.51-1.60 plain products against 1.61-1.87 for the loop, but its first
        build in a process costs about 1 s of one-off ``vmap`` set-up (0.15 s
        after), more than it saves over a λ_max run of ~14 products.

        Args:
            model: The model.
            loss_fn: ``loss(outputs, targets)``, mean reduction.
            data: The analysis set (shuffle it first if its order is not random).
            chunks: ``K``; capped at the number of examples.
            memory_budget: Bytes all the kept gradient graphs may use together.
            method: HVP method, as for :class:`HessianOperator`.
            batched: Try the one-pass products (default: one operator per chunk).
            **operator_options: Passed to every :class:`HessianOperator`
                (``bn_mode``, ``dtype``, ``device``, ``params``...).

        Raises:
            ConfigError: Fewer than 2 examples or chunks, or ``bn_mode="train"``
                (batch statistics make the chunks' Hessians depend on the chunking).
        """
        n = len(data)
        k = min(int(chunks), n)
        if k < 2:
            msg = (
                f"a data standard error needs at least 2 chunks of at least one "
                f"example; got {n} examples and chunks={chunks}"
            )
            raise ConfigError(msg)
        if operator_options.get("bn_mode", "eval") == "train":
            msg = (
                "data standard errors need examples that do not interact, but with "
                "bn_mode='train' each chunk's batch statistics enter its Hessian; "
                "use bn_mode='eval'"
            )
            raise ConfigError(msg)
        bounds = [n * i // k for i in range(k + 1)]
        share = None if memory_budget is None else max(1, memory_budget // k)
        ops: list[HessianOperator] = []
        for i in range(k):
            part = data.take(torch.arange(bounds[i], bounds[i + 1]))
            ops.append(
                HessianOperator(
                    model,
                    loss_fn,
                    part,
                    batch_size=max(1, len(part)),
                    method=method,
                    memory_budget=share,
                    **operator_options,
                )
            )
            if i == 0 and method == "auto":
                method = ops[0].method.split("+")[-1]
            if "params" not in operator_options:
                model = ops[0].model  # a converted copy is shared, not copied again
        out = cls(ops)
        if batched and ops[0].method == "graph" and not _converts(operator_options):
            out.batched = _try_batched(
                ops[0].model, loss_fn, data, k, memory_budget, operator_options
            )
        return out

    @property
    def dtype(self) -> torch.dtype:
        """Dtype of vectors and products."""
        return self.operators[0].dtype

    @property
    def device(self) -> torch.device:
        """Device of vectors and products."""
        return self.operators[0].device

    @property
    def num_examples(self) -> int:
        """Examples over all chunks."""
        return int(sum(op.num_examples for op in self.operators))

    @property
    def chunks(self) -> int:
        """``K``."""
        return len(self.operators)

    @property
    def hvp_count(self) -> int:
        """Products of the whole operator so far (each is one product per chunk)."""
        return self.calls

    def chunk_products(self, v: Tensor) -> Tensor:
        """Return ``H_k v`` for every chunk: ``(K, n)``, or ``(K, n, b)`` for blocks."""
        if self.batched is not None:
            parts = self.batched.products(v)
        else:
            parts = torch.stack([op.matvec(v) for op in self.operators])
        self.calls += 1 if v.dim() == 1 else int(v.shape[1])
        return parts

    def combine(self, parts: Tensor) -> Tensor:
        """Return ``Σ_k w_k parts[k]``."""
        w = torch.as_tensor(self.weights, dtype=parts.dtype, device=parts.device)
        out: Tensor = torch.tensordot(w, parts, dims=1)
        return out

    def matvec(self, v: Tensor) -> Tensor:
        """Return ``H v`` (a vector or a block)."""
        return self.combine(self.chunk_products(v))

    __matmul__ = matvec

    def __call__(self, v: Tensor) -> Tensor:
        """Alias of :meth:`matvec`."""
        return self.matvec(v)


def _converts(options: dict[str, Any]) -> bool:
    """Whether the operators convert or restrict the model (not batched then)."""
    return any(options.get(k) is not None for k in ("params", "dtype", "device"))


def _try_batched(
    model: nn.Module,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    data: DataSplit,
    chunks: int,
    memory_budget: int | None,
    options: dict[str, Any],
) -> BatchedChunks | None:
    """The one-pass chunk products, or ``None`` where they do not apply."""
    from sharpkit.curvature._batching import default_budget
    from sharpkit.curvature._chunkbatch import BatchedChunks

    if memory_budget is None:  # as each chunk's operator would have
        first = next(iter(model.parameters()), None)
        device = first.device if first is not None else torch.device("cpu")
        memory_budget = default_budget(device)
    try:
        return BatchedChunks(
            model,
            loss_fn,
            data,
            chunks,
            bn_mode=options.get("bn_mode", "eval"),
            memory_budget=memory_budget,
            allow_tf32=bool(options.get("allow_tf32", False)),
        )
    except (ValueError, RuntimeError, NotImplementedError, TypeError):
        # vmap cannot run the model, a weighted loss, a graph over budget...
        return None


class ChunkRecorder:
    """A matvec that records what every product says about every chunk.

    Pass it wherever a matvec goes (:func:`~sharpkit.curvature.lanczos`): it
    returns ``H x`` and keeps, for the inputs ``x_1, x_2, ...`` it was given,
    ``C_k[i, j] = x_iᵀ H_k x_j`` for every chunk ``k`` (a ``K x m x m`` array)
    and, with ``gram=True``, the cross-chunk Gram ``G[a, b] = Σ_i (H_a x_i)ᵀ(H_b
    x_i)`` (``K² n`` multiply-adds per input, about 4 % of a product of a
    BN-MLP: only ‖H‖_F needs it). That takes a copy of the inputs (``m``
    vectors); past ``max_bytes`` it stops recording (:attr:`complete` turns
    ``False``) and only computes products.

    Args:
        chunked: The chunked operator.
        max_bytes: Memory for the copy of the inputs (default 1 GiB).
        gram: Also accumulate the Gram (:attr:`gram` is ``None`` without).
    """

    def __init__(
        self,
        chunked: ChunkedHessian,
        max_bytes: int | None = None,
        *,
        gram: bool = True,
    ) -> None:
        self.chunked = chunked
        self.n = chunked.n
        self.dtype = chunked.dtype
        self.device = chunked.device
        self.max_bytes = _RECORD_BYTES if max_bytes is None else int(max_bytes)
        self._buf: Tensor | None = None  # rows 0..m-1: the inputs, grown by doubling
        self._m = 0
        self._rows: list[Tensor] = []  # row j: (K, j+1) values x_iᵀ H_k x_j, i <= j
        self.gram: Tensor | None = (
            torch.zeros(chunked.chunks, chunked.chunks, dtype=torch.float64)
            if gram
            else None
        )
        self.complete = True

    def __call__(self, v: Tensor) -> Tensor:
        """Return ``H v`` and record the chunks' products."""
        parts = self.chunked.chunk_products(v)
        if self.complete:
            cols = v.reshape(self.n, -1)
            blocks = parts.reshape(parts.shape[0], self.n, -1)
            for j in range(cols.shape[1]):
                self._record(cols[:, j], blocks[:, :, j])
        return self.chunked.combine(parts)

    def _record(self, x: Tensor, hx: Tensor) -> None:
        size = x.numel() * x.element_size()
        if (self._m + 1) * size > self.max_bytes:
            self.complete = False
            self._buf, self._m, self._rows = None, 0, []
            return
        if self._buf is None or self._m == self._buf.shape[0]:
            cap = min(max(8, 2 * self._m), max(1, self.max_bytes // size))
            grown = torch.empty(cap, self.n, dtype=x.dtype, device=x.device)
            if self._buf is not None:
                grown[: self._m] = self._buf[: self._m]
            self._buf = grown
        self._buf[self._m] = x.detach()
        self._m += 1
        self._rows.append((hx @ self._buf[: self._m].T).double().cpu())
        if self.gram is not None:
            self.gram += (hx @ hx.T).double().cpu()

    @property
    def m(self) -> int:
        """Inputs recorded."""
        return self._m

    @property
    def inputs(self) -> Tensor:
        """The recorded inputs as rows, ``(m, n)`` (a view; do not modify)."""
        if self._buf is None:
            return torch.empty(0, self.n, dtype=self.dtype, device=self.device)
        return self._buf[: self._m]

    def projections(self) -> Tensor:
        """``C_k = Xᵀ H_k X`` for every chunk, symmetrised: ``(K, m, m)`` float64."""
        m, k = self.m, self.chunked.chunks
        c = torch.zeros(k, m, m, dtype=torch.float64)
        for j, row in enumerate(self._rows):
            c[:, : j + 1, j] = row
            c[:, j, : j + 1] = row
        return c

    def orthonormal(self, tol: float = 1e-8) -> tuple[Tensor, Tensor]:
        """Return an orthonormal basis of the recorded inputs and the chunks in it.

        ``(B, T)``: the coefficients ``B`` of an orthonormal basis ``X B`` of the
        recorded inputs' span, and ``T_k = Bᵀ C_k B``, ``(K, r, r)``.
        """
        x = self.inputs.double()
        s = x @ x.T
        evals, evecs = torch.linalg.eigh(s)
        keep = evals > tol * evals.max()
        b = evecs[:, keep] / evals[keep].sqrt()
        c = self.projections()
        return b, b.T @ c @ b


# --------------------------------------------------------------------------- results


@dataclass(frozen=True, kw_only=True)
class DataEstimate:
    """A curvature quantity as an estimate over the data distribution.

    Attributes:
        value: The quantity on these samples (what the numerical bound or
            standard error is about).
        estimate: The estimate of the same quantity over the data distribution
            the samples were drawn from (bias-reduced where a bias exists; equal
            to ``value`` for linear quantities), or over the split of
            ``population`` examples when one was given.
        stderr: The standard error of ``estimate`` from the chunk-to-chunk
            spread, widened for ``K - 1`` degrees of freedom (``estimate ±
            2·stderr`` is a 95 % interval).
        method: How (``"jackknife-linear"``, ``"jackknife-ritz"``,
            ``"u-statistic"``).
        chunks: ``K``.
        samples: Examples measured on.
        numerical_stderr: The probes' standard error of ``value`` (0 when exact).
        lower: A lower end for the full-data value (λ_max: the held-out
            Rayleigh quotient), ``None`` where none was computed.
        lower_stderr: Its standard error.
        per_chunk: The jackknife's delete-a-chunk values (or the chunks' values
            for linear quantities).
        tail_index: The Pareto shape ``k̂`` of the largest per-example terms
            (:func:`~sharpkit.curvature.uncertainty.tail_index`), ``None``
            where no per-example terms were computed.
        reliable: ``False`` when ``tail_index`` says the terms are too
            heavy-tailed for ``stderr`` to be trusted (see
            :func:`~sharpkit.curvature.uncertainty.tail_limit`).
    """

    value: float
    estimate: float
    stderr: float
    method: str
    chunks: int
    samples: int
    numerical_stderr: float = 0.0
    lower: float | None = None
    lower_stderr: float | None = None
    per_chunk: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)
    tail_index: float | None = None
    reliable: bool = True

    @property
    def bias(self) -> float:
        """``value - estimate``: the estimated bias of the sample value."""
        return self.value - self.estimate


def jackknife(full: float, deleted: np.ndarray) -> tuple[float, float]:
    """Return the jackknife ``(bias-corrected estimate, stderr)``.

    ``K θ - (K-1) mean(θ_{-k})`` and ``sqrt((K-1)/K Σ (θ_{-k} - mean)²)``,
    the standard error widened by ``t_{0.975, K-1}/1.96``.

    Args:
        full: ``θ`` on all chunks.
        deleted: ``θ_{-k}`` for each chunk ``k``.
    """
    k = len(deleted)
    if k < 2:
        msg = f"the jackknife needs at least 2 chunks, got {k}"
        raise ConfigError(msg)
    mean = float(np.mean(deleted))
    var = (k - 1) / k * float(np.sum((deleted - mean) ** 2))
    return k * full - (k - 1) * mean, math.sqrt(var) * t_factor(k - 1)


def linear_estimate(
    values: Sequence[float] | np.ndarray,
    weights: Sequence[float] | np.ndarray | None = None,
    *,
    method: str = "jackknife-linear",
    samples: int = 0,
    numerical_stderr: float = 0.0,
) -> DataEstimate:
    """A weighted mean of per-chunk values with its data standard error.

    For a linear quantity: a trace, a Rayleigh quotient of a fixed vector.

    Args:
        values: The quantity on each chunk.
        weights: Chunk weights (default equal); normalised here.
        method: The name to report.
        samples: Examples measured on (reported).
        numerical_stderr: The estimator's own standard error (reported).
    """
    v = np.asarray(values, dtype=np.float64)
    w = (
        np.full(len(v), 1.0)
        if weights is None
        else np.asarray(weights, dtype=np.float64)
    )
    w = w / w.sum()
    full = float(w @ v)
    deleted = (full - w * v) / (1.0 - w)
    _, se = jackknife(full, deleted)
    return DataEstimate(
        value=full,
        estimate=full,
        stderr=se,
        method=method,
        chunks=len(v),
        samples=samples,
        numerical_stderr=numerical_stderr,
        per_chunk=v,
    )


def samples_for_precision(estimate: DataEstimate, precision: float) -> int:
    """The examples that would bring ``stderr / |estimate|`` down to ``precision``.

    A data standard error falls as ``1/sqrt(N)``, so ``N · (r / precision)²``
    with ``r`` the relative standard error measured on ``N`` examples (rounded
    up; at least ``N`` when the precision is already met, never fewer than
    measured). The measured ``r`` is itself uncertain (about ``1/sqrt(2(K-1))``
    relative), so the answer is a planning figure, not a guarantee: measure
    again at that size.

    Args:
        estimate: A data estimate measured on ``estimate.samples`` examples.
        precision: The relative standard error wanted, e.g. ``0.02``.

    Raises:
        ConfigError: ``precision`` is not positive, or the estimate is 0.
    """
    if not precision > 0:
        msg = f"precision must be > 0 (e.g. 0.02 for 2 %), got {precision}"
        raise ConfigError(msg)
    if estimate.estimate == 0:
        msg = "the estimate is 0: no relative precision can be reached"
        raise ConfigError(msg)
    rel = estimate.stderr / abs(estimate.estimate)
    return max(estimate.samples, math.ceil(estimate.samples * (rel / precision) ** 2))
