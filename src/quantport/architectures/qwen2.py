"""Qwen2 and Qwen2.5 (``Qwen2ForCausalLM``): GGUF ``qwen2``, llama's tensor names plus F32
q/k/v biases; NEOX RoPE, so Q/K are not permuted.

llama.cpp: ``conversion/qwen.py`` ``Qwen2Model`` (base ``TextModel.set_gguf_parameters``,
``_try_set_pooling_type``; ``sliding_window`` / ``use_sliding_window`` are not written: the
released models do not use them), the loader's ``LLM_ARCH_QWEN2`` tensors (biases required).
Tokenizer: byte-level BPE (``gpt2``) with ``pre = qwen2``.
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
    short,
    text_hparams,
)
from quantport.errors import UnsupportedArchitectureError
from quantport.formats.gguf_writer import GGUFKV

__all__ = ["ARCH", "qwen2_hparams"]


def check_sliding(cfg: Mapping[str, Any], where: str, arch: str) -> None:
    """Refuse sliding-window attention: llama.cpp's qwen2/qwen3 graphs attend to everything."""
    if cfg.get("use_sliding_window") is True:
        raise UnsupportedArchitectureError(
            f"{where}: {arch} with use_sliding_window true (window {short(cfg.get('sliding_window'))});"
            f" llama.cpp's {arch} graph has no sliding window; set it false if the model was "
            "trained without it")


def qwen2_hparams(cfg: Mapping[str, Any], where: str) -> list[GGUFKV]:
    """``Qwen2Model.set_gguf_parameters`` = ``TextModel.set_gguf_parameters``."""
    check_act(cfg, where, "qwen2")
    check_sliding(cfg, where, "qwen2")
    return text_hparams("qwen2", cfg, where)


def qwen2_from_gguf(m: Mapping[str, Any], where: str) -> GGUFImport:
    """A ``qwen2`` GGUF as a ``Qwen2ForCausalLM`` config."""
    imp = decoder_from_gguf(m, where, "qwen2", "Qwen2ForCausalLM", "qwen2",
                            head_dim_key="attention.key_length")
    imp.config.update(use_sliding_window=False, sliding_window=None)
    if imp.config["head_dim"] * imp.config["num_attention_heads"] != imp.config["hidden_size"]:
        # Qwen2Config has no head_dim: transformers computes hidden_size / heads
        raise UnsupportedArchitectureError(
            f"{where}: qwen2.attention.key_length {imp.config['head_dim']} is not "
            f"qwen2.embedding_length / head_count; Qwen2ForCausalLM cannot hold it")
    return imp


ARCH = Architecture(
    name="qwen2",
    hf_classes=("Qwen2ForCausalLM",),
    model_types=("qwen2",),
    layer_prefix=r"model\.layers\.(\d+)\.",
    layer_map=DECODER_LAYER_MAP,
    global_map=DECODER_GLOBAL_MAP,
    linear=DECODER_LINEAR,
    causal=True,
    buffers=("model.rotary_emb.inv_freq",),
    tokenizer=("gpt2",),
    pre_tokenizer="qwen2",
    pooling=True,
    required=(*DECODER_REQUIRED, "attn_q.bias", "attn_k.bias", "attn_v.bias"),
    hparams=qwen2_hparams,
    shapes=decoder_shapes,
    from_gguf=qwen2_from_gguf,
)
