"""Read back the weights an ONNX directory written by quantport holds, by Hugging Face name.

The graph's metadata (``quantport_tensors``, written by :mod:`quantport.writers.onnx`) says
how each Hugging Face tensor is stored (:class:`~quantport.formats.onnx_pack.Storage`); the
initializers are read from ``model.onnx.data`` and rebuilt as IR records, dequantized by the
one routine :func:`quantport.ir.dequantize`. This module imports numpy and onnx_ir only.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from quantport.errors import FormatError
from quantport.formats.onnx_pack import element_bytes, storage_entry, unpack_bits
from quantport.ir import QuantizedTensor, ZeroPointDomain, dequantize

__all__ = ["check_external_data", "external_ranges", "load_graph", "onnx_records",
           "onnx_weights"]

_GRAPH = "model.onnx"


def _graph_path(path: str | Path) -> Path:
    p = Path(path)
    return p / _GRAPH if p.is_dir() else p


def _load(path: str | Path) -> tuple[Any, dict[str, Any], Path]:
    import onnx_ir as ir

    g = _graph_path(path)
    if not g.is_file():
        raise FormatError(f"{g}: no ONNX graph there; give a directory written by quantport "
                          "convert --to onnx")
    try:
        model = ir.load(g)
    except Exception as exc:  # protobuf's DecodeError and friends
        raise FormatError(f"{g}: not a readable ONNX model ({type(exc).__name__}); "
                          "re-export it") from None
    meta = dict(model.metadata_props)
    if "quantport_tensors" not in meta:
        raise FormatError(f"{g}: no quantport_tensors metadata; only directories written by "
                          "quantport convert --to onnx can be read back")
    return model, meta, g


def _check_data(model: Any, meta: dict[str, str], graph: Path) -> dict[str, Any]:
    """Initializers by name, after checking that every external file holds their bytes."""
    import onnx_ir as ir

    inits = dict(model.graph.initializers)
    need: dict[Path, int] = {}
    for v in inits.values():
        t = v.const_value
        if isinstance(t, ir.ExternalTensor):
            f = Path(t.base_dir or graph.parent) / t.location
            need[f] = max(need.get(f, 0), int(t.offset or 0) + int(t.length or 0))
    expect = meta.get("quantport_data_size")
    for f, end in need.items():
        if not f.is_file():
            raise FormatError(f"{graph}: its external data file {f.name} is missing; copy the "
                              "whole directory or re-export it")
        size = f.stat().st_size
        if size < end:
            raise FormatError(f"{f}: {size} bytes, the graph reads up to byte {end}; the file "
                              "is truncated, re-export it")
        if expect is not None and size != int(expect):
            raise FormatError(f"{f}: {size} bytes, the graph was written with {expect}; the "
                              "data file does not belong to this graph, re-export it")
    return inits


def _array(inits: dict[str, Any], name: str, graph: Path) -> np.ndarray:
    if name not in inits:
        raise FormatError(f"{graph}: initializer {name} is missing; re-export the model")
    t = inits[name].const_value
    try:
        raw = np.frombuffer(t.tobytes(), np.uint8)
    except Exception as exc:
        raise FormatError(f"{graph}: initializer {name} cannot be read ({exc})") from None
    dt = t.dtype.name.lower()
    n = math.prod(int(d) for d in t.shape)
    if raw.nbytes != element_bytes({"float": "float32"}.get(dt, dt), n):
        raise FormatError(f"{graph}: initializer {name} has {raw.nbytes} bytes for {n} "
                          f"{dt} elements; re-export the model")
    shape = tuple(int(d) for d in t.shape)
    if dt in ("int4", "uint4"):
        u = unpack_bits(raw, 4, n).astype(np.int16)
        if dt == "int4":
            u = np.where(u > 7, u - 16, u)
        return u.reshape(shape)
    np_dt = {"float": "<f4", "float16": "<f2", "int8": "i1", "uint8": "u1"}.get(dt)
    if dt == "bfloat16":
        return (raw.view("<u2").astype(np.uint32) << 16).view(np.float32).reshape(shape)
    if np_dt is None:
        raise FormatError(f"{graph}: initializer {name} has element type {dt}, which quantport "
                          "does not write")
    return raw.view(np_dt).reshape(shape)


def _record(st: dict[str, Any], arrs: list[np.ndarray]) -> QuantizedTensor | np.ndarray:
    n, k = st["shape"] if len(st["shape"]) == 2 else (None, None)
    if st["kind"] == "dense":
        w = arrs[0].astype(np.float32)
        return np.ascontiguousarray(w.T) if st["transposed"] else w
    bits = int(st["bits"])
    if st["kind"] == "qdq":
        q, sc, zp = arrs
        codes = q.T.astype(np.int16)
        if st["axis"] == 0:
            block = (1, int(st["block_size"]))
            sc, zp = sc.T, zp.T
        elif st["axis"] == 1:
            block, sc, zp = (1, k), sc.reshape(n, 1), zp.reshape(n, 1)
        else:
            block, sc, zp = (n, k), sc.reshape(1, 1), zp.reshape(1, 1)
        return QuantizedTensor((n, k), codes, np.asarray(sc, np.float32), block, bits, True,
                               zero_point=np.asarray(zp, np.float32), encoding="onnx-qdq")
    bs = int(st["block_size"])
    kb = k // bs
    codes = unpack_bits(arrs[0].reshape(n, kb, -1), bits, bs).reshape(n, k).astype(np.int16)
    if st.get("fmin"):
        return QuantizedTensor((n, k), codes, arrs[1].reshape(n, kb).astype(np.float32),
                               (1, bs), bits, False, zero_point=np.ascontiguousarray(
                                   arrs[3].reshape(kb, n).T.astype(np.float32)),
                               zero_point_domain=ZeroPointDomain.FLOAT, encoding="onnx-nbits-min")
    half = 1 << (bits - 1)
    if len(arrs) > 2:
        zp = unpack_bits(arrs[2], bits, kb).astype(np.float32)
    else:
        zp = np.full((n, kb), half, np.float32)
    return QuantizedTensor((n, k), codes, arrs[1].reshape(n, kb).astype(np.float32), (1, bs),
                           bits, False, zero_point=zp, encoding="onnx-nbits")


def onnx_records(path: str | Path) -> dict[str, QuantizedTensor | np.ndarray]:
    """The tensors of a quantport ONNX directory (or its ``model.onnx``), by Hugging Face
    name, in Hugging Face layout: IR records for quantized weights, float32 arrays otherwise.

    Raises:
        FormatError: not a quantport ONNX export, or its external data file is missing,
            truncated or of another export (one line, naming the file).
    """
    model, meta, graph = _load(path)
    inits = _check_data(model, meta, graph)
    try:
        table = json.loads(meta["quantport_tensors"])
    except ValueError:
        raise FormatError(f"{graph}: quantport_tensors metadata is not JSON; re-export the "
                          "model") from None
    out: dict[str, QuantizedTensor | np.ndarray] = {}
    fused: dict[str, np.ndarray] = {}

    def member(init: str, st: dict[str, Any]) -> np.ndarray:
        place = st.get("places", {}).get(init)
        if place is None:
            return _array(inits, init, graph)
        name, axis, start, n = place  # a slice of a fused initializer (q/k/v as qkv_proj)
        if name not in fused:
            fused[name] = _array(inits, name, graph)
        arr = fused[name]
        return arr[start:start + n] if axis == 0 or arr.ndim == 1 else arr[:, start:start + n]

    for name, entry in table.items():
        st = storage_entry(name, entry)
        arrs = [member(i, st) for i in st["inits"]]
        try:
            out[name] = _record(st, arrs)
        except (ValueError, KeyError, TypeError) as exc:
            raise FormatError(f"{graph}: tensor {name} does not match its storage description "
                              f"({exc}); re-export the model") from None
    return out


def onnx_weights(path: str | Path) -> dict[str, np.ndarray]:
    """The float32 weights the graph holds, by Hugging Face name and in Hugging Face layout
    (``[out, in]`` for Linear weights), dequantized through :func:`quantport.ir.dequantize`.

    A tied LM head is not listed: it is ``model.embed_tokens.weight``, as in the source.

    Raises:
        FormatError: see :func:`onnx_records`.
    """
    return {k: dequantize(v) if isinstance(v, QuantizedTensor) else v
            for k, v in onnx_records(path).items()}


def load_graph(model_path: str | os.PathLike[str]) -> Any:
    """The graph of an ONNX file, without its external data.

    Raises:
        FormatError: a corrupt protobuf, or one without a graph (an empty file parses as an
            empty ModelProto without error).
    """
    import onnx

    model_path = Path(model_path)
    try:
        model = onnx.load(str(model_path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError and others for corrupt protobufs
        raise FormatError(
            f"{model_path}: not a readable ONNX model ({exc.__class__.__name__}); "
            "re-export it") from exc
    if not model.HasField("graph"):
        raise FormatError(f"{model_path}: not a readable ONNX model (no graph in its "
                          f"{model_path.stat().st_size} bytes); re-export it")
    return model


def external_ranges(model: Any) -> dict[str, list[tuple[str, int, int]]]:
    """Byte ranges of the external data a graph points at: ``{file: [(tensor, offset,
    length), ...]}``, for initializers of the main graph (where onnx and onnx-ir put them)."""
    import onnx

    out: dict[str, list[tuple[str, int, int]]] = {}
    for t in model.graph.initializer:
        if t.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info = {e.key: e.value for e in t.external_data}
        offset = int(info.get("offset", 0) or 0)
        if "length" in info:
            length = int(info["length"])
        else:  # optional in the spec: the tensor's own size
            count = int(np.prod(t.dims, dtype=np.int64))
            bits = {onnx.TensorProto.INT4: 4, onnx.TensorProto.UINT4: 4}.get(t.data_type)
            length = (count + 1) // 2 if bits else count * onnx.helper.tensor_dtype_to_np_dtype(
                t.data_type).itemsize
        out.setdefault(info.get("location", ""), []).append((t.name, offset, length))
    return out


def check_external_data(model_path: str | os.PathLike[str], model: Any = None) -> None:
    """Check that every external-data file the graph names is there and fits it.

    Each file must exist, hold every byte range the graph's tensors point at, and end where the
    last range ends (onnx's ``save_model`` and onnx-ir's ``save`` write nothing after it): a
    file of another export of the model has another size.

    Raises:
        FormatError: a file is missing, truncated or does not match the graph (one line,
            naming the file, what the graph expects and how to fix it).
    """
    mp = Path(model_path)
    model = model if model is not None else load_graph(mp)
    fix = "re-export the artifact or copy the matching file beside it"
    for location, ranges in external_ranges(model).items():
        if not location or os.path.isabs(location) or ".." in Path(location).parts:
            raise FormatError(f"{mp}: external data location {location!r} is not a file name "
                              f"beside the graph; {fix}")
        f = mp.parent / location
        if not f.is_file():
            raise FormatError(f"{f}: external data file missing ({len(ranges)} tensors of "
                              f"{mp.name} are stored in it); {fix}")
        size = f.stat().st_size
        name, offset, length = max(ranges, key=lambda r: r[1] + r[2])
        end = offset + length
        if size < end:
            raise FormatError(f"{f}: truncated (or not this graph's): {size:,} bytes, the "
                              f"graph's tensors need {end:,} (tensor {name}); {fix}")
        if size > end:
            raise FormatError(f"{f}: does not match {mp.name}: {size:,} bytes, the graph's "
                              f"tensors end at byte {end:,}; {fix}")
