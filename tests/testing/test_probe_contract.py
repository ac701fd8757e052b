"""ProbeContract: every built-in probe passes it; each broken probe fails it."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pytest
import torch
from contract_cases import Case, contract_classes

import sharpkit
from sharpkit.testing import ProbeContract, tiny_model, tiny_probe_context

# Three-point grids and BN re-estimation on the tiny data: what the probes do
# to their models and with their seeds is under test, not their resolution.
SMALL = {"eval_samples": "0", "bn_samples": "0", "bn_batch_size": "16"}
CASES = {
    "interpolate": Case("interpolate", {"options": {"alpha": "-0.5:1.5:3", **SMALL}}),
    "direction": Case(
        "direction", {"options": {"alpha": "-1:1:3", "bn_reestimate": "true", **SMALL}}
    ),
    "plane": Case("plane", {"options": {"x": "-1:1:3", "y": "0,1", **SMALL}}),
    "plane-between": Case(
        "plane-between", {"options": {"x": "0:1:2", "y": "-1:1:3", **SMALL}}
    ),
    # rescaling needs a network without batch norm between the two layers
    "rescale": Case(
        "rescale",
        {
            "options": {"c": "0.5,2", "metrics": "spectral"},
            "make_context": lambda self, seed=0, n_models=None: tiny_probe_context(
                models=[
                    tiny_model(seed=seed + i, batch_norm=False)
                    for i in range(1 if n_models is None else n_models)
                ],
                seed=seed,
            ),
        },
    ),
}
globals().update(contract_classes(ProbeContract, "probe", CASES, __name__))


# --------------------------------------------------------------------------- broken


class ToyProbe:
    """Training loss along ``θ + α·d``, ``d`` random; defects switched on by flags."""

    def __init__(self, alpha: str = "-1,0,1", **bug: bool) -> None:
        self.alpha = np.array([float(a) for a in alpha.split(",")])
        self.bug = bug

    def run(self, ctx: sharpkit.ProbeContext) -> sharpkit.ProbeResult:
        if len(ctx.models) != 1 and not self.bug.get("any_number_of_models"):
            msg = f"toy-probe takes 1 model, got {len(ctx.models)}"
            raise sharpkit.ConfigError(msg)
        model = ctx.models[0]
        gen = None if self.bug.get("global_rng") else ctx.generator("toy-probe")
        params = list(model.parameters())
        start = [p.detach().clone() for p in params]
        direction = [torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in params]
        if self.bug.get("bn_in_train_mode"):
            model.train()  # updates the running statistics and stays in train mode
        losses = []
        with torch.no_grad():
            for a in self.alpha:
                for p, p0, d in zip(params, start, direction, strict=True):
                    p.copy_(p0 + float(a) * d)
                x, y = ctx.train_data.inputs, ctx.train_data.targets
                losses.append(float(ctx.loss_fn(model(x), y)))
            if not self.bug.get("leaves_last_point"):
                for p, p0 in zip(params, start, strict=True):
                    p.copy_(p0)
        train_loss = np.array(losses)
        if self.bug.get("flat_grid"):
            train_loss = train_loss[None, :]
        return sharpkit.ProbeResult(
            coords={"alpha": self.alpha.copy()},
            arrays={"train_loss": train_loss},
            summary={"train_loss_at_0": losses[1]},
            attrs={"path": object()} if self.bug.get("attrs_not_json") else {},
        )


def toy_spec(**bug: bool) -> sharpkit.ProbeSpec:
    def make(alpha: str = "-1,0,1") -> ToyProbe:
        return ToyProbe(alpha, **bug)

    return sharpkit.ProbeSpec(
        name="toy-probe",
        factory=make,
        description="A toy probe",
        options=(sharpkit.Option(name="alpha", type=str, default="-1,0,1"),),
        n_models=1,
    )


def contract(**bug: bool) -> ProbeContract:
    class TestToy(ProbeContract):
        spec: ClassVar[sharpkit.ProbeSpec] = toy_spec(**bug)

    return TestToy()


TESTS = [n for n in dir(ProbeContract) if n.startswith("test_")]


def test_the_correct_toy_passes_every_test() -> None:
    for name in TESTS:
        getattr(contract(), name)()


@pytest.mark.parametrize(
    ("bug", "test", "message"),
    [
        ("global_rng", "test_deterministic_for_seed", "differs between two runs"),
        ("bn_in_train_mode", "test_models_left_unchanged", "buffer '1.running_mean'"),
        ("leaves_last_point", "test_models_left_unchanged", "parameter '0.weight'"),
        ("any_number_of_models", "test_n_models_honoured", "ran on 2"),
        ("flat_grid", "test_result_arrays_span_the_coords", r"span \(3,\)"),
        ("attrs_not_json", "test_result_arrays_span_the_coords", "JSON"),
    ],
)
def test_a_broken_probe_fails(bug: str, test: str, message: str) -> None:
    with pytest.raises(AssertionError, match=message):
        getattr(contract(**{bug: True}), test)()


def test_a_probe_left_in_train_mode_fails_on_the_flags() -> None:
    class Restores(ToyProbe):
        """Puts the buffers back but forgets the training flag."""

        def run(self, ctx: sharpkit.ProbeContext) -> sharpkit.ProbeResult:
            model = ctx.models[0]
            saved = {k: v.clone() for k, v in model.state_dict().items()}
            result = ToyProbe(bn_in_train_mode=True).run(ctx)
            model.load_state_dict(saved)
            return result

    class TestToy(ProbeContract):
        spec: ClassVar[sharpkit.ProbeSpec] = sharpkit.ProbeSpec(
            name="toy-probe", factory=Restores, description="A toy probe"
        )

    with pytest.raises(AssertionError, match="left in train mode"):
        TestToy().test_models_left_unchanged()
