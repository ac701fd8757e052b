"""Parameter-space geometry: directions, points between and around minima.

A model's point in parameter space is the list of its floating-point parameters
(:func:`named_params`), kept as one tensor per parameter; the probes move a
working copy of the model between such points with :func:`set_params`.

Random directions are filter-normalised as in Li, Xu, Taylor, Studer & Goldstein
(2018, NeurIPS, "Visualizing the loss landscape of neural nets"): every filter of
the direction has the norm of the same filter of ``θ``, which makes plots of
networks with different weight scales comparable.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

import torch

from sharpkit import ConfigError

__all__ = [
    "BIAS_BN_CHOICES",
    "check_bias_bn",
    "clone_buffers",
    "clone_params",
    "combine",
    "dot",
    "filter_normalized_direction",
    "float_buffers",
    "interpolate_buffers",
    "model_dtype",
    "named_params",
    "norm",
    "set_params",
    "state_digest",
    "tensor_bytes",
]

BIAS_BN_CHOICES = ("zero", "copy")
"""What a direction holds on one-dimensional parameters (biases, BN scales)."""


def check_bias_bn(bias_bn: str) -> None:
    """Raise unless ``bias_bn`` is one of :data:`BIAS_BN_CHOICES`.

    Raises:
        ConfigError: Any other value.
    """
    if bias_bn not in BIAS_BN_CHOICES:
        msg = f"bias_bn must be 'zero' or 'copy', got {bias_bn!r}"
        raise ConfigError(msg)


# ------------------------------------------------------------------------- parameters


def model_dtype(model: torch.nn.Module) -> torch.dtype:
    """Return the dtype of the first floating parameter (else torch's default)."""
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.get_default_dtype()


def named_params(model: torch.nn.Module) -> list[tuple[str, torch.Tensor]]:
    """Return the floating-point parameters: the coordinates the probes move."""
    return [(n, p) for n, p in model.named_parameters() if p.is_floating_point()]


def clone_params(model: torch.nn.Module) -> list[torch.Tensor]:
    """Return detached copies of :func:`named_params` (the model's point ``θ``)."""
    return [p.detach().clone() for _, p in named_params(model)]


def set_params(model: torch.nn.Module, values: Sequence[torch.Tensor]) -> None:
    """Copy ``values`` into the model's floating-point parameters, in place."""
    with torch.no_grad():
        for (_, p), v in zip(named_params(model), values, strict=True):
            p.copy_(v)


def norm(vectors: Sequence[torch.Tensor]) -> float:
    """Return the Euclidean norm of a parameter-space vector (in float64)."""
    return math.sqrt(sum(float((v.double() ** 2).sum()) for v in vectors))


def dot(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> float:
    """Return the inner product of two parameter-space vectors (in float64)."""
    return sum(
        float((x.double() * y.double()).sum()) for x, y in zip(a, b, strict=True)
    )


def combine(
    base: Sequence[torch.Tensor],
    terms: Sequence[tuple[float, Sequence[torch.Tensor]]],
) -> list[torch.Tensor]:
    """Return ``base + Σ c·d`` per parameter (terms with ``c == 0`` are skipped)."""
    out = []
    for i, b in enumerate(base):
        v = b.clone()
        for c, d in terms:
            if c != 0.0:
                v.add_(d[i], alpha=c)
        out.append(v)
    return out


def filter_normalized_direction(
    params: Sequence[torch.Tensor],
    gen: torch.Generator,
    *,
    bias_bn: str = "zero",
) -> list[torch.Tensor]:
    """Return a random Gaussian direction, filter-normalised as in Li et al. (2018).

    For a parameter with two or more dimensions (linear and convolution weights),
    each *filter* (slice along dimension 0: an output neuron or channel) of the
    direction is rescaled to the norm of the same filter in ``params``. For
    one-dimensional parameters (biases, batch-norm scales and shifts) the
    direction is zero (``bias_bn="zero"``, Li et al.'s default) or a copy of the
    parameter itself (``bias_bn="copy"``, their alternative).

    Args:
        params: The parameters ``θ`` (their shapes, dtypes and devices are used).
        gen: CPU generator; draws are made in float64 and then cast, so a seed
            gives the same direction in float32 and float64.
        bias_bn: ``"zero"`` or ``"copy"``.

    Returns:
        One tensor per parameter.

    Raises:
        ConfigError: ``bias_bn`` is neither ``"zero"`` nor ``"copy"``.
    """
    check_bias_bn(bias_bn)
    out: list[torch.Tensor] = []
    for p in params:
        d = torch.randn(p.shape, generator=gen, dtype=torch.float64)
        w = p.detach().to(device="cpu", dtype=torch.float64)
        if p.ndim <= 1:
            d = w.clone() if bias_bn == "copy" else torch.zeros_like(w)
        else:
            w_norm = w.reshape(w.shape[0], -1).norm(dim=1)
            d_norm = d.reshape(d.shape[0], -1).norm(dim=1)
            scale = torch.where(d_norm > 0, w_norm / d_norm, torch.zeros_like(d_norm))
            d = d * scale.reshape(-1, *([1] * (d.ndim - 1)))
        out.append(d.to(device=p.device, dtype=p.dtype))
    return out


# ---------------------------------------------------------------------------- buffers


def float_buffers(model: torch.nn.Module) -> list[tuple[str, torch.Tensor]]:
    """Return the floating-point buffers (batch-norm running statistics)."""
    return [(n, b) for n, b in model.named_buffers() if b.is_floating_point()]


def clone_buffers(model: torch.nn.Module) -> list[torch.Tensor]:
    """Return detached copies of :func:`float_buffers`."""
    return [b.detach().clone() for _, b in float_buffers(model)]


def interpolate_buffers(
    work: torch.nn.Module,
    first: Sequence[torch.Tensor],
    second: Sequence[torch.Tensor],
    alpha: float,
) -> None:
    """Set floating buffers to ``(1-α)·b1 + α·b2``; running variances clamped at 0."""
    with torch.no_grad():
        for (name, buf), b1, b2 in zip(float_buffers(work), first, second, strict=True):
            value = (1.0 - alpha) * b1 + alpha * b2
            if name.endswith("running_var"):
                value = value.clamp_min(0.0)
            buf.copy_(value)


# ---------------------------------------------------------------------------- digests


def state_digest(models: Sequence[torch.nn.Module]) -> str:
    """Return a sha256 of the models' whole state (names, shapes, dtypes, values)."""
    digest = hashlib.sha256()
    for m in models:
        for name, tensor in sorted(m.state_dict().items()):
            digest.update(name.encode())
            digest.update(str(tuple(tensor.shape)).encode())
            digest.update(str(tensor.dtype).encode())
            digest.update(tensor_bytes(tensor))
    return digest.hexdigest()


def tensor_bytes(tensor: torch.Tensor) -> bytes:
    """Return a tensor's values as bytes (for digests)."""
    return tensor.detach().cpu().contiguous().numpy().tobytes()
