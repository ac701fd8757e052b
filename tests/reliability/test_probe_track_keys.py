"""Probes are reused only for the same computation (issue 21, section 1, probes).

As for ``measure`` (test_reuse_keys.py): a probe stored with ``--store`` and
then asked for with a changed model option, an edited helper module of the
model, or another copy of the data under ``--data-root`` is computed afresh, and
equals what a run without any store gives; the same probe again is reused.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from _rel import cli, ok
from test_reuse_keys import _fashion_root, _forget, _write_weights_and_data

import sharpkit
from sharpkit.checkpoint import save_checkpoint

MODEL = """
import torch
from helper import act


class Net(torch.nn.Module):
    def __init__(self, scale: float = 1.0):
        super().__init__()
        self.fc = torch.nn.Linear(4, 3)
        self.scale = scale

    def forward(self, x):
        return self.scale * self.fc(act(x))
"""


@pytest.fixture
def project(tmp_path: Path) -> Iterator[Path]:
    """Model code with a helper module, a state_dict and a tensor file."""
    folder = tmp_path / "proj"
    folder.mkdir()
    (folder / "m.py").write_text(MODEL)
    (folder / "helper.py").write_text("import torch\n\nact = torch.tanh\n")
    _write_weights_and_data(folder)
    yield folder
    _forget(folder)


def probed(*args: Any) -> tuple[list[float], bool]:
    """``probe direction ... --json``: the train-loss curve and whether it was reused.

    A probe computed now is written as a new run (its ``run_id``); one taken from
    the store has none.
    """
    result = ok(cli("probe", "direction", *args, "-o", "alpha=-1:1:5", "--json"))
    out = json.loads(result.stdout)
    return [float(v) for v in out["arrays"]["train_loss"]], out["run_id"] is None


def _net(project: Path, *extra: str) -> list[Any]:
    return [
        project / "w.pt", "--model", f"{project / 'm.py'}:Net",
        "--data", project / "data.pt", *extra,
    ]  # fmt: skip


def _fresh(store: Path, first: list[Any], second: list[Any], reset: Any) -> None:
    """``second`` after ``first`` in ``store``: computed, equal to a run without one."""
    a, _ = probed(*first, "--store", store)
    reset()
    b, reused = probed(*second, "--store", store)
    reset()
    truth, _ = probed(*second, "--no-store")
    assert a != pytest.approx(truth, rel=1e-3)  # the pair really differs
    assert not reused
    # the same computation in the same process: equal to the last bit
    assert b == truth


def test_a_changed_model_option_is_probed_again(project: Path, tmp_path: Path) -> None:
    _fresh(
        tmp_path / "s.zarr",
        _net(project, "--model-option", "scale=1"),
        _net(project, "--model-option", "scale=3"),
        lambda: _forget(project),
    )


def test_an_edited_helper_module_is_probed_again(project: Path, tmp_path: Path) -> None:
    def edit() -> None:
        _forget(project)
        (project / "helper.py").write_text(
            "import torch\n\nact = torch.nn.functional.softsign\n"
        )

    _fresh(tmp_path / "s.zarr", _net(project), _net(project), edit)


def test_the_same_probe_is_still_reused(project: Path, tmp_path: Path) -> None:
    store = tmp_path / "s.zarr"
    a, first_reused = probed(*_net(project), "--store", store)
    _forget(project)
    b, reused = probed(*_net(project), "--store", store)
    assert not first_reused
    assert reused
    assert a == b


def test_another_copy_of_the_dataset_is_probed_again(tmp_path: Path) -> None:
    net = sharpkit.build_model(
        "mlp-bn", input_shape=(1, 28, 28), num_classes=10,
        options={"width": 16}, seed=0,
    )  # fmt: skip
    meta = sharpkit.CheckpointMeta(
        model="mlp-bn", model_options={"width": 16}, dataset="fashion-mnist"
    )
    ckpt = save_checkpoint(tmp_path / "f.pt", net, meta)
    one, two = _fashion_root(tmp_path / "one", 0), _fashion_root(tmp_path / "two", 1)
    _fresh(
        tmp_path / "s.zarr",
        [ckpt, "--data-root", one],
        [ckpt, "--data-root", two],
        lambda: None,
    )


# ------------------------------------------------------------------------ Tracker


def test_a_tracker_curve_is_keyed_on_its_data_and_never_reused(tmp_path: Path) -> None:
    """Two trackers on other data into one store: each curve its own, and says so.

    The tracker measures a changing model, so nothing it measures is taken from
    the store; its stored run names the analysis set by the same digest as
    ``measure`` keys on (:func:`~sharpkit.api.fingerprint.data_digest`).
    """
    from sharpkit._data import DataSplit
    from sharpkit.api.fingerprint import data_digest

    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)  # the same net whatever ran before in this process
    net = torch.nn.Sequential(
        torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)
    )
    store = tmp_path / "r.zarr"
    sets = [(torch.randn(32, 4, generator=gen), torch.arange(32) % 3) for _ in "ab"]
    curves = []
    for x, y in sets:
        with sharpkit.Tracker((x, y), every=1, store=store, tol=1e-8) as tracker:
            tracker.step(net, step=1)
        curves.append(float(tracker.curves["spectral"][-1]))
        truth = sharpkit.measure(net, (x, y), "spectral", tol=1e-8)["spectral"].value
        # the same computation in the same process: equal to the last bit
        assert curves[-1] == truth
    assert curves[0] != pytest.approx(curves[1], rel=1e-3)
    runs = sorted(
        sharpkit.ResultStore(store, create=False).runs(), key=lambda r: r.run_id
    )
    assert [r.attrs["data_digest"] for r in runs] == [
        data_digest(DataSplit(x, y)) for x, y in sets
    ]
