"""Lanczos with full reorthogonalization: extreme eigenvalues with error bounds.

The symmetric Lanczos process (Lanczos, 1950, J. Res. Nat. Bur. Standards)
builds an orthonormal basis ``Q_m`` of the Krylov space
``span{v, Hv, ..., H^{m-1} v}`` and the tridiagonal ``T_m = Q_mᵀ H Q_m``, one
matrix-vector product per step. Every new vector is reorthogonalised against all
previous ones (the three-term recurrence, then one classical Gram-Schmidt pass
against the whole basis: "twice is enough", Giraud, Langou & Rozložník, 2005,
Computers & Mathematics with Applications), so the basis stays orthonormal to
working precision and no spurious copies of converged
eigenvalues appear (Parlett, 1998, *The Symmetric Eigenvalue Problem*, SIAM,
ch. 13). The tridiagonal is kept in float64 and its small eigenproblem is solved
with ``torch.linalg.eigh`` on the CPU, so no second BLAS thread pool competes
with torch's.

Error bounds reported for each Ritz pair ``(θ, y)`` with ``‖y‖ = 1`` and
residual ``r = ‖H y - θ y‖`` (computed as ``β_m |s_m|`` without extra products):

* **Residual bound (rigorous).** For symmetric ``H`` some eigenvalue lies in
  ``[θ - r, θ + r]`` (Parlett, Thm 4.5.1).
* **Gap bound (a-posteriori estimate).** If the interval ``(θ - δ, θ + δ)``
  contains exactly one eigenvalue ``λ`` of ``H``, then ``|λ - θ| <= r²/δ``
  (Kato-Temple; Parlett, Thm 11.7.1). The true gap ``δ`` is unknown; it is
  estimated from the other Ritz values as ``δ = min_j (|θ - θ_j| - r_j)``: each
  other Ritz value moved towards ``θ`` by its own residual bound. This is the
  standard a-posteriori estimate (as in ARPACK-style codes); it is rigorous only
  under the assumption that no eigenvalue of ``H`` that the Krylov space has not
  yet resolved lies closer to ``θ``. The reported bound is ``min(r, r²/δ)`` where
  ``δ > r`` ("gap resolved"), else ``r``.

Neither bound certifies *which* eigenvalue ``θ`` approximates: a Krylov method
can miss an eigenvector that is orthogonal to its start vector. With a random
start vector this happens with probability zero; a warm start should therefore
mix in a random component (the ``spectral`` metric does).

A rounding allowance of ``64 ε ‖T‖`` (``ε`` the machine epsilon of the vectors'
dtype, or of the basis' where it is stored in less precision) is added to every
bound: below it, products computed in that precision cannot certify anything.

**Memory.** The basis is ``m`` vectors of ``n`` numbers, for a model of 25 M
parameters 100 MB per float32 step. ``max_basis_bytes`` bounds it: the basis is
stored in the vectors' dtype when the steps asked for fit, else (float64
vectors) in float32, which halves it and raises the rounding allowance to
float32's (still ~1e-5 relative, far below useful tolerances); when even that
does not fit, the number of steps is capped at what fits, and the result says
so (``stopped_by="memory"``). Reorthogonalising against a float32 basis is done
in the vectors' precision, a few rows at a time.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from sharpkit.curvature._krylov import (
    ROUNDING,
    BandLanczosProcess,
    LanczosProcess,
    basis_plan,
    operator_device,
    operator_dtype,
    random_vector,
    ritz_bounds,
)
from sharpkit.errors import ConfigError

__all__ = [
    "BAND_MIN_GAP",
    "MIN_GAP",
    "ROUNDING",
    "BandLanczosProcess",
    "LanczosProcess",
    "LanczosResult",
    "basis_plan",
    "lanczos",
    "operator_device",
    "operator_dtype",
    "random_vector",
    "ritz_bounds",
    "subsample_start",
]

Matvec = Callable[[Tensor], Tensor]
WHICH = ("largest", "smallest", "both")

MIN_GAP = 0.01
"""The gap bound's safeguard for one start vector (see :func:`lanczos`)."""

BAND_MIN_GAP = 0.05
"""The safeguard for a block of start vectors (issue 22's cost goal).

One start vector can show one eigenvalue of a close pair with a small
residual while the other stays invisible, so the gap estimate is trusted only
for true gaps of at least 1 %. A block of two resolves such a pair (both show,
and the estimated gap shrinks to theirs), which leaves the safeguard to cover
what the block cannot see. At 5 % every bound stays honest on the clustered
test spectra (pairs 0.3-10 % apart in two constructions, 50 of 50 seeds each;
10/9/8.5; a triple 0.3 % apart: the same coverage as at 1 %) and the benchmark
MLP's λ_max takes 1-2 products fewer (docs/benchmarks.md, "Bounds on clustered
spectra"). At 10 % one seed in 50 of a pair 0.3 % apart stopped on λ₂ after 10
products. Only for random start vectors: a warm start near λ₂'s eigenvector of
a pair 1 % apart (a data subsample that favours it) converged to λ₂ before the
random vector showed λ₁ in 2 of 50 seeds at 3-10 % (0 of 50 at 1 %)."""


@dataclass(frozen=True, kw_only=True)
class LanczosResult:
    """What :func:`lanczos` found.

    Attributes:
        eigenvalues: The requested Ritz values, float64, largest first.
        eigenvectors: ``(n, k)`` Ritz vectors in the operator's dtype, columns in
            the order of ``eigenvalues``.
        residuals: ``‖H y - θ y‖`` for each.
        bounds: Error bound on each eigenvalue (see the module docstring).
        gap_resolved: Whether each bound used the gap estimate.
        converged: Whether every bound met the tolerance.
        n_matvecs: Matrix-vector products used.
        alphas: Diagonal of the tridiagonal ``T`` (float64).
        betas: Off-diagonal of ``T`` (float64, length ``m - 1``).
        beta: Norm of the residual after the last step (``H Q = Q T + β q eᵀ``).
        ritz_values: All Ritz values, descending.
        seconds: Wall time.
        basis: The Lanczos basis ``Q_m`` as ``(m, n)`` rows (for deflation).
        which: ``"largest"``, ``"smallest"`` or ``"both"``.
        tol: The relative tolerance asked for.
        bound_kind: ``"gap"`` or ``"residual"``.
        restarts: Random restarts after an invariant subspace was found.
        process: The Lanczos process itself, which can be continued (e.g. to
            grow a deflation subspace without repeating these products).
        stopped_by: ``"converged"``, ``"steps"`` (``max_iter`` or
            ``max_matvecs`` ran out), ``"memory"`` (the basis filled
            ``max_basis_bytes``) or ``"multiplicity"`` (a cluster of equal Ritz
            values filled the block and the budget ran out before a wider
            block could tell whether the eigenvalue has more copies: the
            requested values after the cluster may be later, distinct ones).
        block: Start vectors of the (band) Lanczos run at its end; an
            eigenvalue of multiplicity up to ``block`` shows all its copies.
        projected: ``Q_mᵀ H Q_m`` (tridiagonal for ``block=1``, banded
            otherwise), float64.
    """

    eigenvalues: np.ndarray
    eigenvectors: Tensor
    residuals: np.ndarray
    bounds: np.ndarray
    gap_resolved: np.ndarray
    converged: bool
    n_matvecs: int
    alphas: np.ndarray
    betas: np.ndarray
    beta: float
    ritz_values: np.ndarray
    seconds: float
    basis: Tensor = field(repr=False)
    which: str = "largest"
    tol: float = 1e-3
    bound_kind: str = "gap"
    restarts: int = 0
    process: LanczosProcess | None = field(default=None, repr=False)
    stopped_by: str = "converged"
    block: int = 1
    projected: np.ndarray | None = field(default=None, repr=False)


def _requested(m: int, k: int, which: str) -> np.ndarray:
    """Indices (into descending Ritz values) of the requested values."""
    if which == "largest":
        return np.arange(min(k, m))
    if which == "smallest":
        return np.arange(max(m - k, 0), m)
    top = np.arange(min(k, m))
    bottom = np.arange(max(m - k, 0), m)
    return np.union1d(top, bottom)


class _Rule:
    """The stopping rule of :func:`lanczos` (see its docstring)."""

    def __init__(
        self,
        k: int,
        which: str,
        tol: float,
        bound: str,
        scale: str,
        min_gap: float,
        confirm: bool,
        n_wanted: int,
    ) -> None:
        self.k, self.which, self.tol, self.bound = k, which, tol, bound
        self.scale, self.min_gap, self.confirm = scale, min_gap, confirm
        self.n_wanted = n_wanted

    def _ok(self, theta: np.ndarray, res: np.ndarray, bounds: np.ndarray) -> bool:
        idx = _requested(len(theta), self.k, self.which)
        ref = (
            np.abs(theta[idx])
            if self.scale == "value"
            else np.full(len(idx), np.max(np.abs(theta)))
        )
        ok = bool(np.all(bounds[idx] <= self.tol * ref))
        if self.bound == "gap" and self.min_gap > 0:
            # Trust r²/gap only where it would hold for any true gap of at
            # least min_gap·|θ|: the residual must be within sqrt(tol·min_gap).
            limit = math.sqrt(self.tol * self.min_gap) * ref
            ok = ok and bool(np.all(res[idx] <= limit))
        return ok

    def run(
        self,
        proc: LanczosProcess,
        limit: int,
        progress: Callable[..., None] | None,
    ) -> tuple[bool, bool]:
        """Step ``proc`` until the rule holds; return ``(converged, hidden)``.

        ``hidden``: a cluster of equal Ritz values fills the block, so more
        copies may be unseen, and no product was left to widen the block.
        """
        prev_ok = False
        prev_vals: np.ndarray | None = None
        prev_bounds = np.zeros(0)
        hidden = False
        hold = 0  # after a widening: products the new start vector needs
        block0 = getattr(proc, "block", 1)
        seen = 0  # products when a cluster first filled the block
        while proc.m < min(limit, proc.max_steps):
            proc.step()
            theta, _, res = proc.ritz()
            bounds, _ = ritz_bounds(
                theta, res, kind=self.bound, exact=proc.exhausted, eps=proc.eps
            )
            idx = _requested(proc.m, self.k, self.which)
            ok = self._ok(theta, res, bounds)
            vals = theta[idx]
            consistent = (
                prev_vals is not None
                and len(prev_vals) == len(vals)
                and bool(np.all(np.abs(vals - prev_vals) <= prev_bounds))
            )
            # Need one Ritz value beyond those asked for, so that a gap exists.
            enough = proc.m >= self.n_wanted + 1
            if progress is not None:
                progress(
                    proc.n_matvecs,
                    limit,
                    estimate=float(theta[idx[0]]),
                    bound=float(bounds[idx[0]]),
                )
            done = ok and enough and (not self.confirm or (prev_ok and consistent))
            done = done and proc.m >= hold
            hidden = False
            if isinstance(proc, BandLanczosProcess):
                hidden = _hidden_copies(theta, res, bounds, self, proc.block)
                if hidden and proc.m < limit and proc.add_vector():
                    # The new vector's own sequence must come as far as the
                    # first ones had when they first showed the cluster
                    # (seen/block0 steps each), one step in `block` products.
                    seen = seen or proc.m
                    hold = proc.m + math.ceil(seen * proc.block / block0)
                    prev_ok, prev_vals = False, None
                    continue
            if proc.exhausted or (done and not hidden):
                return True, False
            prev_ok, prev_vals, prev_bounds = ok, vals, bounds[idx]
        return False, hidden or proc.m < hold


def _hidden_copies(
    theta: np.ndarray,
    res: np.ndarray,
    bounds: np.ndarray,
    rule: _Rule,
    block: int,
) -> bool:
    """Whether a cluster of ``block`` or more equal Ritz values hides requested ones.

    A block of ``b`` start vectors sees at most ``b`` copies of an eigenvalue
    (exactly ``b`` of a multiple one). When ``c >= b`` Ritz values coincide
    (within their bounds, or ``tol``) and requested values come after them
    (positions ``s .. s+c-1`` with ``s + c < k``), those later values may be
    further copies the block cannot see, not the next distinct eigenvalues.
    Only Ritz values whose residual is within ``sqrt(tol)`` of their scale
    count: early, unconverged ones coincide within their wide bounds by chance.
    """
    close = res <= math.sqrt(rule.tol) * np.maximum(np.abs(theta), 1e-300)
    ends = []
    if rule.which in ("largest", "both"):
        ends.append((theta, bounds, close))
    if rule.which in ("smallest", "both"):
        ends.append((theta[::-1], bounds[::-1], close[::-1]))
    for t, b, near in ends:
        s = 0
        while s < min(rule.k, len(t)):
            width = np.maximum(b[s] + b, rule.tol * abs(t[s]))
            same = (np.abs(t[s:] - t[s]) <= width[s:]) & near[s:]
            c = int(np.sum(same)) if near[s] else 0
            if c >= block and s + c < rule.k:
                return True
            s += max(c, 1)
    return False


def lanczos(
    matvec: Matvec,
    n: int,
    *,
    k: int = 1,
    which: str = "largest",
    tol: float = 1e-3,
    max_iter: int | None = None,
    max_matvecs: int | None = None,
    v0: Tensor | None = None,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
    progress: Callable[..., None] | None = None,
    bound: str = "gap",
    scale: str = "auto",
    vector_dtype: torch.dtype | None = None,
    min_gap: float | None = None,
    confirm: bool = True,
    max_basis_bytes: int | None = None,
    block: int = 1,
) -> LanczosResult:
    """Find the ``k`` extreme eigenvalues of a symmetric operator with error bounds.

    Stops when every requested Ritz value's bound is at most ``tol`` times its
    scale (``|θ|``, or the largest ``|θ|`` with ``scale="norm"``), or when the
    budget (``max_iter`` steps / ``max_matvecs`` products) runs out; then
    ``converged`` is ``False`` and the caller should warn. Two safeguards keep
    the gap estimate from being trusted too early (a cluster at the top that the
    Krylov space has not yet resolved makes the estimated gap far too large):

    * with ``bound="gap"`` the residual must also be at most
      ``sqrt(tol · min_gap) · scale``, so that ``r²/δ <= tol · scale`` holds for
      any true gap ``δ >= min_gap · scale``, whatever the estimate says;
    * with ``confirm``, the criterion must hold at two consecutive steps and
      each requested Ritz value may move between them by at most its previous
      bound (Ritz values move monotonically towards the eigenvalues, so a
      larger move shows the previous bound was wrong).

    On clustered test spectra (top eigenvalues 2 % apart, random starts) these
    cut the runs whose true error exceeded the reported bound at ``tol=1e-3``
    from 62 of 192 to 2 of 192 for one extra step on average; the two left are
    runs that converged to λ₂, which no stopping rule on a single Krylov
    sequence can detect: until the space resolves λ₁, a Ritz value near λ₂
    has a residual below the pair's gap and looks converged. A block of start
    vectors (``block=2``) removes that case for pairs: see ``block`` below.

    Args:
        matvec: ``v -> H v`` for a vector of shape ``(n,)``.
        n: Dimension of the operator.
        k: How many eigenvalues (per end with ``which="both"``).
        which: ``"largest"``, ``"smallest"`` or ``"both"`` ends of the spectrum.
        tol: Relative tolerance on the bounds.
        max_iter: Most Lanczos steps (default ``min(n, max(100, 20 k))``).
        max_matvecs: Most products (each step is one).
        v0: Start vector (warm start), e.g. a previous top eigenvector; mix in a
            random component to keep the method from missing eigenvectors.
        generator: Random source of the start vector (and restarts).
        dtype: Dtype of the tridiagonal matrix (float64 unless you must save).
        device: Device of the vectors (default: ``matvec.device`` or ``v0``'s).
        progress: ``progress(done, total, estimate=..., bound=...)``.
        bound: ``"gap"`` (tighter, a-posteriori) or ``"residual"`` (rigorous).
        scale: ``"value"``, ``"norm"`` or ``"auto"`` (``"value"`` for the
            largest end, ``"norm"`` otherwise: eigenvalues near zero at the
            bottom of a Hessian spectrum are certified relative to ``‖H‖``).
            A zero eigenvalue can never meet a relative bound: use ``"norm"``.
        min_gap: Smallest true relative gap the gap bound is trusted for (see
            above); 0 disables the safeguard. Default: ``BAND_MIN_GAP``
            (0.05) for a block of random start vectors (no ``v0``), whose
            sequences progress alike, so that a close neighbour of a
            requested eigenvalue is one the block resolves itself (it shows
            as a Ritz value near θ, which shrinks the estimated gap);
            ``MIN_GAP`` (0.01) otherwise: a ``v0`` near one eigenvector of a
            close pair converges before the random vectors can show the
            other.
        confirm: Require the criterion at two consecutive steps (see above).
        vector_dtype: Dtype of the vectors; default ``matvec.dtype`` (a
            :class:`HessianOperator` has one), else ``v0``'s, else torch's default.
        max_basis_bytes: Bytes the Lanczos basis may take (see the module
            docstring): a float32 basis for float64 vectors, or fewer steps.
        block: Start vectors (``v0`` and random ones): ``1`` is plain
            Lanczos; ``b > 1`` runs band Lanczos (:class:`BandLanczosProcess`,
            still one product a step), which resolves a cluster of up to ``b``
            eigenvalues at the top however close they are, and widens the
            block by one whenever ``b`` equal Ritz values would otherwise hide
            further copies of a repeated eigenvalue among the ``k`` asked for.

    Returns:
        A :class:`LanczosResult`.

    Raises:
        ConfigError: A bad argument.

    Examples:
        >>> import torch
        >>> A = torch.diag(torch.arange(1.0, 101.0, dtype=torch.float64))
        >>> res = lanczos(lambda v: A @ v, 100, k=2, tol=1e-10,
        ...               generator=torch.Generator().manual_seed(0),
        ...               vector_dtype=torch.float64)
        >>> res.eigenvalues.round(8).tolist(), res.converged
        ([100.0, 99.0], True)
    """
    start = time.perf_counter()
    if which not in WHICH:
        msg = f"which must be one of {', '.join(map(repr, WHICH))}, got {which!r}"
        raise ConfigError(msg)
    if k < 1:
        msg = f"k must be >= 1, got {k}"
        raise ConfigError(msg)
    if not tol > 0:
        msg = f"tol must be > 0, got {tol}"
        raise ConfigError(msg)
    if scale not in ("auto", "value", "norm"):
        msg = f"scale must be 'auto', 'value' or 'norm', got {scale!r}"
        raise ConfigError(msg)
    if bound not in ("gap", "residual"):
        msg = f"bound must be 'gap' or 'residual', got {bound!r}"
        raise ConfigError(msg)
    if min_gap is None:
        min_gap = BAND_MIN_GAP if block > 1 and v0 is None else MIN_GAP
    if not 0 <= min_gap <= 1:
        msg = f"min_gap must be in [0, 1], got {min_gap}"
        raise ConfigError(msg)
    if dtype != torch.float64:
        dtype = torch.float64  # the tridiagonal is tiny; never worth less
    if scale == "auto":
        scale = "value" if which == "largest" else "norm"
    n_wanted = min(n, k if which != "both" else 2 * k)
    limit = min(n, max_iter if max_iter is not None else max(100, 20 * k))
    if max_matvecs is not None:
        if max_matvecs < 1:
            msg = f"max_matvecs must be >= 1, got {max_matvecs}"
            raise ConfigError(msg)
        limit = min(limit, max_matvecs)

    proc: LanczosProcess
    if block > 1:
        proc = BandLanczosProcess(
            matvec,
            n,
            block=block,
            v0=v0,
            generator=generator,
            dtype=vector_dtype,
            device=device,
            max_basis_bytes=max_basis_bytes,
            steps_hint=limit,
        )
        proc.steps_cap = limit  # a block product computes no product past it
    else:
        proc = LanczosProcess(
            matvec,
            n,
            v0=v0,
            generator=generator,
            dtype=vector_dtype,
            device=device,
            max_basis_bytes=max_basis_bytes,
            steps_hint=limit,
        )
    by_memory = proc.max_steps < limit
    limit = min(limit, proc.max_steps)
    rule = _Rule(k, which, tol, bound, scale, min_gap, confirm, n_wanted)
    converged, hidden = rule.run(proc, limit, progress)
    theta, S, res = proc.ritz()
    bounds, resolved = ritz_bounds(
        theta, res, kind=bound, exact=proc.exhausted, eps=proc.eps
    )
    idx = _requested(proc.m, k, which)
    coef = S[:, idx].to(dtype=proc.basis_dtype, device=proc.device)
    vecs = (proc.basis.T @ coef).to(proc.dtype)
    stopped_by = "converged" if converged else ("memory" if by_memory else "steps")
    if hidden:
        stopped_by = "multiplicity"
    return LanczosResult(
        eigenvalues=theta[idx].copy(),
        eigenvectors=vecs,
        residuals=res[idx].copy(),
        bounds=bounds[idx].copy(),
        gap_resolved=resolved[idx].copy(),
        converged=converged,
        n_matvecs=proc.n_matvecs,
        alphas=np.asarray(proc.alphas, dtype=np.float64),
        betas=np.asarray(proc.betas, dtype=np.float64),
        beta=proc.beta,
        ritz_values=theta.copy(),
        seconds=time.perf_counter() - start,
        basis=proc.basis,
        which=which,
        tol=float(tol),
        bound_kind=bound,
        restarts=proc.restarts,
        process=proc,
        stopped_by=stopped_by,
        block=getattr(proc, "block", 1),
        projected=proc.tridiagonal().numpy(),
    )


def subsample_start(
    matvec: Matvec,
    n: int,
    *,
    steps: int = 8,
    generator: torch.Generator | None = None,
    vector_dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """A start vector for :func:`lanczos` from a cheaper operator (issue 24).

    Runs at most ``steps`` Lanczos steps on ``matvec`` (typically the Hessian
    of a data subsample: a product on 1/8 of the samples costs about 1/8 of a
    full one) and returns ``y/‖y‖ + z/‖z‖``: its top Ritz vector ``y`` plus an
    equal-weight random vector ``z``. The top eigenvectors of trained
    classifiers move little between subsets, so a full-set run started there
    needs fewer full products; the random part keeps a component along every
    eigenvector, so a subsample whose top eigenvector is another one cannot
    hide λ₁ (with ``block=2`` the full run also has a second, independent
    start). The certificate is the full run's: nothing of the subsample enters
    the reported bound.

    Args:
        matvec: The cheap operator, ``v -> H_s v``.
        n: Dimension (the full operator's).
        steps: Products of ``matvec`` at most.
        generator: Random source (the subsample run's start and ``z``).
        vector_dtype: Dtype of the vectors.
        device: Device of the vectors.

    Returns:
        The start vector ``(n,)``, not normalised.

    Raises:
        ConfigError: ``steps`` < 1.
    """
    if steps < 1:
        msg = f"steps must be >= 1, got {steps}"
        raise ConfigError(msg)
    res = lanczos(
        matvec,
        n,
        tol=1e-2,
        max_matvecs=min(steps, n),
        generator=generator,
        vector_dtype=vector_dtype,
        device=device,
        min_gap=0.0,
        confirm=False,
    )
    y = res.eigenvectors[:, 0]
    z = random_vector(n, generator, y.dtype, y.device)
    out: Tensor = y / torch.linalg.vector_norm(y) + z / torch.linalg.vector_norm(z)
    return out
