"""docs/own-model.md runs as written, in an empty folder."""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "own-model.md"
FENCE = re.compile(r'```(\w+)(?: title="([^"]+)")?\n(.*?)```', flags=re.S)


def page_blocks() -> list[tuple[str, str | None, str]]:
    """``(language, title, code)`` of every fenced block, in page order."""
    return [(m[1], m[2], m[3]) for m in FENCE.finditer(PAGE.read_text())]


def commands(block: str) -> list[list[str]]:
    out = []
    for line in block.replace("\\\n", " ").splitlines():
        line = line.split(" #", 1)[0].strip()
        if line:
            out.append(shlex.split(line))
    return out


@pytest.fixture
def user_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """An empty working folder whose modules are forgotten afterwards."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(sys, "path", list(sys.path))
    before = set(sys.modules)
    yield tmp_path
    for name in set(sys.modules) - before:
        if name.startswith(("mynets", "mylosses")):
            del sys.modules[name]


@pytest.mark.slow
def test_own_model_page_runs_as_written(user_folder: Path) -> None:
    pytest.importorskip("transformers")
    from sharpkit.cli import app

    runner = CliRunner()
    ran = {"file": 0, "python": 0, "bash": 0, "console": 0}
    for lang, title, code in page_blocks():
        if title is not None:
            (user_folder / title).write_text(code)
            ran["file"] += 1
        elif lang == "python":
            exec(compile(code, str(PAGE), "exec"), {"__name__": "__doc__"})
            ran["python"] += 1
        elif lang == "bash":
            for argv in commands(code):
                assert argv[0] == "sharpkit"
                result = runner.invoke(app, argv[1:])
                assert result.exit_code == 0, (argv, result.stdout, result.stderr)
            ran["bash"] += 1
        elif lang == "console":
            check_console(runner, code, user_folder)
            ran["console"] += 1
    assert ran == {"file": 2, "python": 8, "bash": 6, "console": 1}


def check_console(runner: CliRunner, block: str, folder: Path) -> None:
    """The error shown is the error printed, with the reader's path for ours."""
    from sharpkit.cli import app

    command, shown = block.strip().splitlines()
    argv = shlex.split(command.removeprefix("$ "))
    result = runner.invoke(app, argv[1:])
    assert result.exit_code == 1
    printed = result.stderr.strip().replace(str(folder.resolve()), "/home/me")
    assert printed == shown
