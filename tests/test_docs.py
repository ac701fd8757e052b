"""The documentation's examples run as written."""

from __future__ import annotations

import contextlib
import io
import json
import re
import shlex
import tempfile
from pathlib import Path

import pytest
from docs_output import check_block, differences
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


QUICKSTART = ROOT / "docs" / "quickstart.md"
MEASURE = (
    "sharpkit measure runs/large-ratio/final.pt runs/small-ratio/final.pt "
    "--metric spectral --metric frobenius"
)

DATA = (
    "sharpkit measure runs/large-ratio/final.pt runs/small-ratio/final.pt "
    "--metric spectral -o spectral.data_error=true"
)


@pytest.mark.slow
def test_quickstart_runs_as_written_and_shows_the_papers_claim(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every command runs; the measure table shown is the one printed; and the
    larger η/S ends in the flatter minimum (λ_max and ‖H‖_F both smaller)."""
    if not fashion_mnist_available():
        pytest.skip(
            "Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)"
        )
    from sharpkit.cli import app

    # a short folder, so that the table's title does not wrap at 80 columns
    folder = Path(tempfile.mkdtemp(prefix="qs", dir="/tmp"))
    monkeypatch.chdir(folder)
    runner = CliRunner()
    env = {"COLUMNS": "80"}  # the page shows an 80-column terminal
    printed = {}
    for block in blocks("quickstart.md", "bash"):
        for argv in commands(block):
            assert argv[0] == "sharpkit"
            result = runner.invoke(app, argv[1:], env=env)
            assert result.exit_code == 0, (argv, result.stdout, result.stderr)
            printed[shlex.join(argv)] = result.stdout
    assert (folder / "fig1.png").stat().st_size > 10_000
    assert (folder / "fig2.png").stat().st_size > 10_000
    # Values from the same seed differ only by the CPU's and BLAS's rounding,
    # which 8 epochs of SGD amplify: 25 % covers it and still catches a change
    # of settings (the two models differ by more than 5x).
    table = printed[MEASURE].replace(str(folder.resolve()), "/home/me")
    check_block(QUICKSTART, MEASURE, table, rtol=0.25)
    with_data = printed[DATA].replace(str(folder.resolve()), "/home/me")
    check_block(QUICKSTART, DATA, with_data, rtol=0.25)
    as_json = runner.invoke(app, [*shlex.split(MEASURE)[1:], "--json"])
    values = {
        Path(r["checkpoint"]).parent.name: {
            name: m["value"] for name, m in r["metrics"].items()
        }
        for r in json.loads(as_json.stdout)
    }
    large, small = values["large-ratio"], values["small-ratio"]
    assert large["spectral"] < small["spectral"], values
    assert large["frobenius"] < small["frobenius"], values
    for code in blocks("quickstart.md", "python"):
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(code, "quickstart.md", "exec"), {})
        shown = re.search(r"print\(m\)\s+# (Measurement\(.*?\))", code)
        if shown:  # the comment shows what print(m) printed
            got = out.getvalue().strip().splitlines()[-1]
            # spectral to its tolerance 1e-3; the trace here is exact
            assert not differences(shown[1], got, rtol=2e-3, err_factor=1), got


def test_sample_outputs_compare_words_exactly_and_numbers_within_tolerance() -> None:
    shown = "│ large-ratio/final.pt │ spectral λ_max │ 12.47 │ ±9.5e-05 │ bound │"
    same = "│ large-ratio/final.pt │ spectral λ_max │  12.9 │   ±0.0001 │ bound │"
    assert differences(shown, same, rtol=0.25, err_factor=100) == []
    assert differences(shown, same.replace("12.9", "17"), rtol=0.25, err_factor=100)
    assert differences(
        shown, same.replace("bound", "stderr"), rtol=0.25, err_factor=100
    )
    assert differences(shown, same.replace("±0.0001", "±1"), rtol=0.25, err_factor=100)
    repr_shown = "Measurement(spectral=4.77707, trace=30.4266±0)"
    repr_printed = "Measurement(spectral=4.77707, trace=30.4265±0)"
    assert differences(repr_shown, repr_printed, rtol=2e-3, err_factor=1) == []
    assert differences(
        repr_shown, "Measurement(spectral=4.77707, trace=30.4)", rtol=2e-3, err_factor=1
    )


def test_installation_commands_run() -> None:
    from sharpkit.cli import app

    block = next(
        b for b in blocks("installation.md", "bash") if "sharpkit --version" in b
    )
    for argv in commands(block):
        result = CliRunner().invoke(app, argv[1:])
        assert result.exit_code == 0, result.output


# Lightning's own warnings (as in tests/test_lightning.py): its tree helpers use a
# torch API that torch 2.14 deprecates; it suggests DataLoader workers.
@pytest.mark.filterwarnings(
    r"ignore:`isinstance\(treespec, LeafSpec\)` is deprecated:FutureWarning"
)
@pytest.mark.filterwarnings("ignore:The '.*dataloader' does not have many workers")
def test_tracking_page_runs_as_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib.util

    import sharpkit

    monkeypatch.chdir(tmp_path)
    has_lightning = importlib.util.find_spec("lightning") is not None
    namespace: dict[str, object] = {}
    ran = 0
    for code in blocks("tracking.md", "python"):
        if "lightning" in code and not has_lightning:
            continue
        exec(compile(code, "tracking.md", "exec"), namespace)
        ran += 1
    assert ran >= (4 if has_lightning else 3)
    runs = sharpkit.ResultStore("results.zarr", create=False).runs(kind="track")
    assert len(runs) == (2 if has_lightning else 1)
    assert runs[0].attrs["measurements"] == 2  # steps 20 and 40 of 48
    assert runs[0].attrs["model"] == "my-mlp"
    for argv in commands(blocks("tracking.md", "console")[0].replace("$ ", "")):
        from sharpkit.cli import app

        result = CliRunner().invoke(app, argv[1:])
        assert result.exit_code == 0, result.output
        assert "spectral" in result.stdout


def shrink_study(text: str) -> str:
    """The study of generalization.md at a tiny size: the same design, cheap points.

    Synthetic data and a 2-layer MLP instead of Fashion-MNIST and mlp-bn's four
    layers; 2 epochs; two values on each grid axis (both trainers kept); small
    analysis sets and metric budgets.
    """
    import tomllib

    study = tomllib.loads(text)
    train = study["train"]
    train.update(
        data="synthetic",
        data_options={"n_train": 96, "n_test": 48, "shape": "8"},
        model_options={"depth": 2, "width": 8},
        subset=96,
        epochs=2,
        lr=train["lr"][::2],
        batch_size=train["batch_size"][:2],
    )
    study["measure"].update(
        samples=64,
        options={
            "frobenius": {"probes": 3, "exact_max": 0, "deflation": 2},
            "adaptive": {"steps": 3},
            "pacbayes-sigma": {"samples": 3, "rtol": 0.05},
            "pacbayes-mag-sigma": {"samples": 3, "rtol": 0.05},
        },
    )
    return "".join(
        f"[{name}]\n" + "".join(f"{k} = {toml(v)}\n" for k, v in table.items())
        for name, table in study.items()
    )


def toml(value: object) -> str:
    """A TOML value: JSON's strings, numbers and arrays, and inline tables."""
    import json

    if isinstance(value, dict):
        items = ", ".join(f"{json.dumps(k)} = {toml(v)}" for k, v in value.items())
        return "{ " + items + " }"
    if isinstance(value, list):
        return "[" + ", ".join(toml(v) for v in value) + "]"
    return json.dumps(value)


@pytest.mark.slow
def test_generalization_study_runs_as_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    from sharpkit.cli import app

    monkeypatch.chdir(tmp_path)
    [study] = blocks("generalization.md", "toml")
    (tmp_path / "study.toml").write_text(shrink_study(study))
    block = next(b for b in blocks("generalization.md", "bash") if "study.toml" in b)
    runner = CliRunner()
    for argv in commands(block):
        assert argv[0] == "sharpkit"
        result = runner.invoke(app, argv[1:])
        assert result.exit_code == 0, (argv, result.stdout, result.stderr)
    assert (tmp_path / "correlate.png").stat().st_size > 10_000
    result = runner.invoke(app, ["correlate", "study.zarr", "--json"])
    report = json.loads(result.stdout)
    rows = report if isinstance(report, list) else report["correlations"]
    measures = {r["measure"] for r in rows}
    assert measures == {
        "spectral", "frobenius", "adaptive", "pacbayes-sigma", "pacbayes-mag-sigma"
    }  # fmt: skip
    assert all(r["n"] == 8 for r in rows)  # 2 trainers x 2 η x 2 S
    # Ψ is averaged over the axes that vary one at a time: η, S and the trainer
    assert all(set(r["psi_axes"]) <= {"lr", "batch_size", "trainer"} for r in rows)
    assert any("trainer" in r["psi_axes"] for r in rows)


REPRODUCING = ROOT / "docs" / "reproducing.md"
DEMO = "sharpkit reproduce demo --out demo"


@pytest.mark.slow
def test_the_demo_output_shown_is_a_real_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/reproducing.md shows what `make demo`'s command prints (stdout, and
    the disk and figures lines of stderr), the larger η/S the flatter."""
    if not fashion_mnist_available():
        pytest.skip(
            "Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)"
        )
    from sharpkit.cli import app

    folder = Path(tempfile.mkdtemp(prefix="demo", dir="/tmp"))
    monkeypatch.chdir(folder)
    result = CliRunner().invoke(app, shlex.split(DEMO)[1:], env={"COLUMNS": "120"})
    assert result.exit_code == 0, (result.stdout, result.stderr)
    tail = [
        ln for ln in result.stderr.splitlines() if ln.startswith(("disk:", "figures:"))
    ]
    printed = result.stdout.rstrip("\n") + "\n" + "\n".join(tail)
    printed = printed.replace(f"{folder.resolve()}/", "")  # the store's title
    # the same seeds as the quickstart, so the same 25 %; wall-clock seconds are
    # masked (no tolerance pins them on a shared machine)
    check_block(REPRODUCING, DEMO, printed, rtol=0.25, mask=("s", "predicted s"))
