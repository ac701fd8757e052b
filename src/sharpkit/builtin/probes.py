"""Built-in probe plugin (entry point ``builtin.probes``).

``interpolate`` (Goodfellow et al., 2015), ``direction`` and ``plane`` (random
filter-normalised directions, Li et al., 2018) and ``plane-between``; see
:mod:`sharpkit.builtin._landscape` for the probes, batch-norm re-estimation,
resumable grids and width readouts. The implementation (and torch) is imported
only when the probe table is first needed, so ``sharpkit --help`` and
``sharpkit results`` start fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sharpkit import hookimpl

if TYPE_CHECKING:
    from sharpkit import ProbeSpec


@hookimpl
def sharpkit_register_probes() -> list[ProbeSpec]:
    """Return the built-in probe specs (imports the implementation)."""
    from sharpkit.builtin._landscape.probes import sharpkit_register_probes as specs

    return specs()
