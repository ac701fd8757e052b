"""Checks shared by the conformance suites: specs, options, module state, tensors.

Everything here uses sharpkit's public API only. The spec rules are the
registry's (a spec the registry would skip fails :func:`check_spec`), plus a few
that the registry cannot see until a user trips over them: duplicate option
names, options that shadow the arguments sharpkit passes itself, and documented
defaults that disagree with the factory's.
"""

from __future__ import annotations

import inspect
import math
import re
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

_NAME_RE = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")

# (spec class, kind, keyword arguments sharpkit itself passes to the factory)
_KINDS: tuple[tuple[type[Any], str, tuple[str, ...]], ...] = (
    (sharpkit.ModelSpec, "model", ("input_shape", "num_classes")),
    (sharpkit.DatasetSpec, "dataset", ("root", "download", "subset", "seed")),
    (sharpkit.TrainerSpec, "trainer", ()),
    (sharpkit.MetricSpec, "metric", ()),
    (sharpkit.ProbeSpec, "probe", ()),
)


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


def _kind_of(spec: object) -> tuple[str, tuple[str, ...]]:
    for cls, kind, context in _KINDS:
        if isinstance(spec, cls):
            return kind, context
    msg = (
        f"{type(spec).__name__} is not a sharpkit spec (ModelSpec, DatasetSpec, "
        "TrainerSpec, MetricSpec or ProbeSpec)"
    )
    raise _fail(msg)


def check_spec(spec: object, kind: str | None = None) -> None:
    """Validate a component spec as the registry does, and a little more.

    The registry's rules: the spec is of the expected type; the name is
    kebab-case; the description is one non-empty line; the factory is callable,
    takes no ``*args``, accepts every option and every argument sharpkit passes
    it (``input_shape``/``num_classes`` for models, ``root``/``download``/
    ``subset``/``seed`` for datasets, ``variant`` for prefix models) and requires
    nothing else. On top of those: option names are unique and do not shadow
    those arguments; each documented default parses to the option's type, is one
    of its ``choices``, and equals the factory's own default; a probe takes one
    or two models.

    Args:
        spec: The spec to check.
        kind: ``"model"``, ``"dataset"``, ``"trainer"``, ``"metric"`` or
            ``"probe"``; the spec must be of that kind (default: any).

    Raises:
        PluginContractError: The spec breaks the contract; the message says how.
    """
    found, context = _kind_of(spec)
    if kind is not None and found != kind:
        msg = (
            f"sharpkit_register_{kind}s must return {kind} specs, "
            f"got a {type(spec).__name__}"
        )
        raise _fail(msg)
    name: object = getattr(spec, "name", None)
    if not isinstance(name, str) or not _NAME_RE.match(name):
        msg = f"{found} name {name!r} is not kebab-case (e.g. 'my-{found}')"
        raise _fail(msg)
    desc: object = getattr(spec, "description", None)
    if not isinstance(desc, str) or not desc.strip() or "\n" in desc.strip():
        msg = f"{found} {name!r}: description must be one non-empty line"
        raise _fail(msg)
    factory: object = getattr(spec, "factory", None)
    if not callable(factory):
        msg = f"{found} {name!r}: factory is not callable"
        raise _fail(msg)
    options: object = getattr(spec, "options", ())
    if not isinstance(options, tuple) or not all(
        isinstance(o, sharpkit.Option) for o in options
    ):
        msg = f"{found} {name!r}: options must be a tuple of sharpkit.Option"
        raise _fail(msg)
    supplied = list(context)
    if isinstance(spec, sharpkit.ModelSpec) and spec.prefix:
        supplied.append("variant")
    seen: set[str] = set()
    for opt in options:
        if opt.name in seen:
            msg = f"{found} {name!r}: option {opt.name!r} is declared twice"
            raise _fail(msg)
        seen.add(opt.name)
        if opt.name in supplied:
            msg = (
                f"{found} {name!r}: option {opt.name!r} shadows an argument "
                "sharpkit passes to the factory itself; rename it"
            )
            raise _fail(msg)
        if opt.default is not None:
            try:
                parsed = opt.parse(opt.default)
            except sharpkit.ConfigError as exc:
                msg = f"{found} {name!r}: default of option {opt.name!r}: {exc}"
                raise _fail(msg) from None
            if parsed != opt.default:
                msg = (
                    f"{found} {name!r}: default {opt.default!r} of option "
                    f"{opt.name!r} is not a {opt.type.__name__}"
                )
                raise _fail(msg)
    if isinstance(spec, sharpkit.ProbeSpec) and spec.n_models not in (1, 2):
        msg = f"probe {name!r}: n_models must be 1 or 2, got {spec.n_models!r}"
        raise _fail(msg)
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # builtins without a signature
        return
    if any(p.kind is p.VAR_POSITIONAL for p in params.values()):
        msg = f"{found} {name!r}: factory must not take *args"
        raise _fail(msg)
    needed = [o.name for o in options] + supplied
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        missing = [n for n in needed if n not in params]
        if missing:
            msg = f"{found} {name!r}: factory does not accept " + ", ".join(
                repr(m) for m in missing
            )
            raise _fail(msg)
    required = [
        n
        for n, p in params.items()
        if p.default is p.empty
        and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY, p.POSITIONAL_ONLY)
        and n not in needed
    ]
    if required:
        msg = (
            f"{found} {name!r}: factory requires "
            + ", ".join(repr(r) for r in required)
            + " which is neither an option nor supplied by sharpkit"
        )
        raise _fail(msg)
    for opt in options:
        param = params.get(opt.name)
        if param is None or param.default is param.empty or opt.default is None:
            continue
        if param.default != opt.default:
            msg = (
                f"{found} {name!r}: option {opt.name!r} documents default "
                f"{opt.default!r} but the factory's default is {param.default!r}"
            )
            raise _fail(msg)


def parse_options(spec: Any, options: Mapping[str, Any]) -> dict[str, Any]:
    """Convert ``options`` as the registry does: known names, typed values.

    Raises:
        ConfigError: An option the spec does not declare, or a bad value.
    """
    parsed: dict[str, Any] = {}
    for key, value in options.items():
        opt = spec.option(key)
        if opt is None:
            known = ", ".join(o.name for o in spec.options) or "none"
            msg = f"{spec.name!r} has no option {key!r}; its options: {known}"
            raise sharpkit.ConfigError(msg)
        parsed[key] = opt.parse(value)
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
    import torch

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
        expect(torch.equal(new, old), f"{what} {key!r} changed")


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
