"""A plugin cannot corrupt another metric's result (issue 21, section 2).

The metrics of ``tests/data/plugin_dists/corrupts`` change no parameter and no
buffer; each changes the data, the loss, the hooks or the flags the next
metric computes on, returns numbers a result may not hold, or prints. Each is
run before the built-in ``spectral`` on the tiny checkpoint: the run ends with
one line naming it, ``spectral`` equals what it gives alone (to the last bit:
the same products in the same order), and a rerun reuses ``spectral`` and
never a value of the broken metric.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from _rel import cli, metric_values, one_line, subprocess_env

# (metric, what the one error line must say)
CORRUPTIONS = [
    ("mutates-data", r"'mutates-data' changed the analysis data"),
    ("replaces-data", r"'replaces-data' changed the analysis data"),
    ("replaces-loss", r"'replaces-loss' changed the loss"),
    ("adds-hook", r"'adds-hook' changed hooks"),
    ("global-hook", r"'global-hook' changed hooks"),
    ("freezes-parameters", r"'freezes-parameters' changed requires_grad"),
    ("train-mode", r"'train-mode' changed train/eval mode"),
    ("nan-stderr", r"'nan-stderr' returned stderr nan"),
    ("inf-bound", r"'inf-bound' returned bound inf"),
    ("negative-stderr", r"'negative-stderr' returned stderr -0.5"),
    ("negative-bound", r"'negative-bound' returned bound -1.0"),
    ("text-converged", r"'text-converged' returned converged 'yes'"),
    ("int-converged", r"'int-converged' returned converged 1"),
    ("negative-hvps", r"'negative-hvps' returned hvps -3"),
]


@pytest.mark.parametrize(
    ("metric", "says"), CORRUPTIONS, ids=[c[0] for c in CORRUPTIONS]
)
def test_a_plugin_cannot_change_what_the_next_metric_measures(
    metric: str,
    says: str,
    tiny: Path,
    truth: float,
    tmp_path: Path,
    plugin_dists,
    fresh_registry_env,
) -> None:
    plugin_dists("corrupts")
    store = tmp_path / "s.zarr"
    args = ("measure", tiny, "-m", metric, "-m", "spectral", "--store", store, "--json")
    first = cli(*args)
    line = one_line(first)
    assert re.search(says, line), line
    assert metric_values(first.stdout) == {"spectral": truth}
    again = cli(*args)
    one_line(again)
    (entry,) = json.loads(again.stdout)
    assert entry["metrics"]["spectral"]["reused"] is True
    assert metric not in entry["metrics"]  # refused, so never stored


def test_a_plugin_that_prints_does_not_break_json(tiny: Path, truth: float) -> None:
    """As a user runs it: ``sharpkit measure ... --json | jq`` in a new process."""
    done = subprocess.run(
        [sys.executable, "-m", "sharpkit", "measure", str(tiny), "-m", "prints",
         "-m", "spectral", "--no-store", "--json"],
        capture_output=True, text=True, env=subprocess_env("corrupts"),
        timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert metric_values(done.stdout) == {"prints": 4.0, "spectral": truth}
    assert "progress of the prints metric" in done.stderr
