"""IR invariants: every malformed record is refused at construction; dequantize is exact."""

from __future__ import annotations

import numpy as np
import pytest

from quantport.errors import IRError
from quantport.ir import QuantizedTensor, ZeroPointDomain, code_range, dequantize


def _qt(**kw):
    base = dict(shape=(2, 8), codes=np.zeros((2, 8), np.int8), scale=np.ones((2, 2), np.float32),
                block_size=(1, 4), bits=4, signed=True)
    base.update(kw)
    return QuantizedTensor(**base)


def test_code_range():
    assert code_range(4, True) == (-8, 7)
    assert code_range(4, False) == (0, 15)
    assert code_range(8, True) == (-128, 127)


@pytest.mark.parametrize(
    ("kw", "msg"),
    [
        (dict(bits=9), "bits must be 1..8"),
        (dict(codes=np.zeros((2, 8), np.float32)), "codes must be integers"),
        (dict(codes=np.zeros((2, 7), np.int8)), "codes shape"),
        (dict(codes=np.full((2, 8), 8, np.int8)), "codes outside"),
        (dict(signed=False, codes=np.full((2, 8), -1, np.int8)), "codes outside"),
        (dict(scale=np.ones((2, 3), np.float32)), "scale shape"),
        (dict(scale=np.array([[1, np.nan], [1, 1]], np.float32)), "NaN or inf"),
        (dict(scale=np.ones((2, 2), np.int32)), "floating point"),
        (dict(block_size=(1, 3), shape=(2, 8)), "does not divide"),
        (dict(block_size=(4,)), "one entry per axis"),
        (dict(zero_point=np.ones((2, 3), np.float32)), "zero_point shape"),
        (dict(zero_point=np.full((2, 2), 0.5, np.float32)), "integer-domain zero_point"),
        (dict(zero_point=np.full((2, 2), 9, np.float32)), "integer-domain zero_point"),
        (dict(g_idx=np.zeros(7, np.int32)), "g_idx"),
        (dict(g_idx=np.full(8, 2, np.int32)), "g_idx values"),
        (dict(codebook=np.zeros(16, np.float32)), "codebook"),
    ],
)
def test_invariants_refused(kw, msg):
    with pytest.raises(IRError, match=msg):
        _qt(**kw)


def test_arrays_are_read_only():
    qt = _qt()
    with pytest.raises(ValueError):
        qt.codes[0, 0] = 1
    with pytest.raises(ValueError):
        qt.scale[0, 0] = 2.0


def test_dequantize_int_domain_matches_formula():
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 16, (3, 8)).astype(np.uint8)
    scale = rng.random((3, 2)).astype(np.float32) + 0.1
    zp = rng.integers(0, 16, (3, 2)).astype(np.float32)
    qt = QuantizedTensor((3, 8), codes, scale, (1, 4), 4, False, zp, ZeroPointDomain.INT)
    want = np.empty((3, 8), np.float32)
    for r in range(3):
        for c in range(8):
            want[r, c] = (float(codes[r, c]) - zp[r, c // 4]) * scale[r, c // 4]
    np.testing.assert_allclose(dequantize(qt), want, rtol=1e-6)


def test_dequantize_float_domain_and_nested_scale():
    # two-level: 4-bit sub-scales times a per-row super scale, llama.cpp k-quant style
    sub = QuantizedTensor((2, 4), np.array([[1, 2, 3, 4], [5, 6, 7, 8]], np.uint8),
                          np.array([[0.5], [0.25]], np.float32), (1, 4), 4, False)
    mins = QuantizedTensor((2, 4), np.ones((2, 4), np.uint8), np.array([[0.1], [0.2]], np.float32),
                           (1, 4), 4, False)
    codes = np.arange(16, dtype=np.uint8).reshape(2, 8) % 4
    qt = QuantizedTensor((2, 8), codes, sub, (1, 2), 2, False, mins, ZeroPointDomain.FLOAT)
    out = dequantize(qt)
    d = np.array([[0.5], [0.25]], np.float32) * sub.codes.astype(np.float32)
    m = np.array([[0.1], [0.2]], np.float32) * np.ones((2, 4), np.float32)
    want = codes.astype(np.float32) * np.repeat(d, 2, axis=1) - np.repeat(m, 2, axis=1)
    np.testing.assert_array_equal(out, want)


def test_codebook_and_g_idx():
    cb = np.linspace(-1, 1, 16).astype(np.float32)
    codes = np.arange(16, dtype=np.uint8).reshape(2, 8)
    qt = QuantizedTensor((2, 8), codes, np.full((2, 2), 2.0, np.float32), (1, 4), 4, False,
                         codebook=cb)
    np.testing.assert_array_equal(dequantize(qt), cb[codes] * 2.0)
    g = np.array([1, 0, 1, 0, 1, 0, 1, 0], np.int32)
    scale = np.array([[1.0, 10.0], [2.0, 20.0]], np.float32)
    qt = QuantizedTensor((2, 8), np.ones((2, 8), np.int8), scale, (1, 4), 4, True, g_idx=g)
    np.testing.assert_array_equal(dequantize(qt)[0], [10, 1, 10, 1, 10, 1, 10, 1])
