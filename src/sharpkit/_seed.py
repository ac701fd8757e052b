"""Seeded random streams: one seed, many independent, reproducible generators.

A stream is named (``"spectral"``, ``"sgd:order"``, ``"subset:train"``, ...): the
seed and the name are hashed together, so two streams of one seed are
independent, and each is the same in every run and on every machine.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

__all__ = ["derived_seed", "generator", "seeded"]


def derived_seed(seed: int, stream: str = "") -> int:
    """Return a 63-bit seed derived from ``seed`` and the stream name.

    Examples:
        >>> derived_seed(0, "a") == derived_seed(0, "a") != derived_seed(0, "b")
        True
    """
    digest = hashlib.sha256(f"{seed}:{stream}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def generator(seed: int, stream: str = "") -> torch.Generator:
    """Return a fresh CPU generator for the stream ``stream`` of ``seed``."""
    import torch

    gen = torch.Generator(device="cpu")
    gen.manual_seed(derived_seed(seed, stream))
    return gen


@contextmanager
def seeded(seed: int, *, devices: list[torch.device] | None = None) -> Iterator[None]:
    """Seed torch's global RNG inside the block; the caller's state comes back after.

    Args:
        seed: The seed for ``torch.manual_seed``.
        devices: CUDA devices whose RNG state is also forked (default: none).
    """
    import torch

    check_seed(seed)
    with torch.random.fork_rng(devices=devices or []):
        torch.manual_seed(seed)
        yield


def check_seed(seed: int) -> None:
    """Refuse a seed torch cannot take (outside ``[-2**63, 2**64)``), in one line.

    Raises:
        ConfigError: The seed is out of that range.
    """
    if not -(2**63) <= int(seed) < 2**64:
        from sharpkit.errors import ConfigError

        msg = f"seed {seed} is out of range; give a whole number from 0 to 2**64 - 1"
        raise ConfigError(msg)
