"""Plugins that break the contract: one line each, and nothing wrong is kept.

The misbehaving metrics live in a real fake distribution
(``tests/data/plugin_dists/misbehave``), discovered through its entry point like
any third-party plugin. The truth they are compared with is the built-in
``spectral`` of the same checkpoint measured alone.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from _rel import cli, metric_values, ok, one_line, warned

# (metric, what the one error line must say). Each must leave the store and the
# metrics measured with it exactly as a run without it would.
VIOLATIONS = [
    ("scales-weights", r"'scales-weights'.*changed the model"),
    ("shifts-buffers", r"'shifts-buffers'.*changed the model"),
    ("replaces-parameter", r"'replaces-parameter'.*changed the model"),
    ("casts-model", r"'casts-model'.*changed the model"),
    ("text-value", r"'text-value'.*value.*str"),
    ("text-stderr", r"'text-stderr'.*stderr.*str"),
    ("exits", r"'exits'.*SystemExit"),
    ("returns-none", r"'returns-none' returned NoneType"),
    ("returns-nan", r"'returns-nan'.*non-finite"),
    ("raises", r"'raises'.*RuntimeError: boom"),
]


@pytest.mark.parametrize(("metric", "says"), VIOLATIONS, ids=[v[0] for v in VIOLATIONS])
def test_contract_violation_is_one_line_and_costs_nothing_else(
    metric: str,
    says: str,
    tiny: Path,
    truth: float,
    tmp_path: Path,
    plugin_dists,
    fresh_registry_env,
) -> None:
    plugin_dists("misbehave")
    store = tmp_path / "s.zarr"
    first = cli(
        "measure", tiny, "-m", metric, "-m", "spectral", "--store", store, "--json"
    )
    line = one_line(first)
    assert re.search(says, line), line
    # The metric after the violation ran on the model as it was: the exact value
    # (the same products in the same order: equal to the last bit).
    assert metric_values(first.stdout) == {"spectral": truth}
    again = cli(
        "measure", tiny, "-m", metric, "-m", "spectral", "--store", store, "--json"
    )
    one_line(again)
    (entry,) = json.loads(again.stdout)
    assert entry["metrics"]["spectral"]["reused"] is True
    assert metric not in entry["metrics"]  # never stored, so never reused


def test_failing_factory_is_one_line_before_any_work(
    tiny: Path, tmp_path: Path, plugin_dists, fresh_registry_env
) -> None:
    plugin_dists("misbehave")
    store = tmp_path / "s.zarr"
    line = one_line(cli("measure", tiny, "-m", "factory-raises", "--store", store))
    assert re.search(r"'factory-raises'.*ValueError: cannot build", line), line
    assert not store.exists() or not list((store / "runs").glob("*"))


def test_the_callers_model_is_restored_bit_for_bit(plugin_dists) -> None:
    import torch

    import sharpkit
    from sharpkit.registry import Registry

    plugin_dists("misbehave")
    reg = Registry(warn=False)
    net = reg.create("model", "mlp-bn", {"width": 16}, input_shape=(16,), num_classes=4)
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 16, generator=gen), torch.randint(0, 4, (64,), generator=gen)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    params = dict(net.named_parameters())
    broken = ["scales-weights", "casts-model", "replaces-parameter", "shifts-buffers"]
    with pytest.raises(sharpkit.MeasurementError, match="changed the model") as info:
        sharpkit.measure(net, (x, y), [*broken, "spectral"], registry=reg)
    assert set(info.value.measurement) == {"spectral"}
    assert set(info.value.failures) == set(broken)
    after = net.state_dict()
    for k, v in before.items():
        assert after[k].dtype == v.dtype, k
        assert torch.equal(after[k], v), k
    assert all(p is params[n] for n, p in net.named_parameters())
    alone = sharpkit.measure(net, (x, y), ["spectral"], registry=reg)
    assert alone["spectral"].value == info.value.measurement["spectral"].value


def test_duplicate_builtin_name_suggests_disabling_one_component(
    tiny: Path, truth: float, tmp_path: Path, plugin_dists, fresh_registry_env
) -> None:
    plugin_dists("rogue_spectral")
    store = tmp_path / "s.zarr"
    line = one_line(cli("measure", tiny, "-m", "spectral", "--store", store))
    assert "--disable metric:spectral@roguespectral" in line, line
    assert (
        "--disable-plugin builtin" not in line
    )  # never advise dropping every built-in
    # The advice works: the built-in measures, and the rogue value is nowhere.
    kept = ok(
        cli(
            "--disable", "metric:spectral@roguespectral",
            "measure", tiny, "-m", "spectral", "--store", store, "--json",
        )
    )  # fmt: skip
    assert metric_values(kept.stdout) == {"spectral": truth}
    # The other choice: the plugin's spectral, which is stored under its own key.
    rogue = ok(
        cli(
            "--disable", "metric:spectral@builtin",
            "measure", tiny, "-m", "spectral", "--store", store, "--json",
        )
    )  # fmt: skip
    assert metric_values(rogue.stdout) == {"spectral": -999.0}
    # Environment variable, same meaning.
    env = ok(
        cli(
            "measure", tiny, "-m", "spectral", "--store", store, "--json",
            env={"SHARPKIT_DISABLE": "metric:spectral@roguespectral"},
        )
    )  # fmt: skip
    (entry,) = json.loads(env.stdout)
    assert entry["metrics"]["spectral"]["value"] == truth
    assert entry["metrics"]["spectral"]["reused"] is True  # the built-in's own


def test_a_plugin_result_is_never_reused_for_the_builtin(
    tiny: Path, truth: float, tmp_path: Path, plugin_dists, fresh_registry_env
) -> None:
    store = tmp_path / "s.zarr"
    plugin_dists("rogue_spectral")
    ok(
        cli(
            "--disable", "metric:spectral@builtin",
            "measure", tiny, "-m", "spectral", "--store", store,
        )
    )  # fmt: skip
    # The plugin uninstalled (its disable flag gone): a plain run must compute.
    plain = ok(
        cli(
            "--disable-plugin", "roguespectral",
            "measure", tiny, "-m", "spectral", "--store", store, "--json",
        )
    )  # fmt: skip
    (entry,) = json.loads(plain.stdout)
    assert entry["metrics"]["spectral"]["value"] == truth
    assert entry["metrics"]["spectral"]["reused"] is False


BAD_DISABLE = [
    "metric:",
    "metric:spectral@",
    "widget:spectral",
    ":spectral",
    "metric:@x",
]


@pytest.mark.parametrize("spec", BAD_DISABLE)
def test_bad_disable_spec_is_one_line(spec: str, tiny: Path) -> None:
    line = one_line(cli("--disable", spec, "measure", tiny, "--no-store"))
    assert "kind:name" in line, line


def test_failed_plugin_import_warns_in_measure(
    tiny: Path, plugin_dists, fresh_registry_env
) -> None:
    plugin_dists("import_error")
    line = warned(cli("measure", tiny, "-m", "spectral", "--no-store"))
    assert "importerror" in line, line
    assert "skipped" in line, line


def test_raising_hook_warns_in_measure(
    tiny: Path, plugin_dists, fresh_registry_env
) -> None:
    plugin_dists("hook_raises")
    line = warned(cli("measure", tiny, "-m", "spectral", "--no-store"))
    assert "hookraises" in line, line


# A plugin's dataset or trainer that returns the wrong thing (the badparts test
# distribution): (id, argv, what the one line says); {a}: the tiny checkpoint
BAD_PARTS = [
    ("dataset-returns-a-dict", ["measure", "{a}", "--data", "dict-data"],
     r"dataset 'dict-data' factory returned dict, not a Dataset"),
    # before: AttributeError: 'tuple' object has no attribute 'inputs'
    ("dataset-split-is-a-tuple", ["measure", "{a}", "--data", "half-data"],
     r"dataset 'half-data' factory returned a Dataset whose train is a tuple"),
    ("trainer-returns-a-dict", ["train", "--model", "mlp-bn", "--data", "synthetic",
                                "--lr", "0.1", "--batch-size", "32", "-o", "width=16",
                                "-o", "n_train=128", "--epochs", "1", "--trainer",
                                "dict-trainer", "--out", "{d}/run"],
     r"trainer 'dict-trainer' returned dict, expected TrainResult"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("argv", "says"), [c[1:] for c in BAD_PARTS], ids=[c[0] for c in BAD_PARTS]
)
def test_a_plugin_dataset_or_trainer_of_the_wrong_type_is_one_line(
    argv: list[str],
    says: str,
    tiny: Path,
    tmp_path: Path,
    plugin_dists,
    fresh_registry_env,
) -> None:
    plugin_dists("badparts")
    args = [a.replace("{a}", str(tiny)).replace("{d}", str(tmp_path)) for a in argv]
    line = one_line(cli(*args, "--no-store"))
    assert re.search(says, line), line
