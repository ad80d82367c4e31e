"""The format-neutral intermediate representation.

Design decision (after torchao's removal of ``AffineQuantizedTensor`` and its layout registry,
pytorch/ao#2752): one plain, validated record for a quantized tensor, :class:`QuantizedTensor`,
holding *unpacked* integer codes plus affine parameters per block. Every writer packs from it;
every consumer dequantizes it through the single routine :func:`dequantize`.

Two zero-point conventions are covered:

* ``ZeroPointDomain.INT`` (GPTQ, ONNX, compressed-tensors): ``x = (q - z) * s``
* ``ZeroPointDomain.FLOAT`` (llama.cpp ``d*q - m``): ``x = q * s - z``

Scales and zero-points may themselves be :class:`QuantizedTensor` records: llama.cpp's k-quants
store 4/6/8-bit sub-block scales multiplied by an fp16 super-block scale (two-level schemes).
The ``block_size`` tuple follows torchao: ``(1, 32)`` means one parameter per 32 consecutive
elements of the last axis.

This module imports only numpy.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Union

import numpy as np

from quantport.errors import IRError

__all__ = [
    "ModelIR",
    "QuantizedTensor",
    "Tensor",
    "ZeroPointDomain",
    "code_range",
    "dequantize",
]


class ZeroPointDomain(enum.Enum):
    """Where a zero-point lives: with the integer codes or with the dequantized values."""

    INT = "int"
    FLOAT = "float"


def code_range(bits: int, signed: bool) -> tuple[int, int]:
    """Return the inclusive ``(qmin, qmax)`` range of a ``bits``-wide integer code."""
    if signed:
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1


Param = Union[np.ndarray, "QuantizedTensor"]


def _param_shape(p: Param) -> tuple[int, ...]:
    return tuple(p.shape)


@dataclass(frozen=True, eq=False)
class QuantizedTensor:
    """Integer codes plus per-block affine parameters; format-neutral.

    Attributes:
        shape: logical shape of the tensor (e.g. ``(out, in)`` for a Linear weight).
        codes: unpacked integer codes, exactly ``shape``.
        scale: per-block scales, shape ``shape // block_size``; float array or a nested record.
        block_size: elements per block along each axis (torchao convention).
        bits: code width in bits (1..8).
        signed: whether codes are signed two's-complement values.
        zero_point: optional per-block zero-points, same shape as ``scale``.
        zero_point_domain: how ``zero_point`` enters the dequantization formula.
        g_idx: optional act-order group index (length ``shape[-1]``): the scale column of each
            input column, as GPTQ checkpoints store it.
        encoding: name of the grid that produced the record (``"int"``, ``"Q4_K"``, ...);
            writers use it to choose a packing.
        codebook: optional float32 table of ``2**bits`` values for non-uniform grids
            (llama.cpp IQ4_NL); a code then stands for ``codebook[code] * scale``.

    Raises:
        IRError: when any invariant is violated (checked at construction).
    """

    shape: tuple[int, ...]
    codes: np.ndarray
    scale: Param
    block_size: tuple[int, ...]
    bits: int
    signed: bool
    zero_point: Param | None = None
    zero_point_domain: ZeroPointDomain = ZeroPointDomain.INT
    g_idx: np.ndarray | None = None
    encoding: str = "int"
    codebook: np.ndarray | None = None

    def __post_init__(self) -> None:
        shape = tuple(int(s) for s in self.shape)
        block = tuple(int(b) for b in self.block_size)
        object.__setattr__(self, "shape", shape)
        object.__setattr__(self, "block_size", block)
        where = f"quantized tensor {shape} ({self.encoding})"
        if not 1 <= self.bits <= 8:
            raise IRError(f"{where}: bits must be 1..8, got {self.bits}")
        if len(block) != len(shape):
            raise IRError(f"{where}: block_size {block} must have one entry per axis")
        if not np.issubdtype(self.codes.dtype, np.integer):
            raise IRError(f"{where}: codes must be integers, got {self.codes.dtype}")
        if tuple(self.codes.shape) != shape:
            raise IRError(f"{where}: codes shape {self.codes.shape} != shape {shape}")
        for axis, (s, b) in enumerate(zip(shape, block, strict=True)):
            if b <= 0 or (s % b and self.g_idx is None):
                raise IRError(f"{where}: block {b} does not divide axis {axis} of size {s}")
        qmin, qmax = code_range(self.bits, self.signed)
        if self.codes.size and (int(self.codes.min()) < qmin or int(self.codes.max()) > qmax):
            raise IRError(
                f"{where}: codes outside [{qmin}, {qmax}] for {self.bits}-bit "
                f"{'signed' if self.signed else 'unsigned'}"
            )
        if self.g_idx is not None:
            g = np.asarray(self.g_idx)
            if g.shape != (shape[-1],) or not np.issubdtype(g.dtype, np.integer):
                raise IRError(f"{where}: g_idx must be an integer vector of length {shape[-1]}")
            n_groups = _param_shape(self.scale)[-1]
            if g.size and (g.min() < 0 or g.max() >= n_groups):
                raise IRError(f"{where}: g_idx values must lie in [0, {n_groups})")
            expect = (*(s // b for s, b in zip(shape[:-1], block[:-1], strict=True)), n_groups)
        else:
            expect = tuple(s // b for s, b in zip(shape, block, strict=True))
        if _param_shape(self.scale) != expect:
            raise IRError(f"{where}: scale shape {_param_shape(self.scale)} != {expect}")
        if isinstance(self.scale, np.ndarray):
            if not np.issubdtype(self.scale.dtype, np.floating):
                raise IRError(f"{where}: scale must be floating point, got {self.scale.dtype}")
            if not np.all(np.isfinite(self.scale)):
                raise IRError(f"{where}: scale contains NaN or inf")
        if self.zero_point is not None:
            if _param_shape(self.zero_point) != expect:
                raise IRError(
                    f"{where}: zero_point shape {_param_shape(self.zero_point)} != {expect}"
                )
            if isinstance(self.zero_point, np.ndarray):
                zp = self.zero_point
                if not np.all(np.isfinite(zp)):
                    raise IRError(f"{where}: zero_point contains NaN or inf")
                if self.zero_point_domain is ZeroPointDomain.INT and zp.size:
                    if np.any(zp != np.round(zp)) or zp.min() < qmin or zp.max() > qmax:
                        raise IRError(
                            f"{where}: integer-domain zero_point must be integers in "
                            f"[{qmin}, {qmax}]"
                        )
        if self.codebook is not None:
            cb = np.asarray(self.codebook)
            if cb.shape != (1 << self.bits,) or self.signed:
                raise IRError(
                    f"{where}: a codebook needs unsigned codes and {1 << self.bits} entries"
                )
        for arr in (self.codes, self.scale, self.zero_point, self.g_idx, self.codebook):
            if isinstance(arr, np.ndarray):
                arr.setflags(write=False)

    @property
    def numel(self) -> int:
        """Number of logical elements."""
        return int(np.prod(self.shape, dtype=np.int64))


Tensor = Union[np.ndarray, QuantizedTensor]


def _as_float(p: Param) -> np.ndarray:
    if isinstance(p, QuantizedTensor):
        return dequantize(p)
    return np.asarray(p, dtype=np.float32)


def _expand(p: np.ndarray, qt: QuantizedTensor) -> np.ndarray:
    """Broadcast per-block parameters to element resolution."""
    if qt.g_idx is not None:
        for axis, b in enumerate(qt.block_size[:-1]):
            if b > 1:
                p = np.repeat(p, b, axis=axis)
        return p[..., np.asarray(qt.g_idx)]
    for axis, b in enumerate(qt.block_size):
        if b > 1:
            p = np.repeat(p, b, axis=axis)
    return p


def dequantize(qt: QuantizedTensor) -> np.ndarray:
    """Return the float32 values a :class:`QuantizedTensor` stands for.

    This is the one dequantization routine of quantport. Its float32 operation order
    (``(d*sc) * q - (dmin*m)``) matches ggml's ``dequantize_row_*`` so GGUF round trips
    are exact.
    """
    scale = _expand(_as_float(qt.scale), qt)
    if qt.codebook is not None:
        codes = np.asarray(qt.codebook, dtype=np.float32)[qt.codes]
    else:
        codes = qt.codes.astype(np.float32)
    if qt.zero_point is None:
        return codes * scale
    zp = _expand(_as_float(qt.zero_point), qt)
    if qt.zero_point_domain is ZeroPointDomain.INT:
        return (codes - zp) * scale
    return codes * scale - zp


@dataclass
class ModelIR:
    """A model as quantport carries it between readers, quantizers and writers.

    Attributes:
        architecture: quantport architecture name (``"llama"`` or ``"bert"``).
        config: the Hugging Face ``config.json`` mapping (hyper-parameters).
        tokenizer_files: Hugging Face tokenizer files by name (``tokenizer.json``,
            ``tokenizer_config.json``, ...) as text.
        tensors: ordered tensors by Hugging Face name, plain float arrays or quantized records.
        provenance: where the model came from and what was done to it.
    """

    architecture: str
    config: dict[str, Any]
    tokenizer_files: dict[str, str]
    tensors: dict[str, Tensor] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)

    def __iter__(self) -> Iterator[tuple[str, Tensor]]:
        return iter(self.tensors.items())

    def quantized(self) -> Mapping[str, QuantizedTensor]:
        """The quantized tensors only."""
        return {k: v for k, v in self.tensors.items() if isinstance(v, QuantizedTensor)}
