"""A GGUF file presented as a Hugging Face checkpoint: names, config, tokenizer, tensors."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from quantport.architectures import apply_edit, for_gguf
from quantport.architectures.config import check_config, optional_str
from quantport.errors import ConfigError, FormatError, UnsupportedArchitectureError
from quantport.formats._io import ReadMap
from quantport.formats.gguf_file import GGUFTensorInfo, decode_deferred, read_tensor, scan_gguf
from quantport.ir import QuantizedTensor, dequantize
from quantport.readers.tokenizer import check_gguf_vocab, hf_tokenizer_from_gguf

__all__ = ["GGUFSource"]

class GGUFSource:
    """A GGUF file presented as a Hugging Face checkpoint (names, config, tokenizer).

    The config comes from the architecture module that imports ``general.architecture``
    (:func:`quantport.architectures.for_gguf`). Tensors are dequantized one at a time (every
    type ``gguf.quants`` can dequantize) and the architecture's layout edits are undone (llama's
    Q/K row permutation), so that the weights are in Hugging Face layout.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        where = str(self.path)
        # one validating pass reads the header (gguf.GGUFReader re-parses 98k vocabulary
        # strings in ~3 s); tensors are then memory-mapped one at a time by read_tensor().
        # The vocabulary's string arrays are bounds-checked but decoded and checked only when
        # first needed (metadata, tokenizer_files) or by verify(): a GGUF -> GGUF conversion
        # copies their bytes and verifies them while its workers quantize (~0.1 s for
        # SmolLM2's 98k strings, off the path before the workers start)
        scan = scan_gguf(self.path, keep_arrays=True, defer_strings="tokenizer.")
        self._scan = scan
        self._map = ReadMap(self.path)
        self._infos = {t.name: t for t in scan.tensors}
        self._meta = m = scan.metadata  # all but the deferred string arrays
        self._metadata: dict[str, Any] | None = None  # all of it, once verified
        self.gguf_types = {t.name: t.type_name for t in scan.tensors}
        self.architecture = arch = for_gguf(m.get("general.architecture"), where)
        assert arch.from_gguf is not None, "for_gguf returns importable architectures"
        optional_str(m, "general.name", where)
        # the vocabulary's other values now (its string arrays are verify()'s)
        check_gguf_vocab(m, where)
        tokens = scan.deferred.get("tokenizer.ggml.tokens") or m.get("tokenizer.ggml.tokens") or []
        imported = arch.from_gguf(m, where)
        self._keys = imported.keys
        names = [t.name for t in scan.tensors]
        embd = self._infos.get("token_embd.weight")
        self.config = cfg = imported.config
        if cfg.get("vocab_size") is None:
            cfg["vocab_size"] = len(tokens) or (
                embd.shape[0] if embd is not None and embd.shape[0] > 0 else None)
        self.n_head, self.n_head_kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
        cfg.setdefault("attention_bias", "blk.0.attn_q.bias" in names)
        cfg.update({
            "tie_word_embeddings": "output.weight" not in names,
            # llama.cpp ignores special token ids outside the vocabulary ("bad special token")
            "bos_token_id": self._token_id("tokenizer.ggml.bos_token_id", len(tokens)),
            "eos_token_id": self._token_id("tokenizer.ggml.eos_token_id", len(tokens)),
            "pad_token_id": self._token_id("tokenizer.ggml.padding_token_id", len(tokens)),
            "torch_dtype": "float32",
        })
        check_config(cfg, where, self._keys)
        self._tokenizer_files: dict[str, str] | None = None
        self._gguf_of: dict[str, str] = {}
        for t in scan.tensors:
            n = t.name
            if n in ("rope_freqs.weight", "rope_factors_long.weight",
                     "rope_factors_short.weight"):
                # generated from the config's RoPE scaling parameters (llama3, LongRoPE);
                # quantport does not rebuild those parameters from the factors
                raise UnsupportedArchitectureError(
                    f"{where}: tensor {n!r} (RoPE scaling factors) cannot be imported: "
                    "quantport does not rebuild the config's RoPE parameters from it; convert "
                    "from the Hugging Face checkpoint instead")
            hf = arch.hf_name(n, "model.layers.{}.")
            if hf is None or hf in self._gguf_of:
                raise FormatError(f"{where}: tensor {n!r} has no Hugging Face counterpart")
            self._check_shape(t)
            self._gguf_of[hf] = n
        missing = arch.missing_error(names, cfg["num_hidden_layers"])
        if missing is not None:
            raise FormatError(f"{where}: tensor {missing!r} is missing; llama.cpp's "
                              f"{arch.gguf_arch} loader needs it in every layer")
        self._shapes = {hf: t.shape for hf, t in zip(self._gguf_of, scan.tensors, strict=True)}

    def _token_id(self, key: str, n_tokens: int) -> int | None:
        i = self._meta.get(key)  # type checked by check_gguf_vocab
        return i if i is not None and (n_tokens == 0 or i < n_tokens) else None

    @property
    def metadata(self) -> dict[str, Any]:
        """Every metadata value, the vocabulary decoded and checked (:meth:`verify`)."""
        if self._metadata is None:
            m = decode_deferred(self._scan, self._map.whole())
            check_gguf_vocab(m, str(self.path))
            self._metadata = m
        return self._metadata

    def verify(self) -> None:
        """Decode and check the vocabulary (the one check postponed from opening): the
        pipeline calls it before it commits an artifact that copies the vocabulary.

        Raises:
            FormatError: a string that is not UTF-8, values of the wrong type, arrays of
                different lengths, merges that are not pairs of tokens.
        """
        self.metadata  # noqa: B018 - decoding and checking is the point

    def _check_shape(self, t: GGUFTensorInfo) -> None:
        """Refuse a tensor whose shape does not follow from the hyper-parameters, as
        llama.cpp's loader does ("tensor has wrong shape"), naming the metadata to fix."""
        why = self.architecture.shape_error(t.name, t.shape, self.config, self._keys)
        if why is not None:
            raise ConfigError(f"{self.path}: tensor {t.name!r} {why}")

    @property
    def tokenizer_files(self) -> dict[str, str]:
        """``tokenizer.json`` / ``tokenizer_config.json`` rebuilt from the GGUF vocabulary
        (built on first use: GGUF -> GGUF conversion copies the vocabulary verbatim instead)."""
        if self._tokenizer_files is None:
            self._tokenizer_files = hf_tokenizer_from_gguf(self.metadata, str(self.path))
        return self._tokenizer_files

    def gguf_tokenizer_kv(self) -> list[tuple[str, Any, int, int | None, bytes]]:
        """The file's ``tokenizer.*`` metadata as ``(key, value, type, array_type, encoded)``,
        to copy into a re-quantized GGUF unchanged (as llama-quantize copies every KV);
        ``encoded`` is the value's bytes in this file (after its type), written as they are.
        ``value`` is None for a string array not decoded yet: a copy needs its bytes only, and
        :meth:`verify` before the copy is committed."""
        whole = self._map.whole()
        scan = self._scan
        values = self._metadata if self._metadata is not None else self._meta
        return [(k, values.get(k), *t, whole[scan.spans[k][0]:scan.spans[k][1]].tobytes())
                for k, t in scan.types.items() if k.startswith("tokenizer.")]

    def names(self) -> list[str]:
        """HF tensor names in file order."""
        return list(self._gguf_of)

    def shape(self, name: str) -> tuple[int, ...]:
        """Shape in HF layout (numpy order)."""
        return self._shapes[name]

    def get(self, name: str, rows: tuple[int, int] | None = None) -> np.ndarray:
        """Dequantize one tensor (or its rows ``rows[0]:rows[1]``) to float32 in HF layout.

        Types quantport implements are read into IR records and dequantized by the shared
        :func:`quantport.ir.dequantize`; other types go through ``gguf.quants``. (Row ranges
        are cut from the whole tensor: GGUF sources are small, already quantized models.)
        """
        gname = self._gguf_of[name]
        info = self._infos[gname]
        self._map.touch(info.offset, info.offset + info.nbytes)
        t = read_tensor(self.path, info, self._map.whole())
        w = dequantize(t) if isinstance(t, QuantizedTensor) else t
        w = apply_edit(w, self.architecture.edit(name), self.n_head, self.n_head_kv, undo=True)
        return w if rows is None else w[rows[0]:rows[1]]

    def stored(self, name: str) -> None:
        """None: GGUF tensors are ggml blocks (and llama's q/k rows permuted), never a
        Hugging Face tensor as stored."""
        return None

    def release(self) -> None:
        """Drop the file pages read so far from this process's memory (between tensors)."""
        self._map.release()

    def describe(self) -> dict[str, Any]:
        """Provenance: the file, its name and its per-tensor types."""
        types: dict[str, int] = {}
        for t in self.gguf_types.values():
            types[t] = types.get(t, 0) + 1
        return {
            "source": str(self.path),
            "source_format": "gguf",
            "source_name": self._meta.get("general.name"),
            "source_tensor_types": types,
        }


