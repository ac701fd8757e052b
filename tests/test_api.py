"""sharpkit.measure orchestration: data forms, losses, validation, plugin failures."""

from __future__ import annotations

import math

import pytest
import sharpkit_fisher_rao.plugin as fisher_rao_plugin
import torch

import sharpkit
from sharpkit.registry import Registry
from sharpkit.testing import tiny_model


class SumSq:
    """Test metric: mean loss over the data, computed by hand (deterministic)."""

    def compute(self, ctx):
        total, n = 0.0, 0
        with torch.no_grad():
            for x, y in ctx.data.batches(ctx.batch_size):
                total += float(ctx.loss_fn(ctx.model(x), y)) * len(x)
                n += len(x)
        return sharpkit.MetricResult(
            value=total / n, attrs={"training": ctx.model.training}
        )


class Raises:
    def compute(self, ctx):
        raise ZeroDivisionError("oops")


class WrongType:
    def compute(self, ctx):
        return 3.0


class Plugin:
    @sharpkit.hookimpl
    def sharpkit_register_metrics(self):
        return [
            sharpkit.MetricSpec(name="mean-loss", factory=SumSq, description="x"),
            sharpkit.MetricSpec(name="raises", factory=Raises, description="x"),
            sharpkit.MetricSpec(name="wrong-type", factory=WrongType, description="x"),
        ]


@pytest.fixture
def reg() -> Registry:
    r = Registry(entry_points=False)
    r.register_plugin(Plugin(), "inline", distribution="inline-dist", version="2")
    r.register_plugin(
        fisher_rao_plugin, "fisher-rao", distribution="sharpkit-fisher-rao"
    )
    return r


def data(n: int = 40, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 8, generator=gen, dtype=torch.float64), torch.randint(
        0, 3, (n,), generator=gen
    )


def test_measure_tensors_and_custom_loss(reg) -> None:
    net = tiny_model()
    net.train()  # measure must put it in eval mode and restore this afterwards
    x, y = data()

    def loss(out, target):
        return ((out - torch.nn.functional.one_hot(target, 3)) ** 2).mean()

    m = sharpkit.measure(net, (x, y), ["mean-loss"], loss=loss, registry=reg)
    assert net.training
    with torch.no_grad():
        net.eval()
        expected = float(loss(net(x), y))
    assert m["mean-loss"].value == pytest.approx(expected, rel=1e-12)
    assert m["mean-loss"].attrs["training"] is False
    assert m["mean-loss"].metric == "mean-loss"
    assert m["mean-loss"].seconds is not None
    assert m.attrs["samples"] == 40
    assert m.attrs["loss"].endswith("loss")


def test_measure_accepts_dataset_dataloader_and_split(reg) -> None:
    net = tiny_model()
    x, y = data()
    ref = sharpkit.measure(net, (x, y), ["fisher-rao"], registry=reg)[
        "fisher-rao"
    ].value
    ds = torch.utils.data.TensorDataset(x, y)
    loader = torch.utils.data.DataLoader(ds, batch_size=7)
    for form in (ds, loader, sharpkit.DataSplit(x, y)):
        got = sharpkit.measure(net, form, ["fisher-rao"], registry=reg)[
            "fisher-rao"
        ].value
        assert got == pytest.approx(ref, rel=1e-12)
    head = sharpkit.measure(net, ds, ["fisher-rao"], samples=10, registry=reg)
    direct = sharpkit.measure(net, (x[:10], y[:10]), ["fisher-rao"], registry=reg)
    assert head["fisher-rao"].value == pytest.approx(
        direct["fisher-rao"].value, rel=1e-12
    )


def test_measure_options_and_validation(reg) -> None:
    net = tiny_model()
    xy = data()
    emp = sharpkit.measure(
        net,
        xy,
        ["fisher-rao"],
        options={"fisher-rao": {"fisher": "empirical"}},
        registry=reg,
    )
    assert emp["fisher-rao"].attrs["fisher"] == "empirical"
    with pytest.raises(sharpkit.UnknownNameError):
        sharpkit.measure(net, xy, ["nope"], registry=reg)
    with pytest.raises(sharpkit.ConfigError, match="not one of"):
        sharpkit.measure(
            net, xy, ["mean-loss"], options={"fisher-rao": {}}, registry=reg
        )
    with pytest.raises(sharpkit.ConfigError, match="bn_mode"):
        sharpkit.measure(net, xy, ["mean-loss"], bn_mode="both", registry=reg)
    with pytest.raises(sharpkit.ConfigError, match="tol"):
        sharpkit.measure(net, xy, ["mean-loss"], tol=2.0, registry=reg)
    with pytest.raises(sharpkit.ConfigError, match="twice"):
        sharpkit.measure(net, xy, ["mean-loss", "mean-loss"], registry=reg)
    with pytest.raises(sharpkit.ConfigError, match="cannot use"):
        sharpkit.measure(net, [1, 2, 3], ["mean-loss"], registry=reg)


def test_non_finite_weights_and_loss_are_data_errors(reg) -> None:
    net = tiny_model()
    x, y = data()
    with torch.no_grad():
        net[0].weight[0, 0] = float("nan")
    with pytest.raises(sharpkit.DataError, match=r"non-finite values in '0.weight'"):
        sharpkit.measure(net, (x, y), ["mean-loss"], registry=reg)
    net = tiny_model()
    x[3, 2] = float("inf")
    with pytest.raises(sharpkit.DataError, match="not finite"):
        sharpkit.measure(net, (x, y), ["mean-loss"], registry=reg)


def test_loss_must_be_scalar(reg) -> None:
    net = tiny_model()

    def per_example(out, target):
        return torch.nn.functional.cross_entropy(out, target, reduction="none")

    with pytest.raises(sharpkit.ConfigError, match="scalar"):
        sharpkit.measure(net, data(), ["mean-loss"], loss=per_example, registry=reg)


def test_plugin_failures_name_the_plugin(reg) -> None:
    net = tiny_model()
    with pytest.raises(
        sharpkit.PluginRunError, match=r"inline-dist 2 \(inline\).*ZeroDivisionError"
    ):
        sharpkit.measure(net, data(), ["raises"], registry=reg)
    with pytest.raises(sharpkit.PluginContractError, match="expected MetricResult"):
        sharpkit.measure(net, data(), ["wrong-type"], registry=reg)


def test_dtype_conversion_does_not_touch_the_users_model(reg) -> None:
    net = tiny_model().float()
    x, y = data()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    m = sharpkit.measure(
        net, (x.float(), y), ["fisher-rao"], dtype="float64", registry=reg
    )
    assert m.attrs["dtype"] == "float64"
    assert all(
        v.dtype == torch.float32
        for v in net.state_dict().values()
        if v.is_floating_point()
    )
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k])
    assert math.isfinite(m["fisher-rao"].value)


def test_measurement_to_dict_is_json(reg) -> None:
    import json

    m = sharpkit.measure(tiny_model(), data(), ["fisher-rao"], registry=reg)
    text = json.dumps(m.to_dict())
    assert "fisher-rao" in text
    assert "fisher-rao=" in repr(m)


def test_cost_estimate_spends_no_extra_product(reg, monkeypatch) -> None:
    """The time estimate comes from the metric's own first product, not an extra one."""
    import sharpkit.builtin.metrics as builtin_metrics
    from sharpkit.curvature.operator import HessianOperator

    reg.register_plugin(builtin_metrics, "builtin.metrics", distribution="sharpkit")
    seen: list[str] = []
    products: list[int] = []
    real = HessianOperator.matvec

    def counting(self, v):
        products.append(1 if v.dim() == 1 else v.shape[1])
        return real(self, v)

    monkeypatch.setattr(HessianOperator, "matvec", counting)

    def progress(done, total=None, /, *, description=None, **info):
        if description is not None:
            seen.append(description)

    m = sharpkit.measure(
        tiny_model(), data(), ["spectral"], progress=progress, registry=reg
    )
    assert seen[0].startswith("spectral (≈"), seen
    assert seen[0].endswith(" HVPs)"), seen
    timed = [d for d in seen if d.startswith("spectral (≈") and d.endswith(" s)")]
    assert len(timed) == 1, seen  # announced once, after the first product
    assert m["spectral"].hvps == sum(products) > 0  # no product spent on timing


def test_every_docstring_example_is_collected() -> None:
    """pytest runs the ``>>>`` examples of every module under src/ (pyproject)."""
    import tomllib
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    config = tomllib.loads((root / "pyproject.toml").read_text())
    pytest_cfg = config["tool"]["pytest"]["ini_options"]
    assert "src/sharpkit" in pytest_cfg["testpaths"]
    assert "DoctestModule" in (root / "conftest.py").read_text()
    with_examples = [
        p for p in (root / "src" / "sharpkit").rglob("*.py") if ">>>" in p.read_text()
    ]
    assert len(with_examples) >= 5


def test_reuse_datasets_shares_loads_inside_the_block_only() -> None:
    with sharpkit.reuse_datasets():
        a = sharpkit.load_dataset("synthetic", options={"classes": 3})
        with sharpkit.reuse_datasets():  # nested: the same cache
            assert sharpkit.load_dataset("synthetic", options={"classes": 3}) is a
        other = sharpkit.load_dataset("synthetic", options={"classes": 5})
        sub = sharpkit.load_dataset("synthetic", options={"classes": 3}, subset=30)
    assert other is not a
    assert sub is not a
    assert len(sub.train) == 30
    assert sharpkit.load_dataset("synthetic", options={"classes": 3}) is not a


def test_passing_the_full_dataset_for_a_subset_trained_model_warns(tmp_path) -> None:
    import sharpkit.builtin._models as models

    net = models.build_mlp_bn(input_shape=(16,), num_classes=4, depth=1, width=4)
    meta = sharpkit.CheckpointMeta(
        model="mlp-bn",
        model_options={"depth": 1, "width": 4},
        dataset="synthetic",
        dataset_options={"subset": 64},
        seed=0,
    )
    path = sharpkit.save_checkpoint(tmp_path / "a.pt", net, meta)
    full = sharpkit.load_dataset("synthetic")
    with pytest.warns(sharpkit.SharpkitWarning, match="64-example subset"):
        a = sharpkit.measure(path, full, ["spectral"])
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", sharpkit.SharpkitWarning)
        b = sharpkit.measure(path, None, ["spectral"])  # the training subset itself
    assert b.attrs["samples"] == 64
    assert a.attrs["samples"] == 512


def test_stored_metrics_carry_their_specs_label_and_unit(reg, tmp_path) -> None:
    """Labels and units come from each MetricSpec, a plugin's included."""
    import sharpkit.builtin.metrics as builtin_metrics
    from sharpkit.store import ResultStore

    reg.register_plugin(builtin_metrics, "builtin.metrics")
    net = tiny_model()
    m = sharpkit.measure(
        net, data(), ["spectral", "fisher-rao"], store=tmp_path / "s.zarr", registry=reg
    )
    run = ResultStore(tmp_path / "s.zarr").run(m.run_id)
    assert run.metric_labels["fisher-rao"] == {
        "long_name": "Fisher-Rao norm ‖θ‖_fr",
        "units": "nats^(1/2)",
    }
    assert run.metric_labels["spectral"]["units"] == "loss / parameter²"
    rows = sharpkit.open_results(tmp_path / "s.zarr", as_frame=False)
    units = {r["metric"]: r["unit"] for r in rows}
    assert units == {"spectral": "loss / parameter²", "fisher-rao": "nats^(1/2)"}


class Counted:
    """Test metric that counts its runs (to show what was computed)."""

    runs = 0

    def __init__(self, k: int = 1) -> None:
        if k < 1:
            raise sharpkit.ConfigError(f"k must be >= 1, got {k}")

    def compute(self, ctx):
        Counted.runs += 1
        return sharpkit.MetricResult(value=float(Counted.runs))


@pytest.fixture
def counted(reg) -> Registry:
    Counted.runs = 0
    spec = sharpkit.MetricSpec(
        name="counted",
        factory=Counted,
        description="x",
        options=(sharpkit.Option(name="k", type=int, default=1),),
    )

    class Extra:
        @sharpkit.hookimpl
        def sharpkit_register_metrics(self):
            return [spec]

    reg.register_plugin(Extra(), "extra", distribution="extra-dist")
    return reg


def test_a_failing_metric_does_not_lose_the_others(counted, tmp_path) -> None:
    """Issue 14 item 6: one failure took every metric of the call with it."""
    net = tiny_model()
    store = tmp_path / "s.zarr"
    with pytest.raises(sharpkit.MeasurementError) as info:
        sharpkit.measure(
            net,
            data(),
            ["raises", "mean-loss", "counted"],
            store=store,
            registry=counted,
        )
    err = info.value
    msg = str(err)
    assert "\n" not in msg
    assert "metric 'raises' failed" in msg
    assert "ZeroDivisionError" in msg
    assert "mean-loss, counted were measured and stored in run" in msg
    assert list(err.measurement) == ["mean-loss", "counted"]  # measured after it
    assert set(err.failures) == {"raises"}
    assert isinstance(err.failures["raises"], sharpkit.PluginRunError)
    assert err.measurement.run_id in msg
    # stored: measuring again reuses both and recomputes nothing
    again = sharpkit.measure(
        net, data(), ["mean-loss", "counted"], store=store, registry=counted
    )
    assert set(again.reused) == {"mean-loss", "counted"}
    assert Counted.runs == 1


def test_every_failure_is_named(counted) -> None:
    with pytest.raises(sharpkit.MeasurementError, match="nothing was measured") as info:
        sharpkit.measure(
            tiny_model(), data(), ["raises", "wrong-type"], registry=counted
        )
    assert set(info.value.failures) == {"raises", "wrong-type"}
    assert "metrics 'raises', 'wrong-type' failed" in str(info.value)
    assert len(info.value.measurement) == 0


def test_bad_metric_options_fail_before_anything_is_computed(counted) -> None:
    with pytest.raises(sharpkit.ConfigError, match="k must be >= 1"):
        sharpkit.measure(
            tiny_model(),
            data(),
            ["mean-loss", "counted"],
            options={"counted": {"k": 0}},
            registry=counted,
        )
    assert Counted.runs == 0


@pytest.mark.parametrize(
    "loss",
    [
        torch.nn.CrossEntropyLoss(reduction="sum"),
        lambda out, y: torch.nn.functional.cross_entropy(out, y, reduction="sum") / 7,
    ],
    ids=["sum", "scaled-sum"],
)
def test_a_loss_that_sums_over_the_batch_is_refused(reg, loss) -> None:
    """Issue 14 item 3: the value scaled with batch_size (0.5x at 50, ...)."""
    with pytest.raises(sharpkit.ConfigError, match="sums over the batch") as info:
        sharpkit.measure(tiny_model(), data(), ["mean-loss"], loss=loss, registry=reg)
    assert "reduction='mean'" in str(info.value)
    assert "\n" not in str(info.value)


def test_weighted_mean_losses_are_accepted(reg) -> None:
    """A weighted mean is not a sum: class weights and ignore_index pass."""
    x, y = data()
    for loss in (
        torch.nn.CrossEntropyLoss(
            weight=torch.tensor([1.0, 5.0, 0.2], dtype=torch.float64)
        ),
        torch.nn.CrossEntropyLoss(ignore_index=1),
    ):
        m = sharpkit.measure(
            tiny_model(), (x, y), ["mean-loss"], loss=loss, registry=reg
        )
        assert math.isfinite(m["mean-loss"].value)


def test_batch_size_changes_the_value_only_with_batch_statistics(reg) -> None:
    """Issue 14 item 4: the docstring said batch_size never changes the value.

    Batches are weighted by size, so in eval mode it does not (to rounding);
    with batch statistics each batch normalises by its own, so it does.
    """
    import sharpkit.builtin.metrics as builtin_metrics

    reg.register_plugin(builtin_metrics, "builtin.metrics")
    x, y = data(48)

    def lam(bn_mode: str, batch_size: int) -> float:
        m = sharpkit.measure(
            tiny_model(), (x, y), ["spectral"], bn_mode=bn_mode,
            batch_size=batch_size, tol=1e-8, registry=reg,
        )  # fmt: skip
        return m["spectral"].value

    assert lam("eval", 16) == pytest.approx(lam("eval", 48), rel=1e-7)
    assert abs(lam("train", 16) - lam("train", 48)) > 1e-3 * lam("train", 48)
    assert "batch statistics" in sharpkit.measure.__doc__
    assert "re-split" in sharpkit.measure.__doc__
