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
from sharpkit.store import ResultStore

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
    # the table shows the selection where the runs differ in it
    table = runner.invoke(app, ["results", str(store)], env={"COLUMNS": "200"})
    assert table.exit_code == 0, table.output
    header = next(ln for ln in table.stdout.splitlines() if "sample" in ln)
    assert "draw" in header


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
    with pytest.raises(ConfigError, match="epsilon has none"):
        sharpkit.measure(_net(), (x, y), metrics=["epsilon"], precision=0.05)


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


def test_cli_random_selection_on_fashion_mnist(
    fashion_ckpt: Path, tmp_path: Path
) -> None:
    store = tmp_path / "r.zarr"
    args = ["measure", str(fashion_ckpt), "--store", str(store), "--samples", "512"]
    said = runner.invoke(app, [*args, "--sample", "random", "--seed", "4"])
    assert said.exit_code == 0, said.stderr
    assert "measured on 512 random examples of 3000" in " ".join(said.stderr.split())
    done = runner.invoke(app, [*args, "--sample", "random", "--seed", "3", "--json"])
    assert done.exit_code == 0, done.stderr
    attrs = json.loads(done.stdout)[0]["attrs"]
    assert (attrs["sample"], attrs["sample_seed"], attrs["samples"]) == (
        "random", 3, 512
    )  # fmt: skip
    assert attrs["population"] == 3000  # the training subset the model saw
    results = runner.invoke(app, ["results", str(store), "--json"])
    rows = json.loads(results.stdout)
    assert any(r.get("sample") == "random" and r["sample_seed"] == 3 for r in rows)


def test_cli_precision_and_all_samples_on_fashion_mnist(fashion_ckpt: Path) -> None:
    args = ["measure", str(fashion_ckpt), "--no-store", "--samples", "512"]
    whole = runner.invoke(
        app, ["measure", str(fashion_ckpt), "--samples", "all", "--no-store", "--json"]
    )
    assert whole.exit_code == 0, whole.stderr
    assert json.loads(whole.stdout)[0]["attrs"]["samples"] == 3000
    # the precision is planned from the data error and said in one line
    prec = runner.invoke(app, [*args, "--precision", "40%"])
    assert prec.exit_code == 0, prec.stderr
    notes = [ln for ln in prec.stderr.splitlines() if "precision 40 %" in ln]
    assert len(notes) == 1, prec.stderr
    assert "data error" in notes[0]
    assert " on 512" in notes[0]
    refused = runner.invoke(app, [*args, "--precision", "0.1%"])
    assert refused.exit_code == 1
    lines = [ln for ln in refused.stderr.strip().splitlines() if ln.strip()]
    assert "more than the split's 3000" in lines[-1]
    assert "Traceback" not in refused.output


@pytest.mark.parametrize(
    ("flag", "value", "words"),
    [
        ("--samples", "0", "--samples must be a positive count or 'all'"),
        ("--precision", "200%", "--precision must be a relative error"),
        ("--precision", "two", "--precision must be a relative error"),
    ],
)
def test_cli_bad_values_are_one_line(flag: str, value: str, words: str) -> None:
    result = runner.invoke(app, ["measure", "x.pt", flag, value, "--no-store"])
    assert result.exit_code == 1
    assert words in result.stderr
    assert "Traceback" not in result.output


def test_cli_samples_that_are_not_a_count_are_a_usage_error() -> None:
    result = runner.invoke(app, ["measure", "x.pt", "--samples", "many"])
    assert result.exit_code == 2
    assert "--samples" in result.output
    assert "'many' is not a whole number or 'all'" in result.output


# ------------------------------------------------------------------ Tracker, sweeps


def test_tracker_keeps_one_random_selection_and_the_data_error(tmp_path: Path) -> None:
    x, y = _data(400)
    store = tmp_path / "t.zarr"
    net = _net()
    with sharpkit.Tracker(
        (x, y),
        ["spectral"],
        every=1,
        samples=128,
        sample="random",
        seed=5,
        options={"spectral": {"data_error": True}},
        store=store,
    ) as tracker:
        tracker.step(net, step=1)
        with torch.no_grad():
            net[0].weight.mul_(1.1)
        tracker.step(net, step=2)
    data_err = tracker.curves["spectral_data_stderr"]
    assert data_err.shape == (2,)
    assert (data_err > 0).all()
    # the same 128 examples at every step: the draw happened once
    assert len(tracker._data) == 128
    expected = Selection(samples=128, sample="random", seed=5).pick(
        sharpkit.DataSplit(x, y)
    )
    assert torch.equal(tracker._data.inputs, expected.inputs)
    (row,) = sharpkit.open_results(store, as_frame=False, kind="track")[:1]
    assert (row["sample"], row["sample_seed"], row["samples"]) == ("random", 5, 128)
    attrs = ResultStore(store).run(row["run_id"]).attrs
    assert attrs["sample_sha256"] is not None
    assert attrs["population"] == 400
    assert row["data_stderr"] == pytest.approx(float(data_err[-1]))


def test_sweep_and_reproduce_options_override_the_measure_table(
    tmp_path: Path,
) -> None:
    from sharpkit.cli._options import Sample
    from sharpkit.cli._selection import override_measure
    from sharpkit.sweep import SweepConfig

    def cfg(measure: dict[str, object] | None) -> SweepConfig:
        train = {
            "model": "mlp-bn", "data": "synthetic", "lr": 0.1, "batch_size": 16,
            "epochs": 1,
        }  # fmt: skip
        data: dict[str, object] = {"train": train}
        if measure is not None:
            data["measure"] = measure
        return SweepConfig.from_dict(data, base=tmp_path)

    base = cfg({"metrics": ["spectral", "frobenius"], "samples": 2048})
    assert override_measure(base) is base
    new = override_measure(
        base, samples="all", sample=Sample.random, data_error=True
    ).measure
    assert new == {
        "metrics": ["spectral", "frobenius"], "samples": "all", "sample": "random",
        "options": {
            "spectral": {"data_error": True}, "frobenius": {"data_error": True},
        },
    }  # fmt: skip
    with pytest.raises(ConfigError, match="measures nothing"):
        override_measure(cfg(None), sample=Sample.random)
    with pytest.raises(ConfigError, match="none of epsilon"):
        override_measure(cfg({"metrics": ["epsilon"]}), data_error=True)
    with pytest.raises(ConfigError, match="positive count or 'all'"):
        override_measure(base, samples="0")


def test_sweep_cli_measures_on_the_selection_asked_for(tmp_path: Path) -> None:
    sweep = tmp_path / "s.toml"
    sweep.write_text(
        '[sweep]\nname = "s"\nout = "runs"\nstore = "r.zarr"\n'
        '[train]\nmodel = "mlp-bn"\nmodel_options = { depth = 2, width = 8 }\n'
        'data = "synthetic"\ndata_options = { n_train = 300, n_test = 40, '
        'shape = "8" }\nlr = [0.05, 0.1]\nbatch_size = 32\nepochs = 1\n'
        '[measure]\nmetrics = ["spectral"]\nsamples = 2048\n',
        encoding="utf-8",
    )
    args = ["sweep", str(sweep), "--no-predict", "--samples", "200"]
    done = runner.invoke(app, [*args, "--sample", "random", "--data-error"])
    assert done.exit_code == 0, done.output
    rows = [
        r
        for r in sharpkit.open_results(tmp_path / "r.zarr", as_frame=False)
        if r["kind"] == "measure"
    ]
    assert len(rows) == 2
    assert {(r["samples"], r["sample"], r["sample_seed"]) for r in rows} == {
        (200, "random", 0)
    }
    assert all(r["data_stderr"] is not None and r["data_stderr"] > 0 for r in rows)
    table = runner.invoke(
        app, ["results", str(tmp_path / "r.zarr"), "-f", "kind=measure"],
        env={"COLUMNS": "200"},
    )  # fmt: skip
    assert table.exit_code == 0, table.output
    assert "± data" in table.stdout


def test_precision_on_data_objects_refuses_beyond_what_was_given() -> None:
    x, y = _data(80)
    with pytest.raises(ConfigError) as err:
        sharpkit.measure(_net(), (x, y), precision=0.001)
    line = str(err.value)
    assert "\n" not in line
    assert "on 80 samples, the whole split" in line
