"""Tests of ggml block packing: pack/unpack round trips and dequantization vs gguf-py."""

from __future__ import annotations

import gguf
import numpy as np
import pytest

from quantport.errors import FormatError, ShapeError, UnsupportedQuantError
from quantport.formats.gguf_blocks import GGML_BLOCK, pack, row_bytes, unpack
from quantport.ir import QuantizedTensor, dequantize
from quantport.quant.ggml import quantize_ggml

TYPES = list(GGML_BLOCK)


def _weights(rows: int, cols: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    w = rng.standard_t(3, (rows, cols)) * 0.03
    w[0] = 0.0
    w[1, ::5] *= 50
    return w.astype(np.float32)


def _same_record(a: QuantizedTensor, b: QuantizedTensor) -> None:
    assert a.shape == b.shape and a.encoding == b.encoding
    assert a.bits == b.bits and a.signed == b.signed and a.block_size == b.block_size
    np.testing.assert_array_equal(a.codes.astype(np.int32), b.codes.astype(np.int32))
    for pa, pb in ((a.scale, b.scale), (a.zero_point, b.zero_point)):
        assert (pa is None) == (pb is None)
        if isinstance(pa, QuantizedTensor):
            _same_record(pa, pb)
        elif pa is not None:
            np.testing.assert_array_equal(np.asarray(pa), np.asarray(pb))
    if a.codebook is not None:
        np.testing.assert_array_equal(a.codebook, b.codebook)


@pytest.mark.parametrize("with_imatrix", [False, True])
@pytest.mark.parametrize("type_name", TYPES)
def test_round_trip_and_dequantize_match_gguf(type_name: str, with_imatrix: bool) -> None:
    rows, cols = 6, 768
    w = _weights(rows, cols, seed=len(type_name))
    imp = np.random.default_rng(2).random(cols).astype(np.float32) if with_imatrix else None
    qt = quantize_ggml(w, type_name, imp)
    data = pack(qt)
    assert data.dtype == np.uint8 and data.shape == (rows, row_bytes(type_name, cols))
    back = unpack(type_name, data, (rows, cols))
    _same_record(qt, back)
    np.testing.assert_array_equal(pack(back), data)
    qtype = gguf.GGMLQuantizationType[type_name]
    assert gguf.GGML_QUANT_SIZES[qtype] == GGML_BLOCK[type_name]
    expect = gguf.quants.dequantize(data, qtype).reshape(rows, cols)
    got = dequantize(qt)
    # bit for bit, including the sign of zeros
    np.testing.assert_array_equal(got.view(np.uint32), expect.astype(np.float32).view(np.uint32))


@pytest.mark.parametrize("type_name", TYPES)
def test_unpack_arbitrary_bytes_repacks_identically(type_name: str) -> None:
    """Every bit pattern of the quant payload survives unpack -> pack (finite fp16 fields)."""
    rows, cols = 3, 512
    nbytes = row_bytes(type_name, cols)
    rng = np.random.default_rng(5)
    data = rng.integers(0, 256, (rows, nbytes), dtype=np.uint8)
    # keep the fp16 fields finite: rewrite them with small random halves
    block, size = GGML_BLOCK[type_name]
    blocks = data.reshape(-1, size)
    half_at = {
        "Q2_K": [80, 82], "Q3_K": [108], "Q4_K": [0, 2], "Q5_K": [0, 2], "Q6_K": [208],
        "Q4_1": [0, 2], "Q5_1": [0, 2],
    }.get(type_name, [0])
    for off in half_at:
        h = rng.standard_normal(blocks.shape[0]).astype(np.float16)
        blocks[:, off : off + 2] = h.view(np.uint8).reshape(-1, 2)
    back = unpack(type_name, data, (rows, cols))
    np.testing.assert_array_equal(pack(back), data)
    expect = gguf.quants.dequantize(data, gguf.GGMLQuantizationType[type_name])
    np.testing.assert_array_equal(dequantize(back), expect.reshape(rows, cols).astype(np.float32))


def test_errors() -> None:
    with pytest.raises(UnsupportedQuantError):
        row_bytes("Q9_9", 256)
    with pytest.raises(ShapeError):
        row_bytes("Q4_K", 320)
    with pytest.raises(FormatError):
        unpack("Q8_0", np.zeros(10, dtype=np.uint8), (1, 32))
