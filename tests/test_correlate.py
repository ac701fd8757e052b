"""Rank correlations of measures with generalization, on tables with known answers."""

from __future__ import annotations

import json
import math
from itertools import product

import numpy as np
import pytest
from typer.testing import CliRunner

import sharpkit
from sharpkit.cli import app
from sharpkit.correlation import granulated_kendall, kendall_tau, spearman_rho

# --------------------------------------------------------------------------- statistics


def brute_tau_b(x, y):
    """τ-b by its definition: (C − D) / sqrt((n0 − n1)(n0 − n2))."""
    n = len(x)
    c = d = tx = ty = 0
    for i in range(n):
        for j in range(i + 1, n):
            sx, sy = np.sign(x[i] - x[j]), np.sign(y[i] - y[j])
            c += sx * sy > 0
            d += sx * sy < 0
            tx += sx == 0
            ty += sy == 0
    n0 = n * (n - 1) / 2
    return (c - d) / math.sqrt((n0 - tx) * (n0 - ty))


def test_kendall_matches_its_definition_with_ties() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        x = rng.integers(0, 4, 12).astype(float)  # many ties
        y = rng.integers(0, 4, 12).astype(float)
        assert kendall_tau(x, y) == pytest.approx(brute_tau_b(x, y), abs=1e-12)
    assert kendall_tau([1, 2, 3], [3, 2, 1]) == -1.0
    assert math.isnan(kendall_tau([1, 1, 1], [1, 2, 3]))


def test_spearman_is_pearson_of_average_ranks() -> None:
    # ranks of x: 1, 2.5, 2.5, 4; of y: 1, 2, 3, 4
    x, y = [1.0, 5.0, 5.0, 9.0], [0.1, 0.2, 0.3, 0.4]
    rx, ry = np.array([1, 2.5, 2.5, 4]), np.array([1, 2, 3, 4.0])
    expected = np.corrcoef(rx, ry)[0, 1]
    assert spearman_rho(x, y) == pytest.approx(expected, abs=1e-12)


def simpson_rows(seeds=(0,)):
    """gap = 10·lr + S, measure = 10·lr − S on a 2 × 3 grid (× seeds).

    Within a fixed lr the measure falls as the gap rises (τ = −1 for the S axis);
    within a fixed S both rise with lr (τ = +1): Ψ = (−1 + 1) / 2 = 0. Across all
    six models 9 pairs are concordant and 6 discordant: τ = 3/15 = 0.2; the
    ranks give Spearman ρ = 1 − 6·16 / (6·35) = 19/35.
    """
    rows = []
    for seed, (lr, batch) in product(seeds, product((1, 2), (1, 2, 3))):
        gap = 10 * lr + batch
        sha = f"lr{lr}-S{batch}-seed{seed}"
        rows.append(
            {
                "kind": "measure",
                "checkpoint_sha256": sha,
                "metric": "spectral",
                "value": 10 * lr - batch + 0.01 * seed,
                "lr": lr,
                "batch_size": batch,
                "train_seed": seed,
                "train_accuracy": 1.0,
                "test_accuracy": 1.0 - gap / 100 - 0.001 * seed,
            }
        )
    return rows


def test_granulated_kendall_separates_what_tau_mixes() -> None:
    [c] = sharpkit.correlate(simpson_rows(), bootstrap=0)
    assert c.n == 6
    assert c.kendall.value == pytest.approx(0.2, abs=1e-12)
    assert c.spearman.value == pytest.approx(19 / 35, abs=1e-12)
    assert c.psi_axes == {"lr": pytest.approx(1.0), "batch_size": pytest.approx(-1.0)}
    assert c.psi.value == pytest.approx(0.0, abs=1e-12)
    assert math.isnan(c.kendall.low)  # no bootstrap, no interval


def test_seeds_are_held_fixed_within_groups() -> None:
    # With three seeds the groups of one axis never mix seeds: Ψ stays 0.
    [c] = sharpkit.correlate(simpson_rows(seeds=(0, 1, 2)), bootstrap=0)
    assert c.n == 18
    assert c.psi_axes == {"lr": pytest.approx(1.0), "batch_size": pytest.approx(-1.0)}
    values, targets = c.values, c.targets
    psi, _ = granulated_kendall(values, targets, c.hyper, ["lr", "batch_size"])
    assert psi == pytest.approx(0.0, abs=1e-12)


def test_bootstrap_interval_is_reproducible_and_contains_the_estimate() -> None:
    rng = np.random.default_rng(1)
    rows = []
    for k in range(40):
        lr, batch = rng.choice([0.01, 0.05, 0.1]), rng.choice([32, 128, 512])
        gap = lr / batch * 1e3 + rng.normal(0, 0.05)
        rows.append(
            {
                "kind": "measure",
                "checkpoint_sha256": f"m{k}",
                "metric": "spectral",
                "value": 1 / (lr / batch) + rng.normal(0, 10),
                "lr": lr,
                "batch_size": batch,
                "train_accuracy": 1.0,
                "test_accuracy": 1.0 - gap,
            }
        )
    a = sharpkit.correlate(rows, bootstrap=300, seed=3)[0]
    b = sharpkit.correlate(rows, bootstrap=300, seed=3)[0]
    assert a.kendall == b.kendall
    assert a.kendall.low <= a.kendall.value <= a.kendall.high
    assert a.kendall.value < 0  # a flatter-is-larger-gap anti-correlation here
    wide = sharpkit.correlate(rows, bootstrap=300, confidence=0.99, seed=3)[0]
    assert wide.kendall.low <= a.kendall.low
    assert wide.kendall.high >= a.kendall.high


def test_errors_say_what_to_do() -> None:
    with pytest.raises(sharpkit.ConfigError, match="unknown target 'acc'"):
        sharpkit.correlate(simpson_rows(), target="acc")
    with pytest.raises(sharpkit.DataError, match="fewer than three models"):
        sharpkit.correlate(simpson_rows()[:2])
    with pytest.raises(sharpkit.DataError, match="has the measure 'trace'"):
        sharpkit.correlate(simpson_rows(), measures=["trace"])
    with pytest.raises(sharpkit.ConfigError, match="unknown axis 'colour'"):
        sharpkit.correlate(simpson_rows(), axes=["colour"])


# --------------------------------------------------------------------------- store


def write_store(path):
    """Train runs (with the trainer) and measure runs, as sharpkit stores them."""
    store = sharpkit.ResultStore(path)
    for trainer, lr, batch in product(("sgd", "sam"), (0.05, 0.1), (32, 256)):
        sha = f"{trainer}-{lr}-{batch}"
        gap = lr / batch * 100 + (0.0 if trainer == "sam" else 0.02)
        final = {"train_accuracy": 1.0, "test_accuracy": 1.0 - gap}
        store.write_run(
            kind="train",
            attrs={
                "model": "mlp-bn",
                "dataset": "fashion-mnist",
                "lr": lr,
                "batch_size": batch,
                "seed": 0,
                "trainer": trainer,
                "checkpoint_sha256": sha,
                "final": final,
            },
            training={"epoch": np.arange(1, 3), "train_loss": np.array([1.0, 0.5])},
        )
        store.write_run(
            kind="measure",
            attrs={
                "model": "mlp-bn",
                "lr": lr,
                "batch_size": batch,
                "train_seed": 0,
                "checkpoint_sha256": sha,
                "final": final,
            },
            metrics={
                "spectral": sharpkit.MetricResult(value=gap * 100),
                "frobenius": sharpkit.MetricResult(value=-gap, stderr=0.1),
            },
        )
    return store


def test_a_store_joins_the_trainer_from_the_training_runs(tmp_path) -> None:
    write_store(tmp_path / "s.zarr")
    out = {c.measure: c for c in sharpkit.correlate(tmp_path / "s.zarr")}
    assert set(out) == {"spectral", "frobenius"}
    spectral = out["spectral"]
    assert spectral.n == 8
    assert spectral.kendall.value == pytest.approx(1.0)
    assert set(spectral.psi_axes) == {"trainer", "lr", "batch_size"}
    assert out["frobenius"].psi.value == pytest.approx(-1.0)
    only_sgd = sharpkit.correlate(tmp_path / "s.zarr", filter=["trainer!=sam"])
    assert only_sgd[0].n == 4


def test_cli_table_json_and_csv(tmp_path) -> None:
    write_store(tmp_path / "s.zarr")
    runner = CliRunner()
    store = str(tmp_path / "s.zarr")
    res = runner.invoke(app, ["correlate", store, "--json", "--bootstrap", "200"])
    assert res.exit_code == 0, res.output
    data = {d["measure"]: d for d in json.loads(res.stdout)}
    assert data["spectral"]["kendall"]["value"] == pytest.approx(1.0)
    assert data["spectral"]["psi_axes"]["trainer"] == pytest.approx(1.0)
    res = runner.invoke(app, ["correlate", store, "--csv", "--metric", "spectral"])
    assert res.exit_code == 0, res.output
    header, line = res.stdout.strip().splitlines()
    assert header.startswith("measure,target,n,kendall,kendall_low")
    assert line.startswith("spectral,gap,8,1.0,")
    res = runner.invoke(app, ["correlate", store])
    assert res.exit_code == 0, res.output
    assert "Kendall τ" in res.stdout
    assert "spectral" in res.stdout
    res = runner.invoke(app, ["correlate", str(tmp_path / "nope.zarr")])
    assert res.exit_code == 1
    assert res.stderr.count("\n") == 1
    assert "error:" in res.stderr


def test_correlate_figure(tmp_path) -> None:
    write_store(tmp_path / "s.zarr")
    out = sharpkit.plot_figure(tmp_path / "s.zarr", "correlate", tmp_path / "c.png")
    assert out.stat().st_size > 10_000
