"""Built-in dataset plugin (entry point ``builtin.datasets``).

``fashion-mnist``, ``cifar10`` and ``synthetic``; see
:mod:`sharpkit.builtin._datasets` for where files are looked for and how they
are read. The implementation (and torch) is imported only when the dataset table
is first needed, so ``sharpkit --help`` and ``sharpkit results`` start fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sharpkit import hookimpl

if TYPE_CHECKING:
    from sharpkit import DatasetSpec


@hookimpl
def sharpkit_register_datasets() -> list[DatasetSpec]:
    """Return the built-in datasets specs (imports the implementation)."""
    from sharpkit.builtin._datasets import sharpkit_register_datasets as specs

    return specs()
