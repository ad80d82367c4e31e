"""Round-to-nearest: fit every block at once, round every value to its nearest code.

Pure function over arrays; no torch, no I/O.
"""

from __future__ import annotations

import numpy as np

from quantport.errors import ShapeError
from quantport.ir import QuantizedTensor
from quantport.quant.grid import Grid

__all__ = ["quantize_rtn"]


def quantize_rtn(
    w: np.ndarray,
    grid: Grid,
    importance: np.ndarray | None = None,
    *,
    name: str = "tensor",
) -> QuantizedTensor:
    """Quantize a 2-D weight ``[out, in]`` onto ``grid`` by round-to-nearest.

    Args:
        w: the float weight, shape ``[out, in]``.
        grid: the grid whose blocks run along the input axis.
        importance: optional per-input-column importance (length ``in``), e.g. an
            importance-matrix row; it weights the fit's error.
        name: tensor name, for error messages.

    Returns:
        The quantized record.

    Raises:
        ShapeError: if ``w`` is not 2-D or its width is not a multiple of ``grid.block``.
    """
    if w.ndim != 2:
        raise ShapeError(f"{name}: round-to-nearest expects a 2-D weight, got shape {w.shape}")
    rows, cols = w.shape
    if cols % grid.block:
        raise ShapeError(
            f"{name}: width {cols} is not a multiple of the block size {grid.block}"
        )
    x = np.ascontiguousarray(w, dtype=np.float32).reshape(rows, cols // grid.block, grid.block)
    imp = None
    if importance is not None:
        imp = np.asarray(importance, dtype=np.float32).reshape(1, cols // grid.block, grid.block)
    params = grid.fit(x, imp)
    codes = grid.round(x, params)
    return grid.assemble((rows, cols), codes, params)
