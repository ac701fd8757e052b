"""Tiny models, data and contexts: the problems the conformance suites run on.

All are seeded and cheap (well under a second on one CPU core), and each is
built from its own :class:`torch.Generator`, so building one never touches
torch's global RNG.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import sharpkit

if TYPE_CHECKING:
    import torch

__all__ = [
    "TINY_CLASSES",
    "TINY_FEATURES",
    "tiny_context",
    "tiny_dataset",
    "tiny_model",
    "tiny_probe_context",
]

TINY_FEATURES = 8
"""Input features of :func:`tiny_model` and :func:`tiny_dataset`."""
TINY_CLASSES = 3
"""Classes of :func:`tiny_model` and :func:`tiny_dataset`."""


def tiny_model(
    *, seed: int = 0, batch_norm: bool = True, dtype: torch.dtype | None = None
) -> torch.nn.Sequential:
    """Return a small BN-MLP (8 -> 6 -> 3, 87 parameters) in eval mode.

    Its running statistics are set to non-trivial values so that eval-mode batch
    norm is not the identity.

    Args:
        seed: Seed of the weights and running statistics.
        batch_norm: Include the ``BatchNorm1d`` layer.
        dtype: Floating dtype (default ``torch.float64``).
    """
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):  # nn.Linear's own init draws from it
        layers: list[torch.nn.Module] = [torch.nn.Linear(TINY_FEATURES, 6)]
        if batch_norm:
            layers.append(torch.nn.BatchNorm1d(6))
        layers += [torch.nn.ReLU(), torch.nn.Linear(6, TINY_CLASSES)]
    net = torch.nn.Sequential(*layers).double()
    f64 = torch.float64
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=f64) * 0.7)
        if batch_norm:
            bn = net[1]
            assert isinstance(bn, torch.nn.BatchNorm1d)
            assert bn.running_mean is not None
            assert bn.running_var is not None
            bn.running_mean.copy_(torch.randn(6, generator=gen, dtype=f64) * 0.1)
            bn.running_var.copy_(1 + torch.rand(6, generator=gen, dtype=f64))
    if dtype is not None:
        net = net.to(dtype)
    return net.eval()


def _gaussian_split(
    n: int, gen: torch.Generator, dtype: torch.dtype
) -> sharpkit.DataSplit:
    import torch

    y = torch.randint(0, TINY_CLASSES, (n,), generator=gen)
    x = torch.randn(n, TINY_FEATURES, generator=gen, dtype=torch.float64)
    return sharpkit.DataSplit(x.to(dtype), y)


def tiny_context(
    *, seed: int = 0, samples: int = 64, batch_size: int = 24, **kwargs: Any
) -> sharpkit.AnalysisContext:
    """Return an :class:`~sharpkit.AnalysisContext` over :func:`tiny_model`.

    The data are ``samples`` Gaussian inputs with random labels (float64); the
    batch size does not divide ``samples``, so a short last batch is exercised.
    Keyword arguments override context fields (``tol``, ``max_hvps``, ...).
    """
    import torch

    gen = torch.Generator().manual_seed(1000 + seed)
    x = torch.randn(samples, TINY_FEATURES, generator=gen, dtype=torch.float64)
    y = torch.randint(0, TINY_CLASSES, (samples,), generator=gen)
    fields: dict[str, Any] = {
        "model": tiny_model(seed=seed),
        "loss_fn": torch.nn.functional.cross_entropy,
        "data": sharpkit.DataSplit(x, y),
        "batch_size": batch_size,
        "device": torch.device("cpu"),
        "dtype": torch.float64,
        "seed": seed,
    }
    fields.update(kwargs)
    return sharpkit.AnalysisContext(**fields)


def tiny_probe_context(
    *, n_models: int = 1, seed: int = 0, samples: int = 48, **kwargs: Any
) -> sharpkit.ProbeContext:
    """Return a :class:`~sharpkit.ProbeContext` over ``n_models`` tiny models.

    The models are :func:`tiny_model` with seeds ``seed, seed + 1, ...`` (so two
    of them are two different minima of the same architecture), in eval mode, in
    float64. The training split has ``samples`` Gaussian examples with random
    labels, the test split half as many; the batch size does not divide them.
    Keyword arguments override context fields.
    """
    import torch

    gen = torch.Generator().manual_seed(2000 + seed)
    fields: dict[str, Any] = {
        "models": [tiny_model(seed=seed + i) for i in range(n_models)],
        "loss_fn": torch.nn.functional.cross_entropy,
        "train_data": _gaussian_split(samples, gen, torch.float64),
        "test_data": _gaussian_split(max(samples // 2, 1), gen, torch.float64),
        "batch_size": 20,
        "device": torch.device("cpu"),
        "seed": seed,
    }
    fields.update(kwargs)
    return sharpkit.ProbeContext(**fields)


@dataclass(eq=False)
class _TinyDataset:
    name: str
    input_shape: tuple[int, ...]
    num_classes: int
    train: sharpkit.DataSplit
    test: sharpkit.DataSplit


def tiny_dataset(
    *,
    seed: int = 0,
    n_train: int = 64,
    n_test: int = 32,
    dtype: torch.dtype | None = None,
) -> sharpkit.Dataset:
    """Return a small :class:`~sharpkit.Dataset` that :func:`tiny_model` fits.

    Three Gaussian classes in 8 dimensions (means two standard deviations
    apart, so training makes progress); the name is ``"tiny"``.

    Args:
        seed: Seed of the data.
        n_train: Training examples.
        n_test: Test examples.
        dtype: Floating dtype of the inputs (default ``torch.float32``, as
            datasets usually are; pass ``torch.float64`` for :func:`tiny_model`'s
            default dtype).
    """
    import torch

    gen = torch.Generator().manual_seed(3000 + seed)
    means = 2.0 * torch.randn(TINY_CLASSES, TINY_FEATURES, generator=gen)

    def split(n: int) -> sharpkit.DataSplit:
        y = torch.arange(n) % TINY_CLASSES
        y = y[torch.randperm(n, generator=gen)]
        x = means[y] + torch.randn(n, TINY_FEATURES, generator=gen)
        return sharpkit.DataSplit(x.to(dtype or torch.float32), y)

    return _TinyDataset(
        name="tiny",
        input_shape=(TINY_FEATURES,),
        num_classes=TINY_CLASSES,
        train=split(n_train),
        test=split(n_test),
    )
