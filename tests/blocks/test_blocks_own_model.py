"""``--blocks`` on users' own models: ``module:Class`` and a Hugging Face folder."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from sharpkit.cli import app

runner = CliRunner()


def _measured(*argv: str) -> dict:
    args = ["measure", *argv, "-m", "spectral", "-m", "trace", "--no-store", "--json"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, (result.stdout, result.stderr)
    return json.loads(result.stdout)[0]["metrics"]


def _consistent(metrics: dict) -> list[str]:
    """Interlacing, shares summing to 1, traces adding up; returns the block names."""
    spectral, trace = metrics["spectral"], metrics["trace"]
    names = spectral["attrs"]["blocks"]
    lam = np.array(spectral["arrays"]["block_value"])
    # Cauchy interlacing: λ_max(H_bb) ≤ λ_max(H), up to both bounds
    slack = spectral["bound"] + max(spectral["arrays"]["block_bound"])
    assert lam.max() <= spectral["value"] + slack
    assert sum(spectral["arrays"]["block_mass"]) == pytest.approx(1.0, abs=1e-9)
    # the block traces add up to their own total exactly, and to tr H within 4 se
    tr = np.array(trace["arrays"]["block_value"])
    assert tr.sum() == pytest.approx(trace["attrs"]["block_total"], rel=1e-9)
    se = np.sqrt(np.sum(np.array(trace["arrays"]["block_stderr"]) ** 2))
    whole_se = trace["stderr"] or 0.0
    # both exact on a small float32 model (Lanczos on all of H, H on the
    # identity): they differ by float32 rounding, ~1e-7 relative
    rounding = 1e-5 * abs(trace["value"])
    assert abs(tr.sum() - trace["value"]) <= 4 * (se + whole_se) + rounding
    return names


def test_blocks_of_a_module_class(own_project) -> None:
    metrics = _measured("net.pt", "--model", "tinynets:TinyNet", "--data", "data.pt",
                        "--blocks", "layers")  # fmt: skip
    names = _consistent(metrics)
    assert len(names) >= 2


def test_blocks_of_a_hugging_face_folder(own_project, monkeypatch) -> None:
    pytest.importorskip("transformers")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from own_project import write_tiny_bert

    write_tiny_bert(own_project.folder)
    metrics = _measured("--model", "hf:tiny-bert", "--data", "tokens.npz",
                        "--blocks", "depth=2")  # fmt: skip
    names = _consistent(metrics)
    # named as the user's model names them (not after sharpkit's wrapper)
    assert names[:3] == ["bert.embeddings", "bert.encoder", "bert.pooler"]
    assert "classifier" in names
