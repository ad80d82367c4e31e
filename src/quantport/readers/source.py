"""What every reader presents: Hugging Face tensor names, shapes, ``config.json``, tokenizer
files, and one float32 array at a time, so no stage ever holds the whole source model."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import numpy as np

from quantport.architectures import Architecture

__all__ = ["TOKENIZER_FILES", "ModelSource"]

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "generation_config.json",
)


class ModelSource(Protocol):
    """What the pipeline reads from: names, shapes, config, tokenizer and one tensor at a time."""

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

    def get(self, name: str, rows: tuple[int, int] | None = None) -> np.ndarray:
        """One tensor as float32 (or its integer dtype); with ``rows``, only the rows
        ``rows[0]:rows[1]`` along its first axis (read without reading the rest where the
        format allows)."""
        ...

    def stored(self, name: str) -> tuple[np.ndarray, str] | None:
        """One tensor exactly as the file stores it (a read-only view; BF16 as uint16) and
        its safetensors dtype tag (``"BF16"``...), or None when the format has no such form
        (GGUF's blocks, pickles): lets a caller keep a checkpoint's dtype or widen on a GPU."""
        ...

    def release(self) -> None:
        """Drop file pages read so far from this process's memory (called between tensors
        by the pipeline, so that a worker's memory stays one tensor, not the whole file)."""
        ...

    def verify(self) -> None:
        """The checks a reader postpones from opening because they cost more than the data
        they guard is usually worth (a GGUF's 10^5-string vocabulary, which a GGUF -> GGUF
        conversion only copies). The pipeline calls it before committing an artifact (while
        its workers compute); raises the reader's errors."""
        ...

    def describe(self) -> dict[str, Any]:
        """Provenance of the source."""
        ...


