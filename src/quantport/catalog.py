"""What quantport supports, for ``quantport list``."""

from __future__ import annotations

from typing import Any

from quantport.readers.arch import ARCHITECTURES
from quantport.quant.scheme import EXAMPLE_SCHEMES

__all__ = ["catalog"]


def catalog() -> dict[str, list[Any]]:
    """Architectures, formats, integer schemes, GGUF presets and GGUF weight types."""
    out: dict[str, list[Any]] = {
        "architectures": [
            {"name": a.name, "hf_classes": ", ".join(a.hf_classes),
             "kind": "causal LM" if a.causal else "encoder"}
            for a in ARCHITECTURES.values()
        ],
        "formats": [
            {"name": "safetensors", "status": "ready",
             "quant": "compressed-tensors pack-quantized (w2..w8) or dense f32/f16/bf16"},
            {"name": "gguf", "status": "ready", "quant": "llama.cpp presets and weight types"},
            {"name": "onnx", "status": "not yet", "quant": "-"},
        ],
        "schemes": [*EXAMPLE_SCHEMES, "f32", "f16", "bf16",
                    "grammar: w<2..8>-<gN|channel|tensor>-<sym|asym>"],
    }
    try:
        from quantport.quant.presets import PRESETS

        out["gguf_presets"] = list(PRESETS)
    except ImportError:  # pragma: no cover - presets ship with the package
        out["gguf_presets"] = []
    from quantport.quant.ggml import GGML_GRIDS

    out["gguf_types"] = ["F32", "F16", "BF16", *GGML_GRIDS]
    return out
