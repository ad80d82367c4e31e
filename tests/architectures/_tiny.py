"""Tiny random checkpoints of the architectures quantport converts, with real tokenizers.

No hub access: weights come from each architecture's transformers config class (seeded, a few
layers, hidden 64, GQA and head sizes like the real models, saved in bf16 safetensors) and the
tokenizers from the test vocabularies of the llama-cpp-python 0.3.36 source distribution
(``vendor/llama.cpp/models/ggml-vocab-*.gguf``), which also holds llama.cpp's own
``convert_hf_to_gguf.py`` that the tests compare against.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from quantport.formats.gguf_file import scan_gguf

ROOT = Path(__file__).resolve().parents[2]
_SDIST = Path(os.environ.get("QUANTPORT_CACHE", str(ROOT / ".cache"))) / \
    "llama-cpp-python-0.3.36-src"
LLAMA_CPP = _SDIST / "llama_cpp_python-0.3.36" / "vendor" / "llama.cpp"
VOCABS = LLAMA_CPP / "models"


def _ensure_llama_cpp() -> None:
    """The pinned llama-cpp-python source distribution (vendored llama.cpp: the converter,
    gguf-py, the test vocabularies) in the cache: ``pip download`` once, as the readers'
    tests do (a fresh checkout has no copy)."""
    import tarfile

    if (LLAMA_CPP / "convert_hf_to_gguf.py").is_file():
        return
    _SDIST.mkdir(parents=True, exist_ok=True)
    r = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary",
                        ":all:", "-q", "-d", str(_SDIST), "llama-cpp-python==0.3.36"],
                       capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(f"pip download llama-cpp-python==0.3.36 failed: {r.stderr[-500:]}")
    with tarfile.open(next(_SDIST.glob("llama_cpp_python-0.3.36.tar.gz"))) as tf:
        tf.extractall(_SDIST, filter="data")


_ensure_llama_cpp()

# llama-vocab.cpp LLAMA_VOCAB_PRE_TYPE_QWEN2, as Qwen2's own tokenizer.json writes it
QWEN2_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+"
               r"[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

# a few sentences for logit comparisons (ASCII, digits, accents, emoji, code)
SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "In 1998, 42 scientists measured 3.14159 twice; Äpfel kosten 2€.",
    "def f(x):\n    return x ** 2  # 🦙 squares",
]


def vocab_tests(name: str) -> list[tuple[str, list[int]]]:
    """llama.cpp's tokenizer test vectors for ``ggml-vocab-NAME.gguf``: (text, ids) pairs."""
    inp = (VOCABS / f"ggml-vocab-{name}.gguf.inp").read_text(encoding="utf-8")
    out = (VOCABS / f"ggml-vocab-{name}.gguf.out").read_text(encoding="utf-8")
    texts = inp.split("\n__ggml_vocab_test__\n")
    ids = out.split("\n")
    texts[-1] = texts[-1].removesuffix("\n__ggml_vocab_test__\n").removesuffix(
        "\n__ggml_vocab_test__")
    return [(t, [int(x) for x in i.split()]) for t, i in zip(texts, ids, strict=False)]


def qwen2_tokenizer_files() -> dict[str, str]:
    """Qwen2's ``tokenizer.json`` / ``tokenizer_config.json`` rebuilt from ``ggml-vocab-qwen2``.

    BPE over bytes with NFC normalisation and Qwen2's split regex, as the released Qwen2 /
    Qwen2.5 tokenizers are written; the converter's ``[PAD<i>]`` filler tokens are left out (it
    regenerates them up to ``vocab_size``).
    """
    meta = scan_gguf(VOCABS / "ggml-vocab-qwen2.gguf", keep_arrays=True).metadata
    tokens, types = meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.token_type"]
    n = next(i for i, t in enumerate(tokens) if t.startswith("[PAD"))
    specials = [i for i in range(n) if types[i] == 3]
    vocab = {t: i for i, t in enumerate(tokens[:n])}
    tj: dict[str, Any] = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {"id": i, "content": tokens[i], "single_word": False, "lstrip": False,
             "rstrip": False, "normalized": False, "special": True} for i in specials],
        "normalizer": {"type": "NFC"},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": QWEN2_REGEX}, "behavior": "Isolated",
             "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False,
             "use_regex": False}]},
        "post_processor": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False,
                           "use_regex": False},
        "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False,
                    "use_regex": False},
        "model": {"type": "BPE", "dropout": None, "unk_token": None,
                  "continuing_subword_prefix": "", "end_of_word_suffix": "",
                  "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": vocab,
                  "merges": [m.split(" ") for m in meta["tokenizer.ggml.merges"]]},
    }
    cfg = {
        "add_prefix_space": False,
        "bos_token": None,
        "eos_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "model_max_length": 32768,
        "tokenizer_class": "Qwen2Tokenizer",
        "chat_template": meta["tokenizer.chat_template"],
        "added_tokens_decoder": {
            str(i): {"content": tokens[i], "lstrip": False, "normalized": False,
                     "rstrip": False, "single_word": False, "special": True}
            for i in specials},
    }
    return {"tokenizer.json": json.dumps(tj, ensure_ascii=False),
            "tokenizer_config.json": json.dumps(cfg, ensure_ascii=False)}


def save_checkpoint(model: Any, out: Path, tokenizer_files: dict[str, str]) -> Path:
    """Save a transformers model in bf16 safetensors with the given tokenizer files."""
    import torch

    model.to(torch.bfloat16).save_pretrained(out, safe_serialization=True)
    for name, text in tokenizer_files.items():
        (out / name).write_text(text, encoding="utf-8")
    return out


def tiny_qwen2(out: Path, *, layers: int = 2, seed: int = 0, **overrides: Any) -> Path:
    """A Qwen2.5-like checkpoint: q/k/v biases, 4 heads / 2 kv heads of 16, tied embeddings."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    kw: dict[str, Any] = dict(
        vocab_size=151936, hidden_size=64, intermediate_size=160, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
        rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=True,
        bos_token_id=151643, eos_token_id=151643)
    kw.update(overrides)
    model = Qwen2ForCausalLM(Qwen2Config(**kw))
    _randomize(model)
    return save_checkpoint(model, out, qwen2_tokenizer_files())


def tiny_qwen3(out: Path, *, layers: int = 2, seed: int = 0, **overrides: Any) -> Path:
    """A Qwen3-like checkpoint: q/k norms, head_dim 32 set apart from hidden/heads (64/4)."""
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(seed)
    kw: dict[str, Any] = dict(
        vocab_size=151936, hidden_size=64, intermediate_size=160, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, head_dim=32,
        max_position_embeddings=4096, rope_theta=1000000.0, rms_norm_eps=1e-6,
        tie_word_embeddings=True, bos_token_id=151643, eos_token_id=151645)
    kw.update(overrides)
    model = Qwen3ForCausalLM(Qwen3Config(**kw))
    _randomize(model)
    return save_checkpoint(model, out, qwen2_tokenizer_files())


def _randomize(model: Any) -> None:
    """Norm weights and biases away from their 1 / 0 initial values, so that a wrong mapping
    (a norm read as another, a dropped bias) changes the logits."""
    import torch

    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.copy_(torch.randn_like(p) * 0.1 + (1.0 if "norm" in name else 0.0))


def llama_cpp_convert(model_dir: Path, out: Path, outtype: str = "f32") -> Path:
    """Run llama.cpp's own ``convert_hf_to_gguf.py`` (the vendored copy) on a checkpoint."""
    env = dict(os.environ, NO_LOCAL_GGUF="")
    env.pop("NO_LOCAL_GGUF")
    r = subprocess.run(
        [sys.executable, str(LLAMA_CPP / "convert_hf_to_gguf.py"), str(model_dir),
         "--outfile", str(out), "--outtype", outtype],
        capture_output=True, text=True, env=env, cwd=str(LLAMA_CPP))
    if r.returncode:
        raise RuntimeError(f"convert_hf_to_gguf.py failed:\n{r.stderr[-3000:]}")
    return out


MISTRAL_COMMON = "1.13.1"
# the mistral-common wheel's SentencePiece models: v1 (Mistral 7B v0.1, 32000 pieces), v3
# (32768 pieces, control tokens [INST], [TOOL_CALLS]...)
MISTRAL_MODELS = {"v1": "tokenizer.model.v1", "v3": "mistral_instruct_tokenizer_240323.model.v3"}


def mistral_tokenizer_model(version: str = "v3") -> Path:
    """A Mistral ``tokenizer.model`` out of the mistral-common wheel (``pip download`` once
    into the cache; the package itself is not installed: it pins numpy < 2.4)."""
    import zipfile

    cache = Path(os.environ.get("QUANTPORT_CACHE", str(ROOT / ".cache")))
    dest = cache / f"mistral-common-{MISTRAL_COMMON}"
    path = dest / MISTRAL_MODELS[version]
    if not path.is_file():
        wheels = dest / "wheel"
        wheels.mkdir(parents=True, exist_ok=True)
        r = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q",
                            "--only-binary", ":all:", "-d", str(wheels),
                            f"mistral-common=={MISTRAL_COMMON}"], capture_output=True, text=True)
        if r.returncode:
            raise RuntimeError(f"pip download mistral-common failed: {r.stderr[-500:]}")
        wheel = next(wheels.glob("mistral_common-*.whl"))
        with zipfile.ZipFile(wheel) as zf:
            path.write_bytes(zf.read(f"mistral_common/data/{MISTRAL_MODELS[version]}"))
    return path


def tiny_mistral(out: Path, *, layers: int = 2, seed: int = 0, version: str = "v3",
                 **overrides: Any) -> Path:
    """A Mistral-7B-like checkpoint (4 heads / 1 kv head of 16: Mistral's 4:1 GQA) with the
    real SentencePiece tokenizer: ``tokenizer.model`` plus what transformers' LlamaTokenizer
    saves from it, as hub checkpoints have them."""
    import shutil

    import torch
    from transformers import LlamaTokenizer, MistralConfig, MistralForCausalLM

    model_file = mistral_tokenizer_model(version)
    src = out.parent / (out.name + "-tokenizer")
    src.mkdir(parents=True, exist_ok=True)
    shutil.copy(model_file, src / "tokenizer.model")
    tok = LlamaTokenizer.from_pretrained(src, add_bos_token=True, add_eos_token=False)
    torch.manual_seed(seed)
    kw: dict[str, Any] = dict(
        vocab_size=len(tok), hidden_size=64, intermediate_size=160, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=1, max_position_embeddings=4096,
        rope_theta=1000000.0, rms_norm_eps=1e-5, tie_word_embeddings=False, sliding_window=None,
        bos_token_id=1, eos_token_id=2)
    kw.update(overrides)
    model = MistralForCausalLM(MistralConfig(**kw))
    _randomize(model)
    model.to(torch.bfloat16).save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    shutil.copy(model_file, out / "tokenizer.model")
    return out


# Phi-3's added tokens (ids 32000..32010, all special) as its tokenizer_config.json has them
PHI3_ADDED = ["<|endoftext|>", "<|assistant|>", "<|placeholder1|>", "<|placeholder2|>",
              "<|placeholder3|>", "<|placeholder4|>", "<|system|>", "<|end|>",
              "<|placeholder5|>", "<|placeholder6|>", "<|user|>"]


def phi3_tokenizer_model() -> bytes:
    """Phi-3's ``tokenizer.model`` (Llama 2's 32000-piece SentencePiece BPE) rebuilt from
    llama.cpp's ``ggml-vocab-phi-3.gguf``: its pieces and scores in a model proto with Llama's
    settings (byte fallback, dummy prefix, no whitespace folding, split digits). The GGUF
    marks <unk>/<s>/</s> as the converter rewrote them from added_tokens_decoder; the proto
    gets SentencePiece's own types and scores for them."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    meta = scan_gguf(VOCABS / "ggml-vocab-phi-3.gguf", keep_arrays=True).metadata
    tokens, scores = meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.scores"]
    types = meta["tokenizer.ggml.token_type"]
    m = pb.ModelProto()
    m.trainer_spec.model_type = pb.TrainerSpec.BPE
    m.trainer_spec.vocab_size = 32000
    m.trainer_spec.byte_fallback = True
    m.trainer_spec.split_digits = True
    m.trainer_spec.allow_whitespace_only_pieces = True
    m.trainer_spec.unk_id, m.trainer_spec.bos_id, m.trainer_spec.eos_id = 0, 1, 2
    m.trainer_spec.pad_id = -1
    m.normalizer_spec.name = "identity"
    m.normalizer_spec.add_dummy_prefix = True
    m.normalizer_spec.remove_extra_whitespaces = False
    m.normalizer_spec.escape_whitespaces = True
    fixed = {0: pb.ModelProto.SentencePiece.UNKNOWN, 1: pb.ModelProto.SentencePiece.CONTROL,
             2: pb.ModelProto.SentencePiece.CONTROL}
    for i in range(32000):
        p = m.pieces.add()
        p.piece = tokens[i]
        p.score = 0.0 if i in fixed else float(scores[i])
        p.type = fixed.get(i, types[i])
    return m.SerializeToString()


def tiny_phi3(out: Path, *, layers: int = 2, seed: int = 0, **overrides: Any) -> Path:
    """A Phi-3-mini-like checkpoint: fused qkv_proj and gate_up_proj, 4 heads / 2 kv heads of
    16, untied head, with Phi-3's tokenizer (tokenizer.model + its 11 special added tokens,
    vocab_size 32064 as the real config pads it)."""
    import torch
    from tokenizers import AddedToken
    from transformers import LlamaTokenizer, Phi3Config, Phi3ForCausalLM

    src = out.parent / (out.name + "-tokenizer")
    src.mkdir(parents=True, exist_ok=True)
    (src / "tokenizer.model").write_bytes(phi3_tokenizer_model())
    tok = LlamaTokenizer.from_pretrained(src, add_bos_token=False, add_eos_token=False,
                                         legacy=False)
    tok.add_tokens([AddedToken(t, special=True, normalized=False) for t in PHI3_ADDED],
                   special_tokens=True)
    tok.eos_token = "<|endoftext|>"
    tok.pad_token = "<|endoftext|>"
    torch.manual_seed(seed)
    kw: dict[str, Any] = dict(
        vocab_size=32064, hidden_size=64, intermediate_size=160, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
        original_max_position_embeddings=4096, rope_theta=10000.0, rms_norm_eps=1e-5,
        tie_word_embeddings=False, sliding_window=2047, bos_token_id=1, eos_token_id=32000,
        pad_token_id=32000)
    kw.update(overrides)
    model = Phi3ForCausalLM(Phi3Config(**kw))
    _randomize(model)
    model.to(torch.bfloat16).save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    (out / "tokenizer.model").write_bytes((src / "tokenizer.model").read_bytes())
    return out


def tiny_gemma3(out: Path, *, layers: int = 6, seed: int = 0, **overrides: Any) -> Path:
    """A Gemma-3-1B-like text checkpoint: 6 layers (5 local, the 6th global), 4 heads / 1 kv
    head of 32 (head_dim set apart from hidden / heads, Gemma 3 1B's 4:1 GQA), q/k norms, four
    norms a layer, tied embeddings, a sliding window of 8 tokens (so that the test sentences
    cross it). Saved in float32: the converter adds Gemma's ``+1`` to norms in the
    checkpoint's dtype, quantport in float32, and the two agree exactly only for float32.

    Tokenizer: Llama 2's SentencePiece pieces (Phi-3's, rebuilt from llama.cpp's
    ``ggml-vocab-phi-3.gguf``) with Gemma's setting ``add_dummy_prefix = false``; no Gemma 3
    vocabulary ships in the test vocabularies or on PyPI.
    """
    import torch
    from sentencepiece import sentencepiece_model_pb2 as pb
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig, LlamaTokenizer

    m = pb.ModelProto()
    m.ParseFromString(phi3_tokenizer_model())
    m.normalizer_spec.add_dummy_prefix = False
    src = out.parent / (out.name + "-tokenizer")
    src.mkdir(parents=True, exist_ok=True)
    (src / "tokenizer.model").write_bytes(m.SerializeToString())
    tok = LlamaTokenizer.from_pretrained(src, add_bos_token=True, add_eos_token=False,
                                         add_prefix_space=False)
    torch.manual_seed(seed)
    kw: dict[str, Any] = dict(
        vocab_size=32000, hidden_size=64, intermediate_size=160, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=1, head_dim=32, query_pre_attn_scalar=32,
        sliding_window=8, max_position_embeddings=4096, rms_norm_eps=1e-6,
        tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    kw.update(overrides)
    model = Gemma3ForCausalLM(Gemma3TextConfig(**kw))
    _randomize(model)
    with torch.no_grad():
        # unit-scale embeddings (tied to the head): the 0.02 init gives near-flat logits, on
        # which llama.cpp's own rounding (its GELU is an fp16 table, vec.h GGML_GELU_FP16)
        # flips argmaxes; real Gemma residual streams are of this order (embeddings * sqrt(d))
        model.model.embed_tokens.weight.normal_(0.0, 1.0)
    model.to(torch.float32).save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    (out / "tokenizer.model").write_bytes((src / "tokenizer.model").read_bytes())
    return out
