"""The user's own code, named by ``package.module:name`` or ``path/to/file.py:name``.

A *code spec* names a class, function or object in the caller's code:
``mypkg.nets:SmallCNN`` imports ``mypkg.nets`` (from the current directory
first, as ``python -c "import mypkg.nets"`` would) and takes ``SmallCNN`` from
it; ``path/to/train.py:SmallCNN`` runs that file as a module (its folder is
put on ``sys.path`` so that it can import its neighbours). The name after the
colon may be dotted (``mypkg.nets:Registry.small``).

Code is imported only because the caller named it (an argument or a flag),
never because a checkpoint or a results store says so. :func:`call_with` calls
what was named with the options the user gave, as strings from the command line
or values from Python, converted by the signature.
"""

from __future__ import annotations

import ast
import difflib
import hashlib
import importlib
import importlib.util
import inspect
import os
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sharpkit._fs import is_interrupt
from sharpkit._hints import arg, option_hint, traceback_hint
from sharpkit.errors import ConfigError, first_line

__all__ = [
    "CodeSpec",
    "call_with",
    "is_code_spec",
    "load_object",
    "parse_code_spec",
    "parse_value",
    "source_sha256",
]

_DOTTED = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


@dataclass(frozen=True)
class CodeSpec:
    """A parsed code spec.

    Attributes:
        text: The spec as given.
        module: The dotted module name (``None`` for a file).
        path: The ``.py`` file (``None`` for a module).
        attr: The (possibly dotted) name inside it.
    """

    text: str
    module: str | None
    path: Path | None
    attr: str


def parse_code_spec(text: str) -> CodeSpec | None:
    """Return the spec ``text`` names, or ``None`` if it is not a code spec.

    Examples:
        >>> parse_code_spec("mypkg.nets:SmallCNN").module
        'mypkg.nets'
        >>> parse_code_spec("models/cnn.py:make").path.name
        'cnn.py'
        >>> parse_code_spec("mlp-bn") is None, parse_code_spec("timm:resnet18") is None
        (True, False)
    """
    where, sep, attr = text.rpartition(":")
    if not sep or not where or not _DOTTED.match(attr):
        return None
    if where.endswith(".py"):
        return CodeSpec(text, None, Path(where), attr)
    if _DOTTED.match(where):
        return CodeSpec(text, where, None, attr)
    return None


def is_code_spec(text: str, prefixes: tuple[str, ...] = ()) -> bool:
    """Whether ``text`` is a code spec, not a registered ``<prefix>:<variant>``.

    Args:
        text: What the user typed.
        prefixes: Registered prefix names (``timm``), whose ``timm:resnet18`` is
            a registered model and not the module ``timm``'s attribute.
    """
    spec = parse_code_spec(text)
    if spec is None:
        return False
    return spec.module is None or spec.module not in prefixes


def _import_module(spec: CodeSpec, flag: str) -> Any:
    if spec.path is not None:
        return _import_file(spec, flag)
    assert spec.module is not None
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        # `sharpkit` is a console script: unlike `python -m`, it does not put
        # the current directory on sys.path, where the user's module usually is.
        sys.path.insert(0, cwd)
    try:
        return importlib.import_module(spec.module)
    except ModuleNotFoundError as exc:
        if exc.name is not None and spec.module.startswith(exc.name):
            msg = (
                f"cannot import {spec.module!r} for {flag}: no module "
                f"named {exc.name!r} in {cwd} or on the Python path; run from the "
                "folder that holds it, install its package, or name the file as "
                f"path/to/file.py:{spec.attr}"
            )
            raise ConfigError(msg) from exc
        raise _import_failed(spec, flag, exc) from exc
    except BaseException as exc:  # the user's module raised while importing
        if is_interrupt(exc):
            raise
        raise _import_failed(spec, flag, exc) from exc


def _import_file(spec: CodeSpec, flag: str) -> Any:
    assert spec.path is not None
    path = spec.path.expanduser().resolve()
    if not path.is_file():
        msg = f"file {str(spec.path)!r} in {flag} not found; check the path"
        raise ConfigError(msg)
    digest = hashlib.sha256(str(path).encode()).hexdigest()[:12]
    name = f"sharpkit_user_{re.sub(r'[^A-Za-z0-9_]', '_', path.stem)}_{digest}"
    if name in sys.modules:
        return sys.modules[name]
    folder = str(path.parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)  # as `python file.py` would: imports neighbours
    loader_spec = importlib.util.spec_from_file_location(name, path)
    if loader_spec is None or loader_spec.loader is None:
        msg = f"cannot load {str(path)!r} as Python code; name a .py file"
        raise ConfigError(msg)
    module = importlib.util.module_from_spec(loader_spec)
    sys.modules[name] = module  # dataclasses and pickling look modules up here
    try:
        loader_spec.loader.exec_module(module)
    except BaseException as exc:  # sys.exit() at import too: one line
        del sys.modules[name]
        if is_interrupt(exc):
            raise
        raise _import_failed(spec, flag, exc) from exc
    return module


def _import_failed(spec: CodeSpec, flag: str, exc: BaseException) -> ConfigError:
    first = first_line(exc)
    where = spec.path if spec.path is not None else spec.module
    return ConfigError(
        f"importing {str(where)!r} for {flag} failed with "
        f"{type(exc).__name__}: {first}; fix that code{traceback_hint()}"
    )


def load_object(
    text: str, *, flag: tuple[str, str] = ("model_name", "--model")
) -> tuple[Any, CodeSpec]:
    """Import the object a code spec names.

    Args:
        text: ``package.module:name`` or ``path/to/file.py:name``.
        flag: The Python argument and the CLI flag it came from (for messages).

    Returns:
        The object and the parsed spec.

    Raises:
        ConfigError: Not a code spec, the module or file cannot be imported, or
            it has no such name.
    """
    spec = parse_code_spec(text)
    named = arg(flag[0], flag[1], text)
    if spec is None:
        msg = f"{text!r} is not package.module:name or path/to/file.py:name"
        raise ConfigError(msg)
    module = _import_module(spec, named)
    obj: Any = module
    for i, part in enumerate(spec.attr.split(".")):
        if not hasattr(obj, part):
            owner = ".".join(spec.attr.split(".")[:i]) or str(
                spec.path if spec.path is not None else spec.module
            )
            public = [n for n in dir(obj) if not n.startswith("_")]
            close = difflib.get_close_matches(part, public, n=3)
            hint = (
                "did you mean " + " or ".join(repr(c) for c in close) + "?"
                if close
                else "check the name after the colon"
            )
            msg = f"{owner!r} has no {part!r} (from {spec.text}); {hint}"
            raise ConfigError(msg)
        obj = getattr(obj, part)
    return obj, spec


def source_sha256(obj: Any) -> str | None:
    """The sha256 of the file that defines ``obj`` (``None`` if it has none).

    Part of the reuse key of results computed with user code: editing the code
    makes sharpkit compute afresh rather than reuse a stale result.
    """
    try:
        target = obj if inspect.isclass(obj) or callable(obj) else type(obj)
        where = inspect.getsourcefile(inspect.unwrap(target))
    except (TypeError, OSError):
        return None
    if where is None or not os.path.isfile(where):
        return None
    with open(where, "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()


def parse_value(text: str, param: inspect.Parameter | None) -> Any:
    """Convert a command-line string to what ``param`` expects.

    The annotation (or the default's type) decides for ``int``, ``float``,
    ``bool`` and ``str``; otherwise a Python literal (``3``, ``0.5``, ``(1, 28,
    28)``, ``None``) becomes that value and anything else stays a string.
    """
    kind = _declared_type(param)
    if kind is str:
        return text
    if kind is bool:
        low = text.lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        name = param.name if param else "?"
        msg = f"option {name!r} expects true or false, got {text!r}"
        raise ConfigError(msg)
    if kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            name = param.name if param else "?"
            msg = f"option {name!r} expects {kind.__name__}, got {text!r}"
            raise ConfigError(msg) from None
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _declared_type(param: inspect.Parameter | None) -> type | None:
    if param is None:
        return None
    ann = param.annotation
    if isinstance(ann, str):
        ann = {"int": int, "float": float, "bool": bool, "str": str}.get(ann)
    if ann in (int, float, bool, str):
        return ann  # type: ignore[no-any-return]
    default = param.default
    if default is not inspect.Parameter.empty and default is not None:
        for kind in (bool, int, float, str):
            if type(default) is kind:
                return kind
    return None


def call_with(
    target: Callable[..., Any],
    options: Mapping[str, Any],
    supplied: Mapping[str, Any],
    *,
    what: str,
    flag: tuple[str, str],
) -> Any:
    """Call ``target`` with the user's ``options`` and what sharpkit ``supplied``.

    An option given as a string (from the command line) is converted by
    :func:`parse_value`; other values pass as they are. An entry of
    ``supplied`` (``input_shape``, ``num_classes``, ...) is passed only where the
    signature names it; one the signature needs but sharpkit cannot supply is
    an error.

    Args:
        target: The class or function.
        options: The user's options.
        supplied: Values sharpkit can pass, by parameter name (``None``: unknown).
        what: What ``target`` is, for messages (``"model mypkg.nets:Net"``).
        flag: The Python argument and CLI flag that carry the options.

    Raises:
        ConfigError: An option the signature does not take, or a required
            parameter nobody gives.
    """
    try:
        sig: inspect.Signature | None = inspect.signature(target)
    except (TypeError, ValueError):  # builtins without a signature
        sig = None
    params = dict(sig.parameters) if sig is not None else {}
    takes_kwargs = sig is None or any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()
    )
    kwargs: dict[str, Any] = {}
    for key, value in options.items():
        if key not in params and not takes_kwargs:
            close = difflib.get_close_matches(key, list(params), n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            listing = ", ".join(params) or "none"
            msg = f"{what} takes no option {key!r}; {hint}its parameters: {listing}"
            raise ConfigError(msg)
        kwargs[key] = (
            parse_value(value, params.get(key)) if isinstance(value, str) else value
        )
    for key, value in supplied.items():
        if key in kwargs or key not in params:
            continue
        if value is None:
            if params[key].default is inspect.Parameter.empty:
                msg = (
                    f"{what} needs {key!r} and sharpkit cannot tell it from the data; "
                    f"pass {option_hint(flag, key)}"
                )
                raise ConfigError(msg)
            continue
        kwargs[key] = value
    for name, p in params.items():
        required = p.default is inspect.Parameter.empty and p.kind in (
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
            inspect.Parameter.KEYWORD_ONLY,
        )
        if required and name not in kwargs:
            msg = f"{what} needs {name!r}; pass {option_hint(flag, name)}"
            raise ConfigError(msg)
    try:
        return target(**kwargs)
    except BaseException as exc:  # the user's constructor or factory raised
        if is_interrupt(exc):
            raise
        first = first_line(exc)
        shown = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
        msg = (
            f"{what} raised {type(exc).__name__} when called with ({shown}): "
            f"{first}; check its options{traceback_hint()}"
        )
        raise ConfigError(msg) from exc
