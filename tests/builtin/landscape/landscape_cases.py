"""Small models, data and contexts with closed forms, shared by the landscape tests."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from sharpkit.interfaces import DataSplit, ProbeContext

F64 = torch.float64
CPU = torch.device("cpu")


def mse(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return ((out - y.to(out.dtype).unsqueeze(1)) ** 2).mean()


def linear(seed: int) -> torch.nn.Module:
    gen = torch.Generator().manual_seed(seed)
    net = torch.nn.Linear(3, 1, bias=False).double()
    with torch.no_grad():
        net.weight.copy_(torch.randn(1, 3, generator=gen, dtype=F64))
    return net.eval()


def bn_mlp(seed: int, *, classes: int = 3) -> torch.nn.Sequential:
    gen = torch.Generator().manual_seed(seed)
    net = torch.nn.Sequential(
        torch.nn.Linear(4, 6),
        torch.nn.BatchNorm1d(6),
        torch.nn.ReLU(),
        torch.nn.Linear(6, 5),
        torch.nn.BatchNorm1d(5),
        torch.nn.ReLU(),
        torch.nn.Linear(5, classes),
    ).double()
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=F64) * 0.8)
        for m in (net[1], net[4]):
            assert isinstance(m, torch.nn.BatchNorm1d)
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen, dtype=F64))
            m.running_var.copy_(
                0.5 + torch.rand(m.num_features, generator=gen, dtype=F64)
            )
    return net.eval()


def classification_data(n: int, seed: int, dim: int = 4) -> DataSplit:
    gen = torch.Generator().manual_seed(seed)
    return DataSplit(
        torch.randn(n, dim, generator=gen, dtype=F64),
        torch.randint(0, 3, (n,), generator=gen),
    )


def regression_data(n: int, seed: int) -> DataSplit:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=gen, dtype=F64)
    # Integer-valued targets keep the DataSplit contract; mse casts them.
    y = torch.randint(-2, 3, (n,), generator=gen)
    return DataSplit(x, y)


def context(
    models: Sequence[torch.nn.Module],
    train: DataSplit,
    test: DataSplit | None = None,
    *,
    loss: Any = torch.nn.functional.cross_entropy,
    seed: int = 0,
    batch_size: int = 7,
    progress: Any = None,
) -> ProbeContext:
    kw: dict[str, Any] = {}
    if progress is not None:
        kw["progress"] = progress
    return ProbeContext(
        models=list(models),
        loss_fn=loss,
        train_data=train,
        test_data=test,
        batch_size=batch_size,
        device=CPU,
        seed=seed,
        **kw,
    )


def quad_coeffs(
    w1: torch.Tensor, w2: torch.Tensor, split: DataSplit
) -> tuple[float, float, float]:
    """L(α) = aα² + bα + c for the linear model along (1-α)w1 + αw2 with MSE."""
    x = split.inputs.numpy()
    t = split.targets.numpy().astype(np.float64)
    r = x @ w1.numpy().ravel() - t  # residual at α = 0
    s = x @ (w2 - w1).numpy().ravel()  # change of the output per unit α
    return float((s**2).mean()), float(2 * (r * s).mean()), float((r**2).mean())
