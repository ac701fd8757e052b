"""Conformance suites for plugin authors: one base test class per component kind.

Subclass the contract for what your plugin ships, set ``spec`` (and a few class
attributes), and pytest collects the contract's tests::

    from sharpkit.testing import MetricContract, ModelContract
    from my_plugin.plugin import MY_METRIC, MY_NET

    class TestMyMetric(MetricContract):
        spec = MY_METRIC

    class TestMyNet(ModelContract):
        spec = MY_NET
        input_shape = (1, 28, 28)
        num_classes = 10

* :class:`ModelContract`: the factory builds an ``nn.Module`` giving
  ``(batch, num_classes)`` logits, seeded, checkpoint round-trip, twice
  differentiable.
* :class:`DatasetContract`: a :class:`~sharpkit.Dataset` of float inputs and
  int64 class targets, ``subset`` and ``seed`` honoured; skips when files are absent.
* :class:`TrainerContract`: per-epoch curves, bit-for-bit determinism, a loadable
  checkpoint in ``out_dir``, exact resume.
* :class:`MetricContract`: a finite :class:`~sharpkit.MetricResult`, reproducible
  from the seed, the model left bit-identical.
* :class:`ProbeContract`: a :class:`~sharpkit.ProbeResult` whose arrays span its
  coords, reproducible, models left bit-identical, ``n_models`` honoured.

Every contract also checks the spec with :func:`check_spec` (the registry's rules
and a few more). The suites use sharpkit's public API only, and importing this
package imports neither torch nor pytest; add your own ground-truth tests beside
them. The tiny problems they run on are public too: :func:`tiny_model`,
:func:`tiny_context`, :func:`tiny_probe_context` and :func:`tiny_dataset`.
"""

from __future__ import annotations

from sharpkit.testing._checks import check_spec
from sharpkit.testing._dataset import DatasetContract
from sharpkit.testing._fixtures import (
    tiny_context,
    tiny_dataset,
    tiny_model,
    tiny_probe_context,
)
from sharpkit.testing._metric import MetricContract, check_metric_spec
from sharpkit.testing._model import ModelContract
from sharpkit.testing._probe import ProbeContract
from sharpkit.testing._trainer import TrainerContract

__all__ = [
    # contracts
    "DatasetContract",
    "MetricContract",
    "ModelContract",
    "ProbeContract",
    "TrainerContract",
    # checks
    "check_metric_spec",
    "check_spec",
    # tiny problems
    "tiny_context",
    "tiny_dataset",
    "tiny_model",
    "tiny_probe_context",
]
