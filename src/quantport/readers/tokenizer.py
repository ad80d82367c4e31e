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
from typing import Any

from quantport.errors import FormatError, UnsupportedArchitectureError
from quantport.readers.config import positive_int

__all__ = ["SUPPORTED_PRE", "check_gguf_vocab", "hf_tokenizer_from_gguf"]

# llama.cpp llama-vocab.cpp, LLAMA_VOCAB_PRE_TYPE_LLAMA3
_LLAMA3_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

SUPPORTED_PRE = ("smollm", "gpt2", "default", "llama-bpe")

# GGUF token types (gguf-py constants.py TokenType)
_CONTROL, _USER_DEFINED = 3, 4


def _pre_tokenizer(pre: str, where: str) -> dict[str, Any]:
    bytelevel = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                 "use_regex": True}
    if pre == "smollm":
        # LLAMA_VOCAB_PRE_TYPE_SMOLLM: "\p{N}" (each digit alone) then the GPT-2 regex,
        # which is what HF's Digits(individual) + ByteLevel(use_regex) do.
        return {"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": True}, bytelevel]}
    if pre in ("gpt2", "default"):
        return bytelevel
    if pre == "llama-bpe":
        return {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": _LLAMA3_REGEX}, "behavior": "Isolated",
             "invert": False},
            {**bytelevel, "use_regex": False}]}
    raise UnsupportedArchitectureError(
        f"{where}: GGUF pre-tokenizer {pre!r} is not supported; supported: {', '.join(SUPPORTED_PRE)}"
    )


_ID_KEYS = ("bos", "eos", "unknown", "padding", "seperator", "sep", "cls", "mask", "eot", "eom")


def _bad(where: str, key: str, want: str, got: Any) -> FormatError:
    r = repr(got)
    r = r if len(r) <= 60 else r[:57] + "..."
    return FormatError(f"{where}: {key} must be {want}, got {r}; the GGUF vocabulary is corrupt, "
                       "regenerate the file")


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


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
    if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
        raise _bad(where, key, "an array of strings", tokens)
    n = len(tokens)
    for key, want, ok in (
        ("tokenizer.ggml.token_type", "an array of integers", _int),
        ("tokenizer.ggml.scores", "an array of numbers",
         lambda x: isinstance(x, int | float) and not isinstance(x, bool)),
    ):
        v = meta.get(key)
        if v is None:
            continue
        if not isinstance(v, list) or not all(ok(x) for x in v):
            raise _bad(where, key, want, v)
        if len(v) != n:
            raise FormatError(f"{where}: {key} has {len(v)} entries but tokenizer.ggml.tokens has "
                              f"{n}; the GGUF vocabulary is corrupt, regenerate the file")
    key = "tokenizer.ggml.merges"
    merges = meta.get(key)
    if merges is None:
        return
    if not isinstance(merges, list) or not all(isinstance(m, str) for m in merges):
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
    pre = meta.get("tokenizer.ggml.pre", "default")
    added = [
        {"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
         "normalized": False, "special": types[i] == _CONTROL}
        for i, t in enumerate(tokens) if types[i] in (_CONTROL, _USER_DEFINED)
    ]
    add_bos = bool(meta.get("tokenizer.ggml.add_bos_token", False))

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
        "normalizer": None,
        "pre_tokenizer": _pre_tokenizer(pre, where),
        "post_processor": post,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True,
                    "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None,
                  "continuing_subword_prefix": None, "end_of_word_suffix": None,
                  "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": {t: i for i, t in enumerate(tokens)},
                  "merges": [m.split(" ", 1) for m in merges]},
    }
    config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "add_bos_token": add_bos,
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": positive_int(meta, "llama.context_length", where, default=2048),
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
