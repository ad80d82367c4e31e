"""GPTQ checkpoint tensors (AutoGPTQ / GPTQModel ``checkpoint_format`` ``"gptq"`` (v1) and
``"gptq_v2"``).

Per quantized Linear ``<m>`` with ``in`` inputs, ``out`` outputs and ``G`` groups
(shared/reference/algorithms.md section 1.3; GPTQModel ``nn_modules/qlinear/__init__.py``
``pack_block`` and ``utils/model.py`` ``convert_gptq_v2_to_v1_format_module``):

* ``<m>.qweight`` int32 ``[in*bits/32, out]``: unsigned codes ``q = code + 2**(bits-1)``
  packed along the *input* axis, 32 inputs into ``bits`` words, input ``i`` of each run of 32 at
  bit ``i*bits`` of the run's ``32*bits``-bit string, lowest bits first (``_pack_rows_2_4_8``:
  whole values per word; ``_pack_rows_3``: the 10|1|10|1|10 spill, which is the same bit string).
* ``<m>.qzeros`` int32 ``[G, out*bits/32]``: the unsigned zero points ``z`` (``2**(bits-1)``
  for symmetric schemes) packed the same way along the *output* axis. v1 stores them **minus
  one**: for 2/4/8 bits GPTQModel subtracts one from every field by one int32 subtraction of
  ``0x11111111`` (4 bits) and its siblings and adds it back on load; for 3 bits it shifts each
  field (``_shift_gptq_qzeros``). A zero point of 0 (asymmetric schemes only) cannot be stored
  minus one so that every v1 reader gets it back (the word subtraction borrows from the next
  field, which readers that add one per field, AutoGPTQ's and vLLM's v1 kernels, misread;
  GPTQModel's "sym=False has underflow probability" note), and GPTQModel refuses asymmetric v1
  checkpoints that it did not write itself. So quantport writes symmetric schemes as v1 (the
  zero point is ``2**(bits-1)``, never 0) and asymmetric ones as v2 (``"gptq_v2"``: zero points
  stored as they are; AutoGPTQ PR #640, GPTQModel's own fix for that underflow).
* ``<m>.scales`` float16 ``[G, out]``.
* ``<m>.g_idx`` int32 ``[in]``: the group of each input column (``c // group_size`` without
  act-order; the act-order grouping of GPTQ's ``desc_act`` otherwise).

A weight is ``scales[g_idx[c], o] * (q[c, o] - z[g_idx[c], o])``. 5-, 6- and 7-bit GPTQModel
checkpoints use a different (planar) layout and are not produced here. Pure numpy.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from quantport.errors import FormatError, ShapeError, UnsupportedQuantError
from quantport.formats.compressed_tensors import pack_int32, unpack_int32
from quantport.ir import QuantizedTensor, ZeroPointDomain

__all__ = ["GPTQ_BITS", "check_gptq_shape", "checkpoint_format", "gptq_entries", "gptq_modules",
           "gptq_side_tensors", "pack_gptq", "unpack_gptq"]

log = logging.getLogger(__name__)

#: code widths the v1 GPTQ layout packs (GPTQModel ``FORMAT.GPTQ``; 5..7 bits are planar)
GPTQ_BITS = (2, 3, 4, 8)
_SUFFIXES = ("qweight", "qzeros", "scales", "g_idx")
_F16_MAX = float(np.finfo(np.float16).max)


def _ones(bits: int) -> int:
    # one in every field of a 32-bit word (0x11111111 for 4 bits): GPTQModel's v1 constant
    return sum(1 << (bits * j) for j in range(32 // bits))


def check_gptq_shape(name: str, shape: tuple[int, ...], bits: int) -> None:
    """Raise :class:`ShapeError` unless a ``[out, in]`` weight packs into the v1 layout:
    ``in`` a multiple of 32 (32 inputs per ``bits`` words) and ``out*bits`` of 32 (qzeros)."""
    if bits not in GPTQ_BITS:
        raise UnsupportedQuantError(
            f"{name}: GPTQ checkpoints (v1 layout) hold {', '.join(map(str, GPTQ_BITS))}-bit "
            f"codes, not {bits}-bit; choose one of those or write --to safetensors"
        )
    rows, cols = shape
    if cols % 32 or (rows * bits) % 32:
        raise ShapeError(
            f"{name}: GPTQ packing needs an input width that is a multiple of 32 and "
            f"out*bits a multiple of 32, got [{rows}, {cols}] at {bits} bits; keep it float or "
            "write --to safetensors"
        )


def gptq_entries(module: str, shape: tuple[int, int], bits: int,
                 groups: int) -> list[tuple[str, str, tuple[int, ...]]]:
    """Names, safetensors dtypes and shapes of one quantized Linear's tensors (known before
    it is quantized): ``qweight``, ``qzeros``, ``scales``, ``g_idx``."""
    rows, cols = shape
    return [
        (f"{module}.qweight", "I32", (cols * bits // 32, rows)),
        (f"{module}.qzeros", "I32", (groups, rows * bits // 32)),
        (f"{module}.scales", "F16", (groups, rows)),
        (f"{module}.g_idx", "I32", (cols,)),
    ]


def _unsigned(a: np.ndarray, t: QuantizedTensor) -> np.ndarray:
    # GPTQ codes and zero points are unsigned, [0, 2**bits); IntGrid's are signed
    a = np.asarray(a).astype(np.int64)
    return a + (1 << (t.bits - 1)) if t.signed else a


def checkpoint_format(symmetric: bool) -> str:
    """The ``checkpoint_format`` quantport writes a scheme in: ``"gptq"`` (v1) when symmetric,
    ``"gptq_v2"`` when asymmetric (see the module docstring)."""
    return "gptq" if symmetric else "gptq_v2"


def pack_gptq(module: str, t: QuantizedTensor, fmt: str = "gptq") -> dict[str, np.ndarray]:
    """Pack one integer-grid record (group or channel blocks, optional ``g_idx``) into its
    GPTQ tensors (see the module docstring), in the dtypes :func:`gptq_entries` gives;
    ``fmt`` is the ``checkpoint_format``, ``"gptq"`` (v1) or ``"gptq_v2"``.

    Raises:
        UnsupportedQuantError: not a 2-D integer record with per-row blocks of whole groups,
            a width the layout cannot pack, or a scale float16 cannot hold.
    """
    if (t.encoding != "int" or len(t.shape) != 2 or t.codebook is not None
            or t.block_size[0] != 1 or not isinstance(t.scale, np.ndarray)
            or t.zero_point_domain is not ZeroPointDomain.INT):
        raise UnsupportedQuantError(
            f"{module}: GPTQ checkpoints take integer-grid weights with per-row groups, got "
            f"{t.encoding} blocks {t.block_size}"
        )
    if fmt not in ("gptq", "gptq_v2"):
        raise UnsupportedQuantError(f"{module}: checkpoint_format {fmt!r} is not gptq or gptq_v2")
    rows, cols = t.shape
    check_gptq_shape(module, t.shape, t.bits)
    scale = np.asarray(t.scale, dtype=np.float32)  # [out, G]
    groups = scale.shape[1]
    if t.g_idx is not None:
        g_idx = np.asarray(t.g_idx, dtype=np.int32)
    else:
        g_idx = (np.arange(cols) // t.block_size[1]).astype(np.int32)
    if not np.all(np.abs(scale) <= _F16_MAX):
        raise UnsupportedQuantError(
            f"{module}: a scale of {float(np.abs(scale).max()):.4g} overflows the float16 "
            "scales GPTQ checkpoints store; write --to safetensors instead"
        )
    q = _unsigned(t.codes, t)  # [out, in]
    if t.zero_point is None:
        z = np.full((rows, groups), 1 << (t.bits - 1), dtype=np.int64)
    else:
        z = _unsigned(np.asarray(t.zero_point), t)
    zeros = z.T  # [G, out]
    if fmt == "gptq_v2":
        qzeros = pack_int32(zeros, t.bits)
    elif t.bits == 3:
        # GPTQModel _shift_gptq_qzeros (3 bits): minus one in each field, wrapped in the field
        qzeros = pack_int32((zeros - 1) & 7, 3)
    else:
        # GPTQModel convert_gptq_v2_to_v1_format_module: one int32 subtraction per word
        words = pack_int32(zeros, t.bits).view(np.uint32)
        qzeros = (words - np.uint32(_ones(t.bits))).view(np.int32)
        underflow = int(np.count_nonzero(zeros == 0))
        if underflow:
            log.warning("%s: %d zero points are 0 in a v1 checkpoint; GPTQModel reads them back "
                        "exactly, readers that add one per field (AutoGPTQ, vLLM v1 kernels) "
                        "do not (write gptq_v2)", module, underflow)
    return {
        f"{module}.qweight": np.ascontiguousarray(pack_int32(q, t.bits).T),
        f"{module}.qzeros": np.ascontiguousarray(qzeros),
        f"{module}.scales": np.ascontiguousarray(scale.T.astype(np.float16)),
        f"{module}.g_idx": g_idx,
    }


def gptq_modules(names: list[str]) -> list[str]:
    """The quantized modules of a GPTQ checkpoint: those with a ``qweight``."""
    return sorted(n.removesuffix(".qweight") for n in names if n.endswith(".qweight"))


def gptq_side_tensors(module: str) -> tuple[str, ...]:
    """The tensor names :func:`pack_gptq` writes for ``module``."""
    return tuple(f"{module}.{s}" for s in _SUFFIXES)


def unpack_gptq(get: Callable[[str], np.ndarray], module: str,
                config: Mapping[str, Any]) -> QuantizedTensor:
    """Inverse of :func:`pack_gptq`: the IR record of one GPTQ (v1) Linear weight, with
    ``g_idx`` when the checkpoint's grouping is not ``c // group_size``.

    Args:
        get: reads a checkpoint tensor by name.
        module: the module name (``model.layers.0.mlp.down_proj``).
        config: the checkpoint's ``quantization_config`` (``bits``, ``checkpoint_format``).

    Raises:
        FormatError: inconsistent shapes, or a layout quantport does not read (v2 is read too;
            5..7-bit planar is not).
    """
    bits = int(config.get("bits", 0))
    fmt = str(config.get("checkpoint_format") or config.get("format") or "gptq").lower()
    if bits not in GPTQ_BITS or fmt not in ("gptq", "gptq_v2"):
        raise FormatError(
            f"{module}: quantport reads {', '.join(map(str, GPTQ_BITS))}-bit GPTQ checkpoints "
            f"(checkpoint_format gptq or gptq_v2), got {bits}-bit {fmt}"
        )
    qweight = np.asarray(get(f"{module}.qweight"))
    qzeros = np.asarray(get(f"{module}.qzeros"))
    scales = np.asarray(get(f"{module}.scales"), dtype=np.float32)  # [G, out]
    groups, rows = scales.shape
    cols = qweight.shape[0] * 32 // bits
    try:
        g_idx = np.asarray(get(f"{module}.g_idx")).astype(np.int64)
    except KeyError:  # older AutoGPTQ files without act-order may omit it
        gs = int(config.get("group_size", -1))
        g_idx = np.arange(cols) // (gs if gs > 0 else cols)
    if (qweight.shape[1] != rows or qzeros.shape != (groups, rows * bits // 32)
            or g_idx.shape != (cols,) or g_idx.min() < 0 or g_idx.max() >= groups):
        raise FormatError(
            f"{module}: GPTQ tensors disagree (qweight {qweight.shape}, qzeros {qzeros.shape}, "
            f"scales {scales.shape}, g_idx {g_idx.shape}); the checkpoint is corrupt"
        )
    offset = 1 << (bits - 1)
    q = unpack_int32(np.ascontiguousarray(qweight.T), bits, cols)  # [out, in]
    if fmt == "gptq" and bits == 3:
        z = (unpack_int32(qzeros, 3, rows) + 1) & 7
    elif fmt == "gptq":
        words = (np.ascontiguousarray(qzeros).view(np.uint32) + np.uint32(_ones(bits)))
        z = unpack_int32(words.view(np.int32), bits, rows)
    else:
        z = unpack_int32(qzeros, bits, rows)
    zp = (z.T - offset).astype(np.float32)  # [out, G], signed
    gs = cols // groups if cols % groups == 0 else 0
    natural = gs > 0 and np.array_equal(g_idx, np.arange(cols) // gs)
    return QuantizedTensor(
        shape=(rows, cols),
        codes=(q - offset).astype(np.int8),
        scale=np.ascontiguousarray(scales.T),
        block_size=(1, gs or 1),
        bits=bits,
        signed=True,
        zero_point=None if np.all(zp == 0) else zp,
        zero_point_domain=ZeroPointDomain.INT,
        g_idx=None if natural else g_idx.astype(np.int32),
    )
