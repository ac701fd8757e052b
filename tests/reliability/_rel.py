"""The reliability suite's helpers: running the CLI and checking how each case ends.

Every case of the suite ends in one of three ways, checked by :func:`one_line`,
:func:`warned` and :func:`ok`: exit status 1 with exactly one ``error:`` line on
stderr, success with exactly one ``warning:`` line saying what was changed or
ignored, or plain success. An uncaught exception (a traceback) fails every one.
"""

from __future__ import annotations

import json
import os
import re
import sys
import traceback
import warnings
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from typer.testing import CliRunner

import sharpkit
import sharpkit.registry as registry_module
from sharpkit.cli import app

RUNNER = CliRunner()
PLUGIN_DISTS = Path(__file__).parent.parent / "data" / "plugin_dists"
# The smallest model and data that exercise the real code paths: a 4-layer
# BN-MLP of width 16 on 128 synthetic examples (16 features, 4 classes).
TINY_MODEL = {"width": 16}
TINY_DATA = {"n_train": 128, "n_test": 64}
TINY_TRAIN = [
    "--model", "mlp-bn", "--data", "synthetic", "--lr", "0.1", "--batch-size", "32",
    "-o", "width=16", "-o", "n_train=128", "-o", "n_test=64",
]  # fmt: skip


def cli(*args: Any, env: dict[str, str] | None = None) -> Result:
    """Run the CLI in this process (the registry is rebuilt for and after it)."""
    registry_module._REGISTRY = None
    try:
        with warnings.catch_warnings():
            # as in a fresh process: every warning is shown (pytest would raise it)
            warnings.simplefilter("always")
            return RUNNER.invoke(app, [str(a) for a in args], env=env)
    finally:
        registry_module._REGISTRY = None


def _no_traceback(result: Result) -> None:
    exc = result.exception
    if exc is not None and not isinstance(exc, SystemExit):
        text = "".join(traceback.format_exception(exc))
        pytest.fail(f"uncaught {type(exc).__name__} (a traceback):\n{text}")
    assert "Traceback" not in result.output
    assert "Traceback" not in result.stderr


# A progress line: with stderr not a terminal (as here), a long command prints
# "<label>: <step> [n/N] (<s> s[, ETA h:mm:ss])" per step (cli/_progress.py)
_PROGRESS = re.compile(r"^\S.*: .+ \(\d+ s(, ETA [\d:]+)?\)$")


def stderr_lines(result: Result) -> list[str]:
    """The non-empty lines the command wrote to stderr, progress lines left out."""
    return [
        ln
        for ln in result.stderr.splitlines()
        if ln.strip()
        and (ln.startswith(("error:", "warning:")) or not _PROGRESS.match(ln))
    ]


def one_line(result: Result, *, code: int = 1) -> str:
    """Assert a refused input: exit ``code``, one ``error:`` line, no traceback."""
    _no_traceback(result)
    assert result.exit_code == code, (result.exit_code, result.output)
    errors = [ln for ln in stderr_lines(result) if ln.startswith("error:")]
    assert len(errors) == 1, result.stderr
    others = [
        ln for ln in stderr_lines(result) if not ln.startswith(("error:", "warning:"))
    ]
    assert not others, result.stderr
    return errors[0]


def warned(result: Result) -> str:
    """Assert an accepted input that was changed: exit 0 and one ``warning:`` line."""
    _no_traceback(result)
    assert result.exit_code == 0, (result.exit_code, result.output)
    warnings_ = [ln for ln in stderr_lines(result) if ln.startswith("warning:")]
    assert len(warnings_) == 1, result.stderr
    return warnings_[0]


def ok(result: Result) -> Result:
    """Assert success without a traceback."""
    _no_traceback(result)
    assert result.exit_code == 0, (result.exit_code, result.output)
    return result


def train_tiny(
    out: Path, *, seed: int = 0, epochs: int = 1, width: int = 16, **kwargs: Any
) -> Path:
    """Train the tiny model (or a wider one) into ``out``; return its ``final.pt``."""
    result = sharpkit.train(
        "mlp-bn",
        "synthetic",
        lr=0.1,
        batch_size=32,
        epochs=epochs,
        seed=seed,
        out_dir=out,
        model_options={**TINY_MODEL, "width": width},
        data_options=TINY_DATA,
        **kwargs,
    )
    assert result.checkpoint is not None
    return result.checkpoint


def subprocess_env(*dists: str) -> dict[str, str]:
    """The environment of a ``sharpkit`` child process (fake plugin dists first)."""
    env = dict(os.environ)
    paths = [str(PLUGIN_DISTS / d) for d in dists] + [p for p in sys.path if p]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", COLUMNS="200")
    env.pop("SHARPKIT_DEBUG", None)
    return env


def metric_values(stdout: str) -> dict[str, float]:
    """``{metric: value}`` of the one checkpoint in ``measure --json`` output."""
    (entry,) = json.loads(stdout)
    return {name: m["value"] for name, m in entry["metrics"].items()}
