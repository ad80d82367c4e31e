"""Readers: HF checkpoints (single, sharded, pickle) and GGUF import."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from quantport.readers.arch import detect_architecture, llama_permute, llama_unpermute
from quantport.models import open_source
from quantport.readers import GGUFSource, HFCheckpoint
from quantport.errors import (
    ConfigError,
    FormatError,
    QuantportError,
    UnsupportedArchitectureError,
)
from quantport.formats.safetensors import write_safetensors


def test_permute_inverse():
    w = np.random.default_rng(0).standard_normal((64, 16)).astype(np.float32)
    for heads, kv in ((4, 4), (8, 2)):
        rows = w[: 64 if heads == kv else 16 * 2]
        np.testing.assert_array_equal(llama_unpermute(llama_permute(rows, heads, kv), heads, kv), rows)


def test_permute_undoes_hf_rotary_permutation():
    # transformers' convert_llama_weights_to_hf.py permute: the inverse of llama.cpp's
    n_heads, dim = 4, 32
    w = np.random.default_rng(1).standard_normal((dim, dim)).astype(np.float32)
    hf = w.reshape(n_heads, dim // n_heads // 2, 2, dim).transpose(0, 2, 1, 3).reshape(dim, dim)
    np.testing.assert_array_equal(llama_permute(hf, n_heads, n_heads), w)


def test_detect_architecture_refuses_unknown():
    assert detect_architecture({"architectures": ["LlamaForCausalLM"]}).name == "llama"
    assert detect_architecture({"model_type": "bert"}).name == "bert"
    with pytest.raises(UnsupportedArchitectureError, match="supported: llama"):
        detect_architecture({"architectures": ["GPTNeoXForCausalLM"]})
    with pytest.raises(ConfigError):
        detect_architecture({})


def test_sharded_equals_single(tiny_llama, tmp_path):
    single = HFCheckpoint(tiny_llama)
    names = single.names()
    shard_dir = tmp_path / "sharded"
    shard_dir.mkdir()
    shutil.copy(tiny_llama / "config.json", shard_dir)
    half = len(names) // 2
    wm = {}
    for i, part in enumerate((names[:half], names[half:])):
        fname = f"model-0000{i + 1}-of-00002.safetensors"
        write_safetensors(shard_dir / fname, {n: single.get(n) for n in part})
        wm.update({n: fname for n in part})
    (shard_dir / "model.safetensors.index.json").write_text(json.dumps({"weight_map": wm}))
    sharded = HFCheckpoint(shard_dir)
    assert sorted(sharded.names()) == sorted(names)
    for n in names:
        assert sharded.shape(n) == single.shape(n)
        np.testing.assert_array_equal(sharded.get(n), single.get(n))


def test_index_pointing_outside_is_refused(tiny_llama, tmp_path):
    d = tmp_path / "evil"
    d.mkdir()
    shutil.copy(tiny_llama / "config.json", d)
    (d / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"a": "../../etc/passwd"}}))
    with pytest.raises(FormatError, match="outside"):
        HFCheckpoint(d)


def test_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="no config.json"):
        HFCheckpoint(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="invalid JSON"):
        HFCheckpoint(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    with pytest.raises(ConfigError, match="no model.safetensors"):
        HFCheckpoint(tmp_path)


def test_pickle_refused_then_loaded_weights_only(tiny_llama, tmp_path):
    d = tmp_path / "pkl"
    d.mkdir()
    shutil.copy(tiny_llama / "config.json", d)
    src = HFCheckpoint(tiny_llama)
    sd = {n: torch.from_numpy(np.array(src.get(n))) for n in src.names()}
    torch.save(sd, d / "pytorch_model.bin")
    with pytest.raises(QuantportError, match="--allow-pickle"):
        HFCheckpoint(d)
    loaded = HFCheckpoint(d, allow_pickle=True)
    n = src.names()[0]
    np.testing.assert_array_equal(loaded.get(n), src.get(n))


def test_pickle_with_code_is_refused(tiny_llama, tmp_path):
    d = tmp_path / "evil"
    d.mkdir()
    shutil.copy(tiny_llama / "config.json", d)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"x": Evil()}, d / "pytorch_model.bin")
    with pytest.raises(FormatError, match="cannot load pickle"):
        HFCheckpoint(d, allow_pickle=True)


def test_gguf_source_reads_smollm2(smollm2_gguf, default_model_dir):
    src = GGUFSource(smollm2_gguf)
    assert src.config["num_hidden_layers"] == 30 and src.config["tie_word_embeddings"]
    assert "lm_head.weight" not in src.names()
    q = src.get("model.layers.0.self_attn.q_proj.weight")
    assert q.shape == (576, 576) and q.dtype == np.float32
    # the imported default checkpoint holds exactly these weights
    hf = HFCheckpoint(default_model_dir)
    np.testing.assert_array_equal(hf.get("model.layers.0.self_attn.q_proj.weight"), q)
    tok = json.loads(src.tokenizer_files["tokenizer.json"])
    assert len(tok["model"]["vocab"]) == 49152


def test_open_source_errors(tmp_path):
    with pytest.raises(QuantportError, match="no such file"):
        open_source(tmp_path / "nope")
    f = tmp_path / "x.bin"
    f.write_bytes(b"hello")
    with pytest.raises(FormatError, match="not a GGUF"):
        open_source(f)
    assert open_source("minilm").architecture.name == "bert"
