"""Read and write llama.cpp importance matrices (legacy ``.dat`` and GGUF ``imatrix`` files).

Sources: the llama.cpp copy vendored by llama-cpp-python 0.3.36 — ``tools/imatrix/imatrix.cpp``
(``save_imatrix_legacy``, ``save_imatrix``), ``common/imatrix-loader.cpp`` (``common_imatrix_load``)
and ``tools/quantize/quantize.cpp`` (``load_imatrix``).

Legacy ``.dat`` (all little-endian)::

    int32 n_entries (>= 1)
    n_entries x { int32 len; char name[len]; int32 ncall; int32 nval (>= 1); float32 values[nval] }
    optional: int32 chunk_count; int32 len; char dataset[len]

  ``values[i] = sum_x2[i] / count[matrix of i] * ncall`` where ``ncall`` is the number of chunks
  (``ceil(max count / chunk_size)``); columns with no data are written as ``1 * ncall``.

GGUF imatrix (``general.type = "imatrix"``): KV ``imatrix.datasets`` (string array),
``imatrix.chunk_count`` (u32), ``imatrix.chunk_size`` (u32); for every weight ``<name>`` two F32 tensors,
``<name>.in_sum2`` with ``ne = [n_per_row, n_mat]`` (raw sum of squared activations) and
``<name>.counts`` with ``ne = [1, n_mat]`` (number of activation rows per matrix / expert).

What llama-quantize hands to the quantizers (``load_imatrix`` in ``tools/quantize/quantize.cpp``),
and therefore what :attr:`ImatrixData.entries` holds after :func:`read_imatrix`:

* GGUF: ``in_sum2[j, i] / float(lround(counts[j]))`` in float32, or ``1.0`` where that count is 0;
* legacy: ``values[i] / float(ncall)`` in float32 (``values`` unchanged when ``ncall <= 0``).

Both are the per-column mean of squared input activations (per expert for 3-D weights), flattened to
``n_per_row * n_mat`` values.  These arrays can be passed unchanged to quantport's quantizers and to
``llama_model_quantize`` (``llama_model_quantize_params.imatrix``).  :func:`write_imatrix` stores them
back by multiplying by a count (GGUF) or ``ncall`` (legacy), so a round trip reproduces the values up to
float32 rounding of that multiply/divide (exactly when the count is a power of two).
"""

from __future__ import annotations

import math
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from quantport.errors import FormatError
from quantport.formats._atomic import _version, atomic_file

__all__ = ["ImatrixData", "check_imatrix", "read_imatrix", "write_imatrix"]

_GGUF_MAGIC = b"GGUF"
_KV_DATASETS = "imatrix.datasets"
_KV_CHUNK_COUNT = "imatrix.chunk_count"
_KV_CHUNK_SIZE = "imatrix.chunk_size"
_SUM_SUFFIX = ".in_sum2"
_COUNT_SUFFIX = ".counts"
_MAX_NAME = 1 << 16  # GGML_MAX_NAME is 64; anything this long is hostile


@dataclass
class ImatrixData:
    """An importance matrix as llama-quantize sees it.

    Attributes:
        entries: GGUF tensor name -> float32 1-D array of ``n_per_row * n_mat`` per-column means of
            squared activations (see the module docstring for how each format maps to it).
        datasets: names of the calibration data sets.
        chunk_count: number of chunks the matrix was computed on.
        chunk_size: tokens per chunk (``n_ctx / n_parallel``; 0 when unknown, as in legacy files).
        counts: optional GGUF tensor name -> int64 array of ``n_mat`` activation-row counts (read from
            GGUF files; used by :func:`write_imatrix` for the GGUF format; ``None`` if unknown).
    """

    entries: dict[str, np.ndarray]
    datasets: list[str] = field(default_factory=list)
    chunk_count: int = 0
    chunk_size: int = 0
    counts: dict[str, np.ndarray] | None = None


# --------------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------------


class _Buf:
    """Bounds-checked little-endian reader over an in-memory file."""

    def __init__(self, data: bytes | memoryview, path: str) -> None:
        self.data = memoryview(data)
        self.pos = 0
        self.path = path

    @property
    def left(self) -> int:
        return len(self.data) - self.pos

    def fail(self, what: str) -> FormatError:
        return FormatError(f"{self.path}: {what} at byte {self.pos}; the imatrix file is truncated or corrupt")

    def take(self, n: int, what: str) -> memoryview:
        if n < 0 or n > self.left:
            raise self.fail(f"{what} needs {n} bytes but only {self.left} remain")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: str, what: str) -> int:
        size = struct.calcsize(fmt)
        return struct.unpack(fmt, self.take(size, what))[0]  # type: ignore[no-any-return]

    def text(self, n: int, what: str) -> str:
        raw = bytes(self.take(n, what))
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail(f"{what} is not valid UTF-8") from None

    def floats(self, n: int, what: str) -> np.ndarray:
        if n < 0 or n > self.left // 4:
            raise self.fail(f"{what} claims {n} float32 values but only {self.left} bytes remain")
        return np.frombuffer(self.take(4 * n, what), dtype="<f4").astype(np.float32)


def _finite(arr: np.ndarray, path: str, what: str) -> None:
    if not np.all(np.isfinite(arr)):
        bad = int(np.flatnonzero(~np.isfinite(arr))[0])
        raise FormatError(
            f"{path}: {what} has a non-finite value ({arr.reshape(-1)[bad]}) at index {bad}; "
            "llama-quantize refuses such imatrix data, recompute it"
        )


def _read_dat(buf: _Buf) -> ImatrixData:
    # common_imatrix_load_legacy() + the legacy branch of load_imatrix() in tools/quantize/quantize.cpp
    n_entries = buf.unpack("<i", "entry count")
    if n_entries < 1:
        raise buf.fail(f"entry count {n_entries} is not positive")
    if n_entries > buf.left // 12:  # each entry has at least len + ncall + nval
        raise buf.fail(f"entry count {n_entries} is larger than the file can hold")
    entries: dict[str, np.ndarray] = {}
    for i in range(n_entries):
        length = buf.unpack("<i", f"name length of entry {i}")
        if length < 0 or length > _MAX_NAME:
            raise buf.fail(f"name length {length} of entry {i} is invalid")
        name = buf.text(length, f"name of entry {i}")
        ncall = buf.unpack("<i", f"ncall of {name!r}")
        nval = buf.unpack("<i", f"value count of {name!r}")
        if ncall < 0:
            raise buf.fail(f"ncall {ncall} of {name!r} is negative")
        if nval < 1:
            raise buf.fail(f"value count {nval} of {name!r} is not positive")
        values = buf.floats(nval, f"values of {name!r}")
        _finite(values, buf.path, f"entry {name!r}")
        if name in entries:
            raise buf.fail(f"entry {name!r} appears twice")
        # load_imatrix(): "Legacy format: sums contain (raw/count)*ncall, divide by ncall" (float32 divide)
        entries[name] = values / np.float32(ncall) if ncall > 0 else values
    chunk_count = 0
    datasets: list[str] = []
    if buf.left:
        # "the trailing data (chunk count + dataset name) is optional"
        chunk_count = buf.unpack("<i", "chunk count")
        if chunk_count < 0:
            raise buf.fail(f"chunk count {chunk_count} is negative")
        if buf.left:
            length = buf.unpack("<i", "dataset name length")
            if length < 0 or length > buf.left:
                raise buf.fail(f"dataset name length {length} is invalid")
            if length:
                datasets.append(buf.text(length, "dataset name"))
        if buf.left:
            raise buf.fail(f"{buf.left} unexpected trailing bytes")
    return ImatrixData(entries=entries, datasets=datasets, chunk_count=chunk_count, chunk_size=0)


# GGUF value types (ggml/include/gguf.h enum gguf_type): fmt for fixed-size scalars.
_GGUF_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_GGUF_STRING, _GGUF_ARRAY = 8, 9
_GGML_F32 = 0


def _gguf_string(buf: _Buf, what: str) -> str:
    n = buf.unpack("<Q", f"length of {what}")
    if n > buf.left:
        raise buf.fail(f"{what} claims {n} bytes but only {buf.left} remain")
    return buf.text(n, what)


def _gguf_value(buf: _Buf, vtype: int, key: str, depth: int = 0) -> object:
    if vtype in _GGUF_SCALARS:
        return buf.unpack(_GGUF_SCALARS[vtype], f"value of {key!r}")
    if vtype == _GGUF_STRING:
        return _gguf_string(buf, f"value of {key!r}")
    if vtype == _GGUF_ARRAY:
        if depth > 0:
            raise buf.fail(f"key {key!r} holds a nested array")
        etype = buf.unpack("<I", f"array type of {key!r}")
        n = buf.unpack("<Q", f"array length of {key!r}")
        min_size = struct.calcsize(_GGUF_SCALARS[etype]) if etype in _GGUF_SCALARS else 8
        if etype not in _GGUF_SCALARS and etype != _GGUF_STRING:
            raise buf.fail(f"array {key!r} has unsupported element type {etype}")
        if n > buf.left // min_size:
            raise buf.fail(f"array {key!r} claims {n} elements, more than the file can hold")
        return [_gguf_value(buf, etype, key, depth + 1) for _ in range(n)]
    raise buf.fail(f"key {key!r} has unknown value type {vtype}")


def _other_nbytes(path: str, name: str, ne: tuple[int, ...], ttype: int) -> int:
    import gguf  # only needed for files that carry non-imatrix tensors of other types

    try:
        block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(ttype)]
    except (ValueError, KeyError):
        raise FormatError(f"{path}: tensor {name!r} has unknown GGML type {ttype}; the file is corrupt") from None
    return math.prod(ne) // block * size


def _read_gguf(buf: _Buf) -> ImatrixData:
    # A strict, bounds-checked version of gguf_init_from_file() for imatrix files, then
    # common_imatrix_load() + the GGUF branch of load_imatrix() in tools/quantize/quantize.cpp.
    buf.take(4, "magic")
    version = buf.unpack("<I", "GGUF version")
    if version not in (2, 3):
        raise buf.fail(f"GGUF version {version} is not supported (need 2 or 3, little-endian)")
    n_tensors = buf.unpack("<Q", "tensor count")
    n_kv = buf.unpack("<Q", "KV count")
    if n_kv > buf.left // 12:
        raise buf.fail(f"KV count {n_kv} is larger than the file can hold")
    if n_tensors > buf.left // 24:
        raise buf.fail(f"tensor count {n_tensors} is larger than the file can hold")
    kv: dict[str, object] = {}
    kv_types: dict[str, tuple[int, int | None]] = {}
    for _ in range(n_kv):
        key = _gguf_string(buf, "KV key")
        vtype = buf.unpack("<I", f"type of {key!r}")
        pos = buf.pos
        kv[key] = _gguf_value(buf, vtype, key)
        etype = struct.unpack_from("<I", buf.data, pos)[0] if vtype == _GGUF_ARRAY else None
        kv_types[key] = (vtype, etype)
    alignment = kv.get("general.alignment", 32)
    if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
        raise buf.fail(f"general.alignment {alignment!r} is not a power of two")
    infos: list[tuple[str, tuple[int, ...], int, int]] = []
    for _ in range(n_tensors):
        name = _gguf_string(buf, "tensor name")
        n_dims = buf.unpack("<I", f"dimension count of {name!r}")
        if not 1 <= n_dims <= 4:
            raise buf.fail(f"tensor {name!r} has {n_dims} dimensions (1..4 allowed)")
        ne = tuple(buf.unpack("<q", f"shape of {name!r}") for _ in range(n_dims))
        if any(d < 0 for d in ne):
            raise buf.fail(f"tensor {name!r} has a negative dimension {ne}")
        if 0 in ne and math.prod(max(d, 1) for d in ne) > len(buf.data) * 256:
            # an empty tensor whose other dimensions overflow: numpy cannot even shape it
            raise buf.fail(f"empty tensor {name!r} of shape {ne} is larger than the file can hold")
        ttype = buf.unpack("<I", f"type of {name!r}")
        offset = buf.unpack("<Q", f"offset of {name!r}")
        infos.append((name, ne, ttype, offset))
    data_start = -(-buf.pos // alignment) * alignment
    file_size = len(buf.data)
    # gguf_init_from_file_impl(): every tensor sits at the running offset of the padded sizes before it,
    # and the whole (padded) data section must be present in the file.
    expected_offset = 0
    for name, ne, ttype, offset in infos:
        if offset != expected_offset:
            raise FormatError(
                f"{buf.path}: tensor {name!r} has data offset {offset}, expected {expected_offset}; the file is corrupt"
            )
        if ttype == _GGML_F32:
            nbytes = 4 * math.prod(ne)
        elif name.endswith((_SUM_SUFFIX, _COUNT_SUFFIX)):
            break  # refused below: must be F32
        else:
            nbytes = _other_nbytes(buf.path, name, ne, ttype)
        if nbytes > file_size:
            break  # reported below as running past the end
        expected_offset += -(-nbytes // alignment) * alignment
    else:
        if data_start + expected_offset > file_size:
            raise FormatError(
                f"{buf.path}: tensor data needs {data_start + expected_offset} bytes but the file has {file_size}; "
                "the imatrix file is truncated"
            )

    tensors: dict[str, np.ndarray] = {}
    for name, ne, ttype, offset in infos:
        if not (name.endswith(_SUM_SUFFIX) or name.endswith(_COUNT_SUFFIX)):
            continue  # common_imatrix_load() ignores other tensors
        if ttype != _GGML_F32:
            raise FormatError(f"{buf.path}: tensor {name!r} has GGML type {ttype}, must be F32; recompute the imatrix")
        n = math.prod(ne)
        start = data_start + offset
        if n > (file_size - min(start, file_size)) // 4:
            raise FormatError(
                f"{buf.path}: tensor {name!r} ({n} floats at byte {start}) runs past the end of the "
                f"{file_size}-byte file; the imatrix file is truncated or corrupt"
            )
        if name in tensors:
            raise FormatError(f"{buf.path}: tensor {name!r} appears twice; the imatrix file is corrupt")
        arr = np.frombuffer(buf.data[start : start + 4 * n], dtype="<f4").astype(np.float32)
        tensors[name] = arr.reshape(tuple(reversed(ne)))

    pairs: dict[str, list[np.ndarray | None]] = {}
    for tname, arr in tensors.items():
        if tname.endswith(_SUM_SUFFIX):
            pairs.setdefault(tname[: -len(_SUM_SUFFIX)], [None, None])[0] = arr
        else:
            pairs.setdefault(tname[: -len(_COUNT_SUFFIX)], [None, None])[1] = arr
    if not pairs:
        raise FormatError(f"{buf.path}: GGUF file has no '<name>.in_sum2'/'<name>.counts' tensors; it is not an imatrix")

    # load_imatrix(): "missing imatrix metadata" is fatal for the GGUF format
    for key, want in ((_KV_DATASETS, (_GGUF_ARRAY, _GGUF_STRING)), (_KV_CHUNK_COUNT, (4, None)), (_KV_CHUNK_SIZE, (4, None))):
        if key not in kv:
            raise FormatError(f"{buf.path}: missing imatrix metadata key {key!r}; llama-quantize refuses such files")
        if kv_types[key] != want:
            raise FormatError(f"{buf.path}: imatrix key {key!r} has GGUF type {kv_types[key]}, expected {want}")

    entries: dict[str, np.ndarray] = {}
    counts_out: dict[str, np.ndarray] = {}
    for name in sorted(pairs):
        sums, counts = pairs[name]
        if sums is None or counts is None:
            raise FormatError(f"{buf.path}: {name!r} has {'no .counts' if counts is None else 'no .in_sum2'} tensor; mismatched sums and counts")
        sums = sums.reshape(-1)
        counts = counts.reshape(-1)
        if counts.size < 1 or sums.size < 1 or sums.size % counts.size:
            raise FormatError(f"{buf.path}: {name!r} has {sums.size} sums for {counts.size} counts; sizes do not divide")
        _finite(sums, buf.path, f"{name + _SUM_SUFFIX!r}")
        _finite(counts, buf.path, f"{name + _COUNT_SUFFIX!r}")
        if np.any(counts < 0) or np.any(counts > 2.0**62):
            raise FormatError(f"{buf.path}: {name + _COUNT_SUFFIX!r} holds a negative or absurd count; recompute the imatrix")
        # std::lround: round half away from zero
        icounts = np.floor(counts.astype(np.float64) + 0.5).astype(np.int64)
        fcounts = icounts.astype(np.float32)
        per = sums.reshape(counts.size, -1)
        with np.errstate(divide="ignore", invalid="ignore"):
            vals = np.where(fcounts[:, None] > 0, per / np.where(fcounts > 0, fcounts, 1)[:, None], np.float32(1.0))
        entries[name] = vals.astype(np.float32).reshape(-1)
        counts_out[name] = icounts
    datasets = kv[_KV_DATASETS]
    if not isinstance(datasets, list):
        raise FormatError(f"{buf.path}: {_KV_DATASETS} must be an array of strings")
    return ImatrixData(
        entries=entries,
        datasets=[str(d) for d in datasets],
        chunk_count=int(kv[_KV_CHUNK_COUNT]),  # type: ignore[call-overload]
        chunk_size=int(kv[_KV_CHUNK_SIZE]),  # type: ignore[call-overload]
        counts=counts_out,
    )


def read_imatrix(path: str | os.PathLike[str]) -> ImatrixData:
    """Read a llama.cpp importance matrix; GGUF and legacy ``.dat`` are told apart by the magic.

    Args:
        path: the imatrix file.

    Returns:
        The values llama-quantize's ``load_imatrix`` would hand to the quantizers.

    Raises:
        FormatError: the file is missing, truncated, hostile (sizes beyond the file, negative counts)
            or holds NaN/inf values.
    """
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise FormatError(f"{p}: cannot read imatrix file ({exc.strerror}); check the path") from None
    buf = _Buf(raw, str(p))
    if raw[:4] == _GGUF_MAGIC:
        return _read_gguf(buf)
    return _read_dat(buf)


# --------------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------------


def _validated(data: ImatrixData) -> list[tuple[str, np.ndarray]]:
    if not data.entries:
        raise FormatError("write_imatrix: ImatrixData has no entries; nothing to write")
    out = []
    for name in sorted(data.entries):  # "deterministic tensor name order"
        v = np.asarray(data.entries[name], dtype=np.float32).reshape(-1)
        if v.size == 0:
            raise FormatError(f"write_imatrix: entry {name!r} is empty; drop it or fill it")
        _finite(v, "write_imatrix", f"entry {name!r}")
        out.append((name, v))
    return out


def _atomic_write(path: Path, payload: bytes) -> None:
    # the artifacts' own temporary-then-rename (a plain open()'s permissions, not mkstemp's 0600)
    with atomic_file(path) as tmp, open(tmp, "wb") as f:
        f.write(payload)
        f.flush()
        os.fsync(f.fileno())


def _default_count(data: ImatrixData) -> int:
    return data.chunk_count * data.chunk_size if data.chunk_count > 0 and data.chunk_size > 0 else 1


def _dat_bytes(data: ImatrixData) -> bytes:
    # save_imatrix_legacy(): values are stored as mean * ncall, loader divides by ncall.
    parts = [struct.pack("<i", len(data.entries))]
    default_ncall = data.chunk_count if data.chunk_count > 0 else 1
    for name, v in _validated(data):
        ncall = default_ncall
        if data.counts is not None and name in data.counts and data.chunk_size > 0:
            # "ceiling division to avoid accidental zeros"
            ncall = max(1, (int(np.max(data.counts[name])) + data.chunk_size - 1) // data.chunk_size)
        raw = name.encode("utf-8")
        stored = (v * np.float32(ncall)).astype("<f4")
        parts += [struct.pack("<i", len(raw)), raw, struct.pack("<ii", ncall, v.size), stored.tobytes()]
    dataset = data.datasets[-1].encode("utf-8") if data.datasets else b""
    parts += [struct.pack("<i", data.chunk_count), struct.pack("<i", len(dataset)), dataset]
    return b"".join(parts)


def _gguf_str(s: str) -> bytes:
    raw = s.encode("utf-8")
    return struct.pack("<Q", len(raw)) + raw


def _gguf_bytes(data: ImatrixData) -> bytes:
    # save_imatrix(): general.type + imatrix.* KV, then for every entry (sorted by name)
    # <name>.in_sum2 with ne = [n_per_row, n_mat] and <name>.counts with ne = [1, n_mat], both F32,
    # written as gguf_write_to_file() does (GGUF v3, 32-byte alignment, no general.architecture).
    # Hand-written because gguf-py's GGUFWriter refuses an empty imatrix.datasets array.
    alignment = 32
    kvs = [
        _gguf_str("general.type") + struct.pack("<I", _GGUF_STRING) + _gguf_str("imatrix"),
        _gguf_str(_KV_DATASETS)
        + struct.pack("<IIQ", _GGUF_ARRAY, _GGUF_STRING, len(data.datasets))
        + b"".join(_gguf_str(str(d)) for d in data.datasets),
        _gguf_str(_KV_CHUNK_COUNT) + struct.pack("<II", 4, int(data.chunk_count)),
        _gguf_str(_KV_CHUNK_SIZE) + struct.pack("<II", 4, int(data.chunk_size)),
        # quantport's mark, as on its model GGUFs: --force may replace a file that has it
        # (formats/_atomic.check_output); llama.cpp's loader reads only the keys above
        _gguf_str("quantport.version") + struct.pack("<I", _GGUF_STRING)
        + _gguf_str(_version()),
    ]
    tensors: list[tuple[str, tuple[int, int], np.ndarray]] = []
    for name, v in _validated(data):
        if data.counts is not None and name in data.counts:
            counts = np.asarray(data.counts[name], dtype=np.int64).reshape(-1)
            if counts.size < 1 or v.size % counts.size or np.any(counts < 0):
                raise FormatError(
                    f"write_imatrix: counts of {name!r} ({counts.size} values) do not fit its {v.size} values"
                )
        else:
            counts = np.full(1, _default_count(data), dtype=np.int64)
        per = v.reshape(counts.size, -1).astype(np.float64)
        sums = (per * counts[:, None].astype(np.float64)).astype("<f4")
        tensors.append((f"{name}{_SUM_SUFFIX}", (per.shape[1], counts.size), sums))
        tensors.append((f"{name}{_COUNT_SUFFIX}", (1, counts.size), counts.astype("<f4")))
    infos, blobs, offset = [], [], 0
    for tname, ne, arr in tensors:
        infos.append(_gguf_str(tname) + struct.pack("<I", len(ne)) + struct.pack(f"<{len(ne)}q", *ne)
                     + struct.pack("<IQ", _GGML_F32, offset))
        raw = arr.tobytes()
        pad = -len(raw) % alignment
        blobs.append(raw + b"\0" * pad)
        offset += len(raw) + pad
    head = _GGUF_MAGIC + struct.pack("<IQQ", 3, len(tensors), len(kvs)) + b"".join(kvs) + b"".join(infos)
    head += b"\0" * (-len(head) % alignment)
    return head + b"".join(blobs)


def write_imatrix(path: str | os.PathLike[str], data: ImatrixData, *, format: str = "gguf") -> None:  # noqa: A002
    """Write an importance matrix atomically (temporary file in the same directory + ``os.replace``).

    Args:
        path: destination.
        data: the matrix; ``entries`` are means (see the module docstring).
        format: ``"gguf"`` (llama-imatrix's default) or ``"dat"`` (legacy).

    Raises:
        FormatError: unknown format, empty or non-finite entries, or counts that do not fit.
    """
    p = Path(path)
    if format == "dat":
        _atomic_write(p, _dat_bytes(data))
    elif format == "gguf":
        _atomic_write(p, _gguf_bytes(data))
    else:
        raise FormatError(f"write_imatrix: unknown format {format!r} for {p}; use 'gguf' or 'dat'")


def check_imatrix(data: ImatrixData, expected: Mapping[str, int], *, require_all: bool = False) -> None:
    """Check an importance matrix against the tensors it will be applied to.

    llama-quantize aborts when an entry's length differs from ``ne[0] * n_expert`` of its tensor and
    quantizes tensors without an entry without an imatrix; this check is stricter in that entries
    naming no expected tensor (an imatrix of another model) are errors too.

    Args:
        data: the matrix.
        expected: tensor name -> expected entry length (``ne[0] * n_expert``).
        require_all: also fail when an expected tensor has no entry.

    Raises:
        FormatError: naming the first (sorted by name) offending tensor and the widths involved.
    """
    for name in sorted(data.entries):
        if name not in expected:
            raise FormatError(
                f"imatrix entry {name!r} matches no tensor of the model; use the imatrix computed for this model"
            )
        got = int(np.asarray(data.entries[name]).size)
        if got != int(expected[name]):
            raise FormatError(
                f"imatrix entry {name!r} has {got} values but the tensor needs {int(expected[name])}; "
                "use the imatrix computed for this model"
            )
    if require_all:
        for name in expected:
            if name not in data.entries:
                raise FormatError(f"imatrix has no entry for tensor {name!r}; recompute it on this model")
