"""Which examples a probe sees: ``samples``, ``sample``, ``sample_seed`` (issue 19).

A probe that records the examples it was given shows exactly what each
selection hands it; the built-in ``direction`` probe, through the command
line, that the selection reaches the result and its store key.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import sharpkit
from sharpkit.api.job import Selection
from sharpkit.cli import app
from sharpkit.registry import Registry

runner = CliRunner()


class _Seen:
    """Returns the targets of the training and test examples it was given."""

    runs = 0

    def run(self, ctx: sharpkit.ProbeContext) -> sharpkit.ProbeResult:
        _Seen.runs += 1
        train, test = ctx.train_data.targets, ctx.test_data.targets
        return sharpkit.ProbeResult(
            coords={"i": np.arange(len(train), dtype=np.float64)},
            arrays={"train_y": train.numpy().astype(np.float64)},
            attrs={"test_y": [int(t) for t in test]},
        )


class _Plugin:
    @sharpkit.hookimpl
    def sharpkit_register_probes(self) -> list[sharpkit.ProbeSpec]:
        return [
            sharpkit.ProbeSpec(name="seen", factory=_Seen, description="What it saw.")
        ]


def _xy(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=gen)
    return x, (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()  # 3 unbalanced classes


class _Data:
    name = "inline"
    input_shape = (4,)
    num_classes = 3
    train = sharpkit.DataSplit(*_xy(600, 0))
    test = sharpkit.DataSplit(*_xy(300, 1))


@pytest.fixture
def reg() -> Registry:
    out = Registry(entry_points=False)
    out.register_plugin(_Plugin(), "seen")
    return out


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 3))


def _seen(reg: Registry, **kw: object) -> sharpkit.ProbeResult:
    return sharpkit.probe("seen", [_net()], _Data(), registry=reg, **kw)  # type: ignore[arg-type]


def _train_y(result: sharpkit.ProbeResult) -> torch.Tensor:
    return torch.from_numpy(np.asarray(result.arrays["train_y"])).long()


def test_the_probe_sees_the_selection(reg: Registry) -> None:
    whole = _seen(reg)
    assert len(_train_y(whole)) == 600
    assert len(whole.attrs["test_y"]) == 300
    first = _seen(reg, samples=100)
    assert torch.equal(_train_y(first), _Data.train.targets[:100])
    assert first.attrs["test_y"] == _Data.test.targets[:100].tolist()
    drawn = _seen(reg, samples=100, sample="random", sample_seed=1)
    expected = Selection(samples=100, sample="random", seed=1)
    assert torch.equal(_train_y(drawn), expected.pick(_Data.train).targets)
    assert drawn.attrs["test_y"] == expected.pick(_Data.test).targets.tolist()
    assert (drawn.attrs["sample"], drawn.attrs["sample_seed"]) == ("random", 1)
    assert (drawn.attrs["samples"], drawn.attrs["population"]) == (100, 600)
    assert first.attrs["sample_seed"] is None


def test_a_random_draw_is_seeded_and_stratified(reg: Registry) -> None:
    a = _seen(reg, samples=90, sample="random", sample_seed=4)
    b = _seen(reg, samples=90, sample="random", sample_seed=4)
    c = _seen(reg, samples=90, sample="random", sample_seed=5)
    assert torch.equal(_train_y(a), _train_y(b))
    assert a.attrs["sample_sha256"] == b.attrs["sample_sha256"]
    assert a.attrs["sample_sha256"] != c.attrs["sample_sha256"]
    # the seed of the draw defaults to seed (which also draws directions)
    d = _seen(reg, samples=90, sample="random", seed=4)
    assert d.attrs["sample_sha256"] == a.attrs["sample_sha256"]
    # each class in its share of the split, to one example, in both splits
    for got, split in ((_train_y(a), _Data.train), (a.attrs["test_y"], _Data.test)):
        got = torch.as_tensor(got)
        for cls in range(3):
            share = float((split.targets == cls).sum()) * 90 / len(split)
            assert abs(int((got == cls).sum()) - share) < 1, (cls, share)


def test_a_random_draw_is_never_reused_for_another_selection(
    reg: Registry, tmp_path: Path
) -> None:
    store = tmp_path / "p.zarr"
    _Seen.runs = 0
    calls = [
        {"samples": 100},
        {"samples": 100},  # reused
        {"samples": 100, "sample": "random", "sample_seed": 1},
        {"samples": 100, "sample": "random", "sample_seed": 1},  # reused
        {"samples": 100, "sample": "random", "sample_seed": 2},
        {},
        {"samples": "all", "sample": "random"},  # nothing drawn: the whole splits
    ]
    out = [_seen(reg, store=store, **kw) for kw in calls]
    assert _Seen.runs == 4
    assert out[1].attrs["key"] == out[0].attrs["key"]
    assert out[3].attrs["key"] == out[2].attrs["key"]
    keys = {r.attrs["key"] for r in (out[0], out[2], out[4], out[5])}
    assert len(keys) == 4
    assert out[6].attrs["key"] == out[5].attrs["key"]
    runs = sharpkit.open_results(store, as_frame=False, kind="probe")
    assert sorted(r["sample_seed"] or 0 for r in runs) == [0, 0, 1, 2]


def test_a_bad_selection_is_one_line_before_any_work(reg: Registry) -> None:
    _Seen.runs = 0
    with pytest.raises(sharpkit.ConfigError, match="positive count or 'all'"):
        _seen(reg, samples=0)
    with pytest.raises(sharpkit.ConfigError, match="first, random"):
        _seen(reg, sample="last")
    assert _Seen.runs == 0


@pytest.fixture
def checkpoint(mlp_bn_checkpoint: Path) -> Path:
    return mlp_bn_checkpoint


def test_cli_probe_on_a_random_draw(checkpoint: Path, tmp_path: Path) -> None:
    store = tmp_path / "r.zarr"
    args = [
        "probe", "direction", str(checkpoint), "-o", "alpha=-1:1:3",
        "--store", str(store), "--samples", "64", "--json",
    ]  # fmt: skip
    drawn = runner.invoke(app, [*args, "--sample", "random", "--sample-seed", "2"])
    assert drawn.exit_code == 0, drawn.output
    attrs = json.loads(drawn.stdout)["attrs"]
    assert (attrs["sample"], attrs["sample_seed"], attrs["samples"]) == (
        "random", 2, 64
    )  # fmt: skip
    assert attrs["train_samples"] == 64  # what the direction probe evaluated
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    first_attrs = json.loads(first.stdout)["attrs"]
    assert first_attrs["sample_seed"] is None
    assert first_attrs["key"] != attrs["key"]
    again = runner.invoke(app, [*args, "--sample", "random", "--sample-seed", "2"])
    assert json.loads(again.stdout)["attrs"]["key"] == attrs["key"]
    table = runner.invoke(
        app, [*args[:-1], "--sample", "random", "--sample-seed", "2"]
    )  # the stored result, as a table, and one line about the draw
    assert table.exit_code == 0, table.output
    said = " ".join(table.stderr.split())
    assert "probed on 64 random examples of each split (of 512 training" in said
    assert "seed 2)" in said
    bad = runner.invoke(app, [*args[:-3], "--samples", "0"])
    assert bad.exit_code == 1
    assert "--samples must be a positive count or 'all'" in bad.stderr
    assert "Traceback" not in bad.output
