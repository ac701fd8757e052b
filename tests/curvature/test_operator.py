"""HessianOperator against dense float64 Hessians (torch.func.hessian).

Tolerances: every HVP method is exact, so in float64 products agree with the
reference to rounding (~1e-15 relative); 1e-10 leaves room for the summation
order of different methods and batch splits. Finite-difference references
(bn_mode="train") are accurate to ~1e-9, so those comparisons use 1e-7.
"""

from __future__ import annotations

import copy

import pytest
import torch
from cases import CASES, NETWORK_CASES, bn_mlp, conv_net, mlp, reference_gradient
from cases import reference_hessian as ref_h
from torch import nn

from sharpkit.curvature.operator import HessianOperator, analysis_mode
from sharpkit.errors import ConfigError, DataError
from sharpkit.interfaces import DataSplit

METHODS = ("graph", "double-backward", "forward-over-reverse", "auto")
EXACT = 1e-10


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def op(case, **kw) -> HessianOperator:
    kw.setdefault("batch_size", case.batch_size)
    return HessianOperator(case.model, case.loss_fn, case.data, **kw)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", list(CASES))
def test_every_method_matches_dense_hessian(
    name: str, method: str, device: str
) -> None:
    case = CASES[name]()
    ref = ref_h(case)
    H = op(case, method=method, device=device)
    gen = torch.Generator().manual_seed(1)
    v = torch.randn(case.n, generator=gen, dtype=torch.float64)
    block = torch.randn(case.n, 5, generator=gen, dtype=torch.float64)
    assert (H @ v).device.type == device
    assert rel((H @ v).cpu(), ref @ v) < EXACT
    assert rel(H.matvec(block).cpu(), ref @ block) < EXACT
    assert rel(H.to_dense().cpu(), ref) < EXACT
    assert H.method in ("graph", "double-backward", "forward-over-reverse")


@pytest.mark.parametrize("name", ["bn-mlp", "conv"])
@pytest.mark.parametrize("method", ["graph", "double-backward", "forward-over-reverse"])
def test_train_mode_batch_statistics(name: str, method: str) -> None:
    case = CASES[name]()
    ref = ref_h(case, bn_mode="train")
    H = op(case, bn_mode="train", method=method)
    # finite-difference reference: ~1e-9 accurate (see cases.reference_hessian)
    assert rel(H.to_dense(), ref) < 1e-7
    # and batch statistics really change the Hessian (the test can fail)
    assert rel(ref_h(case), ref) > 1e-3


def test_fused_batch_norm_is_the_same_function() -> None:
    case = conv_net()
    gen = torch.Generator().manual_seed(2)
    v = torch.randn(case.n, generator=gen, dtype=torch.float64)
    fused = op(case, fuse_bn=True)
    plain = op(case, fuse_bn=False)
    assert rel(fused @ v, plain @ v) < EXACT
    assert fused.loss() == pytest.approx(plain.loss(), rel=1e-13)


def test_uneven_last_batch_is_weighted_by_size() -> None:
    case = bn_mlp()  # 41 examples in batches of 16: 16, 16, 9
    whole = ref_h(case, batch_size=len(case.data))
    for bs in (16, 7, 41):
        assert rel(op(case, batch_size=bs).to_dense(), whole) < EXACT
    # An unweighted mean of per-batch Hessians (a common bug) differs: the test
    # above could fail.
    batches = list(case.data.batches(16))
    naive = sum(
        HessianOperator(case.model, case.loss_fn, [b]).to_dense() for b in batches
    ) / len(batches)
    assert rel(naive, whole) > 1e-3


def test_list_of_batches_and_dataloader() -> None:
    case = mlp()
    ref = ref_h(case)
    batches = case.batches()
    assert (
        rel(HessianOperator(case.model, case.loss_fn, batches).to_dense(), ref) < EXACT
    )
    ds = torch.utils.data.TensorDataset(case.data.inputs, case.data.targets)
    loader = torch.utils.data.DataLoader(ds, batch_size=10)
    H = HessianOperator(case.model, case.loss_fn, loader)
    assert rel(H.to_dense(), ref) < EXACT
    assert H.num_examples == len(case.data)


def test_one_shot_iterator_is_refused() -> None:
    case = mlp()
    with pytest.raises(ConfigError, match="one-shot iterator"):
        HessianOperator(case.model, case.loss_fn, iter(case.batches()))


@pytest.mark.parametrize("bn_mode", ["eval", "train"])
@pytest.mark.parametrize("method", ["graph", "double-backward", "forward-over-reverse"])
def test_buffers_flags_and_parameters_unchanged(bn_mode: str, method: str) -> None:
    case = conv_net()
    model = case.model
    model.train()  # the user's mode must come back too
    model[3].eval()
    before_buffers = {k: b.clone() for k, b in model.named_buffers()}
    before_params = {k: p.detach().clone() for k, p in model.named_parameters()}
    flags = [m.training for m in model.modules()]
    H = op(case, bn_mode=bn_mode, method=method)
    H @ torch.ones(case.n, dtype=torch.float64)
    H.matvec(torch.ones(case.n, 3, dtype=torch.float64))
    H.gradient()
    for k, b in model.named_buffers():
        assert torch.equal(b, before_buffers[k]), k
    for k, p in model.named_parameters():
        assert torch.equal(p.detach(), before_params[k]), k
    assert [m.training for m in model.modules()] == flags
    assert all(
        m.track_running_stats
        for m in model.modules()
        if hasattr(m, "track_running_stats")
    )
    assert "forward" not in model[1].__dict__  # the fused forward was removed


def test_analysis_mode_turns_dropout_off() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5)).double().train()
    x = torch.randn(8, 4, dtype=torch.float64)
    with analysis_mode(model):
        a, b = model(x), model(x)
    assert torch.equal(a, b)
    assert model[1].training


@pytest.mark.parametrize("name", NETWORK_CASES)
def test_gradient_and_loss(name: str) -> None:
    case = CASES[name]()
    grad, loss = reference_gradient(case)
    for method in ("graph", "double-backward"):
        H = op(case, method=method)
        assert rel(H.gradient(), grad) < EXACT
        assert H.loss() == pytest.approx(loss, rel=1e-12)


def test_dtype_conversion_copies_the_model() -> None:
    case = bn_mlp()
    model32 = copy.deepcopy(case.model).float()
    data32 = DataSplit(case.data.inputs.float(), case.data.targets)
    H = HessianOperator(
        model32, case.loss_fn, data32, batch_size=16, dtype=torch.float64
    )
    assert H.dtype == torch.float64
    assert all(p.dtype == torch.float32 for p in model32.parameters())  # untouched
    assert H.model is not model32
    # float32 weights/inputs rounded: compare with the float64 case at 1e-6
    assert rel(H.to_dense(), ref_h(case)) < 1e-5
    H32 = HessianOperator(model32, case.loss_fn, data32, batch_size=16)
    assert H32.dtype == torch.float32
    assert H32.model is model32


def test_parameter_subset() -> None:
    case = bn_mlp()
    names = ["3.weight", "4.weight", "4.bias"]
    lookup = dict(case.model.named_parameters())
    ref = ref_h(case, params=names)
    for method in ("graph", "forward-over-reverse"):
        H = op(case, params=[lookup[k] for k in names], method=method)
        assert H.n == ref.shape[0]
        assert rel(H.to_dense(), ref) < EXACT


def test_memory_budget_keeps_a_prefix_of_graphs() -> None:
    case = bn_mlp()
    ref = ref_h(case)
    tiny = op(case, memory_budget=0)  # no graph fits
    assert tiny.method in ("double-backward", "forward-over-reverse")
    assert tiny.graph_bytes == 0
    assert rel(tiny.to_dense(), ref) < EXACT
    # room for exactly the first batch's graph: kept for it, per batch for the rest
    first = case.batches()[0]
    one = HessianOperator(case.model, case.loss_fn, [first], method="graph")
    part = op(case, memory_budget=one.graph_bytes)
    assert part.method.startswith("graph+")
    assert part.graph_bytes == one.graph_bytes
    assert rel(part.to_dense(), ref) < EXACT
    assert rel(part.gradient(), op(case).gradient()) < EXACT


def test_counts_and_estimate() -> None:
    case = mlp()
    H = op(case)
    assert H.hvp_count == 0
    H @ torch.ones(case.n, dtype=torch.float64)
    H.matvec(torch.ones(case.n, 4, dtype=torch.float64))
    assert H.hvp_count == 5
    assert H.estimate_hvp_seconds() > 0
    assert H.hvp_count == 5  # estimated from the products already done
    fresh = op(case)
    assert fresh.estimate_hvp_seconds() > 0
    assert fresh.hvp_count == 1
    assert fresh.shape == (case.n, case.n)
    assert "HessianOperator" in repr(fresh)


def test_bad_arguments() -> None:
    case = mlp()
    with pytest.raises(ConfigError, match="bn_mode"):
        op(case, bn_mode="batch")
    with pytest.raises(ConfigError, match="method"):
        op(case, method="fd")
    with pytest.raises(ConfigError, match="batch_size"):
        op(case, batch_size=0)
    with pytest.raises(ConfigError, match="no parameters"):
        op(case, params=[])
    H = op(case)
    with pytest.raises(ConfigError, match="expected a vector"):
        H @ torch.ones(3, dtype=torch.float64)
    big = nn.Linear(100, 60).double()
    x = torch.randn(4, 100, dtype=torch.float64)
    Hb = HessianOperator(
        big, nn.functional.cross_entropy, [(x, torch.zeros(4, dtype=torch.long))]
    )
    with pytest.raises(ConfigError, match="at most 5000"):
        Hb.to_dense()
    assert Hb.hvp_count == 0


def test_non_finite_loss_is_a_data_error() -> None:
    case = mlp()
    x = case.data.inputs.clone()
    x[3, 0] = float("nan")
    H = HessianOperator(case.model, case.loss_fn, DataSplit(x, case.data.targets))
    with pytest.raises(DataError, match="loss is nan"):
        H.loss()


def test_empty_data() -> None:
    case = mlp()
    H = HessianOperator(case.model, case.loss_fn, [])
    with pytest.raises(DataError, match="empty"):
        H.gradient()


def test_loss_independent_of_parameters_gives_zero_hessian() -> None:
    model = nn.Linear(3, 1).double()
    x = torch.randn(5, 3, dtype=torch.float64)

    def linear_loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return out.mean()  # linear in the parameters: H = 0

    H = HessianOperator(model, linear_loss, [(x, torch.zeros(5))])
    assert torch.equal(H.to_dense(), torch.zeros(4, 4, dtype=torch.float64))


@pytest.mark.parametrize("bn_mode", ["eval", "train"])
def test_buffers_are_not_even_touched(bn_mode: str) -> None:
    """No in-place write to a buffer: another autograd graph that saved it (the
    user's, or another tool's) stays valid."""
    case = bn_mlp()
    x, y = case.data.inputs, case.data.targets
    foreign = torch.autograd.grad(
        case.loss_fn(case.model(x), y), list(case.model.parameters()), create_graph=True
    )
    versions = {k: b._version for k, b in case.model.named_buffers()}
    for method in ("graph", "double-backward", "forward-over-reverse"):
        H = op(case, bn_mode=bn_mode, method=method)
        H @ torch.ones(case.n, dtype=torch.float64)
    assert {k: b._version for k, b in case.model.named_buffers()} == versions
    torch.autograd.grad(foreign[0].sum(), next(iter(case.model.parameters())))


def test_a_buffer_written_in_forward_is_restored() -> None:
    class Counting(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(3, 2).double()
            self.register_buffer("calls", torch.zeros((), dtype=torch.float64))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.calls += 1
            return self.lin(x)

    model = Counting()
    x = torch.randn(6, 3, dtype=torch.float64)
    H = HessianOperator(
        model, nn.functional.cross_entropy, [(x, torch.zeros(6, dtype=torch.long))]
    )
    H @ torch.ones(8, dtype=torch.float64)
    H.to_dense()
    assert float(model.calls) == 0.0


def _compile_works(device: str) -> bool:
    """Whether ``torch.compile`` can build a kernel here (it needs a compiler)."""
    try:
        out = torch.compile(lambda t: t * 2)(torch.ones(2, device=device))
    except Exception:  # any failure means: not available here
        return False
    return bool(out.sum() == 4)


@pytest.mark.slow
def test_compiled_forward_over_reverse(device: str) -> None:
    """The compiled product equals the eager one and the dense truth (#24)."""
    if not _compile_works(device):
        pytest.skip(f"torch.compile is not available on {device} here")
    case = mlp()
    ref = ref_h(case)
    H = op(case, method="forward-over-reverse", compile=True, device=device)
    eager = op(case, method="forward-over-reverse", device=device)
    v = torch.linspace(-1, 1, case.n, dtype=torch.float64)
    V = torch.stack([v, -v], 1)
    assert rel((H @ v.to(device)).cpu(), ref @ v) < EXACT
    assert rel(H.matvec(V.to(device)).cpu(), ref @ V) < EXACT
    assert rel((H @ v.to(device)).cpu(), (eager @ v.to(device)).cpu()) < EXACT


def _regression(
    loss_fn, n: int = 20
) -> tuple[nn.Module, list[tuple[torch.Tensor, torch.Tensor]]]:
    """A tanh MLP with two outputs on float targets, in two batches."""
    gen = torch.Generator().manual_seed(3)
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2)).double()
    x = torch.randn(n, 3, generator=gen, dtype=torch.float64)
    y = torch.randn(n, 2, generator=gen, dtype=torch.float64)
    return model, [(x[:12], y[:12]), (x[12:], y[12:])]


@pytest.mark.parametrize(
    "loss_fn",
    [nn.MSELoss(), nn.L1Loss(), nn.functional.mse_loss],
    ids=["MSELoss", "L1Loss", "F.mse_loss"],
)
def test_forward_over_reverse_with_float_targets(loss_fn) -> None:
    """Issue 14 item 8: MSELoss raised "ZeroTensors are immutable" (target tangent)."""
    model, batches = _regression(loss_fn)
    ref = HessianOperator(model, loss_fn, batches, method="double-backward")
    H = HessianOperator(model, loss_fn, batches, method="forward-over-reverse")
    gen = torch.Generator().manual_seed(0)
    block = torch.randn(H.n, 20, generator=gen, dtype=torch.float64)  # vmapped
    assert rel(H @ block[:, 0], ref @ block[:, 0]) < EXACT
    assert rel(H.matvec(block), ref.matvec(block)) < EXACT
    assert H.method == "forward-over-reverse"


def test_auto_falls_back_when_forward_over_reverse_fails() -> None:
    """huber_loss has no forward derivative: auto must use double backward.

    With no room for the gradient graph, auto times both per-batch methods; the
    one that raises is not a choice (before: the error escaped, and with MSE
    the ZeroTensor error did).
    """
    loss_fn = nn.HuberLoss(delta=0.5)
    model, batches = _regression(loss_fn)
    ref = HessianOperator(model, loss_fn, batches, method="double-backward")
    H = HessianOperator(model, loss_fn, batches, memory_budget=0)
    assert rel(H.to_dense(), ref.to_dense()) < EXACT
    assert H.method == "double-backward"
    forced = HessianOperator(model, loss_fn, batches, method="forward-over-reverse")
    with pytest.raises(ConfigError, match="method='double-backward'") as info:
        forced @ torch.ones(forced.n, dtype=torch.float64)
    assert "\n" not in str(info.value)


def test_auto_falls_back_when_a_later_batch_fails() -> None:
    """A per-batch method chosen by timing that fails later is replaced."""
    loss_fn = nn.HuberLoss(delta=0.5)
    model, batches = _regression(loss_fn)
    ref = HessianOperator(model, loss_fn, batches, method="double-backward")
    H = HessianOperator(model, loss_fn, batches, memory_budget=0)
    H._setup()
    H._fallback = "forward-over-reverse"  # as if the timing had chosen it
    v = torch.ones(H.n, dtype=torch.float64)
    assert rel(H @ v, ref @ v) < EXACT
    assert H.method == "double-backward"


class _Attention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(4, 12)
        self.out = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        h = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out(h.mean(1))


@pytest.mark.parametrize("method", METHODS)
def test_products_through_scaled_dot_product_attention(method: str) -> None:
    """The fused CPU attention kernel has no double backward; the math one does.

    Reference: double backward through the attention written out by hand
    (softmax of scaled scores with a causal mask), which is the same function.
    """
    torch.manual_seed(0)
    model = _Attention().double()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(10, 5, 4, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (10,), generator=gen)

    def by_hand(inputs: torch.Tensor) -> torch.Tensor:
        q, k, v = model.qkv(inputs).chunk(3, dim=-1)
        scores = q @ k.transpose(-1, -2) / 2.0  # sqrt(d) = 2
        mask = torch.ones(5, 5, dtype=torch.bool).tril()
        weights = scores.masked_fill(~mask, float("-inf")).softmax(-1)
        return model.out((weights @ v).mean(1))

    params = list(model.parameters())
    loss = nn.functional.cross_entropy(by_hand(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    g = torch.cat([t.reshape(-1) for t in grads])
    v = torch.randn(g.numel(), generator=gen, dtype=torch.float64)
    ref = torch.cat([t.reshape(-1) for t in torch.autograd.grad(g @ v, params)])
    H = HessianOperator(
        model,
        nn.functional.cross_entropy,
        [(x[:6], y[:6]), (x[6:], y[6:])],
        method=method,
    )
    assert rel(H @ v, ref) < EXACT


@pytest.mark.gpu
def test_float32_products_on_cuda_do_not_use_tf32() -> None:
    """TF32 (10 mantissa bits) would leave ~1e-3 relative error in a product.

    With TF32 switched on globally, as many training scripts do, the operator
    must still compute in IEEE float32: ~1e-6 relative of the float64 truth
    (1e-5 allows for the accumulation over a few hundred terms).
    """
    case = CASES["conv"]()
    ref = ref_h(case)
    matmul, conv = torch.backends.cuda.matmul, torch.backends.cudnn.conv
    saved = matmul.fp32_precision, conv.fp32_precision
    matmul.fp32_precision, conv.fp32_precision = "tf32", "tf32"
    try:
        H = op(case, device="cuda", dtype=torch.float32)
        v = torch.randn(case.n, generator=torch.Generator().manual_seed(1))
        got = (H @ v).cpu().double()
        assert matmul.fp32_precision == "tf32"  # restored after the product
    finally:
        matmul.fp32_precision, conv.fp32_precision = saved
    assert rel(got, ref @ v.double()) < 1e-5
