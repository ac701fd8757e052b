"""The four probes against closed forms and hand-built models; registry and API."""

from __future__ import annotations

import copy
import importlib
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch
from landscape_cases import (
    CPU,
    F64,
    bn_mlp,
    classification_data,
    context,
    linear,
    mse,
    quad_coeffs,
    regression_data,
)

import sharpkit
from sharpkit._data import evaluate
from sharpkit.builtin import probes
from sharpkit.builtin._landscape.geometry import filter_normalized_direction
from sharpkit.builtin._landscape.probes import (
    Direction,
    Interpolate,
    Plane,
    PlaneBetween,
)
from sharpkit.errors import ConfigError
from sharpkit.interfaces import DataSplit
from sharpkit.registry import Registry

# -------------------------------------------------------------------------- interpolate


def test_interpolate_linear_model_matches_closed_form() -> None:
    m1, m2 = linear(1), linear(2)
    train, test = regression_data(50, 0), regression_data(30, 1)
    ctx = context([m1, m2], train, test, loss=mse)
    result = Interpolate(alpha="-1:2:301", eval_samples=0, bn_reestimate=False).run(ctx)
    alpha = result.coords["alpha"]
    a, b, c = quad_coeffs(m1.weight.detach(), m2.weight.detach(), train)
    # float64 sums of ~50 terms of size ~10: 1e-12 relative is rounding only.
    np.testing.assert_allclose(
        result.arrays["train_loss"], a * alpha**2 + b * alpha + c, rtol=1e-12
    )
    at, bt, ct = quad_coeffs(m1.weight.detach(), m2.weight.detach(), test)
    np.testing.assert_allclose(
        result.arrays["test_loss"], at * alpha**2 + bt * alpha + ct, rtol=1e-12
    )
    assert np.isnan(result.arrays["train_accuracy"]).all()  # regression: no accuracy

    # Width readouts against the roots of L(α) = L(a0) + δ. Linear interpolation
    # between grid points 0.01 apart misplaces a crossing by at most
    # h²·max|L''| / (8·|L'|) = 1e-4·2a / (8|L'|), far below 1e-3 here.
    delta = 1.0
    s = result.summary
    for center, key in ((0.0, "width_0"), (1.0, "width_1")):
        level = a * center**2 + b * center + c + delta
        roots = np.sort(np.roots([a, b, c - level]).real)
        # A root beyond the grid is reported as the grid end, flagged censored.
        left, right = max(roots[0], -1.0), min(roots[1], 2.0)
        assert s[f"{key}_left"] == pytest.approx(left, abs=1e-3)
        assert s[f"{key}_right"] == pytest.approx(right, abs=1e-3)
        assert s[key] == pytest.approx(right - left, abs=2e-3)
        assert (f"{key}_left" in result.attrs["censored"]) == (roots[0] < -1.0)
        assert (f"{key}_right" in result.attrs["censored"]) == (roots[1] > 2.0)
    # Outer half-widths: minimum 0 to the left, minimum 1 to the right.
    assert s["width_0_outer"] == pytest.approx(-s["width_0_left"], abs=1e-15)
    assert s["width_1_outer"] == pytest.approx(s["width_1_right"] - 1.0, abs=1e-15)
    assert ("width_1_outer" in result.attrs["censored"]) == (
        "width_1_right" in result.attrs["censored"]
    )
    distance = float((m2.weight - m1.weight).detach().norm())
    assert s["distance"] == pytest.approx(distance, rel=1e-12)
    assert s["width_0_distance"] == pytest.approx(s["width_0"] * distance, rel=1e-12)
    assert s["train_loss_at_0"] == pytest.approx(c, rel=1e-12)
    assert s["train_loss_at_1"] == pytest.approx(a + b + c, rel=1e-12)
    # The loss is convex in α: the barrier (max over [0, 1] above the chord) is 0.
    assert s["barrier"] == pytest.approx(0.0, abs=1e-12)


def test_interpolate_matches_hand_built_model_with_interpolated_buffers() -> None:
    m1, m2 = bn_mlp(1), bn_mlp(2)
    train, test = classification_data(40, 0), classification_data(20, 1)
    ctx = context([m1, m2], train, test)
    alphas = [-1.0, -0.25, 0.0, 0.5, 1.0, 1.75, 2.0]
    result = Interpolate(alpha=",".join(map(str, alphas)), bn_reestimate=False).run(ctx)
    s1, s2 = m1.state_dict(), m2.state_dict()
    for i, a in enumerate(alphas):
        hand = copy.deepcopy(m1)
        state = {}
        for k in s1:
            if s1[k].is_floating_point():
                v = (1.0 - a) * s1[k] + a * s2[k]
                state[k] = v.clamp_min(0.0) if k.endswith("running_var") else v
            else:
                state[k] = s1[k]
        hand.load_state_dict(state)
        with torch.no_grad():
            out = hand(train.inputs)
            loss = float(torch.nn.functional.cross_entropy(out, train.targets))
            acc = float((out.argmax(1) == train.targets).double().mean())
            tout = hand(test.inputs)
            tloss = float(torch.nn.functional.cross_entropy(tout, test.targets))
        # Same model, batches of 7 vs one pass: summation order only (float64).
        assert result.arrays["train_loss"][i] == pytest.approx(loss, rel=1e-12)
        assert result.arrays["train_accuracy"][i] == pytest.approx(acc, abs=1e-12)
        assert result.arrays["test_loss"][i] == pytest.approx(tloss, rel=1e-12)
    # The probe leaves its input models alone.
    for k, v in bn_mlp(1).state_dict().items():
        assert torch.equal(m1.state_dict()[k], v)


def test_interpolate_extra_points_when_grid_misses_minima() -> None:
    m1, m2 = linear(5), linear(6)
    train = regression_data(20, 7)
    result = Interpolate(alpha="0.25,0.5,0.75", bn_reestimate=False).run(
        context([m1, m2], train, loss=mse)
    )
    assert result.coords["alpha"].tolist() == [0.25, 0.5, 0.75]
    assert result.arrays["train_loss"].shape == (3,)
    assert result.attrs["extra_alpha"] == [0.0, 1.0]
    a, b, c = quad_coeffs(m1.weight.detach(), m2.weight.detach(), train)
    assert result.summary["train_loss_at_0"] == pytest.approx(c, rel=1e-12)
    assert result.summary["train_loss_at_1"] == pytest.approx(a + b + c, rel=1e-12)
    assert "test_loss" not in result.arrays  # no test split given


def test_interpolate_progress_and_seconds() -> None:
    calls: list[tuple[float, float | None, str | None]] = []

    def progress(
        done: float,
        total: float | None = None,
        /,
        *,
        description: str | None = None,
        **info: Any,
    ) -> None:
        calls.append((done, total, description))

    ctx = context([bn_mlp(1), bn_mlp(2)], classification_data(20, 0), progress=progress)
    result = Interpolate(alpha="0:1:3").run(ctx)
    assert calls[0][:2] == (0, 3)
    assert calls[-1][:2] == (3, 3)
    assert [c[2] for c in calls[1:]] == ["α=0", "α=0.5", "α=1"]
    assert result.seconds is not None
    assert result.seconds > 0


def test_interpolate_accuracy_counts() -> None:
    m1, m2 = bn_mlp(1), bn_mlp(2)
    train = classification_data(37, 3)
    result = Interpolate(alpha="0,1", bn_reestimate=False).run(context([m1, m2], train))
    with torch.no_grad():
        acc = float((m2(train.inputs).argmax(1) == train.targets).double().mean())
    # α = 1 evaluates exactly θ2 ((1-1)·θ1 + 1·θ2 is bitwise θ2).
    assert result.arrays["train_accuracy"][1] == acc


def test_interpolate_rejects_wrong_models_and_options() -> None:
    train = classification_data(10, 0)
    with pytest.raises(ConfigError, match="takes 2 model"):
        Interpolate().run(context([bn_mlp(1)], train))
    other = torch.nn.Sequential(torch.nn.Linear(4, 3)).double()
    with pytest.raises(ConfigError, match="different parameter shapes"):
        Interpolate().run(context([bn_mlp(1), other], train))
    for kwargs in (
        {"bn_samples": -1},
        {"eval_samples": -2},
        {"bn_batch_size": 1},
        {"width_delta": 0.0},
    ):
        with pytest.raises(ConfigError):
            Interpolate(**kwargs)
    with pytest.raises(ConfigError, match="at least 2"):
        Interpolate(bn_samples=1).run(context([bn_mlp(1), bn_mlp(2)], train))


# ---------------------------------------------------------------------------- direction


def test_direction_matches_hand_evaluation() -> None:
    model = bn_mlp(7)
    train, test = classification_data(30, 0), classification_data(12, 1)
    ctx = context([model], train, test, seed=3)
    result = Direction(alpha="-1:1:5", eval_samples=0).run(ctx)
    theta = [p.detach().clone() for p in model.parameters()]
    d = filter_normalized_direction(theta, ctx.generator("direction"))
    for i, a in enumerate(result.coords["alpha"]):
        hand = copy.deepcopy(model)
        with torch.no_grad():
            for p, t, di in zip(hand.parameters(), theta, d, strict=True):
                p.copy_(t + a * di)
        loss, acc = evaluate(
            hand, train, torch.nn.functional.cross_entropy, batch_size=100, device=CPU
        )
        assert result.arrays["train_loss"][i] == pytest.approx(loss, rel=1e-12)
        assert result.arrays["train_accuracy"][i] == pytest.approx(acc, abs=1e-12)
    norm = float(torch.sqrt(sum((di**2).sum() for di in d)))
    assert result.summary["direction_norm"] == pytest.approx(norm, rel=1e-12)
    assert result.summary["width_distance"] == pytest.approx(
        result.summary["width"] * norm, rel=1e-12
    )
    # BN buffers of θ kept (no re-estimation by default); biases not moved.
    assert result.attrs["bn_reestimate"] is False
    assert result.attrs["bias_bn"] == "zero"


def test_direction_linear_model_closed_form_and_width() -> None:
    model = linear(11)
    train = regression_data(40, 2)
    ctx = context([model], train, loss=mse, seed=1)
    result = Direction(alpha="-2:2:401", width_delta=0.5).run(ctx)
    w = model.weight.detach()
    d = filter_normalized_direction([w], ctx.generator("direction"))[0]
    a, b, c = quad_coeffs(w, w + d, train)  # θ + α d = (1-α) w + α (w + d)
    alpha = result.coords["alpha"]
    np.testing.assert_allclose(
        result.arrays["train_loss"], a * alpha**2 + b * alpha + c, rtol=1e-12
    )
    roots = np.sort(np.roots([a, b, -0.5]).real)
    # Grid step 0.01: the interpolated crossings are within 1e-3 (see above).
    assert result.summary["width_left"] == pytest.approx(roots[0], abs=1e-3)
    assert result.summary["width_right"] == pytest.approx(roots[1], abs=1e-3)
    # Filter normalisation: one filter (the single output), so ‖d‖ = ‖w‖.
    assert result.summary["direction_norm"] == pytest.approx(float(w.norm()), rel=1e-12)


def test_direction_seeds() -> None:
    train = classification_data(30, 0)

    def run(seed: int) -> np.ndarray:
        return (
            Direction(alpha="-1:1:3")
            .run(context([bn_mlp(7)], train, seed=seed))
            .arrays["train_loss"]
        )

    np.testing.assert_array_equal(run(2), run(2))
    assert not np.array_equal(run(2), run(3))


# ------------------------------------------------------------------------------- planes


def test_plane_matches_hand_evaluation() -> None:
    model = bn_mlp(8)
    train = classification_data(25, 0)
    ctx = context([model], train, seed=4)
    result = Plane(x="-1:1:3", y="-0.5,0,0.5,1", test=False).run(ctx)
    assert result.arrays["train_loss"].shape == (4, 3)
    assert list(result.coords) == ["y", "x"]
    theta = [p.detach().clone() for p in model.parameters()]
    gen = ctx.generator("plane")
    d1 = filter_normalized_direction(theta, gen)
    d2 = filter_normalized_direction(theta, gen)
    for i, yv in enumerate(result.coords["y"]):
        for j, xv in enumerate(result.coords["x"]):
            hand = copy.deepcopy(model)
            with torch.no_grad():
                for p, t, a, b in zip(hand.parameters(), theta, d1, d2, strict=True):
                    p.copy_(t + xv * a + yv * b)
            loss, _ = evaluate(
                hand,
                train,
                torch.nn.functional.cross_entropy,
                batch_size=64,
                device=CPU,
            )
            assert result.arrays["train_loss"][i, j] == pytest.approx(loss, rel=1e-12)
    assert abs(result.attrs["cosine_d1_d2"]) < 1
    loss0, _ = evaluate(
        model, train, torch.nn.functional.cross_entropy, batch_size=64, device=CPU
    )
    assert result.summary["train_loss_at_origin"] == pytest.approx(loss0, rel=1e-12)
    assert "width_x" in result.summary
    assert "width_y" in result.summary


def test_plane_between_passes_through_both_minima() -> None:
    m1, m2 = linear(1), linear(2)
    train = regression_data(30, 0)
    ctx = context([m1, m2], train, loss=mse)
    result = PlaneBetween(x="-1:2:4", y="-1:1:3", bn_reestimate=False).run(ctx)
    loss1, _ = evaluate(m1, train, mse, batch_size=64, device=CPU)
    loss2, _ = evaluate(m2, train, mse, batch_size=64, device=CPU)
    grid = result.arrays["train_loss"]
    # (x, y) = (0, 0) is θ1 and (1, 0) is θ1 + (θ2 - θ1): θ2 up to rounding.
    assert grid[1, 1] == pytest.approx(loss1, rel=1e-12)
    assert grid[1, 2] == pytest.approx(loss2, rel=1e-12)
    s = result.summary
    assert s["norm_x"] == pytest.approx(
        float((m2.weight - m1.weight).detach().norm()), rel=1e-12
    )
    assert s["norm_y"] == pytest.approx(s["norm_x"], rel=1e-12)
    assert s["min0_train_loss"] == pytest.approx(loss1, rel=1e-12)
    assert s["min1_train_loss"] == pytest.approx(loss2, rel=1e-12)
    # On the x axis the plane is the interpolation line: L quadratic in x.
    a, b, c = quad_coeffs(m1.weight.detach(), m2.weight.detach(), train)
    x = result.coords["x"]
    np.testing.assert_allclose(grid[1], a * x**2 + b * x + c, rtol=1e-12)
    with pytest.raises(ConfigError, match="identical"):
        PlaneBetween().run(context([m1, copy.deepcopy(m1)], train, loss=mse))


def test_plane_between_direction_orthogonal() -> None:
    """y moves orthogonally to θ2-θ1: along y at x=0 the first-order change in the
    direction of u vanishes, checked through a loss that is linear in θ."""
    m1, m2 = linear(3), linear(4)

    def lin_loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return out.mean()

    x = torch.ones(4, 3, dtype=F64)
    u = (m2.weight - m1.weight).detach()
    # Loss = mean(w·1) = Σ w_i: a linear functional; choose data so that it is
    # proportional to ⟨w, u⟩ by scaling each input coordinate with u.
    train = DataSplit(x * u, torch.zeros(4, dtype=torch.long))
    result = PlaneBetween(x="0,1", y="-1,0,1", bn_reestimate=False, test=False).run(
        context([m1, m2], train, loss=lin_loss)
    )
    g = result.arrays["train_loss"]
    # ⟨θ1 + y v, u⟩ = ⟨θ1, u⟩ for every y when v ⟂ u (rounding: 1e-12).
    np.testing.assert_allclose(g[:, 0], g[1, 0], rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------- registry and API


def test_entry_module_imports_neither_torch_nor_the_implementation() -> None:
    # sharpkit.builtin.probes is loaded with every plugin (`sharpkit --version`,
    # `sharpkit results`): the probes and torch come only with the probe table.
    code = (
        "import sys, sharpkit.builtin.probes as p; "
        "assert 'torch' not in sys.modules, 'torch'; "
        "assert 'sharpkit.builtin._landscape' not in sys.modules, '_landscape'; "
        "specs = p.sharpkit_register_probes(); "
        "assert 'sharpkit.builtin._landscape.probes' in sys.modules; "
        "print(' '.join(s.name for s in specs))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    )
    assert out.stdout.split() == [
        "interpolate",
        "direction",
        "plane",
        "plane-between",
        "rescale",
    ]


def registry() -> Registry:
    reg = Registry(entry_points=False, warn=False)
    reg.register_plugin(probes, "builtin.probes")
    reg.register_plugin(
        importlib.import_module("sharpkit.builtin.datasets"), "builtin.datasets"
    )
    return reg


def test_specs_valid_and_options_match_factories() -> None:
    reg = registry()
    assert reg.names("probe") == [
        "direction",
        "interpolate",
        "plane",
        "plane-between",
        "rescale",
    ]
    for name in reg.names("probe"):
        spec = reg.get("probe", name)
        instance = reg.create("probe", name, {})
        assert isinstance(instance, sharpkit.Probe)
        for opt in spec.options:  # documented defaults are the factory's
            if opt.name in ("alpha", "x", "y"):
                continue
            assert getattr(instance, opt.name) == opt.default, (name, opt.name)
    assert reg.get("probe", "interpolate").n_models == 2
    assert reg.get("probe", "plane-between").n_models == 2
    assert reg.get("probe", "direction").n_models == 1
    with pytest.raises(ConfigError, match="option 'alpha'"):
        reg.create("probe", "interpolate", {"alpha": "1:0"})


@dataclass
class TinyDataset:
    name: str
    input_shape: tuple[int, ...]
    num_classes: int
    train: DataSplit
    test: DataSplit


def test_through_api_interpolate_with_synthetic_dataset() -> None:
    reg = registry()
    ds = sharpkit.api.load_dataset(
        "synthetic",
        options={"n_train": 96, "n_test": 48, "classes": 3, "shape": "4"},
        registry=reg,
    )
    gen = torch.Generator().manual_seed(0)

    def net() -> torch.nn.Module:
        m = torch.nn.Sequential(
            torch.nn.Linear(4, 6),
            torch.nn.BatchNorm1d(6),
            torch.nn.ReLU(),
            torch.nn.Linear(6, 3),
        )
        with torch.no_grad():
            for p in m.parameters():
                p.copy_(torch.randn(p.shape, generator=gen))
        return m.eval()

    m1, m2 = net(), net()
    before = copy.deepcopy(m1.state_dict())
    result = sharpkit.api.interpolate(
        m1, m2, ds, alpha="-1:2:7", registry=reg, batch_size=32
    )
    assert result.probe == "interpolate"
    assert result.arrays["train_loss"].shape == (7,)
    assert result.arrays["test_accuracy"].shape == (7,)
    assert "key" in result.attrs
    assert result.attrs["bn_reestimate"] is True
    assert result.attrs["train_samples"] == 96
    for k, v in before.items():
        assert torch.equal(m1.state_dict()[k], v)
    # Explicit α values and options pass through api.probe.
    direct = sharpkit.api.probe(
        "interpolate",
        [m1, m2],
        ds,
        options={"alpha": "0,1", "bn_reestimate": "false"},
        registry=reg,
    )
    assert direct.attrs["bn_reestimate"] is False
    listed = sharpkit.api.interpolate(
        m1, m2, ds, alpha=[0.0, 1.0], bn_reestimate=False, registry=reg
    )
    np.testing.assert_array_equal(
        listed.arrays["train_loss"], direct.arrays["train_loss"]
    )
    # Without BN re-estimation, α = 0 and 1 are the models themselves.
    loss1, _ = evaluate(
        m1, ds.train, torch.nn.functional.cross_entropy, batch_size=50, device=CPU
    )
    assert direct.arrays["train_loss"][0] == pytest.approx(loss1, rel=1e-6)


def test_through_api_direction_and_plane() -> None:
    reg = registry()
    train, test = classification_data(40, 0), classification_data(20, 1)
    ds = TinyDataset("tiny", (4,), 3, train, test)
    model = bn_mlp(3)
    r = sharpkit.api.probe(
        "direction", [model], ds, options={"alpha": "-1:1:5"}, seed=2, registry=reg
    )
    assert r.arrays["train_loss"].shape == (5,)
    p = sharpkit.api.probe(
        "plane", [model], ds, options={"x": "-1:1:3", "y": "0,1"}, registry=reg
    )
    assert p.arrays["test_loss"].shape == (2, 3)
    with pytest.raises(ConfigError, match="takes 1 model"):
        sharpkit.api.probe("plane", [model, model], ds, registry=reg)
