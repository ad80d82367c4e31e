"""Round-to-nearest against a slow, obviously-correct per-group reference."""

from __future__ import annotations

import math

import numpy as np
import pytest

from quantport.errors import ShapeError, UnsupportedQuantError
from quantport.ir import dequantize
from quantport.quant.scheme import parse_scheme


def _ref(w: np.ndarray, bits: int, group: int, sym: bool) -> np.ndarray:
    """compressed-tensors' definition, one group at a time in plain Python."""
    qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    out = np.empty_like(w)
    rows, cols = w.shape
    for r in range(rows):
        for g0 in range(0, cols, group):
            vals = [float(v) for v in w[r, g0 : g0 + group]]
            if sym:
                amax = max(abs(v) for v in vals)
                s = np.float32(amax) / np.float32((qmax - qmin) / 2)
                s = np.float32(1.0) if s == 0 else s
                z = 0.0
            else:
                lo, hi = min(min(vals), 0.0), max(max(vals), 0.0)
                s = (np.float32(hi) - np.float32(lo)) / np.float32(qmax - qmin)
                s = np.float32(1.0) if s == 0 else s
                z = min(max(round(qmin - np.float32(lo) / s), qmin), qmax)
            for j, v in enumerate(vals):
                q = min(max(round(np.float32(v) / s) + z, qmin), qmax)
                out[r, g0 + j] = (q - z) * s
    return out


@pytest.mark.parametrize("scheme", ["w4-g32-sym", "w4-g64-asym", "w8-channel-sym",
                                    "w3-g16-asym", "w2-g32-sym", "w6-channel-asym"])
def test_rtn_matches_reference(scheme):
    s = parse_scheme(scheme)
    rng = np.random.default_rng(1)
    w = (rng.standard_normal((6, 64)) * rng.random((6, 1)) * 3).astype(np.float32)
    w[0, :32] = 0.0  # an all-zero group
    qt = s.quantize(w, name="w")
    group = 64 if s.granularity == "channel" else s.group_size
    np.testing.assert_allclose(dequantize(qt), _ref(w, s.bits, group, s.symmetric),
                               rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("scheme", ["w4-g32-sym", "w4-g32-asym", "w8-tensor-sym"])
def test_rtn_error_bound(scheme):
    s = parse_scheme(scheme)
    w = np.random.default_rng(2).standard_normal((8, 128)).astype(np.float32)
    qt = s.quantize(w)
    scale = np.asarray(qt.scale)
    step = scale.max()
    # inside the representable range the error is at most half a step
    assert np.abs(dequantize(qt) - w).max() <= step * 0.5 + 1e-6 or not s.symmetric
    assert np.abs(dequantize(qt) - w).max() <= step * 1.0 + 1e-6


def test_parse_and_refuse():
    assert str(parse_scheme("W4-G64-SYM")) == "w4-g64-sym"
    for bad in ("w9-g64-sym", "w1-g64-sym", "w4-g0-sym", "int4", "w4-g64"):
        with pytest.raises(UnsupportedQuantError):
            parse_scheme(bad)


def test_group_that_does_not_divide_names_tensor_and_working_sizes():
    with pytest.raises(ShapeError) as exc:
        parse_scheme("w4-g128-sym").quantize(np.zeros((4, 576), np.float32), name="layer.q")
    msg = str(exc.value)
    assert "layer.q" in msg and "576" in msg and "64" in msg and "192" in msg
    assert "--keep-unquantized" in msg
    assert math.isfinite(len(msg)) and "\n" not in msg
