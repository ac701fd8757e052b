"""Checks shared by the conformance suites: specs, options, module state, tensors.

Everything here uses sharpkit's public API only; "unchanged" is
:func:`sharpkit.same_bits`, the comparison ``sharpkit.measure`` restores models
by. The spec rules are the
registry's own (:meth:`~sharpkit.MetricSpec.validate`: a spec the registry would
skip fails :func:`check_spec`), in strict mode: documented defaults must also be
the factory's.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import sharpkit

if TYPE_CHECKING:
    import numpy as np
    import torch

__all__ = [
    "ModuleState",
    "assert_unchanged",
    "check_spec",
    "create",
    "expect",
    "global_rng",
    "is_number",
    "parse_options",
    "same_arrays",
    "same_float",
    "snapshot",
]


def expect(condition: object, message: str) -> None:
    """Fail the running contract test with ``message`` unless ``condition`` holds.

    Unlike a bare ``assert``, this also fails under ``python -O``.

    Raises:
        AssertionError: ``condition`` is false.
    """
    if not condition:
        raise AssertionError(message)


def _fail(message: str) -> sharpkit.PluginContractError:
    return sharpkit.PluginContractError(message)


def check_spec(spec: object, kind: str | None = None) -> None:
    """Validate a component spec as the registry does, and a little more.

    The registry's rules (:meth:`~sharpkit.MetricSpec.validate`): the name is
    kebab-case; the description is one non-empty line; options have unique
    names that do not shadow an argument sharpkit passes itself; the factory is
    callable, takes no ``*args``, accepts every option and every argument
    sharpkit passes it (``input_shape``/``num_classes`` for models,
    ``root``/``download``/``subset``/``seed`` for datasets, ``variant`` for
    prefix models) and requires nothing else; a probe takes one or two models.
    On top of those (``strict``): each documented default parses to the
    option's type and equals the factory's own default.

    Args:
        spec: The spec to check.
        kind: ``"model"``, ``"dataset"``, ``"trainer"``, ``"metric"`` or
            ``"probe"``; the spec must be of that kind (default: any).

    Raises:
        PluginContractError: The spec breaks the contract; the message says how.
    """
    specs = (
        sharpkit.ModelSpec,
        sharpkit.DatasetSpec,
        sharpkit.TrainerSpec,
        sharpkit.MetricSpec,
        sharpkit.ProbeSpec,
    )
    if not isinstance(spec, specs):
        msg = (
            f"{type(spec).__name__} is not a sharpkit spec (ModelSpec, DatasetSpec, "
            "TrainerSpec, MetricSpec or ProbeSpec)"
        )
        raise sharpkit.PluginContractError(msg)
    if kind is not None and spec.kind != kind:
        msg = (
            f"sharpkit_register_{kind}s must return {kind} specs, "
            f"got a {type(spec).__name__}"
        )
        raise sharpkit.PluginContractError(msg)
    spec.validate(strict=True)


def parse_options(spec: Any, options: Mapping[str, Any]) -> dict[str, Any]:
    """Convert ``options`` as the registry does: known names, typed values.

    Raises:
        ConfigError: An option the spec does not declare, or a bad value.
    """
    parsed: dict[str, Any] = spec.parse_options(options)
    return parsed


def create(spec: Any, options: Mapping[str, Any], /, **context: Any) -> Any:
    """Call ``spec.factory`` as sharpkit does: ``factory(**context, **options)``.

    ``options`` are parsed first (CLI strings such as ``"5"`` become ``5``).
    """
    return spec.factory(**context, **parse_options(spec, options))


# --------------------------------------------------------------------------- modules


@dataclass(frozen=True)
class ModuleState:
    """A bit-exact copy of what a component must not change in a module.

    Attributes:
        params: Parameter values by name (cloned).
        buffers: Buffer values by name (cloned): BN running statistics and
            ``num_batches_tracked``.
        flags: Each submodule's ``training`` flag, by name.
        requires_grad: Each parameter's ``requires_grad``, by name.
    """

    params: dict[str, torch.Tensor]
    buffers: dict[str, torch.Tensor]
    flags: dict[str, bool]
    requires_grad: dict[str, bool]


def snapshot(module: torch.nn.Module) -> ModuleState:
    """Return a :class:`ModuleState` of ``module`` as it is now."""
    return ModuleState(
        params={k: v.detach().clone() for k, v in module.named_parameters()},
        buffers={k: v.detach().clone() for k, v in module.named_buffers()},
        flags={k or "<root>": m.training for k, m in module.named_modules()},
        requires_grad={k: v.requires_grad for k, v in module.named_parameters()},
    )


def _same_tensors(
    before: Mapping[str, torch.Tensor], after: Mapping[str, torch.Tensor], what: str
) -> None:
    expect(
        list(after) == list(before),
        f"{what}: names changed from {list(before)} to {list(after)}",
    )
    for key, old in before.items():
        new = after[key]
        expect(
            new.dtype == old.dtype and new.shape == old.shape,
            f"{what} {key!r} changed from {old.dtype} {tuple(old.shape)} to "
            f"{new.dtype} {tuple(new.shape)}",
        )
        expect(
            new.device == old.device,
            f"{what} {key!r} moved from {old.device} to {new.device}",
        )
        expect(sharpkit.same_bits(new, old), f"{what} {key!r} changed")


def assert_unchanged(before: ModuleState, module: torch.nn.Module, what: str) -> None:
    """Fail unless ``module`` is bit-identical to the snapshot ``before``.

    Raises:
        AssertionError: A parameter, buffer, ``training`` flag or
            ``requires_grad`` flag differs; the message names it.
    """
    now = snapshot(module)
    _same_tensors(before.params, now.params, f"{what}: parameter")
    _same_tensors(before.buffers, now.buffers, f"{what}: buffer")
    for key, flag in before.flags.items():
        expect(
            now.flags.get(key) == flag,
            f"{what}: module {key!r} was left in "
            f"{'train' if now.flags.get(key) else 'eval'} mode "
            f"(it was in {'train' if flag else 'eval'} mode)",
        )
    expect(
        now.requires_grad == before.requires_grad,
        f"{what}: requires_grad flags changed",
    )


def is_number(value: object) -> bool:
    """Return whether ``value`` is a ``float`` or an ``int`` (not a ``bool``)."""
    return isinstance(value, float | int) and not isinstance(value, bool)


def same_arrays(a: np.ndarray, b: np.ndarray) -> bool:
    """Return whether two arrays are equal element for element (NaN equals NaN)."""
    import numpy as np

    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.dtype.kind in "fc":
        return bool(np.array_equal(a, b, equal_nan=True))
    return bool(np.array_equal(a, b))


def same_float(a: float, b: float) -> bool:
    """Return whether two floats are equal (NaN equals NaN)."""
    return a == b or (math.isnan(a) and math.isnan(b))


@contextmanager
def global_rng(seed: int) -> Iterator[None]:
    """Run the block with the global RNGs (torch, numpy, Python) seeded from ``seed``.

    The states are restored afterwards. The contracts run the two halves of a
    determinism check under different global seeds: a component that draws
    from the global RNG instead of its own seed then gives two results.
    """
    import random

    import numpy as np
    import torch

    py_state = random.getstate()
    np_state = np.random.get_state()  # noqa: NPY002 - the legacy global state is the point
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed)  # noqa: NPY002
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)  # noqa: NPY002
