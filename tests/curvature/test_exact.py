"""The dense path against torch.func.hessian (eval) and finite differences (train)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from cases import bn_mlp
from cases import reference_hessian as ref_h

from sharpkit.curvature.exact import dense_hessian, exact_spectrum


@pytest.mark.parametrize("bn_mode", ["eval", "train"])
def test_dense_hessian(bn_mode: str) -> None:
    case = bn_mlp()
    ref = ref_h(case, bn_mode=bn_mode)
    dense = dense_hessian(
        case.model, case.loss_fn, case.data, batch_size=16, bn_mode=bn_mode
    )
    # exact in eval (1e-10); finite-difference reference in train (~1e-9)
    tol = 1e-10 if bn_mode == "eval" else 1e-7
    assert float((dense - ref).abs().max() / ref.abs().max()) < tol
    assert torch.equal(dense, dense.T)


def test_exact_spectrum() -> None:
    case = bn_mlp()
    ref = ref_h(case)
    spec = exact_spectrum(ref)
    assert spec.trace == pytest.approx(float(torch.trace(ref)), rel=1e-10)
    assert spec.frobenius == pytest.approx(
        float(torch.linalg.matrix_norm(ref)), rel=1e-10
    )
    assert list(spec.eigenvalues) == sorted(spec.eigenvalues, reverse=True)
    np.testing.assert_allclose(
        spec.eigenvalues,
        torch.linalg.eigvalsh(ref).flip(0).numpy(),
        rtol=1e-12,
        atol=1e-14,
    )
