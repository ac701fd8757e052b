"""The analysis option group: typer sees its fields, the command gets the group."""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path
from typing import Annotated

import pytest
import typer
from typer.testing import CliRunner

from sharpkit.cli._options import DEFAULT_STORE, AnalysisOptions, with_analysis_options

FIELDS = [f.name for f in dataclasses.fields(AnalysisOptions)]


def test_the_group_becomes_options_in_its_place(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("SHARPKIT_DATA", raising=False)
    seen: list[tuple[str, int, AnalysisOptions]] = []

    @with_analysis_options
    def command(
        name: Annotated[str, typer.Argument()],
        *,
        analysis: AnalysisOptions,
        count: int = 1,
    ) -> None:
        """Say it."""
        seen.append((name, count, analysis))

    params = list(inspect.signature(command).parameters)
    assert params == ["name", *FIELDS, "count"]
    assert command.__doc__ == "Say it."
    app = typer.Typer()
    app.command()(command)
    app.command("other")(lambda: None)  # a group, so the command is named
    args = ["command", "x", "--seed", "3", "--no-store", "--model-option", "depth=2"]
    result = CliRunner().invoke(app, [*args, "--count", "2"])
    assert result.exit_code == 0, result.output
    name, count, analysis = seen[0]
    assert (name, count) == ("x", 2)
    assert analysis == AnalysisOptions(seed=3, no_store=True, model_option=["depth=2"])
    inputs = analysis.inputs()  # the API's one typed value
    assert inputs.store is None
    assert inputs.model_options == {"depth": "2"}
    assert (inputs.seed, inputs.model_name) == (3, None)
    assert AnalysisOptions().inputs().store == DEFAULT_STORE
    assert isinstance(DEFAULT_STORE, Path)


def test_a_command_without_the_group_is_refused() -> None:
    def command(count: int = 1) -> None:
        """Count."""

    with pytest.raises(TypeError, match="no 'analysis' parameter"):
        with_analysis_options(command)
