"""Property-based fuzzing of the surfaces issue 21 added.

Plugin results (every field of a ``MetricResult`` of any type), data files
(``.npz`` and ``.pt`` bytes cut, overwritten or inserted anywhere) and the
analysis-set digest. The property is the suite's: accepted and well formed, or
refused with one line; and a digest changes with any single value.
Derandomized, so every run draws the same inputs.
"""

from __future__ import annotations

import io
import math
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sharpkit._data import DataSplit
from sharpkit.api.datafiles import load_data
from sharpkit.api.fingerprint import data_digest
from sharpkit.api.isolation import check_result
from sharpkit.errors import PluginContractError, SharpkitError
from sharpkit.interfaces import MetricResult

_FAST = settings(
    max_examples=300,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
_FILE = settings(
    max_examples=60,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def _one_line(exc: BaseException, names: str) -> None:
    """A refusal: one non-empty line that names what it refuses."""
    text = str(exc).strip()
    assert text
    assert "\n" not in text
    assert names in text


_ANY = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
    st.lists(st.integers(), max_size=3),
)


@_FAST
@given(stderr=_ANY, bound=_ANY, converged=_ANY, hvps=_ANY)
def test_plugin_result_numbers_are_kept_only_when_they_make_sense(
    stderr: object, bound: object, converged: object, hvps: object
) -> None:
    result = MetricResult(
        value=1.0,
        stderr=stderr,  # type: ignore[arg-type]
        bound=bound,  # type: ignore[arg-type]
        converged=converged,  # type: ignore[arg-type]
        hvps=hvps,  # type: ignore[arg-type]
    )
    try:
        check_result("fuzzed", result)
    except PluginContractError as exc:
        _one_line(exc, "'fuzzed'")
        return
    for v in (stderr, bound):
        assert v is None or (math.isfinite(v) and v >= 0)  # type: ignore[arg-type]
    assert converged is None or isinstance(converged, bool)
    assert hvps is None or (
        isinstance(hvps, int) and not isinstance(hvps, bool) and hvps >= 0
    )


def _npz() -> bytes:
    buf = io.BytesIO()
    gen = np.random.default_rng(0)
    np.savez_compressed(
        buf, x=gen.standard_normal((12, 4)).astype(np.float32), y=np.arange(12) % 3
    )
    return buf.getvalue()


def _pt() -> bytes:
    buf = io.BytesIO()
    torch.save({"x": torch.randn(12, 4), "y": torch.arange(12) % 3}, buf)
    return buf.getvalue()


_GOOD = {".npz": _npz(), ".pt": _pt()}


@_FILE
@given(
    suffix=st.sampled_from(sorted(_GOOD)),
    edit=st.sampled_from(["cut", "overwrite", "insert"]),
    where=st.floats(min_value=0.0, max_value=1.0),
    junk=st.binary(min_size=1, max_size=16),
)
def test_damaged_data_files_are_read_or_refused_in_one_line(
    suffix: str, edit: str, where: float, junk: bytes
) -> None:
    raw = _GOOD[suffix]
    at = int(where * len(raw))
    if edit == "cut":
        raw = raw[:at]
    elif edit == "overwrite":
        raw = raw[:at] + junk + raw[at + len(junk) :]
    else:
        raw = raw[:at] + junk + raw[at:]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"data{suffix}"
        path.write_bytes(raw)
        try:
            ds = load_data(str(path))
        except SharpkitError as exc:
            _one_line(exc, "")
            return
    assert len(ds.train) > 0
    assert ds.train.inputs.shape[0] == ds.train.targets.shape[0]


@_FAST
@given(
    index=st.integers(min_value=0, max_value=47),
    delta=st.floats(min_value=1e-6, max_value=1e6).flatmap(
        lambda d: st.sampled_from([d, -d])
    ),
    which=st.sampled_from(["inputs", "targets"]),
)
def test_the_data_digest_sees_any_single_value(
    index: int, delta: float, which: str
) -> None:
    gen = torch.Generator().manual_seed(0)
    split = DataSplit(torch.randn(12, 4, generator=gen), torch.arange(12) % 3)
    x, y = split.inputs.clone(), split.targets.clone()
    if which == "inputs":
        flat = x.view(-1)
        before = float(flat[index])
        flat[index] = before + delta
        if float(flat[index]) == before:  # below float32 resolution: no change
            pytest.skip("the change rounds away")  # pragma: no cover
    else:
        y[index % 12] += 1
    assert data_digest(DataSplit(x, y)) != data_digest(split)
