"""Grids: what a quantized block may look like, separated from how values are rounded onto it.

A *grid* fits the parameters of blocks of consecutive input columns and rounds values given
those parameters. A *rounding* strategy drives it: round-to-nearest (:mod:`quantport.quant.rtn`)
fits every block at once; error-feedback rounding (GPTQ) walks the columns and calls
:meth:`Grid.fit` when it reaches a block, then :meth:`Grid.round` column by column. Keeping the
two apart lets every rounding strategy work on every grid, llama.cpp's k-quants included.

Array convention: ``x`` has shape ``[rows, n_blocks, block]`` (a 2-D weight ``[out, in]``
reshaped); parameters are arrays whose leading axes are ``[rows, n_blocks]`` (a grid may add
trailing axes, e.g. the sub-block scales of a k-quant super-block).

Column-by-column use (what an error-feedback rounding does)::

    stats = grid.row_stats(x)                 # whole-row statistics, once per tensor
    parts, codes = [], []
    for b in range(n_blocks):
        p = grid.fit(x[:, b:b+1], imp[:, b:b+1], row_stats=stats)  # leading shape [rows, 1]
        qs = []
        for c in range(grid.block):           # or any column range of the block
            q = grid.round(x[:, b:b+1, c:c+1], p, cols=slice(c, c + 1))
            v = grid.value(q, p, cols=slice(c, c + 1))  # GPTQ spreads x - v over later columns
            qs.append(q)
        parts.append(p)
        codes.append(np.concatenate(qs, axis=2))
    record = grid.assemble((rows, cols), np.concatenate(codes, axis=1), concat_params(parts))

Without error feedback (``x`` unchanged between the calls) this gives exactly the codes, values
and record of fitting and rounding the whole tensor at once (``quantize_rtn``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from quantport.errors import ShapeError
from quantport.ir import QuantizedTensor, ZeroPointDomain, code_range

__all__ = ["INT_RULES", "Grid", "IntGrid", "Params", "block_columns", "concat_params"]

#: symmetric scale rules of :class:`IntGrid`: ``minmax`` (compressed-tensors
#: ``calculate_qparams``: absmax over half the code range) and ``signed`` (ONNX Runtime's
#: MLAS / llama.cpp Q4_0 rule: the signed value of largest magnitude over ``qmin``)
INT_RULES = ("minmax", "signed")

Params = dict[str, np.ndarray]


def concat_params(parts: Sequence[Params]) -> Params:
    """Join parameters fitted block by block into the parameters of all those blocks.

    Every array of every part is concatenated along axis 1 (``n_blocks``), in the order
    given; trailing axes (sub-block scales, fallback codes) come along unchanged. Since
    :meth:`Grid.fit` of one block gives exactly the whole-tensor fit's parameters for that
    block, ``grid.assemble(shape, codes, concat_params([fit of block 0, fit of block 1, ...]))``
    is the record that fitting all blocks at once gives.

    Raises:
        ValueError: no parts, or parts with different keys or incompatible shapes.
    """
    if not parts:
        raise ValueError("concat_params: no parameters to concatenate")
    keys = list(parts[0])
    for i, p in enumerate(parts[1:], 1):
        if set(p) != set(keys):
            raise ValueError(
                f"concat_params: part {i} has keys {sorted(p)}, part 0 has {sorted(keys)}"
            )
    return {k: np.concatenate([p[k] for p in parts], axis=1) for k in keys}


def block_columns(block: int, cols: slice | None, width: int) -> np.ndarray | None:
    """Indices, within a block of ``block`` columns, of the ``width`` columns ``cols`` names.

    ``None`` for ``cols=None`` (the whole block). Grids whose parameters vary inside a block
    (k-quant sub-block scales) use the indices to pick each column's parameters.

    Raises:
        ShapeError: ``cols`` does not name exactly ``width`` columns of the block.
    """
    if cols is None:
        return None
    idx = np.arange(block)[cols]
    if idx.size != width or width == 0:
        raise ShapeError(
            f"cols={cols} names {idx.size} of the block's {block} columns, "
            f"but the values hold {width}"
        )
    return idx


@runtime_checkable
class Grid(Protocol):
    """Fits block parameters and rounds values onto them.

    Attributes:
        name: the encoding name recorded in the produced :class:`QuantizedTensor`.
        block: consecutive input columns covered by one :meth:`fit` (GPTQ steps by it).
    """

    name: str
    block: int

    def row_stats(self, x: np.ndarray) -> Params:
        """Statistics of whole rows that :meth:`fit` needs besides the block itself.

        ``x`` holds whole rows (``[rows, cols]`` or ``[rows, n_blocks, block]``). Most grids
        fit a block from that block alone and return ``{}``; llama.cpp's legacy types with an
        importance matrix weight the error by the mean square of the whole row
        (``quantize_row_q4_0_impl``), which one block cannot supply. Pass the result to
        :meth:`fit` as ``row_stats`` when fitting fewer blocks than whole rows.
        """
        ...

    def fit(
        self,
        x: np.ndarray,
        importance: np.ndarray | None = None,
        *,
        row_stats: Params | None = None,
    ) -> Params:
        """Fit parameters for each block of ``x`` (``[rows, n_blocks, block]``).

        Blocks are fitted independently: fitting any subset of a tensor's blocks (one block,
        ``x[:, b:b+1]``, is what GPTQ does) gives exactly, bit for bit, the parameters that
        fitting the whole tensor gives for those blocks, provided ``importance`` covers the
        same blocks and ``row_stats`` is :meth:`row_stats` of the whole rows. ``row_stats``
        None: computed from ``x``'s own rows (exact when ``x`` holds whole rows).

        ``importance`` (same shape, or broadcastable: ``[1, n_blocks, block]``) weights each
        element's squared error, as llama.cpp's importance matrix does.

        Returns arrays whose leading axes are ``[rows, n_blocks]``.
        """
        ...

    def round(
        self, x: np.ndarray, params: Params, *, cols: slice | None = None
    ) -> np.ndarray:
        """Return integer codes for ``x`` given fitted ``params`` (same leading shape).

        ``cols`` None: ``x`` holds whole blocks (``[rows, n_blocks, block]``). Otherwise
        ``x`` holds only the columns ``cols`` of each block (``[rows, n_blocks, len]``, e.g.
        ``cols=slice(c, c + 1)`` for one column) and the codes are exactly those that rounding
        the whole block gives in those columns (for the same values); grids whose parameters
        vary inside a block (k-quant sub-blocks) take each column's own scale and min.
        """
        ...

    def value(
        self, codes: np.ndarray, params: Params, *, cols: slice | None = None
    ) -> np.ndarray:
        """Return the float32 values that ``codes`` stand for under ``params``.

        ``cols`` as in :meth:`round`: the codes of only those columns of each block.
        """
        ...

    def assemble(
        self, shape: tuple[int, int], codes: np.ndarray, params: Params
    ) -> QuantizedTensor:
        """Build the IR record from codes ``[rows, n_blocks, block]`` and their params.

        ``params`` of blocks fitted one at a time are joined by :func:`concat_params`.
        """
        ...


@dataclass(frozen=True)
class IntGrid:
    """Uniform integer grid, symmetric or asymmetric, as compressed-tensors defines it.

    Symmetric: ``s = absmax / ((qmax - qmin) / 2)`` (absmax/7.5 for int4), signed codes
    ``clamp(round(x/s), qmin, qmax)``; no zero-point. With ``rule="signed"`` (ONNX Runtime's
    symmetric rule, MLAS ``MlasQuantizeBlockwise`` as ``MatMulNBitsQuantizer`` and the
    onnxruntime-genai builder use it, and llama.cpp's ``quantize_row_q4_0_ref``) the block's
    value of largest magnitude ``v`` gives ``s = v / qmin``: it maps onto ``qmin`` exactly and
    all ``2^bits`` codes are used (the scale is negative when ``v`` is). Asymmetric: min/max
    widened to include 0,
    ``s = (max - min) / (qmax - qmin)``, ``z = clamp(round(qmin - min/s), qmin, qmax)`` in the
    integer domain. Matches ``compressed_tensors.quantization.utils.helpers.calculate_qparams``
    and ``fake_quantize`` (round half to even, as ``torch.round``).

    Attributes:
        bits: code width, 2..8.
        symmetric: symmetric (no zero-point) or asymmetric.
        block: group size along the input axis (the full width for per-channel).
        rule: how a symmetric block's scale is fitted, one of :data:`INT_RULES`.
    """

    bits: int
    symmetric: bool
    block: int
    rule: str = "minmax"

    def __post_init__(self) -> None:
        if self.rule not in INT_RULES:
            raise ValueError(f"IntGrid rule must be one of {INT_RULES}, got {self.rule!r}")

    @property
    def name(self) -> str:
        """Encoding name recorded in the IR."""
        return "int"

    def row_stats(self, x: np.ndarray) -> Params:
        """None needed: a block's scale depends on that block only."""
        return {}

    def fit(
        self,
        x: np.ndarray,
        importance: np.ndarray | None = None,
        *,
        row_stats: Params | None = None,
    ) -> Params:
        """Fit scale (and zero-point) per block from min/max; ``importance`` is unused."""
        qmin, qmax = code_range(self.bits, True)
        x = x.astype(np.float32, copy=False)
        if self.symmetric and self.rule == "signed":
            at = np.abs(x).argmax(axis=-1)[..., None]
            scale = np.take_along_axis(x, at, axis=-1)[..., 0] / np.float32(qmin)
            scale = np.where(scale == 0, np.float32(1.0), scale).astype(np.float32)
            return {"scale": scale}
        if self.symmetric:
            amax = np.abs(x).max(axis=-1)
            scale = amax / np.float32((qmax - qmin) / 2)
            scale = np.where(scale == 0, np.float32(1.0), scale).astype(np.float32)
            return {"scale": scale}
        lo = np.minimum(x.min(axis=-1), 0).astype(np.float32)
        hi = np.maximum(x.max(axis=-1), 0).astype(np.float32)
        scale = (hi - lo) / np.float32(qmax - qmin)
        scale = np.where(scale == 0, np.float32(1.0), scale).astype(np.float32)
        zp = np.clip(np.round(qmin - lo / scale), qmin, qmax).astype(np.float32)
        return {"scale": scale, "zero_point": zp}

    def round(
        self, x: np.ndarray, params: Params, *, cols: slice | None = None
    ) -> np.ndarray:
        """Round to the nearest code (half to even) and clamp to the code range.

        One scale per block: ``cols`` only needs checking against ``x``.
        """
        block_columns(self.block, cols, x.shape[-1])
        qmin, qmax = code_range(self.bits, True)
        s = params["scale"][..., None]
        q = np.round(x / s)
        if "zero_point" in params:
            q = q + params["zero_point"][..., None]
        return np.clip(q, qmin, qmax).astype(np.int8)

    def value(
        self, codes: np.ndarray, params: Params, *, cols: slice | None = None
    ) -> np.ndarray:
        """Dequantize ``codes`` under ``params`` (``cols`` as in :meth:`round`)."""
        block_columns(self.block, cols, codes.shape[-1])
        c = codes.astype(np.float32)
        if "zero_point" in params:
            c = c - params["zero_point"][..., None]
        return c * params["scale"][..., None]

    def assemble(
        self, shape: tuple[int, int], codes: np.ndarray, params: Params
    ) -> QuantizedTensor:
        """Build a signed-code, integer-domain :class:`QuantizedTensor`."""
        rows, cols = shape
        zp = params.get("zero_point")
        return QuantizedTensor(
            shape=(rows, cols),
            codes=codes.reshape(rows, cols),
            scale=params["scale"].reshape(rows, cols // self.block).astype(np.float32),
            block_size=(1, self.block),
            bits=self.bits,
            signed=True,
            zero_point=None if zp is None else zp.reshape(rows, cols // self.block),
            zero_point_domain=ZeroPointDomain.INT,
            encoding=self.name,
        )
