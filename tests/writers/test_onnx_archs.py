"""ONNX decoders of Qwen2/2.5, Qwen3, Mistral, Phi-3 and Gemma 3 (text): ONNX Runtime's
logits against transformers (prefill, then one token at a time through the KV cache), the
weights the graph holds against what ORT computes, ORT's fusion of every quantized weight
MatMul into MatMulNBits, W8A8 int8 GEMMs, onnxruntime-genai's greedy generation,
``quantport validate``'s correctness verdict, and the configurations the graph refuses.

Tiny random checkpoints with real tokenizers from ``tests/architectures/_tiny.py``; variants
exercise sliding windows shorter than the test sequences (Mistral / Phi-3 on every layer,
Qwen2's ``max_window_layers``, Gemma 3's 5-local-1-global pattern with its own local RoPE
base), Phi-3's partial rotary, and a Gemma 3 config written before transformers 5 (``rope_theta``
/ ``rope_local_base_freq`` / linear scaling on the global layers) with final logit
soft-capping.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from quantport.errors import UnsupportedArchitectureError
from quantport.formats.onnx_read import onnx_weights
from quantport.pipeline import convert
from quantport.readers import open_path
from quantport.recipe import make_recipe

ort = pytest.importorskip("onnxruntime")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "architectures"))
import _tiny  # noqa: E402


def _gemma3_old_config(out: Path) -> Path:
    """Gemma 3 with final logit soft-capping, its config rewritten in the pre-transformers-5
    form hub checkpoints have (rope_theta + rope_local_base_freq, linear scaling of the
    global layers' RoPE as Gemma 3 4B+, sliding_window_pattern instead of layer_types)."""
    d = _tiny.tiny_gemma3(out, final_logit_softcapping=30.0)
    cfg = json.loads((d / "config.json").read_text())
    rope = cfg.pop("rope_parameters")
    cfg.pop("layer_types")
    cfg.update(rope_theta=rope["full_attention"]["rope_theta"],
               rope_local_base_freq=rope["sliding_attention"]["rope_theta"],
               rope_scaling={"rope_type": "linear", "factor": 8.0}, sliding_window_pattern=6)
    (d / "config.json").write_text(json.dumps(cfg))
    return d


#: name -> how to build it
CHECKPOINTS: dict[str, Callable[[Path], Path]] = {
    "qwen2": _tiny.tiny_qwen2,
    # layer 0 full, layer 1 a window of 4 (Qwen2Config.layer_types from max_window_layers)
    "qwen2-window": lambda p: _tiny.tiny_qwen2(p, use_sliding_window=True, sliding_window=4,
                                               max_window_layers=1),
    "qwen3": _tiny.tiny_qwen3,
    "mistral": _tiny.tiny_mistral,
    "mistral-window": lambda p: _tiny.tiny_mistral(p, sliding_window=5),
    "phi3": _tiny.tiny_phi3,
    # head 32 rotated over its first 16 dimensions, a window of 6
    "phi3-partial": lambda p: _tiny.tiny_phi3(p, partial_rotary_factor=0.5, sliding_window=6,
                                              num_attention_heads=2, num_key_value_heads=1),
    "gemma3": _tiny.tiny_gemma3,
    "gemma3-old-config": _gemma3_old_config,
    # Qwen2.5's long-context setting (YaRN, factor 4 over 32k in the real config)
    "qwen2-yarn": lambda p: _tiny.tiny_qwen2(p, rope_parameters={
        "rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 1024,
        "rope_theta": 1000000.0}),
}
ARCHS = ["qwen2", "qwen3", "mistral", "phi3", "gemma3"]
#: MatMulNBits in a w4 graph: the weight MatMuls of a layer (q/k/v fused into one qkv_proj,
#: Qwen2's biases into one qkv bias; Phi-3's own fused qkv and gate_up), times the layers,
#: + the head
LINEARS = {"qwen2": 5 * 2 + 1, "qwen3": 5 * 2 + 1, "mistral": 5 * 2 + 1, "phi3": 4 * 2 + 1,
           "gemma3": 5 * 6 + 1}
#: onnxruntime-genai's model.type for each (the genai builder's make_genai_config / builder.py)
GENAI_TYPE = {"qwen2": "qwen2", "qwen3": "qwen3", "mistral": "mistral", "phi3": "phi3",
              "gemma3": "gemma3_text"}


class _Store:
    """Checkpoints and exports built on first use (a test selection builds only its own)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._ckpt: dict[str, Path] = {}
        self._onnx: dict[tuple[str, str, str], Path] = {}

    def ckpt(self, name: str) -> Path:
        if name not in self._ckpt:
            self._ckpt[name] = CHECKPOINTS[name](self.root / name)
        return self._ckpt[name]

    def onnx(self, name: str, quant: str, mode: str = "qdq") -> Path:
        if (name, quant, mode) not in self._onnx:
            d = self.root / f"{name}-{quant}-{mode}"
            # accuracy level 0: fp32 arithmetic in MatMulNBits, comparable tightly; a w8a8
            # token table stays float (the tied head then is a float MatMul)
            r = make_recipe("onnx", quant, onnx_matmul=mode, accuracy_level=0,
                            tensor_types=["embed_tokens=f32"] if quant == "w8a8" else ())
            convert(open_path(self.ckpt(name)), r, d, threads=1)
            self._onnx[(name, quant, mode)] = d
        return self._onnx[(name, quant, mode)]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> _Store:
    return _Store(tmp_path_factory.mktemp("onnx-archs"))


def _session(d: Path, level: int = 0, optimized: Path | None = None) -> Any:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    so.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", str(level))
    if optimized is not None:
        so.optimized_model_filepath = str(optimized)
    return ort.InferenceSession(str(d / "model.onnx"), so, providers=["CPUExecutionProvider"])


def _run_decoder(sess: Any, d: Path, ids: np.ndarray, prefill: int) -> np.ndarray:
    """Logits of ``ids``: ``prefill`` tokens at once, then one token at a time through the
    KV cache (past shapes from genai_config.json: Qwen3's and Gemma's head_dim is not
    hidden / heads)."""
    dec = json.loads((d / "genai_config.json").read_text())["model"]["decoder"]
    n_layers, kv, hd = dec["num_hidden_layers"], dec["num_key_value_heads"], dec["head_size"]
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


def _torch_model(hf_dir: Path, weights: dict[str, np.ndarray] | None = None) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    if weights is not None:
        sd = m.state_dict()
        tied = "lm_head.weight" not in weights
        assert set(weights) == set(sd) - ({"lm_head.weight"} if tied else set())
        m.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in weights.items()},
                          strict=False)
        if tied:
            m.tie_weights()
    return m


def _torch_logits(hf_dir: Path, ids: np.ndarray,
                  weights: dict[str, np.ndarray] | None = None) -> np.ndarray:
    import torch

    with torch.no_grad():
        return _torch_model(hf_dir, weights)(torch.tensor(ids)).logits.numpy()


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


# 20 tokens: past every sliding window of the variants (4, 5, 6, 8); ids below the smallest
# vocabulary (32000)
IDS = np.random.default_rng(0).integers(3, 32000, (2, 20))


@pytest.mark.parametrize("name", list(CHECKPOINTS))
def test_f32_logits_match_transformers_prefill_and_decode(store: _Store, name: str) -> None:
    d = store.onnx(name, "f32")
    sess = _session(d)
    ref = _torch_logits(store.ckpt(name), IDS)
    for prefill in (IDS.shape[1], 7):
        got = _run_decoder(sess, d, IDS, prefill)
        assert _rel(got, ref) < 1e-4, (name, prefill)
        assert (got.argmax(-1) == ref.argmax(-1)).all(), (name, prefill)


# (quant, --onnx-matmul): QDQ fused by ORT, MatMulNBits written directly (asymmetric), float16
# storage, llama.cpp's Q4_1 (float minimums)
VARIANTS = [("w4-g32-sym", "qdq"), ("w4-g32-asym", "nbits"), ("f16", "qdq"), ("Q4_1", "qdq")]


@pytest.mark.parametrize("variant", VARIANTS, ids="-".join)
@pytest.mark.parametrize("arch", ARCHS)
def test_ort_computes_the_weights_the_graph_holds(store: _Store, arch: str,
                                                   variant: tuple[str, str]) -> None:
    """The graph's weights, read back by quantport (Gemma's norms as Hugging Face stores
    them: the graph adds the 1), run in transformers: ORT's logits equal them."""
    d = store.onnx(arch, *variant)
    got = _run_decoder(_session(d), d, IDS, prefill=7)
    ref = _torch_logits(store.ckpt(arch), IDS, onnx_weights(d))
    assert _rel(got, ref) < 1e-4
    if variant[0] != "f16":  # the rounding is visible against the source: not vacuous
        assert _rel(got, _torch_logits(store.ckpt(arch), IDS)) > 1e-3


@pytest.mark.parametrize("arch", ARCHS)
def test_w4_every_weight_matmul_fuses(store: _Store, arch: str, tmp_path: Path) -> None:
    import onnx

    opt = tmp_path / "optimized.onnx"
    _session(store.onnx(arch, "w4-g32-sym"), level=4, optimized=opt)
    g = onnx.load(str(opt), load_external_data=False).graph
    ops = [n.op_type for n in g.node]
    producers = {o: n.op_type for n in g.node for o in n.output}
    weights = {i.name for i in g.initializer}
    unfused = [n.name for n in g.node if n.op_type in ("MatMul", "Gemm")
               and (producers.get(n.input[1]) == "DequantizeLinear" or n.input[1] in weights)]
    assert unfused == [], f"weight MatMuls left unfused: {unfused}"
    assert "DequantizeLinear" not in ops
    assert ops.count("MatMulNBits") == LINEARS[arch]


@pytest.mark.parametrize("arch", ARCHS)
def test_w8a8_runs_int8_gemms(store: _Store, arch: str, tmp_path: Path) -> None:
    import onnx

    d = store.onnx(arch, "w8a8")
    opt = tmp_path / "optimized.onnx"
    sess = _session(d, optimized=opt)
    ops = [n.op_type for n in onnx.load(str(opt), load_external_data=False).graph.node]
    # every Linear but a tied head (float with the f32 token table) on int8 activations
    tied = arch in ("qwen2", "qwen3", "gemma3")
    assert ops.count("DynamicQuantizeMatMul") + ops.count("MatMulIntegerToFloat") == \
        LINEARS[arch] - tied
    assert "MatMulInteger" not in ops and "MatMulNBits" not in ops
    got = _run_decoder(sess, d, IDS, prefill=10)
    ref = _torch_logits(store.ckpt(arch), IDS, onnx_weights(d))
    # activations are rounded to 8 bits at run time: close, not exact
    assert _rel(got, ref) < 0.05
    assert (got.argmax(-1) == ref.argmax(-1)).mean() >= 0.9


@pytest.mark.parametrize("name", [*ARCHS, "mistral-window"])
def test_genai_greedy_generation_equals_transformers(store: _Store, name: str) -> None:
    """onnxruntime-genai generates from the directory as it is (its shared past/present
    buffer, past the sliding windows) the tokens transformers' greedy search gives."""
    og = pytest.importorskip("onnxruntime_genai")
    import torch

    d = store.onnx(name, "f32")
    cfg = json.loads((d / "genai_config.json").read_text())["model"]
    assert cfg["type"] == GENAI_TYPE[name.split("-")[0]]
    prompt = [int(t) for t in IDS[0, :10]]
    model = og.Model(str(d))
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(prompt) + 12, do_sample=False)
    gen = og.Generator(model, params)
    gen.append_tokens(prompt)
    while not gen.is_done():
        gen.generate_next_token()
    got = [int(t) for t in gen.get_sequence(0)]
    ref = _torch_model(store.ckpt(name)).generate(
        torch.tensor([prompt]), max_new_tokens=12, min_new_tokens=12, do_sample=False)[0]
    assert got == ref.tolist()


_REPORTS: dict[str, Any] = {}


def _report(store: _Store, arch: str) -> Any:
    from quantport.validate.runner import validate

    if arch not in _REPORTS:
        _REPORTS[arch] = validate(store.onnx(arch, "w4-g32-sym"), store.ckpt(arch), ctx=64,
                                  n_windows=2, threads=2)
    return _REPORTS[arch]


@pytest.mark.parametrize("arch", ARCHS)
def test_validate_weights_and_generation_checks_pass(store: _Store, arch: str) -> None:
    """``quantport validate``: ORT against quantport's torch forward of the weights the graph
    holds (KLD, top-1) and greedy decoding through the cache equal to it."""
    rep = _report(store, arch)
    checks = {c["name"]: c for c in rep.checks if c["group"] == "correctness"}
    assert {"weights_kld_mean", "weights_top1_agreement", "generate_greedy_match"} <= set(checks)
    failed = [n for n, c in checks.items() if n != "tokenizer_ids_match" and not c["passed"]]
    assert failed == []
    assert rep.extra["generate_tokens"] == rep.extra["ir_generate_tokens"]


# onnxruntime-genai (onnxruntime-extensions) reads the tokenizer.json transformers 5 converts
# from a SentencePiece tokenizer.model its own way (" x": sentencepiece [29871, 921], genai
# [259, 29916], tokenizers [921]; onnxruntime-extensions#984), so for SentencePiece checkpoints
# the ONNX writer exports the tokenizer.json quantport rebuilds from the GGUF vocabulary, which
# genai reads as SentencePiece tokenizes; validate's reference is the SentencePiece model.
@pytest.mark.parametrize("arch", ["qwen2", "qwen3", "gemma3", "mistral", "phi3"])
def test_validate_genai_tokenizer_gives_the_source_ids(store: _Store, arch: str) -> None:
    rep = _report(store, arch)
    check = next(c for c in rep.checks if c["name"] == "tokenizer_ids_match")
    assert check["passed"] and rep.correct, rep.failures
    if arch in ("mistral", "phi3", "gemma3"):
        assert "SentencePiece" in check["detail"], check["detail"]


def _edited(store: _Store, name: str, tmp_path: Path, **changes: Any) -> Path:
    d = tmp_path / "edited"
    shutil.copytree(store.ckpt(name), d)
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(changes)
    (d / "config.json").write_text(json.dumps(cfg))
    return d


@pytest.mark.parametrize(("name", "changes", "match"), [
    # Phi-3-*-128k / Phi-3.5: LongRoPE
    ("phi3", {"rope_parameters": {"rope_type": "longrope", "rope_theta": 10000.0,
                                  "long_factor": [1.0] * 8, "short_factor": [1.0] * 8}},
     "rope_scaling type 'longrope'.*supported: default, linear, llama3"),
    ("phi3", {"rope_parameters": {"rope_type": "default", "rope_theta": 10000.0,
                                  "partial_rotary_factor": 0.25}},
     "rotating 4 of 16 head dimensions.*supported"),
    ("gemma3", {"attn_logit_softcapping": 50.0}, "attn_logit_softcapping.*supported: null"),
    ("gemma3", {"use_bidirectional_attention": True}, "causal decoders; supported: false"),
    ("gemma3", {"layer_types": ["chunked_attention"] * 6},
     "sliding_attention / full_attention per layer"),
    ("gemma3", {"hidden_activation": "silu"}, "builds gelu_pytorch_tanh, gelu MLPs"),
])
def test_configs_the_graph_cannot_express_are_refused(store: _Store, tmp_path: Path, name: str,
                                                      changes: dict, match: str) -> None:
    src = _edited(store, name, tmp_path, **changes)
    with pytest.raises(UnsupportedArchitectureError, match=match) as e:
        convert(open_path(src), make_recipe("onnx", "f32"), tmp_path / "o", dry_run=True)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("arch", ["qwen2", "qwen3", "mistral", "phi3", "gemma3"])
def test_gguf_codes_are_copied_for_every_architecture(store: _Store, arch: str,
                                                      tmp_path: Path) -> None:
    """HF -> GGUF Q8_0 -> ONNX ``--quant keep``: the graph holds exactly what the GGUF holds
    (Q8_0 codes copied, q/k rows back in Hugging Face order only where llama.cpp permuted
    them: Mistral, written as llama; Gemma's norms without the GGUF's +1), and ORT computes
    those weights."""
    gg = tmp_path / "tiny.gguf"
    convert(open_path(store.ckpt(arch)), make_recipe("gguf", "Q8_0", pure=True), gg, threads=1)
    src = open_path(gg)
    d = tmp_path / "onnx"
    plan = convert(src, make_recipe("onnx", "keep", accuracy_level=0), d, threads=1).plan
    assert any(str(r.target) == "Q8_0" and r.reason.startswith("Q8_0 codes copied")
               for r in plan.rows)
    held = onnx_weights(d)
    assert set(held) == set(src.names())
    for name in held:
        np.testing.assert_array_equal(held[name], src.get(name), err_msg=name)
    got = _run_decoder(_session(d), d, IDS, prefill=7)
    assert _rel(got, _torch_logits(store.ckpt(arch), IDS, held)) < 1e-4


def test_qwen2_qkv_biases_are_packed_with_the_weights(store: _Store) -> None:
    """Qwen2's q/k/v weights and biases are stored as one qkv_proj weight and one bias (the
    genai builder's packed path: one MatMul, one Add, GroupQueryAttention's packed input), and
    read back as the source's three biases."""
    import onnx

    d = store.onnx("qwen2", "w4-g32-sym")
    names = {i.name for i in onnx.load(str(d / "model.onnx"), load_external_data=False)
             .graph.initializer}
    a = "model.layers.1.self_attn."
    assert {a + "qkv_proj.bias", a + "qkv_proj.weight_q"} <= names
    assert not any(n.startswith((a + "q_proj", a + "k_proj", a + "v_proj")) for n in names)
    held, src = onnx_weights(d), open_path(store.ckpt("qwen2"))
    for p in "qkv":
        np.testing.assert_array_equal(held[a + p + "_proj.bias"],
                                      np.asarray(src.get(a + p + "_proj.bias"), np.float32))


@pytest.mark.parametrize("arch", ARCHS)
def test_files_and_sizes_follow_the_plan(store: _Store, arch: str, tmp_path: Path) -> None:
    d = store.onnx(arch, "w4-g32-sym")
    r = make_recipe("onnx", "w4-g32-sym", accuracy_level=0)
    plan = convert(open_path(store.ckpt(arch)), r, tmp_path / "x", dry_run=True).plan
    assert {p.name: p.stat().st_size for p in d.iterdir()} == plan.files


@pytest.mark.parametrize("name", ["qwen2", "mistral-window", "gemma3"])
def test_right_padded_batch_matches_each_sequence_alone(store: _Store, name: str) -> None:
    """Prompts of different lengths padded on the right, as onnxruntime-genai batches them:
    GroupQueryAttention reads each row's length from attention_mask, windows included."""
    d = store.onnx(name, "f32")
    dec = json.loads((d / "genai_config.json").read_text())["model"]["decoder"]
    n_layers, kv, hd = dec["num_hidden_layers"], dec["num_key_value_heads"], dec["head_size"]
    a, b = IDS[0, :18], IDS[1, :11]
    ids = np.zeros((2, 18), np.int64)
    mask = np.zeros((2, 18), np.int64)
    ids[0], mask[0] = a, 1
    ids[1, :11], mask[1, :11] = b, 1
    feed = {"input_ids": ids, "attention_mask": mask,
            **{f"past_key_values.{i}.{k}": np.zeros((2, kv, 0, hd), np.float32)
               for i in range(n_layers) for k in ("key", "value")}}
    got = _session(d).run(["logits"], feed)[0]
    assert _rel(got[0], _torch_logits(store.ckpt(name), a[None])[0]) < 1e-4
    assert _rel(got[1, :11], _torch_logits(store.ckpt(name), b[None])[0]) < 1e-4


# rotary settings, each with the transformers rotary embedding class that computes them
ROPES = {
    "default": ("qwen2", {"rope_parameters": {"rope_type": "default", "rope_theta": 1e6}}),
    "linear": ("qwen2", {"rope_parameters": {"rope_type": "linear", "rope_theta": 1e4,
                                             "factor": 8.0}}),
    "llama3": ("qwen2", {"rope_parameters": {
        "rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 64}}),
    "yarn": ("qwen2", {"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e6,
                                           "factor": 4.0,
                                           "original_max_position_embeddings": 1024}}),
    "yarn-mscale": ("qwen3", {"rope_parameters": {
        "rope_type": "yarn", "rope_theta": 1e4, "factor": 16.0, "beta_fast": 16,
        "beta_slow": 2, "mscale": 1.0, "mscale_all_dim": 0.5, "truncate": False,
        "original_max_position_embeddings": 64}}),
    "partial": ("phi3", {"rope_parameters": {"rope_type": "default", "rope_theta": 1e4,
                                             "partial_rotary_factor": 0.5}}),
}


@pytest.mark.parametrize("rope", list(ROPES))
def test_rope_caches_equal_transformers_rotary_embedding(rope: str) -> None:
    """The cos/sin tables the graph feeds GroupQueryAttention equal those of transformers'
    rotary embedding (attention scaling included) at every position."""
    import importlib

    import torch
    from quantport.formats.onnx_graph import rope_caches

    family, changes = ROPES[rope]
    mod = importlib.import_module(f"transformers.models.{family}.modeling_{family}")
    conf = importlib.import_module(f"transformers.models.{family}.configuration_{family}")
    cls = {"qwen2": "Qwen2", "qwen3": "Qwen3", "phi3": "Phi3"}[family]
    cfg = getattr(conf, cls + "Config")(hidden_size=128, num_attention_heads=2,
                                        max_position_embeddings=512, **changes)
    emb = getattr(mod, cls + "RotaryEmbedding")(cfg)
    pos = torch.arange(512)[None]
    with torch.no_grad():
        cos_ref, sin_ref = (t[0].numpy() for t in emb(torch.zeros(1, dtype=torch.float32), pos))
    hd = getattr(cfg, "head_dim", None) or 64
    cos, sin = rope_caches(cfg.to_dict(), hd)
    half = cos.shape[1]
    assert half == cos_ref.shape[1] // 2
    # numpy's and torch's float32 pow differ by an ulp for some exponents; at position p an
    # ulp of a frequency near 1 moves the angle by p * 6e-8 (3e-5 at 511)
    np.testing.assert_allclose(cos, cos_ref[:, :half], rtol=0, atol=5e-5)
    np.testing.assert_allclose(sin, sin_ref[:, :half], rtol=0, atol=5e-5)
    if rope != "default":  # the scaling changes the tables: the comparison is not vacuous
        plain, _ = rope_caches({"rope_theta": cfg.rope_parameters["rope_theta"],
                                "max_position_embeddings": 512}, hd)
        assert plain.shape != cos.shape or np.abs(plain - cos).max() > 1e-3


@pytest.mark.parametrize("quant", ["f32", "w4-g32-sym", "w8a8"])
def test_cli_convert_and_validate(store: _Store, tmp_path: Path, quant: str) -> None:
    """``quantport convert TINY --to onnx --quant Q`` then ``quantport validate`` (Gemma 3:
    the architecture whose graph differs most from llama's), exit status 0."""
    from click.testing import CliRunner

    from quantport.cli.main import cli

    runner = CliRunner()
    out = tmp_path / "g3"
    res = runner.invoke(cli, ["convert", str(store.ckpt("gemma3")), "--to", "onnx", "--quant",
                              quant, "-o", str(out)])
    assert res.exit_code == 0, res.output
    res = runner.invoke(cli, ["validate", str(out), "--against", str(store.ckpt("gemma3")),
                              "--ctx", "64", "--windows", "2", "--json"])
    assert res.exit_code == 0, res.output
    rep = json.loads(res.stdout[res.stdout.index("{"):])
    assert rep["correct"] and rep["passed"]
