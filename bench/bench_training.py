"""Training throughput of sharpkit's ``sgd`` trainer vs the loops users would write.

Three ways to run the same SGD steps on the same model (same initial weights,
same batch size, same number of steps, plain SGD):

* **sharpkit**: ``SGDTrainer.fit`` on the in-memory dataset (one epoch over a
  training split cut to ``steps × S`` examples, no test evaluation, no files);
* **hand loop**: a minimal hand-written PyTorch loop over the same in-memory
  tensors (``randperm``, index, forward, cross-entropy, backward, step);
* **DataLoader**: the usual torchvision pipeline: a dataset that decodes a
  ``uint8`` image per item into PIL and applies ``transforms`` (ToTensor,
  Normalize; for CIFAR-10 RandomCrop(32, padding=4) and RandomHorizontalFlip
  first), batched by ``torch.utils.data.DataLoader(shuffle=True)`` with 0 and 2
  worker processes. Fashion-MNIST uses ``torchvision.datasets.FashionMNIST``
  itself (files extracted into ``bench/results/torchvision``); CIFAR-10 uses the
  same ``__getitem__`` as ``torchvision.datasets.CIFAR10`` over the npz arrays,
  because torchvision refuses batch files it cannot md5-check.

Workloads: ``mlp-bn`` (784-256-256-256-10) on Fashion-MNIST at S = 128 and S = 25,
and ``resnet-cifar`` depth 56 on CIFAR-10 at S = 128 with augmentation (sharpkit
and the hand loop share ``RandomCropFlip``). The methods run interleaved, in
``--rounds`` rounds after an untimed warm-up, and the table reports the median
samples/s of each, so a noisy neighbour slows all of them alike. A second table
gives samples per CPU-second (this process plus its DataLoader workers), which
other processes on a shared machine disturb less than wall time. Goals: sharpkit
≥ 0.95× the hand loop and ≥ 1.5× the faster DataLoader variant.

Also: the wall time of one full ``mlp-bn`` epoch on the 60,000 Fashion-MNIST
images (S = 128, with the test-set evaluation), and the dataset loading times.

Usage: ``python bench/bench_training.py [--quick] [--rounds N] [--resnet-steps N]``.
Writes ``bench/results/training-<time>.json``.
"""

from __future__ import annotations

import argparse
import copy
import gzip
import json
import os
import platform
import resource
import statistics
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
import torchvision
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision import transforms

from sharpkit.builtin import _datasets as D
from sharpkit.builtin import _models as M
from sharpkit.builtin._trainer import SGDTrainer
from sharpkit.interfaces import DataSplit, TrainConfig

RESULTS = Path(__file__).resolve().parent / "results"
LR = 0.05


# --------------------------------------------------------------------------- loops


def _clock() -> tuple[float, float]:
    """Wall time and CPU time of this process and its reaped children (workers)."""
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.perf_counter(), time.process_time() + kids.ru_utime + kids.ru_stime


def _rates(n: int, start: tuple[float, float]) -> tuple[float, float]:
    """Samples per second of wall time and per second of CPU time."""
    wall, cpu = _clock()
    return n / (wall - start[0]), n / max(cpu - start[1], 1e-9)


def sharpkit_loop(
    model, split: DataSplit, shape, batch: int, steps: int, augment: bool
):
    n = batch * steps
    train = DataSplit(split.inputs[:n], split.targets[:n], split.augment)
    empty = DataSplit(split.inputs[:0], split.targets[:0])
    data = D.InMemoryDataset("bench", shape, 10, train, empty)
    config = TrainConfig(lr=LR, batch_size=batch, epochs=1, augment=augment, seed=0)
    start = _clock()
    SGDTrainer().fit(model, data, config)
    return _rates(n, start)


def hand_loop(model, split: DataSplit, shape, batch: int, steps: int, augment: bool):
    n = batch * steps
    x, y = split.inputs[:n], split.targets[:n]
    aug = split.augment if augment else None
    start = _clock()
    gen = torch.Generator().manual_seed(0)
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    model.train()
    order = torch.randperm(n, generator=gen)
    for i in range(steps):
        idx = order[i * batch : (i + 1) * batch]
        xb = x[idx]
        if aug is not None:
            xb = aug(xb, gen)
        loss = nn.functional.cross_entropy(model(xb), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return _rates(n, start)


def dataloader_loop(model, dataset, batch: int, steps: int, workers: int):
    n = batch * steps
    start = _clock()
    loader = DataLoader(
        Subset(dataset, range(n)),
        batch_size=batch,
        shuffle=True,
        num_workers=workers,
        generator=torch.Generator().manual_seed(0),
    )
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    model.train()
    for xb, yb in loader:
        loss = nn.functional.cross_entropy(model(xb), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return _rates(n, start)


# --------------------------------------------------------------------------- datasets


def torchvision_fashion_mnist() -> Dataset:
    """``torchvision.datasets.FashionMNIST`` over the Debian files (extracted once)."""
    root = RESULTS / "torchvision"
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for stem in (
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    ):
        if not (raw / stem).exists():
            (raw / stem).write_bytes(
                gzip.decompress((D.DEBIAN_FASHION_MNIST / f"{stem}.gz").read_bytes())
            )
    tf = transforms.Compose(
        [
            transforms.ToTensor(),
            transforms.Normalize((D.FASHION_MNIST_MEAN,), (D.FASHION_MNIST_STD,)),
        ]
    )
    return torchvision.datasets.FashionMNIST(str(root), train=True, transform=tf)


class CifarLikeTorchvision(Dataset):
    """``torchvision.datasets.CIFAR10.__getitem__`` over in-memory HWC uint8 arrays."""

    def __init__(self, x: np.ndarray, y: np.ndarray, transform) -> None:
        self.data, self.targets, self.transform = x, [int(v) for v in y], transform

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int):
        from PIL import Image

        img = self.transform(Image.fromarray(self.data[index]))
        return img, self.targets[index]


def torchvision_cifar10(folder: Path) -> Dataset:
    with np.load(folder / "cifar10_train.npz") as z:
        x, y = z["x_train"], z["y_train"]
    tf = transforms.Compose(
        [
            transforms.RandomCrop(32, padding=4),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(D.CIFAR10_MEAN, D.CIFAR10_STD),
        ]
    )
    return CifarLikeTorchvision(x, y, tf)


# --------------------------------------------------------------------------- runner


def compare(name, template, split, shape, tv_dataset, batch, steps, augment, rounds):
    methods = {
        "sharpkit": lambda m: sharpkit_loop(m, split, shape, batch, steps, augment),
        "hand loop": lambda m: hand_loop(m, split, shape, batch, steps, augment),
        "DataLoader w=0": lambda m: dataloader_loop(m, tv_dataset, batch, steps, 0),
        "DataLoader w=2": lambda m: dataloader_loop(m, tv_dataset, batch, steps, 2),
    }
    # Untimed warm-up of the in-process paths (allocator, oneDNN kernels, imports).
    warm_steps = max(2, steps // 10)
    sharpkit_loop(copy.deepcopy(template), split, shape, batch, warm_steps, augment)
    hand_loop(copy.deepcopy(template), split, shape, batch, warm_steps, augment)
    dataloader_loop(copy.deepcopy(template), tv_dataset, batch, warm_steps, 0)
    samples: dict[str, list[float]] = {k: [] for k in methods}
    cpu: dict[str, list[float]] = {k: [] for k in methods}
    order = list(methods)
    for r in range(rounds):
        for key in order[r % len(order) :] + order[: r % len(order)]:  # rotate
            wall_rate, cpu_rate = methods[key](copy.deepcopy(template))
            samples[key].append(wall_rate)
            cpu[key].append(cpu_rate)
        last = ", ".join(f"{k} {v[-1]:,.0f}" for k, v in samples.items())
        print(f"  {name} S={batch} round {r + 1}/{rounds}: {last}", flush=True)
    med = {k: statistics.median(v) for k, v in samples.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
    best_dl = max(med["DataLoader w=0"], med["DataLoader w=2"])
    best_dl_cpu = max(med_cpu["DataLoader w=0"], med_cpu["DataLoader w=2"])
    return {
        "workload": name,
        "batch_size": batch,
        "steps": steps,
        "augment": augment,
        "samples_per_s": med,
        "samples_per_cpu_s": med_cpu,
        "all_rounds": samples,
        "all_rounds_cpu": cpu,
        "ratio_vs_hand": med["sharpkit"] / med["hand loop"],
        "ratio_vs_dataloader": med["sharpkit"] / best_dl,
        "cpu_ratio_vs_hand": med_cpu["sharpkit"] / med_cpu["hand loop"],
        "cpu_ratio_vs_dataloader": med_cpu["sharpkit"] / best_dl_cpu,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--mlp-steps", type=int, default=200)
    parser.add_argument("--resnet-steps", type=int, default=50)
    parser.add_argument("--quick", action="store_true", help="few steps (smoke test)")
    parser.add_argument(
        "--skip-resnet", action="store_true", help="only the mlp-bn workloads"
    )
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.mlp_steps, args.resnet_steps = 1, 40, 4
    RESULTS.mkdir(parents=True, exist_ok=True)
    info = {
        "time": datetime.now(UTC).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "loadavg_start": os.getloadavg(),
        "args": vars(args),
    }
    rows = []

    t = time.perf_counter()
    fm = D.load_fashion_mnist()
    info["load_fashion_mnist_s"] = time.perf_counter() - t
    torch.manual_seed(0)
    mlp = M.build_mlp_bn(input_shape=(1, 28, 28), num_classes=10)
    tv_fm = torchvision_fashion_mnist()
    for batch in (128, 25):
        rows.append(
            compare(
                "mlp-bn / fashion-mnist",
                mlp,
                fm.train,
                (1, 28, 28),
                tv_fm,
                batch,
                args.mlp_steps,
                False,
                args.rounds,
            )
        )

    # One full epoch as a user runs it: 60,000 images, S=128, test evaluation.
    net = copy.deepcopy(mlp)
    t = time.perf_counter()
    res = SGDTrainer().fit(net, fm, TrainConfig(lr=LR, batch_size=128, epochs=1))
    info["mlp_full_epoch_s"] = time.perf_counter() - t
    info["mlp_full_epoch_train_samples_per_s"] = res.attrs["samples_per_second"]
    del fm, tv_fm

    env = Path(os.environ.get("SHARPKIT_DATA", "/nonexistent"))
    shared = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10"
    candidates = (env, env / "cifar10", shared)
    cifar_dir = next(
        (p for p in candidates if (p / "cifar10_train.npz").is_file()), None
    )
    if args.skip_resnet:
        pass
    elif cifar_dir is None:
        print("CIFAR-10 not found (set SHARPKIT_DATA); skipping resnet56")
    else:
        t = time.perf_counter()
        cf = D.load_cifar10(root=cifar_dir)
        info["load_cifar10_s"] = time.perf_counter() - t
        torch.manual_seed(0)
        resnet = M.build_resnet_cifar(input_shape=(3, 32, 32), num_classes=10, depth=56)
        rows.append(
            compare(
                "resnet56 / cifar10",
                resnet,
                cf.train,
                (3, 32, 32),
                torchvision_cifar10(cifar_dir),
                128,
                args.resnet_steps,
                True,
                args.rounds,
            )
        )
    info["loadavg_end"] = os.getloadavg()

    header = (
        f"{'workload':24} {'S':>4} {'sharpkit':>10} {'hand':>10} {'DL w=0':>10} "
        f"{'DL w=2':>10} {'vs hand':>8} {'vs DL':>7}"
    )
    for title, key, ratio in (
        ("samples/s of wall time (median of rounds)", "samples_per_s", ""),
        ("samples per CPU-second (process + workers; less sensitive to other load)",
         "samples_per_cpu_s", "cpu_"),
    ):  # fmt: skip
        print(f"\n{title}\n{header}")
        for r in rows:
            s = r[key]
            vs_hand, vs_dl = (
                r[f"{ratio}ratio_vs_hand"],
                r[f"{ratio}ratio_vs_dataloader"],
            )
            ok_h = "ok" if vs_hand >= 0.95 else "LOW"
            ok_d = "ok" if vs_dl >= 1.5 else "LOW"
            print(
                f"{r['workload']:24} {r['batch_size']:>4} {s['sharpkit']:>10,.0f} "
                f"{s['hand loop']:>10,.0f} {s['DataLoader w=0']:>10,.0f} "
                f"{s['DataLoader w=2']:>10,.0f} {vs_hand:>6.2f}x{ok_h:>3} "
                f"{vs_dl:>5.1f}x{ok_d:>3}"
            )
    loads = f"Fashion-MNIST load {info['load_fashion_mnist_s']:.2f} s"
    if "load_cifar10_s" in info:
        loads += f"; CIFAR-10 load {info['load_cifar10_s']:.2f} s"
    print(
        "\nfull mlp-bn epoch (60k images, S=128, with test eval): "
        f"{info['mlp_full_epoch_s']:.2f} s; {loads}; load average "
        f"{info['loadavg_start'][0]:.1f} -> {info['loadavg_end'][0]:.1f}"
    )
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = RESULTS / f"training-{stamp}.json"
    path.write_text(json.dumps({"info": info, "rows": rows}, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
