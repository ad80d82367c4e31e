"""Hugging Face tokenizer files -> GGUF tokenizer metadata (``tokenizer.ggml.*``).

The reverse of :mod:`quantport.readers.tokenizer`. It reproduces what llama.cpp's converter
writes (vendored llama.cpp of llama-cpp-python 0.3.36):

* ``conversion/base.py`` ``TextModel.get_vocab_base``: tokens in id order (ids missing from the
  vocabulary become ``[PAD<i>]`` UNUSED tokens up to ``config.vocab_size``); added tokens are
  CONTROL when ``special`` or when they look special (``<|...|>``...), USER_DEFINED otherwise;
  everything else NORMAL. Non-normalized added tokens are encoded and decoded once, as llama.cpp
  assumes pre-normalized added tokens.
* ``_set_vocab_gpt2`` (byte-level BPE, ``tokenizer.ggml.model = "gpt2"``) and
  ``BertModel.set_vocab`` (WordPiece, ``"bert"``: the "phantom space" rewrite -- ``##x`` ->
  ``x``, other normal tokens get a leading U+2581, control tokens stay as they are).
* ``gguf.SpecialVocab`` (gguf-py ``vocab.py``) for merges (pair lists joined with a space, literal
  spaces encoded as U+0120), special token ids, ``add_*_token`` flags and the chat template; it is
  used as is, so these follow llama.cpp by construction.

``tokenizer.ggml.pre`` is recognised from the ``pre_tokenizer`` structure of ``tokenizer.json``
(llama.cpp itself hashes the token ids of a probe text, ``get_vocab_base_pre``; that hash is
computed here too and must agree with the structure when it is one llama.cpp knows).
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from quantport.errors import ConfigError, UnsupportedArchitectureError
from quantport.formats.gguf_writer import GGUFKV, GGUFValueType

__all__ = [
    "SUPPORTED_PRE_TOKENIZERS",
    "GGUFVocab",
    "detect_pre_tokenizer",
    "vocab_from_hf",
    "vocab_metadata",
]

log = logging.getLogger(__name__)

# gguf-py constants.py TokenType
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

# llama-vocab.cpp LLAMA_VOCAB_PRE_TYPE_LLAMA3 regex as written in Llama 3's tokenizer.json
_LLAMA3_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

#: ``tokenizer.ggml.pre`` values this module can recognise (all known to llama-vocab.cpp).
SUPPORTED_PRE_TOKENIZERS = ("smollm", "gpt-2", "llama-bpe")

# get_vocab_base_pre() in conversion/base.py: sha256(str(token ids of chktxt)) -> name, for the
# names above (the full table has ~100 entries; only these are recognised by structure here).
_CHKHSH = {
    "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249": "smollm",
    "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5": "llama-bpe",
    "3ce83efda5659b07b1ad37ca97ca5797ea4285d9b9ab0dc679e4a720c9da7454": "gpt-2",
    "0876d13b50744004aa9aeae05e7b0647eac9d801b5ba4668afc01e709c15e19f": "bert-bge",
}
# the probe text of get_vocab_base_pre() (conversion/base.py), verbatim
_CHKTXT = (
    "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ (multiple emojis "
    "concatenated) ✅ 🦙🦙 3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 "
    "កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ ------======= нещо на Български "
    "''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, 'RE you sure? 'M not "
    "sure I'll make it, 'D you like some tea? We'Ve a'lL"
)


@dataclass
class GGUFVocab:
    """Everything the GGUF needs about a tokenizer.

    Attributes:
        model: ``tokenizer.ggml.model`` (``"gpt2"`` or ``"bert"``).
        pre: ``tokenizer.ggml.pre``.
        tokens: token strings in id order (already in llama.cpp's form).
        token_types: gguf ``TokenType`` per token.
        merges: BPE merges as ``"a b"`` strings (empty for WordPiece).
        special_ids: ``bos``/``eos``/``unk``/``sep``/``pad``/``cls``/``mask`` (+ ``eot``...) ids.
        add_special: ``add_bos``/``add_eos``/``add_sep`` flags (keys without ``add_``/``_token``).
        chat_template: a template string, a list of ``{"name", "template"}`` or ``None``.
        token_type_count: BERT segment count (``tokenizer.ggml.token_type_count``), else ``None``.
    """

    model: str
    pre: str
    tokens: list[str]
    token_types: list[int]
    merges: list[str] = field(default_factory=list)
    special_ids: dict[str, int] = field(default_factory=dict)
    add_special: dict[str, bool] = field(default_factory=dict)
    chat_template: Any = None
    token_type_count: int | None = None


def _probe_hash(tokenizer: Any) -> str:
    # AutoTokenizer.encode() adds special tokens, so does Tokenizer.encode() by default
    return hashlib.sha256(str(tokenizer.encode(_CHKTXT).ids).encode()).hexdigest()


def detect_pre_tokenizer(
    tokenizer_json: Mapping[str, Any], *, where: str = "tokenizer.json"
) -> str:
    """Name the llama.cpp pre-tokenizer (``tokenizer.ggml.pre``) of a byte-level BPE tokenizer.

    Args:
        tokenizer_json: the parsed ``tokenizer.json``.
        where: file name for error messages.

    Returns:
        ``"smollm"`` for ``Sequence[Digits(individual_digits), ByteLevel]`` (SmolLM/SmolLM2),
        ``"gpt-2"`` for a bare ``ByteLevel`` with its regex, ``"llama-bpe"`` for Llama 3's
        ``Sequence[Split(regex), ByteLevel(use_regex=False)]``.

    Raises:
        UnsupportedArchitectureError: any other structure (llama.cpp would tokenize it
            differently from the original tokenizer, so no silent fallback is made).
    """
    pre = tokenizer_json.get("pre_tokenizer") or {}
    seq = pre.get("pretokenizers") if pre.get("type") == "Sequence" else [pre]
    types = [p.get("type") for p in seq or []]

    def bytelevel(p: Mapping[str, Any], use_regex: bool) -> bool:
        return (
            p.get("type") == "ByteLevel"
            and bool(p.get("use_regex", True)) == use_regex
            and not p.get("add_prefix_space", False)
        )

    if (
        types == ["Digits", "ByteLevel"]
        and seq[0].get("individual_digits")
        and bytelevel(seq[1], True)
    ):
        # LLAMA_VOCAB_PRE_TYPE_SMOLLM (llama-vocab.cpp): "\p{N}" then the GPT-2 regex
        return "smollm"
    if types == ["ByteLevel"] and bytelevel(seq[0], True):
        return "gpt-2"  # LLAMA_VOCAB_PRE_TYPE_GPT2
    if (
        types == ["Split", "ByteLevel"]
        and (seq[0].get("pattern") or {}).get("Regex") == _LLAMA3_REGEX
        and bytelevel(seq[1], False)
    ):
        return "llama-bpe"  # LLAMA_VOCAB_PRE_TYPE_LLAMA3
    raise UnsupportedArchitectureError(
        f"{where}: pre-tokenizer {json.dumps(pre)[:200]} is not recognised; supported: "
        f"{', '.join(SUPPORTED_PRE_TOKENIZERS)} "
        "(llama.cpp would tokenize other structures differently)"
    )


def _looks_special(text: str) -> bool:
    # TextModel.does_token_look_special (conversion/base.py)
    return (
        text in ("<pad>", "<mask>", "<2mass>", "[@BOS@]")
        or (text.startswith("<|") and text.endswith("|>"))
        or (text.startswith("<｜") and text.endswith("｜>"))
        or (text.startswith("<unused") and text.endswith(">"))
    )


def _base_vocab(tok: Any, tj: Mapping[str, Any], vocab_size: int) -> tuple[list[str], list[int]]:
    """Port of TextModel.get_vocab_base() on a ``tokenizers.Tokenizer``."""
    vocab: dict[str, int] = tok.get_vocab(with_added_tokens=True)
    if vocab and max(vocab.values()) >= vocab_size:
        raise ConfigError(
            f"tokenizer has token id {max(vocab.values())} but config.json vocab_size is "
            f"{vocab_size}; fix vocab_size"
        )
    reverse = {i: t for t, i in vocab.items()}
    added = {int(a["id"]): a for a in tj.get("added_tokens") or []}
    tokens: list[str] = []
    types: list[int] = []
    for i in range(vocab_size):
        if i not in reverse:
            tokens.append(f"[PAD{i}]")
            types.append(UNUSED)
            continue
        token = reverse[i]
        if i in added:
            a = added[i]
            if not a.get("normalized", True):
                # "The tokenizer in llama.cpp assumes the CONTROL and USER_DEFINED tokens are
                # pre-normalized": round-trip non-normalized ones through the tokenizer
                before = token
                token = tok.decode(
                    tok.encode(token, add_special_tokens=False).ids, skip_special_tokens=False
                )
                if token != before:
                    log.info("%r is encoded and decoded back to %r", before, token)
            if a.get("special") or _looks_special(token):
                types.append(CONTROL)
            else:
                token = token.replace("\u2581", " ")  # "pre-normalize user-defined spaces"
                types.append(USER_DEFINED)
        else:
            types.append(NORMAL)
        tokens.append(token)
    return tokens, types


def _special_vocab(
    files: Mapping[str, str], model_dir: Path | None, n_vocab: int, load_merges: bool
) -> Any:
    """Run gguf-py's SpecialVocab on the checkpoint directory (or on the files in a temp dir)."""
    from gguf import SpecialVocab

    if model_dir is not None and (model_dir / "tokenizer.json").is_file():
        return SpecialVocab(model_dir, load_merges=load_merges, n_vocab=n_vocab)
    with tempfile.TemporaryDirectory(prefix="quantport-vocab-") as tmp:
        for name, text in files.items():
            (Path(tmp) / name).write_text(text, encoding="utf-8")
        return SpecialVocab(tmp, load_merges=load_merges, n_vocab=n_vocab)


def vocab_from_hf(
    tokenizer_files: Mapping[str, str],
    config: Mapping[str, Any],
    *,
    arch: str,
    model_dir: Path | None = None,
) -> GGUFVocab:
    """Build the GGUF vocabulary of a Hugging Face tokenizer.

    Args:
        tokenizer_files: file name -> text (``tokenizer.json`` required;
            ``tokenizer_config.json`` and ``special_tokens_map.json`` used when present).
        config: the model's ``config.json`` (``vocab_size``, ``type_vocab_size``).
        arch: ``"llama"`` (byte-level BPE -> ``gpt2``) or ``"bert"`` (WordPiece -> ``bert``).
        model_dir: the checkpoint directory, if any (lets SpecialVocab also see
            ``chat_template.jinja``).

    Returns:
        The vocabulary.

    Raises:
        ConfigError: no ``tokenizer.json``, or a tokenizer model that does not fit ``arch``.
        UnsupportedArchitectureError: an unrecognised BPE pre-tokenizer.
    """
    from tokenizers import Tokenizer

    text = tokenizer_files.get("tokenizer.json")
    if text is None:
        raise ConfigError(
            "no tokenizer.json in the checkpoint; quantport builds GGUF vocabularies from "
            "tokenizer.json (save the tokenizer with a fast tokenizer to create it)"
        )
    tj = json.loads(text)
    tok = Tokenizer.from_str(text)
    # tokenizer.json may carry padding/truncation settings (MiniLM pads to 128); AutoTokenizer's
    # encode() used by llama.cpp's converter does not apply them
    tok.no_padding()
    tok.no_truncation()
    kind = (tj.get("model") or {}).get("type")
    vocab_size = int(config.get("vocab_size") or tok.get_vocab_size(with_added_tokens=True))
    tokens, types = _base_vocab(tok, tj, vocab_size)
    if arch == "bert":
        if kind != "WordPiece":
            raise ConfigError(
                f"tokenizer.json: model type {kind!r} for a BERT model; expected WordPiece"
            )
        # BertModel.set_vocab: "convert to phantom space vocab"
        tokens = [
            t if ty == CONTROL else t[2:] if t.startswith("##") else "\u2581" + t
            for t, ty in zip(tokens, types, strict=True)
        ]
        sv = _special_vocab(tokenizer_files, model_dir, len(tokens), load_merges=False)
        # The WPM tokenizer ignores tokenizer.ggml.pre (llama-vocab.cpp sets
        # LLAMA_VOCAB_PRE_TYPE_DEFAULT for LLAMA_VOCAB_TYPE_WPM); write the name llama.cpp's
        # converter would (its probe hash, e.g. "bert-bge" for bert-base-uncased vocabularies),
        # else "default".
        pre = _CHKHSH.get(_probe_hash(tok), "default")
        return GGUFVocab(
            "bert",
            pre,
            tokens,
            types,
            [],
            dict(sv.special_token_ids),
            dict(sv.add_special_token),
            sv.chat_template,
            int(config.get("type_vocab_size", 1)),
        )
    if kind != "BPE":
        raise ConfigError(
            f"tokenizer.json: model type {kind!r} is not supported for {arch}; supported: "
            "byte-level BPE (tokenizer.ggml.model gpt2)"
        )
    pre = detect_pre_tokenizer(tj)
    probe = _CHKHSH.get(_probe_hash(tok))
    if probe is not None and probe != pre:
        raise UnsupportedArchitectureError(
            f"tokenizer.json: pre-tokenizer structure says {pre!r} but llama.cpp's probe hash says "
            f"{probe!r}; the tokenizer is inconsistent"
        )
    if probe is None:
        log.info(
            "pre-tokenizer %r recognised from structure (probe hash not in llama.cpp's table)", pre
        )
    sv = _special_vocab(tokenizer_files, model_dir, len(tokens), load_merges=True)
    if not sv.merges:
        raise ConfigError("tokenizer.json has no BPE merges; llama.cpp needs tokenizer.ggml.merges")
    return GGUFVocab(
        "gpt2",
        pre,
        tokens,
        types,
        list(sv.merges),
        dict(sv.special_token_ids),
        dict(sv.add_special_token),
        sv.chat_template,
    )


def vocab_metadata(v: GGUFVocab) -> list[GGUFKV]:
    """GGUF key/value pairs for a vocabulary, with the types llama-vocab.cpp reads.

    ``tokenizer.ggml.token_type`` is read raw as ``int*`` (INT32 array); ids are UINT32; the
    ``add_*`` flags are BOOL (gguf-py ``GGUFWriter.add_*`` helpers write the same types).
    """
    S, U32, I32, B, A = (
        GGUFValueType.STRING,
        GGUFValueType.UINT32,
        GGUFValueType.INT32,
        GGUFValueType.BOOL,
        GGUFValueType.ARRAY,
    )
    kvs = [GGUFKV("tokenizer.ggml.model", v.model, S), GGUFKV("tokenizer.ggml.pre", v.pre, S)]
    kvs.append(GGUFKV("tokenizer.ggml.tokens", v.tokens, A, S))
    kvs.append(GGUFKV("tokenizer.ggml.token_type", v.token_types, A, I32))
    if v.token_type_count is not None:
        kvs.append(GGUFKV("tokenizer.ggml.token_type_count", v.token_type_count, U32))
    if v.merges:
        kvs.append(GGUFKV("tokenizer.ggml.merges", v.merges, A, S))
    # gguf-py Keys.Tokenizer names (note llama.cpp's spelling "seperator")
    id_keys = {
        "bos": "bos_token_id",
        "eos": "eos_token_id",
        "unk": "unknown_token_id",
        "sep": "seperator_token_id",
        "pad": "padding_token_id",
        "cls": "cls_token_id",
        "mask": "mask_token_id",
        "eot": "eot_token_id",
        "eom": "eom_token_id",
    }
    for typ, tid in v.special_ids.items():
        if typ in id_keys:
            kvs.append(GGUFKV(f"tokenizer.ggml.{id_keys[typ]}", int(tid), U32))
        else:
            log.warning("no GGUF key for special token type %s (id %d); skipped", typ, tid)
    for typ, flag in v.add_special.items():
        kvs.append(GGUFKV(f"tokenizer.ggml.add_{typ}_token", bool(flag), B))
    ct = v.chat_template
    if isinstance(ct, str):
        kvs.append(GGUFKV("tokenizer.chat_template", ct, S))
    elif isinstance(ct, list):
        # GGUFWriter.add_chat_template: "default" -> tokenizer.chat_template, others by name
        names = []
        for entry in ct:
            name, tmpl = entry.get("name"), entry.get("template")
            if not isinstance(name, str) or not isinstance(tmpl, str):
                continue
            key = (
                "tokenizer.chat_template"
                if name == "default"
                else f"tokenizer.chat_template.{name}"
            )
            if name != "default":
                names.append(name)
            kvs.append(GGUFKV(key, tmpl, S))
        if names:
            kvs.append(GGUFKV("tokenizer.chat_templates", names, A, S))
    return kvs
