"""``precision=``: pick the sample count that brings the data's error bar down.

A data standard error falls as ``1/√N`` (:mod:`sharpkit.curvature.sampling`),
so one measurement on ``N`` examples with relative data error ``r`` says that
about ``N·(r/p)²`` examples reach a relative error ``p``
(:func:`~sharpkit.curvature.sampling.samples_for_precision`). :func:`plan`
turns a measurement into that decision and the one line that says it;
:func:`~sharpkit.api.measure.run_measure` measures again on that count, through
the same front door, until the precision is met (or refuses, when the split
is too small). :class:`Budget` keeps that loop within ``max_hvps``: each
metric's products over all the measurements together stay within it, and the
loop stops, with a :class:`~sharpkit.ConvergenceWarning` saying how far it got,
when the next measurement would not fit.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sharpkit._hints import in_cli
from sharpkit.errors import ConfigError
from sharpkit.interfaces import MetricResult
from sharpkit.registry import Registry

__all__ = ["MAX_ROUNDS", "Budget", "Plan", "data_error_options", "note", "plan"]

MAX_ROUNDS = 4
"""Measurements at most: the count is re-planned from each (its ``r`` is itself
uncertain by about ``1/√(2(K-1))`` = 18 % with 16 chunks, so a second
measurement can fall a little short)."""

_GROWTH = 1.25
"""A re-measurement takes at least 25 % more examples than the one before."""


def data_error_options(
    names: Sequence[str],
    options: Mapping[str, Mapping[str, Any]] | None,
    registry: Registry,
) -> dict[str, dict[str, Any]]:
    """``options`` with ``data_error=True`` for every metric that has that option.

    Raises:
        ConfigError: None of ``names`` reports a data standard error.
    """
    out = {n: dict((options or {}).get(n, {})) for n in names}
    able = [n for n in names if registry.get("metric", n).option("data_error")]
    if not able:
        msg = (
            f"precision needs a metric with a data_error option (spectral, "
            f"frobenius, trace, density, adaptive); {', '.join(names)} has none"
        )
        raise ConfigError(msg)
    for n in able:
        out[n].setdefault("data_error", True)
    return out


@dataclass(frozen=True)
class Plan:
    """What to do after one measurement.

    Attributes:
        samples: The sample count to measure on next (``None``: done).
        metric: The metric that decided (the one that needs the most examples).
        relative: Its relative data standard error on this measurement.
        measured: The examples this measurement used.
    """

    samples: int | None
    metric: str
    relative: float
    measured: int


def _needed(result: MetricResult, samples: int, precision: float) -> int | None:
    """Samples for ``precision`` by this result (``None``: no data error in it)."""
    from sharpkit.curvature.sampling import DataEstimate, samples_for_precision

    if result.data_stderr is None or not result.value:
        return None
    est = DataEstimate(
        value=result.value,
        estimate=result.value,
        stderr=result.data_stderr,
        method=result.data_method or "",
        chunks=0,
        samples=samples,
    )
    return samples_for_precision(est, precision)


def _pct(x: float) -> str:
    return f"{100 * x:.3g} %"


def note(steps: Sequence[Plan], precision: float, stopped: str | None = None) -> str:
    """One line: the data error of each measurement, and how it ended.

    ``stopped``: why the loop ended before the precision was met (the budget).
    """
    trail = " → ".join(f"{_pct(p.relative)} on {p.measured}" for p in steps)
    last = steps[-1]
    if last.relative <= precision:
        end = "met"
    elif stopped is not None:
        end = f"not met, {stopped}"
    elif last.samples is None:
        end = f"not met after {len(steps)} measurements (measure again, or on more)"
    else:  # pragma: no cover - a plan with a next step is never the last
        end = f"next {last.samples}"
    many = " samples (N planned by stderr ∝ 1/√N)" if len(steps) > 1 else " samples"
    return (
        f"precision {_pct(precision)}: {last.metric}'s data error {trail}{many}: {end}"
    )


def plan(
    results: Mapping[str, MetricResult],
    *,
    samples: int,
    population: int | None,
    precision: float,
    last_round: bool = False,
) -> Plan:
    """Decide from one measurement on ``samples`` examples whether to measure again.

    The metric that needs the most examples decides; the next count is what
    :func:`~sharpkit.curvature.sampling.samples_for_precision` says, and at
    least 25 % more than this one.

    Args:
        results: The measurement's results.
        samples: The examples it was measured on.
        population: The examples of the split they were drawn from (``None``:
            not known).
        precision: The relative data standard error wanted.
        last_round: No further measurement may follow.

    Raises:
        ConfigError: No result carries a data standard error, or reaching
            ``precision`` needs more examples than the split holds.
    """
    needs = {
        name: n
        for name, r in results.items()
        if (n := _needed(r, samples, precision)) is not None
    }
    if not needs:
        msg = "precision: no metric reported a data standard error to plan from"
        raise ConfigError(msg)
    name = max(needs, key=lambda k: needs[k])
    r = results[name]
    assert r.data_stderr is not None  # in needs
    rel = abs(r.data_stderr / r.value)
    done = Plan(None, name, rel, samples)
    if rel <= precision or last_round:
        return done
    want = max(needs[name], math.ceil(samples * _GROWTH))
    if population is not None and want > population:
        said = (
            f"precision {_pct(precision)}: {name}'s data error is {_pct(rel)} on "
            f"{samples} samples"
        )
        if samples >= population:
            msg = f"{said}, the whole split; no more examples can reduce it"
        else:
            msg = (
                f"{said}; {_pct(precision)} needs about {want} (stderr ∝ 1/√N), "
                f"more than the split's {population}: ask for a larger precision, "
                "or measure on all samples"
            )
        raise ConfigError(msg)
    return Plan(want, name, rel, samples)


@dataclass
class Budget:
    """The precision loop's products, per metric, against ``max_hvps``.

    ``max_hvps`` bounds each metric's products in one measurement; under
    ``precision`` it bounds each metric's products over all the measurements
    together. A measurement taken from the store counts what it cost when it
    was made, so the loop ends the same way with or without a store.

    Attributes:
        limit: ``max_hvps`` (``None``: no bound).
        spent: Products each metric spent so far, over all measurements.
        last: Products each metric spent in the last measurement: what the
            next one is expected to take (the same method at the same
            tolerance on the same model's Hessian; started from the last
            measurement's eigenvector, it usually takes no more).
    """

    limit: int | None
    spent: dict[str, int] = field(default_factory=dict)
    last: dict[str, int] = field(default_factory=dict)

    def add(self, results: Mapping[str, MetricResult]) -> None:
        """Count one measurement's products."""
        for name, r in results.items():
            hvps = int(r.hvps or 0)
            self.spent[name] = self.spent.get(name, 0) + hvps
            self.last[name] = hvps

    def short(self, samples: int) -> str | None:
        """Why a next measurement on ``samples`` would not fit (``None``: it fits)."""
        if self.limit is None:
            return None
        over = [n for n in self.spent if self.spent[n] + self.last[n] > self.limit]
        if not over:
            return None
        name = max(over, key=lambda n: self.spent[n] + self.last[n])
        limit = f"--max-hvps {self.limit}" if in_cli() else f"max_hvps={self.limit}"
        return (
            f"the product budget ran out: {name} spent {self.spent[name]} of "
            f"{limit} and the next measurement, on {samples}, would take about "
            f"{self.last[name]} more"
        )

    def cap(self) -> int | None:
        """The per-metric budget of the next measurement: what the metrics have left.

        The least any metric has left, so no metric can go past ``limit``
        (``None``: no bound; at least 1, a budget's smallest value).
        """
        if self.limit is None:
            return None
        left = [self.limit - spent for spent in self.spent.values()]
        return max(min(left, default=self.limit), 1)
