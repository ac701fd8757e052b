"""The documentation's examples run as written."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parents[1]


def blocks(page: str, lang: str) -> list[str]:
    text = (ROOT / "docs" / page).read_text()
    return re.findall(rf"```{lang}\n(.*?)```", text, flags=re.S)


def commands(block: str) -> list[list[str]]:
    out = []
    for line in block.replace("\\\n", " ").splitlines():
        line = line.split(" #", 1)[0].strip()
        if line:
            out.append(shlex.split(line))
    return out


def fashion_mnist_available() -> bool:
    import warnings

    import sharpkit

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sharpkit.load_dataset("fashion-mnist", subset=10)
    except sharpkit.DataError:
        return False
    return True


@pytest.mark.slow
def test_quickstart_runs_as_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not fashion_mnist_available():
        pytest.skip(
            "Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)"
        )
    from sharpkit.cli import app

    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    for block in blocks("quickstart.md", "bash"):
        for argv in commands(block):
            assert argv[0] == "sharpkit"
            result = runner.invoke(app, argv[1:])
            assert result.exit_code == 0, (argv, result.stdout, result.stderr)
    assert (tmp_path / "fig1.png").stat().st_size > 10_000
    assert (tmp_path / "fig2.png").stat().st_size > 10_000
    for code in blocks("quickstart.md", "python"):
        exec(compile(code, "quickstart.md", "exec"), {})


def test_installation_commands_run() -> None:
    from sharpkit.cli import app

    block = next(
        b for b in blocks("installation.md", "bash") if "sharpkit --version" in b
    )
    for argv in commands(block):
        result = CliRunner().invoke(app, argv[1:])
        assert result.exit_code == 0, result.output
