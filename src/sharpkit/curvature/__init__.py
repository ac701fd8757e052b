"""The numerical engine: Hessian operators, eigensolvers and stochastic estimators.

It takes a model, a loss and data (or any symmetric matvec) and knows nothing of
plugins, the CLI or the results store.

* :class:`HessianOperator` (``operator.py``): exact Hessian-vector products of
  the mean loss over a whole analysis set.
* :func:`lanczos` (``lanczos.py``): extreme eigenvalues with error bounds.
* :func:`power_iteration` (``power.py``): PyHessian's method, for comparison.
* :func:`hutchinson_trace`, :func:`hutchpp_trace`, :func:`frobenius_norm`,
  :func:`slq_density` (``stochastic.py``): estimates with standard errors.
* :func:`dense_hessian` (``exact.py``): the dense matrix of a small model.
"""

from __future__ import annotations

from sharpkit.curvature.exact import ExactSpectrum, dense_hessian, exact_spectrum
from sharpkit.curvature.lanczos import LanczosProcess, LanczosResult, lanczos
from sharpkit.curvature.operator import HVP_METHODS, HessianOperator, analysis_mode
from sharpkit.curvature.power import PowerResult, power_iteration
from sharpkit.curvature.stochastic import (
    Deflation,
    DensityEstimate,
    Estimate,
    frobenius_norm,
    hutchinson_trace,
    hutchpp_trace,
    krylov_deflation,
    slq_density,
    smooth_density,
)

__all__ = [
    "HVP_METHODS",
    "Deflation",
    "DensityEstimate",
    "Estimate",
    "ExactSpectrum",
    "HessianOperator",
    "LanczosProcess",
    "LanczosResult",
    "PowerResult",
    "analysis_mode",
    "dense_hessian",
    "exact_spectrum",
    "frobenius_norm",
    "hutchinson_trace",
    "hutchpp_trace",
    "krylov_deflation",
    "lanczos",
    "power_iteration",
    "slq_density",
    "smooth_density",
]
