"""Built-in model plugin: the paper's architectures and any timm model.

* ``mlp-bn``: the batch-normalised ReLU MLP of Jastrzębski et al. (2017),
  "Finding flatter minima with SGD", ICLR 2018 workshop (Fig. 1, Fashion-MNIST):
  ``Linear → BatchNorm1d → ReLU`` per hidden layer, then a linear classifier.
  The default, ``depth=4, width=256`` (784-256-256-256-10), has 336,650 parameters.
* ``mlp``: the same MLP without batch norm (``Linear → ReLU`` per hidden layer;
  335,114 parameters by default). Not in the paper: a network whose function is
  unchanged when one ReLU layer is multiplied by c and the next by 1/c (Dinh,
  Pascanu, Bengio & Bengio, 2017), for the ``rescale`` probe.
* ``resnet-cifar``: the CIFAR ResNets of He, Zhang, Ren and Sun (2016), "Deep
  Residual Learning for Image Recognition", CVPR, Sec. 4.2: a 3×3 stem with 16
  channels, three stages of ``n`` basic blocks with 16/32/64 channels, global
  average pooling and a linear classifier, depth ``6n+2``, with the parameter-free
  option-A shortcuts (stride-2 subsampling plus zero-padded channels). Parameters
  for 10 classes: 20 → 269,722; 32 → 464,154; 44 → 658,586; 56 → 853,018;
  110 → 1,727,962 (the paper's Table 6: 0.27M/0.46M/0.66M/0.85M/1.7M).
* ``vgg-cifar``: VGG-11/13/16/19 (Simonyan and Zisserman, 2015, "Very Deep
  Convolutional Networks for Large-Scale Image Recognition", ICLR; configurations
  A/B/D/E: the 8/10/13/16 convolutional layers) with batch normalisation after
  every convolution (Ioffe and Szegedy, 2015) and the CIFAR-sized classifier of
  the common CIFAR ports: the three ImageNet fully connected layers become one
  ``Linear(512, classes)`` on the 1×1×512 map a 32×32 input leaves. Parameters for
  10 classes: 11 → 9,231,114; 13 → 9,416,010; 16 → 14,728,266; 19 → 20,040,522.
* ``timm:<name>``: any architecture of timm (Wightman, 2019,
  https://github.com/huggingface/pytorch-image-models), built without pretrained
  weights with ``num_classes`` and ``in_chans`` taken from the dataset.

Nothing here downloads anything.
"""

from __future__ import annotations

import difflib
import math
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from sharpkit import ConfigError, ModelSpec, Option

__all__ = [
    "MLP",
    "MLPBN",
    "VGG_CONFIGS",
    "BasicBlock",
    "ResNetCifar",
    "VGGCifar",
    "build_mlp",
    "build_mlp_bn",
    "build_resnet_cifar",
    "build_timm",
    "build_vgg_cifar",
    "sharpkit_register_models",
]

RESNET_DEPTHS = (20, 32, 44, 56, 110)
VGG_CONFIGS: dict[int, str] = {
    # Simonyan & Zisserman (2015), Table 1, configurations A, B, D, E: conv widths
    # (3x3 convolutions, each followed here by batch norm and ReLU); M = 2x2 max-pool.
    11: "64 M 128 M 256 256 M 512 512 M 512 512 M",
    13: "64 64 M 128 128 M 256 256 M 512 512 M 512 512 M",
    16: "64 64 M 128 128 M 256 256 256 M 512 512 512 M 512 512 512 M",
    19: "64 64 M 128 128 M 256 256 256 256 M 512 512 512 512 M 512 512 512 512 M",
}


def _image_shape(input_shape: Sequence[int], model: str) -> tuple[int, int, int]:
    if len(input_shape) != 3:
        shape = "x".join(str(d) for d in input_shape)
        msg = (
            f"model {model!r} needs image inputs (channels, height, width), got shape "
            f"{shape}; use an image dataset such as cifar10 or fashion-mnist"
        )
        raise ConfigError(msg)
    c, h, w = (int(d) for d in input_shape)
    return c, h, w


def _check_classes(num_classes: int, model: str) -> None:
    if num_classes < 1:
        msg = f"model {model!r}: num_classes must be positive, got {num_classes}"
        raise ConfigError(msg)


# --------------------------------------------------------------------------- mlp-bn


class MLPBN(nn.Sequential):
    """Batch-normalised ReLU MLP: ``(Linear → BatchNorm1d → ReLU) × (depth-1)``, Linear.

    The input is flattened first.

    Layers are named ``fc1, bn1, relu1, ..., fc<depth>`` so that state-dict keys
    read ``fc1.weight``, ``bn1.running_mean``, ...

    Args:
        in_features: Size of a flattened input.
        num_classes: Output logits.
        depth: Number of linear layers (hidden layers + the classifier), ≥ 1.
        width: Units of each hidden layer.
    """

    def __init__(
        self, in_features: int, num_classes: int, *, depth: int = 4, width: int = 256
    ) -> None:
        super().__init__(_mlp_layers(in_features, num_classes, depth, width, bn=True))


class MLP(nn.Sequential):
    """ReLU MLP without normalisation: ``(Linear → ReLU) × (depth-1)``, Linear.

    The input is flattened first; layers are named ``fc1, relu1, ..., fc<depth>``.

    Args:
        in_features: Size of a flattened input.
        num_classes: Output logits.
        depth: Number of linear layers (hidden layers + the classifier), ≥ 1.
        width: Units of each hidden layer.
    """

    def __init__(
        self, in_features: int, num_classes: int, *, depth: int = 4, width: int = 256
    ) -> None:
        super().__init__(_mlp_layers(in_features, num_classes, depth, width, bn=False))


def _mlp_layers(
    in_features: int, num_classes: int, depth: int, width: int, *, bn: bool
) -> OrderedDict[str, nn.Module]:
    """``flatten, fc1, [bn1,] relu1, ..., fc<depth>`` for the two MLPs."""
    layers: OrderedDict[str, nn.Module] = OrderedDict(flatten=nn.Flatten())
    size = in_features
    for i in range(1, depth):
        layers[f"fc{i}"] = nn.Linear(size, width)
        if bn:
            layers[f"bn{i}"] = nn.BatchNorm1d(width)
        layers[f"relu{i}"] = nn.ReLU()
        size = width
    layers[f"fc{depth}"] = nn.Linear(size, num_classes)
    return layers


def _check_mlp(name: str, num_classes: int, depth: int, width: int) -> None:
    _check_classes(num_classes, name)
    if depth < 1:
        msg = f"{name}: depth counts linear layers and must be >= 1, got {depth}"
        raise ConfigError(msg)
    if width < 1:
        msg = f"{name}: width must be >= 1, got {width}"
        raise ConfigError(msg)


def build_mlp(
    *,
    input_shape: Sequence[int],
    num_classes: int,
    depth: int = 4,
    width: int = 256,
) -> MLP:
    """Build a ReLU MLP without batch norm (see :class:`MLP`).

    Args:
        input_shape: Shape of one input; it is flattened.
        num_classes: Output logits.
        depth: Number of linear layers.
        width: Units per hidden layer.

    Raises:
        ConfigError: ``depth < 1`` or ``width < 1``.
    """
    _check_mlp("mlp", num_classes, depth, width)
    return MLP(math.prod(input_shape), num_classes, depth=depth, width=width)


def build_mlp_bn(
    *,
    input_shape: Sequence[int],
    num_classes: int,
    depth: int = 4,
    width: int = 256,
) -> MLPBN:
    """Build the paper's batch-normalised ReLU MLP (see :class:`MLPBN`).

    Args:
        input_shape: Shape of one input; it is flattened.
        num_classes: Output logits.
        depth: Number of linear layers; the paper's "4-layer" MLP is ``depth=4``.
        width: Units per hidden layer.

    Raises:
        ConfigError: ``depth < 1`` or ``width < 1``.
    """
    _check_mlp("mlp-bn", num_classes, depth, width)
    return MLPBN(math.prod(input_shape), num_classes, depth=depth, width=width)


# ------------------------------------------------------------------------- resnet-cifar


class _ShortcutA(nn.Module):
    """He et al. (2016) option A: subsample by ``stride`` and zero-pad new channels."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.extra = planes - in_planes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        if self.extra:
            half = self.extra // 2
            x = nn.functional.pad(x, (0, 0, 0, 0, half, self.extra - half))
        return x


class BasicBlock(nn.Module):
    """Two 3×3 conv-BN layers with a ReLU between, plus a shortcut, then ReLU."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = (
            _ShortcutA(in_planes, planes, stride)
            if stride != 1 or in_planes != planes
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``."""
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNetCifar(nn.Module):
    """He et al. (2016) CIFAR ResNet of depth ``6n+2`` with option-A shortcuts.

    Args:
        in_channels: Input channels (3 for CIFAR-10).
        num_classes: Output logits.
        depth: ``6n+2``: 20, 32, 44, 56, 110, ...
    """

    def __init__(self, in_channels: int, num_classes: int, depth: int = 56) -> None:
        super().__init__()
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        planes = 16
        stages = []
        for width, stride in ((16, 1), (32, 2), (64, 2)):
            blocks = []
            for i in range(n):
                blocks.append(BasicBlock(planes, width, stride if i == 0 else 1))
                planes = width
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.fc = nn.Linear(64, num_classes)
        for m in self.modules():  # He initialisation, as in He et al. (2015)
            if isinstance(m, nn.Conv2d | nn.Linear):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the logits of a ``(B, C, H, W)`` batch."""
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = out.mean(dim=(2, 3))
        return self.fc(out)  # type: ignore[no-any-return]


def build_resnet_cifar(
    *, input_shape: Sequence[int], num_classes: int, depth: int = 56
) -> ResNetCifar:
    """Build a CIFAR ResNet (He et al., 2016) of depth ``6n+2``.

    Args:
        input_shape: ``(channels, height, width)``; any size ≥ 4×4 works
            (global average pooling), 32×32 is the original.
        num_classes: Output logits.
        depth: 20, 32, 44, 56 (default) or 110; any ``6n+2`` is accepted.

    Raises:
        ConfigError: The depth is not ``6n+2`` or the input is not an image.
    """
    _check_classes(num_classes, "resnet-cifar")
    c, _, _ = _image_shape(input_shape, "resnet-cifar")
    if depth < 8 or (depth - 2) % 6:
        msg = (
            f"resnet-cifar: depth must be 6n+2 (e.g. "
            f"{', '.join(str(d) for d in RESNET_DEPTHS)}), got {depth}"
        )
        raise ConfigError(msg)
    return ResNetCifar(c, num_classes, depth)


# --------------------------------------------------------------------------- vgg-cifar


class VGGCifar(nn.Module):
    """VGG with batch norm for 32×32 inputs and a ``Linear(512, classes)`` classifier.

    Args:
        in_channels: Input channels.
        num_classes: Output logits.
        depth: 11, 13, 16 or 19 (configurations A, B, D, E).
    """

    def __init__(self, in_channels: int, num_classes: int, depth: int = 11) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = in_channels
        for item in VGG_CONFIGS[depth].split():
            if item == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                width = int(item)
                layers += [
                    nn.Conv2d(c, width, 3, padding=1),
                    nn.BatchNorm2d(width),
                    nn.ReLU(inplace=True),
                ]
                c = width
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(512, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the logits of a ``(B, C, H, W)`` batch."""
        out = self.features(x)
        out = out.mean(dim=(2, 3))  # the 1×1 map of a 32×32 input; pools larger ones
        return self.classifier(out)  # type: ignore[no-any-return]


def build_vgg_cifar(
    *, input_shape: Sequence[int], num_classes: int, depth: int = 11
) -> VGGCifar:
    """Build VGG-``depth`` with batch norm for CIFAR-sized inputs.

    Args:
        input_shape: ``(channels, height, width)`` with height and width ≥ 32
            (five 2×2 max-pools).
        num_classes: Output logits.
        depth: 11 (default, the paper's VGG-11), 13, 16 or 19.

    Raises:
        ConfigError: Another depth, or an input smaller than 32×32.
    """
    _check_classes(num_classes, "vgg-cifar")
    c, h, w = _image_shape(input_shape, "vgg-cifar")
    if depth not in VGG_CONFIGS:
        msg = f"vgg-cifar: depth must be one of 11, 13, 16, 19, got {depth}"
        raise ConfigError(msg)
    if h < 32 or w < 32:
        msg = (
            f"vgg-cifar needs inputs of at least 32x32 (five 2x2 max-pools), got "
            f"{h}x{w}; use resnet-cifar or mlp-bn for smaller images"
        )
        raise ConfigError(msg)
    return VGGCifar(c, num_classes, depth)


# --------------------------------------------------------------------------- timm


def build_timm(
    *,
    input_shape: Sequence[int],
    num_classes: int,
    variant: str,
    drop_rate: float = 0.0,
) -> nn.Module:
    """Build ``timm.create_model(variant)`` without pretrained weights.

    ``num_classes`` and ``in_chans`` come from the dataset; models that take an
    ``img_size`` (vision transformers, ...) get the dataset's image size.

    Args:
        input_shape: ``(channels, height, width)``.
        num_classes: Output logits.
        variant: A timm model name, e.g. ``resnet18`` (``timm.list_models()``).
        drop_rate: Classifier dropout rate (timm's ``drop_rate``).

    Raises:
        ConfigError: timm does not know ``variant``; the message suggests names.
    """
    import timm

    _check_classes(num_classes, f"timm:{variant}")
    c, h, w = _image_shape(input_shape, f"timm:{variant}")
    if not timm.is_model(variant):
        close = difflib.get_close_matches(variant, timm.list_models(), n=3, cutoff=0.6)
        hint = (
            (" did you mean " + " or ".join(repr(n) for n in close) + "?")
            if close
            else ""
        )
        msg = (
            f"timm has no model {variant!r};{hint} list them with "
            "python -c 'import timm; print(timm.list_models())'"
        )
        raise ConfigError(msg)
    kwargs: dict[str, Any] = {
        "pretrained": False,
        "num_classes": num_classes,
        "in_chans": c,
        "drop_rate": drop_rate,
    }
    try:
        return timm.create_model(variant, img_size=(h, w), **kwargs)
    except TypeError as exc:
        if "img_size" not in str(exc):
            raise
    return timm.create_model(variant, **kwargs)


# --------------------------------------------------------------------------- hook

_PAPER = "Jastrzębski et al. 2017, Finding flatter minima with SGD (ICLR-W 2018)"


def sharpkit_register_models() -> list[ModelSpec]:
    """Register mlp-bn, mlp, resnet-cifar, vgg-cifar and timm:<name>."""
    mlp_options = (
        Option(
            name="depth",
            type=int,
            default=4,
            help="Linear layers, classifier included (the paper's '4-layer')",
        ),
        Option(name="width", type=int, default=256, help="Units per hidden layer"),
    )
    return [
        ModelSpec(
            name="mlp-bn",
            factory=build_mlp_bn,
            description=(
                "Batch-normalised ReLU MLP of the paper's Fig. 1 "
                "(default 784-256-256-256-10, 336,650 parameters)"
            ),
            options=mlp_options,
            source=_PAPER,
        ),
        ModelSpec(
            name="mlp",
            factory=build_mlp,
            description=(
                "ReLU MLP without batch norm (default 784-256-256-256-10, 335,114 "
                "parameters): function unchanged by layer rescaling"
            ),
            options=mlp_options,
            source="Dinh, Pascanu, Bengio & Bengio 2017, Sharp Minima Can "
            "Generalize for Deep Nets (ICML): the rescaling argument",
        ),
        ModelSpec(
            name="resnet-cifar",
            factory=build_resnet_cifar,
            description=(
                "He et al. 2016 CIFAR ResNet, depth 6n+2, option-A shortcuts "
                "(resnet56: 853,018 parameters)"
            ),
            options=(
                Option(
                    name="depth",
                    type=int,
                    default=56,
                    help="6n+2: 20, 32, 44, 56 or 110",
                ),
            ),
            source="He, Zhang, Ren, Sun 2016, Deep Residual Learning (CVPR), Sec. 4.2",
        ),
        ModelSpec(
            name="vgg-cifar",
            factory=build_vgg_cifar,
            description=(
                "VGG-11/13/16/19 with batch norm and a 512->classes classifier "
                "for 32x32 inputs (vgg11: 9,231,114 parameters)"
            ),
            options=(
                Option(
                    name="depth",
                    type=int,
                    default=11,
                    help="11, 13, 16 or 19",
                    choices=(11, 13, 16, 19),
                ),
            ),
            source="Simonyan, Zisserman 2015, Very Deep Convolutional Networks (ICLR)",
        ),
        ModelSpec(
            name="timm",
            factory=build_timm,
            description=(
                "Any timm architecture as timm:<name>, no pretrained weights, "
                "classes and channels from the dataset"
            ),
            options=(
                Option(
                    name="drop_rate", type=float, default=0.0, help="Classifier dropout"
                ),
            ),
            prefix=True,
            source="timm, https://github.com/huggingface/pytorch-image-models",
        ),
    ]
