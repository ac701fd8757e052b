"""A plugin cannot change what the plugins after it compute on.

The model's parameters and buffers are guarded where plugins are called (their
bits and identities compared after each call). Everything else a metric could
change for the next one is guarded here: the analysis set and the training
data (a digest of their tensors, and which objects they are), the loss (which
object it is, and its state when it is a module), the model's hooks (module
and global forward/backward hooks, a ``forward`` replaced on an instance), its
``requires_grad`` flags, its train/eval flags and its submodules.
:class:`ContextGuard` takes these before a call; :meth:`ContextGuard.restore`
compares them after it, puts back whatever changed and says what it was, so the
caller refuses that plugin's result and the next runs on the context as it was.

:func:`check_result` refuses numbers a result may not hold (a NaN, infinite or
negative standard error or bound, a ``converged`` that is not a boolean, a
negative or fractional ``hvps``), instead of storing them as if measured.
"""

from __future__ import annotations

import math
import numbers
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from sharpkit.api.fingerprint import data_digest
from sharpkit.errors import PluginContractError

if TYPE_CHECKING:
    import torch

    from sharpkit._data import DataSplit
    from sharpkit.interfaces import AnalysisContext, MetricResult

__all__ = ["ContextGuard", "changed_context", "check_result"]

_HOOK_TABLES = (
    "_forward_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs",
    "_backward_hooks",
    "_backward_pre_hooks",
)
_GLOBAL_HOOKS = (
    "_global_forward_hooks",
    "_global_forward_pre_hooks",
    "_global_backward_hooks",
    "_global_backward_pre_hooks",
    "_global_forward_hooks_always_called",
    "_global_forward_hooks_with_kwargs",
)
# Training data beyond this size is compared by its tensors' identities and
# version counters (every in-place operation bumps them), not hashed each time.
_HASH_LIMIT = 64 << 20


def _nbytes(split: DataSplit) -> int:
    return sum(t.numel() * t.element_size() for t in (split.inputs, split.targets))


class _SplitState:
    """One data split: the object, its tensors, their versions and digest."""

    def __init__(self, split: DataSplit | None) -> None:
        self.split = split
        self.tensors: tuple[Any, ...] = ()
        self.versions: tuple[int, ...] = ()
        self.digest: str | None = None
        self.copy: tuple[Any, Any] | None = None
        if split is None:
            return
        self.tensors = (split.inputs, split.targets)
        self.versions = tuple(t._version for t in self.tensors)
        if _nbytes(split) <= _HASH_LIMIT:
            self.digest = data_digest(split)
            self.copy = (split.inputs.clone(), split.targets.clone())

    def changed(self, now: DataSplit | None) -> bool:
        if now is not self.split:
            return True
        if now is None:
            return False
        tensors = (now.inputs, now.targets)
        if any(a is not b for a, b in zip(tensors, self.tensors, strict=True)):
            return True
        if tuple(t._version for t in tensors) != self.versions:
            return True
        return self.digest is not None and data_digest(now) != self.digest

    def restore(self) -> DataSplit | None:
        split = self.split
        if split is None:
            return None
        if self.copy is not None:  # the original values, in the original tensors
            import torch

            with torch.no_grad():
                for tensor, saved in zip(self.tensors, self.copy, strict=True):
                    if tensor.shape == saved.shape and tensor.dtype == saved.dtype:
                        tensor.copy_(saved)
        object.__setattr__(split, "inputs", self.tensors[0])
        object.__setattr__(split, "targets", self.tensors[1])
        self.versions = tuple(t._version for t in self.tensors)
        return split


def _hooks(model: torch.nn.Module) -> dict[tuple[str, str], OrderedDict[Any, Any]]:
    """Every hook table of every module, and the global ones, as copies."""
    import torch.nn.modules.module as module_mod

    out: dict[tuple[str, str], OrderedDict[Any, Any]] = {}
    for name, m in model.named_modules():
        for table in _HOOK_TABLES:
            hooks = getattr(m, table, None)
            if isinstance(hooks, dict):
                out[(name, table)] = OrderedDict(hooks)
    for table in _GLOBAL_HOOKS:
        hooks = getattr(module_mod, table, None)
        if isinstance(hooks, dict):
            out[("<global>", table)] = OrderedDict(hooks)
    return out


def _tensor_hooks(model: torch.nn.Module) -> dict[str, Any]:
    return {
        n: OrderedDict(p._backward_hooks or {}) for n, p in model.named_parameters()
    }


class ContextGuard:
    """What a plugin call could change in ``ctx`` beyond parameters and buffers.

    Args:
        ctx: The analysis context the plugin is given.
    """

    def __init__(self, ctx: AnalysisContext) -> None:
        model = ctx.model
        self._ctx = ctx
        self._data = _SplitState(ctx.data)
        self._train = _SplitState(ctx.train_data)
        self._loss = ctx.loss_fn
        self._loss_state = _module_state(ctx.loss_fn)
        self._modules = dict(model.named_modules())
        self._training = {n: m.training for n, m in self._modules.items()}
        self._forwards = {
            n: m.__dict__.get("forward") for n, m in self._modules.items()
        }
        self._grad = {n: p.requires_grad for n, p in model.named_parameters()}
        self._hooks = _hooks(model)
        self._tensor_hooks = _tensor_hooks(model)

    def changes(self) -> list[str]:
        """What changed since the guard was made (empty: nothing)."""
        ctx, model = self._ctx, self._ctx.model
        out = []
        if self._data.changed(ctx.data):
            out.append("the analysis data")
        if self._train.changed(ctx.train_data):
            out.append("the training data")
        if ctx.loss_fn is not self._loss or _module_state(ctx.loss_fn) != (
            self._loss_state
        ):
            out.append("the loss")
        modules = dict(model.named_modules())
        if modules.keys() != self._modules.keys() or any(
            modules[n] is not m for n, m in self._modules.items()
        ):
            out.append("the model's submodules")
        elif any(m.training != self._training[n] for n, m in modules.items()):
            out.append("train/eval mode")
        elif any(
            m.__dict__.get("forward") is not self._forwards[n]
            for n, m in modules.items()
        ):
            out.append("a module's forward")
        grads = {n: p.requires_grad for n, p in model.named_parameters()}
        if grads != self._grad:
            out.append("requires_grad")
        if _hooks(model) != self._hooks or _tensor_hooks(model) != self._tensor_hooks:
            out.append("hooks")
        return out

    def restore(self) -> list[str]:
        """Put back whatever changed; return what it was (empty: nothing)."""
        import torch.nn.modules.module as module_mod

        changed = self.changes()
        if not changed:
            return changed
        ctx = self._ctx
        ctx.data = self._data.restore()  # type: ignore[assignment]
        ctx.train_data = self._train.restore()
        ctx.loss_fn = self._loss
        _restore_module_state(self._loss, self._loss_state)
        for n, m in self._modules.items():
            m.training = self._training[n]
            if self._forwards[n] is None:
                m.__dict__.pop("forward", None)
            else:
                m.__dict__["forward"] = self._forwards[n]
        for n, p in ctx.model.named_parameters():
            if n in self._grad:
                p.requires_grad_(self._grad[n])
        for (name, table), saved in self._hooks.items():
            owner = module_mod if name == "<global>" else self._modules.get(name)
            hooks = getattr(owner, table, None)
            if isinstance(hooks, dict):
                hooks.clear()
                hooks.update(saved)
        for n, p in ctx.model.named_parameters():
            if n in self._tensor_hooks and p._backward_hooks is not None:
                p._backward_hooks.clear()
                p._backward_hooks.update(self._tensor_hooks[n])
        ctx.cache.clear()  # computed on the changed context
        ctx.eigenvectors = None
        ctx._hessian = None
        return changed


def _module_state(obj: object) -> list[tuple[str, bytes]] | None:
    import torch

    if not isinstance(obj, torch.nn.Module):
        return None
    flat = {
        k: v.detach().cpu().contiguous().reshape(-1)
        for k, v in obj.state_dict().items()
        if isinstance(v, torch.Tensor)
    }
    return [(k, v.view(torch.uint8).numpy().tobytes()) for k, v in flat.items()]


def _restore_module_state(obj: object, state: list[tuple[str, bytes]] | None) -> None:
    import numpy as np
    import torch

    if state is None or not isinstance(obj, torch.nn.Module):
        return
    own = obj.state_dict()
    with torch.no_grad():
        for k, raw in state:
            t = own.get(k)
            if isinstance(t, torch.Tensor):
                back = torch.from_numpy(np.frombuffer(raw, dtype=np.uint8).copy())
                t.copy_(back.view(t.dtype).reshape(t.shape))


def changed_context(name: str, what: list[str]) -> PluginContractError:
    """The error of a metric that changed ``what`` in the context it was given."""
    msg = (
        f"metric {name!r} changed {', '.join(what)} of the analysis context; its "
        "result was discarded and the context restored for the metrics after it "
        "(a metric must leave data, loss, hooks and flags as it found them)"
    )
    return PluginContractError(msg)


def check_result(name: str, result: MetricResult) -> None:
    """Refuse numbers a metric result may not hold.

    Raises:
        PluginContractError: A NaN, infinite or negative ``stderr`` or
            ``bound``; a ``converged`` that is not ``True``, ``False`` or
            ``None``; an ``hvps`` that is not a non-negative integer.
    """
    for field in ("stderr", "bound"):
        v: object = getattr(result, field)
        if v is None:
            continue
        real = isinstance(v, numbers.Real) and not isinstance(v, bool)
        if not (real and math.isfinite(float(v)) and float(v) >= 0):  # type: ignore[arg-type]
            _bad(name, field, v, "a finite number >= 0 (or None)")
    converged: object = result.converged  # a plugin's: any type at all
    if converged is not None and not isinstance(converged, bool):
        _bad(name, "converged", converged, "True, False or None")
    hvps: object = result.hvps
    if hvps is not None and (
        isinstance(hvps, bool)
        or not isinstance(hvps, numbers.Integral)
        or int(hvps) < 0
    ):
        _bad(name, "hvps", hvps, "a whole number >= 0 (or None)")


def _bad(name: str, field: str, value: object, want: str) -> None:
    shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
    msg = (
        f"metric {name!r} returned {field} {shown} ({type(value).__name__}); a "
        f"MetricResult's {field} must be {want}: fix the plugin"
    )
    raise PluginContractError(msg)
