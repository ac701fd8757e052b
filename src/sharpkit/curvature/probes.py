"""Random probes ``u`` with ``E[u uᵀ] = P``, the projector off a deflation.

``distribution="auto"`` draws *orthogonal* probes while the space left after
deflation has at most :data:`ORTHOGONAL_MAX` dimensions ``d``: Gaussian vectors
projected off ``Q`` and off every earlier probe, normalised and scaled by
``sqrt(d)``, i.e. the columns of a Haar-random orthonormal basis of that space
in random order. Each is unbiased; the mean of ``k`` of them has the
finite-population variance ``σ²/k · (d - k)/(d - 1)`` of sampling without
replacement (Cochran, 1977, *Sampling Techniques*), and after ``d`` probes the
value is exact. Beyond :data:`ORTHOGONAL_MAX` they are independent Rademacher
vectors, the smallest variance among probes with i.i.d. entries (Hutchinson,
1990).
"""

from __future__ import annotations

import math
from collections import deque

import torch
from torch import Tensor

from sharpkit.curvature.deflation import Deflation, Matvec
from sharpkit.curvature.lanczos import operator_device, operator_dtype, random_vector
from sharpkit.errors import ConfigError, NumericalError

__all__ = [
    "DISTRIBUTIONS",
    "ORTHOGONAL_MAX",
    "PROBE_BLOCK",
    "ProbeProducts",
    "ProbeSource",
    "check_distribution",
    "vector_setup",
]

#: ``distribution="auto"`` draws orthogonal probes while the space left after
#: deflation has at most this many dimensions (they are kept, so memory grows as
#: probes x n; beyond it, ``1 - k/d`` is ~1 anyway), else Rademacher probes.
ORTHOGONAL_MAX = 4096
DISTRIBUTIONS = ("auto", "rademacher", "gaussian", "orthogonal")


def check_distribution(distribution: str) -> None:
    """Raise a :class:`ConfigError` unless ``distribution`` is known."""
    if distribution not in DISTRIBUTIONS:
        msg = (
            f"distribution must be one of {', '.join(map(repr, DISTRIBUTIONS))}, "
            f"got {distribution!r}"
        )
        raise ConfigError(msg)


def vector_setup(
    matvec: Matvec,
    n: int,
    deflation: Deflation | None,
    device: torch.device | str | None,
    vector_dtype: torch.dtype | None,
) -> tuple[torch.dtype, torch.device]:
    """Check ``n``; return the probes' dtype and device (the basis's if any)."""
    if n < 1:
        msg = f"dimension n must be >= 1, got {n}"
        raise ConfigError(msg)
    v0 = deflation.basis[:, 0] if deflation is not None and deflation.rank else None
    return operator_dtype(matvec, v0, vector_dtype), operator_device(matvec, v0, device)


class ProbeSource:
    """Probe vectors ``u`` with ``E[u uᵀ] = P``, the projector off the deflation.

    ``rademacher``/``gaussian``: ``u = P z``, independent. ``orthogonal``: ``u =
    sqrt(d) w``, where ``w`` is a unit vector in the ``d``-dimensional range of
    ``P``, orthogonal to every earlier probe: a Gaussian vector projected and
    orthogonalised, so ``w_1, w_2, ...`` are the columns of a Haar-random
    orthonormal basis of that range. The probes are exchangeable and after ``d``
    of them they span it, so the estimate is exact; their mean has the
    finite-population variance ``σ²/k (d - k)/(d - 1)``.
    """

    def __init__(
        self,
        n: int,
        deflation: Deflation | None,
        distribution: str,
        generator: torch.Generator | None,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        self.n, self.deflation, self.generator = n, deflation, generator
        self.dtype, self.device = dtype, device
        self.dim = n - (deflation.rank if deflation is not None else 0)
        if distribution == "auto":
            small = self.dim <= ORTHOGONAL_MAX
            distribution = "orthogonal" if small else "rademacher"
        self.kind = distribution
        self.count = 0
        self._rows = torch.empty(0, n, dtype=dtype, device=device)

    @property
    def exhausted(self) -> bool:
        """Whether orthogonal probes have spanned the whole space left."""
        return self.kind == "orthogonal" and self.count >= self.dim

    def fpc(self) -> float:
        """Return ``(d - k)/(d - 1)``, the finite-population factor (1: independent)."""
        if self.kind != "orthogonal":
            return 1.0
        if self.exhausted:
            return 0.0
        return (self.dim - self.count) / max(self.dim - 1, 1)

    def square_weight(self) -> float:
        """``c`` in the trace's variance bound ``2(‖A‖_F² - c (tr A)²)``.

        Rademacher: ``Σ_i A_ii² >= (tr A)²/n``; orthogonal: the exact variance of
        ``d wᵀAw`` is ``2d/(d+2) (‖A‖_F² - (tr A)²/d)``; Gaussian: ``2‖A‖_F²``.
        """
        if self.kind == "rademacher":
            return 1.0 / self.n
        if self.kind == "orthogonal":
            return 1.0 / max(self.dim, 1)
        return 0.0

    def label(self, base: str) -> str:
        """Return the estimator's method name: ``base+kind``, ``(exact)`` if spanned."""
        return f"{base}+{self.kind}" + ("(exact)" if self.exhausted else "")

    def project(self, v: Tensor) -> Tensor:
        """Return ``P v`` (``v`` when there is no deflation)."""
        return self.deflation.project(v) if self.deflation is not None else v

    def draw(self) -> Tensor:
        """Return the next probe."""
        if self.kind != "orthogonal":
            self.count += 1
            kind = self.kind
            z = random_vector(self.n, self.generator, self.dtype, self.device, kind)
            return self.project(z)
        g, norm = self._orthogonal_direction()
        if self.count == self._rows.shape[0]:
            grown = torch.empty(
                min(self.dim, max(8, 2 * self.count)),
                self.n,
                dtype=self.dtype,
                device=self.device,
            )
            grown[: self.count] = self._rows[: self.count]
            self._rows = grown
        w = g / norm
        self._rows[self.count] = w
        self.count += 1
        return w * math.sqrt(self.dim)

    def _orthogonal_direction(self) -> tuple[Tensor, float]:
        """Return a Gaussian vector projected off ``Q`` and earlier probes; its norm."""
        for _ in range(3):
            g = random_vector(self.n, self.generator, self.dtype, self.device)
            scale = float(torch.linalg.vector_norm(g))
            g = self.project(g)
            rows = self._rows[: self.count]
            for _ in range(2):  # classical Gram-Schmidt twice
                g = g - rows.T @ (rows @ g)
            norm = float(torch.linalg.vector_norm(g))
            if norm > 1e-4 * scale:
                return g, norm
        # three draws in a row almost inside the span: rounding, not chance
        msg = (
            f"orthogonal probe {self.count + 1} of {self.dim} vanished to "
            "rounding; pass distribution='rademacher'"
        )
        raise NumericalError(msg)


PROBE_BLOCK = 8
"""Independent probes multiplied in one block product (see :class:`ProbeProducts`)."""


class ProbeProducts:
    """Probes and their products ``(u, H u)``, several in one product where it pays.

    With independent probes (Rademacher, Gaussian) and an operator that
    multiplies a block in one pass (a true ``block_products`` attribute, as
    :class:`~sharpkit.curvature.operator.HessianOperator` has), up to
    :data:`PROBE_BLOCK` probes are drawn and multiplied together: on the
    benchmark BN-MLP a block of 8 costs about half its vectors one by one. The
    probes are the same, in the same order, as one at a time; at most
    ``PROBE_BLOCK - 1`` products are taken that the loop then does not use,
    and :attr:`spent` counts them. Orthogonal probes stay one at a time (each
    depends on the ones before and their count is the finite-population
    factor).

    Args:
        matvec: ``v -> H v``.
        source: Where the probes come from.
        dtype: Dtype of the products.
        cap: Probes the loop draws at most (no block goes beyond it).
    """

    def __init__(
        self, matvec: Matvec, source: ProbeSource, dtype: torch.dtype, cap: int
    ) -> None:
        self.matvec = matvec
        self.source = source
        self.dtype = dtype
        self.cap = cap
        together = bool(getattr(matvec, "block_products", False))
        self.block = PROBE_BLOCK if together and source.kind != "orthogonal" else 1
        self.spent = 0
        self._ready: deque[tuple[Tensor, Tensor]] = deque()

    def next(self) -> tuple[Tensor, Tensor]:
        """Return the next probe ``u`` and ``H u``."""
        if not self._ready:
            k = max(1, min(self.block, self.cap - self.spent))
            if k == 1:
                u = self.source.draw()
                self._ready.append((u, self.matvec(u).to(self.dtype)))
            else:
                U = torch.stack([self.source.draw() for _ in range(k)], dim=1)
                HU = self.matvec(U).to(self.dtype)
                self._ready.extend(zip(U.unbind(1), HU.unbind(1), strict=True))
            self.spent += k
        return self._ready.popleft()
