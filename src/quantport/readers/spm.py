"""SentencePiece vocabularies (GGUF ``tokenizer.ggml.model = "llama"``) both ways.

HF -> GGUF ports what llama.cpp's converter does (vendored llama.cpp of llama-cpp-python 0.3.36,
``conversion/base.py``):

* :func:`sentencepiece_vocab` is ``TextModel._create_vocab_sentencepiece`` (``flavor="llama"``)
  and the loop of ``Phi3MiniModel.set_vocab`` (``flavor="phi3"``, ``conversion/phi.py``): tokens,
  scores and token types of a ``tokenizer.model`` read through ``SentencePieceProcessor``; ids
  below ``vocab_size`` that the model does not fill stay ``[PAD<i>]`` / ``-10000.0`` / UNUSED;
  ``added_tokens.json`` and ``tokenizer_config.json``'s ``added_tokens_decoder`` (and, for Phi-3,
  ``tokenizer.json``'s ``added_tokens``) overwrite their ids with score ``-1000.0``.
* :func:`llama_hf_vocab` is ``TextModel._set_vocab_llama_hf`` (gguf-py ``LlamaHfVocab``) for a
  checkpoint with only ``tokenizer.json`` (a byte-fallback BPE as transformers' ``LlamaTokenizer``
  saves it). One deliberate difference: ``LlamaHfVocab.get_token_score`` returns the placeholder
  ``-1000.0`` for every token ("Placeholder for actual logic"), and llama.cpp's SentencePiece
  tokenizer (``llm_tokenizer_spm_session``) merges the adjacent pair whose result has the highest
  score, so with equal scores it merges left to right and tokenizes unlike the checkpoint. The
  scores written here rank every NORMAL token by the first BPE merge that produces it
  (``-rank``), which makes llama.cpp's score order the checkpoint's merge order.

GGUF -> HF (:func:`spm_tokenizer_json`) follows transformers' GGUF loader
(``integrations/gguf/gguf_tokenizer_mapping.py``: ``sentencepiece_tokenizer`` /
``phi3_tokenizer`` and ``tokenization_utils_base.generate_merges``): a byte-fallback BPE whose
merges are rebuilt from the scores; the space prefix is a ``Prepend("▁")`` normalizer (as in
``phi3_tokenizer`` and the Llama 2 ``tokenizer.json``) rather than ``Metaspace``, because llama.cpp
(``llama_vocab::impl::tokenize``, ``LLAMA_VOCAB_TYPE_SPM``) prepends a space to every text
fragment that starts the input or follows a special token, even one that already starts with a
space, and ``Metaspace`` does not.
"""

from __future__ import annotations

import json
import logging
import math
import re
import tempfile
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from quantport.errors import ConfigError, FormatError

__all__ = [
    "is_spm_tokenizer_json",
    "llama_hf_vocab",
    "merges_from_scores",
    "read_sentencepiece",
    "rstrip_tokens",
    "sentencepiece_vocab",
    "spm_tokenizer_json",
]

log = logging.getLogger(__name__)

# gguf-py constants.py TokenType == conversion/base.py SentencePieceTokenTypes
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
_TYPES = (NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE)

_SPACE = "\u2581"
_BYTE_RE = re.compile(r"<0x[0-9A-Fa-f]{2}>")


def read_sentencepiece(data: bytes, where: str = "tokenizer.model") -> list[tuple[str, float, int]]:
    """The pieces of a serialized SentencePiece model as ``(text, score, gguf token type)``.

    Read through ``SentencePieceProcessor`` and typed as ``_create_vocab_sentencepiece`` types them
    (``IsUnknown`` -> UNKNOWN, ``IsControl`` -> CONTROL, ``IsUnused`` -> UNUSED, ``IsByte`` -> BYTE,
    anything else, user-defined pieces included, NORMAL).

    Raises:
        FormatError: the bytes are not a SentencePiece model.
        ConfigError: the ``sentencepiece`` package is missing.
    """
    try:
        from sentencepiece import SentencePieceProcessor
    except ImportError:
        raise ConfigError(
            f"{where}: reading a SentencePiece model needs the sentencepiece package; "
            "pip install sentencepiece==0.2.3"
        ) from None
    sp = SentencePieceProcessor()
    try:
        # the C++ parser raises RuntimeError on bytes that are not a ModelProto, or a ModelProto
        # with an invalid trainer/normalizer spec
        sp.LoadFromSerializedProto(bytes(data))
    except Exception as exc:
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise FormatError(
            f"{where}: not a valid SentencePiece model ({first}); replace it with the "
            "checkpoint's original tokenizer.model"
        ) from None
    pieces = []
    for i in range(sp.vocab_size()):
        if sp.IsUnknown(i):
            t = UNKNOWN
        elif sp.IsControl(i):
            t = CONTROL
        elif sp.IsUnused(i):
            t = UNUSED
        elif sp.IsByte(i):
            t = BYTE
        else:
            t = NORMAL
        pieces.append((sp.IdToPiece(i), float(sp.GetScore(i)), t))
    return pieces


def _looks_special(text: str) -> bool:
    # TextModel.does_token_look_special (conversion/base.py)
    return (
        text in ("<pad>", "<mask>", "<2mass>", "[@BOS@]")
        or (text.startswith("<|") and text.endswith("|>"))
        or (text.startswith("<｜") and text.endswith("｜>"))
        or (text.startswith("<unused") and text.endswith(">"))
    )


def _token_id(v: Any, where: str, what: str) -> int:
    try:
        i = int(v)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: {what} has token id {v!r}; it must be an integer, fix the "
                          "file") from None
    if i < 0:
        raise ConfigError(f"{where}: {what} has token id {i}; it must be >= 0, fix the file")
    return i


def sentencepiece_vocab(
    model: bytes,
    vocab_size: int | None = None,
    *,
    added_tokens: Mapping[str, Any] | None = None,
    tokenizer_config: Mapping[str, Any] | None = None,
    tokenizer_json: Mapping[str, Any] | None = None,
    flavor: Literal["llama", "phi3"] = "llama",
    where: str = "tokenizer.model",
) -> tuple[list[str], list[float], list[int]]:
    """Tokens, scores and token types of a ``tokenizer.model``, as llama.cpp's converter writes them.

    Args:
        model: the serialized SentencePiece model (``tokenizer.model``).
        vocab_size: ``config.json``'s ``vocab_size`` (default: the model's piece count).
        added_tokens: ``added_tokens.json`` (token text -> id), if the checkpoint has one.
        tokenizer_config: ``tokenizer_config.json``, for its ``added_tokens_decoder``.
        tokenizer_json: ``tokenizer.json``, whose ``added_tokens`` only the ``phi3`` flavor reads.
        flavor: ``"llama"`` (``_create_vocab_sentencepiece``, used by Llama, Mistral, Gemma and
            Qwen2 with a SentencePiece model) or ``"phi3"`` (``Phi3MiniModel.set_vocab``: no
            "looks special" rule, no space rewrite, and ``tokenizer.json``'s added tokens too).
        where: file name for messages.

    Raises:
        FormatError: ``tokenizer.model`` is not a SentencePiece model.
        ConfigError: an added token with an id that is not a non-negative integer.
    """
    pieces = read_sentencepiece(model, where)
    n = int(vocab_size) if vocab_size is not None else len(pieces)
    tokens = [f"[PAD{i}]" for i in range(n)]
    scores = [-10000.0] * n
    types = [UNUSED] * n
    for i, (text, score, t) in enumerate(pieces):
        if i >= n:
            log.warning("%s: tokens from id %d ignored: vocab_size is %d", where, i, n)
            break
        tokens[i], scores[i], types[i] = text, score, t

    for text, tid in (added_tokens or {}).items():
        i = _token_id(tid, "added_tokens.json", repr(text))
        if i >= n:
            log.warning("added_tokens.json: token %d ignored: vocab_size is %d", i, n)
            continue
        tokens[i], scores[i], types[i] = text, -1000.0, USER_DEFINED

    decoder = (tokenizer_config or {}).get("added_tokens_decoder") or {}
    entries: list[tuple[str, Mapping[str, Any]]] = [
        (f"tokenizer_config.json added_tokens_decoder[{k!r}]", dict(v, id=k))
        for k, v in decoder.items() if isinstance(v, Mapping)
    ]
    if flavor == "phi3":
        entries += [(f"tokenizer.json added_tokens[{j}]", a)
                    for j, a in enumerate((tokenizer_json or {}).get("added_tokens") or [])
                    if isinstance(a, Mapping)]
    for what, data in entries:
        i = _token_id(data.get("id"), what.split()[0], what.split(maxsplit=1)[1])
        content = data.get("content")
        if not isinstance(content, str):
            raise ConfigError(f"{what}: 'content' must be the token text, got {content!r:.60}; "
                              "fix the file")
        if i >= n:
            log.warning("%s: token %d ignored: vocab_size is %d", what, i, n)
            continue
        if types[i] != UNUSED and tokens[i] != content:
            log.warning("replacing token %d: %r -> %r", i, tokens[i], content)
        if flavor == "phi3":
            types[i] = CONTROL if data.get("special") else USER_DEFINED
        elif data.get("special") or _looks_special(content):
            types[i] = CONTROL
        else:
            content = content.replace(_SPACE, " ")  # "pre-normalize user-defined spaces"
            types[i] = USER_DEFINED
        tokens[i], scores[i] = content, -1000.0
    return tokens, scores, types


def is_spm_tokenizer_json(tj: Mapping[str, Any]) -> bool:
    """Whether ``LlamaHfVocab`` takes this ``tokenizer.json``: a BPE with ``byte_fallback`` and a
    ``Sequence`` decoder (the shape of a SentencePiece BPE saved by transformers)."""
    model = tj.get("model") if isinstance(tj, Mapping) else None
    decoder = tj.get("decoder") if isinstance(tj, Mapping) else None
    if not isinstance(model, Mapping):
        return False
    if model.get("type") == "BPE" and model.get("ignore_merges", False) and not model.get(
        "byte_fallback", True
    ):
        return False  # "Llama 3 must be converted with BpeVocab"
    return (
        model.get("type") == "BPE"
        and bool(model.get("byte_fallback", False))
        and isinstance(decoder, Mapping)
        and decoder.get("type") == "Sequence"
    )


def _merge_pair(m: Any) -> tuple[str, str] | None:
    if isinstance(m, str):
        a, sep, b = m.partition(" ")
        return (a, b) if sep else None
    if isinstance(m, list | tuple) and len(m) == 2 and all(isinstance(x, str) for x in m):
        return m[0], m[1]
    return None


def llama_hf_vocab(
    files: Mapping[str, str], model_dir: Path | None = None
) -> tuple[list[str], list[float], list[int]]:
    """Tokens, scores and token types of a SentencePiece-style ``tokenizer.json`` (no
    ``tokenizer.model``): gguf-py's ``LlamaHfVocab.all_tokens()`` (base tokens in id order, then
    the added tokens past the base vocabulary; ``<0xXX>`` BYTE, special ids CONTROL, added
    non-special tokens USER_DEFINED), with merge-rank scores for NORMAL tokens (see the module
    docstring for why they are not llama.cpp's placeholder ``-1000.0``).

    Args:
        files: file name -> text (``tokenizer.json`` required).
        model_dir: the checkpoint directory holding these files, if any.

    Raises:
        ConfigError: ``tokenizer.json`` is not a byte-fallback BPE, or transformers cannot load it.
    """
    from gguf import LlamaHfVocab

    tj = json.loads(files["tokenizer.json"])
    if not is_spm_tokenizer_json(tj):
        raise ConfigError("tokenizer.json: not a SentencePiece-style BPE (needs model type BPE "
                          "with byte_fallback and a Sequence decoder)")
    try:
        if model_dir is not None and (model_dir / "tokenizer.json").is_file():
            vocab = LlamaHfVocab(model_dir)
            items = list(vocab.all_tokens())
        else:
            with tempfile.TemporaryDirectory(prefix="quantport-spm-") as tmp:
                for name, text in files.items():
                    (Path(tmp) / name).write_text(text, encoding="utf-8")
                vocab = LlamaHfVocab(Path(tmp))
                items = list(vocab.all_tokens())
    except (OSError, ValueError, KeyError, AssertionError) as exc:
        raise ConfigError(f"tokenizer.json: transformers cannot load it as llama.cpp's "
                          f"LlamaHfVocab does ({str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__}); "
                          "fix or regenerate the tokenizer files") from None
    tokens = [t.decode("utf-8") for t, _, _ in items]
    scores = [float(s) for _, s, _ in items]
    types = [int(ty) for _, _, ty in items]
    first_rank: dict[str, int] = {}
    for rank, m in enumerate(tj["model"].get("merges") or []):
        pair = _merge_pair(m)
        if pair is not None:
            first_rank.setdefault(pair[0] + pair[1], rank)
    for i, (t, ty) in enumerate(zip(tokens, types, strict=True)):
        if ty == NORMAL and t in first_rank:
            scores[i] = -float(first_rank[t])
    return tokens, scores, types


def merges_from_scores(
    tokens: Sequence[str], scores: Sequence[float], types: Sequence[int]
) -> list[tuple[str, str]]:
    """BPE merges that rank pairs as llama.cpp's SentencePiece tokenizer does: a port of
    transformers' ``generate_merges(vocab, vocab_scores)`` (``tokenization_utils_base.py``) over
    the NORMAL tokens (the only ones ``llm_tokenizer_spm_session`` should build from text; added
    tokens are matched before it). Merges producing a higher-scored token come first; ties keep
    transformers' order (longer left piece, then longer right piece, then token id order)."""
    vocab: dict[str, int] = {}
    for i, (t, ty) in enumerate(zip(tokens, types, strict=True)):
        if ty == NORMAL:
            vocab[t] = i  # transformers' {token: index} dict: the last duplicate wins
    score_of = {t: float(scores[i]) for t, i in vocab.items()}
    merges: list[tuple[str, str, float]] = []
    for merge, piece_score in score_of.items():
        local = [
            (merge[:k], merge[k:], piece_score)
            for k in range(1, len(merge))
            if merge[:k] in vocab and merge[k:] in vocab
        ]
        local.sort(key=lambda x: (vocab[x[0]], vocab[x[1]]))
        merges.extend(local)
    merges.sort(key=lambda v: (v[2], len(v[0]), len(v[1])), reverse=True)
    return [(a, b) for a, b, _ in merges]


def rstrip_tokens(model_name: str | None, tokens: Sequence[str], types: Sequence[int]) -> set[str]:
    """Tokens llama.cpp gives ``LLAMA_TOKEN_ATTR_RSTRIP`` (``llama_vocab::impl::load``, "set
    attributes by model/tokenizer/architecture name"): when ``general.name`` contains ``phi-3``
    or ``phi3``, every special token (CONTROL, USER_DEFINED, UNKNOWN) and ``</s>``, except
    ``<unk>``, ``<s>`` and ``<|endoftext|>``."""
    name = (model_name or "").lower()
    if "phi-3" not in name and "phi3" not in name:
        return set()
    out = {t for t, ty in zip(tokens, types, strict=True) if ty in (CONTROL, USER_DEFINED, UNKNOWN)}
    out.add("</s>")
    return out - {"<unk>", "<s>", "<|endoftext|>"}


def spm_tokenizer_json(
    tokens: Sequence[str],
    scores: Sequence[float],
    types: Sequence[int],
    *,
    add_space_prefix: bool = True,
    bos: tuple[int, str] | None = None,
    eos: tuple[int, str] | None = None,
    unk: str | None = None,
    rstrip: Collection[str] = (),
    where: str = "GGUF metadata",
) -> dict[str, Any]:
    """An HF ``tokenizer.json`` (as a dict) that tokenizes like llama.cpp's SentencePiece
    tokenizer on this vocabulary.

    Args:
        tokens, scores, types: ``tokenizer.ggml.tokens`` / ``scores`` / ``token_type``.
        add_space_prefix: ``tokenizer.ggml.add_space_prefix`` (llama.cpp's default for SPM: true).
        bos, eos: ``(id, text)`` of the tokens the post-processor adds (``add_bos_token`` /
            ``add_eos_token``), or ``None``.
        unk: the unknown token's text, if any.
        rstrip: added tokens that swallow the whitespace after them (llama.cpp's
            ``LLAMA_TOKEN_ATTR_RSTRIP``, see :func:`rstrip_tokens`).
        where: the file, for messages.

    Raises:
        FormatError: scores that are not finite numbers, token types outside gguf's
            ``TokenType``, or a token listed twice.
    """
    n = len(tokens)
    if len(scores) != n or len(types) != n:
        raise FormatError(f"{where}: tokenizer.ggml.scores / token_type have {len(scores)} / "
                          f"{len(types)} entries for {n} tokens; the GGUF vocabulary is corrupt, "
                          "regenerate the file")
    for i, (s, ty) in enumerate(zip(scores, types, strict=True)):
        if ty not in _TYPES:
            raise FormatError(f"{where}: tokenizer.ggml.token_type[{i}] is {ty!r}, not a gguf "
                              "TokenType (1-6); the GGUF vocabulary is corrupt, regenerate the file")
        if not math.isfinite(s):
            raise FormatError(f"{where}: tokenizer.ggml.scores[{i}] is {s!r}, not a finite "
                              "number; the GGUF vocabulary is corrupt, regenerate the file")
    # llama_vocab::impl::load asserts id_to_token.size() == token_to_id.size(): llama.cpp
    # aborts on a token listed twice
    seen: dict[str, int] = {}
    for i, t in enumerate(tokens):
        if t in seen:
            raise FormatError(f"{where}: token {t!r:.40} is listed twice (ids {seen[t]} and {i}); "
                              "llama.cpp refuses such a vocabulary too, regenerate the file")
        seen[t] = i
    bad = next((i for i in range(n) if types[i] == BYTE and not _BYTE_RE.fullmatch(tokens[i])),
               None)
    if bad is not None:
        raise FormatError(f"{where}: BYTE token {bad} is {tokens[bad]!r:.40}, not <0xXX>; the GGUF "
                          "vocabulary is corrupt, regenerate the file")
    # the BPE vocabulary holds every id (tokenizers needs id -> token for decoding); tokens that
    # are not NORMAL cannot be reached by merges, which are built from NORMAL tokens only
    vocab = seen
    # llama.cpp matches every CONTROL, USER_DEFINED and UNKNOWN token in text before the
    # SentencePiece tokenizer runs (llama-vocab.cpp cache_special_tokens, tokenizer_st_partition)
    added = [
        {"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": t in rstrip,
         "normalized": False, "special": ty != USER_DEFINED}
        for i, (t, ty) in enumerate(zip(tokens, types, strict=True))
        if ty in (CONTROL, USER_DEFINED, UNKNOWN)
    ]
    if add_space_prefix:
        normalizer: dict[str, Any] = {"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": _SPACE},
            {"type": "Replace", "pattern": {"String": " "}, "content": _SPACE}]}
    else:
        normalizer = {"type": "Replace", "pattern": {"String": " "}, "content": _SPACE}
    decoders: list[dict[str, Any]] = [
        {"type": "Replace", "pattern": {"String": _SPACE}, "content": " "},
        {"type": "ByteFallback"},
        {"type": "Fuse"},
    ]
    if add_space_prefix:
        decoders.append({"type": "Strip", "content": " ", "start": 1, "stop": 0})
    # LlamaTokenizerFast.update_post_processor: "bos $A eos" and "bos $A eos bos $B:1 eos:1"
    special_tokens: dict[str, Any] = {}
    for tid_text in (bos, eos):
        if tid_text is not None:
            special_tokens[tid_text[1]] = {"id": tid_text[1], "ids": [tid_text[0]],
                                           "tokens": [tid_text[1]]}

    def seq(name: str, type_id: int) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        if bos is not None:
            out.append({"SpecialToken": {"id": bos[1], "type_id": type_id}})
        out.append({"Sequence": {"id": name, "type_id": type_id}})
        if eos is not None:
            out.append({"SpecialToken": {"id": eos[1], "type_id": type_id}})
        return out

    single, pair = seq("A", 0), seq("A", 0) + seq("B", 1)
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": normalizer,
        "pre_tokenizer": None,
        "post_processor": {"type": "TemplateProcessing", "single": single, "pair": pair,
                           "special_tokens": special_tokens},
        "decoder": {"type": "Sequence", "decoders": decoders},
        "model": {"type": "BPE", "dropout": None, "unk_token": unk,
                  "continuing_subword_prefix": None, "end_of_word_suffix": None,
                  "fuse_unk": True, "byte_fallback": True, "ignore_merges": False,
                  "vocab": vocab,
                  "merges": [list(m) for m in merges_from_scores(tokens, scores, types)]},
    }
