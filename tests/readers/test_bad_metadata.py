"""Wrong metadata values are refused with one line naming the file and the key.

Every case here used to end in a Python traceback (ZeroDivisionError, ValueError, TypeError,
IndexError, AttributeError, OverflowError) or to be accepted silently and fail later.
"""

from __future__ import annotations

import json
import math
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from gguf import GGUFValueType as T

from quantport.cli.main import cli
from quantport.errors import ConfigError, FormatError, QuantportError
from quantport.formats.safetensors import SafetensorsFile
from quantport.readers import open_path
from quantport.architectures.config import (
    bool_,
    check_config,
    finite_float,
    optional_positive_int,
    positive_int,
)
from quantport.readers.tokenizer import hf_tokenizer_from_gguf

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _tiny_inputs as tiny  # noqa: E402


def _one_line(exc: BaseException, *parts: str) -> None:
    msg = str(exc)
    assert "\n" not in msg, msg
    for p in parts:
        assert p in msg, (p, msg)


# ------------------------------------------------------------------------ valid inputs pass


def test_tiny_inputs_are_valid(tmp_path):
    files = tiny.read_gguf_source(tiny.write_tiny_gguf(tmp_path / "ok.gguf"))
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(files["tokenizer.json"])
    assert tok.encode("the abc", add_special_tokens=False).tokens == ["the", "Ġ", "abc"]
    src = open_path(tiny.write_tiny_checkpoint(tmp_path / "ckpt"))
    assert src.config["hidden_size"] == tiny.HIDDEN
    tiny.read_checkpoint(tmp_path / "ckpt")


# ------------------------------------------------------------------------ GGUF metadata

U32, I32, F32, S, A = T.UINT32, T.INT32, T.FLOAT32, T.STRING, T.ARRAY
_N = tiny.VOCAB

GGUF_CASES = [
    # (id, key, value, type, array type, error class)
    ("head_count_0", "llama.attention.head_count", 0, U32, None, ConfigError),
    ("head_count_kv_0", "llama.attention.head_count_kv", 0, U32, None, ConfigError),
    ("head_count_string", "llama.attention.head_count", "four", S, None, ConfigError),
    ("head_count_numeric_string", "llama.attention.head_count", "4", S, None, ConfigError),
    ("head_count_huge", "llama.attention.head_count", 2**40, T.UINT64, None, ConfigError),
    ("head_count_float", "llama.attention.head_count", 4.0, F32, None, ConfigError),
    ("head_count_bool", "llama.attention.head_count", True, T.BOOL, None, ConfigError),
    ("head_count_array", "llama.attention.head_count", [4], A, U32, ConfigError),
    ("heads_do_not_divide_kv", "llama.attention.head_count_kv", 3, U32, None, ConfigError),
    ("heads_not_matching_q", "llama.attention.head_count", 2, U32, None, ConfigError),
    ("embedding_string", "llama.embedding_length", "abc", S, None, ConfigError),
    ("embedding_negative", "llama.embedding_length", -32, I32, None, ConfigError),
    ("block_count_0", "llama.block_count", 0, U32, None, ConfigError),
    ("context_negative", "llama.context_length", -1, I32, None, ConfigError),
    ("ff_wrong", "llama.feed_forward_length", 128, U32, None, ConfigError),
    ("rope_dim_inf", "llama.rope.dimension_count", math.inf, F32, None, ConfigError),
    ("rope_dim_odd", "llama.rope.dimension_count", 7, U32, None, ConfigError),
    ("rope_base_nan", "llama.rope.freq_base", math.nan, F32, None, ConfigError),
    ("rope_base_string", "llama.rope.freq_base", "x", S, None, ConfigError),
    ("eps_string", "llama.attention.layer_norm_rms_epsilon", "x", S, None, ConfigError),
    ("eps_inf", "llama.attention.layer_norm_rms_epsilon", math.inf, F32, None, ConfigError),
    ("eps_negative", "llama.attention.layer_norm_rms_epsilon", -1e-5, F32, None, ConfigError),
    ("vocab_size_wrong", "llama.vocab_size", _N + 1, U32, None, ConfigError),
    ("general_name_int", "general.name", 5, U32, None, ConfigError),
    ("tokens_ints", "tokenizer.ggml.tokens", list(range(_N)), A, I32, FormatError),
    ("tokens_string", "tokenizer.ggml.tokens", "abc", S, None, FormatError),
    ("token_type_short", "tokenizer.ggml.token_type", [1] * (_N - 1), A, I32, FormatError),
    ("token_type_strings", "tokenizer.ggml.token_type", ["1"] * _N, A, S, FormatError),
    ("token_type_floats", "tokenizer.ggml.token_type", [1.0] * _N, A, F32, FormatError),
    ("scores_short", "tokenizer.ggml.scores", [0.0] * 3, A, F32, FormatError),
    ("merges_ints", "tokenizer.ggml.merges", [1, 2], A, I32, FormatError),
    ("merges_string", "tokenizer.ggml.merges", "a b", S, None, FormatError),
    ("merge_without_space", "tokenizer.ggml.merges", ["ab"], A, S, FormatError),
    ("merge_not_in_vocab", "tokenizer.ggml.merges", ["x y"], A, S, FormatError),
    ("bos_string", "tokenizer.ggml.bos_token_id", "1", S, None, FormatError),
    ("bos_negative", "tokenizer.ggml.bos_token_id", -1, I32, None, FormatError),
    ("add_bos_string", "tokenizer.ggml.add_bos_token", "yes", S, None, FormatError),
    ("add_bos_int", "tokenizer.ggml.add_bos_token", 1, U32, None, FormatError),
    ("pre_int", "tokenizer.ggml.pre", 3, U32, None, FormatError),
    ("model_array", "tokenizer.ggml.model", ["gpt2"], A, S, FormatError),
    ("chat_template_int", "tokenizer.chat_template", 7, U32, None, FormatError),
]


@pytest.mark.parametrize(("key", "value", "vtype", "atype", "err"),
                         [c[1:] for c in GGUF_CASES], ids=[c[0] for c in GGUF_CASES])
def test_gguf_bad_metadata(tmp_path, key, value, vtype, atype, err):
    p = tiny.write_tiny_gguf(tmp_path / "bad.gguf", tiny.replace_meta(key, value, vtype, atype))
    with pytest.raises(err) as ei:
        tiny.read_gguf_source(p)
    # the key to fix: the mutated one, or for relations (heads vs kv heads, metadata vs tensor
    # shapes) the metadata named in the message
    _one_line(ei.value, str(p))
    assert key in str(ei.value) or "llama." in str(ei.value), str(ei.value)


@pytest.mark.parametrize("key", ["llama.attention.head_count", "llama.embedding_length",
                                 "llama.attention.layer_norm_rms_epsilon"])
def test_gguf_missing_key(tmp_path, key):
    p = tiny.write_tiny_gguf(tmp_path / "bad.gguf", tiny.drop_meta(key))
    with pytest.raises(ConfigError) as ei:
        tiny.read_gguf_source(p)
    _one_line(ei.value, str(p), key, "missing")


def test_gguf_missing_rope_dim_needs_divisible_heads(tmp_path):
    meta = tiny.replace_meta("llama.attention.head_count", 3, U32,
                             meta=tiny.drop_meta("llama.rope.dimension_count"))
    p = tiny.write_tiny_gguf(tmp_path / "bad.gguf", meta)
    with pytest.raises(ConfigError) as ei:
        tiny.read_gguf_source(p)
    _one_line(ei.value, str(p), "llama.embedding_length", "llama.attention.head_count")


def test_gguf_tokens_missing_names_the_file(tmp_path):
    p = tiny.write_tiny_gguf(tmp_path / "bad.gguf", tiny.drop_meta("tokenizer.ggml.tokens"))
    with pytest.raises(FormatError) as ei:
        tiny.read_gguf_source(p)
    _one_line(ei.value, str(p), "tokenizer.ggml.tokens")


def test_gguf_architecture_not_a_string(tmp_path):
    p = tiny.write_tiny_gguf(tmp_path / "bad.gguf",
                             tiny.replace_meta("general.architecture", 7, U32))
    with pytest.raises(QuantportError) as ei:
        tiny.read_gguf_source(p)
    _one_line(ei.value, str(p), "architecture")


@pytest.mark.parametrize("name", ["blk.0.attn_q.weight\n", "blk.00.attn_q.weight",
                                  "blk.1.attn_q.weight"])
def test_gguf_tensor_names_that_alias_or_exceed_layers(tmp_path, name):
    tensors = tiny.tiny_tensors()
    tensors.append((name, tensors[2][1], "F32"))
    p = tiny.write_tiny_gguf(tmp_path / "bad.gguf", tensors=tensors)
    with pytest.raises(QuantportError) as ei:
        tiny.read_gguf_source(p)
    _one_line(ei.value, str(p))


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize(("key", "value", "atype"), [
    ("tokenizer.ggml.merges", ["x y"], S),  # a merge of no tokens
    ("tokenizer.ggml.tokens", [b"\xff"] + tiny.TOKENS[1:], S),  # a token that is not UTF-8
    ("tokenizer.ggml.token_type", [1] * (_N - 1), I32),  # shorter than the tokens
])
def test_gguf_to_gguf_refuses_the_bad_vocabulary_it_would_copy(tmp_path, monkeypatch, key,
                                                                 value, atype, threads):
    # GGUF -> GGUF copies the vocabulary's bytes and checks it while the workers quantize
    # (GGUFSource.verify): the conversion still refuses it and leaves nothing; so does a dry run
    from quantport.pipeline import convert, execute, make_recipe

    monkeypatch.setattr(execute, "CHUNK_ELEMS", 1000)  # the tiny model in parallel workers
    monkeypatch.setattr(execute, "_PARALLEL_MIN_ELEMS", 0)
    p = tiny.write_tiny_gguf(tmp_path / "bad.gguf", tiny.replace_meta(key, value, A, atype))
    out = tmp_path / "out" / "x.gguf"
    out.parent.mkdir()
    for dry_run in (False, True):
        with pytest.raises(FormatError) as ei:
            convert(open_path(p), make_recipe("gguf", "Q8_0"), out, threads=threads,
                    dry_run=dry_run)
        _one_line(ei.value, str(p), key)
        assert list(out.parent.iterdir()) == []


def test_gguf_special_id_outside_vocab_is_ignored(tmp_path):
    # llama.cpp: "bad special token ... using default id"; not an error
    p = tiny.write_tiny_gguf(tmp_path / "ok.gguf",
                             tiny.replace_meta("tokenizer.ggml.padding_token_id", 10**6, U32))
    src = open_path(p)
    assert src.config["pad_token_id"] is None
    assert json.loads(src.tokenizer_files["tokenizer_config.json"])["pad_token"] is None


def test_tokenizer_from_metadata_checks_types():
    meta = {k: v for k, v, _, _ in tiny.tiny_meta()}
    hf_tokenizer_from_gguf(meta)
    with pytest.raises(FormatError, match="x.gguf: tokenizer.ggml.merges"):
        hf_tokenizer_from_gguf({**meta, "tokenizer.ggml.merges": [1]}, "x.gguf")
    with pytest.raises(FormatError, match="x.gguf: tokenizer.ggml.token_type has 1 entries"):
        hf_tokenizer_from_gguf({**meta, "tokenizer.ggml.token_type": [1]}, "x.gguf")
    with pytest.raises(ConfigError, match="x.gguf: llama.context_length"):
        hf_tokenizer_from_gguf({**meta, "llama.context_length": math.inf}, "x.gguf")


# ------------------------------------------------------------------------ safetensors


def _st(path: Path, header: object | str, data: bytes = b"") -> Path:
    raw = (header if isinstance(header, str) else json.dumps(header)).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


_F32 = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}


@pytest.mark.parametrize("meta", [{"format": 1}, {"format": None}, {"a": ["b"]}, ["a"], "x", 5,
                                  {"format": {"nested": "x"}}],
                         ids=["int", "null", "list-value", "list", "string", "number", "object"])
def test_safetensors_metadata_not_an_object_of_strings(tmp_path, meta):
    p = _st(tmp_path / "m.safetensors", {"__metadata__": meta, "w": _F32}, bytes(8))
    with pytest.raises(FormatError) as ei:
        SafetensorsFile(p)
    _one_line(ei.value, str(p), "__metadata__")


def test_safetensors_metadata_null_or_absent_is_fine(tmp_path):
    assert SafetensorsFile(_st(tmp_path / "a.safetensors", {"__metadata__": None, "w": _F32},
                               bytes(8))).metadata == {}
    assert SafetensorsFile(_st(tmp_path / "b.safetensors", {"w": _F32}, bytes(8))).metadata == {}


@pytest.mark.parametrize("entry", [
    {"dtype": ["F32"], "shape": [2], "data_offsets": [0, 8]},     # unhashable dtype
    {"dtype": "F32", "shape": ["2"], "data_offsets": [0, 8]},     # a string dimension
    {"dtype": "F32", "shape": [2.0], "data_offsets": [0, 8]},     # a float dimension
    {"dtype": "F32", "shape": [True, 2], "data_offsets": [0, 8]},  # a bool dimension
    {"dtype": "F32", "shape": 2, "data_offsets": [0, 8]},
    {"dtype": "F32", "shape": [2], "data_offsets": [0, "8"]},
    {"dtype": "F32", "shape": [2], "data_offsets": [0, 8, 16]},
    {"dtype": "F32", "shape": [2], "data_offsets": {"0": 8}},
    ["F32", [2], [0, 8]],
    "F32",
])
def test_safetensors_malformed_entry(tmp_path, entry):
    p = _st(tmp_path / "e.safetensors", {"w": entry}, bytes(8))
    with pytest.raises(FormatError) as ei:
        SafetensorsFile(p)
    _one_line(ei.value, str(p), "'w'")


@pytest.mark.parametrize("header", [
    '{"w": {"dtype": "F32", "shape": [Infinity], "data_offsets": [0, 8]}}',
    '{"w": {"dtype": "F32", "shape": [NaN], "data_offsets": [0, 8]}}',
    '{"w": {"dtype": "F32", "shape": [' + "9" * 5000 + '], "data_offsets": [0, 8]}}',
    "[" * 100_000 + "]" * 100_000,
    '{"w": {"dtype": "F32", "shape": [0, 9223372036854775808], "data_offsets": [0, 0]}}',
    '{"w": {"dtype": "F32", "shape": [0, 4611686018427387904, 4], "data_offsets": [0, 0]}}',
], ids=["inf", "nan", "5000-digits", "deep", "empty-2**63", "empty-overflow"])
def test_safetensors_hostile_json(tmp_path, header):
    p = _st(tmp_path / "h.safetensors", header, bytes(8))
    with pytest.raises(FormatError) as ei:
        SafetensorsFile(p)
    _one_line(ei.value, str(p))


# ------------------------------------------------------------------------ config.json

CONFIG_CASES = [
    ("num_attention_heads", 0),
    ("num_attention_heads", -4),
    ("num_attention_heads", 4.0),
    ("hidden_size", "64"),
    ("hidden_size", -32),
    ("hidden_size", 30),           # not divisible by 4 heads
    ("hidden_size", True),
    ("hidden_size", 2**40),
    ("hidden_size", [32]),
    ("num_key_value_heads", 3),     # does not divide 4 heads
    ("num_key_value_heads", 0),
    ("num_hidden_layers", 2.5),
    ("intermediate_size", "big"),
    ("max_position_embeddings", -1),
    ("vocab_size", 1e30),
    ("head_dim", 7),               # odd: rotary embeddings need pairs
    ("rms_norm_eps", "x"),
    ("rms_norm_eps", math.nan),
    ("rms_norm_eps", math.inf),
    ("rms_norm_eps", 0),
    ("rms_norm_eps", 1e300),        # beyond float32 (GGUF stores F32)
    ("rope_theta", -math.inf),
    ("rope_theta", "1e4"),
    ("tie_word_embeddings", "yes"),
    ("tie_word_embeddings", 1),
    ("hidden_act", ["silu"]),
    ("rope_scaling", "linear"),
    ("rope_scaling", {"rope_type": "linear", "factor": math.nan}),
    ("rope_scaling", {"type": 5}),
    ("rope_parameters", {"rope_theta": "x"}),
    ("eos_token_id", "x"),
    ("eos_token_id", [2, "x"]),
    ("bos_token_id", -1),
    ("architectures", "LlamaForCausalLM"),
    ("architectures", 5),
    ("model_type", ["llama"]),
    ("_name_or_path", 3),
]


@pytest.mark.parametrize(("key", "value"), CONFIG_CASES,
                         ids=[f"{k}={v!r}"[:40] for k, v in CONFIG_CASES])
def test_config_bad_value(tmp_path, key, value):
    cfg = {**tiny.tiny_config(), key: value}
    d = tiny.write_tiny_checkpoint(tmp_path / "ckpt", config_text=json.dumps(cfg))
    with pytest.raises(ConfigError) as ei:
        open_path(d)
    _one_line(ei.value, str(d / "config.json"), key)


@pytest.mark.parametrize("text", ["[" * 100_000 + "]" * 100_000,
                                  '{"hidden_size": ' + "9" * 5000 + "}"],
                         ids=["deep", "5000-digits"])
def test_config_hostile_json(tmp_path, text):
    d = tiny.write_tiny_checkpoint(tmp_path / "ckpt", config_text=text)
    with pytest.raises(ConfigError) as ei:
        open_path(d)
    _one_line(ei.value, str(d / "config.json"))


@pytest.mark.parametrize("extra", [
    {"num_attention_heads": 16, "num_key_value_heads": 16},  # the writer's permute would fail
    {"hidden_size": 64},
    {"intermediate_size": 128},
    {"vocab_size": tiny.VOCAB + 1},
    {"num_key_value_heads": None},  # transformers: None means as many as the heads
    {"head_dim": 16},
    {"num_attention_heads": 2},
], ids=["heads16", "hidden64", "ff128", "vocab+1", "kv-none", "head_dim16", "heads2"])
def test_config_contradicting_the_weights(tmp_path, extra):
    d = tiny.write_tiny_checkpoint(tmp_path / "ckpt", config={**tiny.tiny_config(), **extra})
    with pytest.raises(ConfigError) as ei:
        open_path(d)
    _one_line(ei.value, str(d / "config.json"), "hyper-parameters do not match the weights")


def test_config_layer_beyond_num_hidden_layers(tmp_path):
    d = tiny.write_tiny_checkpoint(tmp_path / "ckpt")
    from quantport.formats.safetensors import write_safetensors

    t = tiny.hf_tensors()
    t["model.layers.1.input_layernorm.weight"] = t["model.layers.0.input_layernorm.weight"]
    write_safetensors(d / "model.safetensors", t)
    with pytest.raises(ConfigError) as ei:
        open_path(d)
    _one_line(ei.value, str(d / "config.json"), "layer 1", "num_hidden_layers")


def test_config_valid_variants_pass(tmp_path):
    # head_dim given explicitly: the width need not be heads * head_dim (transformers allows it)
    ok = [{"head_dim": 8}, {"pad_token_id": None}, {"rope_scaling": None},
          {"rope_scaling": {"rope_type": "linear", "factor": 2}}, {"eos_token_id": [2, 1]},
          {"rms_norm_eps": 1e-6}, {"rope_theta": 500000}]
    for i, extra in enumerate(ok):
        open_path(tiny.write_tiny_checkpoint(tmp_path / f"c{i}",
                                             config={**tiny.tiny_config(), **extra}))


def test_bert_config_checks(tmp_path):
    bert = {"architectures": ["BertModel"], "model_type": "bert", "hidden_size": 30,
            "num_attention_heads": 4}
    with pytest.raises(ConfigError, match="hidden_size 30 is not divisible"):
        check_config(bert, "c.json")
    check_config({**bert, "hidden_size": 36, "layer_norm_eps": 1e-12}, "c.json")  # odd head ok
    with pytest.raises(ConfigError, match="c.json: layer_norm_eps must be"):
        check_config({**bert, "hidden_size": 36, "layer_norm_eps": "x"}, "c.json")
    with pytest.raises(ConfigError, match="c.json: type_vocab_size must be"):
        check_config({**bert, "hidden_size": 36, "type_vocab_size": 0}, "c.json")


def test_accessors():
    cfg = {"a": 3, "b": 0, "c": "3", "d": 1.5, "e": math.nan, "f": True, "g": None}
    assert positive_int(cfg, "a", "w") == 3
    assert optional_positive_int(cfg, "g", "w") is None
    assert optional_positive_int(cfg, "zz", "w") is None
    for key in ("b", "c", "d", "f"):
        with pytest.raises(ConfigError, match=f"^w: {key} must be a positive integer"):
            positive_int(cfg, key, "w")
    with pytest.raises(ConfigError, match="w: zz is missing"):
        positive_int(cfg, "zz", "w")
    assert finite_float(cfg, "d", "w") == 1.5
    assert finite_float(cfg, "a", "w") == 3.0
    with pytest.raises(ConfigError, match="w: e must be a finite number"):
        finite_float(cfg, "e", "w")
    with pytest.raises(ConfigError, match="w: b must be a finite positive number"):
        finite_float(cfg, "b", "w", positive=True)
    with pytest.raises(ConfigError, match="w: a must be a finite number"):
        finite_float({"a": 10**400}, "a", "w")
    assert bool_(cfg, "f", "w") is True
    with pytest.raises(ConfigError, match="w: a must be true or false"):
        bool_(cfg, "a", "w")
    with pytest.raises(ConfigError, match="GGUF_KEY must be"):
        check_config({"hidden_size": 0}, "w", {"hidden_size": "GGUF_KEY"})


def test_tokenizer_file_not_utf8(tmp_path):
    d = tiny.write_tiny_checkpoint(tmp_path / "ckpt")
    (d / "tokenizer.json").write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(FormatError) as ei:
        open_path(d)
    _one_line(ei.value, str(d / "tokenizer.json"))


def test_index_with_non_string_shard(tmp_path):
    d = tiny.write_tiny_checkpoint(tmp_path / "ckpt")
    (d / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"model.norm.weight": ["model.safetensors"]}}))
    with pytest.raises(FormatError) as ei:
        open_path(d)
    _one_line(ei.value, "model.safetensors.index.json", "model.norm.weight")


# ------------------------------------------------------------------------ the CLI


def _bad_inputs(tmp_path: Path) -> list[tuple[Path, str]]:
    """(input, what the error must name)"""
    return [
        (tiny.write_tiny_gguf(tmp_path / "heads0.gguf",
                              tiny.replace_meta("llama.attention.head_count", 0, U32)),
         "llama.attention.head_count"),
        (tiny.write_tiny_gguf(tmp_path / "merges.gguf",
                              tiny.replace_meta("tokenizer.ggml.merges", [1, 2], A, I32)),
         "tokenizer.ggml.merges"),
        (tiny.write_tiny_gguf(tmp_path / "types.gguf",
                              tiny.replace_meta("tokenizer.ggml.token_type", [1], A, I32)),
         "tokenizer.ggml.token_type"),
        (tiny.write_tiny_gguf(tmp_path / "rope.gguf",
                              tiny.replace_meta("llama.rope.dimension_count", math.inf, F32)),
         "llama.rope.dimension_count"),
        (tiny.write_tiny_checkpoint(tmp_path / "heads0",
                                    config={**tiny.tiny_config(), "num_attention_heads": 0}),
         "num_attention_heads"),
        (tiny.write_tiny_checkpoint(tmp_path / "eps",
                                    config={**tiny.tiny_config(), "rms_norm_eps": "x"}),
         "rms_norm_eps"),
        (tiny.write_tiny_checkpoint(tmp_path / "tie",
                                    config={**tiny.tiny_config(), "tie_word_embeddings": "yes"}),
         "tie_word_embeddings"),
    ]


def _assert_one_error_line(res, path: Path, key: str) -> None:
    assert res.exit_code == 1, res.output
    assert isinstance(res.exception, SystemExit), repr(res.exception)  # nothing escaped click
    assert "Traceback" not in res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), res.output
    assert str(path) in lines[0] and key in lines[0], lines[0]


@pytest.mark.parametrize("to", [("gguf", "Q8_0", "out.gguf"), ("safetensors", "f32", "out")],
                         ids=["gguf", "safetensors"])
def test_cli_convert_bad_input_is_one_error_line(tmp_path, to):
    fmt, quant, out = to
    runner = CliRunner()
    for path, key in _bad_inputs(tmp_path):
        res = runner.invoke(cli, ["convert", str(path), "--to", fmt, "--quant", quant,
                                  "-o", str(tmp_path / out), "-q"])
        _assert_one_error_line(res, path, key)
        assert not (tmp_path / out).exists()


def test_cli_process_prints_no_traceback(tmp_path):
    path = tiny.write_tiny_gguf(tmp_path / "heads0.gguf",
                                tiny.replace_meta("llama.attention.head_count", 0, U32))
    exe = Path(sys.executable).parent / "quantport"
    out = subprocess.run([str(exe), "convert", str(path), "--to", "safetensors", "--quant",
                          "f32", "-o", str(tmp_path / "out"), "-q"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 1
    assert "Traceback" not in out.stderr + out.stdout
    assert out.stderr.strip().splitlines() == [out.stderr.strip()]
    assert out.stderr.startswith("Error: ") and "llama.attention.head_count" in out.stderr
