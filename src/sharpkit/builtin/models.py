"""Built-in model plugin (entry point ``builtin.models``).

``mlp-bn`` (the paper's batch-normalised ReLU MLP), ``resnet-cifar`` (He et al.,
2016), ``vgg-cifar`` (Simonyan and Zisserman, 2015, with batch norm) and
``timm:<name>``; see :mod:`sharpkit.builtin._models` for the architectures. The
implementation (and torch) is imported only when the model table is first
needed, so ``sharpkit --help`` and ``sharpkit results`` start fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sharpkit import hookimpl

if TYPE_CHECKING:
    from sharpkit import ModelSpec


@hookimpl
def sharpkit_register_models() -> list[ModelSpec]:
    """Return the built-in models specs (imports the implementation)."""
    from sharpkit.builtin._models import sharpkit_register_models as specs

    return specs()
