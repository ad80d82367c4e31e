"""compressed-tensors ``pack-quantized`` checkpoints (what transformers + compressed-tensors load).

Layout (compressed-tensors 0.20 ``compressors/pack_quantized/base.py`` and ``helpers.py``), per
quantized Linear ``<m>``:

* ``<m>.weight_packed``  int32 ``[out, ceil(in*bits/32)]``: signed codes shifted by
  ``2**(bits-1)`` to unsigned, element ``i`` of a row at bit ``i*bits``, lowest bits first,
  dense across word boundaries (``pack_to_int32``; identical to the older per-word layout for
  2/4/8 bits).
* ``<m>.weight_scale``   ``[out, in/group]`` (``[out, 1]`` per channel) in the model dtype.
* ``<m>.weight_shape``   int64 ``[2]``, the original ``[out, in]``.
* ``<m>.weight_zero_point`` int32 for asymmetric schemes, packed along the *output* axis
  (``pack_to_int32(..., packed_dim=0)``, ``ceil(out*bits/32)`` rows) and zero-padded to
  ``[out, groups]`` so that transformers 5.23 loads it (see :func:`write_pack_quantized`).

``config.json`` gains ``quantization_config`` (``QuantizationConfig.to_dict()`` shape, see
shared/reference/algorithms.md section 4). Pure numpy.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from quantport.errors import UnsupportedQuantError
from quantport.formats._atomic import atomic_dir
from quantport.formats.safetensors import write_safetensors
from quantport.ir import QuantizedTensor

__all__ = ["pack_int32", "quantization_config", "unpack_int32", "write_pack_quantized"]


def pack_int32(values: np.ndarray, bits: int) -> np.ndarray:
    """Pack unsigned ``bits``-wide values along the last axis into int32 words, LSB first.

    Matches ``compressed_tensors...helpers.pack_to_int32`` (dense cross-element packing).
    """
    v = np.ascontiguousarray(values, dtype=np.uint64)
    *lead, n = v.shape
    n_words = -(-n * bits // 32)
    v = v.reshape(-1, n)
    # scatter each value's bits into a bit plane, then fold 32 bits per word
    bit_idx = np.arange(n)[:, None] * bits + np.arange(bits)[None, :]  # [n, bits]
    bit_val = ((v[:, :, None] >> np.arange(bits, dtype=np.uint64)) & 1).astype(np.uint8)
    plane = np.zeros((v.shape[0], n_words * 32), dtype=np.uint8)
    plane[:, bit_idx.reshape(-1)] = bit_val.reshape(v.shape[0], -1)
    words = np.packbits(plane.reshape(v.shape[0], n_words, 32), axis=-1, bitorder="little")
    out = words.view("<u4").reshape(*lead, n_words)
    return out.view(np.int32)


def unpack_int32(words: np.ndarray, bits: int, n: int) -> np.ndarray:
    """Inverse of :func:`pack_int32`: the first ``n`` unsigned values of each row."""
    w = np.ascontiguousarray(words).view(np.uint32)
    *lead, n_words = w.shape
    plane = np.unpackbits(w.reshape(-1, n_words).view(np.uint8), axis=-1, bitorder="little")
    plane = plane[:, : n * bits].reshape(-1, n, bits).astype(np.int64)
    vals = (plane << np.arange(bits)).sum(axis=-1)
    return vals.reshape(*lead, n)


def _args(qt: QuantizedTensor) -> dict[str, Any]:
    rows, cols = qt.shape
    group = qt.block_size[-1]
    if qt.block_size == (rows, cols):
        strategy, gs = "tensor", None
    elif group == cols:
        strategy, gs = "channel", None
    else:
        strategy, gs = "group", group
    return {
        "num_bits": qt.bits,
        "type": "int",
        "symmetric": qt.zero_point is None,
        "group_size": gs,
        "strategy": strategy,
        "block_structure": None,
        "dynamic": False,
        "actorder": None,
        "observer": "minmax",
        "observer_kwargs": {},
    }


def quantization_config(
    args: Mapping[str, Any], ignore: list[str], targets: list[str]
) -> dict[str, Any]:
    """The ``quantization_config`` block for config.json (compressed-tensors 0.20 keys)."""
    return {
        "config_groups": {
            "group_0": {
                "targets": targets,
                "weights": dict(args),
                "input_activations": None,
                "output_activations": None,
                "format": "pack-quantized",
            }
        },
        "quant_method": "compressed-tensors",
        "kv_cache_scheme": None,
        "format": "pack-quantized",
        "quantization_status": "compressed",
        "global_compression_ratio": None,
        "ignore": ignore,
    }


def write_pack_quantized(
    out_dir: str | os.PathLike[str],
    tensors: Mapping[str, np.ndarray | QuantizedTensor],
    *,
    config: Mapping[str, Any],
    extra_files: Mapping[str, str],
    ignore: list[str],
    dense_dtype: str = "F32",
    on_tensor: Callable[[str], None] | None = None,
) -> Path:
    """Write a compressed-tensors ``pack-quantized`` checkpoint directory atomically.

    Args:
        out_dir: target directory (written under a temporary name, then renamed).
        tensors: HF-named tensors; :class:`QuantizedTensor` entries must be ``"int"``-encoded
            2-D weights named ``<module>.weight`` with one shared scheme.
        config: the model's config.json mapping (``quantization_config`` is added).
        extra_files: tokenizer and other files to copy, by name.
        ignore: Linear modules left unquantized (listed in ``quantization_config.ignore``).
        dense_dtype: safetensors dtype tag for plain float tensors and scales.
        on_tensor: progress callback, called with each tensor name as it is packed.

    Returns:
        The output directory.

    Raises:
        UnsupportedQuantError: for mixed schemes or non-integer encodings.
    """
    out: dict[str, np.ndarray] = {}
    dtypes: dict[str, str] = {}
    args: dict[str, Any] | None = None
    targets: list[str] = []
    for name, t in tensors.items():
        if on_tensor is not None:
            on_tensor(name)
        if not isinstance(t, QuantizedTensor):
            out[name] = t
            if np.issubdtype(np.asarray(t).dtype, np.floating):
                dtypes[name] = dense_dtype
            continue
        if t.encoding != "int" or len(t.shape) != 2 or t.g_idx is not None:
            raise UnsupportedQuantError(
                f"{name}: compressed-tensors pack-quantized takes integer-grid 2-D weights, got "
                f"{t.encoding}"
            )
        a = _args(t)
        if args is None:
            args = a
        elif a != args:
            raise UnsupportedQuantError(f"{name}: all quantized tensors must share one scheme")
        module = name.removesuffix(".weight")
        targets.append(module)
        offset = 1 << (t.bits - 1)
        codes = np.asarray(t.codes, dtype=np.int32)
        if not t.signed:
            codes = codes - offset
        out[f"{module}.weight_packed"] = pack_int32(codes + offset, t.bits)
        out[f"{module}.weight_scale"] = np.asarray(t.scale, dtype=np.float32)
        dtypes[f"{module}.weight_scale"] = dense_dtype
        out[f"{module}.weight_shape"] = np.asarray(t.shape, dtype=np.int64)
        if t.zero_point is not None:
            zp = np.asarray(t.zero_point).astype(np.int64)
            if not t.signed:
                zp = zp - offset
            packed = pack_int32((zp + offset).T, t.bits).T
            # transformers 5.23 builds the zero-point parameter with the *unpacked* shape
            # [out, groups] and refuses a checkpoint whose packed [ceil(out*bits/32), groups]
            # differs (llm-compressor #1618); decompress() then unpacks it along dim 0 and
            # keeps the first `out` values (helpers.unpack_from_int32 "[:, :cols]"). Zero-padding
            # the packed words to [out, groups] satisfies both: it loads and decodes exactly.
            padded = np.zeros(zp.shape, dtype=np.int32)
            padded[: packed.shape[0]] = packed
            out[f"{module}.weight_zero_point"] = padded
    cfg = dict(config)
    if args is not None:
        # compressed-tensors applies the scheme to "Linear" modules not in `ignore`
        cfg["quantization_config"] = quantization_config(args, ignore, ["Linear"])
    with atomic_dir(out_dir) as tmp:
        write_safetensors(tmp / "model.safetensors", out, dtypes=dtypes,
                          metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2), encoding="utf-8")
        for fname, text in extra_files.items():
            (tmp / fname).write_text(text, encoding="utf-8")
    return Path(out_dir)
