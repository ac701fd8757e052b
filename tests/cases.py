"""Small problems with exact Hessians, shared by the curvature and metric tests.

Every case is float64 and seeded. ``reference_hessian`` computes the dense
Hessian of the size-weighted mean loss with ``torch.func.hessian`` on a deep copy
of the model, independently of ``sharpkit.curvature`` (plain ``F.batch_norm`` in
eval mode; batch norm without running statistics for ``bn_mode="train"``).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.func import functional_call

from sharpkit.interfaces import AnalysisContext, DataSplit

DTYPE = torch.float64


@dataclass
class Case:
    """One problem: a model, a loss and data (a DataSplit with uneven batches)."""

    id: str
    model: nn.Module
    loss_fn: Callable[[Tensor, Tensor], Tensor]
    data: DataSplit
    batch_size: int
    has_bn: bool = False
    spectrum: Tensor | None = None  # known eigenvalues (quadratics), descending
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return sum(p.numel() for p in self.model.parameters() if p.requires_grad)

    def context(self, **kw: object) -> AnalysisContext:
        """An analysis context over this case: float64 on the CPU, seed 0, tol 1e-8."""
        settings: dict[str, object] = {
            "device": torch.device("cpu"),
            "dtype": torch.float64,
            "seed": 0,
            "tol": 1e-8,
        }
        return AnalysisContext(
            model=self.model,
            loss_fn=self.loss_fn,
            data=self.data,
            batch_size=self.batch_size,
            **{**settings, **kw},
        )

    def batches(self) -> list[tuple[Tensor, Tensor]]:
        return list(self.data.batches(self.batch_size))


def _randomize_bn(model: nn.Module, gen: torch.Generator) -> None:
    """Give batch-norm layers non-trivial running statistics and affine params."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                c = m.num_features
                m.running_mean.copy_(0.3 * torch.randn(c, generator=gen, dtype=DTYPE))
                m.running_var.copy_(0.5 + torch.rand(c, generator=gen, dtype=DTYPE))
                m.weight.copy_(1 + 0.2 * torch.randn(c, generator=gen, dtype=DTYPE))
                m.bias.copy_(0.1 * torch.randn(c, generator=gen, dtype=DTYPE))
                m.num_batches_tracked.fill_(7)


def mlp(seed: int = 0) -> Case:
    """A 5-8-3 tanh MLP (75 parameters), 37 examples in batches of 16."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3)).to(DTYPE)
    x = torch.randn(37, 5, generator=gen, dtype=DTYPE)
    y = torch.randint(0, 3, (37,), generator=gen)
    return Case("mlp", model, nn.functional.cross_entropy, DataSplit(x, y), 16)


def bn_mlp(seed: int = 0) -> Case:
    """A 6-7-BN-ReLU-7-BN-ReLU-3 MLP (157 parameters), 41 examples, batches of 16."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Linear(6, 7),
        nn.BatchNorm1d(7),
        nn.ReLU(),
        nn.Linear(7, 7),
        nn.BatchNorm1d(7),
        nn.ReLU(),
        nn.Linear(7, 3),
    ).to(DTYPE)
    _randomize_bn(model, gen)
    model.eval()
    x = torch.randn(41, 6, generator=gen, dtype=DTYPE)
    y = torch.randint(0, 3, (41,), generator=gen)
    return Case(
        "bn-mlp", model, nn.functional.cross_entropy, DataSplit(x, y), 16, has_bn=True
    )


def conv_net(seed: int = 0) -> Case:
    """A tiny conv net: conv(2->3)-BN-ReLU-conv(3->2)-ReLU-linear (155 params)."""
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
    model.eval()
    x = torch.randn(23, 2, 6, 6, generator=gen, dtype=DTYPE)
    y = torch.randint(0, 4, (23,), generator=gen)
    return Case(
        "conv", model, nn.functional.cross_entropy, DataSplit(x, y), 10, has_bn=True
    )


class Quadratic(nn.Module):
    """``f(θ) = ½ θᵀ A θ + bᵀ θ`` with ``A = U diag(λ) Uᵀ``: the Hessian is ``A``."""

    def __init__(self, eigenvalues: Tensor, seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        n = len(eigenvalues)
        u, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=DTYPE))
        self.register_buffer("A", (u * eigenvalues) @ u.T)
        self.register_buffer("b", torch.randn(n, generator=gen, dtype=DTYPE))
        self.theta = nn.Parameter(torch.randn(n, generator=gen, dtype=DTYPE))

    def forward(self, x: Tensor) -> Tensor:
        t = self.theta
        value = 0.5 * t @ (self.A @ t) + self.b @ t
        return value.expand(x.shape[0])


def quadratic_loss(out: Tensor, target: Tensor) -> Tensor:
    return out.mean()


def quadratic(eigenvalues: Tensor | None = None, seed: int = 0) -> Case:
    """A quadratic with a known spectrum (default: 60 values, a few outliers)."""
    if eigenvalues is None:
        gen = torch.Generator().manual_seed(seed + 1)
        bulk = torch.rand(55, generator=gen, dtype=DTYPE) * 2 - 0.5
        eigenvalues = torch.cat(
            [torch.tensor([50.0, 30.0, 20.0, 12.0, 8.0], dtype=DTYPE), bulk]
        )
    eigenvalues = eigenvalues.to(DTYPE).sort(descending=True).values
    model = Quadratic(eigenvalues, seed)
    x = torch.zeros(9, 1, dtype=DTYPE)
    y = torch.zeros(9, dtype=DTYPE)
    return Case(
        "quadratic", model, quadratic_loss, DataSplit(x, y), 4, spectrum=eigenvalues
    )


CASES: dict[str, Callable[[], Case]] = {
    "mlp": mlp,
    "bn-mlp": bn_mlp,
    "conv": conv_net,
    "quadratic": quadratic,
}
"""Case factories by readable id (use as ``pytest.mark.parametrize`` ids)."""

NETWORK_CASES = ("mlp", "bn-mlp", "conv")


def _train_bn_copy(model: nn.Module) -> nn.Module:
    """A copy whose batch-norm layers have no running statistics (batch stats)."""
    twin = copy.deepcopy(model)
    for m in twin.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.track_running_stats = False
            m.running_mean = None
            m.running_var = None
            m.num_batches_tracked = None
    twin.eval()
    for m in twin.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.train()
    return twin


def reference_hessian(
    case: Case,
    *,
    bn_mode: str = "eval",
    batch_size: int | None = None,
    params: list[str] | None = None,
) -> Tensor:
    """Dense Hessian of the size-weighted mean loss.

    In eval mode (and for models without batch norm) this is
    ``torch.func.hessian``. With ``bn_mode="train"`` it is central finite
    differences of the (first-order, autograd) gradient instead: in torch 2.14,
    ``torch.func.hessian`` and ``jacrev(jacrev(f))`` return a wrong Hessian
    through ``F.batch_norm`` with batch statistics (off by ~5 % on ``bn-mlp``
    against finite differences), apparently a vmap batching-rule problem of the
    batch-norm backward. Finite differences in float64 with step 1e-6 are
    accurate to ~1e-9 relative here (no ReLU kink within the step).

    Args:
        case: The problem.
        bn_mode: ``"eval"`` or ``"train"`` (batch statistics per batch).
        batch_size: Batch size (default: the case's).
        params: Names of the parameters to differentiate (default: all).
    """
    model = copy.deepcopy(case.model).eval()
    if bn_mode == "train":
        model = _train_bn_copy(model)
    named = dict(model.named_parameters())
    names = list(named) if params is None else params
    shapes = [named[k].shape for k in names]
    sizes = [named[k].numel() for k in names]
    fixed = {k: v.detach() for k, v in named.items() if k not in names}
    fixed.update(dict(model.named_buffers()))
    flat0 = torch.cat([named[k].detach().reshape(-1) for k in names])
    batches = list(case.data.batches(batch_size or case.batch_size))
    total = sum(len(y) for _, y in batches)

    def loss_of(flat: Tensor) -> Tensor:
        state = dict(fixed)
        for k, part, shape in zip(names, flat.split(sizes), shapes, strict=True):
            state[k] = part.view(shape)
        out = flat.new_zeros(())
        for x, y in batches:
            pred = functional_call(model, state, (x,))
            out = out + case.loss_fn(pred, y) * (len(y) / total)
        return out

    if bn_mode == "eval":
        h = torch.func.hessian(loss_of)(flat0)
    else:

        def grad_at(flat: Tensor) -> Tensor:
            flat = flat.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(loss_of(flat), flat)
            return g

        step = 1e-6
        eye = torch.eye(len(flat0), dtype=flat0.dtype)
        h = torch.stack(
            [
                (grad_at(flat0 + step * e) - grad_at(flat0 - step * e)) / (2 * step)
                for e in eye
            ],
            dim=1,
        )
    return (h + h.T) / 2


def reference_gradient(case: Case) -> tuple[Tensor, float]:
    """Gradient and value of the size-weighted mean loss (plain autograd, eval)."""
    model = copy.deepcopy(case.model).eval()
    params = list(model.parameters())
    batches = case.batches()
    total = sum(len(y) for _, y in batches)
    loss = sum(case.loss_fn(model(x), y) * (len(y) / total) for x, y in batches)
    assert isinstance(loss, Tensor)
    grads = torch.autograd.grad(loss, params)
    return torch.cat([g.reshape(-1) for g in grads]), float(loss.detach())


def random_symmetric(eigenvalues: Tensor, seed: int = 0) -> tuple[Tensor, Tensor]:
    """A dense symmetric matrix with the given spectrum and its eigenvectors."""
    gen = torch.Generator().manual_seed(seed)
    n = len(eigenvalues)
    u, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=DTYPE))
    return (u * eigenvalues.to(DTYPE)) @ u.T, u
