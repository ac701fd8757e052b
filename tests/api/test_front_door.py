"""The front door: every job's options parsed once, names classified once, one executor.

These count calls, so they fail when a second parse or classification creeps back
in (before the front door a metric's options were parsed twice, a model name
classified up to seven times, a dataset name up to four).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

import sharpkit
import sharpkit.api.models as models_module
import sharpkit.api.resolve as resolve
from sharpkit.api.executor import Executor
from sharpkit.api.job import Inputs, Selection
from sharpkit.builtin import _models as models
from sharpkit.registry import Registry


def _count(monkeypatch: pytest.MonkeyPatch, owner: object, name: str) -> list[object]:
    """Record every call of ``owner.name`` (still calling it)."""
    calls: list[object] = []
    real = getattr(owner, name)

    def counted(*args: object, **kwargs: object) -> object:
        calls.append(args[-1] if isinstance(owner, type) else args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, counted)
    return calls


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    net = models.build_mlp_bn(input_shape=(16,), num_classes=4, depth=1, width=4)
    meta = sharpkit.CheckpointMeta(
        model="mlp-bn",
        model_options={"depth": 1, "width": 4},
        dataset="synthetic",
        seed=0,
        extra={"input_shape": [16], "num_classes": 4},
    )
    return sharpkit.save_checkpoint(tmp_path / "a.pt", net, meta)


def test_a_metrics_options_are_parsed_once(
    monkeypatch: pytest.MonkeyPatch, checkpoint: Path
) -> None:
    parsed = _count(monkeypatch, Registry, "parse_options")
    m = sharpkit.measure(
        checkpoint,
        metrics=["spectral"],
        options={"spectral": {"top_k": 2}},
        samples=64,
    )
    assert m["spectral"].converged
    # each call records the options it parsed: the metric's exactly once (the
    # model's and the dataset's once each as well)
    assert [c for c in parsed if c == {"top_k": 2}] == [{"top_k": 2}]


def test_a_model_and_a_data_name_are_classified_once(
    monkeypatch: pytest.MonkeyPatch, checkpoint: Path
) -> None:
    kinds = _count(monkeypatch, models_module, "model_kind")
    sources = _count(monkeypatch, resolve, "is_data_source")
    sharpkit.measure(checkpoint, "synthetic", metrics=["spectral"], samples=64)
    assert kinds == ["mlp-bn"]
    assert sources == ["synthetic"]


def test_train_classifies_its_model_once(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    train_module = sys.modules["sharpkit.api.train"]  # the name is the function
    kinds = _count(monkeypatch, models_module, "model_kind")
    kinds_here = _count(monkeypatch, train_module, "model_kind")
    sharpkit.train(
        "mlp-bn",
        "synthetic",
        lr=0.1,
        batch_size=64,
        epochs=1,
        model_options={"depth": 1, "width": 4},
        out_dir=tmp_path / "run",
    )
    assert kinds + kinds_here == ["mlp-bn"]


def test_the_selection_is_the_one_place_examples_are_cut() -> None:
    split = sharpkit.DataSplit(torch.zeros(10, 2), torch.zeros(10, dtype=torch.long))
    assert len(Selection(samples=3).pick(split)) == 3
    assert len(Selection().pick(split)) == 10  # default 2048 > 10: all of them
    assert len(Selection().pick(split, default=4)) == 4
    assert len(Selection().pick(split, default=None)) == 10


def test_inputs_go_through_as_one_value(checkpoint: Path) -> None:
    from sharpkit.api.job import Analysis
    from sharpkit.api.measure import run_measure

    inputs = Inputs(data="synthetic", seed=3)
    analysis = Analysis(selection=Selection(samples=32))
    typed = run_measure(checkpoint, ["spectral"], inputs, analysis)
    keywords = sharpkit.measure(
        checkpoint, "synthetic", metrics=["spectral"], seed=3, samples=32
    )
    assert typed.attrs == keywords.attrs
    assert typed["spectral"].value == keywords["spectral"].value


def test_the_executor_refuses_a_factory_without_the_kinds_method() -> None:
    class Plugin:
        @sharpkit.hookimpl
        def sharpkit_register_probes(self):
            return [
                sharpkit.ProbeSpec(
                    name="nothing", factory=lambda: object(), description="x"
                )
            ]

    reg = Registry(entry_points=False)
    reg.register_plugin(Plugin(), "inline")
    ex = Executor(reg)
    call = ex.call("probe", "nothing")
    with pytest.raises(sharpkit.PluginContractError, match="without run"):
        ex.create(call)


def test_a_plugin_failing_at_work_is_a_run_error_not_a_load_error() -> None:
    def broken(**kwargs: object) -> object:
        raise ZeroDivisionError("division by zero")

    class Plugin:
        @sharpkit.hookimpl
        def sharpkit_register_metrics(self):
            return [sharpkit.MetricSpec(name="broken", factory=broken, description="x")]

    reg = Registry(entry_points=False)
    reg.register_plugin(Plugin(), "inline")
    with pytest.raises(sharpkit.PluginRunError) as info:
        Executor(reg).create(Executor(reg).call("metric", "broken"))
    assert not isinstance(info.value, sharpkit.PluginLoadError)
    assert isinstance(info.value, sharpkit.PluginError)
    assert info.value.phase == "being created"
    assert "ZeroDivisionError: division by zero" in str(info.value)
