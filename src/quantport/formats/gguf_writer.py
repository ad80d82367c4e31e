"""GGUF v3 writer: typed metadata plus tensors written in place at their offsets, atomically.

Design decision: the writer never holds the model. It takes

* an ordered list of :class:`GGUFKV` (key, value, *explicit* :class:`GGUFValueType`): llama.cpp
  reads hyper-parameters with exact types (``GGUFMeta::GKV<T>::get_kv`` in
  ``src/llama-model-loader.cpp`` throws "key %s has wrong type"), so no type is ever guessed
  from a Python value;
* an ordered list of :class:`GGUFTensor` (name, numpy-order shape, ggml type name, and for
  :func:`write_gguf` a zero-argument callable returning the tensor's bytes). The header is fully
  determined by names, shapes and types, so it is written first, the file gets its final size,
  and each tensor -- or any byte range of it, e.g. a range of rows -- is written at its offset
  when it exists (:func:`open_gguf`), in any order, from any process sharing the descriptor.
  Peak memory is what the caller holds at once, as in gguf-py's lazy mode
  (``GGUFWriter.write_tensors_to_file``).

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

import contextlib
import logging
import math
import os
import struct
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gguf
import numpy as np
from gguf import GGUFValueType

from quantport.errors import FormatError
from quantport.formats._atomic import atomic_file
from quantport.formats._io import pwrite_all

__all__ = [
    "GGUFKV",
    "GGUFLayout",
    "GGUFTensor",
    "GGUFValueType",
    "gguf_file_size",
    "GGUFOutput",
    "gguf_layout",
    "open_gguf",
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
        value: a Python scalar/str, or a sequence (list, tuple, 1-D ndarray) for arrays; may
            be None when ``encoded`` gives its bytes.
        type: the value type; ``GGUFValueType.ARRAY`` for arrays.
        array_type: the element type of an array (required for arrays, no nesting).
        encoded: ``value`` already encoded as GGUF stores it after the type (an array's
            element type, count and elements), e.g. copied from a source GGUF: written as
            it is, which for a vocabulary saves encoding 10^5 strings again. It must encode
            ``value``; only its element type is checked.
    """

    key: str
    value: Any
    type: GGUFValueType
    array_type: GGUFValueType | None = None
    encoded: bytes | None = field(default=None, repr=False)


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
    if kv.encoded is not None:
        if vtype == GGUFValueType.ARRAY and (
                kv.array_type is None or kv.encoded[:4] != struct.pack("<I", int(kv.array_type))):
            raise FormatError(f"{where}: the encoded array does not hold {kv.array_type!r} "
                              "elements")
        return out + kv.encoded
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


class GGUFOutput:
    """An open GGUF being written in place: the header is written and the file has its final
    size (the holes read as zeros, which is the padding), so tensors, or row ranges of them,
    can be written at their offsets in any order — also from forked processes, which share
    the file descriptor.

    Use :func:`open_gguf`; it renames the file into place when the block exits cleanly.
    """

    def __init__(self, fd: int, tensors: Sequence[GGUFTensor], layout: GGUFLayout) -> None:
        self.fd = fd
        self.tensors = tensors
        self.layout = layout

    def write(self, i: int, data: Any, byte_offset: int = 0) -> int:
        """Write bytes of tensor ``i`` starting ``byte_offset`` bytes into its data; returns
        the number of bytes written.

        Raises:
            FormatError: the bytes would run past the tensor's data.
        """
        t, nb = self.tensors[i], self.layout.nbytes[i]
        view = _as_bytes(data, t)
        if byte_offset < 0 or byte_offset + view.nbytes > nb:
            raise FormatError(
                f"tensor {t.name}: {view.nbytes} bytes at offset {byte_offset} overrun its "
                f"{nb} bytes ({t.type_name}, shape {t.shape})"
            )
        pwrite_all(self.fd, view, self.layout.data_start + self.layout.offsets[i] + byte_offset)
        return view.nbytes

    def sync(self) -> None:
        """Flush the data written so far (``fdatasync``)."""
        os.fdatasync(self.fd)


@contextlib.contextmanager
def open_gguf(
    path: str | os.PathLike[str],
    metadata: Sequence[GGUFKV],
    tensors: Sequence[GGUFTensor],
    layout: GGUFLayout | None = None,
) -> Iterator[GGUFOutput]:
    """Open a GGUF for in-place writing under a temporary name; on a clean exit it is synced
    and renamed to ``path``, on an exception removed.

    ``layout``: :func:`gguf_layout` of the same metadata and tensors, if already computed
    (encoding a 10^5-token vocabulary takes a while).

    Raises:
        FormatError: invalid metadata or tensor list (see :func:`gguf_layout`).
    """
    if layout is None:
        layout = gguf_layout(metadata, tensors)
    with atomic_file(Path(path)) as tmp, open(tmp, "wb") as f:
        f.write(layout.header)
        f.flush()
        os.ftruncate(f.fileno(), layout.size)
        yield GGUFOutput(f.fileno(), tensors, layout)
        os.fsync(f.fileno())


def write_gguf(
    path: str | os.PathLike[str],
    metadata: Sequence[GGUFKV],
    tensors: Sequence[GGUFTensor],
    *,
    on_progress: Progress | None = None,
) -> GGUFLayout:
    """Write a GGUF v3 file atomically, producing one tensor at a time, in order.

    Args:
        path: the target file; it is replaced only once the whole file has been written.
        metadata: ordered key/value pairs with explicit types.
        tensors: ordered tensors; each ``produce()`` is called once and its result is written
            and released before the next tensor is produced.
        on_progress: ``on_progress("write", bytes_done, bytes_total)`` after each tensor
            (tensor data bytes, without padding).

    Returns:
        The layout of the written file (``layout.size`` equals the file size).

    Raises:
        FormatError: invalid metadata/tensor list (see :func:`gguf_layout`), a tensor without a
            producer, or a producer returning the wrong number of bytes.
        QuantportError: the file cannot be written (e.g. no space left); nothing is left at
            ``path``.
    """
    for t in tensors:
        if t.produce is None:
            raise FormatError(
                f"tensor {t.name} has no producer; give GGUFTensor.produce to write it"
            )
    with open_gguf(path, metadata, tensors) as out:
        total, done = sum(out.layout.nbytes), 0
        for i, (t, nb) in enumerate(zip(tensors, out.layout.nbytes, strict=True)):
            data = _as_bytes(t.produce(), t)  # type: ignore[misc]
            if data.nbytes != nb:
                raise FormatError(
                    f"tensor {t.name}: producer gave {data.nbytes} bytes but shape {t.shape} as "
                    f"{t.type_name} needs {nb}; fix the tensor's producer"
                )
            done += out.write(i, data)
            del data
            if on_progress:
                on_progress("write", done, total)
    return out.layout
