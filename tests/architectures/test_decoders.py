"""Qwen2, Qwen3 and Mistral: HF -> GGUF equals llama.cpp's own converter, llama.cpp runs it
with transformers' logits and tokenization, GGUF -> HF imports it back, quantized presets equal
llama-quantize's, and ``validate`` passes in llama.cpp and transformers.

Tiny random checkpoints (``_tiny.py``) with real tokenizers: Qwen2's byte-level BPE rebuilt from
llama.cpp's ``ggml-vocab-qwen2.gguf``, Mistral's SentencePiece model from the mistral-common
wheel.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import numpy as np
import pytest

from quantport.formats.gguf_file import read_tensor, scan_gguf
from quantport.ir import QuantizedTensor, dequantize
from quantport.readers import GGUFSource, open_path
from quantport.recipe import make_recipe

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _tiny  # noqa: E402

# keys that must differ from llama.cpp's converter output, and why
DIFFERENT = {
    # the converter's naming heuristics (directory name title-cased, a parameter-count label);
    # quantport names the model after its source and writes no size label
    "general.name", "general.size_label",
    # provenance quantport adds (llama-quantize adds general.quantized_by too)
    "general.quantized_by", "quantport.version", "quantport.recipe", "quantport.source",
}
# keys that may differ: the vendored gguf-py SpecialVocab infers add_bos/add_eos = false from a
# ByteLevel post-processor; the installed gguf 0.19 wrote nothing there, and llama.cpp's default
# for pre=qwen2 is the same false (llama-vocab.cpp)
MAY_DIFFER = {"tokenizer.ggml.add_bos_token", "tokenizer.ggml.add_eos_token"}

BUILDERS = {
    "qwen2": _tiny.tiny_qwen2,
    "qwen3": _tiny.tiny_qwen3,
    # Qwen2.5's long-context setting (rope_scaling yarn, factor 4 over 32k in the real config)
    "qwen2-yarn": functools.partial(_tiny.tiny_qwen2, rope_parameters={
        "rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 1024,
        "rope_theta": 1000000.0}),
    "mistral": _tiny.tiny_mistral,
    "phi3": _tiny.tiny_phi3,
    "gemma3": _tiny.tiny_gemma3,
}
#: the GGUF architecture each is written as, and the architecture its GGUF imports as
GGUF_ARCH = {"qwen2": "qwen2", "qwen2-yarn": "qwen2", "qwen3": "qwen3", "mistral": "llama",
             "phi3": "phi3", "gemma3": "gemma3"}
IMPORTS_AS = {"qwen2": "qwen2", "qwen3": "qwen3", "mistral": "llama", "phi3": "phi3",
              "gemma3": "gemma3"}
DECODERS = ["qwen2", "qwen3", "mistral", "phi3", "gemma3"]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("qwen")
    return {name: build(root / name) for name, build in BUILDERS.items()}


def _convert(src: Path, out: Path, preset: str) -> Path:
    from quantport.pipeline.convert import convert

    convert(open_path(src), make_recipe("gguf", preset), out, threads=1)
    return out


def _tensor(path: Path, info) -> np.ndarray:
    t = read_tensor(path, info)
    return dequantize(t) if isinstance(t, QuantizedTensor) else np.asarray(t)


def test_qwen2_tokenizer_gives_llamacpp_test_vectors() -> None:
    """The rebuilt tokenizer.json is Qwen2's: llama.cpp's own test vectors, every one."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(_tiny.qwen2_tokenizer_files()["tokenizer.json"])
    cases = _tiny.vocab_tests("qwen2")
    assert len(cases) > 40
    for text, ids in cases:
        assert tok.encode(text, add_special_tokens=False).ids == ids, repr(text)


@pytest.mark.slow
@pytest.mark.parametrize(("arch", "outtype", "preset"),
                         [("qwen2", "f32", "F32"), ("qwen2", "bf16", "BF16"),
                          ("qwen2-yarn", "f32", "F32"),
                          ("qwen3", "f32", "F32"), ("qwen3", "f16", "F16"),
                          ("mistral", "f32", "F32"), ("mistral", "bf16", "BF16"),
                          ("phi3", "f32", "F32"), ("phi3", "f16", "F16"),
                          ("gemma3", "f32", "F32"), ("gemma3", "bf16", "BF16")])
def test_gguf_equals_llamacpp_converter(checkpoints, tmp_path: Path, arch: str, outtype: str,
                                        preset: str) -> None:
    """Key by key (value and GGUF type) and tensor by tensor (name, shape, type, bytes)."""
    src = checkpoints[arch]
    ref = _tiny.llama_cpp_convert(src, tmp_path / "ref.gguf", outtype)
    ours = _convert(src, tmp_path / "ours.gguf", preset)
    a, b = scan_gguf(ours, keep_arrays=True), scan_gguf(ref, keep_arrays=True)
    assert b.metadata["general.architecture"] == GGUF_ARCH[arch]
    for k in sorted(set(a.metadata) | set(b.metadata)):
        if k in DIFFERENT or (k in MAY_DIFFER and k not in a.metadata):
            continue
        assert k in a.metadata and k in b.metadata, f"{k} only in {'ours' if k in a.metadata else 'llama.cpp'}"
        assert a.types[k] == b.types[k], k
        assert a.metadata[k] == b.metadata[k], k
    ta, tb = {t.name: t for t in a.tensors}, {t.name: t for t in b.tensors}
    assert list(ta) == list(tb) or sorted(ta) == sorted(tb)
    for name, info in tb.items():
        mine = ta[name]
        assert (mine.shape, mine.type_name) == (info.shape, info.type_name), name
        assert bytes(_raw(ours, mine)) == bytes(_raw(ref, info)), name
    if arch == "qwen2-yarn":
        assert a.metadata["qwen2.rope.scaling.type"] == "yarn"
    if arch == "qwen3":
        assert "blk.1.attn_k_norm.weight" in ta and "blk.0.attn_q.bias" not in ta
    elif arch.startswith("qwen2"):
        assert "blk.1.attn_v.bias" in ta
    elif arch == "gemma3":  # norms stored as 1 + weight, local RoPE base, sliding window
        assert a.metadata["gemma3.rope.freq_base_swa"] == 10000.0
        assert a.metadata["gemma3.attention.sliding_window"] == 8
        assert "blk.5.post_ffw_norm.weight" in ta
    elif arch == "phi3":  # fused projections stay fused
        assert ta["blk.0.attn_qkv.weight"].shape == (64 + 2 * 32, 64)
        assert ta["blk.0.ffn_up.weight"].shape == (2 * 160, 64)
        assert a.metadata["tokenizer.ggml.tokens"][32000] == "<|endoftext|>"
    else:  # Mistral: the SentencePiece vocabulary, Q/K permuted as for llama
        assert a.metadata["tokenizer.ggml.model"] == "llama"


def _raw(path: Path, info) -> memoryview:
    with open(path, "rb") as f:
        f.seek(info.offset)
        return memoryview(f.read(info.nbytes))


@pytest.mark.llamacpp
@pytest.mark.slow
@pytest.mark.parametrize("arch", DECODERS)
def test_llamacpp_runs_it_as_transformers_does(checkpoints, tmp_path: Path, arch: str) -> None:
    """llama.cpp's logits on quantport's F32 GGUF agree with transformers' on the checkpoint
    (max difference small against the logit scale, same argmax at every position), and
    llama.cpp tokenizes as the checkpoint's tokenizer does: transformers' for Qwen's
    byte-level BPE, SentencePiece itself (``tokenizer.model``) for Mistral, since the
    tokenizer.json transformers 5 saves for it splits runs of spaces differently
    ("▁▁▁▁" + "return" where SentencePiece gives "▁▁▁" + "▁return")."""
    pytest.importorskip("llama_cpp")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from quantport.validate.runner import LlamaCppLM

    src = checkpoints[arch]
    gguf = _convert(src, tmp_path / "f32.gguf", "F32")
    tok = AutoTokenizer.from_pretrained(src)
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    lm = LlamaCppLM(gguf, n_ctx=128)
    try:
        for text in _tiny.SENTENCES:
            if (src / "tokenizer.model").is_file():
                import sentencepiece

                sp = sentencepiece.SentencePieceProcessor(model_file=str(src / "tokenizer.model"))
                ids = sp.encode(text)
            else:
                ids = tok(text, add_special_tokens=False)["input_ids"]
            assert lm.tokenize(text) == ids
            with torch.no_grad():
                ref = model(torch.tensor([ids])).logits[0]
            got = lm.logits(np.array(ids))
            scale = float(ref.abs().max())
            assert float((got - ref).abs().max()) < 2e-3 * scale, text
            assert torch.equal(got.argmax(-1), ref.argmax(-1)), text
    finally:
        lm.close()


@pytest.mark.slow
@pytest.mark.parametrize("arch", DECODERS)
def test_gguf_import_runs_in_transformers(checkpoints, tmp_path: Path, arch: str) -> None:
    """GGUF -> HF: the imported config builds the same transformers class, and with the
    imported tensors it gives the checkpoint's logits (Mistral comes back as
    LlamaForCausalLM: its GGUF is a llama one)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    src = checkpoints[arch]
    gguf = _convert(src, tmp_path / "f32.gguf", "F32")
    imported = GGUFSource(gguf)
    assert imported.architecture.name == IMPORTS_AS[arch]
    cfg = dict(imported.config)
    hf_cfg = AutoConfig.for_model(cfg.pop("model_type"), **cfg)
    model = AutoModelForCausalLM.from_config(hf_cfg).eval()
    assert type(model).__name__ == imported.config["architectures"][0]
    state = {n: torch.from_numpy(np.array(imported.get(n))) for n in imported.names()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)
    model.tie_weights()
    ref = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    ids = torch.tensor([AutoTokenizer.from_pretrained(src)(_tiny.SENTENCES[1])["input_ids"]])
    with torch.no_grad():
        got, want = model(ids).logits, ref(ids).logits
    assert torch.equal(got, want)


@pytest.mark.llamacpp
@pytest.mark.slow
@pytest.mark.parametrize("arch", DECODERS)
def test_q4_k_m_equals_llama_quantize_and_loads(checkpoints, tmp_path: Path, arch: str) -> None:
    """Q4_K_M straight from the checkpoint: every tensor byte-identical to llama-quantize run
    on llama.cpp's converter's F32 GGUF, and llama.cpp loads and runs it."""
    pytest.importorskip("llama_cpp")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from _llamacpp import llama_quantize

    from quantport.validate.runner import LlamaCppLM

    src = checkpoints[arch]
    ref_f32 = _tiny.llama_cpp_convert(src, tmp_path / "ref-f32.gguf", "f32")
    ref = tmp_path / "ref-q4km.gguf"
    llama_quantize(ref_f32, ref, "Q4_K_M")
    ours = _convert(src, tmp_path / "ours-q4km.gguf", "Q4_K_M")
    a, b = scan_gguf(ours), scan_gguf(ref)
    tb = {t.name: t for t in b.tensors}
    assert sorted(t.name for t in a.tensors) == sorted(tb)
    types = set()
    for t in a.tensors:
        assert t.type_name == tb[t.name].type_name, t.name
        assert bytes(_raw(ours, t)) == bytes(_raw(ref, tb[t.name])), t.name
        types.add(t.type_name)
    # widths 64 and 160 are not multiples of 256: llama.cpp's fallbacks (Q5_0, Q8_0) apply
    assert types - {"F32"}
    lm = LlamaCppLM(ours, n_ctx=64)
    try:
        logits = lm.logits(np.array(lm.tokenize(_tiny.SENTENCES[0])))
    finally:
        lm.close()
    assert bool(np.isfinite(logits.numpy()).all())


@pytest.mark.llamacpp
@pytest.mark.slow
@pytest.mark.parametrize("arch", DECODERS)
def test_validate_verdict_in_both_runtimes(checkpoints, tmp_path: Path, arch: str) -> None:
    """``quantport validate``: a Q8_0 GGUF in llama.cpp and a w4 compressed-tensors checkpoint
    in transformers are both correct (runtime vs their own weights, tokenizer ids) and within
    the default quality limits."""
    import json

    from click.testing import CliRunner

    from quantport.cli.main import cli

    src = checkpoints[arch]
    limits: list[str] = []
    if arch == "gemma3":
        # the tiny Gemma's unit-scale random embeddings make it near-certain of wrong tokens
        # (reference PPL ~1e38): a perplexity ratio then measures noise in ~90-nat log-probs,
        # not quantization quality; KLD and top-1 still apply at their defaults
        limits = ["--max-ppl-ratio", "1.5"]
    for to, quant, out in (("gguf", "Q8_0", tmp_path / "q8.gguf"),
                           ("safetensors", "w4-g32-sym", tmp_path / "w4")):
        res = CliRunner().invoke(cli, ["convert", str(src), "--to", to, "--quant", quant,
                                       "-o", str(out)], catch_exceptions=False)
        assert res.exit_code == 0, res.output
        res = CliRunner().invoke(cli, ["validate", str(out), "--against", str(src),
                                       "--windows", "2", "--ctx", "64", "--json", *limits],
                                 catch_exceptions=False)
        report = json.loads(res.stdout)
        checks = {c["name"]: c for c in report["checks"]}
        assert {"tokenizer_ids_match", "weights_kld_mean", "kld_mean"} <= set(checks)
        if arch in ("mistral", "phi3") and to == "gguf":
            # the reference of a SentencePiece source is its tokenizer.model, whose ids
            # llama.cpp gives (transformers 5's tokenizer.json differs at a leading space)
            assert "SentencePiece" in checks["tokenizer_ids_match"]["detail"], checks
        assert res.exit_code == 0, res.output
        assert report["correct"] and report["passed"], report["failures"]


@pytest.mark.llamacpp
@pytest.mark.slow
@pytest.mark.parametrize("arch", DECODERS)
def test_gguf_requantized_equals_llama_quantize(checkpoints, tmp_path: Path, arch: str) -> None:
    """GGUF in, GGUF out: quantport's F32 GGUF re-quantized to Q8_0 through the import
    (layout edits undone, then redone) equals llama-quantize on the same file, tensor by
    tensor, and keeps the vocabulary key by key."""
    pytest.importorskip("llama_cpp")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from _llamacpp import llama_quantize

    f32 = _convert(checkpoints[arch], tmp_path / "f32.gguf", "F32")
    ref = tmp_path / "ref-q8.gguf"
    llama_quantize(f32, ref, "Q8_0")
    ours = _convert(f32, tmp_path / "ours-q8.gguf", "Q8_0")
    a, b = scan_gguf(ours, keep_arrays=True), scan_gguf(ref, keep_arrays=True)
    tb = {t.name: t for t in b.tensors}
    assert sorted(t.name for t in a.tensors) == sorted(tb)
    for t in a.tensors:
        assert t.type_name == tb[t.name].type_name, t.name
        assert bytes(_raw(ours, t)) == bytes(_raw(ref, tb[t.name])), t.name
    for k, v in b.metadata.items():
        if k.startswith((f"{GGUF_ARCH[arch]}.", "tokenizer.")):
            assert a.metadata.get(k) == v and a.types.get(k) == b.types[k], k


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["qwen2", "qwen3", "mistral", "phi3", "gemma3"])
def test_gguf_to_safetensors_loads_in_transformers(checkpoints, tmp_path: Path,
                                                   arch: str) -> None:
    """``convert X.gguf --to safetensors --quant f32``: a directory transformers loads as
    it is (config, weights, tokenizer), giving the checkpoint's logits."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from quantport.pipeline.convert import convert

    src = checkpoints[arch]
    f32 = _convert(src, tmp_path / "f32.gguf", "F32")
    out = tmp_path / "hf"
    convert(open_path(f32), make_recipe("safetensors", "f32"), out, threads=1)
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    # Mistral's GGUF is a llama one: it comes back as LlamaForCausalLM
    assert type(model).__name__ == GGUFSource(f32).config["architectures"][0]
    tok = AutoTokenizer.from_pretrained(out)
    assert tok(_tiny.SENTENCES[0], add_special_tokens=False)["input_ids"]
    ref = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    ids = torch.tensor([AutoTokenizer.from_pretrained(src)(_tiny.SENTENCES[1])["input_ids"]])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, ref(ids).logits)
