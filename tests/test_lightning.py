"""sharpkit.lightning.SharpnessCallback with a real Lightning Trainer on the CPU."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

pl = pytest.importorskip("lightning.pytorch")
from lightning.pytorch.loggers import CSVLogger  # noqa: E402

import sharpkit  # noqa: E402
from sharpkit.errors import ConfigError  # noqa: E402
from sharpkit.lightning import SharpnessCallback  # noqa: E402

# Lightning's own warnings, not ours to fix: its tree helpers use a torch API that
# torch 2.14 deprecates, and it suggests DataLoader workers for these tiny loaders.
pytestmark = [
    pytest.mark.filterwarnings(
        r"ignore:`isinstance\(treespec, LeafSpec\)` is deprecated:FutureWarning"
    ),
    pytest.mark.filterwarnings("ignore:The '.*dataloader' does not have many workers"),
]


def data():
    g = torch.Generator().manual_seed(0)
    return torch.randn(96, 6, generator=g), torch.randint(0, 3, (96,), generator=g)


class LitNet(pl.LightningModule):
    """BN and dropout (global RNG), SGD with momentum; can fail at a given step."""

    def __init__(self, fail_at: int | None = None) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(
            nn.Linear(6, 12), nn.BatchNorm1d(12), nn.ReLU(), nn.Dropout(0.2),
            nn.Linear(12, 3),
        )  # fmt: skip
        self.fail_at = fail_at

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        if self.global_step == self.fail_at:
            raise RuntimeError("diverged")
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)


def fit(tmp_path: Path, callbacks, model=None, ckpt_path=None, **kwargs):
    x, y = data()
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x, y), batch_size=16, shuffle=True
    )
    model = model or LitNet()
    torch.manual_seed(1)  # the loader's shuffling and dropout
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        logger=CSVLogger(tmp_path, name="logs"),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=1,
        callbacks=callbacks,
        **kwargs,
    )
    trainer.fit(model, loader, ckpt_path=ckpt_path)
    return trainer, model


def logged(trainer) -> list[dict[str, str]]:
    path = Path(trainer.logger.log_dir) / "metrics.csv"
    with path.open() as fh:
        return [r for r in csv.DictReader(fh) if r.get("sharpness/spectral")]


def test_every_n_steps_logs_stores_and_leaves_training_alone(tmp_path: Path) -> None:
    x, y = data()
    store = tmp_path / "r.zarr"
    cb = SharpnessCallback(
        (x[:64], y[:64]), every_n_steps=4, store=store, warm_start=False
    )
    trainer, model = fit(tmp_path, [cb], max_steps=12)
    assert cb.tracker.curves["step"].tolist() == [4, 8, 12]
    # what the logger got: the value, its bound and products, at those steps
    rows = logged(trainer)
    assert [int(r["step"]) for r in rows] == [4, 8, 12]
    for r, value in zip(rows, cb.tracker.curves["spectral"], strict=True):
        assert float(r["sharpness/spectral"]) == pytest.approx(value, rel=1e-12)
        assert float(r["sharpness/spectral_bound"]) >= 0
        assert float(r["sharpness/spectral_hvps"]) >= 1
    # the last value is sharpkit.measure of the final model (cold start: the
    # same computation, so the same number exactly)
    direct = sharpkit.measure(model.net, (x[:64], y[:64]))["spectral"].value
    assert cb.tracker.curves["spectral"][-1] == direct
    # the store has one track run with the same curve
    (info,) = sharpkit.ResultStore(store, create=False).runs(kind="track")
    assert info.run_id == cb.run_id
    assert info.attrs["measurements"] == 3
    assert info.attrs["interrupted"] is False
    # training with the callback gave the same weights as without, bit for bit
    _, plain = fit(tmp_path / "plain", [], max_steps=12)
    for (k, a), b in zip(
        model.state_dict().items(), plain.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), k


def test_every_n_epochs_and_a_module_attribute(tmp_path: Path) -> None:
    cb = SharpnessCallback(data(), ["spectral"], every_n_epochs=2, module="net")
    fit(tmp_path, [cb], max_epochs=4)  # 6 steps per epoch
    curves = cb.tracker.curves
    assert curves["step"].tolist() == [12, 24]
    assert curves["epoch"].tolist() == [1, 3]  # Lightning counts epochs from 0
    assert cb.tracker.last is not None
    assert cb.tracker.last.attrs["model"] == "Sequential"  # the attribute, measured


def test_an_exception_stores_the_curve_so_far(tmp_path: Path) -> None:
    store = tmp_path / "r.zarr"
    cb = SharpnessCallback(data(), every_n_steps=2, store=store)
    with pytest.raises(RuntimeError, match="diverged"):
        fit(tmp_path, [cb], model=LitNet(fail_at=5), max_steps=12)
    (info,) = sharpkit.ResultStore(store, create=False).runs()
    assert info.attrs["interrupted"] is True
    assert info.attrs["measurements"] == 2  # steps 2 and 4


def test_resuming_from_a_checkpoint_continues_the_curve(tmp_path: Path) -> None:
    first = SharpnessCallback(data(), every_n_steps=3)
    trainer, _ = fit(tmp_path, [first], max_epochs=1)
    ckpt = tmp_path / "epoch1.ckpt"
    trainer.save_checkpoint(ckpt)
    assert first.tracker.closed
    second = SharpnessCallback(data(), every_n_steps=3)
    fit(tmp_path, [second], model=LitNet(), ckpt_path=ckpt, max_epochs=2)
    assert second.tracker.curves["step"].tolist() == [3, 6, 9, 12]
    assert second.tracker.curves["spectral"][:2].tolist() == (
        first.tracker.curves["spectral"].tolist()
    )
    assert second.tracker.last is not None
    assert second.tracker.last["spectral"].attrs["start"] == "warm"


def test_bad_arguments_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not both"):
        SharpnessCallback(data(), every_n_steps=2, every_n_epochs=1)
    with pytest.raises(ConfigError, match="unknown keyword argument 'every_n'"):
        SharpnessCallback(data(), every_n=2)
    with pytest.raises(ConfigError, match="every_n_steps must be a whole number"):
        SharpnessCallback(data(), every_n_steps=0)
    with pytest.raises(ConfigError, match="every_n_epochs must be a whole number"):
        SharpnessCallback(data(), every_n_epochs=1.5)
    cb = SharpnessCallback(data(), every_n_steps=2, module="missing")
    with pytest.raises(ConfigError, match="module='missing'"):
        fit(tmp_path, [cb], max_steps=4)


def test_import_sharpkit_does_not_import_lightning() -> None:
    code = (
        "import sys, sharpkit; sharpkit.Tracker; "
        "print('lightning' in sys.modules, 'sharpkit.lightning' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["False", "False"]


def test_without_lightning_the_import_says_what_to_install() -> None:
    code = (
        "import sys; sys.modules['lightning'] = None\n"
        "try:\n    import sharpkit.lightning\n"
        "except ImportError as e:\n    print(e)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert "pip install 'sharpkit[lightning]'" in out.stdout
    assert len(out.stdout.strip().splitlines()) == 1
