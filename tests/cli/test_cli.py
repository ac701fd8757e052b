"""The CLI's error boundary, --version, plugins, and bad input from the command line."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import sharpkit
from sharpkit.cli import app

runner = CliRunner()


def one_line_error(result) -> str:
    """Assert a failed run printed exactly one `error:` line on stderr, no traceback."""
    assert result.exit_code == 1, (result.exit_code, result.output, result.stderr)
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:")]
    assert len(errors) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    return errors[0]


def test_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.stdout.strip() == f"sharpkit {sharpkit.__version__}"


def test_plugins_json_lists_fisher_rao_with_provenance(fresh_registry) -> None:
    result = runner.invoke(app, ["plugins", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    fr = next(c for c in data["components"] if c["name"] == "fisher-rao")
    assert fr["kind"] == "metric"
    assert fr["distribution"] == "sharpkit-fisher-rao"
    assert fr["version"] == "0.1.0"
    assert fr["options"][0]["name"] == "fisher"
    loaded = {p["name"] for p in data["plugins"] if p["status"] == "loaded"}
    assert {"fisher-rao", "builtin.metrics"} <= loaded


def test_plugins_table_shows_broken_plugin_and_keeps_working(
    plugin_dists, fresh_registry
) -> None:
    plugin_dists("ok", "import_error", "hook_raises")
    result = runner.invoke(app, ["plugins"])
    assert result.exit_code == 0, result.output
    assert "param-norm" in result.stdout
    assert "problems" in result.stdout
    assert "importerror" in result.stdout
    assert "hookraises" in result.stdout
    data = json.loads(runner.invoke(app, ["plugins", "--json"]).stdout)
    phases = {f["plugin"]: f["phase"] for f in data["failures"]}
    assert phases["importerror"] == "import"
    assert phases["hookraises"] == "sharpkit_register_metrics"


def test_disable_plugin_option(plugin_dists, fresh_registry) -> None:
    plugin_dists("ok", "import_error")
    result = runner.invoke(
        app, ["--disable-plugin", "importerror", "plugins", "--json"]
    )
    data = json.loads(result.stdout)
    assert data["failures"] == []
    assert "importerror" in data["disabled"]


def test_unknown_metric_is_one_line_with_suggestion(tmp_path: Path) -> None:
    ckpt = tmp_path / "a.pt"
    torch.save(torch.nn.Linear(2, 2).state_dict(), ckpt)
    line = one_line_error(
        runner.invoke(app, ["measure", str(ckpt), "--metric", "fisher-roa"])
    )
    assert "did you mean 'fisher-rao'" in line


def test_missing_checkpoint(tmp_path: Path) -> None:
    line = one_line_error(
        runner.invoke(app, ["measure", str(tmp_path / "nope.pt"), "--no-store"])
    )
    assert "not found" in line


def test_truncated_checkpoint(tmp_path: Path) -> None:
    ckpt = tmp_path / "a.pt"
    sharpkit.save_checkpoint(ckpt, torch.nn.Linear(30, 30))
    ckpt.write_bytes(ckpt.read_bytes()[:300])
    line = one_line_error(runner.invoke(app, ["measure", str(ckpt), "--no-store"]))
    assert "truncated" in line


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_checkpoint_is_rejected_without_running(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    ckpt = tmp_path / "evil.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "x": _Evil(marker)}, ckpt)
    line = one_line_error(runner.invoke(app, ["measure", str(ckpt), "--no-store"]))
    assert "would load global" in line
    assert not marker.exists()


def test_bare_state_dict_without_model_says_what_to_do(tmp_path: Path) -> None:
    ckpt = tmp_path / "a.pt"
    torch.save(torch.nn.Linear(2, 2).state_dict(), ckpt)
    line = one_line_error(runner.invoke(app, ["measure", str(ckpt), "--no-store"]))
    assert "--model" in line


def test_debug_shows_traceback(tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["--debug", "measure", str(tmp_path / "nope.pt"), "--no-store"]
    )
    assert result.exit_code != 0
    assert isinstance(result.exception, sharpkit.CheckpointNotFoundError)


def test_bad_option_syntax(tmp_path: Path) -> None:
    ckpt = tmp_path / "a.pt"
    torch.save(torch.nn.Linear(2, 2).state_dict(), ckpt)
    line = one_line_error(
        runner.invoke(app, ["measure", str(ckpt), "-m", "fisher-rao", "-o", "fisher"])
    )
    assert "key=value" in line


def test_usage_error_exits_2() -> None:
    result = runner.invoke(app, ["measure"])
    assert result.exit_code == 2


def test_plugin_command_is_added_and_shadowing_is_refused(
    plugin_dists, fresh_registry, monkeypatch
) -> None:
    import typer

    import sharpkit.cli as cli
    from sharpkit.registry import get_registry

    plugin_dists("ok", "shadow")
    local = typer.Typer()
    local.command("measure")(lambda: None)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", sharpkit.PluginWarning)
        added = get_registry().register_commands(local, reserved=cli.BUILTIN_COMMANDS)
    assert added == ["hello-okmetric"]
    assert any(
        f.plugin == "shadow" and "would replace" in f.error
        for f in get_registry().failures
    )
    result = runner.invoke(local, ["hello-okmetric"])
    assert "hello from okmetric" in result.stdout


@pytest.mark.parametrize(
    "args", [["--help"], ["measure", "--help"], ["plugins", "--help"]]
)
def test_help_works(args) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == 0
    assert "Usage" in result.stdout


def test_measure_top_k_end_to_end(tmp_path: Path) -> None:
    import sharpkit.builtin._models as models

    # the synthetic dataset: 16 features, 4 classes by default
    net = models.build_mlp_bn(input_shape=(16,), num_classes=4, depth=2, width=6)
    ckpt = tmp_path / "a.pt"
    meta = sharpkit.CheckpointMeta(
        model="mlp-bn", model_options={"depth": 2, "width": 6}, dataset="synthetic"
    )
    sharpkit.save_checkpoint(ckpt, net, meta)
    result = runner.invoke(
        app, ["measure", str(ckpt), "--top-k", "3", "--no-store", "--json"]
    )
    assert result.exit_code == 0, result.stderr
    spectral = json.loads(result.stdout)[0]["metrics"]["spectral"]
    top = spectral["arrays"]["eigenvalues"]
    assert len(top) == 3
    assert top == sorted(top, reverse=True)
    assert spectral["value"] == top[0]
    line = one_line_error(
        runner.invoke(
            app, ["measure", str(ckpt), "--top-k", "3", "-m", "trace", "--no-store"]
        )
    )
    assert "--top-k applies to the spectral metric" in line


def test_measure_loads_the_data_once_for_all_checkpoints(tmp_path, monkeypatch):
    """Bare state_dicts need the dataset for their shape and for the analysis set;
    several checkpoints in one call share one load."""
    import sharpkit.builtin._datasets as datasets
    import sharpkit.builtin._models as models

    loads: list[str] = []
    real = datasets._finish

    def counting(ds, subset, seed):
        loads.append(ds.name)
        return real(ds, subset, seed)

    monkeypatch.setattr(datasets, "_finish", counting)
    paths = []
    for i in range(3):
        torch.manual_seed(i)
        net = models.build_mlp_bn(input_shape=(16,), num_classes=4, depth=2, width=6)
        paths.append(tmp_path / f"bare{i}.pt")
        torch.save(net.state_dict(), paths[-1])  # no metadata: shape from the data
    args = ["--model", "mlp-bn", "--model-option", "depth=2"]
    args += ["--model-option", "width=6", "--data", "synthetic", "--no-store", "--json"]
    result = runner.invoke(app, ["measure", *map(str, paths), *args])
    assert result.exit_code == 0, result.stderr
    values = [r["metrics"]["spectral"]["value"] for r in json.loads(result.stdout)]
    assert len(set(values)) == 3  # three different models were measured
    assert loads == ["synthetic"]
    # outside one call nothing is kept: a second call loads again
    assert runner.invoke(app, ["measure", str(paths[0]), *args]).exit_code == 0
    assert loads == ["synthetic", "synthetic"]


def test_measure_table_is_readable_when_piped(tmp_path: Path) -> None:
    """Names below the common folder, exact values marked, no folded cells."""
    import sharpkit.builtin._models as models

    meta = sharpkit.CheckpointMeta(
        model="mlp-bn", model_options={"depth": 2, "width": 6}, dataset="synthetic"
    )
    for run in ("run-a", "run-b"):
        torch.manual_seed(len(run))
        net = models.build_mlp_bn(input_shape=(16,), num_classes=4, depth=2, width=6)
        sharpkit.save_checkpoint(tmp_path / run / "final.pt", net, meta)
    paths = [str(tmp_path / r / "final.pt") for r in ("run-a", "run-b")]
    result = runner.invoke(
        app, ["measure", *paths, "-m", "spectral", "-m", "trace", "--no-store"]
    )
    assert result.exit_code == 0, result.stderr
    out = result.stdout
    # the title folds where the temporary folder's path is long (xdist's is)
    assert f"checkpointsunder{tmp_path.resolve()}" in "".join(out.split())
    rows = [ln for ln in out.splitlines() if "final.pt" in ln]
    # one line per row, nothing folded (plus λ_min rows where H is indefinite)
    assert len([ln for ln in rows if "λ_min" not in ln]) == 4
    assert all(str(tmp_path) not in ln for ln in rows)
    # ReLU + eval batch norm + cross-entropy: the trace is exact
    trace = [ln for ln in rows if " trace " in ln]
    assert len(trace) == 2
    assert all(" exact " in ln for ln in trace)
    assert all(" bound " in ln for ln in rows if " spectral " in ln)


def _mlp_bn_checkpoint(tmp_path: Path) -> Path:
    import sharpkit.builtin._models as models

    torch.manual_seed(0)
    net = models.build_mlp_bn(input_shape=(16,), num_classes=4, depth=2, width=6)
    ckpt = tmp_path / "a.pt"
    meta = sharpkit.CheckpointMeta(
        model="mlp-bn", model_options={"depth": 2, "width": 6}, dataset="synthetic"
    )
    sharpkit.save_checkpoint(ckpt, net, meta)
    return ckpt


def test_measure_shows_what_succeeded_then_one_error_line(tmp_path: Path) -> None:
    """Issue 14 item 6: a failing metric printed nothing of the others."""
    ckpt = _mlp_bn_checkpoint(tmp_path)
    args = ["measure", str(ckpt), "-m", "spectral", "-m", "trace", "--no-store"]
    # batch statistics: the exact Gauss-Newton trace does not apply
    args += ["--bn-mode", "train", "-o", "trace.method=exact-ggn"]
    args += ["-o", "trace.exact_max=0"]  # not the small-model path
    result = runner.invoke(app, args)
    assert result.exit_code == 1, (result.stdout, result.stderr)
    assert "spectral" in result.stdout  # the partial table
    assert " trace " not in result.stdout
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, result.stderr
    assert "metric 'trace' failed" in errors[0]
    assert "spectral was measured" in errors[0]
    assert "Traceback" not in result.stderr
    as_json = runner.invoke(app, [*args, "--json"])
    assert as_json.exit_code == 1
    assert set(json.loads(as_json.stdout)[0]["metrics"]) == {"spectral"}


def test_measure_table_shows_a_negative_lambda_min(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """λ_max is the largest algebraic eigenvalue; where the Ritz values show a
    negative one (a saddle), the table adds λ_min with its bound, for free."""
    ckpt = _mlp_bn_checkpoint(tmp_path)
    result = runner.invoke(app, ["measure", str(ckpt), "--no-store", "--json"])
    assert result.exit_code == 0, result.stderr
    spectral = json.loads(result.stdout)[0]["metrics"]["spectral"]
    lam_min = spectral["attrs"]["lambda_min"]  # an untrained ReLU net: indefinite
    assert lam_min < 0
    assert lam_min == min(spectral["arrays"]["ritz_values"])
    assert spectral["hvps"] == spectral["attrs"]["krylov_dim"]  # no extra product
    # a short name and a wide terminal: one line per row, the value with its digits
    monkeypatch.chdir(tmp_path)
    args = ["measure", ckpt.name, "--no-store"]
    table = runner.invoke(app, args, env={"COLUMNS": "120"}).stdout
    rows = [ln for ln in table.splitlines() if "spectral" in ln]
    assert len(rows) == 2
    assert "λ_max" in rows[0]
    assert "λ_min" in rows[1]
    assert f"{lam_min:.6g}" in rows[1]
    assert "indefinite" in rows[1]
