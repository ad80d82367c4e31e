"""ctypes access to llama.cpp's own quantizers (``ggml_quantize_chunk`` in libggml-base).

Used by the byte-exactness tests. The library is found through the installed ``llama_cpp``
package itself: the directory it loaded libllama from (``llama_cpp.llama_cpp._base_path``, which
honours ``LLAMA_CPP_LIB_PATH``) and its own platform-aware loader, not a path or glob of ours.
:func:`load` returns None when that fails; :func:`unavailable_reason` says why (the tests' skip
reason, which tests/conftest.py turns into a failure under CI).
"""

from __future__ import annotations

import ctypes
from typing import Any

import numpy as np

_LIB: Any = None
_WHY = ""


def _find() -> ctypes.CDLL:
    import llama_cpp.llama_cpp as lc  # loads libllama (and, as its dependency, libggml-base)
    from llama_cpp._ctypes_extensions import load_shared_library

    try:
        return load_shared_library("ggml-base", lc._base_path)
    except (FileNotFoundError, RuntimeError, OSError) as exc:
        # a build that links ggml into libllama: the symbols are reachable through it
        if hasattr(lc._lib, "ggml_quantize_chunk"):
            return lc._lib
        raise FileNotFoundError(
            f"no libggml-base next to libllama in {lc._base_path}: {exc}") from None


def unavailable_reason() -> str:
    """Why :func:`load` returned None ("" if it did not)."""
    load()
    return _WHY


def load() -> ctypes.CDLL | None:
    """Return libggml-base with ``ggml_quantize_chunk`` declared, or None if unavailable."""
    global _LIB, _WHY
    if _LIB is not None:
        return _LIB or None
    try:
        lib = _find()
    except Exception as exc:  # ImportError, or OSError/FileNotFoundError from the loader
        _LIB, _WHY = False, f"llama.cpp's libggml-base is not available: {type(exc).__name__}: {exc}"
        return None
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
