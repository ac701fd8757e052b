"""Inputs accepted silently or with a traceback before (issue 21, section 5).

Each is now one ``error:`` line: a checkpoint damaged on disk (its zip CRC no
longer matches: λ_max 3.4e35 was printed as a result), and weights stored as
sparse or meta tensors.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from _rel import cli, one_line

import sharpkit
from sharpkit.checkpoint import FORMAT_NAME, load_checkpoint


def _payload(tiny: Path, state: dict[str, torch.Tensor]) -> dict[str, object]:
    meta = load_checkpoint(tiny).meta
    return {
        "format": FORMAT_NAME,
        "format_version": 1,
        "state_dict": state,
        "meta": meta.to_dict(),
    }


def test_a_checkpoint_damaged_on_disk_is_refused(tiny: Path, tmp_path: Path) -> None:
    ckpt = load_checkpoint(tiny)
    state = {k: v.clone() for k, v in ckpt.state_dict.items()}
    name = next(k for k, v in state.items() if v.is_floating_point() and v.numel() > 64)
    state[name] = torch.full_like(state[name], 0.123456789)
    path = tmp_path / "damaged.pt"
    torch.save(_payload(tiny, state), path)
    raw = bytearray(path.read_bytes())
    pattern = torch.tensor([0.123456789] * 4).numpy().tobytes()
    at = bytes(raw).find(pattern)
    assert at > 0
    raw[at + 3] ^= 0x7F  # one byte of one weight, as a bad disk sector would
    path.write_bytes(bytes(raw))
    line = one_line(cli("measure", path, "--no-store"))
    assert "CRC-32" in line
    assert "damaged" in line


@pytest.mark.parametrize("kind", ["sparse", "meta"])
def test_weights_without_dense_values_are_one_line(
    tiny: Path, tmp_path: Path, kind: str
) -> None:
    state = load_checkpoint(tiny).state_dict
    convert = (
        (lambda t: t.to_sparse()) if kind == "sparse" else (lambda t: t.to("meta"))
    )
    path = tmp_path / f"{kind}.pt"
    torch.save(_payload(tiny, {k: convert(v) for k, v in state.items()}), path)
    line = one_line(cli("measure", path, "--no-store"))
    assert "re-save them dense" in line


# ----------------------------------------------- user code that exits or misbehaves

USER_CODE = {
    "exit_import.py": "import sys\n\nsys.exit(0)\n",
    "base_import.py": "class Boom(BaseException):\n    pass\n\n\nraise Boom('x')\n",
    "exit_ctor.py": (
        "import sys\n\nimport torch\n\n\nclass Net(torch.nn.Module):\n"
        "    def __init__(self):\n        super().__init__()\n        sys.exit(0)\n"
    ),
    "exit_fwd.py": (
        "import sys\n\nimport torch\n\n\nclass Net(torch.nn.Module):\n"
        "    def __init__(self):\n        super().__init__()\n"
        "        self.fc = torch.nn.Linear(16, 4)\n\n"
        "    def forward(self, x):\n        sys.exit(0)\n"
    ),
    "float_loss.py": "def loss(outputs, targets):\n    return 1.5\n",
}

# (id, argv after "measure", what the one line says); {d}: the user's folder,
# {a}: the tiny checkpoint, {w}: a state_dict for exit_*.py:Net
USER_CASES = [
    ("sys-exit-at-import", ["{a}", "--loss", "{d}/exit_import.py:loss"],
     r"failed with SystemExit: 0"),
    ("base-exception-at-import", ["{a}", "--loss", "{d}/base_import.py:loss"],
     r"failed with Boom: x"),
    ("sys-exit-in-constructor", ["{w}", "--model", "{d}/exit_ctor.py:Net",
                                 "--data", "synthetic"], r"raised SystemExit"),
    ("sys-exit-in-forward", ["{w}", "--model", "{d}/exit_fwd.py:Net",
                             "--data", "synthetic"], r"fails on them \(SystemExit"),
    ("loss-returns-a-float", ["{a}", "--loss", "{d}/float_loss.py:loss"],
     r"returned a float, not a scalar tensor"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("argv", "says"), [c[1:] for c in USER_CASES], ids=[c[0] for c in USER_CASES]
)
def test_user_code_that_exits_is_one_line_not_exit_0(
    tiny: Path, tmp_path: Path, argv: list[str], says: str
) -> None:
    import re
    import sys

    for name, code in USER_CODE.items():
        (tmp_path / name).write_text(code)
    torch.save(
        {"fc.weight": torch.randn(4, 16), "fc.bias": torch.randn(4)}, tmp_path / "w.pt"
    )
    args = [
        a.replace("{a}", str(tiny))
        .replace("{d}", str(tmp_path))
        .replace("{w}", str(tmp_path / "w.pt"))
        for a in argv
    ]
    try:
        line = one_line(cli("measure", *args, "--no-store"))
    finally:
        for mod in [m for m in sys.modules if m.startswith("sharpkit_user_")]:
            del sys.modules[mod]
    assert re.search(says, line), line


# ------------------------------------------------------------ options and paths

# (id, argv, what the one line says); {a}: the tiny checkpoint, {d}: a folder
OPTION_CASES = [
    ("memory-budget-inf", ["measure", "{a}", "--no-store", "--memory-budget", "inf"],
     r"--memory-budget must be a positive, finite size"),
    ("device-meta", ["measure", "{a}", "--no-store", "--device", "meta"],
     r"device 'meta' holds no values"),
    ("device-mps", ["measure", "{a}", "--no-store", "--device", "mps"],
     r"device 'mps' is not available here"),
    ("num-classes-text", ["measure", "{a}", "--no-store", "--data", "{d}/data.pt",
                          "--data-option", "num_classes=abc"],
     r"num_classes='abc' must be a whole number"),
    ("file-name-over-name-max", ["measure", "{d}/" + "a" * 300 + ".pt", "--no-store"],
     r"File name too long"),
    ("seed-2-to-the-64", ["train", "--model", "mlp-bn", "--data", "synthetic",
                          "--lr", "0.1", "--batch-size", "32", "--epochs", "1",
                          "--seed", str(2**64), "--out", "{d}/o", "--no-store"],
     r"seed 18446744073709551616 is out of range"),
    ("batch-size-1-bn-train", ["measure", "{a}", "--no-store", "--batch-size", "1",
                               "--bn-mode", "train"],
     r"batches of 1 .*need more than one example per batch: raise --batch-size"),
    ("store-ftp", ["measure", "{a}", "--store", "ftp://host/x.zarr"],
     r"ftp:// is not a store"),
    ("store-http", ["measure", "{a}", "--store", "http://host/x.zarr"],
     r"http:// is not a store"),
    ("store-s3-without-bucket", ["measure", "{a}", "--store", "s3://"],
     r"names no bucket"),
    # before: matplotlib's "dpi must be positive" and std::bad_alloc tracebacks
    ("plot-dpi-0", ["plot", "{d}/s.zarr", "--figure", "fig1", "-o", "{d}/f.png",
                    "--dpi", "0"], r"--dpi 0 is outside 1 to 1200"),
    ("plot-dpi-negative", ["plot", "{d}/s.zarr", "--figure", "fig1", "-o",
                           "{d}/f.png", "--dpi", "-5"], r"--dpi -5 is outside"),
    ("plot-dpi-100000", ["plot", "{d}/s.zarr", "--figure", "fig1", "-o",
                         "{d}/f.png", "--dpi", "100000"], r"--dpi 100000 is outside"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("argv", "says"), [c[1:] for c in OPTION_CASES], ids=[c[0] for c in OPTION_CASES]
)
def test_an_option_that_raised_or_was_accepted_is_one_line(
    tiny: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    argv: list[str],
    says: str,
) -> None:
    import re

    monkeypatch.chdir(tmp_path)  # where a store URL taken as a path would go

    torch.save(
        {"x": torch.randn(8, 16), "y": torch.arange(8) % 4}, tmp_path / "data.pt"
    )
    args = [a.replace("{a}", str(tiny)).replace("{d}", str(tmp_path)) for a in argv]
    line = one_line(cli(*args))
    assert re.search(says, line), line
    assert not list(tmp_path.glob("ftp*"))  # no local folder named "ftp:"
    assert not list(tmp_path.glob("http*"))


BAD_ENDPOINTS = ["not a url", "localhost:9000", "http://", "ftp://host", "http://h:0"]


@pytest.mark.parametrize("endpoint", BAD_ENDPOINTS)
def test_a_bad_s3_endpoint_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, endpoint: str
) -> None:
    # before: obstore panicked at the first request (pyo3 PanicException, a
    # Rust traceback: "request valid: InvalidUri(...)")
    for name, value in {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": "us-east-1",
        "SHARPKIT_STORE_TIMEOUT": "3",
    }.items():
        monkeypatch.setenv(name, value)
    line = one_line(cli("results", "s3://bucket/x.zarr"))
    assert f"AWS_ENDPOINT_URL={endpoint!r} is not an endpoint URL" in line


def test_train_out_empty_is_refused_before_writing_anything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # before: Path("") is Path("."), so the run was written into the current
    # folder (an unset shell variable in `--out "$RUN"`)
    from _rel import TINY_TRAIN

    monkeypatch.chdir(tmp_path)
    for out in ("", "  "):
        args = ["train", *TINY_TRAIN, "--epochs", "1", "--out", out, "--no-store"]
        line = one_line(cli(*args), code=2)  # a usage error, as for any bad value
        assert "'--out': is empty; name the folder for the run" in line
    assert list(tmp_path.iterdir()) == []


def test_disable_plugin_with_no_such_plugin_warns(tiny: Path) -> None:
    from _rel import warned

    line = warned(cli("--disable-plugin", "builtin", "measure", tiny, "--no-store"))
    assert "'builtin' matches no installed plugin" in line
    assert "builtin.metrics" in line


# ------------------------------------------------------------- the output streams


def _sharpkit(args: list[str], **env: str) -> tuple[int, str, str]:
    import subprocess
    import sys

    from _rel import subprocess_env

    environ = {**subprocess_env(), **env}
    done = subprocess.run(
        [sys.executable, "-m", "sharpkit", *args],
        capture_output=True, env=environ, timeout=300, check=False,
    )  # fmt: skip
    return (
        done.returncode,
        done.stdout.decode(errors="replace"),
        done.stderr.decode(errors="replace"),
    )


def test_an_ascii_terminal_gets_the_table_not_a_traceback(tiny: Path) -> None:
    code, out, err = _sharpkit(
        ["measure", str(tiny), "--no-store"], PYTHONIOENCODING="ascii"
    )
    assert code == 0, err
    assert "Traceback" not in err
    assert "spectral ?_max" in out  # λ could not be encoded: replaced, not fatal


def test_json_to_a_full_device_is_one_line(tiny: Path) -> None:
    import subprocess
    import sys

    from _rel import subprocess_env

    with open("/dev/full", "w") as full:
        done = subprocess.run(
            [sys.executable, "-m", "sharpkit", "measure", str(tiny), "--no-store",
             "--json"],
            stdout=full, stderr=subprocess.PIPE, env=subprocess_env(), timeout=300,
            check=False, text=True,
        )  # fmt: skip
    lines = [ln for ln in done.stderr.splitlines() if ln.startswith("error:")]
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert len(lines) == 1, done.stderr
    assert "No space left on device" in lines[0]


# ------------------------------------------------------------- ignored labels


def test_targets_of_minus_100_are_said_and_measured_as_left_out(
    tiny: Path, tmp_path: Path
) -> None:
    from _rel import warned

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(128, 16, generator=gen)
    y = torch.arange(128) % 4
    y[::2] = -100  # cross-entropy's ignore_index: half the examples leave the loss
    torch.save({"x": x, "y": y}, tmp_path / "half.pt")
    line = warned(cli("measure", tiny, "--data", tmp_path / "half.pt", "--no-store"))
    assert "64 of the 128 analysis examples" in line
    assert "the Hessian is of the other 64" in line
    # and that is what is measured: the Hessian of the 64 kept examples' loss. In
    # float64 with tol 1e-10 both runs converge to the same λ_max; 1e-8 leaves
    # room for the rounding of sums over 128 rather than 64 examples
    both = {"metrics": ["spectral"], "dtype": "float64", "tol": 1e-10}
    with pytest.warns(sharpkit.SharpkitWarning, match="ignore_index"):
        got = sharpkit.measure(tiny, (x, y), **both)
    keep = y != -100
    want = sharpkit.measure(tiny, (x[keep], y[keep]), **both)
    assert got["spectral"].value == pytest.approx(want["spectral"].value, rel=1e-8)
    # every target ignored: one line (before: "num_classes must be positive,
    # got -99", or a model of one class)
    torch.save({"x": x, "y": torch.full((128,), -100)}, tmp_path / "none.pt")
    line = one_line(cli("measure", tiny, "--data", tmp_path / "none.pt", "--no-store"))
    assert "every target of" in line
    assert "is -100, which cross-entropy ignores" in line
