"""The tiny problems the conformance suites run on."""

from __future__ import annotations

import torch

import sharpkit
from sharpkit.testing import tiny_context, tiny_dataset, tiny_model, tiny_probe_context


def test_tiny_model_is_seeded_and_not_trivial() -> None:
    a, b = tiny_model(seed=1), tiny_model(seed=1)
    assert all(
        torch.equal(p, q)
        for p, q in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    )
    assert not torch.equal(tiny_model(seed=2)[0].weight, a[0].weight)
    assert not a.training
    assert sum(p.numel() for p in a.parameters()) == 87
    assert not torch.all(a[1].running_var == 1)
    assert next(a.parameters()).dtype == torch.float64
    assert next(tiny_model(dtype=torch.float32).parameters()).dtype == torch.float32
    assert len(tiny_model(batch_norm=False)) == 3


def test_tiny_model_leaves_the_global_rng_alone() -> None:
    torch.manual_seed(0)
    state = torch.get_rng_state()
    tiny_model(seed=4)
    tiny_context(seed=4)
    tiny_probe_context(n_models=2)
    tiny_dataset()
    assert torch.equal(torch.get_rng_state(), state)


def test_tiny_context_has_a_short_last_batch() -> None:
    ctx = tiny_context(samples=50, batch_size=24, tol=1e-6)
    assert len(ctx.data) == 50
    assert len(ctx.data) % ctx.batch_size
    assert ctx.tol == 1e-6
    assert ctx.dtype == torch.float64


def test_tiny_probe_context_has_distinct_models() -> None:
    ctx = tiny_probe_context(n_models=2, seed=1)
    m1, m2 = ctx.models
    assert not torch.equal(m1[0].weight, m2[0].weight)
    assert ctx.test_data is not None
    assert len(ctx.train_data) == 48
    assert ctx.train_data.inputs.dtype == torch.float64
    assert len(ctx.train_data) % ctx.batch_size


def test_tiny_dataset_is_a_dataset_the_tiny_model_fits() -> None:
    ds = tiny_dataset()
    assert isinstance(ds, sharpkit.Dataset)
    assert ds.input_shape == (8,)
    assert ds.num_classes == 3
    assert ds.train.inputs.dtype == torch.float32
    assert ds.train.targets.dtype == torch.int64
    out = tiny_model(dtype=torch.float32)(ds.train.inputs)
    assert out.shape == (64, 3)
    assert torch.equal(tiny_dataset().train.inputs, ds.train.inputs)
    assert tiny_dataset(dtype=torch.float64).test.inputs.dtype == torch.float64
