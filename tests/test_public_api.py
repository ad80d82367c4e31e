"""The package's public surface is intentional (onnx-ir's public_api_test idea)."""

from __future__ import annotations

import quantport


def test_public_api_is_frozen():
    assert sorted(quantport.__all__) == sorted([
        "ConfigError", "DependencyError", "FormatError", "IRError", "ModelIR",
        "OutputExistsError", "QuantizedTensor", "QuantportError", "ShapeError",
        "UnsupportedArchitectureError", "UnsupportedQuantError", "ValidationFailed",
        "ZeroPointDomain", "__version__", "dequantize",
    ])
    for name in quantport.__all__:
        assert getattr(quantport, name) is not None


def test_errors_form_one_hierarchy():
    for name in quantport.__all__:
        obj = getattr(quantport, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, quantport.QuantportError)


def test_formats_and_ir_do_not_import_torch():
    import subprocess
    import sys

    code = ("import sys, quantport.ir, quantport.formats.gguf_blocks, quantport.formats.safetensors,"
            " quantport.formats.compressed_tensors, quantport.formats.gguf_writer,"
            " quantport.quant.ggml, quantport.quant.scheme; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
