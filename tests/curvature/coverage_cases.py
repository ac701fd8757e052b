"""Model families with exact dense Hessians, for the coverage test of the estimators.

Each family is a small float64 network (about 250-750 parameters, larger than the
quadratics in ``tests/cases.py`` so that deflation leaves a real remainder) on
seeded data, trained for a few full-batch steps so that its Hessian has the
outliers-over-a-bulk shape of a trained network, but is not at a minimum (some
negative curvature remains, as in practice). ``dense_hessian`` differentiates the
gradient once per parameter (double backward, batched), independently of
``sharpkit.curvature``; ``torch.func.hessian`` is not used (it is wrong through
batch statistics in torch 2.14; no family here uses them, but the rule is kept).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

import torch
from torch import Tensor, nn

DTYPE = torch.float64
Loss = Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class Family:
    """A trained model, its loss and data, and the dense Hessian of the mean loss."""

    name: str
    model: nn.Module
    loss_fn: Loss
    inputs: Tensor
    targets: Tensor
    hessian: Tensor

    @property
    def n(self) -> int:
        return int(self.hessian.shape[0])

    def matvec(self, v: Tensor) -> Tensor:
        return self.hessian @ v


def _mlp(act: Callable[[], nn.Module], sizes: tuple[int, ...]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(act())
    return nn.Sequential(*layers)


def _bn_mlp() -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(10, 16),
        nn.BatchNorm1d(16),
        nn.ReLU(),
        nn.Linear(16, 16),
        nn.BatchNorm1d(16),
        nn.ReLU(),
        nn.Linear(16, 4),
    )


def _conv() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, 4, 3),
        nn.ReLU(),
        nn.Conv2d(4, 6, 3, stride=2),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(6 * 2 * 2, 3),
    )


class _Bag(nn.Module):
    """Token embeddings averaged over a short sequence, then a linear read-out."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(50, 6)
        self.out = nn.Linear(6, 4)

    def forward(self, tokens: Tensor) -> Tensor:
        return self.out(torch.tanh(self.emb(tokens).mean(dim=1)))


def _bce(out: Tensor, y: Tensor) -> Tensor:
    return nn.functional.binary_cross_entropy_with_logits(out.squeeze(-1), y)


CE = nn.functional.cross_entropy
MSE = nn.functional.mse_loss

# name -> (model factory, input shape, target kind, loss)
_SPECS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...], str, Loss]] = {
    "mlp-tanh": (lambda: _mlp(nn.Tanh, (10, 20, 16, 4)), (10,), "class4", CE),
    "mlp-relu": (lambda: _mlp(nn.ReLU, (10, 20, 16, 4)), (10,), "class4", CE),
    "mlp-gelu": (lambda: _mlp(nn.GELU, (10, 20, 16, 4)), (10,), "class4", CE),
    "bn-mlp-eval": (_bn_mlp, (10,), "class4", CE),
    "conv": (_conv, (1, 8, 8), "class3", CE),
    "mse-regression": (lambda: _mlp(nn.Tanh, (6, 24, 12, 3)), (6,), "real3", MSE),
    "sigmoid-bce": (lambda: _mlp(nn.Sigmoid, (8, 24, 12, 1)), (8,), "binary", _bce),
    "embedding": (_Bag, (3,), "class4", CE),
}

NAMES = tuple(_SPECS)
EXAMPLES = 48
TRAIN_STEPS = 60


def _data(
    kind: str, shape: tuple[int, ...], gen: torch.Generator
) -> tuple[Tensor, Tensor]:
    if shape == (3,) and kind == "class4":  # token ids, Zipf-like: some rare
        weights = 1.0 / torch.arange(1, 51, dtype=DTYPE)
        x = torch.multinomial(weights, EXAMPLES * 3, True, generator=gen)
        x = x.reshape(EXAMPLES, 3)
        return x, torch.randint(0, 4, (EXAMPLES,), generator=gen)
    x = torch.randn(EXAMPLES, *shape, generator=gen, dtype=DTYPE)
    if kind.startswith("class"):
        y = torch.randint(0, int(kind[-1]), (EXAMPLES,), generator=gen)
    elif kind == "binary":
        y = torch.randint(0, 2, (EXAMPLES,), generator=gen).to(DTYPE)
    else:
        w = torch.randn(x[0].numel(), 3, generator=gen, dtype=DTYPE)
        y = torch.tanh(x.reshape(EXAMPLES, -1) @ w) + 0.1 * torch.randn(
            EXAMPLES, 3, generator=gen, dtype=DTYPE
        )
    return x, y


def _train(model: nn.Module, loss_fn: Loss, x: Tensor, y: Tensor) -> None:
    """Full-batch Adam steps, written out (``torch.optim`` imports the compiler).

    Batch norm trains its running statistics on the way.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    m1 = [torch.zeros_like(p) for p in params]
    m2 = [torch.zeros_like(p) for p in params]
    model.train()
    for t in range(1, TRAIN_STEPS + 1):
        grads = torch.autograd.grad(loss_fn(model(x), y), params)
        with torch.no_grad():
            for p, g, a, b in zip(params, grads, m1, m2, strict=True):
                a.mul_(0.9).add_(g, alpha=0.1)
                b.mul_(0.999).addcmul_(g, g, value=0.001)
                step = (a / (1 - 0.9**t)) / ((b / (1 - 0.999**t)).sqrt() + 1e-8)
                p.sub_(0.02 * step)
    model.eval()


def dense_hessian(model: nn.Module, loss_fn: Loss, x: Tensor, y: Tensor) -> Tensor:
    """The Hessian of ``loss_fn(model(x), y)`` by double backward, batched."""
    params = [p for p in model.parameters() if p.requires_grad]
    loss = loss_fn(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    g = torch.cat([t.reshape(-1) for t in grads])
    eye = torch.eye(g.numel(), dtype=g.dtype)
    rows = torch.autograd.grad(g, params, grad_outputs=eye, is_grads_batched=True)
    H = torch.cat([r.reshape(g.numel(), -1) for r in rows], dim=1).detach()
    return (H + H.T) / 2


@cache
def family(name: str, seed: int = 0) -> Family:
    """Build (once per process) the family ``name``: train it and take its Hessian."""
    factory, shape, kind, loss_fn = _SPECS[name]
    gen = torch.Generator().manual_seed(1000 + seed + 17 * NAMES.index(name))
    torch.manual_seed(seed + 31 * NAMES.index(name))
    model = factory().to(DTYPE)
    x, y = _data(kind, shape, gen)
    _train(model, loss_fn, x, y)
    H = dense_hessian(model, loss_fn, x, y)
    return Family(name, model, loss_fn, x, y, H)
