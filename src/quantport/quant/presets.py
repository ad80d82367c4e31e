"""llama-quantize presets and the per-tensor type rules behind them.

This module is a faithful Python port of the tensor-type selection of the llama.cpp copy
vendored by llama-cpp-python 0.3.36 (``vendor/llama.cpp/src/llama-quant.cpp``):

* ``tensor_allows_quantization``   -> :func:`_allows_quantization` (which tensors are kept as is),
* ``llama_tensor_get_type``        -> the outer wrapper in :func:`plan_tensor_types`
  (``--token-embedding-type`` / ``--output-tensor-type``, ``--tensor-type`` regex overrides, ``--pure``),
* ``llama_tensor_get_type_impl``   -> :func:`_mix_rule` (the per-preset "mix" rules),
* ``tensor_type_fallback``         -> :func:`_fallback` (types for widths not divisible by the block size),
* ``llama_ftype_get_default_type`` -> :data:`PRESETS`,
* ``init_quantize_state_counters`` -> the counters (``n_attention_wv`` and friends).

It is pure: no torch, no file I/O.  ``tests/quant/test_presets.py`` checks it tensor by tensor against
``llama_cpp.llama_model_quantize`` run on a real GGUF.

Only dense models (no experts) of the GGUF architectures in :data:`SUPPORTED_ARCHS` are supported:
the rules are the same for all of them but for the 70B type (``_is_70b``), and fused ``attn_qkv``
counts as ``attn_v`` (``category_is_attn_v``).  The rules
for Falcon, MoE (``n_expert``), GLM5-next, MXFP4_MOE and the IQ1/IQ2/IQ3 mixes are not ported.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import gguf

from quantport.errors import UnsupportedArchitectureError, UnsupportedQuantError

__all__ = [
    "PRESETS",
    "PRESET_ALIASES",
    "Preset",
    "SUPPORTED_ARCHS",
    "TensorPlan",
    "parse_override",
    "plan_tensor_types",
    "resolve_preset",
    "tensor_nbytes",
]

#: GGUF ``general.architecture`` values the rules below are checked for
SUPPORTED_ARCHS = ("llama", "bert", "qwen2", "qwen3", "phi3", "gemma3")


def _is_70b(arch: str, n_layer: int, n_head: int, n_head_kv: int) -> bool:
    """``model.type == LLM_TYPE_70B`` (the only llm_type the rules read), as the loader sets it:
    ``src/models/llama.cpp`` (80 layers with GQA) and ``src/models/qwen2.cpp`` (80 layers)."""
    if n_layer != 80:
        return False
    return arch == "qwen2" or (arch == "llama" and n_head != n_head_kv)


@dataclass(frozen=True)
class Preset:
    """One llama-quantize preset (``QUANT_OPTIONS`` in ``tools/quantize/quantize.cpp``).

    Attributes:
        name: the preset name as llama-quantize spells it, e.g. ``"Q4_K_M"``.
        ftype: the ``llama_ftype`` id, written to ``general.file_type``.
        default_type: the GGML type most tensors get (``llama_ftype_get_default_type``).
    """

    name: str
    ftype: int
    default_type: str


# llama_ftype ids from include/llama.h; default types from llama_ftype_get_default_type().
PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset("F32", 0, "F32"),
        Preset("F16", 1, "F16"),
        Preset("Q4_0", 2, "Q4_0"),
        Preset("Q4_1", 3, "Q4_1"),
        Preset("Q8_0", 7, "Q8_0"),
        Preset("Q5_0", 8, "Q5_0"),
        Preset("Q5_1", 9, "Q5_1"),
        Preset("Q2_K", 10, "Q2_K"),
        Preset("Q3_K_S", 11, "Q3_K"),
        Preset("Q3_K_M", 12, "Q3_K"),
        Preset("Q3_K_L", 13, "Q3_K"),
        Preset("Q4_K_S", 14, "Q4_K"),
        Preset("Q4_K_M", 15, "Q4_K"),
        Preset("Q5_K_S", 16, "Q5_K"),
        Preset("Q5_K_M", 17, "Q5_K"),
        Preset("Q6_K", 18, "Q6_K"),
        Preset("IQ4_NL", 25, "IQ4_NL"),
        Preset("BF16", 32, "BF16"),
    )
}

# llama-quantize's QUANT_OPTIONS aliases ("Q4_K" is "Q4_K_M", ...).
PRESET_ALIASES: dict[str, str] = {"Q3_K": "Q3_K_M", "Q4_K": "Q4_K_M", "Q5_K": "Q5_K_M"}

# Types a tensor may be given (by a preset, an override, output_type or token_embedding_type).
# Integer and F64 types are excluded: ggml_quantize_chunk cannot produce them.
_TARGET_TYPES: tuple[str, ...] = tuple(
    t.name
    for t in gguf.GGMLQuantizationType
    if t.name not in {"I8", "I16", "I32", "I64", "F64", "Q8_1", "Q8_K"}
)
_UNQUANTIZED = frozenset({"F32", "F16", "BF16", "I8", "I16", "I32", "I64", "F64"})

_FTYPE_Q4_0 = 2
_FTYPE_Q5_0 = 8


@dataclass(frozen=True)
class TensorPlan:
    """The type llama-quantize would give one tensor, and why.

    Attributes:
        name: GGUF tensor name.
        shape: numpy-order shape (``[rows, cols]``; ``ne[0] == shape[-1]``).
        type: GGML type name, e.g. ``"Q4_K"`` or ``"F32"``.
        reason: which rule decided, e.g. ``"default"``, ``"use_more_bits"``,
            ``"override 'attn_v=Q8_0'"``, ``"... ; fallback: 576 % 256 -> Q5_0"``.
        nbytes: exact size of the tensor's data in the GGUF file (without alignment padding).
    """

    name: str
    shape: tuple[int, ...]
    type: str
    reason: str
    nbytes: int


def _block(type_name: str) -> tuple[int, int]:
    return gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[type_name]]


def tensor_nbytes(shape: Sequence[int], type_name: str) -> int:
    """Bytes of a tensor's data stored as ``type_name`` (``ggml_nbytes`` for a contiguous tensor).

    Args:
        shape: numpy-order shape; the last dimension is ``ne[0]``.
        type_name: GGML type name such as ``"Q4_K"``.

    Returns:
        ``n_elements / block_size * type_size``.

    Raises:
        UnsupportedQuantError: unknown type, or ``ne[0]`` not a multiple of the type's block size.
    """
    tname = _check_type(type_name, "tensor_nbytes")
    block, size = _block(tname)
    ne0 = int(shape[-1]) if len(shape) else 1
    if ne0 % block:
        raise UnsupportedQuantError(
            f"tensor width {ne0} is not a multiple of the {tname} block size {block}; pick another type"
        )
    n = 1
    for d in shape:
        n *= int(d)
    return n // block * size


def _check_type(type_name: str, where: str) -> str:
    """Normalise a GGML type name case-insensitively (``parse_ggml_type`` uses ``striequals``)."""
    up = str(type_name).strip().upper()
    if up not in _TARGET_TYPES:
        # the types quantport writes, not every ggml type the selection rules know (llama.cpp's
        # fallbacks need those; the GGUF writer refuses a tensor that would get one)
        from quantport.quant.ggml import GGML_GRIDS

        writes = ["F32", "F16", "BF16", *sorted(GGML_GRIDS)]
        raise UnsupportedQuantError(
            f"unknown tensor type {type_name!r} in {where}; quantport writes: {', '.join(writes)}"
        )
    return up


def resolve_preset(name: str) -> Preset:
    """Look up a preset by name (case-insensitive; ``Q3_K``/``Q4_K``/``Q5_K`` aliases accepted).

    Raises:
        UnsupportedQuantError: the name is not a supported preset.
    """
    up = str(name).strip().upper()
    up = PRESET_ALIASES.get(up, up)
    try:
        return PRESETS[up]
    except KeyError:
        raise UnsupportedQuantError(
            f"unknown llama-quantize preset {name!r}; supported: {', '.join(PRESETS)}"
        ) from None


def parse_override(spec: str | tuple[str, str]) -> tuple[str, str]:
    """Parse a ``--tensor-type`` style override ``"REGEX=TYPE"`` into ``(pattern, TYPE)``.

    Like ``parse_tensor_type`` in ``tools/quantize/quantize.cpp`` the pattern is lower-cased and
    split at the first ``=``; the type is matched case-insensitively.

    Raises:
        UnsupportedQuantError: malformed spec, empty pattern, bad regex or unknown type.
    """
    if isinstance(spec, tuple):
        pattern, type_name = spec
    else:
        pattern, sep, type_name = str(spec).partition("=")
        if not sep:
            raise UnsupportedQuantError(f"malformed tensor-type override {spec!r}; write it as REGEX=TYPE")
    if not pattern:
        raise UnsupportedQuantError(f"tensor-type override {spec!r} has no tensor pattern; write REGEX=TYPE")
    if not type_name:
        raise UnsupportedQuantError(f"tensor-type override {spec!r} has no type; write REGEX=TYPE")
    pattern = pattern.lower()
    try:
        re.compile(pattern)
    except re.error as exc:
        raise UnsupportedQuantError(f"tensor-type override {spec!r}: invalid regex ({exc}); fix the pattern") from None
    return pattern, _check_type(type_name, f"tensor-type override {spec!r}")


# --------------------------------------------------------------------------------------------
# tensor_get_category (llama-quant.cpp)
# --------------------------------------------------------------------------------------------

_OUTPUT, _TOKEN_EMBD, _QKV, _KV_B, _V, _K, _Q, _ATTN_OUT, _FFN_UP, _FFN_GATE, _FFN_DOWN, _OTHER = range(12)


def _category(name: str) -> int:
    # Same order of substring tests as tensor_get_category(); first match wins.
    if name == "output.weight":
        return _OUTPUT
    if name in ("token_embd.weight", "per_layer_token_embd.weight"):
        return _TOKEN_EMBD
    for key, cat in (
        ("attn_qkv.weight", _QKV),
        ("attn_kv_b.weight", _KV_B),
        ("attn_v.weight", _V),
        ("attn_k.weight", _K),
        ("attn_q.weight", _Q),
        ("attn_output.weight", _ATTN_OUT),
        ("ffn_up", _FFN_UP),
        ("ffn_gate", _FFN_GATE),
        ("ffn_down", _FFN_DOWN),
    ):
        if key in name:
            return cat
    return _OTHER


def _is_attn_v(cat: int) -> bool:
    # category_is_attn_v(): fused QKV and MLA kv_b count as attn_v (so they follow the attn_v rules).
    return cat in (_V, _QKV, _KV_B)


# Substrings that tensor_allows_quantization() never quantizes (arch-independent part).
_NEVER_QUANTIZE_SUBSTRINGS = (
    "_norm.weight",
    "ffn_gate_inp.weight",
    "ffn_gate_tid2eid.weight",
    "altup",
    "laurel",
    "per_layer_model_proj",
    "ssm_conv1d",
    "shortconv.conv.weight",
    "indexer.k_proj.weight",
    "indexer.q_proj.weight",
    "time_mix_first.weight",
    "time_mix_w0.weight",
    "time_mix_w1.weight",
    "time_mix_w2.weight",
    "time_mix_v0.weight",
    "time_mix_v1.weight",
    "time_mix_v2.weight",
    "time_mix_a0.weight",
    "time_mix_a1.weight",
    "time_mix_a2.weight",
    "time_mix_g1.weight",
    "time_mix_g2.weight",
    "time_mix_decay_w1.weight",
    "time_mix_decay_w2.weight",
    "time_mix_lerp_fused.weight",
    "attn_rel_b.weight",
    ".position_embd",
    "sam.pos_embd",
    "sam.neck.",
    "sam.net_",
    ".rel_pos",
    ".patch_embd",
    ".patch_merger",
    "a.rvq.codebook",
    "mm.a.code_embd",
)


def _n_dims(ne: Sequence[int]) -> int:
    # ggml_n_dims(): trailing dimensions of size 1 do not count.
    for i in range(len(ne) - 1, 0, -1):
        if ne[i] > 1:
            return i + 1
    return 1


def _allows_quantization(name: str, ne: Sequence[int]) -> str | None:
    """Port of tensor_allows_quantization(); returns None if allowed, else why it is kept."""
    if _n_dims(ne) < 2:
        # "quantize only 2D and 3D tensors (experts)"
        return "1-D tensor"
    if not name.endswith("weight"):
        return "name does not end in 'weight'"
    if "_norm.weight" in name:
        return "norm"
    # LLM_TN(arch)(LLM_TENSOR_POS_EMBD / LLM_TENSOR_TOKEN_TYPES, "weight") is arch-independent in this
    # llama.cpp version, so these two names are never quantized (BERT's absolute positions / segments).
    if name in ("position_embd.weight", "token_types.weight"):
        return "position/token-type embedding"
    for sub in _NEVER_QUANTIZE_SUBSTRINGS:
        if sub in name:
            return f"'{sub}' tensors are kept"
    return None


def _use_more_bits(i_layer: int, n_layers: int) -> bool:
    # use_more_bits lambda in llama_tensor_get_type_impl(); C++ integer division truncates toward 0.
    def cdiv(a: int, b: int) -> int:
        q = abs(a) // abs(b)
        return q if (a >= 0) == (b > 0) else -q

    def cmod(a: int, b: int) -> int:
        return a - b * cdiv(a, b)

    return (
        i_layer < cdiv(n_layers, 8)
        or i_layer >= cdiv(7 * n_layers, 8)
        or cmod(i_layer - cdiv(n_layers, 8), 3) == 2
    )


def _fallback(name: str, ncols: int, target: str) -> tuple[str, str | None]:
    """Port of tensor_type_fallback(): returns (type, reason or None when no fallback was needed)."""
    qk = _block(target)[0]
    if ncols % qk == 0:
        return target, None
    table = {
        "IQ1_S": "IQ4_NL", "IQ1_M": "IQ4_NL", "IQ2_XXS": "IQ4_NL", "IQ2_XS": "IQ4_NL",
        "IQ2_S": "IQ4_NL", "IQ3_XXS": "IQ4_NL", "IQ3_S": "IQ4_NL", "IQ4_XS": "IQ4_NL",
        "Q2_0": "Q4_0", "Q2_K": "Q4_0", "Q3_K": "Q4_0", "TQ1_0": "Q4_0", "TQ2_0": "Q4_0",
        "Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0",
    }  # fmt: skip
    if target in table:
        ret = table[target]
    elif qk <= 32:
        # "the target is already a 32-block type, so there is no smaller block to demote to"
        ret = target
    else:
        raise UnsupportedQuantError(
            f"tensor {name}: width {ncols} is not a multiple of the {target} block size {qk} and "
            f"llama.cpp defines no fallback for {target}; choose another type for it"
        )
    if ncols % _block(ret)[0]:
        # "most likely, this tensor's first dimension is not divisible by 32" -> F16
        ret = "F16"
    return ret, f"fallback: {ncols} % {qk} -> {ret}"


class _State:
    """quantize_state_impl: the counters the mix rules depend on."""

    def __init__(self, n_layer: int) -> None:
        self.n_attention_wv = 0
        self.i_attention_wv = 0
        self.n_ffn_down = self.n_ffn_gate = self.n_ffn_up = n_layer
        self.i_ffn_down = self.i_ffn_gate = self.i_ffn_up = 0
        self.has_tied_embeddings = True


def _mix_rule(
    qs: _State,
    new_type: str,
    name: str,
    ncols: int,
    ftype: int,
    cat: int,
    *,
    n_gqa: int,
    is_70b: bool,
    has_imatrix: bool,
    output_type: str | None,
) -> tuple[str, str]:
    """Port of llama_tensor_get_type_impl() for dense llama/bert models and the supported presets.

    The IQ1/IQ2/IQ3, Falcon, MoE, MXFP4 and GLM5 branches are omitted: they can't be reached with
    the presets and architectures accepted by :func:`plan_tensor_types`.  Returns (type, reason).
    """
    # llama_ftype ids; Q3_K_S, Q5_K_S and Q6_K have no per-tensor rules beyond the output rule.
    Q2K, Q3KM, Q3KL, Q4KS, Q4KM, Q5KM, IQ4NL = 10, 12, 13, 14, 15, 17, 25

    # "for arches that share the same tensor between the token embeddings and the output, we quantize
    # the token embeddings with the quantization of the output tensor"
    if cat == _OUTPUT or (qs.has_tied_embeddings and cat == _TOKEN_EMBD):
        what = "output" if cat == _OUTPUT else "tied token_embd (as output)"
        if output_type is not None:
            return output_type, f"{what}: output_type"
        qk = _block(new_type)[0]
        if ncols % qk != 0:
            return "Q8_0", f"{what}: {ncols} % {qk} != 0 -> Q8_0"
        if new_type != "Q8_0":
            return "Q6_K", f"{what}: Q6_K"
        return new_type, f"{what}: default"

    if cat == _TOKEN_EMBD:
        # Untied token_embd: only the IQ1/IQ2/IQ3/TQ/Q2_0 mixes change it (not ported); token_embedding_type
        # was already handled by the caller (outer llama_tensor_get_type returns early).
        return new_type, "default"

    if _is_attn_v(cat):
        reason = "default"
        if ftype == Q2K:
            new_type, reason = ("Q4_K", "attn_v: n_gqa >= 4") if n_gqa >= 4 else ("Q3_K", "attn_v: Q2_K mix")
        elif ftype == Q3KM:
            new_type = "Q5_K" if qs.i_attention_wv < 2 else "Q4_K"
            reason = f"attn_v #{qs.i_attention_wv}: first 2 get Q5_K, others Q4_K"
        elif ftype == Q3KL:
            new_type, reason = "Q5_K", "attn_v: Q3_K_L mix"
        elif ftype == IQ4NL and n_gqa >= 4:
            new_type, reason = "Q5_K", "attn_v: n_gqa >= 4"
        elif ftype in (Q4KM, Q5KM) and _use_more_bits(qs.i_attention_wv, qs.n_attention_wv):
            new_type, reason = "Q6_K", f"use_more_bits(attn_v #{qs.i_attention_wv} of {qs.n_attention_wv})"
        elif ftype == Q4KS and qs.i_attention_wv < 4:
            new_type, reason = "Q5_K", f"attn_v #{qs.i_attention_wv}: first 4 get Q5_K"
        if is_70b and new_type in ("Q3_K", "Q4_K"):
            # "In the 70B model we have 8 heads sharing the same attn_v weights" -> more bits are cheap
            new_type, reason = "Q5_K", "attn_v: 70B bump"
        qs.i_attention_wv += 1
        return new_type, reason

    if cat in (_K, _Q):
        # attn_k / attn_q only change for n_expert == 8 and the IQ3 mixes (not ported).
        return new_type, "default"

    if cat == _FFN_DOWN:
        # layer_info(): for dense models the layer is the running ffn_down counter, n_layer = n_layer_all.
        i_layer, n_layer = qs.i_ffn_down, qs.n_ffn_down
        n8, n16 = n_layer // 8, n_layer // 16
        reason = "default"
        if ftype == Q2K:
            new_type, reason = "Q3_K", "ffn_down: Q2_K mix"
        elif ftype == Q3KM:
            # (arch != FALCON || use_more_bits) is always true here, so the Q3_K arm is unreachable
            new_type = "Q5_K" if i_layer < n16 else "Q4_K"
            reason = f"ffn_down #{i_layer}: < n_layer/16 ({n16}) get Q5_K, others Q4_K"
        elif ftype == Q3KL:
            new_type, reason = "Q5_K", "ffn_down: Q3_K_L mix"
        elif ftype == Q4KM:
            if _use_more_bits(i_layer, n_layer):
                new_type, reason = "Q6_K", f"use_more_bits(ffn_down #{i_layer} of {n_layer})"
        elif i_layer < n8 and ftype == IQ4NL and not has_imatrix:
            new_type, reason = "Q5_K", f"ffn_down #{i_layer} < n_layer/8 ({n8}) without imatrix"
        elif ftype == Q5KM and _use_more_bits(i_layer, n_layer):
            new_type, reason = "Q6_K", f"use_more_bits(ffn_down #{i_layer} of {n_layer})"
        elif ftype == Q4KS and i_layer < n8:
            new_type, reason = "Q5_K", f"ffn_down #{i_layer} < n_layer/8 ({n8})"
        elif ftype in (_FTYPE_Q4_0, _FTYPE_Q5_0) and has_imatrix and i_layer < n8:
            # "Guard against craziness in the first few ffn_down layers" (only with an imatrix)
            new_type = "Q4_1" if ftype == _FTYPE_Q4_0 else "Q5_1"
            reason = f"ffn_down #{i_layer} < n_layer/8 ({n8}) with imatrix"
        qs.i_ffn_down += 1
        return new_type, reason

    if cat == _ATTN_OUT:
        # non-Falcon, n_expert != 8 arm
        if ftype == Q2K:
            return "Q3_K", "attn_output: Q2_K mix"
        if ftype == Q3KM:
            return "Q4_K", "attn_output: Q3_K_M mix"
        if ftype == Q3KL:
            return "Q5_K", "attn_output: Q3_K_L mix"
        return new_type, "default"

    # The ATTENTION_QKV branch of llama_tensor_get_type_impl is dead code (category_is_attn_v() catches
    # QKV first), so it is not ported.
    if cat == _FFN_GATE:
        qs.i_ffn_gate += 1  # only the IQ3_XS mix reads it
    elif cat == _FFN_UP:
        qs.i_ffn_up += 1
    return new_type, "default"


def _sort_key(name: str) -> tuple[int, bytes]:
    # llama_model_loader::weight_name_comparer: by sscanf("blk.%d.") layer (-1 if none), then by name.
    m = re.match(r"blk\.\s*([+-]?\d+)", name)
    return (int(m.group(1)) if m else -1, name.encode("utf-8"))


def plan_tensor_types(
    tensors: Iterable[tuple[str, Sequence[int]] | tuple[str, Sequence[int], str]],
    *,
    arch: str,
    n_layer: int,
    n_head: int,
    n_head_kv: int,
    preset: str,
    pure: bool = False,
    overrides: Iterable[str | tuple[str, str]] = (),
    output_type: str | None = None,
    token_embedding_type: str | None = None,
    has_imatrix: bool = False,
) -> list[TensorPlan]:
    """Choose the GGML type of every tensor exactly as llama-quantize does.

    Tensors are processed in llama.cpp's loader order (``weight_name_comparer``: by block number, then
    by name), because the attn_v / ffn_down rules count tensors; the result keeps the input order.

    Args:
        tensors: ``(gguf_name, numpy_shape)`` pairs, optionally with a third item, the source type of
            the tensor (default ``"F32"``), which tensors that are never quantized keep.
        arch: the GGUF architecture, one of :data:`SUPPORTED_ARCHS`.
        n_layer: ``<arch>.block_count``.
        n_head: ``<arch>.attention.head_count``.
        n_head_kv: ``<arch>.attention.head_count_kv`` (``n_gqa = n_head // n_head_kv``).
        preset: a key of :data:`PRESETS` (or an alias of :data:`PRESET_ALIASES`).
        pure: llama-quantize ``--pure``: every quantizable tensor gets the default type (but the
            width fallback, overrides, ``output_type`` and ``token_embedding_type`` still apply).
        overrides: ``"REGEX=TYPE"`` strings or ``(regex, type)`` pairs (``--tensor-type``); the first
            pattern that ``re.search``-es the name wins.  As in llama.cpp they only apply to quantized
            presets, ``token_embedding_type``/``output_type`` take precedence, and the width fallback
            still applies to the type they pick.
        output_type: ``--output-tensor-type`` (for ``output.weight``; with tied embeddings it also
            reaches ``token_embd.weight`` through the output rule).
        token_embedding_type: ``--token-embedding-type`` for ``token_embd.weight``.
        has_imatrix: an importance matrix will be used (changes ffn_down for Q4_0/Q5_0/IQ4_NL).

    Returns:
        One :class:`TensorPlan` per input tensor, in input order.

    Raises:
        UnsupportedQuantError: unknown preset or type, malformed override, an override that matches no
            quantizable tensor, overrides with an unquantized preset, or a width with no fallback.
        UnsupportedArchitectureError: ``arch`` is not one of :data:`SUPPORTED_ARCHS`.
    """
    if arch not in SUPPORTED_ARCHS:
        raise UnsupportedArchitectureError(
            f"plan_tensor_types: architecture {arch!r} is not supported; supported: {', '.join(SUPPORTED_ARCHS)}"
        )
    p = resolve_preset(preset)
    default_type = p.default_type
    parsed = [parse_override(o) for o in overrides]
    patterns = [(re.compile(pat), typ, pat) for pat, typ in parsed]
    out_t = _check_type(output_type, "output_type") if output_type is not None else None
    emb_t = _check_type(token_embedding_type, "token_embedding_type") if token_embedding_type is not None else None
    if patterns and default_type in _UNQUANTIZED:
        raise UnsupportedQuantError(
            f"tensor-type overrides are ignored by llama-quantize for the unquantized preset {p.name}; "
            "drop the overrides or pick a quantized preset"
        )

    items: list[tuple[str, tuple[int, ...], str]] = []
    for t in tensors:
        name, shape = str(t[0]), tuple(int(d) for d in t[1])
        src = str(t[2]).upper() if len(t) > 2 else "F32"  # type: ignore[misc]
        if src not in gguf.GGMLQuantizationType.__members__:
            raise UnsupportedQuantError(f"tensor {name}: unknown source type {t[2]!r}; use a GGML type name such as 'F32'")  # type: ignore[misc]
        if any(d < 0 for d in shape):
            raise UnsupportedQuantError(f"tensor {name} has a negative dimension {shape}; fix the tensor list")
        items.append((name, shape, src))

    n_gqa = n_head // n_head_kv if n_head_kv else 0  # llama_hparams::n_gqa()
    is_70b = _is_70b(arch, n_layer, n_head, n_head_kv)

    qs = _State(n_layer)
    cats = {name: _category(name) for name, _, _ in items}
    for name, _, _ in items:  # init_quantize_state_counters()
        if _is_attn_v(cats[name]):
            qs.n_attention_wv += 1
        if cats[name] == _OUTPUT:
            qs.has_tied_embeddings = False

    # quantport policy (not llama.cpp's): an override whose regex matches no quantizable tensor is an error.
    used_patterns: set[int] = set()
    results: dict[int, TensorPlan] = {}
    order = sorted(range(len(items)), key=lambda i: _sort_key(items[i][0]))
    for idx in order:
        name, shape, src = items[idx]
        ne = tuple(reversed(shape)) or (1,)
        ncols = ne[0]
        cat = cats[name]

        def done(
            type_name: str, reason: str, idx: int = idx, name: str = name, shape: tuple[int, ...] = shape,
            ncols: int = ncols,
        ) -> None:
            block, size = _block(type_name)
            if ncols % block:  # only reachable through output_type / token_embedding_type (no fallback there)
                raise UnsupportedQuantError(
                    f"tensor {name}: width {ncols} is not a multiple of the {type_name} block size {block} "
                    "(llama.cpp applies no fallback to output_type/token_embedding_type); choose another type"
                )
            n = 1
            for d in shape:
                n *= d
            results[idx] = TensorPlan(name, shape, type_name, reason, n // block * size)

        kept = _allows_quantization(name, ne)
        if kept is not None:
            done(src, f"kept {src}: {kept}")
            continue
        used_patterns.update(k for k, (rx, _, _) in enumerate(patterns) if rx.search(name))

        # --- llama_tensor_get_type() outer wrapper ---
        if emb_t is not None and cat == _TOKEN_EMBD:
            named = False
            if name == "per_layer_token_embd.weight":
                # "let an explicit --tensor-type name it"
                named = any(rx.search(name) for rx, _, _ in patterns)
            if not named:
                done(emb_t, "token_embedding_type")
                continue
        if out_t is not None and cat == _OUTPUT:
            done(out_t, "output_type")
            continue

        new_type = default_type
        reason = "default"
        if default_type not in _UNQUANTIZED:  # ggml_is_quantized(default_type)
            manual = False
            for rx, typ, pat in patterns:
                if rx.search(name):
                    new_type, reason, manual = typ, f"override '{pat}={typ}'", True
                    break
            if not manual and not pure:
                new_type, reason = _mix_rule(
                    qs, new_type, name, ncols, p.ftype, cat,
                    n_gqa=n_gqa, is_70b=is_70b, has_imatrix=has_imatrix, output_type=out_t,
                )  # fmt: skip
            elif pure and not manual:
                reason = "pure"
            new_type, fb = _fallback(name, ncols, new_type)
            if fb is not None:
                reason = f"{reason}; {fb}"
        done(new_type, reason)

    for k, (_, typ, pat) in enumerate(patterns):
        if k not in used_patterns:
            raise UnsupportedQuantError(
                f"tensor-type override '{pat}={typ}' matches no quantizable tensor; "
                "fix the regex (it is re.search-ed against GGUF names such as 'blk.0.attn_v.weight')"
            )
    return [results[i] for i in range(len(items))]
