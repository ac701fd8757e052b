"""Basin edges and censored widths."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from landscape_cases import context, linear, mse, regression_data

from sharpkit.builtin._landscape.probes import Interpolate
from sharpkit.builtin._landscape.readouts import basin_edges
from sharpkit.errors import ConfigError


def test_basin_edges_exact_on_piecewise_linear() -> None:
    a = np.linspace(-1, 1, 21)
    loss = 2 * np.abs(a) + 0.5  # piecewise linear: interpolation is exact
    left, right, lc, rc = basin_edges(a, loss, 0.0, 0.5 + 0.3)
    assert left == pytest.approx(-0.15, abs=1e-12)
    assert right == pytest.approx(0.15, abs=1e-12)
    assert not lc
    assert not rc


def test_basin_edges_censored_and_nonfinite() -> None:
    a = np.linspace(-1, 1, 5)
    loss = np.array([0.1, 0.1, 0.0, np.inf, 9.0])
    left, right, lc, rc = basin_edges(a, loss, 0.0, 1.0)
    assert (left, lc) == (-1.0, True)  # never crosses: grid end, censored
    assert (right, rc) == (0.0, False)  # a non-finite neighbour ends it at once
    with pytest.raises(ConfigError):
        basin_edges(a, loss, 0.25, 1.0)


def test_interpolate_censored_width() -> None:
    m1 = linear(8)
    m2 = copy.deepcopy(m1)
    with torch.no_grad():
        m2.weight.add_(1e-3)
    result = Interpolate(alpha="-1:2:7", bn_reestimate=False).run(
        context([m1, m2], regression_data(20, 9), loss=mse)
    )
    # Minima 1e-3 apart: the loss hardly moves over α ∈ [-1, 2]; every edge censored.
    assert result.summary["width_0_left"] == -1.0
    assert result.summary["width_0_right"] == 2.0
    assert set(result.attrs["censored"]) >= {"width_0", "width_0_left", "width_0_right"}
