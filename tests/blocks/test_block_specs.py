"""Block specifications resolve to disjoint, covering groups, or to one-line errors."""

from __future__ import annotations

import pytest
import torch
from block_cases import conv_net, frozen, tied, transformer
from torch import nn

from sharpkit.curvature.blocks import resolve_blocks
from sharpkit.errors import ConfigError, SharpkitError


def _names(part):
    return {b.name: list(b.params) for b in part.blocks}


def _covers(part, model):
    n = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert part.n == n
    assert sorted(torch.cat([b.index for b in part.blocks]).tolist()) == list(range(n))


def test_layers_one_block_per_module_in_flat_order():
    model = conv_net().model
    part = resolve_blocks(model, "layers")
    assert part.names == ["0", "1", "3", "6"]
    assert _names(part)["1"] == ["1.weight", "1.bias"]
    _covers(part, model)


def test_depth_groups_by_module_prefix():
    model = transformer().model
    assert resolve_blocks(model, "depth=1").names == [
        "norm1",
        "qkv",
        "proj",
        "norm2",
        "mlp",
        "head",
    ]
    deep = resolve_blocks(model, "depth=2")
    assert "mlp.0" in deep.names
    assert "mlp.2" in deep.names
    _covers(deep, model)
    # a parameter of the root module is its own block, "root"
    root = nn.Module()
    root.w = nn.Parameter(torch.ones(3))
    root.lin = nn.Linear(2, 2)
    assert resolve_blocks(root, "depth=1").names == ["root", "lin"]


def test_tied_weight_belongs_to_its_first_module():
    model = tied().model
    part = resolve_blocks(model, "layers")
    assert _names(part) == {
        "embed": ["embed.weight"],
        "hidden": ["hidden.weight", "hidden.bias"],
        "decoder": ["decoder.bias"],
    }
    _covers(part, model)


def test_regex_groups_keep_their_order_and_the_rest_is_one_block():
    model = transformer().model
    part = resolve_blocks(model, ["attn=qkv|proj", "ln=norm"])
    assert part.names == ["attn", "ln", "rest"]
    assert _names(part)["ln"] == [
        "norm1.weight",
        "norm1.bias",
        "norm2.weight",
        "norm2.bias",
    ]
    assert _names(part)["rest"][0] == "mlp.0.weight"
    _covers(part, model)
    # no rest block when the groups cover everything
    full = resolve_blocks(model, ["a=.*"])
    assert full.names == ["a"]


def test_mapping_of_names_or_tensors():
    model = conv_net().model
    part = resolve_blocks(
        model, {"first": [model[0].weight, "0.bias"], "bn": ["1.weight"]}
    )
    assert part.names == ["first", "bn", "rest"]
    assert _names(part)["first"] == ["0.weight", "0.bias"]
    _covers(part, model)


def test_frozen_parameters_are_in_no_block():
    model = frozen().model
    part = resolve_blocks(model, "layers")
    assert part.names == ["2", "4"]
    _covers(part, model)
    with pytest.raises(ConfigError, match="do not require grad"):
        resolve_blocks(model, ["feat=^0\\."])
    with pytest.raises(ConfigError, match="do not require grad"):
        resolve_blocks(model, {"feat": ["0.weight"]})


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("layer", "blocks take 'layers', 'depth=N'"),
        ("depth=0", "integer N >= 1"),
        ("depth=two", "integer N >= 1"),
        (["a=conv"], "matches no parameter name .*0.weight"),
        (["a=("], "bad regular expression"),
        (["a=0\\.", "b=weight"], "parameter '0.weight' is in blocks 'a' and 'b'"),
        (["a=0", "a=1"], "given twice"),
        (["rest=0"], "reserved"),
        (["layers", "a=0"], "cannot be combined"),
        (["bad name=0"], "letters, digits"),
        ({"a": ["nope.weight"]}, "matches no parameter name"),
        ({"a": [torch.ones(2)]}, "not a parameter of the model"),
        ([], "blocks take"),
    ],
)
def test_bad_specs_are_one_line_errors(spec, match):
    model = conv_net().model
    with pytest.raises(ConfigError, match=match) as info:
        resolve_blocks(model, spec)
    assert isinstance(info.value, SharpkitError)
    assert "\n" not in str(info.value)


def test_params_outside_the_model_are_refused():
    model = conv_net().model
    with pytest.raises(ConfigError, match="parameters of the model"):
        resolve_blocks(model, "layers", params=[nn.Parameter(torch.ones(2))])


def test_partition_helpers():
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1)).double()
    part = resolve_blocks(model, "layers")
    v = torch.arange(9, dtype=torch.float64)
    assert part.restrict(v, 1).tolist() == [6.0, 7.0, 8.0]
    assert part.embed(part.restrict(v, 1), 1).tolist() == [0.0] * 6 + [6.0, 7.0, 8.0]
    assert part.sum_squares(v).tolist() == [55.0, 36.0 + 49.0 + 64.0]
    assert part.sizes == [6, 3]


def test_select_block_by_module_path_root_or_regex():
    from sharpkit.curvature.blocks import select_block

    names = ["w", "stem.weight", "layer1.0.conv.weight", "layer1.1.bn.bias",
             "layer10.weight", "fc.weight", "fc.bias"]  # fmt: skip
    # a module path takes what is under it, and only that ("layer1" not "layer10")
    assert select_block(names, "layer1") == (
        "layer1",
        ["layer1.0.conv.weight", "layer1.1.bn.bias"],
    )
    assert select_block(names, "layer1.0") == ("layer1.0", ["layer1.0.conv.weight"])
    assert select_block(names, "root") == ("root", ["w"])
    assert select_block(names, "head=^fc\\.") == ("head", ["fc.weight", "fc.bias"])
    with pytest.raises(ConfigError, match="names no module with parameters"):
        select_block(names, "layer2")
    with pytest.raises(ConfigError, match="matches no parameter name"):
        select_block(names, "x=^nothing")
