"""``open_results``: a results store read as a tidy table (pandas or plain rows)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from sharpkit.errors import ConfigError
from sharpkit.store.layout import ResultStore
from sharpkit.store.table import COLUMNS, Filter

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["open_results"]


def open_results(
    path: str | os.PathLike[str],
    *,
    filter: Filter = None,
    kind: str | None = None,
    as_frame: bool | None = None,
) -> pd.DataFrame | list[dict[str, Any]]:
    """Open a results store as a tidy table: one row per run × metric.

    Columns include ``run_id``, ``model``, ``dataset``, ``lr`` (η),
    ``batch_size`` (S), ``lr_over_batch`` (η/S), ``seed``, ``metric``, ``value``,
    ``stderr`` and ``bound``; :data:`~sharpkit.store.COLUMNS` and the store
    documentation list them all.

    Examples:
        >>> import sharpkit
        >>> df = sharpkit.open_results("results.zarr")  # doctest: +SKIP
        >>> spectral = df[df.metric == "spectral"]  # doctest: +SKIP
        >>> spectral.plot.scatter("lr_over_batch", "value", logx=True)  # doctest: +SKIP

    Args:
        path: The store (a ``.zarr`` directory or an object-store URL).
        filter: Keep rows whose columns equal these values
            (``{"metric": "spectral"}``), or conditions such as
            ``["batch_size>=128"]``, as for :meth:`ResultStore.records`.
        kind: Only rows of this kind of run (``"measure"``, ``"train"``,
            ``"probe"``, ``"track"``).
        as_frame: ``True``: a pandas DataFrame (pandas must be installed);
            ``False``: a list of dicts; ``None`` (default): a DataFrame if pandas
            is installed, else a list of dicts.

    Returns:
        The table.

    Raises:
        StoreError: ``path`` is not a results store.
        ConfigError: A bad filter, or ``as_frame=True`` without pandas.
    """
    table = ResultStore(path, create=False).records(filter, kind=kind)
    if as_frame is False:
        return table
    try:
        import pandas as pd
    except ImportError:
        if as_frame:
            msg = "as_frame=True needs pandas; `pip install pandas` or as_frame=False"
            raise ConfigError(msg) from None
        return table
    frame = pd.DataFrame.from_records(table, columns=list(COLUMNS))
    frame["time"] = pd.to_datetime(frame["time"], utc=True, errors="coerce")
    return frame
