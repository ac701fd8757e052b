"""The paper's figures: the data each panel shows, labels, selection, files, errors."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sharpkit.errors import ConfigError, DataError, StoreError
from sharpkit.interfaces import MetricResult, ProbeResult
from sharpkit.plotting import build_figure, plot_figure
from sharpkit.store import ResultStore

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def measure_rows() -> list[dict[str, Any]]:
    rows = []
    for lr, batch in [(0.1, 32), (0.1, 512), (0.02, 32), (0.02, 512)]:
        base = {
            "kind": "measure",
            "lr": lr,
            "batch_size": batch,
            "lr_over_batch": lr / batch,
            "checkpoint_sha256": f"sha-{lr}-{batch}",
            "test_accuracy": 0.8 + lr,
            "dataset": "fashion-mnist",
        }
        rows.append(
            {**base, "metric": "spectral", "value": 1.0 / (lr / batch), "stderr": None}
        )
        rows.append(
            {**base, "metric": "frobenius", "value": 2.0 / (lr / batch), "stderr": 5.0}
        )
    return rows


def artist_xy(ax: Any) -> list[tuple[float, float]]:
    """All (x, y) data points of an axes (the "o" markers; not error-bar caps)."""
    pts = []
    for line in ax.get_lines():
        xs, ys = line.get_xdata(), line.get_ydata()
        if len(xs) and line.get_marker() == "o":
            pts += list(zip(np.asarray(xs, float), np.asarray(ys, float), strict=True))
    return sorted(pts)


# --------------------------------------------------------------------------------- fig1


def test_fig1_panels_show_the_records() -> None:
    rows = measure_rows()
    fig = build_figure(rows, "fig1")
    axes = fig.axes
    assert len(axes) == 3
    spectral = sorted(
        (r["lr_over_batch"], r["value"]) for r in rows if r["metric"] == "spectral"
    )
    frob = sorted(
        (r["lr_over_batch"], math.log(r["value"]))
        for r in rows
        if r["metric"] == "frobenius"
    )
    acc = sorted({(r["lr_over_batch"], r["test_accuracy"]) for r in rows})
    np.testing.assert_allclose(artist_xy(axes[0]), spectral, rtol=1e-12)
    np.testing.assert_allclose(artist_xy(axes[1]), frob, rtol=1e-12)
    np.testing.assert_allclose(artist_xy(axes[2]), acc, rtol=1e-12)
    for ax in axes:
        assert ax.get_xscale() == "log"
        assert ax.get_xlabel() == "η / S"
        assert ax.get_ylabel()
    assert "λ_max" in axes[0].get_ylabel()
    assert "log ‖H‖_F" in axes[1].get_ylabel()
    assert "validation" in axes[2].get_ylabel()
    # One legend entry per batch size, in increasing order.
    legend = fig.legends[0]
    assert [t.get_text() for t in legend.get_texts()] == ["S = 32", "S = 512"]


def test_fig1_error_bars_on_log_scale_are_relative() -> None:
    rows = [r for r in measure_rows() if r["metric"] == "frobenius"][:1]
    fig = build_figure(rows, "fig1")
    ax = fig.axes[1]
    # The error bar of ln(v) is stderr / v (delta method).
    segs = [c for c in ax.collections if hasattr(c, "get_segments")]
    (seg,) = segs[0].get_segments()
    half = (seg[1][1] - seg[0][1]) / 2
    assert half == pytest.approx(rows[0]["stderr"] / rows[0]["value"], rel=1e-12)


def test_fig1_dedupes_checkpoints_newest_measure_wins() -> None:
    rows = measure_rows()[:2]  # one checkpoint: spectral + frobenius
    train_row = {**rows[0], "kind": "train", "metric": "spectral", "value": 999.0}
    newer = {**rows[0], "value": 7.0}
    fig = build_figure([rows[0], train_row, newer, rows[1]], "fig1")
    assert [y for _, y in artist_xy(fig.axes[0])] == [7.0]
    assert len(artist_xy(fig.axes[2])) == 1  # one checkpoint, one accuracy point


def test_fig1_selectors_and_empty_selection() -> None:
    rows = measure_rows()
    fig = build_figure(rows, "fig1", batch_size=32)
    assert len(artist_xy(fig.axes[0])) == 2
    with pytest.raises(DataError, match="no spectral or frobenius"):
        build_figure(rows, "fig1", dataset="cifar10")


def test_plain_records_take_the_store_filter_rules() -> None:
    """One filter implementation: comparisons and wildcards work without a store."""
    rows = measure_rows()
    fig = build_figure(rows, "fig1", filter=["batch_size>=100", "dataset=fashion*"])
    assert len(artist_xy(fig.axes[0])) == 2  # S = 512 at two η
    runs = [interp_run(0.4, 200), interp_run(0.025, 12)]
    fig = build_figure(runs, "fig2", filter=["run_id=run-0.4-*", "batch_size<100"])
    assert len([a for a in fig.axes if a.get_visible()]) == 2  # 1 panel + its twin
    with pytest.raises(ConfigError, match="unknown column"):
        build_figure(rows, "fig1", filter=["nonsense=1"])


# -------------------------------------------------------------------------- fig2 / fig3


def interp_run(lr_b: float, batch_b: int, shift: float = 0.0) -> dict[str, Any]:
    alpha = np.linspace(-1, 2, 31)
    loss = (alpha - 0.5) ** 2 + shift
    return {
        "run_id": f"run-{lr_b}-{batch_b}",
        "kind": "probe",
        "attrs": {"lr": [0.1, lr_b], "batch_size": [50, batch_b], "dataset": "cifar10"},
        "probes": {
            "interpolate": ProbeResult(
                coords={"alpha": alpha},
                arrays={
                    "train_loss": loss,
                    "test_loss": loss + 0.2,
                    "train_accuracy": np.exp(-loss),
                    "test_accuracy": 0.9 * np.exp(-loss),
                },
                summary={"width_0_outer": 1.0, "width_1_outer": 0.25},
                attrs={"censored": ["width_0_outer"]},
            )
        },
    }


def test_fig2_twin_axes_curves_and_titles() -> None:
    runs = [interp_run(0.1, 1024), interp_run(0.01, 128, shift=1.0)]
    fig = build_figure(runs, "fig2")
    main = [ax for ax in fig.axes if ax.get_ylabel() == "loss"]
    twins = [ax for ax in fig.axes if ax.get_ylabel() == "accuracy"]
    assert len(main) == 2
    assert len(twins) == 2
    alpha = runs[1]["probes"]["interpolate"].coords["alpha"]
    arrays = runs[1]["probes"]["interpolate"].arrays
    lines = {ln.get_label(): ln for ln in main[1].get_lines()}
    np.testing.assert_array_equal(lines["train loss"].get_xdata(), alpha)
    np.testing.assert_array_equal(lines["train loss"].get_ydata(), arrays["train_loss"])
    np.testing.assert_array_equal(
        lines["validation loss"].get_ydata(), arrays["test_loss"]
    )
    tw = {ln.get_label(): ln for ln in twins[1].get_lines()}
    np.testing.assert_array_equal(
        tw["validation accuracy"].get_ydata(), arrays["test_accuracy"]
    )
    assert main[0].get_xlabel() == (
        "α\nouter half-width: α=0: ≥ 1.00 (left),  α=1: 0.25 (right)"
    )
    title = main[0].get_title()
    assert "α=0: η=0.1, S=50" in title
    assert "α=1: η=0.1, S=1024" in title
    assert "η/S=" in title
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels == [
        "train loss",
        "validation loss",
        "train accuracy",
        "validation accuracy",
    ]


def test_fig3_labels_by_beta() -> None:
    fig = build_figure([interp_run(0.4, 200), interp_run(0.025, 12)], "fig3")
    titles = [ax.get_title() for ax in fig.axes if ax.get_ylabel() == "loss"]
    assert titles[0] == "α=0: β=1\nα=1: β=4"
    assert titles[1] == "α=0: β=1\nα=1: β=0.24"
    fig = build_figure([interp_run(0.4, 200)], "fig3", beta_base=100)
    assert fig.axes[0].get_title() == "α=0: β=0.5\nα=1: β=2"
    fig = build_figure([interp_run(0.4, 200)], "fig3", label="eta-s")
    assert "η=0.4, S=200" in fig.axes[0].get_title()


def test_fig2_selects_runs_and_reports_empty() -> None:
    runs = [interp_run(0.1, 1024), interp_run(0.01, 128)]
    fig = build_figure(runs, "fig2", run_id="run-0.01-128")
    assert len([ax for ax in fig.axes if ax.get_ylabel() == "loss"]) == 1
    with pytest.raises(DataError, match="no interpolate runs"):
        build_figure(runs, "fig2", dataset="fashion-mnist")


# --------------------------------------------------------------------------------- fig4


def train_run(lr: float, batch: int) -> dict[str, Any]:
    epoch = np.arange(1, 6)
    return {
        "run_id": f"train-{lr}-{batch}",
        "kind": "train",
        "attrs": {"lr": lr, "batch_size": batch},
        "training": {
            "epoch": epoch,
            "train_accuracy": 1 - 0.5 ** (epoch * lr),
            "test_accuracy": 0.9 - 0.5 ** (epoch * lr),
        },
    }


def test_fig4_overlays_learning_curves() -> None:
    runs = [train_run(0.1, 50), train_run(1.0, 500), train_run(0.316, 500)]
    fig = build_figure(runs, "fig4")
    train_ax, test_ax = fig.axes[:2]
    assert train_ax.get_title() == "training accuracy"
    assert test_ax.get_title() == "validation accuracy"
    assert train_ax.get_xlabel() == "epoch"
    by_label = {ln.get_label(): ln for ln in test_ax.get_lines()}
    assert set(by_label) == {
        "η=0.1, S=50 (η/S=0.002)",
        "η=1, S=500 (η/S=0.002)",
        "η=0.316, S=500 (η/S=0.00063)",
    }
    np.testing.assert_array_equal(
        by_label["η=1, S=500 (η/S=0.002)"].get_ydata(),
        runs[1]["training"]["test_accuracy"],
    )
    assert len(fig.legends[0].get_texts()) == 3


# ------------------------------------------------------------------ files and the store


@pytest.fixture
def store(tmp_path: Path) -> ResultStore:
    st = ResultStore(tmp_path / "results.zarr")
    for row in measure_rows()[::2]:
        st.write_run(
            kind="measure",
            attrs={
                "model": "mlp-bn",
                "dataset": "fashion-mnist",
                "lr": row["lr"],
                "batch_size": row["batch_size"],
                "checkpoint_sha256": row["checkpoint_sha256"],
                "final": {"test_accuracy": row["test_accuracy"]},
            },
            metrics={
                "spectral": MetricResult(value=row["value"]),
                "frobenius": MetricResult(value=2 * row["value"], stderr=3.0),
            },
        )
    for run in (interp_run(0.1, 1024), interp_run(0.01, 128)):
        st.write_run(kind="probe", attrs=run["attrs"], probes=run["probes"])
    for run in (train_run(0.1, 50), train_run(0.5, 500)):
        st.write_run(
            kind="train",
            attrs={**run["attrs"], "dataset": "cifar10"},
            training=run["training"],
        )
    return st


@pytest.mark.parametrize("figure", ["fig1", "fig2", "fig3", "fig4"])
def test_plot_from_store_writes_png(
    store: ResultStore, tmp_path: Path, figure: str
) -> None:
    out = plot_figure(store.path, figure, tmp_path / "out" / f"{figure}.png")
    assert out == tmp_path / "out" / f"{figure}.png"
    assert out.read_bytes()[:8] == PNG_MAGIC
    assert out.stat().st_size > 10_000


def test_plot_from_store_data_and_filters(store: ResultStore, tmp_path: Path) -> None:
    fig = build_figure(store, "fig1")
    assert len(artist_xy(fig.axes[0])) == 4
    fig = build_figure(store.path, "fig2", filter=["batch_size_b=1024"])
    panels = [ax for ax in fig.axes if ax.get_ylabel() == "loss"]
    assert len(panels) == 1
    assert "S=1024" in panels[0].get_title()
    fig = build_figure(store.path, "fig4", filter={"lr": 0.5})
    assert [ln.get_label() for ln in fig.axes[1].get_lines()] == [
        "η=0.5, S=500 (η/S=0.001)"
    ]
    pdf = plot_figure(store.path, "fig2", tmp_path / "fig2.pdf")
    assert pdf.read_bytes()[:5] == b"%PDF-"
    with pytest.raises(ConfigError, match="unknown column"):
        build_figure(store.path, "fig2", filter=["nonsense=1"])


def test_plot_errors(tmp_path: Path) -> None:
    rows = measure_rows()
    with pytest.raises(ConfigError, match="unknown figure"):
        plot_figure(rows, "fig5", tmp_path / "x.png")
    with pytest.raises(ConfigError, match="image format"):
        plot_figure(rows, "fig1", tmp_path / "x.jpeg")
    with pytest.raises(ConfigError, match="label"):
        plot_figure([interp_run(0.1, 10)], "fig2", tmp_path / "x.png", label="gamma")
    with pytest.raises(StoreError):
        plot_figure(tmp_path / "missing.zarr", "fig1", tmp_path / "x.png")
    with pytest.raises(ConfigError, match="cannot read"):
        plot_figure(42, "fig1", tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


# ------------------------------------------------------------------ density


def test_density_figure_from_real_measurements(tmp_path: Path) -> None:
    """Measure two small checkpoints with spectral + density, plot the spectra."""
    import torch

    import sharpkit
    import sharpkit.builtin._models as models

    st = tmp_path / "results.zarr"
    lams = {}
    for lr, batch in ((0.1, 32), (0.02, 512)):
        torch.manual_seed(batch)
        net = models.build_mlp_bn(input_shape=(16,), num_classes=4, depth=1, width=8)
        meta = sharpkit.CheckpointMeta(
            model="mlp-bn",
            model_options={"depth": 1, "width": 8},
            dataset="synthetic",
            lr=lr,
            batch_size=batch,
        )
        path = sharpkit.save_checkpoint(tmp_path / f"s{batch}.pt", net, meta)
        m = sharpkit.measure(path, None, ["spectral", "density"], store=st)
        lams[batch] = m["spectral"].value
    # measured again: the newest run of a checkpoint is the one drawn
    sharpkit.measure(path, None, ["spectral", "density"], store=st, force=True)

    fig = build_figure(st, "density")
    (ax,) = fig.axes
    assert ax.get_yscale() == "log"
    curves = [ln for ln in ax.get_lines() if ln.get_linestyle() == "-"]
    # ordered by η/S: 0.02/512 first
    assert [c.get_label() for c in curves] == ["η=0.02, S=512", "η=0.1, S=32"]
    for c in curves:
        x, y = (np.asarray(a, dtype=float) for a in c.get_data())
        assert np.all(np.diff(x) > 0)
        integral = float(np.sum((y[1:] + y[:-1]) / 2 * np.diff(x)))
        assert integral == pytest.approx(1.0, rel=0.02)  # a density (floor aside)
    dashed = sorted(
        float(ln.get_xdata()[0])
        for ln in ax.get_lines()
        if ln.get_linestyle() == "--" and len(ln.get_xdata())
    )
    assert dashed == pytest.approx(sorted(lams.values()))
    out = plot_figure(st, "density", tmp_path / "density.png")
    assert out.read_bytes()[:8] == PNG_MAGIC


def test_density_figure_needs_density_results(store: ResultStore) -> None:
    with pytest.raises(DataError, match="-m density"):
        build_figure(store, "density")


# ---------------------------------------------------------------------------- sam


def sam_rows() -> list[dict[str, Any]]:
    """Measure rows of four checkpoints (SGD and SAM at two η/S) + train rows."""
    rows = []
    for trainer, scale in (("sgd", 1.0), ("sam", 0.5)):
        for lr, batch in ((0.1, 32), (0.02, 256)):
            sha = f"{trainer}-{lr}-{batch}"
            base = {
                "lr": lr, "batch_size": batch, "lr_over_batch": lr / batch,
                "checkpoint_sha256": sha, "test_accuracy": 0.8 + scale / 10,
            }  # fmt: skip
            rows.append({**base, "kind": "train", "trainer": trainer})
            for metric, value in (
                ("spectral", 10),
                ("frobenius", 100),
                ("adaptive", 1),
            ):
                rows.append(
                    {**base, "kind": "measure", "trainer": None, "metric": metric,
                     "value": value * scale, "stderr": None}
                )  # fmt: skip
    return rows


def marker_points(ax: Any) -> dict[str, list[tuple[float, float]]]:
    """(x, y) of the data points by fill style: 'full' (sgd) or 'none' (sam)."""
    out: dict[str, list[tuple[float, float]]] = {}
    for line in ax.get_lines():
        xs, ys = line.get_xdata(), line.get_ydata()
        if len(xs) == 1 and line.get_marker() in ("o", "s"):
            out.setdefault(line.get_fillstyle(), []).append((xs[0], ys[0]))
    return {k: sorted(v) for k, v in out.items()}


def test_sam_figure_shows_each_trainer_as_its_own_series() -> None:
    fig = build_figure(sam_rows(), "sam")
    axes = fig.axes
    assert [ax.get_title() for ax in axes] == [
        "(a) spectral norm", "(b) Frobenius norm", "(c) adaptive sharpness",
        "(d) validation accuracy",
    ]  # fmt: skip
    ratios = sorted([0.1 / 32, 0.02 / 256])
    # the trainer comes from the train rows (measure rows do not record it)
    spectral = marker_points(axes[0])
    assert spectral["full"] == [(x, 10.0) for x in ratios]  # sgd: filled circles
    assert spectral["none"] == [(x, 5.0) for x in ratios]  # sam: open squares
    frob = marker_points(axes[1])
    np.testing.assert_allclose(frob["none"], [(x, math.log(50.0)) for x in ratios])
    np.testing.assert_allclose(
        marker_points(axes[3])["full"], [(x, 0.9) for x in ratios]
    )
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels == ["sgd", "sam", "S = 32", "S = 256"]
    with pytest.raises(DataError, match="reproduce sam"):
        build_figure([r for r in sam_rows() if r["kind"] == "train"], "sam")


# ------------------------------------------------------------------------ rescale


def test_rescale_figure_normalises_each_measure_at_c_one(tmp_path: Path) -> None:
    c = np.array([0.1, 1.0, 10.0])
    result = ProbeResult(
        coords={"c": c},
        arrays={
            "spectral": np.array([400.0, 4.0, 400.0]),
            "spectral_stderr": np.full(3, np.nan),
            "adaptive": np.array([0.2, 0.2, 0.2]),
            "adaptive_stderr": np.array([0.01, 0.01, 0.01]),
            "output_change": np.array([1e-7, 0.0, 2e-7]),
        },
        summary={"max_output_change": 2e-7},
        attrs={"metrics": ["spectral", "adaptive"], "layers": ["fc2", "fc3"]},
    )
    st = ResultStore(tmp_path / "r.zarr")
    st.write_run(kind="probe", attrs={"probe": "rescale"}, probes={"rescale": result})
    fig = build_figure(st.path, "rescale")
    (ax,) = fig.axes
    lines = {cont.get_label(): cont.lines[0] for cont in ax.containers}
    np.testing.assert_allclose(lines["spectral"].get_ydata(), [100.0, 1.0, 100.0])
    np.testing.assert_allclose(lines["adaptive"].get_ydata(), [1.0, 1.0, 1.0])
    assert (ax.get_xscale(), ax.get_yscale()) == ("log", "log")
    assert "fc2 → fc3" in ax.get_title()
    assert "2e-07" in ax.get_title()
    out = plot_figure(st.path, "rescale", tmp_path / "rescale.png")
    assert out.read_bytes()[:8] == PNG_MAGIC
    with pytest.raises(DataError, match="no rescale probes"):
        build_figure([], "rescale")
