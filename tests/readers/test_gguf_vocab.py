"""GGUF tokenizer metadata of checkpoints saved by transformers, checked in llama.cpp.

llama.cpp's converter (``conversion/base.py`` ``get_vocab_base_pre``) names the pre-tokenizer by
hashing the token ids of a probe text; a checkpoint it accepts must convert here too, with the
same ``tokenizer.ggml.pre``, and llama.cpp must then tokenize like the checkpoint's tokenizer.

The two SmolLM2 tokenizers below are what ``AutoTokenizer.save_pretrained`` writes for the
default model: with its own ``tokenizer_config.json`` (``TokenizersBackend``, keeps the
``Digits`` + ``ByteLevel`` pre-tokenizer) and with ``"tokenizer_class": "GPT2Tokenizer"`` (what
the upstream SmolLM2 checkpoints name; transformers then writes a plain ``ByteLevel``
pre-tokenizer). llama.cpp's converter writes ``smollm`` for both (checked by running the
vendored ``convert_hf_to_gguf.py --vocab-only`` of llama-cpp-python 0.3.36).
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

from quantport.errors import ConfigError
from quantport.readers.gguf_vocab import vocab_from_hf

ROOT = Path(__file__).resolve().parents[2]
WIKITEXT = ROOT / "fixtures" / "wikitext-2" / "wiki.test.raw"
HAVE_LLAMA_CPP = importlib.util.find_spec("llama_cpp") is not None

_DIGITS_BYTELEVEL = {
    "type": "Sequence",
    "pretokenizers": [
        {"type": "Digits", "individual_digits": True},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
    ],
}
_BYTELEVEL = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
              "use_regex": True}


def _convert_q8(ckpt: Path, out: Path) -> None:
    from quantport.models import open_source
    from quantport.pipeline import convert, make_recipe

    convert(open_source(ckpt), make_recipe("gguf", "Q8_0"), out)


@pytest.fixture(scope="module", params=["TokenizersBackend", "GPT2Tokenizer"])
def saved(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
          tiny_llama: Path, default_model_dir: Path) -> tuple[Path, Path, str]:
    """(checkpoint saved by transformers, its Q8_0 GGUF, tokenizer class)."""
    from transformers import AutoTokenizer

    src = default_model_dir
    if request.param == "GPT2Tokenizer":
        src = tmp_path_factory.mktemp("upstream-tok")
        shutil.copy(default_model_dir / "tokenizer.json", src / "tokenizer.json")
        cfg = json.loads((default_model_dir / "tokenizer_config.json").read_text())
        cfg["tokenizer_class"] = "GPT2Tokenizer"
        (src / "tokenizer_config.json").write_text(json.dumps(cfg))
    tok = AutoTokenizer.from_pretrained(src)
    assert type(tok).__name__ == request.param
    ckpt = tmp_path_factory.mktemp("saved") / "ckpt"
    ckpt.mkdir()
    # the seeded random 2-layer llama (fp32) of conftest, with the tokenizer as transformers
    # re-serializes it
    for name in ("config.json", "model.safetensors"):
        shutil.copy(tiny_llama / name, ckpt / name)
    tok.save_pretrained(ckpt)
    pre = json.loads((ckpt / "tokenizer.json").read_text(encoding="utf-8"))["pre_tokenizer"]
    assert pre == (_BYTELEVEL if request.param == "GPT2Tokenizer" else _DIGITS_BYTELEVEL)
    out = ckpt.parent / "model-Q8_0.gguf"
    _convert_q8(ckpt, out)
    return ckpt, out, request.param


def _llama_ids(gguf_path: Path, text: str) -> list[int]:
    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(gguf_path), vocab_only=True, verbose=False)
    assert llm.metadata["tokenizer.ggml.pre"] == "smollm"  # what llama.cpp's converter writes
    assert llm.metadata["tokenizer.ggml.model"] == "gpt2"
    return llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)


def _hf_ids(ckpt: Path, text: str) -> list[int]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(ckpt)
    tok.model_max_length = 10**9  # no "sequence too long" warning; nothing is truncated anyway
    return tok(text, add_special_tokens=False)["input_ids"]


@pytest.mark.llamacpp
@pytest.mark.skipif(not HAVE_LLAMA_CPP, reason="llama-cpp-python is not installed")
def test_saved_tokenizer_converts_and_tokenizes_like_transformers(saved) -> None:
    ckpt, gguf_path, _ = saved
    text = WIKITEXT.read_text(encoding="utf-8")[:100_000]
    ids = _hf_ids(ckpt, text)
    assert len(ids) > 20_000
    assert _llama_ids(gguf_path, text) == ids


@pytest.mark.slow
@pytest.mark.llamacpp
@pytest.mark.skipif(not HAVE_LLAMA_CPP, reason="llama-cpp-python is not installed")
def test_saved_tokenizer_whole_wikitext(saved) -> None:
    """The whole test file. The GPT2Tokenizer save has a plain ByteLevel pre-tokenizer, which
    llama.cpp's probe hash cannot tell from SmolLM2's Digits + ByteLevel (the SmolLM2 vocabulary
    has no token with a numeral next to anything else); the two differ only where a space meets
    a numeral that is not an ASCII digit: one " ½" in the file, split as SmolLM2 itself does."""
    from transformers import AutoTokenizer

    ckpt, gguf_path, cls = saved
    text = WIKITEXT.read_text(encoding="utf-8")
    ids = _hf_ids(ckpt, text)
    got = _llama_ids(gguf_path, text)
    if cls != "GPT2Tokenizer":
        assert got == ids
        return
    assert len(got) == len(ids)
    diff = [i for i, (a, b) in enumerate(zip(ids, got, strict=True)) if a != b]
    tok = AutoTokenizer.from_pretrained(ckpt)
    assert [tok.convert_ids_to_tokens([ids[i] for i in diff]),
            tok.convert_ids_to_tokens([got[i] for i in diff])] == [["ĠÂ", "½"], ["Ġ", "Â½"]]


def test_minilm_pre_is_what_llama_cpp_writes() -> None:
    """get_vocab_base_pre tests the hashes in turn and the last match wins: all-MiniLM-L6-v2
    hashes like bge-small-en-v1.5 and jina-embeddings-v2-base-en, and llama.cpp writes the
    latter (checked with the vendored convert_hf_to_gguf.py --vocab-only)."""
    from quantport.models import open_source

    src = open_source("minilm")
    v = vocab_from_hf(src.tokenizer_files, src.config, arch="bert", model_dir=src.path)
    assert (v.model, v.pre) == ("bert", "jina-v2-en")


def test_unknown_probe_hash_is_refused_like_llama_cpp(default_model_dir: Path) -> None:
    """A pre-tokenizer llama.cpp's table does not know (here: Llama 3's split regex on the
    SmolLM2 vocabulary) is refused, as get_vocab_base_pre raises NotImplementedError."""
    files = {n: (default_model_dir / n).read_text(encoding="utf-8")
             for n in ("tokenizer.json", "tokenizer_config.json")}
    tj = json.loads(files["tokenizer.json"])
    tj["pre_tokenizer"] = {
        "type": "Sequence",
        "pretokenizers": [
            {"type": "Split", "behavior": "Isolated", "invert": False, "pattern": {"Regex": (
                r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
                r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")}},
            {**_BYTELEVEL, "use_regex": False},
        ],
    }
    files["tokenizer.json"] = json.dumps(tj, ensure_ascii=False)
    config = json.loads((default_model_dir / "config.json").read_text())
    with pytest.raises(ConfigError, match="BPE pre-tokenizer was not recognized") as ei:
        vocab_from_hf(files, config, arch="llama")
    assert "\n" not in str(ei.value)
