"""``hf:PATH``: Hugging Face classification models from local folders, no network."""

from __future__ import annotations

import sys

import pytest
import torch

import sharpkit
from sharpkit.api.wrappers import HFClassifier

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.slow  # importing transformers takes seconds


@pytest.fixture(autouse=True)
def offline(monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def bert_folder(tmp_path_factory):
    config = transformers.BertConfig(
        vocab_size=20,
        hidden_size=8,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=16,
        max_position_embeddings=16,
        num_labels=3,
    )
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("hf") / "tiny-bert"
    transformers.BertForSequenceClassification(config).save_pretrained(folder)
    return folder


def tokens(n: int = 12):
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 20, (n, 6), generator=gen)
    mask = torch.ones_like(ids)
    mask[: n // 2, 4:] = 0  # padding, so the mask matters
    return {"input_ids": ids, "attention_mask": mask}, torch.randint(
        0, 3, (n,), generator=gen
    )


def test_sequence_classifier_hvp_equals_calling_it_with_named_inputs(
    bert_folder,
) -> None:
    net, ckpt = sharpkit.load_model(f"hf:{bert_folder}")
    assert ckpt.format == "hf"
    assert isinstance(net, HFClassifier)
    assert net.model.config._attn_implementation == "eager"  # twice differentiable
    inputs, y = tokens()
    raw = net.model.double()
    wrapped = HFClassifier(raw, ("input_ids", "attention_mask"))
    split = sharpkit.DataSplit(
        torch.stack([inputs["input_ids"], inputs["attention_mask"]], 1),
        y,
        input_names=("input_ids", "attention_mask"),
    )
    params = [p for p in raw.parameters() if p.requires_grad]
    v = torch.randn(
        sum(p.numel() for p in params),
        dtype=torch.float64,
        generator=torch.Generator().manual_seed(2),
    )
    with sharpkit.analysis_mode(wrapped):
        got = (
            sharpkit.HessianOperator(
                wrapped, torch.nn.functional.cross_entropy, split, batch_size=5
            )
            @ v
        )
    # By hand: the model called with its keyword inputs, the loss on its logits,
    # double backward over the whole set (one batch).
    raw.eval()
    loss = torch.nn.functional.cross_entropy(raw(**inputs).logits, y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    flat = torch.cat([g.reshape(-1) for g in grads])
    want = torch.cat([h.reshape(-1) for h in torch.autograd.grad(flat @ v, params)])
    # float64, the same operations; batches of 5 vs one: summation order only.
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-11)


def test_measure_hf_folder_equals_measure_of_the_model_object(
    bert_folder, tmp_path
) -> None:
    inputs, y = tokens()
    torch.save({"inputs": inputs, "targets": y}, tmp_path / "tokens.pt")
    got = sharpkit.measure(
        f"hf:{bert_folder}", str(tmp_path / "tokens.pt"), ["spectral"]
    )
    model = transformers.AutoModelForSequenceClassification.from_pretrained(
        bert_folder, attn_implementation="eager"
    )
    want = sharpkit.measure(model, (inputs, y), ["spectral"])  # wrapped for its logits
    assert got["spectral"].value == pytest.approx(want["spectral"].value, rel=1e-6)
    assert got.attrs["model"] == f"hf:{bert_folder.resolve()}"


def test_image_classifier_takes_pixel_values(tmp_path) -> None:
    config = transformers.ViTConfig(
        image_size=8,
        patch_size=4,
        num_channels=3,
        hidden_size=8,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=16,
        num_labels=2,
    )
    torch.manual_seed(0)
    vit = transformers.ViTForImageClassification(config)
    vit.save_pretrained(tmp_path / "vit")
    gen = torch.Generator().manual_seed(0)
    x, y = (
        torch.randn(10, 3, 8, 8, generator=gen),
        torch.randint(0, 2, (10,), generator=gen),
    )
    got = sharpkit.measure(f"hf:{tmp_path / 'vit'}", (x, y), ["spectral"])
    vit.set_attn_implementation("eager")
    want = sharpkit.measure(vit.eval(), (x, y), ["spectral"])
    assert got["spectral"].value == pytest.approx(want["spectral"].value, rel=1e-6)


def test_bad_folders_and_a_missing_transformers_are_one_line(
    tmp_path, monkeypatch
) -> None:
    with pytest.raises(sharpkit.ConfigError, match="save_pretrained"):
        sharpkit.load_model(f"hf:{tmp_path}")
    (tmp_path / "config.json").write_text("{}")
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(sharpkit.ConfigError, match=r"pip install 'sharpkit\[hf\]'"):
        sharpkit.load_model(f"hf:{tmp_path}")


def test_state_dict_checkpoint_on_an_hf_architecture(bert_folder, tmp_path) -> None:
    # Fine-tuned weights saved as a state_dict, the architecture from the folder.
    model = transformers.AutoModelForSequenceClassification.from_pretrained(
        bert_folder, attn_implementation="eager"
    )
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1.5)
    torch.save(model.state_dict(), tmp_path / "tuned.pt")
    data = tokens()
    got = sharpkit.measure(tmp_path / "tuned.pt", data, model_name=f"hf:{bert_folder}")
    want = sharpkit.measure(model, data)
    assert got["spectral"].value == pytest.approx(want["spectral"].value, rel=1e-6)
