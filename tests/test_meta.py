"""Meta-tests: the contract, the docs and the package metadata stay in step."""

from __future__ import annotations

import inspect
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import sharpkit
from sharpkit import hookspecs

ROOT = Path(__file__).resolve().parents[1]


def hook_names() -> list[str]:
    return [
        name
        for name, obj in vars(hookspecs).items()
        if name.startswith("sharpkit_") and inspect.isfunction(obj)
    ]


def test_entry_points_name_exactly_the_builtin_modules() -> None:
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    eps = meta["project"]["entry-points"]["sharpkit"]
    builtin = ROOT / "src/sharpkit/builtin"
    modules = {
        p.stem for p in builtin.glob("*.py") if not p.stem.startswith("_")
    } | {  # a built-in may be a package (builtin/metrics/)
        p.parent.name
        for p in builtin.glob("*/__init__.py")
        if not p.parent.name.startswith("_")
    }
    assert {k.removeprefix("builtin.") for k in eps} == modules
    assert all(
        v == f"sharpkit.builtin.{k.removeprefix('builtin.')}" for k, v in eps.items()
    )


def test_every_hook_is_documented_and_tested() -> None:
    docs = (ROOT / "docs/reference/hooks.md").read_text()
    tests = "\n".join(p.read_text() for p in (ROOT / "tests").rglob("test_*.py"))
    names = hook_names()
    assert len(names) == 6
    for name in names:
        assert name in docs, f"{name} missing from docs/reference/hooks.md"
        assert f"def test_hook_{name}" in tests, f"no test_hook_{name}"
        assert inspect.getdoc(getattr(hookspecs, name)), f"{name} has no docstring"


def test_every_public_name_is_documented() -> None:
    api = (ROOT / "docs/reference/api.md").read_text()
    for name in sharpkit.__all__:
        if name == "__version__":
            continue
        assert f"::: sharpkit.{name}\n" in api, (
            f"sharpkit.{name} not in docs/reference/api.md"
        )


def test_public_names_exist() -> None:
    for name in sharpkit.__all__:
        assert getattr(sharpkit, name) is not None


def test_cli_reference_is_up_to_date(tmp_path: Path) -> None:
    out = tmp_path / "cli.md"
    typer_bin = Path(sys.executable).with_name("typer")
    subprocess.run(
        [
            str(typer_bin),
            "sharpkit.cli",
            "utils",
            "docs",
            "--name",
            "sharpkit",
            "--output",
            str(out),
        ],
        check=True,
        capture_output=True,
    )
    assert out.read_text() == (ROOT / "docs/cli.md").read_text(), (
        "docs/cli.md is stale; run `make docs-cli`"
    )


def test_changelog_has_unreleased_section() -> None:
    text = (ROOT / "CHANGELOG.md").read_text()
    assert "## [Unreleased]" in text
    assert re.search(r"Keep a Changelog", text)


def test_readme_test_command_is_what_ci_runs() -> None:
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci/run").read_text()
    assert "make test" in readme
    assert "make test" in ci
