"""Provenance: the version, JSON-safe values and stable keys of settings.

A stored result is reused only when its key (a hash of everything that could
change it) matches; :func:`stable_key` is that hash, the same for equal settings
in every process.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import platform
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

__all__ = ["json_safe", "provenance", "stable_key", "version"]


@functools.cache
def version() -> str:
    """Return sharpkit's installed version (``0.0.0+unknown`` from a bare tree)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as _dist_version

    try:
        return _dist_version("sharpkit")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "0.0.0+unknown"


def json_safe(value: Any) -> Any:
    """Return ``value`` as JSON: mappings, lists, str, int, finite float, bool, None.

    NumPy scalars and arrays become Python numbers and lists, paths become
    strings, non-finite floats become ``None``, and any other object its ``str``.

    Examples:
        >>> import numpy as np
        >>> json_safe({"a": np.float32(0.5), "b": np.arange(2), "c": float("nan")})
        {'a': 0.5, 'b': [0, 1], 'c': None}
    """
    if type(value).__module__ == "numpy" and hasattr(value, "tolist"):
        value = value.tolist()  # numpy scalars and arrays, without importing numpy
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


def stable_key(payload: Mapping[str, Any]) -> str:
    """Return the sha256 of ``payload`` as canonical JSON (sorted keys).

    Examples:
        >>> stable_key({"a": 1, "b": [2.0]}) == stable_key({"b": [2.0], "a": 1})
        True
    """
    text = json.dumps(json_safe(payload), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def provenance() -> dict[str, Any]:
    """Return what produced a result: versions, time and the command line."""
    import torch

    return {
        "sharpkit_version": version(),
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "time": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(sys.argv) if sys.argv and sys.argv[0] else "",
    }
