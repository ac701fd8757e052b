"""Results and attributes the store tests write, and how they compare them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from sharpkit.interfaces import MetricResult, ProbeResult


def spectral(value: float = 12.5, key: str = "k-spectral") -> MetricResult:
    return MetricResult(
        value=value,
        stderr=None,
        bound=1e-4,
        converged=True,
        hvps=42,
        seconds=1.5,
        arrays={
            "ritz_values": np.array([value, 3.0, 0.5, -0.25]),
            "block": np.arange(6, dtype=np.int64).reshape(2, 3),
        },
        # "value" and "metric" collide with names the store owns: kept apart.
        attrs={"key": key, "method": "lanczos", "value": "mine", "metric": [1, 2]},
        metric="spectral",
    )


def frobenius(value: float = 30.0, key: str = "k-frob") -> MetricResult:
    return MetricResult(
        value=value,
        stderr=0.25,
        converged=None,
        hvps=100,
        seconds=2.0,
        attrs={"key": key, "probes": 64},
        metric="frobenius",
    )


def measure_attrs(lr: float = 0.1, batch: int = 128, **extra) -> dict:
    return {
        "model": "mlp-bn",
        "model_options": {"width": 64},
        "dataset": "fashion-mnist",
        "lr": lr,
        "batch_size": batch,
        "seed": 0,
        "train_seed": 3,
        "epoch": 200,
        "checkpoint_path": f"/ckpt/lr{lr}_s{batch}.pt",
        "checkpoint_sha256": f"sha-{lr}-{batch}",
        "final": {"train_accuracy": 1.0, "test_accuracy": 0.9, "epoch": 200},
        "sharpkit_version": "0.1.0",
        "torch_version": "2.x",
        "command": "sharpkit measure ...",
        **extra,
    }


def interp_result(key: str = "k-interp") -> ProbeResult:
    alpha = np.linspace(-1.0, 2.0, 7)
    return ProbeResult(
        coords={"alpha": alpha},
        arrays={
            "train_loss": (alpha - 0.5) ** 2,
            "test_accuracy": 1.0 - 0.1 * alpha**2,
        },
        summary={"width": 1.25, "flat_region": 0.5},
        attrs={"key": key, "bn_reestimate": True},
        seconds=3.0,
        probe="interpolate",
    )


def plane_result() -> ProbeResult:
    x, y = np.linspace(-1, 1, 3), np.linspace(-1, 1, 4)
    return ProbeResult(
        coords={"x": x, "y": y},
        arrays={"loss": np.add.outer(x**2, y**2)},
        summary={},
        attrs={"key": "k-plane"},
        seconds=None,
        probe="plane",
    )


def curves(epochs: int = 5) -> dict[str, np.ndarray]:
    e = np.arange(1, epochs + 1)
    return {
        "epoch": e,
        "lr": np.full(epochs, 0.1),
        "train_loss": 1.0 / e,
        "train_accuracy": 1.0 - 0.5 / e,
        "test_loss": 1.2 / e,
        "test_accuracy": 0.9 - 0.5 / e,
        "spectral": np.where(e % 2 == 0, 10.0 / e, np.nan),  # tracked every 2 epochs
    }


def assert_metric_equal(a: MetricResult, b: MetricResult) -> None:
    for name in ("value", "stderr", "bound", "converged", "hvps", "seconds", "metric"):
        assert getattr(a, name) == getattr(b, name), name
    assert dict(a.attrs) == dict(b.attrs)
    assert set(a.arrays) == set(b.arrays)
    for k in a.arrays:
        np.testing.assert_array_equal(a.arrays[k], b.arrays[k])  # exact: stored bitwise
        assert a.arrays[k].dtype == b.arrays[k].dtype


def assert_probe_equal(a: ProbeResult, b: ProbeResult) -> None:
    assert list(a.coords) == list(b.coords)
    assert list(a.arrays) == list(b.arrays)
    for k in a.coords:
        np.testing.assert_array_equal(a.coords[k], b.coords[k])
    for k in a.arrays:
        np.testing.assert_array_equal(a.arrays[k], b.arrays[k])
    assert dict(a.summary) == dict(b.summary)
    assert dict(a.attrs) == dict(b.attrs)
    assert a.seconds == b.seconds
    assert a.probe == b.probe


def snapshot(root: Path) -> dict[str, tuple[bytes | None, float]]:
    """Every path under root with its bytes and mtime: to prove nothing changed."""
    out: dict[str, tuple[bytes | None, float]] = {
        str(root): (None, root.stat().st_mtime)
    }
    for p in sorted(root.rglob("*")):
        out[str(p)] = (p.read_bytes() if p.is_file() else None, p.stat().st_mtime)
    return out


def make_legacy(run_dir: Path) -> None:
    """Make a run look as sharpkit wrote it before manifests (no ``manifest``)."""
    meta = run_dir / "zarr.json"
    doc = json.loads(meta.read_text())
    del doc["attributes"]["manifest"]
    meta.write_text(json.dumps(doc))
    # and its store as sharpkit made it then: no root attribute saying every
    # run has a manifest
    root = run_dir.parent.parent / "zarr.json"
    top = json.loads(root.read_text())
    top["attributes"].pop("manifests", None)
    root.write_text(json.dumps(top))
