"""Supported architectures: how Hugging Face names, shapes and hyper-parameters map to GGUF.

One explicit table per architecture (gguf-py ``constants.py`` / ``tensor_mapping.py`` style),
no registration side effects. Names follow llama.cpp's ``convert_hf_to_gguf.py``
(``LlamaModel``, ``BertModel``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from quantport.errors import ConfigError, UnsupportedArchitectureError

__all__ = [
    "ARCHITECTURES",
    "Architecture",
    "detect_architecture",
    "llama_shape_error",
    "llama_permute",
    "llama_unpermute",
]


@dataclass(frozen=True)
class Architecture:
    """Name mapping and properties of one model family.

    Attributes:
        name: quantport's (and llama.cpp's ``general.architecture``) name.
        hf_classes: Hugging Face ``architectures`` entries that map to it.
        model_types: ``config.json`` ``model_type`` values that map to it.
        layer_map: per-layer (regex on the HF name suffix, GGUF suffix) pairs.
        global_map: whole-model HF name -> GGUF name.
        linear: regex of HF names that are ``nn.Linear`` weights (quantization targets).
        causal: whether it is a causal language model (has next-token logits).
        layer_prefix: regex matching the HF per-layer prefix, capturing the layer index.
        buffers: HF names that are buffers, not weights; every conversion drops them.
        gguf_drop: weights that GGUF conversion drops (llama.cpp does not use them).
    """

    name: str
    hf_classes: tuple[str, ...]
    model_types: tuple[str, ...]
    layer_prefix: str
    layer_map: tuple[tuple[str, str], ...]
    global_map: tuple[tuple[str, str], ...]
    linear: str
    causal: bool
    buffers: tuple[str, ...] = ()
    gguf_drop: tuple[str, ...] = ()

    @property
    def gguf_skip(self) -> tuple[str, ...]:
        """HF names absent from a GGUF: the buffers and the dropped weights."""
        return self.buffers + self.gguf_drop

    def gguf_name(self, hf_name: str) -> str | None:
        """Return the GGUF tensor name for an HF name, or ``None`` if dropped."""
        name = hf_name
        if name in self.gguf_skip:
            return None
        for hf, gg in self.global_map:
            if name == hf:
                return gg
        m = re.match(self.layer_prefix, name)
        if m:
            rest = name[m.end() :]
            for hf, gg in self.layer_map:
                if rest == hf:
                    return f"blk.{m.group(1)}.{gg}"
        return None

    def hf_name(self, gguf_name: str, prefix: str) -> str | None:
        """Inverse of :meth:`gguf_name`; ``prefix`` is the HF per-layer prefix template."""
        for hf, gg in self.global_map:
            if gguf_name == gg:
                return hf
        # ASCII digits without leading zeros, and no trailing newline ($ would allow one): two
        # GGUF names must never map to one HF name
        m = re.fullmatch(r"blk\.(0|[1-9][0-9]{0,11})\.(.+)", gguf_name, re.ASCII | re.DOTALL)
        if m:
            for hf, gg in self.layer_map:
                if m.group(2) == gg:
                    return prefix.format(m.group(1)) + hf
        return None

    def is_linear(self, hf_name: str) -> bool:
        """Whether an HF tensor is the weight of a Linear layer (a quantization target)."""
        return re.search(self.linear, hf_name) is not None


LLAMA = Architecture(
    name="llama",
    hf_classes=("LlamaForCausalLM", "MistralForCausalLM"),
    model_types=("llama", "mistral"),
    layer_prefix=r"model\.layers\.(\d+)\.",
    layer_map=(
        ("input_layernorm.weight", "attn_norm.weight"),
        ("self_attn.q_proj.weight", "attn_q.weight"),
        ("self_attn.k_proj.weight", "attn_k.weight"),
        ("self_attn.v_proj.weight", "attn_v.weight"),
        ("self_attn.o_proj.weight", "attn_output.weight"),
        ("self_attn.q_proj.bias", "attn_q.bias"),
        ("self_attn.k_proj.bias", "attn_k.bias"),
        ("self_attn.v_proj.bias", "attn_v.bias"),
        ("self_attn.o_proj.bias", "attn_output.bias"),
        ("post_attention_layernorm.weight", "ffn_norm.weight"),
        ("mlp.gate_proj.weight", "ffn_gate.weight"),
        ("mlp.up_proj.weight", "ffn_up.weight"),
        ("mlp.down_proj.weight", "ffn_down.weight"),
    ),
    global_map=(
        ("model.embed_tokens.weight", "token_embd.weight"),
        ("model.norm.weight", "output_norm.weight"),
        ("lm_head.weight", "output.weight"),
    ),
    linear=r"\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)\.weight$",
    causal=True,
    buffers=("model.rotary_emb.inv_freq",),
)

BERT = Architecture(
    name="bert",
    hf_classes=("BertModel", "BertForMaskedLM", "BertForSequenceClassification"),
    model_types=("bert",),
    layer_prefix=r"(?:bert\.)?encoder\.layer\.(\d+)\.",
    layer_map=(
        ("attention.self.query.weight", "attn_q.weight"),
        ("attention.self.query.bias", "attn_q.bias"),
        ("attention.self.key.weight", "attn_k.weight"),
        ("attention.self.key.bias", "attn_k.bias"),
        ("attention.self.value.weight", "attn_v.weight"),
        ("attention.self.value.bias", "attn_v.bias"),
        ("attention.output.dense.weight", "attn_output.weight"),
        ("attention.output.dense.bias", "attn_output.bias"),
        ("attention.output.LayerNorm.weight", "attn_output_norm.weight"),
        ("attention.output.LayerNorm.bias", "attn_output_norm.bias"),
        ("intermediate.dense.weight", "ffn_up.weight"),
        ("intermediate.dense.bias", "ffn_up.bias"),
        ("output.dense.weight", "ffn_down.weight"),
        ("output.dense.bias", "ffn_down.bias"),
        ("output.LayerNorm.weight", "layer_output_norm.weight"),
        ("output.LayerNorm.bias", "layer_output_norm.bias"),
    ),
    global_map=(
        ("embeddings.word_embeddings.weight", "token_embd.weight"),
        ("embeddings.position_embeddings.weight", "position_embd.weight"),
        ("embeddings.token_type_embeddings.weight", "token_types.weight"),
        ("embeddings.LayerNorm.weight", "token_embd_norm.weight"),
        ("embeddings.LayerNorm.bias", "token_embd_norm.bias"),
    ),
    linear=r"encoder\.layer\.\d+\..*(query|key|value|dense)\.weight$",
    causal=False,
    buffers=("embeddings.position_ids",),
    # convert_hf_to_gguf.py BertModel: "we are only using BERT for embeddings so we don't need
    # the pooling layer"
    gguf_drop=("pooler.dense.weight", "pooler.dense.bias"),
)

ARCHITECTURES: dict[str, Architecture] = {a.name: a for a in (LLAMA, BERT)}


def _short(v: Any) -> str:
    r = repr(v)
    return r if len(r) <= 60 else r[:57] + "..."


def detect_architecture(config: dict[str, Any], where: str = "config.json") -> Architecture:
    """Pick the architecture of a ``config.json`` mapping.

    Raises:
        ConfigError: if the config names no architecture.
        UnsupportedArchitectureError: if it names one quantport does not support.
    """
    classes = config.get("architectures") or []
    model_type = config.get("model_type")
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        raise ConfigError(
            f"{where}: architectures must be a list of class names, got {_short(classes)}; "
            "fix the value or regenerate the file"
        )
    if model_type is not None and not isinstance(model_type, str):
        raise ConfigError(
            f"{where}: model_type must be a string, got {_short(model_type)}; "
            "fix the value or regenerate the file"
        )
    if not classes and not model_type:
        raise ConfigError(f"{where}: has neither 'architectures' nor 'model_type'")
    for arch in ARCHITECTURES.values():
        if any(c in arch.hf_classes for c in classes) or model_type in arch.model_types:
            return arch
    supported = "; ".join(f"{a.name} ({', '.join(a.hf_classes)})" for a in ARCHITECTURES.values())
    got = classes[0] if classes else model_type
    raise UnsupportedArchitectureError(
        f"{where}: architecture {got!r} is not supported; supported: {supported}"
    )


_LAYER = re.compile(r"blk\.(0|[1-9][0-9]{0,11})\.(.+)", re.ASCII | re.DOTALL)


def llama_shape_error(gguf_name: str, shape: tuple[int, ...], cfg: dict[str, Any],
                      keys: dict[str, str] | None = None) -> str | None:
    """Why a llama tensor's shape contradicts the hyper-parameters, or ``None`` if it does not.

    Mirrors llama.cpp's loader ("tensor has wrong shape"): every weight's shape follows from
    the width, the FFN width, the head counts and size and the vocabulary. ``cfg`` uses
    ``config.json`` keys (already type-checked); absent keys are not checked. ``keys`` maps
    them to the names to report (e.g. GGUF metadata keys).
    """
    keys = keys or {}

    def k(key: str) -> str:
        return keys.get(key, key)

    name = gguf_name
    m = _LAYER.fullmatch(name)
    if m:
        layer, name = int(m.group(1)), m.group(2)
        n_layer = cfg.get("num_hidden_layers")
        if n_layer is not None and layer >= n_layer:
            return f"is in layer {layer} but {k('num_hidden_layers')} is {n_layer}"
    hidden, ff = cfg.get("hidden_size"), cfg.get("intermediate_size")
    heads, vocab = cfg.get("num_attention_heads"), cfg.get("vocab_size")
    kv = cfg.get("num_key_value_heads") or heads
    hd = cfg.get("head_dim") or (hidden // heads if hidden and heads else None)
    q = heads * hd if heads and hd else None
    kvd = kv * hd if kv and hd else None
    want = {
        "token_embd.weight": (vocab, hidden),
        "output.weight": (vocab, hidden),
        "output_norm.weight": (hidden,),
        "attn_norm.weight": (hidden,),
        "ffn_norm.weight": (hidden,),
        "attn_q.weight": (q, hidden),
        "attn_k.weight": (kvd, hidden),
        "attn_v.weight": (kvd, hidden),
        "attn_output.weight": (hidden, q),
        "attn_q.bias": (q,),
        "attn_k.bias": (kvd,),
        "attn_v.bias": (kvd,),
        "attn_output.bias": (hidden,),
        "ffn_gate.weight": (ff, hidden),
        "ffn_up.weight": (ff, hidden),
        "ffn_down.weight": (hidden, ff),
    }.get(name)
    if want is None:
        return None
    if len(shape) != len(want) or any(
        w is not None and w != d for w, d in zip(want, shape, strict=True)
    ):
        shown = tuple("?" if w is None else w for w in want)
        used = ", ".join(k(x) for x in ("hidden_size", "intermediate_size", "num_attention_heads",
                                        "num_key_value_heads", "head_dim", "vocab_size"))
        return (f"has shape {tuple(shape)} but {shown} follows from {used}; the "
                "hyper-parameters do not match the weights")
    return None


def llama_permute(w: np.ndarray, n_head: int, n_head_kv: int | None = None) -> np.ndarray:
    """HF -> GGUF Q/K row permutation (``LlamaModel.permute`` in convert_hf_to_gguf.py).

    llama.cpp applies "normal" RoPE to consecutive pairs, HF to the two halves of each head;
    this interleaves the halves back.
    """
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def llama_unpermute(w: np.ndarray, n_head: int, n_head_kv: int | None = None) -> np.ndarray:
    """GGUF -> HF: the exact inverse of :func:`llama_permute`."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (
        w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )
