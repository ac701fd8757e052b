"""Language models: ``--loss next-token`` / ``masked-token`` on tiny ``hf:`` folders.

Ground truth is twofold: ``transformers``' own loss (the model called with
``labels=``, which shifts for causal LMs and ignores -100), and the dense
Hessian of that loss by plain double backward in float64.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import sharpkit
from sharpkit.api.losses import masked_token, next_token, resolve_loss

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.slow  # importing transformers takes seconds

VOCAB, LENGTH, N = 7, 6, 10


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def gpt2_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    config = transformers.GPT2Config(
        vocab_size=VOCAB, n_positions=LENGTH, n_embd=4, n_layer=1, n_head=2,
        n_inner=4, bos_token_id=0, eos_token_id=0,
    )  # fmt: skip
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("hf") / "tiny-gpt2"
    transformers.GPT2LMHeadModel(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def bert_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    config = transformers.BertConfig(
        vocab_size=VOCAB, hidden_size=4, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=4, max_position_embeddings=LENGTH, pad_token_id=0,
    )  # fmt: skip
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("hf") / "tiny-bert-mlm"
    transformers.BertForMaskedLM(config).save_pretrained(folder)
    return folder


def causal_batch() -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Token ids, an attention mask with right padding, labels -100 at padding."""
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(1, VOCAB, (N, LENGTH), generator=gen)
    mask = torch.ones_like(ids)
    mask[: N // 2, 4:] = 0  # half the sequences are padded: the mask matters
    ids = ids.masked_fill(mask == 0, 0)
    labels = ids.masked_fill(mask == 0, -100)
    return {"input_ids": ids, "attention_mask": mask}, labels


def masked_batch() -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Ids with some positions replaced by [MASK] (id 1); labels only there."""
    gen = torch.Generator().manual_seed(2)
    ids = torch.randint(2, VOCAB, (N, LENGTH), generator=gen)
    chosen = torch.rand(N, LENGTH, generator=gen) < 0.3
    chosen[:, 0] = True  # every sequence has a target
    labels = ids.masked_fill(~chosen, -100)
    inputs = ids.masked_fill(chosen, 1)
    return {"input_ids": inputs, "attention_mask": torch.ones_like(ids)}, labels


def load_eager(cls: type, folder: Path) -> torch.nn.Module:
    model = cls.from_pretrained(str(folder), attn_implementation="eager")
    return model.double().eval()


def dense_lambda_max(model: torch.nn.Module, loss: torch.Tensor) -> float:
    """λ_max of the dense Hessian of ``loss``: plain double backward, float64."""
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, params, create_graph=True)
    flat = torch.cat([g.reshape(-1) for g in grads])
    rows = []
    for i in range(flat.numel()):
        row = torch.autograd.grad(flat[i], params, retain_graph=True)
        rows.append(torch.cat([r.reshape(-1) for r in row]))
    hessian = torch.stack(rows)
    assert torch.allclose(hessian, hessian.T, atol=1e-10)  # a true Hessian
    return float(torch.linalg.eigvalsh(hessian)[-1])


def test_next_token_is_transformers_own_shifted_loss(gpt2_folder: Path) -> None:
    model = load_eager(transformers.GPT2LMHeadModel, gpt2_folder)
    inputs, labels = causal_batch()
    with torch.no_grad():
        out = model(**inputs, labels=labels)
        ours = next_token(out.logits, labels)
    # transformers computes its loss on float32 logits (it upcasts, here it
    # downcasts): equal to ours on those within float32 rounding of ~40 terms
    torch.testing.assert_close(
        next_token(out.logits.float(), labels), out.loss, rtol=1e-6, atol=0
    )
    # by hand: position t predicts token t+1, padding left out, mean over tokens
    logp = out.logits.log_softmax(-1)
    terms = [
        -logp[b, t, labels[b, t + 1]]
        for b in range(N)
        for t in range(LENGTH - 1)
        if labels[b, t + 1] != -100
    ]
    assert len(terms) == N * (LENGTH - 1) - (N // 2) * 2
    torch.testing.assert_close(ours, torch.stack(terms).mean(), rtol=1e-12, atol=0)


def test_masked_token_is_transformers_own_loss(bert_folder: Path) -> None:
    model = load_eager(transformers.BertForMaskedLM, bert_folder)
    inputs, labels = masked_batch()
    with torch.no_grad():
        out = model(**inputs, labels=labels)
    # BERT takes its loss in the model's dtype: float64, summation order only
    torch.testing.assert_close(
        masked_token(out.logits, labels), out.loss, rtol=1e-12, atol=0
    )


@pytest.mark.parametrize("kind", ["causal", "masked"])
def test_lambda_max_of_a_language_model_matches_the_dense_hessian(
    kind: str, gpt2_folder: Path, bert_folder: Path, tmp_path: Path
) -> None:
    if kind == "causal":
        folder, cls, loss = gpt2_folder, transformers.GPT2LMHeadModel, next_token
        inputs, labels = causal_batch()
    else:
        folder, cls, loss = bert_folder, transformers.BertForMaskedLM, masked_token
        inputs, labels = masked_batch()
    data = tmp_path / "tokens.pt"
    torch.save({"inputs": inputs, "targets": labels}, data)
    name = "next-token" if kind == "causal" else "masked-token"
    m = sharpkit.measure(
        f"hf:{folder}", str(data), ["spectral"], loss=name, dtype="float64"
    )
    model = load_eager(cls, folder)
    want = dense_lambda_max(model, loss(model(**inputs).logits, labels))
    got = m["spectral"]
    assert got.converged
    # Lanczos' residual bound covers the error; 1e-9 relative for float64
    # rounding in the ~200x200 dense eigensolve and the products.
    assert abs(got.value - want) <= got.bound + 1e-9 * abs(want), (got, want)
    assert m.attrs["loss"] == name


def test_cli_measures_a_causal_lm_with_next_token(
    gpt2_folder: Path, tmp_path: Path
) -> None:
    from sharpkit.cli import app

    inputs, labels = causal_batch()
    data = tmp_path / "tokens.pt"
    torch.save({"inputs": inputs, "targets": labels}, data)
    args = ["measure", "--model", f"hf:{gpt2_folder}", "--data", str(data)]
    args += ["--no-store", "--json"]
    runner = CliRunner()
    result = runner.invoke(app, [*args, "--loss", "next-token", "--dtype", "float64"])
    assert result.exit_code == 0, result.stderr
    value = json.loads(result.stdout)[0]["metrics"]["spectral"]["value"]
    model = load_eager(transformers.GPT2LMHeadModel, gpt2_folder)
    want = dense_lambda_max(model, next_token(model(**inputs).logits, labels))
    assert value == pytest.approx(want, rel=1e-3)  # within --tol 1e-3
    # the default loss does not fit (B, L, V) logits: one line that says which does
    bad = runner.invoke(app, args)
    assert bad.exit_code == 1
    assert "Traceback" not in bad.stderr
    assert len([ln for ln in bad.stderr.splitlines() if ln.strip()]) == 1


def test_token_losses_refuse_what_does_not_fit() -> None:
    logits = torch.randn(2, 5, 3)
    with pytest.raises(sharpkit.DataError, match="next-token loss needs logits"):
        next_token(torch.randn(2, 3), torch.tensor([0, 1]))
    with pytest.raises(sharpkit.DataError, match="integer token targets"):
        masked_token(logits, torch.zeros(2, 5))
    with pytest.raises(sharpkit.DataError, match="nothing to average"):
        masked_token(logits, torch.full((2, 5), -100))
    assert resolve_loss("next-token").label == "next-token"
    with pytest.raises(sharpkit.ConfigError, match="did you mean 'next-token'"):
        resolve_loss("next-tokens")
