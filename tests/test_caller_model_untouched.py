"""Every public entry point leaves the caller's model exactly as it was.

Parameters, buffers (BN running statistics and ``num_batches_tracked``) and every
module's ``training`` flag are compared bit for bit, for every built-in metric in
both batch-norm modes and for the probes. The bug this guards against:
``measure(..., bn_mode="train")`` once updated the caller's running statistics.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

import sharpkit
from sharpkit.registry import get_registry

BUILTIN_METRICS = sorted(
    n
    for n in get_registry().names("metric")
    if get_registry().provider("metric", n).distribution == "sharpkit"
)
# Small budgets: the point is what each metric does to the model, not its value.
OPTIONS: dict[str, dict[str, Any]] = {
    "adaptive": {"steps": 2, "samples": 2},
    "epsilon": {"steps": 2},
    "density": {"probes": 2, "steps": 8},
    "frobenius": {"probes": 2},
    "trace": {"probes": 2},
}


def bn_net(*, training: bool) -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.1), nn.Linear(8, 3)
    )
    with torch.no_grad():  # non-trivial running statistics
        net.train()
        for _ in range(3):
            net(torch.randn(32, 6))
    net.train(training)
    net[3].eval()  # one flag differing from the rest must survive too
    return net


def snapshot(net: nn.Module) -> dict[str, Any]:
    return {
        "params": {k: v.detach().clone() for k, v in net.named_parameters()},
        "buffers": {k: v.detach().clone() for k, v in net.named_buffers()},
        "flags": [m.training for m in net.modules()],
        "versions": {k: v._version for k, v in net.named_buffers()},
    }


def assert_same(before: dict[str, Any], net: nn.Module) -> None:
    after = snapshot(net)
    assert after["flags"] == before["flags"]
    for group in ("params", "buffers"):
        assert after[group].keys() == before[group].keys()
        for name, value in before[group].items():
            # bit-identical, not close: torch.equal on the same dtype
            assert after[group][name].dtype == value.dtype, name
            assert torch.equal(after[group][name], value), f"{group} {name} changed"


def xy(n: int = 48) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return torch.randn(n, 6, generator=gen), torch.randint(0, 3, (n,), generator=gen)


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("bn_mode", ["eval", "train"])
@pytest.mark.parametrize("metric", BUILTIN_METRICS)
def test_measure_leaves_the_model_untouched(
    metric: str, bn_mode: str, training: bool
) -> None:
    net = bn_net(training=training)
    before = snapshot(net)
    sharpkit.measure(
        net,
        xy(),
        [metric],
        bn_mode=bn_mode,
        batch_size=16,
        options={metric: OPTIONS.get(metric, {})},
    )
    assert_same(before, net)


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize(
    ("probe", "options"),
    [
        ("interpolate", {"alpha": "0:1:3"}),
        ("direction", {"alpha": "-1:1:3"}),
        ("plane", {"x": "-1:1:2", "y": "-1:1:2"}),
        ("plane-between", {"x": "0:1:2", "y": "-1:1:2"}),
    ],
)
def test_probes_leave_the_models_untouched(
    probe: str, options: dict[str, Any], training: bool
) -> None:
    x, y = xy(64)

    class Data:
        name = "inline"
        input_shape = (6,)
        num_classes = 3
        train = sharpkit.DataSplit(x, y)
        test = sharpkit.DataSplit(x[:16], y[:16])

    n = get_registry().get("probe", probe).n_models
    nets = [bn_net(training=training) for _ in range(n)]
    if n == 2:
        with torch.no_grad():
            for p in nets[1].parameters():
                p.add_(0.1)
    before = [snapshot(m) for m in nets]
    sharpkit.probe(probe, nets, Data(), options=options, batch_size=16)
    for b, m in zip(before, nets, strict=True):
        assert_same(b, m)
