"""The one checkpoint loader and saver.

Reads ``.pt``/``.pth`` files holding a bare ``state_dict``, a common training
wrapper (``{"state_dict": ...}``, ``{"model": ...}``, ...), or sharpkit's own
format (``state_dict`` + metadata + optional training state for ``--resume``),
and ``.safetensors`` files. Pickles are always read with
``torch.load(..., weights_only=True)``: a file that would import or run code is
refused with :class:`~sharpkit.errors.UnsafeCheckpointError` before anything in
it executes.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from sharpkit._fs import atomic_file
from sharpkit._hints import arg
from sharpkit.errors import (
    CheckpointNotFoundError,
    CorruptCheckpointError,
    StateDictMismatchError,
    UnsafeCheckpointError,
)

if TYPE_CHECKING:
    import torch

__all__ = [
    "FORMAT_NAME",
    "Checkpoint",
    "CheckpointMeta",
    "file_sha256",
    "load_checkpoint",
    "load_state_dict_into",
    "save_checkpoint",
]

FORMAT_NAME = "sharpkit-checkpoint"
FORMAT_VERSION = 1
_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net", "module")
_SAFETENSORS_META_KEY = "sharpkit"


@dataclass(frozen=True, kw_only=True)
class CheckpointMeta:
    """What sharpkit records about how a checkpoint was made.

    Every field is optional: a bare ``state_dict`` has none of them, and the
    model/dataset must then be named on the command line (``--model``/``--data``).
    """

    model: str | None = None
    model_options: dict[str, Any] = field(default_factory=dict)
    dataset: str | None = None
    dataset_options: dict[str, Any] = field(default_factory=dict)
    lr: float | None = None
    batch_size: int | None = None
    momentum: float | None = None
    weight_decay: float | None = None
    schedule: str | None = None
    seed: int | None = None
    epoch: int | None = None
    epochs: int | None = None
    sharpkit_version: str | None = None
    final: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Return the metadata as plain JSON-compatible data."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CheckpointMeta:
        """Build metadata from a mapping, keeping unknown keys in ``extra``."""
        names = {f.name for f in fields(cls)}
        known = {k: v for k, v in data.items() if k in names}
        extra = dict(known.pop("extra", {}) or {})
        extra.update({k: v for k, v in data.items() if k not in names})
        return cls(**known, extra=extra)


@dataclass(frozen=True, eq=False)
class Checkpoint:
    """A loaded checkpoint.

    Attributes:
        path: The file it was read from.
        state_dict: Parameter and buffer tensors, on the CPU.
        meta: How it was made (empty for a bare ``state_dict``).
        sha256: Hex digest of the file's bytes (identifies it in the store).
        format: ``"sharpkit"``, ``"state_dict"`` or ``"safetensors"``.
        train_state: Optimizer and RNG state for resuming, if saved.
    """

    path: Path
    state_dict: dict[str, torch.Tensor]
    meta: CheckpointMeta
    sha256: str
    format: str
    train_state: dict[str, Any] | None = None


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Return the hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n} B"  # pragma: no cover


def save_checkpoint(
    path: str | os.PathLike[str],
    model_or_state: torch.nn.Module | Mapping[str, torch.Tensor],
    meta: CheckpointMeta | None = None,
    *,
    train_state: Mapping[str, Any] | None = None,
) -> Path:
    """Save a checkpoint in sharpkit's format (or ``.safetensors`` by suffix).

    The file is written to a temporary name and renamed into place, so a killed
    process never leaves a truncated checkpoint under the final name.

    Args:
        path: Destination; a ``.safetensors`` suffix selects that format (which
            cannot hold ``train_state``).
        model_or_state: A module or a ``state_dict``.
        meta: Metadata to record.
        train_state: Optimizer/RNG state for resuming (tensors and plain data only).

    Returns:
        The path written.
    """
    import torch

    path = Path(path)
    state = (
        model_or_state.state_dict()
        if isinstance(model_or_state, torch.nn.Module)
        else dict(model_or_state)
    )
    state = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    meta = meta or CheckpointMeta()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as tmp:
        if path.suffix == ".safetensors":
            from safetensors.torch import save_file

            if train_state is not None:
                msg = "safetensors checkpoints cannot hold train_state; use .pt"
                raise ValueError(msg)
            save_file(
                state,
                tmp,
                metadata={
                    "format": FORMAT_NAME,
                    _SAFETENSORS_META_KEY: json.dumps(meta.to_dict()),
                },
            )
        else:
            payload: dict[str, Any] = {
                "format": FORMAT_NAME,
                "format_version": FORMAT_VERSION,
                "state_dict": state,
                "meta": meta.to_dict(),
            }
            if train_state is not None:
                payload["train_state"] = dict(train_state)
            torch.save(payload, tmp)
    return path


_GLOBAL_RE = re.compile(r"(?:GLOBAL|global)\s+([\w.]+)")


def _load_pickle(path: Path) -> Any:
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        if "Weights only load failed" in text or "weights_only" in text:
            found = _GLOBAL_RE.search(text)
            what = f"global {found.group(1)!r}" if found else "an arbitrary object"
            msg = (
                f"checkpoint {str(path)!r} contains a pickle that would load {what}; "
                "it was not loaded (sharpkit reads tensors only). If it is a whole "
                "model saved with torch.save(model), re-save its weights, "
                "torch.save(model.state_dict(), path), and name the class with "
                f"{arg('model_name', '--model', 'package.module:Class')}; or save "
                "architecture and weights as one file with torch.export.save("
                "torch.export.export(model.eval(), (x,)), 'model.pt2')"
            )
            raise UnsafeCheckpointError(msg) from exc
        raise _corrupt(path, exc) from exc
    except Exception as exc:  # anything else the unpickler trips over: not a checkpoint
        raise _corrupt(path, exc) from exc


def _corrupt(path: Path, exc: BaseException) -> CorruptCheckpointError:
    size = path.stat().st_size
    text = str(exc).strip()
    first = text.splitlines()[0] if text else ""
    reason = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    if any(
        s in reason
        for s in ("central directory", "truncated", "EOF", "Ran out of input", "end of")
    ):
        what = f"is truncated or damaged ({_size(size)} on disk)"
    else:
        what = f"is not a PyTorch checkpoint ({reason})"
    return CorruptCheckpointError(
        f"checkpoint {str(path)!r} {what}; re-save it or pick another file"
    )


def _is_state_dict(obj: Any) -> bool:
    import torch

    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) for k in obj)
        and all(isinstance(v, torch.Tensor) for v in obj.values())
    )


def _strip_module_prefix(state: dict[str, Any]) -> dict[str, Any]:
    # nn.DataParallel / DistributedDataParallel save every key as "module.<key>".
    if state and all(k.startswith("module.") for k in state):
        return {k[len("module.") :]: v for k, v in state.items()}
    return state


def load_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    """Load a checkpoint safely.

    Args:
        path: A ``.pt``/``.pth``/``.ckpt`` file (``torch.save``) or a
            ``.safetensors`` file.

    Returns:
        The checkpoint, with tensors on the CPU.

    Raises:
        CheckpointNotFoundError: No such file.
        UnsafeCheckpointError: The pickle would import or run code.
        CorruptCheckpointError: Truncated, damaged, or not a checkpoint.
    """
    p = Path(path)
    if not p.is_file():
        hint = "it is a directory" if p.is_dir() else "no such file"
        msg = f"checkpoint {str(p)!r} not found ({hint}); check the path"
        raise CheckpointNotFoundError(msg)
    sha = file_sha256(p)
    if p.suffix == ".safetensors":
        return _load_safetensors(p, sha)
    obj = _load_pickle(p)
    if isinstance(obj, Mapping) and obj.get("format") == FORMAT_NAME:
        state = obj.get("state_dict")
        if not _is_state_dict(state):
            msg = f"checkpoint {str(p)!r} has a damaged state_dict; re-save it"
            raise CorruptCheckpointError(msg)
        meta = CheckpointMeta.from_dict(obj.get("meta") or {})
        train_state = obj.get("train_state")
        return Checkpoint(
            p,
            dict(cast("Mapping[str, Any]", state)),
            meta,
            sha,
            "sharpkit",
            train_state,
        )
    if _is_state_dict(obj):
        return Checkpoint(
            p, _strip_module_prefix(dict(obj)), CheckpointMeta(), sha, "state_dict"
        )
    if isinstance(obj, Mapping):
        for key in _WRAPPER_KEYS:
            if _is_state_dict(obj.get(key)):
                return Checkpoint(
                    p,
                    _strip_module_prefix(dict(obj[key])),
                    CheckpointMeta(),
                    sha,
                    "state_dict",
                )
    what = type(obj).__name__
    msg = (
        f"checkpoint {str(p)!r} holds a {what} without a state_dict of tensors; "
        "save one with torch.save(model.state_dict(), path)"
    )
    raise CorruptCheckpointError(msg)


def _load_safetensors(p: Path, sha: str) -> Checkpoint:
    from safetensors import safe_open

    try:
        with safe_open(str(p), framework="pt") as fh:
            header = fh.metadata() or {}
            state = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118
    except Exception as exc:  # safetensors raises its own SafetensorError
        raise _corrupt(p, exc) from exc
    meta = CheckpointMeta()
    if _SAFETENSORS_META_KEY in header:
        try:
            meta = CheckpointMeta.from_dict(json.loads(header[_SAFETENSORS_META_KEY]))
        except (json.JSONDecodeError, TypeError) as exc:
            msg = f"checkpoint {str(p)!r} has unreadable sharpkit metadata; re-save it"
            raise CorruptCheckpointError(msg) from exc
    return Checkpoint(p, state, meta, sha, "safetensors")


def _listing(keys: list[str], limit: int = 3) -> str:
    shown = ", ".join(repr(k) for k in keys[:limit])
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return shown + more


def load_state_dict_into(
    model: torch.nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    *,
    source: str = "checkpoint",
) -> None:
    """Load ``state_dict`` into ``model`` strictly, naming whatever does not fit.

    Raises:
        StateDictMismatchError: Missing or unexpected keys, or shape mismatches.
    """
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    mismatched = [
        (k, tuple(state_dict[k].shape), tuple(own[k].shape))
        for k in own
        if k in state_dict and tuple(state_dict[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"missing {_listing(missing)}")
        if unexpected:
            parts.append(f"unexpected {_listing(unexpected)}")
        if mismatched:
            k, got, want = mismatched[0]
            more = f" and {len(mismatched) - 1} more" if len(mismatched) > 1 else ""
            parts.append(
                f"shape mismatch {k!r}: {list(got)} in file vs {list(want)} "
                f"in model{more}"
            )
        msg = (
            f"{source} does not fit the model ({'; '.join(parts)}); check the "
            f"architecture ({arg('model_name', '--model')}) and its options "
            f"({arg('model_options', '--model-option')})"
        )
        raise StateDictMismatchError(
            msg, missing=missing, unexpected=unexpected, mismatched=mismatched
        )
    model.load_state_dict(dict(state_dict), strict=True)
