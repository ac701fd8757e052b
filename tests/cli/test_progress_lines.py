"""Without a terminal (make demo in a log, CI) the progress is a line per step (#26)."""

from __future__ import annotations

import pytest

from sharpkit.cli import _progress


def test_a_line_per_step_when_stderr_is_not_a_terminal(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    clock = iter([0.0, 0.0, 0.2, 0.4, 2.0, 2.1, 9.0, 9.0])
    monkeypatch.setattr(_progress.time, "monotonic", lambda: next(clock))
    assert not _progress.err_console.is_terminal  # captured by pytest
    with _progress.progress_display("demo-quick") as cb:
        cb(0, 2, description="demo-quick: 2 points")  # t=0: the first step
        cb(0.5, 2)  # no new step: nothing
        cb(0.7, 2, description="epoch 1")  # within a second of the last line
        cb(1, 2, description="lr=0.1 batch_size=32 seed=0")  # t=2: a step
        cb(1, 2, description="lr=0.1 batch_size=32 seed=0")  # the same step
        cb(2, 2, description="lr=0.02 batch_size=512 seed=0")  # finished
    lines = capsys.readouterr().err.splitlines()
    assert lines == [
        "demo-quick: demo-quick: 2 points [0/2] (0 s)",
        "demo-quick: lr=0.1 batch_size=32 seed=0 [1/2] (2 s)",
        "demo-quick: lr=0.02 batch_size=512 seed=0 [2/2] (9 s)",
    ]


def test_nothing_when_disabled(capsys: pytest.CaptureFixture[str]) -> None:
    with _progress.progress_display("measure", enabled=False) as cb:
        cb(1, 2, description="spectral")
    assert capsys.readouterr().err == ""
