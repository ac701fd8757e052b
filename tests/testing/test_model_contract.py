"""ModelContract: every built-in model passes it; each broken model fails it.

The broken models are one small correct MLP factory with one defect switched on
at a time, so each contract test is shown to catch the defect it is about.
"""

from __future__ import annotations

from typing import Any, ClassVar

import pytest
import torch
from contract_cases import Case, contract_classes
from torch import nn

import sharpkit
from sharpkit.testing import ModelContract

# Tiny sizes: the contract's behaviour, not the architectures, is under test.
CASES = {
    "mlp-bn": Case(
        "mlp-bn",
        {"options": {"depth": "3", "width": "16"}, "input_shape": (1, 6, 6)},
    ),
    "mlp": Case("mlp", {"options": {"depth": "3", "width": "16"}}),
    "resnet-cifar": Case(
        "resnet-cifar",
        {"options": {"depth": 20}, "input_shape": (3, 8, 8), "batch_size": 2},
    ),
    # the smallest VGG there is: 9.2 M parameters on 32x32 inputs (one example
    # still gives train-mode batch norm 2x2 values per channel)
    "vgg-cifar": Case("vgg-cifar", {"batch_size": 1, "num_classes": 2}),
    "timm-test-resnet": Case(
        "timm", {"variant": "test_resnet", "input_shape": (3, 16, 16), "batch_size": 2}
    ),
    # attention through scaled_dot_product_attention (twice differentiable in
    # analysis mode, which runs its math kernel)
    "timm-test-vit": Case(
        "timm", {"variant": "test_vit", "input_shape": (3, 16, 16), "batch_size": 2}
    ),
}
globals().update(contract_classes(ModelContract, "model", CASES, __name__))


# --------------------------------------------------------------------------- broken


class Net(nn.Module):
    """Flatten, Linear, BatchNorm, Tanh, Linear; defects switched on by flags."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, **bug: bool):
        super().__init__()
        n = int(torch.tensor(input_shape).prod())
        self.bug = bug
        self.fc1 = nn.Linear(n, 5)
        self.bn = nn.BatchNorm1d(5)
        self.fc2 = nn.Linear(5, num_classes + (1 if bug.get("wrong_shape") else 0))
        self.drop = nn.Dropout(0.5)
        # a buffer the forward pass needs but the state_dict leaves out
        self.register_buffer("shift", torch.randn(5), persistent=False)
        if bug.get("private_rng"):  # seeded from the clock, not from torch's RNG
            gen = torch.Generator().manual_seed(torch.seed())
            with torch.no_grad():
                self.fc1.weight.copy_(torch.randn(5, n, generator=gen))
        if bug.get("constant_init"):
            with torch.no_grad():
                for p in self.parameters():
                    p.fill_(0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.bn(self.fc1(x.flatten(1)))
        if self.bug.get("unsaved_buffer"):
            h = h + self.shift
        if self.bug.get("dropout_in_eval"):
            h = nn.functional.dropout(h, 0.5, training=True)
        if self.bug.get("once_differentiable"):
            return self.fc2(_OnceDifferentiableTanh.apply(h))
        if self.bug.get("backward_without_graph"):
            return self.fc2(_NoGraphTanh.apply(h))
        return self.fc2(torch.tanh(h))


class _OnceDifferentiableTanh(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        y = torch.tanh(x)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        (y,) = ctx.saved_tensors
        return grad * (1 - y * y)


class _NoGraphTanh(torch.autograd.Function):
    """Tanh whose backward builds no graph (computed under no_grad)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        y = torch.tanh(x)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        (y,) = ctx.saved_tensors
        with torch.no_grad():
            return grad * (1 - y * y)


def net_spec(**bug: bool) -> sharpkit.ModelSpec:
    def build_net(
        *, input_shape: tuple[int, ...], num_classes: int, width: int = 5
    ) -> nn.Module:
        return Net(input_shape, num_classes, **bug)

    return sharpkit.ModelSpec(
        name="toy-net",
        factory=build_net,
        description="A toy net",
        options=(sharpkit.Option(name="width", type=int, default=5),),
    )


def contract(**bug: bool) -> ModelContract:
    class TestToy(ModelContract):
        spec: ClassVar[sharpkit.ModelSpec] = net_spec(**bug)
        input_shape = (2, 3)
        num_classes = 3

    return TestToy()


TESTS = [n for n in dir(ModelContract) if n.startswith("test_")]


def test_the_correct_toy_passes_every_test() -> None:
    for name in TESTS:
        getattr(contract(), name)()


@pytest.mark.parametrize(
    ("bug", "test", "message"),
    [
        ("wrong_shape", "test_forward_gives_logits", r"shape \(4, 4\)"),
        ("private_rng", "test_same_seed_same_weights", "differs between two builds"),
        ("constant_init", "test_different_seeds_different_weights", "ignores the seed"),
        ("unsaved_buffer", "test_checkpoint_round_trip", "different logits"),
        ("dropout_in_eval", "test_eval_forward_is_deterministic", "dropout"),
        # A missing or graph-less double backward leaves the Hessian's blocks
        # above the custom op empty while those below are not: asymmetric.
        ("once_differentiable", "test_twice_differentiable", "not symmetric"),
        ("backward_without_graph", "test_twice_differentiable", "not symmetric"),
    ],
)
def test_a_broken_model_fails(bug: str, test: str, message: str) -> None:
    with pytest.raises(AssertionError, match=message):
        getattr(contract(**{bug: True}), test)()


def test_a_bad_spec_fails() -> None:
    class TestBad(ModelContract):
        spec: ClassVar[sharpkit.ModelSpec] = sharpkit.ModelSpec(
            name="Toy_Net", factory=net_spec().factory, description="x"
        )

    with pytest.raises(sharpkit.PluginContractError, match="kebab-case"):
        TestBad().test_spec_is_valid()


def test_prefix_spec_needs_a_variant() -> None:
    class TestNoVariant(ModelContract):
        spec: ClassVar[sharpkit.ModelSpec] = sharpkit.ModelSpec(
            name="zoo",
            factory=lambda *, input_shape, num_classes, variant: nn.Linear(1, 1),
            description="A zoo",
            prefix=True,
        )

    with pytest.raises(AssertionError, match="set `variant`"):
        TestNoVariant().build()


def test_a_factory_returning_no_module_fails() -> None:
    class TestNotAModule(ModelContract):
        spec: ClassVar[sharpkit.ModelSpec] = sharpkit.ModelSpec(
            name="not-a-module",
            factory=lambda *, input_shape, num_classes: object(),
            description="Wrong",
        )

    with pytest.raises(AssertionError, match=r"not a torch\.nn\.Module"):
        TestNotAModule().test_factory_returns_module_with_parameters()
