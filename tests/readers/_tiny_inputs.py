"""Tiny valid inputs of every format quantport reads, built without torch in milliseconds, and
one function that reads a path end to end the way a conversion does.

* a llama GGUF (hidden 32, 4 heads / 2 kv heads, 1 layer, 36-token byte-level BPE vocabulary)
  with tensors of every read path: F32, F16, BF16, Q8_0/Q4_0/Q4_1/Q5_0/Q5_1 and Q4_K
  (quantport's unpack);
* a Hugging Face checkpoint directory (config.json + model.safetensors) of the same model;
* a safetensors file of every dtype, and GGUF / legacy imatrix files.

The metadata is a list of ``(key, value, type, array_type)`` so tests can replace single values
with wrong types, zeros, negatives, huge values, inf/nan or short arrays.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGMLQuantizationType
from gguf import GGUFValueType as T

from quantport.formats.gguf_writer import GGUFKV, GGUFTensor, tensor_nbytes, write_gguf
from quantport.formats.imatrix import ImatrixData, read_imatrix, write_imatrix
from quantport.formats.safetensors import SafetensorsFile, write_safetensors

HIDDEN, FF, HEADS, KV_HEADS, HEAD_DIM, LAYERS = 32, 256, 4, 2, 8, 1

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MERGES = ["a b", "ab c", "Ġ a", "Ġa b", "t h", "th e"]
TOKENS = SPECIALS + [chr(c) for c in range(ord("a"), ord("z") + 1)] + ["Ġ"] + [
    m.replace(" ", "") for m in MERGES
]
VOCAB = len(TOKENS)

Meta = list[tuple[str, Any, T, T | None]]


def tiny_meta() -> Meta:
    """The tiny llama's GGUF metadata, as convert_hf_to_gguf.py types it."""
    return [
        ("general.architecture", "llama", T.STRING, None),
        ("general.name", "tiny", T.STRING, None),
        ("llama.block_count", LAYERS, T.UINT32, None),
        ("llama.context_length", 64, T.UINT32, None),
        ("llama.embedding_length", HIDDEN, T.UINT32, None),
        ("llama.feed_forward_length", FF, T.UINT32, None),
        ("llama.attention.head_count", HEADS, T.UINT32, None),
        ("llama.attention.head_count_kv", KV_HEADS, T.UINT32, None),
        ("llama.rope.freq_base", 10000.0, T.FLOAT32, None),
        ("llama.attention.layer_norm_rms_epsilon", 1e-5, T.FLOAT32, None),
        ("llama.vocab_size", VOCAB, T.UINT32, None),
        ("llama.rope.dimension_count", HEAD_DIM, T.UINT32, None),
        ("tokenizer.ggml.model", "gpt2", T.STRING, None),
        ("tokenizer.ggml.pre", "smollm", T.STRING, None),
        ("tokenizer.ggml.tokens", TOKENS, T.ARRAY, T.STRING),
        ("tokenizer.ggml.token_type", [3] * 3 + [1] * (VOCAB - 3), T.ARRAY, T.INT32),
        ("tokenizer.ggml.merges", MERGES, T.ARRAY, T.STRING),
        ("tokenizer.ggml.bos_token_id", 1, T.UINT32, None),
        ("tokenizer.ggml.eos_token_id", 2, T.UINT32, None),
        ("tokenizer.ggml.padding_token_id", 2, T.UINT32, None),
        ("tokenizer.ggml.add_bos_token", True, T.BOOL, None),
        ("tokenizer.chat_template", "{{ messages }}", T.STRING, None),
    ]


def tiny_tensors() -> list[tuple[str, tuple[int, ...], str]]:
    """(GGUF name, numpy shape, ggml type): every read path once."""
    q, kv = HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM
    return [
        ("token_embd.weight", (VOCAB, HIDDEN), "Q8_0"),
        ("blk.0.attn_norm.weight", (HIDDEN,), "F32"),
        ("blk.0.attn_q.weight", (q, HIDDEN), "Q4_0"),
        ("blk.0.attn_k.weight", (kv, HIDDEN), "Q4_1"),
        ("blk.0.attn_v.weight", (kv, HIDDEN), "F16"),
        ("blk.0.attn_output.weight", (HIDDEN, q), "BF16"),
        ("blk.0.ffn_norm.weight", (HIDDEN,), "F32"),
        ("blk.0.ffn_gate.weight", (FF, HIDDEN), "Q5_0"),
        ("blk.0.ffn_up.weight", (FF, HIDDEN), "Q5_1"),
        ("blk.0.ffn_down.weight", (HIDDEN, FF), "Q4_K"),
        ("output_norm.weight", (HIDDEN,), "F32"),
    ]


def _tensor_bytes(shape: tuple[int, ...], type_name: str, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    n = int(np.prod(shape))
    if type_name == "F32":
        return rng.standard_normal(n).astype("<f4").tobytes()
    if type_name == "F16":
        return rng.standard_normal(n).astype("<f2").tobytes()
    if type_name == "BF16":
        return (rng.standard_normal(n).astype("<f4").view("<u4") >> 16).astype("<u2").tobytes()
    raw = bytearray(rng.integers(0, 256, tensor_nbytes(shape, type_name), dtype=np.uint8))
    # block scales as small finite f16 values (random bits would be NaN now and then)
    layout = {"Q8_0": (32, 34), "Q4_0": (32, 18), "Q4_1": (32, 20), "Q5_0": (32, 22),
              "Q5_1": (32, 24), "Q4_K": (256, 144)}.get(type_name)
    if layout is None:
        return bytes(raw)
    size = layout[1]
    scale = np.float16(0.01).tobytes()
    for b in range(0, len(raw), size):
        raw[b : b + 2] = scale
        if type_name in ("Q4_1", "Q5_1", "Q4_K"):
            raw[b + 2 : b + 4] = scale
    return bytes(raw)


def write_tiny_gguf(path: Path, meta: Meta | None = None,
                    tensors: list[tuple[str, tuple[int, ...], str]] | None = None) -> Path:
    """Write the tiny llama GGUF with quantport's writer (``meta``/``tensors`` replace the
    defaults)."""
    meta = tiny_meta() if meta is None else meta
    tensors = tiny_tensors() if tensors is None else tensors
    kv = [GGUFKV(k, v, t, a) for k, v, t, a in meta]
    specs = [GGUFTensor(n, s, t, (lambda s=s, t=t, i=i: _tensor_bytes(s, t, i)))
             for i, (n, s, t) in enumerate(tensors)]
    write_gguf(path, kv, specs)
    return path


_FMT = {T.UINT8: "<B", T.INT8: "<b", T.UINT16: "<H", T.INT16: "<h", T.UINT32: "<I",
        T.INT32: "<i", T.FLOAT32: "<f", T.BOOL: "<?", T.UINT64: "<Q", T.INT64: "<q",
        T.FLOAT64: "<d"}
_DATA: dict[tuple[tuple[int, ...], str, int], bytes] = {}


def _gstr(s: str) -> bytes:
    b = s.encode("utf-8")
    return struct.pack("<Q", len(b)) + b


def _gval(v: Any, t: T, a: T | None) -> bytes:
    if t == T.STRING:
        return _gstr(v)
    if t == T.ARRAY:
        assert a is not None
        return struct.pack("<IQ", a, len(v)) + b"".join(_gval(x, a, None) for x in v)
    return struct.pack(_FMT[t], v)


def tiny_gguf_bytes(meta: Meta | None = None,
                    tensors: list[tuple[str, tuple[int, ...], str]] | None = None,
                    data: dict[str, bytes] | None = None) -> bytes:
    """The same file as :func:`write_tiny_gguf`, encoded here in memory (no fsync, ~50x faster,
    and without the writer's own checks, e.g. duplicate keys or 64-byte names). ``data`` gives
    some tensors' bytes (else seeded random values)."""
    meta = tiny_meta() if meta is None else meta
    tensors = tiny_tensors() if tensors is None else tensors
    out = [b"GGUF", struct.pack("<IQQ", 3, len(tensors), len(meta))]
    out += [_gstr(k) + struct.pack("<I", t) + _gval(v, t, a) for k, v, t, a in meta]
    align = next((v for k, v, t, _ in meta if k == "general.alignment" and t == T.UINT32), 32)
    align = align if align > 0 and not align & (align - 1) else 32
    offset, blobs = 0, []
    for i, (name, shape, ttype) in enumerate(tensors):
        key = (shape, ttype, i)
        if data is not None and name in data:
            blob = data[name]
        else:
            blob = _DATA.get(key) or _tensor_bytes(shape, ttype, i)
            if len(_DATA) < 4096:  # the fuzzer's random shapes would grow it without end
                _DATA[key] = blob
        ne = tuple(reversed(shape))
        out.append(_gstr(name) + struct.pack(f"<I{len(ne)}QIQ", len(ne), *ne,
                                             GGMLQuantizationType[ttype], offset))
        pad = -len(blob) % align
        blobs.append(blob + bytes(pad))
        offset += len(blob) + pad
    head = b"".join(out)
    return head + bytes(-len(head) % align) + b"".join(blobs)


def replace_meta(key: str, value: Any, vtype: T, atype: T | None = None,
                 meta: Meta | None = None) -> Meta:
    """The tiny metadata with one value replaced (or added)."""
    meta = tiny_meta() if meta is None else meta
    out = [(k, v, t, a) for k, v, t, a in meta if k != key]
    return out + [(key, value, vtype, atype)]


def drop_meta(key: str) -> Meta:
    return [m for m in tiny_meta() if m[0] != key]


def tiny_config() -> dict[str, Any]:
    """config.json of the tiny llama (as transformers' LlamaConfig writes it)."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": HIDDEN,
        "intermediate_size": FF,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "max_position_embeddings": 64,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "rope_scaling": None,
        "vocab_size": VOCAB,
        "hidden_act": "silu",
        "tie_word_embeddings": True,
        "attention_bias": False,
        "mlp_bias": False,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "torch_dtype": "float32",
    }


def hf_tensors() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    q, kv = HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM
    shapes = {
        "model.embed_tokens.weight": (VOCAB, HIDDEN),
        "model.layers.0.input_layernorm.weight": (HIDDEN,),
        "model.layers.0.self_attn.q_proj.weight": (q, HIDDEN),
        "model.layers.0.self_attn.k_proj.weight": (kv, HIDDEN),
        "model.layers.0.self_attn.v_proj.weight": (kv, HIDDEN),
        "model.layers.0.self_attn.o_proj.weight": (HIDDEN, q),
        "model.layers.0.post_attention_layernorm.weight": (HIDDEN,),
        "model.layers.0.mlp.gate_proj.weight": (FF, HIDDEN),
        "model.layers.0.mlp.up_proj.weight": (FF, HIDDEN),
        "model.layers.0.mlp.down_proj.weight": (HIDDEN, FF),
        "model.norm.weight": (HIDDEN,),
    }
    return {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}


def write_tiny_checkpoint(d: Path, config: dict[str, Any] | None = None,
                          config_text: str | None = None) -> Path:
    """A Hugging Face checkpoint directory: config.json, model.safetensors, tokenizer files
    (the tokenizer rebuilt from the tiny GGUF's vocabulary)."""
    from quantport.readers.tokenizer import hf_tokenizer_from_gguf

    d.mkdir(parents=True, exist_ok=True)
    text = config_text if config_text is not None else json.dumps(
        tiny_config() if config is None else config)
    (d / "config.json").write_text(text, encoding="utf-8")
    write_safetensors(d / "model.safetensors", hf_tensors())
    meta = {k: v for k, v, _, _ in tiny_meta()}
    for name, body in hf_tokenizer_from_gguf(meta).items():
        (d / name).write_text(body, encoding="utf-8")
    return d


def write_tiny_safetensors(path: Path, metadata: dict[str, str] | None = None) -> Path:
    """One small tensor of each dtype."""
    rng = np.random.default_rng(1)
    tensors = {
        "f32": rng.standard_normal((4, 8)).astype(np.float32),
        "f16": rng.standard_normal((2, 8)).astype(np.float16),
        "bf16": rng.standard_normal((3, 4)).astype(np.float32),
        "f64": rng.standard_normal(5),
        "i8": rng.integers(-8, 8, (2, 3)).astype(np.int8),
        "i32": rng.integers(-8, 8, 6).astype(np.int32),
        "u8": rng.integers(0, 255, 7).astype(np.uint8),
        "empty": np.zeros((0, 3), np.float32),
    }
    write_safetensors(path, tensors, metadata=metadata or {"format": "pt", "note": "tiny"},
                      dtypes={"bf16": "BF16"})
    return path


IMATRIX_META: Meta = [
    ("general.type", "imatrix", T.STRING, None),
    ("imatrix.datasets", ["tiny.txt"], T.ARRAY, T.STRING),
    ("imatrix.chunk_count", 4, T.UINT32, None),
    ("imatrix.chunk_size", 64, T.UINT32, None),
]
# numpy shapes (n_mat, n_per_row): sums and counts of a 2-D weight and of a 2-expert one
IMATRIX_TENSORS = [
    ("blk.0.attn_q.weight.in_sum2", (1, 32), "F32"),
    ("blk.0.attn_q.weight.counts", (1, 1), "F32"),
    ("blk.0.ffn_up_exps.weight.in_sum2", (2, 16), "F32"),
    ("blk.0.ffn_up_exps.weight.counts", (2, 1), "F32"),
]
IMATRIX_DATA = {
    "blk.0.attn_q.weight.in_sum2": np.linspace(0.1, 3, 32, dtype="<f4").tobytes(),
    "blk.0.attn_q.weight.counts": np.array([4], "<f4").tobytes(),
    "blk.0.ffn_up_exps.weight.in_sum2": np.linspace(0.1, 3, 32, dtype="<f4").tobytes(),
    "blk.0.ffn_up_exps.weight.counts": np.array([3, 5], "<f4").tobytes(),
}


def write_tiny_imatrix(path: Path, fmt: str) -> Path:
    rng = np.random.default_rng(2)
    data = ImatrixData(
        entries={"blk.0.attn_q.weight": rng.uniform(0.1, 2, 32).astype(np.float32),
                 "blk.0.ffn_down.weight": rng.uniform(0.1, 2, 64).astype(np.float32),
                 "blk.0.ffn_up_exps.weight": rng.uniform(0.1, 2, 2 * 16).astype(np.float32)},
        datasets=["tiny.txt"], chunk_count=4, chunk_size=64,
        counts={"blk.0.ffn_up_exps.weight": np.array([3, 5])} if fmt == "gguf" else None)
    write_imatrix(path, data, format=fmt)
    return path


def read_gguf_source(path: Path) -> dict[str, str]:
    """Open a GGUF as a model source, read every tensor, build its tokenizer files."""
    from quantport.readers import open_path

    src = open_path(path)
    for name in src.names():
        src.get(name)
    src.describe()
    return src.tokenizer_files


def read_checkpoint(path: Path) -> None:
    from quantport.readers import open_path

    src = open_path(path)
    for name in src.names():
        src.get(name)


def read_safetensors(path: Path) -> None:
    f = SafetensorsFile(path)
    for name in f.keys():
        f.get(name)


def read_imatrix_file(path: Path) -> None:
    read_imatrix(path)
