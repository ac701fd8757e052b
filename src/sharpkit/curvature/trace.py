"""The trace ``tr H``: Hutchinson's estimator, deflated or not, and Hutch++.

Hutchinson (1990, Commun. Stat. Simul. Comput.): ``uᵀ H u`` for probes with
``E[u uᵀ] = P``, unbiased for ``tr(PHP)``, variance ``2(‖A‖_F² - Σ_i A_ii²)``
for ``A = PHP`` with Rademacher probes; ``tr(QᵀHQ)`` is added exactly. Hutch++
(Meyer, Musco, Musco & Woodruff, 2021, SOSA) builds ``Q`` from a sketch first.
See :mod:`sharpkit.curvature.stochastic` for the whole method.
"""

from __future__ import annotations

import time
from dataclasses import replace

import torch

from sharpkit.curvature.deflation import Deflation, Matvec, sketch_deflation
from sharpkit.curvature.probes import (
    ProbeProducts,
    ProbeSource,
    check_distribution,
    vector_setup,
)
from sharpkit.curvature.stopping import (
    DEFAULT_MIN_PROBES,
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
from sharpkit.errors import ConfigError

__all__ = ["hutchinson_trace", "hutchpp_trace"]


def hutchinson_trace(
    matvec: Matvec,
    n: int,
    *,
    probes: int | None = None,
    max_matvecs: int | None = None,
    target_rel_stderr: float | None = None,
    min_probes: int = DEFAULT_MIN_PROBES,
    deflation: Deflation | None = None,
    generator: torch.Generator | None = None,
    distribution: str = "auto",
    device: torch.device | str | None = None,
    vector_dtype: torch.dtype | None = None,
    progress: Progress | None = None,
) -> Estimate:
    """Estimate ``tr H`` with Hutchinson's estimator (optionally deflated).

    Independent probes are multiplied up to eight at a time where ``matvec``
    multiplies a block in one pass (see
    :class:`~sharpkit.curvature.probes.ProbeProducts`): the same probes and
    estimate, and ``n_matvecs`` counts every product taken.

    Args:
        matvec: ``v -> H v``.
        n: Dimension.
        probes: Exactly this many probes (overrides the stopping rules; fewer
            when orthogonal probes span the space first).
        max_matvecs: Budget of products for the probes (and nothing else: a
            given ``deflation`` is already paid for).
        target_rel_stderr: Stop once ``stderr <= target * |value|``.
        min_probes: Probes before the target may stop the loop.
        deflation: Estimate only the remainder outside this subspace.
        generator: Random source of the probes.
        distribution: ``"auto"`` (default: ``"orthogonal"`` while the space left
            after deflation has at most ``ORTHOGONAL_MAX`` dimensions, else
            ``"rademacher"``), ``"rademacher"`` (independent ±1 entries: the
            smallest variance of independent probes), ``"gaussian"`` or
            ``"orthogonal"`` (mutually orthogonal random directions: never more
            than ``n - rank`` probes, and exact after that many).
        device: Device of the vectors.
        vector_dtype: Dtype of the vectors.
        progress: ``progress(done, total, estimate=..., stderr=...)``.

    Returns:
        An :class:`Estimate` (default: 30 probes without a target).

    Raises:
        ConfigError: A bad argument.
    """
    start = time.perf_counter()
    check_stopping(max_matvecs, target_rel_stderr, min_probes)
    check_distribution(distribution)
    dtype, dev = vector_setup(matvec, n, deflation, device, vector_dtype)
    exact = deflation.trace if deflation is not None else 0.0
    budget = probe_budget(max_matvecs, 0, probes)
    source = ProbeSource(n, deflation, distribution, generator, dtype, dev)
    tally = Tally(source, source.square_weight())

    rule = StopRule(probes, budget, target_rel_stderr, min_probes)
    products = ProbeProducts(matvec, source, dtype, probe_cap(rule))

    def draw() -> None:
        u, hu = products.next()
        rest = source.project(hu)
        # E‖(PHP) z‖² = ‖PHP‖_F² >= half the variance of uᵀHu: a free bound
        tally.add(float(torch.dot(u, hu)), (float(torch.dot(rest, rest)),))

    def summarize(t: Tally) -> tuple[float, float]:
        return exact + t.mean(), t.stderr()

    base = "hutchinson" + ("+deflation" if deflation is not None else "")
    return run_probes(
        tally,
        draw,
        summarize,
        rule,
        progress=progress,
        method=base,
        exact=exact,
        used=0,
        start=start,
        spent=lambda: products.spent,
    )


def hutchpp_trace(
    matvec: Matvec,
    n: int,
    *,
    sketch: str = "lanczos",
    sketch_size: int | None = None,
    deflation: Deflation | None = None,
    probes: int | None = None,
    max_matvecs: int | None = None,
    target_rel_stderr: float | None = None,
    min_probes: int = DEFAULT_MIN_PROBES,
    generator: torch.Generator | None = None,
    distribution: str = "auto",
    device: torch.device | str | None = None,
    vector_dtype: torch.dtype | None = None,
    progress: Progress | None = None,
) -> Estimate:
    """Estimate ``tr H`` with Hutch++: exact on a subspace, Hutchinson on the rest.

    The subspace is ``deflation`` when given (e.g. a cached Lanczos basis, free),
    else ``sketch="lanczos"``: ``sketch_size`` Lanczos steps from a random vector
    (Krylov-aware deflation, one product per dimension), or ``sketch="random"``:
    Meyer et al.'s ``orth(H S)`` for a Rademacher ``S`` (two products per
    dimension: ``HS`` and ``HQ``).

    Args:
        matvec: ``v -> H v``.
        n: Dimension.
        sketch: ``"lanczos"`` or ``"random"`` (ignored when ``deflation`` is given).
        sketch_size: Dimension of the sketched subspace (default 20, or a third
            of ``max_matvecs`` when that is smaller).
        deflation: A ready subspace to deflate.
        probes: Exactly this many Hutchinson probes.
        max_matvecs: Budget of products, sketch included.
        target_rel_stderr: Stop once ``stderr <= target * |value|``.
        min_probes: Probes before the target may stop the loop.
        generator: Random source (sketch and probes).
        distribution: Probes, as for :func:`hutchinson_trace`.
        device: Device of the vectors.
        vector_dtype: Dtype of the vectors.
        progress: ``progress(done, total, estimate=..., stderr=...)``.

    Returns:
        An :class:`Estimate`; ``n_matvecs`` includes the sketch.

    Raises:
        ConfigError: A bad argument.
    """
    start = time.perf_counter()
    check_stopping(max_matvecs, target_rel_stderr, min_probes)
    check_distribution(distribution)
    if sketch not in ("lanczos", "random"):
        msg = f"sketch must be 'lanczos' or 'random', got {sketch!r}"
        raise ConfigError(msg)
    used = 0
    if deflation is None:
        size = sketch_size
        if size is None:
            size = 20 if max_matvecs is None else max(1, min(20, max_matvecs // 3))
        size = min(size, n)
        deflation = sketch_deflation(
            matvec, n, sketch, size, generator, device, vector_dtype
        )
        used = deflation.n_matvecs
    budget = probe_budget(
        max_matvecs,
        used,
        probes,
        spent_on="the sketch",
        remedy="pass a smaller sketch_size",
    )
    rest = hutchinson_trace(
        matvec,
        n,
        probes=probes,
        max_matvecs=budget,
        target_rel_stderr=target_rel_stderr,
        min_probes=min_probes,
        deflation=deflation,
        generator=generator,
        distribution=distribution,
        device=device,
        vector_dtype=vector_dtype,
        progress=offset_progress(progress, used),
    )
    method = f"hutch++({deflation.source})+{rest.distribution}"
    if rest.exhausted:
        method += "(exact)"
    return replace(
        rest,
        n_matvecs=rest.n_matvecs + used,
        seconds=time.perf_counter() - start,
        method=method,
    )
