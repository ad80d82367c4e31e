"""How one weight is stored in an ONNX graph: its initializers (names, element types, shapes,
bytes) and the packing of an IR record (or a float array) into them.

Three storage kinds, chosen per tensor by the ONNX writer (:mod:`quantport.writers.onnx`):

* ``dense``: one float initializer named after the Hugging Face tensor. A Linear weight is
  stored transposed (``[in, out]``, ONNX MatMul's ``B``); anything else as is.
* ``qdq``: an opset-21 ``DequantizeLinear`` feeding ``MatMul``, the pattern ORT's CPU optimizer
  fuses into ``MatMulNBits`` (``DQMatMulNodeGroupSelector`` in ORT's ``qdq_selectors.cc``:
  weight, scale and zero point constant, weight rank 2, blocks along axis 0 with a power-of-two
  ``block_size >= 16``, or per-channel ``axis=1``, or per-tensor). ``NAME_q`` holds the signed
  int4/int8 codes transposed to ``[K, N]``, ``NAME_scale`` and ``NAME_zp`` (explicit zeros
  for symmetric schemes: DQ's default zero point is 0, MatMulNBits' is ``2**(bits-1)``).
* ``nbits``: ``com.microsoft`` ``MatMulNBits`` / ``GatherBlockQuantized`` layout (ORT
  ``docs/ContribOperators.md``): ``NAME_q`` uint8 ``[N, k_blocks, block*bits/8]`` with unsigned
  codes packed low bits first along K, ``NAME_scale`` float ``[N, k_blocks]`` and, for
  asymmetric schemes, ``NAME_zp`` uint8 ``[N, ceil(k_blocks*bits/8)]`` packed the same way. A
  per-channel or per-tensor scheme is written with the largest power-of-two block that
  divides K and its scale repeated per block: the same values, in the block shape the kernels
  take.

GGUF records are copied, not re-rounded (:data:`GGML_COPY`): Q4_0 and Q8_0 are symmetric
blocks of 32 (int4 / int8 codes, one scale), written as the scheme ``w4-g32-sym`` /
``w8-g32-sym`` is. Q4_1's float-domain minimum (``x = d*q + m``, IR ``q*s - z``) is written as
``MatMulNBits`` with zero points 0 plus a block-sum correction, ``y = MatMulNBits(x) -
blocksum(x) @ NAME_min`` with ``NAME_min`` = z ``[k_blocks, N]``: exact arithmetic on ORT's
prepacked integer kernel. (MatMulNBits' own float zero points would also express it, but
``(q - zp) * d`` needs ``zp = -m/d``, which float rounding makes inexact, and ORT's CPU kernel
falls back to dequantizing all of B for float zero points: ``matmul_nbits.cc``, "Falling back
to using unpacked compute mode"; ORT issue #28162.)

4-bit ONNX packing (``docs/docsgen/source/technical/int4.md`` in onnx/onnx): two elements per
byte, the first in the low nibble. This module imports only numpy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from quantport.errors import UnsupportedQuantError
from quantport.ir import QuantizedTensor, ZeroPointDomain, code_range
from quantport.quant.scheme import IntScheme

__all__ = ["GGML_COPY", "Fused", "Init", "Place", "fuse", "Storage", "element_bytes", "nbits_block", "pack", "pack_bits",
           "row_chunks", "storage_for", "unpack_bits"]

#: ONNX element types quantport writes, and their bits per element
_BITS = {"float32": 32, "float16": 16, "bfloat16": 16, "int8": 8, "uint8": 8, "int4": 4,
         "uint4": 4, "int32": 32, "int64": 64}
_DENSE = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}


#: ggml types whose records a GGUF source hands over as they are: type -> (bits, symmetric)
GGML_COPY = {"Q4_0": (4, True), "Q8_0": (8, True), "Q4_1": (4, False)}


def element_bytes(dtype: str, n: int) -> int:
    """Bytes of ``n`` elements of ONNX type ``dtype`` (4-bit types pack two per byte)."""
    return (n * _BITS[dtype] + 7) // 8


@dataclass(frozen=True)
class Init:
    """One initializer: ``name``, ONNX element type (``"float32"``, ``"int4"``, ...), shape."""

    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        """Bytes in the external data file."""
        return element_bytes(self.dtype, math.prod(self.shape))


@dataclass(frozen=True)
class Storage:
    """How one Hugging Face tensor is stored.

    Attributes:
        name: the Hugging Face name.
        shape: its Hugging Face shape (``[out, in]`` for Linear weights).
        kind: ``"dense"``, ``"qdq"`` or ``"nbits"``.
        inits: the initializers, in file order.
        transposed: a dense Linear weight stored ``[in, out]``.
        bits, block_size, axis: quantized kinds: code width, block along K (``nbits``, and
            ``qdq`` with ``axis == 0``), DQ axis (``qdq``: 0 blocked, 1 per channel, -1 per
            tensor).
        symmetric: no zero point in the record (``nbits`` then writes none).
    """

    name: str
    shape: tuple[int, ...]
    kind: str
    inits: tuple[Init, ...]
    transposed: bool = False
    bits: int = 0
    block_size: int = 0
    axis: int = 0
    symmetric: bool = True
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def nbytes(self) -> int:
        """Bytes of all its initializers."""
        return sum(i.nbytes for i in self.inits)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description (recorded in the graph's metadata for readers): the fields
        that differ from :data:`STORAGE_DEFAULTS` (the table is part of the graph's size);
        :func:`storage_entry` reads it back."""
        full = {"places": {k: [p.fused, p.axis, p.start, p.n]
                           for k, p in self.extra.get("places", {}).items()},
                "kind": self.kind, "shape": list(self.shape), "transposed": self.transposed,
                "bits": self.bits, "block_size": self.block_size, "axis": self.axis,
                "symmetric": self.symmetric, "inits": [i.name for i in self.inits],
                "fmin": bool(self.extra.get("fmin"))}
        defaults = {**STORAGE_DEFAULTS, "inits": [self.name]}
        return {k: v for k, v in full.items() if k not in defaults or v != defaults[k]}


#: the values a :meth:`Storage.to_dict` entry leaves out (``inits`` defaults to the tensor's
#: own name)
STORAGE_DEFAULTS: dict[str, Any] = {"places": {}, "transposed": False, "bits": 0,
                                    "block_size": 0, "axis": 0, "symmetric": True,
                                    "fmin": False}


def storage_entry(name: str, entry: dict[str, Any]) -> dict[str, Any]:
    """One ``quantport_tensors`` entry with the fields :meth:`Storage.to_dict` left out."""
    return {**STORAGE_DEFAULTS, "inits": [name], **entry}


@dataclass(frozen=True)
class Place:
    """Where one initializer's elements lie inside a fused one: along ``axis`` (0: leading
    rows, contiguous bytes; 1: columns of a 2-D array, one byte range per row), ``n``
    elements from ``start``."""

    fused: str
    axis: int
    start: int
    n: int


@dataclass(frozen=True)
class Fused:
    """Several Linear weights that read the same input, stored as one initializer set so that
    one MatMul computes them all (q/k/v as onnxruntime-genai's ``qkv_proj``).

    Attributes:
        storage: the fused weight, as if it were one ``[sum(out), in]`` tensor.
        places: member initializer name -> where it lies in the fused initializers.
    """

    storage: Storage
    places: dict[str, Place]


def behind_conversion(name: str, producers: dict[str, Any], known: Any) -> str:
    """The value ``name`` traced back to a name in ``known`` (initializers) through the
    conversion quantport's W8A8 graphs put between a stored int8 initializer and
    MatMulInteger (Cast to int16, Add 128, Cast to uint8: ``onnx_graph._Builder._to_u8``);
    ``producers`` maps each node output to its node. ``name`` itself where no such chain
    leads to ``known``'s names."""
    start, steps = name, 0
    while name not in known and name in producers and steps < 4:
        p = producers[name]
        if p.op_type not in ("Cast", "Add") or not p.input:
            break
        name, steps = p.input[0], steps + 1
    return name if name in known else start


def _concat_axis(kind: str, init: Init, axis: int) -> int:
    """The axis along which output channels lie in an initializer of ``kind``."""
    if kind == "nbits" or len(init.shape) == 1:
        return 0
    return 1  # [K, N] weights, [K/block, N] scales and zero points (qdq, dense transposed)


def fuse(name: str, members: list[Storage]) -> Fused | None:
    """``members`` stored as one weight named ``name``, or None where they cannot be (other
    kinds, bits, blocks or widths; per-tensor parameters; float minimums; a 4-bit column
    boundary inside a byte)."""
    first = members[0]
    sig = {(m.kind, m.bits, m.block_size, m.axis, m.symmetric, m.shape[1], m.transposed,
            tuple(i.dtype for i in m.inits), bool(m.extra.get("fmin"))) for m in members}
    if len(sig) != 1 or first.extra.get("fmin") or (first.kind == "qdq" and first.axis == -1):
        return None
    if first.kind == "dense" and not first.transposed:
        return None
    total = sum(m.shape[0] for m in members)
    inits: list[Init] = []
    places: dict[str, Place] = {}
    suffixes = [i.name[len(first.name):] for i in first.inits]
    for j, suffix in enumerate(suffixes):
        spec = first.inits[j]
        axis = _concat_axis(first.kind, spec, 0)
        shape = list(spec.shape)
        shape[axis] = total
        fused = Init(name + suffix, spec.dtype, tuple(shape))
        start = 0
        for m in members:
            n = m.inits[j].shape[axis]
            if _BITS[spec.dtype] == 4 and (start % 2 or (axis == 1 and total % 2)):
                return None
            places[m.inits[j].name] = Place(fused.name, axis, start, n)
            start += n
        inits.append(fused)
    st = Storage(name, (total, first.shape[1]), first.kind, tuple(inits),
                 transposed=first.transposed, bits=first.bits, block_size=first.block_size,
                 axis=first.axis, symmetric=first.symmetric)
    return Fused(st, places)


def nbits_block(scheme: IntScheme, k: int) -> int | None:
    """The MatMulNBits block size a scheme is written with for input width ``k``, or None.

    Groups: the group itself if a power of two >= 16 (MatMulNBits' ``block_size`` rule).
    Channel / tensor: the largest power of two in [16, 256] dividing ``k`` (scales repeat).
    """
    if scheme.granularity == "group":
        g = int(scheme.group_size or 0)
        return g if g >= 16 and g & (g - 1) == 0 and k % g == 0 else None
    for b in (256, 128, 64, 32, 16):
        if k % b == 0:
            return b
    return None


def _refuse(name: str, scheme: IntScheme, why: str) -> UnsupportedQuantError:
    return UnsupportedQuantError(
        f"tensor {name}: {scheme} cannot be written to ONNX ({why}); schemes that export: "
        "w4-g32|g64|g128-sym|asym, w8-channel-sym|asym, w8-g32|g64|g128-sym|asym, f16, f32"
    )


def storage_for(name: str, shape: tuple[int, ...], target: Any, role: str,
                mode: str = "qdq") -> Storage:
    """The storage of one tensor.

    Args:
        name: Hugging Face name.
        shape: Hugging Face shape.
        target: ``"F32"``/``"F16"``/``"BF16"`` or an :class:`IntScheme`.
        role: ``"linear"`` (a MatMul weight), ``"embed"`` (a gathered table, possibly also
            the tied LM head) or ``"other"`` (norms, biases, position tables).
        mode: ``"qdq"`` or ``"nbits"``: how quantized Linear weights are written.

    Raises:
        UnsupportedQuantError: a scheme the graph cannot express for this tensor, naming the
            schemes that export.
    """
    if isinstance(target, str) and target in GGML_COPY:
        return _ggml_storage(name, shape, target, role, mode)
    if isinstance(target, str):
        dtype = _DENSE[target]
        if role == "linear":
            return Storage(name, shape, "dense", (Init(name, dtype, (shape[1], shape[0])),),
                           transposed=True)
        return Storage(name, shape, "dense", (Init(name, dtype, tuple(shape)),))
    s: IntScheme = target
    if role == "other" or len(shape) != 2:
        raise UnsupportedQuantError(
            f"tensor {name}: ONNX quantizes Linear weights and the token embedding only; keep "
            "it float (e.g. --tensor-type 'NAME=f16')"
        )
    n, k = shape
    if role == "linear" and mode == "qdq":
        if s.bits not in (4, 7, 8):
            raise _refuse(name, s, f"DequantizeLinear-21 has 4- and 8-bit integers, not {s.bits}")
        # 7-bit codes sit in int8 (ORT's reduce_range, what W8A8 writes: see recipe.py)
        dt = "int4" if s.bits == 4 else "int8"
        if s.granularity == "group":
            g = int(s.group_size or 0)
            if g < 16 or g & (g - 1):
                raise _refuse(name, s, f"ORT fuses DequantizeLinear blocks of a power of two "
                                       f">= 16 into MatMulNBits, not {g}")
            ps: tuple[int, ...] = (k // g, n)
            axis, block = 0, g
        elif s.granularity == "channel":
            ps, axis, block = (n,), 1, 0
        else:
            ps, axis, block = (), -1, 0
        inits = (Init(f"{name}_q", dt, (k, n)), Init(f"{name}_scale", "float32", ps),
                 Init(f"{name}_zp", dt, ps))
        return Storage(name, shape, "qdq", inits, bits=s.bits, block_size=block, axis=axis,
                       symmetric=s.symmetric)
    if s.bits not in (2, 4, 8):  # MatMulNBits' and GatherBlockQuantized's CPU kernels
        op = "GatherBlockQuantized" if role == "embed" else "MatMulNBits"
        raise _refuse(name, s, f"{op} takes 2/4/8-bit codes")
    block = nbits_block(s, k)
    if block is None:
        raise _refuse(name, s, f"MatMulNBits needs a power-of-two block >= 16 dividing the "
                               f"input width {k}")
    kb = k // block
    inits_l = [Init(f"{name}_q", "uint8", (n, kb, block * s.bits // 8)),
               Init(f"{name}_scale", "float32", (n, kb))]
    if not s.symmetric:
        inits_l.append(Init(f"{name}_zp", "uint8", (n, (kb * s.bits + 7) // 8)))
    return Storage(name, shape, "nbits", tuple(inits_l), bits=s.bits, block_size=block,
                   symmetric=s.symmetric)


def row_chunks(st: Storage, target: Any) -> bool:
    """Whether ``st`` may be written in row ranges: every initializer then starts with the
    output rows (a dense table or vector stored as is; the ``nbits`` layout), and the
    parameters are per row (not one per tensor)."""
    if st.kind == "dense":
        return not st.transposed
    return st.kind == "nbits" and not st.extra.get("fmin") and isinstance(target, IntScheme) and getattr(target, "granularity", "") != "tensor"


def _ggml_storage(name: str, shape: tuple[int, ...], ggml: str, role: str,
                  mode: str) -> Storage:
    bits, sym = GGML_COPY[ggml]
    if sym:  # the same values as the 32-block symmetric scheme
        return storage_for(name, shape, IntScheme(bits, "group", 32, True), role, mode)
    if role != "linear" or len(shape) != 2:
        raise UnsupportedQuantError(
            f"tensor {name}: {ggml} (float-domain minimums) is exported for Linear weights only; "
            f"re-quantize with --quant w4-g32-asym or --tensor-type '{name}=w8-channel-sym'"
        )
    n, k = shape
    kb = k // 32
    inits = (Init(f"{name}_q", "uint8", (n, kb, 16)), Init(f"{name}_scale", "float32", (n, kb)),
             Init(f"{name}_zp", "uint8", (n, (kb + 1) // 2)),
             Init(f"{name}_min", "float32", (kb, n)))
    return Storage(name, shape, "nbits", inits, bits=4, block_size=32, symmetric=False,
                   extra={"fmin": True})


# ----------------------------------------------------------------------------------- packing

def pack_bits(codes: np.ndarray, bits: int) -> np.ndarray:
    """Unsigned ``bits``-wide codes packed along the last axis, lowest bits first (ONNX int4,
    MatMulNBits ``B`` and packed zero points); the last axis is zero-padded to whole bytes."""
    c = np.asarray(codes).astype(np.uint8) & ((1 << bits) - 1)
    if bits == 8:
        return c
    per = 8 // bits
    pad = (-c.shape[-1]) % per
    if pad:
        c = np.concatenate([c, np.zeros((*c.shape[:-1], pad), np.uint8)], axis=-1)
    c = c.reshape(*c.shape[:-1], -1, per)
    out = np.zeros(c.shape[:-1], np.uint8)
    for j in range(per):
        out |= c[..., j] << (j * bits)
    return out


def unpack_bits(packed: np.ndarray, bits: int, n: int) -> np.ndarray:
    """Inverse of :func:`pack_bits`: the first ``n`` unsigned codes along the last axis."""
    p = np.asarray(packed, dtype=np.uint8)
    if bits == 8:
        return p[..., :n]
    per = 8 // bits
    mask = (1 << bits) - 1
    out = np.stack([(p >> (j * bits)) & mask for j in range(per)], axis=-1)
    return out.reshape(*p.shape[:-1], -1)[..., :n]


def _params(st: Storage, qt: QuantizedTensor, blocks: int) -> tuple[np.ndarray, np.ndarray | None]:
    """The record's scale and integer zero point as ``[n, blocks]`` float arrays."""
    n = qt.shape[0]
    if isinstance(qt.scale, QuantizedTensor) or isinstance(qt.zero_point, QuantizedTensor):
        raise UnsupportedQuantError(
            f"tensor {st.name}: two-level scales ({qt.encoding}) have no ONNX form; convert "
            "with --quant w4-g32-sym"
        )
    if qt.zero_point is not None and qt.zero_point_domain is not ZeroPointDomain.INT:
        raise UnsupportedQuantError(
            f"tensor {st.name}: float-domain minimums ({qt.encoding}) have no exact ONNX form "
            "here; convert with --quant w4-g32-asym"
        )
    if qt.codebook is not None or qt.g_idx is not None:
        raise UnsupportedQuantError(
            f"tensor {st.name}: {qt.encoding} (codebook or act-order index) has no ONNX form; "
            "convert with --quant w4-g32-sym"
        )
    sc = np.asarray(qt.scale, np.float32)
    zp = None if qt.zero_point is None else np.asarray(qt.zero_point, np.float32)
    if sc.size == 1:  # per tensor
        sc = np.full((n, blocks), sc.reshape(()), np.float32)
        zp = None if zp is None else np.full((n, blocks), zp.reshape(()), np.float32)
    elif sc.shape[1] != blocks:  # per channel, or groups wider than the written block
        rep = blocks // sc.shape[1]
        sc = np.repeat(sc, rep, axis=1)
        zp = None if zp is None else np.repeat(zp, rep, axis=1)
    return sc, zp


def _check_record(st: Storage, qt: QuantizedTensor) -> None:
    if len(qt.shape) != 2 or qt.shape[1] != st.shape[1]:
        raise UnsupportedQuantError(f"tensor {st.name}: record shape {qt.shape} != {st.shape}")
    if qt.bits != st.bits:
        raise UnsupportedQuantError(
            f"tensor {st.name}: a {qt.bits}-bit record for a {st.bits}-bit ONNX storage"
        )
    qb = qt.block_size[1]
    if qt.block_size[0] not in (1, st.shape[0]) or (st.block_size and qb % st.block_size
                                                     and qb != st.shape[1]):
        raise UnsupportedQuantError(
            f"tensor {st.name}: record blocks {qt.block_size} do not fit ONNX blocks of "
            f"{st.block_size}"
        )


def pack(st: Storage, value: QuantizedTensor | np.ndarray) -> dict[str, np.ndarray]:
    """The bytes of every initializer of ``st`` (uint8 arrays, in :attr:`Storage.inits` order).

    ``value`` may be a range of the tensor's rows where :func:`row_chunks` allows it: its
    bytes then start at ``r0 * init.nbytes // rows`` of each initializer.

    Raises:
        UnsupportedQuantError: a float array for a quantized storage or the reverse, or a
            record the storage cannot hold exactly (two-level scales, float-domain minimums,
            codebooks, other bits or blocks).
    """
    if st.kind == "dense":
        if isinstance(value, QuantizedTensor):
            raise UnsupportedQuantError(
                f"tensor {st.name}: planned as float but given a quantized record"
            )
        w = np.asarray(value, np.float32)
        if st.transposed:
            w = w.T
        init = st.inits[0]
        if init.dtype == "bfloat16":
            u = np.ascontiguousarray(w).view(np.uint32)
            # round to nearest even, as torch's and safetensors' bf16 casts do
            data = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype("<u2")
        else:
            data = np.ascontiguousarray(w, dtype="<f4" if init.dtype == "float32" else "<f2")
        return {init.name: data.reshape(-1).view(np.uint8)}
    if not isinstance(value, QuantizedTensor):
        raise UnsupportedQuantError(
            f"tensor {st.name}: planned as {st.bits}-bit ONNX weights but given a float array"
        )
    _check_record(st, value)
    n, k = value.shape  # a row range of the tensor, or all of it
    lo = code_range(st.bits, True)[0]
    # the record's codes as signed integers (an unsigned record's zero point moves with them)
    shift = 0 if value.signed else lo
    codes = value.codes.astype(np.int16) + shift
    if st.kind == "qdq":
        sc, zp = _params(st, value, k // st.block_size if st.axis == 0 else 1)
        zp = np.zeros_like(sc) if zp is None else zp + shift
        if st.axis == 1:
            sc_o, zp_o = sc[:, 0], zp[:, 0]
        elif st.axis == -1:
            sc_o, zp_o = sc[0, 0].reshape(()), zp[0, 0].reshape(())
        else:
            sc_o, zp_o = sc.T, zp.T
        q = np.ascontiguousarray(codes.T)
        if st.bits == 4:
            qb = pack_bits(q.reshape(-1), 4)
            zb = pack_bits(zp_o.astype(np.int16).reshape(-1), 4)
        else:
            qb = q.astype(np.int8).reshape(-1).view(np.uint8)
            zb = zp_o.astype(np.int8).reshape(-1).view(np.uint8)
        return {st.inits[0].name: qb,
                st.inits[1].name: np.ascontiguousarray(sc_o, "<f4").reshape(-1).view(np.uint8),
                st.inits[2].name: zb}
    kb = k // st.block_size
    if st.extra.get("fmin"):
        return _pack_fmin(st, value, kb)
    sc, zp = _params(st, value, kb)
    half = 1 << (st.bits - 1)
    u = (codes + half).astype(np.uint8).reshape(n, kb, st.block_size)
    out = {st.inits[0].name: pack_bits(u, st.bits).reshape(-1),
           st.inits[1].name: np.ascontiguousarray(sc, "<f4").reshape(-1).view(np.uint8)}
    if not st.symmetric:
        if zp is None:
            zp = np.zeros_like(sc)
        out[st.inits[2].name] = pack_bits((zp + shift + half).astype(np.int16), st.bits).reshape(-1)
    elif zp is not None and np.any(zp + shift):
        raise UnsupportedQuantError(
            f"tensor {st.name}: planned symmetric but the record has zero points"
        )
    return out


def _pack_fmin(st: Storage, qt: QuantizedTensor, kb: int) -> dict[str, np.ndarray]:
    """Q4_1-style records (unsigned codes, float-domain ``z``: ``x = q*s - z``)."""
    if (qt.zero_point_domain is not ZeroPointDomain.FLOAT or qt.signed
            or not isinstance(qt.scale, np.ndarray) or not isinstance(qt.zero_point, np.ndarray)
            or qt.block_size != (1, st.block_size)):
        raise UnsupportedQuantError(
            f"tensor {st.name}: planned as a copy of {st.bits}-bit blocks with float minimums "
            f"but given a {qt.encoding} record"
        )
    n = qt.shape[0]
    u = qt.codes.astype(np.uint8).reshape(n, kb, st.block_size)
    return {st.inits[0].name: pack_bits(u, st.bits).reshape(-1),
            st.inits[1].name: np.ascontiguousarray(qt.scale, "<f4").reshape(-1).view(np.uint8),
            st.inits[2].name: np.zeros(st.inits[2].nbytes, np.uint8),
            st.inits[3].name: np.ascontiguousarray(np.asarray(qt.zero_point).T, "<f4")
            .reshape(-1).view(np.uint8)}
