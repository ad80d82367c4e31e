"""Round-to-nearest: fit every block at once, round every value to its nearest code.

Pure function over arrays; no torch, no I/O.
"""

from __future__ import annotations

import numpy as np

from quantport.errors import FormatError, IRError, ShapeError
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
    # non-finite weights make numpy warn on the way (printed by the CLI as a stray line);
    # the record check below turns them into one error naming the tensor
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        params = grid.fit(x, imp)
        codes = grid.round(x, params)
    try:
        return grid.assemble((rows, cols), codes, params)
    except IRError as exc:
        # the record's own check ("scale contains NaN or inf") does not know the tensor
        bad = np.argwhere(~np.isfinite(w))
        if bad.size:
            r, c = (int(v) for v in bad[0])
            raise FormatError(
                f"{name}: the weights hold NaN or inf ({len(bad)} values, the first at row "
                f"{r}, column {c}); the checkpoint is damaged: re-export it") from exc
        raise IRError(f"{name}: {exc}") from exc
