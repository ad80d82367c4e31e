"""Run llama.cpp's own quantizer (``llama_model_quantize``) from Python through llama-cpp-python.

Used as the reference implementation in tests and benchmarks.  The importance matrix is handed over
in memory through ``llama_model_quantize_params.imatrix`` (a NULL-terminated array of
``llama_model_imatrix_data``), exactly as ``tools/quantize/quantize.cpp`` does after its
``load_imatrix``; the values are :attr:`quantport.formats.imatrix.ImatrixData.entries` unchanged
(per-column mean of squared activations, see that module).

Requires llama-cpp-python 0.3.36 (the ctypes struct layout must match its vendored llama.cpp).
"""

from __future__ import annotations

import ctypes
import os
import re
import tempfile
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from quantport.errors import DependencyError, QuantportError
from quantport.formats.imatrix import ImatrixData
from quantport.quant.presets import parse_override, resolve_preset

__all__ = ["llama_quantize", "llama_quantize_dry_run"]

_LOCK = threading.Lock()  # llama_log_set is process-global


def _import_llama_cpp() -> Any:
    try:
        import llama_cpp
    except Exception as exc:  # ImportError, or OSError when the shared library fails to load
        raise DependencyError(
            f"llama-cpp-python is needed to run llama.cpp's quantizer ({exc}); pip install llama-cpp-python==0.3.36"
        ) from None
    if not hasattr(llama_cpp, "llama_model_imatrix_data") or not hasattr(llama_cpp, "llama_model_tensor_override"):
        raise DependencyError(
            f"llama-cpp-python {getattr(llama_cpp, '__version__', '?')} has no imatrix/tensor-override structs; "
            "pip install llama-cpp-python==0.3.36"
        )
    return llama_cpp


def _type_id(name: str) -> int:
    return int(gguf.GGMLQuantizationType[name].value)


def _build_params(
    lc: Any,
    preset_name: str,
    *,
    imatrix: ImatrixData | None,
    nthread: int,
    pure: bool,
    allow_requantize: bool,
    overrides: Iterable[str | tuple[str, str]],
    output_type: str | None,
    token_embedding_type: str | None,
    dry_run: bool,
) -> tuple[Any, list[Any], str]:
    """Fill llama_model_quantize_params; returns (params, buffers to keep alive, canonical preset name)."""
    preset = resolve_preset(preset_name)
    parsed = [parse_override(o) for o in overrides]
    params = lc.llama_model_quantize_default_params()
    params.nthread = int(nthread)
    params.ftype = preset.ftype
    params.allow_requantize = bool(allow_requantize)
    params.pure = bool(pure)
    params.dry_run = bool(dry_run)
    if output_type is not None:
        params.output_tensor_type = _type_id(parse_override(("x", output_type))[1])
    if token_embedding_type is not None:
        params.token_embedding_type = _type_id(parse_override(("x", token_embedding_type))[1])

    keep: list[Any] = []  # keep every ctypes buffer alive until the call returns
    if imatrix is not None and imatrix.entries:
        arr = (lc.llama_model_imatrix_data * (len(imatrix.entries) + 1))()
        for i, (name, values) in enumerate(imatrix.entries.items()):
            v = np.ascontiguousarray(values, dtype=np.float32).reshape(-1)
            keep.append(v)
            arr[i].name = name.encode("utf-8")
            arr[i].data = v.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
            arr[i].size = v.size
        arr[len(imatrix.entries)].name = None  # terminator: llama.cpp loops until name == NULL
        keep.append(arr)
        params.imatrix = ctypes.cast(arr, ctypes.POINTER(lc.llama_model_imatrix_data))
    if parsed:
        tt = (lc.llama_model_tensor_override * (len(parsed) + 1))()
        for i, (pattern, type_name) in enumerate(parsed):
            tt[i].pattern = pattern.encode("utf-8")
            tt[i].type = _type_id(type_name)
        tt[len(parsed)].pattern = None  # terminator: {nullptr, GGML_TYPE_COUNT}
        tt[len(parsed)].type = lc.GGML_TYPE_COUNT
        keep.append(tt)
        params.tt_overrides = ctypes.cast(tt, ctypes.POINTER(lc.llama_model_tensor_override))
    return params, keep, preset.name


def _call(lc: Any, src: Path, out: str, params: Any, what: str) -> str:
    """Run llama_model_quantize with llama.cpp's log captured; returns the log, raises on failure."""
    log: list[str] = []
    errors: list[str] = []

    @lc.llama_log_callback  # type: ignore[misc]
    def _log(level: int, text: bytes, user_data: Any) -> None:
        msg = text.decode("utf-8", "replace")
        log.append(msg)
        # GGML_LOG_LEVEL_ERROR is 4 in this ggml (ggml.h: NONE 0, DEBUG 1, INFO 2, WARN 3, ERROR 4, CONT 5);
        # llama-cpp-python's own _logger still maps the older numbering.
        if level == 4:
            errors.append(" ".join(msg.split()))

    with _LOCK:
        lc.llama_log_set(_log, ctypes.c_void_p(0))
        try:
            rc = lc.llama_model_quantize(os.fsencode(src), os.fsencode(out), ctypes.byref(params))
        finally:
            restore = getattr(getattr(lc, "_logger", None), "llama_log_callback", None)
            lc.llama_log_set(restore, ctypes.c_void_p(0))
    if rc != 0:
        detail = "; ".join(e for e in errors if e) or "no error message"
        raise QuantportError(f"llama_model_quantize {what} failed with status {rc}: {detail}")
    return "".join(log)


def llama_quantize(
    src_gguf: str | os.PathLike[str],
    dst_gguf: str | os.PathLike[str],
    ftype_name: str,
    *,
    imatrix: ImatrixData | None = None,
    nthread: int = 2,
    pure: bool = False,
    allow_requantize: bool = False,
    overrides: Iterable[str | tuple[str, str]] = (),
    output_type: str | None = None,
    token_embedding_type: str | None = None,
) -> None:
    """Quantize ``src_gguf`` into ``dst_gguf`` with llama.cpp's ``llama_model_quantize``.

    The output is written to a temporary file in the destination directory and renamed into place, so
    ``dst_gguf`` never holds a partial file.  llama.cpp's log is captured (not printed); its error lines
    end up in the exception message.

    Args:
        src_gguf: input GGUF (F32/F16/BF16, or quantized with ``allow_requantize``).
        dst_gguf: output path.
        ftype_name: llama-quantize preset, e.g. ``"Q4_K_M"`` (see :data:`quantport.quant.presets.PRESETS`).
        imatrix: importance matrix; its ``entries`` are passed as they are.
        nthread: worker threads (``<= 0``: all cores).
        pure: llama-quantize ``--pure``.
        allow_requantize: allow quantized input tensors (``--allow-requantize``).
        overrides: ``--tensor-type`` overrides, ``"REGEX=TYPE"`` or ``(regex, type)``.
        output_type: ``--output-tensor-type``.
        token_embedding_type: ``--token-embedding-type``.

    Raises:
        DependencyError: llama-cpp-python (0.3.36) is not importable.
        UnsupportedQuantError: unknown preset, type or malformed override.
        QuantportError: llama.cpp returned non-zero (its error message is included).
    """
    lc = _import_llama_cpp()
    src = Path(src_gguf)
    dst = Path(dst_gguf)
    if not src.is_file():
        raise QuantportError(f"llama_quantize: input {src} does not exist; pass an existing GGUF file")
    params, keep, name = _build_params(
        lc, ftype_name, imatrix=imatrix, nthread=nthread, pure=pure, allow_requantize=allow_requantize,
        overrides=overrides, output_type=output_type, token_embedding_type=token_embedding_type, dry_run=False,
    )  # fmt: skip
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent)
    os.close(fd)
    try:
        _call(lc, src, tmp_name, params, f"{src} -> {dst} ({name})")
        os.replace(tmp_name, dst)
    finally:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
    del keep


# "[  12/ 272] blk.0.attn_v.weight - [  576,   192,     1,     1], type =   q4_1, size = ... (q8_0)"
_DRY_RUN_LINE = re.compile(
    r"\[\s*\d+/\s*\d+\]\s+(\S+)\s+- \[[^\]]*\], type =\s*(\w+), size =[^\n(]*(?:\((\w+)\))?"
)


def llama_quantize_dry_run(
    src_gguf: str | os.PathLike[str],
    ftype_name: str,
    *,
    imatrix: ImatrixData | None = None,
    pure: bool = False,
    allow_requantize: bool = False,
    overrides: Iterable[str | tuple[str, str]] = (),
    output_type: str | None = None,
    token_embedding_type: str | None = None,
) -> dict[str, str]:
    """The per-tensor types llama.cpp would choose, from ``llama_model_quantize`` with ``dry_run``.

    Nothing is quantized or written; the types are read from llama.cpp's own per-tensor log lines.

    Returns:
        GGUF tensor name -> GGML type name (upper case, e.g. ``"Q4_K"``), in llama.cpp's order.

    Raises:
        Same as :func:`llama_quantize`, plus QuantportError when the log cannot be parsed.
    """
    lc = _import_llama_cpp()
    src = Path(src_gguf)
    if not src.is_file():
        raise QuantportError(f"llama_quantize_dry_run: input {src} does not exist; pass an existing GGUF file")
    params, keep, name = _build_params(
        lc, ftype_name, imatrix=imatrix, nthread=1, pure=pure, allow_requantize=allow_requantize,
        overrides=overrides, output_type=output_type, token_embedding_type=token_embedding_type, dry_run=True,
    )  # fmt: skip
    log = _call(lc, src, os.devnull, params, f"dry run of {src} ({name})")
    del keep
    types = {m.group(1): (m.group(3) or m.group(2)).upper() for m in _DRY_RUN_LINE.finditer(log)}
    if not types:
        raise QuantportError(f"llama_quantize_dry_run: no per-tensor lines in llama.cpp's log for {src}; log format changed?")
    return types
