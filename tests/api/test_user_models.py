"""Models from the user's own code: ``package.module:name`` and ``file.py:name``."""

from __future__ import annotations

import sys

import pytest
import torch

import sharpkit
from sharpkit.api.usercode import call_with, parse_code_spec, parse_value


@pytest.mark.parametrize(
    ("text", "module", "path", "attr"),
    [
        ("mypkg.nets:SmallCNN", "mypkg.nets", None, "SmallCNN"),
        ("nets:Registry.small", "nets", None, "Registry.small"),
        ("models/cnn.py:make", None, "models/cnn.py", "make"),
        ("./cnn.py:Net", None, "cnn.py", "Net"),
    ],
)
def test_code_specs_parse(text, module, path, attr) -> None:
    spec = parse_code_spec(text)
    assert spec is not None
    assert (spec.module, spec.attr) == (module, attr)
    assert (str(spec.path) if spec.path else None) == path


@pytest.mark.parametrize(
    "text", ["mlp-bn", "synthetic", "data.pt", "hf:", "a:b-c", "C:/x", "x.py:"]
)
def test_other_names_are_not_code(text) -> None:
    assert parse_code_spec(text) is None


def test_options_are_converted_by_the_signature() -> None:
    def factory(width: int, rate: float = 0.5, bn: bool = False, name="a", shape=None):
        return width, rate, bn, name, shape

    got = call_with(
        factory,
        {"width": "4", "rate": "1e-2", "bn": "yes", "name": "7", "shape": "(1, 2)"},
        {},
        what="model f",
        flag=("model_options", "--model-option"),
    )
    # name's default is a str, so "7" stays text; shape has no type: a literal.
    assert got == (4, 0.01, True, "7", (1, 2))
    assert parse_value("[1, 2]", None) == [1, 2]
    assert parse_value("not a literal", None) == "not a literal"


def test_input_shape_and_classes_only_where_the_signature_takes_them(
    own_project,
) -> None:
    net = sharpkit.build_model(
        "tinynets:TinyNet", input_shape=(1, 4, 4), num_classes=5, options={"width": "2"}
    )
    assert tuple(net.fc.weight.shape) == (5, 2 * 16)
    # make_mlp takes neither: they are not passed (it would raise if they were).
    mlp = sharpkit.build_model(
        "tinynets:make_mlp", input_shape=(1, 4, 4), num_classes=5
    )
    assert isinstance(mlp, torch.nn.Sequential)
    same = sharpkit.build_model(
        "tinynets.py:make_mlp", input_shape=None, num_classes=None, seed=0
    )
    again = sharpkit.build_model(
        "./tinynets.py:make_mlp", input_shape=None, num_classes=None, seed=0
    )
    assert torch.equal(same[1].weight, again[1].weight)  # seeded initialisation


@pytest.mark.parametrize(
    ("spec", "options", "needle"),
    [
        ("tinynets:TinyNett", {}, "did you mean 'TinyNet'?"),
        ("tinynetz:TinyNet", {}, "no module named 'tinynetz'"),
        ("missing.py:Net", {}, "not found"),
        ("tinynets:TinyNet", {"widht": "2"}, "did you mean 'width'?"),
        ("tinynets:TinyNet", {"width": "two"}, "option 'width' expects int"),
        ("tinynets:TinyNet", {"width": "-1"}, "raised RuntimeError when called"),
    ],
)
def test_bad_code_specs_are_one_line_errors(own_project, spec, options, needle) -> None:
    with pytest.raises(sharpkit.ConfigError) as info:
        sharpkit.build_model(
            spec, input_shape=(1, 4, 4), num_classes=3, options=options
        )
    assert needle in str(info.value)
    assert "\n" not in str(info.value)


def test_needed_argument_names_the_python_keyword(own_project) -> None:
    with pytest.raises(sharpkit.ConfigError, match=r"model_options=\{'input_shape'"):
        sharpkit.build_model("tinynets:TinyNet", input_shape=None, num_classes=None)


def test_module_raising_on_import_is_one_line(own_project) -> None:
    (own_project.folder / "broken.py").write_text("raise RuntimeError('no GPU here')\n")
    with pytest.raises(sharpkit.ConfigError, match="RuntimeError: no GPU here"):
        sharpkit.build_model("broken:Net", input_shape=None, num_classes=None)
    sys.modules.pop("broken", None)


def test_measure_own_architecture_equals_the_module(own_project) -> None:
    p = own_project
    m = sharpkit.measure(
        "net.pt", "data.pt", ["spectral"], model_name="tinynets:TinyNet"
    )
    ref = sharpkit.measure(p.net, (p.x, p.y), ["spectral"])
    # The same weights, data and operations: the same Lanczos run.
    assert m["spectral"].value == pytest.approx(ref["spectral"].value, rel=1e-6)
    assert m.attrs["model"] == "tinynets:TinyNet"
    assert m.attrs["dataset"] == "data.pt"
    assert m.attrs["code_sha256"] is not None


def test_code_named_by_a_checkpoint_is_never_imported(own_project) -> None:
    meta = sharpkit.CheckpointMeta(model="tinynets:TinyNet", model_options={"width": 3})
    sharpkit.save_checkpoint("made.pt", own_project.net, meta)
    with pytest.raises(sharpkit.ConfigError) as info:
        sharpkit.measure("made.pt", "data.pt")
    assert "model_name='tinynets:TinyNet'" in str(info.value)
    assert "tinynets" not in sys.modules
    # Named by the caller, it is imported; the recorded options apply.
    m = sharpkit.measure("made.pt", "data.pt", model_name="tinynets:TinyNet")
    assert m.attrs["model_options"] == {"width": 3}


def test_factory_that_loads_its_weights_needs_no_checkpoint(own_project) -> None:
    p = own_project
    m = sharpkit.measure("tinynets:pretrained", "data.pt", ["spectral"])
    ref = sharpkit.measure(p.mlp, (p.x, p.y), ["spectral"])
    assert m["spectral"].value == pytest.approx(ref["spectral"].value, rel=1e-6)


def test_python_errors_name_python_arguments(own_project) -> None:
    with pytest.raises(sharpkit.ConfigError) as info:
        sharpkit.measure("net.pt", "data.pt")
    assert "model_name='NAME'" in str(info.value)
    assert "--model" not in str(info.value)
    with pytest.raises(sharpkit.ConfigError) as info:
        sharpkit.load_model("net.pt")
    assert "model='NAME'" in str(info.value)


def test_whole_model_pickle_is_refused_with_the_way_out(
    own_project, monkeypatch
) -> None:
    monkeypatch.syspath_prepend(str(own_project.folder))
    import tinynets

    torch.save(tinynets.TinyNet((1, 4, 4), 3), "whole.pt")
    with pytest.raises(sharpkit.UnsafeCheckpointError) as info:
        sharpkit.measure("whole.pt", "data.pt")
    text = str(info.value)
    assert "state_dict()" in text
    assert "model_name='package.module:Class'" in text
    assert "torch.export" in text
