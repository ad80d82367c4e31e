"""The architectures quantport converts: one module per family, registered here under the
Hugging Face ``architectures`` names, as llama.cpp's converter registers its model classes
(``@ModelBase.register`` / ``conversion/__init__.py`` ``TEXT_MODEL_MAP``).

Adding an architecture is one module (an :class:`Architecture` named ``ARCH``: tensor names,
GGUF hyper-parameters, tensor edits, tokenizer, Linear weights, the GGUF -> HF config) and one
entry of :data:`MODULES`; the writers, readers and ``quantport list`` read everything from it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from quantport.architectures import bert, gemma3, llama, mistral, phi3, qwen2, qwen3
from quantport.architectures._base import (
    SMOOTH_SUFFIX,
    Architecture,
    GGUFImport,
    apply_edit,
    llama_permute,
    llama_unpermute,
    short,
)
from quantport.errors import ConfigError, UnsupportedArchitectureError

__all__ = [
    "ARCHITECTURES",
    "SMOOTH_SUFFIX",
    "BY_HF_CLASS",
    "Architecture",
    "GGUFImport",
    "apply_edit",
    "detect_architecture",
    "for_gguf",
    "llama_permute",
    "llama_unpermute",
    "lookup",
]

#: the architecture modules, in the order ``quantport list`` shows them
MODULES = (llama, mistral, qwen2, qwen3, phi3, gemma3, bert)

#: quantport name -> architecture
ARCHITECTURES: dict[str, Architecture] = {m.ARCH.name: m.ARCH for m in MODULES}

#: Hugging Face ``architectures`` name -> architecture (the registry)
BY_HF_CLASS: dict[str, Architecture] = {c: a for a in ARCHITECTURES.values()
                                        for c in a.hf_classes}

# GGUF general.architecture -> the architecture that imports it (Mistral's GGUF is llama's)
_GGUF_IMPORT: dict[str, Architecture] = {}
for _a in ARCHITECTURES.values():
    if _a.from_gguf is not None:
        _GGUF_IMPORT.setdefault(_a.gguf_arch, _a)


def _known() -> str:
    return "; ".join(f"{a.name} ({', '.join(a.hf_classes)})" for a in ARCHITECTURES.values())


def lookup(hf_class: str, where: str = "config.json") -> Architecture:
    """The architecture registered under a Hugging Face class name.

    Raises:
        UnsupportedArchitectureError: an unknown name, with the list of known ones.
    """
    arch = BY_HF_CLASS.get(hf_class)
    if arch is None:
        raise UnsupportedArchitectureError(
            f"{where}: architecture {short(hf_class)} is not supported; supported: {_known()}")
    return arch


def detect_architecture(config: Mapping[str, Any], where: str = "config.json") -> Architecture:
    """Pick the architecture of a ``config.json`` mapping: its first ``architectures`` entry
    that is registered, else the family of its ``model_type``.

    Raises:
        ConfigError: if the config names no architecture.
        UnsupportedArchitectureError: if it names one quantport does not support.
    """
    classes = config.get("architectures") or []
    model_type = config.get("model_type")
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        raise ConfigError(
            f"{where}: architectures must be a list of class names, got {short(classes)}; "
            "fix the value or regenerate the file"
        )
    if model_type is not None and not isinstance(model_type, str):
        raise ConfigError(
            f"{where}: model_type must be a string, got {short(model_type)}; "
            "fix the value or regenerate the file"
        )
    if not classes and not model_type:
        raise ConfigError(f"{where}: has neither 'architectures' nor 'model_type'")
    for c in classes:
        if c in BY_HF_CLASS:
            return BY_HF_CLASS[c]
    # a head class quantport does not name (LlamaForSequenceClassification...) of a known
    # model_type is tried as that family; its extra tensors are refused by name later
    for arch in ARCHITECTURES.values():
        if model_type in arch.model_types:
            return arch
    return lookup(classes[0] if classes else str(model_type), where)


def for_gguf(gguf_arch: Any, where: str) -> Architecture:
    """The architecture that imports a GGUF of ``general.architecture`` ``gguf_arch``.

    Raises:
        UnsupportedArchitectureError: one quantport cannot import, with those it can.
    """
    arch = _GGUF_IMPORT.get(gguf_arch) if isinstance(gguf_arch, str) else None
    if arch is None:
        raise UnsupportedArchitectureError(
            f"{where}: GGUF architecture {short(gguf_arch)} cannot be imported; supported: "
            f"{', '.join(_GGUF_IMPORT)}")
    return arch
