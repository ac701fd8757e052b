"""A test plugin whose dataset and trainer factories return the wrong things.

Each must be one line naming the plugin's component, never a traceback.
"""

import torch

import sharpkit


class _Data:
    """Looks like a Dataset (the attributes are there) but its splits are not."""

    name = "half-data"
    input_shape = (16,)
    num_classes = 4

    def __init__(self):
        x, y = torch.randn(64, 16), torch.arange(64) % 4
        self.train = (x, y)  # a tuple, not a sharpkit.DataSplit
        self.test = (x, y)


def _dict_data(**kwargs):
    return {"train": None}


def _half_data(**kwargs):
    return _Data()


class _DictTrainer:
    def fit(self, model, data, config, /, *, progress=None):
        return {"checkpoint": "final.pt"}  # not a sharpkit.TrainResult


@sharpkit.hookimpl
def sharpkit_register_datasets():
    return [
        sharpkit.DatasetSpec(name="dict-data", factory=_dict_data, description="x"),
        sharpkit.DatasetSpec(name="half-data", factory=_half_data, description="x"),
    ]


@sharpkit.hookimpl
def sharpkit_register_trainers():
    return [
        sharpkit.TrainerSpec(name="dict-trainer", factory=_DictTrainer, description="x")
    ]
