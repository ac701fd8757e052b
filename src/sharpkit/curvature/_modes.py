"""Analysis mode and float32 precision: the context the operator computes in.

:func:`analysis_mode` puts a model in the state its Hessian is taken in (eval
mode, batch norm from running statistics, or batch statistics with
``bn_mode="train"``; the math attention kernel) and restores it exactly;
:func:`full_precision` turns off TF32 and reduced-precision oneDNN kernels.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from sharpkit.errors import ConfigError

__all__ = ["BN_MODES", "analysis_mode", "full_precision"]

BN_MODES = ("eval", "train")


@contextmanager
def analysis_mode(
    model: nn.Module, bn_mode: str = "eval", *, fuse_bn: bool = True
) -> Iterator[None]:
    """Put ``model`` in analysis mode for the duration of the block.

    Every module goes to eval mode (dropout off). With ``bn_mode="train"`` the
    normalisation layers that have running statistics use batch statistics
    instead, without updating them. On exit every module's ``training`` flag and
    ``track_running_stats``, and every buffer, are restored exactly.

    ``torch.nn.functional.scaled_dot_product_attention`` runs its math kernel
    inside the block: the fused kernels (flash attention on the CPU, the
    efficient and flash kernels on GPUs) have no double backward, so without
    this no Hessian-vector product could pass through attention (timm ViTs,
    Hugging Face transformers). The math kernel computes the same function.

    In eval mode a batch-norm layer is the per-channel affine map
    ``x * s + (b - μ s)`` with ``s = w / sqrt(σ² + ε)``; with ``fuse_bn`` the
    standard ``BatchNorm1d/2d/3d`` layers compute exactly that (the same function,
    so the same derivatives) instead of calling ``F.batch_norm``, whose double
    backward is generic and about 30 % of a Hessian-vector product of a BN-MLP.

    Args:
        model: The model.
        bn_mode: ``"eval"`` (running statistics) or ``"train"`` (batch statistics).
        fuse_bn: Compute eval-mode batch norm as the equivalent affine map.

    Raises:
        ConfigError: ``bn_mode`` is neither.
    """
    if bn_mode not in BN_MODES:
        msg = f"bn_mode must be 'eval' or 'train', got {bn_mode!r}"
        raise ConfigError(msg)
    norm_base = nn.modules.batchnorm._NormBase
    flags = [(m, m.training) for m in model.modules()]
    tracking = [
        (norm, norm.track_running_stats)
        for norm in model.modules()
        if isinstance(norm, norm_base)
    ]
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    fused: list[nn.Module] = []
    with sdpa_kernel(SDPBackend.MATH):  # the twice-differentiable kernel
        try:
            model.eval()
            if bn_mode == "train":
                for norm, _ in tracking:
                    norm.train()
                    # With track_running_stats off, F.batch_norm gets no running
                    # buffers: it normalises with batch statistics and updates nothing.
                    norm.track_running_stats = False
            elif fuse_bn:
                for module in model.modules():
                    if (
                        isinstance(module, nn.modules.batchnorm._BatchNorm)
                        and type(module) in _FUSABLE
                        and module.running_mean is not None
                        # already fused by an enclosing analysis_mode block
                        and "forward" not in module.__dict__
                    ):
                        module.forward = _EvalBatchNorm(module)  # type: ignore[method-assign,assignment]
                        fused.append(module)
            yield
        finally:
            for module in fused:
                del module.forward
            for module, training in flags:
                module.training = training
            for norm, track in tracking:
                norm.track_running_stats = track
            with torch.no_grad():
                for b, saved in buffers:
                    # Copy only what changed: an in-place copy bumps the version
                    # counter and would invalidate autograd graphs (ours or the
                    # user's) that saved the buffer.
                    if not torch.equal(b, saved):
                        b.copy_(saved)


_FUSABLE = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def _precision_flags() -> list[Any]:
    """The per-backend float32 precision settings of this torch (2.9 and later)."""
    backends = torch.backends
    found = []
    for owner, names in (
        (getattr(backends, "cuda", None), ("matmul",)),
        (getattr(backends, "cudnn", None), ("conv", "rnn")),
        (getattr(backends, "mkldnn", None), ("matmul", "conv", "rnn")),
    ):
        for name in names:
            flag = getattr(owner, name, None)
            if flag is not None and hasattr(flag, "fp32_precision"):
                found.append(flag)
    return found


@contextmanager
def full_precision(enabled: bool = True) -> Iterator[None]:
    """Compute float32 matmuls and convolutions in IEEE precision inside the block.

    Turns off TF32 (cuBLAS, cuDNN) and reduced-precision oneDNN kernels, and
    restores every setting on exit. Both of torch's ways to set them (the
    per-backend ``fp32_precision`` and the older ``allow_tf32`` /
    ``set_float32_matmul_precision``) are set consistently, since torch refuses
    to run a matmul when they disagree.

    Args:
        enabled: ``False`` leaves the settings as they are (TF32 allowed).
    """
    if not enabled:
        yield
        return
    flags = _precision_flags()
    saved = [(flag, flag.fp32_precision) for flag in flags]
    try:
        legacy: str | None = torch.get_float32_matmul_precision()
    except RuntimeError:  # the caller mixed the two APIs; leave the legacy one
        legacy = None
    cudnn_legacy = None if flags else torch.backends.cudnn.allow_tf32
    try:
        if legacy is not None:
            torch.set_float32_matmul_precision("highest")
        for flag in flags:
            flag.fp32_precision = "ieee"
        if cudnn_legacy is not None:  # a torch without fp32_precision
            torch.backends.cudnn.allow_tf32 = False
        yield
    finally:
        if legacy is not None:
            torch.set_float32_matmul_precision(legacy)
        for flag, value in saved:
            flag.fp32_precision = value
        if cudnn_legacy is not None:
            torch.backends.cudnn.allow_tf32 = cudnn_legacy


class _EvalBatchNorm:
    """Eval-mode batch norm as an affine map (see :func:`analysis_mode`)."""

    def __init__(self, module: nn.modules.batchnorm._BatchNorm) -> None:
        self.m = module

    def __call__(self, x: Tensor) -> Tensor:
        m = self.m
        assert m.running_mean is not None
        assert m.running_var is not None
        scale = torch.rsqrt(m.running_var + m.eps)
        if m.weight is not None:
            scale = m.weight * scale
        shift = -m.running_mean * scale
        if m.bias is not None:
            shift = shift + m.bias
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return x * scale.view(shape) + shift.view(shape)
