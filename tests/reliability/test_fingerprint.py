"""The digests the reuse key is made of (:mod:`sharpkit.api.fingerprint`).

They must tell apart every computation that gives another value, give the same
digest for the same computation (across thread counts), and leave the model
exactly as it was.
"""

from __future__ import annotations

import copy

import pytest
import torch

from sharpkit._data import DataSplit
from sharpkit.api.fingerprint import (
    behaviour_fingerprint,
    data_digest,
    key_fields,
    tensor_digest,
)

ce = torch.nn.functional.cross_entropy


def _data(n: int = 16, dtype: torch.dtype = torch.float32) -> DataSplit:
    gen = torch.Generator().manual_seed(0)
    return DataSplit(torch.randn(n, 6, generator=gen, dtype=dtype), torch.arange(n) % 3)


def _net(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(6, 5), torch.nn.BatchNorm1d(5), torch.nn.Tanh(),
        torch.nn.Dropout(0.5), torch.nn.Linear(5, 3),
    )  # fmt: skip


class Scaled(torch.nn.Module):
    def __init__(self, net: torch.nn.Module, scale: float) -> None:
        super().__init__()
        self.net, self.scale = net, scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * self.net(x)


def test_the_same_computation_gives_the_same_digest_on_any_thread_count() -> None:
    net, data = _net(), _data()
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = behaviour_fingerprint(net, ce, data)
        torch.set_num_threads(2)
        two = behaviour_fingerprint(net, ce, data)
    finally:
        torch.set_num_threads(threads)
    assert one == two == behaviour_fingerprint(copy.deepcopy(net), ce, data)


@pytest.mark.parametrize(
    "other",
    [
        lambda net: Scaled(net, 3.0),  # an option of the model's code
        lambda net: torch.nn.Sequential(*list(net)[:-1], torch.nn.ReLU(), net[-1]),
        lambda net: _net(seed=1),  # other weights
    ],
    ids=["option", "layer", "weights"],
)
def test_another_function_gives_another_digest(other) -> None:
    net, data = _net(), _data()
    base = behaviour_fingerprint(Scaled(net, 1.0), ce, data)
    assert behaviour_fingerprint(other(copy.deepcopy(net)), ce, data) != base


def test_a_change_in_the_last_float32_bits_is_seen() -> None:
    """One weight moved by 1e-6 relatively: far above float64 noise (1e-15)."""
    net, data = _net(), _data()
    moved = copy.deepcopy(net)
    with torch.no_grad():
        moved[0].weight[0, 0] *= 1 + 1e-6
    assert behaviour_fingerprint(moved, ce, data) != behaviour_fingerprint(
        net, ce, data
    )


def test_another_loss_gives_another_digest() -> None:
    net, data = _net(), _data()

    def smooth(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return ce(out, y, label_smoothing=0.1)

    assert behaviour_fingerprint(net, smooth, data) != behaviour_fingerprint(
        net, ce, data
    )


def test_the_model_is_left_exactly_as_it_was() -> None:
    net, data = _net(), _data()
    net.train()
    net[1].eval()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    behaviour_fingerprint(net, ce, data)
    assert all(p.grad is None for p in net.parameters())
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert [m.training for m in net] == [True, False, True, True, True]
    assert all(p.dtype == torch.float32 for p in net.parameters())


def test_a_model_without_a_float64_path_is_fingerprinted_in_its_own_dtype() -> None:
    class Float32Only(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(6, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x) + torch.zeros(3)  # float32 constant: fails in float64

    net, data = Float32Only(), _data()
    a = behaviour_fingerprint(net, ce, data)
    with torch.no_grad():
        net.fc.bias.add_(1.0)
    assert behaviour_fingerprint(net, ce, data) != a


def test_data_digest_is_of_the_values_their_dtype_and_the_selection() -> None:
    data = _data()
    assert data_digest(data) == data_digest(_data())
    assert data_digest(data) != data_digest(_data(dtype=torch.float64))
    assert data_digest(data) != data_digest(data.head(15))
    shifted = DataSplit(data.inputs + 1e-7, data.targets)
    assert data_digest(data) != data_digest(shifted)
    wide = torch.arange(24.0).reshape(4, 6)
    assert tensor_digest(wide.t()) == tensor_digest(wide.t().contiguous())
    with pytest.raises(ValueError, match="no bytes"):
        tensor_digest(torch.empty(3, device="meta"))


def test_key_fields_name_the_batch_size() -> None:
    net, data = _net(), _data()
    a = key_fields(net, ce, data, batch_size=16)
    b = key_fields(net, ce, data, batch_size=128)
    assert a != b
    assert a["behaviour"] == b["behaviour"]
