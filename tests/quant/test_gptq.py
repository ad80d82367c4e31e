"""GPTQ over every grid, against a slow, obviously-correct reference.

The reference is the column loop of the GPTQ paper (Frantar et al., Algorithm 1 without the
lazy batches and the Cholesky form) in float64: invert the dampened Hessian, then for each
column round it with the grid, spread ``(w - q) / [H⁻¹]_jj`` over the later columns and remove
the column from ``H⁻¹`` by the Schur complement (the OBS update). It makes the same grid calls
as :func:`run_gptq` (fit a block when the loop reaches its first column, from the weights as
the earlier errors left them), so the codes must be equal.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pytest

from quantport.errors import ShapeError, UnsupportedQuantError
from quantport.formats.gguf_blocks import pack
from quantport.ir import QuantizedTensor, dequantize
from quantport.quant.ggml import GGML_GRIDS, quantize_ggml
from quantport.quant.gptq import (
    TensorIntGrid,
    gptq_quantize,
    grid_for,
    hessian_error,
    run_gptq,
)
from quantport.quant import gptq as gptq_module
from quantport.quant.grid import Grid, IntGrid
from quantport.quant.rtn import quantize_rtn
from quantport.quant.scheme import parse_scheme

f32 = np.float32
ROWS, COLS = 12, 512


def _weight(seed: int, rows: int = ROWS, cols: int = COLS) -> np.ndarray:
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((rows, cols)) * np.exp(0.5 * rng.standard_normal((rows, 1)))
    w[1, 37] *= 25.0  # an outlier
    w[2, 256:] = 0.0  # a whole zero super-block
    w[3, 64:96] *= 1e-4  # tiny blocks beside normal ones
    return w.astype(f32)


def _hessian(seed: int, cols: int = COLS, corr: float = 0.4) -> np.ndarray:
    """``2XXᵀ/n`` of correlated inputs with channels of very different scales (as a real
    layer's input: a few large channels)."""
    rng = np.random.default_rng(seed + 1000)
    mix = np.eye(cols) + corr * rng.standard_normal((cols, cols)) / np.sqrt(cols) * 4
    x = mix @ rng.standard_normal((cols, 2 * cols))
    x *= np.exp(rng.standard_normal((cols, 1)))[:, :]
    return 2.0 * x @ x.T / x.shape[1]


def _reference(
    w: np.ndarray,
    h: np.ndarray,
    grid: Grid,
    importance: np.ndarray | None = None,
    *,
    damp: float = 0.01,
    act_order: bool = False,
    static_groups: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Codes and values (original column order) and g_idx, one column at a time in float64."""
    rows, cols = w.shape
    gb = grid.block
    W = w.astype(f32).astype(np.float64)
    H = h.astype(np.float64).copy()
    diag = np.diag(H).copy()
    imp = (np.where(diag > 0, diag, 0) if importance is None else importance).astype(f32)
    dead = diag == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    w_orig32 = W.astype(f32)
    stats = grid.row_stats(w_orig32)
    static = None
    if static_groups:
        static = [
            grid.fit(w_orig32[:, b * gb : (b + 1) * gb][:, None, :],
                     imp[b * gb : (b + 1) * gb].reshape(1, 1, gb), row_stats=stats)
            for b in range(cols // gb)
        ]
    perm = np.argsort(-np.diag(H), kind="stable") if act_order else np.arange(cols)
    W, H, imp_p = W[:, perm], H[np.ix_(perm, perm)], imp[perm]
    H[np.diag_indices(cols)] += damp * np.mean(np.diag(H))
    hinv = np.linalg.inv(H)
    codes = np.zeros((rows, cols), dtype=np.int64)
    values = np.zeros((rows, cols))
    parts = []
    p = None
    for j in range(cols):
        if static is None:
            if j % gb == 0:
                p = grid.fit(W[:, j : j + gb].astype(f32)[:, None, :],
                             imp_p[j : j + gb].reshape(1, 1, gb), row_stats=stats)
                parts.append(p)
            c = j % gb
        else:
            b, c = divmod(int(perm[j]), gb)
            p = static[b]
        sl = slice(c, c + 1)
        q = grid.round(W[:, j].astype(f32).reshape(rows, 1, 1), p, cols=sl)
        v = grid.value(q, p, cols=sl).reshape(rows).astype(np.float64)
        codes[:, j], values[:, j] = q.reshape(rows), v
        err = (W[:, j] - v) / hinv[j, j]
        W[:, j + 1 :] -= np.outer(err, hinv[j, j + 1 :])
        # remove column j from H⁻¹ (Schur complement); only the later columns are read again
        hinv[j + 1 :, j + 1 :] -= np.outer(hinv[j + 1 :, j], hinv[j, j + 1 :]) / hinv[j, j]
    inv = np.argsort(perm)
    g_idx = None
    if act_order and not static_groups:
        g_idx = (np.arange(cols) // gb)[inv]
    return codes[:, inv], values[:, inv], g_idx


REF_CASES = {
    "int4-g32-sym": IntGrid(4, True, 32),
    "int4-g64-asym": IntGrid(4, False, 64),
    "int3-g128-sym": IntGrid(3, True, 128),
    "int8-channel-asym": IntGrid(8, False, COLS),
    "Q4_0": GGML_GRIDS["Q4_0"],
    "Q5_1": GGML_GRIDS["Q5_1"],
    "Q4_K": GGML_GRIDS["Q4_K"],
    "Q6_K": GGML_GRIDS["Q6_K"],
    "IQ4_NL": GGML_GRIDS["IQ4_NL"],
}


@pytest.mark.parametrize(
    ("grid_name", "block_cols"),
    [(name, 128) for name in REF_CASES]
    # lazy batches that cut through groups, and groups wider than a batch
    + [("int4-g32-sym", 48), ("int8-channel-asym", 48), ("Q4_K", 48), ("Q5_1", 20)],
)
def test_matches_the_column_by_column_reference(grid_name: str, block_cols: int) -> None:
    """Lazy batches (also of a width that cuts through groups), the Cholesky form and the
    group fits on the error-updated weights give the reference's codes."""
    grid = REF_CASES[grid_name]
    w, h = _weight(1), _hessian(1)
    r = run_gptq(w, h, grid, block_cols=block_cols, name=grid_name)
    codes, values, _ = _reference(w, h, grid)
    assert np.array_equal(np.asarray(r.record.codes, dtype=np.int64), codes)
    assert np.array_equal(r.values, values.astype(f32))
    assert np.array_equal(dequantize(r.record), r.values)
    assert r.error == pytest.approx(hessian_error(w, values, h), rel=1e-9)
    assert r.damp == 0.01 and not r.fell_back


@pytest.mark.parametrize(
    ("grid_name", "static"),
    [("int4-g32-sym", False), ("int4-g64-asym", False), ("int4-g32-sym", True),
     ("Q4_K", True), ("Q4_0", True)],
)
def test_act_order_matches_the_reference(grid_name: str, static: bool) -> None:
    grid = REF_CASES[grid_name]
    w, h = _weight(2), _hessian(2)
    r = run_gptq(w, h, grid, act_order=True, static_groups=static)
    codes, values, g_idx = _reference(w, h, grid, act_order=True, static_groups=static)
    assert np.array_equal(np.asarray(r.record.codes, dtype=np.int64), codes)
    assert np.array_equal(r.values, values.astype(f32))
    if static:
        assert r.record.g_idx is None
    else:
        assert np.array_equal(r.record.g_idx, g_idx)


def test_static_groups_without_act_order_matches_the_reference() -> None:
    grid = GGML_GRIDS["Q4_K"]
    w, h = _weight(3), _hessian(3)
    imp = np.random.default_rng(3).random(COLS).astype(f32) ** 2
    r = run_gptq(w, h, grid, static_groups=True, importance=imp)
    codes, values, _ = _reference(w, h, grid, imp, static_groups=True)
    assert np.array_equal(np.asarray(r.record.codes, dtype=np.int64), codes)
    assert np.array_equal(r.values, values.astype(f32))
    # static groups: the scales are the round-to-nearest fit's, only the codes move
    rtn = quantize_ggml(w, "Q4_K", imp)
    assert np.array_equal(dequantize(r.record.scale), dequantize(rtn.scale))
    assert not np.array_equal(r.record.codes, rtn.codes)


# ------------------------------------------------------------------------- H = identity

INT_VARIANTS = {
    "int4-g32-sym": IntGrid(4, True, 32),
    "int4-g64-asym": IntGrid(4, False, 64),
    "int2-g128-sym": IntGrid(2, True, 128),
    "int8-channel-sym": IntGrid(8, True, COLS),
    "int4-channel-asym": IntGrid(4, False, COLS),
}


def _assert_records_equal(a: QuantizedTensor, b: QuantizedTensor, where: str = "") -> None:
    for f in dataclasses.fields(QuantizedTensor):
        x, y = getattr(a, f.name), getattr(b, f.name)
        what = f"{where}{f.name}"
        if isinstance(x, QuantizedTensor) or isinstance(y, QuantizedTensor):
            assert isinstance(x, QuantizedTensor) and isinstance(y, QuantizedTensor), what
            _assert_records_equal(x, y, f"{what}.")
        elif isinstance(x, np.ndarray) or isinstance(y, np.ndarray):
            assert isinstance(x, np.ndarray) and isinstance(y, np.ndarray), what
            assert x.dtype == y.dtype and np.array_equal(x, y), what
        else:
            assert x == y, what


@pytest.mark.parametrize("with_imatrix", [False, True])
@pytest.mark.parametrize("type_name", list(GGML_GRIDS))
def test_identity_hessian_gives_llamacpp_rtn(type_name: str, with_imatrix: bool) -> None:
    """No correlation, no error feedback: GPTQ is llama.cpp's own quantizer, byte for byte
    (the importance GPTQ fits with defaults to diag(H), here all ones)."""
    w = _weight(4)
    imp = (np.random.default_rng(4).random(COLS) ** 4 * 50).astype(f32) if with_imatrix else None
    grid = grid_for(type_name, w.shape)
    qt = gptq_quantize(w, np.eye(COLS), grid, importance=imp)
    ref = quantize_ggml(w, type_name, np.ones(COLS, f32) if imp is None else imp)
    _assert_records_equal(qt, ref)
    assert np.array_equal(pack(qt), pack(ref))


@pytest.mark.parametrize("grid_name", list(INT_VARIANTS))
@pytest.mark.parametrize("act_order", [False, True])
def test_identity_hessian_gives_int_rtn(grid_name: str, act_order: bool) -> None:
    grid = INT_VARIANTS[grid_name]
    w = _weight(5)
    r = run_gptq(w, np.eye(COLS) * 3.0, grid, act_order=act_order)
    ref = quantize_rtn(w, grid)
    if act_order:  # equal diagonals: the activation order is the column order
        assert np.array_equal(r.record.g_idx, np.arange(COLS) // grid.block)
        r = dataclasses.replace(r, record=dataclasses.replace(r.record, g_idx=None))
    _assert_records_equal(r.record, ref)
    assert np.array_equal(r.values, dequantize(ref))


# ---------------------------------------------------------------------- it really works


@pytest.mark.parametrize("grid_name", ["int4-g64-asym", "int3-g128-sym", *GGML_GRIDS])
def test_lower_hessian_error_than_rtn(grid_name: str) -> None:
    # every ggml grid: error feedback moves weights past a block's fitted extremes, which
    # llama.cpp's legacy rounding never sees (a Q8_0 int8 cast would wrap without a clamp)
    grid = REF_CASES.get(grid_name) or GGML_GRIDS[grid_name]
    w, h = _weight(6), _hessian(6)
    r = run_gptq(w, h, grid)
    imp = np.diag(h).astype(f32)
    rtn = quantize_rtn(w, grid, None if isinstance(grid, IntGrid) else imp)
    e_rtn = hessian_error(w, dequantize(rtn), h)
    assert r.error == pytest.approx(hessian_error(w, dequantize(r.record), h), rel=1e-9)
    assert r.error < 0.8 * e_rtn, (r.error, e_rtn)
    # act-order on top (GPTQModel desc_act) stays well below RTN too
    ra = run_gptq(w, h, grid, act_order=True, static_groups=not isinstance(grid, IntGrid))
    assert ra.error < 0.8 * e_rtn, (ra.error, e_rtn)


@pytest.mark.parametrize("type_name", list(GGML_GRIDS))
def test_ggml_records_pack_to_what_gguf_py_dequantizes(type_name: str) -> None:
    """GPTQ onto every llama.cpp type gives an ordinary block layout: the GGUF bytes, read
    back by gguf-py's own dequantizer (llama.cpp's Python package, an implementation
    independent of quantport's), are exactly the values GPTQ spread its errors against."""
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize as gguf_dequantize

    w, h = _weight(17), _hessian(17)
    static = type_name in ("Q4_K", "Q3_K")  # act-order with static groups for two of them
    r = run_gptq(w, h, grid_for(type_name, w.shape), act_order=static, static_groups=static)
    data = np.asarray(pack(r.record)).reshape(ROWS, -1)
    back = gguf_dequantize(data, GGMLQuantizationType[type_name])
    assert np.array_equal(back, r.values)
    assert data.nbytes == np.asarray(pack(quantize_ggml(w, type_name))).nbytes


# --------------------------------------------------------------------------- act-order


def test_act_order_g_idx_round_trips() -> None:
    grid = IntGrid(4, False, 64)
    w, h = _weight(7), _hessian(7)
    r = run_gptq(w, h, grid, act_order=True)
    qt = r.record
    assert qt.g_idx is not None and qt.g_idx.shape == (COLS,)
    assert not np.array_equal(qt.g_idx, np.arange(COLS) // 64)  # a real reordering
    assert np.array_equal(np.bincount(qt.g_idx), np.full(COLS // 64, 64))
    # the group of a column is its position in decreasing diag(H), divided by the group size
    order = np.argsort(-np.diag(h), kind="stable")
    assert np.array_equal(qt.g_idx[order], np.arange(COLS) // 64)
    assert np.array_equal(dequantize(qt), r.values)
    # the codes sit at the original columns: re-deriving them from the values and the
    # scale each column's g_idx names gives them back
    s = np.asarray(qt.scale)[:, qt.g_idx]
    z = np.asarray(qt.zero_point)[:, qt.g_idx]
    assert np.array_equal(np.round(r.values / s + z).astype(np.int8), qt.codes)

    st = run_gptq(w, h, grid, act_order=True, static_groups=True)
    assert st.record.g_idx is None
    assert np.array_equal(dequantize(st.record), st.values)
    # static groups: the scales of the un-reordered round-to-nearest fit
    assert np.array_equal(st.record.scale, quantize_rtn(w, grid).scale)


def test_act_order_on_ggml_needs_static_groups() -> None:
    w, h = _weight(8), _hessian(8)
    with pytest.raises(UnsupportedQuantError, match="static_groups=True"):
        gptq_quantize(w, h, GGML_GRIDS["Q4_K"], act_order=True, name="blk.0.ffn_down.weight")
    qt = gptq_quantize(w, h, GGML_GRIDS["Q4_K"], act_order=True, static_groups=True)
    assert qt.g_idx is None and len(pack(qt)) == len(pack(quantize_ggml(w, "Q4_K")))


# ----------------------------------------------------------------- robustness, bad input


@pytest.mark.parametrize("grid_name", ["int4-g32-sym", "int4-g64-asym", "Q4_0"])
def test_dead_columns_round_to_zero(grid_name: str) -> None:
    grid = REF_CASES[grid_name]
    w, h = _weight(9), _hessian(9)
    dead = np.zeros(COLS, bool)
    dead[[3, 40, 41, 300, 511]] = True
    h[dead, :] = 0.0
    h[:, dead] = 0.0
    r = run_gptq(w, h, grid)
    assert not r.fell_back
    assert np.all(r.values[:, dead] == 0.0)
    codes, _, _ = _reference(w, h, grid)
    assert np.array_equal(np.asarray(r.record.codes, dtype=np.int64), codes)


def _indefinite(cols: int, neg: float, seed: int = 10) -> np.ndarray:
    """A symmetric matrix with one eigenvalue of ``-neg * mean(diag)``, the rest positive."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((cols, cols)))
    lam = rng.random(cols) + 0.5
    lam[0] = -neg * lam.mean() / (1 - neg / cols)  # so that mean(diag) = mean(lam) stays > 0
    return (q * lam) @ q.T


def test_damp_is_retried_until_the_factorisation_succeeds(caplog) -> None:
    w = _weight(11)
    h = _indefinite(COLS, 0.05)
    with caplog.at_level(logging.WARNING, logger="quantport.quant.gptq"):
        r = run_gptq(w, h, IntGrid(4, True, 64), name="model.layers.0.mlp.up_proj.weight")
    assert r.damp == pytest.approx(0.1) and not r.fell_back
    assert not caplog.records
    hd = h + 0.1 * np.mean(np.diag(h)) * np.eye(COLS)
    assert np.array_equal(r.record.codes, gptq_quantize(w, hd, IntGrid(4, True, 64),
                                                        damp=0.0).codes)


@pytest.mark.parametrize("bad", ["indefinite", "nan"])
def test_hopeless_hessian_falls_back_to_rtn_with_a_warning(bad: str, caplog) -> None:
    w = _weight(12)
    if bad == "indefinite":
        h = np.kron(np.eye(COLS // 2), np.array([[1.0, 10.0], [10.0, 1.0]]))  # eigenvalue -9
    else:
        h = _hessian(12)
        h[5, 7] = np.nan
    name = "model.layers.3.self_attn.o_proj.weight"
    for grid in (IntGrid(4, False, 32), GGML_GRIDS["Q4_K"]):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="quantport.quant.gptq"):
            r = run_gptq(w, h, grid, name=name, act_order=True, static_groups=True)
        assert r.fell_back and r.damp is None
        warnings = [rec for rec in caplog.records if rec.levelno == logging.WARNING]
        assert len(warnings) == 1 and name in warnings[0].getMessage()
        assert "round" in warnings[0].getMessage()
        assert np.array_equal(dequantize(r.record), r.values)
        if isinstance(grid, IntGrid):
            _assert_records_equal(r.record, quantize_rtn(w, grid))


def test_bad_shapes_are_refused() -> None:
    w, h = _weight(13), _hessian(13)
    grid = IntGrid(4, True, 32)
    with pytest.raises(ShapeError, match="Hessian of shape"):
        gptq_quantize(w, h[:-1, :-1], grid, name="x.weight")
    with pytest.raises(ShapeError, match="importance"):
        gptq_quantize(w, h, grid, importance=np.ones(COLS - 1))
    with pytest.raises(ShapeError, match="multiple"):
        gptq_quantize(w[:, :100], h[:100, :100], grid)
    with pytest.raises(ShapeError, match="2-D"):
        gptq_quantize(w[0], h, grid)


# ---------------------------------------------------------------------------- grid_for


def test_grid_for() -> None:
    w = _weight(14, 8, 768)
    for text in ("w4-g64-sym", "w4-g128-asym", "w8-channel-sym", "w3-channel-asym"):
        scheme = parse_scheme(text)
        grid = grid_for(scheme, w.shape)
        assert isinstance(grid, IntGrid)
        _assert_records_equal(quantize_rtn(w, grid), scheme.quantize(w))
    assert grid_for("Q6_K", w.shape) is GGML_GRIDS["Q6_K"]
    with pytest.raises(ShapeError, match="block of 256"):
        grid_for("Q4_K", (8, 576), name="blk.0.attn_q.weight")
    with pytest.raises(ShapeError, match="group size"):
        grid_for(parse_scheme("w4-g128-sym"), (8, 576))
    with pytest.raises(UnsupportedQuantError, match="F16"):
        grid_for("F16", w.shape)



@pytest.mark.parametrize("text", ["w8-tensor-sym", "w4-tensor-asym"])
def test_per_tensor_schemes(text: str) -> None:
    """One scale for the whole tensor: H = I gives IntScheme.quantize's record, a correlated
    H a lower error with the same scale; act-order needs no g_idx (one group)."""
    scheme = parse_scheme(text)
    w, h = _weight(16), _hessian(16)
    grid = grid_for(scheme, w.shape)
    assert isinstance(grid, TensorIntGrid)
    ref = scheme.quantize(w)
    _assert_records_equal(quantize_rtn(w, grid), ref)
    _assert_records_equal(gptq_quantize(w, np.eye(COLS), grid), ref)
    for act_order in (False, True):
        r = run_gptq(w, h, grid, act_order=act_order)
        assert r.record.g_idx is None and r.record.block_size == w.shape
        assert np.array_equal(r.record.scale, ref.scale)
        assert np.array_equal(dequantize(r.record), r.values)
        assert r.error < 0.8 * hessian_error(w, dequantize(ref), h)
    codes, values, _ = _reference(w, h, grid)
    assert np.array_equal(np.asarray(gptq_quantize(w, h, grid).codes, np.int64), codes)


@pytest.mark.parametrize("n", [7, 300, 577])
def test_upper_cholesky_of_the_inverse(n: int) -> None:
    """The blocked factorisation gives the factor the reference computes with cholesky,
    cholesky_inverse, cholesky(upper=True): upper, positive diagonal, Uᵀ U = H⁻¹."""
    from quantport.quant.gptq import _upper_chol_of_inverse

    rng = np.random.default_rng(n)
    a = rng.standard_normal((n, 2 * n))
    h = a @ a.T / n + 0.01 * np.eye(n)
    u = _upper_chol_of_inverse(h)
    ref = np.linalg.cholesky(np.linalg.inv(h)).T  # upper factor of H⁻¹
    assert np.array_equal(u, np.triu(u)) and np.all(np.diag(u) > 0)
    assert np.allclose(u, ref, rtol=1e-9, atol=1e-12 * np.abs(ref).max())
    with pytest.raises(np.linalg.LinAlgError):
        _upper_chol_of_inverse(h - 2 * np.linalg.eigvalsh(h).max() * np.eye(n))


@pytest.mark.parametrize("act_order", [False, True])
def test_a_shared_factor_gives_the_same_result_with_one_factorisation(
        act_order: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Weights reading one input (q/k/v) share one Cholesky factor of the damped H⁻¹: the
    records are those of separate calls, and the factorisation runs once per order and damp."""
    import quantport.quant.gptq as gptq_mod

    h = _hessian(7)
    grid = IntGrid(4, True, 32)
    alone = [run_gptq(_weight(s), h, grid, act_order=act_order, static_groups=act_order)
             for s in (1, 2)]
    calls = []
    real = gptq_mod._inverse_cholesky
    monkeypatch.setattr(gptq_mod, "_inverse_cholesky",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    factor: dict = {}
    shared = [run_gptq(_weight(s), h, grid, act_order=act_order, static_groups=act_order,
                       factor=factor) for s in (1, 2)]
    assert len(calls) == 1
    for a, b in zip(alone, shared, strict=True):
        np.testing.assert_array_equal(a.record.codes, b.record.codes)
        np.testing.assert_array_equal(a.values, b.values)
        assert a.loss == b.loss and a.damp == b.damp
    run_gptq(_weight(3), h, grid, damp=0.1, factor=factor)  # another damp: factorised anew
    assert len(calls) == 2


def _asymmetric_case(seed: int, cols: int = COLS) -> tuple[np.ndarray, np.ndarray]:
    """``H = 2XXᵀ/n`` of the rounded model's inputs and ``cross = 2(X_f - X)Xᵀ/n`` with the
    float model's ``X_f`` (``[in, tokens]``), as the calibration engine sums them."""
    rng = np.random.default_rng(seed + 2000)
    mix = np.eye(cols) + 0.4 * rng.standard_normal((cols, cols)) / np.sqrt(cols) * 4
    x = mix @ rng.standard_normal((cols, 2 * cols)) * np.exp(rng.standard_normal((cols, 1)))
    xf = x + 0.1 * np.abs(x).mean() * rng.standard_normal(x.shape)
    n = x.shape[1]
    return 2.0 * x @ x.T / n, 2.0 * (xf - x) @ x.T / n


def _asymmetric_target(w: np.ndarray, h: np.ndarray, cross: np.ndarray,
                       damp: float) -> np.ndarray:
    """The least-squares weight for the float output, ``W + W·cross·(H + λI)⁻¹``, by a
    plain solve (run_gptq uses its own Cholesky factor instead)."""
    hd = h + damp * np.mean(np.diag(h)) * np.eye(h.shape[0])
    return (w.astype(np.float64) + np.linalg.solve(hd, (w.astype(np.float64) @ cross).T).T
            ).astype(f32)


def test_asymmetric_target_is_the_least_squares_weight() -> None:
    """Undamped, the target solves ``min ||Ŵ X - W X_f||``, and that objective is GPTQ's on
    the target plus a constant: so rounding the target by GPTQ minimises it."""
    rng = np.random.default_rng(0)
    n, k, o = 400, 12, 5
    x = rng.standard_normal((k, n))
    xf = x + 0.3 * rng.standard_normal((k, n))
    w = rng.standard_normal((o, k))
    h, cross = 2 / n * x @ x.T, 2 / n * (xf - x) @ x.T
    hd = h  # damp 0
    target = w + np.linalg.solve(hd, (w @ cross).T).T
    np.testing.assert_allclose(target, np.linalg.lstsq(x.T, xf.T @ w.T, rcond=None)[0].T,
                               rtol=1e-9, atol=1e-9)

    def excess(q: np.ndarray) -> float:
        return float(((q @ x - w @ xf) ** 2).sum() - (((q - target) @ x) ** 2).sum())

    a, b = excess(rng.standard_normal((o, k))), excess(np.round(w))
    assert abs(a - b) < 1e-8 * abs(a)


@pytest.mark.parametrize(
    ("grid_name", "act_order", "static"),
    [("int4-g32-sym", False, False), ("int4-g64-asym", True, False), ("Q4_K", True, True),
     ("Q5_1", False, False)],
)
def test_cross_rounds_the_asymmetric_target(grid_name: str, act_order: bool,
                                            static: bool, monkeypatch) -> None:
    """With ``cross``, GPTQ rounds the least-squares target (computed here by a plain solve)
    as the column-by-column reference does, in act-order too (where run_gptq's factor is of
    the permuted Hessian)."""
    grid = REF_CASES[grid_name]
    w = _weight(5)
    h, cross = _asymmetric_case(5)
    r = run_gptq(w, h, grid, cross=cross, act_order=act_order, static_groups=static)
    target = _asymmetric_target(w, h, cross, 0.01)
    assert np.abs(target - w).max() > 0.01 * np.abs(w).max()  # a real shift
    codes, values, _ = _reference(target, h, grid, act_order=act_order, static_groups=static)
    # the target by a solve and by the factor agree to float64 rounding; a float32 value
    # sitting on a rounding boundary could still round the other way
    same = np.asarray(r.record.codes, dtype=np.int64) == codes
    assert same.mean() > 0.999, same.mean()
    assert r.error == pytest.approx(hessian_error(target, r.values, h), rel=1e-6)
    # and it lowers the asymmetric objective against plain GPTQ: ||(Q - W*) X||² + const
    plain = run_gptq(w, h, grid, act_order=act_order, static_groups=static)
    assert hessian_error(target, r.values, h) < hessian_error(target, plain.values, h)
    # the target computed a few rows at a time (a tall token table's) is the same
    monkeypatch.setattr(gptq_module, "_SHIFT_ROWS", 5)
    chunked = run_gptq(w, h, grid, cross=cross, act_order=act_order, static_groups=static)
    # (a BLAS may block the rows differently: allow a value on a rounding boundary)
    assert (chunked.values == r.values).mean() > 0.999
