"""Mistral (``MistralForCausalLM``): written as GGUF ``llama``, exactly as llama.cpp's converter
registers it (``conversion/llama.py``: ``MistralForCausalLM`` is a ``LlamaModel``): Q/K
permuted, ``llama.vocab_size`` and ``llama.rope.dimension_count``; ``sliding_window`` is not
written (llama.cpp's llama graph attends to the whole context). Its tokenizer is SentencePiece
(``tokenizer.ggml.model = llama``). A ``llama`` GGUF imports as ``LlamaForCausalLM``.
"""

from __future__ import annotations

from dataclasses import replace

from quantport.architectures.llama import ARCH as LLAMA

__all__ = ["ARCH"]

ARCH = replace(
    LLAMA,
    name="mistral",
    hf_classes=("MistralForCausalLM",),
    model_types=("mistral",),
    gguf_arch="llama",
    tokenizer=("llama",),
    # GGUF llama -> HF: the llama module imports it (one GGUF architecture, one importer)
    from_gguf=None,
    import_class="LlamaForCausalLM",
)
