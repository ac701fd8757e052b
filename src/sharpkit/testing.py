"""Conformance suite for metric plugins (for plugin authors' own tests).

Subclass :class:`MetricContract`, set ``spec`` to your :class:`~sharpkit.MetricSpec`,
and pytest collects the contract's tests::

    from sharpkit.testing import MetricContract
    from my_plugin.plugin import MY_SPEC

    class TestMyMetric(MetricContract):
        spec = MY_SPEC

The suite checks that the spec is valid, that ``compute`` returns a finite
:class:`~sharpkit.MetricResult`, that the result is reproducible from the seed,
that stochastic metrics report a standard error, and that the model's parameters
and buffers are left exactly as they were. Add your own ground-truth tests beside
it. ``tiny_context`` builds the small analysis problem the suite uses.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from sharpkit.interfaces import AnalysisContext, DataSplit, MetricResult, MetricSpec

__all__ = ["MetricContract", "check_metric_spec", "tiny_context", "tiny_model"]


def check_metric_spec(spec: MetricSpec) -> None:
    """Validate a metric spec exactly as the registry does.

    Raises:
        PluginContractError: The spec breaks the contract.
    """
    from sharpkit.registry import Registry

    Registry._validate("metric", spec)


def tiny_model(*, seed: int = 0, batch_norm: bool = True) -> Any:
    """Return a small float64 BN-MLP (8 -> 6 -> 3, 87 parameters) in eval mode.

    Its running statistics are set to non-trivial values so that eval-mode batch
    norm is not the identity.
    """
    import torch

    gen = torch.Generator().manual_seed(seed)
    layers: list[torch.nn.Module] = [torch.nn.Linear(8, 6)]
    if batch_norm:
        layers.append(torch.nn.BatchNorm1d(6))
    layers += [torch.nn.ReLU(), torch.nn.Linear(6, 3)]
    net = torch.nn.Sequential(*layers).double()
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64) * 0.7)
        if batch_norm:
            bn = net[1]
            assert isinstance(bn, torch.nn.BatchNorm1d)
            assert bn.running_mean is not None
            assert bn.running_var is not None
            f64 = torch.float64
            bn.running_mean.copy_(torch.randn(6, generator=gen, dtype=f64) * 0.1)
            bn.running_var.copy_(1 + torch.rand(6, generator=gen, dtype=f64))
    return net.eval()


def tiny_context(
    *, seed: int = 0, samples: int = 64, batch_size: int = 24, **kwargs: Any
) -> AnalysisContext:
    """Return an :class:`~sharpkit.AnalysisContext` over :func:`tiny_model`.

    The data are ``samples`` Gaussian inputs with random labels (float64); the
    batch size does not divide ``samples``, so a short last batch is exercised.
    Keyword arguments override context fields (``tol``, ``max_hvps``, ...).
    """
    import torch

    gen = torch.Generator().manual_seed(1000 + seed)
    x = torch.randn(samples, 8, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (samples,), generator=gen)
    fields: dict[str, Any] = {
        "model": tiny_model(seed=seed),
        "loss_fn": torch.nn.functional.cross_entropy,
        "data": DataSplit(x, y),
        "batch_size": batch_size,
        "device": torch.device("cpu"),
        "dtype": torch.float64,
        "seed": seed,
    }
    fields.update(kwargs)
    return AnalysisContext(**fields)


def _snapshot(model: Any) -> dict[str, Any]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


class MetricContract:
    """Base class of the metric conformance tests; subclass it as ``Test<Name>``.

    Attributes:
        spec: The metric spec under test.
        options: Options passed to the factory.
    """

    spec: ClassVar[MetricSpec]
    options: ClassVar[Mapping[str, Any]] = {}

    def make_context(self, seed: int = 0) -> AnalysisContext:
        """Return the context the tests use; override for a metric with needs."""
        return tiny_context(seed=seed)

    def compute(self, ctx: AnalysisContext) -> MetricResult:
        """Build the metric from the spec and compute it."""
        from sharpkit.registry import Registry

        parsed = Registry(entry_points=False, warn=False).parse_options(
            self.spec, self.options
        )
        metric = self.spec.factory(**parsed)
        return metric.compute(ctx)  # type: ignore[no-any-return]

    def test_spec_is_valid(self) -> None:
        """The spec passes the registry's validation."""
        check_metric_spec(self.spec)

    def test_returns_finite_metric_result(self) -> None:
        """``compute`` returns a MetricResult with a finite value."""
        import math

        result = self.compute(self.make_context())
        assert isinstance(result, MetricResult)
        assert math.isfinite(result.value)
        if result.stderr is not None:
            assert result.stderr >= 0
        if result.bound is not None:
            assert result.bound >= 0

    def test_deterministic_for_seed(self) -> None:
        """The same seed gives the same value, bit for bit."""
        a = self.compute(self.make_context(seed=3))
        b = self.compute(self.make_context(seed=3))
        assert a.value == b.value
        assert a.stderr == b.stderr

    def test_stochastic_reports_stderr(self) -> None:
        """A metric declared stochastic reports a standard error."""
        if not self.spec.stochastic:
            return
        result = self.compute(self.make_context())
        assert result.stderr is not None

    def test_model_left_unchanged(self) -> None:
        """Parameters and buffers (BN running statistics) are exactly restored."""
        import torch

        ctx = self.make_context()
        before = _snapshot(ctx.model)
        self.compute(ctx)
        after = ctx.model.state_dict()
        for key, value in before.items():
            assert torch.equal(value, after[key]), f"{key} changed"
