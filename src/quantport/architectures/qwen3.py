"""Qwen3 (``Qwen3ForCausalLM``): GGUF ``qwen3``, llama's tensor names plus per-head RMS norms on
q and k (``attn_q_norm`` / ``attn_k_norm``, length ``head_dim``), no q/k/v biases, and a head
size set apart from ``hidden_size / heads`` (``attention.key_length`` / ``value_length``).

llama.cpp: ``conversion/qwen.py`` ``Qwen3Model`` (a ``Qwen2Model``; the reranker / embedding
variants, which add ``cls_out`` and a pooling type from the README, are not converted), the
loader's ``LLM_ARCH_QWEN3`` tensors (q/k norms required). NEOX RoPE: no permutation.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from quantport.architectures._base import (
    DECODER_GLOBAL_MAP,
    DECODER_LAYER_MAP,
    DECODER_LINEAR,
    DECODER_REQUIRED,
    Architecture,
    GGUFImport,
    check_act,
    decoder_from_gguf,
    decoder_shapes,
    text_hparams,
)
from quantport.architectures.qwen2 import check_sliding
from quantport.formats.gguf_writer import GGUFKV

__all__ = ["ARCH", "qwen3_hparams"]


def qwen3_hparams(cfg: Mapping[str, Any], where: str) -> list[GGUFKV]:
    """``Qwen3Model.set_gguf_parameters`` = ``TextModel.set_gguf_parameters`` (key_length and
    value_length from ``head_dim``)."""
    check_act(cfg, where, "qwen3")
    check_sliding(cfg, where, "qwen3")
    return text_hparams("qwen3", cfg, where)


def qwen3_from_gguf(m: Mapping[str, Any], where: str) -> GGUFImport:
    """A ``qwen3`` GGUF as a ``Qwen3ForCausalLM`` config (head size from key_length)."""
    imp = decoder_from_gguf(m, where, "qwen3", "Qwen3ForCausalLM", "qwen3",
                            head_dim_key="attention.key_length")
    imp.config.update(attention_bias=False, use_sliding_window=False, sliding_window=None)
    return imp


ARCH = Architecture(
    name="qwen3",
    hf_classes=("Qwen3ForCausalLM",),
    model_types=("qwen3",),
    layer_prefix=r"model\.layers\.(\d+)\.",
    layer_map=(*DECODER_LAYER_MAP,
               ("self_attn.q_norm.weight", "attn_q_norm.weight"),
               ("self_attn.k_norm.weight", "attn_k_norm.weight")),
    global_map=DECODER_GLOBAL_MAP,
    linear=DECODER_LINEAR,
    causal=True,
    buffers=("model.rotary_emb.inv_freq",),
    tokenizer=("gpt2",),
    pre_tokenizer="qwen2",
    pooling=True,
    required=(*DECODER_REQUIRED, "attn_q_norm.weight", "attn_k_norm.weight"),
    hparams=qwen3_hparams,
    shapes=decoder_shapes,
    from_gguf=qwen3_from_gguf,
)
