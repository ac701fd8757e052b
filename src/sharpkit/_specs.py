"""Component specs and their options: what a plugin's ``register`` hook returns.

Re-exported by :mod:`sharpkit.interfaces` (and the public names by
:mod:`sharpkit`); the registry validates specs with :meth:`_Spec.validate`.
"""

from __future__ import annotations

import difflib
import inspect
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from sharpkit.errors import ConfigError, PluginContractError

__all__ = [
    "DatasetSpec",
    "MetricSpec",
    "ModelSpec",
    "Option",
    "ProbeSpec",
    "TrainerSpec",
    "validate_name",
]

_NAME_RE = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")
_OPTION_RE = re.compile(r"^[a-z][a-z0-9_]*$")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


# --------------------------------------------------------------------------- options


@dataclass(frozen=True, slots=True, kw_only=True)
class Option:
    """One option of a component, settable as ``--option name=value`` on the CLI.

    Attributes:
        name: A snake_case keyword parameter of the spec's factory.
        type: ``int``, ``float``, ``str`` or ``bool``; CLI strings are parsed to it.
        default: The value used when the option is not given (for documentation;
            the factory's own default is what applies).
        help: One line for ``sharpkit plugins`` and the docs.
        choices: The allowed values, if the option is a closed choice.
    """

    name: str
    type: type = str
    default: Any = None
    help: str = ""
    choices: tuple[Any, ...] | None = None

    def __post_init__(self) -> None:
        if not _OPTION_RE.match(self.name):
            msg = f"option name {self.name!r} must be snake_case"
            raise ConfigError(msg)
        if self.type not in (int, float, str, bool):
            msg = f"option {self.name!r}: type must be int, float, str or bool"
            raise ConfigError(msg)

    def parse(self, value: Any) -> Any:
        """Convert ``value`` (a CLI string or a Python value) to this option's type.

        Raises:
            ConfigError: The value cannot be converted or is not one of ``choices``.
        """
        out: Any
        try:
            if self.type is bool:
                if isinstance(value, bool):
                    out = value
                elif str(value).lower() in _TRUE:
                    out = True
                elif str(value).lower() in _FALSE:
                    out = False
                else:
                    raise ValueError(value)
            elif self.type is int:
                if isinstance(value, float) and not value.is_integer():
                    raise ValueError(value)
                out = int(value)
            elif self.type is float:
                out = float(value)
                if not math.isfinite(out):
                    raise ValueError(value)
            else:
                out = str(value)
        except (TypeError, ValueError):
            msg = f"option {self.name!r} expects {self.type.__name__}, got {value!r}"
            raise ConfigError(msg) from None
        if self.choices is not None and out not in self.choices:
            allowed = ", ".join(repr(c) for c in self.choices)
            msg = f"option {self.name!r} must be one of {allowed}, got {value!r}"
            raise ConfigError(msg)
        return out


# --------------------------------------------------------------------------- specs


@dataclass(frozen=True, slots=True, kw_only=True)
class _Spec:
    name: str
    factory: Callable[..., Any]
    description: str
    options: tuple[Option, ...] = ()

    kind: ClassVar[str] = "component"
    supplied: ClassVar[tuple[str, ...]] = ()
    """Keyword arguments sharpkit passes to the factory itself."""

    def option(self, name: str) -> Option | None:
        """Return the option called ``name``, or ``None``."""
        for opt in self.options:
            if opt.name == name:
                return opt
        return None

    def arguments(self) -> tuple[str, ...]:
        """The keyword arguments sharpkit passes to this spec's factory itself."""
        return self.supplied

    def parse_options(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """Validate ``options`` against :attr:`options` and convert their values.

        CLI strings become the option's type (``"5"`` → ``5``).

        Raises:
            ConfigError: An unknown option name (with the closest known one) or a
                value of the wrong type.
        """
        parsed: dict[str, Any] = {}
        for key, value in options.items():
            opt = self.option(key)
            if opt is None:
                known = [o.name for o in self.options]
                close = difflib.get_close_matches(key, known, n=1)
                hint = f"did you mean {close[0]!r}? " if close else ""
                listing = ", ".join(known) if known else "none"
                msg = (
                    f"{self.kind} {self.name!r} has no option {key!r}; {hint}"
                    f"its options: {listing}"
                )
                raise ConfigError(msg)
            parsed[key] = opt.parse(value)
        return parsed

    def validate(self, *, strict: bool = False) -> None:
        """Check the spec against the plugin contract (the registry calls this).

        The name is kebab-case; the description is one non-empty line; options
        are :class:`Option` objects with unique names that do not shadow an
        argument sharpkit passes itself; the factory is callable, takes no
        ``*args``, accepts every option and every argument sharpkit passes, and
        requires nothing else. With ``strict`` (the conformance suites in
        :mod:`sharpkit.testing`) each documented default must also parse to its
        option's type and equal the factory's own default.

        Raises:
            PluginContractError: The spec breaks the contract; the message says how.
        """
        where = f"{self.kind} {self.name!r}"
        name: object = self.name  # plugins may hand in anything
        if not isinstance(name, str) or not _NAME_RE.match(name):
            msg = f"{self.kind} name {self.name!r} is not kebab-case (e.g. 'my-metric')"
            raise PluginContractError(msg)
        desc: object = self.description
        if not isinstance(desc, str) or not desc.strip() or "\n" in desc.strip():
            msg = f"{where}: description must be one non-empty line"
            raise PluginContractError(msg)
        factory: object = self.factory
        if not callable(factory):
            msg = f"{where}: factory is not callable"
            raise PluginContractError(msg)
        self._validate_options(where, strict=strict)
        try:
            params = inspect.signature(self.factory).parameters
        except (TypeError, ValueError):  # builtins without a signature
            return
        _check_factory(where, params, [o.name for o in self.options], self.arguments())
        if strict:
            _check_defaults(where, params, self.options)

    def _validate_options(self, where: str, *, strict: bool) -> None:
        options: object = self.options
        if not isinstance(options, tuple) or not all(
            isinstance(o, Option) for o in options
        ):
            msg = f"{where}: options must be a tuple of sharpkit.Option"
            raise PluginContractError(msg)
        seen: set[str] = set()
        for opt in self.options:
            if opt.name in seen:
                msg = f"{where}: option {opt.name!r} is declared twice"
                raise PluginContractError(msg)
            seen.add(opt.name)
            if opt.name in self.arguments():
                msg = (
                    f"{where}: option {opt.name!r} shadows an argument sharpkit "
                    "passes to the factory itself; rename it"
                )
                raise PluginContractError(msg)
            if strict and opt.default is not None:
                try:
                    parsed = opt.parse(opt.default)
                except ConfigError as exc:
                    msg = f"{where}: default of option {opt.name!r}: {exc}"
                    raise PluginContractError(msg) from None
                if parsed != opt.default:
                    msg = (
                        f"{where}: default {opt.default!r} of option {opt.name!r} "
                        f"is not a {opt.type.__name__}"
                    )
                    raise PluginContractError(msg)


def _check_factory(
    where: str,
    params: Mapping[str, inspect.Parameter],
    options: Sequence[str],
    supplied: Sequence[str],
) -> None:
    """The factory accepts the options and sharpkit's arguments, needs no other."""
    if any(p.kind is p.VAR_POSITIONAL for p in params.values()):
        msg = f"{where}: factory must not take *args"
        raise PluginContractError(msg)
    needed = [*options, *supplied]
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        missing = [n for n in needed if n not in params]
        if missing:
            listing = ", ".join(repr(m) for m in missing)
            msg = f"{where}: factory does not accept {listing}"
            raise PluginContractError(msg)
    required = [
        n
        for n, p in params.items()
        if p.default is p.empty
        and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY, p.POSITIONAL_ONLY)
        and n not in needed
    ]
    if required:
        listing = ", ".join(repr(r) for r in required)
        msg = (
            f"{where}: factory requires {listing} which is neither an option nor "
            "supplied by sharpkit"
        )
        raise PluginContractError(msg)


def _check_defaults(
    where: str, params: Mapping[str, inspect.Parameter], options: Sequence[Option]
) -> None:
    """Each documented default is the factory's own."""
    for opt in options:
        param = params.get(opt.name)
        if param is None or param.default is param.empty or opt.default is None:
            continue
        if param.default != opt.default:
            msg = (
                f"{where}: option {opt.name!r} documents default {opt.default!r} "
                f"but the factory's default is {param.default!r}"
            )
            raise PluginContractError(msg)


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelSpec(_Spec):
    """A model architecture.

    The factory is called as ``factory(input_shape=..., num_classes=..., **options)``
    and returns a :class:`torch.nn.Module` mapping a batch of inputs to logits.
    A *prefix* spec (``prefix=True``, e.g. ``timm``) matches ``<name>:<variant>``
    and its factory additionally receives ``variant=<variant>``.

    Attributes:
        source: Where the architecture comes from (paper, repository).
    """

    prefix: bool = False
    source: str = ""

    kind: ClassVar[str] = "model"
    supplied: ClassVar[tuple[str, ...]] = ("input_shape", "num_classes")

    def arguments(self) -> tuple[str, ...]:
        """``input_shape`` and ``num_classes``, and ``variant`` for a prefix."""
        return (*self.supplied, "variant") if self.prefix else self.supplied


@dataclass(frozen=True, slots=True, kw_only=True)
class DatasetSpec(_Spec):
    """A dataset.

    The factory is called as
    ``factory(root=Path | None, download=bool, subset=int | None, seed=int, **options)``
    and returns a :class:`Dataset`.
    """

    kind: ClassVar[str] = "dataset"
    supplied: ClassVar[tuple[str, ...]] = ("root", "download", "subset", "seed")


@dataclass(frozen=True, slots=True, kw_only=True)
class TrainerSpec(_Spec):
    """A training algorithm; the factory returns a :class:`Trainer`."""

    kind: ClassVar[str] = "trainer"


@dataclass(frozen=True, slots=True, kw_only=True)
class MetricSpec(_Spec):
    """A sharpness metric; the factory returns a :class:`Metric`.

    Attributes:
        stochastic: Whether the metric is a random estimate; then its result
            must carry a standard error and be reproducible from the seed.
        unit: The value's unit (e.g. ``"loss / parameter²"``), stored with every
            result as the ``units`` attribute.
        long_name: What the value is, for tables, figures and the stored
            ``long_name`` attribute (e.g. ``"largest Hessian eigenvalue λ_max"``);
            default: the name.
    """

    stochastic: bool = False
    unit: str = ""
    long_name: str = ""

    kind: ClassVar[str] = "metric"


@dataclass(frozen=True, slots=True, kw_only=True)
class ProbeSpec(_Spec):
    """A loss-landscape probe; the factory returns a :class:`Probe`.

    Attributes:
        n_models: How many models the probe takes (1: around one minimum;
            2: between two minima).
    """

    n_models: int = 1

    kind: ClassVar[str] = "probe"

    def validate(self, *, strict: bool = False) -> None:
        """Check the spec as every spec is checked, and that ``n_models`` is 1 or 2.

        Raises:
            PluginContractError: The spec breaks the contract.
        """
        super(ProbeSpec, self).validate(strict=strict)
        if self.n_models not in (1, 2):
            msg = f"probe {self.name!r}: n_models must be 1 or 2, got {self.n_models!r}"
            raise PluginContractError(msg)


def validate_name(name: str) -> bool:
    """Return whether ``name`` is a valid kebab-case component name."""
    return bool(_NAME_RE.match(name))
