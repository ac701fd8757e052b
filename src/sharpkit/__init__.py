"""sharpkit: how sharp or flat is the minimum your model found?

Everything public is importable from here; other modules are private and may
change in any release (``sharpkit.hookspecs`` is the plugin reference and
``sharpkit.testing`` the conformance suite for plugin authors).
"""

from __future__ import annotations

from typing import Any

from sharpkit.api import (
    Measurement,
    build_model,
    interpolate,
    load_dataset,
    load_model,
    measure,
    open_results,
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
    DuplicateNameError,
    NumericalError,
    PluginContractError,
    PluginError,
    PluginLoadError,
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
)

__all__ = [  # noqa: RUF022 - grouped by purpose
    # analysis
    "measure",
    "Measurement",
    "train",
    "interpolate",
    "probe",
    "open_results",
    "build_model",
    "load_dataset",
    "load_model",
    "reuse_datasets",
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
    "DuplicateNameError",
    "NumericalError",
    "PluginContractError",
    "PluginError",
    "PluginLoadError",
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
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("sharpkit")
        except PackageNotFoundError:  # pragma: no cover - running from a source tree
            return "0.0.0+unknown"
    msg = f"module 'sharpkit' has no attribute {name!r}"
    raise AttributeError(msg)
