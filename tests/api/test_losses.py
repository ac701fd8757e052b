"""Losses by name or from code, recorded with every result."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

import sharpkit
from sharpkit.api.losses import LOSSES, resolve_loss


def test_builtin_names_are_the_torch_losses() -> None:
    # The very functions, so the trace metric still sees plain cross-entropy.
    assert resolve_loss(None).fn is F.cross_entropy
    assert resolve_loss(None).label == "cross-entropy"
    assert resolve_loss("nll").fn is F.nll_loss
    assert resolve_loss(F.cross_entropy).label == "cross-entropy"
    assert set(LOSSES) == {
        *("cross-entropy", "mse", "bce-logits", "nll", "next-token", "masked-token")
    }


def test_mse_and_bce_compare_outputs_with_targets_of_their_shape() -> None:
    gen = torch.Generator().manual_seed(0)
    out = torch.randn(5, 3, generator=gen)
    classes = torch.tensor([0, 2, 1, 1, 0])
    onehot = F.one_hot(classes, 3).float()
    mse, bce = resolve_loss("mse").fn, resolve_loss("bce-logits").fn
    assert mse(out, classes) == F.mse_loss(out, onehot)
    assert bce(out, classes) == F.binary_cross_entropy_with_logits(out, onehot)
    value = torch.randn(5, generator=gen)
    assert mse(out[:, :1], value) == F.mse_loss(out[:, 0], value)
    with pytest.raises(
        sharpkit.DataError, match=r"outputs \(5, 3\) and targets \(5, 2\)"
    ):
        mse(out, torch.randn(5, 2))


def test_unknown_loss_suggests_and_names_the_argument() -> None:
    with pytest.raises(sharpkit.ConfigError) as info:
        resolve_loss("cross_entropy")
    assert "did you mean 'cross-entropy'?" in str(info.value)
    assert "loss='package.module:name'" in str(info.value)


def measure_with(p, loss, store):
    return sharpkit.measure(p.net, (p.x, p.y), ["spectral"], loss=loss, store=store)


def test_loss_from_code_is_recorded_and_keys_the_result(own_project, tmp_path) -> None:
    p = own_project
    store = tmp_path / "s.zarr"
    m = measure_with(p, "tinyloss:smooth_ce", store)
    smooth = p.module("tinyloss").smooth_ce
    ref = sharpkit.measure(p.net, (p.x, p.y), ["spectral"], loss=smooth)
    assert m["spectral"].value == pytest.approx(ref["spectral"].value, rel=1e-9)
    assert m.attrs["loss"] == "tinyloss:smooth_ce"
    rows = sharpkit.open_results(store, as_frame=False)
    assert rows[0]["loss"] == "tinyloss:smooth_ce"
    # Reused while the code is unchanged; computed afresh once it changes.
    again = measure_with(p, "tinyloss:smooth_ce", store)
    assert again.reused == ("spectral",)
    path = p.folder / "tinyloss.py"
    path.write_text(path.read_text().replace("0.1", "0.2"))
    import sys

    sys.modules.pop("tinyloss")
    edited = measure_with(p, "tinyloss:smooth_ce", store)
    assert edited.reused == ()
    assert edited["spectral"].value != m["spectral"].value


def test_loss_class_is_instantiated() -> None:
    fn = resolve_loss("torch.nn:HuberLoss").fn
    assert isinstance(fn, torch.nn.HuberLoss)


def test_loss_that_does_not_fit_the_targets_is_one_line(own_project) -> None:
    p = own_project
    with pytest.raises(sharpkit.DataError) as info:
        sharpkit.measure(p.net, (p.x, p.y.float()), ["spectral"], loss="cross-entropy")
    text = str(info.value)
    assert "outputs (2, 3)" in text
    assert "targets (2,) float32" in text
    assert "loss=" in text
