"""Options shared by several commands, as ``Annotated`` aliases (defined once).

The options of the analysis commands (``measure``, ``interpolate``, ``probe``)
that say where checkpoints and data come from and where results go are one
group, :class:`AnalysisOptions`, which a command takes as a single parameter.
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from sharpkit.errors import ConfigError

if TYPE_CHECKING:
    from sharpkit.api.job import Inputs

DEFAULT_STORE = Path("sharpkit-results.zarr")


class BNMode(StrEnum):
    """Batch-norm mode for analysis."""

    eval = "eval"
    train = "train"


class DType(StrEnum):
    """Floating dtype for analysis."""

    float32 = "float32"
    float64 = "float64"


def _names(kind: str) -> list[str]:
    try:
        from sharpkit.registry import get_registry

        return get_registry().names(kind)
    except Exception:  # completion must never fail loudly
        return []


def complete_metric(incomplete: str) -> list[str]:
    """Complete metric names from the registry."""
    return [n for n in _names("metric") if n.startswith(incomplete)]


def complete_model(incomplete: str) -> list[str]:
    """Complete model names from the registry."""
    return [n for n in _names("model") if n.startswith(incomplete)]


def complete_dataset(incomplete: str) -> list[str]:
    """Complete dataset names from the registry."""
    return [n for n in _names("dataset") if n.startswith(incomplete)]


def complete_probe(incomplete: str) -> list[str]:
    """Complete probe names from the registry."""
    return [n for n in _names("probe") if n.startswith(incomplete)]


JsonOpt = Annotated[
    bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")
]
MetricOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--metric",
        "-m",
        metavar="NAME",
        help="Metric to compute; repeat for several (default: spectral).",
        autocompletion=complete_metric,
    ),
]
ModelOpt = Annotated[
    str | None,
    typer.Option(
        "--model",
        help=(
            "Architecture of a bare state_dict checkpoint: a registered name, your "
            "package.module:Class or path/to/file.py:Class, or hf:PATH. Without a "
            "checkpoint: the model itself (hf:PATH, or code that loads its weights)."
        ),
        autocompletion=complete_model,
    ),
]
DataOpt = Annotated[
    str | None,
    typer.Option(
        "--data",
        "-d",
        help=(
            "Registered dataset, tensor file (.pt, .npz, .safetensors), image "
            "folder, or package.module:name (default: what the checkpoint names)."
        ),
        autocompletion=complete_dataset,
    ),
]
DataOptionOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--data-option",
        metavar="KEY=VALUE",
        help=(
            "Data option as key=value: inputs=/targets= keys of a tensor file; "
            "size=, mean=, std=, channels= of an image folder; num_classes=; "
            "arguments of a data function; repeatable."
        ),
    ),
]
LossOpt = Annotated[
    str | None,
    typer.Option(
        "--loss",
        help=(
            "cross-entropy (default), mse (mean over outputs too), bce-logits, "
            "nll, next-token / masked-token (language models: token targets, "
            "-100 ignored), or your own package.module:name / file.py:name (mean "
            "over the batch)."
        ),
        autocompletion=lambda incomplete: [
            n
            for n in (
                "cross-entropy",
                "mse",
                "bce-logits",
                "nll",
                "next-token",
                "masked-token",
            )
            if n.startswith(incomplete)
        ],
    ),
]
DataRootOpt = Annotated[
    Path | None,
    typer.Option(
        "--data-root",
        envvar="SHARPKIT_DATA",
        help="Directory searched first for dataset files.",
    ),
]
DownloadOpt = Annotated[
    bool,
    typer.Option("--download", help="Download missing dataset files (needs network)."),
]
StoreOpt = Annotated[
    Path,
    typer.Option("--store", help="Results store (zarr) to write to and reuse from."),
]
NoStoreOpt = Annotated[
    bool, typer.Option("--no-store", help="Do not read or write a results store.")
]
ForceOpt = Annotated[
    bool,
    typer.Option("--force", help="Recompute even what the store already holds."),
]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed for every random choice.")]
BatchSizeOpt = Annotated[
    int, typer.Option("--batch-size", help="Examples per forward pass.")
]
DeviceOpt = Annotated[
    str, typer.Option("--device", help="'cpu', 'cuda', 'cuda:N' or 'auto'.")
]
MemoryBudgetOpt = Annotated[
    str | None,
    typer.Option(
        "--memory-budget",
        metavar="SIZE",
        help="What sharpkit may keep between Hessian-vector products, e.g. 8GiB: "
        "half for the gradient graph, the rest for Lanczos vectors (default: a "
        "quarter of the RAM for the graph, bases unbounded).",
    ),
]
TF32Opt = Annotated[
    bool,
    typer.Option(
        "--tf32",
        help="Let float32 products use TF32 (GPU) / bf16 (oneDNN) kernels: "
        "faster, ~1e-3 relative error per product. Off: full precision.",
    ),
]
JobsOpt = Annotated[
    int, typer.Option("--jobs", "-j", help="Grid points run at once (processes).")
]
SweepDeviceOpt = Annotated[
    str | None,
    typer.Option(
        "--device",
        help="Train and measure every point on 'cpu', 'cuda', 'cuda:N' or 'auto' "
        "(default: the sweep file's, else cpu).",
    ),
]
SchedulerOpt = Annotated[
    str | None,
    typer.Option(
        "--scheduler",
        help="'dask' starts a Dask LocalCluster; tcp://HOST:PORT uses a running one.",
    ),
]
OptionOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--option",
        "-o",
        metavar="KEY=VALUE",
        help=(
            "Component option as key=value, or name.key=value to address one "
            "component (e.g. -o spectral.top_k=5); repeatable."
        ),
    ),
]


def parse_options(
    items: list[str] | None, components: list[str]
) -> dict[str, dict[str, str]]:
    """Split ``key=value`` / ``name.key=value`` items into per-component dicts.

    An unscoped ``key=value`` goes to every component in ``components``; the
    registry then rejects it for any component that has no such option unless at
    least one has it (see :func:`distribute_options`).
    """
    out: dict[str, dict[str, str]] = {c: {} for c in components}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            msg = f"option {item!r} must look like key=value or name.key=value"
            raise ConfigError(msg)
        scope, dot, name = key.rpartition(".")
        if dot:
            if scope not in out:
                msg = f"option {item!r} names {scope!r}, which is not selected"
                raise ConfigError(msg)
            out[scope][name] = value
        else:
            for c in components:
                out[c][key] = value
    return out


def distribute_options(
    items: list[str] | None, kind: str, components: list[str]
) -> dict[str, dict[str, str]]:
    """Like :func:`parse_options`, dropping unscoped options a component lacks.

    Raises:
        ConfigError: An unscoped option that no selected component accepts.
    """
    from sharpkit.registry import get_registry

    reg = get_registry()
    scoped = parse_options(items, components)
    unscoped = {
        item.partition("=")[0]
        for item in items or []
        if "." not in item.partition("=")[0]
    }
    for key in unscoped:
        owners = [c for c in components if reg.get(kind, c).option(key) is not None]
        if not owners:
            known = sorted(
                {o.name for c in components for o in reg.get(kind, c).options}
            )
            msg = f"no selected {kind} has an option {key!r}; their options: " + (
                ", ".join(known) or "none"
            )
            raise ConfigError(msg)
        for c in components:
            if c not in owners:
                scoped[c].pop(key, None)
    return scoped


ModelOptionOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--model-option",
        metavar="KEY=VALUE",
        help="Architecture option as key=value (with --model); repeatable.",
    ),
]


def parse_pairs(items: list[str] | None, what: str = "option") -> dict[str, str]:
    """Parse repeated ``key=value`` items into a dict.

    Raises:
        ConfigError: An item without ``=``.
    """
    out: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            msg = f"{what} {item!r} must look like key=value"
            raise ConfigError(msg)
        out[key] = value
    return out


@dataclass(frozen=True, kw_only=True)
class AnalysisOptions:
    """Where an analysis command's models and data come from, and where results go.

    A command takes the group as one keyword-only parameter, ``analysis``, and is
    wrapped in :func:`with_analysis_options`, which gives typer the fields below
    as ordinary options in its place.
    """

    data: DataOpt = None
    data_option: DataOptionOpt = None
    model: ModelOpt = None
    model_option: ModelOptionOpt = None
    loss: LossOpt = None
    seed: SeedOpt = 0
    device: DeviceOpt = "cpu"
    data_root: DataRootOpt = None
    download: DownloadOpt = False
    store: StoreOpt = DEFAULT_STORE
    no_store: NoStoreOpt = False
    force: ForceOpt = False

    def model_only(self) -> str | None:
        """The ``--model`` that is a whole model by itself (``hf:`` or code), if any.

        Such a model needs no checkpoint: an ``hf:`` folder holds its weights, and
        a factory in the user's code may load its own.
        """
        from sharpkit.api.models import is_code_model
        from sharpkit.api.sources import is_hf_spec
        from sharpkit.registry import get_registry

        m = self.model
        if m is None or not (is_hf_spec(m) or is_code_model(m, get_registry())):
            return None
        return m

    def inputs(self) -> Inputs:
        """The group as the API's one typed value (what ``sharpkit.measure`` takes).

        Raises:
            ConfigError: A ``--model-option`` or ``--data-option`` that is not
                ``key=value``.
        """
        from sharpkit.api.job import Inputs

        return Inputs(
            data=self.data,
            data_options=parse_pairs(self.data_option, "--data-option"),
            data_root=self.data_root,
            download=self.download,
            model_name=self.model,
            model_options=parse_pairs(self.model_option, "--model-option"),
            loss=self.loss,
            seed=self.seed,
            device=self.device,
            store=None if self.no_store else self.store,
            force=self.force,
        )

    def targets(self, given: Sequence[Path] | None) -> tuple[list[Path | str], Inputs]:
        """The models to analyse and the inputs: ``given``, else a whole ``--model``.

        With no checkpoint, a ``--model`` that is a model by itself (``hf:PATH``,
        or code that loads its weights) is the one model, and not also its
        architecture.
        """
        inputs = self.inputs()
        if given:
            return list(given), inputs
        alone = self.model_only()
        if alone is None:
            return [], inputs
        return [alone], dataclasses.replace(inputs, model_name=None)


def with_analysis_options(command: Callable[..., None]) -> Callable[..., None]:
    """Give typer the :class:`AnalysisOptions` fields in place of ``analysis``.

    typer reads a command's options from its signature, so the wrapper carries
    the command's signature with the ``analysis`` parameter replaced by the
    fields of the group, and builds the group from them when it is called
    (typer passes every parameter by keyword; tests/cli/test_options.py holds
    it to that).

    Raises:
        TypeError: ``command`` has no ``analysis`` parameter.
    """
    signature = inspect.signature(command, eval_str=True)
    if "analysis" not in signature.parameters:
        msg = f"{command.__name__} has no 'analysis' parameter to expand"
        raise TypeError(msg)
    hints = typing.get_type_hints(AnalysisOptions, include_extras=True)
    keyword = inspect.Parameter.KEYWORD_ONLY
    group = [
        inspect.Parameter(f.name, keyword, default=f.default, annotation=hints[f.name])
        for f in dataclasses.fields(AnalysisOptions)
    ]
    params: list[inspect.Parameter] = []
    for param in signature.parameters.values():
        params += group if param.name == "analysis" else [param.replace(kind=keyword)]

    def wrapper(**kwargs: Any) -> None:
        names = [f.name for f in dataclasses.fields(AnalysisOptions)]
        analysis = AnalysisOptions(**{name: kwargs.pop(name) for name in names})
        command(**kwargs, analysis=analysis)

    wrapper.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in params} | {"return": None}
    for attr in ("__module__", "__name__", "__qualname__", "__doc__"):
        setattr(wrapper, attr, getattr(command, attr))
    return wrapper


class Sample(StrEnum):
    """How the analysis set is chosen from its split."""

    first = "first"
    random = "random"


def samples_text(text: str | None) -> str | None:
    """Let typer refuse what is not a whole number or ``all`` (a usage error)."""
    if text is None or text.strip().lower() == "all":
        return text
    try:
        int(text)
    except ValueError:
        msg = f"{text!r} is not a whole number or 'all'"
        raise typer.BadParameter(msg) from None
    return text


SamplesOpt = Annotated[
    str | None,
    typer.Option(
        "--samples",
        metavar="N|all",
        parser=samples_text,
        help="Analysis-set size: N examples of the split (default 2048), or all "
        "of them (products stream over it within --memory-budget).",
    ),
]
SampleOpt = Annotated[
    Sample,
    typer.Option(
        "--sample",
        help="Which examples: first (the same for every model; default) or "
        "random (a class-stratified subset drawn from --seed).",
    ),
]
PrecisionOpt = Annotated[
    str | None,
    typer.Option(
        "--precision",
        metavar="REL",
        help="Wanted relative data error, e.g. 2% or 0.02: asks the metrics "
        "for it and measures again on the sample count that reaches it "
        "(stderr ∝ 1/√N); refused if that exceeds the split.",
    ),
]


def parse_samples(text: str | None) -> int | str | None:
    """``--samples``: a positive count, ``all``, or unset.

    Raises:
        ConfigError: Anything else.
    """
    if text is None:
        return None
    if text.strip().lower() == "all":
        return "all"
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        msg = f"--samples must be a positive count or 'all', got {text!r}"
        raise ConfigError(msg)
    return n


def parse_precision(text: str | None) -> float | None:
    """``--precision``: ``2%`` or ``0.02`` as a fraction in (0, 1), or unset.

    Raises:
        ConfigError: Not a number, or outside (0, 1).
    """
    if text is None:
        return None
    raw = text.strip()
    scale = 100.0 if raw.endswith("%") else 1.0
    try:
        value = float(raw.removesuffix("%")) / scale
    except ValueError:
        value = float("nan")
    if not 0 < value < 1:
        msg = f"--precision must be a relative error such as 2% or 0.02, got {text!r}"
        raise ConfigError(msg)
    return value
