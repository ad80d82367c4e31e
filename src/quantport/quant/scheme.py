"""Integer quantization schemes written as strings: ``w4-g64-sym``, ``w8-channel-sym``, ...

Grammar: ``w<bits>-<granularity>-<sym|asym>`` where granularity is ``g<N>`` (groups of N input
columns), ``channel`` (one scale per output row) or ``tensor`` (one scale for the tensor).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from quantport.errors import ShapeError, UnsupportedQuantError
from quantport.ir import QuantizedTensor
from quantport.quant.grid import IntGrid
from quantport.quant.rtn import quantize_rtn

__all__ = ["EXAMPLE_SCHEMES", "IntScheme", "parse_scheme"]

EXAMPLE_SCHEMES = (
    "w8-channel-sym",
    "w8-g128-sym",
    "w4-g32-sym",
    "w4-g64-sym",
    "w4-g128-sym",
    "w4-channel-sym",
    "w4-g64-asym",
    "w3-g64-sym",
    "w2-g64-sym",
    "w8-tensor-sym",
)

_RE = re.compile(r"^w(?P<bits>\d+)-(?:g(?P<group>\d+)|(?P<gran>channel|tensor))-(?P<sym>sym|asym)$")


@dataclass(frozen=True)
class IntScheme:
    """A parsed integer scheme.

    Attributes:
        bits: 2..8.
        granularity: ``"group"``, ``"channel"`` or ``"tensor"``.
        group_size: columns per group for ``"group"``, else ``None``.
        symmetric: symmetric or asymmetric.
        rule: a symmetric scheme's scale rule (:data:`~quantport.quant.grid.INT_RULES`): the
            writer chooses it (ONNX takes ONNX Runtime's ``signed`` rule); the scheme string
            is the same.
    """

    bits: int
    granularity: str
    group_size: int | None
    symmetric: bool
    rule: str = "minmax"

    def __str__(self) -> str:
        gran = f"g{self.group_size}" if self.granularity == "group" else self.granularity
        return f"w{self.bits}-{gran}-{'sym' if self.symmetric else 'asym'}"

    def check(self, name: str, shape: tuple[int, ...]) -> None:
        """Raise :class:`ShapeError` if this scheme cannot quantize a tensor of ``shape``."""
        if len(shape) != 2:
            raise ShapeError(f"{name}: only 2-D weights can be quantized, got shape {shape}")
        cols = shape[1]
        if self.granularity == "group" and cols % self.group_size:
            working = [g for g in (32, 64, 96, 128, 192, 256) if cols % g == 0]
            raise ShapeError(
                f"{name}: input width {cols} is not a multiple of group size "
                f"{self.group_size}; group sizes that divide it: "
                f"{', '.join(map(str, working)) or 'none'} "
                "(or pass --keep-unquantized to leave such tensors in float)"
            )

    def quantize(self, w: np.ndarray, *, name: str = "tensor") -> QuantizedTensor:
        """Quantize a 2-D weight by round-to-nearest under this scheme."""
        self.check(name, w.shape)
        rows, cols = w.shape
        if self.granularity == "tensor":
            grid = IntGrid(self.bits, self.symmetric, rows * cols, self.rule)
            flat = quantize_rtn(w.reshape(1, rows * cols), grid, name=name)
            return QuantizedTensor(
                shape=(rows, cols),
                codes=flat.codes.reshape(rows, cols),
                scale=np.asarray(flat.scale).reshape(1, 1),
                block_size=(rows, cols),
                bits=flat.bits,
                signed=flat.signed,
                zero_point=None
                if flat.zero_point is None
                else np.asarray(flat.zero_point).reshape(1, 1),
                encoding=flat.encoding,
            )
        block = cols if self.granularity == "channel" else self.group_size
        return quantize_rtn(w, IntGrid(self.bits, self.symmetric, block, self.rule), name=name)


def parse_scheme(text: str) -> IntScheme:
    """Parse a scheme string such as ``w4-g64-sym``.

    Raises:
        UnsupportedQuantError: if the string is malformed or out of range.
    """
    m = _RE.match(text.strip().lower())
    if not m:
        raise UnsupportedQuantError(
            f"unknown quantization scheme {text!r}; expected w<bits>-<gN|channel|tensor>-"
            f"<sym|asym>, e.g. {', '.join(EXAMPLE_SCHEMES[:4])}"
        )
    bits = int(m["bits"])
    if not 2 <= bits <= 8:
        raise UnsupportedQuantError(f"scheme {text!r}: bits must be 2..8, got {bits}")
    if m["group"]:
        group = int(m["group"])
        if group < 1:
            raise UnsupportedQuantError(f"scheme {text!r}: group size must be positive")
        return IntScheme(bits, "group", group, m["sym"] == "sym")
    return IntScheme(bits, m["gran"], None, m["sym"] == "sym")
