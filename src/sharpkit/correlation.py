r"""Does sharpness predict generalization? Rank correlations of stored measures.

For every measure stored for a set of trained models (λ_max, ‖H‖_F, trace,
ε-sharpness, adaptive sharpness, ...), :func:`correlate` computes its rank
correlation with a target across the models — the generalization gap by
default — as three coefficients, each with a bootstrap confidence interval
over models:

* **Kendall's τ** (τ-b, ties counted as neither concordant nor discordant);
* **Spearman's ρ** (Pearson correlation of the average ranks);
* **the granulated Kendall coefficient Ψ** of Jiang, Neyshabur, Mobahi,
  Krishnan & Bengio (2020, "Fantastic generalization measures and where to find
  them", ICLR): for each hyperparameter axis *i* (η, S, the trainer, ...), τ
  within every group of models in which only that axis varies and every other
  hyperparameter (the training seed included) is fixed, averaged over the
  groups (ψ_i); Ψ is the mean of ψ_i over the axes that vary. A measure can
  have a large τ only because it tracks one hyperparameter that also drives
  the gap; Ψ asks whether it predicts the gap when one thing at a time changes.

A *model* is one checkpoint (its sha256). Its hyperparameters come from the run
that trained it when the store has that run, else from what the measurement
recorded; its target from the checkpoint's final values.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sharpkit.errors import ConfigError, DataError

__all__ = [
    "AXES",
    "TARGETS",
    "Correlation",
    "Interval",
    "correlate",
    "granulated_kendall",
    "kendall_tau",
    "spearman_rho",
]

TARGETS: dict[str, str] = {
    "gap": "generalization gap: training accuracy − validation accuracy",
    "loss_gap": "validation loss − training loss",
    "test_accuracy": "validation accuracy",
    "test_loss": "validation loss",
    "train_accuracy": "training accuracy",
    "train_loss": "training loss",
}
"""The targets a measure can be correlated with, and what each is."""

AXES: tuple[str, ...] = (
    "model",
    "dataset",
    "trainer",
    "lr",
    "batch_size",
    "momentum",
    "weight_decay",
    "epoch",
)
"""The hyperparameter axes Ψ considers (those that vary across the models)."""

_FIXED_ALWAYS = ("train_seed",)  # never an axis, always held fixed within a group
_TRAIN_COLUMNS = (*AXES, "train_seed")


# --------------------------------------------------------------------------- statistics


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks from 1, ties given their average rank."""
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), dtype=np.float64)
    sorted_x = x[order]
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and sorted_x[j + 1] == sorted_x[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def kendall_tau(
    x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray
) -> float:
    """Kendall's τ-b of two equally long sequences (NaN if either is constant).

    Examples:
        >>> kendall_tau([1, 2, 3, 4], [10, 20, 30, 40])
        1.0
        >>> kendall_tau([1, 2, 3], [3, 1, 2])
        -0.3333333333333333
    """
    a, b = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        msg = f"need two 1-D sequences of one length, got {a.shape} and {b.shape}"
        raise ConfigError(msg)
    da = np.sign(a[:, None] - a[None, :])
    db = np.sign(b[:, None] - b[None, :])
    upper = np.triu_indices(len(a), k=1)
    s, ta, tb = (da * db)[upper].sum(), (da != 0)[upper].sum(), (db != 0)[upper].sum()
    if ta == 0 or tb == 0:
        return math.nan
    return float(s / math.sqrt(float(ta) * float(tb)))


def spearman_rho(
    x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray
) -> float:
    """Spearman's ρ: the Pearson correlation of the ranks (NaN if constant).

    Examples:
        >>> spearman_rho([1, 2, 3, 4], [1, 3, 2, 4])
        0.8
    """
    a, b = _ranks(np.asarray(x, float)), _ranks(np.asarray(y, float))
    a, b = a - a.mean(), b - b.mean()
    denom = math.sqrt(float((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / denom) if denom > 0 else math.nan


def granulated_kendall(
    values: Sequence[float] | np.ndarray,
    targets: Sequence[float] | np.ndarray,
    hyper: Sequence[Mapping[str, Any]],
    axes: Sequence[str],
    fixed: Sequence[str] = _FIXED_ALWAYS,
) -> tuple[float, dict[str, float]]:
    """Jiang et al.'s Ψ and its per-axis terms ψ_i.

    Args:
        values: The measure, one value per model.
        targets: The target (e.g. the gap), one per model.
        hyper: Each model's hyperparameters.
        axes: The axes to consider; an axis on which no group of two or more
            models differs contributes nothing.
        fixed: Further hyperparameters held fixed within every group but never
            an axis themselves (the training seed).

    Returns:
        ``(Ψ, {axis: ψ_axis})``; Ψ is NaN when no axis has such a group.

    Examples:
        >>> hyper = [{"lr": a, "batch_size": b} for a in (1, 2) for b in (8, 16)]
        >>> psi, per_axis = granulated_kendall(
        ...     [1, 2, 3, 4], [1, 2, 4, 3], hyper, ["lr", "batch_size"]
        ... )
        >>> per_axis, psi
        ({'lr': 1.0, 'batch_size': 0.0}, 0.5)
    """
    per_axis: dict[str, float] = {}
    for axis in axes:
        others = [a for a in (*axes, *fixed) if a != axis]
        groups: dict[tuple[str, ...], list[int]] = {}
        for k, h in enumerate(hyper):
            groups.setdefault(tuple(repr(h.get(a)) for a in others), []).append(k)
        taus = []
        for members in groups.values():
            if len({repr(hyper[k].get(axis)) for k in members}) < 2:
                continue
            tau = kendall_tau(
                [values[k] for k in members], [targets[k] for k in members]
            )
            if not math.isnan(tau):
                taus.append(tau)
        if taus:
            per_axis[axis] = float(np.mean(taus))
    psi = float(np.mean(list(per_axis.values()))) if per_axis else math.nan
    return psi, per_axis


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class Interval:
    """A coefficient and its bootstrap confidence interval.

    Attributes:
        value: The coefficient on all models.
        low: Lower end of the percentile bootstrap interval.
        high: Upper end.
    """

    value: float
    low: float
    high: float


@dataclass(frozen=True, kw_only=True)
class Correlation:
    """How one measure ranks the models against the target.

    Attributes:
        measure: The measure (a stored metric name).
        target: The target column (see :data:`TARGETS`).
        n: Number of models with both the measure and the target.
        kendall: Kendall's τ-b with its interval.
        spearman: Spearman's ρ with its interval.
        psi: Jiang et al.'s granulated Kendall Ψ with its interval.
        psi_axes: ψ_i for each axis on which some models differ one at a time.
        values: The measure, one per model (for plots).
        targets: The target, one per model.
        hyper: Each model's hyperparameters.
    """

    measure: str
    target: str
    n: int
    kendall: Interval
    spearman: Interval
    psi: Interval
    psi_axes: Mapping[str, float] = field(default_factory=dict)
    values: np.ndarray = field(default_factory=lambda: np.zeros(0))
    targets: np.ndarray = field(default_factory=lambda: np.zeros(0))
    hyper: Sequence[Mapping[str, Any]] = ()

    def to_dict(self) -> dict[str, Any]:
        """A JSON-compatible dict (what ``sharpkit correlate --json`` prints)."""

        def interval(i: Interval) -> dict[str, float | None]:
            return {k: _finite(getattr(i, k)) for k in ("value", "low", "high")}

        return {
            "measure": self.measure,
            "target": self.target,
            "n": self.n,
            "kendall": interval(self.kendall),
            "spearman": interval(self.spearman),
            "psi": interval(self.psi),
            "psi_axes": {k: _finite(v) for k, v in self.psi_axes.items()},
        }


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


# --------------------------------------------------------------------------- models


def _rows(table: Any) -> list[dict[str, Any]]:
    """Rows of a tidy table given as a store path, a DataFrame or dicts."""
    if isinstance(table, str | os.PathLike):
        from sharpkit.store import open_results

        out: list[dict[str, Any]] = open_results(table, as_frame=False)
        return out
    if hasattr(table, "to_dict") and hasattr(table, "columns"):  # pandas
        return [dict(r) for r in table.to_dict(orient="records")]
    if isinstance(table, Iterable):
        rows = [dict(r) for r in table]
        if all(isinstance(r, Mapping) for r in rows):
            return rows
    msg = (
        f"cannot correlate a {type(table).__name__}; pass a store path, "
        "sharpkit.open_results(...) or a list of row dicts"
    )
    raise ConfigError(msg)


def _clean(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


@dataclass
class _Model:
    hyper: dict[str, Any] = field(default_factory=dict)
    finals: dict[str, float] = field(default_factory=dict)
    measures: dict[str, float] = field(default_factory=dict)


def _models(rows: Sequence[Mapping[str, Any]]) -> dict[str, _Model]:
    """Group rows by checkpoint: hyperparameters, final values and measures."""
    models: dict[str, _Model] = {}
    ordered = sorted(
        rows, key=lambda r: (str(r.get("kind")) != "train", str(r.get("time")))
    )
    for row in ordered:  # train rows first, then measurements oldest first
        sha = _clean(row.get("checkpoint_sha256"))
        if not sha or row.get("kind") not in ("train", "measure"):
            continue
        model = models.setdefault(str(sha), _Model())
        for key in _TRAIN_COLUMNS:
            value = _clean(row.get(key))
            if value is not None and key not in model.hyper:
                model.hyper[key] = value
        for key in TARGETS:
            value = _clean(row.get(key))
            if value is not None:
                model.finals.setdefault(key, float(value))
        value = _clean(row.get("value"))
        if row.get("kind") == "measure" and row.get("metric") and value is not None:
            model.measures[str(row["metric"])] = float(value)  # newest wins
    for model in models.values():
        f = model.finals
        if "gap" not in f and {"train_accuracy", "test_accuracy"} <= f.keys():
            f["gap"] = f["train_accuracy"] - f["test_accuracy"]
        if "loss_gap" not in f and {"train_loss", "test_loss"} <= f.keys():
            f["loss_gap"] = f["test_loss"] - f["train_loss"]
    return models


# --------------------------------------------------------------------------- correlate


def correlate(
    table: Any,
    *,
    target: str = "gap",
    measures: Sequence[str] | None = None,
    axes: Sequence[str] | None = None,
    filter: Mapping[str, Any] | Sequence[str] | None = None,
    bootstrap: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> list[Correlation]:
    """Rank-correlate every stored measure with a target across the models.

    Examples:
        >>> rows = [
        ...     {"kind": "measure", "checkpoint_sha256": f"m{k}", "metric": "spectral",
        ...      "value": float(k), "lr": 0.1 * k, "batch_size": 32,
        ...      "train_accuracy": 1.0, "test_accuracy": 0.9 - 0.01 * k}
        ...     for k in range(1, 6)
        ... ]
        >>> [c] = correlate(rows, bootstrap=200)
        >>> c.measure, c.n, c.kendall.value, c.psi.value
        ('spectral', 5, 1.0, 1.0)

    Args:
        table: A store path, the DataFrame of :func:`sharpkit.open_results`, or
            its rows as dicts.
        target: What to correlate with; one of :data:`TARGETS` (``gap`` is
            training minus validation accuracy).
        measures: The measures (metric names) to include (default: every
            metric stored for at least three models).
        axes: Hyperparameter axes for Ψ (default: those of :data:`AXES` that
            vary across the models).
        filter: Row filters as for :func:`sharpkit.open_results` (store path)
            or ``sharpkit results --filter``.
        bootstrap: Bootstrap resamples of the models for the intervals
            (0: no intervals). Each draws ``n`` of the ``n`` models with
            replacement, each with its stored value, target and
            hyperparameters, and recomputes the three coefficients; the
            values themselves are not resampled, so their data and numerical
            errors are not in the intervals.
        confidence: Confidence level of the intervals.
        seed: Seed of the bootstrap.

    Returns:
        One :class:`Correlation` per measure, in name order.

    Raises:
        ConfigError: Unknown target, bad level or resample count.
        DataError: Fewer than three models have the target and a measure.
    """
    if target not in TARGETS:
        msg = f"unknown target {target!r}; one of {', '.join(TARGETS)}"
        raise ConfigError(msg)
    if not 0 < confidence < 1:
        msg = f"confidence must be in (0, 1), got {confidence}"
        raise ConfigError(msg)
    if bootstrap < 0 or bootstrap > 100_000:
        msg = f"bootstrap must be between 0 and 100000 resamples, got {bootstrap}"
        raise ConfigError(msg)
    rows = _filtered(_joined(_rows(table)), filter)
    models = [m for m in _models(rows).values() if target in m.finals]
    names = sorted({k for m in models for k in m.measures})
    if measures is not None:
        missing = [n for n in measures if n not in names]
        if missing:
            msg = (
                f"no model with a {target!r} value has the measure {missing[0]!r}; "
                f"measured: {', '.join(names) or 'none'}"
            )
            raise DataError(msg)
        names = list(measures)
    out = []
    for name in names:
        have = [m for m in models if name in m.measures]
        if len(have) < 3:
            continue
        out.append(_one(name, have, target, axes, bootstrap, confidence, seed))
    if not out:
        msg = (
            f"fewer than three models have both a measure and the target {target!r}; "
            "measure checkpoints that sharpkit trained (their final accuracies are "
            "recorded) with `sharpkit measure ... --store STORE`"
        )
        raise DataError(msg)
    return out


def _joined(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Fill a measurement's missing training columns from its checkpoint's train run.

    A measurement records only part of how its checkpoint was trained (not the
    trainer, for one); the train run that wrote the checkpoint has all of it.
    """
    trained: dict[str, dict[str, Any]] = {}
    for row in rows:
        sha = _clean(row.get("checkpoint_sha256"))
        if row.get("kind") == "train" and sha:
            trained.setdefault(str(sha), row)
    out = []
    for row in rows:
        source = trained.get(str(_clean(row.get("checkpoint_sha256"))))
        filled = dict(row)
        if row.get("kind") == "measure" and source is not None:
            for key in (*_TRAIN_COLUMNS, *TARGETS):
                if _clean(row.get(key)) is None and _clean(source.get(key)) is not None:
                    filled[key] = source[key]
        out.append(filled)
    return out


def _filtered(
    rows: list[dict[str, Any]], filter: Mapping[str, Any] | Sequence[str] | None
) -> list[dict[str, Any]]:
    if not filter:
        return rows
    from sharpkit.store.table import select

    return select(rows, filter)


def _varying(models: Sequence[_Model], axes: Sequence[str] | None) -> list[str]:
    if axes is not None:
        unknown = [a for a in axes if a not in AXES]
        if unknown:
            msg = f"unknown axis {unknown[0]!r}; one of {', '.join(AXES)}"
            raise ConfigError(msg)
        return list(axes)
    return [a for a in AXES if len({repr(m.hyper.get(a)) for m in models}) > 1]


def _one(
    name: str,
    models: Sequence[_Model],
    target: str,
    axes: Sequence[str] | None,
    bootstrap: int,
    confidence: float,
    seed: int,
) -> Correlation:
    x = np.array([m.measures[name] for m in models])
    y = np.array([m.finals[target] for m in models])
    hyper = [m.hyper for m in models]
    used = _varying(models, axes)

    def stats(idx: np.ndarray) -> tuple[float, float, float]:
        psi, _ = granulated_kendall(x[idx], y[idx], [hyper[i] for i in idx], used)
        return kendall_tau(x[idx], y[idx]), spearman_rho(x[idx], y[idx]), psi

    everything = np.arange(len(models))
    point = stats(everything)
    _, per_axis = granulated_kendall(x, y, hyper, used)
    low, high = _bootstrap(stats, len(models), bootstrap, confidence, seed)
    return Correlation(
        measure=name,
        target=target,
        n=len(models),
        kendall=Interval(point[0], low[0], high[0]),
        spearman=Interval(point[1], low[1], high[1]),
        psi=Interval(point[2], low[2], high[2]),
        psi_axes=per_axis,
        values=x,
        targets=y,
        hyper=hyper,
    )


def _bootstrap(
    stats: Callable[[np.ndarray], tuple[float, float, float]],
    n: int,
    resamples: int,
    confidence: float,
    seed: int,
) -> tuple[list[float], list[float]]:
    """Percentile intervals of each statistic over resamples of the models."""
    if resamples == 0:
        return [math.nan] * 3, [math.nan] * 3
    rng = np.random.default_rng(seed)
    draws = np.array([stats(rng.integers(0, n, n)) for _ in range(resamples)])
    alpha = (1 - confidence) / 2
    low, high = [], []
    for col in draws.T:
        ok = col[np.isfinite(col)]
        if len(ok) < max(10, resamples // 10):  # mostly undefined: no interval
            low.append(math.nan)
            high.append(math.nan)
            continue
        low.append(float(np.quantile(ok, alpha)))
        high.append(float(np.quantile(ok, 1 - alpha)))
    return low, high
