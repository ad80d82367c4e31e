"""Grids used column by column (what GPTQ-style error-feedback rounding does).

Fitting each block on its own and rounding / dequantizing one column (or a column range) at
a time must give exactly the codes, values and IR record of rounding the whole tensor at
once, for every grid: compressed-tensors' int grids and every llama.cpp type.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from quantport.errors import ShapeError
from quantport.formats.gguf_blocks import pack
from quantport.ir import QuantizedTensor, dequantize
from quantport.quant.ggml import GGML_GRIDS, quantize_ggml
from quantport.quant.grid import Grid, IntGrid, concat_params
from quantport.quant.rtn import quantize_rtn

f32 = np.float32
ROWS, COLS = 8, 512

INT_GRIDS = {
    "int4-g32-sym": IntGrid(4, True, 32),
    "int4-g32-asym": IntGrid(4, False, 32),
    "int3-g64-asym": IntGrid(3, False, 64),
    "int2-g128-sym": IntGrid(2, True, 128),
    "int8-channel-sym": IntGrid(8, True, COLS),
    "int6-channel-asym": IntGrid(6, False, COLS),
}
GRIDS: dict[str, Grid] = {**INT_GRIDS, **GGML_GRIDS}
# (grid, with importance): the int grids take no importance
CASES = [(name, False) for name in INT_GRIDS] + [
    (name, imp) for name in GGML_GRIDS for imp in (False, True)
]


def _weight(seed: int) -> np.ndarray:
    """Seeded weights with the blocks that take the odd paths of the quantizers."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((ROWS, COLS)) * np.exp(rng.standard_normal((ROWS, 1)))
    w[0, :256] = 0.0  # an all-zero block (a whole k-quant super-block too)
    w[1, 300] = 60.0 * np.abs(w[1]).max()  # one large outlier: small sub-blocks scale to 0
    w[2, 16:48] *= 1e-4  # tiny sub-blocks beside normal ones (zero effective k-scales)
    w[3] = np.abs(w[3])  # positive only: the min clamps to 0
    w[4, 256:] = 0.25  # constant blocks
    w[5, 64:96] = -0.0  # negative zeros
    w[6, ::37] *= 200 if seed % 2 else -200  # outliers throughout the row
    return w.astype(f32)


def _importance(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed + 100)
    imp = (rng.random(COLS) ** 4 * 50).astype(f32)
    imp[5:12] = 0.0  # zero-importance columns
    return imp


def _assert_records_equal(a: QuantizedTensor, b: QuantizedTensor, where: str = "") -> None:
    for f in dataclasses.fields(QuantizedTensor):
        x, y = getattr(a, f.name), getattr(b, f.name)
        what = f"{where}{f.name}"
        if isinstance(x, QuantizedTensor) or isinstance(y, QuantizedTensor):
            assert isinstance(x, QuantizedTensor) and isinstance(y, QuantizedTensor), what
            _assert_records_equal(x, y, f"{what}.")
        elif isinstance(x, np.ndarray) or isinstance(y, np.ndarray):
            assert isinstance(x, np.ndarray) and isinstance(y, np.ndarray), what
            assert x.dtype == y.dtype, what
            assert np.array_equal(x, y), what
        else:
            assert x == y, what


def _whole(grid: Grid, x: np.ndarray, imp3: np.ndarray | None):
    params = grid.fit(x, imp3)
    codes = grid.round(x, params)
    return params, codes, grid.value(codes, params)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize(("grid_name", "with_imp"), CASES)
def test_column_by_column_equals_whole_tensor(grid_name: str, with_imp: bool, seed: int) -> None:
    grid = GRIDS[grid_name]
    w = _weight(seed)
    imp = _importance(seed) if with_imp else None
    nb, block = COLS // grid.block, grid.block
    x = w.reshape(ROWS, nb, block)
    imp3 = None if imp is None else imp.reshape(1, nb, block)
    params, codes, values = _whole(grid, x, imp3)

    stats = grid.row_stats(w)
    parts = []
    col_codes = np.zeros_like(codes)
    col_values = np.full_like(values, np.nan)
    for b in range(nb):
        p = grid.fit(x[:, b : b + 1], None if imp3 is None else imp3[:, b : b + 1], row_stats=stats)
        assert set(p) == set(params)
        for k, a in p.items():
            assert a.shape[:2] == (ROWS, 1), k
            assert a.dtype == params[k].dtype, k
            assert np.array_equal(a, params[k][:, b : b + 1]), (k, b)
        for c in range(block):
            cols = slice(c, c + 1)
            q = grid.round(x[:, b : b + 1, cols], p, cols=cols)
            assert q.shape == (ROWS, 1, 1) and q.dtype == codes.dtype
            col_codes[:, b : b + 1, cols] = q
            col_values[:, b : b + 1, cols] = grid.value(q, p, cols=cols)
        parts.append(p)
    assert np.array_equal(col_codes, codes)
    assert np.array_equal(col_values, values)
    assert np.array_equal(np.signbit(col_values), np.signbit(values))

    # the record from blocks fitted one at a time is the one-shot quantizer's
    qt = grid.assemble((ROWS, COLS), col_codes, concat_params(parts))
    if grid_name in GGML_GRIDS:
        ref = quantize_ggml(w, grid_name, imp)
        assert np.array_equal(pack(qt), pack(ref))
    else:
        ref = quantize_rtn(w, grid, imp)
    _assert_records_equal(qt, ref)
    assert np.array_equal(dequantize(qt), col_values.reshape(ROWS, COLS))


@pytest.mark.parametrize(("grid_name", "with_imp"), CASES)
def test_column_ranges(grid_name: str, with_imp: bool) -> None:
    """Ranges of columns (odd offsets, across k-quant sub-block edges, the block's last
    columns, the whole block), against one block fitted alone and against all blocks."""
    grid = GRIDS[grid_name]
    w = _weight(5)
    imp = _importance(5) if with_imp else None
    nb, block = COLS // grid.block, grid.block
    x = w.reshape(ROWS, nb, block)
    imp3 = None if imp is None else imp.reshape(1, nb, block)
    params, codes, values = _whole(grid, x, imp3)
    stats = grid.row_stats(x)
    ranges = [slice(3, 10), slice(13, 20), slice(block - 7, block), slice(0, block),
              slice(1, block - 1), slice(block // 2 - 3, block // 2 + 4)]
    for cols in ranges:
        # all blocks at once, a range of each
        q = grid.round(x[..., cols], params, cols=cols)
        assert np.array_equal(q, codes[..., cols]), cols
        assert np.array_equal(grid.value(q, params, cols=cols), values[..., cols]), cols
        for b in (0, nb - 1):
            p = grid.fit(
                x[:, b : b + 1], None if imp3 is None else imp3[:, b : b + 1], row_stats=stats
            )
            q = grid.round(x[:, b : b + 1, cols], p, cols=cols)
            assert np.array_equal(q, codes[:, b : b + 1, cols]), (cols, b)
            v = grid.value(q, p, cols=cols)
            assert np.array_equal(v, values[:, b : b + 1, cols]), (cols, b)


@pytest.mark.parametrize("type_name", ["Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"])
def test_k_columns_take_their_sub_block_scale(type_name: str) -> None:
    """A column's code depends on its position: the same values rounded as different columns
    of a super-block whose sub-block scales differ give different codes."""
    grid = GRIDS[type_name]
    rng = np.random.default_rng(9)
    w = rng.standard_normal((4, 256)).astype(f32)
    w[:, : grid.sub] *= 50  # first sub-block: a much larger scale than the others
    x = w.reshape(4, 1, 256)
    params = grid.fit(x)
    codes = grid.round(x, params)
    col = x[:, :, grid.sub : grid.sub + 1]  # a column of the second sub-block
    as_own = grid.round(col, params, cols=slice(grid.sub, grid.sub + 1))
    as_first = grid.round(col, params, cols=slice(0, 1))
    assert np.array_equal(as_own, codes[:, :, grid.sub : grid.sub + 1])
    assert not np.array_equal(as_own, as_first)


def test_concat_params_and_cols_checks() -> None:
    grid = GGML_GRIDS["Q4_K"]
    x = _weight(0).reshape(ROWS, 2, 256)
    p0, p1 = grid.fit(x[:, :1]), grid.fit(x[:, 1:])
    whole = grid.fit(x)
    joined = concat_params([p0, p1])
    assert set(joined) == set(whole)
    for k in whole:
        assert np.array_equal(joined[k], whole[k]), k
    with pytest.raises(ValueError):
        concat_params([])
    with pytest.raises(ValueError):
        concat_params([p0, {"d": p1["d"]}])
    for g in (grid, GGML_GRIDS["Q4_0"], GGML_GRIDS["IQ4_NL"], IntGrid(4, True, 32)):
        xb = x.reshape(ROWS, -1, g.block)[:, :1]
        p = g.fit(xb)
        with pytest.raises(ShapeError):
            g.round(xb[..., :3], p, cols=slice(0, 4))  # 4 columns named, 3 given
        with pytest.raises(ShapeError):
            g.value(g.round(xb[..., :3], p, cols=slice(0, 3)), p, cols=slice(0, 2))
        with pytest.raises(ShapeError):
            g.round(xb[..., :1], p, cols=slice(g.block, g.block + 1))  # outside the block


def test_legacy_row_stats_shape_is_checked() -> None:
    grid = GGML_GRIDS["Q4_0"]
    w = _weight(1)
    x = w.reshape(ROWS, -1, 32)
    imp3 = _importance(1).reshape(1, -1, 32)
    stats = grid.row_stats(w)
    with pytest.raises(ShapeError):
        grid.fit(x[:4, :1], imp3[:, :1], row_stats=stats)  # 8 rows of stats for 4 rows
