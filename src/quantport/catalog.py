"""What quantport supports, for ``quantport list``."""

from __future__ import annotations

from typing import Any

from quantport.quant.scheme import EXAMPLE_SCHEMES
from quantport.architectures import ARCHITECTURES
from quantport.recipe import METHODS
from quantport.writers import WRITERS

__all__ = ["catalog"]


def catalog() -> dict[str, list[Any]]:
    """Architectures, formats (the writer table), rounding methods, integer schemes, GGUF
    presets and GGUF weight types."""
    out: dict[str, list[Any]] = {
        "architectures": [
            {"name": a.name, "hf_classes": ", ".join(a.hf_classes),
             "kind": "causal LM" if a.causal else "encoder"}
            for a in ARCHITECTURES.values()
        ],
        "formats": [
            *({"name": name, "status": "ready", "quant": w.description}
              for name, w in WRITERS.items()),
        ],
        "methods": [{"name": m.name, "description": m.description} for m in METHODS.values()],
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
