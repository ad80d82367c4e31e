"""Grids: what a quantized block may look like, separated from how values are rounded onto it.

A *grid* fits the parameters of blocks of consecutive input columns and rounds values given
those parameters. A *rounding* strategy drives it: round-to-nearest (:mod:`quantport.quant.rtn`)
fits every block at once; error-feedback rounding (GPTQ) walks the columns and calls
:meth:`Grid.fit` when it reaches a block, then :meth:`Grid.round` column by column. Keeping the
two apart lets every rounding strategy work on every grid, llama.cpp's k-quants included.

Array convention: ``x`` has shape ``[rows, n_blocks, block]`` (a 2-D weight ``[out, in]``
reshaped); parameters are arrays whose leading axes are ``[rows, n_blocks]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from quantport.ir import QuantizedTensor, ZeroPointDomain, code_range

__all__ = ["Grid", "IntGrid", "Params"]

Params = dict[str, np.ndarray]


@runtime_checkable
class Grid(Protocol):
    """Fits block parameters and rounds values onto them.

    Attributes:
        name: the encoding name recorded in the produced :class:`QuantizedTensor`.
        block: consecutive input columns covered by one :meth:`fit` (GPTQ steps by it).
    """

    name: str
    block: int

    def fit(self, x: np.ndarray, importance: np.ndarray | None = None) -> Params:
        """Fit parameters for each block of ``x`` (``[rows, n_blocks, block]``).

        ``importance`` (same shape, or broadcastable) weights each element's squared error,
        as llama.cpp's importance matrix does.
        """
        ...

    def round(self, x: np.ndarray, params: Params) -> np.ndarray:
        """Return integer codes for ``x`` given fitted ``params`` (same leading shape)."""
        ...

    def value(self, codes: np.ndarray, params: Params) -> np.ndarray:
        """Return the float32 values that ``codes`` stand for under ``params``."""
        ...

    def assemble(
        self, shape: tuple[int, int], codes: np.ndarray, params: Params
    ) -> QuantizedTensor:
        """Build the IR record from codes ``[rows, n_blocks, block]`` and their params."""
        ...


@dataclass(frozen=True)
class IntGrid:
    """Uniform integer grid, symmetric or asymmetric, as compressed-tensors defines it.

    Symmetric: ``s = absmax / ((qmax - qmin) / 2)`` (absmax/7.5 for int4), signed codes
    ``clamp(round(x/s), qmin, qmax)``; no zero-point. Asymmetric: min/max widened to include 0,
    ``s = (max - min) / (qmax - qmin)``, ``z = clamp(round(qmin - min/s), qmin, qmax)`` in the
    integer domain. Matches ``compressed_tensors.quantization.utils.helpers.calculate_qparams``
    and ``fake_quantize`` (round half to even, as ``torch.round``).

    Attributes:
        bits: code width, 2..8.
        symmetric: symmetric (no zero-point) or asymmetric.
        block: group size along the input axis (the full width for per-channel).
    """

    bits: int
    symmetric: bool
    block: int

    @property
    def name(self) -> str:
        """Encoding name recorded in the IR."""
        return "int"

    def fit(self, x: np.ndarray, importance: np.ndarray | None = None) -> Params:
        """Fit scale (and zero-point) per block from min/max; ``importance`` is unused."""
        qmin, qmax = code_range(self.bits, True)
        x = x.astype(np.float32, copy=False)
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

    def round(self, x: np.ndarray, params: Params) -> np.ndarray:
        """Round to the nearest code (half to even) and clamp to the code range."""
        qmin, qmax = code_range(self.bits, True)
        s = params["scale"][..., None]
        q = np.round(x / s)
        if "zero_point" in params:
            q = q + params["zero_point"][..., None]
        return np.clip(q, qmin, qmax).astype(np.int8)

    def value(self, codes: np.ndarray, params: Params) -> np.ndarray:
        """Dequantize ``codes`` under ``params``."""
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
