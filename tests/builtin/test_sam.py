"""The sam and asam trainers: one step against the closed form, BN, resume, options."""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import sharpkit
from sharpkit.builtin import _datasets as D
from sharpkit.builtin import _sam as S
from sharpkit.builtin import _trainer as T
from sharpkit.errors import ConfigError
from sharpkit.interfaces import TrainConfig
from sharpkit.registry import Registry


@pytest.fixture(scope="module")
def reg() -> Registry:
    r = Registry(entry_points=False)
    for name in ("builtin.models", "builtin.datasets", "builtin.trainer"):
        assert r.register_plugin(importlib.import_module(f"sharpkit.{name}"), name)
    return r


# ----------------------------------------------------------------- the closed form


class Quadratic(nn.Module):
    """L(θ) = ½ θᵀAθ − bᵀθ in float64; the closure returns (L, L)."""

    def __init__(self, n: int = 6, seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        q = torch.randn(n, n, generator=gen, dtype=torch.float64)
        self.A = q @ q.T + torch.eye(n, dtype=torch.float64)
        self.b = torch.randn(n, generator=gen, dtype=torch.float64)
        self.theta = nn.Parameter(torch.randn(n, generator=gen, dtype=torch.float64))

    def closure(self) -> tuple[torch.Tensor, torch.Tensor]:
        t = self.theta
        loss = 0.5 * t @ self.A @ t - self.b @ t
        return loss, loss


def closed_form_step(
    q: Quadratic, lr: float, rho: float, eta: float | None, wd: float
) -> np.ndarray:
    """θ − η(∇L(θ + ε) + wd·θ), ε = ρ T²g/‖Tg‖, g = Aθ − b, in NumPy float64."""
    A, b = q.A.numpy(), q.b.numpy()
    theta = q.theta.detach().numpy().copy()
    g = A @ theta - b
    t = np.ones_like(theta) if eta is None else np.abs(theta) + eta
    eps = rho * t * t * g / np.linalg.norm(t * g)
    g_adv = A @ (theta + eps) - b
    return theta - lr * (g_adv + wd * theta)


@pytest.mark.parametrize(
    ("trainer", "eta"),
    [(S.SAMTrainer(rho=0.3), None), (S.ASAMTrainer(rho=0.7, eta=0.05), 0.05)],
    ids=["sam", "asam"],
)
@pytest.mark.parametrize("wd", [0.0, 0.1])
def test_one_step_on_a_quadratic_is_the_closed_form(
    trainer: S.SAMTrainer, eta: float | None, wd: float
) -> None:
    q = Quadratic()
    expected = closed_form_step(q, lr=0.05, rho=trainer.rho, eta=eta, wd=wd)
    opt = torch.optim.SGD(q.parameters(), lr=0.05, weight_decay=wd)
    loss_at_theta = float(q.closure()[1].detach())
    _, loss = trainer._update(q, opt, q.closure)
    # float64 throughout; the only differences are the order of summation and
    # the 1e-12 floor of ‖Tg‖ (here ‖Tg‖ ≈ 10): 1e-12 relative is ample.
    np.testing.assert_allclose(q.theta.detach().numpy(), expected, rtol=1e-12)
    assert float(loss.detach()) == loss_at_theta  # the loss reported is the one at θ
    # and the step is not SGD's: the ascent moved the gradient
    sgd = Quadratic()
    T.SGDTrainer()._update(
        sgd, torch.optim.SGD(sgd.parameters(), lr=0.05, weight_decay=wd), sgd.closure
    )
    assert not torch.allclose(sgd.theta, q.theta, rtol=1e-6, atol=0)


def test_perturbation_has_length_rho_in_the_scaled_norm() -> None:
    gen = torch.Generator().manual_seed(1)
    theta = [torch.randn(3, 4, generator=gen), torch.randn(5, generator=gen)]
    grads = [torch.randn(3, 4, generator=gen), torch.randn(5, generator=gen)]
    eps = S.sam_perturbation(theta, grads, rho=0.2)
    assert float(torch.cat([e.flatten() for e in eps]).norm()) == pytest.approx(
        0.2,
        rel=1e-6,  # float32 norms
    )
    eta = 0.01
    eps = S.sam_perturbation(theta, grads, rho=0.2, eta=eta)
    scaled = [e / (t.abs() + eta) for e, t in zip(eps, theta, strict=True)]
    assert float(torch.cat([s.flatten() for s in scaled]).norm()) == pytest.approx(
        0.2, rel=1e-5
    )
    zero = S.sam_perturbation(theta, [torch.zeros_like(g) for g in grads], rho=0.2)
    assert all(torch.equal(z, torch.zeros_like(z)) for z in zero)  # no NaN


def test_asam_perturbation_follows_a_layer_rescaling() -> None:
    """Dinh et al.'s rescaling (W1·c, W2/c) maps ASAM's ε to the rescaled ε."""
    torch.manual_seed(0)
    w1, w2 = (
        torch.randn(8, 4, dtype=torch.float64),
        torch.randn(3, 8, dtype=torch.float64),
    )
    x = torch.randn(16, 4, dtype=torch.float64)

    def grads(a: torch.Tensor, b: torch.Tensor) -> list[torch.Tensor]:
        a, b = a.clone().requires_grad_(), b.clone().requires_grad_()
        loss = (torch.relu(x @ a.T) @ b.T).pow(2).mean()
        return list(torch.autograd.grad(loss, [a, b]))

    c = 10.0
    e = S.sam_perturbation([w1, w2], grads(w1, w2), rho=0.5, eta=0.0)
    ec = S.sam_perturbation([w1 * c, w2 / c], grads(w1 * c, w2 / c), rho=0.5, eta=0.0)
    torch.testing.assert_close(ec[0], e[0] * c, rtol=1e-10, atol=0)
    torch.testing.assert_close(ec[1], e[1] / c, rtol=1e-10, atol=0)


# ----------------------------------------------------------------- batch norm


def bn_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(16, 12), nn.BatchNorm1d(12), nn.ReLU(), nn.Linear(12, 4)
    )


def test_the_perturbed_pass_leaves_batch_norm_statistics_alone() -> None:
    data = D.load_synthetic(n_train=64)
    x, y = data.train.inputs[:32], data.train.targets[:32]
    nets = {"sgd": bn_net(), "sam": bn_net()}
    for name, net in nets.items():
        net.train()
        trainer = T.SGDTrainer() if name == "sgd" else S.SAMTrainer(rho=0.5)
        opt = torch.optim.SGD(net.parameters(), lr=0.1)
        trainer._update(net, opt, T._batch_closure(net, x, y))
    a, b = nets["sgd"][1], nets["sam"][1]
    # One tracked forward pass at θ in both: the same running statistics, bit
    # for bit, and one counted batch; the weights differ (the steps do).
    assert torch.equal(a.running_mean, b.running_mean)
    assert torch.equal(a.running_var, b.running_var)
    assert int(b.num_batches_tracked) == 1
    assert b.track_running_stats
    assert not torch.equal(nets["sgd"][0].weight, nets["sam"][0].weight)


# ----------------------------------------------------------------- resume


class Interrupt(Exception):
    pass


class DropNet(nn.Module):
    """BN + dropout (global RNG); raises at the n-th training forward pass."""

    def __init__(self, stop_at: int | None = None) -> None:
        super().__init__()
        self.net = bn_net()
        self.drop = nn.Dropout(0.2)
        self.calls, self.stop_at = 0, stop_at

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.calls += 1
            if self.calls == self.stop_at:
                raise Interrupt
        return self.net(self.drop(x))


def config(out: Path | None, **kw: object) -> TrainConfig:
    base: dict[str, object] = {
        "lr": 0.05, "batch_size": 16, "epochs": 3, "momentum": 0.9, "seed": 3,
        "out_dir": out, "model_name": "dropnet", "dataset_name": "synthetic",
    }  # fmt: skip
    base.update(kw)
    return TrainConfig(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize("cls", [S.SAMTrainer, S.ASAMTrainer], ids=["sam", "asam"])
def test_an_interrupted_run_resumes_bit_for_bit(cls: type, tmp_path: Path) -> None:
    data = D.load_synthetic(n_train=64, n_test=32)
    full = DropNet()
    ref = cls().fit(full, data, config(tmp_path / "a"))
    # 4 steps an epoch, 2 forward passes a step: die in the 2nd step of epoch 2
    with pytest.raises(Interrupt):
        cls().fit(DropNet(stop_at=2 * 4 + 3), data, config(tmp_path / "b"))
    again = DropNet()
    torch.manual_seed(99)  # the caller's global RNG must not matter
    res = cls().fit(again, data, config(tmp_path / "b", resume=True))
    assert res.attrs["resumed_from_epoch"] == 1
    for k, v in full.state_dict().items():
        assert torch.equal(v, again.state_dict()[k]), k
    for key in ref.curves:
        if key != "seconds":
            np.testing.assert_array_equal(ref.curves[key], res.curves[key], err_msg=key)
    assert {k: v for k, v in ref.final.items() if k != "seconds"} == {
        k: v for k, v in res.final.items() if k != "seconds"
    }


def test_resume_refuses_another_rho(tmp_path: Path) -> None:
    data = D.load_synthetic(n_train=64)
    S.SAMTrainer(rho=0.05).fit(DropNet(), data, config(tmp_path, epochs=1))
    with pytest.raises(ConfigError, match=r"trainer_options=.*'rho': 0\.05"):
        S.SAMTrainer(rho=0.1).fit(DropNet(), data, config(tmp_path, resume=True))


# ----------------------------------------------------------------- registration


def test_registered_with_the_sgd_options_and_recorded(tmp_path: Path, reg) -> None:
    assert {"sgd", "sam", "asam"} <= set(reg.names("trainer"))
    sgd = {o.name for o in reg.get("trainer", "sgd").options}
    assert {o.name for o in reg.get("trainer", "sam").options} == sgd | {"rho"}
    assert {o.name for o in reg.get("trainer", "asam").options} == sgd | {"rho", "eta"}
    store = tmp_path / "r.zarr"
    result = sharpkit.api.train(
        "mlp-bn", "synthetic", lr=0.1, batch_size=32, epochs=1,
        trainer="asam", trainer_options={"rho": "0.2"},
        model_options={"width": 8}, data_options={"n_train": 64},
        out_dir=tmp_path / "run", store=store, registry=reg,
    )  # fmt: skip
    meta = sharpkit.load_checkpoint(result.checkpoint).meta
    assert meta.extra["trainer"] == "asam"
    assert meta.extra["trainer_options"] == {
        "eval_batch_size": 1024, "drop_last": False, "rho": 0.2, "eta": 0.01,
    }  # fmt: skip
    rows = sharpkit.open_results(store, as_frame=False)
    assert {r["trainer"] for r in rows} == {"asam"}


@pytest.mark.parametrize(
    ("cls", "kwargs", "match"),
    [(S.SAMTrainer, {"rho": 0.0}, r"rho must be positive.*-o sam\.rho"),
     (S.ASAMTrainer, {"rho": float("nan")}, r"-o asam\.rho"),
     (S.ASAMTrainer, {"eta": -1.0}, r"eta must be a number >= 0")],
)  # fmt: skip
def test_bad_options_say_what_to_pass(cls: type, kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        cls(**kwargs)
