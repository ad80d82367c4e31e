"""A GGUF file presented as a Hugging Face checkpoint: names, config, tokenizer, tensors."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from quantport.errors import FormatError, QuantportError
from quantport.formats.gguf_file import map_gguf, read_tensor, scan_gguf
from quantport.ir import QuantizedTensor, dequantize
from quantport.readers.arch import ARCHITECTURES, llama_unpermute
from quantport.readers.tokenizer import hf_tokenizer_from_gguf

__all__ = ["GGUFSource"]


class GGUFSource:
    """A GGUF file presented as a Hugging Face checkpoint (names, config, tokenizer).

    Tensors are dequantized one at a time (every type ``gguf.quants`` can dequantize); llama's
    Q/K row permutation is undone so that the weights are in Hugging Face layout.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        # one validating pass reads everything (gguf.GGUFReader re-parses 98k vocabulary
        # strings in ~3 s); tensors are then memory-mapped one at a time by read_tensor()
        scan = scan_gguf(self.path, keep_arrays=True)
        self._scan = scan
        self._mapped: np.ndarray | None = None
        self._infos = {t.name: t for t in scan.tensors}
        self.metadata = scan.metadata
        self.gguf_types = {t.name: t.type_name for t in scan.tensors}
        arch_name = self.metadata.get("general.architecture")
        if arch_name != "llama":
            raise QuantportError(
                f"{self.path}: GGUF architecture {arch_name!r} cannot be imported; "
                "supported: llama"
            )
        self.architecture = ARCHITECTURES[arch_name]
        m = self.metadata

        def key(k: str, default: Any = None) -> Any:
            v = m.get(f"llama.{k}", default)
            if v is None:
                raise FormatError(f"{self.path}: missing metadata key llama.{k}")
            return v

        self.n_head = int(key("attention.head_count"))
        self.n_head_kv = int(key("attention.head_count_kv", self.n_head))
        names = [t.name for t in scan.tensors]
        tokens = m.get("tokenizer.ggml.tokens") or []
        hidden = int(key("embedding_length"))
        self.config = {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "hidden_size": hidden,
            "intermediate_size": int(key("feed_forward_length")),
            "num_hidden_layers": int(key("block_count")),
            "num_attention_heads": self.n_head,
            "num_key_value_heads": self.n_head_kv,
            "head_dim": int(m.get("llama.rope.dimension_count", hidden // self.n_head)),
            "max_position_embeddings": int(key("context_length")),
            "rms_norm_eps": float(key("attention.layer_norm_rms_epsilon")),
            "rope_theta": float(m.get("llama.rope.freq_base", 10000.0)),
            "vocab_size": int(m.get("llama.vocab_size", len(tokens))),
            "hidden_act": "silu",
            "attention_bias": "blk.0.attn_q.bias" in names,
            "mlp_bias": False,
            "tie_word_embeddings": "output.weight" not in names,
            "bos_token_id": m.get("tokenizer.ggml.bos_token_id"),
            "eos_token_id": m.get("tokenizer.ggml.eos_token_id"),
            "pad_token_id": m.get("tokenizer.ggml.padding_token_id"),
            "torch_dtype": "float32",
        }
        self._tokenizer_files: dict[str, str] | None = None
        self._gguf_of: dict[str, str] = {}
        for n in names:
            hf = self.architecture.hf_name(n, "model.layers.{}.")
            if hf is None:
                raise FormatError(f"{self.path}: tensor {n!r} has no Hugging Face counterpart")
            self._gguf_of[hf] = n
        self._shapes = {hf: t.shape for hf, t in zip(self._gguf_of, scan.tensors, strict=True)}

    @property
    def tokenizer_files(self) -> dict[str, str]:
        """``tokenizer.json`` / ``tokenizer_config.json`` rebuilt from the GGUF vocabulary
        (built on first use: GGUF -> GGUF conversion copies the vocabulary verbatim instead)."""
        if self._tokenizer_files is None:
            self._tokenizer_files = hf_tokenizer_from_gguf(self.metadata)
        return self._tokenizer_files

    def gguf_tokenizer_kv(self) -> list[tuple[str, Any, int, int | None]]:
        """The file's ``tokenizer.*`` metadata as ``(key, value, type, array_type)``, to copy
        into a re-quantized GGUF unchanged (as llama-quantize copies every KV)."""
        return [(k, v, *self._scan.types[k]) for k, v in self.metadata.items()
                if k.startswith("tokenizer.")]

    def names(self) -> list[str]:
        """HF tensor names in file order."""
        return list(self._gguf_of)

    def shape(self, name: str) -> tuple[int, ...]:
        """Shape in HF layout (numpy order)."""
        return self._shapes[name]

    def get(self, name: str) -> np.ndarray:
        """Dequantize one tensor to float32 in HF layout.

        Types quantport implements are read into IR records and dequantized by the shared
        :func:`quantport.ir.dequantize`; other types go through ``gguf.quants``.
        """
        gname = self._gguf_of[name]
        if self._mapped is None:
            self._mapped = map_gguf(self.path)
        t = read_tensor(self.path, self._infos[gname], self._mapped)
        w = dequantize(t) if isinstance(t, QuantizedTensor) else t
        if gname.endswith("attn_q.weight"):
            w = llama_unpermute(w, self.n_head, self.n_head)
        elif gname.endswith("attn_k.weight"):
            w = llama_unpermute(w, self.n_head, self.n_head_kv)
        return w

    def describe(self) -> dict[str, Any]:
        """Provenance: the file, its name and its per-tensor types."""
        types: dict[str, int] = {}
        for t in self.gguf_types.values():
            types[t] = types.get(t, 0) + 1
        return {
            "source": str(self.path),
            "source_format": "gguf",
            "source_name": self.metadata.get("general.name"),
            "source_tensor_types": types,
        }


