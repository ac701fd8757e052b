"""sharpkit.Tracker: sharpness every N steps of the user's own training loop."""

from __future__ import annotations

import copy
import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import sharpkit
from sharpkit.errors import ConfigError, StoreError, UnknownNameError


def data(n: int = 96, d: int = 6, classes: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    return x, y


def bn_drop_net() -> nn.Module:
    """BN (running statistics change in training) and dropout (global RNG)."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(6, 12), nn.BatchNorm1d(12), nn.ReLU(), nn.Dropout(0.2),
        nn.Linear(12, 3),
    )  # fmt: skip


def train(tracker: sharpkit.Tracker | None, steps: int = 12):
    """A plain loop: shuffled DataLoader, dropout, momentum, all on global RNGs."""
    x, y = data()
    net = bn_drop_net()
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    torch.manual_seed(1)
    np.random.seed(1)  # noqa: NPY002 - the user's global RNGs must survive
    random.seed(1)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x, y), batch_size=16, shuffle=True
    )
    step = 0
    while step < steps:
        for xb, yb in loader:
            step += 1
            loss = nn.functional.cross_entropy(net(xb), yb)
            opt.zero_grad()
            loss.backward()
            if tracker is not None:  # between backward and step: grads must survive
                tracker.step(net, step=step)
            opt.step()
            if step == steps:
                break
    rngs = (torch.get_rng_state(), np.random.get_state()[1], random.getstate())  # noqa: NPY002
    return net, opt, rngs


def test_tracking_does_not_change_the_training_bit_for_bit() -> None:
    x, y = data()
    shuffled = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x, y), batch_size=32, shuffle=True
    )
    tracker = sharpkit.Tracker(
        shuffled,  # read at construction: must not draw from the global RNG either
        ["spectral", "frobenius"],
        every=4,
        options={"frobenius": {"probes": 2}},
    )
    net_a, opt_a, rng_a = train(tracker)
    net_b, opt_b, rng_b = train(None)
    assert tracker.curves["step"].tolist() == [4, 8, 12]
    for (ka, va), (kb, vb) in zip(
        net_a.state_dict().items(), net_b.state_dict().items(), strict=True
    ):
        assert ka == kb
        assert torch.equal(va, vb), ka  # weights and BN statistics, bit for bit
    for pa, pb in zip(net_a.parameters(), net_b.parameters(), strict=True):
        assert torch.equal(pa.grad, pb.grad)
        assert torch.equal(
            opt_a.state[pa]["momentum_buffer"], opt_b.state[pb]["momentum_buffer"]
        )
    assert torch.equal(rng_a[0], rng_b[0])
    assert np.array_equal(rng_a[1], rng_b[1])
    assert rng_a[2] == rng_b[2]
    assert [m.training for m in net_a.modules()] == [True] * len(list(net_a.modules()))


def dense_lambda_max(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Ground truth: the largest eigenvalue of the dense float64 Hessian."""
    names = [n for n, _ in net.named_parameters()]
    params = tuple(p.detach() for p in net.parameters())

    def loss(*flat):
        out = torch.func.functional_call(net, dict(zip(names, flat, strict=True)), x)
        return nn.functional.cross_entropy(out, y)

    blocks = torch.autograd.functional.hessian(loss, params)
    sizes = [p.numel() for p in params]
    rows = [
        torch.cat(
            [blocks[i][j].reshape(sizes[i], sizes[j]) for j in range(len(sizes))], 1
        )
        for i in range(len(sizes))
    ]
    return float(torch.linalg.eigvalsh(torch.cat(rows, 0))[-1])


def test_tracked_values_are_lambda_max_of_the_model_at_that_step() -> None:
    x, y = data(64, 4)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    x = x.double()
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    tracker = sharpkit.Tracker((x, y), "spectral", every=3)
    truth: dict[int, float] = {}
    for step in range(1, 10):
        loss = nn.functional.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if tracker.step(net) is not None:
            net.eval()
            truth[step] = dense_lambda_max(net, x, y)
            net.train()
    curves = tracker.curves
    assert curves["step"].tolist() == [3, 6, 9] == sorted(truth)
    for i, step in enumerate(curves["step"].tolist()):
        # Lanczos stops at the relative tolerance 1e-3 (its bound is an a-posteriori
        # estimate); in float64 on 51 parameters it is far closer in practice.
        assert curves["spectral"][i] == pytest.approx(truth[step], rel=1e-3)
        assert curves["spectral_bound"][i] <= 1e-3 * curves["spectral"][i]
        assert curves["spectral_hvps"][i] >= 1
        assert math.isnan(curves["spectral_stderr"][i])  # exact method: no stderr
    # from the second measurement on, Lanczos starts from the previous eigenvector
    assert tracker.last is not None
    assert tracker.last["spectral"].attrs["start"] == "warm"
    assert tracker.warm_start is not None
    assert torch.equal(tracker.warm_start, tracker.last.warm_start)


def test_cold_tracking_gives_the_same_values() -> None:
    x, y = data(64, 4)
    runs = {}
    for warm in (True, False):
        torch.manual_seed(0)
        net = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()
        opt = torch.optim.SGD(net.parameters(), lr=0.5)
        tracker = sharpkit.Tracker((x.double(), y), every=2, warm_start=warm)
        for _ in range(6):
            loss = nn.functional.cross_entropy(net(x.double()), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            tracker.step(net)
        assert tracker.last is not None
        assert tracker.last["spectral"].attrs["start"] == ("warm" if warm else "random")
        runs[warm] = tracker.curves["spectral"]
    # both certified to the relative tolerance 1e-3 of the same λ_max
    np.testing.assert_allclose(runs[True], runs[False], rtol=2e-3)
    assert tracker.warm_start is None


def test_steps_due_force_and_counting() -> None:
    x, y = data(32, 4)
    net = nn.Sequential(nn.Linear(4, 3))
    tracker = sharpkit.Tracker((x, y), every=3)
    measured = [s for s in range(1, 8) if tracker.step(net) is not None]
    assert measured == [3, 6]  # counted from 1 when no step is given
    assert tracker.due(9)
    assert not tracker.due(10)
    assert tracker.step(net, step=7, force=True) is not None
    assert tracker.step(net, step=7, force=True) is None  # never twice
    assert tracker.step(net, step=0) is not None  # step 0: the initial model
    row = tracker.step(net, step=12, extra={"epoch": 2, "lr": torch.tensor(0.1)})
    assert row is not None
    assert row["epoch"] == 2
    assert row["lr"] == pytest.approx(0.1)
    curves = tracker.curves
    assert curves["step"].tolist() == [3, 6, 7, 0, 12]
    assert curves["step"].dtype == np.int64
    assert np.isnan(curves["epoch"][:-1]).all()
    assert curves["epoch"][-1] == 2
    assert list(curves)[:8] == [
        "step", "spectral", "spectral_stderr", "spectral_bound", "spectral_hvps",
        "spectral_seconds", "spectral_data_stderr", "seconds",
    ]  # fmt: skip
    assert np.isnan(curves["spectral_data_stderr"]).all()  # not asked for


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"every": 0}, "every must be a whole number of steps >= 1"),
        ({"every": 2.5}, "every must be a whole number"),
        ({"metrics": []}, "no metric requested"),
        ({"samples": 0}, "samples must be a positive count"),
        ({"options": {"spectral": {"nope": 1}}}, "nope"),
        ({"options": {"trace": {}}}, "options given for 'trace'"),
        ({"bn_mode": "batch"}, "bn_mode must be"),
    ],
)
def test_bad_arguments_fail_at_construction(kwargs, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        sharpkit.Tracker(data(), **kwargs)


def test_unknown_metric_suggests_a_name() -> None:
    with pytest.raises(UnknownNameError, match="spectral"):
        sharpkit.Tracker(data(), ["spectrl"])


def test_bad_steps_and_extras_are_one_line_errors() -> None:
    net = nn.Sequential(nn.Linear(6, 3))
    tracker = sharpkit.Tracker(data(), every=1)
    with pytest.raises(ConfigError, match="step must be a whole number >= 0"):
        tracker.step(net, step=-1)
    with pytest.raises(ConfigError, match=r"needs the torch\.nn\.Module"):
        tracker.step("model.pt", step=1)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="'spectral_bound' clashes"):
        tracker.step(net, step=1, extra={"spectral_bound": 1.0})
    with pytest.raises(ConfigError, match="must be a number"):
        tracker.step(net, step=1, extra={"note": "hi"})
    assert tracker.close() is None  # no store: nothing written
    with pytest.raises(ConfigError, match="this Tracker is closed"):
        tracker.step(net, step=2)


def test_not_a_store_fails_before_training(tmp_path: Path) -> None:
    (tmp_path / "file.zarr").write_text("not a store")
    with pytest.raises(StoreError):
        sharpkit.Tracker(data(), store=tmp_path / "file.zarr")


def test_curve_is_stored_as_one_track_run(tmp_path: Path) -> None:
    x, y = data(48, 4)
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    store = tmp_path / "r.zarr"
    with sharpkit.Tracker(
        (x, y), every=2, store=store, attrs={"lr": 0.1, "batch_size": 48}
    ) as tracker:
        for _ in range(6):
            loss = nn.functional.cross_entropy(net(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            tracker.step(net, extra={"train_loss": loss})  # a tensor is fine
    assert tracker.run_id is not None
    assert tracker.close() == tracker.run_id  # idempotent: one run
    rs = sharpkit.ResultStore(store, create=False)
    (info,) = rs.runs()
    assert info.kind == "track"
    assert info.attrs["metrics"] == ["spectral"]
    assert info.attrs["every"] == 2
    assert info.attrs["measurements"] == 3
    assert info.attrs["interrupted"] is False
    assert info.attrs["model"] == "Sequential"
    assert "checkpoint_sha256" not in info.attrs  # one per step: not a run attribute
    run = rs.run(info.run_id)
    for key, values in tracker.curves.items():
        np.testing.assert_array_equal(run.training[key], values, err_msg=key)

    (row,) = sharpkit.open_results(store, kind="track", as_frame=False)
    assert row["metric"] == "spectral"
    assert row["step"] == 6
    assert row["value"] == tracker.curves["spectral"][-1]
    assert row["hvps"] == tracker.curves["spectral_hvps"][-1]
    assert row["unit"] == "loss / parameter²"
    assert row["lr_over_batch"] == pytest.approx(0.1 / 48)
    assert row["train_loss"] == pytest.approx(tracker.curves["train_loss"][-1])

    # plain xarray, with "step" as the dimension and coordinate
    xr = pytest.importorskip("xarray")
    ds = xr.open_zarr(store, group=f"runs/{info.run_id}/training", consolidated=False)
    assert ds.spectral.dims == ("step",)
    assert ds.step.values.tolist() == [2, 4, 6]
    assert ds.spectral.attrs["units"] == "loss / parameter²"

    # and on the command line
    from sharpkit.cli import app

    result = CliRunner().invoke(
        app, ["results", str(store), "--kind", "track", "--json"]
    )
    assert result.exit_code == 0, result.output
    assert [r["step"] for r in json.loads(result.stdout)] == [6]


def test_an_exception_in_the_loop_stores_the_curve_so_far(tmp_path: Path) -> None:
    x, y = data(32, 4)
    net = nn.Sequential(nn.Linear(4, 3))

    def loop() -> None:
        with sharpkit.Tracker((x, y), every=1, store=tmp_path / "r.zarr") as tracker:
            tracker.step(net)
            tracker.step(net)
            raise RuntimeError("diverged")

    with pytest.raises(RuntimeError, match="diverged"):
        loop()
    (info,) = sharpkit.ResultStore(tmp_path / "r.zarr", create=False).runs()
    assert info.attrs["interrupted"] is True
    assert info.attrs["measurements"] == 2


def test_data_forms_are_read_once(tmp_path: Path) -> None:
    x, y = data(40, 6)
    net = nn.Sequential(nn.Linear(6, 3))
    # the first `samples` examples, whatever form they come in
    ref = sharpkit.measure(net, (x[:24], y[:24]))["spectral"].value
    forms = [
        (x, y),
        sharpkit.DataSplit(x, y),
        torch.utils.data.TensorDataset(x, y),
        torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8),
    ]
    for form in forms:
        tracker = sharpkit.Tracker(form, every=1, samples=24, warm_start=False)
        row = tracker.step(net)
        assert row is not None
        assert row["spectral"] == ref, type(form).__name__
    ds = sharpkit.load_dataset("synthetic", options={"shape": "6", "n_train": 64})
    tracker = sharpkit.Tracker(ds, every=1, samples=24, store=tmp_path / "r.zarr")
    tracker.step(nn.Sequential(nn.Linear(6, 10)))
    tracker.close()
    (info,) = sharpkit.ResultStore(tmp_path / "r.zarr", create=False).runs()
    assert info.attrs["dataset"] == "synthetic"
    assert info.attrs["samples"] == 24
    with pytest.raises(ConfigError, match="cannot use"):
        sharpkit.Tracker(object(), every=1)


def test_model_on_another_dtype_is_measured_on_a_copy() -> None:
    x, y = data(32, 4)
    net = nn.Sequential(nn.Linear(4, 3))
    before = copy.deepcopy(net.state_dict())
    tracker = sharpkit.Tracker((x, y), every=1, dtype="float64")
    tracker.step(net)
    assert tracker.last is not None
    assert tracker.last.attrs["dtype"] == "float64"
    for k, v in net.state_dict().items():
        assert v.dtype == torch.float32
        assert torch.equal(v, before[k])


def test_state_round_trip_continues_the_curve_exactly(tmp_path: Path) -> None:
    x, y = data(48, 4)

    def run(stop_after: int | None) -> tuple[sharpkit.Tracker, nn.Module]:
        torch.manual_seed(0)
        net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
        opt = torch.optim.SGD(net.parameters(), lr=0.3)
        calls = []
        tracker = sharpkit.Tracker(
            (x, y), every=2, progress=lambda *a, **kw: calls.append(kw)
        )
        for step in range(1, 9):
            if step == stop_after:  # "kill" the run: save, rebuild, load, go on
                torch.save(
                    {"net": net.state_dict(), "opt": opt.state_dict(),
                     "tracker": tracker.state_dict()},
                    tmp_path / "ckpt.pt",
                )  # fmt: skip
                state = torch.load(tmp_path / "ckpt.pt", weights_only=True)
                net.load_state_dict(state["net"])
                opt.load_state_dict(state["opt"])
                tracker = sharpkit.Tracker((x, y), every=2)
                tracker.load_state_dict(state["tracker"])
            loss = nn.functional.cross_entropy(net(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            tracker.step(net)
        assert {"description": "measuring spectral"} in calls
        return tracker, net

    whole, _ = run(None)
    resumed, _ = run(5)  # after the measurements at steps 2 and 4
    assert resumed.curves["step"].tolist() == [2, 4, 6, 8]
    for key in ("spectral", "spectral_bound", "spectral_hvps"):
        np.testing.assert_array_equal(whole.curves[key], resumed.curves[key])


def test_load_state_dict_refuses_other_states() -> None:
    tracker = sharpkit.Tracker(data(), every=2)
    with pytest.raises(ConfigError, match="not a Tracker state"):
        tracker.load_state_dict({"rows": []})
    other = sharpkit.Tracker(data(), ["trace"], every=2).state_dict()
    with pytest.raises(ConfigError, match=r"tracks \['trace'\], not \['spectral'\]"):
        tracker.load_state_dict(other)
