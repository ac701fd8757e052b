"""The Lanczos processes (plain and band), vectors, the basis budget, Ritz bounds.

Re-exported by :mod:`sharpkit.curvature.lanczos`, whose docstring explains the
method, the bounds and the memory plan; :func:`~sharpkit.curvature.lanczos.lanczos`
drives these processes with its stopping rule.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor

from sharpkit.errors import ConfigError

ROUNDING = 64.0
"""Multiple of machine epsilon times ``‖T‖`` added to every bound."""


def operator_dtype(
    matvec: Any, v0: Tensor | None, dtype: torch.dtype | None = None
) -> torch.dtype:
    """Return the dtype vectors must have for ``matvec``."""
    if dtype is not None:
        return dtype
    op = getattr(matvec, "dtype", None)
    if isinstance(op, torch.dtype):
        return op
    if v0 is not None:
        return v0.dtype
    return torch.get_default_dtype()


def operator_device(
    matvec: Any, v0: Tensor | None, device: torch.device | str | None
) -> torch.device:
    """Return the device vectors must live on for ``matvec``."""
    if device is not None:
        return torch.device(device)
    op = getattr(matvec, "device", None)
    if isinstance(op, torch.device):
        return op
    if v0 is not None:
        return v0.device
    return torch.device("cpu")


_CHUNK = 8
"""Basis rows per reorthogonalisation product when the basis is stored in less
precision than the vectors (bounds the temporary upcast copy)."""


def basis_plan(
    n: int, dtype: torch.dtype, rows: int, max_bytes: int | None
) -> tuple[torch.dtype, int]:
    """Return the basis dtype and the most rows that fit ``max_bytes``.

    ``rows`` is how many basis rows the caller would like (steps + 1). The basis
    keeps ``dtype`` when ``rows`` of it fit; float64 falls back to float32 when
    that fits more; otherwise the dtype that holds the most rows is used and the
    row count is capped.

    Args:
        n: Length of a vector.
        dtype: The vectors' dtype.
        rows: Rows wanted.
        max_bytes: Bytes the basis may take (``None``: no limit).

    Raises:
        ConfigError: Fewer than 3 rows (two steps) fit.
    """
    if max_bytes is None:
        return dtype, rows
    size = torch.empty(0, dtype=dtype).element_size()
    fit = int(max_bytes // (n * size))
    if fit >= rows or dtype != torch.float64:
        chosen, cap = dtype, min(rows, fit)
    else:
        chosen, cap = torch.float32, min(rows, int(max_bytes // (n * 4)))
    if cap < 3:
        smallest = 3 * n * torch.empty(0, dtype=chosen).element_size()
        msg = (
            f"the memory budget leaves {_fmt_bytes(max_bytes)} for the Lanczos "
            f"basis, less than 3 vectors of {n:,} parameters "
            f"({_fmt_bytes(smallest)}); raise the memory budget"
        )
        raise ConfigError(msg)
    return chosen, cap


def _fmt_bytes(b: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(b) < 1024 or unit == "GiB":
            return f"{b:.0f} {unit}" if unit == "B" else f"{b:.1f} {unit}"
        b /= 1024
    raise AssertionError  # pragma: no cover


def random_vector(
    n: int,
    generator: torch.Generator | None,
    dtype: torch.dtype,
    device: torch.device,
    kind: str = "gaussian",
) -> Tensor:
    """Draw a random vector on the CPU from ``generator`` and move it to ``device``.

    Args:
        n: Length.
        generator: Random source (CPU); ``None`` uses torch's global one.
        dtype: Dtype of the result.
        device: Device of the result.
        kind: ``"gaussian"`` (N(0, 1) entries) or ``"rademacher"`` (±1 entries).
    """
    if kind == "rademacher":
        bits = torch.randint(0, 2, (n,), generator=generator, dtype=torch.int8)
        v = bits.to(dtype) * 2 - 1
    else:
        v = torch.randn(n, generator=generator, dtype=dtype)
    return v.to(device)


def ritz_bounds(
    theta: np.ndarray,
    residuals: np.ndarray,
    *,
    kind: str = "gap",
    exact: bool = False,
    eps: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Return an error bound for every Ritz value and whether its gap is resolved.

    Args:
        theta: All Ritz values, descending.
        residuals: Their residual norms ``‖H y - θ y‖``.
        kind: ``"gap"`` (``min(r, r²/δ)`` where resolved, see the module
            docstring) or ``"residual"`` (``r``).
        exact: The Krylov space is the whole space (every Ritz value is exact).
        eps: Machine epsilon of the vectors (adds the rounding allowance).

    Returns:
        ``(bounds, gap_resolved)``.
    """
    m = len(theta)
    r = np.asarray(residuals, dtype=np.float64)
    floor = ROUNDING * eps * (float(np.max(np.abs(theta))) if m else 0.0)
    resolved = np.zeros(m, dtype=bool)
    if exact:
        return np.full(m, floor), np.ones(m, dtype=bool)
    bounds = r.copy()
    if kind == "gap" and m > 1:
        dist = np.abs(theta[:, None] - theta[None, :]) - r[None, :]
        np.fill_diagonal(dist, np.inf)
        delta = dist.min(axis=1)
        resolved = delta > r
        with np.errstate(divide="ignore", invalid="ignore"):
            gap = np.where(resolved, r * r / np.where(resolved, delta, 1.0), r)
        bounds = np.minimum(r, gap)
    elif kind not in ("gap", "residual"):
        msg = f"bound must be 'gap' or 'residual', got {kind!r}"
        raise ConfigError(msg)
    return bounds + floor, resolved


Matvec = Callable[[Tensor], Tensor]


def _check_finite(w: Tensor) -> None:
    """Refuse a non-finite product."""
    if not bool(torch.isfinite(w).all()):
        from sharpkit.errors import NumericalError

        msg = "a Hessian-vector product is not finite; check the model and data"
        raise NumericalError(msg)


class LanczosProcess:
    """The Lanczos recurrence with full reorthogonalization, one step at a time.

    After ``m`` steps, ``basis`` holds ``Q_m`` (rows), ``alphas``/``betas`` the
    tridiagonal ``T_m`` (float64) and ``beta`` the norm of the next residual, so
    that ``H Q_m = Q_m T_m + beta q_{m+1} e_mᵀ``. A breakdown (an invariant
    subspace, ``beta ≈ 0``) restarts with a random vector orthogonal to the basis
    and records a zero off-diagonal, so the relation keeps holding.

    Args:
        matvec: ``v -> H v`` for a vector.
        n: Dimension.
        v0: Start vector (normalised here); random if ``None``.
        generator: Random source for the start and restart vectors.
        dtype: Dtype of the vectors (default: inferred from ``matvec``/``v0``).
        device: Device of the vectors.
        restart: On a breakdown, continue from a random vector orthogonal to the
            basis (for eigenvalues); if ``False``, stop and set ``broken``
            (quadrature must not restart: the Krylov space of its probe is
            exhausted and its Gauss rule is exact).
        max_basis_bytes: Bytes the basis may take (see :func:`basis_plan`);
            ``max_steps`` then says how many steps fit.
        steps_hint: Steps the caller expects to take at most; with
            ``max_basis_bytes`` the basis is allocated for them at once on the
            CPU (pages are committed only as rows are written) instead of grown
            by copies.
    """

    def __init__(
        self,
        matvec: Matvec,
        n: int,
        *,
        v0: Tensor | None = None,
        generator: torch.Generator | None = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
        restart: bool = True,
        max_basis_bytes: int | None = None,
        steps_hint: int | None = None,
    ) -> None:
        if n < 1:
            msg = f"dimension n must be >= 1, got {n}"
            raise ConfigError(msg)
        self.matvec = matvec
        self.n = int(n)
        self.dtype = operator_dtype(matvec, v0, dtype)
        self.device = operator_device(matvec, v0, device)
        self.generator = generator
        wanted = min(self.n, steps_hint if steps_hint is not None else self.n) + 1
        self.basis_dtype, rows = basis_plan(self.n, self.dtype, wanted, max_basis_bytes)
        self._max_rows = rows if max_basis_bytes is not None else self.n + 1
        self.max_steps = min(self.n, self._max_rows - 1)
        """Steps the memory for the basis allows (``n`` without a budget)."""
        self.eps = float(
            max(torch.finfo(self.dtype).eps, torch.finfo(self.basis_dtype).eps)
        )
        if v0 is None:
            q = random_vector(self.n, generator, self.dtype, self.device)
        else:
            if v0.shape != (self.n,):
                msg = f"v0 must have shape ({self.n},), got {tuple(v0.shape)}"
                raise ConfigError(msg)
            q = v0.detach().to(device=self.device, dtype=self.dtype).clone()
        norm = float(torch.linalg.vector_norm(q))
        if not math.isfinite(norm) or norm == 0.0:
            msg = "v0 must be a finite, non-zero vector"
            raise ConfigError(msg)
        first = min(self.n, 32) + 1
        if max_basis_bytes is not None and self.device.type == "cpu":
            first = self._max_rows  # committed row by row as they are written
        self._Q = torch.empty(
            min(first, self._max_rows),
            self.n,
            dtype=self.basis_dtype,
            device=self.device,
        )
        self._Q[0] = q / norm
        self.m = 0
        self.alphas: list[float] = []
        self.betas: list[float] = []  # off-diagonal of T (length m - 1)
        self.beta = 0.0  # norm of the residual after the last step
        self.n_matvecs = 0
        self.restarts = 0
        self.restart = restart
        self.broken = False
        self._scale = 0.0

    @property
    def basis(self) -> Tensor:
        """``Q_m`` as an ``(m, n)`` tensor (a view; rows are orthonormal).

        Its dtype is :attr:`basis_dtype`, which is float32 for float64 vectors
        when a memory budget asked for it.
        """
        return self._Q[: self.m]

    @property
    def basis_bytes(self) -> int:
        """Bytes allocated for the basis."""
        return int(self._Q.numel() * self._Q.element_size())

    @property
    def exhausted(self) -> bool:
        """Whether no step is possible: ``m == n``, or a breakdown without restart."""
        return self.m >= self.n or self.broken

    def tridiagonal(self) -> Tensor:
        """Return ``T_m`` as a dense float64 CPU tensor."""
        m = self.m
        t = torch.zeros(m, m, dtype=torch.float64)
        if m:
            t.diagonal().copy_(torch.tensor(self.alphas, dtype=torch.float64))
        if m > 1:
            off = torch.tensor(self.betas, dtype=torch.float64)
            t.diagonal(1).copy_(off)
            t.diagonal(-1).copy_(off)
        return t

    def _grow(self) -> None:
        if self.m + 1 < self._Q.shape[0] or self._Q.shape[0] >= self._max_rows:
            return
        rows = min(self.n + 1, 2 * self._Q.shape[0], self._max_rows)
        bigger = torch.empty(rows, self.n, dtype=self.basis_dtype, device=self.device)
        bigger[: self._Q.shape[0]] = self._Q
        self._Q = bigger

    def _row(self, j: int) -> Tensor:
        """Basis row ``j`` in the vectors' dtype."""
        return self._Q[j].to(self.dtype)

    def _project(self, w: Tensor, rows: int) -> tuple[Tensor, Tensor]:
        """Return ``(w - Qᵀ Q w, Q w)`` for the first ``rows`` basis vectors."""
        Q = self._Q[:rows]
        if Q.dtype == w.dtype:
            h = Q @ w
            return w - Q.T @ h, h
        # a lower-precision basis: products in w's precision, a few rows at a time
        parts = []
        for lo in range(0, rows, _CHUNK):
            parts.append(Q[lo : lo + _CHUNK].to(w.dtype) @ w)
        h = torch.cat(parts) if parts else w.new_zeros(0)
        out = w.clone()
        for lo in range(0, rows, _CHUNK):
            out.sub_(Q[lo : lo + _CHUNK].to(w.dtype).T @ h[lo : lo + _CHUNK])
        return out, h

    def _orthogonalize(self, w: Tensor, rows: int) -> tuple[Tensor, Tensor]:
        """Classical Gram-Schmidt twice against the first ``rows`` basis vectors."""
        w, h = self._project(w, rows)
        w, h2 = self._project(w, rows)
        return w, h + h2

    def _apply(self, q: Tensor) -> Tensor:
        """``H q`` in the vectors' dtype and device, checked (one product)."""
        w = self.matvec(q)
        self.n_matvecs += 1
        if w.shape != q.shape:
            msg = f"matvec returned shape {tuple(w.shape)}, expected {tuple(q.shape)}"
            raise ConfigError(msg)
        w = w.to(dtype=self.dtype, device=self.device)
        _check_finite(w)
        return w

    def _check_step(self) -> None:
        if self.exhausted:
            msg = "the Krylov space already spans the whole space"
            raise ConfigError(msg)
        if self.m >= self.max_steps:
            msg = (
                f"the memory budget holds {self.max_steps} Lanczos vectors of "
                f"{self.n:,}; raise the memory budget for more steps"
            )
            raise ConfigError(msg)

    def step(self) -> None:
        """Do one Lanczos step (one matvec)."""
        self._check_step()
        j = self.m
        q = self._row(j)
        w = self._apply(q)
        if j > 0:
            self.betas.append(self.beta)
        # The three-term recurrence removes the large components; one classical
        # Gram-Schmidt pass against the whole basis then removes what rounding
        # left ("twice is enough", the recurrence being the first pass).
        alpha0 = float(torch.dot(q, w))
        w = w - alpha0 * q  # a copy: matvec's result may be someone else's
        if j > 0:
            w.sub_(self._row(j - 1), alpha=self.beta)
        w, h = self._project(w, j + 1)
        alpha = alpha0 + float(h[j])
        self.alphas.append(alpha)
        self.m = j + 1
        self._scale = max(self._scale, abs(alpha), self.beta)
        beta = float(torch.linalg.vector_norm(w))
        self._grow()
        if self.m >= self.n:
            self.beta = 0.0 if beta <= 1e3 * self.eps * self._scale else beta
            return
        if beta <= 100 * self.eps * max(self._scale, beta):
            if not self.restart:
                self.beta = 0.0
                self.broken = True
                return
            # Invariant subspace: restart with a random vector orthogonal to Q.
            self.restarts += 1
            self.beta = 0.0
            for _ in range(3):
                r = random_vector(self.n, self.generator, self.dtype, self.device)
                r, _ = self._orthogonalize(r, self.m)
                norm = float(torch.linalg.vector_norm(r))
                if norm > 1e-3 * math.sqrt(self.n):
                    break
            self._Q[self.m] = r / norm
            return
        self.beta = beta
        self._Q[self.m] = w / beta

    def next_vector(self) -> Tensor:
        """``q_{m+1}``, the unit vector the next step multiplies."""
        return self._row(self.m)

    def ritz(self) -> tuple[np.ndarray, Tensor, np.ndarray]:
        """Return Ritz values (descending), ``T``'s eigenvectors and residuals.

        Returns:
            ``(theta, S, residuals)``: ``theta`` float64 ``(m,)`` descending;
            ``S`` float64 CPU ``(m, m)``, column ``i`` the eigenvector of ``T`` for
            ``theta[i]``; ``residuals[i] = beta |S[m-1, i]| = ‖H y_i - θ_i y_i‖``.
        """
        evals, evecs = torch.linalg.eigh(self.tridiagonal())
        evals = evals.flip(0)
        evecs = evecs.flip(1)
        res = (self.beta * evecs[-1].abs()).numpy()
        return evals.numpy(), evecs, res


class BandLanczosProcess(LanczosProcess):
    """Band Lanczos: the Krylov space of a *block* of start vectors, one product a step.

    Ruhe's band form of block Lanczos (Ruhe, 1979, Math. Comp. 33): the basis
    holds ``m`` multiplied vectors and up to ``block`` pending ones. A step
    multiplies the oldest pending vector, orthogonalises the product against the
    whole basis (twice), records the coefficients and appends what is left as a
    new pending vector. Rayleigh-Ritz on the multiplied vectors gives the Ritz
    values; ``H Q_m = Q_m T_m + P C`` (``P`` the pending vectors) gives every
    Ritz residual as ``‖C s‖`` without extra products. ``T_m`` is banded
    (bandwidth ``block``) and kept dense, in float64.

    A single start vector sees one vector of each eigenspace: an eigenvalue
    repeated ``j`` times appears once, and of a near-degenerate pair the one the
    start vector happens to favour converges first, with a small residual, while
    the other is still invisible. ``block`` start vectors see up to ``block``
    copies, and resolve a cluster of up to ``block`` eigenvalues at the rate of
    the gap below the cluster. :meth:`add_vector` widens the block mid-run.

    Args:
        matvec: ``v -> H v`` for a vector.
        n: Dimension.
        block: Start vectors: ``v0`` (if given) and random ones, ``block`` in all.
        v0: First start vector (e.g. the gradient); the others are random.
        generator: Random source.
        dtype: Dtype of the vectors.
        device: Device of the vectors.
        max_basis_bytes: Bytes the basis may take (see :func:`basis_plan`).
        steps_hint: Products the caller expects to spend at most.
        block_products: Multiply all pending vectors in one call of ``matvec``
            with an ``(n, p)`` block (see :meth:`_product`); default: whether
            ``matvec`` has a true ``block_products`` attribute, as a
            :class:`~sharpkit.curvature.operator.HessianOperator` has where a
            block costs less than its vectors one by one.
    """

    def __init__(
        self,
        matvec: Matvec,
        n: int,
        *,
        block: int = 2,
        v0: Tensor | None = None,
        generator: torch.Generator | None = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
        max_basis_bytes: int | None = None,
        steps_hint: int | None = None,
        block_products: bool | None = None,
    ) -> None:
        if block < 1:
            msg = f"block must be >= 1, got {block}"
            raise ConfigError(msg)
        hint = min(n, steps_hint if steps_hint is not None else n)
        super().__init__(
            matvec,
            n,
            v0=v0,
            generator=generator,
            dtype=dtype,
            device=device,
            max_basis_bytes=max_basis_bytes,
            steps_hint=min(n, hint + block - 1),
        )
        self.block = 1
        self._pending = 1
        self._coef = np.zeros((8, 8))
        self.block_products = (
            bool(getattr(matvec, "block_products", False))
            if block_products is None
            else bool(block_products)
        )
        self.steps_cap = self.n
        """Steps a block product may look ahead to (the driver's product limit)."""
        self._ahead: dict[int, Tensor] = {}  # H q_j of pending rows, computed early
        # the basis holds m + pending <= n rows: all n steps fit when n rows do
        self.max_steps = (
            self.n if self._max_rows >= self.n else max(1, self._max_rows - block)
        )
        for _ in range(block - 1):
            self.add_vector()

    @property
    def pending(self) -> int:
        """Basis vectors not yet multiplied (the current block width)."""
        return self._pending

    @property
    def exhausted(self) -> bool:
        """Whether no step is possible (the basis spans the whole space)."""
        return self.m >= self.n

    def _room(self, rows: int) -> None:
        """Make room for ``rows`` basis rows and coefficients."""
        if rows > self._Q.shape[0]:
            size = min(max(rows, 2 * self._Q.shape[0]), self._max_rows, self.n + 1)
            if size < rows:
                msg = (
                    f"the memory budget holds {self._max_rows} Lanczos vectors of "
                    f"{self.n:,}; raise the memory budget for a wider block"
                )
                raise ConfigError(msg)
            bigger = torch.empty(
                size, self.n, dtype=self.basis_dtype, device=self.device
            )
            bigger[: self._Q.shape[0]] = self._Q
            self._Q = bigger
        if rows > self._coef.shape[0]:
            size = max(rows, 2 * self._coef.shape[0])
            coef = np.zeros((size, size))
            k = self._coef.shape[0]
            coef[:k, :k] = self._coef
            self._coef = coef

    def add_vector(self, v: Tensor | None = None) -> bool:
        """Widen the block by one vector (random if ``v`` is ``None``).

        Returns:
            Whether a vector was added (not if the basis spans the space, or
            ``v`` lies in it).
        """
        rows = self.m + self._pending
        if rows >= self.n or rows + 1 >= self._max_rows:
            return False
        self._room(rows + 1)
        for _ in range(3):
            r = (
                random_vector(self.n, self.generator, self.dtype, self.device)
                if v is None
                else v.detach().to(device=self.device, dtype=self.dtype).reshape(-1)
            )
            r, _ = self._orthogonalize(r, rows)
            norm = float(torch.linalg.vector_norm(r))
            if norm > 1e-3 * math.sqrt(self.n) or (v is not None and norm > 0):
                break
        else:
            return False
        self._Q[rows] = r / norm
        self._pending += 1
        self.block = max(self.block, self._pending)
        # the basis holds m + pending rows: fewer steps fit in a budget
        if self._max_rows < self.n:
            self.max_steps = min(
                self.max_steps, max(self.m, self._max_rows - self._pending)
            )
        return True

    def step(self) -> None:
        """Multiply the oldest pending vector (one product)."""
        self._check_step()
        j = self.m
        rows = j + self._pending
        w = self._product(j)
        w, h = self._orthogonalize(w, rows)
        self._room(rows + 1)
        self._coef[:rows, j] = h.double().cpu().numpy()
        self.m = j + 1
        self._pending -= 1
        self._scale = max(self._scale, float(np.max(np.abs(self._coef[:rows, j]))))
        beta = float(torch.linalg.vector_norm(w))
        if rows < self.n and beta > 100 * self.eps * max(self._scale, beta):
            self._Q[rows] = w / beta
            self._coef[rows, j] = beta
            self._pending += 1
        elif self._pending == 0 and self.m < self.n:
            # An invariant subspace: go on from a random vector orthogonal to it.
            self.restarts += 1
            self.add_vector()
        t = self.tridiagonal()
        self.alphas = t.diagonal().tolist()
        self.betas = t.diagonal(1).tolist()
        self.beta = float(np.linalg.norm(self._leak()))

    def _product(self, j: int) -> Tensor:
        """``H q_j``; with block products, of every pending row in one product.

        Band Lanczos never changes a basis row once written, so the products of
        the pending rows ``q_j .. q_{j+p-1}`` can be taken together (one
        matrix-matrix product: one pass over the data for ``p`` vectors) and
        used at the next ``p`` steps; the recurrence is the same as with
        one product a step.
        """
        early = self._ahead.pop(j, None)
        if early is not None:
            return early
        p = min(self._pending, self.steps_cap - j, self.max_steps - j)
        if not self.block_products or p < 2:
            return self._apply(self._row(j))
        block = torch.stack([self._row(i) for i in range(j, j + p)], dim=1)
        out = self.matvec(block)
        self.n_matvecs += p
        if out.shape != block.shape:
            msg = (
                f"matvec returned shape {tuple(out.shape)} for a block of shape "
                f"{tuple(block.shape)}; pass block_products=False"
            )
            raise ConfigError(msg)
        out = out.to(dtype=self.dtype, device=self.device)
        _check_finite(out)
        for i in range(1, p):
            self._ahead[j + i] = out[:, i]
        return out[:, 0]

    def _leak(self) -> np.ndarray:
        """``C``: the pending vectors' coefficients of ``H Q_m``, ``(pending, m)``."""
        return self._coef[self.m : self.m + self._pending, : self.m]

    def tridiagonal(self) -> Tensor:
        """Return the banded ``T_m = Q_mᵀ H Q_m`` (dense float64, CPU)."""
        a = self._coef[: self.m, : self.m]
        return torch.from_numpy(np.triu(a) + np.triu(a, 1).T)

    def ritz(self) -> tuple[np.ndarray, Tensor, np.ndarray]:
        """Ritz values (descending), ``T``'s eigenvectors and residuals ``‖C s‖``."""
        evals, evecs = torch.linalg.eigh(self.tridiagonal())
        evals = evals.flip(0)
        evecs = evecs.flip(1)
        res = np.linalg.norm(self._leak() @ evecs.numpy(), axis=0)
        return evals.numpy(), evecs, res
