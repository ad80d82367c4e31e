"""GGML block packing: IR records <-> the exact byte layout of ggml's quantized blocks.

:func:`pack` turns a :class:`~quantport.ir.QuantizedTensor` produced by
:mod:`quantport.quant.ggml` into the bytes ``ggml_quantize_chunk`` would write (one row of
blocks per tensor row); :func:`unpack` reads such bytes back into the same record. Layouts
follow ``ggml/src/ggml-common.h`` (``block_q4_0`` ... ``block_q6_K``, ``block_iq4_nl``) and the
bit placement of ``quantize_row_*_ref`` in ``ggml-quants.c``. Everything is vectorized over
all blocks. This module imports numpy and the IR only.

IR conventions (per type; ``d``/``dmin``/``m`` are float32 arrays holding fp16 values):

========  ===========================================================================
Q8_0      int8 codes, scale ``d`` per 32
Q4_0/Q5_0 signed codes ``q - 8`` / ``q - 16``, scale ``d`` per 32
Q4_1/Q5_1 unsigned codes, scale ``d``, FLOAT zero-point ``-m`` per 32
Q2_K      2-bit codes per 16; scale = QT(4-bit sub-scales, scale ``d`` per 256);
          zero-point = QT(4-bit mins, scale ``dmin``)
Q3_K      signed 3-bit codes per 16; scale = QT(signed 6-bit sub-scales, ``d``)
Q4_K/Q5_K 4/5-bit codes per 32; scale = QT(6-bit, ``d``); zero-point = QT(6-bit, ``dmin``)
Q6_K      signed 6-bit codes per 16; scale = QT(int8 sub-scales, ``d``)
IQ4_NL    4-bit indices into ``kvalues_iq4nl`` (``codebook``), scale ``d`` per 32
========  ===========================================================================
"""

from __future__ import annotations

import numpy as np

from quantport.errors import FormatError, ShapeError, UnsupportedQuantError
from quantport.ir import QuantizedTensor, ZeroPointDomain

__all__ = ["GGML_BLOCK", "KVALUES_IQ4NL", "pack", "row_bytes", "unpack"]

#: ``type name -> (weights per block, bytes per block)`` (as ``gguf.GGML_QUANT_SIZES``).
GGML_BLOCK: dict[str, tuple[int, int]] = {
    "Q8_0": (32, 34),
    "Q4_0": (32, 18),
    "Q4_1": (32, 20),
    "Q5_0": (32, 22),
    "Q5_1": (32, 24),
    "Q2_K": (256, 84),
    "Q3_K": (256, 110),
    "Q4_K": (256, 144),
    "Q5_K": (256, 176),
    "Q6_K": (256, 210),
    "IQ4_NL": (32, 18),
}

#: ``kvalues_iq4nl`` of ggml-common.h, as float32.
KVALUES_IQ4NL = np.array(
    [-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113], dtype=np.float32
)

_U8 = np.uint8


def row_bytes(type_name: str, cols: int) -> int:
    """Bytes of one packed row of ``cols`` weights."""
    block, size = _block_of(type_name)
    if cols % block:
        raise ShapeError(f"{type_name}: row width {cols} is not a multiple of {block}")
    return cols // block * size


def _block_of(type_name: str) -> tuple[int, int]:
    try:
        return GGML_BLOCK[type_name]
    except KeyError:
        raise UnsupportedQuantError(
            f"unknown ggml type {type_name!r}; supported: {', '.join(GGML_BLOCK)}"
        ) from None


# ----------------------------------------------------------------------------- helpers


def _f16(a: np.ndarray) -> np.ndarray:
    """fp16 bytes ``[..., 2]`` of float32 values that are already fp16-representable."""
    a = np.asarray(a, dtype=np.float32)
    return np.ascontiguousarray(a.astype(np.float16)).view(_U8).reshape(*a.shape, 2)


def _from_f16(b: np.ndarray) -> np.ndarray:
    """float32 values of little-endian fp16 bytes ``[..., 2]``."""
    return np.ascontiguousarray(b).view(np.float16)[..., 0].astype(np.float32)


def _param(p: object) -> np.ndarray:
    if isinstance(p, QuantizedTensor):
        raise FormatError("expected a plain float parameter array, got a nested record")
    return np.asarray(p, dtype=np.float32)


def _nested(p: object, what: str) -> QuantizedTensor:
    if not isinstance(p, QuantizedTensor):
        raise FormatError(f"expected {what} to be a nested QuantizedTensor")
    return p


def _nibbles(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    return (lo & 15) | ((hi & 15) << 4)


# Byte-parallel forms of _nibbles / _bits_le for the legacy 32-weight blocks: eight codes per
# uint64 lane. Masking each byte to its low nibble before the shift keeps every byte's bits
# inside that byte; the multiply gathers bit 0 of each of the 8 bytes into the top byte
# (byte k -> bit 56 + k; the other partial products land below bit 56 or above bit 63).
_LO4 = np.uint64(0x0F0F0F0F0F0F0F0F)
_BIT0 = np.uint64(0x0101010101010101)
_GATHER = np.uint64(0x0102040810204080)


def _nibbles32(q: np.ndarray) -> np.ndarray:
    """``_nibbles(q[..., :16], q[..., 16:])`` for contiguous uint8 ``q[..., 32]``."""
    v = np.ascontiguousarray(q).view("<u8")  # [..., 4]: codes 0-7, 8-15, 16-23, 24-31
    r = v[..., 2:4] & _LO4
    r <<= np.uint64(4)
    r |= v[..., 0:2] & _LO4
    return r.view(_U8)


def _bit4_32(q: np.ndarray) -> np.ndarray:
    """``_bits_le((q >> 4) & 1)`` for contiguous uint8 ``q[..., 32]``: the 5th bit of each
    code, code ``i`` at bit ``i % 8`` of byte ``i // 8`` (``qh`` of Q5_0 / Q5_1)."""
    v = np.ascontiguousarray(q).view("<u8")
    b = v >> np.uint64(4)
    b &= _BIT0
    b *= _GATHER
    b >>= np.uint64(56)
    return b.astype(_U8)


_Q5_RECORD = {
    "Q5_0": np.dtype([("d", "<f2"), ("qh", "<u4"), ("qs", "u1", (16,))]),  # 22 bytes, unpadded
    "Q5_1": np.dtype([("d", "<f2"), ("m", "<f2"), ("qh", "<u4"), ("qs", "u1", (16,))]),
}


def _bits_le(bits: np.ndarray) -> np.ndarray:
    """Pack a ``[..., 8k]`` array of 0/1 into ``[..., k]`` bytes, bit i of byte j = bits[8j+i]."""
    return np.packbits(bits.astype(_U8), axis=-1, bitorder="little")


def _unbits_le(b: np.ndarray) -> np.ndarray:
    return np.unpackbits(b, axis=-1, bitorder="little")


def _bit_planes(bits: np.ndarray) -> np.ndarray:
    """Pack one bit of each of a super-block's 256 weights ``[rows, nb, 256]`` into 32 bytes:
    weight ``j`` goes to byte ``j % 32``, bit ``j // 32`` (Q3_K ``hmask``, Q5_K ``qh``; see
    ``quantize_row_q3_K_ref`` / ``quantize_row_q5_K_ref``)."""
    rows, nb, _ = bits.shape
    return _bits_le(bits.reshape(rows, nb, 8, 32).transpose(0, 1, 3, 2))[..., 0]


def _unbit_planes(b: np.ndarray) -> np.ndarray:
    """Inverse of :func:`_bit_planes`: ``[rows, nb, 32]`` bytes -> ``[rows, nb, 256]`` bits."""
    rows, nb, _ = b.shape
    return _unbits_le(b[..., None]).reshape(rows, nb, 32, 8).transpose(0, 1, 3, 2).reshape(
        rows, nb, 256
    )


def _crumbs(L: np.ndarray) -> np.ndarray:
    """Q2_K/Q3_K 2-bit packing of ``[..., 256]`` values in ``[0, 3]`` into ``[..., 64]``."""
    r = L.reshape(*L.shape[:-1], 2, 4, 32)
    q = r[..., 0, :] | (r[..., 1, :] << 2) | (r[..., 2, :] << 4) | (r[..., 3, :] << 6)
    return q.reshape(*L.shape[:-1], 64)


def _uncrumbs(qs: np.ndarray) -> np.ndarray:
    q = qs.reshape(*qs.shape[:-1], 2, 1, 32)
    shifts = np.array([0, 2, 4, 6], dtype=_U8).reshape(4, 1)
    return ((q >> shifts) & 3).reshape(*qs.shape[:-1], 256)


def _k4_scales(ls: np.ndarray, lm: np.ndarray) -> np.ndarray:
    """Q4_K/Q5_K 12-byte scale packing (inverse of ``get_scale_min_k4``); ls, lm ``[..., 8]``."""
    out = np.empty((*ls.shape[:-1], 12), dtype=_U8)
    out[..., 0:4] = ls[..., 0:4] | ((ls[..., 4:8] >> 4) << 6)
    out[..., 4:8] = lm[..., 0:4] | ((lm[..., 4:8] >> 4) << 6)
    out[..., 8:12] = (ls[..., 4:8] & 15) | ((lm[..., 4:8] & 15) << 4)
    return out


def _k4_unscales(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ls = np.empty((*s.shape[:-1], 8), dtype=_U8)
    lm = np.empty_like(ls)
    ls[..., 0:4] = s[..., 0:4] & 63
    lm[..., 0:4] = s[..., 4:8] & 63
    ls[..., 4:8] = (s[..., 8:12] & 15) | ((s[..., 0:4] >> 6) << 4)
    lm[..., 4:8] = (s[..., 8:12] >> 4) | ((s[..., 4:8] >> 6) << 4)
    return ls, lm


def _q3_scales(s: np.ndarray) -> np.ndarray:
    """Q3_K 12-byte packing of 16 6-bit values ``[..., 16]`` (``quantize_row_q3_K_ref``)."""
    out = np.empty((*s.shape[:-1], 12), dtype=_U8)
    out[..., 0:8] = (s[..., 0:8] & 15) | ((s[..., 8:16] & 15) << 4)
    h = (s >> 4).reshape(*s.shape[:-1], 4, 4)  # [q, r] for j = 4q + r
    out[..., 8:12] = h[..., 0, :] | (h[..., 1, :] << 2) | (h[..., 2, :] << 4) | (h[..., 3, :] << 6)
    return out


def _q3_unscales(b: np.ndarray) -> np.ndarray:
    s = np.empty((*b.shape[:-1], 16), dtype=_U8)
    s[..., 0:8] = b[..., 0:8] & 15
    s[..., 8:16] = b[..., 0:8] >> 4
    hb = b[..., 8:12]
    for q in range(4):
        s[..., 4 * q : 4 * q + 4] |= ((hb >> (2 * q)) & 3) << 4
    return s


# ----------------------------------------------------------------------------- pack


def pack(qt: QuantizedTensor) -> np.ndarray:
    """Pack an IR record of a ggml type (``qt.encoding``) into ggml blocks.

    Returns:
        uint8 array ``[rows, row_bytes]``, byte for byte what llama.cpp stores.

    Raises:
        UnsupportedQuantError: unknown encoding. ShapeError: not 2-D or bad width.
        FormatError: the record does not follow the IR convention of its type.
    """
    name = qt.encoding
    block, size = _block_of(name)
    if len(qt.shape) != 2:
        raise ShapeError(f"{name}: only 2-D tensors can be packed, got {qt.shape}")
    rows, cols = qt.shape
    if cols % block:
        raise ShapeError(f"{name}: width {cols} is not a multiple of {block}")
    nb = cols // block
    # Codes as uint8 two's-complement bytes (a view for int8/uint8 codes, no int32 copy):
    # adding a bias in uint8 arithmetic wraps modulo 256, which gives exactly the stored
    # unsigned value (e.g. Q4_0 q-8 in [-8, 7] + 8 -> [0, 15]).
    raw = np.asarray(qt.codes)
    cu8 = raw.view(_U8) if raw.dtype.itemsize == 1 else raw.astype(_U8)
    cu8 = cu8.reshape(rows, nb, block)
    out = np.empty((rows, nb, size), dtype=_U8)

    if name == "Q8_0":
        out[..., 0:2] = _f16(_param(qt.scale).reshape(rows, nb))
        out[..., 2:] = cu8
    elif name in ("Q4_0", "Q4_1", "IQ4_NL"):
        off = 8 if name == "Q4_0" else 0
        q = cu8 + _U8(off)
        out[..., 0:2] = _f16(_param(qt.scale).reshape(rows, nb))
        p = 2
        if name == "Q4_1":
            out[..., 2:4] = _f16(-_param(qt.zero_point).reshape(rows, nb))
            p = 4
        out[..., p:] = _nibbles32(q)
    elif name in ("Q5_0", "Q5_1"):
        off = 16 if name == "Q5_0" else 0
        q = cu8 + _U8(off)
        # block_q5_0 / block_q5_1 as a packed record: each field is one strided store (qh as
        # one uint32, not four bytes); float32 -> float16 on assignment rounds to nearest even
        rec = out.reshape(-1).view(_Q5_RECORD[name]).reshape(rows, nb)
        rec["d"] = _param(qt.scale).reshape(rows, nb)
        if name == "Q5_1":
            rec["m"] = -_param(qt.zero_point).reshape(rows, nb)
        rec["qh"] = _bit4_32(q).view("<u4")[..., 0]
        rec["qs"] = _nibbles32(q)
    elif name == "Q2_K":
        sc = _nested(qt.scale, "Q2_K scale")
        mn = _nested(qt.zero_point, "Q2_K zero_point")
        ls = sc.codes.astype(_U8).reshape(rows, nb, 16)
        lm = mn.codes.astype(_U8).reshape(rows, nb, 16)
        out[..., 0:16] = ls | (lm << 4)
        out[..., 16:80] = _crumbs(cu8)
        out[..., 80:82] = _f16(_param(sc.scale).reshape(rows, nb))
        out[..., 82:84] = _f16(_param(mn.scale).reshape(rows, nb))
    elif name == "Q3_K":
        sc = _nested(qt.scale, "Q3_K scale")
        L = cu8 + _U8(4)
        out[..., 0:32] = _bit_planes((L >> 2) & 1)
        out[..., 32:96] = _crumbs(L & 3)
        s6 = (sc.codes.astype(np.int32) + 32).astype(_U8).reshape(rows, nb, 16)
        out[..., 96:108] = _q3_scales(s6)
        out[..., 108:110] = _f16(_param(sc.scale).reshape(rows, nb))
    elif name in ("Q4_K", "Q5_K"):
        sc = _nested(qt.scale, f"{name} scale")
        mn = _nested(qt.zero_point, f"{name} zero_point")
        out[..., 0:2] = _f16(_param(sc.scale).reshape(rows, nb))
        out[..., 2:4] = _f16(_param(mn.scale).reshape(rows, nb))
        out[..., 4:16] = _k4_scales(
            sc.codes.astype(_U8).reshape(rows, nb, 8), mn.codes.astype(_U8).reshape(rows, nb, 8)
        )
        L = cu8.reshape(rows, nb, 4, 2, 32)
        p = 16
        if name == "Q5_K":
            out[..., 16:48] = _bit_planes((L.reshape(rows, nb, 256) >> 4) & 1)
            p = 48
        out[..., p:] = _nibbles(L[..., 0, :], L[..., 1, :]).reshape(rows, nb, 128)
    elif name == "Q6_K":
        sc = _nested(qt.scale, "Q6_K scale")
        L = (cu8 + _U8(32)).reshape(rows, nb, 2, 4, 32)
        ql = np.concatenate(
            [_nibbles(L[..., 0, :], L[..., 2, :]), _nibbles(L[..., 1, :], L[..., 3, :])], axis=-1
        )
        h = L >> 4
        qh = h[..., 0, :] | (h[..., 1, :] << 2) | (h[..., 2, :] << 4) | (h[..., 3, :] << 6)
        out[..., 0:128] = ql.reshape(rows, nb, 128)
        out[..., 128:192] = qh.reshape(rows, nb, 64)
        out[..., 192:208] = sc.codes.astype(np.int8).view(_U8).reshape(rows, nb, 16)
        out[..., 208:210] = _f16(_param(sc.scale).reshape(rows, nb))
    else:  # pragma: no cover - GGML_BLOCK and this chain list the same names
        raise UnsupportedQuantError(f"no packer for {name}")
    return out.reshape(rows, nb * size)


# ----------------------------------------------------------------------------- unpack


def unpack(type_name: str, data: np.ndarray, shape: tuple[int, int]) -> QuantizedTensor:
    """Read ggml blocks of ``type_name`` back into the IR record :func:`pack` came from.

    Args:
        type_name: ggml type name (``"Q4_K"``, ...).
        data: the packed bytes, any shape with ``rows * row_bytes`` uint8 elements.
        shape: the logical ``(rows, cols)``.

    Raises:
        UnsupportedQuantError: unknown type. ShapeError / FormatError: sizes do not agree.
    """
    block, size = _block_of(type_name)
    if len(shape) != 2:
        raise ShapeError(f"{type_name}: only 2-D tensors can be unpacked, got {shape}")
    rows, cols = (int(s) for s in shape)
    if cols % block:
        raise ShapeError(f"{type_name}: width {cols} is not a multiple of {block}")
    nb = cols // block
    raw = np.asarray(data)
    if raw.dtype != _U8:
        raw = raw.view(_U8)
    if raw.size != rows * nb * size:
        raise FormatError(
            f"{type_name} tensor {shape}: expected {rows * nb * size} bytes, got {raw.size}"
        )
    b = raw.reshape(rows, nb, size)
    name = type_name
    f32 = np.float32

    def legacy(codes: np.ndarray, d: np.ndarray, bits: int, signed: bool, m=None, codebook=None):
        return QuantizedTensor(
            shape=(rows, cols),
            codes=codes.reshape(rows, cols),
            scale=d.reshape(rows, nb),
            block_size=(1, 32),
            bits=bits,
            signed=signed,
            zero_point=None if m is None else (-m).reshape(rows, nb).astype(f32),
            zero_point_domain=ZeroPointDomain.FLOAT,
            encoding=name,
            codebook=codebook,
        )

    def nested(codes, d, per, bits, signed, enc):
        return QuantizedTensor(
            shape=(rows, cols // per),
            codes=codes.reshape(rows, cols // per),
            scale=d.reshape(rows, nb),
            block_size=(1, 256 // per),
            bits=bits,
            signed=signed,
            encoding=enc,
        )

    if name == "Q8_0":
        return legacy(b[..., 2:].copy().view(np.int8), _from_f16(b[..., 0:2]), 8, True)
    if name in ("Q4_0", "Q4_1", "IQ4_NL"):
        p = 4 if name == "Q4_1" else 2
        qs = b[..., p:]
        q = np.concatenate([qs & 15, qs >> 4], axis=-1)
        d = _from_f16(b[..., 0:2])
        if name == "Q4_0":
            return legacy(q.astype(np.int8) - np.int8(8), d, 4, True)
        if name == "IQ4_NL":
            return legacy(q, d, 4, False, codebook=KVALUES_IQ4NL.copy())
        return legacy(q, d, 4, False, m=_from_f16(b[..., 2:4]))
    if name in ("Q5_0", "Q5_1"):
        p = 4 if name == "Q5_1" else 2
        qh = _unbits_le(b[..., p : p + 4])
        qs = b[..., p + 4 :]
        q = np.concatenate([qs & 15, qs >> 4], axis=-1) | (qh << 4)
        d = _from_f16(b[..., 0:2])
        if name == "Q5_0":
            return legacy(q.astype(np.int8) - np.int8(16), d, 5, True)
        return legacy(q, d, 5, False, m=_from_f16(b[..., 2:4]))
    if name == "Q2_K":
        s = b[..., 0:16]
        L = _uncrumbs(b[..., 16:80])
        d, dmin = _from_f16(b[..., 80:82]), _from_f16(b[..., 82:84])
        return QuantizedTensor(
            shape=(rows, cols),
            codes=L.reshape(rows, cols),
            scale=nested(s & 15, d, 16, 4, False, "Q2_K.scales"),
            block_size=(1, 16),
            bits=2,
            signed=False,
            zero_point=nested(s >> 4, dmin, 16, 4, False, "Q2_K.mins"),
            zero_point_domain=ZeroPointDomain.FLOAT,
            encoding=name,
        )
    if name == "Q3_K":
        L = _uncrumbs(b[..., 32:96]) | (_unbit_planes(b[..., 0:32]) << 2)
        s6 = _q3_unscales(b[..., 96:108]).astype(np.int8) - np.int8(32)
        d = _from_f16(b[..., 108:110])
        return QuantizedTensor(
            shape=(rows, cols),
            codes=(L.astype(np.int8) - np.int8(4)).reshape(rows, cols),
            scale=nested(s6, d, 16, 6, True, "Q3_K.scales"),
            block_size=(1, 16),
            bits=3,
            signed=True,
            encoding=name,
        )
    if name in ("Q4_K", "Q5_K"):
        d, dmin = _from_f16(b[..., 0:2]), _from_f16(b[..., 2:4])
        ls, lm = _k4_unscales(b[..., 4:16])
        p = 48 if name == "Q5_K" else 16
        qs = b[..., p:].reshape(rows, nb, 4, 1, 32)
        L = np.concatenate([qs & 15, qs >> 4], axis=-2).reshape(rows, nb, 256)
        bits = 4
        if name == "Q5_K":
            L = L | (_unbit_planes(b[..., 16:48]) << 4)
            bits = 5
        return QuantizedTensor(
            shape=(rows, cols),
            codes=L.reshape(rows, cols),
            scale=nested(ls, d, 32, 6, False, f"{name}.scales"),
            block_size=(1, 32),
            bits=bits,
            signed=False,
            zero_point=nested(lm, dmin, 32, 6, False, f"{name}.mins"),
            zero_point_domain=ZeroPointDomain.FLOAT,
            encoding=name,
        )
    if name == "Q6_K":
        ql = b[..., 0:128].reshape(rows, nb, 2, 2, 32)
        qh = b[..., 128:192].reshape(rows, nb, 2, 1, 32)
        low = np.stack(
            [ql[..., 0, :] & 15, ql[..., 1, :] & 15, ql[..., 0, :] >> 4, ql[..., 1, :] >> 4],
            axis=-2,
        )
        shifts = np.array([0, 2, 4, 6], dtype=_U8).reshape(4, 1)
        high = (qh >> shifts) & 3
        L = (low | (high << 4)).reshape(rows, nb, 256)
        sc = b[..., 192:208].copy().view(np.int8)
        d = _from_f16(b[..., 208:210])
        return QuantizedTensor(
            shape=(rows, cols),
            codes=(L.astype(np.int8) - np.int8(32)).reshape(rows, cols),
            scale=nested(sc, d, 16, 8, True, "Q6_K.scales"),
            block_size=(1, 16),
            bits=6,
            signed=True,
            encoding=name,
        )
    raise UnsupportedQuantError(f"no unpacker for {name}")  # pragma: no cover
