"""The conformance suite for probe plugins: :class:`ProbeContract`."""

from __future__ import annotations

import json
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
    same_arrays,
    same_float,
    snapshot,
)
from sharpkit.testing._fixtures import tiny_probe_context

__all__ = ["ProbeContract"]


class ProbeContract:
    """Base class of the probe conformance tests; subclass it as ``Test<Name>``.

    Examples:
        ```python
        class TestMyProbe(ProbeContract):
            spec = MY_PROBE_SPEC
            options = {"alpha": "0:1:5"}    # a small grid keeps the suite fast
        ```

    The tests run the probe on :func:`tiny_probe_context` with ``spec.n_models``
    tiny BN-MLPs; override :meth:`make_context` for a probe with needs.

    Attributes:
        spec: The probe spec under test.
        options: Options passed to the factory (CLI strings or Python values).
    """

    spec: ClassVar[sharpkit.ProbeSpec]
    options: ClassVar[Mapping[str, Any]] = {}

    def make_context(
        self, seed: int = 0, n_models: int | None = None
    ) -> sharpkit.ProbeContext:
        """Return the context the tests use; override for a probe with needs.

        Args:
            seed: The context's seed (and the tiny models').
            n_models: How many models (default: ``spec.n_models``).
        """
        return tiny_probe_context(
            n_models=self.spec.n_models if n_models is None else n_models, seed=seed
        )

    def make_probe(self) -> sharpkit.Probe:
        """Build the probe from the spec with :attr:`options`, as sharpkit does."""
        probe: sharpkit.Probe = create(self.spec, self.options)
        return probe

    def run(self, ctx: sharpkit.ProbeContext) -> sharpkit.ProbeResult:
        """Build the probe and run it on ``ctx``.

        Args:
            ctx: The probe context.
        """
        return self.make_probe().run(ctx)

    # ------------------------------------------------------------------ tests

    def test_spec_is_valid(self) -> None:
        """The spec passes :func:`check_spec`: the registry's rules and more."""
        check_spec(self.spec, "probe")

    def test_factory_returns_probe(self) -> None:
        """The factory returns an object with ``run(ctx)``."""
        probe = self.make_probe()
        expect(
            isinstance(probe, sharpkit.Probe),
            f"the factory returned {type(probe).__name__}, which has no run()",
        )

    def test_result_arrays_span_the_coords(self) -> None:
        """``run`` returns a ProbeResult whose arrays have the grid's shape.

        The grid is spanned by ``coords`` (1-D, in dimension order); summary values
        are floats and ``attrs`` is JSON-serialisable.
        """
        import numpy as np

        result = self.run(self.make_context())
        expect(
            isinstance(result, sharpkit.ProbeResult),
            f"run returned {type(result).__name__}, not a ProbeResult",
        )
        expect(result.coords, "coords is empty: a probe evaluates a grid")
        for name, values in result.coords.items():
            coord: object = values
            expect(
                isinstance(coord, np.ndarray) and coord.ndim == 1 and coord.size,
                f"coord {name!r} must be a non-empty 1-D numpy array",
            )
        grid = tuple(len(v) for v in result.coords.values())
        expect(result.arrays, "arrays is empty: a probe returns values on its grid")
        for name, values in result.arrays.items():
            expect(
                isinstance(values, np.ndarray),
                f"array {name!r} is a {type(values).__name__}, not a numpy array",
            )
            expect(
                values.shape == grid,
                f"array {name!r} has shape {values.shape}; the coords span {grid}",
            )
        for name, value in result.summary.items():
            expect(
                is_number(value),
                f"summary {name!r} is a {type(value).__name__}, not a float",
            )
        try:
            json.dumps(dict(result.attrs))
        except (TypeError, ValueError) as exc:
            msg = f"attrs are not JSON-serialisable: {exc}"
            raise AssertionError(msg) from None

    def test_deterministic_for_seed(self) -> None:
        """The same seed gives the same grid, bit for bit, whatever the global RNG."""
        with global_rng(101):
            a = self.run(self.make_context(seed=3))
        with global_rng(202):
            b = self.run(self.make_context(seed=3))
        hint = "; draw random numbers from ctx.generator(...), not the global RNG"
        for field in ("coords", "arrays"):
            ma, mb = getattr(a, field), getattr(b, field)
            expect(list(ma) == list(mb), f"{field} names differ between runs")
            for name in ma:
                expect(
                    same_arrays(ma[name], mb[name]),
                    f"{field} {name!r} differs between two runs with seed 3{hint}",
                )
        expect(list(a.summary) == list(b.summary), "summary names differ")
        for name, value in a.summary.items():
            expect(
                same_float(float(value), float(b.summary[name])),
                f"summary {name!r} differs between two runs with seed 3{hint}",
            )

    def test_models_left_unchanged(self) -> None:
        """Every model's parameters, buffers and training flags are as they were."""
        ctx = self.make_context()
        before = [snapshot(m) for m in ctx.models]
        self.run(ctx)
        for i, (state, model) in enumerate(zip(before, ctx.models, strict=True)):
            assert_unchanged(state, model, f"model {i}")

    def test_n_models_honoured(self) -> None:
        """Given another number of models than ``spec.n_models``, the probe raises.

        A probe that silently used the first model (or ignored the second) would
        produce a result the user did not ask for. The error must be a
        :class:`~sharpkit.SharpkitError` or a ``ValueError`` (such as
        :class:`~sharpkit.ConfigError`) with a message.
        """
        wrong = 2 if self.spec.n_models == 1 else 1
        ctx = self.make_context(n_models=wrong)
        try:
            self.run(ctx)
        except (sharpkit.SharpkitError, ValueError) as exc:
            expect(str(exc), "the error has no message")
            return
        msg = (
            f"the probe takes {self.spec.n_models} model(s) but ran on {wrong}; "
            "raise sharpkit.ConfigError for a wrong number of models"
        )
        raise AssertionError(msg)
