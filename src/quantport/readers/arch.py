"""Supported architectures: moved to :mod:`quantport.architectures` (one module per family);
re-exported here for existing imports."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from quantport.architectures import (
    ARCHITECTURES,
    Architecture,
    detect_architecture,
    llama_permute,
    llama_unpermute,
)
from quantport.architectures.llama import ARCH as _LLAMA

__all__ = [
    "ARCHITECTURES",
    "Architecture",
    "detect_architecture",
    "llama_permute",
    "llama_shape_error",
    "llama_unpermute",
]


def llama_shape_error(gguf_name: str, shape: tuple[int, ...], cfg: Mapping[str, Any],
                      keys: Mapping[str, str] | None = None) -> str | None:
    """Why a llama tensor's shape contradicts the hyper-parameters (see
    :meth:`quantport.architectures.Architecture.shape_error`)."""
    return _LLAMA.shape_error(gguf_name, shape, cfg, keys)
