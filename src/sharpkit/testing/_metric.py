"""The conformance suite for metric plugins: :class:`MetricContract`."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar

import sharpkit
from sharpkit.testing._checks import (
    assert_unchanged,
    check_spec,
    create,
    expect,
    global_rng,
    is_number,
    snapshot,
)
from sharpkit.testing._fixtures import tiny_context

__all__ = ["MetricContract", "check_metric_spec"]


def check_metric_spec(spec: sharpkit.MetricSpec) -> None:
    """Validate a metric spec (:func:`check_spec` restricted to metrics).

    Raises:
        PluginContractError: The spec breaks the contract.
    """
    check_spec(spec, "metric")


class MetricContract:
    """Base class of the metric conformance tests; subclass it as ``Test<Name>``.

    Examples:
        ```python
        class TestMyMetric(MetricContract):
            spec = MY_SPEC
            options = {"probes": 4}
        ```

    The tests run the metric on :func:`tiny_context` (an 87-parameter float64
    BN-MLP on 64 examples); override :meth:`make_context` for a metric with needs.

    Attributes:
        spec: The metric spec under test.
        options: Options passed to the factory (CLI strings or Python values).
    """

    spec: ClassVar[sharpkit.MetricSpec]
    options: ClassVar[Mapping[str, Any]] = {}

    def make_context(self, seed: int = 0) -> sharpkit.AnalysisContext:
        """Return the context the tests use; override for a metric with needs.

        Args:
            seed: The context's seed (and the tiny model's).
        """
        return tiny_context(seed=seed)

    def make_metric(self) -> sharpkit.Metric:
        """Build the metric from the spec with :attr:`options`, as sharpkit does."""
        metric: sharpkit.Metric = create(self.spec, self.options)
        return metric

    def compute(self, ctx: sharpkit.AnalysisContext) -> sharpkit.MetricResult:
        """Build the metric from the spec and compute it on ``ctx``.

        Args:
            ctx: The analysis context.
        """
        return self.make_metric().compute(ctx)

    def test_spec_is_valid(self) -> None:
        """The spec passes :func:`check_spec`: the registry's rules and more."""
        check_metric_spec(self.spec)

    def test_factory_returns_metric(self) -> None:
        """The factory returns an object with ``compute(ctx)``."""
        metric = self.make_metric()
        expect(
            isinstance(metric, sharpkit.Metric),
            f"the factory returned {type(metric).__name__}, which has no compute()",
        )

    def test_returns_finite_metric_result(self) -> None:
        """``compute`` returns a MetricResult whose value is a finite float."""
        result = self.compute(self.make_context())
        expect(
            isinstance(result, sharpkit.MetricResult),
            f"compute returned {type(result).__name__}, not a MetricResult",
        )
        expect(
            is_number(result.value),
            f"value is a {type(result.value).__name__}, not a float",
        )
        expect(math.isfinite(result.value), f"value {result.value} is not finite")
        for name in ("stderr", "bound"):
            extra = getattr(result, name)
            if extra is not None:
                expect(
                    is_number(extra) and extra >= 0,
                    f"{name} must be a non-negative float or None, got {extra!r}",
                )

    def test_deterministic_for_seed(self) -> None:
        """The same seed gives the same value, bit for bit, whatever the global RNG."""
        with global_rng(101):
            a = self.compute(self.make_context(seed=3))
        with global_rng(202):
            b = self.compute(self.make_context(seed=3))
        expect(
            a.value == b.value,
            f"two runs with seed 3 gave {a.value!r} and {b.value!r}; draw random "
            "numbers from ctx.generator(...), not from torch's global RNG",
        )
        expect(a.stderr == b.stderr, f"stderr {a.stderr!r} != {b.stderr!r}")

    def test_stochastic_reports_stderr(self) -> None:
        """A metric declared stochastic reports a standard error."""
        if not self.spec.stochastic:
            return
        result = self.compute(self.make_context())
        expect(
            result.stderr is not None,
            "the spec says stochastic=True but the result has no stderr",
        )

    def test_model_left_unchanged(self) -> None:
        """Parameters, buffers and training flags are exactly as they were."""
        ctx = self.make_context()
        before = snapshot(ctx.model)
        self.compute(ctx)
        assert_unchanged(before, ctx.model, "the analysed model")
