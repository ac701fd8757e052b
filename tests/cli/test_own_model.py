"""End to end: models, data and losses sharpkit has never seen, from the command line.

Each path is run as a user would type it and must give the value that
``sharpkit.measure`` gives in Python on the same model and data; each error is
one line, never a traceback.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import sharpkit
from sharpkit.cli import app

runner = CliRunner()


def measured(*argv: str) -> dict:
    result = runner.invoke(app, ["measure", *argv, "--no-store", "--json"])
    assert result.exit_code == 0, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    return json.loads(result.stdout)[0]


def value(out: dict, metric: str = "spectral") -> float:
    return out["metrics"][metric]["value"]


def one_line_error(argv: list[str]) -> str:
    result = runner.invoke(app, argv)
    assert result.exit_code == 1, (result.stdout, result.stderr)
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), result.stderr
    return lines[0]


def test_module_class_on_a_pt_file(own_project) -> None:
    p = own_project
    out = measured("net.pt", "--model", "tinynets:TinyNet", "--data", "data.pt")
    want = sharpkit.measure(p.net, (p.x, p.y))
    assert value(out) == pytest.approx(want["spectral"].value, rel=1e-6)
    assert out["attrs"]["model"] == "tinynets:TinyNet"


def test_file_class_with_options_on_an_npz_file(own_project) -> None:
    p = own_project
    torch.save(
        p.module("tinynets").TinyNet((1, 4, 4), 3, width=2).state_dict(), "w2.pt"
    )
    out = measured(
        "w2.pt",
        "--model",
        "./tinynets.py:TinyNet",
        "--model-option",
        "width=2",
        "--data",
        "data.npz",
    )
    net = p.module("tinynets").TinyNet((1, 4, 4), 3, width=2)
    net.load_state_dict(torch.load("w2.pt"))
    want = sharpkit.measure(net.eval(), (p.x, p.y))
    assert value(out) == pytest.approx(want["spectral"].value, rel=1e-6)
    assert out["attrs"]["model_options"] == {"width": "2"}


def test_exported_program_on_a_safetensors_file(own_project) -> None:
    p = own_project
    batch = torch.export.Dim("batch")
    program = torch.export.export(p.net, (p.x[:2],), dynamic_shapes=({0: batch},))
    torch.export.save(program, "net.pt2")
    out = measured("net.pt2", "--data", "data.safetensors")
    want = sharpkit.measure(p.net, (p.x, p.y))
    assert value(out) == pytest.approx(want["spectral"].value, rel=1e-6)
    assert out["attrs"]["checkpoint_format"] == "torch-export"


@pytest.mark.slow
def test_hf_folder_on_a_tokens_file(own_project, monkeypatch) -> None:
    pytest.importorskip("transformers")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from own_project import write_tiny_bert

    ids, mask, labels = write_tiny_bert(own_project.folder)
    out = measured("--model", "hf:tiny-bert", "--data", "tokens.npz")
    want = sharpkit.measure(
        "hf:tiny-bert", ({"input_ids": ids, "attention_mask": mask}, labels)
    )
    assert value(out) == pytest.approx(want["spectral"].value, rel=1e-6)


def test_image_folder_with_options(own_project) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in ("a", "b", "c"):
        (own_project.folder / "imgs" / c).mkdir(parents=True)
        for i in range(3):
            a = rng.integers(0, 256, (6, 6), dtype=np.uint8)
            Image.fromarray(a, "L").save(own_project.folder / "imgs" / c / f"{i}.png")
    out = measured(
        "net.pt",
        "--model",
        "tinynets:TinyNet",
        "--data",
        "imgs",
        "--data-option",
        "size=4",
        "--data-option",
        "mean=0.5",
    )
    ds = sharpkit.load_dataset("imgs", options={"size": 4, "mean": 0.5})
    want = sharpkit.measure(own_project.net, ds)
    assert value(out) == pytest.approx(want["spectral"].value, rel=1e-6)
    assert out["attrs"]["samples"] == 9


def test_data_and_loss_from_code_stored_with_the_loss(own_project) -> None:
    p = own_project
    argv = [
        "measure",
        "net.pt",
        "--model",
        "tinynets:TinyNet",
        "--data",
        "tinydata:make",
        "--data-option",
        "n=16",
        "--loss",
        "tinyloss.py:smooth_ce",
        "--store",
        "own.zarr",
        "--json",
    ]
    result = runner.invoke(app, argv)
    assert result.exit_code == 0, result.stderr
    got = json.loads(result.stdout)[0]
    x, y = p.module("tinydata").make(16)
    want = sharpkit.measure(p.net, (x, y), loss=p.module("tinyloss").smooth_ce)
    assert value(got) == pytest.approx(want["spectral"].value, rel=1e-6)
    rows = json.loads(runner.invoke(app, ["results", "own.zarr", "--json"]).stdout)
    assert rows[0]["loss"] == "tinyloss.py:smooth_ce"
    assert rows[0]["dataset"] == "tinydata:make"
    csv = runner.invoke(app, ["results", "own.zarr", "--csv"]).stdout.splitlines()
    loss_column = csv[0].split(",").index("loss")
    assert csv[1].split(",")[loss_column] == "tinyloss.py:smooth_ce"


def test_probe_and_interpolate_with_own_model_and_data(own_project) -> None:
    p = own_project
    result = runner.invoke(
        app,
        [
            "interpolate",
            "net.pt",
            "net.pt",
            "--model",
            "tinynets:TinyNet",
            "--data",
            "data.pt",
            "--alpha",
            "0:1:3",
            "--no-store",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.stderr
    curve = json.loads(result.stdout)["arrays"]
    want = sharpkit.interpolate(
        p.net, p.net, sharpkit.load_dataset("data.pt"), alpha="0:1:3"
    )
    np.testing.assert_allclose(
        curve["train_loss"], want.arrays["train_loss"], rtol=1e-6
    )
    assert "test_loss" in curve  # x_test/y_test in the file
    probe = runner.invoke(
        app,
        [
            "probe",
            "direction",
            "net.pt",
            "--model",
            "tinynets:TinyNet",
            "--data",
            "data.pt",
            "-o",
            "alpha=-1:1:3",
            "--no-store",
            "--json",
            "--loss",
            "nll",
        ],
    )
    assert probe.exit_code == 0, probe.stderr


def test_train_own_model_then_measure_names_it(own_project) -> None:
    p = own_project
    torch.save(
        {"x_train": p.x, "y_train": p.y, "x_test": p.x_test, "y_test": p.y_test},
        "splits.pt",
    )
    result = runner.invoke(
        app,
        [
            "train",
            "--model",
            "tinynets:TinyNet",
            "--model-option",
            "width=2",
            "--data",
            "splits.pt",
            "--lr",
            "0.1",
            "--batch-size",
            "8",
            "--epochs",
            "1",
            "--out",
            "run",
            "--no-store",
        ],
    )
    assert result.exit_code == 0, result.stderr
    line = one_line_error(["measure", "run/final.pt", "--no-store"])
    assert "pass --model tinynets:TinyNet" in line
    out = measured("run/final.pt", "--model", "tinynets:TinyNet")
    assert out["attrs"]["model_options"] == {"width": "2"}  # recorded
    assert out["attrs"]["dataset"].endswith("splits.pt")  # recorded, found again


def test_mlp_bn_checkpoint_with_synthetic_data_is_one_line(own_project) -> None:
    # The report that started this: before, a 100-line traceback.
    net = sharpkit.build_model("mlp-bn", input_shape=(1, 28, 28), num_classes=4, seed=0)
    meta = sharpkit.CheckpointMeta(
        model="mlp-bn",
        dataset="fashion-mnist",
        extra={"input_shape": [1, 28, 28], "num_classes": 4},
    )
    sharpkit.save_checkpoint("mlp.pt", net, meta)
    line = one_line_error(["measure", "mlp.pt", "--data", "synthetic", "--no-store"])
    assert "(16,)" in line
    assert "(1, 28, 28)" in line


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["net.pt", "--data", "data.pt"], "name it with --model NAME"),
        (["net.pt", "--model", "tinynets:TinyNet", "--data", "nope.pt"], "not found"),
        (
            ["net.pt", "--model", "tinynets:TinyNot", "--data", "data.pt"],
            "did you mean",
        ),
        (["net.pt", "--model", "nomodule:Net", "--data", "data.pt"], "no module named"),
        (
            [
                "net.pt",
                "--model",
                "tinynets:TinyNet",
                "--data",
                "data.pt",
                "--loss",
                "l2",
            ],
            "unknown loss 'l2'",
        ),
        (
            [
                "net.pt",
                "--model",
                "tinynets:TinyNet",
                "--data",
                "data.npz",
                "--split",
                "test",
            ],
            "--split train",
        ),
        (
            [
                "net.pt",
                "--model",
                "tinynets:TinyNet",
                "--data",
                "data.pt",
                "--data-option",
                "size=3",
            ],
            "takes no data option 'size'",
        ),
        (["--data", "data.pt"], "give a checkpoint"),
    ],
)
def test_error_paths_are_one_line(own_project, argv, needle) -> None:
    line = one_line_error(["measure", *argv, "--no-store"])
    assert needle in line


def test_whole_pickled_model_is_one_line(own_project, monkeypatch) -> None:
    monkeypatch.syspath_prepend(str(own_project.folder))
    import tinynets

    torch.save(tinynets.TinyNet((1, 4, 4), 3), "whole.pt")
    line = one_line_error(["measure", "whole.pt", "--data", "data.pt", "--no-store"])
    assert "--model package.module:Class" in line
    assert "model.pt2" in line


def test_errors_print_as_text_not_markup(own_project, monkeypatch) -> None:
    # "[hf]" is rich markup and ":Net:" an emoji code; both must print as typed.
    line = one_line_error(
        [
            "measure",
            "net.pt",
            "--model",
            "nomodule:Net",
            "--data",
            "data.pt",
            "--no-store",
        ]
    )
    assert "--model nomodule:Net: no module" in line
    (own_project.folder / "nohf").mkdir()
    (own_project.folder / "nohf" / "config.json").write_text("{}")
    monkeypatch.setitem(sys.modules, "transformers", None)
    line = one_line_error(["measure", "--model", "hf:nohf", "--data", "data.pt"])
    assert "pip install 'sharpkit[hf]'" in line
