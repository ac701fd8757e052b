"""A user's project that sharpkit has never seen: their model code, data and loss.

:func:`make_project` writes it into a folder (as a researcher's working folder
would hold it) and returns the tensors and modules behind the files, so tests
can compare what sharpkit reads with what the user made.
"""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np
import torch

MODEL_CODE = '''
import torch
from torch import nn


class TinyNet(nn.Module):
    """Conv, batch norm, linear; built for the data's shape and classes."""

    def __init__(self, input_shape, num_classes, width=3):
        super().__init__()
        c, h, w = input_shape
        self.conv = nn.Conv2d(c, width, 3, padding=1)
        self.bn = nn.BatchNorm2d(width)
        self.fc = nn.Linear(width * h * w, num_classes)

    def forward(self, x):
        return self.fc(torch.tanh(self.bn(self.conv(x))).flatten(1))


def make_mlp(hidden: int = 5):
    """A factory that takes neither input_shape nor num_classes."""
    layers = [nn.Flatten(), nn.Linear(16, hidden), nn.Tanh(), nn.Linear(hidden, 3)]
    return nn.Sequential(*layers)


def pretrained():
    """A factory that loads its own weights."""
    net = make_mlp()
    state = torch.load(__file__.replace("tinynets.py", "mlp.pt"), weights_only=True)
    net.load_state_dict(state)
    return net.eval()
'''

LOSS_CODE = """
import torch


def smooth_ce(outputs, targets):
    return torch.nn.functional.cross_entropy(outputs, targets, label_smoothing=0.1)
"""

DATA_CODE = """
import torch


def make(n: int = 24, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 4, 4, generator=g), torch.randint(0, 3, (n,), generator=g)


class Pairs(torch.utils.data.Dataset):
    def __init__(self, n: int = 10):
        self.x, self.y = make(n)

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


LOADER = torch.utils.data.DataLoader(Pairs(12), batch_size=5)
"""


@dataclass
class Project:
    """The files of a project and what is in them."""

    folder: Path
    x: torch.Tensor
    y: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    net: torch.nn.Module  # TinyNet(width=3) with the weights in net.pt
    mlp: torch.nn.Module  # make_mlp() with the weights in mlp.pt

    def module(self, name: str) -> ModuleType:
        """Import one of the project's files as the user would (``import name``)."""
        spec = importlib.util.spec_from_file_location(name, self.folder / f"{name}.py")
        assert spec is not None
        assert spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module


def write_tiny_bert(folder: Path) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``tiny-bert/`` and ``tokens.npz`` in ``folder``: a user's ``hf:`` model and data.

    A one-layer ``BertForSequenceClassification`` (2 labels, saved with
    ``save_pretrained``) and 10 sequences of 5 tokens with their mask and labels,
    as the ``inputs.*``/``labels`` arrays sharpkit reads; returns
    ``(input_ids, attention_mask, labels)``. Needs ``transformers``.
    """
    import transformers

    config = transformers.BertConfig(
        vocab_size=20,
        hidden_size=8,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=16,
        max_position_embeddings=16,
        num_labels=2,
    )
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(config)
    model.save_pretrained(folder / "tiny-bert")
    ids = torch.randint(0, 20, (10, 5))
    mask = torch.ones_like(ids)
    labels = torch.arange(10) % 2
    np.savez(
        folder / "tokens.npz",
        **{
            "inputs.input_ids": ids.numpy(),
            "inputs.attention_mask": mask.numpy(),
            "labels": labels.numpy(),
        },
    )
    return ids, mask, labels


def make_project(folder: Path) -> Project:
    """Write the project into ``folder``: code, checkpoints and data files."""
    (folder / "tinynets.py").write_text(MODEL_CODE)
    (folder / "tinyloss.py").write_text(LOSS_CODE)
    (folder / "tinydata.py").write_text(DATA_CODE)
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(24, 1, 4, 4, generator=gen)
    y = torch.arange(24) % 3
    x_test = torch.randn(9, 1, 4, 4, generator=gen)
    y_test = torch.arange(9) % 3
    nets = Project(folder, x, y, x_test, y_test, torch.nn.Module(), torch.nn.Module())
    code = nets.module("tinynets")
    with torch.random.fork_rng():
        torch.manual_seed(3)
        net = code.TinyNet((1, 4, 4), 3)
        mlp = code.make_mlp()
    with torch.no_grad():  # batch-norm statistics that are not the identity
        net.bn.running_mean.copy_(0.2 * torch.randn(3, generator=gen))
        net.bn.running_var.copy_(0.5 + torch.rand(3, generator=gen))
    net.eval()
    mlp.eval()
    torch.save(net.state_dict(), folder / "net.pt")
    torch.save(mlp.state_dict(), folder / "mlp.pt")
    torch.save(
        {"inputs": x, "targets": y, "x_test": x_test, "y_test": y_test},
        folder / "data.pt",
    )
    np.savez(folder / "data.npz", x=x.numpy(), y=y.numpy().astype(np.int32))
    from safetensors.torch import save_file

    save_file({"x_train": x, "labels": y}, str(folder / "data.safetensors"))
    nets.net, nets.mlp = net, mlp
    return nets


def forget_modules(
    names: tuple[str, ...] = ("tinynets", "tinyloss", "tinydata"),
) -> None:
    """Drop the project's modules (and file imports of them) from ``sys.modules``."""
    for key in list(sys.modules):
        if key in names or any(key.startswith(f"sharpkit_user_{n}_") for n in names):
            del sys.modules[key]
