r"""The Frobenius norm ``‖H‖_F = sqrt(tr H²)``: exact on a deflation plus probes.

``‖H‖_F² = ‖QᵀHQ‖_F² + 2‖PHQ‖_F² + E‖P H u‖²`` for probes with ``E[u uᵀ] =
P``: the first two terms come from the deflation, the last is ``zᵀA²z`` for
``A = PHP`` (variance ``2(‖A²‖_F² - Σ_i (A²)_ii²)``). The standard error of
``sqrt(S)`` is that of ``S`` by the delta method, ``se(S) / (2‖H‖_F)``. See
:mod:`sharpkit.curvature.stochastic` for the whole method.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from sharpkit.curvature.deflation import Deflation, Matvec, krylov_deflation
from sharpkit.curvature.probes import (
    ProbeProducts,
    ProbeSource,
    check_distribution,
    vector_setup,
)
from sharpkit.curvature.stopping import (
    FROBENIUS_MIN_PROBES,
    Estimate,
    Progress,
    StopRule,
    Tally,
    check_stopping,
    offset_progress,
    probe_budget,
    probe_cap,
    run_probes,
)

__all__ = ["PAIR_RESERVOIR", "frobenius_norm"]

#: Images ``P H u`` kept for the cross terms of the Frobenius variance bound.
PAIR_RESERVOIR = 8


def frobenius_norm(
    matvec: Matvec,
    n: int,
    *,
    deflation: Deflation | None = None,
    deflation_steps: int = 20,
    probes: int | None = None,
    max_matvecs: int | None = None,
    target_rel_stderr: float | None = None,
    min_probes: int = FROBENIUS_MIN_PROBES,
    generator: torch.Generator | None = None,
    distribution: str = "auto",
    device: torch.device | str | None = None,
    vector_dtype: torch.dtype | None = None,
    progress: Progress | None = None,
) -> Estimate:
    """Estimate ``‖H‖_F = sqrt(tr H²)``: exact on a deflated subspace plus probes.

    ``‖H‖_F² = ‖QᵀHQ‖_F² + 2‖PHQ‖_F² + E‖P H P z‖²`` (see the module docstring).

    Args:
        matvec: ``v -> H v``.
        n: Dimension.
        deflation: A ready subspace (e.g. from a cached Lanczos run); if
            ``None``, ``deflation_steps`` Lanczos steps build one.
        deflation_steps: Krylov dimension when no ``deflation`` is given (0 for
            plain probes).
        probes: Exactly this many probes.
        max_matvecs: Budget of products, deflation included.
        target_rel_stderr: Stop once ``stderr(‖H‖_F) <= target * ‖H‖_F``.
        min_probes: Probes before the target may stop the loop.
        generator: Random source.
        distribution: Probes, as for :func:`hutchinson_trace`.
        device: Device of the vectors.
        vector_dtype: Dtype of the vectors.
        progress: ``progress(done, total, estimate=..., stderr=...)``.

    Returns:
        An :class:`Estimate` of ``‖H‖_F``; ``samples`` are the ``‖PHPz‖²`` and
        ``exact_part`` is the exact part of ``‖H‖_F²``.

    Raises:
        ConfigError: A bad argument.
    """
    start = time.perf_counter()
    check_stopping(max_matvecs, target_rel_stderr, min_probes)
    check_distribution(distribution)
    used = 0
    if deflation is None and deflation_steps > 0:
        steps = deflation_steps
        if max_matvecs is not None:
            steps = max(1, min(steps, max_matvecs // 2))
        deflation = krylov_deflation(
            matvec,
            n,
            steps,
            generator=generator,
            device=device,
            vector_dtype=vector_dtype,
        )
        used = deflation.n_matvecs
    dtype, dev = vector_setup(matvec, n, deflation, device, vector_dtype)
    exact = deflation.frobenius_squared if deflation is not None else 0.0
    if deflation is not None and deflation.rank >= n:
        return _spanned(exact, used, deflation.rank, start)
    budget = probe_budget(max_matvecs, used, probes)
    source = ProbeSource(n, deflation, distribution, generator, dtype, dev)
    # Rademacher: Σ_i B_ii² >= (tr B)²/n; the cross terms of orthogonal probes
    # already leave (tr B)²/d out, and Gaussian ones have variance 2‖B‖_F².
    tally = Tally(source, 1.0 / n if source.kind == "rademacher" else 0.0)
    rule = StopRule(probes, budget, target_rel_stderr, min_probes)
    products = ProbeProducts(matvec, source, dtype, probe_cap(rule))
    draw = _drawer(products, source, tally)

    def summarize(t: Tally) -> tuple[float, float]:
        root = math.sqrt(max(exact + t.mean(), 0.0))
        se = t.stderr()
        return root, (se / (2 * root) if root > 0 else se)

    return run_probes(
        tally,
        draw,
        summarize,
        rule,
        progress=offset_progress(progress, used),
        method="deflated-hutchinson" if deflation is not None else "hutchinson",
        exact=exact,
        used=used,
        start=start,
        spent=lambda: products.spent,
    )


def _drawer(
    products: ProbeProducts, source: ProbeSource, tally: Tally
) -> Callable[[], None]:
    """Return ``draw()``: one probe's ``‖PHu‖²`` and its cross terms into ``tally``."""
    kept: list[Tensor] = []

    def draw() -> None:
        hu = source.project(products.next()[1])
        # (P H u_i)ᵀ(P H u_j), i != j: E[c²] = ‖(PHP)²‖_F² >= half the variance
        pairs = [float(torch.dot(hu, y)) ** 2 for y in kept]
        if len(kept) < PAIR_RESERVOIR:
            kept.append(hu)
        tally.add(float(torch.dot(hu, hu)), pairs)

    return draw


def _spanned(exact: float, used: int, rank: int, start: float) -> Estimate:
    """The estimate when the deflation spans the whole space: exact."""
    return Estimate(
        value=math.sqrt(max(exact, 0.0)),
        stderr=0.0,
        n_matvecs=used,
        samples=np.zeros(0),
        exact_part=exact,
        deflation_rank=rank,
        converged=True,
        seconds=time.perf_counter() - start,
        method="exact",
        exhausted=True,
    )
