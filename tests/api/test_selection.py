"""Which examples a measurement uses (issue 19): ``samples``, ``sample``, ``precision``.

The selection is made in one place (:class:`sharpkit.api.job.Selection`),
recorded with every stored run, and part of every result's reuse key; the
precision loop plans its sample count from the measured data standard error.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import sharpkit
from sharpkit.api.job import Selection
from sharpkit.api.precision import note, plan
from sharpkit.cli import app
from sharpkit.errors import ConfigError
from sharpkit.interfaces import MetricResult

runner = CliRunner()
FASHION = Path("/usr/share/datasets/fashion-mnist")


def _data(n: int = 600) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, 4, generator=gen)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()  # 3 classes, unbalanced
    return x, y


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)
    )


# ------------------------------------------------------------------ the selection


def test_random_selection_is_seeded_stratified_and_recorded() -> None:
    from sharpkit._data import DataSplit

    x, y = _data()
    split = DataSplit(x, y)
    a, rec_a = Selection(samples=60, sample="random", seed=1).cut(split)
    b, rec_b = Selection(samples=60, sample="random", seed=1).cut(split)
    c, rec_c = Selection(samples=60, sample="random", seed=2).cut(split)
    assert torch.equal(a.inputs, b.inputs)
    assert rec_a == rec_b
    assert rec_a["sample_sha256"] != rec_c["sample_sha256"]
    assert not torch.equal(a.inputs, c.inputs)
    # class shares of the split, to one example (largest-remainder rounding)
    for cls in range(3):
        share = float((y == cls).sum()) * 60 / len(y)
        assert abs(int((a.targets == cls).sum()) - share) < 1
    assert rec_a | {"sample_sha256": None} == {
        "sample": "random", "sample_seed": 1, "sample_sha256": None,
        "population": 600,
    }  # fmt: skip
    first, rec = Selection(samples=60).cut(split)
    assert torch.equal(first.inputs, x[:60])
    assert rec["sample_seed"] is None
    assert rec["sample_sha256"] is None
    whole, rec = Selection(samples="all", sample="random").cut(split, default=2048)
    assert len(whole) == 600
    assert rec["sample_seed"] is None  # nothing was drawn


@pytest.mark.parametrize(
    ("selection", "words"),
    [
        (Selection(samples=0), "positive count or 'all'"),
        (Selection(samples="most"), "positive count or 'all'"),
        (Selection(sample="last"), "first, random"),
    ],
)
def test_bad_selection_is_one_line(selection: Selection, words: str) -> None:
    x, y = _data(50)
    with pytest.raises(ConfigError, match=words):
        sharpkit.measure(
            _net(), (x, y), samples=selection.samples, sample=selection.sample
        )


def test_the_selection_is_part_of_the_store_key(tmp_path: Path) -> None:
    """A different selection is never reused; the same one always is.

    Before issue 19 only the first N could be asked for, and the digest of the
    analysis set (``data_digest``) was already in the key, so no stored result
    was reused for other examples; the random draw's seed and index digest
    are now in the key (and the run) as well.
    """
    x, y = _data()
    store = tmp_path / "r.zarr"

    def run(**kw: object) -> sharpkit.Measurement:
        return sharpkit.measure(_net(), (x, y), samples=256, store=store, **kw)  # type: ignore[arg-type]

    first = run()
    r1 = run(sample="random", seed=1)
    again = run(sample="random", seed=1)
    r2 = run(sample="random", seed=2)
    assert first.reused == r1.reused == r2.reused == ()
    assert again.reused == ("spectral",)
    keys = {m["spectral"].attrs["key"] for m in (first, r1, r2)}
    assert len(keys) == 3
    assert again["spectral"].value == r1["spectral"].value
    assert r1["spectral"].value != first["spectral"].value  # other examples
    assert (r1.attrs["sample"], r1.attrs["sample_seed"]) == ("random", 1)
    assert (r1.attrs["population"], r1.attrs["samples"]) == (600, 256)
    assert (first.attrs["sample"], first.attrs["sample_seed"]) == ("first", None)
    rows = sharpkit.open_results(store, as_frame=False)
    seeds = sorted(r["sample_seed"] or -1 for r in rows)
    assert seeds == [-1, 1, 2]
    assert {r["sample"] for r in rows} == {"first", "random"}


def test_samples_all_takes_the_whole_split() -> None:
    x, y = _data(300)
    m = sharpkit.measure(_net(), (x, y), samples="all")
    assert m.attrs["samples"] == 300
    # the same Hessian as the whole split given without samples
    ref = sharpkit.measure(_net(), (x, y))
    assert m["spectral"].value == ref["spectral"].value


# ------------------------------------------------------------------ precision


def _result(value: float, data_stderr: float | None) -> MetricResult:
    return MetricResult(value=value, data_stderr=data_stderr)


def test_plan_picks_n_from_the_inverse_square_root_law() -> None:
    # 5 % on 1000 samples, 2 % wanted: 1000·(5/2)² = 6250
    step = plan(
        {"spectral": _result(10.0, 0.5)},
        samples=1000,
        population=60_000,
        precision=0.02,
    )
    assert (step.samples, step.metric, step.measured) == (6250, "spectral", 1000)
    assert step.relative == pytest.approx(0.05)
    done = plan(
        {"spectral": _result(10.0, 0.1)},
        samples=1000,
        population=60_000,
        precision=0.02,
    )
    assert done.samples is None
    line = note([step, done], 0.02)
    assert line == (
        "precision 2 %: spectral's data error 5 % on 1000 → 1 % on 1000 samples "
        "(N planned by stderr ∝ 1/√N): met"
    )
    # the metric that needs the most examples decides; one without a data error
    # is ignored
    both = plan(
        {
            "spectral": _result(10.0, 0.3),
            "trace": _result(100.0, 4.0),
            "frobenius": _result(5.0, None),
        },
        samples=1000,
        population=60_000,
        precision=0.02,
    )
    assert (both.samples, both.metric) == (4000, "trace")
    # never fewer than 25 % more examples than the last measurement
    small = plan(
        {"spectral": _result(10.0, 0.21)},
        samples=1000,
        population=60_000,
        precision=0.02,
    )
    assert small.samples == 1250


def test_plan_refuses_beyond_the_split_in_one_line() -> None:
    with pytest.raises(ConfigError) as err:
        plan(
            {"spectral": _result(10.0, 0.5)},
            samples=1000,
            population=5000,
            precision=0.02,
        )
    line = str(err.value)
    assert "\n" not in line
    assert "needs about 6250" in line
    assert "more than the split's 5000" in line


def test_precision_measures_again_on_more_samples() -> None:
    x, y = _data(2000)
    m = sharpkit.measure(_net(), (x, y), samples=64, precision=0.03)
    said = m.attrs["precision_note"]
    assert said.startswith("precision 3 %: spectral's data error ")
    assert m.attrs["samples"] > 64  # 64 examples give 4.3 % here
    assert said.count(" → ") >= 1
    rel = m["spectral"].data_stderr / m["spectral"].value
    assert said.endswith("met") == (rel <= 0.03)
    with pytest.raises(ConfigError, match="spectral, trace"):
        sharpkit.measure(_net(), (x, y), metrics=["frobenius"], precision=0.05)


# ------------------------------------------------------------------ the CLI, real data


@pytest.fixture(scope="module")
def fashion_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not FASHION.exists():
        pytest.skip("Fashion-MNIST is not installed")
    out = tmp_path_factory.mktemp("fm")
    sharpkit.train(
        "mlp-bn",
        "fashion-mnist",
        lr=0.05,
        batch_size=64,
        epochs=1,
        subset=3000,
        model_options={"depth": 2, "width": 32},
        out_dir=out,
    )
    return out / "final.pt"


def test_cli_random_selection_and_precision_on_fashion_mnist(
    fashion_ckpt: Path, tmp_path: Path
) -> None:
    store = tmp_path / "r.zarr"
    args = ["measure", str(fashion_ckpt), "--store", str(store), "--samples", "512"]
    done = runner.invoke(app, [*args, "--sample", "random", "--seed", "3", "--json"])
    assert done.exit_code == 0, done.stderr
    attrs = json.loads(done.stdout)[0]["attrs"]
    assert (attrs["sample"], attrs["sample_seed"], attrs["samples"]) == (
        "random", 3, 512
    )  # fmt: skip
    assert attrs["population"] == 3000  # the training subset the model saw
    # the precision is planned from the data error and said in one line
    prec = runner.invoke(app, [*args, "--precision", "40%", "--no-store"])
    assert prec.exit_code == 0, prec.stderr
    notes = [ln for ln in prec.stderr.splitlines() if "precision 40 %" in ln]
    assert len(notes) == 1, prec.stderr
    refused = runner.invoke(app, [*args, "--precision", "0.1%"])
    assert refused.exit_code == 1
    lines = [ln for ln in refused.stderr.strip().splitlines() if ln.strip()]
    assert "more than the split's 3000" in lines[-1]
    assert "Traceback" not in refused.output
    results = runner.invoke(app, ["results", str(store), "--json"])
    rows = json.loads(results.stdout)
    assert any(r.get("sample") == "random" and r["sample_seed"] == 3 for r in rows)


@pytest.mark.parametrize(
    ("flag", "value", "words"),
    [
        ("--samples", "0", "--samples must be a positive count or 'all'"),
        ("--samples", "many", "--samples must be a positive count or 'all'"),
        ("--precision", "200%", "--precision must be a relative error"),
        ("--precision", "two", "--precision must be a relative error"),
    ],
)
def test_cli_bad_values_are_one_line(flag: str, value: str, words: str) -> None:
    result = runner.invoke(app, ["measure", "x.pt", flag, value, "--no-store"])
    assert result.exit_code == 1
    assert words in result.stderr
    assert "Traceback" not in result.output
