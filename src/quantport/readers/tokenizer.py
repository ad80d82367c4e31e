"""Tokenizers between GGUF metadata and Hugging Face ``tokenizer.json``.

GGUF -> HF rebuilds a ``tokenizers`` byte-level BPE from ``tokenizer.ggml.tokens/merges`` with
the pre-tokenizer that ``tokenizer.ggml.pre`` names (llama.cpp ``llama-vocab.cpp``
``LLAMA_VOCAB_PRE_TYPE_*`` regexes), or, for ``tokenizer.ggml.model = "llama"`` (SentencePiece),
a byte-fallback BPE whose merges come from ``tokenizer.ggml.scores``
(:func:`quantport.readers.spm.spm_tokenizer_json`). HF -> GGUF (for the writer) is
:mod:`quantport.readers.gguf_vocab`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quantport.errors import FormatError, UnsupportedArchitectureError
from quantport.architectures.config import positive_int

__all__ = [
    "SUPPORTED_PRE",
    "check_gguf_vocab",
    "hf_tokenizer_from_gguf",
    "sentencepiece_tokenizer_json",
]

# The pre-tokenizers of llama.cpp's llama-vocab.cpp (llm_tokenizer_bpe: regex_exprs per
# LLAMA_VOCAB_PRE_TYPE_*, applied one after the other, each splitting the pieces of the one
# before and keeping what it does not match: tokenizers' Split(behavior="Isolated") in a
# Sequence), written with the "original regex from tokenizer.json" where llama.cpp adapted it
# for its own regex engine (the (?i:...) contractions of LLAMA3/QWEN2/QWEN35).
_GPT2_RE = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
# LLAMA_VOCAB_PRE_TYPE_LLAMA3 (also DBRX, SMAUG, CHATGLM4)
_LLAMA3_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# LLAMA_VOCAB_PRE_TYPE_QWEN2 (also STABLELM2, HUNYUAN, SOLAR_OPEN): LLAMA3's with single digits
_QWEN2_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# LLAMA_VOCAB_PRE_TYPE_QWEN35: QWEN2's with combining marks (\p{M}) kept in words
_QWEN35_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+"
    r"[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# (the character classes of llama-vocab.cpp as \u escapes: NFC-normalising editors would
# otherwise change some of their code points and break the ranges)
_CJK = "[\u4e00-\u9fa5\u0800-\u4e00\uac00-\ud7ff]+"
# LLAMA_VOCAB_PRE_TYPE_DEEPSEEK_LLM
_DEEPSEEK_LLM = (
    "[\r\n]",
    "\\s?[A-Za-z\u00b5\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u01ba\u01bc-\u01bf\u01c4-\u0293\u0295-"
    "\u02af\u0370-\u0373\u0376\u0377\u037b-\u037d\u037f\u0386\u0388-\u038a\u038c\u038e-\u03a1"
    "\u03a3-\u03f5\u03f7-\u0481\u048a-\u052f\u0531-\u0556\u10a0-\u10c5\u13a0-\u13f5\u13f8-"
    "\u13fd\u1c90-\u1cba\u1cbd-\u1cbf\u1d00-\u1d2b\u1d6b-\u1d77\u1d79-\u1d9a\u1e00-\u1f15"
    "\u1f18-\u1f1d\u1f20-\u1f45\u1f48-\u1f4d\u1f50-\u1f57\u1f59\u1f5b\u1f5d\u1f5f-\u1f7d\u1f80"
    "-\u1fb4\u1fb6-\u1fbc\u1fbe\u1fc2-\u1fc4\u1fc6-\u1fcc\u1fd0-\u1fd3\u1fd6-\u1fdb\u1fe0-"
    "\u1fec\u1ff2-\u1ff4\u1ff6-\u1ffc\u2102\u2107\u210a-\u2113\u2115\u2119-\u211d\u2124\u2126"
    "\u2128\u212a-\u212d\u212f-\u2134\u2139\u213c-\u213f\u2145-\u2149\u214e\u2183\u2184\u2c00-"
    "\u2c7b\u2c7e-\u2ce4\u2ceb-\u2cee\u2cf2\u2cf3\ua640-\ua66d\ua680-\ua69b\ua722-\ua76f\ua771"
    "-\ua787\ua78b-\ua78e\uab70-\uabbf\ufb00-\ufb06\ufb13-\ufb17\uff21-\uff3a\uff41-\uff5a"
    "\U00010400-\U0001044f\U000104b0-\U000104d3\U000104d8-\U000104fb\U00010c80-\U00010cb2"
    "\U00010cc0-\U00010cf2\U000118a0-\U000118df\U0001e900-\U0001e943]+",
    "\\s?[!-/:-~\uff01-\uff0f\uff1a-\uff5e\u2018-\u201f\u3000-\u3002]+",
    "\\s+$",
    _CJK,
    "\\p{N}+",
)
# LLAMA_VOCAB_PRE_TYPE_DEEPSEEK_CODER
_DEEPSEEK_CODER = (
    "[\r\n]",
    "\\s?\\p{L}+",
    "\\s?\\p{P}+",
    _CJK,
    "\\p{N}",
)
# LLAMA_VOCAB_PRE_TYPE_DEEPSEEK3_LLM (also HUNYUAN_DENSE, JOYAI_LLM, HY_V4)
_DEEPSEEK3 = (
    "\\p{N}{1,3}",
    "[\u4e00-\u9fa5\u3040-\u309f\u30a0-\u30ff]+",
    "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}"
    "\\p{M}]+| ?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+",
)
# LLAMA_VOCAB_PRE_TYPE_TEKKEN (Mistral NeMo, Small 3...) and LLAMA_VOCAB_PRE_TYPE_GPT4O (also
# MINIMAX_M2): the tokenizer.json originals, cased words split before a capital
_CASED_WORDS = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+@C@"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*@C@"
)
_TEKKEN_REGEX = (_CASED_WORDS.replace("@C@", "") + r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+"
                 r"|\s+(?!\S)|\s+")
_GPT4O_REGEX = (_CASED_WORDS.replace("@C@", r"(?i:'s|'t|'re|'ve|'m|'ll|'d)?")
                + r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
# LLAMA_VOCAB_PRE_TYPE_FALCON
_FALCON = (r"[\p{P}\$\+<=>\^~\|`]+", _GPT2_RE, "[0-9][0-9][0-9]")
# the default case of llm_tokenizer_bpe (LLAMA_VOCAB_PRE_TYPE_DEFAULT)
_DEFAULT = (r"[\p{P}\$\+<=>\^~\|]+", _GPT2_RE, r"\p{N}+", "[0-9][0-9][0-9]")


@dataclass(frozen=True)
class _Pre:
    """One LLAMA_VOCAB_PRE_TYPE_* as a ``tokenizers`` pipeline."""

    splits: tuple[str, ...] = ()  # regexes before the byte mapping; () = ByteLevel's GPT-2 regex
    digits: bool = False  # each \p{N} alone first (tokenizers' Digits(individual_digits))
    nfc: bool = False  # NFC normaliser, as the model family's own tokenizer.json has it
    ignore_merges: bool = False  # llama-vocab.cpp ignore_merges: a whole word in the vocab wins
    add_bos: bool = False  # llama-vocab.cpp's add_bos when tokenizer.ggml.add_bos_token is absent


_GPT2 = _Pre()
_STARCODER = _Pre(digits=True)
_LLAMA3 = _Pre((_LLAMA3_REGEX,), ignore_merges=True, add_bos=True)
_QWEN2 = _Pre((_QWEN2_REGEX,))
# tokenizer.ggml.pre -> pipeline, grouped as llama-vocab.cpp's llama_vocab::impl::load groups
# the names into LLAMA_VOCAB_PRE_TYPE_*. Qwen's own tokenizer.json files add NFC (llama.cpp
# normalises nothing; NFC changes only text that is not NFC already).
_PRE: dict[str, _Pre] = {
    "default": _Pre(_DEFAULT),
    **dict.fromkeys(("gpt-2", "phi-2", "jina-es", "jina-de", "gigachat", "jina-v2-es",
                     "jina-v2-de", "a.x-4.0", "mellum", "modern-bert", "exaone4", "mpt", "olmo",
                     "jais", "trillion", "granite-docling"), _GPT2),
    **dict.fromkeys(("starcoder", "refact", "command-r", "smollm", "codeshell", "exaone",
                     "minerva-7b", "mellum2"), _STARCODER),
    **dict.fromkeys(("llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral",
                     "midm-2.0", "lfm2", "jina-v5-nano"), _LLAMA3),
    **dict.fromkeys(("glm4", "glm5"), _Pre((_LLAMA3_REGEX,), ignore_merges=True)),
    **dict.fromkeys(("dbrx", "smaug-bpe", "chatglm-bpe"), _Pre((_LLAMA3_REGEX,))),
    **dict.fromkeys(("qwen2", "deepseek-r1-qwen"), _Pre((_QWEN2_REGEX,), nfc=True)),
    **dict.fromkeys(("kormo", "f2llmv2", "megrez", "stablelm2", "hunyuan", "solar-open"), _QWEN2),
    "qwen35": _Pre((_QWEN35_REGEX,)),
    "deepseek-llm": _Pre(_DEEPSEEK_LLM),
    "deepseek-coder": _Pre(_DEEPSEEK_CODER),
    **dict.fromkeys(("deepseek-v3", "hunyuan-dense", "joyai-llm", "hy_v4"), _Pre(_DEEPSEEK3)),
    "falcon": _Pre(_FALCON),
    "tekken": _Pre((_TEKKEN_REGEX,), ignore_merges=True, add_bos=True),
    **dict.fromkeys(("gpt-4o", "llama4", "kanana2", "talkie", "minimax-m2"),
                    _Pre((_GPT4O_REGEX,))),
}

#: every ``tokenizer.ggml.pre`` of a byte-level BPE (``gpt2``) vocabulary that
#: :func:`hf_tokenizer_from_gguf` rebuilds.
SUPPORTED_PRE = tuple(sorted(_PRE))

# GGUF token types (gguf-py constants.py TokenType)
_CONTROL, _USER_DEFINED = 3, 4


def _pre_spec(pre: str, where: str) -> _Pre:
    spec = _PRE.get(pre)
    if spec is None:
        raise UnsupportedArchitectureError(
            f"{where}: GGUF pre-tokenizer {pre!r} cannot be rebuilt as a tokenizer.json; "
            f"supported: {', '.join(SUPPORTED_PRE)}"
        )
    return spec


def _pre_tokenizer(spec: _Pre) -> dict[str, Any]:
    bytelevel = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                 "use_regex": not spec.splits}
    steps: list[dict[str, Any]] = []
    if spec.digits:
        steps.append({"type": "Digits", "individual_digits": True})
    steps += [{"type": "Split", "pattern": {"Regex": rx}, "behavior": "Isolated",
               "invert": False} for rx in spec.splits]
    if not steps:
        return bytelevel
    return {"type": "Sequence", "pretokenizers": [*steps, bytelevel]}


_ID_KEYS = ("bos", "eos", "unknown", "padding", "seperator", "sep", "cls", "mask", "eot", "eom")


def _bad(where: str, key: str, want: str, got: Any) -> FormatError:
    r = repr(got)
    r = r if len(r) <= 60 else r[:57] + "..."
    return FormatError(f"{where}: {key} must be {want}, got {r}; the GGUF vocabulary is corrupt, "
                       "regenerate the file")


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _all(values: list[Any], types: set[type], ok: Any) -> bool:
    """Whether ``ok`` holds for every value: first by the set of exact types present (one
    C-level pass, a third of the time of calling ``ok`` on each of 10^5 vocabulary entries),
    value by value only when some other type is there."""
    return set(map(type, values)) <= types or all(ok(x) for x in values)


def check_gguf_vocab(meta: dict[str, Any], where: str = "GGUF metadata") -> None:
    """Check the types and lengths of every ``tokenizer.*`` value quantport reads or copies.

    Tokens must be strings, ``token_type``/``scores`` as long as the tokens, merges ``"a b"``
    pairs of tokens whose concatenation is a token too (``tokenizers``' BPE refuses anything
    else), special token ids integers, flags booleans.

    Raises:
        FormatError: one line naming ``where`` and the key.
    """
    for key in ("tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.chat_template"):
        v = meta.get(key)
        if v is not None and not isinstance(v, str):
            raise _bad(where, key, "a string", v)
    for key in ("tokenizer.ggml.add_bos_token", "tokenizer.ggml.add_eos_token",
                "tokenizer.ggml.add_space_prefix"):
        v = meta.get(key)
        if v is not None and not isinstance(v, bool):
            raise _bad(where, key, "true or false", v)
    for name in _ID_KEYS:
        key = f"tokenizer.ggml.{name}_token_id"
        v = meta.get(key)
        if v is not None and not (_int(v) and v >= 0):
            raise _bad(where, key, "a token id (a non-negative integer)", v)
    key = "tokenizer.ggml.tokens"
    tokens = meta.get(key)
    if tokens is None:
        return
    if not isinstance(tokens, list) or not _all(tokens, {str}, lambda t: isinstance(t, str)):
        raise _bad(where, key, "an array of strings", tokens)
    n = len(tokens)
    for key, want, types, ok in (
        ("tokenizer.ggml.token_type", "an array of integers", {int}, _int),
        ("tokenizer.ggml.scores", "an array of numbers", {int, float},
         lambda x: isinstance(x, int | float) and not isinstance(x, bool)),
    ):
        v = meta.get(key)
        if v is None:
            continue
        if not isinstance(v, list) or not _all(v, types, ok):
            raise _bad(where, key, want, v)
        if len(v) != n:
            raise FormatError(f"{where}: {key} has {len(v)} entries but tokenizer.ggml.tokens has "
                              f"{n}; the GGUF vocabulary is corrupt, regenerate the file")
    key = "tokenizer.ggml.merges"
    merges = meta.get(key)
    if merges is None:
        return
    if not isinstance(merges, list) or not _all(merges, {str}, lambda m: isinstance(m, str)):
        raise _bad(where, key, "an array of strings", merges)
    vocab = set(tokens)
    for i, m in enumerate(merges):
        a, sep, b = m.partition(" ")
        if not sep or a not in vocab or b not in vocab or a + b not in vocab:
            raise _bad(where, f"{key}[{i}]", "two tokens separated by a space whose "
                       "concatenation is a token", m)


def hf_tokenizer_from_gguf(meta: dict[str, Any], where: str = "GGUF metadata") -> dict[str, str]:
    """Build ``tokenizer.json`` and ``tokenizer_config.json`` text from GGUF metadata.

    Args:
        meta: GGUF key/value metadata with arrays in full.
        where: the file, for messages.

    Returns:
        File name -> file text.

    Raises:
        UnsupportedArchitectureError: for tokenizer models other than ``gpt2`` (byte-level BPE)
            and ``llama`` (SentencePiece).
        FormatError: when required keys are missing or values have the wrong type.
    """
    check_gguf_vocab(meta, where)
    model = meta.get("tokenizer.ggml.model")
    if model == "llama":
        return _spm_files(meta, where)
    if model != "gpt2":
        raise UnsupportedArchitectureError(
            f"{where}: GGUF tokenizer model {model!r} is not supported for import; supported: "
            "gpt2 (byte-level BPE), llama (SentencePiece)"
        )
    missing = [k for k in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges") if k not in meta]
    if missing:
        raise FormatError(f"{where}: GGUF metadata lacks {missing[0]}, needed to rebuild the "
                          "tokenizer")
    tokens: list[str] = meta["tokenizer.ggml.tokens"]
    merges: list[str] = meta["tokenizer.ggml.merges"]
    types = list(meta.get("tokenizer.ggml.token_type") or [1] * len(tokens))
    spec = _pre_spec(meta.get("tokenizer.ggml.pre", "default"), where)
    added = [
        {"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
         "normalized": False, "special": types[i] == _CONTROL}
        for i, t in enumerate(tokens) if types[i] in (_CONTROL, _USER_DEFINED)
    ]
    add_bos = bool(meta.get("tokenizer.ggml.add_bos_token", spec.add_bos))

    def tok(key: str) -> str | None:
        i = meta.get(key)
        return tokens[i] if isinstance(i, int) and 0 <= i < len(tokens) else None

    bos, eos = tok("tokenizer.ggml.bos_token_id"), tok("tokenizer.ggml.eos_token_id")
    post: dict[str, Any] = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False,
                            "use_regex": True}
    if add_bos and bos is not None:
        bos_id = meta["tokenizer.ggml.bos_token_id"]
        post = {"type": "TemplateProcessing",
                "single": [{"SpecialToken": {"id": bos, "type_id": 0}},
                           {"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [{"SpecialToken": {"id": bos, "type_id": 0}},
                         {"Sequence": {"id": "A", "type_id": 0}},
                         {"Sequence": {"id": "B", "type_id": 1}}],
                "special_tokens": {bos: {"id": bos, "ids": [bos_id], "tokens": [bos]}}}
    tokenizer = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": {"type": "NFC"} if spec.nfc else None,
        "pre_tokenizer": _pre_tokenizer(spec),
        "post_processor": post,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True,
                    "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None,
                  "continuing_subword_prefix": None, "end_of_word_suffix": None,
                  "fuse_unk": False, "byte_fallback": False,
                  "ignore_merges": spec.ignore_merges,
                  "vocab": {t: i for i, t in enumerate(tokens)},
                  "merges": [m.split(" ", 1) for m in merges]},
    }
    config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "add_bos_token": add_bos,
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": _context_length(meta, where),
        "bos_token": bos,
        "eos_token": eos,
        "unk_token": tok("tokenizer.ggml.unknown_token_id"),
        "pad_token": tok("tokenizer.ggml.padding_token_id"),
        "additional_special_tokens": [a["content"] for a in added if a["special"]],
    }
    if "tokenizer.chat_template" in meta:
        config["chat_template"] = meta["tokenizer.chat_template"]
    return {
        "tokenizer.json": json.dumps(tokenizer, ensure_ascii=False),
        "tokenizer_config.json": json.dumps(config, ensure_ascii=False, indent=2),
    }


def _spm_files(meta: dict[str, Any], where: str) -> dict[str, str]:
    """``tokenizer.json`` / ``tokenizer_config.json`` of a SentencePiece (``llama``) vocabulary."""
    from quantport.readers.spm import rstrip_tokens, spm_tokenizer_json

    missing = [k for k in ("tokenizer.ggml.tokens", "tokenizer.ggml.scores") if k not in meta]
    if missing:
        raise FormatError(f"{where}: GGUF metadata lacks {missing[0]}, needed to rebuild the "
                          "SentencePiece tokenizer")
    tokens: list[str] = meta["tokenizer.ggml.tokens"]
    if "tokenizer.ggml.token_type" not in meta:
        raise FormatError(f"{where}: GGUF metadata lacks tokenizer.ggml.token_type, needed to "
                          "rebuild the SentencePiece tokenizer")
    types = list(meta["tokenizer.ggml.token_type"])

    def tok(key: str) -> tuple[int, str] | None:
        i = meta.get(key)
        return (i, tokens[i]) if isinstance(i, int) and 0 <= i < len(tokens) else None

    # llama-vocab.cpp defaults for LLAMA_VOCAB_TYPE_SPM: add_space_prefix, add_bos true,
    # add_eos false (overridden by the keys when present)
    add_bos = bool(meta.get("tokenizer.ggml.add_bos_token", True))
    add_eos = bool(meta.get("tokenizer.ggml.add_eos_token", False))
    prefix = bool(meta.get("tokenizer.ggml.add_space_prefix", True))
    bos, eos = tok("tokenizer.ggml.bos_token_id"), tok("tokenizer.ggml.eos_token_id")
    unk, pad = tok("tokenizer.ggml.unknown_token_id"), tok("tokenizer.ggml.padding_token_id")
    tj = spm_tokenizer_json(
        tokens, meta["tokenizer.ggml.scores"], types, add_space_prefix=prefix,
        bos=bos if add_bos else None, eos=eos if add_eos else None,
        unk=unk[1] if unk else None, where=where,
        rstrip=rstrip_tokens(meta.get("general.name"), tokens, types),
    )
    config: dict[str, Any] = {
        # TokenizersBackend: transformers loads tokenizer.json as written (LlamaTokenizer would
        # rebuild a Metaspace pre-tokenizer, which does not prepend to text starting with a space)
        "tokenizer_class": "PreTrainedTokenizerFast",
        "add_bos_token": add_bos,
        "add_eos_token": add_eos,
        "clean_up_tokenization_spaces": False,
        "model_max_length": _context_length(meta, where),
        "bos_token": bos[1] if bos else None,
        "eos_token": eos[1] if eos else None,
        "unk_token": unk[1] if unk else None,
        "pad_token": pad[1] if pad else None,
        "additional_special_tokens": [a["content"] for a in tj["added_tokens"] if a["special"]],
    }
    if "tokenizer.chat_template" in meta:
        config["chat_template"] = meta["tokenizer.chat_template"]
    return {
        "tokenizer.json": json.dumps(tj, ensure_ascii=False),
        "tokenizer_config.json": json.dumps(config, ensure_ascii=False, indent=2),
    }


def _context_length(meta: dict[str, Any], where: str) -> int:
    arch = meta.get("general.architecture")
    key = f"{arch}.context_length" if isinstance(arch, str) else "llama.context_length"
    return positive_int(meta, key, where, default=2048)


def sentencepiece_tokenizer_json(
    tokenizer_files: Mapping[str, str], config: Mapping[str, Any], *, arch: str,
    model_dir: Path,
) -> str | None:
    """For a checkpoint whose tokenizer is a SentencePiece model: a ``tokenizer.json`` that
    tokenizes as that model does; ``None`` for other tokenizers.

    transformers 5 converts ``tokenizer.model`` to a ``Metaspace(prepend_scheme="first")``
    ``tokenizer.json`` that gives other ids than SentencePiece at a leading space and at runs
    of spaces, and onnxruntime-genai (onnxruntime-extensions) reads that file its own way,
    differing from both at a leading space. The vocabulary quantport writes into a GGUF
    (merge ranks from SentencePiece's scores, :func:`quantport.readers.gguf_vocab.vocab_from_hf`)
    rebuilt as ``tokenizer.json`` (a ``Prepend("▁")``/``Replace`` normaliser, no
    pre-tokenizer: :func:`quantport.readers.spm.spm_tokenizer_json`) gives SentencePiece's ids
    in tokenizers and in onnxruntime-genai.

    Args:
        tokenizer_files: the checkpoint's tokenizer files (name -> text).
        config: its ``config.json``.
        arch: the GGUF architecture name (``vocab_from_hf``'s ``arch``).
        model_dir: the checkpoint directory; only a ``tokenizer.model`` there makes a result.

    Raises:
        ConfigError, FormatError: a ``tokenizer.model`` or tokenizer files that
            ``vocab_from_hf`` refuses.
    """
    from quantport.readers.gguf_vocab import vocab_from_hf, vocab_metadata

    if not (model_dir / "tokenizer.model").is_file():
        return None
    vocab = vocab_from_hf(tokenizer_files, config, arch=arch, model_dir=model_dir)
    if vocab.model != "llama":
        return None
    meta = {kv.key: kv.value for kv in vocab_metadata(vocab)}
    text = hf_tokenizer_from_gguf(meta, str(model_dir / "tokenizer.model"))["tokenizer.json"]
    try:
        source = json.loads(tokenizer_files.get("tokenizer.json", "null"))
    except ValueError:
        source = None
    if not isinstance(source, dict):
        return text
    tj = json.loads(text)
    # what the checkpoint's own tokenizer.json adds around the text (BOS/EOS as its
    # tokenizer_config says, which the GGUF's llama.cpp defaults need not) and the added
    # tokens it matches whole that the GGUF vocabulary keeps as plain pieces
    if isinstance(source.get("post_processor"), dict):
        tj["post_processor"] = source["post_processor"]
    have = {a["id"] for a in tj["added_tokens"]}
    extra = [a for a in source.get("added_tokens") or []
             if isinstance(a, dict) and isinstance(a.get("id"), int) and a["id"] not in have
             and not a.get("normalized", False)]
    tj["added_tokens"] = sorted([*tj["added_tokens"], *extra], key=lambda a: a["id"])
    return json.dumps(tj, ensure_ascii=False)
