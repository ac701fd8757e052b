"""Bounds on the work a command may start, checked before the work is done.

A few bytes of input can ask for unbounded work: ``-o adaptive.steps=1e9``, a
checkpoint whose metadata says ``width=60000``, ``--nproc 500``. Each such
size is compared with a limit *before* anything is built, read or started, and
refused with one line that says the size, the limit and how to raise it:

- ``count``: any whole-number option of a component (steps, samples, restarts,
  examples, widths, depths; seeds excepted), default 10⁶;
- ``memory``: bytes a model or dataset may take while it is built, default half
  the memory free now (8 GiB where that cannot be told);
- ``modules``: submodules and parameter tensors a model may have, default
  10 000 (the largest language models have a few thousand);
- ``processes``: local processes one command starts (``--nproc``, ``sweep
  -j``), default twice the CPU cores, at least 4.

A user who means it raises a limit with ``SHARPKIT_LIMITS``, e.g.
``SHARPKIT_LIMITS="count=1e9,memory=200GiB"``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sharpkit._fs import available_memory
from sharpkit.errors import ConfigError

__all__ = [
    "ENV",
    "Limits",
    "bounded_build",
    "check_bytes",
    "check_count",
    "check_processes",
    "current_limits",
    "human_bytes",
]

ENV = "SHARPKIT_LIMITS"
_DEFAULT_COUNT = 1_000_000
_DEFAULT_MODULES = 10_000
_FALLBACK_MEMORY = 8 << 30
_UNITS = {
    "": 1, "b": 1, "k": 1000, "kb": 1000, "m": 10**6, "mb": 10**6,
    "g": 10**9, "gb": 10**9, "t": 10**12, "tb": 10**12, "kib": 1 << 10,
    "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40,
}  # fmt: skip
_SIZE = re.compile(r"^\s*([0-9.eE+]+)\s*([a-zA-Z]*)\s*$")


@dataclass(frozen=True)
class Limits:
    """The limits in force (see the module docstring)."""

    count: int
    memory: int
    modules: int
    processes: int


def human_bytes(n: float) -> str:
    """``n`` bytes as ``"1.5 GiB"``."""
    for unit, size in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} bytes"


def _number(key: str, text: str) -> int:
    match = _SIZE.match(text)
    unit = match.group(2).lower() if match else ""
    if match is None or unit not in _UNITS or (unit and key != "memory"):
        msg = (
            f"{ENV}: {key}={text!r} is not a number"
            + (" of bytes (e.g. 64GiB)" if key == "memory" else "")
            + f"; write e.g. {ENV}=count=1e7,memory=64GiB"
        )
        raise ConfigError(msg)
    try:
        value = float(match.group(1)) * _UNITS[unit]
    except ValueError:
        value = -1.0
    if not 1 <= value < 2**63:
        msg = f"{ENV}: {key}={text!r} must be a positive whole number"
        raise ConfigError(msg)
    return int(value)


def current_limits() -> Limits:
    """The limits now: the defaults, with what ``SHARPKIT_LIMITS`` raises or lowers.

    Raises:
        ConfigError: ``SHARPKIT_LIMITS`` is malformed.
    """
    free = available_memory()
    cores = os.cpu_count() or 1
    values: dict[str, int] = {
        "count": _DEFAULT_COUNT,
        "memory": free // 2 if free is not None else _FALLBACK_MEMORY,
        "modules": _DEFAULT_MODULES,
        "processes": max(4, 2 * cores),
    }
    for item in filter(None, (p.strip() for p in os.environ.get(ENV, "").split(","))):
        key, sep, text = item.partition("=")
        key = key.strip().lower()
        if not sep or key not in values:
            msg = (
                f"{ENV}: {item!r} is not one of count=, memory=, modules=, "
                f"processes=; write e.g. {ENV}=count=1e7,memory=64GiB"
            )
            raise ConfigError(msg)
        values[key] = _number(key, text)
    return Limits(**values)


def _raise_with(key: str, value: str) -> str:
    return f"raise the limit with {ENV}={key}={value} if you mean it"


def check_count(what: str, value: int) -> None:
    """Refuse a whole-number option over the ``count`` limit.

    Args:
        what: What the value is, for the message (``"option 'steps'"``).
        value: The value asked for.

    Raises:
        ConfigError: ``value`` is over the limit.
    """
    limit = current_limits().count
    if value > limit:
        msg = (
            f"{what} = {value} is over the limit of {limit} on counts (steps, "
            f"samples, sizes); ask for fewer, or {_raise_with('count', str(value))}"
        )
        raise ConfigError(msg)


def check_bytes(
    what: str, nbytes: int, *, hint: str = "ask for less", limit: int | None = None
) -> None:
    """Refuse ``nbytes`` of memory over the ``memory`` limit.

    Args:
        what: What would take it, for the message (``"the images"``).
        nbytes: The bytes it would take.
        hint: What to do instead.
        limit: The limit (default: the ``memory`` limit now).

    Raises:
        ConfigError: ``nbytes`` is over the limit.
    """
    limit = current_limits().memory if limit is None else limit
    if nbytes > limit:
        msg = (
            f"{what} would take {human_bytes(nbytes)}, over the limit of "
            f"{human_bytes(limit)} (half the memory free); {hint}, or "
            f"{_raise_with('memory', _ceil_gib(nbytes))}"
        )
        raise ConfigError(msg)


def _ceil_gib(nbytes: int) -> str:
    return f"{-(-nbytes // (1 << 30))}GiB"


def check_processes(what: str, n: int) -> None:
    """Refuse starting ``n`` local processes over the ``processes`` limit.

    Raises:
        ConfigError: ``n`` is over the limit.
    """
    limit = current_limits().processes
    if n > limit:
        cores = os.cpu_count() or 1
        msg = (
            f"{what} {n} starts {n} processes, over the limit of {limit} here "
            f"({cores} CPU core(s)); start fewer, or "
            f"{_raise_with('processes', str(n))}"
        )
        raise ConfigError(msg)


class _Budget:
    """What a build has allocated and registered so far, against the limits."""

    def __init__(self, what: str, limits: Limits) -> None:
        self.what = what
        self.limits = limits
        self.bytes = 0
        self.modules = 0

    def allocate(self, nbytes: int) -> None:
        self.bytes += nbytes
        check_bytes(
            self.what, self.bytes, hint="choose smaller sizes", limit=self.limits.memory
        )

    def part(self) -> None:
        self.modules += 1
        if self.modules > self.limits.modules:
            limit = self.limits.modules
            msg = (
                f"{self.what} has more than {limit} submodules and parameter "
                f"tensors (a depth or a count too large?); choose smaller sizes, "
                f"or {_raise_with('modules', str(10 * limit))}"
            )
            raise ConfigError(msg)


def _requested_bytes(func: Callable[..., Any], args: Any, kwargs: Any) -> int:
    """Bytes a factory call such as ``torch.empty(60000, 60000)`` asks for."""
    import torch

    if func in (torch.tensor, torch.as_tensor, torch.asarray, torch.scalar_tensor):
        return 0  # copies of what already exists
    size: Any = kwargs.get("size")
    if size is None:
        ints = [a for a in args if isinstance(a, int) and not isinstance(a, bool)]
        seqs = [a for a in args if isinstance(a, (tuple, list, torch.Size))]
        if func is torch.randint:  # randint(low, high, size) / randint(high, size)
            size = seqs[0] if seqs else ()
        elif func in (torch.arange, torch.range, torch.linspace, torch.logspace):
            return 0  # sized by values, bounded by the count of steps
        elif seqs:
            size = seqs[0]
        else:
            size = ints
    try:
        numel = 1
        for d in size:
            numel *= max(0, int(d))
    except (TypeError, ValueError):
        return 0
    dtype = kwargs.get("dtype") or torch.get_default_dtype()
    try:
        itemsize = torch.empty((), dtype=dtype, device="meta").element_size()
    except (TypeError, RuntimeError):
        itemsize = 8
    return numel * itemsize


@contextmanager
def bounded_build(what: str) -> Iterator[None]:
    """Refuse, before it happens, an allocation or a module over the limits.

    While the block runs (a model or a dataset being built), every tensor
    factory call (``torch.empty``, ``zeros``, ``randn``, ... : how layers and
    synthetic data get their memory) is sized before it runs and the sizes are
    added up, and every submodule registered is counted; going over ``memory``
    or ``modules`` raises a one-line :class:`~sharpkit.ConfigError` before the
    memory is taken. Tensors made from existing data (``torch.tensor``,
    ``from_numpy``) are not counted: their size was checked where they were read.

    Args:
        what: What is built, for the message (``"model 'mlp-bn'"``).

    Raises:
        ConfigError: Over a limit.
    """
    import torch
    from torch.overrides import TorchFunctionMode
    from torch.utils._device import _device_constructors

    budget = _Budget(what, current_limits())
    factories = _device_constructors()

    class _Sized(TorchFunctionMode):
        def __torch_function__(
            self,
            func: Any,
            types: Any,
            args: Any = (),
            kwargs: Any = None,
        ) -> Any:
            kwargs = kwargs or {}
            if func in factories:
                budget.allocate(_requested_bytes(func, args, kwargs))
            return func(*args, **kwargs)

    def counted(*_: Any) -> None:
        budget.part()

    # a layer registers its parameters when it is made, its parent registers it
    # later (mlp-bn makes every layer first): both are counted as they happen
    registry = torch.nn.modules.module
    hooks = [
        registry.register_module_module_registration_hook(counted),
        registry.register_module_parameter_registration_hook(counted),
    ]
    try:
        with _Sized():
            yield
    finally:
        for hook in hooks:
            hook.remove()


IMPORT_ENV = "SHARPKIT_PLUGIN_TIMEOUT"
_IMPORT_DEFAULT = 60.0
_IMPORT_SAY = 5.0  # seconds before saying which plugin is waited on


class ImportTimeoutError(Exception):
    """A plugin's import did not finish within ``SHARPKIT_PLUGIN_TIMEOUT``."""


def import_timeout() -> float:
    """Seconds a plugin's import may take (``SHARPKIT_PLUGIN_TIMEOUT``, default 60).

    Raises:
        ConfigError: The variable is not a positive number.
    """
    text = os.environ.get(IMPORT_ENV, "").strip()
    if not text:
        return _IMPORT_DEFAULT
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < 1e9:
        msg = f"{IMPORT_ENV}={text!r} must be a positive number of seconds"
        raise ConfigError(msg)
    return value


def bounded_import(load: Callable[[], Any], what: str) -> Any:
    """``load()`` (a plugin's import), said after a few seconds and bounded.

    After :data:`_IMPORT_SAY` seconds one line on stderr names what is being
    waited on; after :func:`import_timeout` seconds the import is interrupted
    (a signal to the main thread, so a ``time.sleep`` or a Python loop ends)
    and :class:`ImportTimeoutError` raised, for the caller to report the plugin
    as failed and go on. Outside the main thread the import runs unbounded.

    Args:
        load: The import, e.g. an entry point's ``load``.
        what: The plugin, for the lines (``"plugin 'x' from dist-x 1.0"``).

    Raises:
        ImportTimeoutError: The import took too long.
    """
    import signal
    import sys
    import threading

    limit = import_timeout()
    if threading.current_thread() is not threading.main_thread():
        return load()
    done = threading.Event()
    late: list[bool] = []

    def on_timeout(signum: int, frame: Any) -> None:
        if late and not done.is_set():
            msg = f"{what} did not finish importing in {limit:g} s"
            raise ImportTimeoutError(msg)

    def watch() -> None:
        if done.wait(min(_IMPORT_SAY, limit)):
            return
        if limit > _IMPORT_SAY:
            print(
                f"sharpkit: waiting on {what} to import (bounded to {limit:g} s by "
                f"{IMPORT_ENV})",
                file=sys.stderr,
                flush=True,
            )
            if done.wait(limit - _IMPORT_SAY):
                return
        late.append(True)
        signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGUSR2)

    old = signal.signal(signal.SIGUSR2, on_timeout)
    watcher = threading.Thread(target=watch, name="sharpkit-plugin-import", daemon=True)
    watcher.start()
    try:
        return load()
    finally:
        done.set()
        watcher.join()
        signal.signal(signal.SIGUSR2, old)
