"""Shared fixtures; plugin discovery uses real fake-distribution folders on sys.path."""

from __future__ import annotations

import importlib
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

PLUGIN_DISTS = Path(__file__).parent / "data" / "plugin_dists"


@pytest.fixture(autouse=True, scope="session")
def _calibration_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Sweeps predict their time from a cached calibration: cache it here, not in ~.

    Set in the environment, so that ``sharpkit sweep`` run as a subprocess
    uses it too; shared by the session's tests (a calibration of the same
    tiny model is then paid once).
    """
    import os

    path = tmp_path_factory.mktemp("calibration") / "calibration.json"
    before = os.environ.get("SHARPKIT_CALIBRATION")
    os.environ["SHARPKIT_CALIBRATION"] = str(path)
    yield
    if before is None:
        os.environ.pop("SHARPKIT_CALIBRATION", None)
    else:
        os.environ["SHARPKIT_CALIBRATION"] = before


@pytest.fixture
def plugin_dists(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., None]]:
    """Install fake distributions (tests/data/plugin_dists/<name>) for one test.

    Each folder holds a ``*.dist-info`` with ``entry_points.txt`` and the plugin
    module, so discovery goes through the real ``importlib.metadata`` machinery.
    """
    added_modules: set[str] = set()

    def install(*names: str) -> None:
        for name in names:
            folder = PLUGIN_DISTS / name
            assert folder.is_dir(), folder
            monkeypatch.syspath_prepend(str(folder))
            added_modules.update(p.stem for p in folder.glob("*.py"))
        importlib.invalidate_caches()

    yield install
    for mod in added_modules:
        sys.modules.pop(mod, None)
    importlib.invalidate_caches()


@pytest.fixture
def fresh_registry(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Make the process-wide registry be rebuilt for (and after) this test."""
    import sharpkit.registry as registry

    monkeypatch.setattr(registry, "_REGISTRY", None)
    yield
    registry._REGISTRY = None


@pytest.fixture
def mlp_bn_checkpoint(tmp_path: Path) -> Path:
    """``a.pt``: a small untrained ``mlp-bn`` (16 inputs, 4 classes), synthetic data."""
    import sharpkit
    import sharpkit.builtin._models as models

    net = models.build_mlp_bn(input_shape=(16,), num_classes=4, depth=1, width=8)
    meta = sharpkit.CheckpointMeta(
        model="mlp-bn",
        model_options={"depth": 1, "width": 8},
        dataset="synthetic",
        seed=0,
        extra={"input_shape": [16], "num_classes": 4},
    )
    return sharpkit.save_checkpoint(tmp_path / "a.pt", net, meta)


@pytest.fixture
def own_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A user's project (tests/own_project.py) in the working directory.

    sharpkit imports ``tinynets``, ``tinyloss`` and ``tinydata`` from there when a
    test names them; the imports and ``sys.path`` are undone afterwards.
    """
    from own_project import forget_modules, make_project

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    forget_modules()
    yield make_project(tmp_path)
    forget_modules()


# ------------------------------------------------------------ an S3 server for tests


class S3Server:
    """A real S3-compatible server (moto in server mode), its own process, localhost.

    Started once per session on a free port of 127.0.0.1 and stopped at its end;
    every test gets a bucket of its own (:func:`s3_url`).
    """

    def __init__(self) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.env = {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_REGION": "us-east-1",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ALLOW_HTTP": "true",
            "SHARPKIT_STORE_TIMEOUT": "20",
        }
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                str(self.port),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    pytest.fail("the moto S3 test server did not start")
                time.sleep(0.1)

    def client(self):  # type: ignore[no-untyped-def]
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        )

    def new_bucket(self) -> str:
        name = f"test-{secrets.token_hex(6)}"
        self.client().create_bucket(Bucket=name)
        return name

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """The session's S3 test server (moto), started on first use."""
    pytest.importorskip("moto.server", reason="needs moto[server] (the dev extra)")
    pytest.importorskip("obstore", reason="needs obstore (the remote extra)")
    server = S3Server()
    yield server
    server.stop()


@pytest.fixture
def s3_url(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> str:
    """``s3://<a fresh bucket>/results.zarr``, with this process's AWS_* set for it."""
    for key, value in s3_server.env.items():
        monkeypatch.setenv(key, value)
    return f"s3://{s3_server.new_bucket()}/results.zarr"


# ----------------------------------------------------------------------- devices


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def device(request: pytest.FixtureRequest) -> str:
    """Where a ground-truth test computes: the CPU, and CUDA (``gpu``) where present.

    The truth stays a dense float64 Hessian on the CPU; only the code under test
    moves, so a CUDA run checks the same tolerances (``pytest -m gpu`` runs just
    those).
    """
    return str(request.param)


def pytest_collection_modifyitems(
    config: pytest.Config, items: list[pytest.Item]
) -> None:
    """Skip ``gpu`` tests, with the reason, where there is no CUDA device."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="gpu: no CUDA device on this machine")
    for item in items:
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip)
