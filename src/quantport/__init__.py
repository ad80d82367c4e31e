"""quantport: quantize model checkpoints once, ship them to llama.cpp, ONNX Runtime and
transformers, and prove each artifact right in the runtime that serves it.

The public surface: the IR (:class:`QuantizedTensor`, :func:`dequantize`, :class:`ModelIR`)
and the error hierarchy. Readers live in :mod:`quantport.readers`, the conversion pipeline in :mod:`quantport.pipeline`, format writers in :mod:`quantport.writers`, validation in
:mod:`quantport.validate`, the command line in :mod:`quantport.cli`.
"""

from __future__ import annotations

__version__ = "0.1.0"

from quantport.errors import (
    ConfigError,
    DependencyError,
    FormatError,
    IRError,
    OutputExistsError,
    QuantportError,
    ShapeError,
    UnsupportedArchitectureError,
    UnsupportedQuantError,
    ValidationFailed,
)
from quantport.ir import ModelIR, QuantizedTensor, ZeroPointDomain, dequantize

__all__ = [
    "ConfigError",
    "DependencyError",
    "FormatError",
    "IRError",
    "ModelIR",
    "OutputExistsError",
    "QuantizedTensor",
    "QuantportError",
    "ShapeError",
    "UnsupportedArchitectureError",
    "UnsupportedQuantError",
    "ValidationFailed",
    "ZeroPointDomain",
    "__version__",
    "dequantize",
]
