"""The plugin registry: a typed facade over a private :class:`pluggy.PluginManager`.

Built-in and third-party plugins are both loaded from the ``sharpkit`` entry-point
group. Each plugin is isolated: one that fails to import, breaks the contract, or
whose hook raises is recorded as a :class:`PluginFailure` (and warned about with a
:class:`~sharpkit.errors.PluginWarning`) and skipped; the rest keep working.
Component tables are built lazily per kind, so a duplicate name only fails the
lookup of that kind while ``sharpkit plugins`` can still show the conflict. One
component can be left out without its whole plugin: ``metric:spectral`` (from
every provider) or ``metric:spectral@builtin`` (from the built-ins only), given
as ``--disable`` or in ``$SHARPKIT_DISABLE``; that is how a name two plugins
provide is settled.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib.metadata
import os
import sys
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeVar, cast, overload

import pluggy

from sharpkit import hookspecs
from sharpkit._limits import (
    bounded_build,
    bounded_import,
    check_count,
    import_timeout,
)
from sharpkit.errors import (
    ConfigError,
    DuplicateNameError,
    PluginContractError,
    PluginError,
    PluginRunError,
    PluginWarning,
    SharpkitError,
    UnknownNameError,
    first_line,
)
from sharpkit.interfaces import (
    DatasetSpec,
    MetricSpec,
    ModelSpec,
    ProbeSpec,
    TrainerSpec,
    _Spec,
)

if TYPE_CHECKING:
    import typer

__all__ = [
    "KINDS",
    "ComponentFilter",
    "PluginFailure",
    "PluginRecord",
    "Registry",
    "disabled_components_from_env",
    "disabled_from_env",
    "get_registry",
    "reset_registry",
]

Kind = Literal["model", "dataset", "trainer", "metric", "probe"]
KINDS: tuple[Kind, ...] = ("model", "dataset", "trainer", "metric", "probe")

_SPEC_TYPES: dict[str, type[_Spec]] = {
    "model": ModelSpec,
    "dataset": DatasetSpec,
    "trainer": TrainerSpec,
    "metric": MetricSpec,
    "probe": ProbeSpec,
}
_HOOKS: dict[str, str] = {kind: f"sharpkit_register_{kind}s" for kind in KINDS}
SELF_DISTRIBUTION = "sharpkit"
ENV_DISABLE = "SHARPKIT_DISABLE_PLUGINS"
ENV_DISABLE_COMPONENTS = "SHARPKIT_DISABLE"
BUILTIN_ALIAS = "builtin"

S = TypeVar("S", bound=_Spec)


@dataclass(frozen=True, slots=True)
class PluginRecord:
    """A plugin the registry knows of.

    Attributes:
        name: Entry-point (pluggy) name, e.g. ``builtin.metrics`` or ``fisher-rao``.
        distribution: The distribution providing it, or ``None`` for an object
            registered directly.
        version: That distribution's version.
        status: ``"loaded"``, ``"disabled"`` or ``"failed"``.
    """

    name: str
    distribution: str | None
    version: str | None
    status: str = "loaded"

    @property
    def provider(self) -> str:
        """Human-readable provenance, e.g. ``sharpkit-foo 1.2 (foo)``."""
        if self.distribution is None:
            return f"plugin {self.name!r}"
        return f"{self.distribution} {self.version} ({self.name})"


@dataclass(frozen=True, slots=True)
class PluginFailure:
    """A plugin that was skipped, and why.

    Attributes:
        plugin: Entry-point name.
        distribution: Providing distribution, if known.
        version: Its version.
        phase: ``"import"``, ``"validate"``, or the hook / spec that failed.
        error: One line describing the error.
        exception: The exception itself (its traceback is kept for ``--debug``).
    """

    plugin: str
    distribution: str | None
    version: str | None
    phase: str
    error: str
    exception: BaseException | None = None

    def message(self) -> str:
        """One line for warnings and the CLI."""
        where = (
            f"plugin {self.plugin!r}"
            if self.distribution is None
            else f"plugin {self.plugin!r} from {self.distribution} {self.version}"
        )
        hint = f"; disable it with --disable-plugin {self.plugin}"
        return f"{where} skipped ({self.phase}): {self.error}{hint}"


def _one_line(exc: BaseException) -> str:
    first = first_line(exc)
    name = type(exc).__name__
    return f"{name}: {first}" if first else name


def disabled_from_env() -> set[str]:
    """Return the plugin names listed in ``$SHARPKIT_DISABLE_PLUGINS``."""
    raw = os.environ.get(ENV_DISABLE, "")
    return {part.strip() for part in raw.split(",") if part.strip()}


def disabled_components_from_env() -> set[str]:
    """Return the components in ``$SHARPKIT_DISABLE`` (``kind:name[@plugin]``)."""
    raw = os.environ.get(ENV_DISABLE_COMPONENTS, "")
    return {part.strip() for part in raw.split(",") if part.strip()}


@dataclass(frozen=True, slots=True)
class ComponentFilter:
    """One component left out: ``kind:name``, or ``kind:name@plugin`` for one provider.

    ``plugin`` matches the entry-point name (``builtin.metrics``), the
    distribution (``sharpkit``, ``sharpkit-foo``), or ``builtin`` for every
    built-in.

    Examples:
        >>> f = ComponentFilter.parse("metric:spectral@builtin")
        >>> f.matches("metric", "spectral", "builtin.metrics", "sharpkit")
        True
        >>> f.matches("metric", "spectral", "rogue", "sharpkit-rogue")
        False
    """

    kind: str
    name: str
    plugin: str | None = None

    @classmethod
    def parse(cls, text: str) -> ComponentFilter:
        """Parse ``kind:name[@plugin]``.

        Raises:
            ConfigError: Another form, or an unknown kind.
        """
        kind, colon, rest = text.strip().partition(":")
        name, at, plugin = rest.partition("@")
        if not (colon and kind in KINDS and name and (plugin or not at)):
            msg = (
                f"cannot disable {text!r}: write kind:name or kind:name@plugin "
                f"(e.g. metric:spectral@builtin), kind one of {', '.join(KINDS)}"
            )
            raise ConfigError(msg)
        return cls(kind, name, plugin or None)

    def matches(
        self, kind: str, name: str, plugin: str, distribution: str | None
    ) -> bool:
        """Whether the component ``kind`` ``name`` from ``plugin`` is left out."""
        if (kind, name) != (self.kind, self.name):
            return False
        if self.plugin is None:
            return True
        want = _normalise(self.plugin)
        return (
            want == _normalise(plugin)
            or (distribution is not None and want == _normalise(distribution))
            or (want == BUILTIN_ALIAS and plugin.startswith(BUILTIN_ALIAS + "."))
        )

    def __str__(self) -> str:
        return f"{self.kind}:{self.name}" + (f"@{self.plugin}" if self.plugin else "")


def _normalise(name: str) -> str:
    return name.strip().lower().replace("_", "-")


class Registry:
    """Plugin discovery, validation and name lookup.

    Args:
        disabled: Plugin (entry-point) names not to load, in addition to those in
            ``$SHARPKIT_DISABLE_PLUGINS``.
        disabled_components: Components to leave out, ``kind:name`` or
            ``kind:name@plugin``, in addition to those in ``$SHARPKIT_DISABLE``.
        entry_points: Load plugins from the ``sharpkit`` entry-point group. Tests
            pass ``False`` and register objects with :meth:`register_plugin`.
        warn: Emit a :class:`~sharpkit.errors.PluginWarning` for each failure.

    Raises:
        ConfigError: A disabled component that is not ``kind:name[@plugin]``.
    """

    def __init__(
        self,
        *,
        disabled: Iterable[str] = (),
        disabled_components: Iterable[str] = (),
        entry_points: bool = True,
        warn: bool = True,
    ) -> None:
        self._pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
        self._pm.add_hookspecs(hookspecs)
        self._warn = warn
        self.disabled: frozenset[str] = frozenset(disabled) | frozenset(
            disabled_from_env()
        )
        self.disabled_components: tuple[ComponentFilter, ...] = tuple(
            ComponentFilter.parse(c)
            for c in sorted(set(disabled_components) | disabled_components_from_env())
        )
        self._records: dict[str, PluginRecord] = {}
        self._failures: list[PluginFailure] = []
        self._reported = 0
        self._tables: dict[str, dict[str, tuple[_Spec, str]]] = {}
        self._table_errors: dict[str, SharpkitError] = {}
        self._lock = threading.RLock()
        if entry_points:
            self._load_entry_points()

    # ------------------------------------------------------------------ loading

    def _fail(self, failure: PluginFailure) -> None:
        """Report a failure of part of a plugin (a hook, a spec, a command)."""
        self._failures.append(failure)
        if self._warn:
            self.report_failures(stacklevel=4)

    def report_failures(self, *, stacklevel: int = 2) -> None:
        """Warn (:class:`~sharpkit.errors.PluginWarning`) of failures not yet reported.

        A registry built quietly (``warn=False``, e.g. while the CLI collects
        plugin commands) reports its failures when the command runs.
        """
        while self._reported < len(self._failures):
            failure = self._failures[self._reported]
            self._reported += 1
            warnings.warn(failure.message(), PluginWarning, stacklevel=stacklevel)

    def _reject(self, failure: PluginFailure) -> None:
        """Report a plugin that could not be loaded at all; mark it failed."""
        self._records[failure.plugin] = PluginRecord(
            failure.plugin, failure.distribution, failure.version, "failed"
        )
        self._fail(failure)

    def _load_entry_points(self) -> None:
        import_timeout()  # a malformed SHARPKIT_PLUGIN_TIMEOUT: one line, first
        seen: set[tuple[str, str]] = set()
        found_self = False
        eps = sorted(
            importlib.metadata.entry_points(group=hookspecs.PROJECT_NAME),
            key=lambda ep: (not ep.name.startswith("builtin."), ep.name),
        )
        for ep in eps:
            if (ep.name, ep.value) in seen:  # the same dist on sys.path twice
                continue
            seen.add((ep.name, ep.value))
            dist = ep.dist.name if ep.dist is not None else None
            version = ep.dist.version if ep.dist is not None else None
            if dist is not None and dist.lower() == SELF_DISTRIBUTION:
                found_self = True
            if ep.name in self.disabled:
                self._records[ep.name] = PluginRecord(
                    ep.name, dist, version, "disabled"
                )
                continue
            try:
                where = f"plugin {ep.name!r}" + (f" from {dist}" if dist else "")
                obj = bounded_import(ep.load, where)
            except KeyboardInterrupt:  # the user's Ctrl-C ends the command
                raise
            except BaseException as exc:  # a broken plugin must not break us
                self._reject(
                    PluginFailure(ep.name, dist, version, "import", _one_line(exc), exc)
                )
                continue
            self.register_plugin(obj, ep.name, distribution=dist, version=version)
        self._unknown_disabled({ep.name for ep in eps})
        if not found_self:
            msg = (
                "sharpkit's built-in plugins are missing from the installed "
                "metadata; reinstall with `pip install -e .`"
            )
            raise PluginError(msg)

    def _unknown_disabled(self, installed: set[str]) -> None:
        """Warn of a ``--disable-plugin`` name no plugin has: it disables nothing."""
        for name in sorted(self.disabled - installed):
            close = difflib.get_close_matches(name, sorted(installed), n=3, cutoff=0.3)
            near = sorted(n for n in installed if n.startswith(f"{name}."))
            shown = ", ".join(near or close) or ", ".join(sorted(installed)[:5])
            msg = (
                f"--disable-plugin {name!r} matches no installed plugin and "
                f"disables nothing; plugin names: {shown}"
            )
            if self._warn:
                warnings.warn(msg, PluginWarning, stacklevel=5)

    def register_plugin(
        self,
        obj: object,
        name: str,
        *,
        distribution: str | None = None,
        version: str | None = None,
    ) -> bool:
        """Register ``obj`` (a module or object with hook implementations).

        Returns:
            Whether it was registered; a plugin that breaks the contract is
            recorded as a failure instead.
        """
        with self._lock:
            if name in self.disabled:
                self._records[name] = PluginRecord(
                    name, distribution, version, "disabled"
                )
                return False
            try:
                self._pm.register(obj, name=name)
            except (pluggy.PluginValidationError, ValueError) as exc:
                self._reject(
                    PluginFailure(
                        name, distribution, version, "validate", _one_line(exc), exc
                    )
                )
                return False
            unknown = [
                hc.name for hc in self._pm.get_hookcallers(obj) or [] if hc.spec is None
            ]
            if unknown:
                self._pm.unregister(obj, name=name)
                err = PluginContractError(
                    f"hook {unknown[0]!r} matches no sharpkit hook; known hooks: "
                    + ", ".join(sorted(_HOOKS.values()))
                )
                self._reject(
                    PluginFailure(
                        name, distribution, version, "validate", str(err), err
                    )
                )
                return False
            self._records[name] = PluginRecord(name, distribution, version, "loaded")
            self._tables.clear()
            self._table_errors.clear()
            return True

    def unregister_plugin(self, name: str) -> None:
        """Remove a plugin registered under ``name`` (tests use this)."""
        with self._lock:
            if self._pm.get_plugin(name) is not None:
                self._pm.unregister(name=name)
            self._records.pop(name, None)
            self._tables.clear()
            self._table_errors.clear()

    # ------------------------------------------------------------------ introspection

    @property
    def plugins(self) -> list[PluginRecord]:
        """Every plugin seen: loaded, disabled or failed."""
        return list(self._records.values())

    @property
    def failures(self) -> list[PluginFailure]:
        """Plugins (or hooks of plugins) that were skipped, with the reason."""
        self._build_all()
        return list(self._failures)

    def record(self, plugin: str) -> PluginRecord:
        """Return the record of the plugin registered as ``plugin``."""
        return self._records.get(plugin, PluginRecord(plugin, None, None))

    # ------------------------------------------------------------------ tables

    def _build_all(self) -> None:
        for kind in KINDS:
            with contextlib.suppress(DuplicateNameError):
                self._table(kind)

    def _table(self, kind: str) -> dict[str, tuple[_Spec, str]]:
        with self._lock:
            if kind in self._table_errors:
                raise self._table_errors[kind]
            if kind in self._tables:
                return self._tables[kind]
            table: dict[str, tuple[_Spec, str]] = {}
            caller = getattr(self._pm.hook, _HOOKS[kind])
            for impl in reversed(caller.get_hookimpls()):  # registration order
                plugin = impl.plugin_name
                rec = self.record(plugin)
                try:
                    specs = list(impl.function() or ())
                except (Exception, SystemExit) as exc:  # costs only its plugin
                    self._fail(
                        PluginFailure(
                            plugin,
                            rec.distribution,
                            rec.version,
                            _HOOKS[kind],
                            _one_line(exc),
                            exc,
                        )
                    )
                    continue
                for spec in specs:
                    try:
                        self._validate(kind, spec)
                    except PluginContractError as exc:
                        self._fail(
                            PluginFailure(
                                plugin,
                                rec.distribution,
                                rec.version,
                                _HOOKS[kind],
                                str(exc),
                                exc,
                            )
                        )
                        continue
                    if self._left_out(kind, spec.name, rec):
                        continue
                    if spec.name in table:
                        err = self._duplicate(kind, spec.name, table[spec.name][1], rec)
                        self._table_errors[kind] = err
                        raise err
                    table[spec.name] = (spec, plugin)
            self._tables[kind] = table
            return table

    def _left_out(self, kind: str, name: str, rec: PluginRecord) -> bool:
        return any(
            f.matches(kind, name, rec.name, rec.distribution)
            for f in self.disabled_components
        )

    def _duplicate(
        self, kind: str, name: str, first: str, second: PluginRecord
    ) -> DuplicateNameError:
        """The error for two providers of one name, with the flag that keeps each."""
        other = self.record(first)

        def keep(drop: PluginRecord) -> str:
            who = (
                BUILTIN_ALIAS
                if drop.name.startswith(BUILTIN_ALIAS + ".")
                else drop.name
            )
            return f"--disable {kind}:{name}@{who}"

        if other.name.startswith(BUILTIN_ALIAS + "."):
            advice = (
                f"keep the built-in with {keep(second)}, or {second.name}'s with "
                f"{keep(other)}"
            )
        else:
            advice = f"keep one with {keep(second)} or {keep(other)}"
        return DuplicateNameError(
            f"{kind} {name!r} is provided by both {other.provider} and "
            f"{second.provider}; {advice}"
        )

    @staticmethod
    def _validate(kind: str, spec: object) -> None:
        expected = _SPEC_TYPES[kind]
        if not isinstance(spec, expected):
            msg = (
                f"{_HOOKS[kind]} returned {type(spec).__name__}, "
                f"expected {expected.__name__}"
            )
            raise PluginContractError(msg)
        spec.validate()

    # ------------------------------------------------------------------ lookup

    def names(self, kind: str) -> list[str]:
        """Return the registered names of one kind, sorted."""
        return sorted(self._table(kind))

    def specs(self, kind: str) -> dict[str, _Spec]:
        """Return ``{name: spec}`` for one kind."""
        return {name: spec for name, (spec, _) in sorted(self._table(kind).items())}

    def provider(self, kind: str, name: str) -> PluginRecord:
        """Return the plugin that provides ``kind`` ``name``."""
        base = name.split(":", 1)[0]
        table = self._table(kind)
        if base not in table:
            raise self._unknown(kind, name)
        return self.record(table[base][1])

    def _unknown(self, kind: str, name: str) -> UnknownNameError:
        candidates = self.names(kind)
        prefixed = [f"{n}:" for n, (s, _) in self._table(kind).items() if _is_prefix(s)]
        close = difflib.get_close_matches(name, candidates + prefixed, n=3, cutoff=0.6)
        return UnknownNameError(kind, name, close)

    @overload
    def get(self, kind: Literal["model"], name: str) -> ModelSpec: ...
    @overload
    def get(self, kind: Literal["dataset"], name: str) -> DatasetSpec: ...
    @overload
    def get(self, kind: Literal["trainer"], name: str) -> TrainerSpec: ...
    @overload
    def get(self, kind: Literal["metric"], name: str) -> MetricSpec: ...
    @overload
    def get(self, kind: Literal["probe"], name: str) -> ProbeSpec: ...
    @overload
    def get(self, kind: str, name: str) -> _Spec: ...
    def get(self, kind: str, name: str) -> _Spec:
        """Return the spec registered as ``name`` (``prefix:variant`` for prefixes).

        Raises:
            UnknownNameError: No such name; the error suggests close matches.
            DuplicateNameError: Two plugins provide a name of this kind.
        """
        if kind not in _HOOKS:
            msg = f"unknown component kind {kind!r}; one of {', '.join(KINDS)}"
            raise ConfigError(msg)
        table = self._table(kind)
        if name in table and not _is_prefix(table[name][0]):
            return table[name][0]
        base, sep, variant = name.partition(":")
        if sep and base in table and _is_prefix(table[base][0]):
            if not variant:
                msg = f"{kind} {base!r} needs a variant: '{base}:<name>'"
                raise ConfigError(msg)
            return table[base][0]
        if name in table:  # a prefix spec named without a variant
            msg = f"{kind} {name!r} needs a variant: '{name}:<name>'"
            raise ConfigError(msg)
        raise self._unknown(kind, name)

    def parse_options(self, spec: _Spec, options: Mapping[str, Any]) -> dict[str, Any]:
        """Validate ``options`` against ``spec.options`` and convert their values.

        Raises:
            ConfigError: An unknown option name or a value of the wrong type.
        """
        parsed = spec.parse_options(options)
        for key, value in parsed.items():  # a count asked for is bounded first
            counted = isinstance(value, int) and not isinstance(value, bool)
            if counted and not key.endswith("seed"):
                check_count(f"{spec.kind} {spec.name!r} option {key!r}", value)
        return parsed

    def create(
        self,
        kind: str,
        name: str,
        options: Mapping[str, Any] | None = None,
        **context: Any,
    ) -> Any:
        """Look up ``name``, validate ``options`` and call the spec's factory.

        ``context`` holds the arguments sharpkit supplies to every factory of the
        kind (e.g. ``input_shape`` and ``num_classes`` for models).

        Raises:
            UnknownNameError: No such name.
            ConfigError: Bad options.
            PluginRunError: The factory of a plugin raised something other than a
                :class:`~sharpkit.SharpkitError`.
        """
        spec = self.get(kind, name)
        parsed = self.parse_options(spec, options or {})
        return self.instantiate(spec, name, parsed, **context)

    def instantiate(
        self, spec: _Spec, name: str, parsed: Mapping[str, Any], **context: Any
    ) -> Any:
        """Call ``spec``'s factory with options already parsed by :meth:`parse_options`.

        Raises:
            PluginRunError: The factory raised something other than a
                :class:`~sharpkit.SharpkitError`.
        """
        kind = next(k for k, t in _SPEC_TYPES.items() if isinstance(spec, t))
        if isinstance(spec, ModelSpec) and spec.prefix:
            context["variant"] = name.split(":", 1)[1]
        # a model or dataset is sized while it is built: memory and submodules
        # over the limits are refused before they are taken
        sized = (
            bounded_build(f"{kind} {name!r}")
            if kind in ("model", "dataset")
            else contextlib.nullcontext()
        )
        with self.guard(kind, name, "being created"), sized:
            return spec.factory(**context, **parsed)

    @contextlib.contextmanager
    def guard(self, kind: str, name: str, action: str) -> Iterator[None]:
        """Run plugin code; turn its own exceptions into one-line plugin errors.

        A :class:`~sharpkit.SharpkitError` passes through unchanged (it already
        says what to do); any other exception becomes a
        :class:`~sharpkit.PluginRunError` naming the component, its provider and
        ``action``, with the original as ``__cause__`` for ``--debug``. A
        ``SystemExit`` raised by plugin code is such an exception too: it must not
        end the run (with exit status 0) and lose what was already computed.
        """
        try:
            # What a plugin prints is not the command's output (--json stays JSON).
            with contextlib.redirect_stdout(sys.stderr):
                yield
        except SharpkitError:
            raise
        except (Exception, SystemExit) as exc:  # sys.exit in a plugin ends only it
            rec = self.provider(kind, name)
            msg = (
                f"{kind} {name!r} ({rec.provider}) failed while {action}: "
                f"{_one_line(exc)}; rerun with --debug for the traceback"
            )
            raise PluginRunError(
                msg, plugin=rec.name, distribution=rec.distribution, phase=action
            ) from exc

    # ------------------------------------------------------------------ commands

    def register_commands(
        self, app: typer.Typer, reserved: Sequence[str] = ()
    ) -> list[str]:
        """Let plugins add commands to ``app``; refuse any that shadow ``reserved``.

        Returns:
            The names of the commands plugins added.
        """
        added: list[str] = []
        caller = self._pm.hook.sharpkit_register_commands
        for impl in reversed(caller.get_hookimpls()):
            rec = self.record(impl.plugin_name)
            n_cmd, n_grp = len(app.registered_commands), len(app.registered_groups)
            try:
                impl.function(app=app)
            except (Exception, SystemExit) as exc:
                del app.registered_commands[n_cmd:]
                del app.registered_groups[n_grp:]
                self._fail(
                    PluginFailure(
                        rec.name,
                        rec.distribution,
                        rec.version,
                        "sharpkit_register_commands",
                        _one_line(exc),
                        exc,
                    )
                )
                continue
            new = [_command_name(c) for c in app.registered_commands[n_cmd:]] + [
                g.name or "" for g in app.registered_groups[n_grp:]
            ]
            clash = [n for n in new if n in reserved or n in added]
            if clash:
                del app.registered_commands[n_cmd:]
                del app.registered_groups[n_grp:]
                self._fail(
                    PluginFailure(
                        rec.name,
                        rec.distribution,
                        rec.version,
                        "sharpkit_register_commands",
                        f"command {clash[0]!r} would replace an existing command",
                        None,
                    )
                )
                continue
            added.extend(new)
        return added


def _is_prefix(spec: _Spec) -> bool:
    return isinstance(spec, ModelSpec) and spec.prefix


def _command_name(info: Any) -> str:
    if info.name:
        return str(info.name)
    callback = cast("Callable[..., Any] | None", info.callback)
    if callback is None:
        return ""
    return callback.__name__.lower().replace("_", "-")


_REGISTRY: Registry | None = None
_REGISTRY_LOCK = threading.Lock()


def get_registry() -> Registry:
    """Return the process-wide registry, loading plugins on first use."""
    global _REGISTRY  # noqa: PLW0603 - a lazily built process-wide singleton
    with _REGISTRY_LOCK:
        if _REGISTRY is None:
            _REGISTRY = Registry()
        return _REGISTRY


def reset_registry(
    *,
    disabled: Iterable[str] = (),
    disabled_components: Iterable[str] = (),
    warn: bool = True,
) -> Registry:
    """Rebuild the process-wide registry (``--disable-plugin``, ``--disable``)."""
    global _REGISTRY  # noqa: PLW0603 - a lazily built process-wide singleton
    with _REGISTRY_LOCK:
        _REGISTRY = Registry(
            disabled=disabled, disabled_components=disabled_components, warn=warn
        )
        return _REGISTRY
