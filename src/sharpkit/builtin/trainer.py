"""Built-in trainer plugin (entry point ``builtin.trainer``): sgd, sam, asam.

See :mod:`sharpkit.builtin._trainer` for the schedules, the checkpoint files and
resuming, and :mod:`sharpkit.builtin._sam` for sharpness-aware minimisation
(which shares the ``sgd`` loop). The implementation (and torch) is imported
only when the trainer table is first needed, so ``sharpkit --help`` and
``sharpkit results`` start fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sharpkit import hookimpl

if TYPE_CHECKING:
    from sharpkit import TrainerSpec


@hookimpl
def sharpkit_register_trainers() -> list[TrainerSpec]:
    """Return the built-in trainer specs (imports the implementation)."""
    from sharpkit.builtin._sam import sharpkit_register_trainers as sam_specs
    from sharpkit.builtin._trainer import sharpkit_register_trainers as sgd_specs

    return [*sgd_specs(), *sam_specs()]
