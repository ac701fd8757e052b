"""The one executor every plugin call goes through: metric, probe and trainer.

:func:`~sharpkit.measure`, :func:`~sharpkit.probe`, :func:`~sharpkit.train`,
:func:`~sharpkit.interpolate` and :class:`~sharpkit.Tracker` all run their
plugins the same way, in these steps:

1. :meth:`Executor.call`: look the component up (unknown names fail with "did
   you mean") and parse its options, once;
2. :meth:`Executor.key`: the reuse key of everything that can change the
   result (:func:`~sharpkit.api.provenance.result_key`);
3. :meth:`Executor.stored`: the result the store already holds under that
   key, unless the caller forces a recomputation;
4. :meth:`Executor.create`: call the spec's factory with the parsed options
   (not parsed again) and check it returned the component the kind needs;
5. :meth:`Executor.run`: run it under :meth:`Registry.guard` (its own
   exceptions become one-line :class:`~sharpkit.PluginRunError`), with the
   model's parameters and buffers guarded when there is a model to guard, and
   check the result's type;
6. :meth:`Executor.write`: write the new results to the store as one run.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from sharpkit._tensors import same_bits
from sharpkit.api.isolation import ContextGuard, changed_context
from sharpkit.api.provenance import provider_of, result_key, run_attrs
from sharpkit.errors import PluginContractError
from sharpkit.interfaces import (
    Metric,
    MetricResult,
    Probe,
    ProbeResult,
    Trainer,
    TrainResult,
)

if TYPE_CHECKING:
    from sharpkit.interfaces import AnalysisContext
    from sharpkit.registry import Registry
    from sharpkit.store import ResultStore

__all__ = ["Executor", "ModelGuard", "PluginCall"]

CallKind = Literal["metric", "probe", "trainer"]

# What each kind's factory must return (and the method that shows it), and
# what that method must return.
_COMPONENT: dict[str, tuple[type, str]] = {
    "metric": (Metric, "compute"),
    "probe": (Probe, "run"),
    "trainer": (Trainer, "fit"),
}
_RESULT: dict[str, type] = {
    "metric": MetricResult,
    "probe": ProbeResult,
    "trainer": TrainResult,
}


@dataclass(frozen=True, kw_only=True)
class PluginCall:
    """One component to run: its spec and its options, parsed once.

    Attributes:
        kind: ``"metric"``, ``"probe"`` or ``"trainer"``.
        name: The name the caller gave (``prefix:variant`` kept).
        spec: The registered spec.
        options: The options, validated and converted by the spec.
    """

    kind: CallKind
    name: str
    spec: Any
    options: Mapping[str, Any]


class Executor:
    """Runs plugin calls for one job against one registry and (maybe) one store.

    Args:
        registry: Where the components are looked up.
        store: The results store to reuse from and write to (``None``: none).
        force: Never reuse a stored result (results are still written).
    """

    def __init__(
        self,
        registry: Registry,
        store: ResultStore | None = None,
        *,
        force: bool = False,
    ) -> None:
        self.registry = registry
        self.store = store
        self.force = force

    def call(
        self, kind: CallKind, name: str, options: Mapping[str, Any] | None = None
    ) -> PluginCall:
        """Look ``name`` up and parse its options (the only place they are parsed).

        Raises:
            UnknownNameError: No such component.
            ConfigError: An unknown option or a value of the wrong type.
        """
        spec = self.registry.get(kind, name)
        parsed = self.registry.parse_options(spec, options or {})
        return PluginCall(kind=kind, name=name, spec=spec, options=parsed)

    def key(self, call: PluginCall, **settings: Any) -> str:
        """The reuse key of ``call`` under ``settings``, options and provider in."""
        return result_key(
            call.kind,
            call.name,
            options=call.options,
            provider=provider_of(self.registry, call.kind, call.name),
            **settings,
        )

    def stored(self, call: PluginCall, key: str) -> Any:
        """The result the store holds under ``key`` (``None``: none, or forced)."""
        if self.store is None or self.force:
            return None
        if call.kind == "metric":
            return self.store.find_metric(key)
        if call.kind == "probe":
            return self.store.find_probe(key)
        return None  # training is never reused

    def create(self, call: PluginCall, **context: Any) -> Any:
        """Call the factory with the parsed options; check what it returned.

        Raises:
            PluginContractError: The factory returned something without the
                kind's method (``compute``, ``run``, ``fit``).
            PluginRunError: The factory raised.
        """
        made = self.registry.instantiate(call.spec, call.name, call.options, **context)
        protocol, method = _COMPONENT[call.kind]
        if not isinstance(made, protocol):
            got = type(made).__name__
            msg = f"{call.kind} {call.name!r} factory returned {got} without {method}()"
            raise PluginContractError(msg)
        return made

    def run(
        self,
        call: PluginCall,
        action: str,
        fn: Callable[..., Any],
        /,
        *args: Any,
        guard: AnalysisContext | None = None,
        **kwargs: Any,
    ) -> Any:
        """Run plugin code ``fn(*args, **kwargs)``; check its result and the model.

        Args:
            call: The component that runs.
            action: What it is doing, for messages (``"computing"``).
            fn: The plugin's method.
            *args: Its positional arguments.
            guard: A context whose model must come back as it was: its
                parameters and buffers are saved first and restored after (see
                :class:`ModelGuard`).
            **kwargs: Its keyword arguments.

        Raises:
            PluginRunError: The plugin raised something other than a
                :class:`~sharpkit.SharpkitError`.
            PluginContractError: It returned the wrong type, or changed the
                guarded model (which was restored; the result is dropped).
        """
        saved = ModelGuard(guard) if guard is not None else None
        isolated = ContextGuard(guard) if guard is not None else None
        try:
            with self.registry.guard(call.kind, call.name, action):
                result = fn(*args, **kwargs)
        finally:
            changed = saved.restore() if saved is not None else []
            other = isolated.restore() if isolated is not None else []
        if changed:
            raise changed_model(call, changed)
        if other:
            raise changed_context(call.name, other)
        expected = _RESULT[call.kind]
        if not isinstance(result, expected):
            got = type(result).__name__
            want = expected.__name__
            msg = f"{call.kind} {call.name!r} returned {got}, expected {want}"
            raise PluginContractError(msg)
        return result

    def write(self, kind: str, attrs: Mapping[str, Any], **payload: Any) -> str | None:
        """Write one run of ``kind`` (provenance added); ``None`` without a store."""
        if self.store is None:
            return None
        return self.store.write_run(kind=kind, attrs=run_attrs(kind, attrs), **payload)


def changed_model(call: PluginCall, changed: Sequence[str]) -> PluginContractError:
    """The error for a component that changed the model it was given."""
    what = ", ".join(repr(c) for c in changed[:2])
    more = f" and {len(changed) - 2} more" if len(changed) > 2 else ""
    msg = (
        f"{call.kind} {call.name!r} changed the model in place ({what}{more}); its "
        "result was discarded and the model restored for the metrics after it (a "
        f"{call.kind} must leave parameters and buffers as it found them: work on "
        "a copy)"
    )
    return PluginContractError(msg)


class ModelGuard:
    """The model's parameters and buffers before one plugin call, restored after it.

    Every tensor is kept as the object it was and as a copy of its bits, so a
    plugin that changed values in place, replaced a tensor, or converted the
    model (``.double()``) is found and undone exactly. The context's shared
    state (cache, eigenvectors, the Hessian operator and its Krylov process) is
    reset with it, since
    whatever the plugin left there was computed on the changed model.
    """

    def __init__(self, ctx: AnalysisContext) -> None:
        self._ctx = ctx
        self._saved = [
            (module, table, attr, tensor, tensor.detach().clone(), f"{prefix}{attr}")
            for prefix, module in (
                (f"{n}." if n else "", m) for n, m in ctx.model.named_modules()
            )
            for table in ("_parameters", "_buffers")
            for attr, tensor in getattr(module, table).items()
            if tensor is not None
        ]
        self._cache = dict(ctx.cache)
        self._eigenvectors = ctx.eigenvectors

    def restore(self) -> list[str]:
        """Undo every change; return the names of the tensors that had changed."""
        import torch

        changed = []
        with torch.no_grad():
            for module, table, attr, tensor, saved, qualname in self._saved:
                now = getattr(module, table).get(attr)
                if now is tensor and same_bits(tensor, saved):
                    continue
                changed.append(qualname)
                getattr(module, table)[attr] = tensor
                if (tensor.dtype, tensor.shape, tensor.device) == (
                    saved.dtype,
                    saved.shape,
                    saved.device,
                ):
                    tensor.copy_(saved)
                else:
                    tensor.data = saved.clone()
        if changed:
            self._ctx.cache.clear()
            self._ctx.cache.update(self._cache)
            self._ctx.eigenvectors = self._eigenvectors
            self._ctx._hessian = None
            self._ctx.krylov_process = None  # built on the changed model
        return changed
