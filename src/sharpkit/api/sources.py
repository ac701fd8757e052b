"""Models sharpkit did not build: the user's code, ``.pt2`` archives, ``hf:`` folders.

* ``package.module:name`` / ``path/to/file.py:name``: a class or factory in the
  user's own code (see :mod:`sharpkit.api.usercode`), called with the model
  options, and with ``input_shape``/``num_classes`` only where its signature
  takes them;
* ``model.pt2`` (from ``torch.export.save``): architecture and weights in one
  file, read without unpickling code;
* ``hf:PATH``: a Hugging Face ``transformers`` model saved with
  ``save_pretrained`` in a local folder (no network, no code from the folder).
"""

from __future__ import annotations

import hashlib
import os
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sharpkit._hints import arg
from sharpkit._seed import seeded
from sharpkit.api.usercode import call_with, load_object, source_sha256
from sharpkit.checkpoint import (
    Checkpoint,
    CheckpointMeta,
    check_archive,
    file_sha256,
)
from sharpkit.errors import (
    CheckpointNotFoundError,
    ConfigError,
    CorruptCheckpointError,
    UnsafeCheckpointError,
    first_line,
)

if TYPE_CHECKING:
    import torch

    from sharpkit.api.wrappers import ExportedModel

__all__ = [
    "EXPORT_SUFFIX",
    "HF_PREFIX",
    "build_code_model",
    "is_hf_spec",
    "load_exported",
    "load_hf",
]

EXPORT_SUFFIX = ".pt2"
HF_PREFIX = "hf:"

MODEL_FLAG = ("model_name", "--model")
OPTIONS_FLAG = ("model_options", "--model-option")


def is_hf_spec(text: object) -> bool:
    """Whether ``text`` is ``hf:PATH``."""
    return isinstance(text, str) and text.startswith(HF_PREFIX)


# ------------------------------------------------------------------- user code


def build_code_model(
    spec: str,
    *,
    input_shape: Sequence[int] | None,
    num_classes: int | None,
    options: Mapping[str, Any] | None,
    seed: int | None = 0,
) -> tuple[torch.nn.Module, str | None]:
    """Build the model a code spec names.

    Args:
        spec: ``package.module:name`` or ``path/to/file.py:name``.
        input_shape: Shape of one input (passed if the signature takes it).
        num_classes: Number of outputs (passed if the signature takes it).
        options: Keyword arguments from the user (strings are converted by the
            signature).
        seed: Seed the initialisation (``None``: the global RNG as it is).

    Returns:
        The model and the sha256 of the file that defines it.

    Raises:
        ConfigError: The code cannot be imported, does not take the options, or
            does not return a ``torch.nn.Module``.
    """
    import torch

    target, _ = load_object(spec, flag=MODEL_FLAG)
    supplied = {
        "input_shape": tuple(int(d) for d in input_shape)
        if input_shape is not None
        else None,
        "num_classes": int(num_classes) if num_classes is not None else None,
    }
    what = f"model {spec}"
    if isinstance(target, torch.nn.Module):
        if options:
            msg = f"{spec} is a module instance and takes no options; drop them"
            raise ConfigError(msg)
        net: Any = target
    elif callable(target):
        with seeded(seed) if seed is not None else _nothing():
            net = call_with(
                target, options or {}, supplied, what=what, flag=OPTIONS_FLAG
            )
    else:
        msg = (
            f"{spec} is a {type(target).__name__}; name a torch.nn.Module class "
            "or a function that returns one"
        )
        raise ConfigError(msg)
    if not isinstance(net, torch.nn.Module):
        msg = (
            f"{spec} returned a {type(net).__name__}, not a torch.nn.Module; name "
            "the model's class or a function that builds it"
        )
        raise ConfigError(msg)
    return net, source_sha256(target)


@contextmanager
def _nothing() -> Iterator[None]:
    yield


# ---------------------------------------------------------------- torch.export


@contextmanager
def _weights_only_loads() -> Iterator[None]:
    """Make every ``torch.load`` inside the block ``weights_only=True``.

    ``torch.export.load`` retries a failed weights-only read of a pickled part
    with ``weights_only=False``; torch honours this variable over that argument.
    """
    key = "TORCH_FORCE_WEIGHTS_ONLY_LOAD"
    old = os.environ.get(key)
    os.environ[key] = "1"
    try:
        yield
    finally:
        if old is None:
            del os.environ[key]
        else:
            os.environ[key] = old


@contextmanager
def _quiet_torch() -> Iterator[None]:
    """Keep torch's own warnings and log records (a traceback, at times) off stderr.

    A damaged archive makes ``torch.export.load`` log the exception it then
    raises, and ``torch.load`` warn about the pickle protocol of bytes that are
    no pickle: the one line sharpkit prints says it all.
    """
    import logging
    import warnings

    logger = logging.getLogger("torch")
    level = logger.level
    logger.setLevel(logging.CRITICAL + 1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _check_pickles(path: Path) -> None:
    """Refuse an archive whose pickled parts hold anything but tensors and data."""
    import io

    import torch

    with zipfile.ZipFile(path) as archive:
        raw = _raw_payloads(archive)
        for info in archive.infolist():
            if info.filename in raw:
                continue  # bytes of a tensor, whatever their first byte
            blob = archive.read(info)
            if not (blob.startswith(b"PK\x03\x04") or blob[:1] == b"\x80"):
                continue  # JSON, raw weights, version strings
            try:
                with _quiet_torch():
                    torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
            except Exception as exc:
                first = first_line(exc)
                msg = (
                    f"{str(path)!r} holds a pickle ({info.filename}) that would load "
                    f"more than tensors ({first[:120]}); it was not loaded. Export the "
                    "model without custom objects, or save a state_dict and pass "
                    f"{arg('model_name', '--model', 'module:Class')}"
                )
                raise UnsafeCheckpointError(msg) from exc


def _raw_payloads(archive: zipfile.ZipFile) -> set[str]:
    """The entries a pt2 archive's weight and constant configs say are raw bytes.

    A raw float32 weight starts with ``0x80`` one time in 256, as a pickle
    does; torch reads these as bytes (``use_pickle: false``), never unpickles
    them, so they are not pickles to check.
    """
    import json

    raw: set[str] = set()
    pickled: set[str] = set()  # named so by any config: checked, whatever another says
    for name in archive.namelist():
        parent, _, base = name.rpartition("/")
        if not base.endswith("_config.json") or not parent.endswith(
            ("data/weights", "data/constants")
        ):
            continue
        try:
            config = json.loads(archive.read(name)).get("config", {})
        except (ValueError, AttributeError):
            continue  # not one torch wrote: its entries are checked as pickles
        if not isinstance(config, dict):
            continue
        for entry in config.values():
            if isinstance(entry, dict) and isinstance(entry.get("path_name"), str):
                key = f"{parent}/{entry['path_name']}"
                (raw if entry.get("use_pickle") is False else pickled).add(key)
    return raw - pickled


def load_exported(path: str | os.PathLike[str]) -> tuple[ExportedModel, Checkpoint]:
    """Load a ``torch.export`` archive (``.pt2``) as a module, without unpickling code.

    Returns:
        The program wrapped as :class:`~sharpkit.api.wrappers.ExportedModel`
        and a :class:`~sharpkit.Checkpoint` describing the file (format
        ``"torch-export"``).

    Raises:
        CheckpointNotFoundError: No such file.
        UnsafeCheckpointError: A pickled part would load more than tensors.
        CorruptCheckpointError: Not an exported program, or one that takes
            other than one tensor.
    """
    import torch

    from sharpkit.api.wrappers import ExportedModel

    p = Path(path)
    if not p.is_file():
        msg = f"exported program {str(p)!r} not found; check the path"
        raise CheckpointNotFoundError(msg)
    if not zipfile.is_zipfile(p):
        msg = (
            f"{str(p)!r} is not a torch.export archive; save one with "
            "torch.export.save(torch.export.export(model.eval(), (x,)), path)"
        )
        raise CorruptCheckpointError(msg)
    check_archive(p, what="exported program")  # before torch inflates anything
    _check_pickles(p)
    try:
        with _weights_only_loads(), _quiet_torch():
            program = torch.export.load(str(p))
    except UnsafeCheckpointError:
        raise
    except Exception as exc:
        first = first_line(exc)
        msg = (
            f"cannot load the exported program {str(p)!r} ({type(exc).__name__}: "
            f"{first[:160]}); re-export it with this version of torch "
            f"({torch.__version__})"
        )
        raise CorruptCheckpointError(msg) from exc
    shape, batch, dtype = _traced_input(program, p)
    net = ExportedModel(
        program.module(),
        source=str(p),
        input_shape=shape,
        batch=batch,
        input_dtype=dtype,
        training_ops=_training_ops(program),
    )
    state = {k: v.detach() for k, v in net.state_dict().items()}
    meta = CheckpointMeta(
        model=f"torch.export:{p.name}",
        extra={"input_shape": [d if d is not None else -1 for d in shape]},
    )
    return net, Checkpoint(p, state, meta, file_sha256(p), "torch-export")


def _traced_input(
    program: Any, path: Path
) -> tuple[tuple[int | None, ...], int | None, torch.dtype]:
    """Per-example shape, batch size (``None``: dynamic) and dtype of the input."""
    import torch

    user_inputs = list(program.graph_signature.user_inputs)
    vals = [
        n.meta.get("val")
        for n in program.graph.nodes
        if n.op == "placeholder" and n.name in user_inputs
    ]
    if len(vals) != 1 or not isinstance(vals[0], torch.Tensor) or vals[0].ndim < 1:
        msg = (
            f"the exported program {str(path)!r} takes {len(user_inputs)} inputs; "
            "sharpkit passes one batch tensor, so export model(x) with one input"
        )
        raise CorruptCheckpointError(msg)
    shape: list[Any] = list(vals[0].shape)  # SymInt where a size is dynamic
    dims = [d if type(d) is int else None for d in shape]
    return tuple(dims[1:]), dims[0], vals[0].dtype


def _training_ops(program: Any) -> tuple[str, ...]:
    """The graph's operations that behave as in training (batch stats, dropout)."""
    found: list[str] = []
    for node in program.graph.nodes:
        if node.op != "call_function":
            continue
        target = str(node.target)
        args = list(node.args)
        if "batch_norm" in target:
            training = "no_training" not in target and (
                "functional" in target or (len(args) > 5 and args[5] is True)
            )
        elif "dropout" in target:
            training = "native_dropout" in target or (len(args) > 2 and args[2] is True)
        else:
            continue
        if training and target not in found:
            found.append(target)
    return tuple(found)


# ---------------------------------------------------------------- Hugging Face


def _hf_folder(spec: str) -> Path:
    folder = Path(spec[len(HF_PREFIX) :]).expanduser()
    if not (folder / "config.json").is_file():
        what = "has no config.json" if folder.is_dir() else "is not a folder"
        msg = (
            f"{str(folder)!r} {what}; {HF_PREFIX}PATH names a folder written by "
            "model.save_pretrained(PATH)"
        )
        raise ConfigError(msg)
    return folder


def _folder_sha256(folder: Path) -> str:
    digest = hashlib.sha256()
    for f in sorted(folder.iterdir()):
        if f.is_file() and f.suffix in (".json", ".safetensors", ".bin"):
            digest.update(f.name.encode())
            digest.update(file_sha256(f).encode())
    return digest.hexdigest()


def load_hf(spec: str) -> tuple[torch.nn.Module, Checkpoint]:
    """Load ``hf:PATH``: a local ``save_pretrained`` folder of a classification model.

    The class is the one ``config.json`` names (``BertForSequenceClassification``,
    ``ViTForImageClassification``, ...), from ``transformers`` itself: code in
    the folder is never run (``trust_remote_code=False``), nothing is downloaded
    (``local_files_only=True``), weights are read as safetensors or with
    ``weights_only=True``. Attention is the eager implementation, the one whose
    second derivatives exist (PyTorch's fused attention kernels have none).

    Returns:
        The model wrapped as :class:`~sharpkit.api.wrappers.HFClassifier` (in
        eval mode) and a :class:`~sharpkit.Checkpoint` describing the folder
        (format ``"hf"``).

    Raises:
        ConfigError: ``transformers`` is missing, the folder is not a saved
            model, or its architecture is not in ``transformers``.
    """
    folder = _hf_folder(spec)
    try:
        import transformers
    except ImportError as exc:
        msg = (
            f"{spec} needs the transformers package; install it with "
            "pip install 'sharpkit[hf]'"
        )
        raise ConfigError(msg) from exc
    from sharpkit.api.wrappers import HFClassifier

    logs: Any = transformers.utils.logging  # untyped
    verbosity = logs.get_verbosity()
    bars = logs.is_progress_bar_enabled()
    logs.set_verbosity_error()
    logs.disable_progress_bar()
    try:
        config = transformers.AutoConfig.from_pretrained(
            str(folder), local_files_only=True, trust_remote_code=False
        )
        names = list(getattr(config, "architectures", None) or [])
        cls = getattr(transformers, names[0], None) if names else None
        if cls is None:
            msg = (
                f"{str(folder / 'config.json')!r} names no transformers architecture "
                f"({names or 'none'}); save the model with save_pretrained"
            )
            raise ConfigError(msg)
        model = cls.from_pretrained(
            str(folder),
            local_files_only=True,
            trust_remote_code=False,
            weights_only=True,
            attn_implementation="eager",
        )
    except ConfigError:
        raise
    except Exception as exc:
        first = first_line(exc)
        msg = f"cannot load {spec} ({type(exc).__name__}: {first[:160]}); re-save it"
        raise ConfigError(msg) from exc
    finally:
        logs.set_verbosity(verbosity)
        if bars:
            logs.enable_progress_bar()
    model.eval()
    net = HFClassifier(model)
    net.eval()
    state = {k: v.detach() for k, v in net.state_dict().items()}
    meta = CheckpointMeta(
        model=f"{HF_PREFIX}{folder.resolve()}",
        extra={"architecture": names[0], "num_classes": int(config.num_labels)},
    )
    return net, Checkpoint(folder.resolve(), state, meta, _folder_sha256(folder), "hf")
