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
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from sharpkit._data import DataSplit
from sharpkit.curvature._batching import (
    SavedBytes,
    allreduce,
    default_budget,
    iter_batches,
    resolve_group,
)
from sharpkit.curvature._hvp import (
    FuncProduct,
    ParamSpace,
    backward_columns,
    once_differentiable,
)
from sharpkit.curvature._modes import BN_MODES, analysis_mode, full_precision
from sharpkit.errors import ConfigError, DataError, first_line

__all__ = ["HVP_METHODS", "HessianOperator", "analysis_mode", "full_precision"]

HVP_METHODS = ("auto", "graph", "double-backward", "forward-over-reverse")
"""The values accepted by ``HessianOperator(method=...)``."""

MAX_DENSE = 5000
"""``to_dense`` refuses operators larger than this (an n x n float64 matrix)."""

_GRAPH_SAFETY = 2.0
"""The saved tensors of a gradient graph under-count the peak memory of a
backward through it (temporaries); budget this many times their size."""


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
        block_products: Multiply a block ``(n, k)`` of vectors in one
            backward pass per batch (``is_grads_batched``: each operation runs
            once on ``k`` stacked vectors) instead of ``k`` passes; exact
            either way. On the benchmark BN-MLP (2 loaded CPU cores) a block
            of 2 cost 0.92x its two single products and a block of 8 between
            0.53x and 0.95x in two runs (docs/benchmarks.md); GPUs, where
            small products are launch-bound, should gain more. A model with an
            operation that cannot batch its backward falls back to one pass
            per vector. Band Lanczos (``block=2``) uses it (see
            :class:`~sharpkit.curvature.lanczos.BandLanczosProcess`).

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
        block_products: bool = True,
    ) -> None:
        _check_options(bn_mode, method, batch_size, data)
        model, chosen, param_names, target_dtype, target_device = _resolve_params(
            model, params, dtype, device
        )
        self.model = model
        self.loss_fn = loss_fn
        self.data = data
        self.batch_size = int(batch_size)
        self.bn_mode = bn_mode
        self.fuse_bn = bool(fuse_bn)
        self.compile = bool(compile)
        self.allow_tf32 = bool(allow_tf32)
        self.block_products = bool(block_products)
        """Whether a block of vectors goes through one pass (see the argument);
        turns ``False`` if an operation of the model cannot batch its backward."""
        self.params: list[Tensor] = list(chosen)
        self._param_names = param_names
        self._dtype = target_dtype
        self._device = target_device
        self._requested_method = method
        self._budget = (
            int(memory_budget)
            if memory_budget is not None
            else default_budget(target_device)
        )
        self._space = ParamSpace(chosen, target_dtype, target_device)
        self._func = FuncProduct(
            model, loss_fn, self._space, param_names, compile=self.compile
        )
        self.n = self._space.n
        self.hvp_count = 0
        self.setup_seconds = 0.0
        self._graph_bytes = 0

        self._group, self._rank, self._world = resolve_group(process_group)

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

        See :func:`~sharpkit.curvature._batching.iter_batches`;
        ``self._examples`` counts the examples of every batch seen.
        """

        def count(size: int) -> None:
            self._examples += size

        return iter_batches(
            self.data,
            self.batch_size,
            rank=self._rank,
            world=self._world,
            loss_fn=self.loss_fn,
            device=self._device,
            dtype=self._dtype,
            count=count,
        )

    def _forward_loss(self, x: Any, y: Any) -> Tensor:
        out = self.model(*x) if isinstance(x, tuple) else self.model(x)
        loss: Any = self.loss_fn(out, y)
        if not isinstance(loss, Tensor) or loss.numel() != 1:
            msg = "loss_fn must return a scalar tensor (use reduction='mean')"
            raise ConfigError(msg)
        return loss.reshape(())

    def _flat(self, grads: Sequence[Tensor | None]) -> Tensor:
        return self._space.flat(grads)

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
                    loss, grads, need = self._graph_gradient(x, y, size, exclude)
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
                loss_sum += _finite(loss) * size
                count += size
        self._set_totals(count)
        self._g_graph = g_graph
        self._kept = kept
        self._n_batches_local = n_batches
        self._graph_bytes = used if kept else 0
        self._set_loss_and_gradient(loss_sum, grad_rest)
        if method in ("double-backward", "forward-over-reverse"):
            self._fallback = method
        elif calib is not None and kept < n_batches:
            self._fallback = self._calibrate(calib)
        self._ready = True
        self.setup_seconds = time.perf_counter() - start

    def _graph_gradient(
        self, x: Any, y: Any, size: float, exclude: set[int]
    ) -> tuple[Tensor, tuple[Tensor | None, ...], int]:
        """Return the batch's loss, weighted gradient (graph-connected), and bytes.

        The bytes are those budgeted to keep the gradient graph.
        """
        counter = SavedBytes(exclude)
        with torch.autograd.graph.saved_tensors_hooks(counter.pack, counter.unpack):
            loss = self._forward_loss(x, y)
            grads = torch.autograd.grad(
                loss * size, self.params, create_graph=True, allow_unused=True
            )
        return loss, grads, int(counter.total * _GRAPH_SAFETY)

    def _set_loss_and_gradient(self, loss_sum: Tensor, grad_rest: Tensor) -> None:
        """Sum the weighted loss and gradient over ranks and divide by the weights."""
        loss_sum = self._allreduce(loss_sum.reshape(1))[0]
        grad = grad_rest.detach().clone()
        if self._g_graph is not None:
            grad += self._g_graph.detach()
        self._grad = self._allreduce(grad) / self._n_total
        self._loss = float(loss_sum) / self._n_total

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
        name = once_differentiable(loss)
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
            if self.block_products and v.shape[1] > 1:
                try:
                    return backward_columns(
                        self._space, flat, v, retain_last=False, batched=True
                    )
                except RuntimeError:  # no batched backward: the graph is gone
                    self.block_products = False
                    return self._batch_hvp(method, x, y, size, v)
            return backward_columns(self._space, flat, v, retain_last=False)
        try:
            return self._func(x, y, size, v)
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

    def _graph_columns(self, g: Tensor, v: Tensor) -> Tensor:
        """Products through the kept graph: a block in one backward pass if it can."""
        if self.block_products and v.shape[1] > 1:
            try:
                return backward_columns(
                    self._space, g, v, retain_last=True, batched=True
                )
            except RuntimeError:  # an operation without a batched backward
                self.block_products = False
        return backward_columns(self._space, g, v, retain_last=True)

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
            out = self._graph_columns(self._g_graph, block)
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
        return allreduce(t, self._group, self._world)


def _finite(loss: Tensor) -> Tensor:
    """The batch loss in float64; refuse a non-finite one."""
    lval = loss.detach().to(torch.float64)
    if not torch.isfinite(lval):
        msg = (
            f"the loss is {float(lval)} on a batch of the analysis data; "
            "check the inputs and the model"
        )
        raise DataError(msg)
    return lval


def _check_options(bn_mode: str, method: str, batch_size: int, data: Any) -> None:
    """Refuse a bad option value of :class:`HessianOperator` with one line."""
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


def _resolve_params(
    model: nn.Module,
    params: Sequence[Tensor] | None,
    dtype: torch.dtype | None,
    device: torch.device | str | None,
) -> tuple[nn.Module, list[Tensor], list[str | None], torch.dtype, torch.device]:
    """Return ``(model, params, their names, dtype, device)`` to compute with.

    The model is deep-copied and converted when ``dtype``/``device`` differ
    from the parameters'; the user's model is never modified.
    """
    names = {id(p): name for name, p in model.named_parameters()}
    chosen: list[Tensor] = (
        [p for p in model.parameters() if p.requires_grad]
        if params is None
        else list(params)
    )
    if not chosen:
        msg = "no parameters to differentiate: none requires grad, params= is empty"
        raise ConfigError(msg)
    dtypes = {p.dtype for p in chosen}
    if dtype is None and len(dtypes) > 1:
        msg = f"parameters have mixed dtypes {sorted(map(str, dtypes))}; pass dtype="
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
            msg = "params= must be parameters of model when dtype/device converts it"
            raise ConfigError(msg)
        model = copy.deepcopy(model).to(device=target_device, dtype=target_dtype)
        lookup = dict(model.named_parameters())
        chosen = [lookup[n] for n in param_names if n is not None]
    return model, chosen, param_names, target_dtype, target_device
