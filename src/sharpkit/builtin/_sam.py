"""Built-in trainer plugins ``sam`` and ``asam``: sharpness-aware minimisation.

* ``sam``: Foret, Kleiner, Mobahi & Neyshabur (2021, ICLR, "Sharpness-aware
  minimization for efficiently improving generalization"). Each mini-batch
  update first takes the gradient ``g = ∇L_B(θ)``, moves to the approximate
  worst point of the ρ-ball ``θ + ε`` with ``ε = ρ g / ‖g‖₂``, takes the gradient
  there, and hands it to the base optimizer at ``θ``::

      θ ← θ - η ∇L_B(θ + ε)        (plain SGD; momentum/weight decay as in sgd)

* ``asam``: adaptive SAM of Kwon, Kim, Park & Choi (2021, ICML, "ASAM: adaptive
  sharpness-aware minimization for scale-invariant learning of deep neural
  networks"). The ball is taken in the scaled coordinates ``T⁻¹ε`` with
  ``T = diag(|θ| + η_T)`` (η_T is the option ``eta``, a small constant that
  keeps zero weights movable), which gives::

      ε = ρ T² g / ‖T g‖₂,

  so the perturbation is invariant to rescalings of the layers that leave the
  network's function unchanged (Dinh et al., 2017). ``T`` scales *every*
  parameter, biases and batch-norm parameters included, as the paper's
  equation does; the authors' code scales only tensors named ``weight``.

Both share the ``sgd`` trainer's loop (:class:`~sharpkit.builtin._trainer.SGDTrainer`):
options, schedules, checkpoints, ``--track`` and bit-exact ``--resume`` are the
same; only :meth:`SAMTrainer._update` differs. An update costs two forward and
backward passes. The second pass (at ``θ + ε``) leaves the batch-norm running
statistics alone, so they are those of the points the model actually visits
(the convention of the widely used PyTorch implementations). The running
training loss and accuracy are those of the first pass, at ``θ``. The norm
``‖T g‖`` is floored at 1e-12, so a zero gradient gives ``ε = 0``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any, ClassVar

import torch
from torch import nn

from sharpkit import ConfigError, Option, TrainerSpec
from sharpkit.builtin._trainer import Closure, SGDTrainer, sgd_options

__all__ = [
    "ASAMTrainer",
    "SAMTrainer",
    "sam_perturbation",
    "sharpkit_register_trainers",
]

_NORM_FLOOR = 1e-12


def sam_perturbation(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    rho: float,
    eta: float | None = None,
) -> list[torch.Tensor]:
    """The ascent step ``ε = ρ T² g / ‖T g‖₂`` of SAM (``eta=None``: ``T = I``).

    Args:
        params: The parameters θ (their values are read, not changed).
        grads: The mini-batch gradient ``g``, one tensor per parameter.
        rho: The radius ρ.
        eta: ASAM's ``η_T`` in ``T = diag(|θ| + η_T)``; ``None`` for SAM.

    Returns:
        ``ε``, one tensor per parameter.

    Examples:
        >>> import torch
        >>> theta, g = [torch.tensor([3.0, 0.0])], [torch.tensor([3.0, 4.0])]
        >>> sam_perturbation(theta, g, rho=0.5)[0]
        tensor([0.3000, 0.4000])
    """
    if eta is None:
        scaled = grads
        squared = grads
    else:
        scales = [p.detach().abs() + eta for p in params]
        scaled = [t * g for t, g in zip(scales, grads, strict=True)]
        squared = [t * tg for t, tg in zip(scales, scaled, strict=True)]
    norm = torch.linalg.vector_norm(
        torch.stack([torch.linalg.vector_norm(tg) for tg in scaled])
    )
    factor = rho / norm.clamp_min(_NORM_FLOOR)
    return [factor * t2g for t2g in squared]


@contextlib.contextmanager
def _frozen_batch_norm(model: nn.Module) -> Iterator[None]:
    """Forward passes in train mode that leave BN running statistics untouched.

    With ``track_running_stats`` off, a batch-norm layer in train mode
    normalises with the batch statistics (as always in training) but neither
    updates its running mean and variance nor counts the batch.
    """
    layers = [
        m
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
    ]
    for m in layers:
        m.track_running_stats = False
    try:
        yield
    finally:
        for m in layers:
            m.track_running_stats = True


class SAMTrainer(SGDTrainer):
    """SGD on the SAM gradient ``∇L_B(θ + ε)`` (see the module docstring).

    Args:
        rho: Radius ρ of the neighbourhood (Foret et al. use 0.05 on CIFAR-10).
        eval_batch_size: Batch size for evaluation (no effect on values).
        drop_last: Skip the last, shorter mini-batch of each epoch.
    """

    name: ClassVar[str] = "sam"

    def __init__(
        self,
        *,
        rho: float = 0.05,
        eval_batch_size: int = 1024,
        drop_last: bool = False,
    ) -> None:
        super().__init__(eval_batch_size=eval_batch_size, drop_last=drop_last)
        if not (math.isfinite(rho) and rho > 0):
            msg = f"rho must be positive, got {rho}; pass -o {self.name}.rho=<radius>"
            raise ConfigError(msg)
        self.rho = float(rho)

    def _eta(self) -> float | None:
        """ASAM's ``η_T``; ``None``: plain SAM (``T = I``)."""
        return None

    def _options(self) -> dict[str, Any]:
        return {**super()._options(), "rho": self.rho}

    def _update(
        self, model: nn.Module, optimizer: torch.optim.Optimizer, closure: Closure
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One SAM step: ascend to ``θ + ε``, take the gradient there, step at ``θ``."""
        out, loss = closure()
        optimizer.zero_grad(set_to_none=True)
        torch.autograd.backward(loss)
        params = [
            p
            for group in optimizer.param_groups
            for p in group["params"]
            if p.grad is not None
        ]
        if not params:  # nothing depends on the loss: nothing to perturb
            optimizer.step()
            return out, loss
        saved = [p.detach().clone() for p in params]
        with torch.no_grad():
            grads = [p.grad for p in params if p.grad is not None]
            eps = sam_perturbation(params, grads, self.rho, self._eta())
            for p, e in zip(params, eps, strict=True):
                p.add_(e)
        optimizer.zero_grad(set_to_none=True)
        with _frozen_batch_norm(model):
            _, perturbed = closure()
            torch.autograd.backward(perturbed)
        with torch.no_grad():
            for p, s in zip(params, saved, strict=True):
                p.copy_(s)  # θ exactly, not (θ + ε) - ε
        optimizer.step()
        return out, loss


class ASAMTrainer(SAMTrainer):
    """SGD on the adaptive-SAM gradient (Kwon et al., 2021; module docstring).

    Args:
        rho: Radius ρ in the scaled coordinates (Kwon et al. use 0.5 on
            CIFAR-10 with SGD, ten times SAM's).
        eta: ``η_T`` in ``T = diag(|θ| + η_T)`` (Kwon et al.: 0.01).
        eval_batch_size: Batch size for evaluation (no effect on values).
        drop_last: Skip the last, shorter mini-batch of each epoch.
    """

    name: ClassVar[str] = "asam"

    def __init__(
        self,
        *,
        rho: float = 0.5,
        eta: float = 0.01,
        eval_batch_size: int = 1024,
        drop_last: bool = False,
    ) -> None:
        super().__init__(rho=rho, eval_batch_size=eval_batch_size, drop_last=drop_last)
        if not (math.isfinite(eta) and eta >= 0):
            msg = f"eta must be a number >= 0, got {eta}; try asam's eta option 0.01"
            raise ConfigError(msg)
        self.eta = float(eta)

    def _eta(self) -> float | None:
        return self.eta

    def _options(self) -> dict[str, Any]:
        return {**super()._options(), "eta": self.eta}


def sharpkit_register_trainers() -> list[TrainerSpec]:
    """Return the ``sam`` and ``asam`` specs."""
    rho_help = "Neighbourhood radius ρ"
    return [
        TrainerSpec(
            name="sam",
            factory=SAMTrainer,
            description=(
                "SAM (Foret et al., 2021): SGD on the gradient at the worst point "
                "of the ρ-ball, with the sgd trainer's schedules and exact resume"
            ),
            options=(
                Option(name="rho", type=float, default=0.05, help=rho_help),
                *sgd_options(),
            ),
        ),
        TrainerSpec(
            name="asam",
            factory=ASAMTrainer,
            description=(
                "Adaptive SAM (Kwon et al., 2021): the ρ-ball scaled by |θ|+η, "
                "invariant to layer rescaling; the sgd trainer's loop"
            ),
            options=(
                Option(
                    name="rho",
                    type=float,
                    default=0.5,
                    help=rho_help + " in the |θ|-scaled coordinates",
                ),
                Option(
                    name="eta",
                    type=float,
                    default=0.01,
                    help="η in the scaling T = |θ| + η (keeps zero weights movable)",
                ),
                *sgd_options(),
            ),
        ),
    ]
