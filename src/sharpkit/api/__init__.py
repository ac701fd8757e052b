"""The functions behind ``sharpkit.*`` and the CLI (import them from ``sharpkit``).

The CLI is a thin layer over these: every command parses its arguments, calls one
of these functions, and renders what it returns. Scripts call the same functions
(``sharpkit.measure``, ``sharpkit.train``, ``sharpkit.interpolate``, ...).

One module per job: :mod:`~sharpkit.api.resolve` turns names into models and
data, :mod:`~sharpkit.api.measure`, :mod:`~sharpkit.api.train`,
:mod:`~sharpkit.api.track` and :mod:`~sharpkit.api.probe` do the work,
:mod:`~sharpkit.api.provenance` says what a stored run records and which
results may be reused.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from sharpkit.api.measure import Measurement, measure
from sharpkit.api.probe import interpolate, probe
from sharpkit.api.resolve import build_model, load_dataset, load_model, reuse_datasets
from sharpkit.api.track import Tracker
from sharpkit.api.train import train

__all__ = [
    "Measurement",
    "Tracker",
    "build_model",
    "interpolate",
    "load_dataset",
    "load_model",
    "measure",
    "open_results",
    "probe",
    "reuse_datasets",
    "train",
]


def open_results(
    path: str | os.PathLike[str],
    *,
    filter: Mapping[str, Any] | Sequence[str] | None = None,
    kind: str | None = None,
    as_frame: bool | None = None,
) -> Any:
    """Open a results store as a tidy table: one row per run × metric.

    Columns include ``run_id``, ``model``, ``dataset``, ``lr`` (η),
    ``batch_size`` (S), ``lr_over_batch`` (η/S), ``seed``, ``metric``, ``value``,
    ``stderr`` and ``bound``; see the store documentation for the full list.

    Args:
        path: The store (a ``.zarr`` directory).
        filter: Keep rows whose columns equal these values
            (``{"metric": "spectral"}``), or conditions such as
            ``["batch_size>=128"]``.
        kind: Only rows of this kind of run (``"measure"``, ``"train"``,
            ``"probe"``, ``"track"``).
        as_frame: Return a pandas DataFrame (default: when pandas is installed)
            or a list of dicts.
    """
    from sharpkit.store import open_results as _open

    return _open(path, filter=filter, kind=kind, as_frame=as_frame)
