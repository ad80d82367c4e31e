"""safetensors container: a header-validating streaming reader and an atomic writer.

Layout (huggingface/safetensors docs, "Format"): ``u64 little-endian N``, ``N`` bytes of JSON
header ``{name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {...}}``, then the
byte buffer. The reader checks every header field against the file size before it maps a
single tensor, so a hostile header (huge N, offsets past the end, shapes whose byte count does
not match their offsets) is refused before anything is allocated. Tensors are read one at a
time through ``numpy.memmap``; the whole file is never loaded.

Pure numpy: no torch here (bf16 is widened to float32 by a bit shift).
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from quantport.errors import FormatError
from quantport.formats._atomic import atomic_file
from quantport.formats._io import ReadMap

__all__ = [
    "DTYPES",
    "SafetensorsFile",
    "TensorInfo",
    "bf16_bits",
    "encode_dense",
    "encode_header",
    "write_safetensors",
]

# safetensors dtype tag -> (numpy dtype, itemsize). BF16 is carried as raw uint16 bits.
DTYPES: dict[str, tuple[np.dtype, int]] = {
    "F64": (np.dtype("<f8"), 8),
    "F32": (np.dtype("<f4"), 4),
    "F16": (np.dtype("<f2"), 2),
    "BF16": (np.dtype("<u2"), 2),
    "I64": (np.dtype("<i8"), 8),
    "I32": (np.dtype("<i4"), 4),
    "I16": (np.dtype("<i2"), 2),
    "I8": (np.dtype("i1"), 1),
    "U8": (np.dtype("u1"), 1),
    "U16": (np.dtype("<u2"), 2),
    "U32": (np.dtype("<u4"), 4),
    "U64": (np.dtype("<u8"), 8),
    "BOOL": (np.dtype("?"), 1),
}
_NP_TO_TAG = {np.dtype(v[0]).str: k for k, v in DTYPES.items() if k not in ("BF16", "U16")}
_NP_TO_TAG[np.dtype("<u2").str] = "U16"

# The reference implementation refuses headers above 100 MB (safetensors/src/tensor.rs
# MAX_HEADER_SIZE); so do we, before reading them.
MAX_HEADER = 100_000_000


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _show(v: object) -> str:
    """A short repr of an offending header value."""
    r = repr(v)
    return r if len(r) <= 60 else r[:57] + "..."


@dataclass(frozen=True)
class TensorInfo:
    """One header entry: dtype tag, shape, absolute byte range in the file."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def nbytes(self) -> int:
        """Byte length of the tensor's data."""
        return self.end - self.begin


class SafetensorsFile:
    """A validated safetensors file, read tensor by tensor.

    Args:
        path: the ``.safetensors`` file.

    Raises:
        FormatError: if the file is truncated, its header is not valid JSON, or any tensor's
            dtype, shape or offsets are inconsistent with the file.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        size = self.path.stat().st_size
        where = str(self.path)
        if size < 8:
            raise FormatError(f"{where}: truncated safetensors file ({size} bytes)")
        with open(self.path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > MAX_HEADER or n > size - 8:
                raise FormatError(
                    f"{where}: header claims {n} bytes but the file has {size - 8}; "
                    "the file is truncated or not safetensors"
                )
            raw = f.read(n)
        try:
            header = json.loads(raw)
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            # ValueError: JSONDecodeError, or an integer of more than 4300 digits
            raise FormatError(f"{where}: header is not valid JSON ({exc.__class__.__name__})") from exc
        if not isinstance(header, dict):
            raise FormatError(f"{where}: header is not a JSON object")
        meta = header.pop("__metadata__", None)
        if meta is None:  # the reference reader takes null as no metadata
            meta = {}
        if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
            raise FormatError(
                f"{where}: __metadata__ must be an object of strings (safetensors format), got "
                f"{_show(meta)}; fix or regenerate the file"
            )
        self.metadata: dict[str, str] = meta
        self._map = ReadMap(self.path)
        data_start = 8 + n
        self.tensors: dict[str, TensorInfo] = {}
        for name, entry in header.items():
            dtype = entry.get("dtype") if isinstance(entry, dict) else None
            shape = entry.get("shape") if isinstance(entry, dict) else None
            offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
            if (
                not isinstance(dtype, str)
                or not isinstance(shape, list)
                or not all(_is_int(s) for s in shape)
                or not isinstance(offsets, list)
                or len(offsets) != 2
                or not all(_is_int(o) for o in offsets)
            ):
                raise FormatError(
                    f"{where}: malformed header entry for tensor {name!r}: {_show(entry)} (need "
                    "dtype: string, shape: [integers], data_offsets: [begin, end])"
                )
            shape = tuple(shape)
            b, e = offsets
            if dtype not in DTYPES:
                raise FormatError(f"{where}: tensor {name!r} has unsupported dtype {_show(dtype)}")
            if any(s < 0 for s in shape):
                raise FormatError(f"{where}: tensor {name!r} has a negative dimension {shape}")
            count, span = 1, 1
            for s in shape:
                count *= s
                span *= max(s, 1)
            if not 0 <= b <= e or e - b != count * DTYPES[dtype][1]:
                raise FormatError(
                    f"{where}: tensor {name!r} offsets [{b}, {e}] do not match shape {shape} "
                    f"of {dtype}"
                )
            if span * DTYPES[dtype][1] > size:
                # an empty tensor whose other dimensions overflow: numpy cannot even shape it
                raise FormatError(
                    f"{where}: tensor {name!r} has shape {_show(list(shape))}, larger than the "
                    "file: it is truncated or its header is corrupt"
                )
            if data_start + e > size:
                raise FormatError(
                    f"{where}: tensor {name!r} ends at byte {data_start + e} past the end of "
                    f"the file ({size} bytes); the file is truncated"
                )
            self.tensors[name] = TensorInfo(name, dtype, shape, data_start + b, data_start + e)
        # the reference reader's Metadata::validate (safetensors/src/tensor.rs,
        # InvalidOffset): in offset order the tensors tile the data, no overlap and no gap;
        # otherwise one set of bytes could pass as two tensors
        end = 0
        for info in sorted(self.tensors.values(), key=lambda t: (t.begin, t.end)):
            if info.begin - data_start != end:
                raise FormatError(
                    f"{where}: tensor {info.name!r} starts at data offset "
                    f"{info.begin - data_start}, expected {end}: tensors overlap or leave a gap "
                    "(invalid offsets); the header is corrupt")
            end = info.end - data_start

    def __contains__(self, name: object) -> bool:
        return name in self.tensors

    def keys(self) -> list[str]:
        """Tensor names in header order."""
        return list(self.tensors)

    def raw(self, name: str) -> np.ndarray:
        """Return a read-only view of a tensor in the file's memory map, in its stored dtype
        (BF16 as uint16)."""
        info = self.tensors[name]
        np_dtype = DTYPES[info.dtype][0]
        if info.nbytes == 0:
            return np.zeros(info.shape, dtype=np_dtype)
        return np.asarray(self._map.bytes(info.begin, info.end)).view(np_dtype).reshape(info.shape)

    def get(self, name: str, rows: tuple[int, int] | None = None) -> np.ndarray:
        """Return a tensor (or its rows ``rows[0]:rows[1]``, along the first axis) with floats
        (including BF16) as float32.

        F32 and integer tensors come back as the read-only memory map itself: copying them
        would cost a page fault per fresh page for nothing. Other floats are widened straight
        from the map, only the rows asked for.
        """
        info = self.tensors[name]
        arr = self.raw(name)
        if rows is not None:
            arr = arr[rows[0]:rows[1]]
        if info.dtype == "BF16":
            return (arr.astype(np.uint32) << 16).view(np.float32)
        if info.dtype in ("F16", "F64"):
            return arr.astype(np.float32)
        return arr

    def release(self) -> None:
        """Drop the pages read so far from this process's memory (see
        :class:`quantport.formats._io.ReadMap`); arrays from :meth:`get` must no longer be in
        use."""
        self._map.release()

    def __iter__(self) -> Iterator[str]:
        return iter(self.tensors)


def bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns (uint16), round to nearest even, NaN kept quiet.

    Matches ``torch.Tensor.to(torch.bfloat16)`` and gguf-py ``__compute_fp32_to_bf16``.
    """
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    nan = (u & 0x7FFFFFFF) > 0x7F800000
    rounded = ((u.astype(np.uint64) + (0x7FFF + ((u >> 16) & 1))) >> 16).astype(np.uint16)
    return np.where(nan, ((u >> 16) | 64).astype(np.uint16), rounded)


def encode_dense(a: np.ndarray, tag: str) -> np.ndarray:
    """``a`` in the stored form of dtype tag ``tag`` (little-endian; ``"BF16"`` as its bit
    patterns, rounded to nearest even by :func:`bf16_bits`). GGUF stores F32/F16/BF16 the
    same way."""
    return bf16_bits(a) if tag == "BF16" else np.ascontiguousarray(a, dtype=DTYPES[tag][0])


def encode_header(
    entries: Sequence[tuple[str, str, Sequence[int]]], metadata: Mapping[str, str]
) -> tuple[bytes, list[int]]:
    """The header of a file holding ``(name, dtype tag, shape)`` entries in this order, length
    prefix included, and each entry's data offset relative to the end of the header.

    Raises:
        FormatError: a dtype tag safetensors does not have.
    """
    header: dict[str, object] = {"__metadata__": dict(metadata)}
    offset, offsets = 0, []
    for name, tag, shape in entries:
        if tag not in DTYPES:
            raise FormatError(f"tensor {name!r}: dtype {tag} cannot be stored")
        nbytes = math.prod(int(d) for d in shape) * DTYPES[tag][1]
        header[name] = {"dtype": tag, "shape": [int(d) for d in shape],
                        "data_offsets": [offset, offset + nbytes]}
        offsets.append(offset)
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # keep the buffer 8-byte aligned, as the reference does
    return struct.pack("<Q", len(raw)) + raw, offsets


def write_safetensors(
    path: str | os.PathLike[str],
    tensors: Mapping[str, np.ndarray],
    *,
    metadata: Mapping[str, str] | None = None,
    dtypes: Mapping[str, str] | None = None,
) -> int:
    """Write tensors to a safetensors file atomically.

    Args:
        path: target file; written under a temporary name and renamed into place.
        tensors: arrays by name, written in this order.
        metadata: the ``__metadata__`` string map (``{"format": "pt"}`` by default).
        dtypes: optional per-tensor dtype tags overriding the array's own dtype; ``"BF16"``
            and ``"F16"`` convert float32 data on the fly.

    Returns:
        The number of bytes written.
    """
    dtypes = dict(dtypes or {})
    entries: list[tuple[str, str, Sequence[int]]] = []
    prepared: list[np.ndarray] = []
    for name, arr in tensors.items():
        tag = dtypes.get(name)
        a = np.asarray(arr)
        if tag is not None:
            data = encode_dense(a, tag)
        else:
            data = np.ascontiguousarray(a)
            if data.dtype.str not in _NP_TO_TAG and data.dtype != np.dtype("i1"):
                raise FormatError(f"tensor {name!r}: dtype {data.dtype} cannot be stored")
            tag = "I8" if data.dtype == np.dtype("i1") else _NP_TO_TAG[data.dtype.str]
        entries.append((name, tag, a.shape))
        prepared.append(data)
    head, _ = encode_header(entries, metadata or {"format": "pt"})
    with atomic_file(path) as tmp, open(tmp, "wb") as f:
        f.write(head)
        for data in prepared:
            f.write(data.tobytes())
    return len(head) + sum(d.nbytes for d in prepared)
