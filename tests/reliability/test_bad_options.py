"""Bad options from the command line: one line each, before any work.

Each case is an argument list (``{a}``/``{b}``: two tiny checkpoints, ``{tmp}``:
an empty folder, ``{file}``: a regular file there) and the outcome: ``error``
with what the one ``error:`` line must say, or ``warning`` with what the one
``warning:`` line must say for an input that is accepted but changed. A case
that does real work would show it: each runs under a time limit far below the
work an unchecked option would start.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from _rel import TINY_TRAIN, cli, one_line, warned

A, B, W, TMP, FILE = "{a}", "{b}", "{w}", "{tmp}", "{file}"
MEASURE = ["measure", A, "--no-store"]
WIDE = ["measure", W, "--no-store", "--samples", "8"]
INTERP = ["interpolate", A, B, "--no-store"]
TRAIN = ["train", *TINY_TRAIN, "--epochs", "1", "--no-store"]

# (id, argv, "error" | "warning", what the line says)
BAD_OPTIONS: list[tuple[str, list[str], str, str]] = [
    # sizes checked against what the job can take, before any work (item 4)
    ("alpha-1e8-points", [*INTERP, "--alpha", "-1:2:100000000"], "error",
     r"100000000 points.*limit is 100000"),
    ("plane-1e6-points", ["probe", "plane", A, "--no-store", "-o",
                          "x=-1:1:1000", "-o", "y=-1:1:1000"], "error",
     r"1000000 points.*limit is 100000"),
    # (a billion is over the count limit first: test_limits.py; a million is not)
    ("top-k-1e6", [*MEASURE, "--top-k", "1000000"], "error",
     r"top_k 1000000.*parameters"),
    ("top-k-over-max-hvps", [*MEASURE, "--top-k", "5", "--max-hvps", "3"], "error",
     r"top_k 5.*the 3 allowed; raise --max-hvps"),
    # on a 330k-parameter model: a basis of n vectors of n is terabytes
    ("frobenius-deflation-1e6", [*WIDE, "-m", "frobenius", "-o",
                                 "deflation=1000000"], "error",
     r"deflation 1000000.*Lanczos basis.*memory free"),
    ("trace-sketch-1e6", [*WIDE, "-m", "trace", "-o", "sketch=1000000"],
     "error", r"sketch 1000000.*Lanczos basis.*memory free"),
    ("density-steps-1e6", [*WIDE, "-m", "density", "-o", "steps=1000000"],
     "error", r"steps 1000000.*Lanczos basis.*memory free"),
    ("top-k-memory", [*WIDE, "--top-k", "300000"], "error",
     r"top_k 300000.*Lanczos basis.*memory free"),
    # accepted silently before (item 6)
    ("samples-1e9", [*MEASURE, "--samples", "1000000000"], "warning",
     r"1000000000 examples.*has 128"),
    ("data-root-a-file", [*MEASURE, "--data-root", FILE], "error",
     r"--data-root.*not a directory"),
    ("alpha-empty-item", [*INTERP, "--alpha", "0,,1"], "error", r"empty value"),
    ("alpha-trailing-comma", [*INTERP, "--alpha", "0,1,"], "error", r"empty value"),
    ("subset-below-classes", [*TRAIN, "--subset", "2", "--out", TMP], "error",
     r"subset 2 cannot hold one example of each of the 4 classes"),
    # late failures, now before the first step (item 7)
    ("out-under-a-file", [*TRAIN, "--out", FILE + "/run"], "error",
     r"cannot write checkpoints to --out"),
    ("store-is-a-file", ["train", *TINY_TRAIN, "--epochs", "1", "--out", TMP,
                         "--store", FILE], "error", r"is a file, not a results store"),
    ("store-under-a-file", ["train", *TINY_TRAIN, "--epochs", "1", "--out", TMP,
                            "--store", FILE + "/s.zarr"], "error",
     r"cannot create a results store"),
    # markup and emoji codes print as typed (item 5)
    ("schedule-emoji-code", [*TRAIN, "--schedule", "step:a:b", "--out", TMP],
     "error", r"step:a:b"),
    ("metric-with-brackets", [*MEASURE, "-m", "x[/]y"], "error", r"'x\[/\]y'"),
    ("metric-markup", [*MEASURE, "-m", "[red]spectral[/red]"], "error",
     r"\[red\]spectral\[/red\]"),
    ("option-with-brackets", [*MEASURE, "-o", "spectral.a[b]=1"], "error",
     r"a\[b\]"),
    ("data-misfit", [*MEASURE, "--data", "synthetic", "--data-option",
                     "shape=3x8x8"], "error", r"do not fit the model"),
    # classic mistakes that were already one line: kept that way
    ("alpha-decreasing", [*INTERP, "--alpha", "1,0"], "error", r"strictly increasing"),
    ("alpha-three-colons", [*INTERP, "--alpha", "0:1:2:3"], "error", r"start:stop:num"),
    ("alpha-zero-points", [*INTERP, "--alpha", "0:1:0"], "error", r"start:stop:num"),
    ("alpha-nan", [*INTERP, "--alpha", "nan,1"], "error", r"finite"),
    ("option-no-equals", [*MEASURE, "-o", "top_k"], "error", r"key=value"),
    ("option-unknown", [*MEASURE, "-o", "nosuch=1"], "error", r"nosuch"),
    ("option-not-selected", [*MEASURE, "-o", "frobenius.probes=4"], "error",
     r"not selected"),
    ("option-bad-int", [*MEASURE, "-o", "spectral.top_k=abc"], "error", r"top_k"),
    ("top-k-zero", [*MEASURE, "--top-k", "0"], "error", r"top_k"),
    ("samples-zero", [*MEASURE, "--samples", "0"], "error", r"samples"),
    ("tol-above-one", [*MEASURE, "--tol", "2"], "error", r"tol"),
    ("batch-size-zero", [*MEASURE, "--batch-size", "0"], "error", r"batch_size"),
    ("unknown-metric", [*MEASURE, "-m", "spectrl"], "error", r"did you mean"),
    ("no-gpu", [*MEASURE, "--device", "cuda:7"], "error", r"cuda"),
    ("schedule-zero-period", [*TRAIN, "--schedule", "every:0:0.5", "--out", TMP],
     "error", r"every"),
    ("epochs-zero", [*TRAIN[:-3], "--epochs", "0", "--no-store"], "error", r"epochs"),
    ("lr-negative", [*TRAIN, "--lr", "-1", "--out", TMP], "error", r"lr"),
    ("missing-checkpoint", ["measure", TMP + "/run[lr=0.1].pt", "--no-store"],
     "error", r"run\[lr=0\.1\]\.pt"),
    ("sweep-train-needs", ["sweep", FILE + ".toml"], "error", r"\[train\] needs"),
    ("sweep-interp-needs", ["sweep", FILE + "-interp.toml"], "error",
     r"\[\[interpolate\]\] needs"),
]  # fmt: skip

_SWEEPS = {
    ".toml": "[sweep]\nname = 'x'\n[train]\nmodel = 'mlp-bn'\n",
    "-interp.toml": (
        "[sweep]\nname = 'x'\n[train]\nmodel = 'mlp-bn'\ndata = 'synthetic'\n"
        "lr = 0.1\nbatch_size = 32\nepochs = 1\n[[interpolate]]\na = {lr = 0.1}\n"
    ),
}


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("argv", "outcome", "says"),
    [c[1:] for c in BAD_OPTIONS],
    ids=[c[0] for c in BAD_OPTIONS],
)
def test_bad_option(
    argv: list[str],
    outcome: str,
    says: str,
    tiny: Path,
    tiny_b: Path,
    wide: Path,
    tmp_path: Path,
) -> None:
    file = tmp_path / "a-file"
    file.write_text("not a folder\n")
    for suffix, text in _SWEEPS.items():
        (tmp_path / f"a-file{suffix}").write_text(text)
    out = tmp_path / "out"
    args = [
        a.replace(A, str(tiny))
        .replace(B, str(tiny_b))
        .replace(W, str(wide))
        .replace(TMP, str(out))
        .replace(FILE, str(file))
        for a in argv
    ]
    result = cli(*args)
    line = one_line(result) if outcome == "error" else warned(result)
    assert re.search(says, line), line
    if "train" in argv and outcome == "error":
        assert not (out / "last.pt").exists()  # refused before the first step
        assert "trainer" not in line  # the user's option is named, not the trainer


def test_help_shows_brackets_and_no_emoji() -> None:
    """Every help text prints as written: '[train]', '[[interpolate]]', 'a:b:c'."""
    import typer.main
    from rich.text import Text

    from sharpkit.cli import app

    def texts(cmd, path):  # click objects
        yield path, cmd.help or ""
        for p in cmd.params:
            yield f"{path} {p.name}", getattr(p, "help", None) or ""
        for name, sub in getattr(cmd, "commands", {}).items():
            yield from texts(sub, f"{path} {name}")

    for where, text in texts(typer.main.get_command(app), "sharpkit"):
        rendered = Text.from_markup(text, emoji=True).plain
        assert rendered == text.replace("\\[", "["), where
    sweep_help = cli("sweep", "--help").stdout
    assert "[train]" in sweep_help
    assert "[[interpolate]]" in sweep_help


# Usage errors (what the command line itself cannot parse): one line, exit 2.
USAGE_ERRORS: list[tuple[str, list[str], str]] = [
    ("samples-not-an-integer", [*MEASURE, "--samples", "1e9"], r"--samples"),
    ("unknown-option", [*MEASURE, "--nosuch"], r"No such option: --nosuch"),
    ("unknown-top-level-option", ["--nosuch", "measure"], r"No such option"),
    ("missing-required", ["train", "--model", "mlp-bn"], r"--data"),
    ("bad-choice", ["results", TMP, "--kind", "bogus"], r"--kind"),
    ("option-needs-a-value", [*MEASURE, "--top-k"], r"--top-k"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("argv", "says"), [c[1:] for c in USAGE_ERRORS], ids=[c[0] for c in USAGE_ERRORS]
)
def test_usage_error_is_one_line(
    argv: list[str], says: str, tiny: Path, tmp_path: Path
) -> None:
    args = [a.replace(A, str(tiny)).replace(TMP, str(tmp_path)) for a in argv]
    line = one_line(cli(*args), code=2)
    assert re.search(says, line), line
    assert "--help" in line  # where to read what is expected
