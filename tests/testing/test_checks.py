"""sharpkit.testing's shared checks: spec validation, options, module state.

``check_spec`` re-implements the registry's validation on the public API (the
registry is private), so these tests pin the two together: every spec the
registry rejects, ``check_spec`` rejects too, and every registered spec passes.
"""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
import torch

import sharpkit
import sharpkit.testing
from sharpkit.registry import KINDS, Registry, get_registry
from sharpkit.testing import check_spec, tiny_model
from sharpkit.testing._checks import (
    assert_unchanged,
    create,
    global_rng,
    parse_options,
    snapshot,
)

Opt = sharpkit.Option


def model_factory(*, input_shape: Any, num_classes: int, width: int = 4) -> Any:
    return None


def dataset_factory(
    root: Any = None, download: bool = False, subset: Any = None, seed: int = 0
) -> Any:
    return None


def metric_factory(*, probes: int = 2) -> Any:
    return None


def star_args(*args: Any) -> Any:
    return None


def needs_extra(*, extra: int) -> Any:
    return None


def prefix_factory(*, input_shape: Any, num_classes: int, variant: str) -> Any:
    return None


def variadic(**kwargs: Any) -> Any:
    return None


M, D, P = sharpkit.MetricSpec, sharpkit.DatasetSpec, sharpkit.ProbeSpec
# Specs the registry itself rejects: check_spec must reject each as well.
REGISTRY_REJECTS: dict[str, tuple[str, Any]] = {
    "snake name": ("metric", M(name="my_metric", factory=variadic, description="x")),
    "upper name": ("metric", M(name="Spectral", factory=variadic, description="x")),
    "two-line description": (
        "metric",
        M(name="m", factory=variadic, description="one\ntwo"),
    ),
    "blank description": ("metric", M(name="m", factory=variadic, description=" ")),
    "factory not callable": ("metric", M(name="m", factory=3, description="x")),  # type: ignore[arg-type]
    "*args factory": ("metric", M(name="m", factory=star_args, description="x")),
    "option not accepted": (
        "metric",
        M(
            name="m",
            factory=metric_factory,
            description="x",
            options=(Opt(name="steps", type=int),),
        ),
    ),
    "dataset factory without subset": (
        "dataset",
        D(name="d", factory=metric_factory, description="x"),
    ),
    "model factory without num_classes": (
        "model",
        sharpkit.ModelSpec(name="m", factory=metric_factory, description="x"),
    ),
    "requires an unknown argument": (
        "metric",
        M(name="m", factory=needs_extra, description="x"),
    ),
    "prefix factory without variant": (
        "model",
        sharpkit.ModelSpec(
            name="zoo", factory=model_factory, description="x", prefix=True
        ),
    ),
    "wrong kind": ("metric", P(name="p", factory=variadic, description="x")),
    "duplicate option": (
        "metric",
        M(
            name="m",
            factory=metric_factory,
            description="x",
            options=(Opt(name="probes", type=int), Opt(name="probes", type=int)),
        ),
    ),
    "option shadows seed": (
        "dataset",
        D(
            name="d",
            factory=dataset_factory,
            description="x",
            options=(Opt(name="seed", type=int),),
        ),
    ),
    "three models": (
        "probe",
        P(name="p", factory=variadic, description="x", n_models=3),
    ),
}
# Broken specs only check_spec sees (the registry would register them and a user
# would trip over them later).
EXTRA_REJECTS: dict[str, tuple[str, Any, str]] = {
    "default of the wrong type": (
        "metric",
        M(
            name="m",
            factory=metric_factory,
            description="x",
            options=(Opt(name="probes", type=int, default="two"),),
        ),
        "expects int",
    ),
    "default not a choice": (
        "metric",
        M(
            name="m",
            factory=metric_factory,
            description="x",
            options=(Opt(name="probes", type=int, default=2, choices=(4, 8)),),
        ),
        "must be one of",
    ),
    "documented default differs": (
        "metric",
        M(
            name="m",
            factory=metric_factory,
            description="x",
            options=(Opt(name="probes", type=int, default=4),),
        ),
        "factory's default is 2",
    ),
}


@pytest.mark.parametrize("case", REGISTRY_REJECTS)
def test_check_spec_rejects_what_the_registry_rejects(case: str) -> None:
    kind, spec = REGISTRY_REJECTS[case]
    with pytest.raises(sharpkit.PluginContractError):
        Registry._validate(kind, spec)
    with pytest.raises(sharpkit.PluginContractError):
        check_spec(spec, kind)


@pytest.mark.parametrize("case", EXTRA_REJECTS)
def test_check_spec_also_rejects(case: str) -> None:
    kind, spec, message = EXTRA_REJECTS[case]
    Registry._validate(kind, spec)  # the registry lets it through
    with pytest.raises(sharpkit.PluginContractError, match=message):
        check_spec(spec, kind)


def test_every_registered_spec_passes() -> None:
    reg = get_registry()
    checked = 0
    for kind in KINDS:
        for spec in reg.specs(kind).values():
            check_spec(spec, kind)
            check_spec(spec)  # the kind is inferred
            checked += 1
    assert checked >= 19


def test_check_spec_rejects_a_non_spec() -> None:
    with pytest.raises(sharpkit.PluginContractError, match="not a sharpkit spec"):
        check_spec(object())


def test_parse_options_like_the_registry() -> None:
    spec = get_registry().specs("metric")["spectral"]
    reg = Registry(entry_points=False, warn=False)
    for options in ({"top_k": "3"}, {"top_k": 2}, {}):
        assert parse_options(spec, options) == reg.parse_options(spec, options)
    with pytest.raises(sharpkit.ConfigError, match="no option 'topk'"):
        parse_options(spec, {"topk": 3})
    with pytest.raises(sharpkit.ConfigError):
        parse_options(spec, {"top_k": "many"})
    metric = create(spec, {"top_k": "3"})
    assert metric.top_k == 3


def test_assert_unchanged_names_what_changed() -> None:
    net = tiny_model()
    before = snapshot(net)
    assert_unchanged(before, net, "net")
    with torch.no_grad():
        net[0].weight[0, 0] += 1e-12
    with pytest.raises(AssertionError, match=r"net: parameter '0.weight' changed"):
        assert_unchanged(before, net, "net")

    net = tiny_model()
    before = snapshot(net)
    net[1].num_batches_tracked += 1
    with pytest.raises(AssertionError, match=r"buffer '1\.num_batches_tracked'"):
        assert_unchanged(before, net, "net")

    net = tiny_model()
    before = snapshot(net)
    net[2].train()
    with pytest.raises(AssertionError, match="module '2' was left in train mode"):
        assert_unchanged(before, net, "net")

    net = tiny_model()
    before = snapshot(net)
    net.float()
    with pytest.raises(AssertionError, match=r"torch\.float64"):
        assert_unchanged(before, net, "net")


def test_global_rng_seeds_and_restores() -> None:
    import random

    import numpy as np

    torch.manual_seed(5)
    state = torch.get_rng_state()
    with global_rng(1):
        a = torch.rand(3), random.random(), np.random.rand()  # noqa: NPY002
    with global_rng(1):
        b = torch.rand(3), random.random(), np.random.rand()  # noqa: NPY002
    assert torch.equal(a[0], b[0])
    assert a[1:] == b[1:]
    assert torch.equal(torch.get_rng_state(), state)


def test_public_names() -> None:
    assert sorted(sharpkit.testing.__all__) == [
        "DatasetContract",
        "MetricContract",
        "ModelContract",
        "ProbeContract",
        "TrainerContract",
        "check_metric_spec",
        "check_spec",
        "tiny_context",
        "tiny_dataset",
        "tiny_model",
        "tiny_probe_context",
    ]
    for name in sharpkit.testing.__all__:
        obj = getattr(sharpkit.testing, name)
        assert obj.__doc__, f"{name} has no docstring"
        for attr, member in vars(obj).items() if isinstance(obj, type) else ():
            if callable(member) and not attr.startswith("_"):
                assert member.__doc__, f"{name}.{attr} has no docstring"


def test_imports_stay_light_and_public() -> None:
    code = (
        "import sys, sharpkit\n"
        "assert 'sharpkit.testing' not in sys.modules\n"
        "before = set(sys.modules)\n"
        "import sharpkit.testing\n"
        "new = set(sys.modules) - before\n"
        "heavy = sorted(m for m in new if m.split('.')[0] in ('torch', 'pytest'))\n"
        "assert not heavy, heavy\n"
        "private = sorted(m for m in new if m.startswith('sharpkit.')"
        " and not m.startswith('sharpkit.testing'))\n"
        "assert not private, private\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_suite_imports_only_the_public_api() -> None:
    import ast
    from pathlib import Path

    package = Path(sharpkit.testing.__file__).parent
    for path in package.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                mod = node.module
            elif isinstance(node, ast.Import):
                mod = node.names[0].name
            else:
                continue
            if mod.startswith("sharpkit"):
                assert mod in ("sharpkit", "sharpkit.hookspecs") or mod.startswith(
                    "sharpkit.testing"
                ), f"{path.name} imports {mod}"
