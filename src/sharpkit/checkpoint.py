"""The one checkpoint loader and saver.

Reads ``.pt``/``.pth`` files holding a bare ``state_dict``, a common training
wrapper (``{"state_dict": ...}``, ``{"model": ...}``, ...), or sharpkit's own
format (``state_dict`` + metadata + optional training state for ``--resume``),
and ``.safetensors`` files. Pickles are always read with
``torch.load(..., weights_only=True)``: a file that would import or run code is
refused with :class:`~sharpkit.errors.UnsafeCheckpointError` before anything in
it executes.

Before anything is read, a file is looked at: an empty file, a zip archive cut
short (its directory missing), and an archive that declares more data than it
can hold uncompressed (``torch.save`` stores its entries uncompressed, so a
compressed entry that inflates far past the file's size is a zip bomb) or more
than the memory free are refused as a
:class:`~sharpkit.errors.CorruptCheckpointError` that says which. The metadata
read back is checked field by field, so a damaged one is one error, not a
crash later.

Writing is deterministic: the same model and metadata give the same bytes (the
archive's inner folder is always ``archive``, whatever the temporary file is
called), so the sha256 that keys stored results is the same for identical
retrains.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import numbers
import os
import pickle
import re
import sys
import warnings
import zipfile
import zlib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from sharpkit._fs import atomic_file, available_memory
from sharpkit._hints import arg
from sharpkit.errors import (
    CheckpointNotFoundError,
    CorruptCheckpointError,
    DataError,
    StateDictMismatchError,
    UnsafeCheckpointError,
    first_line,
)

if TYPE_CHECKING:
    import torch

__all__ = [
    "FORMAT_NAME",
    "Checkpoint",
    "CheckpointMeta",
    "check_archive",
    "file_sha256",
    "load_checkpoint",
    "load_state_dict_into",
    "save_checkpoint",
]

FORMAT_NAME = "sharpkit-checkpoint"
FORMAT_VERSION = 1
_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net", "module")
_SAFETENSORS_META_KEY = "sharpkit"
_ZIP_MAGIC = b"PK\x03\x04"
# How far a checkpoint may inflate past its size on disk. torch.save stores
# every entry uncompressed, so its files declare exactly their own size; a zip
# tool recompressing one gains little on float weights (well under 2x).
_MAX_INFLATION = 2.0
_INFLATION_SLACK = 64 << 20  # small files: a few MB of metadata never matter


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
        """Build metadata from a mapping, keeping unknown keys in ``extra``.

        Raises:
            TypeError: ``data`` is not a mapping, or a field has the wrong type
                (the message names the field, its value and what it should be).
        """
        given: object = data  # read from a file: any type at all
        if not isinstance(given, Mapping):
            msg = f"the metadata is a {type(given).__name__}, not a table of fields"
            raise TypeError(msg)
        names = {f.name for f in fields(cls)}
        known = {k: v for k, v in data.items() if k in names}
        for name, value in known.items():
            _check_field(name, value)
        extra = dict(known.pop("extra", {}) or {})
        extra.update({k: v for k, v in data.items() if k not in names})
        return cls(**known, extra=extra)


# The type each metadata field must have (``None`` is always allowed).
_FIELD_TYPES: dict[str, tuple[str, tuple[type, ...]]] = {
    "model": ("text", (str,)),
    "dataset": ("text", (str,)),
    "schedule": ("text", (str,)),
    "sharpkit_version": ("text", (str,)),
    "model_options": ("a table", (Mapping,)),
    "dataset_options": ("a table", (Mapping,)),
    "extra": ("a table", (Mapping,)),
    "final": ("a table of numbers", (Mapping,)),
    "lr": ("a number", (numbers.Real,)),
    "momentum": ("a number", (numbers.Real,)),
    "weight_decay": ("a number", (numbers.Real,)),
    "batch_size": ("an integer", (numbers.Integral,)),
    "seed": ("an integer", (numbers.Integral,)),
    "epoch": ("an integer", (numbers.Integral,)),
    "epochs": ("an integer", (numbers.Integral,)),
}


def _check_field(name: str, value: Any) -> None:
    if value is None:
        return
    what, types = _FIELD_TYPES[name]
    good = isinstance(value, types) and not isinstance(value, bool)
    if good and name == "final":
        good = all(
            isinstance(v, numbers.Real) and not isinstance(v, bool)
            for v in value.values()
        )
    if not good:
        shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
        msg = (
            f"metadata field {name!r} is {shown} ({type(value).__name__}), "
            f"expected {what}"
        )
        raise TypeError(msg)


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
            payload = _canonical(payload)
            # Through a file object the archive's inner folder is "archive", not
            # the temporary file's random name: equal content, equal bytes.
            with tmp.open("wb") as fh:
                torch.save(payload, fh)
    return path


def _canonical(obj: Any) -> Any:
    """``obj`` with every string interned and every container a fresh one.

    Pickle writes an object seen before as a back-reference, so two payloads
    equal in content but not in which objects they share (a resumed run reads
    its state back as new objects) would differ in bytes. Interned strings and
    unshared containers make the bytes a function of the content alone.
    Tensors are left as they are (torch stores shared storages once, by design).
    """
    kind = type(obj)  # exact types: a subclass keeps its own identity
    if kind is str:
        return sys.intern(obj)
    if kind is dict:
        return {_canonical(k): _canonical(v) for k, v in obj.items()}
    if kind is list:
        return [_canonical(v) for v in obj]
    if kind is tuple:
        return tuple(_canonical(v) for v in obj)
    return obj


_GLOBAL_RE = re.compile(r"(?:GLOBAL|global)\s+([\w.]+)")


def _read_once(path: Path) -> bytes:
    """The file's bytes, read once through one open file.

    The hash that keys stored results and the tensors loaded are both taken
    from these bytes: a file replaced (renamed over) while it is read gives
    the old file's bytes to both, never one file's hash with another's weights.
    A file bigger than the memory free is refused before anything is read.

    Raises:
        CorruptCheckpointError: The file is empty, or larger than the memory free.
    """
    with path.open("rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        if size == 0:
            msg = f"checkpoint {str(path)!r} is empty (0 bytes); re-save it"
            raise CorruptCheckpointError(msg)
        _check_start(path, fh, size)
        free = available_memory()
        if free is not None and size > free:
            msg = (
                f"checkpoint {str(path)!r} is {_size(size)}, more than the "
                f"{_size(free)} of memory free; it was refused before reading it: "
                "free memory or pick another file"
            )
            raise CorruptCheckpointError(msg)
        return fh.read()


def check_archive(
    path: Path,
    data: bytes | None = None,
    *,
    what: str = "checkpoint",
    max_inflation: float = _MAX_INFLATION,
) -> None:
    """Refuse, before unpacking it, a file that is empty, cut short or a zip bomb.

    Only the zip archive's directory is read: what its entries declare is
    compared with the file's size (``max_inflation`` times it, beyond a few MB)
    and with the memory free.

    Args:
        path: The file (named in messages; read when ``data`` is not given).
        data: The file's bytes, if already read.
        what: What the file is, for messages (``"checkpoint"``, ``"data file"``).
        max_inflation: How far its entries may inflate past its size.

    Raises:
        CorruptCheckpointError: Which of these it is, in one line.
        DataError: The same, for a data file (``what`` starting with "data").
    """
    error = DataError if what.startswith("data") else CorruptCheckpointError
    size = len(data) if data is not None else path.stat().st_size
    if size == 0:
        msg = f"{what} {str(path)!r} is empty (0 bytes); re-save it"
        raise error(msg)
    with contextlib.ExitStack() as stack:
        fh = (
            io.BytesIO(data)
            if data is not None
            else stack.enter_context(path.open("rb"))
        )
        if fh.read(len(_ZIP_MAGIC)) != _ZIP_MAGIC:
            return
        fh.seek(0)
        try:
            archive = stack.enter_context(zipfile.ZipFile(fh))
        except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
            msg = (
                f"{what} {str(path)!r} is truncated or damaged: a zip archive "
                f"without its directory ({_size(size)} on disk, {exc}); re-save it "
                "or pick another file"
            )
            raise error(msg) from None
        _check_sizes(path, archive.infolist(), size, what, max_inflation)
        # With the bytes in hand every entry's CRC-32 is checked (GB/s), so a
        # file damaged on disk is not read as weights: after the sizes, so
        # that nothing is inflated past them.
        try:
            bad = archive.testzip() if data is not None else None
        except (zipfile.BadZipFile, OSError, ValueError, EOFError, zlib.error):
            bad = "?"
    if bad is not None:
        msg = (
            f"{what} {str(path)!r} is damaged: its entry {bad!r} no longer matches "
            "its CRC-32 checksum; re-save it or fetch it again"
        )
        raise error(msg)


def _check_sizes(
    path: Path,
    entries: list[zipfile.ZipInfo],
    size: int,
    what: str,
    max_inflation: float,
) -> None:
    error = DataError if what.startswith("data") else CorruptCheckpointError
    declared = sum(e.file_size for e in entries)
    limit = max(max_inflation * size, size + _INFLATION_SLACK)
    free = available_memory()
    if declared > limit or (free is not None and declared > free):
        why = (
            f"{declared / size:.0f}x its size, more than the {max_inflation:g}x "
            "real data ever inflates by"
            if declared > limit
            else f"more than the {_size(free or 0)} of memory free"
        )
        msg = (
            f"{what} {str(path)!r} declares {_size(declared)} of data in "
            f"{_size(size)} on disk ({why}); it was refused before reading it: "
            "re-save it uncompressed (torch.save, np.savez) or pick another file"
        )
        raise error(msg)


def _check_start(path: Path, fh: Any, size: int) -> None:
    """Refuse a file whose first bytes are no checkpoint's, before reading it all."""
    head = fh.read(16)
    fh.seek(0)
    if path.suffix == ".safetensors":
        n = int.from_bytes(head[:8], "little") if len(head) >= 8 else -1
        good = 0 < n <= size - 8 and head[8:9] == b"{"
    else:  # a zip archive (torch.save), or a pickle (protocol 2 and later)
        good = head.startswith(_ZIP_MAGIC) or head[:1] == b"\x80"
    if not good:
        msg = (
            f"checkpoint {str(path)!r} is not a PyTorch checkpoint (it starts with "
            f"bytes {head[:8].hex(' ')}, {_size(size)}); it was refused before "
            "reading it: pick another file"
        )
        raise CorruptCheckpointError(msg)


def _load_pickle(path: Path, data: bytes) -> Any:
    import torch

    check_archive(path, data)
    try:
        with warnings.catch_warnings():
            # "Detected pickle protocol N": torch's note on what it may not read;
            # what it could not read is the error below.
            warnings.filterwarnings("ignore", "Detected pickle protocol")
            # sparse tensors are refused with one line once loaded (not weights)
            warnings.filterwarnings("ignore", "Validating sparse tensor")
            return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        found = _GLOBAL_RE.search(text)
        if found and ("Weights only load failed" in text or "weights_only" in text):
            # Only a pickle that names something to import is unsafe; one that
            # trips over a byte it cannot read is damaged or not a checkpoint.
            what = f"global {found.group(1)!r}"
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
        raise _corrupt(path, exc, len(data)) from exc
    except Exception as exc:  # anything else the unpickler trips over: not a checkpoint
        raise _corrupt(path, exc, len(data)) from exc


_UNPICKLER_RE = re.compile(r"WeightsUnpickler error:\s*([^\n]+)")


def _corrupt(path: Path, exc: BaseException, size: int) -> CorruptCheckpointError:
    text = str(exc).strip()
    first = first_line(exc)
    found = _UNPICKLER_RE.search(text)
    if found:  # torch's advice about weights_only does not apply: say what broke
        first = f"unreadable pickle: {found.group(1).strip()}"
    reason = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    cut = (
        "central directory",
        "truncated",
        "EOF",
        "Ran out of input",
        "end of",
        "not fully covered",
        "incomplete",
    )
    if any(s in reason for s in cut):
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
    data = _read_once(p)
    sha = hashlib.sha256(data).hexdigest()  # the very bytes that are loaded
    if p.suffix == ".safetensors":
        return _load_safetensors(p, data, sha)
    obj = _load_pickle(p, data)
    if isinstance(obj, Mapping) and obj.get("format") == FORMAT_NAME:
        state = obj.get("state_dict")
        if not _is_state_dict(state):
            msg = f"checkpoint {str(p)!r} has a damaged state_dict; re-save it"
            raise CorruptCheckpointError(msg)
        meta = _read_meta(p, obj.get("meta") or {})
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


def _safetensors_header(p: Path, data: bytes) -> dict[str, str]:
    """The ``__metadata__`` table of a safetensors file's header, from its bytes."""
    if len(data) < 8:
        raise _corrupt(p, EOFError("truncated header"), len(data))
    n = int.from_bytes(data[:8], "little")
    if n > len(data) - 8:
        raise _corrupt(p, EOFError("truncated header"), len(data))
    try:
        header = json.loads(data[8 : 8 + n])
    except (ValueError, UnicodeDecodeError) as exc:
        raise _corrupt(p, exc, len(data)) from exc
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    return meta if isinstance(meta, dict) else {}


def _load_safetensors(p: Path, data: bytes, sha: str) -> Checkpoint:
    from safetensors.torch import load

    check_archive(p, data)
    header = _safetensors_header(p, data)
    try:
        state = load(data)
    except Exception as exc:  # safetensors raises its own SafetensorError
        raise _corrupt(p, exc, len(data)) from exc
    meta = CheckpointMeta()
    if _SAFETENSORS_META_KEY in header:
        try:
            raw = json.loads(header[_SAFETENSORS_META_KEY])
        except (json.JSONDecodeError, TypeError) as exc:
            msg = (
                f"checkpoint {str(p)!r} has unreadable sharpkit metadata (not JSON: "
                f"{exc}); re-save it"
            )
            raise CorruptCheckpointError(msg) from exc
        meta = _read_meta(p, raw)
    return Checkpoint(p, state, meta, sha, "safetensors")


def _read_meta(path: Path, raw: object) -> CheckpointMeta:
    """The checkpoint's metadata, or one line saying what is wrong with it."""
    try:
        return CheckpointMeta.from_dict(cast("Mapping[str, Any]", raw))
    except TypeError as exc:
        msg = (
            f"checkpoint {str(path)!r} has damaged metadata ({exc}); re-save it, or "
            "save its state_dict alone and name the architecture with "
            f"{arg('model_name', '--model')}"
        )
        raise CorruptCheckpointError(msg) from exc


def _listing(keys: list[str], limit: int = 3) -> str:
    shown = ", ".join(repr(k) for k in keys[:limit])
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return shown + more


def _check_kinds(
    model: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], source: str
) -> None:
    """Refuse integer, boolean or complex values for a floating parameter or buffer.

    ``load_state_dict`` would cast them silently (dropping an imaginary part):
    a float model is never saved that way, so such a file is not its weights.
    """
    import torch

    hollow = [
        k
        for k, t in state_dict.items()
        if t.layout != torch.strided or t.device.type == "meta"
    ]
    if hollow:
        t = state_dict[hollow[0]]
        what = "meta (no values)" if t.device.type == "meta" else str(t.layout)
        msg = (
            f"{source} holds {what} tensors ({_listing(hollow)}) where the model "
            "has dense weights; re-save them dense: "
            "{k: v.to_dense().cpu() for k, v in state_dict.items()}"
        )
        raise StateDictMismatchError(msg)
    own = model.state_dict()
    wrong = [
        k
        for k, t in own.items()
        if t.is_floating_point() and not state_dict[k].is_floating_point()
    ]
    if wrong:
        name = wrong[0]
        got = str(state_dict[name].dtype).removeprefix("torch.")
        want = str(own[name].dtype).removeprefix("torch.")
        more = f" (and {len(wrong) - 1} more)" if len(wrong) > 1 else ""
        msg = (
            f"{source} holds {got} values in {name!r}{more} where the model has "
            f"{want} ones; the file is not this model's weights (a float model "
            "is never saved as integers or complex numbers): re-save them"
        )
        raise StateDictMismatchError(msg)


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
    if not (missing or unexpected or mismatched):
        _check_kinds(model, state_dict, source)
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
