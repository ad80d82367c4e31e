"""GGUF v3 writer: typed metadata plus lazily produced tensors, written atomically.

Design decision: the writer never holds the model. It takes

* an ordered list of :class:`GGUFKV` (key, value, *explicit* :class:`GGUFValueType`): llama.cpp
  reads hyper-parameters with exact types (``GGUFMeta::GKV<T>::get_kv`` in
  ``src/llama-model-loader.cpp`` throws "key %s has wrong type"), so no type is ever guessed
  from a Python value;
* an ordered list of :class:`GGUFTensor` (name, numpy-order shape, ggml type name and a
  zero-argument callable returning the tensor's bytes). The header is fully determined by names,
  shapes and types, so it is written first and each tensor is produced (read, permuted,
  quantized) only when its turn comes, then dropped -- peak memory is one tensor per worker,
  as in gguf-py's lazy mode (``GGUFWriter.write_tensors_to_file``).

Because the layout is known before any tensor exists, :func:`gguf_layout` gives the exact file
size without writing anything (``--dry-run``).

Layout (ggml ``docs/gguf.md``; the checks of ``gguf_init_from_file_impl`` in
``ggml/src/gguf.cpp`` that a writer must satisfy): magic ``GGUF``, u32 version 3, u64 tensor
count, u64 KV count, the KV pairs, the tensor infos (name, u32 n_dims, u64 ``ne[]`` in ggml order
= numpy shape reversed, u32 type, u64 offset relative to the data section), zero padding to the
alignment, then the tensor data, each tensor padded to the alignment (also the last one, as
gguf-py and ``llama_model_quantize`` do). Offsets are exactly the running sum of padded sizes
in tensor-info order. Keys and tensor names are unique, names are shorter than 64 bytes
(``GGML_MAX_NAME``), at most 4 dimensions, and ``ne[0]`` is a multiple of the type's block.

The file is written to a temporary name in the target directory and renamed into place
(:func:`quantport.formats._atomic.atomic_file`), so an error or a full disk leaves nothing at the
target. This module imports numpy and gguf-py's constant tables only (no torch, no quant).
"""

from __future__ import annotations

import logging
import math
import os
import struct
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np
from gguf import GGUFValueType

from quantport.errors import FormatError, QuantportError
from quantport.formats._atomic import atomic_file

__all__ = [
    "GGUFKV",
    "GGUFLayout",
    "GGUFTensor",
    "GGUFValueType",
    "gguf_file_size",
    "gguf_layout",
    "parallel_write_supported",
    "tensor_nbytes",
    "write_gguf",
]

log = logging.getLogger(__name__)

GGUF_MAGIC = b"GGUF"
GGUF_VERSION = 3
DEFAULT_ALIGNMENT = 32  # GGUF_DEFAULT_ALIGNMENT (ggml/include/gguf.h)
MAX_NAME = 64  # GGML_MAX_NAME: names must be < 64 bytes including the NUL
MAX_DIMS = 4  # GGML_MAX_DIMS

# struct formats of the scalar value types (little-endian, gguf.h enum gguf_type)
_SCALAR_FMT: dict[GGUFValueType, str] = {
    GGUFValueType.UINT8: "<B",
    GGUFValueType.INT8: "<b",
    GGUFValueType.UINT16: "<H",
    GGUFValueType.INT16: "<h",
    GGUFValueType.UINT32: "<I",
    GGUFValueType.INT32: "<i",
    GGUFValueType.FLOAT32: "<f",
    GGUFValueType.BOOL: "<?",
    GGUFValueType.UINT64: "<Q",
    GGUFValueType.INT64: "<q",
    GGUFValueType.FLOAT64: "<d",
}
_INT_TYPES = {
    GGUFValueType.UINT8, GGUFValueType.INT8, GGUFValueType.UINT16, GGUFValueType.INT16,
    GGUFValueType.UINT32, GGUFValueType.INT32, GGUFValueType.UINT64, GGUFValueType.INT64,
}  # fmt: skip
_FLOAT_TYPES = {GGUFValueType.FLOAT32, GGUFValueType.FLOAT64}

Producer = Callable[[], "np.ndarray | bytes | bytearray | memoryview"]
Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class GGUFKV:
    """One metadata pair with its explicit GGUF type.

    Attributes:
        key: the key, e.g. ``"llama.context_length"``.
        value: a Python scalar/str, or a sequence (list, tuple, 1-D ndarray) for arrays.
        type: the value type; ``GGUFValueType.ARRAY`` for arrays.
        array_type: the element type of an array (required for arrays, no nesting).
    """

    key: str
    value: Any
    type: GGUFValueType
    array_type: GGUFValueType | None = None


@dataclass(frozen=True)
class GGUFTensor:
    """One tensor to write.

    Attributes:
        name: GGUF tensor name (``blk.0.attn_q.weight``).
        shape: numpy-order shape (``[rows, cols]``; ``ne`` is this reversed).
        type_name: ggml type name (``"F32"``, ``"Q4_K"``, ...).
        produce: zero-argument callable returning the tensor's bytes (an ndarray of any dtype,
            or a bytes-like object) of exactly :func:`tensor_nbytes` bytes; called once, when the
            tensor is written. May be ``None`` for size computations.
    """

    name: str
    shape: tuple[int, ...]
    type_name: str
    produce: Producer | None = None


@dataclass(frozen=True)
class GGUFLayout:
    """Where everything lands in the file.

    Attributes:
        header: the encoded header (magic .. last tensor info), unpadded.
        data_start: absolute offset of the data section (header padded to the alignment).
        offsets: per tensor, the offset relative to ``data_start``.
        nbytes: per tensor, the unpadded data size.
        size: the exact file size.
        alignment: the alignment in use.
    """

    header: bytes
    data_start: int
    offsets: tuple[int, ...]
    nbytes: tuple[int, ...]
    size: int
    alignment: int


def _pad(n: int, align: int) -> int:
    return (n + align - 1) // align * align


def tensor_nbytes(shape: Sequence[int], type_name: str, name: str = "tensor") -> int:
    """Data size of a tensor stored as ``type_name`` (``ggml_nbytes`` of a contiguous tensor).

    Args:
        shape: numpy-order shape; its last dimension is ``ne[0]``.
        type_name: ggml type name.
        name: tensor name for error messages.

    Returns:
        ``n_elements / block_size * type_size``.

    Raises:
        FormatError: unknown type or ``ne[0]`` not a multiple of the type's block size.
    """
    try:
        qtype = gguf.GGMLQuantizationType[type_name]
    except KeyError:
        raise FormatError(
            f"tensor {name}: unknown ggml type {type_name!r}; use one of "
            f"{', '.join(t.name for t in gguf.GGMLQuantizationType)}"
        ) from None
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    ne0 = int(shape[-1]) if len(shape) else 1
    if ne0 % block:
        raise FormatError(
            f"tensor {name}: row width {ne0} is not a multiple of the {type_name} block size "
            f"{block}; pick a type with a smaller block"
        )
    return math.prod(int(d) for d in shape) // block * size


# --------------------------------------------------------------------------------------------
# encoding
# --------------------------------------------------------------------------------------------


def _string(s: str | bytes, where: str) -> bytes:
    if isinstance(s, str):
        b = s.encode("utf-8")
    elif isinstance(s, (bytes, bytearray)):
        b = bytes(s)
    else:
        raise FormatError(f"{where}: expected a string, got {type(s).__name__}")
    return struct.pack("<Q", len(b)) + b


_U64 = struct.Struct("<Q")


def _strings(values: Sequence[Any], where: str) -> bytes:
    """Length-prefixed UTF-8 strings: :func:`_string` for ~10^5 vocabulary entries at once."""
    if all(type(v) is str for v in values):
        pack = _U64.pack
        return b"".join([pack(len(b)) + b for b in [v.encode("utf-8") for v in values]])
    return b"".join(_string(s, f"{where}[{i}]") for i, s in enumerate(values))


def _scalar(vtype: GGUFValueType, v: Any, where: str) -> bytes:
    # struct.pack would accept 1 for a BOOL or True for an int; llama.cpp reads the exact type,
    # so the Python value must be of the declared kind
    is_bool = isinstance(v, (bool, np.bool_))
    if vtype == GGUFValueType.BOOL and not is_bool:
        raise FormatError(f"{where}: BOOL value must be a bool, got {v!r}")
    if vtype in _INT_TYPES and (is_bool or not isinstance(v, (int, np.integer))):
        raise FormatError(f"{where}: {vtype.name} value must be an integer, got {v!r}")
    if vtype in _FLOAT_TYPES and (
        is_bool or not isinstance(v, (int, float, np.integer, np.floating))
    ):
        raise FormatError(f"{where}: {vtype.name} value must be a number, got {v!r}")
    try:
        return struct.pack(_SCALAR_FMT[vtype], v)
    except struct.error:
        raise FormatError(
            f"{where}: value {v!r} does not fit {vtype.name}; use a wider type"
        ) from None


def _array(kv: GGUFKV) -> bytes:
    where = f"metadata key {kv.key}"
    et = kv.array_type
    if et is None:
        raise FormatError(f"{where}: an ARRAY needs array_type (the element type)")
    if et == GGUFValueType.ARRAY:
        # gguf.cpp rejects nested arrays ("invalid GGUF type")
        raise FormatError(f"{where}: nested arrays are not allowed in GGUF")
    values = kv.value
    if isinstance(values, (str, bytes)) or not hasattr(values, "__len__"):
        raise FormatError(f"{where}: ARRAY value must be a sequence, got {type(values).__name__}")
    head = struct.pack("<IQ", int(et), len(values))
    if et == GGUFValueType.STRING:
        return head + _strings(values, where)
    if et == GGUFValueType.BOOL:
        return head + b"".join(_scalar(et, v, f"{where}[{i}]") for i, v in enumerate(values))
    fmt = _SCALAR_FMT[et]
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise FormatError(f"{where}: ARRAY value must be 1-D, got shape {arr.shape}")
    if len(arr) and et in _INT_TYPES:
        if not np.issubdtype(arr.dtype, np.integer):
            raise FormatError(f"{where}: {et.name} array must hold integers, got {arr.dtype}")
        info = np.iinfo(np.dtype(fmt))
        if arr.min() < info.min or arr.max() > info.max:
            raise FormatError(f"{where}: values do not fit {et.name}; use a wider element type")
    elif len(arr) and not np.issubdtype(arr.dtype, np.number):
        raise FormatError(f"{where}: {et.name} array must hold numbers, got {arr.dtype}")
    return head + np.ascontiguousarray(arr, dtype=np.dtype(fmt)).tobytes()


def _kv_bytes(kv: GGUFKV) -> bytes:
    where = f"metadata key {kv.key}"
    try:
        vtype = GGUFValueType(kv.type)
    except ValueError:
        raise FormatError(f"{where}: unknown GGUF value type {kv.type!r}") from None
    out = _string(kv.key, "metadata key") + struct.pack("<I", int(vtype))
    if vtype == GGUFValueType.STRING:
        return out + _string(kv.value, where)
    if vtype == GGUFValueType.ARRAY:
        return out + _array(kv)
    return out + _scalar(vtype, kv.value, where)


def _alignment(metadata: Sequence[GGUFKV]) -> int:
    for kv in metadata:
        if kv.key == "general.alignment":
            # gguf.cpp: general.alignment must be UINT32, a non-zero power of two
            if kv.type != GGUFValueType.UINT32 or not isinstance(kv.value, int):
                raise FormatError("metadata key general.alignment must be a UINT32")
            a = int(kv.value)
            if a <= 0 or a & (a - 1):
                raise FormatError(f"general.alignment {a} is not a power of two; use e.g. 32")
            return a
    return DEFAULT_ALIGNMENT


def gguf_layout(metadata: Sequence[GGUFKV], tensors: Sequence[GGUFTensor]) -> GGUFLayout:
    """Encode the header and compute every offset and the exact file size.

    Args:
        metadata: ordered key/value pairs (``general.alignment``, if present, sets the alignment).
        tensors: ordered tensors (their ``produce`` is not called).

    Returns:
        The layout; ``layout.size`` is the size :func:`write_gguf` will produce.

    Raises:
        FormatError: duplicate keys or tensor names, a name of 64 bytes or more, more than 4
            dimensions, a value that does not match its type, or a row width that does not fit
            the tensor's type.
    """
    align = _alignment(metadata)
    seen: set[str] = set()
    parts = [GGUF_MAGIC, struct.pack("<IQQ", GGUF_VERSION, len(tensors), len(metadata))]
    for kv in metadata:
        if kv.key in seen:
            raise FormatError(f"duplicate metadata key {kv.key!r}; each key may appear once")
        seen.add(kv.key)
        parts.append(_kv_bytes(kv))
    names: set[str] = set()
    offsets: list[int] = []
    sizes: list[int] = []
    offset = 0
    for t in tensors:
        if t.name in names:
            raise FormatError(f"duplicate tensor name {t.name!r}; each tensor may appear once")
        names.add(t.name)
        raw = t.name.encode("utf-8")
        if len(raw) >= MAX_NAME:
            raise FormatError(
                f"tensor name {t.name!r} is {len(raw)} bytes; "
                f"llama.cpp allows at most {MAX_NAME - 1}"
            )
        if not 1 <= len(t.shape) <= MAX_DIMS and t.shape != ():
            raise FormatError(
                f"tensor {t.name}: {len(t.shape)} dimensions; GGUF allows 1 to {MAX_DIMS}"
            )
        shape = tuple(int(d) for d in t.shape) or (1,)
        if any(d < 0 for d in shape):
            raise FormatError(f"tensor {t.name}: negative dimension in {shape}")
        nb = tensor_nbytes(shape, t.type_name, t.name)
        qtype = gguf.GGMLQuantizationType[t.type_name]
        # gguf-py write_ti_data_to_file: ne[j] = shape[n_dims - 1 - j] (numpy order reversed)
        parts.append(_string(raw, "tensor name"))
        parts.append(struct.pack("<I", len(shape)))
        parts.append(struct.pack(f"<{len(shape)}Q", *reversed(shape)))
        parts.append(struct.pack("<IQ", int(qtype), offset))
        offsets.append(offset)
        sizes.append(nb)
        offset += _pad(nb, align)
    header = b"".join(parts)
    data_start = _pad(len(header), align)
    return GGUFLayout(header, data_start, tuple(offsets), tuple(sizes), data_start + offset, align)


def gguf_file_size(metadata: Sequence[GGUFKV], tensors: Sequence[GGUFTensor]) -> int:
    """The exact size in bytes of the file :func:`write_gguf` would write (nothing is written)."""
    return gguf_layout(metadata, tensors).size


def _as_bytes(data: Any, t: GGUFTensor) -> memoryview:
    if isinstance(data, np.ndarray):
        if data.dtype.byteorder == ">":
            raise FormatError(
                f"tensor {t.name}: big-endian data; GGUF files are written little-endian"
            )
        return memoryview(np.ascontiguousarray(data)).cast("B")
    if isinstance(data, (bytes, bytearray, memoryview)):
        return memoryview(data).cast("B")
    raise FormatError(
        f"tensor {t.name}: producer returned {type(data).__name__}, expected an ndarray or bytes"
    )


def _checked(t: GGUFTensor, nb: int) -> memoryview:
    """Produce ``t`` and check its size against the layout."""
    data = _as_bytes(t.produce(), t)  # type: ignore[misc]
    if data.nbytes != nb:
        raise FormatError(
            f"tensor {t.name}: producer gave {data.nbytes} bytes but shape {t.shape} as "
            f"{t.type_name} needs {nb}; fix the tensor's producer"
        )
    return data


def _write_serial(
    f: Any, tensors: Sequence[GGUFTensor], layout: GGUFLayout, on_progress: Progress | None
) -> None:
    total, done = sum(layout.nbytes), 0
    f.write(layout.header)
    f.write(b"\0" * (layout.data_start - len(layout.header)))
    for t, off, nb in zip(tensors, layout.offsets, layout.nbytes, strict=True):
        if f.tell() != layout.data_start + off:  # internal invariant: offsets are running sums
            raise FormatError(
                f"tensor {t.name}: writer at byte {f.tell()}, expected {layout.data_start + off}"
            )
        data = _checked(t, nb)
        f.write(data)
        del data
        f.write(b"\0" * (_pad(nb, layout.alignment) - nb))
        done += nb
        log.debug("wrote %s (%s, %d bytes)", t.name, t.type_name, nb)
        if on_progress:
            on_progress("write", done, total)
    f.flush()


# What a forked worker needs: (tensors, layout, file descriptor). Set in the parent just before
# the fork and inherited (producers are closures, which cannot be pickled); tasks are indices.
_JOB: tuple[Sequence[GGUFTensor], GGUFLayout, int] | None = None
_JOB_LOCK = threading.Lock()
_SYNC_BYTES = 32 << 20


_INIT_ERROR: BaseException | None = None


def _worker_init(init: Callable[[], None] | None) -> None:
    global _INIT_ERROR
    import signal

    # Ctrl-C goes to the whole process group: the parent alone handles it (and stops the
    # workers), so that workers neither print tracebacks nor die half-way through a task
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if init is not None:
        try:
            init()
        except BaseException as exc:  # reported by the first task, not printed by the pool
            _INIT_ERROR = exc


def _portable(exc: BaseException, t: GGUFTensor) -> BaseException:
    """``exc`` if it survives the trip back to the parent (pickled, then rebuilt), else a
    one-line :class:`QuantportError` that says what it was."""
    import pickle

    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:
        return QuantportError(f"tensor {t.name}: {type(exc).__name__}: {exc}")
    return exc


def _pwrite_tensor(i: int) -> int:
    """Worker: produce tensor ``i`` and write it at its offset; returns its byte count."""
    assert _JOB is not None
    tensors, layout, fd = _JOB
    t, nb = tensors[i], layout.nbytes[i]
    try:
        if _INIT_ERROR is not None:
            raise QuantportError(f"GGUF worker setup failed: {_INIT_ERROR!r}")
        data = _checked(t, nb)
        pos, view = layout.data_start + layout.offsets[i], data
        while view.nbytes:  # pwrite may write less than asked (Linux caps one call at ~2 GiB)
            n = os.pwrite(fd, view, pos)
            pos, view = pos + n, view[n:]
    except BaseException as exc:
        raise _portable(exc, t) from None
    log.debug("wrote %s (%s, %d bytes)", t.name, t.type_name, nb)
    return nb


def parallel_write_supported() -> bool:
    """Whether :func:`write_gguf` can use ``processes > 1`` here (it needs ``fork``, Linux)."""
    import multiprocessing

    return sys.platform.startswith("linux") and "fork" in multiprocessing.get_all_start_methods()


def _write_parallel(
    f: Any,
    tensors: Sequence[GGUFTensor],
    layout: GGUFLayout,
    on_progress: Progress | None,
    processes: int,
    worker_init: Callable[[], None] | None,
) -> None:
    global _JOB
    f.write(layout.header)
    f.flush()
    # the file gets its final size at once; the holes read as zeros, which is the padding
    os.ftruncate(f.fileno(), layout.size)
    # largest first, so that no worker is left with a big tensor at the end (LPT scheduling)
    order = sorted(range(len(tensors)), key=lambda i: -math.prod(tensors[i].shape))
    with _JOB_LOCK:  # one parallel write at a time per process: the job is a module global
        _JOB = (tensors, layout, f.fileno())
        try:
            _run_pool(f.fileno(), order, min(processes, len(tensors)), worker_init,
                      sum(layout.nbytes), on_progress)  # fmt: skip
        finally:
            _JOB = None
    f.seek(0, os.SEEK_END)


def _run_pool(
    fd: int,
    order: list[int],
    processes: int,
    worker_init: Callable[[], None] | None,
    total: int,
    on_progress: Progress | None,
) -> None:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from concurrent.futures.process import BrokenProcessPool

    done = synced = 0
    # ProcessPoolExecutor rather than multiprocessing.Pool: a worker that dies (out of
    # memory, killed) breaks the executor and raises here, where Pool would wait forever
    ex = ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("fork"),
                             initializer=_worker_init, initargs=(worker_init,))  # fmt: skip
    ok = False
    try:
        futures = [ex.submit(_pwrite_tensor, i) for i in order]  # run in submission order
        for fut in as_completed(futures):
            done += fut.result()  # a worker's exception is raised here
            if done - synced >= _SYNC_BYTES:
                # this process only waits here: flushing as the data arrives leaves the final
                # fsync (before the rename) little to do
                os.fdatasync(fd)
                synced = done
            if on_progress:
                on_progress("write", done, total)
        ok = True
    except BrokenProcessPool as exc:
        raise QuantportError(
            f"a GGUF worker process died ({exc}); if it ran out of memory, use fewer threads "
            "(--threads)"
        ) from None
    finally:
        if ok:
            ex.shutdown(wait=True)
        else:
            _stop(ex)


def _stop(ex: Any) -> None:
    """Stop an executor's workers now (an error or Ctrl-C): queued tensors are dropped and
    running ones are killed, since their output is discarded with the temporary file."""
    # (shutdown forgets the processes: take them first)
    procs = list((getattr(ex, "_processes", None) or {}).values())
    ex.shutdown(wait=False, cancel_futures=True)
    for p in procs:
        if p.is_alive():
            p.terminate()
    for p in procs:
        p.join(timeout=5)


def write_gguf(
    path: str | os.PathLike[str],
    metadata: Sequence[GGUFKV],
    tensors: Sequence[GGUFTensor],
    *,
    on_progress: Progress | None = None,
    processes: int = 1,
    worker_init: Callable[[], None] | None = None,
) -> GGUFLayout:
    """Write a GGUF v3 file atomically, producing one tensor at a time.

    Args:
        path: the target file; it is replaced only once the whole file has been written.
        metadata: ordered key/value pairs with explicit types.
        tensors: ordered tensors; each ``produce()`` is called once and its result is written
            and released before that worker produces another tensor.
        on_progress: ``on_progress("write", bytes_done, bytes_total)`` after each tensor
            (tensor data bytes, without padding).
        processes: tensors produced at once. Above 1 (and where
            :func:`parallel_write_supported`), forked worker processes each produce whole
            tensors and write them straight to their offsets in the file, largest first;
            producers then run in a child process, so they must not rely on threads started
            before the call. Otherwise tensors are produced in order in this process.
        worker_init: called once in each worker process before its first tensor (e.g. to set
            a per-process thread count).

    Returns:
        The layout of the written file (``layout.size`` equals the file size).

    Raises:
        FormatError: invalid metadata/tensor list (see :func:`gguf_layout`), a tensor without a
            producer, or a producer returning the wrong number of bytes.
        QuantportError: the file cannot be written (e.g. no space left); nothing is left at
            ``path``.
    """
    layout = gguf_layout(metadata, tensors)
    for t in tensors:
        if t.produce is None:
            raise FormatError(
                f"tensor {t.name} has no producer; give GGUFTensor.produce to write it"
            )
    target = Path(path)
    parallel = processes > 1 and len(tensors) > 1 and parallel_write_supported()
    with atomic_file(target) as tmp, open(tmp, "wb") as f:
        if parallel:
            _write_parallel(f, tensors, layout, on_progress, processes, worker_init)
        else:
            _write_serial(f, tensors, layout, on_progress)
        os.fsync(f.fileno())
        if f.tell() != layout.size:
            raise FormatError(f"{target}: wrote {f.tell()} bytes, expected {layout.size}")
    return layout
