"""A stored result is reused only for the same computation (issue 21, section 1).

Each case measures one thing with ``--store``, then another that the old key
could not tell apart, and checks the second is computed afresh and equals what
a run without any store gives. The key is honest by construction: the
checkpoint's hash and weights come from the same bytes, the analysis set is
keyed by a digest of its tensors, and model and loss by what they compute on a
probe batch (:mod:`sharpkit.api.fingerprint`).

Cases that edit code run the second measurement as a new process would: the
edited modules are dropped from ``sys.modules`` first (or a real subprocess
runs, for plugins).
"""

from __future__ import annotations

import builtins
import io
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from _rel import cli, ok

import sharpkit
from sharpkit.checkpoint import load_checkpoint, save_checkpoint

LIN_CODE = """
import torch


class Lin(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(x)


class Tanh(Lin):
    def forward(self, x):
        return torch.tanh(self.fc(x))


class Scaled(Lin):
    def __init__(self, scale: float = 1.0):
        super().__init__()
        self.scale = scale

    def forward(self, x):
        return self.scale * self.fc(x)
"""

HELPER_MODEL = """
import torch
from helper import act


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(act(x))
"""

LOSS_CODE = """
import torch
from losshelp import WEIGHT


def loss(outputs, targets):
    return WEIGHT * torch.nn.functional.cross_entropy(outputs, targets)
"""


@pytest.fixture
def project(tmp_path: Path) -> Iterator[Path]:
    """A user's folder: model code, helpers, a state_dict and a tensor file."""
    folder = tmp_path / "proj"
    folder.mkdir()
    (folder / "lin.py").write_text(LIN_CODE)
    (folder / "m.py").write_text(HELPER_MODEL)
    (folder / "helper.py").write_text("import torch\n\nact = torch.tanh\n")
    (folder / "l.py").write_text(LOSS_CODE)
    (folder / "losshelp.py").write_text("WEIGHT = 1.0\n")
    _write_weights_and_data(folder)
    yield folder
    _forget(folder)


def _write_weights_and_data(folder: Path) -> None:
    """A seeded state_dict for ``fc`` (``w.pt``) and a 64-example tensor file."""
    gen = torch.Generator().manual_seed(0)
    lin = torch.nn.Linear(4, 3)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(3, 4, generator=gen))
        lin.bias.copy_(torch.randn(3, generator=gen))
    torch.save({f"fc.{k}": v for k, v in lin.state_dict().items()}, folder / "w.pt")
    x = torch.randn(64, 4, generator=gen)
    torch.save({"x": x, "y": torch.arange(64) % 3}, folder / "data.pt")


def _forget(folder: Path) -> None:
    """Drop the modules imported from ``folder``: a new process has none of them."""
    for name, mod in list(sys.modules.items()):
        where = getattr(mod, "__file__", None) or ""
        if where.startswith(str(folder)):
            del sys.modules[name]
    if str(folder) in sys.path:
        sys.path.remove(str(folder))


def measured(*args: Any) -> tuple[float, bool]:
    """``measure ... --json``: the (only) metric's value and whether it was reused."""
    result = ok(cli("measure", *args, "--json"))
    (entry,) = json.loads(result.stdout)
    (metric,) = entry["metrics"].values()
    return float(metric["value"]), bool(metric["reused"])


def fresh_and_stored(
    store: Path, first: list[Any], second: list[Any], reset: Callable[[], None]
) -> tuple[float, float, bool, float]:
    """Measure ``first`` into ``store``, then ``second`` with and without it.

    Returns: the first value, the second (with the store), whether the second
    was reused, and the second without any store (the truth).
    """
    a, _ = measured(*first, "--store", store)
    reset()
    b, reused = measured(*second, "--store", store)
    reset()
    truth, _ = measured(*second, "--no-store")
    return a, b, reused, truth


def _assert_fresh(a: float, b: float, reused: bool, truth: float) -> None:
    assert a != pytest.approx(truth, rel=1e-3)  # the pair really differs
    assert not reused
    # The same computation in the same process: equal to the last bit.
    assert b == truth


def _lin(project: Path, model: str, *extra: str) -> list[Any]:
    return [
        project / "w.pt", "--model", f"{project / 'lin.py'}:{model}",
        "--data", project / "data.pt", *extra,
    ]  # fmt: skip


# ------------------------------------------------------------------ model and loss


@pytest.mark.parametrize(
    ("first", "second"),
    [
        (
            ("Scaled", "--model-option", "scale=1"),
            ("Scaled", "--model-option", "scale=3"),
        ),
        (("Lin",), ("Tanh",)),
    ],
    ids=["model-option", "class"],
)
def test_other_model_code_is_not_the_stored_result(
    project: Path, tmp_path: Path, first: tuple[str, ...], second: tuple[str, ...]
) -> None:
    a, b, reused, truth = fresh_and_stored(
        tmp_path / "s.zarr", _lin(project, *first), _lin(project, *second),
        lambda: _forget(project),
    )  # fmt: skip
    _assert_fresh(a, b, reused, truth)


def test_the_same_model_is_still_reused(project: Path, tmp_path: Path) -> None:
    store = tmp_path / "s.zarr"
    a, _ = measured(*_lin(project, "Lin"), "--store", store)
    _forget(project)
    b, reused = measured(*_lin(project, "Lin"), "--store", store)
    assert reused
    assert a == b


def test_an_edited_helper_module_of_the_model(project: Path, tmp_path: Path) -> None:
    args = [
        project / "w.pt", "--model", f"{project / 'm.py'}:Net",
        "--data", project / "data.pt",
    ]  # fmt: skip

    def edit() -> None:
        _forget(project)
        (project / "helper.py").write_text(
            "import torch\n\nact = torch.nn.functional.softsign\n"
        )

    a, b, reused, truth = fresh_and_stored(tmp_path / "s.zarr", args, args, edit)
    _assert_fresh(a, b, reused, truth)


def test_an_edited_helper_module_of_the_loss(project: Path, tmp_path: Path) -> None:
    args = [*_lin(project, "Lin"), "--loss", f"{project / 'l.py'}:loss"]

    def edit() -> None:
        _forget(project)
        (project / "losshelp.py").write_text("WEIGHT = 2.0\n")

    a, b, reused, truth = fresh_and_stored(tmp_path / "s.zarr", args, args, edit)
    _assert_fresh(a, b, reused, truth)


# --------------------------------------------------------------------------- data


def _fashion_root(folder: Path, seed: int) -> Path:
    """A small copy of Fashion-MNIST's layout holding other images."""
    rng = np.random.default_rng(seed)
    folder.mkdir()
    for part, n in (("train", 256), ("test", 64)):
        np.savez(
            folder / f"fashion-mnist_{part}.npz",
            **{
                f"x_{part}": rng.integers(0, 256, (n, 28, 28), dtype=np.uint8),
                f"y_{part}": np.arange(n) % 10,
            },
        )
    return folder


def test_another_copy_of_the_dataset_under_data_root(tmp_path: Path) -> None:
    net = sharpkit.build_model(
        "mlp-bn", input_shape=(1, 28, 28), num_classes=10,
        options={"width": 16}, seed=0,
    )  # fmt: skip
    meta = sharpkit.CheckpointMeta(
        model="mlp-bn", model_options={"width": 16}, dataset="fashion-mnist"
    )
    ckpt = save_checkpoint(tmp_path / "f.pt", net, meta)
    one, two = _fashion_root(tmp_path / "one", 0), _fashion_root(tmp_path / "two", 1)
    common = [ckpt, "--samples", "128"]
    a, b, reused, truth = fresh_and_stored(
        tmp_path / "s.zarr",
        [*common, "--data-root", one],
        [*common, "--data-root", two],
        lambda: None,
    )
    _assert_fresh(a, b, reused, truth)


# ---------------------------------------------------------------------- bn-mode


@pytest.mark.parametrize("metric", ["spectral", "trace"])
def test_batch_statistics_depend_on_the_batch_size(
    tiny: Path, tmp_path: Path, metric: str
) -> None:
    common = [tiny, "-m", metric, "--bn-mode", "train", "--tol", "1e-6"]
    a, b, reused, truth = fresh_and_stored(
        tmp_path / "s.zarr",
        [*common, "--batch-size", "16"],
        [*common, "--batch-size", "128"],
        lambda: None,
    )
    assert not reused
    assert b == truth
    assert a != truth


# -------------------------------------------------------------------- checkpoints


def test_hash_and_weights_come_from_the_same_bytes(tmp_path: Path, monkeypatch) -> None:
    """``x.pt`` replaced (renamed over) right after sharpkit first opens it."""
    a, b = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    with torch.no_grad():
        b.weight.add_(1.0)
    path = tmp_path / "x.pt"
    save_checkpoint(tmp_path / "b.pt", b)
    save_checkpoint(path, a)
    sha_a = load_checkpoint(path).sha256
    opened: list[str] = []
    real_open = io.open

    def racing_open(file: Any, *args: Any, **kwargs: Any) -> Any:
        fh = real_open(file, *args, **kwargs)
        if str(file) == str(path) and not opened:
            opened.append(str(file))
            os.replace(tmp_path / "b.pt", path)  # the atomic replace, mid-read
        return fh

    monkeypatch.setattr(io, "open", racing_open)
    monkeypatch.setattr(builtins, "open", racing_open)
    got = load_checkpoint(path)
    monkeypatch.undo()
    assert opened
    assert got.sha256 == sha_a  # the file it began reading ...
    assert torch.equal(got.state_dict["weight"], a.weight)  # ... and its weights


# ------------------------------------------------------------------------ plugins

DTYPE_PLUGIN = """
import torch

torch.set_default_dtype(torch.float64)


def sharpkit_register_metrics():
    return []
"""

METRIC_PLUGIN = """
import sharpkit


class Norm:
    def compute(self, ctx):
        total = sum(float((p.detach() ** 2).sum()) for p in ctx.model.parameters())
        return sharpkit.MetricResult(value=SCALE * total**0.5)


SCALE = 1.0


@sharpkit.hookimpl
def sharpkit_register_metrics():
    return [sharpkit.MetricSpec(name="pnorm", factory=Norm, description="norm")]
"""


def _dist(folder: Path, module: str, code: str) -> Path:
    """A fake installed distribution ``sharpkit-<module> 1.0`` in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    info = folder / f"sharpkit_{module}-1.0.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: sharpkit-{module}\nVersion: 1.0\n"
    )
    (info / "entry_points.txt").write_text(f"[sharpkit]\n{module} = {module}\n")
    (folder / f"{module}.py").write_text(code)
    return folder


def _subprocess(args: list[Any], *dists: Path) -> tuple[float, bool]:
    """``sharpkit measure ... --json`` in a new process, with ``dists`` installed."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([*map(str, dists), *sys.path])
    env.update(OMP_NUM_THREADS="1", SHARPKIT_DISABLE_PLUGINS="")
    done = subprocess.run(
        [sys.executable, "-m", "sharpkit", "measure", *map(str, args), "--json"],
        capture_output=True, text=True, env=env, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    (entry,) = json.loads(done.stdout)
    (metric,) = entry["metrics"].values()
    return float(metric["value"]), bool(metric["reused"])


def test_a_plugin_that_changes_the_default_dtype(tiny: Path, tmp_path: Path) -> None:
    """Synthetic data drawn in float64 are other data than in float32."""
    args = [tiny, "--dtype", "float32", "--store", tmp_path / "s.zarr"]
    a, _ = _subprocess(args)
    plugin = _dist(tmp_path / "dtype", "skt_dtype64", DTYPE_PLUGIN)
    b, reused = _subprocess(args, plugin)
    truth, _ = _subprocess([*args[:-2], "--no-store"], plugin)
    assert not reused
    assert b == truth
    assert a != truth


def test_a_plugin_whose_code_changed_but_not_its_version(
    tiny: Path, tmp_path: Path
) -> None:
    plugin = _dist(tmp_path / "p", "skt_pnorm", METRIC_PLUGIN)
    args = [tiny, "-m", "pnorm", "--store", tmp_path / "s.zarr"]
    a, _ = _subprocess(args, plugin)
    again, reused_same = _subprocess(args, plugin)
    assert reused_same  # unchanged code: reused
    assert again == a
    (plugin / "skt_pnorm.py").write_text(
        METRIC_PLUGIN.replace("SCALE = 1.0", "SCALE = 2.0")
    )
    b, reused = _subprocess(args, plugin)
    assert not reused
    assert b == pytest.approx(2 * a, rel=1e-12)


# ------------------------------------------------------------------------- sweeps

SWEEP = """
[sweep]
name = "keys"
out = "runs"

[train]
model = "mlp-bn"
model_options = {{ depth = 2, width = 8 }}
data = "synthetic"
data_options = {{ n_train = 64, n_test = 16, shape = "8" }}
batch_size = 32
seed = 0
{extra}
"""


def _sweep(folder: Path, extra: str) -> list[Any]:
    from sharpkit.sweep import load_sweep, run_sweep

    path = folder / "sweep.toml"
    path.write_text(SWEEP.format(extra=extra))
    return list(run_sweep(load_sweep(path)).points)


def test_sweep_values_that_print_alike_get_their_own_folders(tmp_path: Path) -> None:
    points = _sweep(tmp_path, "epochs = 1\nlr = [0.1, 0.1000001]")
    assert [p.error for p in points] == [None, None]
    assert all(p.trained for p in points)  # the second did not reuse the first
    folders = {Path(str(p.checkpoint)).parent for p in points}
    assert len(folders) == 2
    lrs = sorted(load_checkpoint(Path(str(p.checkpoint))).meta.lr for p in points)
    assert lrs == [0.1, 0.1000001]


@pytest.mark.parametrize(
    ("before", "after", "says"),
    [
        ("epochs = 1\nlr = [0.1]", "epochs = 2\nlr = [0.1]", "epochs=1"),
        (
            "epochs = 1\nlr = [0.1]",
            "epochs = 1\nmomentum = 0.9\nlr = [0.1]",
            "momentum",
        ),
    ],
    ids=["epochs", "momentum"],
)
@pytest.mark.parametrize("legacy", [False, True], ids=["recorded", "metadata-only"])
def test_a_point_trained_otherwise_is_refused_not_reused(
    tmp_path: Path, before: str, after: str, says: str, legacy: bool
) -> None:
    (first,) = _sweep(tmp_path, before)
    assert first.error is None
    final = Path(str(first.checkpoint))
    if legacy:  # a folder trained before sharpkit recorded the point's settings
        (final.parent / "sweep-point.json").unlink(missing_ok=True)
    stored = final.read_bytes()
    (second,) = _sweep(tmp_path, after)
    assert second.error is not None  # one line, on this point only
    assert "\n" not in second.error
    assert says in second.error
    assert "move that folder away" in second.error
    assert final.read_bytes() == stored  # nothing trained over it
    (again,) = _sweep(tmp_path, before)  # the settings it was trained with: reused
    assert again.error is None
    assert not again.trained


def test_a_point_resumed_for_more_epochs_is_trained_on(tmp_path: Path) -> None:
    """The documented way to continue: final.pt copied to last.pt, more epochs."""
    (first,) = _sweep(tmp_path, "epochs = 1\nlr = [0.1]")
    final = Path(str(first.checkpoint))
    final.rename(final.parent / "last.pt")
    (longer,) = _sweep(tmp_path, "epochs = 2\nlr = [0.1]")
    assert longer.error is None
    assert longer.trained
    assert load_checkpoint(final).meta.epoch == 2
