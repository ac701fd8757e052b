"""Property-based fuzzing of the option parsers and the checkpoint readers.

The property is the same everywhere: an input is either accepted, and then the
value is well formed (a grid strictly increasing, finite and within the limit;
metadata fields of their declared types), or refused with a
:class:`~sharpkit.SharpkitError` whose message is one line. Any other exception
is what a user would see as a traceback, and fails the test.

The examples are derandomized (the same inputs on every run, so a failure
reproduces) and their number is fixed per test (:data:`EXAMPLES`): the figures
in docs/reliability.md count them.
"""

from __future__ import annotations

import itertools
import json
import math
import string
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sharpkit
from sharpkit.errors import SharpkitError

EXAMPLES = {"parser": 300, "file": 60}
_PARSER = settings(
    max_examples=EXAMPLES["parser"],
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
_FILE = settings(
    max_examples=EXAMPLES["file"],
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

# Text made mostly of the characters the grammars use, so that the fuzzer
# reaches deep into them instead of failing on the first character.
_GRAMMAR = st.lists(
    st.sampled_from([*"0123456789-+.,:eEinfa ", "nan", "inf", "1e9", "1e8", "100000"]),
    max_size=12,
).map("".join)
_ANY_TEXT = st.text(max_size=24)
_INPUT = st.one_of(_GRAMMAR, _ANY_TEXT)


def _refused(exc: BaseException) -> None:
    """A refusal must be a SharpkitError with a one-line, non-empty message."""
    assert isinstance(exc, SharpkitError), f"{type(exc).__name__}: {exc}"
    text = str(exc)
    assert text.strip(), "an empty message"
    assert "\n" not in text, text


# --------------------------------------------------------------------------- options


@_PARSER
@given(text=_INPUT)
def test_grid_parser(text: str) -> None:
    """``--alpha`` (and every probe's grid option)."""
    from sharpkit.builtin._landscape.grid import MAX_GRID_POINTS, parse_grid

    try:
        grid = parse_grid(text)
    except Exception as exc:
        _refused(exc)
        return
    values = grid.tolist()
    assert 1 <= len(values) <= MAX_GRID_POINTS
    assert all(math.isfinite(v) for v in values)
    assert all(a < b for a, b in itertools.pairwise(values))


@_PARSER
@given(
    text=st.one_of(
        _INPUT,
        st.builds(
            lambda kind, a, b: f"{kind}:{a}:{b}",
            st.sampled_from(["step", "every", "STEP", "constant", "resnet"]),
            _GRAMMAR,
            _GRAMMAR,
        ),
    )
)
def test_schedule_parser(text: str) -> None:
    """``--schedule``: a learning-rate schedule, or one line naming the forms."""
    from sharpkit.builtin._trainer import parse_schedule

    try:
        schedule = parse_schedule(text)
    except Exception as exc:
        _refused(exc)
        return
    for epoch in (1, 2, 7, 1000):  # epochs are counted from 1
        lr = schedule.lr(0.1, epoch)
        assert math.isfinite(lr)
        assert lr >= 0.0


_KEY = st.text(alphabet=string.ascii_lowercase + "_.-[]=", max_size=12)


@_PARSER
@given(items=st.lists(st.one_of(_ANY_TEXT, st.builds("{}={}".format, _KEY, _INPUT))))
def test_option_parser(items: list[str]) -> None:
    """``-o key=value`` / ``-o name.key=value``, then typed by the registry."""
    from sharpkit.cli._options import parse_options
    from sharpkit.registry import get_registry

    reg = get_registry()
    try:
        scoped = parse_options(items, ["spectral", "frobenius"])
        for name, options in scoped.items():
            spec = reg.get("metric", name)
            known = {k: v for k, v in options.items() if spec.option(k) is not None}
            parsed = reg.parse_options(spec, known)
            assert set(parsed) == set(known)
    except Exception as exc:
        _refused(exc)


@_PARSER
@given(text=st.one_of(_ANY_TEXT, st.builds("{}:{}@{}".format, _KEY, _KEY, _KEY)))
def test_disable_parser(text: str) -> None:
    """``--disable kind:name[@plugin]``."""
    from sharpkit.registry import KINDS, ComponentFilter

    try:
        f = ComponentFilter.parse(text)
    except Exception as exc:
        _refused(exc)
        return
    assert f.kind in KINDS
    assert f.name


_OPS = st.sampled_from(["=", "==", "!=", "<", "<=", ">", ">=", "~", ""])
_COLUMNS = st.sampled_from(["lr", "metric", "value", "batch_size", "model", "nosuch"])


@_PARSER
@given(
    items=st.lists(
        st.one_of(_ANY_TEXT, st.builds("{}{}{}".format, _COLUMNS, _OPS, _INPUT)),
        max_size=4,
    )
)
def test_results_filter_parser(items: list[str]) -> None:
    """``sharpkit results --filter``: parsed, then applied to a row."""
    from sharpkit.store.table import COLUMNS, matches, parse_filters

    row: dict[str, Any] = dict.fromkeys(COLUMNS)  # a table row has every column
    row.update(lr=0.1, metric="spectral", value=1.5, model="m", batch_size=32)
    try:
        filters = parse_filters(items)
        matches(row, filters)
    except Exception as exc:
        _refused(exc)


_TOML_VALUE = st.recursive(
    st.one_of(
        st.integers(-5, 5),
        st.floats(allow_nan=False, allow_infinity=False, width=32),
        st.booleans(),
        st.text(max_size=8),
    ),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)
_SECTION_KEYS = st.sampled_from(
    ["model", "data", "lr", "batch_size", "epochs", "seed", "metrics", "alpha", "a",
     "b", "name", "out", "store", "grid", "schedule", "samples", "nosuch"]
)  # fmt: skip


@_PARSER
@given(
    data=st.dictionaries(
        st.sampled_from(["sweep", "train", "measure", "interpolate", "extra"]),
        st.one_of(
            st.dictionaries(_SECTION_KEYS, _TOML_VALUE, max_size=6),
            st.lists(
                st.dictionaries(_SECTION_KEYS, _TOML_VALUE, max_size=3), max_size=2
            ),
            _TOML_VALUE,
        ),
        max_size=4,
    )
)
def test_sweep_file_parser(data: dict[str, Any]) -> None:
    """A sweep.toml's tables, as tomllib hands them over."""
    from sharpkit.sweep import SweepConfig

    try:
        config = SweepConfig.from_dict(data, base=Path(tempfile.gettempdir()))
        config.points()
    except Exception as exc:
        _refused(exc)


# --------------------------------------------------------------------------- files


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def _load(path: Path) -> sharpkit.Checkpoint | None:
    try:
        return sharpkit.load_checkpoint(path)
    except Exception as exc:
        _refused(exc)
        return None


@_FILE
@given(data=st.data())
def test_damaged_checkpoint_bytes(
    tiny: Path, scratch: Path, data: st.DataObject
) -> None:
    """Bytes of a real checkpoint cut, overwritten or inserted anywhere."""
    raw = bytearray(tiny.read_bytes())
    kind = data.draw(st.sampled_from(["cut", "overwrite", "insert"]))
    at = data.draw(st.integers(0, len(raw) - 1))
    junk = data.draw(st.binary(min_size=1, max_size=64))
    if kind == "cut":
        raw = raw[:at]
    elif kind == "overwrite":
        raw[at : at + len(junk)] = junk
    else:
        raw[at:at] = junk
    path = scratch / "damaged.pt"
    path.write_bytes(bytes(raw))
    ckpt = _load(path)
    if ckpt is not None:  # the damage missed everything torch reads: still typed
        assert all(isinstance(t, torch.Tensor) for t in ckpt.state_dict.values())


_JSON = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.floats(),
        st.text(max_size=10),
    ),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=10,
)
_FIELDS = st.sampled_from(
    ["model", "dataset", "lr", "batch_size", "seed", "epoch", "epochs", "final",
     "model_options", "dataset_options", "schedule", "extra", "momentum", "other"]
)  # fmt: skip
_META = st.one_of(_JSON, st.dictionaries(_FIELDS, _JSON, max_size=6))


def _typed(meta: sharpkit.CheckpointMeta) -> None:
    """Every field read back has its declared type (or is None)."""
    assert meta.model is None or isinstance(meta.model, str)
    assert meta.lr is None or isinstance(meta.lr, int | float)
    assert meta.batch_size is None or isinstance(meta.batch_size, int)
    assert isinstance(meta.model_options, Mapping)
    assert all(isinstance(v, int | float) for v in (meta.final or {}).values())


@_FILE
@given(meta=_META)
def test_checkpoint_metadata_of_any_shape(
    tiny: Path, scratch: Path, meta: object
) -> None:
    """``meta`` in a torch checkpoint: any JSON-like value at all."""
    obj = torch.load(tiny, weights_only=True)
    obj.pop("train_state", None)
    obj["meta"] = meta
    path = scratch / "meta.pt"
    torch.save(obj, path)
    ckpt = _load(path)
    if ckpt is not None:
        _typed(ckpt.meta)


@_FILE
@given(meta=st.one_of(_META.map(json.dumps), st.text(max_size=30)))
def test_safetensors_metadata_of_any_shape(
    tiny: Path, scratch: Path, meta: str
) -> None:
    """The ``sharpkit`` header entry of a ``.safetensors`` file: any text."""
    from safetensors.torch import save_file

    state = sharpkit.load_checkpoint(tiny).state_dict
    path = scratch / "meta.safetensors"
    save_file(dict(state), path, metadata={"sharpkit": meta})
    ckpt = _load(path)
    if ckpt is not None:
        _typed(ckpt.meta)
