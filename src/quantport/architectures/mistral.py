"""Mistral (``MistralForCausalLM``): written as GGUF ``llama``, exactly as llama.cpp's converter
registers it (``conversion/llama.py``: ``MistralForCausalLM`` is a ``LlamaModel``): Q/K
permuted, ``llama.vocab_size`` and ``llama.rope.dimension_count``; ``sliding_window`` is not
written (llama.cpp's llama graph attends to the whole context). Its tokenizer is SentencePiece
(``tokenizer.ggml.model = llama``). A ``llama`` GGUF imports as ``LlamaForCausalLM``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from quantport.architectures.llama import ARCH as LLAMA
from quantport.architectures.llama import llama_hparams
from quantport.formats.gguf_writer import GGUFKV

__all__ = ["ARCH", "mistral_hparams"]

log = logging.getLogger(__name__)


def mistral_hparams(cfg: Mapping[str, Any], where: str) -> list[GGUFKV]:
    """``LlamaModel.set_gguf_parameters`` under GGUF ``llama``; a sliding window shorter than
    the context is not written (as the converter does) but said, since llama.cpp will then
    attend beyond it where transformers does not (Mistral 7B v0.1: 4096 of 32768)."""
    window, ctx = cfg.get("sliding_window"), cfg.get("max_position_embeddings")
    if isinstance(window, int) and isinstance(ctx, int) and window < ctx:
        log.warning("%s: sliding_window %d is not written to the GGUF (llama.cpp's llama graph "
                    "has none): beyond %d tokens llama.cpp attends to the whole context",
                    where, window, window)
    return llama_hparams(cfg, where)

ARCH = replace(
    LLAMA,
    name="mistral",
    hf_classes=("MistralForCausalLM",),
    model_types=("mistral",),
    gguf_arch="llama",
    tokenizer=("llama",),
    hparams=mistral_hparams,
    # GGUF llama -> HF: the llama module imports it (one GGUF architecture, one importer)
    from_gguf=None,
    import_class="LlamaForCausalLM",
)
