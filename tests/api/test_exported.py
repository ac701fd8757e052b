"""``.pt2`` archives: read without unpickling code, differentiated twice."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest
import torch
from torch import nn

import sharpkit
from sharpkit.api.sources import load_exported


@torch.library.custom_op("sharpkit_test::cube_grad", mutates_args=())
def cube_grad(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    return 3 * x * x * g


@cube_grad.register_fake
def _(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(x)


@torch.library.custom_op("sharpkit_test::cube", mutates_args=())
def cube(x: torch.Tensor) -> torch.Tensor:
    return x**3


@cube.register_fake
def _(x: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(x)


def _cube_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[0])


def _cube_backward(ctx, g):
    # A first derivative through an operator that has none itself: the kind of
    # custom kernel that cannot be differentiated twice.
    (x,) = ctx.saved_tensors
    return cube_grad(x, g)


cube.register_autograd(_cube_backward, setup_context=_cube_setup)


# The same, registered the older way (torch.library.define/impl): torch only
# warns where it is differentiated and treats the derivative as zero.
torch.library.define("sharpkit_test::square_grad", "(Tensor x, Tensor g) -> Tensor")
torch.library.define("sharpkit_test::square", "(Tensor x) -> Tensor")


@torch.library.impl("sharpkit_test::square_grad", "CompositeExplicitAutograd")
def _square_grad(x, g):
    return 2 * x * g


@torch.library.impl("sharpkit_test::square", "CompositeExplicitAutograd")
def _square(x):
    return x * x


@torch.library.register_fake("sharpkit_test::square")
def _square_fake(x):
    return torch.empty_like(x)


@torch.library.register_fake("sharpkit_test::square_grad")
def _square_grad_fake(x, g):
    return torch.empty_like(x)


def _square_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[0])


def _square_backward(ctx, g):
    (x,) = ctx.saved_tensors
    return torch.ops.sharpkit_test.square_grad(x, g)


torch.library.register_autograd(
    "sharpkit_test::square", _square_backward, setup_context=_square_setup
)


class BNNet(nn.Module):
    def __init__(self, cube: bool | str = False) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3)
        self.bn = nn.BatchNorm2d(3)
        self.fc = nn.Linear(3 * 4 * 4, 4)
        self.cube = cube

    def forward(self, x):
        h = torch.tanh(self.bn(self.conv(x))).flatten(1)
        out = self.fc(h)
        if self.cube == "square":
            return torch.ops.sharpkit_test.square(out)
        return cube(out) if self.cube else out


def bn_net(seed: int = 0, cube: bool | str = False) -> BNNet:
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = BNNet(cube).double()
    with torch.no_grad():  # running statistics far from the identity
        net.bn.running_mean.copy_(0.3 * torch.randn(3, generator=gen))
        net.bn.running_var.copy_(0.5 + torch.rand(3, generator=gen))
    return net.eval()


def data(n: int = 20, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 6, 6, generator=gen, dtype=torch.float64)
    return x, torch.randint(0, 4, (n,), generator=gen)


def export(net: nn.Module, path: Path, dynamic: bool = True) -> Path:
    example = torch.randn(2, 1, 6, 6, dtype=torch.float64)
    shapes = ({0: torch.export.Dim("batch")},) if dynamic else None
    torch.export.save(torch.export.export(net, (example,), dynamic_shapes=shapes), path)
    return path


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> tuple[BNNet, Path]:
    net = bn_net()
    return net, export(net, tmp_path_factory.mktemp("pt2") / "net.pt2")


def test_hvp_through_the_exported_program_equals_eager(archive) -> None:
    net, path = archive
    exported, ckpt = load_exported(path)
    assert ckpt.format == "torch-export"
    split = sharpkit.DataSplit(*data())
    vectors = torch.randn(
        sum(p.numel() for p in net.parameters()),
        3,
        generator=torch.Generator().manual_seed(2),
        dtype=torch.float64,
    )
    loss = nn.functional.cross_entropy
    eager = sharpkit.HessianOperator(net, loss, split, batch_size=7) @ vectors
    with sharpkit.analysis_mode(exported):
        graph = sharpkit.HessianOperator(exported, loss, split, batch_size=7) @ vectors
    # The same aten operations in float64 (batch norm from running statistics in
    # both); only summation order may differ, so agreement to rounding.
    torch.testing.assert_close(graph, eager, rtol=1e-10, atol=1e-12)
    assert eager.abs().max() > 1e-3  # not trivially zero


def test_measure_of_a_pt2_equals_measure_of_the_module(archive) -> None:
    net, path = archive
    x, y = data()
    got = sharpkit.measure(path, (x, y), ["spectral"])
    want = sharpkit.measure(net, (x, y), ["spectral"])
    assert got.attrs["checkpoint_format"] == "torch-export"
    # The same operator (previous test) and the same seeded Lanczos run.
    assert got["spectral"].value == pytest.approx(want["spectral"].value, rel=1e-9)


def test_data_of_another_shape_names_both_shapes(archive) -> None:
    _, path = archive
    with pytest.raises(sharpkit.DataError) as info:
        sharpkit.measure(
            path, (torch.randn(8, 1, 5, 5), torch.zeros(8, dtype=torch.long))
        )
    text = str(info.value)
    assert "(1, 5, 5)" in text
    assert "(batch, 1, 6, 6) float64" in text


def test_batch_norm_mode_is_fixed_at_export(archive) -> None:
    _, path = archive
    with pytest.raises(sharpkit.ConfigError, match="bn_mode= train"):
        sharpkit.measure(path, data(), bn_mode="train")


def test_program_exported_in_training_mode_is_refused(tmp_path) -> None:
    path = export(bn_net().train(), tmp_path / "train.pt2")
    with pytest.raises(sharpkit.ConfigError, match="in training mode; export it after"):
        sharpkit.measure(path, data())


def test_static_batch_size_is_refused_with_the_fix(tmp_path) -> None:
    path = export(bn_net(), tmp_path / "static.pt2", dynamic=False)
    with pytest.raises(sharpkit.ConfigError, match="Dim\\('batch'\\)"):
        sharpkit.measure(path, data())


@pytest.mark.parametrize("op", [True, "square"], ids=["custom-op", "library-define"])
def test_program_that_cannot_be_differentiated_twice_says_so(tmp_path, op) -> None:
    path = export(bn_net(cube=op), tmp_path / "cube.pt2")
    with pytest.raises(sharpkit.ConfigError) as info:
        sharpkit.measure(path, data())
    assert "cannot be differentiated twice" in str(info.value)
    assert "\n" not in str(info.value)


class Payload:
    ran = False

    def __reduce__(self):
        return (Payload._run, ())

    @staticmethod
    def _run():
        Payload.ran = True
        return "pwned"


def test_pickle_inside_the_archive_is_never_run(archive, tmp_path) -> None:
    _, path = archive
    evil = tmp_path / "evil.pt2"
    blob = io.BytesIO()
    torch.save({"x": Payload()}, blob)
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(evil, "w") as dst:
        for info in src.infolist():
            data_ = src.read(info)
            if info.filename.endswith("sample_inputs/model.pt"):
                data_ = blob.getvalue()
            dst.writestr(info, data_)
    with pytest.raises(sharpkit.UnsafeCheckpointError, match="was not loaded"):
        sharpkit.measure(evil, data())
    assert not Payload.ran


def test_pt2_names_no_model(archive) -> None:
    _, path = archive
    with pytest.raises(sharpkit.ConfigError, match="holds its own architecture"):
        sharpkit.measure(path, data(), model_name="mlp-bn")
