"""Round-to-nearest against a slow, obviously-correct per-group reference."""

from __future__ import annotations

import math

import numpy as np
import pytest

from quantport.errors import ShapeError, UnsupportedQuantError
from quantport.ir import dequantize
from quantport.quant.grid import IntGrid
from quantport.quant.rtn import quantize_rtn
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


def _weights(rows: int, cols: int, seed: int) -> np.ndarray:
    """Rows of different spread, an all-zero group, a positive-only row and exact rounding ties."""
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((rows, cols)) * rng.random((rows, 1)) * 3).astype(np.float32)
    w[0, :16] = 0.0  # an all-zero group (or part of one)
    w[1] = np.abs(w[1])  # min > 0: the asymmetric range is widened to include 0
    # ties: with 4 bits symmetric, absmax 7.5 gives scale exactly 1 and x/s = k + 0.5
    w[2] = np.resize(np.array([7.5, -7.5, 0.5, 1.5, 2.5, -0.5, -1.5, -2.5], np.float32), cols)
    return w


def _ct_reference(w: np.ndarray, bits: int, sym: bool, gran: str, group: int | None):
    """compressed-tensors' own qparams, codes and fake-quantized weight for ``w``."""
    torch = pytest.importorskip("torch")
    from compressed_tensors.quantization import QuantizationArgs
    from compressed_tensors.quantization.lifecycle.forward import fake_quantize, quantize
    from compressed_tensors.quantization.utils.helpers import calculate_qparams

    args = QuantizationArgs(num_bits=bits, type="int", symmetric=sym, strategy=gran,
                            group_size=group)
    t = torch.from_numpy(w)
    if gran == "group":
        g = t.reshape(w.shape[0], -1, group)
        lo, hi = g.amin(-1), g.amax(-1)
    elif gran == "channel":
        lo, hi = t.amin(-1, keepdim=True), t.amax(-1, keepdim=True)
    else:
        lo, hi = t.amin(), t.amax()
    scale, zp = calculate_qparams(lo, hi, args)
    codes = quantize(t, scale, zp, args)
    return scale.numpy(), zp.numpy(), codes.numpy(), fake_quantize(t, scale, zp, args).numpy()


CT_CASES = [(bits, sym, gran, group)
            for bits in (2, 3, 4, 5, 8) for sym in (True, False)
            for gran, group in (("group", 16), ("group", 32), ("group", 128), ("channel", None),
                                ("tensor", None))]


@pytest.mark.parametrize(("bits", "sym", "gran", "group"), CT_CASES,
                         ids=[f"w{b}-{'g' + str(g) if g else gr}-{'sym' if s else 'asym'}"
                              for b, s, gr, g in CT_CASES])
def test_rtn_matches_compressed_tensors(bits: int, sym: bool, gran: str, group: int | None):
    # the definition quantport claims (IntGrid docstring) is compressed-tensors' own
    # calculate_qparams + fake_quantize: compare with the library itself, not a re-derivation
    w = _weights(8, 256, seed=bits * 10 + sym)
    ref_scale, ref_zp, ref_codes, ref_w = _ct_reference(w, bits, sym, gran, group)
    text = f"w{bits}-{'g' + str(group) if group else gran}-{'sym' if sym else 'asym'}"
    qt = parse_scheme(text).quantize(w, name="w")
    got_scale = np.asarray(qt.scale, np.float32).reshape(ref_scale.shape)
    # An all-zero block is degenerate: compressed-tensors' scale is eps and its asymmetric
    # zero-point comes from casting NaN (0/0) to int8, quantport stores scale 1.0 and zero-point
    # qmin; both dequantize every code of that block to exactly 0, which the comparison of the
    # weights below checks. Every other block must agree in scale, zero-point and codes.
    block = {"group": group, "channel": w.shape[1], "tensor": w.size}[gran]
    zero_blocks = (w.reshape(-1, block) == 0).all(-1)
    zero = zero_blocks.reshape(ref_scale.shape)
    assert zero.sum() == (1 if group == 16 else 0)  # the block of _weights' w[0, :16]
    assert (ref_scale[zero] == np.finfo(np.float32).eps).all()
    codes_zero = np.repeat(zero_blocks, block).reshape(w.shape)
    np.testing.assert_array_equal(got_scale[~zero], ref_scale[~zero])
    if sym:
        assert qt.zero_point is None and not ref_zp.any()
    else:
        got_zp = np.asarray(qt.zero_point).reshape(ref_zp.shape)
        np.testing.assert_array_equal(got_zp[~zero], ref_zp[~zero])
    codes = np.asarray(qt.codes)
    np.testing.assert_array_equal(codes[~codes_zero], ref_codes.astype(np.int8)[~codes_zero])
    np.testing.assert_array_equal(dequantize(qt), ref_w)  # bit-exact

    # the grid and quantize_rtn on their own (what IntScheme.quantize builds on)
    if gran != "tensor":
        grid = IntGrid(bits, sym, block)
        rtn = quantize_rtn(w, grid, name="w")
        np.testing.assert_array_equal(dequantize(rtn), ref_w)
        x = w.reshape(w.shape[0], -1, block)
        params = grid.fit(x)
        codes = grid.round(x, params)
        np.testing.assert_array_equal(codes.reshape(w.shape)[~codes_zero],
                                      ref_codes.astype(np.int8)[~codes_zero])
        np.testing.assert_array_equal(grid.value(codes, params).reshape(w.shape), ref_w)


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


@pytest.mark.parametrize("bits,block", [(4, 32), (4, 128), (8, 32), (8, 64)])
def test_signed_symmetric_rule_equals_onnx_runtimes_own_quantizer(bits: int, block: int) -> None:
    """``rule="signed"`` is ONNX Runtime's symmetric blockwise quantizer (MLAS
    ``MlasQuantizeBlockwise``, behind ``MatMulNBitsQuantizer``): same scales, same codes."""
    from onnxruntime.capi import _pybind_state as ort

    rng = np.random.default_rng(bits * block)
    n, k = 48, 256
    w = (rng.standard_normal((n, k)) * rng.uniform(0.01, 2, (n, 1))).astype(np.float32)
    w[3, :block] = 0.0  # an all-zero block
    kb = k // block
    per_byte = 8 // bits
    packed = np.zeros((n, kb, block // per_byte), np.uint8)
    scales = np.zeros(n * kb, np.float32)
    zp = np.zeros(n * ((kb * bits + 7) // 8), np.uint8)
    quant = {4: ort.quantize_matmul_4bits, 8: ort.quantize_matmul_8bits}[bits]
    quant(packed, np.ascontiguousarray(w.T), scales, zp, block, n, k, True)
    if bits == 4:
        codes = np.stack([packed & 0xF, packed >> 4], -1).reshape(n, k).astype(np.int16) - 8
    else:
        codes = packed.reshape(n, k).astype(np.int16) - 128
    rec = quantize_rtn(w, IntGrid(bits, True, block, "signed"))
    nonzero = scales != 0  # MLAS leaves an all-zero block's scale at 0, quantport writes 1
    np.testing.assert_array_equal(rec.scale.reshape(-1)[nonzero], scales[nonzero])
    diff = rec.codes.astype(np.int16) - codes
    if bits == 4:
        np.testing.assert_array_equal(diff, 0)
    else:  # MLAS's vectorised 8-bit path rounds a rare value the other way (1 in 12288 here)
        assert np.abs(diff).max() <= 1 and np.count_nonzero(diff) <= diff.size // 1000
    assert (rec.codes == -(2 ** (bits - 1))).any()  # the whole code range is used
    # and it is a better fit than compressed-tensors' absmax/((qmax-qmin)/2) on the same grid
    minmax = quantize_rtn(w, IntGrid(bits, True, block))
    assert np.mean((dequantize(rec) - w) ** 2) < np.mean((dequantize(minmax) - w) ** 2)


def test_non_finite_weights_are_named_in_one_line() -> None:
    """The record's own check said "quantized tensor (4, 64) (int): scale contains NaN or
    inf", naming neither the tensor nor the cause."""
    from quantport.errors import FormatError
    from quantport.quant.scheme import parse_scheme

    w = np.ones((4, 64), np.float32)
    w[2, 5] = np.nan
    with pytest.raises(FormatError, match=r"model\.x\.weight: the weights hold NaN or inf "
                                          r"\(1 values, the first at row 2, column 5\)"):
        parse_scheme("w4-g32-sym").quantize(w, name="model.x.weight")
