"""The ONNX writer on the tiny llama: ONNX Runtime's logits against transformers, the weights
the graph holds against quantport's own rounding, ORT's fusion of every QDQ weight MatMul,
onnxruntime-genai's greedy generation, plan sizes, refusals."""

from __future__ import annotations

import dataclasses

import json
from pathlib import Path

import numpy as np
import pytest

from quantport.errors import (
    FormatError,
    OptionError,
    OutputExistsError,
    UnsupportedQuantError,
)
from quantport.formats.onnx_read import onnx_records, onnx_weights
from quantport.ir import dequantize
from quantport.pipeline import convert
from quantport.readers import open_path
from quantport.recipe import make_recipe

ort = pytest.importorskip("onnxruntime")

# (quant, --onnx-matmul) variants written once per module
VARIANTS = [
    ("f32", "qdq"),
    ("f16", "qdq"),
    ("w4-g32-sym", "qdq"),
    ("w4-g64-asym", "qdq"),
    ("w8-channel-sym", "qdq"),
    ("w8-g32-asym", "qdq"),
    ("w4-g32-sym", "nbits"),
    ("w4-g64-asym", "nbits"),
    ("w8-channel-asym", "nbits"),
    ("w2-g32-asym", "nbits"),
    ("w8a8", "qdq"),
]


@pytest.fixture(scope="module")
def exports(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Path]:
    root = tmp_path_factory.mktemp("onnx")
    src = open_path(tiny_llama)
    out = {}
    for quant, mode in VARIANTS:
        # accuracy level 0: fp32 arithmetic, to compare tightly
        r = make_recipe("onnx", quant, onnx_matmul=mode, accuracy_level=0,
                        tensor_types=["embed_tokens=f32"] if quant == "w8a8" else ())
        d = root / f"{quant}-{mode}"
        convert(src, r, d, threads=1)
        out[(quant, mode)] = d
    return out


def _session(d: Path, level: int = 0, optimized: Path | None = None) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    # fused QDQ MatMulNBits at accuracy level 0: fp32 arithmetic, comparable tightly
    so.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", str(level))
    if optimized is not None:
        so.optimized_model_filepath = str(optimized)
    return ort.InferenceSession(str(d / "model.onnx"), so, providers=["CPUExecutionProvider"])


def _run_decoder(sess: ort.InferenceSession, cfg: dict, ids: np.ndarray, prefill: int) -> np.ndarray:
    """Logits of ``ids``: ``prefill`` tokens at once, then one token at a time through the
    KV cache."""
    n_layers, kv = cfg["num_hidden_layers"], cfg["num_key_value_heads"]
    hd = cfg["hidden_size"] // cfg["num_attention_heads"]
    names = [o.name for o in sess.get_outputs()]
    past = {f"past_key_values.{i}.{k}": np.zeros((ids.shape[0], kv, 0, hd), np.float32)
            for i in range(n_layers) for k in ("key", "value")}
    steps = [(0, prefill)] + [(t, t + 1) for t in range(prefill, ids.shape[1])]
    logits = []
    for a, b in steps:
        feed = {"input_ids": ids[:, a:b], "attention_mask": np.ones((ids.shape[0], b), np.int64),
                **past}
        out = dict(zip(names, sess.run(None, feed), strict=True))
        logits.append(out["logits"])
        past = {f"past_key_values.{i}.{k}": out[f"present.{i}.{k}"]
                for i in range(n_layers) for k in ("key", "value")}
    return np.concatenate(logits, axis=1)


def _torch_logits(hf_dir: Path, ids: np.ndarray, weights: dict[str, np.ndarray] | None = None) -> np.ndarray:
    import torch
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    if weights is not None:
        sd = m.state_dict()
        assert set(weights) == set(sd) - {"lm_head.weight"}
        m.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in weights.items()},
                          strict=False)
        m.tie_weights()
    with torch.no_grad():
        return m(torch.tensor(ids)).logits.numpy()


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


IDS = np.random.default_rng(0).integers(3, 49000, (2, 10))


def test_f32_logits_match_transformers_prefill_and_decode(exports, tiny_llama: Path) -> None:
    d = exports[("f32", "qdq")]
    cfg = json.loads((d / "config.json").read_text())
    got = _run_decoder(_session(d), cfg, IDS, prefill=6)
    ref = _torch_logits(tiny_llama, IDS)
    assert _rel(got, ref) < 1e-4
    assert (got.argmax(-1) == ref.argmax(-1)).all()


@pytest.mark.parametrize("variant", [v for v in VARIANTS if v[0] not in ("f32", "w8a8")],
                         ids="-".join)
def test_ort_computes_the_weights_the_graph_holds(exports, tiny_llama: Path, variant) -> None:
    d = exports[variant]
    cfg = json.loads((d / "config.json").read_text())
    got = _run_decoder(_session(d), cfg, IDS, prefill=6)
    ref = _torch_logits(tiny_llama, IDS, onnx_weights(d))
    assert _rel(got, ref) < 1e-4


@pytest.mark.parametrize("variant", [v for v in VARIANTS if v[0] not in ("f32", "f16", "w8a8")],
                         ids="-".join)
def test_graph_holds_exactly_quantports_rounding(exports, tiny_llama: Path, variant) -> None:
    from quantport.quant.scheme import parse_scheme

    scheme = parse_scheme(variant[0])
    if scheme.symmetric:  # ONNX takes ONNX Runtime's symmetric rule (IntGrid rule "signed")
        scheme = dataclasses.replace(scheme, rule="signed")
    src = open_path(tiny_llama)
    held = onnx_weights(exports[variant])
    for name in ("model.layers.1.self_attn.k_proj.weight", "model.layers.0.mlp.down_proj.weight",
                 "model.embed_tokens.weight"):
        want = dequantize(scheme.quantize(src.get(name), name=name))
        np.testing.assert_array_equal(held[name], want)
    np.testing.assert_array_equal(held["model.norm.weight"], src.get("model.norm.weight"))


@pytest.mark.parametrize("variant", [v for v in VARIANTS if v[1] == "qdq" and v[0].startswith("w")
                                     and v[0] != "w8a8"], ids="-".join)
def test_ort_fuses_every_qdq_weight_matmul(exports, variant, tmp_path: Path) -> None:
    import onnx

    opt = tmp_path / "optimized.onnx"
    _session(exports[variant], level=4, optimized=opt)
    g = onnx.load(str(opt), load_external_data=False).graph
    ops = [n.op_type for n in g.node]
    producers = {o: n.op_type for n in g.node for o in n.output}
    weights = set(g.initializer[i].name for i in range(len(g.initializer)))
    unfused = [n.name for n in g.node if n.op_type in ("MatMul", "Gemm")
               and (producers.get(n.input[1]) == "DequantizeLinear" or n.input[1] in weights)]
    assert unfused == [], f"weight MatMuls left unfused: {unfused}"
    assert "DequantizeLinear" not in ops
    # per layer q/k/v as one qkv_proj, o, gate, up, down; 2 layers; the tied head
    assert ops.count("MatMulNBits") == 5 * 2 + 1


def test_w8a8_runs_int8_gemms(exports, tiny_llama: Path, tmp_path: Path) -> None:
    import onnx

    d = exports[("w8a8", "qdq")]
    opt = tmp_path / "optimized.onnx"
    sess = _session(d, optimized=opt)
    ops = [n.op_type for n in onnx.load(str(opt), load_external_data=False).graph.node]
    # one quantization of x shared by q/k/v (and gate/up) leaves MatMulIntegerToFloat there
    # (ORT merges the identical DynamicQuantizeLinear nodes); the others fuse entirely
    assert ops.count("DynamicQuantizeMatMul") + ops.count("MatMulIntegerToFloat") == 5 * 2
    assert ops.count("DynamicQuantizeMatMul") >= 2
    assert "MatMulInteger" not in ops
    cfg = json.loads((d / "config.json").read_text())
    got = _run_decoder(sess, cfg, IDS, prefill=10)
    ref = _torch_logits(tiny_llama, IDS, onnx_weights(d))
    # activations are rounded to 8 bits at run time: close, not exact
    assert _rel(got, ref) < 0.05
    assert (got.argmax(-1) == ref.argmax(-1)).mean() >= 0.9


def _gemm_weights(d: Path) -> dict[str, tuple[str, np.ndarray]]:
    """For each MatMulInteger of the graph in ``d``, by its weight initializer's name: how the
    weight arrives (``"int8"`` straight from the initializer, or ``"uint8"`` through the + 128
    conversion) and the int8 codes stored."""
    import onnx
    from onnx import numpy_helper

    from quantport.formats.onnx_pack import behind_conversion

    m = onnx.load(str(d / "model.onnx"))
    producers = {o: n for n in m.graph.node for o in n.output}
    inits = {i.name: i for i in m.graph.initializer}
    out = {}
    for n in m.graph.node:
        if n.op_type != "MatMulInteger":
            continue
        w = n.input[1]
        src = behind_conversion(w, producers, inits)
        assert src in inits, n.name
        if src != w:
            cast = producers[w]
            assert cast.op_type == "Cast" and cast.attribute[0].i == onnx.TensorProto.UINT8, \
                n.name
        out[src] = ("int8" if src == w else "uint8", numpy_helper.to_array(inits[src]))
    return out


def test_w8a8_gemms_cannot_saturate(exports, tiny_llama: Path, tmp_path: Path) -> None:
    """MLAS multiplies uint8 by int8 with VPMADDUBSW on x86 CPUs without VNNI, whose int16
    pair sums saturate: SmolLM2's W8A8 graph with 8-bit weight codes gave KLD 10 against its
    source on such a machine. --quant w8a8 writes 7-bit codes (|q| <= 64: 2 * 255 * 64 <
    2**15, ORT's reduce_range) that go to the fast uint8 x int8 kernel as they are; an 8-bit
    override goes as uint8 (+ 128) to the exact uint8 x uint8 kernel."""
    gemms = _gemm_weights(exports[("w8a8", "qdq")])
    assert gemms
    for name, (how, q) in gemms.items():
        assert how == "int8" and q.dtype == np.int8, name
        assert q.min() >= -64 and q.max() <= 63, name
    d = tmp_path / "w8a8-down8"
    r = make_recipe("onnx", "w8a8", tensor_types=["embed_tokens=f32", "down_proj=w8-channel-sym"])
    convert(open_path(tiny_llama), r, d, threads=1)
    gemms = _gemm_weights(d)
    down = {k: v for k, v in gemms.items() if "down_proj" in k}
    assert down and all(how == "uint8" for how, _ in down.values())
    assert max(int(np.abs(q).max()) for _, q in down.values()) > 64  # really 8-bit codes
    assert all(how == "int8" for k, (how, _) in gemms.items() if k not in down)


@pytest.mark.parametrize("code, as_uint8", [(127, True), (64, False)])
def test_int8_gemm_patterns_are_exact_where_8bit_int8_saturates(code: int, as_uint8: bool) -> None:
    """The two patterns test_w8a8_gemms_cannot_saturate checks for, run by ORT on inputs that
    saturate a uint8 x int8 kernel with 8-bit codes (adjacent activations and codes at their
    maxima): 8-bit codes through uint8, and 7-bit codes as int8, give the exact product. (8-bit
    codes as int8 are exact only on CPUs with VNNI.)"""
    from onnx import TensorProto, helper, numpy_helper

    k, n, m = 64, 8, 4
    w = np.full((k, n), code, np.int8)
    w[:, 1::2] = -code
    x = np.zeros((1, m, k), np.float32)
    x[..., :] = 1.0
    x[0, 0, 0] = -1.0  # a negative value: the zero point is 1, the others quantize to 255
    nodes = [helper.make_node("DynamicQuantizeLinear", ["x"], ["xq", "xs", "xz"])]
    inits = [numpy_helper.from_array(w, "w")]
    if as_uint8:
        nodes += [helper.make_node("Cast", ["w"], ["w16"], to=TensorProto.INT16),
                  helper.make_node("Add", ["w16", "c128"], ["wu16"]),
                  helper.make_node("Cast", ["wu16"], ["wu"], to=TensorProto.UINT8),
                  helper.make_node("MatMulInteger", ["xq", "wu", "xz", "zu"], ["y"])]
        inits += [numpy_helper.from_array(np.array(128, np.int16), "c128"),
                  numpy_helper.from_array(np.array(128, np.uint8), "zu")]
    else:
        nodes += [helper.make_node("MatMulInteger", ["xq", "w", "xz", "z"], ["y"])]
        inits += [numpy_helper.from_array(np.array(0, np.int8), "z")]
    g = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, m, k])],
        [helper.make_tensor_value_info("y", TensorProto.INT32, [1, m, n])], inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    y = ort.InferenceSession(model.SerializeToString(),
                             providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    # DynamicQuantizeLinear as the ONNX spec defines it, then the integer product
    lo, hi = min(0.0, float(x.min())), max(0.0, float(x.max()))
    scale = np.float32((hi - lo) / 255)
    zp = np.clip(np.round(-lo / scale), 0, 255)
    xq = np.clip(np.round(x / scale) + zp, 0, 255)
    ref = (xq - zp).astype(np.int64) @ w.astype(np.int64)
    assert np.array_equal(y, ref)


@pytest.mark.parametrize("code, as_uint8", [(127, True), (64, False)])
def test_per_token_gemm_patterns_are_exact_where_8bit_int8_saturates(code: int,
                                                                     as_uint8: bool) -> None:
    """The per-token W8A8 pattern (``--act-scheme token``: each row scaled to 127 / max|x|,
    QuantizeLinear + 128 as uint8, MatMulIntegerToFloat) on the same saturating inputs: the
    activations' codes sit at 255 (and 1), the weights' at +-code; 8-bit codes go as uint8, 7-bit
    codes as int8, and the product is exact either way."""
    from onnx import TensorProto, helper, numpy_helper

    k, n, m = 64, 8, 4
    w = np.full((k, n), code, np.int8)
    w[:, 1::2] = -code
    x = np.ones((1, m, k), np.float32)
    x[0, 0, 0] = -1.0
    c = {"one": np.array(1.0, np.float32), "c127": np.array(127.0, np.float32),
         "zp": np.array(128, np.uint8), "axes": np.array([-1], np.int64),
         "ws": np.ones(n, np.float32)}
    nodes = [helper.make_node("Abs", ["x"], ["ax"]),
             helper.make_node("ReduceMax", ["ax", "axes"], ["m"], keepdims=1),
             helper.make_node("Div", ["c127", "m"], ["inv"]),
             helper.make_node("Mul", ["x", "inv"], ["xi"]),
             helper.make_node("QuantizeLinear", ["xi", "one", "zp"], ["xq"])]
    if as_uint8:
        nodes += [helper.make_node("Cast", ["w"], ["w16"], to=TensorProto.INT16),
                  helper.make_node("Add", ["w16", "c128"], ["wu16"]),
                  helper.make_node("Cast", ["wu16"], ["wq"], to=TensorProto.UINT8)]
        c |= {"c128": np.array(128, np.int16), "wz": np.full(n, 128, np.uint8)}
    else:
        nodes += [helper.make_node("Identity", ["w"], ["wq"])]
        c |= {"wz": np.zeros(n, np.int8)}
    nodes += [helper.make_node("MatMulIntegerToFloat", ["xq", "wq", "one", "ws", "zp", "wz"],
                               ["y"], domain="com.microsoft")]
    inits = [numpy_helper.from_array(w, "w")] + [numpy_helper.from_array(v, k_)
                                                 for k_, v in c.items()]
    g = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, m, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, m, n])], inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 21),
                                                helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 10
    y = ort.InferenceSession(model.SerializeToString(),
                             providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    q = np.round(x * (127 / np.abs(x).max(-1, keepdims=True)))  # codes -127..127 around 128
    assert q.max() == 127 and q.min() == -127
    ref = q.astype(np.int64) @ w.astype(np.int64)
    assert np.array_equal(y, ref.astype(np.float32))


def test_genai_greedy_generation_equals_transformers(exports, tiny_llama: Path) -> None:
    og = pytest.importorskip("onnxruntime_genai")
    import torch
    from transformers import AutoModelForCausalLM

    prompt = [1, 504, 3458, 314, 253, 1345]
    model = og.Model(str(exports[("f32", "qdq")]))
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(prompt) + 16, do_sample=False)
    gen = og.Generator(model, params)
    gen.append_tokens(prompt)
    while not gen.is_done():
        gen.generate_next_token()
    got = [int(t) for t in gen.get_sequence(0)]
    m = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32).eval()
    ref = m.generate(torch.tensor([prompt]), max_new_tokens=16, min_new_tokens=16,
                     do_sample=False)[0].tolist()
    assert got == ref


def test_files_and_sizes_follow_the_plan(exports, tiny_llama: Path, tmp_path: Path) -> None:
    src = open_path(tiny_llama)
    for (quant, mode), d in exports.items():
        r = make_recipe("onnx", quant, onnx_matmul=mode, accuracy_level=0,
                        tensor_types=["embed_tokens=f32"] if quant == "w8a8" else ())
        plan = convert(src, r, tmp_path / "x", dry_run=True).plan
        on_disk = {p.name: p.stat().st_size for p in d.iterdir()}
        assert on_disk == plan.files, (quant, mode)
    meta = {p.key: p.value for p in __import__("onnx").load(
        str(exports[("w4-g32-sym", "qdq")] / "model.onnx"), load_external_data=False).metadata_props}
    assert json.loads(meta["quantport_recipe"])["quant"] == "w4-g32-sym"
    assert {"quantport_source", "quantport_version"} <= set(meta)


def test_records_are_named_after_hugging_face_tensors(exports) -> None:
    import onnx

    g = onnx.load(str(exports[("w4-g32-sym", "qdq")] / "model.onnx"),
                  load_external_data=False).graph
    names = {i.name for i in g.initializer}
    p = "model.layers.0.self_attn.o_proj.weight"
    assert {p + "_q", p + "_scale", p + "_zp"} <= names
    # q/k/v are stored as one fused weight, as the genai builder's qkv_proj
    qkv = "model.layers.0.self_attn.qkv_proj.weight"
    assert {qkv + "_q", qkv + "_scale", qkv + "_zp"} <= names
    recs = onnx_records(exports[("w4-g32-sym", "qdq")])
    for name in (p, "model.layers.0.self_attn.k_proj.weight"):
        assert recs[name].bits == 4 and recs[name].block_size == (1, 32)
    assert recs["model.layers.0.self_attn.k_proj.weight"].shape == (32, 64)


@pytest.mark.parametrize(("quant", "mode", "match"), [
    ("w3-g32-sym", "qdq", "cannot be written to ONNX"),
    ("w4-g8-sym", "qdq", "power.of.two"),
    ("w4-g8-sym", "nbits", "power-of-two block"),
    ("w6-g32-sym", "nbits", "2/4/8-bit"),
])
def test_schemes_onnx_cannot_express_are_refused(tiny_llama: Path, tmp_path: Path, quant, mode,
                                                 match) -> None:
    r = make_recipe("onnx", quant, onnx_matmul=mode)
    with pytest.raises(UnsupportedQuantError, match=match) as e:
        convert(open_path(tiny_llama), r, tmp_path / "o", dry_run=True)
    assert "schemes that export: w4-g32" in str(e.value)
    assert "\n" not in str(e.value)


def test_options_that_do_not_apply_are_usage_errors() -> None:
    with pytest.raises(OptionError, match="--onnx-matmul applies to --to onnx only"):
        make_recipe("safetensors", "w4-g32-sym", onnx_matmul="nbits")
    with pytest.raises(OptionError, match="0..4"):
        make_recipe("onnx", "w4-g32-sym", accuracy_level=5)
    with pytest.raises(OptionError, match="w8a8"):
        make_recipe("onnx", "w8a8", onnx_matmul="nbits")


def test_override_on_a_tied_embedding_and_unknown_names(tiny_llama: Path, tmp_path: Path) -> None:
    src = open_path(tiny_llama)
    r = make_recipe("onnx", "w4-g32-sym", tensor_types=["model.embed_tokens.weight=w8-channel-sym"])
    plan = convert(src, r, tmp_path / "o", dry_run=True).plan
    row = next(x for x in plan.rows if x.name == "model.embed_tokens.weight")
    assert str(row.target) == "w8-channel-sym" and row.reason.startswith("override")
    with pytest.raises(UnsupportedQuantError, match="matches no tensor"):
        convert(src, make_recipe("onnx", "w4-g32-sym", tensor_types=["lm_head=f32"]),
                tmp_path / "o", dry_run=True)


def test_reader_refuses_missing_truncated_and_foreign_data(exports, tmp_path: Path) -> None:
    import shutil

    d = tmp_path / "copy"
    shutil.copytree(exports[("w4-g32-sym", "qdq")], d)
    data = d / "model.onnx.data"
    size = data.stat().st_size
    with open(data, "r+b") as f:
        f.truncate(size - 100)
    with pytest.raises(FormatError, match="truncated"):
        onnx_weights(d)
    shutil.copy(exports[("w8-channel-sym", "qdq")] / "model.onnx.data", data)
    with pytest.raises(FormatError, match="does not belong to this graph"):
        onnx_weights(d)
    data.unlink()
    with pytest.raises(FormatError, match="missing") as e:
        onnx_weights(d)
    assert "\n" not in str(e.value)


def test_existing_output_follows_force_rules(exports, tiny_llama: Path, tmp_path: Path) -> None:
    src = open_path(tiny_llama)
    r = make_recipe("onnx", "f32")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="not a quantport artifact"):
        convert(src, r, foreign, force=True)
    d = tmp_path / "ours"
    convert(src, r, d, threads=1)
    with pytest.raises(OutputExistsError, match="--force"):
        convert(src, r, d)
    convert(src, r, d, force=True, threads=1)
    assert (d / "model.onnx.data").is_file()


@pytest.mark.parametrize("ggml", ["Q4_0", "Q8_0", "Q4_1"])
def test_gguf_codes_are_copied_not_rerounded(tiny_llama: Path, tmp_path: Path, ggml: str) -> None:
    """GGUF -> ONNX with --quant keep: the graph holds exactly the GGUF's values (its codes,
    scales and minimums), and ORT computes them within float noise."""
    gg = tmp_path / "tiny.gguf"
    convert(open_path(tiny_llama), make_recipe("gguf", ggml, pure=True,
                                                token_embedding_type="Q8_0"), gg, threads=1)
    src = open_path(gg)
    d = tmp_path / "onnx"
    plan = convert(src, make_recipe("onnx", "keep", accuracy_level=0), d, threads=1).plan
    kinds = {str(r.target) for r in plan.rows}
    assert ggml in kinds and "Q8_0" in kinds
    held = onnx_weights(d)
    assert set(held) == set(src.names())
    for name in held:
        np.testing.assert_array_equal(held[name], src.get(name), err_msg=name)
    cfg = json.loads((d / "config.json").read_text())
    got = _run_decoder(_session(d), cfg, IDS, prefill=7)
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    m = LlamaForCausalLM(LlamaConfig(**cfg)).eval()
    m.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in held.items()}, strict=False)
    m.tie_weights()
    with torch.no_grad():
        ref = m(torch.tensor(IDS)).logits.numpy()
    assert _rel(got, ref) < 1e-4


def test_gguf_types_onnx_cannot_hold_are_refused(tiny_llama: Path, tmp_path: Path) -> None:
    gg = tmp_path / "tiny.gguf"
    convert(open_path(tiny_llama), make_recipe("gguf", "Q4_1", pure=True), gg, threads=1)
    with pytest.raises(UnsupportedQuantError, match="Linear weights only") as e:
        convert(open_path(gg), make_recipe("onnx", "keep"), tmp_path / "o", dry_run=True)
    assert "w4-g32-asym" in str(e.value)
    with pytest.raises(UnsupportedQuantError, match="is not a GGUF"):
        convert(open_path(tiny_llama), make_recipe("onnx", "keep"), tmp_path / "o", dry_run=True)


@pytest.mark.slow
def test_default_model_f32_logits_and_genai_generation(default_model_dir: Path,
                                                       tmp_path: Path) -> None:
    """SmolLM2 in f32: ORT's logits (prefill, then decoding through the KV cache) against
    transformers, and onnxruntime-genai's greedy generation from the directory against
    transformers' greedy generation."""
    og = pytest.importorskip("onnxruntime_genai")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    d = tmp_path / "smollm2"
    convert(open_path(default_model_dir), make_recipe("onnx", "f32"), d)
    cfg = json.loads((d / "config.json").read_text())
    tok = AutoTokenizer.from_pretrained(default_model_dir)
    ids = np.asarray([tok("The capital of France is Paris. The capital of Germany is").input_ids])
    got = _run_decoder(_session(d), cfg, ids, prefill=ids.shape[1] - 4)
    m = AutoModelForCausalLM.from_pretrained(default_model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        ref = m(torch.tensor(ids)).logits.numpy()
    assert _rel(got, ref) < 1e-4
    model = og.Model(str(d))
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=ids.shape[1] + 32, do_sample=False)
    gen = og.Generator(model, params)
    gen.append_tokens(ids[0].tolist())
    while not gen.is_done():
        gen.generate_next_token()
    out = [int(t) for t in gen.get_sequence(0)]
    want = m.generate(torch.tensor(ids), max_new_tokens=32, do_sample=False)[0].tolist()
    assert out[:len(want)] == want


def _with_config(tiny_llama: Path, tmp_path: Path, **changes: object) -> Path:
    import shutil

    d = tmp_path / "edited"
    shutil.copytree(tiny_llama, d)
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(changes)
    (d / "config.json").write_text(json.dumps(cfg))
    return d


def test_llama3_rope_scaling_matches_transformers(tiny_llama: Path, tmp_path: Path) -> None:
    rope = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
            "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 32}
    src = _with_config(tiny_llama, tmp_path, rope_parameters=rope)
    d = tmp_path / "onnx"
    convert(open_path(src), make_recipe("onnx", "f32"), d, threads=1)
    cfg = json.loads((d / "config.json").read_text())
    ids = np.random.default_rng(1).integers(3, 49000, (1, 80))
    got = _run_decoder(_session(d), cfg, ids, prefill=70)
    assert _rel(got, _torch_logits(src, ids)) < 1e-4


def test_rope_types_the_graph_does_not_build_are_refused(tiny_llama: Path, tmp_path: Path) -> None:
    from quantport.errors import UnsupportedArchitectureError

    src = _with_config(tiny_llama, tmp_path, rope_parameters={
        "rope_type": "dynamic", "rope_theta": 10000.0, "factor": 4.0})
    with pytest.raises(UnsupportedArchitectureError, match="supported: default, linear, llama3"):
        convert(open_path(src), make_recipe("onnx", "f32"), tmp_path / "o", dry_run=True)


@pytest.mark.parametrize(("quant", "mode"), [("Q4_0", "qdq"), ("Q4_1", "qdq"), ("Q8_0", "nbits")])
def test_ggml_rounding_exports_exactly(tiny_llama: Path, tmp_path: Path, quant, mode) -> None:
    """--quant Q4_0|Q4_1|Q8_0: llama.cpp's rounding (quantport's byte-exact quantizer), held
    exactly by the graph and computed by ORT."""
    from quantport.quant.ggml import quantize_ggml

    d = tmp_path / quant
    src = open_path(tiny_llama)
    plan = convert(src, make_recipe("onnx", quant, onnx_matmul=mode, accuracy_level=0), d,
                   threads=1).plan
    embed = next(r for r in plan.rows if r.name == "model.embed_tokens.weight")
    assert str(embed.target) == ("Q8_0" if quant == "Q4_1" else quant)
    held = onnx_weights(d)
    for name in ("model.layers.0.self_attn.v_proj.weight", "model.layers.1.mlp.up_proj.weight"):
        want = dequantize(quantize_ggml(src.get(name), quant))
        np.testing.assert_array_equal(held[name], want)
    cfg = json.loads((d / "config.json").read_text())
    got = _run_decoder(_session(d), cfg, IDS, prefill=10)
    assert _rel(got, _torch_logits(tiny_llama, IDS, held)) < 1e-4


def test_right_padded_batch_matches_each_sequence_alone(exports, tiny_llama: Path) -> None:
    """A batch of prompts of different lengths, padded on the right (GroupQueryAttention reads
    each row's length from attention_mask, as onnxruntime-genai feeds it)."""
    d = exports[("f32", "qdq")]
    cfg = json.loads((d / "config.json").read_text())
    n_layers, kv = cfg["num_hidden_layers"], cfg["num_key_value_heads"]
    hd = cfg["hidden_size"] // cfg["num_attention_heads"]
    a, b = IDS[0, :9], IDS[1, :5]
    ids = np.zeros((2, 9), np.int64)
    mask = np.zeros((2, 9), np.int64)
    ids[0], mask[0] = a, 1
    ids[1, :5], mask[1, :5] = b, 1
    feed = {"input_ids": ids, "attention_mask": mask,
            **{f"past_key_values.{i}.{k}": np.zeros((2, kv, 0, hd), np.float32)
               for i in range(n_layers) for k in ("key", "value")}}
    got = _session(d).run(["logits"], feed)[0]
    assert _rel(got[0], _torch_logits(tiny_llama, a[None])[0]) < 1e-4
    assert _rel(got[1, :5], _torch_logits(tiny_llama, b[None])[0]) < 1e-4
