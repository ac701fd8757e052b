r"""Curvature per block: ``λ_max(H_bb)``, ``tr H_bb``, ``‖H_bb‖_F``, where ``v₁`` lives.

For a partition of the parameters into blocks (:mod:`sharpkit.curvature.blocks`)
the Hessian splits into blocks ``H_bc``; the diagonal ones, ``H_bb``, are the
curvature in the parameters of block ``b`` with the others held fixed.

* **Top eigenvalues** of each ``H_bb`` by Lanczos (:func:`block_spectra`), with
  the same bounds as the whole-model ones. The product
  ``H_bb v_b = (H [v_b; 0])_b`` is computed either by the whole operator on the
  zero-padded vector (``method="pad"``, any matvec) or by a
  :class:`~sharpkit.curvature.HessianOperator` over the block's parameters only
  (``method="sub"``, what a user of curvlinops writes by hand), whose double
  backward stops at the block's parameters.
* **Traces** from *one* Hutchinson pass for all blocks (:func:`block_trace`):
  for a Rademacher ``z``, ``E[z_bᵀ (Hz)_b] = tr H_bb`` (the cross terms
  ``z_bᵀ H_bc z_c`` have mean 0), so the products that estimate ``tr H`` also
  estimate every ``tr H_bb``, and the block traces add up to the total exactly,
  probe by probe. With a Hutch++ sketch ``Q`` (Meyer, Musco, Musco & Woodruff,
  2021, SOSA) the part ``tr(E_bᵀ H Q Qᵀ E_b) = Σ_{i∈b} (HQ ∘ Q)_{i·}`` is exact
  and only ``E[u_bᵀ(Hu)_b] = tr(E_bᵀ H P E_b)``, ``u = Pz``, is estimated.
* **Frobenius norms** (:func:`block_frobenius`): ``‖H_bb‖_F`` by the deflated
  estimator of :func:`~sharpkit.curvature.frobenius_norm` applied to ``H_bb``,
  deflating the Krylov basis of the block's own Lanczos run for free; with the
  whole ``‖H‖_F`` they give the share of ``‖H‖_F²`` off the block diagonal,
  ``1 - Σ_b‖H_bb‖_F² / ‖H‖_F²`` (its standard error by the delta method). Plain
  per-block probes (``‖(H[0; z_b; 0])_b‖²``) were tried first: with 8 probes
  their right-skewed samples put 3 of 5 blocks of a BN-MLP over 4 standard
  errors low, which deflation removes.
* **Where the top eigenvector lives** (:func:`block_mass`): ``‖v_b‖²`` of the
  whole model's eigenvectors, free from a whole-model Lanczos run.

The traces' standard errors are the sample ones widened by
``t_{0.975,k-1}/1.96`` (see :mod:`sharpkit.curvature.stopping`); when the probes
would cost at least ``n`` products, :func:`block_trace` applies ``H`` to the
identity instead (``n`` products) and the values are exact (``stderr = 0``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from sharpkit.curvature.blocks import BlockPartition
from sharpkit.curvature.deflation import Deflation
from sharpkit.curvature.frobenius import frobenius_norm
from sharpkit.curvature.lanczos import (
    LanczosResult,
    lanczos,
    operator_device,
    operator_dtype,
    random_vector,
)
from sharpkit.curvature.operator import HessianOperator
from sharpkit.curvature.stopping import FROBENIUS_MIN_PROBES, Estimate, t_factor
from sharpkit.errors import ConfigError

__all__ = [
    "BLOCK_METHODS",
    "BlockFrobenius",
    "BlockTrace",
    "block_frobenius",
    "block_mass",
    "block_spectra",
    "block_trace",
]

Matvec = Callable[[Tensor], Tensor]
BlockProgress = Callable[[int, int, str], None]
BLOCK_METHODS = ("auto", "pad", "sub")
_COLUMNS = 64  # identity columns per product on the exact path


def _apply(matvec: Matvec, block: Tensor) -> Tensor:
    """Return ``H @ block`` for ``(n, k)``: one call for an operator, else a loop."""
    if isinstance(matvec, HessianOperator):
        return matvec.matvec(block)
    return torch.stack([matvec(block[:, j]) for j in range(block.shape[1])], dim=1)


def _vector_kind(
    matvec: Matvec, device: torch.device | str | None, dtype: torch.dtype | None
) -> tuple[torch.dtype, torch.device]:
    return operator_dtype(matvec, None, dtype), operator_device(matvec, None, device)


def _sub_operator(
    op: HessianOperator, partition: BlockPartition, b: int
) -> HessianOperator:
    """A :class:`HessianOperator` over block ``b``'s parameters, set up as ``op``."""
    lookup = dict(op.model.named_parameters())
    params = [lookup[name] for name in partition.blocks[b].params]
    return HessianOperator(
        op.model,
        op.loss_fn,
        op.data,
        batch_size=op.batch_size,
        bn_mode=op.bn_mode,
        params=params,
        fuse_bn=op.fuse_bn,
        allow_tf32=op.allow_tf32,
    )


def block_spectra(
    matvec: Matvec,
    partition: BlockPartition,
    *,
    k: int = 1,
    tol: float = 1e-3,
    max_iter: int | None = None,
    generator: torch.Generator | None = None,
    method: str = "auto",
    bound: str = "gap",
    device: torch.device | str | None = None,
    vector_dtype: torch.dtype | None = None,
    progress: BlockProgress | None = None,
) -> list[LanczosResult]:
    """Return the top-``k`` eigenvalues of every diagonal block ``H_bb`` by Lanczos.

    Args:
        matvec: ``v -> H v`` over the whole flat vector (a
            :class:`~sharpkit.curvature.HessianOperator` for ``method="sub"``).
        partition: The blocks.
        k: Eigenvalues per block.
        tol: Relative tolerance of the bounds (see :func:`~sharpkit.curvature.lanczos`).
        max_iter: Most Lanczos steps per block.
        generator: Random source of the start vectors (used block after block).
        method: ``"pad"`` (whole operator on zero-padded vectors), ``"sub"`` (an
            operator over the block's parameters), or ``"auto"`` (``"sub"`` for a
            :class:`~sharpkit.curvature.HessianOperator`, else ``"pad"``).
        bound: ``"gap"`` or ``"residual"`` (see :func:`~sharpkit.curvature.lanczos`).
        device: Device of the vectors (default: the operator's).
        vector_dtype: Dtype of the vectors (default: the operator's).
        progress: ``progress(done, total, name)`` before each block.

    Returns:
        One :class:`~sharpkit.curvature.LanczosResult` per block, in block order.

    Raises:
        ConfigError: An unknown method, or ``"sub"`` without a HessianOperator.
    """
    _check_method(matvec, method)
    dtype, dev = _vector_kind(matvec, device, vector_dtype)
    out = []
    for b, block in enumerate(partition.blocks):
        if progress is not None:
            progress(b, len(partition), block.name)
        out.append(
            lanczos(
                _block_operator(matvec, partition, b, method),
                block.size,
                k=min(k, block.size),
                tol=tol,
                max_iter=max_iter,
                generator=generator,
                bound=bound,
                device=dev,
                vector_dtype=dtype,
            )
        )
    return out


def _block_operator(
    matvec: Matvec, partition: BlockPartition, b: int, method: str
) -> Matvec:
    """``v_b -> H_bb v_b`` by ``method`` (see :func:`block_spectra`)."""
    _check_method(matvec, method)
    if isinstance(matvec, HessianOperator) and method != "pad":
        return _sub_operator(matvec, partition, b)
    return _padded(matvec, partition, b)


def _check_method(matvec: Matvec, method: str) -> None:
    if method not in BLOCK_METHODS:
        allowed = ", ".join(map(repr, BLOCK_METHODS))
        msg = f"method must be one of {allowed}, got {method!r}"
        raise ConfigError(msg)
    is_op = isinstance(matvec, HessianOperator)
    if method == "sub" and not is_op:
        msg = "method='sub' needs a HessianOperator; use method='pad' for a matvec"
        raise ConfigError(msg)


def _padded(matvec: Matvec, partition: BlockPartition, b: int) -> Matvec:
    def product(v: Tensor) -> Tensor:
        return partition.restrict(matvec(partition.embed(v, b)), b)

    return product


def block_mass(vectors: Tensor, partition: BlockPartition) -> np.ndarray:
    """Return the share ``‖v_b‖² / ‖v‖²`` of each block in each vector.

    Args:
        vectors: ``(n,)`` or ``(n, k)``, e.g. the whole model's top eigenvectors.
        partition: The blocks.

    Returns:
        ``(B,)`` or ``(B, k)`` shares; each column sums to 1.
    """
    sq = partition.sum_squares(vectors).numpy()
    total = sq.sum(axis=0)
    return np.asarray(sq / np.where(total > 0, total, 1.0), dtype=np.float64)


@dataclass(frozen=True, kw_only=True)
class BlockTrace:
    """``tr H_bb`` for every block, from one pass of probes.

    Attributes:
        names: The blocks' names.
        values: ``tr H_bb`` per block.
        stderrs: Their standard errors (0 when exact).
        total: ``Σ_b tr H_bb = tr H``.
        total_stderr: Its standard error.
        n_matvecs: Products used (sketch and probes).
        probes: Random probes used (0 when exact).
        sketch: Columns of the Hutch++ sketch (0: plain Hutchinson).
        exact: Whether the values are exact (``H`` applied to the identity).
        seconds: Wall time.
    """

    names: tuple[str, ...]
    values: np.ndarray
    stderrs: np.ndarray
    total: float
    total_stderr: float
    n_matvecs: int
    probes: int
    sketch: int
    exact: bool
    seconds: float


def _stderr(samples: np.ndarray) -> np.ndarray:
    """Standard error of the mean along axis 0, Student-widened (see the module doc)."""
    p = samples.shape[0]
    if p < 2:
        return np.full(samples.shape[1:], math.nan)
    return np.asarray(
        samples.std(axis=0, ddof=1) / math.sqrt(p) * t_factor(p - 1), dtype=np.float64
    )


def _identity_columns(
    matvec: Matvec, n: int, dtype: torch.dtype, dev: torch.device
) -> list[tuple[int, Tensor]]:
    """Return ``(lo, H[:, lo:lo+c])`` slabs that cover the identity."""
    out = []
    for lo in range(0, n, _COLUMNS):
        hi = min(n, lo + _COLUMNS)
        eye = torch.zeros(n, hi - lo, dtype=dtype, device=dev)
        eye[torch.arange(lo, hi), torch.arange(hi - lo)] = 1
        out.append((lo, _apply(matvec, eye)))
    return out


def _check_probes(probes: int, least: int) -> None:
    if probes < least:
        msg = f"probes must be >= {least}, got {probes}"
        raise ConfigError(msg)


def _exact_trace(
    matvec: Matvec,
    partition: BlockPartition,
    dtype: torch.dtype,
    dev: torch.device,
    start: float,
) -> BlockTrace:
    """Every ``tr H_bb`` from ``H`` applied to the identity (``n`` products)."""
    n = partition.n
    diag = torch.zeros(n, dtype=torch.float64)
    for lo, cols in _identity_columns(matvec, n, dtype, dev):
        idx = torch.arange(cols.shape[1], device=cols.device)
        diag[lo : lo + cols.shape[1]] = cols[lo + idx, idx].double().cpu()
    values = np.array([float(diag[b.index].sum()) for b in partition.blocks])
    return BlockTrace(
        names=tuple(partition.names),
        values=values,
        stderrs=np.zeros(len(partition)),
        total=float(values.sum()),
        total_stderr=0.0,
        n_matvecs=n,
        probes=0,
        sketch=0,
        exact=True,
        seconds=time.perf_counter() - start,
    )


def block_trace(
    matvec: Matvec,
    partition: BlockPartition,
    *,
    probes: int = 32,
    sketch: int = 0,
    generator: torch.Generator | None = None,
    batch: int = 1,
    device: torch.device | str | None = None,
    vector_dtype: torch.dtype | None = None,
) -> BlockTrace:
    """Estimate ``tr H_bb`` for every block from one Hutchinson (or Hutch++) pass.

    Args:
        matvec: ``v -> H v`` over the whole flat vector.
        partition: The blocks.
        probes: Rademacher probes (at least 2).
        sketch: Columns of a Hutch++ sketch ``Q = orth(H S)`` whose part of
            every block trace is computed exactly (``2 · sketch`` products).
        generator: Random source of the probes.
        batch: Probes per product call (a HessianOperator takes ``(n, k)``;
            on a CPU one at a time was measured cheaper).
        device: Device of the vectors (default: the operator's).
        vector_dtype: Dtype of the vectors (default: the operator's).

    Returns:
        A :class:`BlockTrace`; exact when ``probes + 2·sketch >= n``.
    """
    _check_probes(probes, 2)
    if sketch < 0:
        msg = f"sketch must be >= 0, got {sketch}"
        raise ConfigError(msg)
    start = time.perf_counter()
    n = partition.n
    dtype, dev = _vector_kind(matvec, device, vector_dtype)
    names = tuple(partition.names)
    if probes + 2 * sketch >= n:
        return _exact_trace(matvec, partition, dtype, dev, start)
    exact_part = np.zeros(len(names))
    basis: Tensor | None = None
    if sketch:
        s = torch.stack(
            [
                random_vector(n, generator, dtype, dev, "rademacher")
                for _ in range(sketch)
            ],
            dim=1,
        )
        basis, _ = torch.linalg.qr(_apply(matvec, s).to(dtype))
        hq = _apply(matvec, basis).to(dtype)
        exact_part = partition.sum_products(hq, basis).sum(dim=1).numpy()
    samples = []
    for lo in range(0, probes, batch):
        z = torch.stack(
            [
                random_vector(n, generator, dtype, dev, "rademacher")
                for _ in range(min(batch, probes - lo))
            ],
            dim=1,
        )
        if basis is not None:
            z = z - basis @ (basis.T @ z)
            z = z - basis @ (basis.T @ z)
        samples.append(partition.sum_products(z, _apply(matvec, z)).T.numpy())
    per_probe = np.concatenate(samples, axis=0)  # (probes, B)
    values = exact_part + per_probe.mean(axis=0)
    return BlockTrace(
        names=names,
        values=values,
        stderrs=_stderr(per_probe),
        total=float(values.sum()),
        total_stderr=float(_stderr(per_probe.sum(axis=1, keepdims=True))[0]),
        n_matvecs=probes + 2 * sketch,
        probes=probes,
        sketch=sketch,
        exact=False,
        seconds=time.perf_counter() - start,
    )


@dataclass(frozen=True, kw_only=True)
class BlockFrobenius:
    """``‖H_bb‖_F`` for every block and the share of ``‖H‖_F²`` off the block diagonal.

    Attributes:
        names: The blocks' names.
        blocks: One :class:`~sharpkit.curvature.Estimate` of ``‖H_bb‖_F`` per block.
        whole: ``‖H‖_F``.
        whole_stderr: Its standard error.
        off_share: ``1 - Σ_b ‖H_bb‖_F² / ‖H‖_F²``.
        off_share_stderr: Its standard error (delta method; the block and whole
            estimates use independent probes).
        n_matvecs: Products used (by the blocks and the whole, deflations too).
        seconds: Wall time.
    """

    names: tuple[str, ...]
    blocks: tuple[Estimate, ...]
    whole: float
    whole_stderr: float
    off_share: float
    off_share_stderr: float
    n_matvecs: int
    seconds: float

    @property
    def values(self) -> np.ndarray:
        """``‖H_bb‖_F`` per block."""
        return np.array([e.value for e in self.blocks], dtype=np.float64)

    @property
    def stderrs(self) -> np.ndarray:
        """Their standard errors."""
        return np.array([e.stderr for e in self.blocks], dtype=np.float64)


def block_frobenius(
    matvec: Matvec,
    partition: BlockPartition,
    *,
    spectra: Sequence[LanczosResult] | None = None,
    whole: tuple[float, float] | None = None,
    deflation_steps: int = 20,
    probes: int = FROBENIUS_MIN_PROBES,
    generator: torch.Generator | None = None,
    method: str = "auto",
    device: torch.device | str | None = None,
    vector_dtype: torch.dtype | None = None,
    progress: BlockProgress | None = None,
) -> BlockFrobenius:
    """Estimate ``‖H_bb‖_F`` per block, ``‖H‖_F`` and the off-block-diagonal share.

    Each block is estimated by :func:`~sharpkit.curvature.frobenius_norm` on
    ``H_bb`` (exact on a Krylov subspace, probes for the rest): deflating the
    Krylov basis of the block's own Lanczos run (``spectra``, from
    :func:`block_spectra`) costs no products, so a block whose run spanned it
    is exact.

    Args:
        matvec: ``v -> H v`` over the whole flat vector.
        partition: The blocks.
        spectra: The blocks' Lanczos results, deflated for free.
        whole: ``(‖H‖_F, stderr)`` already estimated (e.g. by the ``frobenius``
            metric); else it is estimated here with ``deflation_steps`` and
            ``probes``.
        deflation_steps: Krylov dimension of the deflations not given.
        probes: Probes per estimate.
        generator: Random source.
        method: How ``H_bb`` is applied (see :func:`block_spectra`).
        device: Device of the vectors (default: the operator's).
        vector_dtype: Dtype of the vectors (default: the operator's).
        progress: ``progress(done, total, name)`` before each block.

    Returns:
        A :class:`BlockFrobenius`.
    """
    _check_probes(probes, 2)
    start = time.perf_counter()
    if spectra is not None and len(spectra) != len(partition):
        msg = f"spectra has {len(spectra)} results for {len(partition)} blocks"
        raise ConfigError(msg)
    dtype, dev = _vector_kind(matvec, device, vector_dtype)
    ests = []
    for b, block in enumerate(partition.blocks):
        if progress is not None:
            progress(b, len(partition), block.name)
        defl = None if spectra is None else Deflation.from_lanczos(spectra[b])
        ests.append(
            frobenius_norm(
                _block_operator(matvec, partition, b, method),
                block.size,
                deflation=defl,
                deflation_steps=min(deflation_steps, block.size),
                probes=probes,
                generator=generator,
                device=dev,
                vector_dtype=dtype,
            )
        )
    used = sum(e.n_matvecs for e in ests)
    if whole is None:
        est = frobenius_norm(
            matvec,
            partition.n,
            deflation_steps=deflation_steps,
            probes=probes,
            generator=generator,
            device=dev,
            vector_dtype=dtype,
        )
        whole, used = (est.value, est.stderr), used + est.n_matvecs
    share, share_se = _off_share(ests, *whole)
    return BlockFrobenius(
        names=tuple(partition.names),
        blocks=tuple(ests),
        whole=whole[0],
        whole_stderr=whole[1],
        off_share=share,
        off_share_stderr=share_se,
        n_matvecs=used,
        seconds=time.perf_counter() - start,
    )


def _off_share(
    blocks: Sequence[Estimate], whole: float, whole_se: float
) -> tuple[float, float]:
    """``1 - D/W²`` with ``D = Σ_b ‖H_bb‖²`` and its delta-method standard error."""
    d = sum(e.value**2 for e in blocks)
    se_d = math.sqrt(sum((2 * e.value * e.stderr) ** 2 for e in blocks))
    w2 = whole**2
    if w2 <= 0:
        return 0.0, 0.0
    ratio = d / w2
    se_w2 = 2 * whole * whole_se
    return 1.0 - ratio, math.sqrt((se_d / w2) ** 2 + (ratio * se_w2 / w2) ** 2)
