"""Small float64 models with an exact Hessian by plain double backward.

``dense_reference`` does not use ``sharpkit.curvature``: it differentiates the
mean loss over all the data twice, one row at a time (``torch.func.hessian`` is
not used: it is wrong through LayerNorm and batch-statistics BN in this torch).
Every model is evaluated in eval mode (batch norm on running statistics, the
analysis default), so the loss of the whole data at once is the size-weighted
mean of the per-batch losses the operator computes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from sharpkit.interfaces import DataSplit

DTYPE = torch.float64


@dataclass
class Problem:
    """A model, a loss, data, and the exact dense Hessian of its trainable params."""

    id: str
    model: nn.Module
    loss_fn: Callable[[Tensor, Tensor], Tensor]
    x: Tensor
    y: Tensor
    batch_size: int = 16

    @property
    def data(self) -> DataSplit:
        return DataSplit(self.x, self.y)

    def params(self) -> list[Tensor]:
        return [p for p in self.model.parameters() if p.requires_grad]


def dense_reference(problem: Problem) -> Tensor:
    """The Hessian of the mean loss over all the data, by plain double backward."""
    model = problem.model.eval()
    params = problem.params()
    loss = problem.loss_fn(model(problem.x), problem.y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    g = torch.cat([t.reshape(-1) for t in grads])
    rows = []
    for i in range(g.numel()):
        row = torch.autograd.grad(g[i], params, retain_graph=True, allow_unused=True)
        rows.append(
            torch.cat(
                [
                    torch.zeros(p.numel(), dtype=DTYPE) if r is None else r.reshape(-1)
                    for r, p in zip(row, params, strict=True)
                ]
            )
        )
    h = torch.stack(rows)
    return (h + h.T) / 2


def _randomize_bn(model: nn.Module, gen: torch.Generator) -> None:
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                c = m.num_features
                m.running_mean.copy_(0.3 * torch.randn(c, generator=gen, dtype=DTYPE))
                m.running_var.copy_(0.5 + torch.rand(c, generator=gen, dtype=DTYPE))
                m.weight.copy_(1 + 0.2 * torch.randn(c, generator=gen, dtype=DTYPE))
                m.bias.copy_(0.1 * torch.randn(c, generator=gen, dtype=DTYPE))


def bn_mlp(seed: int = 0) -> Problem:
    """6-7-BN-ReLU-5-BN-ReLU-3 (the paper's mlp-bn in miniature), 41 examples."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Linear(6, 7),
        nn.BatchNorm1d(7),
        nn.ReLU(),
        nn.Linear(7, 5),
        nn.BatchNorm1d(5),
        nn.ReLU(),
        nn.Linear(5, 3),
    ).to(DTYPE)
    _randomize_bn(model, gen)
    x = torch.randn(41, 6, generator=gen, dtype=DTYPE)
    y = torch.randint(0, 3, (41,), generator=gen)
    return Problem("bn-mlp", model, nn.functional.cross_entropy, x, y)


def conv_net(seed: int = 0) -> Problem:
    """conv(2->3)-BN-ReLU-conv(3->2)-ReLU-linear, 23 images of 6x6."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1),
        nn.BatchNorm2d(3),
        nn.ReLU(),
        nn.Conv2d(3, 2, 3, stride=2),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(2 * 2 * 2, 4),
    ).to(DTYPE)
    _randomize_bn(model, gen)
    x = torch.randn(23, 2, 6, 6, generator=gen, dtype=DTYPE)
    y = torch.randint(0, 4, (23,), generator=gen)
    return Problem("conv", model, nn.functional.cross_entropy, x, y, batch_size=10)


class TinyTransformer(nn.Module):
    """One pre-LN transformer block (2-head attention, GELU MLP, LayerNorm), a head.

    Attention is written out (softmax of ``QKᵀ/√d``): torch's fused CPU kernel has
    no double backward, so ``nn.TransformerEncoderLayer`` has no Hessian here.
    """

    def __init__(self, d: int = 4, heads: int = 2, classes: int = 3) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.norm2 = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, 6), nn.GELU(), nn.Linear(6, d))
        self.head = nn.Linear(d, classes)

    def forward(self, x: Tensor) -> Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).chunk(3, dim=-1)
        q, k, v = (z.reshape(b, t, self.heads, -1).transpose(1, 2) for z in (q, k, v))
        att = torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1)
        x = x + self.proj((att @ v).transpose(1, 2).reshape(b, t, d))
        x = x + self.mlp(self.norm2(x))
        return self.head(x.mean(dim=1))


def transformer(seed: int = 0) -> Problem:
    """A transformer block on 19 sequences of 4 tokens of width 4 (169 parameters)."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = TinyTransformer().to(DTYPE)
    x = torch.randn(19, 4, 4, generator=gen, dtype=DTYPE)
    y = torch.randint(0, 3, (19,), generator=gen)
    return Problem("transformer", model, nn.functional.cross_entropy, x, y, 8)


class Tied(nn.Module):
    """Embedding -> tanh layer -> decoder whose weight *is* the embedding's."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(7, 4)
        self.hidden = nn.Linear(4, 4)
        self.decoder = nn.Linear(4, 7)
        self.decoder.weight = self.embed.weight

    def forward(self, tokens: Tensor) -> Tensor:
        return self.decoder(torch.tanh(self.hidden(self.embed(tokens).mean(dim=1))))


def tied(seed: int = 0) -> Problem:
    """Weights tied across two blocks: 17 sequences of 3 tokens."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = Tied().to(DTYPE)
    x = torch.randint(0, 7, (17, 3), generator=gen)
    y = torch.randint(0, 7, (17,), generator=gen)
    return Problem("tied", model, nn.functional.cross_entropy, x, y, 8)


def frozen(seed: int = 0) -> Problem:
    """A tanh MLP whose first layer is frozen (a fixed feature extractor)."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 6), nn.Tanh(), nn.Linear(6, 3)
    ).to(DTYPE)
    model[0].requires_grad_(False)
    x = torch.randn(29, 5, generator=gen, dtype=DTYPE)
    y = torch.randint(0, 3, (29,), generator=gen)
    return Problem("frozen", model, nn.functional.cross_entropy, x, y)


PROBLEMS = [bn_mlp, conv_net, transformer, tied, frozen]
