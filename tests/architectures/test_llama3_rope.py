"""Llama 3.1+'s ``llama3`` RoPE scaling: written as llama.cpp's converter writes it, as the
generated ``rope_freqs.weight`` tensor (``LlamaModel.generate_extra_tensors``), so llama.cpp
rotates as transformers does; a GGUF holding it cannot be imported (its parameters are gone)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from quantport.formats.gguf_file import read_tensor, scan_gguf
from quantport.readers import open_path
from quantport.recipe import make_recipe

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _tiny  # noqa: E402

ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64, "rope_theta": 500000.0}


@pytest.fixture(scope="module")
def llama3(tmp_path_factory: pytest.TempPathFactory, default_model_dir: Path) -> Path:
    """A 2-layer Llama-3.2-like checkpoint (4 heads / 1 kv head of 16, tied) whose RoPE
    wavelengths fall in all three llama3 regimes (kept, scaled by 8, smoothed)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("llama3") / "llama3"
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=49152, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=1, max_position_embeddings=512,
        rope_parameters=ROPE, tie_word_embeddings=True, bos_token_id=1, eos_token_id=2))
    _tiny._randomize(model)
    model.to(torch.bfloat16).save_pretrained(out, safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(default_model_dir / name, out / name)
    return out


def _convert(src: Path, out: Path, preset: str) -> Path:
    from quantport.pipeline.convert import convert

    convert(open_path(src), make_recipe("gguf", preset), out, threads=1)
    return out


@pytest.mark.slow
def test_rope_freqs_equal_the_converter(llama3: Path, tmp_path: Path) -> None:
    ref = _tiny.llama_cpp_convert(llama3, tmp_path / "ref.gguf", "f32")
    ours = _convert(llama3, tmp_path / "ours.gguf", "F32")
    a, b = scan_gguf(ours, keep_arrays=True), scan_gguf(ref, keep_arrays=True)
    ta, tb = {t.name: t for t in a.tensors}, {t.name: t for t in b.tensors}
    assert sorted(ta) == sorted(tb)
    got = np.asarray(read_tensor(ours, ta["rope_freqs.weight"]))
    want = np.asarray(read_tensor(ref, tb["rope_freqs.weight"]))
    assert got.shape == (8,) and got.dtype == np.float32
    assert np.array_equal(got, want)
    assert {1.0, 8.0} <= set(got.tolist()) and len(set(got.tolist())) > 2  # all three regimes
    # no rope.scaling keys: llama.cpp reads the factors from the tensor
    for k in set(a.metadata) | set(b.metadata):
        if k.startswith("llama."):
            assert a.metadata.get(k) == b.metadata.get(k), k
    assert not any(k.startswith("llama.rope.scaling") for k in a.metadata)


@pytest.mark.llamacpp
@pytest.mark.slow
def test_llamacpp_rotates_as_transformers(llama3: Path, tmp_path: Path) -> None:
    pytest.importorskip("llama_cpp")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from quantport.validate.runner import LlamaCppLM

    gguf = _convert(llama3, tmp_path / "f32.gguf", "F32")
    tok = AutoTokenizer.from_pretrained(llama3)
    model = AutoModelForCausalLM.from_pretrained(llama3, dtype=torch.float32).eval()
    text = " ".join(_tiny.SENTENCES * 3)  # past original_max_position_embeddings / 2
    ids = tok(text, add_special_tokens=False)["input_ids"][:120]
    lm = LlamaCppLM(gguf, n_ctx=128)
    try:
        got = lm.logits(np.array(ids))
    finally:
        lm.close()
    with torch.no_grad():
        ref = model(torch.tensor([ids])).logits[0]
    scale = float(ref.abs().max())
    assert float((got - ref).abs().max()) < 2e-3 * scale
    assert torch.equal(got.argmax(-1), ref.argmax(-1))


@pytest.mark.slow
def test_gguf_with_rope_freqs_is_not_imported(llama3: Path, tmp_path: Path) -> None:
    from quantport.errors import UnsupportedArchitectureError

    gguf = _convert(llama3, tmp_path / "f32.gguf", "F32")
    with pytest.raises(UnsupportedArchitectureError, match="rope_freqs.weight"):
        open_path(gguf)
