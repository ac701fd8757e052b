"""Torch's CPU thread count: ``--threads``, ``SHARPKIT_THREADS`` or a safe default.

torch starts one intra-op thread per core it can see. When other CPU-bound
work already keeps those cores busy (another training run, a test suite), its
threads wait for each other at every parallel region and a measurement runs
3-190x slower than with one thread (issue 26: ``measure`` on 2 cores beside one
other job). So, unless told, sharpkit looks once, at start, at how much other
work runs on the machine against the cores this process may run on, and uses
only the cores left free (at least one). The other work is the smaller of the
1-minute load average and the tasks running right now (``/proc/loadavg``,
three looks 10 ms apart, this process left out): the load average alone still
counts, for a minute, a job that has just ended. An explicit count, or
``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS`` set by the user, is obeyed as it is.

A leaf module: it imports nothing of sharpkit, and torch only when it applies
a choice.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

__all__ = ["ThreadChoice", "apply_threads", "choose_threads", "parse_threads"]

ENV = "SHARPKIT_THREADS"
"""The environment variable that sets ``--threads``."""

_USER_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


@dataclass(frozen=True)
class ThreadChoice:
    """A thread count and why.

    Attributes:
        threads: Intra-op threads for torch, or ``None`` to leave torch as it is.
        reason: One line saying why (shown when the default chose fewer
            threads than cores).
        reduced: Whether the default chose fewer threads than the cores
            available because the machine is busy.
    """

    threads: int | None
    reason: str
    reduced: bool = False


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - macOS, Windows
        return max(1, os.cpu_count() or 1)


def _running_now() -> float | None:
    """Tasks running right now besides this one (median of three looks)."""
    import time

    counts = []
    for i in range(3):
        if i:
            time.sleep(0.01)
        try:
            with open("/proc/loadavg") as f:
                running = int(f.read().split()[3].split("/")[0])
        except (OSError, ValueError, IndexError):
            return None
        counts.append(max(0, running - 1))
    return float(sorted(counts)[1])


def load_average() -> float | None:
    """Other work on the machine, in cores: see the module docstring.

    ``None`` where the platform tells nothing.
    """
    try:
        load = float(os.getloadavg()[0])
    except (AttributeError, OSError):  # pragma: no cover - Windows
        return None
    now = _running_now()
    return load if now is None else min(load, now)


def parse_threads(value: str | int | None) -> int | None:
    """``"auto"``/``None``/``""`` -> ``None`` (choose); a positive count -> itself.

    Raises:
        ValueError: Anything else (the message says what to pass).
    """
    if value is None:
        return None
    text = str(value).strip().lower()
    if text in ("", "auto"):
        return None
    if text.isdigit() and int(text) > 0:
        return int(text)
    msg = f"threads must be a positive whole number or 'auto', got {value!r}"
    raise ValueError(msg)


def choose_threads(
    requested: str | int | None = None,
    *,
    environ: dict[str, str] | None = None,
    cores: int | None = None,
    load: float | None = None,
    sample: bool = True,
) -> ThreadChoice:
    """Decide the thread count.

    Precedence: ``requested`` (``--threads``), then ``SHARPKIT_THREADS``, then
    the user's ``OMP_NUM_THREADS``/``MKL_NUM_THREADS`` (left to torch), then the
    busy-machine default: ``max(1, cores - round(load))`` when the load average
    shows other work on this process's cores, else torch's own default.

    Args:
        requested: A count, ``"auto"`` or ``None``.
        environ: The environment (default: ``os.environ``).
        cores: Cores available (default: this process's affinity).
        load: The 1-minute load average (default: the system's, if ``sample``).
        sample: Read the load average when ``load`` is not given.

    Raises:
        ValueError: ``requested`` or ``SHARPKIT_THREADS`` is not a count or auto.
    """
    env = os.environ if environ is None else environ
    explicit = parse_threads(requested)
    if explicit is not None:
        return ThreadChoice(explicit, f"{explicit} thread(s): --threads")
    from_env = parse_threads(env.get(ENV))
    if from_env is not None:
        return ThreadChoice(from_env, f"{from_env} thread(s): {ENV}")
    user = next((name for name in _USER_ENV if env.get(name)), None)
    if user is not None:
        return ThreadChoice(None, f"threads as {user} says")
    n = available_cores() if cores is None else cores
    if load is None and sample:
        load = load_average()
    if load is None or not math.isfinite(load):
        return ThreadChoice(None, f"torch's default ({n} cores, load unknown)")
    free = max(1, n - round(load))
    if free >= n:
        return ThreadChoice(None, f"torch's default ({n} cores, load {load:.1f})")
    reason = (
        f"{free} thread(s): the load average is {load:.1f} on {n} cores, so "
        f"more threads would wait for the other work; --threads N or {ENV} "
        "to choose"
    )
    return ThreadChoice(free, reason, reduced=True)


def apply_threads(choice: ThreadChoice) -> None:
    """Set torch's intra-op thread count to ``choice.threads`` (if any)."""
    if choice.threads is None:
        return
    import torch

    torch.set_num_threads(choice.threads)
