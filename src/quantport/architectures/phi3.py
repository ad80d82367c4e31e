"""Phi-3 (``Phi3ForCausalLM``): GGUF ``phi3``. The checkpoint's fused projections stay fused:
``qkv_proj`` -> ``attn_qkv`` (q, k, v rows stacked), ``gate_up_proj`` -> ``ffn_up`` (gate then
up, ``2 * intermediate_size`` rows). NEOX RoPE over ``rope.dimension_count`` dimensions
(``partial_rotary_factor``), no permutation; ``attention.sliding_window`` (0: none).

llama.cpp: ``conversion/phi.py`` ``Phi3MiniModel.set_gguf_parameters`` (which does not call the
base class: no key_length, its own key order), the loader's ``LLM_ARCH_PHI3`` tensors. LongRoPE
checkpoints (Phi-3-*-128k, Phi-3.5) need generated ``rope_factors_long/short`` tensors, which
quantport does not write: they are refused. Tokenizer: SentencePiece (``llama``) with the
``<|endoftext|>`` token llama.cpp looks up for Phi-3 models.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from quantport.architectures._base import (
    DECODER_GLOBAL_MAP,
    F32,
    U32,
    Architecture,
    GGUFImport,
    Shapes,
    check_act,
    decoder_from_gguf,
    decoder_shapes,
    need,
    rope_params,
    short,
)
from quantport.architectures.config import finite_float, int_, optional_positive_int
from quantport.errors import ConfigError, UnsupportedArchitectureError
from quantport.formats.gguf_writer import GGUFKV

__all__ = ["ARCH", "phi3_hparams"]


def _rope_dims(cfg: Mapping[str, Any], where: str) -> int:
    n_embd = int(need(cfg, "hidden_size", where))
    n_head = int(need(cfg, "num_attention_heads", where))
    pct = rope_params(cfg).get("partial_rotary_factor", cfg.get("partial_rotary_factor", 1.0))
    pct = finite_float({"p": pct}, "p", where, positive=True, name="partial_rotary_factor")
    return int(pct * n_embd) // n_head


def phi3_hparams(cfg: Mapping[str, Any], where: str) -> list[GGUFKV]:
    """``Phi3MiniModel.set_gguf_parameters``, in its order and types."""
    check_act(cfg, where, "phi3")
    rope = rope_params(cfg)
    if rope.get("rope_type") not in (None, "default"):
        raise UnsupportedArchitectureError(
            f"{where}: rope scaling {short(rope.get('rope_type'))} is not supported for phi3 "
            "(LongRoPE needs rope_factors tensors quantport does not write); supported: none")
    orig = rope.get("original_max_position_embeddings")
    if orig is None:
        raise ConfigError(f"{where}: config.json has no 'original_max_position_embeddings'; "
                          "llama.cpp's phi3 header needs it (Phi-3 configs have it)")
    theta = rope.get("rope_theta")
    if theta is None:
        raise ConfigError(f"{where}: config.json has no 'rope_theta'; llama.cpp's converter "
                          "requires it for phi3")
    window = cfg.get("sliding_window")
    return [
        GGUFKV("phi3.context_length", int(need(cfg, "max_position_embeddings", where)), U32),
        GGUFKV("phi3.rope.scaling.original_context_length", int(orig), U32),
        GGUFKV("phi3.embedding_length", int(need(cfg, "hidden_size", where)), U32),
        GGUFKV("phi3.feed_forward_length", int(need(cfg, "intermediate_size", where)), U32),
        GGUFKV("phi3.block_count", int(need(cfg, "num_hidden_layers", where)), U32),
        GGUFKV("phi3.attention.head_count", int(need(cfg, "num_attention_heads", where)), U32),
        GGUFKV("phi3.attention.head_count_kv", int(need(cfg, "num_key_value_heads", where)), U32),
        GGUFKV("phi3.attention.layer_norm_rms_epsilon", float(need(cfg, "rms_norm_eps", where)),
               F32),
        GGUFKV("phi3.rope.dimension_count", _rope_dims(cfg, where), U32),
        GGUFKV("phi3.rope.freq_base",
               finite_float({"t": theta}, "t", where, positive=True, name="rope_theta"), F32),
        # "use zero value of sliding_window to distinguish Phi-4 from other PHI3 models"
        GGUFKV("phi3.attention.sliding_window",
               0 if window is None else int_({"w": window}, "w", where, name="sliding_window"),
               U32),
    ]


def phi3_shapes(cfg: Mapping[str, Any]) -> Shapes:
    """llama.cpp's phi3 shapes: ``attn_qkv`` stacks q, k, v rows; ``ffn_up`` gate and up."""
    base = decoder_shapes(cfg)
    hidden, ff = cfg.get("hidden_size"), cfg.get("intermediate_size")
    q, kvd = base["attn_q.weight"][0], base["attn_k.weight"][0]
    return {**base,
            "attn_qkv.weight": (q + 2 * kvd if q and kvd else None, hidden),
            "ffn_up.weight": (2 * ff if ff else None, hidden)}


def phi3_from_gguf(m: Mapping[str, Any], where: str) -> GGUFImport:
    """A ``phi3`` GGUF as a ``Phi3ForCausalLM`` config."""
    imp = decoder_from_gguf(m, where, "phi3", "Phi3ForCausalLM", "phi3",
                            head_dim_key="attention.key_length")
    cfg, keys = imp.config, imp.keys
    keys["original_max_position_embeddings"] = "phi3.rope.scaling.original_context_length"
    keys["sliding_window"] = "phi3.attention.sliding_window"
    cfg["original_max_position_embeddings"] = optional_positive_int(
        m, keys["original_max_position_embeddings"], where) or cfg["max_position_embeddings"]
    window = int_(m, keys["sliding_window"], where, default=0)
    cfg["sliding_window"] = window or None
    rot = optional_positive_int(m, "phi3.rope.dimension_count", where)
    if rot is not None and rot != cfg["head_dim"]:
        cfg["partial_rotary_factor"] = rot / cfg["head_dim"]
    del cfg["head_dim"]  # Phi3Config derives it from hidden_size / heads
    if cfg.get("rope_scaling"):
        raise UnsupportedArchitectureError(
            f"{where}: phi3 with rope scaling {cfg['rope_scaling']['rope_type']!r} cannot be "
            "imported; supported: none")
    return imp


ARCH = Architecture(
    name="phi3",
    hf_classes=("Phi3ForCausalLM",),
    model_types=("phi3",),
    layer_prefix=r"model\.layers\.(\d+)\.",
    layer_map=(
        ("input_layernorm.weight", "attn_norm.weight"),
        ("self_attn.qkv_proj.weight", "attn_qkv.weight"),
        ("self_attn.o_proj.weight", "attn_output.weight"),
        ("post_attention_layernorm.weight", "ffn_norm.weight"),
        ("mlp.gate_up_proj.weight", "ffn_up.weight"),
        ("mlp.down_proj.weight", "ffn_down.weight"),
    ),
    global_map=DECODER_GLOBAL_MAP,
    linear=r"\.(qkv_proj|o_proj|gate_up_proj|down_proj)\.weight$",
    causal=True,
    buffers=("model.rotary_emb.inv_freq",),
    tokenizer=("llama", "gpt2"),
    required=("attn_norm.weight", "attn_qkv.weight", "attn_output.weight", "ffn_norm.weight",
              "ffn_up.weight", "ffn_down.weight"),
    hparams=phi3_hparams,
    shapes=phi3_shapes,
    from_gguf=phi3_from_gguf,
    calibrated=False,
)
