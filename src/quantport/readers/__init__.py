"""Readers: Hugging Face checkpoint directories and GGUF files, as one :class:`ModelSource`
interface (HF tensor names, config, tokenizer files, one float32 tensor at a time).

Where things go: a new source format is one module here plus a branch in :func:`open_path`; a
new architecture is one module of :mod:`quantport.architectures`.
"""

from __future__ import annotations

import os
from pathlib import Path

from quantport.errors import FormatError
from quantport.readers.gguf import GGUFSource
from quantport.readers.hf import HFCheckpoint
from quantport.readers.source import ModelSource

__all__ = ["GGUFSource", "HFCheckpoint", "ModelSource", "open_path"]


def open_path(path: str | os.PathLike[str], *, allow_pickle: bool = False) -> ModelSource:
    """Open a checkpoint directory (or its ``config.json``) or a GGUF file.

    Raises:
        FormatError: neither a GGUF file nor a checkpoint directory.
        ConfigError, UnsupportedArchitectureError: see the readers.
    """
    p = Path(path)
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
    raise FormatError(f"{p}: no such file or directory")
