"""Filter-normalised directions (Li et al., 2018): norms, seeds, dtypes."""

from __future__ import annotations

import pytest
import torch
from landscape_cases import F64

from sharpkit.builtin._landscape.geometry import filter_normalized_direction
from sharpkit.errors import ConfigError


def test_filter_normalisation_properties() -> None:
    conv = torch.nn.Conv2d(3, 5, 3).double()
    lin = torch.nn.Linear(7, 4).double()
    bn = torch.nn.BatchNorm2d(5).double()
    params = [conv.weight, conv.bias, lin.weight, lin.bias, bn.weight, bn.bias]
    params = [p.detach() for p in params]
    d = filter_normalized_direction(params, torch.Generator().manual_seed(0))
    for p, di in zip(params, d, strict=True):
        assert di.shape == p.shape
        assert di.dtype == p.dtype
        if p.ndim > 1:
            # Each filter (output neuron / channel) has the norm of θ's filter.
            torch.testing.assert_close(
                di.flatten(1).norm(dim=1), p.flatten(1).norm(dim=1), rtol=1e-12, atol=0
            )
            assert not torch.allclose(di, p)  # random, not a copy
        else:
            assert torch.equal(di, torch.zeros_like(p))
    d_copy = filter_normalized_direction(
        params, torch.Generator().manual_seed(0), bias_bn="copy"
    )
    for p, di, dc in zip(params, d, d_copy, strict=True):
        if p.ndim <= 1:
            assert torch.equal(dc, p)
        else:
            assert torch.equal(dc, di)  # same draws for the weights
    # Seeded: same seed, same direction; float32 gets the same draws rounded.
    again = filter_normalized_direction(params, torch.Generator().manual_seed(0))
    assert all(torch.equal(a, b) for a, b in zip(d, again, strict=True))
    p32 = [p.float() for p in params]
    d32 = filter_normalized_direction(p32, torch.Generator().manual_seed(0))
    torch.testing.assert_close(d32[0].double(), d[0], rtol=1e-5, atol=1e-6)
    with pytest.raises(ConfigError):
        filter_normalized_direction(params, torch.Generator(), bias_bn="keep")


def test_filter_normalisation_dead_filter_stays_zero() -> None:
    w = torch.randn(3, 4, dtype=F64)
    w[1] = 0.0
    d = filter_normalized_direction([w], torch.Generator().manual_seed(1))[0]
    assert torch.equal(d[1], torch.zeros(4, dtype=F64))
