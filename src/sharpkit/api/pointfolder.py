"""A sweep point's folder holds the training of that point and of no other.

A sweep reruns where it stopped: a folder's ``final.pt`` is taken as done and
its ``last.pt`` resumed. That is right only when the folder was trained with
the point's configuration as the sweep file says it now. When a point is
trained, :func:`record_point` writes that configuration next to its
checkpoints (``sweep-point.json``); before a folder is reused,
:func:`check_point_folder` compares it (or, for folders trained before the
file existed, the checkpoint's own metadata) with the file's and refuses a
folder trained otherwise, in one line. Nothing is retrained over it: the old
checkpoints are the user's to move.
"""

from __future__ import annotations

import inspect
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

from sharpkit._fs import atomic_file
from sharpkit._meta import json_safe
from sharpkit.checkpoint import CheckpointMeta
from sharpkit.errors import ConfigError

__all__ = [
    "POINT_FILE",
    "check_local_folder",
    "check_point_folder",
    "check_unique",
    "record_point",
]

POINT_FILE = "sweep-point.json"
# Training arguments a checkpoint's metadata records under the same name.
_META_FIELDS = (
    "lr", "batch_size", "momentum", "weight_decay", "schedule", "seed", "epochs",
)  # fmt: skip


def _config(train: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(json.dumps(json_safe(dict(train)), sort_keys=True))
    return out


def record_point(out_dir: Path, train: Mapping[str, Any]) -> None:
    """Write the point's configuration into its folder (before it trains)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_file(out_dir / POINT_FILE) as tmp:
        tmp.write_text(json.dumps(_config(train), sort_keys=True, indent=1))


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return math.isclose(float(a), float(b), rel_tol=1e-12, abs_tol=0.0)
    return bool(a == b)


def _defaults() -> dict[str, Any]:
    from sharpkit.api.train import train

    params = inspect.signature(train).parameters
    return {
        k: p.default
        for k, p in params.items()
        if p.default is not inspect.Parameter.empty
    }


def check_point_folder(
    out_dir: Path | str,
    train: Mapping[str, Any],
    meta: CheckpointMeta | None = None,
) -> None:
    """Refuse a point folder trained with another configuration than ``train``.

    Args:
        out_dir: The point's folder (an object-store URL is checked by ``meta``).
        train: The point's arguments of :func:`sharpkit.train`, from the file.
        meta: The metadata of the folder's ``final.pt`` (or ``last.pt``), if any.

    Raises:
        ConfigError: One line naming the folder, the first setting that differs
            (stored and asked), and what to do.
    """
    want = _config(train)
    resuming = isinstance(out_dir, Path) and not (out_dir / "final.pt").is_file()
    stored_file = Path(out_dir) / POINT_FILE if isinstance(out_dir, Path) else None
    if stored_file is not None and stored_file.is_file():
        try:
            stored = json.loads(stored_file.read_text())
        except (OSError, ValueError) as exc:
            _refuse(out_dir, f"its {POINT_FILE} is unreadable ({exc})")
        if not isinstance(stored, dict):
            _refuse(out_dir, f"its {POINT_FILE} is not a table")
        for key in sorted(set(stored) | set(want)):
            if not _same(stored.get(key), want.get(key)) and not (
                resuming and _longer(key, stored.get(key), want.get(key))
            ):
                _refuse(out_dir, _differs(key, stored.get(key), want.get(key)))
        return
    if meta is None:
        return
    defaults = _defaults()
    for key in _META_FIELDS:
        had = getattr(meta, key)
        asked = train.get(key, defaults.get(key))
        if had is None or asked is None or _same(had, asked):
            continue
        if not (resuming and _longer(key, had, asked)):
            _refuse(out_dir, _differs(key, had, asked))


def _longer(key: str, had: Any, asked: Any) -> bool:
    """More epochs for a point resumed from its ``last.pt``: training continued."""
    return (
        key == "epochs"
        and isinstance(had, int)
        and isinstance(asked, int)
        and asked > had
    )


def _differs(key: str, had: Any, asked: Any) -> str:
    return f"it was trained with {key}={had!r}, the sweep file now says {asked!r}"


def _refuse(out_dir: Path | str, why: str) -> NoReturn:
    msg = (
        f"the point folder {str(out_dir)!r} holds another training ({why}); it is "
        "not reused: move that folder away (or set another [sweep] out) to train "
        "this point afresh; to train it for more epochs, copy its final.pt to "
        "last.pt and remove final.pt"
    )
    raise ConfigError(msg)


def check_unique(points: Sequence[tuple[str, Mapping[str, Any]]]) -> None:
    """Two grid points never share a folder (nor its ``final.pt``).

    Args:
        points: Each point's folder and training arguments.

    Raises:
        ConfigError: Two points named the same folder.
    """
    seen: dict[str, Mapping[str, Any]] = {}
    for where, train in points:
        other = seen.setdefault(where, train)
        if other is not train:
            msg = (
                f"grid points {dict(other)!r} and {dict(train)!r} would share the "
                f"folder {where!r}; list each value once"
            )
            raise ConfigError(msg)


def check_local_folder(out_dir: Path, train: Mapping[str, Any]) -> None:
    """:func:`check_point_folder` for a local folder, with its checkpoint's metadata."""
    from sharpkit.checkpoint import load_checkpoint

    for name in ("final.pt", "last.pt"):
        if (out_dir / name).is_file():
            check_point_folder(out_dir, train, load_checkpoint(out_dir / name).meta)
            return
    check_point_folder(out_dir, train)
