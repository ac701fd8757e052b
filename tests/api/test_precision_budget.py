"""``precision`` bounded by ``max_hvps`` (issue 19, point 5).

Under ``precision`` the product budget ``max_hvps`` bounds each metric's
products over all the measurements together: a measurement that would not fit
is not made, and a :class:`~sharpkit.ConvergenceWarning` says how far the
loop got. A metric that spends a known number of products and reports a known
data error makes the counts exact; ``spectral`` on a small model checks the
same with real products.
"""

from __future__ import annotations

import dataclasses
import json
import math
import warnings
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import sharpkit
from sharpkit.api.precision import Budget
from sharpkit.cli import app
from sharpkit.registry import Registry

runner = CliRunner()
COST = 7
"""Products the counted metric spends per measurement."""


class _Counted:
    """Spends ``COST`` real products; data error 40 % / √N of a value of 1.

    So ``precision=0.02`` from 64 examples (5 %) plans 64·(5/2)² = 400, where
    the data error is exactly 2 %: two measurements when nothing stops it.
    """

    def __init__(self, data_error: bool = False) -> None:
        self.data_error = data_error

    def compute(self, ctx: sharpkit.AnalysisContext) -> sharpkit.MetricResult:
        H = ctx.hessian
        before = H.hvp_count
        v = torch.ones(H.n, dtype=H.dtype)
        for _ in range(COST):
            v = H @ v
            v = v / v.norm()
        n = len(ctx.data)
        return sharpkit.MetricResult(
            value=1.0,
            data_stderr=0.4 / math.sqrt(n) if self.data_error else None,
            hvps=H.hvp_count - before,
            converged=True,
            attrs={"max_hvps": ctx.max_hvps},
        )


class _Plugin:
    @sharpkit.hookimpl
    def sharpkit_register_metrics(self) -> list[sharpkit.MetricSpec]:
        return [
            sharpkit.MetricSpec(
                name="counted",
                factory=_Counted,
                description="Seven products, a known data error.",
                options=(sharpkit.Option(name="data_error", type=bool, default=False),),
            )
        ]


@pytest.fixture
def reg() -> Registry:
    out = Registry(entry_points=False)
    out.register_plugin(_Plugin(), "counted")
    return out


def _data(n: int = 2000) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, 4, generator=gen)
    return x, (x[:, 0] > 0).long() + (x[:, 1] > 0).long()


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)
    )


def _measure(reg: Registry, **kw: object) -> sharpkit.Measurement:
    return sharpkit.measure(
        _net(), _data(), ["counted"], samples=64, precision=0.02, registry=reg,
        **kw,  # type: ignore[arg-type]
    )  # fmt: skip


def test_a_budget_that_does_not_bind_changes_nothing(reg: Registry) -> None:
    free = _measure(reg)
    assert free.attrs["samples"] == 400
    assert free.attrs["precision_stop"] == "met"
    assert free.attrs["precision_hvps"] == {"counted": 2 * COST}
    # exactly enough for both measurements: the second runs with what is left
    with warnings.catch_warnings():
        warnings.simplefilter("error", sharpkit.ConvergenceWarning)
        tight = _measure(reg, max_hvps=2 * COST)
    assert tight.attrs["samples"] == 400
    assert tight.attrs["precision_stop"] == "met"
    assert tight.attrs["precision_hvps"] == {"counted": 2 * COST}
    assert tight["counted"].attrs["max_hvps"] == COST  # 14 - 7 left
    assert tight["counted"].value == free["counted"].value


def test_a_budget_that_binds_stops_with_one_warning_and_the_result(
    reg: Registry, tmp_path: Path
) -> None:
    store = tmp_path / "r.zarr"
    with pytest.warns(sharpkit.ConvergenceWarning) as caught:
        m = _measure(reg, max_hvps=2 * COST - 1, store=store)
    (w,) = [c for c in caught if issubclass(c.category, sharpkit.ConvergenceWarning)]
    line = str(w.message)
    assert "\n" not in line
    assert line == m.attrs["precision_note"]
    assert line == (
        "precision 2 %: counted's data error 5 % on 64 samples: not met, the "
        "product budget ran out: counted spent 7 of max_hvps=13 and the next "
        "measurement, on 400, would take about 7 more"
    )
    # the one measurement made is returned, and no product beyond the budget
    assert m.attrs["samples"] == 64
    assert m.attrs["precision_stop"] == "max_hvps"
    assert m.attrs["precision_hvps"] == {"counted": COST}
    assert m["counted"].data_stderr == pytest.approx(0.05)
    # taken from the store, a measurement counts what it cost: the same end
    with pytest.warns(sharpkit.ConvergenceWarning, match="budget ran out"):
        again = _measure(reg, max_hvps=2 * COST - 1, store=store)
    assert again.reused == ("counted",)
    assert again.attrs["precision_hvps"] == {"counted": COST}


def test_the_budget_counts_each_metrics_products() -> None:
    b = Budget(30)
    r = {
        "a": sharpkit.MetricResult(value=1.0, hvps=12),
        "b": sharpkit.MetricResult(value=1.0, hvps=0),
    }
    b.add(r)
    assert b.short(100) is None  # 12 + 12 <= 30
    assert b.cap() == 18  # the least left: a's 18 (b spent nothing)
    b.add(r)
    assert b.spent == {"a": 24, "b": 0}
    assert "a spent 24 of max_hvps=30" in (b.short(200) or "")
    assert Budget(None).short(10) is None
    assert Budget(None).cap() is None


def test_spectral_to_a_precision_within_max_hvps() -> None:
    """Real products: the loop's total is the sum of its measurements' products."""
    x, y = _data()
    on = {"spectral": {"data_error": True}}
    first = sharpkit.measure(_net(), (x, y), samples=64, options=on)
    h1 = first["spectral"].hvps
    assert first["spectral"].data_stderr / first["spectral"].value > 0.03
    free = sharpkit.measure(_net(), (x, y), samples=64, precision=0.03)
    assert free.attrs["samples"] > 64
    assert free.attrs["precision_hvps"]["spectral"] > h1
    # a budget one short of a second measurement like the first: it stops after it
    with pytest.warns(sharpkit.ConvergenceWarning, match="product budget ran out"):
        cut = sharpkit.measure(
            _net(), (x, y), samples=64, precision=0.03, max_hvps=2 * h1 - 1
        )
    assert cut.attrs["samples"] == 64
    assert cut.attrs["precision_hvps"] == {"spectral": h1}
    assert cut["spectral"].value == first["spectral"].value
    # a budget that holds every measurement: the same answer, within it
    budget = free.attrs["precision_hvps"]["spectral"] + h1
    held = sharpkit.measure(_net(), (x, y), samples=64, precision=0.03, max_hvps=budget)
    assert held.attrs["samples"] == free.attrs["samples"]
    assert held.attrs["precision_hvps"] == free.attrs["precision_hvps"]
    assert held["spectral"].value == pytest.approx(free["spectral"].value, rel=1e-6)


@pytest.fixture
def checkpoint(mlp_bn_checkpoint: Path) -> Path:
    return mlp_bn_checkpoint


@pytest.mark.filterwarnings("always::sharpkit.ConvergenceWarning")  # as a user sees it
def test_cli_precision_out_of_budget_is_a_warning_and_exit_0(checkpoint: Path) -> None:
    args = ["measure", str(checkpoint), "--no-store", "--samples", "64"]
    one = runner.invoke(app, [*args, "-o", "spectral.data_error=true", "--json"])
    assert one.exit_code == 0, one.stderr
    h1 = json.loads(one.stdout)[0]["metrics"]["spectral"]["hvps"]
    done = runner.invoke(
        app, [*args, "--precision", "5%", "--max-hvps", str(2 * h1 - 1), "--json"]
    )
    assert done.exit_code == 0, done.stderr
    out = json.loads(done.stdout)[0]
    assert out["attrs"]["precision_stop"] == "max_hvps"
    assert out["attrs"]["precision_hvps"] == {"spectral": h1}
    said = [ln for ln in done.stderr.splitlines() if "precision 5 %" in ln]
    assert len(said) == 1, done.stderr  # the warning, not also a note
    assert said[0].startswith("warning: ")
    assert "budget ran out" in said[0]
    assert f"--max-hvps {2 * h1 - 1}" in said[0]
    assert "Traceback" not in done.output


class _Heavy(_Counted):
    """:class:`_Counted` whose data error says ``data_reliable=False``.

    As ``spectral`` does when a few examples carry the curvature: its stderr is
    not one a sample count can be planned from.
    """

    def compute(self, ctx: sharpkit.AnalysisContext) -> sharpkit.MetricResult:
        out = super().compute(ctx)
        return dataclasses.replace(out, attrs={**out.attrs, "data_reliable": False})


class _HeavyPlugin:
    @sharpkit.hookimpl
    def sharpkit_register_metrics(self) -> list[sharpkit.MetricSpec]:
        return [
            sharpkit.MetricSpec(
                name="heavy",
                factory=_Heavy,
                description="Seven products, a data error flagged unreliable.",
                options=(sharpkit.Option(name="data_error", type=bool, default=False),),
            )
        ]


def _unreliable(names: str, samples: int, pct: str, everything: str) -> str:
    return (
        f"precision {pct}: {names} data error on {samples} samples is not "
        "reliable (data_reliable=False: a few examples carry the curvature), so "
        f"no sample count is planned from it; measure on {everything}"
    )


def test_an_unreliable_data_error_plans_nothing(reg: Registry) -> None:
    """data_reliable=False: no N scaled from that stderr; one line says so (#19)."""
    reg.register_plugin(_HeavyPlugin(), "heavy")
    with pytest.warns(sharpkit.ConvergenceWarning) as caught:
        alone = sharpkit.measure(
            _net(), _data(), ["heavy"], samples=64, precision=0.02, registry=reg
        )
    lines = [str(w.message) for w in caught]
    assert lines == [_unreliable("heavy's", 64, "2 %", 'samples="all"')]
    assert alone.attrs["samples"] == 64  # one measurement: 64·(5/2)² not planned
    assert alone.attrs["precision_stop"] == "unreliable"
    assert alone.attrs["precision_unreliable"] == ["heavy"]
    assert alone.attrs["precision_hvps"] == {"heavy": COST}
    # beside a reliable metric, that one plans (64 → 400, see _Counted) and
    # the unreliable one is named, once
    with pytest.warns(sharpkit.ConvergenceWarning) as caught:
        both = sharpkit.measure(
            _net(), _data(), ["counted", "heavy"], samples=64, precision=0.02,
            registry=reg,
        )  # fmt: skip
    assert [str(w.message) for w in caught] == [  # said of the last measurement
        _unreliable("heavy's", 400, "2 %", 'samples="all"')
    ]
    assert both.attrs["samples"] == 400
    assert both.attrs["precision_stop"] == "met"
    assert both.attrs["precision_note"].startswith("precision 2 %: counted's")


@pytest.mark.filterwarnings("always::sharpkit.ConvergenceWarning")  # as a user sees it
def test_cli_precision_warnings_name_their_checkpoint(
    checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Several checkpoints: each --precision warning starts with its file (#19)."""
    import sharpkit.registry

    reg = Registry()
    reg.register_plugin(_HeavyPlugin(), "heavy")
    monkeypatch.setattr(sharpkit.registry, "_REGISTRY", reg)
    other = checkpoint.with_name("b.pt")
    other.write_bytes(checkpoint.read_bytes())
    done = runner.invoke(
        app,
        [
            "measure", str(checkpoint), str(other), "--no-store", "--samples",
            "64", "--metric", "heavy", "--precision", "2%",
        ],
    )  # fmt: skip
    assert done.exit_code == 0, done.stderr
    said = [ln for ln in done.stderr.splitlines() if "precision 2 %" in ln]
    line = _unreliable("heavy's", 64, "2 %", "--samples all")
    assert said == [f"warning: a.pt: {line}", f"warning: b.pt: {line}"]
