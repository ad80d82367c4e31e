"""Phi-3 (``Phi3ForCausalLM``): GGUF ``phi3``. The checkpoint's fused projections stay fused:
``qkv_proj`` -> ``attn_qkv`` (q, k, v rows stacked), ``gate_up_proj`` -> ``ffn_up`` (gate then
up, ``2 * intermediate_size`` rows). NEOX RoPE over ``rope.dimension_count`` dimensions
(``partial_rotary_factor``), no permutation; ``attention.sliding_window`` (0: none).

llama.cpp: ``conversion/phi.py`` ``Phi3MiniModel.set_gguf_parameters`` (which does not call the
base class: no key_length, its own key order), the loader's ``LLM_ARCH_PHI3`` tensors. LongRoPE
checkpoints (Phi-3-*-128k, Phi-3.5) get the generated ``rope_factors_long/short`` tensors and
``rope.scaling.attn_factor`` (``generate_extra_tensors``); a GGUF holding them is not imported. Tokenizer: SentencePiece (``llama``) with the
``<|endoftext|>`` token llama.cpp looks up for Phi-3 models.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

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
    if rope.get("rope_type") not in (None, "default", "longrope", "su"):
        raise UnsupportedArchitectureError(
            f"{where}: rope scaling {short(rope.get('rope_type'))} is not supported for phi3; "
            "supported: none, longrope")
    orig = rope.get("original_max_position_embeddings")
    if orig is None:
        raise ConfigError(f"{where}: config.json has no 'original_max_position_embeddings'; "
                          "llama.cpp's phi3 header needs it (Phi-3 configs have it)")
    theta = rope.get("rope_theta")
    if theta is None:
        raise ConfigError(f"{where}: config.json has no 'rope_theta'; llama.cpp's converter "
                          "requires it for phi3")
    window = cfg.get("sliding_window")
    attn = _longrope(cfg, where)
    kv = [
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
    if attn is not None:
        kv.append(GGUFKV("phi3.rope.scaling.attn_factor", attn[0], F32))
    return kv


def _longrope(cfg: Mapping[str, Any], where: str) -> tuple[float, list[float], list[float]] | None:
    """LongRoPE's attention factor and long / short factors, checked as
    ``Phi3MiniModel.generate_extra_tensors`` checks them (``None``: no LongRoPE)."""
    rope = rope_params(cfg)
    long_f, short_f = rope.get("long_factor"), rope.get("short_factor")
    if not long_f:
        return None
    if str(rope.get("rope_type") or "").lower() not in ("su", "longrope"):
        raise UnsupportedArchitectureError(
            f"{where}: phi3 rope factors with rope scaling {short(rope.get('rope_type'))}; "
            "supported: longrope")
    dims = _rope_dims(cfg, where)
    if (not isinstance(long_f, list) or not isinstance(short_f, list)
            or len(long_f) != len(short_f) or len(long_f) * 2 != dims):
        raise ConfigError(
            f"{where}: rope long_factor and short_factor must be lists of {dims // 2} numbers "
            f"(rope dimensions / 2), got {short(long_f)} and {short(short_f)}")
    orig = int(need(rope, "original_max_position_embeddings", where))
    scale = int(need(cfg, "max_position_embeddings", where)) / orig
    attn = math.sqrt(1 + math.log(scale) / math.log(orig)) if scale > 1.0 else 1.0
    return attn, [float(x) for x in long_f], [float(x) for x in short_f]


def phi3_rope_factors(cfg: Mapping[str, Any], where: str) -> list[tuple[str, np.ndarray]]:
    """``Phi3MiniModel.generate_extra_tensors``: LongRoPE's per-dimension factors."""
    lr = _longrope(cfg, where)
    if lr is None:
        return []
    return [("rope_factors_long.weight", np.asarray(lr[1], dtype=np.float32)),
            ("rope_factors_short.weight", np.asarray(lr[2], dtype=np.float32))]


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
    extra_tensors=phi3_rope_factors,
    calibrated=False,
)
