"""Issue 11, item 3: one damaged run never takes the store down.

Each failure the reliability campaign found is reproduced on a store written by
a real `sharpkit measure`, both as sharpkit writes runs now (sealed with a
manifest) and as it wrote them before (no manifest: ``legacy``):

* metric metadata of the wrong type: a traceback in `results` and
  `measure --store` (``'list' object has no attribute 'get'``);
* a garbage chunk: a ``Zstd decompression error`` traceback on every later
  `measure`;
* a deleted chunk: read back as NaN and reused as "stored", no warning;
* a lost root ``zarr.json``: every intact run unreachable, no way back.

Now a damaged run is skipped with one warning and never reused, `results
--check` lists it and `--repair` sets it aside and rebuilds the root. The
property-based part corrupts any object of a store at random and checks that
the readers never raise and never return a value that differs from what was
written.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

import sharpkit
from sharpkit.cli import app
from sharpkit.errors import StoreError
from sharpkit.interfaces import MetricResult, ProbeResult
from sharpkit.store import ResultStore, check_store

runner = CliRunner()
# a damaged run warns, as the CLI user sees it (pytest makes warnings errors)
pytestmark = pytest.mark.filterwarnings("always::sharpkit.SharpkitWarning")


# ------------------------------------------------------------ a real measured store


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    import sharpkit.builtin._models as models

    net = models.build_mlp_bn(input_shape=(16,), num_classes=4, depth=1, width=4)
    meta = sharpkit.CheckpointMeta(
        model="mlp-bn",
        model_options={"depth": 1, "width": 4},
        dataset="synthetic",
        dataset_options={"subset": 64},
        seed=0,
    )
    return sharpkit.save_checkpoint(tmp_path / "a.pt", net, meta)


def measure(checkpoint: Path, store: Path) -> Any:
    """`sharpkit measure CKPT -m spectral --store STORE --json` in this process."""
    args = ["measure", str(checkpoint), "-m", "spectral", "--store", str(store)]
    return runner.invoke(app, [*args, "--json"])


def spectral_of(result: Any) -> dict[str, Any]:
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.stderr
    return json.loads(result.stdout)[0]["metrics"]["spectral"]


def the_run(store: Path) -> Path:
    (run,) = [p for p in (store / "runs").iterdir() if p.is_dir()]
    return run


def make_legacy(run: Path) -> None:
    """The run as sharpkit wrote it before manifests: no ``manifest`` attribute."""
    meta = run / "zarr.json"
    doc = json.loads(meta.read_text())
    del doc["attributes"]["manifest"]
    meta.write_text(json.dumps(doc))
    # and its store as sharpkit made it then: no root attribute saying every
    # run has a manifest
    root = run.parent.parent / "zarr.json"
    top = json.loads(root.read_text())
    top["attributes"].pop("manifests", None)
    root.write_text(json.dumps(top))


def one_warning(stderr: str, *needles: str) -> None:
    """Exactly one warning (the console may fold it over several lines)."""
    assert stderr.count("warning:") == 1, stderr
    assert stderr.startswith("warning: run ")
    assert "Traceback" not in stderr
    text = " ".join(stderr.split())
    for needle in needles:
        assert needle in text, text


@pytest.fixture(params=["sealed", "legacy"])
def measured(request, checkpoint: Path, tmp_path: Path) -> tuple[Path, dict, Path]:
    """A store with one real spectral measurement; its run directory."""
    store = tmp_path / "results.zarr"
    first = spectral_of(measure(checkpoint, store))
    assert first["reused"] is False
    run = the_run(store)
    if request.param == "legacy":
        make_legacy(run)
    return store, first, run


# ------------------------------------------------------------ the campaign's failures


def test_metric_metadata_of_the_wrong_type(
    checkpoint: Path, measured: tuple[Path, dict, Path]
) -> None:
    store, first, run = measured
    meta = run / "metrics" / "spectral" / "zarr.json"
    doc = json.loads(meta.read_text())
    doc["attributes"] = ["not", "a", "mapping"]
    meta.write_text(json.dumps(doc))
    # `results` skips it with one warning (before: a traceback in _index)
    result = runner.invoke(app, ["results", str(store)])
    assert result.exit_code == 0, result.output
    one_warning(result.stderr, "is damaged", "metrics/spectral/zarr.json")
    assert "no runs in" in result.stdout
    # `measure --store` recomputes it (before: the same traceback)
    again = measure(checkpoint, store)
    one_warning(again.stderr, "is damaged")
    second = spectral_of(again)
    assert second["reused"] is False
    assert second["value"] == first["value"]  # same seed, same data: bitwise


@pytest.mark.parametrize("damage", ["garbage", "truncated", "deleted"])
def test_a_damaged_chunk_is_never_reused(
    checkpoint: Path, measured: tuple[Path, dict, Path], damage: str
) -> None:
    store, first, run = measured
    chunk = run / "metrics" / "spectral" / "ritz_values" / "c" / "0"
    if damage == "garbage":  # before: Zstd decompression error on every measure
        chunk.write_bytes(b"\x00garbage" * 4)
    elif damage == "truncated":
        chunk.write_bytes(chunk.read_bytes()[:-3])
    else:  # before: read back as NaN and reused as "stored", without a word
        chunk.unlink()
    again = measure(checkpoint, store)
    one_warning(again.stderr, "is damaged", "ritz_values")
    second = spectral_of(again)
    assert second["reused"] is False  # computed again, not taken from the damage
    assert second["value"] == first["value"]
    # the new run is intact and is reused from now on (the newest match wins, so
    # the damaged one is not even read); `results --check` still lists it
    third = measure(checkpoint, store)
    assert spectral_of(third)["reused"] is True
    assert spectral_of(third)["value"] == first["value"]


def test_check_lists_damage_and_repair_sets_it_aside(
    checkpoint: Path, measured: tuple[Path, dict, Path]
) -> None:
    store, _, run = measured
    (run / "metrics" / "spectral" / "eigenvalues" / "c" / "0").write_bytes(b"??")
    intact = spectral_of(measure(checkpoint, store))  # recomputed and stored anew
    check = runner.invoke(app, ["results", str(store), "--check"])
    assert check.exit_code == 1
    assert "Traceback" not in check.stderr
    damaged = [ln for ln in check.stdout.splitlines() if ln.startswith("damaged run")]
    assert len(damaged) == 1
    assert damaged[0].startswith(f"damaged run {run.name}: ")
    assert "1 intact run(s), 1 damaged" in check.stdout
    assert check.stderr.count("error:") == 1
    assert "--repair" in check.stderr
    repair = runner.invoke(app, ["results", str(store), "--repair"])
    assert repair.exit_code == 0, repair.output
    assert f"moved damaged run {run.name} to damaged/{run.name}" in repair.stdout
    assert (store / "damaged" / run.name / "zarr.json").is_file()  # nothing lost
    clean = runner.invoke(app, ["results", str(store), "--check", "--json"])
    assert clean.exit_code == 0, clean.output
    report = json.loads(clean.stdout)
    assert report["ok"] is True
    assert report["intact"] == 1
    # no warning any more, and the intact result is what is reused
    later = measure(checkpoint, store)
    assert later.stderr.strip() == ""
    assert spectral_of(later)["value"] == intact["value"]


def test_lost_root_metadata_is_rebuilt_from_the_intact_runs(tmp_path: Path) -> None:
    path = tmp_path / "results.zarr"
    store = ResultStore(path)
    ids = [
        store.write_run(
            kind="measure",
            attrs={"lr": 0.01 * (i + 1), "batch_size": 128},
            metrics={"spectral": MetricResult(value=float(i), attrs={"key": f"k{i}"})},
        )
        for i in range(12)
    ]
    (path / "zarr.json").unlink()
    (path / "runs" / "zarr.json").unlink()
    # before: "not a sharpkit results store" and no way back
    opened = runner.invoke(app, ["results", str(path)])
    assert opened.exit_code == 1
    assert "--repair" in opened.stderr
    assert "Traceback" not in opened.stderr
    with pytest.raises(StoreError, match=r"root zarr.json is missing.*--repair"):
        ResultStore(path)  # measure --store says the same, and writes nothing
    assert not (path / "zarr.json").exists()
    check = runner.invoke(app, ["results", str(path), "--check"])
    assert check.exit_code == 1
    assert "the root zarr.json is missing" in check.stdout
    assert "12 intact run(s)" in check.stdout
    repair = runner.invoke(app, ["results", str(path), "--repair"])
    assert repair.exit_code == 0, repair.output
    assert "rebuilt the root zarr.json" in repair.stdout
    assert "rebuilt runs/zarr.json" in repair.stdout
    rows = sharpkit.open_results(path, as_frame=False)
    assert sorted(r["run_id"] for r in rows) == ids
    assert ResultStore(path).find_metric("k7") is not None
    root = zarr.open_group(path, mode="r")  # plain zarr reads it again, too
    assert sorted(n for n, _ in root["runs"].groups()) == ids


def test_unreadable_root_points_to_repair(tmp_path: Path) -> None:
    path = tmp_path / "results.zarr"
    ResultStore(path).write_run(kind="train", attrs={})
    (path / "zarr.json").write_text("{trunc")
    with pytest.raises(StoreError, match=r"root zarr.json is unreadable.*--repair"):
        ResultStore(path)
    assert check_store(path).problems
    assert runner.invoke(app, ["results", str(path), "--repair"]).exit_code == 0
    assert len(ResultStore(path).runs()) == 1


def test_check_and_repair_refuse_what_is_not_a_store(tmp_path: Path) -> None:
    (tmp_path / "photos").mkdir()
    for args in (["--check"], ["--repair"]):
        result = runner.invoke(app, ["results", str(tmp_path / "photos"), *args])
        assert result.exit_code == 1
        assert result.stderr.startswith("error: no results store")
    assert list((tmp_path / "photos").iterdir()) == []
    bad = runner.invoke(app, ["results", str(tmp_path), "--check", "--csv"])
    assert bad.exit_code == 1
    assert "--check and --repair take only the store" in bad.stderr


def test_a_renamed_manifest_entry_is_damage(tmp_path: Path) -> None:
    # Found by the fuzzer: one bit flipped in a manifest key ("probes/" ->
    # "qrobes/") hid the probe's group, and the run was listed without its probe
    # instead of being reported. The manifest's own list is now checksummed.
    store = ResultStore(tmp_path / "s.zarr")
    _, probe_run, _ = _written_runs(store, "x")
    doc_path = tmp_path / "s.zarr" / "runs" / probe_run / "zarr.json"
    raw = doc_path.read_text()
    assert '"probes/interpolate/zarr.json"' in raw
    doc_path.write_text(
        raw.replace('"probes/interpolate/zarr.json"', '"qrobes/interpolate/zarr.json"')
    )
    report = check_store(tmp_path / "s.zarr")
    assert [rid for rid, _ in report.damaged] == [probe_run]
    with pytest.warns(sharpkit.SharpkitWarning, match="manifest"):
        rows = ResultStore(tmp_path / "s.zarr", create=False).records()
    assert probe_run not in {r["run_id"] for r in rows}


def test_a_format_2_root_is_damage_that_repair_rebuilds(tmp_path: Path) -> None:
    # before: `results --check` said "ok" while every other command refused
    # the store as "a zarr group (format 2), not a sharpkit results store"
    path = tmp_path / "results.zarr"
    ids = [ResultStore(path).write_run(kind="train", attrs={}) for _ in range(2)]
    root = json.loads((path / "zarr.json").read_text())
    root["zarr_format"] = 2
    (path / "zarr.json").write_text(json.dumps(root))
    with pytest.raises(StoreError, match=r"zarr format 2 .*--repair"):
        ResultStore(path)
    check = runner.invoke(app, ["results", str(path), "--check"])
    assert check.exit_code == 1
    assert "says zarr format 2 group" in check.stdout
    assert "2 intact run(s)" in check.stdout
    assert check.stderr.count("error:") == 1
    repair = runner.invoke(app, ["results", str(path), "--repair"])
    assert repair.exit_code == 0, repair.output
    assert "rebuilt the root zarr.json" in repair.stdout
    assert sorted(r.run_id for r in ResultStore(path).runs()) == sorted(ids)
    assert json.loads((path / "zarr.json").read_text())["attributes"]["manifests"]


def test_a_removed_manifest_attribute_is_damage_not_a_legacy_run(
    checkpoint: Path, tmp_path: Path
) -> None:
    # before: a run whose manifest attribute was removed was read as one written
    # before manifests, its objects trusted unchecked; its store says every run
    # has one, so it is damage: skipped with a warning, never reused
    store = tmp_path / "results.zarr"
    first = spectral_of(measure(checkpoint, store))
    run = the_run(store)
    meta = run / "zarr.json"
    doc = json.loads(meta.read_text())
    del doc["attributes"]["manifest"]
    meta.write_text(json.dumps(doc))
    chunk = run / "metrics" / "spectral" / "eigenvalues" / "c" / "0"
    chunk.write_bytes(chunk.read_bytes()[:-3])  # unchecked, this was read as data
    again = measure(checkpoint, store)
    one_warning(again.stderr, "is damaged", "no manifest attribute")
    second = spectral_of(again)
    assert second["reused"] is False
    assert second["value"] == first["value"]  # same seed, same data: bitwise
    report = check_store(store)
    assert [rid for rid, _ in report.damaged] == [run.name]
    assert report.intact == 1


def test_a_run_from_before_manifests_merged_into_a_new_store_gets_one(
    tmp_path: Path,
) -> None:
    from sharpkit.store.merge import merge_stores

    old, new = tmp_path / "old.zarr", tmp_path / "new.zarr"
    rid = ResultStore(old).write_run(
        kind="measure",
        attrs={"lr": 0.1},
        metrics={"spectral": MetricResult(value=3.5, attrs={"key": "k"})},
    )
    make_legacy(old / "runs" / rid)
    (report,) = merge_stores(new, [old])
    assert report.copied == (rid,)
    doc = json.loads((new / "runs" / rid / "zarr.json").read_text())
    assert "manifest" in doc["attributes"]  # sealed on the way in
    assert check_store(new).damaged == ()
    assert check_store(new).intact == 1
    assert ResultStore(new).find_metric("k").value == 3.5


def test_a_store_only_opened_is_intact(tmp_path: Path) -> None:
    # Every measure and train opens its store before working, so an interrupted
    # one leaves a root without runs/: that is an empty store, not a damaged one.
    ResultStore(tmp_path / "new.zarr")
    result = runner.invoke(app, ["results", str(tmp_path / "new.zarr"), "--check"])
    assert result.exit_code == 0, result.stderr
    assert "ok: 0 intact run(s), 0 damaged" in result.stdout


# ------------------------------------------------------------ fuzzing the readers


def _written_runs(store: ResultStore, tag: str) -> list[str]:
    ids = [
        store.write_run(
            kind="measure",
            attrs={"lr": 0.1, "batch_size": 32, "final": {"test_accuracy": 0.9}},
            metrics={
                "spectral": MetricResult(
                    value=12.5,
                    bound=1e-4,
                    converged=True,
                    hvps=40,
                    arrays={
                        "ritz_values": np.array([12.5, 3.0, -0.5]),
                        "resolved": np.array([True, False, False]),
                    },
                    attrs={"key": f"{tag}-spectral"},
                ),
                "trace": MetricResult(
                    value=30.0, stderr=0.5, attrs={"key": f"{tag}-trace"}
                ),
            },
        ),
        store.write_run(
            kind="probe",
            attrs={"lr": [0.1, 0.2]},
            probes={
                "interpolate": ProbeResult(
                    coords={"alpha": np.linspace(-1, 2, 4)},
                    arrays={"loss": np.array([3.0, 0.1, 0.2, 2.0])},
                    summary={"width": 1.25},
                    attrs={"key": f"{tag}-interp"},
                )
            },
        ),
        store.write_run(
            kind="train",
            attrs={"lr": 0.1},
            training={
                "epoch": np.arange(1, 4),
                "train_loss": np.array([1.0, 0.5, 0.2]),
            },
        ),
    ]
    return ids


@pytest.fixture(scope="module")
def pristine() -> Any:
    """A store with three sealed runs and the same three written before manifests."""
    root = Path(tempfile.mkdtemp(prefix="sharpkit-fuzz-"))
    store = ResultStore(root / "s.zarr")
    sealed = _written_runs(store, "sealed")
    legacy = _written_runs(store, "legacy")
    for rid in legacy:
        make_legacy(root / "s.zarr" / "runs" / rid)
    fresh = ResultStore(root / "s.zarr")
    truth = {
        "records": {(r["run_id"], r["metric"]): r for r in fresh.records()},
        "runs": {rid: fresh.run(rid) for rid in sealed + legacy},
        "metrics": {
            k: fresh.find_metric(k) for k in ("sealed-spectral", "sealed-trace")
        },
        "probe": fresh.find_probe("sealed-interp"),
    }
    files = sorted(
        str(p.relative_to(root / "s.zarr"))
        for p in (root / "s.zarr" / "runs").rglob("*")
        if p.is_file()
    )
    yield root / "s.zarr", set(sealed), files, truth
    shutil.rmtree(root, ignore_errors=True)


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner),
    max_leaves=6,
)


@st.composite
def corruptions(
    draw: st.DrawFn, files: list[str]
) -> tuple[str, Callable[[Path], None]]:
    """One random change to one object of a store: bytes, length, presence or JSON."""
    name = draw(st.sampled_from(files))
    how = draw(st.sampled_from(["flip", "truncate", "delete", "replace", "json"]))
    if how == "flip":
        at, bit = draw(st.integers(0, 10**6)), draw(st.integers(0, 7))

        def change(p: Path) -> None:
            data = bytearray(p.read_bytes())
            if data:
                data[at % len(data)] ^= 1 << bit
            p.write_bytes(bytes(data))

    elif how == "truncate":
        keep = draw(st.floats(0.0, 0.99))

        def change(p: Path) -> None:
            data = p.read_bytes()
            p.write_bytes(data[: int(len(data) * keep)])

    elif how == "delete":

        def change(p: Path) -> None:
            p.unlink()

    elif how == "replace":
        junk = draw(st.binary(max_size=64))

        def change(p: Path) -> None:
            p.write_bytes(junk)

    else:
        path_in_doc = draw(st.lists(st.text(max_size=8), min_size=1, max_size=2))
        pick = draw(st.integers(0, 50))
        value = draw(_JSON)

        def change(p: Path) -> None:
            try:
                doc = json.loads(p.read_bytes())
            except ValueError:
                return
            target = doc
            for key in path_in_doc[:-1]:
                if not isinstance(target, dict):
                    return
                target = target.setdefault(key, {})
            if isinstance(target, dict):
                # mostly an existing key: that is where a wrong type hurts
                keys = sorted(target)
                key = keys[pick % len(keys)] if keys else path_in_doc[-1]
                target[key] = value
            p.write_text(json.dumps(doc))

    return name, change


def _damage_once(pristine: Any, data: st.DataObject) -> None:
    source, sealed, files, truth = pristine
    name, change = data.draw(corruptions(files))
    run_id = name.split("/")[1]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "s.zarr"
        shutil.copytree(source, path)
        before = (path / name).read_bytes()
        change(path / name)
        after = (path / name).read_bytes() if (path / name).exists() else None
        with warnings.catch_warnings(record=True):
            warnings.simplefilter("always")  # damage warns: that is the point
            _read_everything(path, run_id, run_id in sealed, truth)
            report = check_store(path)
        run_doc = name.endswith(f"{run_id}/zarr.json")
        if run_id in sealed and after != before and not run_doc:
            # any change to a sealed run's object is caught by its manifest
            assert run_id in {rid for rid, _ in report.damaged}


_FUZZ = {
    "deadline": None,
    "suppress_health_check": [
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
    ],
}


@settings(max_examples=8, **_FUZZ)
@given(data=st.data())
def test_random_damage_never_raises_nor_lies(
    pristine: Any, data: st.DataObject
) -> None:
    _damage_once(pristine, data)


@pytest.mark.slow
@settings(max_examples=100, **_FUZZ)
@given(data=st.data())
def test_random_damage_never_raises_nor_lies_thorough(
    pristine: Any, data: st.DataObject
) -> None:
    _damage_once(pristine, data)


def _read_everything(path: Path, run_id: str, sealed: bool, truth: dict) -> None:
    """Every reader on a damaged store: no exception, no changed value if sealed."""
    store = ResultStore(path, create=False)
    listed = {r.run_id for r in store.runs()}
    rows = store.records()
    for row in rows:
        if row["run_id"] == run_id and sealed:
            assert row == truth["records"][(row["run_id"], row["metric"])]
    for key, want in truth["metrics"].items():
        got = store.find_metric(key)
        if got is not None:  # the newest intact match: equal to what was written
            assert got.value == want.value
            assert got.attrs == want.attrs
            for a in want.arrays:
                np.testing.assert_array_equal(got.arrays[a], want.arrays[a])
    for key in ("legacy-spectral", "legacy-trace"):  # no manifest: only no exception
        store.find_metric(key)
    store.find_probe("legacy-interp")
    probe = store.find_probe("sealed-interp")
    if probe is not None:
        np.testing.assert_array_equal(
            probe.arrays["loss"], truth["probe"].arrays["loss"]
        )
    for rid in listed:
        try:
            run = store.run(rid)
        except StoreError:
            assert rid == run_id  # only the damaged run may refuse to be read
            continue
        if rid != run_id or sealed:
            want = truth["runs"][rid]
            assert run.attrs == want.attrs
            assert set(run.metrics) == set(want.metrics)
            for m, result in run.metrics.items():
                assert result.value == want.metrics[m].value
                for a, arr in want.metrics[m].arrays.items():
                    np.testing.assert_array_equal(result.arrays[a], arr)
            for c, arr in want.training.items():
                np.testing.assert_array_equal(run.training[c], arr)
