"""Built-in architectures: shapes and parameter counts against the published ones."""

from __future__ import annotations

import importlib
import itertools

import pytest
import torch
from torchvision.models import vgg

from sharpkit.builtin import _models as models
from sharpkit.errors import ConfigError
from sharpkit.registry import Registry


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(scope="module")
def reg() -> Registry:
    r = Registry(entry_points=False)
    assert r.register_plugin(
        importlib.import_module("sharpkit.builtin.models"), "builtin.models"
    )
    return r


def test_specs_register_cleanly(reg: Registry) -> None:
    assert reg.failures == []
    assert reg.names("model") == ["mlp", "mlp-bn", "resnet-cifar", "timm", "vgg-cifar"]
    for name in ("mlp", "mlp-bn", "resnet-cifar", "vgg-cifar", "timm:resnet18"):
        spec = reg.get("model", name)
        assert spec.source, name
        assert spec.description


# ----------------------------------------------------------------- mlp-bn


def test_mlp_is_mlp_bn_without_batch_norm(reg: Registry) -> None:
    plain = reg.create("model", "mlp", input_shape=(1, 28, 28), num_classes=10)
    bn = reg.create("model", "mlp-bn", input_shape=(1, 28, 28), num_classes=10)
    assert sum(p.numel() for p in plain.parameters()) == 335_114
    assert not any(isinstance(m, torch.nn.BatchNorm1d) for m in plain.modules())
    names = [n for n, _ in plain.named_children()]
    assert names == ["flatten", "fc1", "relu1", "fc2", "relu2", "fc3", "relu3", "fc4"]
    no_bn = {k for k in bn.state_dict() if not k.startswith("bn")}
    assert set(plain.state_dict()) == no_bn
    with pytest.raises(ConfigError, match="mlp: width"):
        reg.create("model", "mlp", {"width": 0}, input_shape=(4,), num_classes=2)


def test_mlp_bn_default_is_the_784_256_256_256_10_net(reg: Registry) -> None:
    net = reg.create("model", "mlp-bn", input_shape=(1, 28, 28), num_classes=10)
    # 784·256+256 + 2·(256·256+256) + 256·10+10 weights/biases, 3·2·256 BN affine.
    expected = (784 * 256 + 256) + 2 * (256 * 256 + 256) + (256 * 10 + 10) + 3 * 512
    assert expected == 336_650
    assert n_params(net) == expected
    linears = [m for m in net.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [
        (784, 256),
        (256, 256),
        (256, 256),
        (256, 10),
    ]
    kinds = [type(m).__name__ for m in net.children()]
    assert kinds == ["Flatten"] + ["Linear", "BatchNorm1d", "ReLU"] * 3 + ["Linear"]
    assert "fc1.weight" in net.state_dict()
    assert "bn3.running_var" in net.state_dict()
    assert net(torch.randn(5, 1, 28, 28)).shape == (5, 10)


@pytest.mark.parametrize(("depth", "width"), [(1, 8), (2, 8), (6, 32)])
def test_mlp_bn_options(reg: Registry, depth: int, width: int) -> None:
    net = reg.create(
        "model",
        "mlp-bn",
        {"depth": str(depth), "width": str(width)},  # CLI strings are parsed
        input_shape=(12,),
        num_classes=3,
    )
    dims = [12] + [width] * (depth - 1) + [3]
    expected = sum(a * b + b for a, b in itertools.pairwise(dims))
    expected += 2 * width * (depth - 1)
    assert n_params(net) == expected
    assert net(torch.randn(4, 12)).shape == (4, 3)


def test_mlp_bn_bad_depth(reg: Registry) -> None:
    with pytest.raises(ConfigError, match="depth"):
        reg.create("model", "mlp-bn", {"depth": 0}, input_shape=(4,), num_classes=2)


# ----------------------------------------------------------------- resnet-cifar


def resnet_count(depth: int, classes: int = 10) -> int:
    """Parameter count of He et al.'s CIFAR ResNet with option-A shortcuts."""
    n = (depth - 2) // 6
    total = 3 * 16 * 9 + 2 * 16  # stem conv + BN
    c_in = 16
    for c in (16, 32, 64):
        for _ in range(n):
            total += c_in * c * 9 + c * c * 9 + 4 * c  # two convs, two BNs
            c_in = c
    return total + 64 * classes + classes


# He et al. (2016), Table 6: parameters of the CIFAR-10 ResNets, in millions.
PUBLISHED_RESNET = {20: 0.27, 32: 0.46, 44: 0.66, 56: 0.85, 110: 1.7}


@pytest.mark.parametrize("depth", sorted(PUBLISHED_RESNET))
def test_resnet_cifar_parameter_counts(reg: Registry, depth: int) -> None:
    net = reg.create(
        "model",
        "resnet-cifar",
        {"depth": depth},
        input_shape=(3, 32, 32),
        num_classes=10,
    )
    count = n_params(net)
    assert count == resnet_count(depth)
    digits = 1 if depth == 110 else 2  # the paper's rounding
    assert round(count / 1e6, digits) == PUBLISHED_RESNET[depth]
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    linears = [m for m in net.modules() if isinstance(m, torch.nn.Linear)]
    assert len(convs) + len(linears) == depth  # 6n+2 weighted layers


def test_resnet56_default_and_shapes(reg: Registry) -> None:
    net = reg.create("model", "resnet-cifar", input_shape=(3, 32, 32), num_classes=10)
    assert n_params(net) == 853_018
    x = torch.randn(2, 3, 32, 32)
    assert net(x).shape == (2, 10)
    # Feature maps: 32x32x16 -> 16x16x32 -> 8x8x64, as in the paper.
    out = torch.relu(net.bn1(net.conv1(x)))
    out = net.layer1(out)
    assert out.shape == (2, 16, 32, 32)
    out = net.layer2(out)
    assert out.shape == (2, 32, 16, 16)
    assert net.layer3(out).shape == (2, 64, 8, 8)


def test_option_a_shortcut_is_parameter_free_subsample_and_zero_pad() -> None:
    block = models.BasicBlock(16, 32, stride=2)
    x = torch.randn(2, 16, 8, 8)
    short = block.shortcut(x)
    assert short.shape == (2, 32, 4, 4)
    assert list(block.shortcut.parameters()) == []
    torch.testing.assert_close(short[:, 8:24], x[:, :, ::2, ::2], rtol=0, atol=0)
    assert short[:, :8].abs().sum() == 0
    assert short[:, 24:].abs().sum() == 0


def test_resnet_works_on_fashion_mnist_shape(reg: Registry) -> None:
    net = reg.create(
        "model", "resnet-cifar", {"depth": 20}, input_shape=(1, 28, 28), num_classes=10
    )
    assert net(torch.randn(2, 1, 28, 28)).shape == (2, 10)


@pytest.mark.parametrize("depth", [21, 2, 57])
def test_resnet_bad_depth(reg: Registry, depth: int) -> None:
    with pytest.raises(ConfigError, match="6n\\+2"):
        reg.create(
            "model",
            "resnet-cifar",
            {"depth": depth},
            input_shape=(3, 32, 32),
            num_classes=10,
        )


def test_resnet_needs_images(reg: Registry) -> None:
    with pytest.raises(ConfigError, match="image inputs"):
        reg.create("model", "resnet-cifar", input_shape=(784,), num_classes=10)


# ----------------------------------------------------------------- vgg-cifar


@pytest.mark.parametrize("depth", [11, 13, 16, 19])
def test_vgg_cifar_matches_torchvision_features(reg: Registry, depth: int) -> None:
    net = reg.create(
        "model", "vgg-cifar", {"depth": depth}, input_shape=(3, 32, 32), num_classes=10
    )
    # torchvision's VGG-BN feature extractors implement Simonyan & Zisserman's
    # configurations A/B/D/E exactly; ours must have the same layers and shapes.
    cfg = {11: "A", 13: "B", 16: "D", 19: "E"}[depth]
    tv = vgg.make_layers(vgg.cfgs[cfg], batch_norm=True)
    ours = [(k, tuple(v.shape)) for k, v in net.features.state_dict().items()]
    theirs = [(k, tuple(v.shape)) for k, v in tv.state_dict().items()]
    assert ours == theirs
    # VGG-N has N-3 conv layers; the CIFAR classifier is one 512 -> classes layer
    # instead of the three ImageNet fully connected layers.
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == depth - 3
    assert n_params(net) == n_params(tv) + 512 * 10 + 10
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_vgg11_parameter_count(reg: Registry) -> None:
    net = reg.create("model", "vgg-cifar", input_shape=(3, 32, 32), num_classes=10)
    assert n_params(net) == 9_231_114


def test_vgg_rejects_small_images_and_bad_depth(reg: Registry) -> None:
    with pytest.raises(ConfigError, match="at least 32x32"):
        reg.create("model", "vgg-cifar", input_shape=(1, 28, 28), num_classes=10)
    with pytest.raises(ConfigError, match="one of 11, 13, 16, 19"):
        reg.create(
            "model", "vgg-cifar", {"depth": 12}, input_shape=(3, 32, 32), num_classes=10
        )


# ----------------------------------------------------------------- timm


def test_timm_variant_gets_classes_and_channels(reg: Registry) -> None:
    net = reg.create("model", "timm:resnet18", input_shape=(1, 28, 28), num_classes=7)
    assert net.conv1.in_channels == 1
    assert net(torch.randn(2, 1, 28, 28)).shape == (2, 7)
    # timm's resnet18 with 7 classes and 1 input channel: 11.18 M parameters minus
    # 2/3 of the stem conv (64·7·7·2 = 6272) and 1000 -> 7 outputs ((512+1)·993).
    assert n_params(net) == 11_689_512 - 6272 - 513 * 993


def test_timm_model_with_img_size_gets_the_dataset_size(reg: Registry) -> None:
    net = reg.create(
        "model", "timm:vit_tiny_patch16_224", input_shape=(3, 32, 32), num_classes=10
    )
    assert net(torch.randn(1, 3, 32, 32)).shape == (1, 10)


def test_timm_unknown_name_suggests(reg: Registry) -> None:
    with pytest.raises(ConfigError, match="did you mean 'resnet18'"):
        reg.create("model", "timm:resnet181", input_shape=(3, 32, 32), num_classes=10)


def test_timm_needs_a_variant(reg: Registry) -> None:
    with pytest.raises(ConfigError, match="needs a variant"):
        reg.get("model", "timm")


def test_seeded_build_is_deterministic(reg: Registry) -> None:
    from sharpkit.api import build_model

    a = build_model("resnet-cifar", input_shape=(3, 32, 32), num_classes=10,
                    options={"depth": 20}, seed=3, registry=reg)  # fmt: skip
    b = build_model("resnet-cifar", input_shape=(3, 32, 32), num_classes=10,
                    options={"depth": 20}, seed=3, registry=reg)  # fmt: skip
    for (k, v), w in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(v, w), k
