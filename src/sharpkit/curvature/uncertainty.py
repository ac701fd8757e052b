r"""Data standard errors of λ_max, the trace and ‖H‖_F from a chunked Hessian.

The estimators of :mod:`~sharpkit.curvature.sampling`'s method, one per
quantity; each returns a :class:`~sharpkit.curvature.sampling.DataEstimate`
saying what the sample value is, what the data-distribution estimate is, and
its standard error. Costs, in products of the whole operator:

* :func:`spectral_estimate`: none beyond the Lanczos run it reads (through a
  :class:`~sharpkit.curvature.sampling.ChunkRecorder`); :func:`heldout_rayleigh`
  one product on the held-out examples.
* :func:`trace_estimate`: one per probe (the Lanczos space, when given, is
  deflated for free).
* :func:`frobenius_estimate`: one per probe, likewise.
"""

from __future__ import annotations

import itertools
import math
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from sharpkit._data import DataSplit
from sharpkit.curvature._examples import example_rayleigh
from sharpkit.curvature.sampling import (
    ChunkedHessian,
    ChunkRecorder,
    DataEstimate,
    jackknife,
    linear_estimate,
)
from sharpkit.curvature.stopping import t_factor
from sharpkit.errors import ConfigError

if TYPE_CHECKING:
    from sharpkit.curvature.ggn import CrossEntropyForm

__all__ = [
    "exact_trace_estimate",
    "example_estimate",
    "example_rayleigh",
    "frobenius_estimate",
    "heldout_rayleigh",
    "spectral_estimate",
    "tail_index",
    "tail_limit",
    "trace_estimate",
]

_ORTHONORMAL_TOL = 1e-4
"""Largest ``|XᵀX - I|`` entry for which recorded inputs count as an
orthonormal basis (Lanczos keeps its basis orthonormal to working precision;
float32 vectors reach about 1e-6)."""


_BLOCK_BYTES = 256 << 20
"""Memory of the chunk products of one block of probes."""


def _top(t: Tensor, k: int) -> np.ndarray:
    """The ``k`` largest eigenvalues of a symmetric matrix, descending."""
    vals = torch.linalg.eigvalsh(t).flip(0)
    out: np.ndarray = vals[:k].numpy()
    return out


def spectral_estimate(
    recorder: ChunkRecorder,
    *,
    k: int = 1,
    population: int | None = None,
) -> list[DataEstimate]:
    """λ_1..λ_k over the data, from the recorded Krylov space, with jackknife errors.

    The Rayleigh-Ritz values of ``Σ_{l≠k} w_l H_l / (1 - w_k)`` in the space of
    the recorded inputs are the delete-a-chunk values; the jackknife gives the
    standard error and the bias-corrected estimate of λ over the distribution.
    With ``population`` (the size ``M`` of the split the ``N`` samples came
    from) the estimate is of the split's own λ instead: the removed bias is
    scaled back by ``N/M`` (the bias of a sample λ falls as ``1/N``).

    Args:
        recorder: The matvec a Lanczos run used (it must be complete).
        k: How many of the top eigenvalues.
        population: ``M``, or ``None`` for the data distribution.

    Returns:
        One :class:`DataEstimate` per eigenvalue, largest first.

    Raises:
        ConfigError: The recorder dropped its record (memory) or saw fewer
            than ``k`` inputs.
    """
    if not recorder.complete or recorder.m < k:
        msg = (
            "the Lanczos run was not recorded (its inputs exceeded the recorder's "
            "memory, or fewer than k products); use heldout_rayleigh instead"
        )
        raise ConfigError(msg)
    chunked = recorder.chunked
    _, t_chunks = recorder.orthonormal()
    w = torch.as_tensor(chunked.weights, dtype=torch.float64)
    full_t = torch.tensordot(w, t_chunks, dims=1)
    full = _top(full_t, k)
    deleted = np.stack(
        [
            _top((full_t - w[i] * t_chunks[i]) / (1.0 - w[i]), k)
            for i in range(chunked.chunks)
        ]
    )
    n = chunked.num_examples
    out = []
    for j in range(len(full)):
        est, se = jackknife(float(full[j]), deleted[:, j])
        if population is not None:
            est = est + (float(full[j]) - est) * n / max(population, n)
        out.append(
            DataEstimate(
                value=float(full[j]),
                estimate=est,
                stderr=se,
                method="jackknife-ritz",
                chunks=chunked.chunks,
                samples=n,
                per_chunk=deleted[:, j],
            )
        )
    return out


def _gpd_shape(x: np.ndarray) -> float:
    """The shape ``k`` of a generalized Pareto fit to exceedances ``x > 0``.

    Zhang & Stephens (2009)'s empirical-Bayes estimate with the weakly
    informative prior toward 0.5 of Vehtari et al. (2024), as in their PSIS
    (the profile likelihood over a grid of ``b = -k/σ``, averaged with weights).
    """
    x = np.sort(x)
    n = len(x)
    m = 30 + int(math.sqrt(n))
    b = 1.0 - np.sqrt(m / (np.arange(1, m + 1) - 0.5))
    b = b / (3.0 * x[int(n / 4 + 0.5) - 1]) + 1.0 / x[-1]
    k = np.log1p(-b[:, None] * x).mean(axis=1)
    profile = n * (np.log(-b / k) - k - 1.0)
    weights = 1.0 / np.exp(profile - profile[:, None]).sum(axis=1)
    keep = weights >= 10 * np.finfo(float).eps
    weights = weights[keep] / weights[keep].sum()
    b_post = float(np.sum(b[keep] * weights))
    k_post = float(np.log1p(-b_post * x).mean())
    return (n * k_post + 10 * 0.5) / (n + 10)


def tail_index(values: np.ndarray | Tensor) -> float:
    """How heavy the upper tail of per-example terms is: a Pareto shape ``k̂``.

    The largest ``M = min(N/5, 3·sqrt(N))`` values, less the next one, are fit
    with a generalized Pareto distribution (as Vehtari et al., 2024, "Pareto
    smoothed importance sampling", JMLR 25, diagnose a mean of importance
    weights). A tail with shape ``k`` has ``1/k`` finite moments: ``k < 0.5``
    a finite variance, so the central-limit standard error of the mean holds;
    above :func:`tail_limit` the sample mean converges too slowly for ``N``
    examples to show it (a few examples carry the mean, and a draw without them
    underestimates it by more than its standard error says). ``nan`` for fewer
    than 10 examples or a flat tail.

    Args:
        values: ``(N,)`` per-example terms (e.g. ``vᵀH_i v``).
    """
    q = np.sort(np.asarray(values, dtype=np.float64).reshape(-1))
    n = len(q)
    m = int(min(0.2 * n, 3 * math.sqrt(n)))
    if n < 10 or m < 5 or not np.all(np.isfinite(q)):
        return math.nan
    tail = q[-m:] - q[-m - 1]
    if not tail[-1] > 0 or np.count_nonzero(tail) < 5:
        return math.nan
    return _gpd_shape(np.maximum(tail, tail[tail > 0].min() * 1e-12))


def tail_limit(n: int) -> float:
    """The largest :func:`tail_index` at which a mean of ``n`` terms is trusted.

    ``min(1 - 1/log10(n), 0.7)`` (Vehtari et al., 2024, sec. 3: above it the
    error of a mean of ``n`` draws is not reliably estimated from them; 0.7 is
    their limit for any practical ``n``). 0.5 for ``n <= 100``.
    """
    if n <= 100:
        return 0.5
    return min(1.0 - 1.0 / math.log10(n), 0.7)


def example_estimate(
    terms: np.ndarray | Tensor, *, method: str = "per-example"
) -> DataEstimate:
    """A mean of per-example terms with its data standard error and tail check.

    For a Rayleigh quotient ``vᵀHv/vᵀv`` of a fixed ``v`` the terms are the
    examples' ``vᵀH_i v/vᵀv``; for λ_max with ``v`` its eigenvector they are
    its influence function (``dλ = vᵀ dH v``, Hellmann-Feynman), so the
    standard error of their mean is λ's infinitesimal-jackknife standard error
    (Jaeckel, 1972; Efron, 1982): ``sd/sqrt(N)``, widened by ``t_{0.975,N-1}``.
    :attr:`DataEstimate.reliable` is ``False`` when :func:`tail_index` exceeds
    :func:`tail_limit`: the standard error is then not to be trusted.

    Args:
        terms: ``(N,)`` per-example terms, ``N >= 2``.
        method: The name to report.

    Raises:
        ConfigError: Fewer than 2 terms.
    """
    q = np.asarray(terms, dtype=np.float64).reshape(-1)
    n = len(q)
    if n < 2:
        msg = f"a data standard error needs at least 2 examples, got {n}"
        raise ConfigError(msg)
    mean = float(q.mean())
    se = float(q.std(ddof=1)) / math.sqrt(n) * t_factor(n - 1)
    k = tail_index(q)
    return DataEstimate(
        value=mean,
        estimate=mean,
        stderr=se,
        method=method,
        chunks=n,
        samples=n,
        per_chunk=np.sort(q)[::-1][:16].copy(),
        tail_index=None if math.isnan(k) else k,
        reliable=not k > tail_limit(n),
    )


def heldout_rayleigh(heldout: ChunkedHessian, vector: Tensor) -> DataEstimate:
    """The Rayleigh quotient ``vᵀHv / vᵀv`` on examples that did not choose ``v``.

    For a ``v`` found on other examples (the converged Lanczos vector), this
    is an unbiased estimate of ``vᵀ H_pop v / vᵀv``, which is at most
    ``λ_max(H_pop)``: a lower end for the full-data λ_max, whose upper end the
    sample λ_max gives in expectation. One product on ``heldout``.

    Args:
        heldout: A chunked operator on examples not used to find ``vector``.
        vector: ``(n,)``.
    """
    v = vector.to(device=heldout.device, dtype=heldout.dtype)
    parts = heldout.chunk_products(v)
    per_chunk = (parts @ v).double().cpu().numpy() / float(v.double() @ v.double())
    return linear_estimate(
        per_chunk,
        heldout.weights,
        method="heldout-rayleigh",
        samples=heldout.num_examples,
    )


def _deflation(recorder: ChunkRecorder | None) -> tuple[Tensor | None, Tensor | None]:
    """The recorded inputs as an orthonormal basis, and the chunks' traces on it.

    ``Q`` ``(m, n)`` and ``tr(Qᵀ H_k Q)``, or ``(None, None)`` when the inputs
    are not orthonormal.
    """
    if recorder is None or not recorder.complete or recorder.m == 0:
        return None, None
    x = recorder.inputs
    gram = (x.double() @ x.double().T).cpu()
    if float((gram - torch.eye(len(x), dtype=torch.float64)).abs().max()) > (
        _ORTHONORMAL_TOL
    ):
        return None, None
    c = recorder.projections()
    return x, torch.diagonal(c, dim1=1, dim2=2).sum(1)


def _probe_blocks(
    n: int,
    probes: int,
    q: Tensor | None,
    generator: torch.Generator | None,
    dtype: torch.dtype,
    device: torch.device,
    chunks: int,
) -> list[Tensor]:
    """Rademacher probes projected off ``Q``, as ``(n, b)`` blocks.

    A block's chunk products (``chunks x n x b`` numbers) take at most
    ``_BLOCK_BYTES``.
    """
    size = torch.empty((), dtype=dtype).element_size()
    block = max(1, min(probes, _BLOCK_BYTES // max(1, chunks * n * size)))
    out = []
    for lo in range(0, probes, block):
        b = min(block, probes - lo)
        z = torch.randint(0, 2, (n, b), generator=generator).to(dtype) * 2 - 1
        z = z.to(device)
        if q is not None:
            qd = q.to(dtype)
            z = z - qd.T @ (qd @ z)
        out.append(z)
    return out


def _check_probes(probes: int) -> None:
    if probes < 2:
        msg = f"probes must be >= 2 for a standard error, got {probes}"
        raise ConfigError(msg)


def trace_estimate(
    chunked: ChunkedHessian,
    *,
    recorder: ChunkRecorder | None = None,
    probes: int = 32,
    generator: torch.Generator | None = None,
) -> DataEstimate:
    """The trace, chunk by chunk: deflated Hutchinson with shared probes.

    ``tr H_k = tr(Qᵀ H_k Q) + E uᵀ H_k u`` with ``u = Pz`` (``Q`` the
    recorded Lanczos basis when ``recorder`` has an orthonormal one, else none).
    The trace is linear in the chunks: its data standard error is their
    spread (each chunk's probe noise included, so it errs high).

    Args:
        chunked: The chunked operator.
        recorder: A recorder whose inputs deflate the probes (free products).
        probes: Rademacher probes (one product each).
        generator: Random source.

    Raises:
        ConfigError: Fewer than 2 probes.
    """
    _check_probes(probes)
    q, exact = _deflation(recorder)
    k = chunked.chunks
    per_probe: list[Tensor] = []
    for z in _probe_blocks(
        chunked.n, probes, q, generator, chunked.dtype, chunked.device, chunked.chunks
    ):
        parts = chunked.chunk_products(z)  # (K, n, b)
        per_probe.append((parts * z).sum(1).double().cpu())  # (K, b)
    samples = torch.cat(per_probe, dim=1)  # (K, probes)
    chunk_traces = samples.mean(1) + (exact if exact is not None else torch.zeros(k))
    totals = torch.as_tensor(chunked.weights) @ samples
    numerical = float(totals.std()) / math.sqrt(probes) * t_factor(probes - 1)
    return linear_estimate(
        chunk_traces.numpy(),
        chunked.weights,
        samples=chunked.num_examples,
        numerical_stderr=numerical,
    )


def exact_trace_estimate(
    model: nn.Module,
    data: DataSplit,
    *,
    chunks: int = 16,
    loss: Any = None,
    batch_size: int = 512,
) -> DataEstimate:
    """The exact trace (Gauss-Newton identity) chunk by chunk, with its data stderr.

    One :func:`~sharpkit.curvature.ggn.ggn_trace` pass over the data (the
    cost of the plain exact trace: the per-example terms it computes anyway
    are summed per chunk instead of per batch), cut into ``chunks`` consecutive
    chunks; each chunk's trace is its examples' contributions over their
    weights in the loss. The caller checks that the identity ``tr H = tr G``
    holds, as for one call.

    Args:
        model: The network, in eval mode.
        data: The analysis set.
        chunks: ``K``.
        loss: A :class:`~sharpkit.curvature.ggn.CrossEntropyForm` or ``None``.
        batch_size: Examples per forward pass (does not change the result).

    Raises:
        ConfigError: Fewer than 2 chunks of at least one example.
    """
    from sharpkit.curvature.ggn import CrossEntropyForm, ggn_trace

    n = len(data)
    k = min(int(chunks), n)
    if k < 2:
        msg = f"a data standard error needs at least 2 chunks; got {n} examples"
        raise ConfigError(msg)
    form = loss if loss is not None else CrossEntropyForm()
    parts: list[Tensor] = []
    ggn_trace(model, data, batch_size=batch_size, loss=form, per_example=parts)
    contrib = torch.cat(parts)
    weight = _example_weights(form, data.targets)
    bounds = [n * i // k for i in range(k + 1)]
    edges = list(itertools.pairwise(bounds))
    sums = np.array([float(contrib[a:b].sum()) for a, b in edges])
    counts = np.array([float(weight[a:b].sum()) for a, b in edges])
    values = np.divide(sums, counts, out=np.zeros(k), where=counts > 0)
    return linear_estimate(values, counts, samples=n)


def _example_weights(form: CrossEntropyForm, targets: Tensor) -> Tensor:
    """Each example's weight in a mean cross-entropy (what the mean divides by).

    The sum over its positions of ``w_{y}`` (1 without class weights, 0 where
    ``ignore_index``) for class indices; its number of positions for
    probabilities (``(B, C, ...)`` targets).
    """
    y = targets
    b = y.shape[0]
    if y.is_floating_point():
        return torch.full((b,), float(y[0, 0].numel()), dtype=torch.float64)
    flat = y.reshape(b, -1)
    keep = flat != form.ignore_index
    if form.weight is None:
        return keep.sum(1).to(torch.float64)
    w = form.weight.detach().to(torch.float64).cpu()
    safe = torch.where(keep, flat, torch.zeros_like(flat)).cpu()
    return (w[safe] * keep.cpu()).sum(1)


def _u_value(g: np.ndarray, counts: np.ndarray, population: int | None) -> float:
    """The U-statistic of ``tr H_pop²`` over chunk pairs.

    With ``population``, the split's own ``‖H‖_F²`` (``U + (V - U) N / M``).
    """
    w = counts / counts.sum()
    off = np.outer(w, w)
    np.fill_diagonal(off, 0.0)
    u = float((off * g).sum() / off.sum())
    if population is None:
        return u
    v = float(w @ g @ w)
    n = float(counts.sum())
    return u + (v - u) * n / max(float(population), n)


def frobenius_estimate(
    chunked: ChunkedHessian,
    *,
    recorder: ChunkRecorder | None = None,
    probes: int = 16,
    generator: torch.Generator | None = None,
    population: int | None = None,
) -> DataEstimate:
    """‖H‖_F over the data: a U-statistic over chunk pairs with a jackknife error.

    ``G_ab = tr(H_a H_b) = Σ_q (H_a q)ᵀ(H_b q) + E (H_a u)ᵀ(H_b u)`` over the
    orthonormal recorded inputs ``q`` and ``u = Pz``; ``‖Ĥ‖_F² = wᵀGw`` is the
    sample value (biased up by ``tr Σ / N``) and the mean of ``G_ab`` over
    ``a ≠ b`` is unbiased for ``‖H_pop‖_F²``. The delete-a-chunk values of its
    square root give the standard error.

    Args:
        chunked: The chunked operator.
        recorder: A recorder (its Gram is the exact part; one without a
            Gram, or ``None``: no deflation).
        probes: Rademacher probes for the rest (one product each).
        generator: Random source.
        population: Size ``M`` of the split the samples came from, to estimate
            that split's value instead of the distribution's.

    Raises:
        ConfigError: Fewer than 2 probes.
    """
    _check_probes(probes)
    q, _ = _deflation(recorder if recorder and recorder.gram is not None else None)
    k = chunked.chunks
    g = np.zeros((k, k))
    if q is not None and recorder is not None and recorder.gram is not None:
        g += recorder.gram.numpy()
    per_probe = []
    w = chunked.weights
    for z in _probe_blocks(
        chunked.n, probes, q, generator, chunked.dtype, chunked.device, chunked.chunks
    ):
        # (b, K, n) contiguous: one batched Gram per probe, in the products'
        # dtype (float32: about 1e-5 relative over 1e6 terms, far below the spread)
        cols = chunked.chunk_products(z).permute(2, 0, 1).contiguous()
        grams = torch.bmm(cols, cols.transpose(1, 2)).double().cpu().numpy()
        for gz in grams:
            per_probe.append(float(w @ gz @ w))
            g += gz / probes
    counts = chunked.counts
    value_sq = float(w @ g @ w)
    est_sq = _u_value(g, counts, population)
    keep = [np.delete(np.arange(k), i) for i in range(k)]
    deleted = np.array(
        [
            math.sqrt(max(_u_value(g[np.ix_(s, s)], counts[s], population), 0.0))
            for s in keep
        ]
    )
    estimate = math.sqrt(max(est_sq, 0.0))
    _, se = jackknife(estimate, deleted)
    value = math.sqrt(max(value_sq, 0.0))
    spread = float(np.std(per_probe, ddof=1)) / math.sqrt(probes) * t_factor(probes - 1)
    return DataEstimate(
        value=value,
        estimate=estimate,
        stderr=se,
        method="u-statistic",
        chunks=k,
        samples=chunked.num_examples,
        numerical_stderr=spread / (2 * value) if value > 0 else 0.0,
        per_chunk=deleted,
    )
