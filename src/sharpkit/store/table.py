"""The query table: a store as tidy rows (one per run × metric), filters and CSV.

Rows are built from the runs' metadata documents alone (:class:`RunInfo`), so
the table never reads an array. ``docs/store.md`` explains every column.
"""

from __future__ import annotations

import csv
import fnmatch
import io
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final

from sharpkit.errors import ConfigError
from sharpkit.store.encoding import labels_of, opt_float, opt_int

if TYPE_CHECKING:
    from sharpkit.store.reader import RunInfo

__all__ = [
    "COLUMNS",
    "matches",
    "parse_filters",
    "run_rows",
    "select",
    "to_csv",
]

COLUMNS: Final = (
    "run_id",
    "kind",
    "time",
    "model",
    "dataset",
    "loss",
    "lr",
    "batch_size",
    "lr_over_batch",
    "seed",
    "samples",
    "sample",
    "sample_seed",
    "train_seed",
    "epoch",
    "step",
    "momentum",
    "weight_decay",
    "trainer",
    "metric",
    "value",
    "stderr",
    "data_stderr",
    "data_lower",
    "data_lower_stderr",
    "bound",
    "unit",
    "converged",
    "hvps",
    "seconds",
    "train_loss",
    "train_accuracy",
    "test_loss",
    "test_accuracy",
    "gap",
    "loss_gap",
    "checkpoint",
    "checkpoint_sha256",
    "lr_b",
    "batch_size_b",
    "lr_over_batch_b",
    "train_seed_b",
    "checkpoint_b",
    "checkpoint_sha256_b",
)
"""Columns of the tidy table (:meth:`ResultStore.records`, :func:`open_results`)."""

_FINAL_COLUMNS: Final = ("train_loss", "train_accuracy", "test_loss", "test_accuracy")
_NOT_TRAIN_ROWS: Final = frozenset({"epoch", "lr"})

_FILTER_RE: Final = re.compile(
    r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(!=|>=|<=|==|=|>|<)\s*(.*?)\s*$"
)
Filter = Mapping[str, Any] | Sequence[str] | None
"""A row filter: ``{column: value}`` or strings such as ``"lr>=0.01"`` (or one)."""
_TRUE: Final = frozenset({"true", "yes", "1", "y", "t"})
_FALSE: Final = frozenset({"false", "no", "0", "n", "f"})
_NONE: Final = frozenset({"", "none", "null", "nan", "-"})


# --------------------------------------------------------------------------- filters


def parse_filters(filter: Filter) -> list[tuple[str, str, str]]:
    """Parse a row filter (see :meth:`ResultStore.records`) into ``(column, op, text)``.

    Raises:
        ConfigError: A filter is malformed or names an unknown column.
    """
    if filter is None:
        return []
    items: list[tuple[str, str, str]] = []
    if isinstance(filter, Mapping):
        for key, value in filter.items():
            items.append((str(key), "=", "none" if value is None else str(value)))
    else:
        if isinstance(filter, str):
            filter = [filter]
        for item in filter:
            m = _FILTER_RE.match(item)
            if m is None:
                msg = (
                    f"filter {item!r} must look like column=value (or !=, <, <=, >, "
                    ">=), e.g. metric=spectral"
                )
                raise ConfigError(msg)
            op = "=" if m.group(2) == "==" else m.group(2)
            items.append((m.group(1), op, m.group(3)))
    for key, op, value in items:
        if key not in COLUMNS:
            msg = (
                f"unknown column {key!r} in filter {key}{op}{value}; columns: "
                + ", ".join(COLUMNS)
            )
            raise ConfigError(msg)
    return items


def matches(row: Mapping[str, Any], filters: Sequence[tuple[str, str, str]]) -> bool:
    """Whether a row passes every parsed filter (a column it lacks is missing).

    Raises:
        ConfigError: A filter compares a number or a yes/no column with text.
    """
    return all(_compare(row.get(k), op, v) for k, op, v in filters)


def select(rows: Iterable[Mapping[str, Any]], filter: Filter) -> list[dict[str, Any]]:
    """The rows (as dicts) that pass ``filter``, in the filter language of the table.

    The one implementation of row filters: :meth:`ResultStore.records`,
    :func:`sharpkit.correlate` and the figures of plain records all use it.

    Args:
        rows: Table rows, or any mappings from column names to cells.
        filter: As for :meth:`ResultStore.records`: ``{column: value}``, or
            strings such as ``"batch_size>=128"``; ``None`` keeps every row.

    Raises:
        ConfigError: A bad filter (see :func:`parse_filters` and :func:`matches`).
    """
    parsed = parse_filters(filter)
    return [dict(r) for r in rows if matches(r, parsed)]


def _compare(cell: Any, op: str, text: str) -> bool:
    """Whether a table cell satisfies ``cell <op> text`` (the filter rules)."""
    if isinstance(cell, float) and math.isnan(cell):
        cell = None
    if cell is None:
        is_none = text.strip().lower() in _NONE
        if op == "=":
            return is_none
        return op == "!=" and not is_none
    if isinstance(cell, bool):
        return _compare_yes_no(cell, op, text)
    if isinstance(cell, int | float):
        return _compare_number(float(cell), op, text)
    value = str(cell)
    if op in ("=", "!=") and any(c in text for c in "*?["):
        return _decide(op, fnmatch.fnmatchcase(value, text), value, text)
    return _decide(op, value == text, value, text)


def _compare_yes_no(cell: bool, op: str, text: str) -> bool:
    word = text.strip().lower()
    if word not in _TRUE | _FALSE:
        if word in _NONE:
            return op == "!="
        msg = f"cannot compare a yes/no column with {text!r}; use true or false"
        raise ConfigError(msg)
    want = word in _TRUE
    return _decide(op, cell == want, int(cell), int(want))


def _compare_number(cell: float, op: str, text: str) -> bool:
    if text.strip().lower() in _NONE:
        return op == "!="
    try:
        number = float(text)
    except ValueError:
        msg = f"cannot compare a numeric column with {text!r}; give a number"
        raise ConfigError(msg) from None
    # Equality is relative to 1e-9: η/S is computed (0.1/128) while the user
    # types its decimal form, which may differ in the last bit.
    equal = math.isclose(cell, number, rel_tol=1e-9, abs_tol=0.0)
    return _decide(op, equal, cell, number)


def _decide(op: str, equal: bool, a: Any, b: Any) -> bool:
    """``equal`` for ``=``, its negation for ``!=``, else ``a <op> b``."""
    if op == "=":
        return equal
    if op == "!=":
        return not equal
    return _ordered(a, op, b)


def _ordered(a: Any, op: str, b: Any) -> bool:
    if op == "<":
        return bool(a < b)
    if op == "<=":
        return bool(a <= b)
    if op == ">":
        return bool(a > b)
    return bool(a >= b)


# --------------------------------------------------------------------------- rows


def _first(value: Any) -> Any:
    return value[0] if isinstance(value, list) and value else value


def _second(value: Any) -> Any:
    return value[1] if isinstance(value, list) and len(value) > 1 else None


def _ratio(lr: Any, batch: Any) -> float | None:
    a, b = opt_float(lr), opt_float(batch)
    return a / b if a is not None and b else None


def _scalar(value: Any) -> Any:
    """A JSON cell as a table cell: numbers and strings pass, lists/dicts do not."""
    if isinstance(value, list | dict):
        return None
    return value


def run_rows(info: RunInfo) -> list[dict[str, Any]]:
    """The table rows of one run, with the :data:`COLUMNS` as keys in order."""
    final = _final(info)
    base = _base_row(info, final)
    out = [*_metric_rows(info, base), *_probe_rows(info, base)]
    if info.kind == "train" and not info.metrics:
        out += _train_rows(final, base)
    if info.kind == "track":
        out += _track_rows(info, final, base)
    return out or [dict(base)]


def _final(info: RunInfo) -> Mapping[str, Any]:
    """The checkpoint's final values: the run's ``final``, else its training curves'."""
    final = info.attrs.get("final")
    final = final if isinstance(final, Mapping) else {}
    if info.training is not None:
        tfinal = info.training.get("final")
        if isinstance(tfinal, Mapping):
            final = {**tfinal, **final}
    return final


def _base_row(info: RunInfo, final: Mapping[str, Any]) -> dict[str, Any]:
    """The columns every row of a run shares (metric columns empty)."""
    a = info.attrs
    lr, batch = a.get("lr"), a.get("batch_size")
    train_seed = a.get("train_seed", a.get("seed") if info.kind == "train" else None)
    epoch = a.get("epoch")
    if epoch is None and info.kind in ("train", "track"):
        epoch = final.get("epoch", a.get("epochs"))
    return {
        "run_id": info.run_id,
        "kind": info.kind,
        "time": _scalar(a.get("time")),
        "model": _scalar(_first(a.get("model"))),
        "dataset": _scalar(a.get("dataset")),
        "loss": _scalar(a.get("loss")),
        "lr": opt_float(_first(lr)),
        "batch_size": opt_int(_first(batch)),
        "lr_over_batch": _ratio(_first(lr), _first(batch)),
        "seed": opt_int(a.get("seed")),
        "samples": opt_int(a.get("samples")),
        "sample": _scalar(a.get("sample")),
        "sample_seed": opt_int(a.get("sample_seed")),
        "train_seed": opt_int(_first(train_seed)),
        "epoch": opt_int(epoch),
        "step": opt_int(final.get("step")) if info.kind == "track" else None,
        "momentum": opt_float(_first(a.get("momentum"))),
        "weight_decay": opt_float(_first(a.get("weight_decay"))),
        "trainer": _scalar(_first(a.get("trainer"))),
        "metric": None,
        "value": None,
        "stderr": None,
        "data_stderr": None,
        "data_lower": None,
        "data_lower_stderr": None,
        "bound": None,
        "unit": None,
        "converged": None,
        "hvps": None,
        "seconds": None,
        **{k: opt_float(final.get(k)) for k in _FINAL_COLUMNS},
        **_gaps(final),
        "checkpoint": _scalar(_first(a.get("checkpoint_path"))),
        "checkpoint_sha256": _scalar(_first(a.get("checkpoint_sha256"))),
        "lr_b": opt_float(_second(lr)),
        "batch_size_b": opt_int(_second(batch)),
        "lr_over_batch_b": _ratio(_second(lr), _second(batch)),
        "train_seed_b": opt_int(_second(train_seed)),
        "checkpoint_b": _scalar(_second(a.get("checkpoint_path"))),
        "checkpoint_sha256_b": _scalar(_second(a.get("checkpoint_sha256"))),
    }


def _gaps(final: Mapping[str, Any]) -> dict[str, float | None]:
    """Generalization gaps: train − test accuracy, and test − train loss."""
    acc = opt_float(final.get("train_accuracy")), opt_float(final.get("test_accuracy"))
    loss = opt_float(final.get("train_loss")), opt_float(final.get("test_loss"))
    return {
        "gap": acc[0] - acc[1] if acc[0] is not None and acc[1] is not None else None,
        "loss_gap": (
            loss[1] - loss[0] if loss[0] is not None and loss[1] is not None else None
        ),
    }


def _metric_rows(info: RunInfo, base: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for name, m in info.metrics.items():
        converged = m.get("converged")
        out.append(
            {
                **base,
                "metric": name,
                "value": opt_float(m.get("value")),
                "stderr": opt_float(m.get("stderr")),
                "data_stderr": opt_float(m.get("data_stderr")),
                # the held-out Rayleigh quotient: the full-data value is at least it
                "data_lower": opt_float(m.get("data_lower")),
                "data_lower_stderr": opt_float(m.get("data_lower_stderr")),
                "bound": opt_float(m.get("bound")),
                "unit": labels_of(m).get("units"),
                "converged": converged if isinstance(converged, bool) else None,
                "hvps": opt_int(m.get("hvps")),
                "seconds": opt_float(m.get("seconds")),
            }
        )
        out += _block_rows(name, m, out[-1])
    return out


def _block_rows(
    name: str, m: Mapping[str, Any], row: dict[str, Any]
) -> list[dict[str, Any]]:
    """A row ``metric:block`` per block of a metric measured with ``--blocks``."""
    blocks, values = m.get("blocks"), m.get("block_values")
    if not isinstance(blocks, list) or not isinstance(values, list):
        return []
    errors = m.get("block_errors")
    errors = errors if isinstance(errors, list) else [None] * len(values)
    kind = "bound" if m.get("block_error_kind") == "bound" else "stderr"
    out = []
    for block, value, err in zip(blocks, values, errors, strict=False):
        cells = dict.fromkeys(
            ("stderr", "data_stderr", "data_lower", "data_lower_stderr", "bound")
        )
        cells["converged"] = None
        cells |= {"hvps": None, "seconds": None, kind: opt_float(err)}
        out.append({**row, **cells, "metric": f"{name}:{block}"})
        out[-1]["value"] = opt_float(value)
    return out


def _probe_rows(info: RunInfo, base: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for name, p in info.probes.items():
        summary = p.get("summary")
        items = list(summary.items()) if isinstance(summary, Mapping) else []
        seconds = opt_float(p.get("seconds"))
        if not items:
            out.append({**base, "metric": name, "seconds": seconds})
        for key, value in items:
            out.append(
                {
                    **base,
                    "metric": f"{name}.{key}",
                    "value": opt_float(value),
                    "seconds": seconds,
                }
            )
    return out


def _train_rows(final: Mapping[str, Any], base: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per final-epoch scalar of a train run without metrics."""
    out: list[dict[str, Any]] = []
    for key, value in final.items():
        if key in _NOT_TRAIN_ROWS or isinstance(value, bool):
            continue
        number = opt_float(value)
        if number is None and value is not None:
            continue
        out.append({**base, "metric": str(key), "value": number})
    return out


def _unit(labels: Any) -> str | None:
    return labels_of(labels).get("units") if isinstance(labels, Mapping) else None


def _track_rows(
    info: RunInfo, final: Mapping[str, Any], base: dict[str, Any]
) -> list[dict[str, Any]]:
    """One row per tracked metric of a track run: its last measurement."""
    training = info.training or {}
    names = info.attrs.get("metrics")
    if not isinstance(names, list):  # written without the list: infer the metrics
        variables = training.get("variables")
        found = variables if isinstance(variables, list) else []
        names = [v for v in found if f"{v}_hvps" in found]
    labels = training.get("metric_labels")
    labels = labels if isinstance(labels, Mapping) else {}
    return [
        {
            **base,
            "metric": str(name),
            "unit": _unit(labels.get(str(name))),
            "value": opt_float(final.get(str(name))),
            "stderr": opt_float(final.get(f"{name}_stderr")),
            "data_stderr": opt_float(final.get(f"{name}_data_stderr")),
            "data_lower": opt_float(final.get(f"{name}_data_lower")),
            "data_lower_stderr": opt_float(final.get(f"{name}_data_lower_stderr")),
            "bound": opt_float(final.get(f"{name}_bound")),
            "hvps": opt_int(final.get(f"{name}_hvps")),
            "seconds": opt_float(final.get(f"{name}_seconds")),
        }
        for name in names
    ]


def to_csv(rows: Iterable[Mapping[str, Any]]) -> str:
    """Format table rows as CSV text with the :data:`COLUMNS` header."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(COLUMNS)
    for row in rows:
        writer.writerow(["" if row.get(c) is None else row.get(c) for c in COLUMNS])
    return buf.getvalue()
