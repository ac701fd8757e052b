"""Data from files, folders and code; targets and inputs keep their dtype (#14)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import sharpkit
from sharpkit.api.datafiles import as_split, infer_num_classes, load_data


def test_tensor_file_formats_and_key_names_agree(own_project) -> None:
    p = own_project
    pt, npz, st = (load_data(f) for f in ("data.pt", "data.npz", "data.safetensors"))
    for ds in (pt, npz, st):
        torch.testing.assert_close(ds.train.inputs, p.x, rtol=0, atol=0)
        assert torch.equal(ds.train.targets, p.y)
        assert ds.train.targets.dtype == torch.int64  # int32 in the npz
        assert (ds.input_shape, ds.num_classes) == ((1, 4, 4), 3)
    assert pt.has_test
    assert not npz.has_test
    assert torch.equal(pt.test.inputs, p.x_test)


def test_other_keys_by_option_and_missing_keys_listed(own_project) -> None:
    torch.save({"feats": own_project.x, "cls": own_project.y}, "odd.pt")
    ds = load_data("odd.pt", options={"inputs": "feats", "targets": "cls"})
    assert torch.equal(ds.train.targets, own_project.y)
    with pytest.raises(sharpkit.DataError) as info:
        load_data("odd.pt")
    text = str(info.value)
    assert "cls, feats" in text
    assert "data_options={'inputs': ...}" in text


def test_data_file_pickling_objects_is_refused(own_project) -> None:
    torch.save(
        {"inputs": own_project.x, "targets": own_project.y, "x": object()}, "o.pt"
    )
    with pytest.raises(sharpkit.DataError, match="was not loaded"):
        load_data("o.pt")


def test_named_inputs_are_packed_in_order(own_project) -> None:
    ids = torch.randint(0, 9, (6, 5))
    mask = torch.ones(6, 5, dtype=torch.long)
    torch.save(
        {
            "inputs": {"input_ids": ids, "attention_mask": mask},
            "labels": torch.arange(6) % 2,
        },
        "tok.pt",
    )
    np.savez(
        "tok.npz",
        **{
            "inputs.input_ids": ids.numpy(),
            "inputs.attention_mask": mask.numpy(),
            "y": np.arange(6) % 2,
        },
    )
    for f in ("tok.pt", "tok.npz"):
        split = load_data(f).train
        assert split.input_names == ("input_ids", "attention_mask")
        assert torch.equal(split.inputs[:, 0], ids)
        assert torch.equal(split.inputs[:, 1], mask)
        assert torch.equal(split.head(2).inputs, split.inputs[:2])
        assert split.head(2).input_names == split.input_names
    torch.save({"inputs": {"a": ids, "b": mask.float()}, "y": ids[:, 0]}, "bad.pt")
    with pytest.raises(sharpkit.DataError, match="share one shape and dtype"):
        load_data("bad.pt")


def write_images(root, sizes=((6, 8),), classes=("cat", "dog"), n=3, mode="RGB"):
    rng = np.random.default_rng(0)
    arrays = {}
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(n):
            h, w = sizes[i % len(sizes)]
            shape = (h, w, 3) if mode == "RGB" else (h, w)
            a = rng.integers(0, 256, shape, dtype=np.uint8)
            Image.fromarray(a, mode).save(root / c / f"{i}.png")
            arrays[(c, i)] = a
    return arrays


def test_image_folder_default_transform_is_to_tensor(own_project) -> None:
    arrays = write_images(own_project.folder / "imgs")
    ds = load_data("imgs")
    assert (ds.input_shape, ds.num_classes, len(ds.train)) == ((3, 6, 8), 2, 6)
    # Every image is there once, scaled to [0, 1], with the class of its folder
    # (sorted names, as ImageFolder): compare against the arrays written.
    want = {
        (0 if c == "cat" else 1, a.transpose(2, 0, 1).tobytes())
        for (c, _), a in arrays.items()
    }
    got = {
        (int(y), (x.numpy() * 255).round().astype(np.uint8).tobytes())
        for x, y in zip(ds.train.inputs, ds.train.targets, strict=True)
    }
    assert got == want
    assert ds.train.inputs.dtype == torch.float32


def test_image_folder_options_match_torchvision(own_project) -> None:
    from torchvision import transforms

    write_images(own_project.folder / "imgs", sizes=((6, 8), (9, 7)), mode="L")
    with pytest.raises(sharpkit.DataError, match="differ in size"):
        load_data("imgs")
    ds = load_data("imgs", options={"size": "4", "mean": "0.5", "std": "0.25"})
    assert ds.input_shape == (1, 4, 4)  # grey images: one channel
    pipeline = transforms.Compose(
        [
            transforms.Resize(4),
            transforms.CenterCrop(4),
            transforms.ToTensor(),
            transforms.Normalize([0.5], [0.25]),
        ]
    )
    files = sorted((own_project.folder / "imgs").rglob("*.png"))
    want = {pipeline(Image.open(f).convert("L")).numpy().tobytes() for f in files}
    assert {x.numpy().tobytes() for x in ds.train.inputs} == want


def test_image_folder_with_train_and_test(own_project) -> None:
    write_images(own_project.folder / "imgs" / "train")
    write_images(own_project.folder / "imgs" / "val", n=2)
    ds = load_data("imgs")
    assert ds.has_test
    assert (len(ds.train), len(ds.test)) == (6, 4)


def test_data_from_code_in_every_form(own_project) -> None:
    made = load_data("tinydata:make", options={"n": "7"})
    assert len(made.train) == 7
    assert len(load_data("tinydata.py:Pairs", options={"n": 4}).train) == 4
    loader = load_data("tinydata:LOADER")  # an object: used as it is
    assert len(loader.train) == 12
    assert loader.code_sha256 is not None
    with pytest.raises(sharpkit.ConfigError, match="takes no options"):
        load_data("tinydata:LOADER", options={"n": 3})


def test_targets_keep_their_dtype_and_shape() -> None:
    x = torch.randn(10, 3)
    for y in (torch.randn(10), torch.randn(10, 2), torch.randint(0, 2, (10, 2))):
        ds = torch.utils.data.TensorDataset(x, y)
        for form in (ds, torch.utils.data.DataLoader(ds, batch_size=4)):
            split = as_split(form, None)
            assert split.targets.shape == y.shape
            assert split.targets.dtype == y.dtype
            assert torch.equal(split.targets, y)
    assert as_split((x, torch.arange(10, dtype=torch.int32)), None).targets.dtype == (
        torch.int64
    )
    assert infer_num_classes(torch.randn(10)) == 1
    assert infer_num_classes(torch.randn(10, 2)) == 2
    assert infer_num_classes(torch.tensor([0, 4])) == 5


def test_regression_on_float_targets_has_the_closed_form_hessian() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(40, 3, generator=gen, dtype=torch.float64)
    y = torch.randn(40, generator=gen, dtype=torch.float64)
    net = torch.nn.Linear(3, 1).double()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), 16)
    m = sharpkit.measure(net, loader, ["spectral"], loss="mse", tol=1e-8)
    # mean((Xw + b - y)²): the Hessian is 2/N AᵀA with A = [X, 1] (bias last).
    a = torch.cat([x, torch.ones(40, 1, dtype=torch.float64)], dim=1)
    top = torch.linalg.eigvalsh(2 / 40 * a.T @ a).max().item()
    assert m["spectral"].value == pytest.approx(top, rel=1e-7)
    assert m.attrs["loss"] == "mse"


def test_integer_inputs_stay_integers() -> None:
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 6, (30, 4), generator=gen)
    y = torch.randint(0, 3, (30,), generator=gen)
    split = sharpkit.DataSplit(ids, y)
    x, _ = next(split.batches(8, dtype=torch.float64))
    assert x.dtype == torch.int64
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Embedding(6, 2), torch.nn.Flatten(), torch.nn.Linear(8, 3)
    )
    m = sharpkit.measure(net, (ids, y), ["spectral"], dtype="float64", tol=1e-8)
    # Dense Hessian in float64 by double backward over the 33 parameters.
    ref = net.double()
    params = dict(ref.named_parameters())

    def loss(flat):
        chunks, i = {}, 0
        for k, p in params.items():
            chunks[k] = flat[i : i + p.numel()].view_as(p)
            i += p.numel()
        out = torch.func.functional_call(ref, chunks, (ids,))
        return torch.nn.functional.cross_entropy(out, y)

    flat = torch.cat([p.detach().reshape(-1) for p in params.values()])
    top = torch.linalg.eigvalsh(torch.func.hessian(loss)(flat)).max().item()
    assert m["spectral"].value == pytest.approx(top, rel=1e-7)


def test_measure_on_a_split_without_test_says_so(own_project) -> None:
    with pytest.raises(sharpkit.ConfigError, match="holds no test split"):
        sharpkit.measure(own_project.net, "data.npz", split="test")
    m = sharpkit.measure(own_project.net, "data.pt", ["spectral"], split="test")
    assert m.attrs["samples"] == 9


def test_stored_results_are_keyed_by_the_data(own_project, tmp_path) -> None:
    p = own_project
    store = tmp_path / "s.zarr"
    a = sharpkit.measure(p.net, (p.x, p.y), ["spectral"], store=store)
    again = sharpkit.measure(p.net, (p.x, p.y), ["spectral"], store=store)
    other = sharpkit.measure(p.net, (p.x + 1, p.y), ["spectral"], store=store)
    assert again.reused == ("spectral",)
    assert other.reused == ()  # same size, other data: not the stored result
    assert other["spectral"].value != a["spectral"].value
