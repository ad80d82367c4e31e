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
  ``[out, groups]`` so that transformers 5.23 loads it (see :func:`pack_record`).
* ``<m>.weight_g_idx`` int32 ``[in]`` for GPTQ act-order groups (``actorder: "group"``): the
  scale column of each input column; compressed-tensors <= 0.18 dequantizes with
  ``scale[:, g_idx]`` (``quantization/lifecycle/forward.py`` ``_process_quantization``), as
  :func:`quantport.ir.dequantize` does. compressed-tensors 0.19 removed ``actorder="group"``
  ("has been removed", ``QuantizationArgs.validate_actorder``): see
  :data:`GROUP_ACTORDER_LOADS`.

``config.json`` gains ``quantization_config`` (``QuantizationConfig.to_dict()`` shape, see
shared/reference/algorithms.md section 4). Pure numpy.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from quantport.errors import UnsupportedQuantError
from quantport.ir import QuantizedTensor, ZeroPointDomain

__all__ = ["GROUP_ACTORDER_LOADS", "pack_int32", "pack_record", "packed_entries", "quantization_config", "scheme_args",
           "scheme_of", "unpack_int32", "unpack_record"]


#: Whether the pinned runtime (transformers 5.23 + compressed-tensors 0.20) loads
#: ``actorder: "group"`` checkpoints with ``weight_g_idx``: it does not (compressed-tensors
#: 0.19+ raises "actorder='group' has been removed" when it parses the config; 0.18 loads them
#: and applies g_idx). So quantport writes act-order as static groups (``actorder: "weight"``)
#: in compressed-tensors and keeps ``g_idx`` for GPTQ checkpoints (``--to gptq``);
#: :func:`pack_record` / :func:`unpack_record` still handle ``weight_g_idx`` (older
#: llm-compressor checkpoints).
GROUP_ACTORDER_LOADS = False


def pack_int32(values: np.ndarray, bits: int) -> np.ndarray:
    """Pack unsigned ``bits``-wide values along the last axis into int32 words, LSB first.

    Matches ``compressed_tensors...helpers.pack_to_int32`` (dense cross-element packing):
    element ``i`` of a row sits at bits ``i*bits ...`` of the row's bit string.
    """
    *lead, n = np.shape(values)
    n_words = -(-n * bits // 32)
    if 32 % bits == 0:
        # 2, 4 or 8 bits: whole values per byte. Pack the row (zero-padded to whole words) into
        # bytes, element i at bits (i % per_byte)*bits of byte i // per_byte, and read each 4
        # bytes as one little-endian word: element i then sits at bits i*bits of the row's bit
        # string (a few byte-wide passes; the bit-plane path below is ~50x slower at 7B scale)
        per_byte = 8 // bits
        v = np.zeros((*lead, n_words * 4 * per_byte), dtype=np.uint8)
        v[..., :n] = values
        b = v[..., 0::per_byte].copy()
        for k in range(1, per_byte):
            b |= v[..., k::per_byte] << np.uint8(bits * k)
        return b.view("<u4").view(np.int32)
    v = np.ascontiguousarray(values, dtype=np.uint64).reshape(-1, n)
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
    if 32 % bits == 0:
        per = 32 // bits
        mask = np.uint32((1 << bits) - 1)
        vals = np.empty((*lead, n_words, per), dtype=np.int64)
        for k in range(per):
            vals[..., k] = (w >> np.uint32(bits * k)) & mask
        return vals.reshape(*lead, n_words * per)[..., :n]
    plane = np.unpackbits(w.reshape(-1, n_words).view(np.uint8), axis=-1, bitorder="little")
    plane = plane[:, : n * bits].reshape(-1, n, bits).astype(np.int64)
    vals = (plane << np.arange(bits)).sum(axis=-1)
    return vals.reshape(*lead, n)


def scheme_args(bits: int, symmetric: bool, strategy: str, group_size: int | None,
                actorder: str | None = None) -> dict[str, Any]:
    """The ``weights`` quantization args of one config group (compressed-tensors 0.20 keys).

    ``strategy`` is ``"group"``, ``"channel"`` or ``"tensor"``; ``actorder`` is ``None``,
    ``"weight"`` (GPTQ act-order with static groups: the layout is unchanged; 0.20 also
    accepts its alias ``"static"``, ``"weight"`` is the value every release knows) or
    ``"group"`` (``weight_g_idx`` stored; see :data:`GROUP_ACTORDER_LOADS`).
    """
    return {
        "num_bits": bits,
        "type": "int",
        "symmetric": symmetric,
        "group_size": group_size if strategy == "group" else None,
        "strategy": strategy,
        "block_structure": None,
        "dynamic": False,
        "actorder": actorder,
        "observer": "minmax",
        "observer_kwargs": {},
    }


def quantization_config(
    groups: list[tuple[Mapping[str, Any], list[str]]], ignore: list[str]
) -> dict[str, Any]:
    """The ``quantization_config`` block for config.json (compressed-tensors 0.20 keys).

    Args:
        groups: per config group, its weight args (:func:`scheme_args`) and its targets (the
            class name ``"Linear"``, or module names, which compressed-tensors matches exactly).
        ignore: Linear modules left unquantized.
    """
    return {
        "config_groups": {
            f"group_{k}": {
                "targets": list(targets),
                "weights": dict(args),
                "input_activations": None,
                "output_activations": None,
                "format": "pack-quantized",
            }
            for k, (args, targets) in enumerate(groups)
        },
        "quant_method": "compressed-tensors",
        "kv_cache_scheme": None,
        "format": "pack-quantized",
        "quantization_status": "compressed",
        "global_compression_ratio": None,
        "ignore": ignore,
    }


def packed_entries(
    module: str, shape: tuple[int, int], bits: int, symmetric: bool,
    scale_shape: tuple[int, int], g_idx: bool = False,
) -> list[tuple[str, str, tuple[int, ...]]]:
    """Names, safetensors dtypes and shapes of one quantized Linear's tensors, known before
    it is quantized: ``weight_packed``, ``weight_scale`` (``scale_shape``: ``[out, groups]``,
    ``[1, 1]`` per tensor; F32), ``weight_shape``, asymmetric, ``weight_zero_point`` (the
    scale's shape) and, with ``g_idx`` (act-order groups), ``weight_g_idx`` (I32 ``[in]``)."""
    rows, cols = shape
    out = [
        (f"{module}.weight_packed", "I32", (rows, -(-cols * bits // 32))),
        (f"{module}.weight_scale", "F32", tuple(scale_shape)),
        (f"{module}.weight_shape", "I64", (2,)),
    ]
    if not symmetric:
        out.append((f"{module}.weight_zero_point", "I32", tuple(scale_shape)))
    if g_idx:
        out.append((f"{module}.weight_g_idx", "I32", (cols,)))
    return out


def pack_record(module: str, t: QuantizedTensor) -> dict[str, np.ndarray]:
    """Pack one integer-grid record into its compressed-tensors tensors (see the module
    docstring), in the dtypes :func:`packed_entries` gives. ``t`` may hold only a range of
    the weight's rows (symmetric, per group or channel: those tensors are row-major); its
    ``weight_shape`` is then the range's, so the writer stores the weight's own shape instead.
    The zero point runs along the rows and is packed from whole records only. A record with
    ``g_idx`` (GPTQ act-order groups) also gets ``weight_g_idx``, except per channel, where one
    scale column serves every input column and ``g_idx`` says nothing.

    Raises:
        UnsupportedQuantError: not an integer-grid 2-D record.
    """
    if t.encoding != "int" or len(t.shape) != 2:
        raise UnsupportedQuantError(
            f"{module}: compressed-tensors pack-quantized takes integer-grid 2-D weights, got "
            f"{t.encoding}"
        )
    offset = 1 << (t.bits - 1)
    if t.signed and t.bits <= 8:
        # the unsigned codes in one byte each (int16 in between: offset + code fits)
        unsigned = (np.asarray(t.codes).astype(np.int16) + offset).astype(np.uint8)
    else:
        codes = np.asarray(t.codes, dtype=np.int32)
        unsigned = codes if not t.signed else codes + offset
    out = {
        f"{module}.weight_packed": pack_int32(unsigned, t.bits),
        f"{module}.weight_scale": np.asarray(t.scale, dtype=np.float32),
        f"{module}.weight_shape": np.asarray(t.shape, dtype=np.int64),
    }
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
    if t.g_idx is not None and _param_cols(t) > 1:
        out[f"{module}.weight_g_idx"] = np.asarray(t.g_idx, dtype=np.int32)
    return out


def _param_cols(t: QuantizedTensor) -> int:
    return int(np.shape(t.scale)[-1])


def unpack_record(get: Callable[[str], np.ndarray], module: str,
                  args: Mapping[str, Any]) -> QuantizedTensor:
    """Inverse of :func:`pack_record`: the IR record of one ``pack-quantized`` Linear weight.

    Args:
        get: reads a checkpoint tensor by name.
        module: the module name (``model.layers.0.mlp.down_proj``).
        args: its config group's ``weights`` args (:func:`scheme_of`).
    """
    bits = int(args["num_bits"])
    offset = 1 << (bits - 1)
    rows, cols = (int(s) for s in np.asarray(get(f"{module}.weight_shape")))
    codes = (unpack_int32(get(f"{module}.weight_packed"), bits, cols) - offset).astype(np.int8)
    scale = np.asarray(get(f"{module}.weight_scale"), dtype=np.float32)
    strategy = args.get("strategy")
    if strategy == "tensor":
        block = (rows, cols)
        scale = scale.reshape(1, 1)
    elif strategy == "channel":
        block = (1, cols)
        scale = scale.reshape(rows, 1)
    else:
        block = (1, int(args["group_size"]))
    g_idx = None
    if args.get("actorder") in ("group", "dynamic"):  # "dynamic": 0.18's alias of "group"
        g_idx = np.asarray(get(f"{module}.weight_g_idx")).astype(np.int32)
        if np.array_equal(g_idx, np.arange(cols) // block[1]):
            g_idx = None  # the natural grouping: the record needs no g_idx
    zp = None
    try:
        words = None if args.get("symmetric", True) else get(f"{module}.weight_zero_point")
    except KeyError:  # asymmetric args without a stored zero point: read as zero
        words = None
    if words is not None:
        words = np.asarray(words)
        n_words = -(-scale.shape[0] * bits // 32)
        # packed along the output axis, zero-padded to [out, groups] (see pack_record)
        zp = unpack_int32(words[:n_words].T, bits, scale.shape[0]).T - offset
        zp = zp.astype(np.float32).reshape(scale.shape)
    return QuantizedTensor(shape=(rows, cols), codes=codes, scale=scale, block_size=block,
                           bits=bits, signed=True, zero_point=zp,
                           zero_point_domain=ZeroPointDomain.INT, g_idx=g_idx)


# compressed-tensors ActivationOrdering values (0.18: group, weight, static, dynamic; False and
# None: none); "weight"/"static" change nothing in the layout, "group"/"dynamic" add g_idx
_ACTORDERS = (None, False, "weight", "static", "group", "dynamic")


def scheme_of(config: Mapping[str, Any], where: str) -> Callable[[str], Mapping[str, Any]]:
    """Which config group's ``weights`` args apply to a module, as compressed-tensors matches
    them: with one group, that group; with several (quantport writes one per scheme when
    ``--tensor-type`` mixes them), a group targeting a module by name wins and a ``"Linear"``
    target covers the rest.

    Raises:
        UnsupportedQuantError: a configuration quantport cannot read (not integer
            ``pack-quantized``, an unknown ``actorder``, regex targets), or a module no group
            covers.
    """
    if config.get("format", "pack-quantized") != "pack-quantized":
        raise UnsupportedQuantError(f"{where}: quantport reads pack-quantized checkpoints only")
    groups = list((config.get("config_groups") or {}).values())
    by_name: dict[str, Mapping[str, Any]] = {}
    linear: Mapping[str, Any] | None = None
    for group in groups:
        args = group.get("weights") or {}
        if args.get("type", "int") != "int" or args.get("actorder") not in _ACTORDERS:
            raise UnsupportedQuantError(
                f"{where}: quantport reads integer checkpoints with actorder "
                f"{', '.join(str(a) for a in _ACTORDERS)}, got {args.get('type', 'int')} "
                f"actorder {args.get('actorder')!r}"
            )
    if len(groups) == 1:  # one scheme: every packed module is quantized with it
        only = groups[0].get("weights") or {}
        return lambda module: only
    for group in groups:
        args = group.get("weights") or {}
        for target in group.get("targets") or []:
            if target == "Linear":
                linear = args
            elif str(target).startswith("re:"):
                raise UnsupportedQuantError(
                    f"{where}: regex target {target!r} among several config groups is not "
                    "supported"
                )
            else:
                by_name[str(target)] = args

    def args_of(module: str) -> Mapping[str, Any]:
        args = by_name.get(module, linear)
        if args is None:
            raise UnsupportedQuantError(f"{where}: no config group covers {module}")
        return args

    return args_of
