"""Every model family against its dense float64 Hessian (see family_cases.py).

For each family, ``sharpkit.measure`` must give

* λ_max and the top 3 eigenvalues (``spectral``, Lanczos) within their reported
  bounds of the dense eigenvalues;
* the trace and ‖H‖_F exactly on the small-model path (``n`` Lanczos steps);
* the trace and ‖H‖_F on the large-model paths (``exact_max=0``): the exact
  Gauss-Newton trace where it applies, Hutch++ otherwise (with the reason
  recorded), and the deflated Frobenius estimate, each within 4 standard
  errors (a miss beyond 4σ has probability < 1e-4 for a Gaussian estimate).

Families whose loss ``measure`` must refuse are checked for the one-line error.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch
from family_cases import (
    FAMILIES,
    Family,
    Problem,
    build,
    dense_hessian,
    finite_difference_hvp,
)

import sharpkit

MEASURED = [f for f in FAMILIES.values() if f.refused is None]
REFUSED = [f for f in FAMILIES.values() if f.refused is not None]


def _params(families: list[Family], test: str) -> list[object]:
    """The families as parameters; a known defect makes its test a strict xfail."""
    out = []
    for f in families:
        reason = f.xfail.get(test) or f.xfail.get("*")
        marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
        out.append(pytest.param(f, id=f.id, marks=marks))
    return out


@functools.cache
def _eigenvalues(family_id: str) -> np.ndarray:
    """The dense truth's eigenvalues, descending (computed once per family)."""
    h = dense_hessian(build(FAMILIES[family_id]))
    return np.linalg.eigvalsh(h.numpy())[::-1].copy()


def _measure(
    problem: Problem,
    metrics: list[str],
    device: str = "cpu",
    **options: dict[str, object],
):
    return sharpkit.measure(
        problem.model,
        problem.data,
        metrics,
        loss=problem.loss_fn,
        batch_size=problem.batch_size,
        bn_mode=problem.bn_mode,
        options=options,
        device=device,
        dtype=problem.dtype,
    )


@pytest.mark.parametrize(
    "family",
    _params(list(FAMILIES.values()), "test_truth_agrees_with_finite_differences"),
)
def test_truth_agrees_with_finite_differences(family: Family) -> None:
    """The double-backward truth against central differences of the gradient.

    Step 1e-5 in float64: truncation ~h²·‖∇³L‖ ≈ 1e-10 and rounding
    ~ε·‖∇L‖/h ≈ 1e-11, so 1e-6 of ‖Hv‖ is a wide margin that a wrong second
    derivative (off by O(1)) cannot meet. ReLU kinks are almost surely not
    crossed within the step (seeded, so a pass is a pass).
    """
    problem = build(family)
    h = dense_hessian(problem)
    assert h.shape == (problem.n, problem.n)
    assert problem.n <= 300
    gen = torch.Generator().manual_seed(1)
    for _ in range(2):
        v = torch.randn(problem.n, generator=gen, dtype=torch.float64)
        fd = finite_difference_hvp(problem, v)
        assert torch.linalg.vector_norm(fd - h @ v) <= 1e-6 * torch.linalg.vector_norm(
            h @ v
        )


@pytest.mark.parametrize(
    "family", _params(MEASURED, "test_exact_paths_match_the_dense_hessian")
)
def test_exact_paths_match_the_dense_hessian(family: Family, device: str) -> None:
    problem = build(family)
    evals = _eigenvalues(family.id)
    norm = float(np.max(np.abs(evals)))
    m = _measure(
        problem, ["spectral", "trace", "frobenius"], device, spectral={"top_k": 3}
    )
    assert m.attrs["device"].startswith(device)
    spec = m["spectral"]
    got = spec.arrays["eigenvalues"]
    # Each Ritz value within its reported bound of the true eigenvalue, plus
    # 1e-10·‖H‖ for the rounding of the dense truth and its eigensolver.
    err = np.abs(got - evals[:3])
    assert np.all(err <= spec.arrays["residual_bounds"] + 1e-10 * norm), (
        got,
        evals[:3],
    )
    assert spec.value == pytest.approx(evals[0], rel=1e-3)
    if "lambda_min" in spec.attrs:
        # a negative Ritz value: λ_min lies below it (Ritz values lie within the
        # spectrum), and some eigenvalue lies within its bound
        lam = spec.attrs["lambda_min"]
        assert evals[-1] <= lam + 1e-10 * norm < 0
        near = float(np.min(np.abs(evals - lam)))
        assert near <= spec.attrs["lambda_min_bound"] + 1e-10 * norm
    else:
        assert float(np.min(spec.arrays["ritz_values"])) >= 0
    # n <= 256: n Lanczos steps span the space, so trace and norm are exact up
    # to rounding (float64 products, full reorthogonalisation: ~1e-13).
    assert m["trace"].attrs["method"] == "exact"
    assert m["trace"].value == pytest.approx(
        evals.sum(), abs=1e-9 * np.abs(evals).sum()
    )
    fro = math.sqrt(float(np.sum(evals**2)))
    assert m["frobenius"].value == pytest.approx(fro, rel=1e-9)


@pytest.mark.parametrize(
    "family", _params(MEASURED, "test_large_model_paths_match_the_dense_hessian")
)
def test_large_model_paths_match_the_dense_hessian(family: Family, device: str) -> None:
    problem = build(family)
    evals = _eigenvalues(family.id)
    m = _measure(
        problem,
        ["trace", "frobenius"],
        device,
        # looser targets than the defaults: fewer probes, the same check
        # (the value within 4 of its own standard errors)
        trace={"exact_max": 0, "rel_stderr": 0.03},
        frobenius={"exact_max": 0, "rel_stderr": 0.01},
    )
    trace, fro = m["trace"], m["frobenius"]
    true_trace = float(evals.sum())
    true_fro = math.sqrt(float(np.sum(evals**2)))
    scale = float(np.abs(evals).sum())
    if family.exact_ggn:
        assert trace.attrs["method"] == "exact-ggn", trace.attrs
        # exact up to float64 rounding of per-example gradient norms
        assert trace.value == pytest.approx(true_trace, abs=1e-9 * scale)
    else:
        assert trace.attrs["method"] != "exact-ggn"
        assert trace.attrs["exact_ggn_not_applicable"], trace.attrs
        assert abs(trace.value - true_trace) <= 4 * trace.stderr + 1e-9 * scale
    assert abs(fro.value - true_fro) <= 4 * fro.stderr + 1e-9 * true_fro


@pytest.mark.parametrize("family", _params(REFUSED, "test_refused_losses"))
def test_refused_losses(family: Family) -> None:
    problem = build(family)
    with pytest.raises(sharpkit.ConfigError, match=family.refused) as info:
        _measure(problem, ["spectral"])
    assert "\n" not in str(info.value)
