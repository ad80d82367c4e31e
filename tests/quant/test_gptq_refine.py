"""GPTQ's refinement of a ggml grid's scales after the column loop (``run_gptq(refine=True)``).

Given the codes, each row's Hessian error ``(w - v)ᵀ H (w - v)`` is a quadratic function of the
block scales (and mins): the legacy types' fp16 scales are refitted by least squares, the
k-quants' integer sub-block scales and mins moved by exact coordinate descent and their
super-block scales refitted; a row keeps the refined parameters only where its error is lower.
"""

from __future__ import annotations

import numpy as np
import pytest

from quantport.formats.gguf_blocks import pack
from quantport.ir import dequantize
from quantport.quant.ggml import GGML_GRIDS, quantize_ggml
from quantport.quant.gptq import _block_lstsq, _row_errors, hessian_error, run_gptq

f32 = np.float32
ROWS, COLS = 12, 512


def _weight(seed: int, rows: int = ROWS, cols: int = COLS) -> np.ndarray:
    """As test_gptq's: rows of different scales, an outlier, a zero super-block, tiny blocks."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((rows, cols)) * np.exp(0.5 * rng.standard_normal((rows, 1)))
    w[1, 37] *= 25.0
    w[2, 256:] = 0.0
    w[3, 64:96] *= 1e-4
    return w.astype(f32)


def _hessian(seed: int, cols: int = COLS, corr: float = 0.4) -> np.ndarray:
    """``2XXᵀ/n`` of correlated inputs with channels of very different scales."""
    rng = np.random.default_rng(seed + 1000)
    mix = np.eye(cols) + corr * rng.standard_normal((cols, cols)) / np.sqrt(cols) * 4
    x = mix @ rng.standard_normal((cols, 2 * cols))
    x *= np.exp(rng.standard_normal((cols, 1)))[:, :]
    return 2.0 * x @ x.T / x.shape[1]


def _row_errs(w: np.ndarray, rec, h: np.ndarray) -> np.ndarray:
    return _row_errors(w.astype(np.float64), dequantize(rec).astype(np.float64), h)


@pytest.mark.parametrize("type_name", list(GGML_GRIDS))
@pytest.mark.parametrize("act_order", [False, True])
def test_refine_never_raises_a_rows_error(type_name: str, act_order: bool) -> None:
    grid = GGML_GRIDS[type_name]
    w, h = _weight(11), _hessian(11)
    kw = dict(act_order=act_order, static_groups=act_order)
    base = run_gptq(w, h, grid, **kw)
    ref = run_gptq(w, h, grid, refine=True, passes=2, **kw)
    eb, er = _row_errs(w, base.record, h), _row_errs(w, ref.record, h)
    assert (er <= eb * (1 + 1e-12)).all()
    assert ref.error == pytest.approx(hessian_error(w, dequantize(ref.record), h), rel=1e-9)
    assert ref.error <= base.error
    # an ordinary record: its values are what it dequantizes to, and it packs
    assert np.array_equal(ref.values, dequantize(ref.record))
    assert pack(ref.record).size > 0


@pytest.mark.parametrize("type_name", ["Q4_K", "Q6_K", "Q5_0", "Q8_0"])
def test_refine_lowers_the_error_on_correlated_inputs(type_name: str) -> None:
    grid = GGML_GRIDS[type_name]
    w, h = _weight(12), _hessian(12)
    base = run_gptq(w, h, grid, act_order=True, static_groups=True)
    ref = run_gptq(w, h, grid, act_order=True, static_groups=True, refine=True, passes=2)
    assert ref.error < 0.99 * base.error, (ref.error, base.error)


@pytest.mark.parametrize("type_name", list(GGML_GRIDS))
def test_identity_hessian_refine_keeps_rtn_codes(type_name: str) -> None:
    """H = I, one pass: the codes stay llama.cpp's round-to-nearest codes; only the scales
    may move, and only where they lower the (plain squared) error."""
    w = _weight(4)
    imp = np.ones(COLS, f32)
    r = run_gptq(w, np.eye(COLS), GGML_GRIDS[type_name], refine=True)
    ref = quantize_ggml(w, type_name, imp)
    assert np.array_equal(r.record.codes, ref.codes)
    assert r.error <= hessian_error(w, dequantize(ref), np.eye(COLS)) * (1 + 1e-12)


def test_block_least_squares_matches_a_dense_solve() -> None:
    """The per-row block least squares against an explicit design matrix and lstsq on
    ``L^T (w - B θ)`` with ``H = L L^T``."""
    rng = np.random.default_rng(7)
    rows, nb, gb = 3, 4, 8
    cols = nb * gb
    w = rng.standard_normal((rows, cols))
    h = _hessian(7, cols)
    u1 = rng.integers(-8, 8, (rows, nb, gb)).astype(np.float64)
    u2 = np.ones((rows, nb, gb))
    theta = _block_lstsq(w, h, [u1, u2])
    lo = np.linalg.cholesky(h)
    for r in range(rows):
        b = np.zeros((cols, 2 * nb))
        for k in range(nb):
            b[k * gb:(k + 1) * gb, k] = u1[r, k]
            b[k * gb:(k + 1) * gb, nb + k] = u2[r, k]
        want = np.linalg.lstsq(lo.T @ b, lo.T @ w[r], rcond=None)[0]
        np.testing.assert_allclose(theta[r], want, rtol=1e-7, atol=1e-9)
