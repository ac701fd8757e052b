"""The results store: every result sharpkit computes, in one plain zarr v3 hierarchy.

Layout (``docs/store.md`` has the full reference)::

    results.zarr/                  root group; attrs schema_version, sharpkit_version
      runs/                        group; one child group per complete run
        20261128T163000.123456Z-1a2b3c4d/   attrs: provenance, kind, complete=true
          metrics/<name>/          attrs value, stderr, bound, converged, hvps, ...;
                                   arrays such as ritz_values
          probes/<name>/           coordinate arrays (alpha, ...) and value arrays
                                   on their grid; summary in attrs
          training/                curves: per epoch, dimension "epoch" (train
                                   runs), or per measurement, dimension "step"
                                   (track runs)
      staging/                     group; runs being written (readers ignore it)

Every array carries zarr v3 ``dimension_names``, so ``xarray.open_zarr(path,
group="runs/<id>/training")`` gives labelled dimensions, and ``long_name`` /
``units`` attributes where they are known. Nothing here needs sharpkit to be read.

The store lives in a local directory or on an object store
(``s3://bucket/prefix/results.zarr``, ``gs://...``, ``az://...``; the extra
``sharpkit[remote]``), through one of the backends of
:mod:`~sharpkit.store.objects`.

Guarantees:

* **A run becomes visible only when complete.** Locally it is written under
  ``staging/<id>.<host>.<pid>`` and then moved to ``runs/<id>`` with one
  ``os.rename`` of the directory, which is atomic on a local POSIX filesystem.
  Object stores have no rename: the run's objects are put under ``runs/<id>/``
  and its group document, which carries the manifest (size and SHA-256 of every
  other object), is put last; readers ignore a run without it. A process killed
  mid-write leaves at most a leftover, which :meth:`ResultStore.gc` removes
  (automatically for dead writers on this host; by age on object stores).
  Runs are never modified after they become visible, so no earlier run is lost.
* **A damaged run never takes the store down**: every read is checked against
  the run's manifest (:mod:`~sharpkit.store.integrity`); a damaged run is
  skipped with one warning and never reused. :func:`check_store` /
  :func:`repair_store` (``sharpkit results --check/--repair``) report damage
  and rebuild the store's own metadata from the intact runs.
* **Concurrent writers lose nothing**: each writes its own staging directory and
  run ids are unique (time to the microsecond plus 32 random bits).
* **Opening never damages what is there**: a path that is not a sharpkit store (a
  file, a non-empty directory, a zarr v2 store, another zarr v3 hierarchy) gives a
  :class:`~sharpkit.StoreError` and is left untouched.

The listing and the tidy table read the ``zarr.json`` metadata documents of the
zarr v3 specification directly (one JSON file per node), which is several times
faster than opening each group through zarr-python (``bench/bench_store.py``: 3x
for 500 runs); run arrays are read through zarr.

The package has one module per job: :mod:`~sharpkit.store.layout` (opening,
staging and committing runs, listing them), :mod:`~sharpkit.store.reader`
(reading one run, every object checked), :mod:`~sharpkit.store.encoding` (how
results become zarr groups and arrays, and back),
:mod:`~sharpkit.store.integrity` (manifests and damage),
:mod:`~sharpkit.store.table` (the tidy table, its filters and CSV),
:mod:`~sharpkit.store.results` (:func:`open_results`),
:mod:`~sharpkit.store.repair` (check and repair) and
:mod:`~sharpkit.store.objects` / :mod:`~sharpkit.store.transfer` (backends).
"""

from sharpkit.store.encoding import Run
from sharpkit.store.layout import KINDS, SCHEMA_VERSION, ResultStore
from sharpkit.store.reader import RunInfo
from sharpkit.store.repair import StoreCheck, check_store, repair_store
from sharpkit.store.results import open_results
from sharpkit.store.table import COLUMNS, to_csv

__all__ = [
    "COLUMNS",
    "KINDS",
    "SCHEMA_VERSION",
    "ResultStore",
    "Run",
    "RunInfo",
    "StoreCheck",
    "check_store",
    "open_results",
    "repair_store",
    "to_csv",
]
