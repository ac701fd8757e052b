"""The functions behind ``sharpkit.*`` and the CLI (import them from ``sharpkit``).

The CLI is a thin layer over these: every command parses its arguments, calls one
of these functions, and renders what it returns. Scripts call the same functions
(``sharpkit.measure``, ``sharpkit.train``, ``sharpkit.interpolate``, ...).

One module per job: :mod:`~sharpkit.api.job` holds a job's inputs as one typed
value, :mod:`~sharpkit.api.resolve` and :mod:`~sharpkit.api.models` turn names
into data and models, :mod:`~sharpkit.api.executor` runs every plugin call,
:mod:`~sharpkit.api.measure`, :mod:`~sharpkit.api.train`,
:mod:`~sharpkit.api.track` and :mod:`~sharpkit.api.probe` are the jobs over
it, and :mod:`~sharpkit.api.provenance` says what a stored run records and
which results may be reused.
"""

from __future__ import annotations

from sharpkit.api.measure import Measurement, measure
from sharpkit.api.models import build_model, load_model
from sharpkit.api.probe import interpolate, probe
from sharpkit.api.resolve import load_dataset, reuse_datasets
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
    "probe",
    "reuse_datasets",
    "train",
]
