"""The rescale probe: Dinh et al.'s rescaling moves λ_max, not adaptive sharpness.

A ReLU network keeps its function when one layer (weight and bias) is
multiplied by c and the next layer's weight by 1/c; its Hessian does not.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import sharpkit
from sharpkit.builtin._datasets import load_synthetic
from sharpkit.builtin._landscape.rescale import (
    Rescale,
    parse_c_grid,
    parse_metric_options,
)
from sharpkit.builtin._trainer import SGDTrainer
from sharpkit.errors import ConfigError
from sharpkit.interfaces import TrainConfig


@pytest.fixture(scope="module")
def trained() -> tuple[torch.nn.Module, object]:
    """A 16-24-24-4 ReLU MLP (no batch norm) trained near a minimum."""
    data = load_synthetic(n_train=128, n_test=32, shape="16", classes=4)
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(16, 24), torch.nn.ReLU(),
        torch.nn.Linear(24, 24), torch.nn.ReLU(),
        torch.nn.Linear(24, 4),
    )  # fmt: skip
    SGDTrainer().fit(net, data, TrainConfig(lr=0.1, batch_size=16, epochs=15))
    return net.eval(), data


def test_function_same_lambda_max_moves_adaptive_does_not(trained) -> None:
    net, data = trained
    before = {k: v.clone() for k, v in net.state_dict().items()}
    result = sharpkit.probe(
        "rescale",
        [net],
        data,
        options={
            "layers": "2,4",  # the second and third linear layers
            "c": "0.1,1,10",
            "metrics": "spectral,adaptive,pacbayes-mag-sigma",
            "metric_options": "adaptive.kind=average,adaptive.samples=16,"
            "pacbayes-mag-sigma.samples=8",
            "samples": 128,
        },
    )
    assert result.coords["c"].tolist() == [0.1, 1.0, 10.0]
    a = result.arrays
    # The function: float32 outputs equal to a few ulps of the largest output
    # (measured 2e-7); 1e-5 leaves room and is far below any real change.
    assert a["output_change"].max() < 1e-5
    assert np.allclose(a["train_loss"], a["train_loss"][1], rtol=1e-5)
    # λ_max: the second layer's Hessian block scales by c², the first's by 1/c².
    lam = a["spectral"]
    # λ_max is deterministic: its Lanczos bound is kept, no all-NaN stderr array.
    assert "spectral_stderr" not in a
    assert np.all((a["spectral_bound"] >= 0) & (a["spectral_bound"] < 1e-2 * lam))
    assert lam[2] > 10 * lam[1]
    assert lam[0] > 10 * lam[1]  # c = 0.1 blows up the other block
    # Adaptive sharpness (average case, the same Gaussian draws at every c)
    # agrees within its standard error: the rescaling maps |θ|⊙z onto itself.
    ada, err = a["adaptive"], a["adaptive_stderr"]
    assert np.all(np.abs(ada - ada[1]) < err[1])
    # so does the magnitude-aware PAC-Bayes σ*, within its interval
    sig, sig_err = a["pacbayes-mag-sigma"], a["pacbayes-mag-sigma_stderr"]
    assert np.all(np.abs(sig - sig[1]) < sig_err[1])
    assert result.summary["spectral_spread"] > 10
    assert result.summary["adaptive_spread"] < 1.01
    assert result.attrs["layers"] == ["2", "4"]
    for k, v in net.state_dict().items():  # the caller's model is untouched
        assert torch.equal(v, before[k]), k


def test_batch_norm_between_the_layers_is_refused() -> None:
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(16, 8), torch.nn.BatchNorm1d(8), torch.nn.ReLU(),
        torch.nn.Linear(8, 4),
    ).eval()  # fmt: skip
    with torch.no_grad():
        net[1].running_mean.normal_()
    data = load_synthetic(n_train=32, n_test=8, shape="16", classes=4)
    with pytest.raises(ConfigError, match=r"changes the function.*no batch norm"):
        sharpkit.probe(
            "rescale", [net], data, options={"c": "2", "metrics": "spectral"}
        )


def test_default_pair_is_the_first_two_layers_and_names_are_checked(trained) -> None:
    net, _ = trained
    assert Rescale()._pair(net) == ("0", "2")
    with pytest.raises(ConfigError, match=r"no linear/conv layer named 'fc9'.*0, 2, 4"):
        Rescale(layers="0,fc9")._pair(net)
    with pytest.raises(ConfigError, match="two different modules"):
        Rescale(layers="0")._pair(net)


def test_option_parsing() -> None:
    assert parse_c_grid("0.1:10:5").tolist() == pytest.approx(
        [0.1, 10**-0.5, 1.0, 10**0.5, 10.0], rel=1e-12
    )
    assert parse_c_grid("3,0.5").tolist() == [0.5, 1.0, 3.0]  # 1 added, sorted
    assert parse_metric_options("") == {}
    for bad in ("0,2", "a,b", "1:2"):
        with pytest.raises(ConfigError, match="option 'c'"):
            parse_c_grid(bad)
    with pytest.raises(ConfigError, match=r"metric\.option=value"):
        parse_metric_options("kind=average")
    with pytest.raises(ConfigError, match="not in metrics"):
        Rescale(metrics="spectral", metric_options="adaptive.kind=average")
    with pytest.raises(ConfigError, match="names no metric"):
        Rescale(metrics=" , ")
