"""Plugin discovery, isolation, validation and lookup, with real entry points."""

from __future__ import annotations

import warnings

import pytest

import sharpkit
from sharpkit.errors import (
    ConfigError,
    DuplicateNameError,
    PluginWarning,
    UnknownNameError,
)
from sharpkit.registry import Registry


def quiet_registry(**kwargs) -> Registry:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PluginWarning)
        return Registry(**kwargs)


def test_builtins_and_fisher_rao_are_discovered() -> None:
    reg = quiet_registry()
    names = {p.name for p in reg.plugins if p.status == "loaded"}
    assert "fisher-rao" in names
    assert "fisher-rao" in reg.names("metric")
    rec = reg.provider("metric", "fisher-rao")
    assert rec.distribution == "sharpkit-fisher-rao"
    assert all(
        p.distribution == "sharpkit"
        for p in reg.plugins
        if p.name.startswith("builtin.")
    )


def test_ok_plugin_is_discovered_through_its_dist_info(plugin_dists) -> None:
    plugin_dists("ok")
    reg = quiet_registry()
    assert "param-norm" in reg.names("metric")
    rec = reg.provider("metric", "param-norm")
    assert (rec.name, rec.distribution, rec.version) == (
        "okmetric",
        "sharpkit-okmetric",
        "1.0",
    )
    metric = reg.create("metric", "param-norm", {"scale": "2"})
    assert metric.scale == 2.0


def test_import_error_is_reported_and_skipped(plugin_dists) -> None:
    plugin_dists("ok", "import_error")
    with pytest.warns(PluginWarning, match="importerror.*ModuleNotFoundError"):
        reg = Registry()
    failure = next(f for f in reg.failures if f.plugin == "importerror")
    assert failure.phase == "import"
    assert failure.distribution == "sharpkit-importerror"
    assert "param-norm" in reg.names("metric")  # the rest keep working


def test_raising_hook_costs_only_its_plugin(plugin_dists) -> None:
    plugin_dists("ok", "hook_raises")
    reg = quiet_registry()
    with pytest.warns(PluginWarning, match="boom in register_metrics"):
        names = reg.names("metric")
    assert "param-norm" in names
    failure = next(f for f in reg.failures if f.plugin == "hookraises")
    assert failure.phase == "sharpkit_register_metrics"
    assert isinstance(failure.exception, RuntimeError)


def test_bad_specs_are_rejected_one_by_one(plugin_dists) -> None:
    plugin_dists("bad_spec")
    reg = quiet_registry(warn=False)
    names = reg.names("metric")
    assert "fine-one" in names
    assert not {"Bad_Name", "two-lines", "needs-arg"} & set(names)
    errors = " | ".join(f.error for f in reg.failures if f.plugin == "badspec")
    assert "kebab-case" in errors
    assert "one non-empty line" in errors
    assert "requires 'required_thing'" in errors


def test_unknown_hook_is_a_contract_failure(plugin_dists) -> None:
    plugin_dists("unknown_hook")
    with pytest.warns(PluginWarning, match="sharpkit_register_metric'.*matches no"):
        reg = Registry()
    assert any(
        f.plugin == "unknownhook" and f.phase == "validate" for f in reg.failures
    )


def test_duplicate_names_name_both_providers(plugin_dists) -> None:
    plugin_dists("ok", "duplicate")
    reg = quiet_registry()
    with pytest.raises(DuplicateNameError) as info:
        reg.get("metric", "param-norm")
    text = str(info.value)
    assert "sharpkit-okmetric 1.0 (okmetric)" in text
    assert "sharpkit-duplicate 1.0 (duplicate)" in text
    # other kinds still work while metrics conflict
    assert isinstance(reg.names("probe"), list)


def test_disable_plugins_from_env_and_argument(plugin_dists, monkeypatch) -> None:
    plugin_dists("ok", "duplicate", "import_error")
    monkeypatch.setenv("SHARPKIT_DISABLE_PLUGINS", "importerror, duplicate")
    reg = Registry()  # no warning: the broken plugin is never imported
    assert reg.get("metric", "param-norm").description.startswith("Euclidean")
    status = {p.name: p.status for p in reg.plugins}
    assert status["duplicate"] == "disabled"
    assert status["importerror"] == "disabled"
    monkeypatch.delenv("SHARPKIT_DISABLE_PLUGINS")
    reg = quiet_registry(disabled=["okmetric", "importerror"])
    assert reg.get("metric", "param-norm").description == "clash"


def test_unknown_name_suggests_close_matches() -> None:
    reg = quiet_registry()
    with pytest.raises(UnknownNameError) as info:
        reg.get("metric", "fisher-roa")
    err = info.value
    assert isinstance(err, KeyError)  # callers may catch it as a KeyError
    assert err.suggestions[0] == "fisher-rao"
    assert str(err).startswith(
        "unknown metric 'fisher-roa'; did you mean 'fisher-rao'?"
    )
    assert "\n" not in str(err)


def test_bad_option_names_and_values() -> None:
    reg = quiet_registry()
    with pytest.raises(
        ConfigError, match="has no option 'fishr'; did you mean 'fisher'"
    ):
        reg.create("metric", "fisher-rao", {"fishr": "model"})
    with pytest.raises(ConfigError, match="must be one of 'model', 'empirical'"):
        reg.create("metric", "fisher-rao", {"fisher": "nope"})


def test_register_plugin_object_and_unregister() -> None:
    class Plugin:
        @sharpkit.hookimpl
        def sharpkit_register_metrics(self):
            return [
                sharpkit.MetricSpec(
                    name="constant-one",
                    factory=lambda: None,
                    description="always one",
                )
            ]

    reg = Registry(entry_points=False)
    assert reg.register_plugin(Plugin(), "inline")
    assert reg.names("metric") == ["constant-one"]
    reg.unregister_plugin("inline")
    assert reg.names("metric") == []


def test_factory_failure_names_the_plugin() -> None:
    def broken(**kwargs):
        raise ZeroDivisionError("division by zero")

    class Plugin:
        @sharpkit.hookimpl
        def sharpkit_register_metrics(self):
            return [sharpkit.MetricSpec(name="broken", factory=broken, description="x")]

    reg = Registry(entry_points=False)
    reg.register_plugin(Plugin(), "inline", distribution="sharpkit-inline", version="9")
    with pytest.raises(
        sharpkit.PluginRunError,
        match=r"sharpkit-inline 9 \(inline\).*ZeroDivisionError",
    ):
        reg.create("metric", "broken")


def test_missing_builtin_metadata_fails_loudly(monkeypatch) -> None:
    import importlib.metadata

    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group: [])
    with pytest.raises(sharpkit.PluginError, match="pip install -e"):
        Registry()


def test_option_parsing_hypothesis() -> None:
    from hypothesis import given
    from hypothesis import strategies as st

    opt_i = sharpkit.Option(name="k", type=int)
    opt_b = sharpkit.Option(name="flag", type=bool)

    @given(st.integers(-(10**9), 10**9))
    def ints(n: int) -> None:
        assert opt_i.parse(str(n)) == n

    @given(st.text())
    def junk(text: str) -> None:
        try:
            value = opt_b.parse(text)
        except ConfigError:
            return
        assert text.strip().lower() in {
            "1",
            "true",
            "yes",
            "on",
            "0",
            "false",
            "no",
            "off",
        }
        assert isinstance(value, bool)

    ints()
    junk()
