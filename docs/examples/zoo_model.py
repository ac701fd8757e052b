"""A model plugin: one architecture, registered under the name ``tanh-mlp``.

Users pick it with ``sharpkit train --model tanh-mlp -o width=64`` and every
checkpoint it writes names it, so ``sharpkit measure`` rebuilds it by itself.
"""

from __future__ import annotations

import math

import sharpkit


def build_tanh_mlp(*, input_shape: tuple[int, ...], num_classes: int, width: int = 32):
    """A one-hidden-layer tanh MLP for inputs of ``input_shape``.

    sharpkit passes ``input_shape`` and ``num_classes`` (from the dataset); the
    other keyword arguments are the model's options.
    """
    from torch import nn  # heavy imports inside: `sharpkit --help` stays fast

    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(math.prod(input_shape), width),
        nn.Tanh(),
        nn.Linear(width, num_classes),
    )


TANH_MLP = sharpkit.ModelSpec(
    name="tanh-mlp",
    factory=build_tanh_mlp,
    description="One-hidden-layer tanh MLP (smooth everywhere: a clean Hessian).",
    options=(
        sharpkit.Option(name="width", type=int, default=32, help="Hidden units."),
    ),
    source="docs/examples/zoo_model.py",
)


@sharpkit.hookimpl
def sharpkit_register_models() -> list[sharpkit.ModelSpec]:
    """Register the architecture."""
    return [TANH_MLP]
