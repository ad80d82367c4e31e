"""Tests of the ggml grids: byte-exactness against llama.cpp and the search helpers."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from quantport.errors import ShapeError, UnsupportedQuantError
from quantport.formats.gguf_blocks import GGML_BLOCK, pack
from quantport.quant import _ggml_search as S
from quantport.quant.ggml import GGML_GRIDS, quantize_ggml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import _ggml_ref  # noqa: E402

f32 = np.float32
HAVE_LLAMA = _ggml_ref.load() is not None
# skipped when llama-cpp-python is missing; tests/conftest.py fails such skips under CI=true
needs_llama = pytest.mark.skipif(not HAVE_LLAMA, reason=_ggml_ref.unavailable_reason())

K_TYPES = ["Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"]
LEGACY = ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "IQ4_NL"]


def _data(dist: str, rows: int, cols: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if dist == "normal":
        w = rng.standard_normal((rows, cols)) * 0.02
    elif dist == "heavy":
        w = rng.standard_t(2, (rows, cols)) * 0.01
    elif dist == "tiny":
        w = rng.standard_normal((rows, cols)) * 1e-6
        w[0] *= 1e-3  # fp16 subnormal / underflowing scales
    elif dist == "subnormal":  # block ranges so small that 1/scale overflows to inf
        w = rng.standard_normal((rows, cols)) * 0.02
        w[0] = rng.standard_normal(cols) * 1e-39
        w[1, ::3] = 2e-39
        w[1, 1::3] = -3e-39
        w[1, 2::3] = 0.0
    elif dist == "mixed":  # zero rows, constant blocks, outliers, positive-only blocks
        w = rng.standard_normal((rows, cols)) * 0.05
        w[0] = 0
        w[1, : cols // 2] = 0.25
        w[2] = np.abs(w[2])
        w[3, ::37] *= 200
    else:
        raise ValueError(dist)
    return w.astype(f32)


def _imatrix(cols: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed + 1000)
    imp = (rng.random(cols) ** 4 * 50).astype(f32)
    imp[:7] = 0.0  # zero-importance columns
    return imp


def _bad_blocks(type_name: str, ref: np.ndarray, got: np.ndarray) -> int:
    size = GGML_BLOCK[type_name][1]
    return int((ref.reshape(-1, size) != got.reshape(-1, size)).any(axis=-1).sum())


@pytest.mark.llamacpp
@needs_llama
@pytest.mark.parametrize("with_imatrix", [False, True], ids=["ref", "imatrix"])
@pytest.mark.parametrize("dist", ["normal", "heavy", "tiny", "mixed", "subnormal"])
@pytest.mark.parametrize("type_name", LEGACY + K_TYPES)
def test_bytes_match_llama_cpp(type_name: str, dist: str, with_imatrix: bool) -> None:
    block = GGML_BLOCK[type_name][0]
    shapes = [(16, 512), (5, 3 * block)] if block == 256 else [(16, 512), (7, 96)]
    for i, (rows, cols) in enumerate(shapes):
        w = _data(dist, rows, cols, seed=i)
        imp = _imatrix(cols, i) if with_imatrix else None
        ref = _ggml_ref.quantize_chunk(type_name, w, imp)
        got = pack(quantize_ggml(w, type_name, imp))
        assert got.shape == ref.shape
        bad = _bad_blocks(type_name, ref, got)
        assert bad == 0, f"{type_name} {dist} {rows}x{cols}: {bad}/{ref.size // GGML_BLOCK[type_name][1]} blocks differ"


@pytest.mark.llamacpp
@needs_llama
@pytest.mark.parametrize("type_name", ["Q4_0", "Q4_K", "Q6_K"])
def test_bytes_match_larger_matrix(type_name: str) -> None:
    """A few hundred thousand weights: exercises the chunked/threaded path."""
    w = _data("heavy", 96, 4096, seed=7)
    for imp in (None, _imatrix(4096, 7)):
        ref = _ggml_ref.quantize_chunk(type_name, w, imp)
        got = pack(quantize_ggml(w, type_name, imp))
        assert _bad_blocks(type_name, ref, got) == 0


def test_unknown_type_and_bad_width() -> None:
    w = np.zeros((2, 512), dtype=f32)
    with pytest.raises(UnsupportedQuantError, match="Q4_K"):
        quantize_ggml(w, "Q7_K")
    with pytest.raises(ShapeError):
        quantize_ggml(np.zeros((2, 576), dtype=f32), "Q4_K")
    with pytest.raises(ShapeError):
        quantize_ggml(np.zeros((2, 40), dtype=f32), "Q8_0")


def test_grid_registry_and_value_matches_dequantize() -> None:
    from quantport.ir import dequantize

    assert set(GGML_GRIDS) == set(GGML_BLOCK)
    w = _data("normal", 4, 512, seed=3)
    for name, grid in GGML_GRIDS.items():
        x = w.reshape(4, 512 // grid.block, grid.block)
        params = grid.fit(x)
        codes = grid.round(x, params)
        qt = grid.assemble((4, 512), codes, params)
        assert qt.encoding == name
        np.testing.assert_array_equal(grid.value(codes, params).reshape(4, 512), dequantize(qt))


# ------------------------------------------------------------- slow per-block references


def _nearest_int(v: float) -> int:
    t = np.array([f32(v) + f32(12582912.0)], dtype=f32).view(np.int32)[0]
    return int((t & 0x7FFFFF) - 0x400000)


def _slow_qkx2(x, w, nmax, rmin, rdelta, nstep, use_mad):
    """Line-by-line transcription of ggml-quants.c make_qkx2_quants (float32 scalars)."""
    n = len(x)
    x = [f32(v) for v in x]
    w = [f32(v) for v in w]
    mn = x[0]
    mx = x[0]
    sum_w = w[0]
    sum_x = f32(sum_w * x[0])
    for i in range(1, n):
        mn = x[i] if x[i] < mn else mn
        mx = x[i] if x[i] > mx else mx
        sum_w = f32(sum_w + w[i])
        sum_x = f32(sum_x + f32(w[i] * x[i]))
    if mn > 0:
        mn = f32(0)
    if mx == mn:
        return f32(0), f32(-mn), [0] * n
    iscale = f32(f32(nmax) / f32(mx - mn))
    scale = f32(f32(1) / iscale)
    L = [0] * n
    best = f32(0)
    for i in range(n):
        L[i] = max(0, min(nmax, _nearest_int(f32(iscale * f32(x[i] - mn)))))
        diff = f32(f32(f32(scale * f32(L[i])) + mn) - x[i])
        diff = abs(diff) if use_mad else f32(diff * diff)
        best = f32(best + f32(w[i] * diff))
    for step in range(nstep + 1):
        iscale = f32(f32(f32(f32(rmin) + f32(f32(rdelta) * f32(step))) + f32(nmax)) / f32(mx - mn))
        sl = sl2 = sxl = f32(0)
        La = [0] * n
        for i in range(n):
            La[i] = max(0, min(nmax, _nearest_int(f32(iscale * f32(x[i] - mn)))))
            wl = f32(w[i] * La[i])
            sl = f32(sl + wl)
            sl2 = f32(sl2 + f32(wl * La[i]))
            sxl = f32(sxl + f32(wl * x[i]))
        D = f32(f32(sum_w * sl2) - f32(sl * sl))
        if D > 0:
            ts = f32(f32(f32(sum_w * sxl) - f32(sum_x * sl)) / D)
            tm = f32(f32(f32(sl2 * sum_x) - f32(sl * sxl)) / D)
            if tm > 0:
                tm = f32(0)
                ts = f32(sxl / sl2)
            cur = f32(0)
            for i in range(n):
                diff = f32(f32(f32(ts * f32(La[i])) + tm) - x[i])
                diff = abs(diff) if use_mad else f32(diff * diff)
                cur = f32(cur + f32(w[i] * diff))
            if cur < best:
                L, best, scale, mn = La, cur, ts, tm
    return scale, f32(-mn), L


def _slow_qx(x, nmax, qw):
    """Transcription of make_qx_quants(n, nmax, x, L, rmse_type=1, qw); L returned minus nmax."""
    n = len(x)
    x = [f32(v) for v in x]
    amax = mx = f32(0)
    for v in x:
        if abs(v) > amax:
            amax, mx = abs(v), v
    if amax < f32(1e-15):
        return f32(0), [-nmax] * n
    w = [f32(qw[i]) if qw is not None else f32(x[i] * x[i]) for i in range(n)]

    def run(iscale):
        sumlx = suml2 = f32(0)
        L = []
        for i in range(n):
            l_ = max(-nmax, min(nmax - 1, _nearest_int(f32(iscale * x[i]))))
            L.append(l_)
            sumlx = f32(sumlx + f32(f32(w[i] * x[i]) * l_))
            suml2 = f32(suml2 + f32(f32(w[i] * l_) * l_))
        return sumlx, suml2, L

    iscale = f32(f32(-nmax) / mx)
    sumlx, suml2, L = run(iscale)
    scale = f32(sumlx / suml2) if suml2 else f32(0)
    best = f32(scale * sumlx)
    for step in range(-9, 10):
        if step == 0:
            continue
        iscale = f32(f32(-f32(f32(nmax) + f32(f32(0.1) * f32(step)))) / mx)
        sumlx, suml2, La = run(iscale)
        if suml2 > 0 and f32(sumlx * sumlx) > f32(best * suml2):
            L = La
            scale = f32(sumlx / suml2)
            best = f32(scale * sumlx)
    return scale, L


def _blocks(n: int, count: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((count, n)) * np.exp(rng.standard_normal((count, 1)))
    x[::5] = np.abs(x[::5])  # positive-only blocks (min clamps to 0)
    x[3] = 0.0  # flat block
    x[4, :3] = 40.0  # outliers
    return x.astype(f32)


@pytest.mark.parametrize(
    ("n", "nmax", "rmin", "rdelta", "nstep", "use_mad"),
    [(32, 15, -1.0, 0.1, 20, False), (16, 3, -0.5, 0.1, 15, True), (32, 31, -0.9, 0.05, 36, False)],
)
def test_make_qkx2_quants_matches_slow_reference(n, nmax, rmin, rdelta, nstep, use_mad) -> None:
    xb = _blocks(n, 60, seed=nmax)
    wb = (np.sqrt((xb * xb).mean(axis=1, keepdims=True)) + np.abs(xb)).astype(f32)
    scale, the_min, isc, off = S.make_qkx2_quants(
        np.ascontiguousarray(xb.T), np.ascontiguousarray(wb.T), nmax, rmin, rdelta, nstep, use_mad
    )
    codes = S.qkx_codes(np.ascontiguousarray(xb.T), isc, off, nmax)
    for b in range(xb.shape[0]):
        s, m, L = _slow_qkx2(xb[b], wb[b], nmax, rmin, rdelta, nstep, use_mad)
        assert (scale[b], the_min[b]) == (s, m), b
        assert codes[:, b].tolist() == L, b


@pytest.mark.parametrize(("n", "nmax", "weighted"), [(16, 32, False), (32, 8, True), (16, 4, True)])
def test_make_qx_quants_matches_slow_reference(n, nmax, weighted) -> None:
    xb = _blocks(n, 60, seed=n + nmax)
    qw = (np.random.default_rng(1).random(xb.shape) * 3).astype(f32) if weighted else None
    scale, isc, zero = S.make_qx_quants(
        np.ascontiguousarray(xb.T), nmax, None if qw is None else np.ascontiguousarray(qw.T)
    )
    codes = np.clip(S.nearest_int(isc * xb.T), -nmax, nmax - 1)
    codes[:, zero] = -nmax
    for b in range(xb.shape[0]):
        s, L = _slow_qx(xb[b], nmax, None if qw is None else qw[b])
        assert scale[b] == s, b
        assert codes[:, b].tolist() == L, b


def test_nearest_int_and_seq_sum() -> None:
    v = np.array([0.5, 1.5, 2.5, -0.5, -1.5, 3.49999, 4194303.0, 1e9], dtype=f32)
    assert S.nearest_int(v).tolist() == [_nearest_int(t) for t in v]
    a = np.random.default_rng(0).standard_normal((32, 5)).astype(f32) * 1e3
    expect = np.zeros(5, dtype=f32)
    for row in a:
        expect = expect + row
    np.testing.assert_array_equal(S.seq_sum(a), expect)
    np.testing.assert_array_equal(S.seq_sum(a[:, :1]), expect[:1])


def test_first_absmax_matches_c_loop() -> None:
    """``first_absmax`` against the C loop, on columns with ties of opposite sign (the first
    one wins), repeated maxima, all-zero and -0.0 columns."""
    rng = np.random.default_rng(3)
    x = (rng.integers(-4, 5, (16, 400)) * 0.5).astype(f32)  # few values: many ties
    x[:, 0] = 0.0
    x[:, 1] = -0.0
    x[:, 2] = [-2.0, 2.0] + [0.0] * 14  # -v first
    x[:, 3] = [1.0, 2.0, -2.0] + [0.0] * 13  # +v first
    amax, mx = S.first_absmax(x)
    for c in range(x.shape[1]):
        a, m = f32(0.0), f32(0.0)
        for v in x[:, c]:  # float amax = 0, max = 0; if (ax > amax) { amax = ax; max = x[i]; }
            if abs(v) > a:
                a, m = abs(v), v
        assert (amax[c], mx[c]) == (a, m), c
        assert not np.signbit(mx[c]) or m < 0, c  # +0.0 for zero columns, as C
    assert (mx[2], mx[3]) == (-2.0, 2.0)
