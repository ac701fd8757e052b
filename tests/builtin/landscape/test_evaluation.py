"""Batch-norm re-estimation against direct statistics; seeded evaluation subsets."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from landscape_cases import bn_mlp, classification_data, context

from sharpkit.builtin._landscape.evaluation import reestimate_bn
from sharpkit.builtin._landscape.probes import Interpolate


def test_reestimate_bn_single_and_several_batches() -> None:
    net = bn_mlp(5)
    x = classification_data(60, 4).inputs
    n = reestimate_bn(net, [x])
    assert n == 2
    h = net[0](x)
    bn = net[1]
    assert isinstance(bn, torch.nn.BatchNorm1d)
    # One batch: the sample mean and unbiased variance (float64 rounding).
    torch.testing.assert_close(bn.running_mean, h.mean(0), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(
        bn.running_var, h.var(0, unbiased=True), rtol=1e-12, atol=1e-12
    )
    assert bn.momentum == 0.1  # restored
    assert not bn.training
    # Three batches: the equal-weight average of per-batch moments (momentum=None).
    chunks = torch.tensor_split(x, 3)
    reestimate_bn(net, chunks)
    hs = [net[0](c) for c in chunks]
    torch.testing.assert_close(
        bn.running_mean,
        torch.stack([hc.mean(0) for hc in hs]).mean(0),
        rtol=1e-12,
        atol=1e-12,
    )
    torch.testing.assert_close(
        bn.running_var,
        torch.stack([hc.var(0, unbiased=True) for hc in hs]).mean(0),
        rtol=1e-12,
        atol=1e-12,
    )
    assert int(bn.num_batches_tracked) == 3


def test_reestimate_bn_keeps_dropout_off_and_modes() -> None:
    net = torch.nn.Sequential(
        torch.nn.Linear(4, 8), torch.nn.Dropout(0.9), torch.nn.BatchNorm1d(8)
    ).double()
    net.eval()
    x = classification_data(32, 5).inputs
    reestimate_bn(net, [x])
    # Dropout stayed in eval mode: the statistics are those of the plain Linear.
    torch.testing.assert_close(
        net[2].running_mean, net[0](x).mean(0), rtol=1e-12, atol=1e-12
    )
    assert not any(m.training for m in net.modules())
    assert reestimate_bn(torch.nn.Linear(2, 2), [x[:, :2]]) == 0


def test_interpolate_bn_reestimation_matches_direct_statistics() -> None:
    """At each α the probe's BN statistics are the pre-BN activation moments."""
    m1, m2 = bn_mlp(3), bn_mlp(4)
    train, test = classification_data(64, 2), classification_data(16, 3)
    # bn_samples=0 (all), one batch of all 64: running stats are exactly the sample
    # mean and unbiased variance of the pre-BN activations of these 64 inputs.
    probe = Interpolate(
        alpha="-0.5,0,0.5,1,1.5", bn_samples=0, bn_batch_size=64, eval_samples=0
    )
    result = probe.run(context([m1, m2], train, test))
    s1, s2 = m1.state_dict(), m2.state_dict()
    x = train.inputs
    for i, a in enumerate(result.coords["alpha"]):
        p = {
            k: (1 - a) * s1[k] + a * s2[k]
            for k in s1
            if "running" not in k and "num" not in k
        }
        h1 = x @ p["0.weight"].T + p["0.bias"]
        mu1, var1 = h1.mean(0), h1.var(0, unbiased=True)
        n1 = (h1 - mu1) / torch.sqrt(h1.var(0, unbiased=False) + 1e-5) * p[
            "1.weight"
        ] + p["1.bias"]
        h2 = torch.relu(n1) @ p["3.weight"].T + p["3.bias"]
        mu2, var2 = h2.mean(0), h2.var(0, unbiased=True)

        def bn_eval(
            h: torch.Tensor,
            mu: torch.Tensor,
            var: torch.Tensor,
            w: str,
            b: str,
            p: dict[str, torch.Tensor] = p,
        ) -> torch.Tensor:
            return (h - mu) / torch.sqrt(var + 1e-5) * p[w] + p[b]

        z = torch.relu(bn_eval(h1, mu1, var1, "1.weight", "1.bias"))
        z = torch.relu(
            bn_eval(z @ p["3.weight"].T + p["3.bias"], mu2, var2, "4.weight", "4.bias")
        )
        out = z @ p["6.weight"].T + p["6.bias"]
        loss = float(torch.nn.functional.cross_entropy(out, train.targets))
        # Hand-written BN vs torch's kernels in float64: 1e-10 relative.
        assert result.arrays["train_loss"][i] == pytest.approx(loss, rel=1e-10)
    assert result.attrs["bn_samples"] == 64
    assert result.attrs["bn_batches"] == 1


def test_interpolate_deterministic_and_subsets_seeded() -> None:
    train, test = classification_data(300, 0), classification_data(100, 1)

    def run(seed: int) -> dict[str, np.ndarray]:
        ctx = context([bn_mlp(1), bn_mlp(2)], train, test, seed=seed)
        return dict(
            Interpolate(alpha="-1:2:4", eval_samples=50, bn_samples=40).run(ctx).arrays
        )

    a, b, c = run(0), run(0), run(1)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert not np.array_equal(a["train_loss"], c["train_loss"])
