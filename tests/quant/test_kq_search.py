"""The compiled k-quant searches (``quant/_kq_search.c``) against their numpy reference.

The numpy functions of ``_ggml_search`` are byte-tested against llama.cpp's quantizer
(tests/quant/test_ggml.py, tests/formats); the compiled ones must return the very same float32
bits (signed zeros included) on every block, awkward ones first: all zero, constant, all
positive, exact zeros, subnormal ranges, huge values, NaN and inf (the last three hand the
block to numpy).
"""

from __future__ import annotations

import numpy as np
import pytest

from quantport.quant import _ggml_search as S
from quantport.quant import ggml
from quantport.quant.ggml import GGML_GRIDS, quantize_ggml


def test_the_compiled_searches_are_built() -> None:
    """setup.py builds them with the package; the benchmarks' speed depends on them, so a
    missing build is a failure here, not a silent fallback."""
    assert S.COMPILED is not None, "quant/_kq_search.c was not built (pip install -e . needs cc)"


class _Counting:
    """``S.COMPILED`` with each function's return codes recorded: 0 is the compiled result,
    1 the hand-over to numpy."""

    def __init__(self, lib) -> None:
        self.lib, self.codes = lib, []

    def __getattr__(self, name):
        fn = getattr(self.lib, name)

        def call(*args):
            r = fn(*args)
            self.codes.append(r)
            return r
        return call


@pytest.fixture
def compiled(monkeypatch) -> _Counting:
    assert S.COMPILED is not None
    c = _Counting(S.COMPILED)
    monkeypatch.setattr(S, "COMPILED", c)
    return c


def _blocks(n: int, b: int, seed: int, finite: bool = True) -> np.ndarray:
    """``[n, b]`` element-major blocks: Gaussian ones of several scales, then the awkward ones
    (subnormal ranges, overflowing squares, NaN and inf only when not ``finite``: a call that
    meets them hands all its blocks to numpy)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, b)).astype(np.float32)
    x *= np.float32(10.0) ** rng.integers(-4, 2, b).astype(np.float32)
    x[:, 0] = 0.0  # all zero
    x[:, 1] = -0.0
    x[:, 2] = 0.25  # constant
    x[:, 3] = np.abs(x[:, 3])  # all positive: min clamped to 0
    x[::3, 4] = 0.0  # exact zeros among others
    x[:, 5] = np.abs(x[:, 5])
    x[0, 5] = -0.0
    x[:, 10] = np.float32(1e-30)
    x[0, 10] = np.float32(2e-30)
    if not finite:
        x[:, 6] = x[:, 6] * np.float32(1e-39)  # subnormal range: the inverse scale overflows
        x[:, 7] *= np.float32(1e30)
        x[1, 8] = np.nan
        x[2, 9] = np.inf
    return x


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def _both(fn, *args):
    """``fn(*args)`` by numpy, then by the compiled code (float warnings off, as the grids
    call them)."""
    try:
        with np.errstate(all="ignore"):
            S.use_compiled = False
            ref = fn(*args)
            S.use_compiled = True
            got = fn(*args)
    finally:
        S.use_compiled = True
    return ref, got


# llama.cpp's calls: Q2_K ref (16, 3, -0.5, 0.1, 15, mad), Q4_K / Q5_K ref, the imatrix search
@pytest.mark.parametrize("n, nmax, rmin, rdelta, nstep, mad", [
    (16, 3, -0.5, 0.1, 15, True), (32, 15, -1.0, 0.1, 20, False), (32, 31, -0.5, 0.1, 15, False),
    (32, 15, -0.9, 0.05, 36, False), (16, 3, -0.9, 0.05, 36, False)])
def test_make_qkx2_quants_compiled_equals_numpy(compiled, n, nmax, rmin, rdelta, nstep,
                                                mad) -> None:
    for seed, b, finite in ((0, 300, True), (1, 11, True), (2, 64, True), (0, 300, False)):
        x = _blocks(n, b, seed, finite)
        with np.errstate(over="ignore", invalid="ignore"):
            w = np.abs(x) + (np.float32(0.1) if mad else np.sqrt(np.mean(x * x, 0)))
        ref, got = _both(S.make_qkx2_quants, x, w.astype(np.float32), nmax, rmin, rdelta,
                         nstep, mad)
        for r, g in zip(ref, got, strict=True):
            assert _same(r, g)
        # the compiled search ran (finite blocks) or handed the call to numpy (NaN, inf)
        assert compiled.codes[-1] == (0 if finite else 1)


@pytest.mark.parametrize("nmax, weighted", [(32, False), (32, True), (4, True)])
def test_make_qx_quants_compiled_equals_numpy(compiled, nmax, weighted) -> None:
    for seed, b, finite in ((3, 500, True), (4, 11, True), (3, 500, False)):
        x = _blocks(16, b, seed, finite)
        qw = (np.abs(x) + np.float32(0.5)).astype(np.float32) if weighted else None
        ref, got = _both(S.make_qx_quants, x, nmax, qw)
        for r, g in zip(ref, got, strict=True):
            assert _same(r, g)
        assert compiled.codes[-1] == (0 if finite else 1)


@pytest.mark.parametrize("type_name", ["Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"])
@pytest.mark.parametrize("imatrix", [False, True])
def test_k_quant_records_compiled_equal_numpy(compiled, type_name: str, imatrix: bool) -> None:
    """Whole tensors (searches, then the requantization with fp16 scales, which the
    compiled ``qp_round_k`` does): the same codes, scales and mins."""
    rng = np.random.default_rng(5)
    w = (rng.standard_normal((6, 512)) * 0.02).astype(np.float32)
    w[0, :256] = 0.0
    w[1, 256:] = 0.125
    w[2, :32] = np.float32(1e-30)
    w[3, 100] = np.float32(3e4)
    imp = (rng.random(512) + 0.01).astype(np.float32) if imatrix else None
    ref, got = _both(quantize_ggml, w, type_name, imp)
    assert _same(ref.codes, got.codes)
    for part in ("scale", "zero_point"):
        r, g = getattr(ref, part), getattr(got, part)
        assert (r is None) == (g is None)
        if r is not None:
            assert _same(r.codes, g.codes) and _same(r.scale, g.scale)
    assert compiled.codes and not any(compiled.codes)  # qp_round_k returns None


def test_round_k_keeps_nearest_ints_wrapped_values() -> None:
    """A scale so small that ``(x + dm)/ds`` passes 2^22: ggml's nearest_int wraps there (the
    C assert is compiled out) and both paths clamp the same wrapped value."""
    grid = GGML_GRIDS["Q4_K"]
    x = np.linspace(-1, 1, 256, dtype=np.float32).reshape(1, 1, 256)
    params = grid.fit(x)
    params["d"] = np.full_like(params["d"], np.float32(1e-12))
    ref, got = _both(grid.round, x, params)
    assert _same(ref, got)
    assert ggml.GgmlKGrid is type(grid)
