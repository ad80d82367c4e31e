"""The record every architecture module fills in, and the pieces the modules share.

An architecture module (``llama.py``, ``qwen2.py``...) is what one ``@ModelBase.register``
class of llama.cpp's ``convert_hf_to_gguf.py`` (``conversion/<family>.py``) is, plus the way
back: the tensor-name map (gguf-py ``tensor_mapping.py`` rows that ``MODEL_TENSORS[arch]``
keeps), the GGUF hyper-parameter keys with their exact value types (``set_gguf_parameters``),
the per-tensor edits (``modify_tensors``), the tokenizer, which tensors are Linear weights, and
the GGUF -> Hugging Face config for imports. No torch, no file I/O.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from quantport.architectures.config import (
    finite_float,
    optional_finite_float,
    optional_positive_int,
    optional_str,
    positive_int,
)
from quantport.errors import ConfigError, UnsupportedArchitectureError
from quantport.formats.gguf_writer import GGUFKV, GGUFValueType

__all__ = [
    "Architecture",
    "GGUFImport",
    "apply_edit",
    "llama_permute",
    "llama_unpermute",
    "short",
]

S, U32, F32, B = (GGUFValueType.STRING, GGUFValueType.UINT32, GGUFValueType.FLOAT32,
                  GGUFValueType.BOOL)

#: expected shape per GGUF tensor suffix (``None``: a dimension not known from the config)
Shapes = dict[str, tuple[int | None, ...]]


#: suffix of an unfolded SmoothQuant input scale stored beside a Linear weight
#: (``encoder.layer.0.attention.self.query.input_smooth``: the graph multiplies the Linear's
#: input by it; post-LayerNorm encoders, see ``pipeline/transforms.py``)
SMOOTH_SUFFIX = ".input_smooth"


@dataclass(frozen=True)
class GGUFImport:
    """A GGUF file's metadata as a Hugging Face ``config.json``.

    Attributes:
        config: the ``config.json`` mapping (checked values).
        keys: config key -> the GGUF key it was read from (so errors name what to fix).
    """

    config: dict[str, Any]
    keys: dict[str, str]


@dataclass(frozen=True)
class Architecture:
    """Name mapping, hyper-parameters and tensor edits of one model family.

    Attributes:
        name: quantport's name (``quantport list``, the ONNX graph table).
        hf_classes: Hugging Face ``architectures`` entries it converts (the registry key).
        model_types: ``config.json`` ``model_type`` values that map to it.
        layer_prefix: regex matching the HF per-layer prefix, capturing the layer index.
        layer_map: per-layer (HF name suffix, GGUF suffix) pairs.
        global_map: whole-model HF name -> GGUF name.
        linear: regex of HF names that are ``nn.Linear`` weights (quantization targets).
        causal: whether it is a causal language model (has next-token logits).
        buffers: HF names that are buffers, not weights; every conversion drops them.
        gguf_drop: weights that GGUF conversion drops (llama.cpp does not use them).
        gguf_arch: ``general.architecture`` of its GGUF (Mistral is written as ``llama``).
        tokenizer: the GGUF tokenizer model(s) it is written with (``tokenizer.ggml.model``).
        pre_tokenizer: the ``tokenizer.ggml.pre`` its released checkpoints get, if one.
        permute_qk: llama.cpp permutes Q/K rows (``LlamaModel.permute``: NORM RoPE models).
        pooling: sentence-transformers pooling is written (``_try_set_pooling_type``).
        required: per-layer GGUF suffixes every layer must have (llama.cpp's loader refuses
            a model without them), checked on both sides.
        hparams: HF config -> the GGUF hyper-parameter keys, in the converter's order.
        shapes: HF config -> expected shape per GGUF suffix (llama.cpp's ``create_tensor``).
        from_gguf: GGUF metadata -> HF config (``None``: GGUF import not supported).
        import_class: the HF class a GGUF import writes (default ``hf_classes[0]``).
        normalize: HF name -> the name the maps use, ``None`` for a tensor GGUF conversion
            drops (``filter_tensors``: BERT's ``bert.`` prefix, heads llama.cpp never runs).
        extra_tensors: HF config -> tensors the converter generates, ``(GGUF name, float32
            array)`` (``generate_extra_tensors``: llama3 RoPE's ``rope_freqs.weight``).
        norm_shift: added to every ``*norm.weight`` HF -> GGUF (Gemma's ``1 + weight`` RMS
            norms: ``Gemma3Model.norm_shift``), subtracted on import.
        calibrated: the layer-by-layer engine of the calibrated methods (GPTQ, AWQ,
            SmoothQuant: ``pipeline/layerwise.py``) runs it; it stages llama's separate
            q/k/v and gate/up projections, so fused ones (Phi-3) are not; encoders take
            GPTQ, and SmoothQuant to ONNX only.
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
    gguf_arch: str = ""
    tokenizer: tuple[str, ...] = ("gpt2",)
    pre_tokenizer: str | None = None
    permute_qk: bool = False
    pooling: bool = False
    required: tuple[str, ...] = ()
    hparams: Callable[[Mapping[str, Any], str], list[GGUFKV]] | None = field(
        default=None, repr=False)
    shapes: Callable[[Mapping[str, Any]], Shapes] | None = field(default=None, repr=False)
    from_gguf: Callable[[Mapping[str, Any], str], GGUFImport] | None = field(
        default=None, repr=False)
    import_class: str = ""
    normalize: Callable[[str], str | None] | None = field(default=None, repr=False)
    calibrated: bool = True
    norm_shift: float = 0.0
    extra_tensors: Callable[[Mapping[str, Any], str], list[tuple[str, np.ndarray]]] | None = \
        field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not self.gguf_arch:
            object.__setattr__(self, "gguf_arch", self.name)
        if not self.import_class:
            object.__setattr__(self, "import_class", self.hf_classes[0])

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
        m = _LAYER.fullmatch(gguf_name)
        if m:
            for hf, gg in self.layer_map:
                if m.group(2) == gg:
                    return prefix.format(m.group(1)) + hf
        return None

    def is_linear(self, hf_name: str) -> bool:
        """Whether an HF tensor is the weight of a Linear layer (a quantization target)."""
        return re.search(self.linear, hf_name) is not None

    def edit(self, hf_name: str) -> str | None:
        """The layout edit HF -> GGUF of one tensor (see :func:`apply_edit`), or ``None``."""
        # Gemma3Model.modify_tensors: "Gemma3RMSNorm adds 1.0 to the norm value"
        if self.norm_shift and hf_name.endswith("norm.weight"):
            return "add_one"
        # LlamaModel.modify_tensors: HF's rotary permutation of q/k (weights and biases) is undone
        if self.permute_qk:
            if hf_name.endswith(("q_proj.weight", "q_proj.bias")):
                return "permute_q"
            if hf_name.endswith(("k_proj.weight", "k_proj.bias")):
                return "permute_k"
        return None

    def shape_error(self, gguf_name: str, shape: tuple[int, ...], cfg: Mapping[str, Any],
                    keys: Mapping[str, str] | None = None) -> str | None:
        """Why a tensor's shape contradicts the hyper-parameters, or ``None`` if it does not.

        Mirrors llama.cpp's loader ("tensor has wrong shape"): every weight's shape follows from
        the config. ``cfg`` uses ``config.json`` keys (already type-checked); ``keys`` maps them
        to the names to report (e.g. GGUF metadata keys).
        """
        if self.shapes is None:
            return None
        keys = keys or {}
        name = gguf_name
        m = _LAYER.fullmatch(name)
        if m:
            layer, name = int(m.group(1)), m.group(2)
            n_layer = cfg.get("num_hidden_layers")
            if n_layer is not None and layer >= n_layer:
                return (f"is in layer {layer} but {keys.get('num_hidden_layers', 'num_hidden_layers')}"
                        f" is {n_layer}")
        want = self.shapes(cfg).get(name)
        if want is None:
            return None
        if len(shape) != len(want) or any(
            w is not None and w != d for w, d in zip(want, shape, strict=True)
        ):
            shown = tuple("?" if w is None else w for w in want)
            used = ", ".join(keys.get(x, x) for x in _SHAPE_KEYS if x in cfg)
            return (f"has shape {tuple(shape)} but {shown} follows from {used}; the "
                    "hyper-parameters do not match the weights")
        return None

    def missing_error(self, gguf_names: Sequence[str], n_layer: int) -> str | None:
        """The first per-layer tensor llama.cpp's loader would miss, as ``blk.<i>.<suffix>``."""
        have = set(gguf_names)
        for i in range(n_layer):
            for suffix in self.required:
                if f"blk.{i}.{suffix}" not in have:
                    return f"blk.{i}.{suffix}"
        return None


_LAYER = re.compile(r"blk\.(0|[1-9][0-9]{0,11})\.(.+)", re.ASCII | re.DOTALL)
_SHAPE_KEYS = ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads",
               "head_dim", "vocab_size")


def short(v: Any) -> str:
    """A short repr of an offending value (a hostile value may be a huge list or string)."""
    r = repr(v)
    return r if len(r) <= 60 else r[:57] + "..."


# --------------------------------------------------------------------------------------------
# tensor edits
# --------------------------------------------------------------------------------------------


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


#: the edits :meth:`Architecture.edit` names
EDITS = ("permute_q", "permute_k", "add_one")


def apply_edit(w: np.ndarray, edit: str | None, n_head: int, n_head_kv: int,
               *, undo: bool = False) -> np.ndarray:
    """A layout edit on a Hugging Face weight (``undo``: the GGUF layout back to HF's).

    ``permute_q`` / ``permute_k``: ``LlamaModel.permute`` with the query / key-value head count.
    They permute output rows only, so importance columns (and Hessians) are unchanged.
    ``add_one``: Gemma's norm weights are stored as ``1 + weight`` (in float32, as
    ``Gemma3RMSNorm`` computes ``1.0 + self.weight.float()``).
    """
    if edit is None:
        return w
    if edit not in EDITS:
        raise ValueError(f"unknown layout edit {edit!r}; known: {', '.join(EDITS)}")
    if edit == "add_one":
        w = np.asarray(w, dtype=np.float32)
        return w - np.float32(1) if undo else w + np.float32(1)
    kv = n_head if edit == "permute_q" else n_head_kv
    return (llama_unpermute if undo else llama_permute)(w, n_head, kv)


# --------------------------------------------------------------------------------------------
# hyper-parameters shared by the decoder-only text models (TextModel.set_gguf_parameters)
# --------------------------------------------------------------------------------------------


def need(cfg: Mapping[str, Any], key: str, where: str) -> Any:
    """A config value the GGUF header needs (refused when missing)."""
    v = cfg.get(key)
    if v is None:
        raise ConfigError(f"{where}: config.json has no {key!r}; it is needed for the GGUF header")
    return v


def rope_params(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """RoPE parameters as ``TextModel.__init__`` merges them (``rope_parameters`` of
    transformers >= 5, else ``rope_scaling``; ``rope_theta`` and ``type`` mirrored in)."""
    p = dict(cfg.get("rope_parameters") or cfg.get("rope_scaling") or {})
    if "full_attention" in p:
        p = dict(p["full_attention"])
    if "rope_theta" not in p and cfg.get("rope_theta") is not None:
        p["rope_theta"] = cfg["rope_theta"]
    if "rope_type" not in p and p.get("type") is not None:
        p["rope_type"] = p["type"]
    if ("original_max_position_embeddings" not in p
            and cfg.get("original_max_position_embeddings") is not None):
        p["original_max_position_embeddings"] = cfg["original_max_position_embeddings"]
    return p


def rope_scaling_kv(prefix: str, cfg: Mapping[str, Any], where: str,
                    supported: Sequence[str]) -> list[GGUFKV]:
    """``rope.scaling.*`` keys as ``TextModel.set_gguf_parameters`` writes them.

    A type llama.cpp would run differently, or that this architecture does not implement, is
    refused rather than dropped (the converter only warns, and the model then runs unscaled).
    """
    p = rope_params(cfg)
    rope_type = p.get("rope_type")
    if rope_type in (None, "default"):
        return []
    factor = p.get("factor")
    if rope_type not in supported or (rope_type in ("linear", "yarn") and factor is None):
        raise UnsupportedArchitectureError(
            f"{where}: rope scaling {short(rope_type)} is not supported for {prefix}; "
            f"supported: none, {', '.join(supported)}")
    fac = finite_float(p, "factor", where, positive=True, name="rope_scaling.factor")
    if rope_type == "linear":
        return [GGUFKV(f"{prefix}.rope.scaling.type", "linear", S),
                GGUFKV(f"{prefix}.rope.scaling.factor", fac, F32)]
    kv = [GGUFKV(f"{prefix}.rope.scaling.type", "yarn", S),
          GGUFKV(f"{prefix}.rope.scaling.factor", fac, F32),
          GGUFKV(f"{prefix}.rope.scaling.original_context_length",
                 positive_int(p, "original_max_position_embeddings", where,
                              name="rope_scaling.original_max_position_embeddings"), U32)]
    for hf, gg in (("extrapolation_factor", "yarn_ext_factor"),
                   ("attention_factor", "yarn_attn_factor"), ("attn_factor", "yarn_attn_factor"),
                   ("beta_fast", "yarn_beta_fast"), ("beta_slow", "yarn_beta_slow")):
        v = optional_finite_float(p, hf, where, name=f"rope_scaling.{hf}")
        if v is not None and not any(k.key == f"{prefix}.rope.scaling.{gg}" for k in kv):
            kv.append(GGUFKV(f"{prefix}.rope.scaling.{gg}", v, F32))
    return kv


def text_hparams(prefix: str, cfg: Mapping[str, Any], where: str, *,
                 rope: Sequence[str] = ("linear", "yarn")) -> list[GGUFKV]:
    """``TextModel.set_gguf_parameters`` (conversion/base.py) for a dense decoder: the keys, in
    its order, with the types gguf-py's ``add_*`` helpers write (llama-model.cpp reads
    ``uint32_t`` / ``float`` exactly)."""
    kv = [
        GGUFKV(f"{prefix}.block_count", int(need(cfg, "num_hidden_layers", where)), U32),
        GGUFKV(f"{prefix}.context_length", int(need(cfg, "max_position_embeddings", where)), U32),
        GGUFKV(f"{prefix}.embedding_length", int(need(cfg, "hidden_size", where)), U32),
        GGUFKV(f"{prefix}.feed_forward_length", int(need(cfg, "intermediate_size", where)), U32),
        GGUFKV(f"{prefix}.attention.head_count", int(need(cfg, "num_attention_heads", where)), U32),
    ]
    if cfg.get("num_key_value_heads") is not None:
        kv.append(GGUFKV(f"{prefix}.attention.head_count_kv", int(cfg["num_key_value_heads"]), U32))
    kv += rope_scaling_kv(prefix, cfg, where, rope)
    theta = rope_params(cfg).get("rope_theta")
    if theta is not None:
        kv.append(GGUFKV(f"{prefix}.rope.freq_base",
                         finite_float({"t": theta}, "t", where, positive=True, name="rope_theta"),
                         F32))
    kv.append(GGUFKV(f"{prefix}.attention.layer_norm_rms_epsilon",
                     float(need(cfg, "rms_norm_eps", where)), F32))
    if cfg.get("head_dim") is not None:
        kv += [GGUFKV(f"{prefix}.attention.key_length", int(cfg["head_dim"]), U32),
               GGUFKV(f"{prefix}.attention.value_length", int(cfg["head_dim"]), U32)]
    return kv


def check_act(cfg: Mapping[str, Any], where: str, arch: str, act: str = "silu") -> None:
    """Refuse an activation the llama.cpp graph of ``arch`` does not compute."""
    got = cfg.get("hidden_act", act)
    if got != act:
        raise UnsupportedArchitectureError(
            f"{where}: {arch} with hidden_act {short(got)}; llama.cpp's {arch} graph uses {act}")


def decoder_shapes(cfg: Mapping[str, Any]) -> Shapes:
    """Shapes of a llama-style decoder's tensors (GGUF suffix -> numpy shape)."""
    hidden, ff = cfg.get("hidden_size"), cfg.get("intermediate_size")
    heads, vocab = cfg.get("num_attention_heads"), cfg.get("vocab_size")
    kv = cfg.get("num_key_value_heads") or heads
    hd = cfg.get("head_dim") or (hidden // heads if hidden and heads else None)
    q = heads * hd if heads and hd else None
    kvd = kv * hd if kv and hd else None
    return {
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
        "attn_q_norm.weight": (hd,),
        "attn_k_norm.weight": (hd,),
        "ffn_gate.weight": (ff, hidden),
        "ffn_up.weight": (ff, hidden),
        "ffn_down.weight": (hidden, ff),
    }


#: llama-style per-layer tensors (gguf-py tensor_mapping.py rows of MODEL_TENSORS[LLAMA])
DECODER_LAYER_MAP: tuple[tuple[str, str], ...] = (
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
)
DECODER_GLOBAL_MAP: tuple[tuple[str, str], ...] = (
    ("model.embed_tokens.weight", "token_embd.weight"),
    ("model.norm.weight", "output_norm.weight"),
    ("lm_head.weight", "output.weight"),
)
DECODER_LINEAR = r"\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)\.weight$"
DECODER_REQUIRED = ("attn_norm.weight", "attn_q.weight", "attn_k.weight", "attn_v.weight",
                    "attn_output.weight", "ffn_norm.weight", "ffn_gate.weight", "ffn_up.weight",
                    "ffn_down.weight")


# --------------------------------------------------------------------------------------------
# GGUF -> HF config
# --------------------------------------------------------------------------------------------


def decoder_from_gguf(m: Mapping[str, Any], where: str, prefix: str, hf_class: str,
                      model_type: str, *, head_dim_key: str) -> GGUFImport:
    """The config.json of a llama-style decoder GGUF (``<prefix>.*`` keys), checked.

    ``head_dim_key`` is the metadata key the head size is read from
    (``rope.dimension_count`` for llama, ``attention.key_length`` for qwen3); without it the
    head size is ``embedding_length / head_count``.
    """
    keys = {
        "hidden_size": f"{prefix}.embedding_length",
        "intermediate_size": f"{prefix}.feed_forward_length",
        "num_hidden_layers": f"{prefix}.block_count",
        "num_attention_heads": f"{prefix}.attention.head_count",
        "num_key_value_heads": f"{prefix}.attention.head_count_kv",
        "head_dim": f"{prefix}.{head_dim_key}",
        "max_position_embeddings": f"{prefix}.context_length",
        "rms_norm_eps": f"{prefix}.attention.layer_norm_rms_epsilon",
        "rope_theta": f"{prefix}.rope.freq_base",
        "vocab_size": f"{prefix}.vocab_size",
        "bos_token_id": "tokenizer.ggml.bos_token_id",
        "eos_token_id": "tokenizer.ggml.eos_token_id",
        "pad_token_id": "tokenizer.ggml.padding_token_id",
    }
    hidden = positive_int(m, keys["hidden_size"], where)
    n_head = positive_int(m, keys["num_attention_heads"], where)
    n_head_kv = positive_int(m, keys["num_key_value_heads"], where, default=n_head)
    head_dim = optional_positive_int(m, keys["head_dim"], where)
    if head_dim is None:
        if hidden % n_head:
            raise ConfigError(
                f"{where}: {keys['hidden_size']} {hidden} is not divisible by "
                f"{keys['num_attention_heads']} {n_head}; fix one of them")
        head_dim = hidden // n_head
    cfg: dict[str, Any] = {
        "architectures": [hf_class],
        "model_type": model_type,
        "hidden_size": hidden,
        "intermediate_size": positive_int(m, keys["intermediate_size"], where),
        "num_hidden_layers": positive_int(m, keys["num_hidden_layers"], where),
        "num_attention_heads": n_head,
        "num_key_value_heads": n_head_kv,
        "head_dim": head_dim,
        "max_position_embeddings": positive_int(m, keys["max_position_embeddings"], where),
        "rms_norm_eps": finite_float(m, keys["rms_norm_eps"], where, positive=True),
        "rope_theta": finite_float(m, keys["rope_theta"], where, default=10000.0, positive=True),
        "vocab_size": optional_positive_int(m, keys["vocab_size"], where),
        "hidden_act": "silu",
    }
    rope_type = optional_str(m, f"{prefix}.rope.scaling.type", where)
    if rope_type not in (None, "none"):
        factor_key = f"{prefix}.rope.scaling.factor"
        if rope_type == "linear":
            cfg["rope_scaling"] = {"rope_type": "linear",
                                   "factor": finite_float(m, factor_key, where, positive=True)}
        elif rope_type == "yarn":
            rs: dict[str, Any] = {
                "rope_type": "yarn",
                "factor": finite_float(m, factor_key, where, positive=True),
                "original_max_position_embeddings": positive_int(
                    m, f"{prefix}.rope.scaling.original_context_length", where)}
            for gg, hf in (("yarn_ext_factor", "extrapolation_factor"),
                           ("yarn_attn_factor", "attention_factor"),
                           ("yarn_beta_fast", "beta_fast"), ("yarn_beta_slow", "beta_slow")):
                v = optional_finite_float(m, f"{prefix}.rope.scaling.{gg}", where)
                if v is not None:
                    rs[hf] = v
            cfg["rope_scaling"] = rs
        else:
            raise UnsupportedArchitectureError(
                f"{where}: {prefix}.rope.scaling.type {short(rope_type)} cannot be imported; "
                "supported: none, linear, yarn")
    return GGUFImport(cfg, keys)
