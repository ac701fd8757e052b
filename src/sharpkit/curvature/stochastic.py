r"""Stochastic estimators of trace, Frobenius norm and spectral density.

All estimators draw their random probes from a ``torch.Generator`` (so a seed
reproduces them), report a standard error, and can stop at a target relative
standard error or a budget of matrix-vector products.

This module is their overview (the method, below) and re-exports their public
names; each job has its own module: :mod:`~sharpkit.curvature.deflation` (the
subspace ``Q``), :mod:`~sharpkit.curvature.probes` (probe distributions),
:mod:`~sharpkit.curvature.stopping` (standard errors and when to stop),
:mod:`~sharpkit.curvature.trace` (Hutchinson, Hutch++),
:mod:`~sharpkit.curvature.frobenius` (``‖H‖_F``) and
:mod:`~sharpkit.curvature.slq` (spectral density).

**Deflation.** Let ``Q`` (n x k) have orthonormal columns and ``P = I - QQᵀ``.
The four blocks ``QQᵀHQQᵀ``, ``QQᵀHP``, ``PHQQᵀ`` and ``PHP`` of ``H`` are
mutually orthogonal, so

.. math::
    \operatorname{tr} H = \operatorname{tr}(Q^\top H Q)
        + \operatorname{tr}(PHP), \qquad
    \lVert H\rVert_F^2 = \lVert Q^\top H Q\rVert_F^2 + 2\lVert PHQ\rVert_F^2
        + \lVert PHP\rVert_F^2 .

The first terms are computed exactly; only the remainder ``PHP`` is estimated
with random probes, whose variance falls as the dominant eigenvalues are
deflated. Three sources of ``Q``:

* a **Lanczos basis** ``Q_m`` (the Krylov space of a random vector, ``m``
  products): ``Q_mᵀ H Q_m = T_m`` and ``‖P H Q_m‖_F = β_m`` come free from the
  recurrence, so every product serves both the exact part and the deflation;
  the Krylov space captures the extreme eigenvalues far better than one pass of
  a random sketch ("Krylov-aware" deflation: Chen & Hallman, 2023, "Krylov-aware
  stochastic trace estimation", SIAM J. Matrix Anal. Appl.);
* **Ritz vectors** of a Lanczos run (e.g. the ``spectral`` metric's top
  eigenvectors): ``YᵀHY = diag(θ)`` and ``‖PHY‖_F² = Σ r_i²`` (their residuals);
* any orthonormal basis, e.g. Hutch++'s sketch ``orth(H S)`` (Meyer, Musco,
  Musco & Woodruff, 2021, "Hutch++: Optimal stochastic trace estimation", SOSA):
  ``HQ`` is computed (``k`` more products).

**Remainder estimators** (unbiased given ``Q``, because the probes are drawn
independently of it). With Rademacher ``z`` (entries ±1, ``E[zzᵀ] = I``) and
``u = Pz``:

* trace (Hutchinson, 1990, Commun. Stat. Simul. Comput.): ``uᵀ H u``, variance
  ``2(‖A‖_F² - Σ_i A_ii²)`` for ``A = PHP``;
* squared Frobenius norm: ``‖P H u‖² = zᵀ A² z``, variance
  ``2(‖A²‖_F² - Σ_i (A²)_ii²)``.

Rademacher probes have the smallest variance among probes with i.i.d. entries
(Hutchinson, 1990); Gaussian ones add the diagonal terms back. Estimating
``‖P H z‖²`` instead (no projection before ``H``) would also be unbiased for
``‖H‖_F² - ‖HQ‖_F²``, but its random part then includes the cross blocks
``PHQQᵀ``, which the estimator above computes exactly, so its variance is larger.
The standard error of ``‖H‖_F = sqrt(S)`` is propagated from that of ``S`` by
the delta method, ``se(‖H‖_F) = se(S) / (2‖H‖_F)``.

**Spectral density** by stochastic Lanczos quadrature (Ubaru, Chen & Saad, 2017,
"Fast estimation of tr(f(A)) via stochastic Lanczos quadrature", SIAM J. Matrix
Anal. Appl.; Ghorbani, Krishnan & Xiao, 2019, ICML, for Hessians): for each
normalised probe ``v = z/‖z‖``, ``m`` Lanczos steps give ``T_m = S Θ Sᵀ``; the
nodes ``θ_j`` with weights ``τ_j = S_{1j}²`` (summing to 1) form a Gauss rule for
the spectral measure of ``H`` seen from ``v``, whose expectation is the
eigenvalue density ``(1/n) Σ_i δ(t - λ_i)``. Its first two moments are exact per
probe: ``Σ τ_j θ_j = vᵀHv`` and ``Σ τ_j θ_j² = ‖Hv‖²``, whose expectations are
``tr H / n`` and ``tr H² / n``.

**Probes.** ``distribution="auto"`` draws *orthogonal* probes while the space
left after deflation has at most ``ORTHOGONAL_MAX`` dimensions ``d``: Gaussian
vectors projected off ``Q`` and off every earlier probe, normalised and scaled
by ``sqrt(d)``, i.e. the columns of a Haar-random orthonormal basis of that
space in random order. Each is unbiased; the mean of ``k`` of them has the
finite-population variance ``σ²/k · (d - k)/(d - 1)`` of sampling without
replacement (Cochran, 1977, *Sampling Techniques*), and after ``d`` probes the
value is exact, so no estimate costs more than ``n`` products. Beyond
``ORTHOGONAL_MAX`` they are independent Rademacher vectors.

**Standard errors that hold after sequential stopping.** Stopping at the first
probe count where the estimated standard error meets a target (a fixed-width
sequential interval: Chow & Robbins, 1965, Ann. Math. Statist.) is right only
asymptotically: with few probes it stops most often when the draws so far
happen to vary little, which for skewed samples is when they are also low (the
plain sample standard error covered the truth in 82-92 % of "95 %" intervals on
small networks). Three safeguards:

* the per-sample variance is ``max(s², V_b)``, where ``V_b`` is a bound from
  the same products: for the trace ``2(‖A‖_F² - c (tr A)²)`` with ``‖A‖_F² =
  E‖PHu‖²`` (``c = 1/n`` for Rademacher probes, since ``Σ A_ii² >= (tr A)²/n``;
  ``1/d`` for orthogonal ones; Avron & Toledo, 2011, J. ACM, for the
  variances); for ``‖H‖_F²``, ``2‖B‖_F²`` with ``B = A²``, estimated by the mean
  square of the cross products ``(PHu_i)ᵀ(PHu_j)`` of different probes;
* the standard error is widened by ``t_{0.975, k-1}/1.96`` (Student, 1908,
  Biometrika), so that ``value ± 2·stderr`` is a 95 % interval for any ``k``;
* ``frobenius_norm`` waits for ``FROBENIUS_MIN_PROBES`` = 16 probes (its samples
  are positive and right-skewed), the trace for ``DEFAULT_MIN_PROBES`` = 8.

On eight small network families (``tests/curvature/test_coverage.py``) at least
96.9 % of the intervals cover the truth and no miss exceeds 3.9 standard
errors. While a target is missed, each check predicts the independent probes
it would take (``k (stderr/target)²``); once the deflation plus that reaches
``n``, orthogonal probes go on to span the space (the exact value, ``n``
products in all).
"""

from __future__ import annotations

from sharpkit.curvature.deflation import Deflation, krylov_deflation
from sharpkit.curvature.frobenius import frobenius_norm
from sharpkit.curvature.probes import DISTRIBUTIONS, ORTHOGONAL_MAX
from sharpkit.curvature.slq import DensityEstimate, slq_density, smooth_density
from sharpkit.curvature.stopping import (
    DEFAULT_MIN_PROBES,
    FROBENIUS_MIN_PROBES,
    Estimate,
    t_factor,
)
from sharpkit.curvature.trace import hutchinson_trace, hutchpp_trace

__all__ = [
    "DEFAULT_MIN_PROBES",
    "DISTRIBUTIONS",
    "FROBENIUS_MIN_PROBES",
    "ORTHOGONAL_MAX",
    "Deflation",
    "DensityEstimate",
    "Estimate",
    "frobenius_norm",
    "hutchinson_trace",
    "hutchpp_trace",
    "krylov_deflation",
    "slq_density",
    "smooth_density",
    "t_factor",
]
