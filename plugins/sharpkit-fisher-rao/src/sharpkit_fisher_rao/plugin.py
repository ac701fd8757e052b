"""The entry-point module: registers the metric. Kept cheap to import (no torch)."""

from __future__ import annotations

import sharpkit
from sharpkit_fisher_rao.metric import FisherRaoNorm


@sharpkit.hookimpl
def sharpkit_register_metrics() -> list[sharpkit.MetricSpec]:
    """Register ``fisher-rao``."""
    return [
        sharpkit.MetricSpec(
            name="fisher-rao",
            factory=FisherRaoNorm,
            description="Fisher-Rao norm of the parameters (Liang et al., 2019)",
            options=(
                sharpkit.Option(
                    name="fisher",
                    type=str,
                    default="model",
                    choices=("model", "empirical"),
                    help="Labels from the model's predictive distribution or the data",
                ),
            ),
            unit="nats^(1/2)",
            long_name="Fisher-Rao norm ‖θ‖_fr",
        )
    ]
