"""Plugins cannot stop sharpkit from answering (issue 21, section 4).

``sharpkit --version``, ``--help`` and a bare ``sharpkit`` load no plugin, so
one whose import hangs, fails or exits cannot affect them; a command that
does load plugins says which one it waits on after a few seconds and skips it
after ``SHARPKIT_PLUGIN_TIMEOUT`` seconds, as a failed plugin, and goes on.
Each case runs a real ``sharpkit`` process (imports are per process).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _rel import subprocess_env

HANGS = "import time\n\ntime.sleep(600)\n"
FAILS = "raise RuntimeError('broken at import')\n"
EXITS = "import sys\n\nsys.exit(0)\n"
BASE = "class Boom(BaseException):\n    pass\n\n\nraise Boom('at import')\n"


def _dist(folder: Path, module: str, code: str) -> Path:
    """A fake installed distribution (``skt_x`` is ``skt-x 1.0``) running ``code``."""
    folder.mkdir(parents=True, exist_ok=True)
    info = folder / f"{module}-1.0.dist-info"
    info.mkdir()
    name = module.replace("_", "-")
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n"
    )
    (info / "entry_points.txt").write_text(f"[sharpkit]\n{module} = {module}\n")
    (folder / f"{module}.py").write_text(code)
    return folder


def _run(
    args: list[str], folder: Path, *, timeout: float = 120, **env: str
) -> tuple[subprocess.CompletedProcess[str], float]:
    environ = subprocess_env()
    environ["PYTHONPATH"] = os.pathsep.join([str(folder), environ["PYTHONPATH"]])
    environ.pop("SHARPKIT_DISABLE_PLUGINS", None)
    environ.update(env)
    start = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "sharpkit", *args],
        capture_output=True, text=True, env=environ, timeout=timeout, check=False,
    )  # fmt: skip
    return done, time.monotonic() - start


@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    "code", [HANGS, FAILS, EXITS, BASE], ids=["hangs", "fails", "exits", "base"]
)
@pytest.mark.parametrize("args", [["--version"], ["--help"], []], ids=str)
def test_version_and_help_load_no_plugin(
    tmp_path: Path, code: str, args: list[str]
) -> None:
    folder = _dist(tmp_path / "dists", "skt_bad", code)
    # the hanging import would take 600 s: the limit shows it was never run
    done, _ = _run(args, folder, timeout=120)
    assert done.returncode in (0, 2 if not args else 0), done.stderr
    assert "skt_bad" not in done.stderr  # not loaded: nothing to say about it
    assert "Traceback" not in done.stderr
    if args == ["--version"]:
        assert done.stdout.strip()


@pytest.mark.timeout(300)
def test_a_hanging_plugin_import_is_named_and_skipped(tmp_path: Path) -> None:
    folder = _dist(tmp_path / "dists", "skt_sleepy", HANGS)
    done, seconds = _run(["plugins"], folder, timeout=200, SHARPKIT_PLUGIN_TIMEOUT="8")
    assert done.returncode == 0, done.stderr
    assert seconds < 150  # 8 s for the plugin, not its 600
    # said while waiting, then reported as a failed plugin, and the rest listed
    assert "waiting on plugin 'skt_sleepy' from skt-sleepy to import" in done.stderr
    assert "did not finish importing in 8 s" in done.stdout + done.stderr
    assert "spectral" in done.stdout
    assert "Traceback" not in done.stderr


@pytest.mark.timeout(300)
def test_a_base_exception_at_import_is_a_failed_plugin(tmp_path: Path) -> None:
    folder = _dist(tmp_path / "dists", "skt_base", BASE)
    done, _ = _run(["plugins"], folder)
    assert done.returncode == 0, done.stderr
    assert "Boom" in done.stdout + done.stderr
    assert "Traceback" not in done.stderr


def test_a_bad_plugin_timeout_is_one_line(tmp_path: Path) -> None:
    folder = _dist(tmp_path / "dists", "skt_ok", "X = 1\n")
    done, _ = _run(["plugins"], folder, SHARPKIT_PLUGIN_TIMEOUT="soon")
    lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
    assert done.returncode == 1, done.stderr
    assert len(lines) == 1, done.stderr
    assert "SHARPKIT_PLUGIN_TIMEOUT='soon' must be a positive number" in lines[0]
