"""The worked examples of docs/plugins/writing.md pass their conformance suites.

The guide includes these files as they are (pymdownx.snippets), so what a reader
copies is what runs here.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar

import pytest
import torch

import sharpkit
from sharpkit.registry import Registry
from sharpkit.testing import (
    DatasetContract,
    ModelContract,
    ProbeContract,
    TrainerContract,
)

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "docs" / "examples"


def example(name: str) -> ModuleType:
    path = EXAMPLES / f"{name}.py"
    module_name = f"sharpkit_docs_example_{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


zoo_model = example("zoo_model")
zoo_dataset = example("zoo_dataset")
zoo_probe = example("zoo_probe")
zoo_trainer = example("zoo_trainer")


class TestTanhMlpContract(ModelContract):
    spec = zoo_model.TANH_MLP
    options: ClassVar[dict[str, Any]] = {"width": 8}
    input_shape = (8,)
    num_classes = 3


class TestBlobsContract(DatasetContract):
    spec = zoo_dataset.BLOBS


class TestGradientLineContract(ProbeContract):
    spec = zoo_probe.GRADIENT_LINE
    options: ClassVar[dict[str, Any]] = {"alpha": "-1:1:5"}


class TestFullBatchGDContract(TrainerContract):
    spec = zoo_trainer.FULL_BATCH_GD
    supports_resume = False
    config: ClassVar[dict[str, Any]] = {"lr": 0.2}


def test_guide_includes_every_example_and_links_it() -> None:
    text = (ROOT / "docs" / "plugins" / "writing.md").read_text()
    for name in ("zoo_model", "zoo_dataset", "zoo_probe", "zoo_trainer"):
        assert f'--8<-- "docs/examples/{name}.py"' in text
        assert f"(../examples/{name}.py)" in text
    for link in re.findall(r"\]\(([^)#]+)", text):
        if not link.startswith("http"):
            assert (ROOT / "docs" / "plugins" / link).resolve().exists(), link


@pytest.fixture
def zoo() -> Registry:
    reg = Registry(warn=False)
    for module in (zoo_model, zoo_dataset, zoo_probe, zoo_trainer):
        assert reg.register_plugin(module, module.__name__, distribution="my-zoo")
    return reg


def test_the_example_plugins_train_measure_and_probe(tmp_path: Path, zoo) -> None:
    run = sharpkit.train(
        "tanh-mlp",
        "blobs",
        trainer="full-batch-gd",
        lr=0.5,
        batch_size=256,
        epochs=30,
        model_options={"width": 8},
        out_dir=tmp_path,
        registry=zoo,
    )
    assert run.final["train_accuracy"] > 0.9
    assert run.checkpoint is not None
    # The checkpoint names the registered model and dataset: nothing else needed.
    m = sharpkit.measure(run.checkpoint, metrics=["spectral"], registry=zoo)
    assert m.attrs["model"] == "tanh-mlp"
    assert m.attrs["dataset"] == "blobs"
    net, _ = sharpkit.load_model(run.checkpoint, registry=zoo)
    ds = sharpkit.load_dataset("blobs", registry=zoo)
    x, y = ds.train.inputs, ds.train.targets
    params = dict(net.named_parameters())

    def loss(flat: torch.Tensor) -> torch.Tensor:
        chunks, i = {}, 0
        for name, p in params.items():
            chunks[name] = flat[i : i + p.numel()].view_as(p)
            i += p.numel()
        out = torch.func.functional_call(net, chunks, (x.double(),))
        return torch.nn.functional.cross_entropy(out, y)

    net.double()
    flat = torch.cat([p.detach().reshape(-1) for p in params.values()])
    top = torch.linalg.eigvalsh(torch.func.hessian(loss)(flat)).max().item()
    # float32 analysis of a float64 ground truth: Lanczos stops at tol=1e-3 and
    # its residual bound certifies the value, float32 rounding adds ~1e-6.
    assert m["spectral"].value == pytest.approx(top, rel=2e-3)
    line = sharpkit.probe(
        "gradient-line", [run.checkpoint], options={"alpha": "-1:1:5"}, registry=zoo
    )
    assert line.arrays["train_loss"].shape == (5,)
    assert line.arrays["train_loss"][2] == pytest.approx(run.final["train_loss"])
