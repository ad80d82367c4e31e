"""quantport: quantize model checkpoints once, ship them to llama.cpp, ONNX Runtime and
transformers, and prove each artifact right in the runtime that serves it."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
