"""The engine internals the built-in metrics still use, in one place.

Everything else the metrics need comes from sharpkit's public API and
:class:`~sharpkit.AnalysisContext`. What remains here is not public yet: the
estimators' probe constants (for a metric's cost estimate and its path
attributes) and the checks of the exact Gauss-Newton trace. The import-linter
contract "built-ins import only public names" allows this module's imports and
no others; make these public (or part of the context) and delete it.
"""

from __future__ import annotations

from sharpkit.curvature.ggn import (
    cross_entropy_form,
    ggn_trace,
    logits_obstacle,
    multilinear_check,
    supported_layers,
)
from sharpkit.curvature.stochastic import (
    DEFAULT_MIN_PROBES,
    FROBENIUS_MIN_PROBES,
    ORTHOGONAL_MAX,
)

__all__ = [
    "DEFAULT_MIN_PROBES",
    "FROBENIUS_MIN_PROBES",
    "ORTHOGONAL_MAX",
    "cross_entropy_form",
    "ggn_trace",
    "logits_obstacle",
    "multilinear_check",
    "supported_layers",
]
