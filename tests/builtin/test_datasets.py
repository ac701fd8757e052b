"""Built-in datasets: real files, layouts, search order, subsets, augmentation."""

from __future__ import annotations

import importlib
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from sharpkit._hints import cli_hints
from sharpkit.builtin import _datasets as D
from sharpkit.errors import ConfigError, DataError
from sharpkit.interfaces import Dataset
from sharpkit.registry import Registry

FMNIST_DEBIAN = Path("/usr/share/datasets/fashion-mnist")
CIFAR_SHARED = Path(__file__).resolve().parents[3] / "shared" / "data" / "cifar10"


def cifar_dir() -> Path | None:
    """The CIFAR-10 npz folder: $SHARPKIT_DATA(/cifar10) or the shared data folder."""
    env = os.environ.get("SHARPKIT_DATA")
    for base in ([Path(env), Path(env) / "cifar10"] if env else []) + [CIFAR_SHARED]:
        if (base / "cifar10_train.npz").is_file():
            return base
    return None


needs_fmnist = pytest.mark.skipif(
    not (FMNIST_DEBIAN / "train-images-idx3-ubyte.gz").is_file(),
    reason="Fashion-MNIST not installed (apt install dataset-fashion-mnist)",
)
needs_cifar = pytest.mark.skipif(
    cifar_dir() is None, reason="CIFAR-10 npz files not found (set SHARPKIT_DATA)"
)


@pytest.fixture
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No real data is visible: no env root, no Debian folder, an empty cache."""
    monkeypatch.delenv("SHARPKIT_DATA", raising=False)
    monkeypatch.setattr(D, "DEBIAN_FASHION_MNIST", tmp_path / "no-debian")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path


def write_idx(path: Path, array: np.ndarray, *, gz: bool) -> None:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape
    )
    data = header + array.astype(np.uint8).tobytes()
    if gz:
        import gzip

        path = path.with_name(path.name + ".gz")
        data = gzip.compress(data)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def fake_fmnist(folder: Path, *, n: int = 40, gz: bool = True, seed: int = 0):
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": (np.arange(n) % 10).astype(np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(
            0, 256, (n // 2, 28, 28), dtype=np.uint8
        ),
        "t10k-labels-idx1-ubyte": (np.arange(n // 2) % 10).astype(np.uint8),
    }
    for stem, arr in arrays.items():
        write_idx(folder / stem, arr, gz=gz)
    return arrays


def expected_gray(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy((x.astype(np.float64) / 255 - 0.2860) / 0.3530).float()


# ----------------------------------------------------------------- registry


def test_specs_register_cleanly() -> None:
    r = Registry(entry_points=False)
    assert r.register_plugin(
        importlib.import_module("sharpkit.builtin.datasets"), "builtin.datasets"
    )
    assert r.failures == []
    assert r.names("dataset") == ["cifar10", "fashion-mnist", "synthetic"]


# ----------------------------------------------------------------- real data


@needs_fmnist
def test_debian_fashion_mnist(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("SHARPKIT_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    ds = D.load_fashion_mnist()
    assert isinstance(ds, Dataset)
    assert ds.source == str(FMNIST_DEBIAN)
    assert ds.input_shape == (1, 28, 28)
    assert ds.num_classes == 10
    assert ds.train.inputs.shape == (60000, 1, 28, 28)
    assert ds.test.inputs.shape == (10000, 1, 28, 28)
    assert ds.train.inputs.dtype == torch.float32
    assert ds.train.targets.dtype == torch.int64
    assert ds.train.inputs.is_contiguous()
    # The first labels of the published files (Xiao et al.'s repository).
    assert ds.train.targets[:10].tolist() == [9, 0, 0, 3, 0, 2, 7, 2, 5, 5]
    assert ds.test.targets[:10].tolist() == [9, 2, 1, 1, 6, 1, 4, 6, 5, 7]
    assert torch.bincount(ds.train.targets).tolist() == [6000] * 10
    assert torch.bincount(ds.test.targets).tolist() == [1000] * 10
    # Standardised with the training set's statistics (0.2860, 0.3530 are the
    # 4-digit values of 0.28604 and 0.35302): |mean| < 1e-3, |std - 1| < 1e-3.
    x = ds.train.inputs.double()
    assert abs(float(x.mean())) < 1e-3
    assert abs(float(x.std()) - 1) < 1e-3
    # Pixel 0 maps to -0.2860/0.3530 and 255 to (1-0.2860)/0.3530.
    assert float(x.min()) == pytest.approx(-0.2860 / 0.3530, abs=1e-6)
    assert float(x.max()) == pytest.approx((1 - 0.2860) / 0.3530, abs=1e-6)
    assert ds.train.augment is None


@pytest.mark.slow
@needs_cifar
def test_cifar10_npz_checks_from_its_readme() -> None:
    folder = cifar_dir()
    ds = D.load_cifar10(root=folder)
    assert ds.input_shape == (3, 32, 32)
    assert ds.train.inputs.shape == (50000, 3, 32, 32)
    assert ds.test.inputs.shape == (10000, 3, 32, 32)
    assert ds.train.inputs.dtype == torch.float32
    assert ds.train.targets.dtype == torch.int64
    ytr, yte = ds.train.targets, ds.test.targets
    assert ytr[:10].tolist() == [6, 9, 9, 4, 1, 1, 2, 7, 8, 3]
    assert yte[:10].tolist() == [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]
    assert torch.bincount(ytr).tolist() == [5000] * 10
    assert torch.bincount(yte).tolist() == [1000] * 10
    assert torch.bincount(ytr[:10000]).tolist() == [
        1005, 974, 1032, 1016, 999, 937, 1030, 1001, 1025, 981,
    ]  # fmt: skip
    mean = torch.tensor(D.CIFAR10_MEAN).view(3, 1, 1)
    std = torch.tensor(D.CIFAR10_STD).view(3, 1, 1)
    raw_train = ds.train.inputs[0] * std + mean  # back to [0, 1], CHW
    raw_test = ds.test.inputs[0] * std + mean
    # x_train[0, 0, :3, 0] = [59, 43, 50] (row 0, columns 0-2, red channel).
    torch.testing.assert_close(
        raw_train[0, 0, :3] * 255, torch.tensor([59.0, 43.0, 50.0]), atol=1e-3, rtol=0
    )
    torch.testing.assert_close(
        raw_test[0, 0, :5] * 255,
        torch.tensor([158.0, 159.0, 165.0, 166.0, 160.0]),
        atol=1e-3,
        rtol=0,
    )
    # Per-channel statistics: the constants are the 4-digit published values, so
    # the standardised train set has |mean| < 1e-3 and |std - 1| < 1e-3.
    std_, mean_ = torch.std_mean(ds.train.inputs, dim=(0, 2, 3))
    assert mean_.abs().max() < 1e-3
    assert (std_ - 1).abs().max() < 1e-3
    # The test set's own published statistics, through our normalisation.
    t = ds.test.inputs.double() * std.double() + mean.double()
    torch.testing.assert_close(
        t.mean(dim=(0, 2, 3)),
        torch.tensor([0.4942, 0.4851, 0.4504], dtype=torch.float64),
        atol=6e-5,
        rtol=0,
    )
    assert ds.train.augment is not None
    assert ds.test.augment is None


# ----------------------------------------------------------------- layouts


@pytest.mark.parametrize(
    ("sub", "gz"),
    [("", True), ("fashion-mnist", False), ("FashionMNIST/raw", False),
     ("fashion-mnist/FashionMNIST/raw", True)],
)  # fmt: skip
def test_fashion_mnist_layouts(isolated: Path, sub: str, gz: bool) -> None:
    root = isolated / "root"
    arrays = fake_fmnist(root / sub, gz=gz)
    ds = D.load_fashion_mnist(root=root)
    torch.testing.assert_close(
        ds.train.inputs[:, 0], expected_gray(arrays["train-images-idx3-ubyte"])
    )
    assert ds.test.targets.tolist() == arrays["t10k-labels-idx1-ubyte"].tolist()


def test_fashion_mnist_npz_layout(isolated: Path) -> None:
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (20, 28, 28), dtype=np.uint8)
    y = (np.arange(20) % 10).astype(np.uint8)
    folder = isolated / "root" / "fashion-mnist"
    folder.mkdir(parents=True)
    np.savez(folder / "fashion-mnist_train.npz", x_train=x, y_train=y)
    np.savez(folder / "fashion-mnist_test.npz", x_test=x[:10], y_test=y[:10])
    ds = D.load_fashion_mnist(root=isolated / "root")
    torch.testing.assert_close(ds.train.inputs[:, 0], expected_gray(x))
    assert ds.test.targets.tolist() == y[:10].tolist()


def test_search_order_root_then_env(isolated: Path, monkeypatch) -> None:
    first = fake_fmnist(isolated / "a", seed=1)
    fake_fmnist(isolated / "b", seed=2)
    monkeypatch.setenv("SHARPKIT_DATA", str(isolated / "b"))
    ds = D.load_fashion_mnist(root=isolated / "a")
    torch.testing.assert_close(
        ds.train.inputs[:, 0], expected_gray(first["train-images-idx3-ubyte"])
    )
    assert ds.source == str(isolated / "a")
    assert D.load_fashion_mnist().source == str(isolated / "b")  # env without root


def test_debian_folder_comes_before_the_cache(isolated: Path, monkeypatch) -> None:
    fake_fmnist(isolated / "debian", seed=1)
    fake_fmnist(D.cache_dir(), seed=2)
    monkeypatch.setattr(D, "DEBIAN_FASHION_MNIST", isolated / "debian")
    assert D.load_fashion_mnist().source == str(isolated / "debian")
    monkeypatch.setattr(D, "DEBIAN_FASHION_MNIST", isolated / "gone")
    assert D.load_fashion_mnist().source == str(D.cache_dir())


def cifar_batch(x_nchw: np.ndarray, y: np.ndarray) -> dict:
    # The original python-version batches: bytes keys (Python 2 pickles read
    # with encoding="bytes"), data as (N, 3072) uint8 rows (R, G, B planes).
    return {
        b"batch_label": b"fake",
        b"labels": [int(v) for v in y],
        b"data": x_nchw.reshape(len(x_nchw), 3072),
        b"filenames": [b"img%d.png" % i for i in range(len(y))],
    }


def test_cifar_pickle_and_npz_layouts_agree(isolated: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (60, 3, 32, 32), dtype=np.uint8)  # NCHW
    y = (np.arange(60) % 10).astype(np.uint8)
    batches = isolated / "torchvision" / "cifar-10-batches-py"
    batches.mkdir(parents=True)
    for i in range(5):
        part = slice(10 * i, 10 * (i + 1))
        with (batches / f"data_batch_{i + 1}").open("wb") as fh:
            pickle.dump(cifar_batch(x[part], y[part]), fh, protocol=2)
    with (batches / "test_batch").open("wb") as fh:
        pickle.dump(cifar_batch(x[50:], y[50:]), fh, protocol=2)
    npz = isolated / "npz" / "cifar10"
    npz.mkdir(parents=True)
    nhwc = x.transpose(0, 2, 3, 1)
    np.savez_compressed(npz / "cifar10_train.npz", x_train=nhwc[:50], y_train=y[:50])
    np.savez_compressed(npz / "cifar10_test.npz", x_test=nhwc[50:], y_test=y[50:])

    a = D.load_cifar10(root=isolated / "torchvision")
    b = D.load_cifar10(root=isolated / "npz")
    assert a.source.endswith("cifar-10-batches-py")
    assert b.source == str(npz)
    mean = np.array(D.CIFAR10_MEAN).reshape(1, 3, 1, 1)
    std = np.array(D.CIFAR10_STD).reshape(1, 3, 1, 1)
    want = torch.from_numpy((x / 255 - mean) / std).float()
    torch.testing.assert_close(a.train.inputs, want[:50])
    torch.testing.assert_close(a.test.inputs, want[50:])
    assert torch.equal(a.train.inputs, b.train.inputs)
    assert torch.equal(a.test.inputs, b.test.inputs)
    assert a.train.targets.tolist() == y[:50].tolist() == b.train.targets.tolist()


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def test_cifar_pickle_that_would_run_code_is_refused(
    isolated: Path, monkeypatch
) -> None:
    batches = isolated / "cifar-10-batches-py"
    batches.mkdir()
    x = np.zeros((2, 3, 32, 32), dtype=np.uint8)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with (batches / name).open("wb") as fh:
            pickle.dump({**cifar_batch(x, np.zeros(2)), b"extra": _Evil()}, fh)
    monkeypatch.chdir(isolated)
    with pytest.raises(DataError, match=r"not a plain CIFAR-10 batch .*posix.system"):
        D.load_cifar10(root=isolated)
    assert not (isolated / "PWNED").exists()


def test_truncated_idx_file_is_a_clear_error(isolated: Path) -> None:
    arrays = fake_fmnist(isolated, gz=False)
    path = isolated / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    assert arrays
    with pytest.raises(DataError, match="truncated or damaged"):
        D.load_fashion_mnist(root=isolated)


# ----------------------------------------------------------------- missing / download


def test_missing_data_lists_where_it_looked_and_how_to_get_it(isolated: Path) -> None:
    root = isolated / "empty"
    root.mkdir()
    with pytest.raises(DataError) as info:
        D.load_fashion_mnist(root=root)
    msg = str(info.value)
    assert "\n" not in msg
    for part in (
        str(root),
        str(isolated / "no-debian"),
        str(D.cache_dir()),
        "dataset-fashion-mnist",
        "data_root=",  # named as a script passes it ...
        "SHARPKIT_DATA",
        "download=",
    ):
        assert part in msg
    with cli_hints(), pytest.raises(DataError) as info:  # ... and as the CLI does
        D.load_fashion_mnist(root=root)
    assert "--data-root" in str(info.value)
    assert "--download" in str(info.value)
    with pytest.raises(DataError, match=r"cifar10_\{train,test\}\.npz") as info:
        D.load_cifar10(root=root)
    assert "dataset-fashion-mnist" not in str(info.value)


def test_download_goes_to_root_or_cache(isolated: Path, monkeypatch) -> None:
    calls: list[tuple[str, Path]] = []

    def fake_download(name: str, target: Path) -> None:
        calls.append((name, target))
        fake_fmnist(target / "FashionMNIST" / "raw", gz=False)

    monkeypatch.setattr(D, "_download", fake_download)
    ds = D.load_fashion_mnist(root=isolated / "r", download=True)
    assert calls == [("fashion-mnist", isolated / "r")]
    assert ds.source == str(isolated / "r" / "FashionMNIST" / "raw")
    ds = D.load_fashion_mnist(download=True)  # no root: into the cache
    assert calls[-1] == ("fashion-mnist", D.cache_dir())
    assert ds.source == str(D.cache_dir() / "FashionMNIST" / "raw")
    D.load_fashion_mnist(download=True)  # now found there: no third download
    assert len(calls) == 2


# ----------------------------------------------------------------- subsets


def test_stratified_subset_keeps_proportions_and_is_seeded() -> None:
    targets = torch.tensor([0] * 50 + [1] * 30 + [2] * 20)
    idx = D.stratified_subset(targets, 10, 3, seed=0)
    assert torch.bincount(targets[idx]).tolist() == [5, 3, 2]
    assert torch.equal(idx, torch.sort(idx).values)
    assert len(set(idx.tolist())) == 10
    assert torch.equal(idx, D.stratified_subset(targets, 10, 3, seed=0))
    assert not torch.equal(idx, D.stratified_subset(targets, 10, 3, seed=1))
    # Largest remainder: 7 of (50, 30, 20) -> exact 3.5, 2.1, 1.4 -> 4, 2, 1.
    odd = D.stratified_subset(targets, 7, 3, seed=0)
    assert torch.bincount(targets[odd], minlength=3).tolist() == [4, 2, 1]
    with pytest.raises(ConfigError, match="between 1 and 100"):
        D.stratified_subset(targets, 101, 3, seed=0)


@needs_fmnist
def test_fashion_mnist_subset_only_touches_train(monkeypatch) -> None:
    monkeypatch.delenv("SHARPKIT_DATA", raising=False)
    ds = D.load_fashion_mnist(subset=1000, seed=3)
    assert len(ds.train) == 1000
    assert torch.bincount(ds.train.targets).tolist() == [100] * 10
    assert len(ds.test) == 10000


# ----------------------------------------------------------------- augmentation


def reference_crop_flip(x, fill, dy, dx, flip, pad=4):
    """Per-image crop and flip, as torchvision does it (pad, crop, then flip)."""
    out = []
    for img, i, j, f in zip(x, dy.tolist(), dx.tolist(), flip.tolist(), strict=True):
        padded = fill.view(-1, 1, 1).expand(img.shape[0], 40, 40).clone()
        padded[:, pad : pad + 32, pad : pad + 32] = img
        crop = padded[:, i : i + 32, j : j + 32]
        out.append(crop.flip(-1) if f else crop)
    return torch.stack(out)


def test_random_crop_flip_matches_the_per_image_reference() -> None:
    fill = torch.tensor([-1.99, -1.98, -1.70])
    aug = D.RandomCropFlip(fill.tolist())
    x = torch.randn(64, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    gen = torch.Generator().manual_seed(5)
    out = aug(x, gen)
    dy, dx, flip = aug.draw(64, torch.Generator().manual_seed(5))
    assert set(dy.tolist()) <= set(range(9))
    assert len(set(dy.tolist())) > 5  # offsets really vary
    assert 0 < int(flip.sum()) < 64
    assert torch.equal(out, reference_crop_flip(x, fill, dy, dx, flip))
    # Deterministic for a generator state; a different state differs.
    assert torch.equal(out, aug(x, torch.Generator().manual_seed(5)))
    assert not torch.equal(out, aug(x, torch.Generator().manual_seed(6)))


def test_cifar_padding_is_a_black_pixel(isolated: Path) -> None:
    rng = np.random.default_rng(0)
    npz = isolated / "cifar10"
    npz.mkdir()
    x = rng.integers(1, 256, (20, 32, 32, 3), dtype=np.uint8)  # no black pixels
    y = (np.arange(20) % 10).astype(np.uint8)
    np.savez(npz / "cifar10_train.npz", x_train=x, y_train=y)
    np.savez(npz / "cifar10_test.npz", x_test=x, y_test=y)
    ds = D.load_cifar10(root=isolated)
    gen = torch.Generator().manual_seed(0)
    batches = list(ds.train.batches(20, augment=True, generator=gen))
    out = batches[0][0]
    mean = torch.tensor(D.CIFAR10_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(D.CIFAR10_STD).view(1, 3, 1, 1)
    raw = torch.round((out * std + mean) * 255)
    black = (raw == 0).all(dim=1)
    assert black.any()  # some padding shows (offsets other than 4 were drawn)
    assert set(torch.unique(raw).tolist()) <= set(range(256))


# ----------------------------------------------------------------- synthetic


def test_synthetic_is_seeded_by_data_seed_only() -> None:
    a = D.load_synthetic(seed=0)
    b = D.load_synthetic(seed=9)
    assert torch.equal(a.train.inputs, b.train.inputs)
    c = D.load_synthetic(data_seed=1)
    assert not torch.equal(a.train.inputs, c.train.inputs)
    assert a.input_shape == (16,)
    assert torch.bincount(a.train.targets).tolist() == [128] * 4


def test_synthetic_image_shape_and_subset() -> None:
    ds = D.load_synthetic(shape="3x8x8", classes=2, n_train=100, subset=10, seed=1)
    assert ds.input_shape == (3, 8, 8)
    assert ds.train.inputs.shape == (10, 3, 8, 8)
    assert torch.bincount(ds.train.targets).tolist() == [5, 5]
    with pytest.raises(ConfigError, match="3x8x8"):
        D.load_synthetic(shape="3xx8")
