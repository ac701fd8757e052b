"""The one checkpoint loader: formats, safety, and clear errors for bad files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import sharpkit
from sharpkit.checkpoint import CheckpointMeta, load_state_dict_into


def small_net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(4, 5),
        torch.nn.BatchNorm1d(5),
        torch.nn.ReLU(),
        torch.nn.Linear(5, 3),
    )


def assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_sharpkit_format_round_trip(tmp_path: Path) -> None:
    net = small_net()
    meta = CheckpointMeta(
        model="mlp-bn",
        model_options={"width": 5},
        dataset="synthetic",
        lr=0.1,
        batch_size=32,
        seed=7,
        epoch=3,
        final={"test_accuracy": 0.5},
        extra={"input_shape": [4], "num_classes": 3},
    )
    path = sharpkit.save_checkpoint(
        tmp_path / "a.pt",
        net,
        meta,
        train_state={"epoch": 3, "rng": torch.get_rng_state()},
    )
    ckpt = sharpkit.load_checkpoint(path)
    assert ckpt.format == "sharpkit"
    assert ckpt.meta == meta
    assert ckpt.train_state is not None
    assert ckpt.train_state["epoch"] == 3
    assert_same_state(ckpt.state_dict, net.state_dict())
    assert len(ckpt.sha256) == 64
    assert not list(tmp_path.glob(".*.tmp"))  # nothing left from the atomic write


def test_bare_state_dict_and_common_wrappers(tmp_path: Path) -> None:
    net = small_net()
    state = net.state_dict()
    cases = {
        "bare.pt": state,
        "lightning.pt": {"state_dict": state, "epoch": 4},
        "model.pt": {"model": state, "optimizer": {"lr": 0.1}},
        "ddp.pt": {f"module.{k}": v for k, v in state.items()},
    }
    for name, obj in cases.items():
        torch.save(obj, tmp_path / name)
        ckpt = sharpkit.load_checkpoint(tmp_path / name)
        assert ckpt.format == "state_dict"
        assert ckpt.meta == CheckpointMeta()
        assert_same_state(ckpt.state_dict, state)


def test_safetensors_round_trip_keeps_metadata(tmp_path: Path) -> None:
    net = small_net()
    meta = CheckpointMeta(model="mlp-bn", lr=0.05, batch_size=128)
    sharpkit.save_checkpoint(tmp_path / "a.safetensors", net, meta)
    ckpt = sharpkit.load_checkpoint(tmp_path / "a.safetensors")
    assert ckpt.format == "safetensors"
    assert ckpt.meta.lr == 0.05
    assert ckpt.meta.model == "mlp-bn"
    assert_same_state(ckpt.state_dict, net.state_dict())


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_without_running(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "x": _Payload(marker)}, path)
    # test_payload_would_run_under_plain_pickle shows the payload is live.
    with pytest.raises(sharpkit.UnsafeCheckpointError) as info:
        sharpkit.load_checkpoint(path)
    assert not marker.exists()
    message = str(info.value)
    assert "system" in message
    assert "\n" not in message
    assert "state_dict" in message  # says what to do


def test_payload_would_run_under_plain_pickle(tmp_path: Path) -> None:
    # Proves the previous test's payload is live: a child process that unpickles
    # it without weights_only creates the marker.
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pt"
    torch.save({"x": _Payload(marker)}, path)
    code = "import torch,sys; torch.load(sys.argv[1], weights_only=False)"
    subprocess.run(
        [sys.executable, "-c", code, str(path)], check=True, capture_output=True
    )
    assert marker.exists()


def test_truncated_file(tmp_path: Path) -> None:
    path = tmp_path / "a.pt"
    sharpkit.save_checkpoint(path, small_net())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(sharpkit.CorruptCheckpointError, match="truncated or damaged"):
        sharpkit.load_checkpoint(path)


def test_not_a_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "notes.pt"
    path.write_text("hello, I am not a checkpoint\n")
    with pytest.raises(
        sharpkit.CorruptCheckpointError, match="not a PyTorch checkpoint"
    ):
        sharpkit.load_checkpoint(path)
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(sharpkit.CorruptCheckpointError, match="without a state_dict"):
        sharpkit.load_checkpoint(tmp_path / "list.pt")


def test_truncated_safetensors(tmp_path: Path) -> None:
    path = tmp_path / "a.safetensors"
    sharpkit.save_checkpoint(path, small_net())
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(sharpkit.CorruptCheckpointError):
        sharpkit.load_checkpoint(path)


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(sharpkit.CheckpointNotFoundError, match="no such file") as info:
        sharpkit.load_checkpoint(tmp_path / "nope.pt")
    assert isinstance(info.value, FileNotFoundError)
    with pytest.raises(sharpkit.CheckpointNotFoundError, match="is a directory"):
        sharpkit.load_checkpoint(tmp_path)


def test_state_dict_mismatch_names_keys() -> None:
    net = small_net()
    state = dict(net.state_dict())
    state.pop("3.bias")
    state["extra.weight"] = torch.zeros(1)
    state["0.weight"] = torch.zeros(7, 4)
    with pytest.raises(sharpkit.StateDictMismatchError) as info:
        load_state_dict_into(small_net(), state)
    err = info.value
    assert err.missing == ("3.bias",)
    assert err.unexpected == ("extra.weight",)
    assert err.mismatched == (("0.weight", (7, 4), (5, 4)),)
    text = str(err)
    assert "missing '3.bias'" in text
    assert "unexpected 'extra.weight'" in text
    assert "[7, 4] in file vs [5, 4] in model" in text
    assert "\n" not in text


def test_failed_save_leaves_previous_file(tmp_path: Path) -> None:
    path = tmp_path / "a.pt"
    sharpkit.save_checkpoint(path, small_net())
    before = path.read_bytes()
    with pytest.raises(ValueError, match="train_state"):
        sharpkit.save_checkpoint(
            tmp_path / "a.safetensors", small_net(), train_state={"x": 1}
        )
    assert path.read_bytes() == before
    assert not list(tmp_path.glob(".*.tmp"))
