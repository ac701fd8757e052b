"""sharpkit: how sharp or flat is the minimum your model found?

Everything public is importable from here, and only from here: the names in
``__all__`` are the API that semantic versioning protects. Three modules are
public as a whole: ``sharpkit.hookspecs`` (the plugin hooks),
``sharpkit.testing`` (the conformance suites for plugin authors) and
``sharpkit.lightning`` (the PyTorch Lightning callback, an optional extra that
``import sharpkit`` never loads). Every other module is internal and may change
in any release, whatever its name.

The curvature engine, the results store, sweeps and figures load on first use
(``sharpkit.HessianOperator`` imports torch), so ``import sharpkit`` stays fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from sharpkit._data import evaluate
from sharpkit._hints import arg as arg_hint
from sharpkit._seed import derived_seed
from sharpkit._seed import generator as seeded_generator
from sharpkit._tensors import same_bits
from sharpkit.api import (
    Measurement,
    Tracker,
    build_model,
    interpolate,
    load_dataset,
    load_model,
    measure,
    probe,
    reuse_datasets,
    train,
)
from sharpkit.checkpoint import (
    Checkpoint,
    CheckpointMeta,
    load_checkpoint,
    save_checkpoint,
)
from sharpkit.errors import (
    CheckpointError,
    CheckpointNotFoundError,
    ConfigError,
    ConvergenceWarning,
    CorruptCheckpointError,
    DataError,
    DistributedError,
    DuplicateNameError,
    MeasurementError,
    NumericalError,
    PluginContractError,
    PluginError,
    PluginLoadError,
    PluginRunError,
    PluginWarning,
    RunNotFoundError,
    SharpkitDeprecationWarning,
    SharpkitError,
    SharpkitWarning,
    StateDictMismatchError,
    StoreError,
    UnknownNameError,
    UnsafeCheckpointError,
)
from sharpkit.hookspecs import hookimpl
from sharpkit.interfaces import (
    AnalysisContext,
    Dataset,
    DatasetSpec,
    DataSplit,
    Metric,
    MetricResult,
    MetricSpec,
    ModelSpec,
    Option,
    Probe,
    ProbeContext,
    ProbeResult,
    ProbeSpec,
    ProgressCallback,
    TrainConfig,
    Trainer,
    TrainerSpec,
    TrainResult,
    no_progress,
)

if TYPE_CHECKING:
    from sharpkit.correlation import Correlation, Interval, correlate
    from sharpkit.curvature import (
        Deflation,
        DensityEstimate,
        Estimate,
        HessianOperator,
        LanczosProcess,
        LanczosResult,
        PowerResult,
        analysis_mode,
        dense_hessian,
        frobenius_norm,
        hutchinson_trace,
        hutchpp_trace,
        lanczos,
        power_iteration,
        slq_density,
        smooth_density,
    )
    from sharpkit.curvature.blocks import (
        Block,
        BlockPartition,
        resolve_blocks,
        select_block,
    )
    from sharpkit.curvature.lanczos import ritz_bounds
    from sharpkit.curvature.sampling import (
        ChunkedHessian,
        ChunkRecorder,
        DataEstimate,
        jackknife,
        linear_estimate,
    )
    from sharpkit.curvature.uncertainty import (
        exact_trace_estimate,
        example_estimate,
        example_rayleigh,
        frobenius_estimate,
        spectral_estimate,
        tail_index,
        tail_limit,
        trace_estimate,
    )
    from sharpkit.plotting import build_figure, plot_figure
    from sharpkit.reproduce import experiment
    from sharpkit.store import ResultStore, Run, RunInfo, open_results
    from sharpkit.sweep import SweepConfig, SweepResult, load_sweep, run_sweep

# Public names whose modules are imported on first access (torch, zarr, matplotlib).
_LAZY = {
    **dict.fromkeys(
        (
            "Deflation",
            "DensityEstimate",
            "Estimate",
            "HessianOperator",
            "LanczosProcess",
            "LanczosResult",
            "PowerResult",
            "analysis_mode",
            "dense_hessian",
            "frobenius_norm",
            "hutchinson_trace",
            "hutchpp_trace",
            "lanczos",
            "power_iteration",
            "slq_density",
            "smooth_density",
        ),
        "sharpkit.curvature",
    ),
    "ritz_bounds": "sharpkit.curvature.lanczos",
    **dict.fromkeys(
        ("Block", "BlockPartition", "resolve_blocks", "select_block"),
        "sharpkit.curvature.blocks",
    ),
    **dict.fromkeys(
        (
            "ChunkedHessian",
            "ChunkRecorder",
            "DataEstimate",
            "jackknife",
            "linear_estimate",
        ),
        "sharpkit.curvature.sampling",
    ),
    **dict.fromkeys(
        (
            "exact_trace_estimate",
            "example_estimate",
            "example_rayleigh",
            "frobenius_estimate",
            "spectral_estimate",
            "tail_index",
            "tail_limit",
            "trace_estimate",
        ),
        "sharpkit.curvature.uncertainty",
    ),
    **dict.fromkeys(
        ("ResultStore", "Run", "RunInfo", "open_results"), "sharpkit.store"
    ),
    **dict.fromkeys(
        ("SweepConfig", "SweepResult", "load_sweep", "run_sweep"), "sharpkit.sweep"
    ),
    **dict.fromkeys(("build_figure", "plot_figure"), "sharpkit.plotting"),
    **dict.fromkeys(("correlate", "Correlation", "Interval"), "sharpkit.correlation"),
    "experiment": "sharpkit.reproduce",
}

__all__ = [  # noqa: RUF022 - grouped by purpose; the reference page follows it
    # analysis
    "measure",
    "Measurement",
    "train",
    "Tracker",
    "interpolate",
    "probe",
    "build_model",
    "load_dataset",
    "load_model",
    "reuse_datasets",
    # results store
    "open_results",
    "ResultStore",
    "Run",
    "RunInfo",
    # sweeps and the paper's experiments
    "load_sweep",
    "run_sweep",
    "SweepConfig",
    "SweepResult",
    "experiment",
    # does sharpness predict generalization?
    "correlate",
    "Correlation",
    "Interval",
    # figures
    "plot_figure",
    "build_figure",
    # curvature engine
    "HessianOperator",
    "analysis_mode",
    "lanczos",
    "LanczosResult",
    "LanczosProcess",
    "ritz_bounds",
    "power_iteration",
    "PowerResult",
    "hutchinson_trace",
    "hutchpp_trace",
    "frobenius_norm",
    "slq_density",
    "smooth_density",
    "Deflation",
    "Estimate",
    "DensityEstimate",
    "dense_hessian",
    # curvature per block
    "resolve_blocks",
    "select_block",
    "BlockPartition",
    "Block",
    # the data's uncertainty
    "ChunkedHessian",
    "ChunkRecorder",
    "DataEstimate",
    "spectral_estimate",
    "example_estimate",
    "example_rayleigh",
    "tail_index",
    "tail_limit",
    "exact_trace_estimate",
    "frobenius_estimate",
    "trace_estimate",
    "linear_estimate",
    "jackknife",
    # plugin contract
    "hookimpl",
    "AnalysisContext",
    "DataSplit",
    "Dataset",
    "DatasetSpec",
    "Metric",
    "MetricResult",
    "MetricSpec",
    "ModelSpec",
    "Option",
    "Probe",
    "ProbeContext",
    "ProbeResult",
    "ProbeSpec",
    "ProgressCallback",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "TrainerSpec",
    # helpers for plugins
    "evaluate",
    "seeded_generator",
    "derived_seed",
    "same_bits",
    "no_progress",
    "arg_hint",
    # checkpoints
    "Checkpoint",
    "CheckpointMeta",
    "load_checkpoint",
    "save_checkpoint",
    # errors and warnings
    "CheckpointError",
    "CheckpointNotFoundError",
    "ConfigError",
    "ConvergenceWarning",
    "CorruptCheckpointError",
    "DataError",
    "DistributedError",
    "DuplicateNameError",
    "MeasurementError",
    "NumericalError",
    "PluginContractError",
    "PluginError",
    "PluginLoadError",
    "PluginRunError",
    "PluginWarning",
    "RunNotFoundError",
    "SharpkitDeprecationWarning",
    "SharpkitError",
    "SharpkitWarning",
    "StateDictMismatchError",
    "StoreError",
    "UnknownNameError",
    "UnsafeCheckpointError",
    "__version__",
]


def __getattr__(name: str) -> Any:
    if name == "__version__":
        from sharpkit._meta import version

        return version()
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # later lookups skip this function
        return value
    msg = f"module 'sharpkit' has no attribute {name!r}"
    raise AttributeError(msg)


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY, "__version__"})
