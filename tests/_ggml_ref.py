"""ctypes access to llama.cpp's own quantizers (``ggml_quantize_chunk`` in libggml-base).

Used by the byte-exactness tests; loads the shared libraries that llama-cpp-python installs
under ``llama_cpp/lib``. :func:`load` returns None when llama_cpp is not importable.
"""

from __future__ import annotations

import ctypes
import importlib.util
from pathlib import Path

import numpy as np

_LIB: object = None


def load() -> ctypes.CDLL | None:
    """Return libggml-base with ``ggml_quantize_chunk`` declared, or None if unavailable."""
    global _LIB
    if _LIB is not None:
        return _LIB or None
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or spec.origin is None:
        _LIB = False
        return None
    lib_dir = Path(spec.origin).parent / "lib"
    cands = sorted(lib_dir.glob("libggml-base.so*")) + sorted(lib_dir.glob("libggml-base.dylib"))
    if not cands:
        _LIB = False
        return None
    lib = ctypes.CDLL(str(cands[0]))
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_quantize_chunk.argtypes = [
        ctypes.c_int,
        ctypes.POINTER(ctypes.c_float),
        ctypes.c_void_p,
        ctypes.c_int64,
        ctypes.c_int64,
        ctypes.c_int64,
        ctypes.POINTER(ctypes.c_float),
    ]
    lib.ggml_quantize_requires_imatrix.restype = ctypes.c_bool
    lib.ggml_quantize_requires_imatrix.argtypes = [ctypes.c_int]
    lib.ggml_quantize_init.restype = None
    lib.ggml_quantize_init.argtypes = [ctypes.c_int]
    _LIB = lib
    return lib


def quantize_chunk(type_name: str, w: np.ndarray, imatrix: np.ndarray | None = None) -> np.ndarray:
    """Quantize ``w`` ``[rows, cols]`` with llama.cpp; returns uint8 ``[rows, row_bytes]``."""
    import gguf

    lib = load()
    assert lib is not None
    qtype = int(gguf.GGMLQuantizationType[type_name])
    block, type_size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[type_name]]
    w = np.ascontiguousarray(w, dtype=np.float32)
    rows, cols = w.shape
    row_bytes = cols // block * type_size
    out = np.zeros((rows, row_bytes), dtype=np.uint8)
    imp = None
    if imatrix is not None:
        imatrix = np.ascontiguousarray(imatrix, dtype=np.float32)
        imp = imatrix.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
    lib.ggml_quantize_init(qtype)
    n = lib.ggml_quantize_chunk(
        qtype, w.ctypes.data_as(ctypes.POINTER(ctypes.c_float)), out.ctypes.data, 0, rows, cols, imp
    )
    assert n == out.nbytes
    return out
