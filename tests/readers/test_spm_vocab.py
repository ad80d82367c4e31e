"""SentencePiece vocabularies (GGUF ``tokenizer.ggml.model = "llama"``) both ways, on real models.

* HF -> GGUF: Mistral's SentencePiece models from the ``mistral-common`` wheel, saved as a
  checkpoint by transformers, give the ``tokenizer.*`` metadata that llama.cpp's own
  ``convert_hf_to_gguf.py --vocab-only`` (llama-cpp-python 0.3.36 source distribution) writes,
  key by key.
* GGUF -> HF: the ``tokenizer.json`` rebuilt from llama.cpp's test vocabularies
  ``ggml-vocab-llama-spm.gguf`` and ``ggml-vocab-phi-3.gguf`` gives their ``.inp`` -> ``.out``
  test vectors, and llama.cpp's tokenization.
* The round trip HF -> GGUF -> HF keeps the source tokenizer's ids on wikitext.

``mistral-common`` is not a test dependency: it pins ``numpy<2.4`` and pulls pydantic, tiktoken,
pillow and requests, and transformers switches Mistral tokenizers to its backend when it is
importable. The fixture takes the one file it needs out of the wheel (``pip download --no-deps``,
kept in ``$QUANTPORT_CACHE``).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path
from typing import Any

import pytest

from quantport._fixtures import calibration_text
from quantport.errors import ConfigError, FormatError
from quantport.formats.gguf_file import scan_gguf
from quantport.formats.gguf_writer import GGUFKV, GGUFValueType, write_gguf
from quantport.readers.gguf_vocab import vocab_from_hf, vocab_metadata
from quantport.readers.spm import read_sentencepiece, spm_tokenizer_json
from quantport.readers.tokenizer import (
    check_gguf_vocab,
    hf_tokenizer_from_gguf,
    sentencepiece_tokenizer_json,
)

ROOT = Path(__file__).resolve().parents[2]
VALID = calibration_text()  # fixtures/wikitext-2 in the repository (CI has no ../shared)
HAVE_LLAMA_CPP = importlib.util.find_spec("llama_cpp") is not None
LLAMA_CPP_PYTHON = "0.3.36"
MISTRAL_COMMON = "1.13.1"


def _cache() -> Path:
    return Path(os.environ.get("QUANTPORT_CACHE", str(ROOT / ".cache")))


def _pip_download(spec: str, dest: Path, *extra: str) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    r = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", *extra,
                        "-d", str(dest), spec], capture_output=True, text=True)
    assert r.returncode == 0, f"pip download {spec} failed: {r.stderr.strip()[-500:]}"
    name = spec.split("==")[0].replace("-", "_")
    files = [p for p in dest.iterdir() if p.name.replace("-", "_").startswith(name)]
    assert files, f"pip download {spec} left no file in {dest}"
    return files[0]


@pytest.fixture(scope="session")
def llamacpp_dir() -> Path:
    """``vendor/llama.cpp`` of the llama-cpp-python source distribution (converter, gguf-py,
    test vocabularies), downloaded into the cache on first use."""
    base = _cache() / f"llama-cpp-python-{LLAMA_CPP_PYTHON}-src"
    tree = base / f"llama_cpp_python-{LLAMA_CPP_PYTHON}" / "vendor" / "llama.cpp"
    if not (tree / "convert_hf_to_gguf.py").is_file():
        sdist = _pip_download(f"llama-cpp-python=={LLAMA_CPP_PYTHON}", base,
                              "--no-binary", ":all:")
        with tarfile.open(sdist) as tf:
            tf.extractall(base, filter="data")
    assert (tree / "convert_hf_to_gguf.py").is_file(), f"no convert_hf_to_gguf.py under {tree}"
    return tree


@pytest.fixture(scope="session")
def mistral_models() -> dict[str, Path]:
    """Mistral's SentencePiece models (v1: Mistral 7B v0.1, 32000 pieces; v3: 32768 pieces with
    the control tokens [INST], [TOOL_CALLS]...) out of the mistral-common wheel."""
    dest = _cache() / f"mistral-common-{MISTRAL_COMMON}"
    names = {"v1": "tokenizer.model.v1", "v3": "mistral_instruct_tokenizer_240323.model.v3"}
    if not all((dest / n).is_file() for n in names.values()):
        wheel = _pip_download(f"mistral-common=={MISTRAL_COMMON}", dest / "wheel",
                              "--only-binary", ":all:")
        with zipfile.ZipFile(wheel) as zf:
            for n in names.values():
                (dest / n).write_bytes(zf.read(f"mistral_common/data/{n}"))
    return {k: dest / n for k, n in names.items()}


def _mistral_checkpoint(out: Path, model: Path, *, keep_model: bool = True,
                        vocab_size: int | None = None, arch: str = "MistralForCausalLM",
                        tokenizer_config: dict[str, Any] | None = None,
                        added_tokens: dict[str, int] | None = None) -> Path:
    """A checkpoint directory as the hub has it: tokenizer.model plus what transformers'
    LlamaTokenizer saves from it (tokenizer.json, tokenizer_config.json) and a config.json."""
    from transformers import (
        Gemma3TextConfig,
        LlamaTokenizer,
        MistralConfig,
        Phi3Config,
        Qwen2Config,
    )

    src = out.parent / (out.name + "-src")
    src.mkdir(parents=True)
    shutil.copy(model, src / "tokenizer.model")
    # add_bos_token as Mistral's hub tokenizer_config.json sets it
    tok = LlamaTokenizer.from_pretrained(src, add_bos_token=True, add_eos_token=False)
    out.mkdir(parents=True)
    tok.save_pretrained(out)
    if keep_model:
        shutil.copy(model, out / "tokenizer.model")
    n = vocab_size or len(tok)
    cls = {"Phi3ForCausalLM": Phi3Config, "Gemma3ForCausalLM": Gemma3TextConfig,
           "Qwen2ForCausalLM": Qwen2Config}.get(arch, MistralConfig)
    cls(vocab_size=n, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, architectures=[arch]).save_pretrained(out)
    if tokenizer_config:
        tc = json.loads((out / "tokenizer_config.json").read_text(encoding="utf-8"))
        tc.update(tokenizer_config)
        (out / "tokenizer_config.json").write_text(json.dumps(tc), encoding="utf-8")
    if added_tokens is not None:
        (out / "added_tokens.json").write_text(json.dumps(added_tokens), encoding="utf-8")
    return out


def _converter_metadata(llamacpp_dir: Path, ckpt: Path) -> dict[str, Any]:
    """``tokenizer.*`` of what llama.cpp's converter writes for the checkpoint (--vocab-only)."""
    import gguf

    out = ckpt.parent / (ckpt.name + "-llamacpp.gguf")
    r = subprocess.run([sys.executable, str(llamacpp_dir / "convert_hf_to_gguf.py"),
                        "--vocab-only", str(ckpt), "--outfile", str(out)],
                       capture_output=True, text=True, cwd=llamacpp_dir)
    assert r.returncode == 0, r.stderr[-2000:]
    rd = gguf.GGUFReader(out)
    return {k: f.contents() for k, f in rd.fields.items() if k.startswith("tokenizer.")}


def _our_metadata(ckpt: Path, arch: str = "llama") -> dict[str, Any]:
    from quantport.readers.source import TOKENIZER_FILES

    files = {n: (ckpt / n).read_text(encoding="utf-8") for n in TOKENIZER_FILES
             if (ckpt / n).is_file()}
    config = json.loads((ckpt / "config.json").read_text(encoding="utf-8"))
    v = vocab_from_hf(files, config, arch=arch, model_dir=ckpt)
    return {kv.key: kv.value for kv in vocab_metadata(v)}


def _write_vocab_gguf(path: Path, meta_kvs: list[GGUFKV]) -> Path:
    """A tensor-less GGUF that llama.cpp loads with vocab_only."""
    U32, S = GGUFValueType.UINT32, GGUFValueType.STRING
    head = [GGUFKV("general.architecture", "llama", S)] + [
        GGUFKV(f"llama.{k}", v, U32) for k, v in (
            ("block_count", 1), ("context_length", 4096), ("embedding_length", 64),
            ("feed_forward_length", 128), ("attention.head_count", 4))]
    write_gguf(path, head + meta_kvs, [])
    return path


def _gguf_meta(path: Path) -> dict[str, Any]:
    return scan_gguf(path, keep_arrays=True).metadata


def _vectors(llamacpp_dir: Path, name: str) -> list[tuple[str, list[int]]]:
    """llama.cpp's tokenizer test vectors (tests/test-tokenizer-0: add_special false,
    parse_special false)."""
    base = llamacpp_dir / "models" / f"ggml-vocab-{name}.gguf"
    inp = base.with_suffix(".gguf.inp").read_text(encoding="utf-8").split("\n__ggml_vocab_test__\n")
    out = base.with_suffix(".gguf.out").read_text(encoding="utf-8").split("\n")
    assert len(inp) == 47 and len(out) >= len(inp)
    return [(t, [int(x) for x in o.split()]) for t, o in zip(inp, out, strict=False)]


def _lines(n: int) -> list[str]:
    text = VALID.read_text(encoding="utf-8")
    return [ln for ln in text.split("\n") if ln.strip()][:n]


# ------------------------------------------------------------------------------------------
# HF -> GGUF
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["v1", "v3"])
def test_mistral_vocab_equals_llama_cpp_converter(
    version: str, mistral_models: dict[str, Path], llamacpp_dir: Path, tmp_path: Path
) -> None:
    """tokenizer.model + transformers' saved files: every tokenizer.* key and value as
    convert_hf_to_gguf.py writes it (_set_vocab_sentencepiece), scores to the float32 bit."""
    ckpt = _mistral_checkpoint(tmp_path / "mistral", mistral_models[version])
    ours, theirs = _our_metadata(ckpt), _converter_metadata(llamacpp_dir, ckpt)
    assert ours["tokenizer.ggml.model"] == "llama"
    assert sorted(ours) == sorted(theirs)
    for key in theirs:
        assert ours[key] == theirs[key], key
    types = ours["tokenizer.ggml.token_type"]
    assert types.count(6) == 256 and types[0] == 2  # byte fallback <0x00>..<0xFF>, <unk>


def test_padded_vocab_and_added_tokens_equal_llama_cpp_converter(
    mistral_models: dict[str, Path], llamacpp_dir: Path, tmp_path: Path
) -> None:
    """config vocab_size beyond the model ([PAD<i>] UNUSED), added_tokens.json (USER_DEFINED)
    and added_tokens_decoder entries (CONTROL when special or "<|...|>"; U+2581 -> space
    otherwise), and add_prefix_space -> add_space_prefix."""
    ckpt = _mistral_checkpoint(
        tmp_path / "padded", mistral_models["v1"], vocab_size=32064,
        added_tokens={"<|user|>": 32010, "<extra>": 32011},
        tokenizer_config={"add_prefix_space": False, "added_tokens_decoder": {
            "32000": {"content": "<|endoftext|>", "special": False},
            "32001": {"content": "\u2581tool", "special": False},
            "32002": {"content": "[SYS]", "special": True}}},
    )
    ours, theirs = _our_metadata(ckpt), _converter_metadata(llamacpp_dir, ckpt)
    assert sorted(ours) == sorted(theirs)
    for key in theirs:
        assert ours[key] == theirs[key], key
    tokens, types = ours["tokenizer.ggml.tokens"], ours["tokenizer.ggml.token_type"]
    assert (tokens[32001], types[32001]) == (" tool", 4)
    assert (tokens[32063], types[32063]) == ("[PAD32063]", 5)
    assert ours["tokenizer.ggml.add_space_prefix"] is False


def test_phi3_vocab_equals_llama_cpp_converter(
    mistral_models: dict[str, Path], llamacpp_dir: Path, tmp_path: Path
) -> None:
    """Phi3MiniModel.set_vocab's own loop (tokenizer.json's added tokens too, no "looks
    special" rule), on a SentencePiece model with Phi-3's layout of added tokens."""
    phi_added = {"<|endoftext|>": 32000, "<|assistant|>": 32001, "<|end|>": 32007,
                 "<|user|>": 32010}
    ckpt = _mistral_checkpoint(
        tmp_path / "phi3", mistral_models["v1"], vocab_size=32064, arch="Phi3ForCausalLM",
        tokenizer_config={"added_tokens_decoder": {
            str(i): {"content": t, "special": t != "<|user|>"} for t, i in phi_added.items()}},
    )
    ours, theirs = _our_metadata(ckpt, "phi3"), _converter_metadata(llamacpp_dir, ckpt)
    assert sorted(ours) == sorted(theirs)
    for key in theirs:
        assert ours[key] == theirs[key], key
    assert ours["tokenizer.ggml.token_type"][32010] == 4  # not special, though it looks it


@pytest.mark.parametrize(("hf_arch", "arch"), [("Gemma3ForCausalLM", "gemma3"),
                                               ("Qwen2ForCausalLM", "qwen2")])
def test_other_architectures_take_the_converters_route(
    hf_arch: str, arch: str, mistral_models: dict[str, Path], llamacpp_dir: Path,
    tmp_path: Path
) -> None:
    """Gemma3Model.set_vocab (SentencePiece with add_space_prefix false) and Qwen2Model.set_vocab
    (SentencePiece when tokenizer.model exists) on a checkpoint with a tokenizer.model."""
    ckpt = _mistral_checkpoint(tmp_path / arch, mistral_models["v1"], arch=hf_arch)
    ours, theirs = _our_metadata(ckpt, arch), _converter_metadata(llamacpp_dir, ckpt)
    assert sorted(ours) == sorted(theirs)
    for key in theirs:
        assert ours[key] == theirs[key], key
    assert ours["tokenizer.ggml.model"] == "llama"
    assert ours.get("tokenizer.ggml.add_space_prefix") is (False if arch == "gemma3" else None)


@pytest.mark.llamacpp
@pytest.mark.skipif(not HAVE_LLAMA_CPP, reason="llama-cpp-python is not installed")
def test_tokenizer_json_only_differs_from_converter_in_scores_only(
    mistral_models: dict[str, Path], llamacpp_dir: Path, tmp_path: Path
) -> None:
    """Without tokenizer.model, llama.cpp's converter (_set_vocab_llama_hf, gguf-py
    LlamaHfVocab) writes the placeholder score -1000.0 for every token, so llama.cpp's
    SentencePiece tokenizer merges left to right and mis-tokenizes the checkpoint's text.
    tokenizer.ggml.scores is the one key that differs, on purpose: merge ranks, with which
    llama.cpp tokenizes like the SentencePiece model the checkpoint came from."""
    import sentencepiece

    ckpt = _mistral_checkpoint(tmp_path / "jsononly", mistral_models["v1"], keep_model=False)
    assert not (ckpt / "tokenizer.model").exists()
    ours, theirs = _our_metadata(ckpt), _converter_metadata(llamacpp_dir, ckpt)
    assert sorted(ours) == sorted(theirs)
    assert [k for k in theirs if ours[k] != theirs[k]] == ["tokenizer.ggml.scores"]
    assert set(theirs["tokenizer.ggml.scores"]) == {-1000.0}

    kvs = [GGUFKV(k, v, *_types(k, v)) for k, v in ours.items()]
    mine = _write_vocab_gguf(tmp_path / "ours.gguf", kvs)
    sp = sentencepiece.SentencePieceProcessor(model_file=str(mistral_models["v1"]))
    # "<unk>" is literal text in wikitext; SentencePiece never matches control tokens in text
    lines = [ln.strip().replace("<unk>", "unk") for ln in _lines(200)]
    ref = [sp.encode(ln) for ln in lines]
    ours_ids = _llama_ids(mine, lines)
    theirs_ids = _llama_ids(ckpt.parent / (ckpt.name + "-llamacpp.gguf"), lines)
    assert ours_ids == ref
    assert sum(a != b for a, b in zip(theirs_ids, ref, strict=True)) > len(lines) // 2


def _types(key: str, value: Any) -> tuple[GGUFValueType, GGUFValueType | None]:
    T = GGUFValueType
    if key == "tokenizer.ggml.scores":
        return T.ARRAY, T.FLOAT32
    if key == "tokenizer.ggml.token_type":
        return T.ARRAY, T.INT32
    if isinstance(value, list):
        return T.ARRAY, T.STRING
    if isinstance(value, bool):
        return T.BOOL, None
    if isinstance(value, int):
        return T.UINT32, None
    return T.STRING, None


def _llama_ids(path: Path, texts: list[str], special: bool = False) -> list[list[int]]:
    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
    return [llm.tokenize(t.encode("utf-8"), add_bos=False, special=special) for t in texts]


@pytest.mark.parametrize("model", ["smollm2", "minilm"])
def test_bpe_and_wordpiece_vocab_equal_llama_cpp_converter(
    model: str, llamacpp_dir: Path, default_model_dir: Path, tmp_path: Path
) -> None:
    """The other tokenizer models through the same SpecialVocab port (the converter's vendored
    gguf-py, not the installed gguf 0.19): SmolLM2's byte-level BPE (add_bos/add_eos false from
    the ByteLevel post-processor, add_space_prefix from add_prefix_space) and MiniLM's WordPiece
    (normalizer.lowercase; no cls_token_id, which the converter's GGUFWriter has no handler
    for), key by key."""
    from quantport.models import open_source

    src = default_model_dir if model == "smollm2" else open_source("minilm").path
    ckpt = tmp_path / model
    shutil.copytree(src, ckpt, ignore=shutil.ignore_patterns("*.safetensors", "*.bin"))
    arch = "llama" if model == "smollm2" else "bert"
    ours, theirs = _our_metadata(ckpt, arch), _converter_metadata(llamacpp_dir, ckpt)
    assert sorted(ours) == sorted(theirs)
    for key in theirs:
        assert ours[key] == theirs[key], key


# ------------------------------------------------------------------------------------------
# GGUF -> HF
# ------------------------------------------------------------------------------------------


def _rebuilt(meta: dict[str, Any], tmp_path: Path) -> Path:
    """The HF tokenizer files rebuilt from GGUF metadata, in a directory transformers loads."""
    out = tmp_path / "rebuilt"
    out.mkdir()
    for name, text in hf_tokenizer_from_gguf(meta, "test.gguf").items():
        (out / name).write_text(text, encoding="utf-8")
    return out


@pytest.mark.parametrize("name", ["llama-spm", "phi-3"])
def test_rebuilt_tokenizer_gives_llama_cpp_test_vectors(
    name: str, llamacpp_dir: Path, tmp_path: Path
) -> None:
    """Every .inp line of llama.cpp's test vocabulary gives exactly its .out ids, through
    transformers' AutoTokenizer on the rebuilt files."""
    from transformers import AutoTokenizer

    meta = _gguf_meta(llamacpp_dir / "models" / f"ggml-vocab-{name}.gguf")
    assert meta["tokenizer.ggml.model"] == "llama"
    tok = AutoTokenizer.from_pretrained(_rebuilt(meta, tmp_path))
    assert len(tok) == len(meta["tokenizer.ggml.tokens"])
    vectors = _vectors(llamacpp_dir, name)
    got = [tok.encode(text, add_special_tokens=False) for text, _ in vectors]
    assert got == [ids for _, ids in vectors]
    # add_bos_token true in both files: BOS first, as llama.cpp's add_special does
    assert tok.encode("Hello")[0] == meta["tokenizer.ggml.bos_token_id"]
    assert tok.decode(tok.encode(" Hello  world\n"), skip_special_tokens=True) == " Hello  world\n"


@pytest.mark.llamacpp
@pytest.mark.skipif(not HAVE_LLAMA_CPP, reason="llama-cpp-python is not installed")
@pytest.mark.parametrize("name", ["llama-spm", "phi-3"])
def test_rebuilt_tokenizer_equals_llama_cpp(name: str, llamacpp_dir: Path, tmp_path: Path) -> None:
    """llama.cpp itself on the same file: sentences with leading and repeated spaces, and added
    tokens in the text (parse_special, where llama.cpp prepends a space after each one)."""
    from tokenizers import Tokenizer

    path = llamacpp_dir / "models" / f"ggml-vocab-{name}.gguf"
    files = hf_tokenizer_from_gguf(_gguf_meta(path), str(path))
    tok = Tokenizer.from_str(files["tokenizer.json"])
    texts = [ln.strip() for ln in _lines(60)] + [
        "  leading spaces", "tabs\tand\n\nnewlines  ", "emoji 🦙 and ünïcödé 中文",
        "<s> a control token", "text<|user|>after<|end|> end", "</s>x",
    ]
    ours = [tok.encode(t, add_special_tokens=False).ids for t in texts]
    assert ours == _llama_ids(path, texts, special=True)


# ------------------------------------------------------------------------------------------
# round trip
# ------------------------------------------------------------------------------------------


def test_round_trip_keeps_sentencepiece_ids(
    mistral_models: dict[str, Path], tmp_path: Path
) -> None:
    """Mistral checkpoint -> GGUF -> HF tokenizer: the ids of the SentencePiece model itself on
    300 wikitext lines as they are (leading spaces, " @-@ ", double spaces)."""
    import sentencepiece
    from transformers import AutoTokenizer

    ckpt = _mistral_checkpoint(tmp_path / "rt", mistral_models["v1"])
    ours = _our_metadata(ckpt)
    path = _write_vocab_gguf(tmp_path / "rt.gguf",
                             [GGUFKV(k, v, *_types(k, v)) for k, v in ours.items()])
    meta = _gguf_meta(path)
    tok = AutoTokenizer.from_pretrained(_rebuilt(meta, tmp_path))
    sp = sentencepiece.SentencePieceProcessor(model_file=str(mistral_models["v1"]))
    lines = [ln.replace("<unk>", "unk") for ln in _lines(300)] + ["a  b   c", "  x"]
    assert [tok.encode(ln, add_special_tokens=False) for ln in lines] == [
        sp.encode(ln) for ln in lines]
    assert tok.encode("Hi")[:1] == [1]  # add_bos_token kept


def _checkpoint_files(ckpt: Path) -> dict[str, str]:
    from quantport.readers.source import TOKENIZER_FILES

    return {n: (ckpt / n).read_text(encoding="utf-8") for n in TOKENIZER_FILES
            if (ckpt / n).is_file()}


@pytest.mark.parametrize("version", ["v1", "v3"])
def test_sentencepiece_tokenizer_json_gives_sentencepiece_ids(
    version: str, mistral_models: dict[str, Path], tmp_path: Path
) -> None:
    """What the ONNX writer exports for a SentencePiece checkpoint: SentencePiece's ids on
    wikitext lines as they are and at leading spaces and runs of spaces, where the
    tokenizer.json transformers 5 saves from the same model differs; the checkpoint's own
    post-processor (BOS as its tokenizer_config says) and added tokens kept."""
    import sentencepiece
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    ckpt = _mistral_checkpoint(tmp_path / "ck", mistral_models[version])
    files = _checkpoint_files(ckpt)
    text = sentencepiece_tokenizer_json(files, json.loads((ckpt / "config.json").read_text()),
                                        arch="llama", model_dir=ckpt)
    assert text is not None
    tok = Tokenizer.from_str(text)
    sp = sentencepiece.SentencePieceProcessor(model_file=str(mistral_models[version]))
    lines = [ln.replace("<unk>", "unk") for ln in _lines(200)] + [
        " x", "  x", "an  actor", "   ", "x  ", "\n x", " = Robert Boulter = \n"]
    ours = [tok.encode(ln, add_special_tokens=False).ids for ln in lines]
    assert ours == [sp.encode(ln) for ln in lines]
    hf = AutoTokenizer.from_pretrained(ckpt)
    assert hf(" x", add_special_tokens=False)["input_ids"] != sp.encode(" x")  # why it exists
    src = json.loads(files["tokenizer.json"])
    tj = json.loads(text)
    assert tj["post_processor"] == src["post_processor"]
    assert {a["id"] for a in src["added_tokens"]} <= {a["id"] for a in tj["added_tokens"]}


def test_sentencepiece_tokenizer_json_is_none_for_other_tokenizers(
    default_model_dir: Path
) -> None:
    """A byte-level BPE checkpoint (SmolLM2, no tokenizer.model): nothing to replace."""
    files = _checkpoint_files(default_model_dir)
    cfg = json.loads((default_model_dir / "config.json").read_text())
    assert sentencepiece_tokenizer_json(files, cfg, arch="llama",
                                        model_dir=default_model_dir) is None


# ------------------------------------------------------------------------------------------
# bad input
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("data", [b"", b"not a sentencepiece model", b"\x0a\xff\xff\xff"])
def test_malformed_tokenizer_model_is_one_line_format_error(
    data: bytes, tmp_path: Path
) -> None:
    with pytest.raises(FormatError, match="not a valid SentencePiece model") as ei:
        read_sentencepiece(data, "ckpt/tokenizer.model")
    assert "\n" not in str(ei.value) and "ckpt/tokenizer.model" in str(ei.value)
    (tmp_path / "tokenizer.model").write_bytes(data)
    with pytest.raises(FormatError) as ei:
        vocab_from_hf({}, {"vocab_size": 8}, arch="llama", model_dir=tmp_path)
    assert "\n" not in str(ei.value)


def test_no_tokenizer_files_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no tokenizer.json in the checkpoint") as ei:
        vocab_from_hf({}, {"vocab_size": 8}, arch="llama", model_dir=tmp_path)
    assert "\n" not in str(ei.value) and "tokenizer.model" in str(ei.value)


def test_bad_added_token_id_is_one_line_config_error(
    mistral_models: dict[str, Path], tmp_path: Path
) -> None:
    shutil.copy(mistral_models["v1"], tmp_path / "tokenizer.model")
    (tmp_path / "added_tokens.json").write_text('{"<x>": "seven"}', encoding="utf-8")
    with pytest.raises(ConfigError, match="added_tokens.json: '<x>' has token id 'seven'") as ei:
        vocab_from_hf({}, {"vocab_size": 32000}, arch="llama", model_dir=tmp_path)
    assert "\n" not in str(ei.value)


def test_phi3_without_tokenizer_model_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no tokenizer.model") as ei:
        vocab_from_hf({}, {"vocab_size": 8}, arch="phi3", model_dir=tmp_path)
    assert "\n" not in str(ei.value)


def _spm_meta() -> dict[str, Any]:
    tokens = ["<unk>", "<s>", "</s>", *[f"<0x{b:02X}>" for b in range(256)], "\u2581a", "a", "b",
              "\u2581", "ab"]
    types = [2, 3, 3] + [6] * 256 + [1] * 5
    scores = [0.0] * 259 + [-1.0, -2.0, -3.0, -4.0, -5.0]
    return {"general.architecture": "llama", "tokenizer.ggml.model": "llama",
            "tokenizer.ggml.tokens": tokens, "tokenizer.ggml.scores": scores,
            "tokenizer.ggml.token_type": types, "tokenizer.ggml.bos_token_id": 1,
            "tokenizer.ggml.eos_token_id": 2, "tokenizer.ggml.unknown_token_id": 0}


@pytest.mark.parametrize(("change", "match"), [
    (lambda m: m["tokenizer.ggml.scores"].pop(), "tokenizer.ggml.scores has 263 entries"),
    (lambda m: m["tokenizer.ggml.token_type"].pop(), "tokenizer.ggml.token_type has 263"),
    (lambda m: m["tokenizer.ggml.scores"].__setitem__(3, "x"), "scores must be an array of"),
    (lambda m: m["tokenizer.ggml.scores"].__setitem__(3, float("nan")), r"scores\[3\] is nan"),
    (lambda m: m["tokenizer.ggml.token_type"].__setitem__(5, 9), r"token_type\[5\] is 9"),
    (lambda m: m["tokenizer.ggml.tokens"].__setitem__(7, "<0xZZ>"), "BYTE token 7"),
    (lambda m: m["tokenizer.ggml.tokens"].__setitem__(263, "a"), "'a' is listed twice"),
    (lambda m: m["tokenizer.ggml.tokens"].__setitem__(2, "<s>"), "'<s>' is listed twice"),
    (lambda m: m.pop("tokenizer.ggml.scores"), "lacks tokenizer.ggml.scores"),
    (lambda m: m.pop("tokenizer.ggml.token_type"), "lacks tokenizer.ggml.token_type"),
])
def test_inconsistent_gguf_vocab_is_one_line_format_error(change: Any, match: str) -> None:
    meta = _spm_meta()
    hf_tokenizer_from_gguf(dict(meta), "x.gguf")  # the unchanged vocabulary is fine
    change(meta)
    with pytest.raises(FormatError, match=match) as ei:
        check_gguf_vocab(meta, "x.gguf")
        hf_tokenizer_from_gguf(meta, "x.gguf")
    assert "\n" not in str(ei.value) and "x.gguf" in str(ei.value)


def test_spm_tokenizer_json_length_mismatch() -> None:
    with pytest.raises(FormatError, match="scores / token_type have 1 / 2 entries for 2 tokens"):
        spm_tokenizer_json(["a", "b"], [0.0], [1, 1])
