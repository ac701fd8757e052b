"""Probes and perturbation metrics restricted to one block (``-o block=NAME``).

Ground truth: the same loss evaluated by hand on a copy of the model whose
parameters outside the block are left at θ (float64 model: the probe and the
hand evaluation sum the same float64 terms in the same batches, so they agree
to 1e-12 relative, as the landscape probes' own tests hold them).
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import sharpkit
from sharpkit._data import evaluate
from sharpkit.builtin._landscape.geometry import filter_normalized_direction
from sharpkit.builtin._landscape.probes import Direction, Interpolate, Plane
from sharpkit.builtin.perturbation import AdaptiveSharpness, EpsilonSharpness
from sharpkit.cli import app
from sharpkit.errors import ConfigError
from sharpkit.interfaces import AnalysisContext, DataSplit, ProbeContext

F64 = torch.float64
CE = nn.functional.cross_entropy


def _net(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 5), nn.ReLU(),
        nn.Linear(5, 3),
    ).to(F64)  # fmt: skip
    with torch.no_grad():
        net[1].running_mean.normal_(0, 0.3)
        net[1].running_var.uniform_(0.5, 1.5)
    return net.eval()


def _data(n: int, seed: int) -> DataSplit:
    gen = torch.Generator().manual_seed(seed)
    return DataSplit(
        torch.randn(n, 4, generator=gen, dtype=F64),
        torch.randint(0, 3, (n,), generator=gen),
    )


def _ctx(models: list[nn.Module], train: DataSplit, seed: int = 0) -> ProbeContext:
    return ProbeContext(
        models=models, loss_fn=CE, train_data=train, batch_size=7,
        device=torch.device("cpu"), seed=seed,
    )  # fmt: skip


def _loss(model: nn.Module, data: DataSplit) -> float:
    loss, _ = evaluate(model, data, CE, batch_size=100, device=torch.device("cpu"))
    return loss


def test_direction_moves_only_the_block() -> None:
    model, train = _net(0), _data(30, 1)
    ctx = _ctx([model], train, seed=3)
    result = Direction(alpha="-1:1:5", eval_samples=0, test=False, block="3").run(ctx)
    theta = [p.detach().clone() for p in model.parameters()]
    d = filter_normalized_direction(theta, ctx.generator("direction"))
    names = [n for n, _ in model.named_parameters()]
    for i, a in enumerate(result.coords["alpha"]):
        hand = copy.deepcopy(model)
        with torch.no_grad():
            for n, p, t, di in zip(names, hand.parameters(), theta, d, strict=True):
                p.copy_(t + a * di if n.startswith("3.") else t)
        assert result.arrays["train_loss"][i] == pytest.approx(
            _loss(hand, train), rel=1e-12
        )
    # a filter-normalised direction has the norms of θ's filters: on the
    # block (one weight matrix, its bias zeroed) ‖d‖ = ‖W_3‖
    w = model[3].weight.detach()
    assert result.summary["direction_norm"] == pytest.approx(float(w.norm()), rel=1e-12)
    assert result.attrs["block"] == "3"
    assert result.attrs["block_params"] == ["3.weight", "3.bias"]
    assert result.attrs["block_size"] == 6 * 5 + 5


def test_interpolate_block_keeps_the_rest_at_the_first_model() -> None:
    m1, m2, train = _net(0), _net(1), _data(30, 2)
    ctx = _ctx([m1, m2], train)
    probe = Interpolate(alpha="0,0.5,1", eval_samples=0, test=False,
                        bn_reestimate=False, block="last=^5\\.")  # fmt: skip
    result = probe.run(ctx)
    for i, a in enumerate(result.coords["alpha"]):
        hand = copy.deepcopy(m1)
        with torch.no_grad():
            for n, p in hand.named_parameters():
                if n.startswith("5."):
                    q1 = dict(m1.named_parameters())[n]
                    q2 = dict(m2.named_parameters())[n]
                    p.copy_((1 - a) * q1 + a * q2)
            # without re-estimation the buffers are interpolated, as unrestricted
            for (_, b), b1, b2 in zip(
                hand.named_buffers(), m1.buffers(), m2.buffers(), strict=True
            ):
                if b.is_floating_point():
                    b.copy_((1 - a) * b1 + a * b2)
        assert result.arrays["train_loss"][i] == pytest.approx(
            _loss(hand, train), rel=1e-12
        )
    step = [m2[5].weight - m1[5].weight, m2[5].bias - m1[5].bias]
    dist = float(torch.sqrt(sum((s.detach() ** 2).sum() for s in step)))
    assert result.summary["distance"] == pytest.approx(dist, rel=1e-12)
    assert result.attrs["block_name"] == "last"


def test_plane_block_and_bad_block() -> None:
    model, train = _net(0), _data(20, 3)
    result = Plane(x="-1:1:3", y="0,1", test=False, block="0").run(_ctx([model], train))
    w = model[0].weight.detach()
    # both directions lie in the block: each has the norm of its filters
    assert result.summary["norm_x"] == pytest.approx(float(w.norm()), rel=1e-12)
    assert result.summary["norm_y"] == pytest.approx(float(w.norm()), rel=1e-12)
    with pytest.raises(ConfigError, match="names no module with parameters"):
        Direction(alpha="0,1", block="fc9").run(_ctx([model], train))


def _actx(model: nn.Module, data: DataSplit) -> AnalysisContext:
    return AnalysisContext(
        model=model, loss_fn=CE, data=data, batch_size=16, seed=0,
        device=torch.device("cpu"), dtype=F64,
    )  # fmt: skip


@pytest.mark.parametrize(
    "metric",
    [
        lambda block: EpsilonSharpness(epsilon=1e-2, steps=3, block=block),
        lambda block: AdaptiveSharpness(kind="average", samples=4, block=block),
    ],
    ids=["epsilon", "adaptive"],
)
def test_perturbation_metrics_move_only_the_block(metric) -> None:
    model, data = _net(0), _data(40, 4)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    moved: dict[str, bool] = {}
    orig = model.forward

    def spy(x: torch.Tensor) -> torch.Tensor:
        for n, p in model.named_parameters():
            moved[n] = moved.get(n, False) or not torch.equal(p.detach(), before[n])
        return orig(x)

    model.forward = spy  # type: ignore[method-assign]
    result = metric("3").compute(_actx(model, data))
    assert result.attrs["block_params"] == ["3.weight", "3.bias"]
    assert {n for n, m in moved.items() if m} == {"3.weight", "3.bias"}
    for n, p in model.named_parameters():  # θ restored exactly
        assert torch.equal(p.detach(), before[n])


def _checkpoint(tmp_path: Path) -> tuple[str, str]:
    """A small mlp-bn checkpoint on synthetic data, and the path of its first layer."""
    import sharpkit.builtin._models as models

    meta = sharpkit.CheckpointMeta(
        model="mlp-bn", model_options={"depth": 2, "width": 6}, dataset="synthetic"
    )
    torch.manual_seed(0)
    net = models.build_mlp_bn(input_shape=(16,), num_classes=4, depth=2, width=6)
    path = tmp_path / "final.pt"
    sharpkit.save_checkpoint(path, net, meta)
    first = next(iter(net.named_parameters()))[0].rsplit(".", 1)[0]
    return str(path), first


def test_probe_block_through_api_and_key(tmp_path: Path) -> None:
    path, layer = _checkpoint(tmp_path)
    kw = {"seed": 0, "store": tmp_path / "r.zarr"}
    whole = sharpkit.probe("direction", [path], options={"alpha": "-1:1:3"}, **kw)
    opts = {"alpha": "-1:1:3", "block": layer}
    block = sharpkit.probe("direction", [path], options=opts, **kw)
    # another block is another key: not the stored whole-model result
    assert block.attrs["key"] != whole.attrs["key"]
    assert block.attrs["block"] == layer
    assert not np.array_equal(whole.arrays["train_loss"], block.arrays["train_loss"])
    again = sharpkit.probe("direction", [path], options=opts, **kw)
    assert again.attrs["key"] == block.attrs["key"]
    np.testing.assert_array_equal(
        again.arrays["train_loss"], block.arrays["train_loss"]
    )


def test_probe_block_cli_one_line_error(tmp_path: Path) -> None:
    path, layer = _checkpoint(tmp_path)
    runner = CliRunner()
    ok = runner.invoke(app, ["probe", "direction", path, "--no-store", "--json",
                             "-o", "alpha=-1:1:3", "-o", f"block={layer}"])  # fmt: skip
    assert ok.exit_code == 0, ok.stderr
    assert f'"block": "{layer}"' in ok.stdout
    bad = runner.invoke(app, ["probe", "direction", path, "--no-store",
                              "-o", "block=nothing"])  # fmt: skip
    assert bad.exit_code != 0
    lines = [line for line in bad.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, bad.stderr
    assert "names no module with parameters" in lines[0]
