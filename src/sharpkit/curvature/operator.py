r"""Exact Hessian-vector products of the mean loss over a whole analysis set.

:class:`HessianOperator` is the symmetric linear operator ``v -> H v`` where ``H``
is the Hessian, with respect to a flat vector of parameters, of

.. math:: L(\theta) = \frac{1}{N} \sum_b n_b \, \ell_b(\theta),

the loss averaged over *all* ``N`` examples of the data: every batch ``b`` enters
with its size ``n_b`` as weight (``ℓ_b`` is the mean loss of the batch), so a
short last batch does not bias the operator and the result does not depend on
``batch_size`` (in batch-norm eval mode). For a weighted-mean loss (class
``weight=`` or ``ignore_index`` of cross-entropy, or a loss with a
``batch_weight(targets)`` method, see :func:`sharpkit._data.loss_weight`),
``n_b`` and ``N`` are the sums of the examples' weights instead, so ``L`` is
``Σ wᵢℓᵢ / Σ wᵢ`` over the whole data, not a mean of batch means; a batch
whose targets are all ignored has weight 0 and is skipped.

Products are computed exactly (no Gauss-Newton or finite-difference
approximation) by one of these methods:

``"graph"``
    Double backward through a gradient graph built once and kept for every
    vector: the graph of ``∇L`` (with ``create_graph=True``) is built on the first
    product and each ``H v`` is one backward pass through it
    (Pearlmutter, 1994, "Fast exact multiplication by the Hessian", Neural
    Computation). Fastest on the CPU measured (1.7 gradients per product for a
    336k-parameter BN-MLP), but the graph holds every activation of every batch,
    so it is kept only for as many batches as fit ``memory_budget``; the other
    batches use one of the two per-batch methods below.
``"double-backward"``
    The same, but the gradient graph is rebuilt per batch and per call
    (3.1 gradients per product on that model).
``"forward-over-reverse"``
    ``torch.func.jvp`` of ``torch.func.grad`` per batch (4.2 gradients per
    product); blocks of vectors are ``vmap``-ped (3.5 per vector for 8 on that model).

``method="auto"`` keeps the gradient graph of as many batches as fit the memory
budget (measured from the tensors autograd saves for the first batch) and times
the two per-batch methods on one batch for the rest.

Batch norm runs in eval mode (running statistics) by default; ``bn_mode="train"``
uses the statistics of each batch instead (the Hessian then depends on the batch
composition). Either way module buffers (running statistics,
``num_batches_tracked``) are exactly the same after any product as before it, and
dropout is off. The model's parameters are never modified.

With ``process_group`` (or an initialised default ``torch.distributed`` group of
more than one process), the data are sharded across ranks: each rank computes its
size-weighted partial product and the partials are all-reduced.

Float32 products run in full IEEE precision unless ``allow_tf32=True``:
:func:`full_precision` turns off TF32 for cuBLAS matmuls and cuDNN
convolutions (PyTorch's default lets cuDNN use it) and bf16 for oneDNN on the
CPU while the operator computes. TF32 keeps 10 mantissa bits, so each product
carries a relative error of about 1e-3, as large as the default tolerance: a
Lanczos bound computed from such products would certify nothing.
"""

from __future__ import annotations

import copy
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from sharpkit._data import DataSplit, loss_weight
from sharpkit.errors import ConfigError, DataError, DistributedError, first_line

if TYPE_CHECKING:
    import torch.distributed as dist_t

__all__ = ["HVP_METHODS", "HessianOperator", "analysis_mode", "full_precision"]

HVP_METHODS = ("auto", "graph", "double-backward", "forward-over-reverse")
"""The values accepted by ``HessianOperator(method=...)``."""

BN_MODES = ("eval", "train")
MAX_DENSE = 5000
"""``to_dense`` refuses operators larger than this (an n x n float64 matrix)."""

_VMAP_CHUNK = 16
"""Vectors per vmapped forward-over-reverse call (bounds its memory)."""

_GRAPH_SAFETY = 2.0
"""The saved tensors of a gradient graph under-count the peak memory of a
backward through it (temporaries); budget this many times their size."""


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


class _SavedBytes:
    """Count the bytes autograd saves for backward (excluding the parameters)."""

    def __init__(self, exclude: set[int]) -> None:
        self.exclude = exclude
        self.seen: dict[int, int] = {}

    def pack(self, t: Tensor) -> Tensor:
        try:
            ptr = t.untyped_storage().data_ptr()
        except (RuntimeError, NotImplementedError):  # pragma: no cover - exotic tensors
            return t
        if ptr not in self.exclude:
            key = t.data_ptr()
            self.seen[key] = max(self.seen.get(key, 0), t.numel() * t.element_size())
        return t

    @staticmethod
    def unpack(t: Tensor) -> Tensor:
        return t

    @property
    def total(self) -> int:
        return sum(self.seen.values())


def _default_budget(device: torch.device) -> int:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(0.5 * free)
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        total = 8 << 30
    return int(0.25 * total)


def _once_differentiable(loss: Tensor) -> str:
    """The first ``@once_differentiable`` custom Function in ``loss``'s graph.

    Returns "" if there is none. Its backward runs without recording a graph,
    so a Hessian-vector product through it silently drops the
    second-derivative terms it should carry (torch raises nothing when the
    gradient it returns is used again): every curvature number would be wrong.
    """
    stack = [loss.grad_fn]
    seen: set[Any] = set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        fwd = getattr(node, "_forward_cls", None)
        backward = getattr(fwd, "backward", None)
        code = getattr(backward, "__code__", None)
        if code is not None and "once_differentiable" in code.co_qualname:
            return str(getattr(fwd, "__qualname__", type(node).__name__))
        stack.extend(nxt for nxt, _ in node.next_functions)
    return ""


def _batch_size_of(x: Any, y: Any) -> int:
    if isinstance(y, Tensor) and y.dim() > 0:
        return int(y.shape[0])
    if isinstance(x, Tensor):
        return int(x.shape[0])
    return len(y)


class HessianOperator:
    """The Hessian of the mean loss over ``data`` as a linear operator.

    Args:
        model: The model; it is used as is (not copied) unless ``dtype`` or
            ``device`` asks for a conversion, in which case a deep copy is
            converted and the user's model is left untouched.
        loss_fn: ``loss(outputs, targets) -> scalar``, mean reduction over the batch.
        data: A :class:`~sharpkit.DataSplit` or any re-iterable of
            ``(inputs, targets)`` batches (a list, a ``DataLoader``).
        batch_size: Batch size for a :class:`~sharpkit.DataSplit`.
        bn_mode: ``"eval"`` (running statistics, the default) or ``"train"``
            (batch statistics; buffers are still left unchanged).
        params: The parameters to differentiate with respect to (default: every
            parameter of ``model`` that requires grad), in flat-vector order.
        dtype: Floating dtype of the computation (default: the parameters').
        method: ``"auto"``, ``"graph"``, ``"double-backward"`` or
            ``"forward-over-reverse"`` (see the module docstring).
        device: Where to compute (default: the parameters' device).
        process_group: A ``torch.distributed`` group to shard the data over;
            ``None`` uses the default group when one is initialised with more
            than one process.
        memory_budget: Bytes the kept gradient graph may use with
            ``method="auto"`` (default: a quarter of the RAM, or half the free
            memory of a GPU).
        fuse_bn: In eval mode, compute batch norm as the equivalent affine map
            (see :func:`analysis_mode`; the same Hessian, a cheaper graph).
        compile: ``torch.compile`` the forward-over-reverse product (only that
            method: torch.compile does not support double backward). Off by
            default: on the 2-core CPU measured, compiling took ~30 s and the
            compiled product cost about as much as a product through the kept
            graph, so it pays only for long runs that cannot keep the graph.
        allow_tf32: Let float32 products use TF32 (GPUs) or bf16 (oneDNN)
            kernels; off by default (see :func:`full_precision`).

    Raises:
        ConfigError: A bad option value or an empty parameter set.
        DataError: The data are empty or give a non-finite loss.

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Linear(3, 2).double()
        >>> x, y = torch.randn(10, 3, dtype=torch.float64), torch.arange(10) % 2
        >>> H = HessianOperator(model, nn.functional.cross_entropy, [(x, y)])
        >>> H.shape
        (8, 8)
        >>> bool(torch.allclose(H @ torch.eye(8), H.to_dense()))
        True
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Callable[[Tensor, Tensor], Tensor],
        data: DataSplit | Iterable[tuple[Any, Any]],
        *,
        batch_size: int = 2048,
        bn_mode: str = "eval",
        params: Sequence[Tensor] | None = None,
        dtype: torch.dtype | None = None,
        method: str = "auto",
        device: torch.device | str | None = None,
        process_group: Any = None,
        memory_budget: int | None = None,
        fuse_bn: bool = True,
        compile: bool = False,
        allow_tf32: bool = False,
    ) -> None:
        if bn_mode not in BN_MODES:
            msg = f"bn_mode must be 'eval' or 'train', got {bn_mode!r}"
            raise ConfigError(msg)
        if method not in HVP_METHODS:
            allowed = ", ".join(repr(m) for m in HVP_METHODS)
            msg = f"method must be one of {allowed}, got {method!r}"
            raise ConfigError(msg)
        if batch_size < 1:
            msg = f"batch_size must be >= 1, got {batch_size}"
            raise ConfigError(msg)
        if isinstance(data, Iterator):
            msg = (
                "data is a one-shot iterator but the Hessian needs many passes; "
                "pass a DataSplit, a list of (inputs, targets) batches or a DataLoader"
            )
            raise ConfigError(msg)

        names = {id(p): name for name, p in model.named_parameters()}
        chosen = (
            [p for p in model.parameters() if p.requires_grad]
            if params is None
            else list(params)
        )
        if not chosen:
            msg = "no parameters to differentiate: none requires grad, params= is empty"
            raise ConfigError(msg)
        dtypes = {p.dtype for p in chosen}
        if dtype is None and len(dtypes) > 1:
            msg = (
                f"parameters have mixed dtypes {sorted(map(str, dtypes))}; pass dtype="
            )
            raise ConfigError(msg)
        target_dtype = dtype if dtype is not None else chosen[0].dtype
        if not target_dtype.is_floating_point:
            msg = f"dtype must be a floating dtype, got {target_dtype}"
            raise ConfigError(msg)
        target_device = torch.device(device) if device is not None else chosen[0].device

        param_names = [names.get(id(p)) for p in chosen]
        needs_copy = any(
            p.dtype != target_dtype or p.device != target_device for p in chosen
        )
        if needs_copy:
            if any(n is None for n in param_names):
                msg = (
                    "params= must be parameters of model when dtype/device converts it"
                )
                raise ConfigError(msg)
            model = copy.deepcopy(model).to(device=target_device, dtype=target_dtype)
            lookup = dict(model.named_parameters())
            chosen = [lookup[n] for n in param_names if n is not None]

        self.model = model
        self.loss_fn = loss_fn
        self.data = data
        self.batch_size = int(batch_size)
        self.bn_mode = bn_mode
        self.fuse_bn = bool(fuse_bn)
        self.compile = bool(compile)
        self.allow_tf32 = bool(allow_tf32)
        self.params: list[Tensor] = list(chosen)
        self._param_names = param_names
        self._dtype = target_dtype
        self._device = target_device
        self._requested_method = method
        self._budget = (
            int(memory_budget)
            if memory_budget is not None
            else _default_budget(target_device)
        )
        self.n = int(sum(p.numel() for p in chosen))
        self.hvp_count = 0
        self.setup_seconds = 0.0
        self._graph_bytes = 0

        self._group, self._rank, self._world = _resolve_group(process_group)

        # set up lazily by _setup()
        self._ready = False
        self._kept: int = 0  # batches (of this rank) whose gradient graph is kept
        self._g_graph: Tensor | None = None  # Σ_kept n_b ∇ℓ_b, graph-connected
        self._fallback = "double-backward"
        self._n_batches_local = 0
        self._n_total = 0.0  # Σ of the batches' loss weights (examples)
        self._n_examples = 0
        self._examples = 0
        self._loss: float | None = None
        self._grad: Tensor | None = None
        self._hvp_seconds: list[float] = []
        self._func: Any = None

    # ------------------------------------------------------------------ properties

    @property
    def shape(self) -> tuple[int, int]:
        """``(n, n)``."""
        return (self.n, self.n)

    @property
    def dtype(self) -> torch.dtype:
        """Floating dtype of vectors and products."""
        return self._dtype

    @property
    def device(self) -> torch.device:
        """Device of vectors and products."""
        return self._device

    @property
    def method(self) -> str:
        """The HVP method in use (resolves ``"auto"``, which builds the operator).

        ``"graph"``, ``"double-backward"`` or ``"forward-over-reverse"``; or
        ``"graph+<method>"`` when the gradient graph is kept for only some batches.
        """
        self._setup()
        if self._g_graph is not None or self._kept:
            if self._kept == self._n_batches_local:
                return "graph"
            return f"graph+{self._fallback}"
        return self._fallback

    @property
    def graph_bytes(self) -> int:
        """Bytes budgeted for the kept gradient graph (0 if none is kept)."""
        self._setup()
        return self._graph_bytes

    @property
    def num_examples(self) -> int:
        """Examples in the data (over all ranks)."""
        self._setup()
        return self._n_examples

    @property
    def rank(self) -> int:
        """This process's rank in the process group (0 when not distributed)."""
        return self._rank

    @property
    def world_size(self) -> int:
        """Processes the data are sharded over (1 when not distributed)."""
        return self._world

    def __repr__(self) -> str:
        return (
            f"HessianOperator(n={self.n}, dtype={self._dtype}, device={self._device}, "
            f"bn_mode={self.bn_mode!r}, method={self._requested_method!r})"
        )

    # ------------------------------------------------------------------ data

    def _batches(self) -> Iterator[tuple[Any, Tensor | Any, float]]:
        """Yield this rank's batches as ``(inputs, targets, weight)`` on device.

        ``weight`` is the batch's :func:`~sharpkit._data.loss_weight` (its size
        for a plain mean); batches of weight 0 are skipped, and
        ``self._examples`` counts the examples of every batch seen.
        """
        data = self.data
        if isinstance(data, DataSplit):
            n = len(data)
            if self._world > 1:
                lo = n * self._rank // self._world
                hi = n * (self._rank + 1) // self._world
                data = data.take(torch.arange(lo, hi))
            source: Iterable[Any] = data.batches(self.batch_size)
            stride = 1
        else:
            source = data
            stride = self._world
        for i, batch in enumerate(source):
            if stride > 1 and i % stride != self._rank:
                continue
            try:
                x, y = batch[0], batch[1]
            except (TypeError, IndexError, KeyError):
                msg = (
                    f"each batch must be an (inputs, targets) pair, "
                    f"got {type(batch).__name__}"
                )
                raise ConfigError(msg) from None
            x, y = self._convert(x), self._convert(y)
            size = _batch_size_of(x, y)
            self._examples += size
            weight = loss_weight(self.loss_fn, y, size) if size else 0.0
            if weight <= 0:
                continue
            yield x, y, weight

    def _convert(self, t: Any) -> Any:
        if isinstance(t, Tensor):
            if t.is_floating_point():
                return t.to(device=self._device, dtype=self._dtype)
            return t.to(device=self._device)
        if isinstance(t, tuple | list):
            return type(t)(self._convert(u) for u in t)
        return t

    def _forward_loss(self, x: Any, y: Any) -> Tensor:
        out = self.model(*x) if isinstance(x, tuple) else self.model(x)
        loss: Any = self.loss_fn(out, y)
        if not isinstance(loss, Tensor) or loss.numel() != 1:
            msg = "loss_fn must return a scalar tensor (use reduction='mean')"
            raise ConfigError(msg)
        return loss.reshape(())

    def _flat(self, grads: Sequence[Tensor | None]) -> Tensor:
        parts = [
            torch.zeros(p.numel(), dtype=self._dtype, device=self._device)
            if g is None
            else g.reshape(-1)
            for g, p in zip(grads, self.params, strict=True)
        ]
        return torch.cat(parts)

    def _unflat(self, v: Tensor) -> list[Tensor]:
        out, offset = [], 0
        for p in self.params:
            out.append(v[offset : offset + p.numel()].view_as(p))
            offset += p.numel()
        return out

    # ------------------------------------------------------------------ setup

    def _setup(self) -> None:
        """Build the operator once (in full precision unless TF32 is allowed)."""
        if self._ready:
            return
        with full_precision(not self.allow_tf32):
            self._build()

    def _build(self) -> None:
        """Build the kept gradient graph, count examples, compute loss and gradient."""
        start = time.perf_counter()
        method = self._requested_method
        keep_all = method == "graph"
        may_keep = method in ("auto", "graph")
        exclude = {p.untyped_storage().data_ptr() for p in self.params}
        g_graph: Tensor | None = None
        grad_rest = torch.zeros(self.n, dtype=self._dtype, device=self._device)
        loss_sum = torch.zeros((), dtype=torch.float64, device=self._device)
        count = 0.0
        self._examples = 0
        kept = 0
        n_batches = 0
        used = 0
        calib: tuple[Any, Any, float] | None = None
        keeping = may_keep  # graphs are kept for a prefix of the batches
        with analysis_mode(self.model, self.bn_mode, fuse_bn=self.fuse_bn):
            for x, y, size in self._batches():
                n_batches += 1
                if keeping:
                    counter = _SavedBytes(exclude)
                    with torch.autograd.graph.saved_tensors_hooks(
                        counter.pack, counter.unpack
                    ):
                        loss = self._forward_loss(x, y)
                        grads = torch.autograd.grad(
                            loss * size,
                            self.params,
                            create_graph=True,
                            allow_unused=True,
                        )
                    need = int(counter.total * _GRAPH_SAFETY)
                    if keep_all or used + need <= self._budget:
                        used += need
                        flat = self._flat(grads)
                        g_graph = flat if g_graph is None else g_graph + flat
                        kept += 1
                    else:  # does not fit: drop this graph and keep no more
                        keeping = False
                        grad_rest += self._flat(grads).detach()
                        calib = calib or (x, y, size)
                else:
                    loss = self._forward_loss(x, y)
                    grads = torch.autograd.grad(
                        loss * size, self.params, allow_unused=True
                    )
                    grad_rest += self._flat(grads)
                    calib = calib or (x, y, size)
                if n_batches == 1:
                    self._check_second_order(loss)
                lval = loss.detach().to(torch.float64)
                if not torch.isfinite(lval):
                    msg = (
                        f"the loss is {float(lval)} on a batch of the analysis data; "
                        "check the inputs and the model"
                    )
                    raise DataError(msg)
                loss_sum += lval * size
                count += size
        self._set_totals(count)
        loss_sum = self._allreduce(loss_sum.reshape(1))[0]
        self._g_graph = g_graph
        self._kept = kept
        self._n_batches_local = n_batches
        self._graph_bytes = used if kept else 0
        grad = grad_rest.detach().clone()
        if g_graph is not None:
            grad += g_graph.detach()
        self._grad = self._allreduce(grad) / self._n_total
        self._loss = float(loss_sum) / self._n_total
        if method in ("double-backward", "forward-over-reverse"):
            self._fallback = method
        elif calib is not None and kept < n_batches:
            self._fallback = self._calibrate(calib)
        self._ready = True
        self.setup_seconds = time.perf_counter() - start

    def _set_totals(self, weights: float) -> None:
        """Sum the loss weights and examples over ranks; refuse empty data."""
        totals = torch.tensor(
            [float(weights), float(self._examples)],
            dtype=torch.float64,
            device=self._device,
        )
        totals = self._allreduce(totals)
        self._n_total = float(totals[0])
        self._n_examples = round(float(totals[1]))
        if self._n_examples == 0:
            msg = "the analysis data are empty; give at least one example"
            raise DataError(msg)
        if self._n_total <= 0:
            msg = (
                "every target of the analysis data is ignored by the loss "
                "(ignore_index, or zero weights); give data with counted targets"
            )
            raise DataError(msg)

    @staticmethod
    def _check_second_order(loss: Tensor) -> None:
        """Refuse a graph whose second derivative autograd cannot compute."""
        name = _once_differentiable(loss)
        if name:
            msg = (
                f"the custom autograd.Function {name} marks its backward "
                "@once_differentiable, so Hessian-vector products through it "
                "would silently miss terms; give it a differentiable backward "
                "(drop @once_differentiable)"
            )
            raise ConfigError(msg)

    def _calibrate(self, batch: tuple[Any, Any, float]) -> str:
        """Time both per-batch methods on one batch; return the faster."""
        x, y, size = batch
        gen = torch.Generator(device="cpu").manual_seed(0)
        v = torch.randn(self.n, 1, generator=gen, dtype=self._dtype).to(self._device)
        times: dict[str, float] = {}
        with analysis_mode(self.model, self.bn_mode, fuse_bn=self.fuse_bn):
            for method in ("double-backward", "forward-over-reverse"):
                best = math.inf
                try:
                    for _ in range(2):  # the first call pays one-off tracing costs
                        t0 = time.perf_counter()
                        self._batch_hvp(method, x, y, size, v)
                        if self._device.type == "cuda":
                            torch.cuda.synchronize(self._device)
                        best = min(best, time.perf_counter() - t0)
                except ConfigError:
                    if method == "double-backward":
                        raise
                    # forward-over-reverse does not support this model or loss
                    # (e.g. huber_loss has no forward derivative): not a choice
                    continue
                times[method] = best
        return min(times, key=times.__getitem__)

    # ------------------------------------------------------------------ products

    def _batch_hvp(self, method: str, x: Any, y: Any, size: float, v: Tensor) -> Tensor:
        """Return ``size * H_b @ v`` for one batch, ``v`` of shape (n, k).

        Raises:
            ConfigError: ``forward-over-reverse`` does not support an operation
                of the model or loss.
        """
        if method == "double-backward":
            loss = self._forward_loss(x, y)
            grads = torch.autograd.grad(
                loss * size, self.params, create_graph=True, allow_unused=True
            )
            flat = self._flat(grads)
            return self._backward_columns(flat, v, retain_last=False)
        try:
            return self._func_hvp(x, y, size, v)
        except (RuntimeError, NotImplementedError) as exc:
            first = first_line(exc)
            msg = (
                f"the forward-over-reverse product failed on this model and loss "
                f"({type(exc).__name__}: {first[:200]}); use method='double-backward' "
                "or 'auto'"
            )
            raise ConfigError(msg) from exc

    def _fallback_hvp(self, x: Any, y: Any, size: float, v: Tensor) -> Tensor:
        """The per-batch product for a batch outside the kept graph.

        With ``method="auto"``, a per-batch method that fails on a batch is
        replaced by double backward for the rest of the operator's life.
        """
        try:
            return self._batch_hvp(self._fallback, x, y, size, v)
        except ConfigError:
            if self._requested_method != "auto" or self._fallback == "double-backward":
                raise
            self._fallback = "double-backward"
            return self._batch_hvp(self._fallback, x, y, size, v)

    def _backward_columns(self, g: Tensor, v: Tensor, *, retain_last: bool) -> Tensor:
        """Return ``∂(g·v_j)/∂θ`` for each column ``v_j`` of ``v``."""
        k = v.shape[1]
        if not g.requires_grad:  # the gradient does not depend on the parameters
            return torch.zeros(self.n, k, dtype=self._dtype, device=self._device)
        if k == 1:
            cols = torch.autograd.grad(
                g,
                self.params,
                grad_outputs=v[:, 0],
                retain_graph=retain_last,
                allow_unused=True,
            )
            return self._flat(cols).unsqueeze(1)
        out = torch.empty(self.n, k, dtype=self._dtype, device=self._device)
        for j in range(k):
            cols = torch.autograd.grad(
                g,
                self.params,
                grad_outputs=v[:, j],
                retain_graph=retain_last or j < k - 1,
                allow_unused=True,
            )
            out[:, j] = self._flat(cols)
        return out

    def _func_setup(self) -> Any:
        if self._func is not None:
            return self._func
        from torch.func import functional_call, grad, jvp, vmap

        if any(n is None for n in self._param_names):
            msg = (
                "method 'forward-over-reverse' needs params= to be parameters of "
                "the model; use method='double-backward'"
            )
            raise ConfigError(msg)
        names = [n for n in self._param_names if n is not None]
        chosen = set(names)
        model = self.model
        # Buffers are restored in place by analysis_mode, so the same tensor
        # objects stay valid for every call.
        fixed: dict[str, Tensor] = {
            k: t.detach() for k, t in model.named_parameters() if k not in chosen
        }
        fixed.update(dict(model.named_buffers()))

        def loss_of(p: tuple[Tensor, ...], x: Any, y: Any) -> Tensor:
            state = dict(fixed)
            state.update(zip(names, p, strict=True))
            args = x if isinstance(x, tuple) else (x,)
            out = functional_call(model, state, args)
            return self.loss_fn(out, y).reshape(())

        def hvp(
            primals: tuple[Tensor, ...],
            tangents: tuple[Tensor, ...],
            x: Any,
            y: Any,
        ) -> tuple[Tensor, ...]:
            g = grad(loss_of)
            if isinstance(y, Tensor) and y.is_floating_point():
                # Give floating targets an explicit zero tangent: left implicit,
                # it is a ZeroTensor, which the forward derivative of
                # mse_loss_backward writes to ("ZeroTensors are immutable").
                return jvp(  # type: ignore[no-any-return]
                    lambda p, t: g(p, x, t),
                    (primals, y),
                    (tangents, torch.zeros_like(y)),
                )[1]
            return jvp(lambda p: g(p, x, y), (primals,), (tangents,))[1]  # type: ignore[no-any-return]

        if self.compile:
            hvp = torch.compile(hvp)
        self._func = (hvp, vmap)
        return self._func

    def _func_hvp(self, x: Any, y: Any, size: float, v: Tensor) -> Tensor:
        hvp, vmap = self._func_setup()
        primals = tuple(p.detach() for p in self.params)
        k = v.shape[1]
        out = torch.empty(self.n, k, dtype=self._dtype, device=self._device)
        if k == 1 or self.compile:  # compiled: one vector at a time
            for j in range(k):
                res = hvp(primals, tuple(self._unflat(v[:, j])), x, y)
                out[:, j] = self._flat(res)
        else:
            for lo in range(0, k, _VMAP_CHUNK):
                block = v[:, lo : lo + _VMAP_CHUNK].T.contiguous()  # (c, n)
                tangents = tuple(
                    t.reshape(block.shape[0], *p.shape)
                    for t, p in zip(
                        torch.split(block, [p.numel() for p in self.params], dim=1),
                        self.params,
                        strict=True,
                    )
                )
                res = vmap(lambda t: hvp(primals, t, x, y))(tangents)
                flat = torch.cat([r.reshape(r.shape[0], -1) for r in res], dim=1)
                out[:, lo : lo + block.shape[0]] = flat.T
        return out * size

    def matvec(self, v: Tensor) -> Tensor:
        """Return ``H @ v`` for a vector ``(n,)`` or a block ``(n, k)``.

        Raises:
            ConfigError: ``v`` has the wrong shape.
        """
        given: Any = v
        if (
            not isinstance(given, Tensor)
            or v.dim() not in (1, 2)
            or v.shape[0] != self.n
        ):
            shape = tuple(v.shape) if isinstance(given, Tensor) else type(v).__name__
            msg = f"expected a vector ({self.n},) or a block ({self.n}, k), got {shape}"
            raise ConfigError(msg)
        self._setup()
        with full_precision(not self.allow_tf32):
            return self._product(v)

    def _product(self, v: Tensor) -> Tensor:
        vector = v.dim() == 1
        block = v.reshape(self.n, -1).to(device=self._device, dtype=self._dtype)
        k = block.shape[1]
        start = time.perf_counter()
        out: Tensor | None = None  # every part is a fresh tensor: add in place
        if self._g_graph is not None:
            out = self._backward_columns(self._g_graph, block, retain_last=True)
        if self._kept < self._n_batches_local:
            with analysis_mode(self.model, self.bn_mode, fuse_bn=self.fuse_bn):
                for i, (x, y, size) in enumerate(self._batches()):
                    if i < self._kept:
                        continue
                    part = self._fallback_hvp(x, y, size, block)
                    out = part if out is None else out.add_(part)
        if out is None:  # a rank without data
            out = torch.zeros(self.n, k, dtype=self._dtype, device=self._device)
        out = self._allreduce(out.detach()).div_(self._n_total)
        if self._device.type == "cuda":
            torch.cuda.synchronize(self._device)
        self._hvp_seconds.append((time.perf_counter() - start) / k)
        self.hvp_count += k
        return out[:, 0] if vector else out

    __matmul__ = matvec

    def __call__(self, v: Tensor) -> Tensor:
        """Alias of :meth:`matvec`, so the operator can be passed as a matvec."""
        return self.matvec(v)

    def gradient(self) -> Tensor:
        """Return the gradient of the mean loss, a flat ``(n,)`` vector."""
        self._setup()
        assert self._grad is not None
        return self._grad.clone()

    def loss(self) -> float:
        """Return the mean loss over the data."""
        self._setup()
        assert self._loss is not None
        return self._loss

    @property
    def mean_hvp_seconds(self) -> float | None:
        """Mean seconds per product so far (``None`` before the first product).

        Costs nothing; the first product of a process includes one-off costs
        (kernel selection, first touch of memory), so early means run high.
        """
        if not self._hvp_seconds:
            return None
        return float(sum(self._hvp_seconds) / len(self._hvp_seconds))

    def estimate_hvp_seconds(self) -> float:
        """Return the seconds one Hessian-vector product takes.

        The mean over the products done so far; if there were none, one product
        with a random vector is timed (and counted in :attr:`hvp_count`). The
        first call also pays the set-up (see :attr:`setup_seconds`). To avoid
        that extra product, read :attr:`mean_hvp_seconds` once work has started.
        """
        self._setup()
        if not self._hvp_seconds:
            gen = torch.Generator(device="cpu").manual_seed(0)
            v = torch.randn(self.n, generator=gen, dtype=self._dtype)
            self.matvec(v.to(self._device))
        mean = self.mean_hvp_seconds
        assert mean is not None
        return mean

    def to_dense(self) -> Tensor:
        """Return the Hessian as a dense symmetric ``(n, n)`` matrix (``n`` products).

        Raises:
            ConfigError: ``n`` exceeds :data:`MAX_DENSE`.
        """
        if self.n > MAX_DENSE:
            msg = (
                f"to_dense() needs {self.n} Hessian-vector products and an "
                f"{self.n}x{self.n} matrix; it is for models of at most "
                f"{MAX_DENSE} parameters (use lanczos instead)"
            )
            raise ConfigError(msg)
        eye = torch.eye(self.n, dtype=self._dtype, device=self._device)
        cols = [self.matvec(eye[:, lo : lo + 64]) for lo in range(0, self.n, 64)]
        dense = torch.cat(cols, dim=1)
        return (dense + dense.T) / 2

    # ------------------------------------------------------------------ distributed

    def _allreduce(self, t: Tensor) -> Tensor:
        if self._world == 1:
            return t
        import torch.distributed as dist

        try:
            dist.all_reduce(t, op=dist.ReduceOp.SUM, group=self._group)
        except RuntimeError as exc:  # a peer closed its connection, or a timeout
            first = first_line(exc, limit=200)
            msg = (
                "another process of the group stopped or timed out during an "
                f"all-reduce ({type(exc).__name__}: {first}); its own error says why"
            )
            raise DistributedError(msg) from exc
        return t


def _resolve_group(
    process_group: dist_t.ProcessGroup | None,
) -> tuple[Any, int, int]:
    """Return ``(group, rank, world_size)``; world size 1 when not distributed."""
    import torch.distributed as dist

    if not dist.is_available():
        if process_group is not None:
            msg = "process_group= given but torch.distributed is not available"
            raise ConfigError(msg)
        return None, 0, 1
    if process_group is None:
        if not dist.is_initialized():
            return None, 0, 1
        world = dist.get_world_size()
        return None, (dist.get_rank() if world > 1 else 0), world
    world = dist.get_world_size(process_group)
    return process_group, dist.get_rank(process_group), world
