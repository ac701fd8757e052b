"""The whole plugin contract: pluggy hook specifications for project ``"sharpkit"``.

A plugin is a module (or object) with functions decorated by
:data:`sharpkit.hookimpl` whose names match the hooks below, exposed through an
entry point in the ``sharpkit`` group::

    [project.entry-points.sharpkit]
    fisher-rao = "sharpkit_fisher_rao.plugin"

Every ``sharpkit_register_*`` hook returns specs; the registry validates them,
owns name lookup ("did you mean"), and reports a plugin whose hook raises instead
of failing everything. Hooks may be added in later releases; existing ones are
never renamed or removed.

Stable since 0.1.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    import typer

    from sharpkit.interfaces import (
        DatasetSpec,
        MetricSpec,
        ModelSpec,
        ProbeSpec,
        TrainerSpec,
    )

PROJECT_NAME = "sharpkit"
"""The pluggy project name and the entry-point group."""

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)
"""Decorator marking a plugin's hook implementation: ``@sharpkit.hookimpl``."""


@hookspec
def sharpkit_register_models() -> Iterable[ModelSpec]:  # type: ignore[empty-body]
    """Return the model architectures this plugin provides.

    Each factory is called as ``factory(input_shape=..., num_classes=..., **options)``
    and returns a ``torch.nn.Module`` producing logits.

    Returns:
        Model specs; each ``name`` must be unique across installed plugins.

    Stable since 0.1.
    """


@hookspec
def sharpkit_register_datasets() -> Iterable[DatasetSpec]:  # type: ignore[empty-body]
    """Return the datasets this plugin provides.

    Each factory is called as
    ``factory(root=..., download=..., subset=..., seed=..., **options)`` and returns a
    :class:`sharpkit.Dataset`.

    Returns:
        Dataset specs; each ``name`` must be unique across installed plugins.

    Stable since 0.1.
    """


@hookspec
def sharpkit_register_trainers() -> Iterable[TrainerSpec]:  # type: ignore[empty-body]
    """Return the training algorithms this plugin provides.

    Returns:
        Trainer specs; each factory returns a :class:`sharpkit.Trainer`.

    Stable since 0.1.
    """


@hookspec
def sharpkit_register_metrics() -> Iterable[MetricSpec]:  # type: ignore[empty-body]
    """Return the sharpness metrics this plugin provides.

    Returns:
        Metric specs; each factory returns a :class:`sharpkit.Metric`, whose
        ``compute(ctx)`` gets an :class:`sharpkit.AnalysisContext`.

    Stable since 0.1.
    """


@hookspec
def sharpkit_register_probes() -> Iterable[ProbeSpec]:  # type: ignore[empty-body]
    """Return the loss-landscape probes this plugin provides.

    Returns:
        Probe specs; each factory returns a :class:`sharpkit.Probe`, whose
        ``run(ctx)`` gets a :class:`sharpkit.ProbeContext`.

    Stable since 0.1.
    """


@hookspec
def sharpkit_register_commands(app: typer.Typer) -> None:
    """Add commands to the ``sharpkit`` command line.

    Call ``app.command()(fn)`` or ``app.add_typer(sub, name=...)``. A command that
    would replace a built-in one is rejected and the plugin reported.

    Args:
        app: The root typer application.

    Stable since 0.1.
    """
