"""Exact tr H through the Gauss-Newton identity for piecewise-multilinear networks."""

from __future__ import annotations

import copy

import pytest
import torch
from cases import Case, bn_mlp, conv_net, mlp, reference_hessian
from torch import nn

from sharpkit.curvature.ggn import (
    cross_entropy_form,
    ggn_trace,
    logits_obstacle,
    multilinear_check,
    supported_layers,
)
from sharpkit.interfaces import DataSplit

DT = torch.float64


def dense_trace(case: Case) -> float:
    return float(torch.diagonal(reference_hessian(case)).sum())


@pytest.mark.parametrize("make", [bn_mlp, conv_net], ids=["bn-mlp", "conv"])
def test_trace_equals_dense_hessian_trace(make) -> None:
    case = make()
    model = case.model.eval()
    ok, why = multilinear_check(model, case.data.inputs[:2])
    assert ok, why
    value, n = ggn_trace(model, case.data, batch_size=case.batch_size)
    assert n == len(case.data)
    # float64 on both sides; only round-off separates them
    assert value == pytest.approx(dense_trace(case), rel=1e-10)


class SeqNet(nn.Module):
    """Linear layers on (B, T, d) inputs and a Conv1d: the other per-example paths."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm1d(4)
        self.lin = nn.Linear(4, 5)
        self.head = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn(self.conv(x)))  # (B, 4, T)
        h = torch.relu(self.lin(h.transpose(1, 2)))  # (B, T, 5)
        return self.head(h.mean(1))


def test_sequence_linear_and_conv1d() -> None:
    torch.manual_seed(3)
    gen = torch.Generator().manual_seed(3)
    model = SeqNet().to(DT).eval()
    with torch.no_grad():
        model.bn.running_var.uniform_(0.5, 1.5)
        model.bn.running_mean.normal_(0, 0.2)
    x = torch.randn(11, 3, 6, generator=gen, dtype=DT)
    y = torch.randint(0, 3, (11,), generator=gen)
    case = Case("seq", model, nn.functional.cross_entropy, DataSplit(x, y), 4)
    assert multilinear_check(model, x[:2])[0]
    value, _ = ggn_trace(model, case.data, batch_size=4)
    assert value == pytest.approx(dense_trace(case), rel=1e-10)


def test_resnet_cifar_structure_passes_and_matches_per_example_jacobians() -> None:
    from torch.func import functional_call, jacrev

    from sharpkit.builtin._models import build_resnet_cifar

    torch.manual_seed(0)
    model = build_resnet_cifar(input_shape=(3, 8, 8), num_classes=4, depth=8)
    model = model.to(DT).eval()
    x = torch.randn(3, 3, 8, 8, dtype=DT)
    ok, why = multilinear_check(model, x[:1])
    assert ok, why
    value, _ = ggn_trace(model, DataSplit(x, torch.zeros(3, dtype=torch.long)))
    params = {k: p.detach() for k, p in model.named_parameters()}
    buffers = dict(model.named_buffers())
    expected = 0.0
    for i in range(3):  # per-example Jacobians, the textbook way

        def logits(p, i=i):
            return functional_call(model, (p, buffers), (x[i : i + 1],))[0]

        jac = jacrev(logits)(params)
        j = torch.cat([v.reshape(4, -1) for v in jac.values()], dim=1)
        p = torch.softmax(model(x[i : i + 1])[0], -1).detach()
        lam = torch.diag(p) - torch.outer(p, p)
        expected += float(torch.trace(lam @ (j @ j.T))) / 3
    assert value == pytest.approx(expected, rel=1e-10)


def test_smooth_activation_is_rejected() -> None:
    case = mlp()  # tanh
    ok, why = multilinear_check(case.model.eval(), case.data.inputs[:2])
    assert not ok
    assert "Tanh" in why


def test_squared_features_are_rejected() -> None:
    class Square(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(4, 4)
            self.b = nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = torch.relu(self.a(x))
            return self.b(h * h)

    ok, why = multilinear_check(Square().eval(), torch.randn(2, 4))
    assert not ok
    assert "itself" in why


def test_weight_sharing_is_rejected() -> None:
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.a(torch.relu(self.a(x)))

    model = Twice().eval()
    ok, why = multilinear_check(model, torch.randn(2, 4))
    assert not ok
    assert "itself" in why
    with pytest.raises(NotImplementedError, match="more than once"):
        ggn_trace(model, DataSplit(torch.randn(3, 4), torch.zeros(3, dtype=torch.long)))


def test_batch_statistics_and_dropout_are_rejected() -> None:
    case = bn_mlp()
    model = copy.deepcopy(case.model).train()
    ok, why = multilinear_check(model, case.data.inputs[:4])
    assert not ok
    assert "batch statistics" in why
    drop = nn.Sequential(nn.Linear(3, 3), nn.Dropout(0.5)).train()
    assert not multilinear_check(drop, torch.randn(2, 3))[0]


def test_unsupported_layers_and_losses() -> None:
    emb = nn.Sequential(nn.Embedding(5, 3), nn.Flatten(), nn.Linear(3, 2))
    ok, why = supported_layers(emb)
    assert not ok
    assert "Embedding" in why
    grouped = nn.Sequential(nn.Conv2d(4, 4, 3, groups=2))
    assert not supported_layers(grouped)[0]


def test_cross_entropy_form_reads_every_option() -> None:
    """Issue 14 item 1: options were ignored (ignore_index) or refused (weight)."""
    import functools

    plain, _ = cross_entropy_form(nn.functional.cross_entropy)
    assert plain is not None
    assert plain.weight is None
    w = torch.tensor([1.0, 2.0, 3.0])
    form, _ = cross_entropy_form(
        nn.CrossEntropyLoss(weight=w, ignore_index=2, label_smoothing=0.1)
    )
    assert form is not None
    assert torch.equal(form.weight, w)
    assert (form.ignore_index, form.label_smoothing) == (2, 0.1)
    part, _ = cross_entropy_form(
        functools.partial(nn.functional.cross_entropy, ignore_index=0)
    )
    assert part is not None
    assert part.ignore_index == 0
    for loss, why in [
        (nn.CrossEntropyLoss(reduction="sum"), "reduction='sum'"),
        (functools.partial(nn.functional.cross_entropy, reduction="sum"), "sum"),
        (functools.partial(nn.functional.cross_entropy, w), "cannot read"),
        (nn.functional.mse_loss, "not cross-entropy"),
        (nn.NLLLoss(), "not cross-entropy"),
    ]:
        form, reason = cross_entropy_form(loss)
        assert form is None
        assert why in reason

    class Focal(nn.CrossEntropyLoss):
        def forward(self, x, y):
            return super().forward(x, y) ** 2

    assert "overrides" in cross_entropy_form(Focal())[1]


def test_logits_obstacle() -> None:
    ok = torch.zeros(4, dtype=torch.long)
    assert logits_obstacle((4, 3), ok) == ""
    assert logits_obstacle((4, 3, 5), torch.zeros(4, 5, dtype=torch.long)) == ""
    assert logits_obstacle((4, 3), torch.rand(4, 3)) == ""  # probabilities
    assert "dimension 1" in logits_obstacle((4, 5, 3), torch.zeros(4, 3))
    assert "not (batch, classes" in logits_obstacle((4,), ok)


@pytest.mark.parametrize(
    ("c_in", "c_out", "size"), [(2, 3, 9), (16, 32, 2)], ids=["direct", "ghost"]
)
def test_conv_per_example_norms_both_forms_and_chunks(monkeypatch, c_in, c_out, size):
    """Per-example ‖∂/∂W‖² of a conv against autograd, one example at a time.

    (2, 3, 9): many positions, few channels, so G is formed; (16, 32, 2): few
    positions, so the Gram ("ghost") form is used. A tiny chunk size makes both
    run over several chunks of examples.
    """
    import sharpkit.curvature.ggn as ggn

    gen = torch.Generator().manual_seed(0)
    conv = nn.Conv2d(c_in, c_out, 3, padding=1, stride=1).to(DT)
    a = torch.randn(5, c_in, size, size, generator=gen, dtype=DT)
    d = torch.randn(5, c_out, size, size, generator=gen, dtype=DT)
    expected = []
    for i in range(5):
        conv.zero_grad()
        (conv(a[i : i + 1]) * d[i : i + 1]).sum().backward()
        expected.append(float(conv.weight.grad.pow(2).sum()))
    positions, k = size * size, c_in * 9
    assert (positions * (k + c_out) < c_out * k) == (size == 2)  # the intended form
    monkeypatch.setattr(ggn, "_CHUNK_ELEMENTS", 1)  # one example per chunk
    got = ggn._conv_weight_sq_norms(conv, a, d.reshape(5, c_out, -1))
    assert got.tolist() == pytest.approx(expected, rel=1e-12)


def test_batch_statistics_beyond_the_training_flag() -> None:
    """Issue 14 item 6: the check looked only at ``.training`` of batch norm.

    Batch norm without running statistics normalises with batch statistics in
    eval mode too; so does instance norm, and F.batch_norm called with
    ``training=True`` by a module of its own.
    """
    no_stats = nn.Sequential(
        nn.Linear(4, 5), nn.BatchNorm1d(5, track_running_stats=False), nn.Linear(5, 3)
    ).eval()
    x = torch.randn(6, 4)
    ok, why = multilinear_check(no_stats, x[:2])
    assert not ok
    assert "no running statistics" in why
    assert "no running statistics" in supported_layers(no_stats)[1]
    with pytest.raises(NotImplementedError, match="no running statistics"):
        ggn_trace(no_stats, DataSplit(x, torch.zeros(6, dtype=torch.long)))
    inst = nn.Sequential(nn.Conv1d(2, 3, 3), nn.InstanceNorm1d(3), nn.Flatten()).eval()
    assert not multilinear_check(inst, torch.randn(2, 2, 7))[0]

    class OwnBatchNorm(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.lin(x)
            return nn.functional.batch_norm(h, None, None, training=True)

    ok, why = multilinear_check(OwnBatchNorm().eval(), x[:2])
    assert not ok
    assert "batch statistics" in why
