"""GGUF -> HF ``tokenizer.json`` for byte-level BPE vocabularies, per ``tokenizer.ggml.pre``.

llama.cpp's own test vocabularies (``vendor/llama.cpp/models/ggml-vocab-*.gguf`` of the
llama-cpp-python 0.3.36 source distribution) with their ``.inp`` -> ``.out`` vectors (made by
``convert_hf_to_gguf_update.py`` with each model's own transformers tokenizer, add_special false):

* each rebuilt tokenizer gives the vectors exactly, and llama.cpp's ids (``vocab_only``) on the
  vectors and on wikitext;
* every other ``tokenizer.ggml.pre`` quantport rebuilds is checked against llama.cpp by giving
  llama.cpp and the rebuilt tokenizer the same borrowed vocabulary under that name: the
  pre-tokenizer is the only thing the name changes;
* every ``tokenizer.ggml.pre`` llama.cpp's converter can write (``SUPPORTED_PRE_TOKENIZERS``) is
  either rebuilt or refused with one line naming the supported ones.
"""

from __future__ import annotations

import importlib.util
import json
import tarfile
import unicodedata
from pathlib import Path
from typing import Any

import pytest
import test_spm_vocab as spm
from test_spm_vocab import _gguf_meta, _lines, _types, _vectors, _write_vocab_gguf

from quantport.errors import UnsupportedArchitectureError
from quantport.formats.gguf_writer import GGUFKV
from quantport.readers.gguf_vocab import SUPPORTED_PRE_TOKENIZERS
from quantport.readers.tokenizer import SUPPORTED_PRE, hf_tokenizer_from_gguf

HAVE_LLAMA_CPP = importlib.util.find_spec("llama_cpp") is not None


@pytest.fixture(scope="session")
def llamacpp_dir() -> Path:
    """``vendor/llama.cpp`` of the llama-cpp-python source distribution, as test_spm_vocab's
    fixture of the same name gets it (downloaded into the cache on first use)."""
    base = spm._cache() / f"llama-cpp-python-{spm.LLAMA_CPP_PYTHON}-src"
    tree = base / f"llama_cpp_python-{spm.LLAMA_CPP_PYTHON}" / "vendor" / "llama.cpp"
    if not (tree / "models" / "ggml-vocab-qwen2.gguf").is_file():
        sdist = spm._pip_download(f"llama-cpp-python=={spm.LLAMA_CPP_PYTHON}", base,
                                  "--no-binary", ":all:")
        with tarfile.open(sdist) as tf:
            tf.extractall(base, filter="data")
    assert (tree / "models" / "ggml-vocab-qwen2.gguf").is_file(), f"no test vocabularies in {tree}"
    return tree

# test vocabularies with vectors whose tokenizer.ggml.model is "gpt2", by tokenizer.ggml.pre
VOCABS = {"qwen2": "qwen2", "qwen35": "qwen35", "llama-bpe": "llama-bpe", "gpt-2": "gpt-2",
          "deepseek-llm": "deepseek-llm", "deepseek-coder": "deepseek-coder", "falcon": "falcon",
          "mpt": "mpt", "starcoder": "starcoder", "refact": "refact", "command-r": "command-r"}


def _tokenizer(meta: dict[str, Any]) -> Any:
    from tokenizers import Tokenizer

    return Tokenizer.from_str(hf_tokenizer_from_gguf(meta, "test.gguf")["tokenizer.json"])


_REBUILT: dict[Path, tuple[dict[str, Any], Any]] = {}


def _rebuilt(path: Path) -> tuple[dict[str, Any], Any]:
    """A test vocabulary's metadata and its rebuilt tokenizer, built once for the module."""
    if path not in _REBUILT:
        meta = _gguf_meta(path)
        _REBUILT[path] = meta, _tokenizer(meta)
    return _REBUILT[path]


def _ids(tok: Any, texts: list[str]) -> list[list[int]]:
    return [tok.encode(t, add_special_tokens=False).ids for t in texts]


def _llama_cpp_ids(path: Path, texts: list[str]) -> list[list[int]]:
    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
    return [llm.tokenize(t.encode("utf-8"), add_bos=False, special=False) for t in texts]


def _texts(llamacpp_dir: Path) -> list[str]:
    """llama.cpp's test inputs (qwen35's, a superset with combining marks) and wikitext."""
    return [t for t, _ in _vectors_any(llamacpp_dir, "qwen35")] + _lines(80)


def _vectors_any(llamacpp_dir: Path, name: str) -> list[tuple[str, list[int]]]:
    base = llamacpp_dir / "models" / f"ggml-vocab-{name}.gguf"
    inp = base.with_suffix(".gguf.inp").read_text(encoding="utf-8").split("\n__ggml_vocab_test__\n")
    out = base.with_suffix(".gguf.out").read_text(encoding="utf-8").split("\n")
    return [(t, [int(x) for x in o.split()]) for t, o in zip(inp, out, strict=False)]


@pytest.mark.parametrize("name", sorted(VOCABS))
def test_rebuilt_bpe_tokenizer_gives_llama_cpp_test_vectors(name: str, llamacpp_dir: Path) -> None:
    """Every .inp text of the test vocabulary gives exactly its .out ids (qwen35's has four
    more texts than the others: decomposed accents, which Qwen3.5 keeps un-normalised)."""
    meta, tok = _rebuilt(llamacpp_dir / "models" / f"ggml-vocab-{name}.gguf")
    assert (meta["tokenizer.ggml.model"], meta["tokenizer.ggml.pre"]) == ("gpt2", VOCABS[name])
    vectors = _vectors(llamacpp_dir, name) if name != "qwen35" else _vectors_any(llamacpp_dir,
                                                                                name)
    assert _ids(tok, [t for t, _ in vectors]) == [ids for _, ids in vectors]


@pytest.mark.llamacpp
@pytest.mark.skipif(not HAVE_LLAMA_CPP, reason="llama-cpp-python is not installed")
@pytest.mark.parametrize("name", sorted(VOCABS))
def test_rebuilt_bpe_tokenizer_equals_llama_cpp(name: str, llamacpp_dir: Path) -> None:
    """llama.cpp itself on the same file, on the test inputs and wikitext lines; for Qwen2 only
    on NFC text (Qwen2's tokenizer.json normalises to NFC, llama.cpp does not)."""
    path = llamacpp_dir / "models" / f"ggml-vocab-{name}.gguf"
    _, tok = _rebuilt(path)
    texts = _texts(llamacpp_dir)
    if name == "qwen2":
        texts = [t for t in texts if unicodedata.is_normalized("NFC", t)]
    assert _ids(tok, texts) == _llama_cpp_ids(path, texts)


def test_qwen2_normalises_to_nfc_as_its_tokenizer_json(llamacpp_dir: Path) -> None:
    """A decomposed accent tokenizes as the composed one, as Qwen2's own tokenizer.json (NFC
    normaliser) does; Qwen3.5's pre-tokenizer keeps combining marks instead (its vectors)."""
    _, tok = _rebuilt(llamacpp_dir / "models" / "ggml-vocab-qwen2.gguf")
    decomposed = unicodedata.normalize("NFD", "résumé café")
    assert decomposed != "résumé café"
    assert _ids(tok, [decomposed]) == _ids(tok, ["résumé café"])


@pytest.fixture(scope="module")
def borrowed(llamacpp_dir: Path) -> dict[str, Any]:
    """GPT-2's vocabulary cut to its first 4000 merges (ids 0-255 are the bytes, 256 + i the
    result of merge i), to run any pre-tokenizer over in llama.cpp in a fraction of a second."""
    meta = _gguf_meta(llamacpp_dir / "models" / "ggml-vocab-gpt-2.gguf")
    n = 256 + 4000
    tokens = meta["tokenizer.ggml.tokens"][:n]
    vocab = set(tokens)
    merges = [m for m in meta["tokenizer.ggml.merges"][:4000]
              if all(p in vocab for p in (*m.split(" "), m.replace(" ", "")))]
    assert len(merges) > 3900
    return {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.tokens": tokens,
            "tokenizer.ggml.token_type": meta["tokenizer.ggml.token_type"][:n],
            "tokenizer.ggml.merges": merges, "tokenizer.ggml.pre": "gpt-2",
            "tokenizer.ggml.add_bos_token": False}


def _with_pre(meta: dict[str, Any], pre: str, path: Path) -> Path:
    kvs = [GGUFKV(k, pre if k == "tokenizer.ggml.pre" else v,
                  *_types(k, pre if k == "tokenizer.ggml.pre" else v))
           for k, v in meta.items() if k.startswith("tokenizer.ggml.")]
    return _write_vocab_gguf(path, kvs)


@pytest.mark.llamacpp
@pytest.mark.skipif(not HAVE_LLAMA_CPP, reason="llama-cpp-python is not installed")
@pytest.mark.parametrize("pre", SUPPORTED_PRE)
def test_every_supported_pre_tokenizes_like_llama_cpp(
    pre: str, borrowed: dict[str, Any], llamacpp_dir: Path, tmp_path: Path
) -> None:
    """The same vocabulary under each tokenizer.ggml.pre: the rebuilt tokenizer gives
    llama.cpp's ids (on NFC text where the family's tokenizer.json normalises to NFC)."""
    meta = {**borrowed, "tokenizer.ggml.pre": pre}
    files = hf_tokenizer_from_gguf(meta, "test.gguf")
    texts = _texts(llamacpp_dir)
    if json.loads(files["tokenizer.json"])["normalizer"] is not None:
        texts = [t for t in texts if unicodedata.is_normalized("NFC", t)]
    tok = _tokenizer(meta)
    path = _with_pre(borrowed, pre, tmp_path / f"{pre}.gguf")
    assert _ids(tok, texts) == _llama_cpp_ids(path, texts)


@pytest.mark.llamacpp
@pytest.mark.skipif(not HAVE_LLAMA_CPP, reason="llama-cpp-python is not installed")
def test_borrowed_vocabulary_tells_the_pre_tokenizers_apart(
    borrowed: dict[str, Any], llamacpp_dir: Path, tmp_path: Path
) -> None:
    """The check above has teeth: on the cut GPT-2 vocabulary llama.cpp's ids differ between
    any two of these pre-tokenizer families (not between qwen2 and qwen35, which differ at
    combining marks, nor llama-bpe and deepseek-v3, which differ at CJK and symbol runs: its
    4000 merges join none of those bytes; their full vocabularies' vectors tell them apart)."""
    texts = _texts(llamacpp_dir) + ["I'M HERE, DON'T GO", "(hello) [world]", "x\n\n\n\ny  \n z",
                                    "3.14159265 and 1234567"]
    families = ("gpt-2", "smollm", "llama-bpe", "qwen2", "deepseek-llm", "deepseek-coder",
                "falcon", "default")
    ids = [tuple(map(tuple, _llama_cpp_ids(_with_pre(borrowed, p, tmp_path / f"{p}.gguf"),
                                           texts))) for p in families]
    same = [(a, b) for i, a in enumerate(families) for j, b in enumerate(families)
            if i < j and ids[i] == ids[j]]
    assert not same


def test_pre_tokenizers_of_the_architecture_table_are_rebuilt() -> None:
    """What quantport writes for the architectures it converts comes back: each architecture's
    own pre-tokenizer (Qwen2/Qwen3: "qwen2"), Qwen3.5's "qwen35", Llama 3's "llama-bpe",
    SmolLM's "smollm", Mistral NeMo's / Small 3's "tekken", GPT-2's "gpt-2" and DeepSeek's."""
    from quantport.architectures import ARCHITECTURES

    own = {a.pre_tokenizer for a in ARCHITECTURES.values() if a.pre_tokenizer}
    assert own and own <= set(SUPPORTED_PRE)
    assert {"qwen35", "llama-bpe", "smollm", "tekken", "gpt-2", "deepseek-llm",
            "deepseek-coder", "deepseek-v3", "deepseek-r1-qwen"} <= set(SUPPORTED_PRE)
    # every name quantport rebuilds is one llama.cpp's converter writes or llama.cpp reads
    assert set(SUPPORTED_PRE) - set(SUPPORTED_PRE_TOKENIZERS) <= {
        "default", "llama3", "llama-v3", "jina-es", "jina-de", "glm5",
        "mpt"}  # a hash the converter lists twice, "olmo" winning; llama.cpp still reads it


@pytest.mark.parametrize("pre", sorted(set(SUPPORTED_PRE_TOKENIZERS) - set(SUPPORTED_PRE)))
def test_unsupported_pre_is_one_line_error_naming_the_supported(
    pre: str, borrowed: dict[str, Any]
) -> None:
    with pytest.raises(UnsupportedArchitectureError) as e:
        hf_tokenizer_from_gguf({**borrowed, "tokenizer.ggml.pre": pre}, "x.gguf")
    msg = str(e.value)
    assert "\n" not in msg and f"x.gguf: GGUF pre-tokenizer {pre!r}" in msg
    assert "qwen2" in msg and "llama-bpe" in msg
