"""What a stored run records about how it was made, and the keys results are reused by.

A result read back from the store must be exactly what a fresh computation
would give now, so everything that could change it is part of its key: the
model's bytes, the data, the options, and the component that computed it (its
provider and version). :func:`result_key` builds that key; :func:`run_attrs`
the provenance attributes every stored run carries.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sharpkit._meta import json_safe, provenance, stable_key
from sharpkit.checkpoint import file_sha256

if TYPE_CHECKING:
    import torch

    from sharpkit._data import DataSplit
    from sharpkit.registry import Registry

__all__ = [
    "code_sha256",
    "file_sha",
    "provider_of",
    "result_key",
    "run_attrs",
    "split_sha256",
    "state_sha256",
]


def state_sha256(model: torch.nn.Module) -> str:
    """Return the sha256 of a module's state (names, shapes and bytes).

    The bytes are read as ``uint8``, so dtypes numpy lacks (bfloat16, float8)
    hash too, and every other dtype hashes as it always has.
    """
    import torch

    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        raw = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8)
        digest.update(raw.numpy().tobytes())
    return digest.hexdigest()


def split_sha256(split: DataSplit) -> str:
    """Return the sha256 of a split's inputs and targets (shapes, dtypes and bytes)."""
    import torch

    digest = hashlib.sha256()
    for tensor in (split.inputs, split.targets):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{tuple(t.shape)}{t.dtype}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    digest.update(repr(split.input_names).encode())
    return digest.hexdigest()


def code_sha256(*hashes: str | None) -> str | None:
    """Combine the hashes of the user's code behind a result (``None``: no code)."""
    if all(h is None for h in hashes):
        return None
    return hashlib.sha256(repr(hashes).encode()).hexdigest()


def file_sha(path: Path | None) -> str | None:
    """Return the sha256 of a file, or ``None`` when there is none."""
    return file_sha256(path) if path is not None and path.is_file() else None


def provider_of(registry: Registry, kind: str, name: str) -> dict[str, str | None]:
    """Return the plugin, distribution and version providing ``kind`` ``name``.

    Part of every reuse key, so that a value computed by one plugin (or one
    version of it) is never returned for another's component of the same name.
    """
    rec = registry.provider(kind, name)
    return {
        "plugin": rec.name,
        "distribution": rec.distribution,
        "version": rec.version,
    }


def result_key(
    kind: str, name: str, *, provider: Mapping[str, Any], **settings: Any
) -> str:
    """Return the reuse key of the ``kind`` component ``name`` under ``settings``.

    Args:
        kind: ``"metric"`` or ``"probe"``.
        name: The component's registered name.
        provider: What provides it (:func:`provider_of`).
        **settings: Everything else that can change the result: the model's and
            the data's hashes, the component's parsed options, seed, ...
    """
    return stable_key({kind: name, "provider": dict(provider), **settings})


def run_attrs(kind: str, attrs: Mapping[str, Any]) -> dict[str, Any]:
    """Return ``attrs`` with the run's kind and provenance, as JSON."""
    out: dict[str, Any] = json_safe({**attrs, **provenance(), "kind": kind})
    return out
