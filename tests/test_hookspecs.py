"""Each hook of the contract, exercised through a real registry (one test per hook)."""

from __future__ import annotations

import pytest
import typer
from typer.testing import CliRunner

import sharpkit
from sharpkit.interfaces import DataSplit
from sharpkit.registry import Registry


def registry_with(plugin: object) -> Registry:
    reg = Registry(entry_points=False)
    assert reg.register_plugin(
        plugin, "inline", distribution="inline-dist", version="1"
    )
    return reg


def test_hook_sharpkit_register_models() -> None:
    import torch

    def factory(*, input_shape, num_classes, hidden: int = 3):
        return torch.nn.Sequential(
            torch.nn.Flatten(),
            torch.nn.Linear(int(torch.tensor(input_shape).prod()), hidden),
            torch.nn.Linear(hidden, num_classes),
        )

    class Plugin:
        @sharpkit.hookimpl
        def sharpkit_register_models(self):
            return [
                sharpkit.ModelSpec(
                    name="tiny",
                    factory=factory,
                    description="tiny model",
                    options=(sharpkit.Option(name="hidden", type=int, default=3),),
                )
            ]

    reg = registry_with(Plugin())
    net = sharpkit.build_model(
        "tiny", input_shape=(2, 2), num_classes=5, options={"hidden": "7"}, registry=reg
    )
    assert net(torch.zeros(1, 2, 2)).shape == (1, 5)
    assert net[1].out_features == 7


def test_hook_sharpkit_register_models_prefix() -> None:
    seen = {}

    def factory(*, input_shape, num_classes, variant):
        import torch

        seen["variant"] = variant
        return torch.nn.Linear(input_shape[0], num_classes)

    class Plugin:
        @sharpkit.hookimpl
        def sharpkit_register_models(self):
            return [
                sharpkit.ModelSpec(
                    name="zoo", factory=factory, description="x", prefix=True
                )
            ]

    reg = registry_with(Plugin())
    sharpkit.build_model("zoo:big-one", input_shape=(3,), num_classes=2, registry=reg)
    assert seen["variant"] == "big-one"
    with pytest.raises(sharpkit.ConfigError, match="zoo:<name>"):
        reg.get("model", "zoo")


def test_hook_sharpkit_register_datasets() -> None:
    import torch

    class DS:
        name = "four"
        input_shape = (1,)
        num_classes = 2

        def __init__(self, n: int) -> None:
            x = torch.arange(float(n))[:, None]
            self.train = DataSplit(x, (x[:, 0] > n / 2).long())
            self.test = self.train

    def factory(*, root, download, subset, seed, size: int = 4):
        return DS(subset or size)

    class Plugin:
        @sharpkit.hookimpl
        def sharpkit_register_datasets(self):
            return [
                sharpkit.DatasetSpec(
                    name="four",
                    factory=factory,
                    description="four points",
                    options=(sharpkit.Option(name="size", type=int, default=4),),
                )
            ]

    reg = registry_with(Plugin())
    ds = sharpkit.load_dataset("four", options={"size": 6}, registry=reg)
    assert len(ds.train) == 6
    assert isinstance(ds, sharpkit.Dataset)


def test_hook_sharpkit_register_trainers() -> None:
    import numpy as np

    class NoTrain:
        def fit(self, model, data, config, /, *, progress=None):
            return sharpkit.TrainResult(
                checkpoint=None,
                curves={"epoch": np.arange(1, config.epochs + 1)},
                final={"epochs": float(config.epochs)},
                seconds=0.0,
            )

    class Plugin:
        @sharpkit.hookimpl
        def sharpkit_register_trainers(self):
            return [sharpkit.TrainerSpec(name="noop", factory=NoTrain, description="x")]

    reg = registry_with(Plugin())
    trainer = reg.create("trainer", "noop")
    assert isinstance(trainer, sharpkit.Trainer)


def test_hook_sharpkit_register_metrics() -> None:
    class Count:
        def compute(self, ctx):
            return sharpkit.MetricResult(value=float(len(ctx.data)))

    class Plugin:
        @sharpkit.hookimpl
        def sharpkit_register_metrics(self):
            return [sharpkit.MetricSpec(name="count", factory=Count, description="x")]

    reg = registry_with(Plugin())
    assert isinstance(reg.create("metric", "count"), sharpkit.Metric)
    assert reg.provider("metric", "count").distribution == "inline-dist"


def test_hook_sharpkit_register_probes() -> None:
    import numpy as np

    class Flat:
        def run(self, ctx):
            return sharpkit.ProbeResult(
                coords={"alpha": np.zeros(1)}, arrays={"loss": np.zeros(1)}
            )

    class Plugin:
        @sharpkit.hookimpl
        def sharpkit_register_probes(self):
            return [
                sharpkit.ProbeSpec(
                    name="flat", factory=Flat, description="x", n_models=2
                )
            ]

    reg = registry_with(Plugin())
    assert reg.get("probe", "flat").n_models == 2
    assert isinstance(reg.create("probe", "flat"), sharpkit.Probe)


def test_hook_sharpkit_register_commands() -> None:
    class Plugin:
        @sharpkit.hookimpl
        def sharpkit_register_commands(self, app):
            @app.command("greet")
            def greet(name: str = "world") -> None:
                print(f"hi {name}")

    reg = registry_with(Plugin())
    app = typer.Typer()
    app.command("other")(lambda: None)
    assert reg.register_commands(app, reserved=("other",)) == ["greet"]
    result = CliRunner().invoke(app, ["greet", "--name", "you"])
    assert result.stdout.strip() == "hi you"
