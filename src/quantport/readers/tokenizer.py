"""Tokenizers between GGUF metadata and Hugging Face ``tokenizer.json``.

GGUF -> HF rebuilds a ``tokenizers`` byte-level BPE from ``tokenizer.ggml.tokens/merges`` with
the pre-tokenizer that ``tokenizer.ggml.pre`` names (llama.cpp ``llama-vocab.cpp``
``LLAMA_VOCAB_PRE_TYPE_*`` regexes). HF -> GGUF (for the writer) goes the other way and
recognises the pre-tokenizer from the ``tokenizer.json`` structure.
"""

from __future__ import annotations

import json
from typing import Any

from quantport.errors import FormatError, UnsupportedArchitectureError

__all__ = ["SUPPORTED_PRE", "hf_tokenizer_from_gguf"]

# llama.cpp llama-vocab.cpp, LLAMA_VOCAB_PRE_TYPE_LLAMA3
_LLAMA3_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

SUPPORTED_PRE = ("smollm", "gpt2", "default", "llama-bpe")

# GGUF token types (gguf-py constants.py TokenType)
_CONTROL, _USER_DEFINED = 3, 4


def _pre_tokenizer(pre: str) -> dict[str, Any]:
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
        f"GGUF pre-tokenizer {pre!r} is not supported; supported: {', '.join(SUPPORTED_PRE)}"
    )


def hf_tokenizer_from_gguf(meta: dict[str, Any]) -> dict[str, str]:
    """Build ``tokenizer.json`` and ``tokenizer_config.json`` text from GGUF metadata.

    Args:
        meta: GGUF key/value metadata with arrays in full.

    Returns:
        File name -> file text.

    Raises:
        UnsupportedArchitectureError: for tokenizer models other than ``gpt2`` (byte-level BPE).
        FormatError: when required keys are missing.
    """
    model = meta.get("tokenizer.ggml.model")
    if model != "gpt2":
        raise UnsupportedArchitectureError(
            f"GGUF tokenizer model {model!r} is not supported for import; supported: gpt2 "
            "(byte-level BPE)"
        )
    try:
        tokens: list[str] = list(meta["tokenizer.ggml.tokens"])
        merges: list[str] = list(meta["tokenizer.ggml.merges"])
    except KeyError as exc:
        raise FormatError(f"GGUF metadata lacks {exc.args[0]}, needed to rebuild the tokenizer") from exc
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
        "pre_tokenizer": _pre_tokenizer(pre),
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
        "model_max_length": int(meta.get("llama.context_length", 2048)),
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
