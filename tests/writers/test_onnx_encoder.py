"""The ONNX writer on BERT encoders: last_hidden_state and the sentence-transformers embedding
(mean pooling over attended tokens, L2 normalization) against transformers."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from quantport.formats.onnx_read import onnx_weights
from quantport.models import ALIASES
from quantport.pipeline import convert
from quantport.readers import open_path
from quantport.recipe import make_recipe

ort = pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer BERT (width 64) with seeded random weights and MiniLM's tokenizer."""
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=30522, hidden_size=64, intermediate_size=128,
                     num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=128)
    out = tmp_path_factory.mktemp("bert") / "tiny-bert"
    BertModel(cfg).save_pretrained(out, safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt",
                 "special_tokens_map.json"):
        shutil.copy(ALIASES["minilm"]() / name, out / name)
    return out


def _encode(d: Path) -> dict[str, np.ndarray]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(d)
    enc = tok(["The quick brown fox jumps over the lazy dog.", "Hello there", "A"],
              padding=True, return_tensors="np")
    return {k: np.asarray(enc[k], np.int64) for k in ("input_ids", "attention_mask",
                                                      "token_type_ids")}


def _reference(hf_dir: Path, enc: dict[str, np.ndarray],
               weights: dict[str, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    import torch
    from transformers import AutoModel

    m = AutoModel.from_pretrained(hf_dir, dtype=torch.float32).eval()
    if weights is not None:
        m.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in weights.items()},
                          strict=False)
    with torch.no_grad():
        last = m(**{k: torch.tensor(v) for k, v in enc.items()}).last_hidden_state.numpy()
    mask = enc["attention_mask"][..., None].astype(np.float32)
    mean = (last * mask).sum(1) / mask.sum(1)
    return last, mean / np.linalg.norm(mean, axis=1, keepdims=True)


def _run(d: Path, enc: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    # fused QDQ MatMulNBits in fp32 arithmetic (level 4 would round activations to int8)
    so.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "0")
    s = ort.InferenceSession(str(d / "model.onnx"), so, providers=["CPUExecutionProvider"])
    assert [o.name for o in s.get_outputs()] == ["last_hidden_state", "sentence_embedding"]
    last, emb = s.run(None, enc)
    return last, emb


@pytest.mark.parametrize("quant", ["f32", "w8-channel-sym", "w4-g32-asym", "w8a8"])
def test_encoder_matches_transformers(tiny_bert: Path, tmp_path: Path, quant: str) -> None:
    d = tmp_path / quant
    convert(open_path(tiny_bert), make_recipe("onnx", quant), d, threads=1)
    enc = _encode(d)
    last, emb = _run(d, enc)
    mask = enc["attention_mask"][..., None]
    # f32 against the source; quantized against transformers on the weights the graph holds
    ref_last, ref_emb = _reference(tiny_bert, enc, None if quant == "f32" else onnx_weights(d))
    tol = 0.05 if quant == "w8a8" else 1e-4  # w8a8 rounds activations to 8 bits at run time
    assert np.abs((last - ref_last) * mask).max() <= tol * np.abs(ref_last).max()
    cos = (emb * ref_emb).sum(1)
    assert cos.min() > (0.99 if quant == "w8a8" else 0.99999)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)


def test_encoder_drops_the_pooler_and_keeps_embedding_tables_float(tiny_bert: Path,
                                                                   tmp_path: Path) -> None:
    plan = convert(open_path(tiny_bert), make_recipe("onnx", "w8-channel-sym"),
                   tmp_path / "x", dry_run=True).plan
    assert plan.dropped["pooler.dense.weight"].startswith("pooler")
    kinds = {r.name: str(r.target) for r in plan.rows}
    assert kinds["embeddings.word_embeddings.weight"] == "F32"
    assert kinds["encoder.layer.0.attention.self.query.weight"] == "w8-channel-sym"
    assert "genai_config.json" not in plan.files


@pytest.mark.slow
def test_minilm_w8a8_sentence_embeddings(tmp_path: Path) -> None:
    src = ALIASES["minilm"]()
    d = tmp_path / "minilm"
    convert(open_path(src), make_recipe("onnx", "w8a8"), d)
    enc = _encode(d)
    _, emb = _run(d, enc)
    _, ref = _reference(src, enc)
    assert (emb * ref).sum(1).min() > 0.97
