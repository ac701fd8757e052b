"""``sharpkit.measure(memory_budget=...)`` and ``--memory-budget``: what is kept.

A float64 model of 87 parameters on 40 examples: small enough that a few KiB
are a binding budget, so every code path a 25 M-parameter model takes under a
budget of GiB (float32 basis, capped steps, no exact path) runs here.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import sharpkit
from sharpkit.api.resolve import memory_bytes
from sharpkit.cli import app
from sharpkit.errors import ConfigError
from sharpkit.testing import tiny_model

METRICS = ["spectral", "frobenius", "density"]


def data(n: int = 40) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, 8, generator=gen, dtype=torch.float64)
    return x, torch.randint(0, 3, (n,), generator=gen)


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("8GiB", 8 * 2**30),
        ("8G", 8 * 2**30),
        ("500MB", 500 * 10**6),
        ("1.5 kib", 1536),
        ("2e9", 2 * 10**9),
        (4096, 4096),
    ],
)
def test_memory_sizes(text: str | int, size: int) -> None:
    assert memory_bytes(text) == size


@pytest.mark.parametrize("bad", ["lots", "8XB", "-1GiB", "0"])
def test_bad_memory_sizes_say_what_is_expected(bad: str) -> None:
    with pytest.raises(ConfigError, match="memory_budget= must be"):
        memory_bytes(bad)


def test_a_binding_budget_keeps_values_and_says_what_it_cut() -> None:
    net = tiny_model()
    free = sharpkit.measure(net, data(), METRICS)
    assert free["frobenius"].attrs["path"] == "exact"  # n = 87 <= exact_max
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", sharpkit.ConvergenceWarning)
        tight = sharpkit.measure(net, data(), METRICS, memory_budget=10_000)
    # λ_max: 7 steps fit; a float64 basis agrees with the free run to the
    # Lanczos tolerance (1e-3 relative bound), in practice to ~1e-8
    assert tight["spectral"].attrs["stopped_by"] == "converged"
    assert tight["spectral"].value == pytest.approx(free["spectral"].value, rel=1e-6)
    # ‖H‖_F: the exact path would keep 87 vectors; the estimator runs instead,
    # within 4 of its standard errors of the exact value
    fro = tight["frobenius"]
    assert fro.attrs["path"] == "estimate"
    assert fro.stderr is not None
    assert fro.stderr > 0
    assert abs(fro.value - free["frobenius"].value) <= 4 * fro.stderr + 1e-9
    # density: fewer Lanczos steps per probe than asked for, with a warning
    messages = [str(w.message) for w in caught]
    assert any("density: the memory budget held" in m for m in messages), messages
    # named as the caller wrote it: a keyword here, --memory-budget on the CLI
    assert any("raise memory_budget=" in m for m in messages)


def test_a_budget_below_two_lanczos_steps_is_one_clear_error() -> None:
    with pytest.raises(ConfigError, match="raise the memory budget"):
        sharpkit.measure(tiny_model(), data(), "spectral", memory_budget=1000)


def test_tf32_is_part_of_the_key_only_when_asked_for() -> None:
    plain = sharpkit.measure(tiny_model(), data(), "spectral")
    assert "tf32" not in plain.attrs or plain.attrs["tf32"] is None
    fast = sharpkit.measure(tiny_model(), data(), "spectral", tf32=True)
    assert fast.attrs["tf32"] is True
    # on the CPU in float64 TF32 changes nothing: the same value
    assert fast["spectral"].value == pytest.approx(plain["spectral"].value, rel=1e-12)


def test_cli_memory_budget_errors_are_one_line(tmp_path: Path) -> None:
    net = tiny_model()
    meta = sharpkit.CheckpointMeta(model="tiny", dataset="synthetic")
    ckpt = tmp_path / "a.pt"
    sharpkit.save_checkpoint(ckpt, net, meta)
    result = CliRunner().invoke(
        app, ["measure", str(ckpt), "--no-store", "--memory-budget", "lots"]
    )
    assert result.exit_code == 1
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert lines == [
        "error: --memory-budget must be a size such as 8GiB, 500MB or 2e9 bytes, "
        "got 'lots'"
    ]
