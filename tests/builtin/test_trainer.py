"""The SGD trainer: schedules, real training, exact resume, checkpoints, tracking."""

from __future__ import annotations

import csv
import importlib
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import sharpkit
from sharpkit.builtin import _datasets as D
from sharpkit.builtin import _trainer as T
from sharpkit.errors import ConfigError, NumericalError, SharpkitWarning
from sharpkit.interfaces import DataSplit, TrainConfig
from sharpkit.registry import Registry

FMNIST_DEBIAN = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(scope="module")
def reg() -> Registry:
    r = Registry(entry_points=False)
    for name in ("builtin.models", "builtin.datasets", "builtin.trainer"):
        assert r.register_plugin(importlib.import_module(f"sharpkit.{name}"), name)
    return r


def _has_spectral() -> bool:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SharpkitWarning)
            from sharpkit.registry import get_registry

            return "spectral" in get_registry().names("metric")
    except Exception:
        return False


def states_equal(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


# ----------------------------------------------------------------- schedules


def torch_schedule(scheduler_cls, epochs: int, **kwargs) -> list[float]:
    """η per epoch from PyTorch's own scheduler, stepped once per epoch."""
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    sched = scheduler_cls(opt, **kwargs)
    out = []
    for _ in range(epochs):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_resnet_preset_is_multisteplr_at_60_100_140_180() -> None:
    s = T.parse_schedule("resnet")
    assert s.text == "step:60,100,140,180:0.1"
    ours = [s.lr(0.1, e) for e in range(1, 201)]
    ref = torch_schedule(
        torch.optim.lr_scheduler.MultiStepLR,
        200,
        milestones=[60, 100, 140, 180],
        gamma=0.1,
    )
    # PyTorch multiplies step by step, we raise the factor to a power: both are
    # the same real number up to a few float64 roundings (rel 1e-12).
    np.testing.assert_allclose(ours, ref, rtol=1e-12, atol=0)
    assert ours[59] == 0.1  # epoch 60 still uses η
    assert ours[60] == pytest.approx(0.01, rel=1e-12)  # epoch 61 uses η/10
    assert ours[199] == pytest.approx(1e-5, rel=1e-12)


def test_vgg_preset_halves_every_25_epochs() -> None:
    s = T.parse_schedule("vgg")
    assert s.text == "every:25:0.5"
    ours = [s.lr(0.1, e) for e in range(1, 201)]
    ref = torch_schedule(torch.optim.lr_scheduler.StepLR, 200, step_size=25, gamma=0.5)
    np.testing.assert_allclose(ours, ref, rtol=1e-12, atol=0)
    assert ours[24] == 0.1
    assert ours[25] == 0.05
    assert ours[199] == 0.1 / 2**7


def test_constant_and_custom_forms() -> None:
    assert T.parse_schedule("constant").lr(0.3, 1000) == 0.3
    s = T.parse_schedule(" STEP:2,5:0.5 ")
    assert [s.lr(1.0, e) for e in range(1, 8)] == [1, 1, 0.5, 0.5, 0.5, 0.25, 0.25]
    s = T.parse_schedule("every:3:0.1")
    assert [s.lr(1.0, e) for e in (1, 3, 4, 6, 7)] == pytest.approx(
        [1, 1, 0.1, 0.1, 0.01], rel=1e-12
    )


@pytest.mark.parametrize(
    "bad",
    ["linear", "step:60,50:0.1", "step:a:0.1", "step:60:-1", "step:0:0.1",
     "every:0:0.5", "every:25", "every:x:0.5", "step:60:nan", ""],
)  # fmt: skip
def test_bad_schedules_name_the_accepted_forms(bad: str) -> None:
    with pytest.raises(ConfigError) as info:
        T.parse_schedule(bad)
    msg = str(info.value)
    assert repr(bad) in msg
    assert "step:60,100,140,180:0.1" in msg
    assert "every:25:0.5" in msg
    assert "resnet" in msg


# ----------------------------------------------------------------- real training


@pytest.mark.slow
@pytest.mark.skipif(
    not (FMNIST_DEBIAN / "train-images-idx3-ubyte.gz").is_file(),
    reason="Fashion-MNIST not installed (apt install dataset-fashion-mnist)",
)
def test_mlp_bn_learns_a_fashion_mnist_subset(monkeypatch, reg) -> None:
    monkeypatch.delenv("SHARPKIT_DATA", raising=False)
    data = sharpkit.api.load_dataset("fashion-mnist", subset=1000, seed=0, registry=reg)
    data.test = data.test.head(2000)  # evaluation would dominate the run time
    net = sharpkit.api.build_model(
        "mlp-bn", input_shape=data.input_shape, num_classes=10, seed=0, registry=reg
    )
    config = TrainConfig(lr=0.05, batch_size=25, epochs=10, seed=0)
    result = T.SGDTrainer().fit(net, data, config)
    # 400 plain-SGD steps on 1,000 stratified examples of the 784-256-256-256-10
    # BN-MLP: when this was written (torch 2.14) the last epoch's running train
    # accuracy was 0.95 and the eval-mode one 0.96; the bars leave room for other
    # BLAS builds.
    assert result.final["train_accuracy"] >= 0.90
    net.eval()
    with torch.no_grad():
        pred = net(data.train.inputs).argmax(1)
    assert float((pred == data.train.targets).double().mean()) >= 0.90
    assert result.final["test_accuracy"] >= 0.70  # never-seen test images
    assert result.curves["train_loss"][-1] < result.curves["train_loss"][0] / 2
    assert list(result.curves["epoch"]) == list(range(1, 11))
    assert result.checkpoint is None  # no out_dir: nothing on disk


# ----------------------------------------------------------------- resume


def aug_dataset() -> D.InMemoryDataset:
    """Synthetic 3x8x8 images with a crop+flip augmentation (pad 1)."""
    base = D.load_synthetic(shape="3x8x8", n_train=96, n_test=32, classes=3)
    aug = D.RandomCropFlip([0.0, 0.0, 0.0], pad=1)
    base.train = DataSplit(base.train.inputs, base.train.targets, aug)
    return base


class Interrupt(Exception):
    pass


class DropNet(nn.Module):
    """A BN net with dropout (uses torch's global RNG), interruptible mid-epoch."""

    def __init__(self, stop_at: int | None = None) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(192, 32),
            nn.BatchNorm1d(32),
            nn.ReLU(),
            nn.Dropout(0.3),
            nn.Linear(32, 3),
        )
        self.calls = 0
        self.stop_at = stop_at

    def forward(self, x):
        if self.training:
            self.calls += 1
            if self.stop_at is not None and self.calls == self.stop_at:
                raise Interrupt  # killed in the middle of an epoch
        return self.net(x)


def resume_config(out: Path, **kw) -> TrainConfig:
    base = {
        "lr": 0.05,
        "batch_size": 16,
        "epochs": 4,
        "momentum": 0.9,
        "weight_decay": 1e-3,
        "schedule": "step:2,3:0.5",
        "seed": 7,
        "augment": True,
        "out_dir": out,
        "model_name": "dropnet",
        "dataset_name": "synthetic",
    }
    base.update(kw)
    return TrainConfig(**base)


def test_resume_after_interruption_is_bit_for_bit(tmp_path: Path) -> None:
    data = aug_dataset()
    trainer = T.SGDTrainer()
    full = DropNet()
    ref = trainer.fit(full, data, resume_config(tmp_path / "a"))

    # 6 steps per epoch: die at the 3rd step of epoch 3, after last.pt of epoch 2.
    broken = DropNet(stop_at=2 * 6 + 3)
    with pytest.raises(Interrupt):
        trainer.fit(broken, data, resume_config(tmp_path / "b"))
    saved = sharpkit.load_checkpoint(tmp_path / "b" / "last.pt")
    assert saved.meta.epoch == 2
    assert not (tmp_path / "b" / "final.pt").exists()

    again = DropNet()
    torch.manual_seed(123)  # the caller's global RNG must not matter
    res = trainer.fit(again, data, resume_config(tmp_path / "b", resume=True))
    assert res.attrs["resumed_from_epoch"] == 2
    states_equal(full, again)
    for key in ref.curves:
        if key != "seconds":
            np.testing.assert_array_equal(ref.curves[key], res.curves[key], err_msg=key)
    a = sharpkit.load_checkpoint(tmp_path / "a" / "final.pt")
    b = sharpkit.load_checkpoint(tmp_path / "b" / "final.pt")
    for k in a.state_dict:
        assert torch.equal(a.state_dict[k], b.state_dict[k]), k
    mom_a = a.train_state["optimizer"]["state"]
    mom_b = b.train_state["optimizer"]["state"]
    for k in mom_a:
        assert torch.equal(mom_a[k]["momentum_buffer"], mom_b[k]["momentum_buffer"])


@pytest.mark.skipif(not _has_spectral(), reason="the spectral metric is not installed")
def test_resume_with_tracking_is_bit_for_bit(tmp_path: Path) -> None:
    """Tracking goes through sharpkit.Tracker; its warm start survives a resume."""
    data = aug_dataset()
    trainer = T.SGDTrainer()
    track = {"track": ("spectral",), "track_every": 1, "track_samples": 32}
    full = DropNet()
    ref = trainer.fit(full, data, resume_config(tmp_path / "a", **track))
    broken = DropNet(stop_at=2 * 6 + 3)  # dies in epoch 3, after epoch 2's last.pt
    with pytest.raises(Interrupt):
        trainer.fit(broken, data, resume_config(tmp_path / "b", **track))
    again = DropNet()
    res = trainer.fit(again, data, resume_config(tmp_path / "b", resume=True, **track))
    states_equal(full, again)
    assert set(res.curves) == {
        *T.CURVES,
        *(f"spectral{s}" for s in T._TRACK_SUFFIXES),
    }
    for key in ref.curves:
        if key != "seconds":
            np.testing.assert_array_equal(ref.curves[key], res.curves[key], err_msg=key)
    assert np.all(ref.curves["spectral"] > 0)
    # and tracking did not change the training: the same weights as untracked
    plain = DropNet()
    trainer.fit(plain, data, resume_config(tmp_path / "c"))
    states_equal(full, plain)


def test_resume_can_extend_a_finished_run(tmp_path: Path) -> None:
    data = aug_dataset()
    trainer = T.SGDTrainer()
    full = DropNet()
    trainer.fit(full, data, resume_config(tmp_path / "a", epochs=4))
    part = DropNet()
    trainer.fit(part, data, resume_config(tmp_path / "b", epochs=2))
    assert sharpkit.load_checkpoint(tmp_path / "b" / "final.pt").meta.epoch == 2
    longer = DropNet()
    res = trainer.fit(
        longer, data, resume_config(tmp_path / "b", epochs=4, resume=True)
    )
    states_equal(full, longer)
    assert sharpkit.load_checkpoint(tmp_path / "b" / "final.pt").meta.epoch == 4
    # Resuming a finished run trains nothing more and returns its curves.
    done = trainer.fit(DropNet(), data, resume_config(tmp_path / "b", resume=True))
    np.testing.assert_array_equal(done.curves["train_loss"], res.curves["train_loss"])


def test_resume_refuses_other_settings_and_existing_runs(tmp_path: Path) -> None:
    data = aug_dataset()
    trainer = T.SGDTrainer()
    trainer.fit(DropNet(), data, resume_config(tmp_path, epochs=1))
    with pytest.raises(ConfigError, match="already holds a training run"):
        trainer.fit(DropNet(), data, resume_config(tmp_path, epochs=1))
    with pytest.raises(ConfigError, match=r"lr=0\.05, not 0\.1"):
        trainer.fit(DropNet(), data, resume_config(tmp_path, lr=0.1, resume=True))
    with pytest.raises(ConfigError, match="augment"):
        trainer.fit(
            DropNet(), data, resume_config(tmp_path, augment=False, resume=True)
        )
    # The same schedule spelled differently is the same schedule.
    trainer.fit(
        DropNet(),
        data,
        resume_config(tmp_path, schedule="STEP:2,3:0.50", epochs=2, resume=True),
    )
    with pytest.raises(ConfigError, match="past the 1 epochs asked for; raise epochs="):
        trainer.fit(DropNet(), data, resume_config(tmp_path, epochs=1, resume=True))
    with pytest.raises(ConfigError, match=r"\(out_dir=\)"):  # as a script names it
        trainer.fit(DropNet(), data, resume_config(None, resume=True))


def test_resume_without_a_checkpoint_starts_fresh(tmp_path: Path) -> None:
    data = aug_dataset()
    a, b = DropNet(), DropNet()
    T.SGDTrainer().fit(a, data, resume_config(tmp_path / "a", epochs=2, resume=True))
    T.SGDTrainer().fit(b, data, resume_config(tmp_path / "b", epochs=2))
    states_equal(a, b)


# ----------------------------------------------------------------- determinism


def test_same_seed_same_model_other_seed_other_model(reg) -> None:
    def run(seed: int) -> nn.Module:
        net = sharpkit.api.build_model(
            "mlp-bn", input_shape=(16,), num_classes=4, options={"width": 16},
            seed=0, registry=reg,
        )  # fmt: skip
        data = D.load_synthetic()
        T.SGDTrainer().fit(
            net, data, TrainConfig(lr=0.1, batch_size=32, epochs=2, seed=seed)
        )
        return net

    states_equal(run(1), run(1))
    a, b = run(1), run(2)
    assert not torch.equal(a.state_dict()["fc1.weight"], b.state_dict()["fc1.weight"])


def test_training_leaves_the_global_rng_alone() -> None:
    net, data = DropNet(), aug_dataset()  # (DropNet seeds the global RNG itself)
    torch.manual_seed(5)
    before = torch.get_rng_state()
    T.SGDTrainer().fit(net, data, resume_config(None, epochs=1))
    assert torch.equal(before, torch.get_rng_state())


# ----------------------------------------------------------------- curves and files


def test_curves_checkpoints_and_layout(tmp_path: Path, reg) -> None:
    result = sharpkit.api.train(
        "mlp-bn",
        "synthetic",
        lr=0.2,
        batch_size=64,
        epochs=4,
        schedule="every:2:0.5",
        momentum=0.5,
        out_dir=tmp_path,
        checkpoint_every=2,
        subset=256,
        model_options={"width": 32, "depth": 3},
        data_options={"n_train": 400},
        seed=3,
        registry=reg,
    )
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [
        "curves.csv",
        "epoch-0002.pt",
        "epoch-0004.pt",
        "final.pt",
        "last.pt",
    ]
    assert result.checkpoint == tmp_path / "final.pt"
    c = result.curves
    assert set(T.CURVES) <= set(c)
    assert list(c["epoch"]) == [1, 2, 3, 4]
    assert list(c["lr"]) == [0.2, 0.2, 0.1, 0.1]
    assert all(len(v) == 4 for v in c.values())
    assert result.attrs["steps_per_epoch"] == 4  # 256 / 64
    with (tmp_path / "curves.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [float(r["train_loss"]) for r in rows] == pytest.approx(
        c["train_loss"], rel=1e-9
    )

    ckpt = sharpkit.load_checkpoint(tmp_path / "final.pt")
    m = ckpt.meta
    assert (m.model, m.dataset, m.lr, m.batch_size, m.momentum) == (
        "mlp-bn", "synthetic", 0.2, 64, 0.5,
    )  # fmt: skip
    assert (m.schedule, m.seed, m.epoch, m.epochs, m.weight_decay) == (
        "every:2:0.5", 3, 4, 4, 0.0,
    )  # fmt: skip
    assert m.model_options == {"width": 32, "depth": 3}
    assert m.dataset_options == {"n_train": 400, "subset": 256}
    assert m.extra["input_shape"] == [16]
    assert m.extra["num_classes"] == 4
    assert m.sharpkit_version == sharpkit.__version__
    assert m.final["test_accuracy"] == pytest.approx(result.final["test_accuracy"])
    assert sharpkit.load_checkpoint(tmp_path / "epoch-0002.pt").meta.epoch == 2

    # load_model needs no dataset: the shape is in the metadata.
    net, _ = sharpkit.api.load_model(tmp_path / "final.pt", registry=reg)
    data = D.load_synthetic(n_train=400)
    with torch.no_grad():
        logits = net(data.test.inputs)
    acc = float((logits.argmax(1) == data.test.targets).double().mean())
    assert acc == pytest.approx(result.final["test_accuracy"], abs=1e-12)
    loss = float(nn.functional.cross_entropy(logits, data.test.targets))
    assert loss == pytest.approx(result.final["test_loss"], rel=1e-5)


def test_evaluate_matches_a_direct_computation() -> None:
    torch.manual_seed(0)
    net = nn.Linear(16, 4)
    data = D.load_synthetic(n_test=100)
    loss, acc = T._evaluate(net, data.test, 7, torch.device("cpu"))  # uneven batches
    with torch.no_grad():
        out = net(data.test.inputs)
    assert loss == pytest.approx(
        float(nn.functional.cross_entropy(out.double(), data.test.targets)), rel=1e-6
    )
    assert acc == float((out.argmax(1) == data.test.targets).double().mean())


def test_divergence_is_a_numerical_error() -> None:
    torch.manual_seed(0)
    net = nn.Linear(16, 4)
    data = D.load_synthetic()
    with pytest.raises(NumericalError, match=r"diverged in epoch 1.*lower lr="):
        T.SGDTrainer().fit(net, data, TrainConfig(lr=1e38, batch_size=32, epochs=3))


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [("momentum", 1.0, "momentum"), ("batch_size", 0, "batch_size"),
     ("track_every", 0, "track_every"), ("schedule", "cosine", "bad schedule")],
)  # fmt: skip
def test_bad_config(field: str, value, match: str) -> None:
    config = TrainConfig(**{"lr": 0.1, "batch_size": 8, "epochs": 1, field: value})
    with pytest.raises(ConfigError, match=match):
        T.SGDTrainer().fit(nn.Linear(16, 4), D.load_synthetic(), config)


def test_augment_needs_an_augmentation() -> None:
    with pytest.raises(ConfigError, match="no training augmentation"):
        T.SGDTrainer().fit(
            nn.Linear(16, 4),
            D.load_synthetic(),
            TrainConfig(lr=0.1, batch_size=8, epochs=1, augment=True),
        )


def test_drop_last_and_progress_reports() -> None:
    calls = []

    def progress(done, total=None, /, *, description=None, **info):
        calls.append((done, total, description, info))

    net = nn.Linear(16, 4)
    data = D.load_synthetic(n_train=100)
    res = T.SGDTrainer(drop_last=True).fit(
        net, data, TrainConfig(lr=0.1, batch_size=32, epochs=2), progress=progress
    )
    assert res.attrs["steps_per_epoch"] == 3
    ends = [c for c in calls if "test_acc" in c[3]]
    assert [(c[0], c[1], c[2]) for c in ends] == [
        (3, 6, "epoch 1/2"),
        (6, 6, "epoch 2/2"),
    ]
    assert not any(math.isnan(v) for v in res.curves["train_loss"])


# ----------------------------------------------------------------- tracking


@pytest.mark.skipif(not _has_spectral(), reason="the spectral metric is not installed")
def test_tracking_spectral_every_k_epochs(tmp_path: Path, monkeypatch) -> None:
    import sharpkit.registry as registry_module

    full = Registry(warn=False)  # every installed plugin, the metrics included
    monkeypatch.setattr(registry_module, "_REGISTRY", full)
    result = sharpkit.api.train(
        "mlp-bn",
        "synthetic",
        lr=0.1,
        batch_size=32,
        epochs=5,
        track=("spectral",),
        track_every=2,
        track_samples=128,
        out_dir=tmp_path,
        checkpoint_every=2,
        model_options={"width": 16},
        data_options={"n_train": 256, "shape": "8"},
        registry=full,
    )
    lam = result.curves["spectral"]
    assert len(lam) == 5
    tracked = [1, 3, 4]  # epochs 2 and 4, and always the last epoch (5)
    assert all(math.isnan(lam[i]) for i in (0, 2))
    assert all(lam[i] > 0 for i in tracked)
    assert "spectral_stderr" in result.curves
    assert all(result.curves["spectral_bound"][i] >= 0 for i in tracked)
    assert all(result.curves["spectral_hvps"][i] >= 1 for i in tracked)
    # The value at epoch 4 is λ_max of the epoch-4 checkpoint on the first 128
    # training examples, as `sharpkit.measure` gives it directly. Both runs stop
    # on the same relative tolerance (1e-3), so they agree to about that; the warm
    # start only changes the path to the answer.
    net, _ = sharpkit.api.load_model(tmp_path / "epoch-0004.pt", registry=full)
    data = D.load_synthetic(n_train=256, shape="8")
    direct = sharpkit.api.measure(
        net, data.train.head(128), metrics=["spectral"], registry=full
    )
    assert lam[3] == pytest.approx(direct["spectral"].value, rel=3e-3)
    state = sharpkit.load_checkpoint(tmp_path / "final.pt").train_state
    assert state["warm_start"] is not None
    assert state["warm_start"].shape == (sum(p.numel() for p in net.parameters()),)
    # Tracking must not change the training itself.
    plain = sharpkit.api.train(
        "mlp-bn",
        "synthetic",
        lr=0.1,
        batch_size=32,
        epochs=5,
        model_options={"width": 16},
        data_options={"n_train": 256, "shape": "8"},
        out_dir=tmp_path / "plain",
        registry=full,
    )
    a = sharpkit.load_checkpoint(tmp_path / "final.pt").state_dict
    b = sharpkit.load_checkpoint(tmp_path / "plain" / "final.pt").state_dict
    for k in a:
        assert torch.equal(a[k], b[k]), k
    np.testing.assert_array_equal(
        result.curves["train_loss"], plain.curves["train_loss"]
    )


# ----------------------------------------------------------------- exact final values


def test_final_train_values_are_exact_and_the_running_means_kept(
    tmp_path: Path, reg
) -> None:
    from sharpkit._data import evaluate

    store = tmp_path / "r.zarr"
    result = sharpkit.api.train(
        "mlp-bn", "synthetic", lr=0.2, batch_size=32, epochs=2,
        model_options={"width": 16}, data_options={"n_train": 200},
        out_dir=tmp_path / "run", store=store, registry=reg,
    )  # fmt: skip
    net, ckpt = sharpkit.api.load_model(result.checkpoint, registry=reg)
    data = D.load_synthetic(n_train=200)
    loss, acc = evaluate(
        net.eval(), data.train, nn.functional.cross_entropy, batch_size=1024
    )
    # The same weights on the same batches: equal but for BLAS summation order.
    assert result.final["train_loss"] == pytest.approx(loss, rel=1e-9)
    assert result.final["train_accuracy"] == acc
    # the running means stay, in the curves and as *_running
    for key in ("train_loss", "train_accuracy"):
        assert result.final[f"{key}_running"] == result.curves[key][-1]
        assert ckpt.meta.final[key] == result.final[key]
        assert ckpt.meta.final[f"{key}_running"] == result.final[f"{key}_running"]
    assert result.final["train_loss"] != result.final["train_loss_running"]
    assert "eval mode on the whole training split" in ckpt.meta.extra["train_metrics"]
    # the store's gap is computed from the exact values
    [row] = sharpkit.open_results(
        store, kind="train", filter=["metric=test_accuracy"], as_frame=False
    )
    assert row["train_accuracy"] == acc
    assert row["gap"] == pytest.approx(acc - result.final["test_accuracy"], abs=1e-15)
    # a resumed, finished run reports the same exact values without training
    done = T.SGDTrainer().fit(
        net,
        data,
        TrainConfig(
            lr=0.2, batch_size=32, epochs=2, out_dir=tmp_path / "run", resume=True,
            model_name="mlp-bn", model_options={"width": 16},
            dataset_name="synthetic", dataset_options={"n_train": 200},
        ),
    )  # fmt: skip
    assert {k: done.final[k] for k in T._EXACT} == {
        k: result.final[k] for k in T._EXACT
    }
