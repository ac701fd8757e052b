"""Errors and warnings raised by sharpkit.

Every error carries a one-line message that says what went wrong and what to do;
the CLI prints exactly that line (``error: <message>``) and exits non-zero. Each
class mixes in the builtin exception it specialises, so callers can write
``except FileNotFoundError`` or ``except KeyError`` naturally.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = [
    "CheckpointError",
    "CheckpointNotFoundError",
    "ConfigError",
    "ConvergenceWarning",
    "CorruptCheckpointError",
    "DataError",
    "DistributedError",
    "DuplicateNameError",
    "MeasurementError",
    "NumericalError",
    "PluginContractError",
    "PluginError",
    "PluginLoadError",
    "PluginRunError",
    "PluginWarning",
    "RunNotFoundError",
    "SharpkitDeprecationWarning",
    "SharpkitError",
    "SharpkitWarning",
    "StateDictMismatchError",
    "StoreError",
    "UnknownNameError",
    "UnsafeCheckpointError",
]


class SharpkitError(Exception):
    """Root of every error sharpkit raises on purpose; the CLI catches only this."""


class PluginError(SharpkitError):
    """A plugin could not be used."""


class PluginLoadError(PluginError):
    """A plugin failed to import, to register, or one of its hooks raised.

    Attributes:
        plugin: The entry-point name of the plugin.
        distribution: The distribution that provides it (``None`` if unknown).
        phase: ``"import"``, ``"validate"`` or the name of the hook that raised.
    """

    def __init__(
        self, message: str, *, plugin: str, distribution: str | None, phase: str
    ) -> None:
        super().__init__(message)
        self.plugin = plugin
        self.distribution = distribution
        self.phase = phase


class PluginRunError(PluginError):
    """A component's own code raised while it was created or ran (computing, training).

    Loading a plugin is :class:`PluginLoadError`; this is a loaded component
    failing at work. The message names the component, its provider and what it
    was doing; the original exception is the ``__cause__`` (``--debug`` shows it).

    Attributes:
        plugin: The entry-point name of the plugin.
        distribution: The distribution that provides it (``None`` if unknown).
        phase: What the component was doing (``"computing"``, ``"training"``, ...).
    """

    def __init__(
        self, message: str, *, plugin: str, distribution: str | None, phase: str
    ) -> None:
        super().__init__(message)
        self.plugin = plugin
        self.distribution = distribution
        self.phase = phase


class PluginContractError(PluginError, TypeError):
    """A plugin broke the contract: a bad spec, a hook that matches no spec, ..."""


class DuplicateNameError(PluginError, ValueError):
    """Two plugins register a component under the same name."""


class UnknownNameError(SharpkitError, KeyError):
    """A component name (metric, model, dataset, ...) is not registered.

    Attributes:
        kind: The kind of component (``"metric"``, ``"model"``, ...).
        name: The name that was asked for.
        suggestions: Close matches among the registered names.
    """

    def __init__(self, kind: str, name: str, suggestions: Sequence[str] = ()) -> None:
        self.kind = kind
        self.name = name
        self.suggestions = tuple(suggestions)
        hint = ""
        if self.suggestions:
            hint = (
                "did you mean " + " or ".join(repr(s) for s in self.suggestions) + "? "
            )
        message = (
            f"unknown {kind} {name!r}; {hint}run `sharpkit plugins` to list {kind}s"
        )
        super().__init__(message)

    def __str__(self) -> str:
        # KeyError.__str__ would quote the message; keep it one plain line.
        return str(self.args[0])


class CheckpointError(SharpkitError):
    """A checkpoint could not be read or does not fit the model."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """The checkpoint file does not exist."""


class CorruptCheckpointError(CheckpointError, ValueError):
    """The file is truncated, or is not a checkpoint at all."""


class UnsafeCheckpointError(CheckpointError):
    """The file holds a pickle that would import or run code; it was not loaded."""


class StateDictMismatchError(CheckpointError, ValueError):
    """The state_dict does not fit the model: missing, unexpected or misshapen keys.

    Attributes:
        missing: Keys the model needs that the checkpoint lacks.
        unexpected: Keys in the checkpoint that the model does not have.
        mismatched: ``(key, checkpoint_shape, model_shape)`` triples.
    """

    def __init__(
        self,
        message: str,
        *,
        missing: Sequence[str] = (),
        unexpected: Sequence[str] = (),
        mismatched: Sequence[tuple[str, tuple[int, ...], tuple[int, ...]]] = (),
    ) -> None:
        super().__init__(message)
        self.missing = tuple(missing)
        self.unexpected = tuple(unexpected)
        self.mismatched = tuple(mismatched)


class ConfigError(SharpkitError, ValueError):
    """A bad option value, argument or configuration file."""


class DataError(SharpkitError, ValueError):
    """Dataset files are missing or unreadable, or the data gives a non-finite loss."""


class DistributedError(SharpkitError, RuntimeError):
    """A process of a ``torch.distributed`` group failed, stopped or timed out.

    Raised on the ranks that were left waiting in a collective operation; the
    rank that failed first raised its own error, which says why.
    """


class NumericalError(SharpkitError, ArithmeticError):
    """A numerical method failed in a way that cannot be recovered."""


class MeasurementError(SharpkitError):
    """Some requested metrics failed; the others were measured (and stored).

    Raised by :func:`sharpkit.measure` after every requested metric has run:
    a metric that fails does not cost the others. Its message names each failed
    metric and why, in one line.

    Attributes:
        measurement: The :class:`~sharpkit.Measurement` of the metrics that
            succeeded (written to the store, when one was given: see its
            ``run_id``).
        failures: ``{metric name: the SharpkitError it raised}``.
    """

    def __init__(
        self,
        message: str,
        *,
        measurement: Any,
        failures: Mapping[str, SharpkitError],
    ) -> None:
        super().__init__(message)
        self.measurement = measurement
        self.failures = dict(failures)


class StoreError(SharpkitError):
    """The results store cannot be read or written."""


class RunNotFoundError(StoreError, KeyError):
    """No run with that id is in the store."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class SharpkitWarning(UserWarning):
    """Root of every warning sharpkit emits."""


class PluginWarning(SharpkitWarning):
    """A plugin was skipped because it failed to load or broke the contract."""


class ConvergenceWarning(SharpkitWarning):
    """A stopping criterion was not met within the budget; the result is approximate."""


class SharpkitDeprecationWarning(SharpkitWarning, DeprecationWarning):
    """A feature is deprecated and will be removed."""


def first_line(exc: BaseException, *, limit: int | None = None) -> str:
    r"""The first line of ``exc``'s message (``""`` if none), for one-line errors.

    Args:
        exc: The exception.
        limit: Cut the line to this many characters.

    Examples:
        >>> first_line(ValueError("bad value\nsee the docs"))
        'bad value'
        >>> first_line(KeyError())
        ''
    """
    lines = str(exc).strip().splitlines()
    line = lines[0] if lines else ""
    return line if limit is None else line[:limit]


_KEPT = "_sharpkit_kept"


def note_kept(exc: BaseException, text: str) -> None:
    """Record on an interruption (Ctrl-C, a signal) what was kept before it.

    The CLI's one line for the interruption says it (see :func:`kept_note`).
    """
    setattr(exc, _KEPT, text)


def kept_note(exc: BaseException) -> str | None:
    """What :func:`note_kept` recorded on ``exc`` (``None``: nothing)."""
    text = getattr(exc, _KEPT, None)
    return text if isinstance(text, str) else None


for _cls in [globals()[_name] for _name in __all__]:
    _cls.__module__ = "sharpkit"
del _cls
