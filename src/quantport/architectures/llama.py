"""Llama (``LlamaForCausalLM``): GGUF ``llama``, Q/K rows permuted for llama.cpp's NORM RoPE.

llama.cpp: ``conversion/llama.py`` ``LlamaModel`` (set_gguf_parameters, permute), the loader's
``LLM_ARCH_LLAMA`` tensors (``src/llama-model.cpp``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from quantport.architectures._base import (
    DECODER_GLOBAL_MAP,
    DECODER_LAYER_MAP,
    DECODER_LINEAR,
    DECODER_REQUIRED,
    F32,
    S,
    U32,
    Architecture,
    GGUFImport,
    check_act,
    decoder_from_gguf,
    decoder_shapes,
    need,
)
from quantport.errors import UnsupportedArchitectureError
from quantport.formats.gguf_writer import GGUFKV

__all__ = ["ARCH", "llama_hparams"]


def llama_hparams(cfg: Mapping[str, Any], where: str, prefix: str = "llama") -> list[GGUFKV]:
    """``TextModel.set_gguf_parameters`` + ``LlamaModel.set_gguf_parameters``."""
    check_act(cfg, where, "llama")
    n_embd = int(need(cfg, "hidden_size", where))
    n_head = int(need(cfg, "num_attention_heads", where))
    rope = cfg.get("rope_scaling") or {}
    rope_params = cfg.get("rope_parameters") or {}  # transformers >= 5 moves rope_theta here
    rope_type = rope.get("rope_type", rope.get("type")) or rope_params.get("rope_type")
    theta = cfg.get("rope_theta", rope_params.get("rope_theta", 10000.0))
    kv = [
        # types as gguf-py's add_* helpers write them (llama-model.cpp reads uint32_t / float)
        GGUFKV(f"{prefix}.block_count", int(need(cfg, "num_hidden_layers", where)), U32),
        GGUFKV(f"{prefix}.context_length", int(need(cfg, "max_position_embeddings", where)), U32),
        GGUFKV(f"{prefix}.embedding_length", n_embd, U32),
        GGUFKV(f"{prefix}.feed_forward_length", int(need(cfg, "intermediate_size", where)), U32),
        GGUFKV(f"{prefix}.attention.head_count", n_head, U32),
        GGUFKV(f"{prefix}.attention.head_count_kv", int(cfg.get("num_key_value_heads") or n_head),
               U32),
        GGUFKV(f"{prefix}.rope.freq_base", float(theta), F32),
        GGUFKV(f"{prefix}.attention.layer_norm_rms_epsilon",
               float(need(cfg, "rms_norm_eps", where)), F32),
    ]
    if rope_type not in (None, "default", "llama3"):
        factor = rope.get("factor", rope_params.get("factor"))
        # yarn / dynamic scaling change the graph: refused, never written unscaled (llama3 is
        # written as the rope_freqs tensor, llama_rope_freqs)
        if rope_type != "linear" or factor is None:
            raise UnsupportedArchitectureError(
                f"{where}: rope scaling {rope_type!r} is not supported for {prefix}; "
                "supported: none, linear, llama3")
        kv += [
            GGUFKV(f"{prefix}.rope.scaling.type", "linear", S),
            GGUFKV(f"{prefix}.rope.scaling.factor", float(factor), F32),
        ]
    head_dim = cfg.get("head_dim")
    if head_dim is not None:
        kv += [
            GGUFKV(f"{prefix}.attention.key_length", int(head_dim), U32),
            GGUFKV(f"{prefix}.attention.value_length", int(head_dim), U32),
        ]
    kv += [
        GGUFKV(f"{prefix}.vocab_size", int(need(cfg, "vocab_size", where)), U32),
        # llama-model.cpp requires n_rot == n_embd_head_k for LLM_ARCH_LLAMA
        GGUFKV(f"{prefix}.rope.dimension_count", int(head_dim or n_embd // n_head), U32),
    ]
    return kv


def llama_rope_freqs(cfg: Mapping[str, Any], where: str) -> list[tuple[str, np.ndarray]]:
    """``LlamaModel.generate_extra_tensors``: Llama 3.1+'s ``llama3`` RoPE scaling as the
    per-dimension ``rope_freqs.weight`` factors llama.cpp divides the frequencies by (computed
    as the converter computes them: float32 frequencies, Python float factors)."""
    params = dict(cfg.get("rope_parameters") or cfg.get("rope_scaling") or {})
    params = params.get("full_attention", params)
    rope_type = str(params.get("rope_type", params.get("type")) or "").lower()
    if rope_type != "llama3":
        return []
    base = params.get("rope_theta", cfg.get("rope_theta", 10000.0))
    dim = cfg.get("head_dim") or int(need(cfg, "hidden_size", where)) // int(
        need(cfg, "num_attention_heads", where))
    freqs = (1.0 / (np.float32(base) ** (np.arange(0, dim, 2, dtype=np.float32)
                                         / np.float32(dim)))).astype(np.float32)
    factor = params.get("factor", 8.0)
    low, high = params.get("low_freq_factor", 1.0), params.get("high_freq_factor", 4.0)
    old = params.get("original_max_position_embeddings", 8192)
    low_wavelen, high_wavelen = old / low, old / high
    out = []
    for f in freqs:
        wavelen = 2 * math.pi / f
        if wavelen < high_wavelen:
            out.append(1)
        elif wavelen > low_wavelen:
            out.append(factor)
        else:
            smooth = (old / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return [("rope_freqs.weight", np.asarray(out, dtype=np.float32))]


def llama_from_gguf(m: Mapping[str, Any], where: str) -> GGUFImport:
    """A ``llama`` GGUF as a ``LlamaForCausalLM`` config (head size from rope.dimension_count)."""
    imp = decoder_from_gguf(m, where, "llama", "LlamaForCausalLM", "llama",
                            head_dim_key="rope.dimension_count")
    imp.config["mlp_bias"] = False
    return imp


ARCH = Architecture(
    name="llama",
    hf_classes=("LlamaForCausalLM",),
    model_types=("llama",),
    layer_prefix=r"model\.layers\.(\d+)\.",
    layer_map=DECODER_LAYER_MAP,
    global_map=DECODER_GLOBAL_MAP,
    linear=DECODER_LINEAR,
    causal=True,
    buffers=("model.rotary_emb.inv_freq",),
    tokenizer=("gpt2", "llama"),
    permute_qk=True,
    required=DECODER_REQUIRED,
    hparams=llama_hparams,
    shapes=decoder_shapes,
    from_gguf=llama_from_gguf,
    extra_tensors=llama_rope_freqs,
)
