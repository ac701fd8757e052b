"""The benchmark workloads of issue 3, built without sharpkit's plugins.

* ``mlp_workload``: a 784-256-256-256-10 BN-ReLU MLP (336,650 parameters) trained
  3 epochs with plain SGD (η=0.05, S=128) on real Fashion-MNIST; analysed in eval
  mode with the mean cross-entropy over the first 2048 training images.
* ``resnet_workload``: ResNet-56 (from sharpkit's ``resnet-cifar`` model plugin),
  briefly trained on CIFAR-10, analysed on 256 training images.

Trained weights are cached under ``bench/results/`` (git-ignored) so reruns skip
training; delete the file to retrain.
"""

from __future__ import annotations

import gzip
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

RESULTS = Path(__file__).resolve().parent / "results"
FMNIST = Path("/usr/share/datasets/fashion-mnist")
CIFAR10 = Path("/work/shared/data/cifar10")


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as fh:
        data = fh.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def fashion_mnist_train() -> tuple[torch.Tensor, torch.Tensor]:
    """Return the 60k training images (flattened, standardised) and labels."""
    x = _read_idx(FMNIST / "train-images-idx3-ubyte.gz").astype(np.float32) / 255.0
    y = _read_idx(FMNIST / "train-labels-idx1-ubyte.gz").astype(np.int64)
    x = (x - 0.2860) / 0.3530
    return torch.from_numpy(x.reshape(len(x), -1)), torch.from_numpy(y)


def mlp_bn() -> nn.Module:
    """Return the 784-256-256-256-10 BN-ReLU MLP (336,650 parameters)."""
    layers: list[nn.Module] = []
    width = 784
    for _ in range(3):
        layers += [nn.Linear(width, 256), nn.BatchNorm1d(256), nn.ReLU()]
        width = 256
    layers.append(nn.Linear(width, 10))
    return nn.Sequential(*layers)


def _train(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    lr: float,
    batch_size: int,
    epochs: int,
    seed: int,
    momentum: float = 0.0,
    augment=None,
) -> float:
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    model.train()
    t0 = time.perf_counter()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=gen)
        for start in range(0, len(x), batch_size):
            idx = order[start : start + batch_size]
            xb = x[idx]
            if augment is not None:
                xb = augment(xb, gen)
            loss = nn.functional.cross_entropy(model(xb), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    model.eval()
    return time.perf_counter() - t0


def mlp_workload(
    n_samples: int = 2048, *, epochs: int = 3, seed: int = 0
) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """Return the trained BN-MLP (eval mode) and the analysis inputs/targets."""
    x, y = fashion_mnist_train()
    torch.manual_seed(seed)
    model = mlp_bn()
    path = RESULTS / f"mlp_bn_fmnist_e{epochs}_s{seed}.pt"
    if path.exists():
        model.load_state_dict(torch.load(path, weights_only=True))
    else:
        _train(model, x, y, lr=0.05, batch_size=128, epochs=epochs, seed=seed)
        RESULTS.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), path)
    model.eval()
    return model, x[:n_samples].contiguous(), y[:n_samples].contiguous()


def cifar10_train() -> tuple[torch.Tensor, torch.Tensor]:
    """Return the 50k CIFAR-10 training images (NCHW, standardised) and labels."""
    data = np.load(CIFAR10 / "cifar10_train.npz")
    x = data["x_train"].astype(np.float32) / 255.0
    mean = np.array([0.4914, 0.4822, 0.4465], dtype=np.float32)
    std = np.array([0.2470, 0.2435, 0.2616], dtype=np.float32)
    x = (x - mean) / std
    x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    return torch.from_numpy(x), torch.from_numpy(data["y_train"].astype(np.int64))


def resnet_workload(
    n_samples: int = 256,
    *,
    train_images: int = 5000,
    epochs: int = 1,
    seed: int = 0,
) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """Return a briefly trained ResNet-56 (eval mode) and the analysis set.

    Needs sharpkit's ``resnet-cifar`` model plugin. Training: SGD with momentum
    0.9, η=0.05, S=128 for ``epochs`` passes over the first ``train_images``
    images (enough to leave the degenerate random-weight spectrum).
    """
    from sharpkit.registry import get_registry

    x, y = cifar10_train()
    torch.manual_seed(seed)
    model = get_registry().create(
        "model",
        "resnet-cifar",
        {"depth": 56},
        input_shape=(3, 32, 32),
        num_classes=10,
    )
    path = RESULTS / f"resnet56_cifar_n{train_images}_e{epochs}_s{seed}.pt"
    if path.exists():
        model.load_state_dict(torch.load(path, weights_only=True))
    else:
        _train(
            model,
            x[:train_images],
            y[:train_images],
            lr=0.05,
            batch_size=128,
            epochs=epochs,
            seed=seed,
            momentum=0.9,
        )
        RESULTS.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), path)
    model.eval()
    return model, x[:n_samples].contiguous(), y[:n_samples].contiguous()
