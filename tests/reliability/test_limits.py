"""Sizes that ask for unbounded work are refused before it starts (issue 21, section 3).

Each case is a few bytes of input asking for gigabytes or hours: an option
(``-o adaptive.steps=1e9``), checkpoint metadata (``width=60000``), a process
count (``--nproc 500``), an image size. Each must end as one ``error:`` line
that says the size and the limit and how to raise it, *before* the work: the
tests run under a time limit far below what the work would take, and where
they can, they check that nothing was started (no rank, no image decoded).

The memory limit depends on the machine (half the memory free), so the cases
that test it set ``SHARPKIT_LIMITS=memory=...`` to a known value; the count,
module and process limits are the defaults.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from _rel import TINY_TRAIN, cli, one_line
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sharpkit
from sharpkit._limits import bounded_build, current_limits
from sharpkit.checkpoint import save_checkpoint
from sharpkit.errors import ConfigError, SharpkitError

COUNT_OPTIONS = [
    ("adaptive", "steps"),
    ("epsilon", "steps"),
    ("epsilon", "restarts"),
    ("pacbayes-sigma", "samples"),
]
BAD_LIMITS = [
    ("count", r"'count' is not one of count="),
    ("count=many", r"count='many' is not a number"),
    ("memory=12 parsecs", r"memory='12 parsecs' is not a number of bytes"),
    ("processes=0", r"must be a positive whole number"),
    ("speed=1", r"'speed=1' is not one of"),
]
# (id, checkpoint metadata, what the line says)
CLAIMS: list[tuple[str, dict[str, Any], str]] = [
    ("width-60000", {"model_options": {"width": 60000}},
     r"model 'mlp-bn' would take 1\d\.\d GiB"),
    ("depth-200000", {"model_options": {"depth": 200000}},
     r"more than 10000 submodules"),
    ("n_train-2e9", {"dataset_options": {"n_train": 2 * 10**9}},
     r"'n_train' = 2000000000"),
    ("input-30000x30000", {"dataset_options": {"shape": "30000x30000"}},
     r"dataset 'synthetic' would take \d+\.\d GiB"),
]  # fmt: skip
TRAIN_TOO_MUCH = [
    ("n_train=2000000000", r"'n_train' = 2000000000"),
    ("depth=100000", r"submodules"),
]
# cases that end in one error: line (docs/reliability.md counts them): the
# above, --nproc 500, sweep -j 40 (pool and dask)
ONE_LINE = len(COUNT_OPTIONS) + len(BAD_LIMITS) + len(CLAIMS) + len(TRAIN_TOO_MUCH) + 3
RAISE = re.compile(r"SHARPKIT_LIMITS=\w+=\S+ if you mean it")


def _refused(line: str, *says: str) -> None:
    for text in says:
        assert re.search(text, line), line
    assert RAISE.search(line), line  # how a user who means it goes further


# ------------------------------------------------------------------- options


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("metric", "option"), COUNT_OPTIONS)
def test_a_count_option_of_a_billion_is_refused(
    tiny: Path, metric: str, option: str
) -> None:
    line = one_line(
        cli("measure", tiny, "-m", metric, "-o", f"{option}=1000000000", "--no-store")
    )
    _refused(line, f"'{option}' = 1000000000", r"limit of 1000000 on counts")


def test_a_user_who_means_it_raises_the_count_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from sharpkit.registry import get_registry

    reg = get_registry()
    spec = reg.get("metric", "adaptive")
    with pytest.raises(ConfigError, match="limit of 1000000"):
        reg.parse_options(spec, {"steps": "2000000"})
    monkeypatch.setenv("SHARPKIT_LIMITS", "count=1e7")
    assert reg.parse_options(spec, {"steps": "2000000"}) == {"steps": 2_000_000}


@pytest.mark.parametrize(("value", "says"), BAD_LIMITS)
def test_a_malformed_limits_variable_is_one_line(
    tiny: Path, value: str, says: str
) -> None:
    line = one_line(cli("measure", tiny, "--no-store", env={"SHARPKIT_LIMITS": value}))
    assert re.search(says, line), line


def test_limits_parse_sizes_and_counts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "SHARPKIT_LIMITS", "count=1e7, memory=1.5GiB, modules=20, processes=3"
    )
    got = current_limits()
    assert (got.count, got.memory, got.modules, got.processes) == (
        10**7, 3 << 29, 20, 3,
    )  # fmt: skip


# --------------------------------------------------------- checkpoint metadata


def _claims(tmp_path: Path, **meta: Any) -> Path:
    """A 20 KB checkpoint whose metadata claims ``meta``."""
    net = sharpkit.build_model(
        "mlp-bn", input_shape=(16,), num_classes=4, options={"width": 16}, seed=0
    )
    fields: dict[str, Any] = {
        "model": "mlp-bn", "model_options": {"width": 16}, "dataset": "synthetic",
        "dataset_options": {"n_train": 128, "n_test": 64}, **meta,
    }  # fmt: skip
    path = save_checkpoint(
        tmp_path / "claims.pt", net, sharpkit.CheckpointMeta(**fields)
    )
    assert path.stat().st_size < 64 << 10
    return path


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("meta", "says"), [c[1:] for c in CLAIMS], ids=[c[0] for c in CLAIMS]
)
def test_metadata_that_claims_a_huge_model_or_dataset(
    tmp_path: Path, meta: dict[str, Any], says: str
) -> None:
    ckpt = _claims(tmp_path, **meta)
    env = {"SHARPKIT_LIMITS": "memory=1GiB"}
    line = one_line(cli("measure", ckpt, "--no-store", env=env))
    _refused(line, says)


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("option", "says"), TRAIN_TOO_MUCH)
def test_train_options_that_ask_for_too_much(
    tmp_path: Path, option: str, says: str
) -> None:
    out = tmp_path / "run"
    args = ["train", *TINY_TRAIN, "-o", option, "--epochs", "1", "--out", out]
    line = one_line(cli(*args, "--no-store"))
    _refused(line, says)
    assert not (out / "last.pt").exists()


def test_a_model_within_the_limits_builds_as_before() -> None:
    """The guard changes nothing it lets through: the same weights, bit for bit."""
    from sharpkit._seed import seeded
    from sharpkit.builtin._models import build_mlp_bn

    guarded = sharpkit.build_model(
        "mlp-bn", input_shape=(16,), num_classes=4, options={"width": 16}, seed=3
    )
    with seeded(3):  # what build_model does, without the guard
        plain = build_mlp_bn(input_shape=(16,), num_classes=4, width=16)
    with bounded_build("model"):
        assert torch.zeros(4).sum() == 0  # tensors made inside are real
    for (n, a), (_, b) in zip(
        guarded.state_dict().items(), plain.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), n


# ------------------------------------------------------------------- processes


@pytest.mark.timeout(60)
def test_nproc_500_is_refused_before_a_rank_starts(
    tiny: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    started: list[int] = []
    monkeypatch.setattr(
        "sharpkit.cli._distributed._start", lambda rank, *a: started.append(rank)
    )
    line = one_line(cli("measure", tiny, "--nproc", "500", "--no-store"))
    _refused(line, r"--nproc 500 starts 500 processes, over the limit of \d+")
    assert not started


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "scheduler", [[], ["--scheduler", "dask"]], ids=["pool", "dask"]
)
def test_sweep_j_40_is_refused_before_a_worker_starts(
    tmp_path: Path, scheduler: list[str]
) -> None:
    sweep = tmp_path / "s.toml"
    sweep.write_text(
        "[sweep]\nname = 'j'\nout = 'runs'\n[train]\nmodel = 'mlp-bn'\n"
        "data = 'synthetic'\nlr = [0.1]\nbatch_size = 32\nepochs = 1\n"
    )
    line = one_line(cli("sweep", sweep, "-j", "40", *scheduler))
    _refused(line, r"-j 40 starts 40 processes")
    assert not (tmp_path / "runs").exists()


# ---------------------------------------------------------------- image folders


def _images(folder: Path, n: int, side: int) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(n):
        sub = folder / ("cat" if i % 2 else "dog")
        sub.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(sub / f"{i}.png")
    return folder


@pytest.mark.timeout(60)
def test_an_image_size_of_30000_is_refused_before_an_image_is_decoded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = _images(tmp_path / "imgs", 6, 8)
    decoded: list[Path] = []
    monkeypatch.setattr(
        "sharpkit.api.imagefolder._ImageReader.read",
        lambda self, path: decoded.append(path),
    )
    with pytest.raises(ConfigError) as info:
        sharpkit.load_dataset(str(folder), options={"size": "30000"})
    _refused(str(info.value), r"the 6 images .* at 30000x30000 would take 60\.3 GiB")
    assert "size" in str(info.value).split(";")[1]
    assert not decoded


@pytest.mark.timeout(60)
def test_large_images_are_refused_from_their_headers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = _images(tmp_path / "imgs", 4, 256)
    monkeypatch.setenv("SHARPKIT_LIMITS", "memory=2MiB")  # 4 x 3 x 256² x 4 = 3 MiB
    with pytest.raises(ConfigError, match=r"at 256x256 would take 3\.0 MiB"):
        sharpkit.load_dataset(str(folder))
    monkeypatch.setenv("SHARPKIT_LIMITS", "memory=4MiB")
    assert len(sharpkit.load_dataset(str(folder)).train) == 4


# ------------------------------------------------------------------------ fuzz

EXAMPLES = 60


@settings(
    max_examples=EXAMPLES,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    width=st.one_of(st.integers(1, 64), st.integers(1, 10**6)),
    depth=st.one_of(st.integers(1, 6), st.integers(1, 10**6)),
    side=st.one_of(st.integers(1, 8), st.integers(1, 10**5)),
    classes=st.integers(2, 10**5),
)
def test_fuzz_declared_sizes_are_built_within_the_limits_or_refused(
    width: int, depth: int, side: int, classes: int
) -> None:
    """Metadata sizes: a model builds within the limits or is one line, at once.

    The limits are small (64 MiB, 2000 parts), so that every example ends in
    well under a second either way: a size the guard let through would show
    as a slow example or a memory error, not a pass.
    """
    limits = {"SHARPKIT_LIMITS": "memory=64MiB,modules=2000"}
    refusal: SharpkitError | None = None
    with pytest.MonkeyPatch.context() as mp:
        for key, value in limits.items():
            mp.setenv(key, value)
        try:
            net = sharpkit.build_model(
                "mlp-bn", input_shape=(1, side, side), num_classes=classes,
                options={"width": width, "depth": depth}, seed=0,
            )  # fmt: skip
        except SharpkitError as exc:
            refusal = exc
    if refusal is not None:
        message = str(refusal)
        assert message
        assert "\n" not in message
        return
    size = sum(p.numel() * p.element_size() for p in net.parameters())
    size += sum(b.numel() * b.element_size() for b in net.buffers())
    assert size <= 64 << 20
