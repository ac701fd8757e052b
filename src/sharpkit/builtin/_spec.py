"""Options of a built-in component, read from its factory's signature.

The factory's keyword parameters are the options: their names, types and
defaults come from the signature, so the documented default is always the one
that applies; only the one-line help (and the allowed values of a closed
choice) are written beside the spec.
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any

from sharpkit import ConfigError, Option

__all__ = ["check_choice", "signature_options"]

_TYPES = (bool, int, float, str)


def _option_type(hint: Any, name: str) -> type:
    """``int``, ``float``, ``str`` or ``bool`` from a hint such as ``int | None``."""
    args = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    kinds = [a for a in args if a is not type(None)]
    if len(kinds) != 1 or kinds[0] not in _TYPES:
        msg = f"option {name!r} must be annotated int, float, str or bool, got {hint}"
        raise TypeError(msg)
    kind: type = kinds[0]
    return kind


def signature_options(
    factory: Callable[..., Any],
    help: Mapping[str, str],
    *,
    choices: Mapping[str, tuple[Any, ...]] | None = None,
) -> tuple[Option, ...]:
    """Return one :class:`~sharpkit.Option` per keyword parameter of ``factory``.

    Args:
        factory: A class or function whose keyword parameters are the options.
        help: One line of help for every parameter (a missing one is an error,
            so a new parameter cannot go undocumented).
        choices: The allowed values of the parameters that are closed choices.

    Raises:
        TypeError: A parameter without help, default or a supported annotation.
    """
    target = factory.__init__ if inspect.isclass(factory) else factory
    hints = typing.get_type_hints(target)
    choices = choices or {}
    options = []
    for param in inspect.signature(factory).parameters.values():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        if param.name not in help or param.default is param.empty:
            msg = f"{factory.__name__}({param.name}) needs a help line and a default"
            raise TypeError(msg)
        options.append(
            Option(
                name=param.name,
                type=_option_type(hints[param.name], param.name),
                default=param.default,
                help=help[param.name],
                choices=choices.get(param.name),
            )
        )
    unknown = set(help) - {o.name for o in options}
    if unknown:
        msg = f"help for unknown parameters of {factory.__name__}: {sorted(unknown)}"
        raise TypeError(msg)
    return tuple(options)


def check_choice(name: str, value: Any, allowed: tuple[Any, ...]) -> None:
    """Raise :class:`~sharpkit.ConfigError` unless ``value`` is one of ``allowed``."""
    if value not in allowed:
        msg = f"{name} must be one of {', '.join(map(repr, allowed))}, got {value!r}"
        raise ConfigError(msg)
