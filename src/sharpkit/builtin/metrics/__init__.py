"""Hessian metrics: ``spectral``, ``frobenius``, ``trace`` and ``density``.

Each metric measures the Hessian of the mean loss over the analysis set
(``ctx.hessian``, see :mod:`sharpkit.curvature.operator`), one per module:

* ``spectral`` (:mod:`._spectral`): the largest eigenvalue λ_max (or the
  top/bottom ``top_k``) by Lanczos, certified to a relative bound ``ctx.tol``;
  power iteration on request (paper Fig. 1a).
* ``frobenius`` (:mod:`._frobenius`): ‖H‖_F, exact on a Krylov subspace plus a
  Hutchinson estimate of the deflated remainder (paper Fig. 1b).
* ``trace`` (:mod:`._trace`): tr H exactly by the Gauss-Newton identity where it
  holds, else Hutch++ deflated by a Lanczos basis, or plain Hutchinson.
* ``density`` (:mod:`._density`): the eigenvalue density by stochastic Lanczos
  quadrature; its value is the quadrature's trace estimate.

They share one skeleton (:mod:`._common`: clock, product count, random stream,
budget, the exact-or-estimate decision) and one Krylov space: ``spectral``
hands its Lanczos process to ``ctx.krylov_process``, and ``frobenius``,
``trace`` and ``density`` extend it through ``ctx.krylov(steps)`` to the
dimension they deflate, so the products ``spectral`` spent are not repeated.
``spectral`` (with ``which="largest"``) also sets ``ctx.eigenvectors``, which
``sharpkit.measure`` returns as ``Measurement.warm_start``, and starts from
``ctx.warm_start`` when one is given.

This is the plugin module the entry point ``builtin.metrics`` names. Heavy
modules (torch, the engine) are imported inside the methods so that loading
it (``sharpkit --help``, ``sharpkit plugins``) stays cheap.
"""

from __future__ import annotations

from sharpkit import MetricSpec, hookimpl
from sharpkit.builtin._spec import signature_options
from sharpkit.builtin.metrics._common import EXACT_MAX
from sharpkit.builtin.metrics._density import MAX_DENSITY_GRID, Density
from sharpkit.builtin.metrics._frobenius import Frobenius
from sharpkit.builtin.metrics._spectral import Spectral
from sharpkit.builtin.metrics._spectral import mixed_start as _mixed_start
from sharpkit.builtin.metrics._trace import GGN_AUTO_MAX_CLASSES, Trace

__all__ = [
    "EXACT_MAX",
    "GGN_AUTO_MAX_CLASSES",
    "MAX_DENSITY_GRID",
    "Density",
    "Frobenius",
    "Spectral",
    "Trace",
    "sharpkit_register_metrics",
]

# bench/bench_resnet_profile.py starts Lanczos as ``spectral`` does
_ = _mixed_start

# Help shared by the options of several metrics.
_HELP = {
    "rel_stderr": "Target relative standard error.",
    "probes": "Fixed number of probes (overrides rel_stderr).",
    "exact_max": "Compute exactly up to this many parameters.",
}

_SPECTRAL_HELP = {
    "top_k": "How many eigenvalues.",
    "which": "Which end of the spectrum.",
    "method": "Lanczos (certified) or power iteration (as PyHessian).",
    "bound": "Stopping bound: r²/gap estimate or rigorous residual.",
    "start": "Start vectors: two random, or gradient plus random.",
    "data_error": "Also the standard error over the data (16-chunk jackknife).",
}
_FROBENIUS_HELP = {
    "rel_stderr": _HELP["rel_stderr"],
    "deflation": "Krylov dimension deflated exactly.",
    "probes": _HELP["probes"],
    "exact_max": _HELP["exact_max"],
    "data_error": "Also the standard error over the data (U-statistic, 16 chunks).",
}
_TRACE_HELP = {
    "method": "Estimator.",
    "rel_stderr": _HELP["rel_stderr"],
    "sketch": "Dimension of the deflated subspace (Hutch++).",
    "sketch_method": "Krylov basis or Meyer et al.'s random sketch.",
    "probes": _HELP["probes"],
    "exact_max": _HELP["exact_max"],
    "data_error": "Also the standard error over the data (16 chunks).",
}
_DENSITY_HELP = {
    "probes": "Random probes.",
    "steps": "Lanczos steps per probe.",
    "sigma": "Gaussian smoothing width (default 1 % of the range).",
    "grid": "Density grid points.",
    "exact_max": _HELP["exact_max"],
    "data_error": "Also the trace's standard error over the data (16 chunks).",
}


@hookimpl
def sharpkit_register_metrics() -> list[MetricSpec]:
    """Register ``spectral``, ``frobenius``, ``trace`` and ``density``."""
    return [
        MetricSpec(
            name="spectral",
            factory=Spectral,
            description="Largest Hessian eigenvalue λ_max (or top-k) by Lanczos, "
            "with a certified relative bound.",
            options=signature_options(
                Spectral,
                _SPECTRAL_HELP,
                choices=Spectral.CHOICES,
            ),
            stochastic=False,
            unit="loss / parameter²",
            long_name="largest Hessian eigenvalue λ_max",
        ),
        MetricSpec(
            name="frobenius",
            factory=Frobenius,
            description="Hessian Frobenius norm ‖H‖_F: exact on a Krylov subspace "
            "plus a deflated Hutchinson estimate.",
            options=signature_options(
                Frobenius,
                _FROBENIUS_HELP,
            ),
            stochastic=True,
            unit="loss / parameter²",
            long_name="Hessian Frobenius norm ‖H‖_F",
        ),
        MetricSpec(
            name="trace",
            factory=Trace,
            description="Hessian trace: exact for ReLU/BN networks (Gauss-Newton "
            "identity), else Krylov-deflated Hutch++ with a standard error.",
            options=signature_options(
                Trace,
                _TRACE_HELP,
                choices=Trace.CHOICES,
            ),
            stochastic=True,
            unit="loss / parameter²",
            long_name="Hessian trace tr(H)",
        ),
        MetricSpec(
            name="density",
            factory=Density,
            description="Hessian eigenvalue density by stochastic Lanczos "
            "quadrature; value: its trace estimate.",
            options=signature_options(
                Density,
                _DENSITY_HELP,
            ),
            stochastic=True,
            unit="loss / parameter²",
            long_name="Hessian trace tr(H) from the eigenvalue density",
        ),
    ]
