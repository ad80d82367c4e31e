"""Hugging Face checkpoint directories (single or sharded safetensors, or pickle), read tensor by
tensor."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from quantport.errors import ConfigError, FormatError, QuantportError
from quantport.formats.safetensors import SafetensorsFile
from quantport.formats.safetensors_shards import INDEX, weight_map
from quantport.architectures import detect_architecture
from quantport.architectures.config import check_config
from quantport.readers.source import TOKENIZER_FILES

__all__ = ["HFCheckpoint", "read_json"]


def read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path.parent}: no {what} found; is this a Hugging Face checkpoint?") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: invalid JSON ({exc}); fix or regenerate the file") from exc
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, not a {what} file") from None
    return _json_object(text, path)


def _json_object(text: str, path: Path) -> dict[str, Any]:
    """``text`` (the contents of ``path``) parsed as a JSON object, or one line saying why not."""
    try:
        data = json.loads(text)
    except ValueError as exc:  # JSONDecodeError, or a 5000-digit number
        raise ConfigError(f"{path}: invalid JSON ({exc}); fix or regenerate the file") from exc
    except RecursionError:
        raise ConfigError(f"{path}: invalid JSON (nested too deeply); fix or regenerate the "
                          "file") from None
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
        cfg_path = self.path / "config.json"
        self.config = read_json(cfg_path, "config.json")
        self.architecture = detect_architecture(self.config, str(cfg_path))
        check_config(self.config, str(cfg_path))
        self.tokenizer_files = {}
        for n in TOKENIZER_FILES:
            if (self.path / n).is_file():
                try:
                    text = (self.path / n).read_text(encoding="utf-8")
                except UnicodeDecodeError:
                    raise FormatError(f"{self.path / n}: not UTF-8 text; fix or regenerate "
                                      "the file") from None
                if n.endswith(".json"):
                    # copied into every artifact: a garbage file would be copied through
                    # silently, and the artifact's runtime would refuse its tokenizer
                    _json_object(text, self.path / n)
                self.tokenizer_files[n] = text
        self._where: dict[str, Any] = {}
        self._pickle: dict[str, Any] | None = None
        index = self.path / INDEX
        single = self.path / "model.safetensors"
        if index.is_file():
            files: dict[str, SafetensorsFile] = {}
            for name, shard in weight_map(index, read_json(index, INDEX)).items():
                shard_path = self.path / shard
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
        self._check_tensors(cfg_path)

    def _check_tensors(self, cfg_path: Path) -> None:
        """Refuse weights that contradict the config (a shape, a missing per-layer tensor)
        here, naming the tensor and the key to fix, rather than a reshape error deep in a
        conversion or a model llama.cpp's loader refuses."""
        arch = self.architecture
        gguf_of = {}
        for name in self.names():
            canon = arch.normalize(name) if arch.normalize is not None else name
            g = None if canon is None else arch.gguf_name(canon)
            if g is None:
                continue
            gguf_of[g] = name
            why = arch.shape_error(g, self.shape(name), self.config)
            if why is not None:
                raise ConfigError(f"{cfg_path}: tensor {name!r} {why}")
        n_layer = self.config.get("num_hidden_layers")
        # a quantized checkpoint (compressed-tensors, GPTQ) names its weights weight_packed,
        # qweight...: only float checkpoints are checked for completeness
        quantized = self.config.get("quantization_config") is not None
        if arch.required and not quantized:
            # transformers fills an absent size from its config class's defaults (hidden_size
            # 4096 for Llama), which then contradict the weights when the artifact loads;
            # llama.cpp's converter needs them too
            absent = [k for k in ("hidden_size", "num_hidden_layers", "vocab_size")
                      if self.config.get(k) is None]
            if absent:
                raise ConfigError(
                    f"{cfg_path}: {', '.join(absent)} {'is' if len(absent) == 1 else 'are'} "
                    f"missing or null; {arch.name} checkpoints record them (set them from the "
                    "weights' shapes)")
            if self.config.get("tie_word_embeddings") is False and "output.weight" not in gguf_of:
                raise ConfigError(
                    f"{cfg_path}: tie_word_embeddings is false but the checkpoint has no "
                    "lm_head.weight; add the LM head, or set tie_word_embeddings true if it "
                    "shares the token embeddings")
            # n_layer: present (above) and a positive int (check_config)
            missing = arch.missing_error(list(gguf_of), n_layer)
            if missing is not None:
                hf = arch.hf_name(missing, "model.layers.{}.") or missing
                raise ConfigError(
                    f"{cfg_path}: tensor {hf!r} is missing, but {arch.name} with "
                    f"num_hidden_layers {n_layer} needs it in every layer; the checkpoint is "
                    "incomplete or its config names the wrong architecture")

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

    def get(self, name: str, rows: tuple[int, int] | None = None) -> np.ndarray:
        """Read one tensor, or its rows ``rows[0]:rows[1]`` (floats widened to float32)."""
        if self._pickle is not None:
            t = self._pickle[name]
            if rows is not None:
                t = t[rows[0]:rows[1]]
            return t.float().numpy() if t.is_floating_point() else t.numpy()
        return self._where[name].get(name, rows)

    def stored(self, name: str) -> tuple[np.ndarray, str] | None:
        """One tensor as stored (a read-only view, BF16 as uint16) and its safetensors dtype
        (``"BF16"``...), or None for a pickle checkpoint."""
        if self._pickle is not None:
            return None
        f = self._where[name]
        return f.raw(name), f.tensors[name].dtype

    def release(self) -> None:
        """Drop the file pages read so far from this process's memory (between tensors)."""
        for f in {id(f): f for f in self._where.values()}.values():
            f.release()

    def verify(self) -> None:
        """Nothing is postponed: a checkpoint is checked when it is opened."""

    def describe(self) -> dict[str, Any]:
        """Provenance: the directory and its format."""
        return {"source": str(self.path), "source_format": "hf-checkpoint"}


