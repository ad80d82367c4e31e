"""What quantport supports, for ``quantport list``."""

from __future__ import annotations

from typing import Any

from quantport.quant.scheme import EXAMPLE_SCHEMES
from quantport.architectures import ARCHITECTURES, Architecture
from quantport.recipe import METHODS
from quantport.writers import WRITERS

__all__ = ["architecture_support", "catalog"]


def architecture_support(arch: Architecture) -> dict[str, str]:
    """What each format does with one architecture: ``gguf`` (export as which GGUF
    architecture; import back), ``safetensors`` / ``gptq`` (Linear weights by HF name, rounded
    to nearest), ``onnx`` (a graph builder), ``calibrated`` (``--method gptq|awq|smoothquant``:
    the layer-by-layer engine runs it)."""
    from quantport.formats.onnx_graph import BUILDERS

    gguf = []
    if arch.hparams is not None:
        gguf.append(f"export ({arch.gguf_arch})")
    if arch.from_gguf is not None:
        gguf.append("import")
    else:
        via = [a for a in ARCHITECTURES.values()
               if a.gguf_arch == arch.gguf_arch and a.from_gguf is not None]
        if via:
            gguf.append(f"import (as {via[0].name})")
    return {
        "gguf": ", ".join(gguf) or "no",
        "safetensors": "yes",
        "gptq": "yes" if arch.causal else "no (encoder)",
        "onnx": "yes" if arch.name in BUILDERS else "no",
        # encoders: GPTQ; SmoothQuant's scales cannot be folded into a post-LayerNorm encoder,
        # only ONNX stores them (NAME.input_smooth); AWQ is decoder-only
        "calibrated": ("no" if not arch.calibrated else "yes" if arch.causal
                       else "gptq, smoothquant (onnx)"),
    }


def catalog() -> dict[str, list[Any]]:
    """Architectures, formats (the writer table), rounding methods, integer schemes, GGUF
    presets and GGUF weight types."""
    out: dict[str, list[Any]] = {
        "architectures": [
            {"name": a.name, "hf_classes": ", ".join(a.hf_classes),
             "kind": "causal LM" if a.causal else "encoder", **architecture_support(a)}
            for a in ARCHITECTURES.values()
        ],
        "formats": [
            *({"name": name, "status": "ready", "quant": w.description}
              for name, w in WRITERS.items()),
        ],
        "methods": [{"name": m.name, "description": m.description} for m in METHODS.values()],
        "schemes": [*EXAMPLE_SCHEMES, "f32", "f16", "bf16",
                    "w8a8 (int8 weights per channel + int8 activations at run time, one "
                    "scale per token or, in onnx, per tensor: --act-scheme; safetensors, onnx)",
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
