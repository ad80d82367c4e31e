"""ONNX graphs built from an architecture's hyper-parameters and the planned weight storage,
as onnxruntime-genai's model builder builds them (``builders/base.py``: ``make_embedding``,
``make_layernorm``, ``make_attention``, ``make_mlp``, ``make_lm_head``), with ``onnx_ir``.

Decoders take ``input_ids`` ``[batch, seq]``, ``attention_mask`` ``[batch, total_seq]`` and
``past_key_values.{i}.key|value`` ``[batch, kv_heads, past_seq, head_dim]`` and give ``logits``
and ``present.{i}.key|value``: one graph for prefill and step-by-step decoding, the names
onnxruntime-genai and optimum use. Attention is ``com.microsoft`` ``GroupQueryAttention`` with
the rotary embedding inside it (``do_rotary=1``) and ``seqlens_k`` / ``total_sequence_length``
computed from ``attention_mask`` (the builder's ``make_attention_mask_reformatting_for_gqa``;
so batched prompts are padded on the right, as onnxruntime-genai pads them);
norms are ``SimplifiedLayerNormalization`` then ``SkipSimplifiedLayerNormalization`` carrying
the residual sum. Encoders (BERT) use standard ONNX ops only.

Decoder families (:data:`_FAMILIES`, after the builder's ``builders/*.py`` classes), each
checked against transformers' logits: llama; Mistral and Phi-3 (``sliding_window`` on every
layer as GroupQueryAttention ``local_window_size``; Phi-3's fused ``qkv_proj`` and
``gate_up_proj``, one MatMul each, and partial rotary); Qwen2/2.5 (q/k/v biases, sliding
layers from ``layer_types``); Qwen3 (per-head q/k RMS norms before the rotary embedding,
``Qwen3Model``); Gemma 3 text (``Gemma3Model``: ``1 + weight`` norms, four a layer, q/k
norms, embeddings times ``sqrt(hidden_size)``, tanh GELU, ``query_pre_attn_scalar``, local
layers with their own window and RoPE base, final logit soft-capping).

Weights are initializers whose data lies in the external file at offsets the writer's plan
fixed (:class:`onnx_ir.ExternalTensor`), so the graph is complete before any weight is
computed. This module imports numpy and, on the first graph it builds, onnx_ir.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from quantport.errors import ConfigError, UnsupportedArchitectureError
from quantport.formats.onnx_pack import Storage

__all__ = ["BUILDERS", "GraphOptions", "build_model", "rope_caches"]

if TYPE_CHECKING:
    import onnx_ir as ir
    from onnx_ir import tape as ir_tape
else:
    # onnx_ir (with onnx, ml_dtypes and sympy behind it) takes about a second to import, and
    # every conversion imports this module through the writer table: it is bound by
    # _import_ir() when the first graph is built, so only ONNX conversions pay for it
    ir = ir_tape = None

OPSET = 21  # DequantizeLinear with block_size (ONNX opset 21)
#: the smallest per-token absolute maximum W8A8 divides by (``_Builder._quantize_tokens``)
TOKEN_FLOOR = 1e-30
_DTYPES: dict[str, Any] = {}  # storage dtype name -> ir.DataType (filled by _import_ir)
_MS = "com.microsoft"


def _import_ir() -> None:
    global ir, ir_tape
    if ir is not None:
        return
    import onnx_ir
    from onnx_ir import tape

    ir, ir_tape = onnx_ir, tape
    _DTYPES.update({"float32": ir.DataType.FLOAT, "float16": ir.DataType.FLOAT16,
                    "bfloat16": ir.DataType.BFLOAT16, "int8": ir.DataType.INT8,
                    "uint8": ir.DataType.UINT8, "int4": ir.DataType.INT4,
                    "uint4": ir.DataType.UINT4})


@dataclass(frozen=True)
class GraphOptions:
    """Choices that shape the graph but not the weights.

    Attributes:
        accuracy_level: ``MatMulNBits`` ``accuracy_level`` (0 unset, 1 fp32, 2 fp16, 3 bf16,
            4 int8 activations; ORT's CPU kernel is fastest at 4).
        data_file: the external data file's name, next to ``model.onnx``.
        act_quant: ``"w8a8"``: quantized Linear weights run as int8 GEMMs on dynamically
            quantized activations.
        act_scheme: how W8A8 quantizes an activation: ``"tensor"``, one uint8 scale and zero
            point for the whole tensor (``DynamicQuantizeLinear`` -> ``MatMulInteger``,
            what ORT's ``quantize_dynamic`` writes); ``"token"``, one symmetric scale per
            token (row), as compressed-tensors' W8A8 and SmoothQuant's O1 scheme.
    """

    accuracy_level: int = 4
    data_file: str = "model.onnx.data"
    act_quant: str | None = None
    act_scheme: str = "tensor"


class _Builder:
    """A tape of nodes plus the weights, by Hugging Face name."""

    def __init__(self, storages: Mapping[str, Storage], offsets: Mapping[str, int],
                 opts: GraphOptions) -> None:
        _import_ir()  # every graph builder works through a _Builder
        self.tape = ir_tape.Tape()
        self.storages = storages
        self.offsets = offsets
        self.opts = opts
        self._inits: dict[str, ir.Value] = {}
        self._consts: dict[str, ir.Value] = {}
        # per-token quantized activations, by the float value they quantize (q, k and v read
        # one input: it is quantized once)
        self._token_quant: dict[ir.Value, tuple[ir.Value, ir.Value]] = {}
        self.n = 0

    # -------------------------------------------------------------------- values and nodes
    def op(self, op_type: str, inputs: list[ir.Value | None], attrs: dict[str, Any] | None = None,
           *, domain: str = "", name: str = "", outputs: int = 1) -> Any:
        self.n += 1
        node_name = f"{name or op_type}_{self.n}"
        if outputs == 1:
            return self.tape.op(op_type, inputs, attrs, domain=domain, name=node_name)
        return self.tape.op_multi_out(op_type, inputs, attrs, domain=domain, name=node_name,
                                      num_outputs=outputs)

    def init(self, name: str) -> ir.Value:
        """The initializer ``name`` (one of the planned storages' inits), created once."""
        if name not in self._inits:
            spec = next(i for s in self.storages.values() for i in s.inits if i.name == name)
            t = ir.ExternalTensor(self.opts.data_file, self.offsets[name], spec.nbytes,
                                  _DTYPES[spec.dtype], shape=ir.Shape(spec.shape), name=name)
            v = ir.Value(name=name, shape=ir.Shape(spec.shape), type=ir.TensorType(t.dtype),
                         const_value=t)
            self._inits[name] = v
        return self._inits[name]

    def const(self, value: np.ndarray, name: str | None = None) -> ir.Value:
        """A small constant computed here (shapes, axes, rotary tables), stored inline."""
        arr = np.asarray(value)
        key = name or f"const/{arr.dtype}/{arr.shape}/{arr.tobytes().hex()[:64]}"
        if key not in self._consts:
            t = ir.tensor(arr, name=name or f"const_{len(self._consts)}")
            v = ir.Value(name=t.name, shape=ir.Shape(arr.shape), type=ir.TensorType(t.dtype),
                         const_value=t)
            self._consts[key] = v
        return self._consts[key]

    def has(self, name: str) -> bool:
        return name in self.storages

    def as_float(self, v: ir.Value, dtype: str) -> ir.Value:
        if dtype == "float32":
            return v
        return self.op("Cast", [v], {"to": ir.DataType.FLOAT})

    def dense(self, name: str) -> ir.Value:
        """A float weight as float32 (f16/bf16 storage cast on load; ORT folds the Cast)."""
        st = self.storages[name]
        return self.as_float(self.init(st.inits[0].name), st.inits[0].dtype)

    # -------------------------------------------------------------------------- blocks
    def linear(self, x: ir.Value, name: str, bias: str | None = None) -> ir.Value:
        """``x @ W.T (+ b)`` for Hugging Face Linear weight ``name``, as its storage says."""
        st = self.storages[name]
        smooth = name.removesuffix(".weight") + ".input_smooth"
        if self.has(smooth):  # SmoothQuant's unfolded scale (pipeline.transforms)
            x = self.op("Mul", [x, self.dense(smooth)])
        if st.kind == "dense":
            y = self.op("MatMul", [x, self.dense(name)], name=name)
        elif st.kind == "qdq" and self.opts.act_quant == "w8a8":
            y = self._w8a8(x, st)
        elif st.kind == "qdq":
            q, s, z = (self.init(i.name) for i in st.inits)
            attrs: dict[str, Any] = {}
            if st.axis == 0:
                attrs = {"axis": 0, "block_size": st.block_size}
            elif st.axis == 1:
                attrs = {"axis": 1}
            w = self.op("DequantizeLinear", [q, s, z], attrs, name=name + "_dq")
            y = self.op("MatMul", [x, w], name=name)
        elif st.extra.get("fmin"):
            # float-domain minimums: y = x @ ((q - 0) * s).T - blocksum(x) @ z (onnx_pack)
            q, s, z, mins = (self.init(i.name) for i in st.inits)
            y = self.op("MatMulNBits", [x, q, s, z],
                        {"K": st.shape[1], "N": st.shape[0], "bits": st.bits,
                         "block_size": st.block_size,
                         "accuracy_level": self.opts.accuracy_level},
                        domain=_MS, name=name)
            kb = st.shape[1] // st.block_size
            xb = self.op("Reshape", [x, self.const(np.array([0, 0, kb, st.block_size], np.int64))])
            sums = self.op("ReduceSum", [xb, self.const(np.array([-1], np.int64))],
                           {"keepdims": 0})
            y = self.op("Sub", [y, self.op("MatMul", [sums, mins])], name=name + "_min")
        else:
            y = self.op("MatMulNBits", [x, *(self.init(i.name) for i in st.inits)],
                        {"K": st.shape[1], "N": st.shape[0], "bits": st.bits,
                         "block_size": st.block_size,
                         "accuracy_level": self.opts.accuracy_level},
                        domain=_MS, name=name)
        if bias is not None and self.has(bias):
            y = self.op("Add", [y, self.dense(bias)])
        return y

    def _w8a8(self, x: ir.Value, st: Storage) -> ir.Value:
        q, s, z = (self.init(i.name) for i in st.inits)
        # MLAS multiplies uint8 by int8 with VPMADDUBSW on x86 CPUs without VNNI, whose int16
        # pair sums saturate (ORT's quantization docs, "saturation"; here, AVX2 only: a
        # 576 x 960 product off by 16% of its range) unless the weights fit 7 bits
        # (2 * 255 * 64 < 2**15: ORT's reduce_range, what --quant w8a8 writes). Codes of 8
        # bits go in + 128, as uint8, to its exact but slower U8U8 kernel: the product is the
        # same, (x - xz)(q + 128 - (z + 128)), and ORT folds the conversion of the
        # initializers when it loads the graph.
        if st.bits > 7:
            q, z = self._to_u8(q), self._to_u8(z)
        if self.opts.act_scheme == "token":
            # the integer product scaled by the weights' per-channel scales in one
            # com.microsoft MatMulIntegerToFloat (its a_scale is per tensor, so 1 here), then
            # by each token's scale
            if x not in self._token_quant:
                self._token_quant[x] = self._quantize_tokens(x)
            xq, xs = self._token_quant[x]
            y = self.op("MatMulIntegerToFloat",
                        [xq, q, self.const(np.array(1.0, np.float32)), s,
                         self.const(np.array(128, np.uint8)), z], domain=_MS)
            return self.op("Mul", [y, xs], name=st.name)
        # quantize_dynamic's MatMul pattern (onnxruntime/quantization/operators/matmul.py):
        # DynamicQuantizeLinear -> MatMulInteger -> Cast -> Mul(x_scale * w_scale), which ORT's
        # MatMulIntegerToFloatFusion + DynamicQuantizeMatMulFusion turn into one
        # com.microsoft DynamicQuantizeMatMul at the extended level
        xq, xs, xz = self.op("DynamicQuantizeLinear", [x], outputs=3)
        acc = self.op("MatMulInteger", [xq, q, xz, z])
        f = self.op("Cast", [acc], {"to": ir.DataType.FLOAT})
        scale = self.op("Mul", [xs, s])
        return self.op("Mul", [f, scale], name=st.name)

    def _quantize_tokens(self, x: ir.Value) -> tuple[ir.Value, ir.Value]:
        """``x`` quantized per token (its last axis), symmetric: ``q = round(x * 127 / m)``
        with ``m = max |x|`` of the token, stored + 128 as uint8 (x86's fast uint8 x int8
        kernel: 2 * 255 * 64 < 2**15 with the 7-bit weight codes, so no saturation).

        Returns:
            (the uint8 codes, each token's scale ``m / 127`` with a trailing axis of 1).
            ``validate.runner.token_quantize`` is the reference of this arithmetic.
        """
        axis = self.const(np.array([-1], np.int64))
        m = self.op("ReduceMax", [self.op("Abs", [x]), axis], {"keepdims": 1})
        # an all-zero token: any scale gives codes 0; the floor keeps 127 / m finite
        m = self.op("Max", [m, self.const(np.array(TOKEN_FLOOR, np.float32))])
        inv = self.op("Div", [self.const(np.array(127.0, np.float32)), m])
        # QuantizeLinear rounds half to even and saturates to 0..255 (ONNX spec)
        xq = self.op("QuantizeLinear", [self.op("Mul", [x, inv]),
                                        self.const(np.array(1.0, np.float32)),
                                        self.const(np.array(128, np.uint8))])
        return xq, self.op("Mul", [m, self.const(np.array(1 / 127, np.float32))])

    def _to_u8(self, v: ir.Value) -> ir.Value:
        """int8 ``v`` + 128 as uint8 (exact: -128..127 -> 0..255)."""
        w = self.op("Cast", [v], {"to": ir.DataType.INT16})
        w = self.op("Add", [w, self.const(np.array(128, np.int16))])
        return self.op("Cast", [w], {"to": ir.DataType.UINT8})

    def embedding(self, ids: ir.Value, name: str) -> ir.Value:
        """Rows of a token table: Gather, or GatherBlockQuantized of the packed table."""
        st = self.storages[name]
        if st.kind == "dense":
            return self.as_float(self.op("Gather", [self.init(st.inits[0].name), ids]),
                                 st.inits[0].dtype)
        rows, cols = st.shape
        q = self.op("Reshape", [self.init(st.inits[0].name),
                                self.const(np.array([rows, cols * st.bits // 8], np.int64))])
        inputs = [q, ids, self.init(st.inits[1].name)]
        if len(st.inits) > 2:
            inputs.append(self.init(st.inits[2].name))
        return self.op("GatherBlockQuantized", inputs,
                       {"bits": st.bits, "block_size": st.block_size, "gather_axis": 0,
                        "quantize_axis": 1}, domain=_MS, name=name)

    def head(self, x: ir.Value, name: str) -> ir.Value:
        """Logits: ``x @ W.T`` for the LM head, or for the tied token table."""
        st = self.storages[name]
        if st.kind == "dense" and not st.transposed:  # the tied table, stored [vocab, hidden]
            w = self.op("Transpose", [self.dense(name)], {"perm": [1, 0]})
            return self.op("MatMul", [x, w], name="lm_head")
        return self.linear(x, name)

    def norm_weight(self, weight: str, offset: float = 0.0) -> ir.Value:
        """An RMS norm's scale: the stored weight, plus ``offset`` for Gemma's ``1 + weight``
        (added in the graph, so the file holds the Hugging Face value; ORT folds the Add)."""
        w = self.dense(weight)
        if offset:
            w = self.op("Add", [w, self.const(np.array(offset, np.float32))],
                        name=weight + "_offset")
        return w

    def rms_norm(self, x: ir.Value, weight: str, eps: float, offset: float = 0.0) -> ir.Value:
        return self.op("SimplifiedLayerNormalization", [x, self.norm_weight(weight, offset)],
                       {"epsilon": eps, "axis": -1, "stash_type": 1}, name=weight)

    def skip_rms_norm(self, x: ir.Value, skip: ir.Value, weight: str, eps: float,
                      offset: float = 0.0) -> tuple[ir.Value, ir.Value]:
        """(normalized ``x + skip``, ``x + skip``): the builder's SkipSimplifiedLayerNormalization."""
        out = self.op("SkipSimplifiedLayerNormalization",
                      [x, skip, self.norm_weight(weight, offset)],
                      {"epsilon": eps}, domain=_MS, name=weight, outputs=4)
        return out[0], out[3]

    def head_norm(self, x: ir.Value, weight: str, head_dim: int, n_heads: int, eps: float,
                  offset: float = 0.0) -> ir.Value:
        """RMS norm over each head of ``x`` ``[batch, seq, n_heads * head_dim]`` (the builder's
        ``make_qk_norm``: reshape to ``[batch, seq * n_heads, head_dim]``, normalize, reshape
        back)."""
        h = self.op("Reshape", [x, self.const(np.array([0, -1, head_dim], np.int64))])
        h = self.rms_norm(h, weight, eps, offset)
        return self.op("Reshape", [h, self.const(np.array([0, -1, n_heads * head_dim],
                                                          np.int64))])

    def layer_norm(self, x: ir.Value, prefix: str, eps: float) -> ir.Value:
        return self.op("LayerNormalization",
                       [x, self.dense(prefix + ".weight"), self.dense(prefix + ".bias")],
                       {"epsilon": eps, "axis": -1}, name=prefix)


# --------------------------------------------------------------------------------- rotary

def rope_caches(cfg: Mapping[str, Any], head_dim: int) -> tuple[np.ndarray, np.ndarray]:
    """``cos_cache`` and ``sin_cache`` ``[max_positions, rotary_dim // 2]`` as transformers'
    ``LlamaRotaryEmbedding`` computes them (float32; ``rope_scaling`` types ``default``,
    ``linear``, ``llama3`` and ``yarn`` as ``modeling_rope_utils``). ``rotary_dim`` is
    ``int(head_dim * partial_rotary_factor)`` (``_compute_default_rope_parameters``);
    GroupQueryAttention rotates the first ``2 * cos_cache.shape[1]`` dimensions of each head.

    Raises:
        UnsupportedArchitectureError: another rope scaling type.
    """
    rp = cfg.get("rope_parameters") or {}
    theta = float(cfg.get("rope_theta") or rp.get("rope_theta") or 10000.0)
    scaling = cfg.get("rope_scaling") or ({k: v for k, v in rp.items()
                                           if k not in ("rope_theta", "partial_rotary_factor")}
                                          if rp else None)
    partial = rp.get("partial_rotary_factor", cfg.get("partial_rotary_factor")) or 1.0
    dim = int(head_dim * float(partial))
    inv = (1.0 / (theta ** (np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / dim))
           ).astype(np.float32)
    kind = (scaling or {}).get("rope_type") or (scaling or {}).get("type") or "default"
    if kind == "linear":
        inv = (inv / np.float32(scaling["factor"])).astype(np.float32)
    elif kind == "llama3":
        # modeling_rope_utils._compute_llama3_parameters
        factor = float(scaling["factor"])
        lo, hi = float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
        old = float(scaling["original_max_position_embeddings"])
        low_wl, high_wl = old / lo, old / hi
        wl = 2 * math.pi / inv
        scaled = np.where(wl > low_wl, inv / factor, inv)
        smooth = (old / wl - lo) / (hi - lo)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wl < high_wl) & ~(wl > low_wl)
        inv = np.where(medium, smoothed, scaled).astype(np.float32)
    elif kind == "yarn":
        inv, attention = _yarn(cfg, scaling, theta, dim)
    elif kind != "default":
        raise UnsupportedArchitectureError(
            f"rope_scaling type {kind!r} is not supported by the ONNX writer; supported: "
            "default, linear, llama3, yarn"
        )
    n = int(cfg.get("max_position_embeddings") or 4096)
    freqs = np.arange(n, dtype=np.float32)[:, None] * inv[None, :]
    cos, sin = np.cos(freqs).astype(np.float32), np.sin(freqs).astype(np.float32)
    if kind == "yarn":
        # the rotary embedding's attention_scaling multiplies cos and sin (q.k scaled by its
        # square), as LlamaRotaryEmbedding.forward does
        cos, sin = (cos * attention).astype(np.float32), (sin * attention).astype(np.float32)
    return cos, sin


def _yarn(cfg: Mapping[str, Any], sc: Mapping[str, Any], theta: float,
          dim: int) -> tuple[np.ndarray, float]:
    """Inverse frequencies and attention factor of YaRN, as
    ``modeling_rope_utils._compute_yarn_parameters`` (float32 as torch computes them)."""
    old = float(sc.get("original_max_position_embeddings")
                or cfg.get("original_max_position_embeddings") or 0)
    if not old:
        raise ConfigError("config.json: yarn rope scaling without "
                          "original_max_position_embeddings; set it")
    factor = sc.get("factor")
    factor = float(factor) if factor is not None else \
        float(cfg["max_position_embeddings"]) / old

    def mscale(scale: float, m: float = 1.0) -> float:
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    attention = sc.get("attention_factor")
    if attention is None:
        if sc.get("mscale") and sc.get("mscale_all_dim"):
            attention = mscale(factor, float(sc["mscale"])) / \
                mscale(factor, float(sc["mscale_all_dim"]))
        else:
            attention = mscale(factor)
    beta_fast = float(sc.get("beta_fast") or 32)
    beta_slow = float(sc.get("beta_slow") or 1)

    def correction_dim(rotations: float) -> float:
        return (dim * math.log(old / (rotations * 2 * math.pi))) / (2 * math.log(theta))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if sc.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001  # "Prevent singularity"
    ramp = np.clip((np.arange(dim // 2, dtype=np.float32) - np.float32(low))
                   / np.float32(high - low), 0, 1).astype(np.float32)
    extrapolation = (1 - ramp).astype(np.float32)
    pos = (theta ** (np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / dim)
           ).astype(np.float32)
    inv = (1.0 / (np.float32(factor) * pos)) * (1 - extrapolation) + (1.0 / pos) * extrapolation
    return inv.astype(np.float32), float(attention)


# --------------------------------------------------------------------------- architectures

def _dims(cfg: Mapping[str, Any]) -> tuple[int, int, int, int, int]:
    try:
        hidden = int(cfg["hidden_size"])
        heads = int(cfg["num_attention_heads"])
        layers = int(cfg["num_hidden_layers"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"config.json: {exc} missing or invalid; the ONNX graph needs "
                          "hidden_size, num_attention_heads, num_hidden_layers") from None
    kv = int(cfg.get("num_key_value_heads") or heads)
    hd = int(cfg.get("head_dim") or hidden // heads)
    return hidden, heads, kv, hd, layers


@dataclass(frozen=True)
class _Family:
    """What a decoder family changes against llama (onnxruntime-genai's builder classes).

    Attributes:
        qk_norm: per-head RMS norms of q and k before the rotary embedding (``q_norm`` /
            ``k_norm``: the builder's ``make_qk_norm``, Qwen3 and Gemma 3).
        norm_offset: added to every RMS norm weight in the graph (Gemma's ``1 + weight``:
            the builder's ``layernorm_attrs["add_offset"]``).
        sandwich: post-attention and post-feed-forward norms on the branch outputs before
            the residual sum (``Gemma2Model.make_layer``).
        embed_scale: the token embedding is scaled by ``sqrt(hidden_size)``.
        acts: the ``hidden_act`` / ``hidden_activation`` values its MLP is built for.
        windows: how the sliding-window layers are chosen (see :func:`_windows`).
    """

    qk_norm: bool = False
    norm_offset: float = 0.0
    sandwich: bool = False
    embed_scale: bool = False
    acts: tuple[str, ...] = ("silu",)
    windows: str = "none"


_FAMILIES = {
    "llama": _Family(),
    # MistralForCausalLM / Phi3ForCausalLM: sliding_window, when set, on every layer
    # (modeling_mistral / modeling_phi3: create_sliding_window_causal_mask)
    "mistral": _Family(windows="all"),
    "phi3": _Family(windows="all"),
    # Qwen2Config / Qwen3Config: layer_types (sliding from max_window_layers on, and only with
    # use_sliding_window)
    "qwen2": _Family(windows="qwen"),
    "qwen3": _Family(qk_norm=True, windows="qwen"),
    # Gemma3TextModel: four norms a layer, (1 + w) norms, scaled embedding, gelu (tanh)
    "gemma3": _Family(qk_norm=True, norm_offset=1.0, sandwich=True, embed_scale=True,
                      acts=("gelu_pytorch_tanh", "gelu"), windows="gemma3"),
}


def _windows(arch: str, cfg: Mapping[str, Any], n_layers: int) -> list[int]:
    """Per layer, the number of tokens a query attends to (its own included) as transformers'
    masks compute them (``sliding_window_overlay``: ``q - window < kv <= q``), 0 for all."""
    fam = _FAMILIES[arch]
    window = cfg.get("sliding_window")
    types = cfg.get("layer_types")
    if fam.windows == "none":
        return [0] * n_layers
    if fam.windows == "all":
        # MistralModel ignores layer_types; the window applies to every layer
        return [int(window) if window else 0] * n_layers
    if fam.windows == "qwen":
        if not cfg.get("use_sliding_window"):
            return [0] * n_layers  # Qwen2Config sets sliding_window None without it
        if types is None:
            first = int(cfg.get("max_window_layers") or 0)
            types = ["sliding_attention" if i >= first else "full_attention"
                     for i in range(n_layers)]
    elif types is None:  # gemma3: Gemma3TextConfig's default pattern, every 6th layer global
        pattern = int(cfg.get("sliding_window_pattern") or cfg.get("_sliding_window_pattern")
                      or 6)
        types = ["sliding_attention" if (i + 1) % pattern else "full_attention"
                 for i in range(n_layers)]
    other = sorted(set(types) - {"sliding_attention", "full_attention"})
    if len(types) != n_layers or other:
        what = f"has {', '.join(map(repr, other))}" if other else \
            f"lists {len(types)} layers, not {n_layers}"
        raise UnsupportedArchitectureError(
            f"config.json: {arch} layer_types {what}; the ONNX writer builds one of "
            "sliding_attention / full_attention per layer"
        )
    if "sliding_attention" in types and not window:
        raise ConfigError(f"config.json: {arch} has sliding_attention layers but no "
                          "sliding_window; set it")
    return [int(window) if t == "sliding_attention" else 0 for t in types]


def _rope_config(arch: str, cfg: Mapping[str, Any], sliding: bool) -> dict[str, Any]:
    """The rotary settings of a layer, as a config mapping :func:`rope_caches` reads: Gemma 3's
    local layers have their own base (``rope_parameters["sliding_attention"]``, or
    ``rope_local_base_freq`` in configs written before transformers 5) and no scaling."""
    n = cfg.get("max_position_embeddings")
    partial = cfg.get("partial_rotary_factor")
    if arch != "gemma3":
        return dict(cfg)
    rp = cfg.get("rope_parameters") or {}
    if "full_attention" in rp or "sliding_attention" in rp:
        params = dict(rp.get("sliding_attention" if sliding else "full_attention") or {})
        return {"rope_parameters": params, "max_position_embeddings": n,
                "partial_rotary_factor": partial}
    if sliding:
        return {"rope_theta": float(cfg.get("rope_local_base_freq") or 10000.0),
                "max_position_embeddings": n}
    return {k: cfg.get(k) for k in ("rope_theta", "rope_scaling", "rope_parameters",
                                    "max_position_embeddings")}


def _decoder(b: _Builder, cfg: Mapping[str, Any], arch: str) -> tuple[list[ir.Value], list[ir.Value]]:
    """A decoder as the genai builder's ``Model.make_model`` lays it out, with what
    :data:`_FAMILIES` says ``arch`` changes."""
    fam = _FAMILIES[arch]
    hidden, heads, kv, hd, n_layers = _dims(cfg)
    eps = float(cfg.get("rms_norm_eps") or 1e-6)
    act = cfg.get("hidden_activation") or cfg.get("hidden_act") or fam.acts[0]
    if act not in fam.acts:
        raise UnsupportedArchitectureError(
            f"{arch} with hidden_act {act!r}: the ONNX writer builds {', '.join(fam.acts)} MLPs"
        )
    if cfg.get("use_bidirectional_attention"):
        # EmbeddingGemma-style configs: every token attends to every other one
        raise UnsupportedArchitectureError(
            f"{arch} with use_bidirectional_attention: the ONNX writer builds causal decoders; "
            "supported: false"
        )
    if cfg.get("attn_logit_softcapping"):
        raise UnsupportedArchitectureError(
            f"{arch} with attn_logit_softcapping: the ONNX writer builds attention without "
            "logit soft-capping; supported: null"
        )
    f32, i64 = ir.TensorType(ir.DataType.FLOAT), ir.TensorType(ir.DataType.INT64)
    ids = ir.Value(name="input_ids", type=i64, shape=ir.Shape(["batch_size", "sequence_length"]))
    mask = ir.Value(name="attention_mask", type=i64,
                    shape=ir.Shape(["batch_size", "total_sequence_length"]))
    inputs, outputs = [ids, mask], []
    past = []
    for i in range(n_layers):
        for kind in ("key", "value"):
            v = ir.Value(name=f"past_key_values.{i}.{kind}", type=f32,
                         shape=ir.Shape(["batch_size", kv, "past_sequence_length", hd]))
            inputs.append(v)
            past.append(v)
    # seqlens_k = sum(mask) - 1, total_sequence_length = mask.shape[1], both int32
    # (make_attention_mask_reformatting_for_gqa)
    one = b.const(np.array([1], np.int64))
    seqlens = b.op("Cast", [b.op("Sub", [b.op("ReduceSum", [mask, one], {"keepdims": 0}), one])],
                   {"to": ir.DataType.INT32}, name="seqlens_k")
    total = b.op("Cast", [b.op("Gather", [b.op("Shape", [mask]), b.const(np.array(1, np.int64))],
                               {"axis": 0})], {"to": ir.DataType.INT32}, name="total_seq_len")
    windows = _windows(arch, cfg, n_layers)
    caches: dict[bool, tuple[ir.Value, ir.Value]] = {}
    for sliding in sorted({w > 0 and arch == "gemma3" for w in windows}):
        # Gemma3Model.make_rotary_embedding_multi_cache: global and local caches
        cos, sin = rope_caches(_rope_config(arch, cfg, sliding), hd)
        if cos.shape[1] != hd // 2 and cos.shape[1] % 8:
            # GroupQueryAttention's check: cos_cache dimension 1 <= head_size / 2, multiple of 8
            raise UnsupportedArchitectureError(
                f"{arch} with partial_rotary_factor rotating {2 * cos.shape[1]} of {hd} head "
                "dimensions: GroupQueryAttention rotates the whole head or a multiple of 16 "
                "dimensions; supported: those"
            )
        tag = ("_local" if sliding else "_global") if arch == "gemma3" else ""
        caches[sliding] = (b.const(cos, "cos_cache" + tag), b.const(sin, "sin_cache" + tag))
    # Gemma: query_pre_attn_scalar ** -0.5 (Gemma2Model: attention_attrs["scale"])
    scale = float(cfg["query_pre_attn_scalar"]) ** -0.5 if arch == "gemma3" and \
        cfg.get("query_pre_attn_scalar") else 1.0 / math.sqrt(hd)
    off = fam.norm_offset

    def norm(x: ir.Value, w: str) -> ir.Value:
        return b.rms_norm(x, w, eps, off)

    def skip_norm(x: ir.Value, skip: ir.Value, w: str) -> tuple[ir.Value, ir.Value]:
        return b.skip_rms_norm(x, skip, w, eps, off)

    embed = "model.embed_tokens.weight"
    x = b.embedding(ids, embed)
    if fam.embed_scale:
        # Gemma3TextScaledWordEmbedding: embeddings * sqrt(hidden_size) in float32 (the genai
        # builder rounds the factor to 2 decimals; transformers does not, and validation
        # compares with transformers)
        x = b.op("Mul", [x, b.const(np.array(math.sqrt(hidden), np.float32))],
                 name="embed_scale")
    residual = x
    normed = norm(x, "model.layers.0.input_layernorm.weight")
    for i in range(n_layers):
        p = f"model.layers.{i}."
        a = p + "self_attn."
        if b.has(a + "qkv_proj.weight"):  # one MatMul, GroupQueryAttention's packed input
            q, k, v = b.linear(normed, a + "qkv_proj.weight", a + "qkv_proj.bias"), None, None
            if fam.qk_norm:
                # per-head norms need q and k apart (make_attention_unpacked's Split)
                q, k, v = b.op("Split", [q, b.const(np.array([heads * hd, kv * hd, kv * hd],
                                                             np.int64))],
                               {"axis": -1}, name=a + "qkv_split", outputs=3)
        else:
            q = b.linear(normed, a + "q_proj.weight", a + "q_proj.bias")
            k = b.linear(normed, a + "k_proj.weight", a + "k_proj.bias")
            v = b.linear(normed, a + "v_proj.weight", a + "v_proj.bias")
        if fam.qk_norm:
            q = b.head_norm(q, a + "q_norm.weight", hd, heads, eps, off)
            k = b.head_norm(k, a + "k_norm.weight", hd, kv, eps, off)
        present_k = ir.Value(name=f"present.{i}.key", type=f32,
                             shape=ir.Shape(["batch_size", kv, "total_sequence_length", hd]))
        present_v = ir.Value(name=f"present.{i}.value", type=f32,
                             shape=ir.Shape(["batch_size", kv, "total_sequence_length", hd]))
        attn = ir.Value(name=f"{a}attn_output")
        cos_v, sin_v = caches[windows[i] > 0 and arch == "gemma3"]
        b.n += 1
        b.tape.op_multi_out(
            "GroupQueryAttention",
            [q, k, v, past[2 * i], past[2 * i + 1], seqlens, total, cos_v, sin_v],
            {"num_heads": heads, "kv_num_heads": kv, "scale": scale,
             # local_window_size counts the query's own token, as transformers' sliding_window
             # (the genai builder passes config.sliding_window as it is; the tiny Gemma 3 test
             # with window 8 matches transformers past the window only with it so)
             "local_window_size": windows[i] if windows[i] else -1,
             "do_rotary": 1, "rotary_interleaved": 0},
            domain=_MS, name=f"{a}GroupQueryAttention", outputs=[attn, present_k, present_v])
        outputs += [present_k, present_v]
        o = b.linear(attn, a + "o_proj.weight", a + "o_proj.bias")
        if fam.sandwich:
            o = norm(o, p + "post_attention_layernorm.weight")
            normed, residual = skip_norm(residual, o, p + "pre_feedforward_layernorm.weight")
        else:
            normed, residual = skip_norm(residual, o, p + "post_attention_layernorm.weight")
        m = p + "mlp."
        if b.has(m + "gate_up_proj.weight"):
            # Phi3MLP: one MatMul, then gate, up = chunk(2, dim=-1)
            gate, up = b.op("Split", [b.linear(normed, m + "gate_up_proj.weight")],
                            {"axis": -1, "num_outputs": 2}, name=m + "gate_up_split",
                            outputs=2)
        else:
            gate = b.linear(normed, m + "gate_proj.weight")
            up = b.linear(normed, m + "up_proj.weight")
        if act == "silu":
            h = b.op("Mul", [gate, b.op("Sigmoid", [gate])], name=m + "act_fn")
        elif act == "gelu_pytorch_tanh":
            h = b.op("Gelu", [gate], {"approximate": "tanh"}, name=m + "act_fn")
        else:  # gelu: exact
            h = b.op("Gelu", [gate], name=m + "act_fn")
        down = b.linear(b.op("Mul", [h, up]), m + "down_proj.weight")
        if fam.sandwich:
            down = norm(down, p + "post_feedforward_layernorm.weight")
        nxt = f"model.layers.{i + 1}.input_layernorm.weight" if i + 1 < n_layers else \
            "model.norm.weight"
        normed, residual = skip_norm(residual, down, nxt)
    head = "lm_head.weight" if b.has("lm_head.weight") else embed
    logits = b.head(normed, head)
    cap = cfg.get("final_logit_softcapping")
    if cap:
        # Gemma3ForCausalLM: logits = tanh(logits / cap) * cap
        c = b.const(np.array(float(cap), np.float32))
        logits = b.op("Mul", [b.op("Tanh", [b.op("Div", [logits, c])]), c], name="softcap")
    logits.name = "logits"
    logits.type = f32
    logits.shape = ir.Shape(["batch_size", "sequence_length", int(cfg.get("vocab_size") or
                                                                  b.storages[head].shape[0])])
    return inputs, [logits, *outputs]


def _family(arch: str) -> Callable[[_Builder, Mapping[str, Any]],
                                   tuple[list[ir.Value], list[ir.Value]]]:
    def build(b: _Builder, cfg: Mapping[str, Any]) -> tuple[list[ir.Value], list[ir.Value]]:
        return _decoder(b, cfg, arch)

    build.__name__ = f"_{arch}"
    return build


_llama = _family("llama")


def _bert(b: _Builder, cfg: Mapping[str, Any]) -> tuple[list[ir.Value], list[ir.Value]]:
    hidden, heads, _, hd, n_layers = _dims(cfg)
    eps = float(cfg.get("layer_norm_eps") or 1e-12)
    if cfg.get("hidden_act", "gelu") != "gelu":
        raise UnsupportedArchitectureError(
            f"bert with hidden_act {cfg.get('hidden_act')!r}: the ONNX writer builds gelu MLPs"
        )
    pre = "bert." if b.has("bert.embeddings.word_embeddings.weight") else ""
    i64, f32 = ir.TensorType(ir.DataType.INT64), ir.TensorType(ir.DataType.FLOAT)
    bs = ["batch_size", "sequence_length"]
    ids = ir.Value(name="input_ids", type=i64, shape=ir.Shape(bs))
    mask = ir.Value(name="attention_mask", type=i64, shape=ir.Shape(bs))
    types = ir.Value(name="token_type_ids", type=i64, shape=ir.Shape(bs))
    e = pre + "embeddings."
    seq = b.op("Gather", [b.op("Shape", [ids]), b.const(np.array(1, np.int64))], {"axis": 0})
    pos = b.op("Range", [b.const(np.array(0, np.int64)), seq, b.const(np.array(1, np.int64))])
    x = b.op("Add", [b.embedding(ids, e + "word_embeddings.weight"),
                     b.embedding(pos, e + "position_embeddings.weight")])
    x = b.op("Add", [x, b.embedding(types, e + "token_type_embeddings.weight")])
    x = b.layer_norm(x, e + "LayerNorm", eps)
    maskf = b.op("Cast", [mask], {"to": ir.DataType.FLOAT})
    # com.microsoft MultiHeadAttention with a [batch, seq] key padding mask: softmax over the
    # attended keys only, scale 1/sqrt(head_dim), as BertSelfAttention (one fused kernel where
    # the standard-op subgraph runs as ~10 nodes per layer)
    mask32 = b.op("Cast", [mask], {"to": ir.DataType.INT32})
    for i in range(n_layers):
        p = f"{pre}encoder.layer.{i}."
        s = p + "attention.self."
        q = b.linear(x, s + "query.weight", s + "query.bias")
        k = b.linear(x, s + "key.weight", s + "key.bias")
        v = b.linear(x, s + "value.weight", s + "value.bias")
        ctx = b.op("MultiHeadAttention", [q, k, v, None, mask32],
                   {"num_heads": heads, "scale": 1.0 / math.sqrt(hd)}, domain=_MS,
                   name=s + "MultiHeadAttention")
        o = b.linear(ctx, p + "attention.output.dense.weight", p + "attention.output.dense.bias")
        x = b.layer_norm(b.op("Add", [o, x]), p + "attention.output.LayerNorm", eps)
        h = b.linear(x, p + "intermediate.dense.weight", p + "intermediate.dense.bias")
        h = _gelu(b, h)
        d = b.linear(h, p + "output.dense.weight", p + "output.dense.bias")
        x = b.layer_norm(b.op("Add", [d, x]), p + "output.LayerNorm", eps)
    x.name = "last_hidden_state"
    x.type = f32
    x.shape = ir.Shape([*bs, hidden])
    # sentence-transformers' Pooling (mean over attended tokens) then Normalize (L2, eps 1e-12)
    m3 = b.op("Unsqueeze", [maskf, b.const(np.array([-1], np.int64))])
    summed = b.op("ReduceSum", [b.op("Mul", [x, m3]), b.const(np.array([1], np.int64))],
                  {"keepdims": 0})
    count = b.op("Max", [b.op("ReduceSum", [m3, b.const(np.array([1], np.int64))],
                              {"keepdims": 0}), b.const(np.array(1e-9, np.float32))])
    mean = b.op("Div", [summed, count])
    norm = b.op("Max", [b.op("ReduceL2", [mean, b.const(np.array([-1], np.int64))],
                             {"keepdims": 1}), b.const(np.array(1e-12, np.float32))])
    emb = b.op("Div", [mean, norm])
    emb.name = "sentence_embedding"
    emb.type = f32
    emb.shape = ir.Shape(["batch_size", hidden])
    return [ids, mask, types], [x, emb]


def _gelu(b: _Builder, x: ir.Value) -> ir.Value:
    # exact (erf) GELU, transformers' "gelu": x * 0.5 * (1 + erf(x / sqrt(2)))
    r = b.op("Erf", [b.op("Div", [x, b.const(np.array(math.sqrt(2.0), np.float32))])])
    return b.op("Mul", [b.op("Mul", [x, b.const(np.array(0.5, np.float32))]),
                        b.op("Add", [r, b.const(np.array(1.0, np.float32))])])


Build = Callable[[_Builder, Mapping[str, Any]], tuple[list["ir.Value"], list["ir.Value"]]]
#: quantport architecture name -> graph builder
BUILDERS: dict[str, Build] = {"llama": _llama, "mistral": _family("mistral"),
                              "qwen2": _family("qwen2"), "qwen3": _family("qwen3"),
                              "phi3": _family("phi3"), "gemma3": _family("gemma3"),
                              "bert": _bert}


def build_model(arch: str, cfg: Mapping[str, Any], storages: Mapping[str, Storage],
                offsets: Mapping[str, int], opts: GraphOptions,
                metadata: Mapping[str, str]) -> ir.Model:
    """The whole model: graph, initializers (external, at ``offsets``), opsets, metadata.

    Raises:
        UnsupportedArchitectureError: an architecture with no builder, or hyper-parameters
            the builder does not express.
    """
    if arch not in BUILDERS:
        raise UnsupportedArchitectureError(
            f"the ONNX writer has no graph for architecture {arch!r}; supported: "
            f"{', '.join(BUILDERS)}"
        )
    b = _Builder(storages, offsets, opts)
    inputs, outputs = BUILDERS[arch](b, cfg)
    graph = ir.Graph(inputs, outputs, nodes=b.tape.nodes,
                     initializers=[*b._inits.values(), *b._consts.values()],
                     opset_imports={"": OPSET, _MS: 1}, name=f"quantport_{arch}")
    return ir.Model(graph, ir_version=10, producer_name="quantport",
                    metadata_props=dict(metadata))
