"""Gemma 3 text (``Gemma3ForCausalLM``): GGUF ``gemma3``.

What differs from llama, after llama.cpp's converter (``conversion/gemma.py`` ``Gemma3Model``)
and runtime (``src/models/gemma3.cpp``):

* four norms per layer: ``input_layernorm`` -> ``attn_norm``, ``post_attention_layernorm`` ->
  ``post_attention_norm``, ``pre_feedforward_layernorm`` -> ``ffn_norm``,
  ``post_feedforward_layernorm`` -> ``post_ffw_norm``; per-head ``q_norm`` / ``k_norm``;
* ``Gemma3RMSNorm`` scales by ``1 + weight``: the converter writes ``weight + 1`` for every
  ``*norm.weight`` (edit ``add_one``; an import subtracts it). quantport adds it in float32,
  as the model computes ``1.0 + self.weight.float()``; the converter adds it in the
  checkpoint's dtype (so a bf16 checkpoint's norms differ by bf16 rounding);
* hyper-parameters: the base keys plus ``rope.freq_base_swa`` (the local layers' base),
  ``attention.sliding_window``, ``key_length`` / ``value_length``, ``final_logit_softcapping``;
* the runtime, not the file: embeddings times sqrt(n_embd), every 6th layer global
  (``load_swa_pattern(ml, 6)``), attention scale ``1/sqrt(head_dim)`` (27B: ``1/sqrt(n_embd /
  n_head)``). Checkpoints that differ there (another ``layer_types`` pattern, a
  ``query_pre_attn_scalar`` llama.cpp does not use, attention logit soft-capping) are refused.

Tokenizer: SentencePiece with ``add_space_prefix = false``. NEOX RoPE: no permutation.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from quantport.architectures._base import (
    DECODER_GLOBAL_MAP,
    DECODER_LINEAR,
    F32,
    U32,
    Architecture,
    GGUFImport,
    decoder_from_gguf,
    decoder_shapes,
    short,
    text_hparams,
)
from quantport.architectures.config import finite_float, int_, optional_finite_float
from quantport.errors import ConfigError, UnsupportedArchitectureError
from quantport.formats.gguf_writer import GGUFKV

__all__ = ["ARCH", "gemma3_hparams"]

_PATTERN = 6  # llama_model_gemma3::load_arch_hparams: load_swa_pattern(ml, 6)


def _layer_types(n_layer: int) -> list[str]:
    # llama_hparams::set_swa_pattern(6): layer il is local unless (il + 1) % 6 == 0
    return ["sliding_attention" if (i + 1) % _PATTERN else "full_attention"
            for i in range(n_layer)]


def _check_runtime(cfg: Mapping[str, Any], where: str) -> None:
    """Refuse what llama.cpp's gemma3 graph would compute differently from transformers."""
    act = cfg.get("hidden_activation", cfg.get("hidden_act", "gelu_pytorch_tanh"))
    if act not in ("gelu_pytorch_tanh", "gelu"):
        # llama.cpp's gemma3 graph: ggml_gelu (the tanh approximation)
        raise UnsupportedArchitectureError(
            f"{where}: gemma3 with hidden_activation {short(act)}; llama.cpp's gemma3 graph "
            "uses gelu_pytorch_tanh")
    n_layer = int(cfg.get("num_hidden_layers") or 0)
    types = cfg.get("layer_types")
    if types is not None and list(types) != _layer_types(n_layer):
        raise UnsupportedArchitectureError(
            f"{where}: gemma3 layer_types {short(types)} is not llama.cpp's pattern (every "
            f"{_PATTERN}th layer global); llama.cpp's gemma3 graph cannot run it")
    if cfg.get("attn_logit_softcapping") is not None:
        raise UnsupportedArchitectureError(
            f"{where}: gemma3 with attn_logit_softcapping; llama.cpp's gemma3 graph has none")
    hidden, heads = cfg.get("hidden_size"), cfg.get("num_attention_heads")
    head_dim = cfg.get("head_dim", 256)
    want = hidden // heads if n_layer == 62 and hidden and heads else head_dim
    q = optional_finite_float(cfg, "query_pre_attn_scalar", where)
    if q is not None and q != want:
        raise UnsupportedArchitectureError(
            f"{where}: gemma3 query_pre_attn_scalar {q:g}, but llama.cpp scales attention by "
            f"1/sqrt({want}) for {n_layer} layers; llama.cpp would compute another model")


def gemma3_hparams(cfg: Mapping[str, Any], where: str) -> list[GGUFKV]:
    """``TextModel.set_gguf_parameters`` + ``Gemma3Model.set_gguf_parameters`` (its repeated
    keys overwrite the base ones in place, as gguf-py's writer does)."""
    _check_runtime(cfg, where)
    kv = text_hparams("gemma3", cfg, where, rope=("linear", "yarn"))
    rope = cfg.get("rope_parameters") or {}
    swa_theta = (rope.get("sliding_attention") or {}).get("rope_theta", cfg.get(
        "rope_local_base_freq"))
    head_dim = int_(cfg, "head_dim", where, default=256)
    full = rope.get("full_attention", rope)
    over = {
        "gemma3.context_length": GGUFKV("gemma3.context_length",
                                        int(cfg.get("max_position_embeddings", 131072)), U32),
        "gemma3.attention.head_count": GGUFKV("gemma3.attention.head_count",
                                              int(cfg.get("num_attention_heads", 8)), U32),
        "gemma3.attention.layer_norm_rms_epsilon": GGUFKV(
            "gemma3.attention.layer_norm_rms_epsilon", float(cfg.get("rms_norm_eps", 1e-6)), F32),
        "gemma3.attention.key_length": GGUFKV("gemma3.attention.key_length", head_dim, U32),
        "gemma3.attention.value_length": GGUFKV("gemma3.attention.value_length", head_dim, U32),
        "gemma3.rope.freq_base": GGUFKV("gemma3.rope.freq_base", finite_float(
            {"t": full.get("rope_theta", cfg.get("rope_theta", 1_000_000.0))}, "t", where,
            positive=True, name="rope_theta"), F32),
        "gemma3.attention.head_count_kv": GGUFKV("gemma3.attention.head_count_kv",
                                                 int(cfg.get("num_key_value_heads", 4)), U32),
    }
    if swa_theta is not None:
        # TextModel: rope_parameters["sliding_attention"]["rope_theta"] -> freq_base_swa,
        # written right after freq_base
        i = next(j for j, k in enumerate(kv) if k.key == "gemma3.rope.freq_base") + 1
        kv.insert(i, GGUFKV("gemma3.rope.freq_base_swa", finite_float(
            {"t": swa_theta}, "t", where, positive=True, name="rope_local_base_freq"), F32))
    kv = [over.pop(k.key, k) for k in kv]
    kv += over.values()
    cap = cfg.get("final_logit_softcapping")
    if cap:
        kv.append(GGUFKV("gemma3.final_logit_softcapping",
                         finite_float(cfg, "final_logit_softcapping", where, positive=True), F32))
    if cfg.get("sliding_window_pattern") != 1:
        if cfg.get("sliding_window") is None:
            raise ConfigError(f"{where}: config.json has no 'sliding_window'; llama.cpp's "
                              "converter requires it for gemma3")
        kv.append(GGUFKV("gemma3.attention.sliding_window",
                         int_(cfg, "sliding_window", where), U32))
    return kv


def gemma3_from_gguf(m: Mapping[str, Any], where: str) -> GGUFImport:
    """A ``gemma3`` GGUF as a ``Gemma3ForCausalLM`` (``gemma3_text``) config."""
    imp = decoder_from_gguf(m, where, "gemma3", "Gemma3ForCausalLM", "gemma3_text",
                            head_dim_key="attention.key_length")
    cfg, keys = imp.config, imp.keys
    del cfg["hidden_act"]  # Gemma3TextConfig calls it hidden_activation
    keys["sliding_window"] = "gemma3.attention.sliding_window"
    window = int_(m, keys["sliding_window"], where, default=0)
    n_layer = cfg["num_hidden_layers"]
    global_theta = cfg.pop("rope_theta")
    local_theta = finite_float(m, "gemma3.rope.freq_base_swa", where, default=10000.0,
                               positive=True)
    full: dict[str, Any] = {"rope_type": "default", "rope_theta": global_theta}
    if cfg.get("rope_scaling"):
        full.update(cfg.pop("rope_scaling"))
    cfg["rope_parameters"] = {
        "full_attention": full,
        "sliding_attention": {"rope_type": "default", "rope_theta": local_theta},
    }
    cfg.update(
        hidden_activation="gelu_pytorch_tanh",
        sliding_window=window or None,
        layer_types=_layer_types(n_layer) if window else ["full_attention"] * n_layer,
        # llama.cpp's attention scale (llama_model_gemma3::load_arch_hparams)
        query_pre_attn_scalar=(cfg["hidden_size"] // cfg["num_attention_heads"]
                               if n_layer == 62 else cfg["head_dim"]),
        final_logit_softcapping=optional_finite_float(
            m, "gemma3.final_logit_softcapping", where, positive=True),
        attn_logit_softcapping=None,
        attention_bias=False,
    )
    return imp


ARCH = Architecture(
    name="gemma3",
    hf_classes=("Gemma3ForCausalLM",),
    model_types=("gemma3_text",),
    layer_prefix=r"model\.layers\.(\d+)\.",
    layer_map=(
        ("input_layernorm.weight", "attn_norm.weight"),
        ("self_attn.q_proj.weight", "attn_q.weight"),
        ("self_attn.k_proj.weight", "attn_k.weight"),
        ("self_attn.v_proj.weight", "attn_v.weight"),
        ("self_attn.o_proj.weight", "attn_output.weight"),
        ("self_attn.q_norm.weight", "attn_q_norm.weight"),
        ("self_attn.k_norm.weight", "attn_k_norm.weight"),
        ("post_attention_layernorm.weight", "post_attention_norm.weight"),
        ("pre_feedforward_layernorm.weight", "ffn_norm.weight"),
        ("post_feedforward_layernorm.weight", "post_ffw_norm.weight"),
        ("mlp.gate_proj.weight", "ffn_gate.weight"),
        ("mlp.up_proj.weight", "ffn_up.weight"),
        ("mlp.down_proj.weight", "ffn_down.weight"),
    ),
    global_map=DECODER_GLOBAL_MAP,
    linear=DECODER_LINEAR,
    causal=True,
    buffers=("model.rotary_emb.inv_freq", "model.rotary_emb_local.inv_freq"),
    tokenizer=("llama", "gpt2"),
    required=("attn_norm.weight", "attn_q.weight", "attn_k.weight", "attn_v.weight",
              "attn_output.weight", "attn_q_norm.weight", "attn_k_norm.weight",
              "post_attention_norm.weight", "ffn_norm.weight", "post_ffw_norm.weight",
              "ffn_gate.weight", "ffn_up.weight", "ffn_down.weight"),
    hparams=gemma3_hparams,
    shapes=lambda cfg: {**decoder_shapes(cfg),
                        "post_attention_norm.weight": (cfg.get("hidden_size"),),
                        "post_ffw_norm.weight": (cfg.get("hidden_size"),)},
    from_gguf=gemma3_from_gguf,
    norm_shift=1.0,
    # AWQ / SmoothQuant fold scales into the preceding norm, which for Gemma is 1 + weight:
    # not handled by pipeline/transforms.py, so the calibrated methods are not offered
    calibrated=False,
)
