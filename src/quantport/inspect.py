"""Header-only inspection of safetensors, GGUF and ONNX artifacts.

Nothing here loads tensor data: safetensors and GGUF headers are validated and summarised,
ONNX models are read without their external data.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from quantport.errors import FormatError, QuantportError
from quantport.formats.gguf_file import scan_gguf
from quantport.formats.onnx_read import check_external_data, load_graph
from quantport.formats.safetensors import SafetensorsFile
from quantport.formats.safetensors_shards import INDEX, weight_map

__all__ = ["inspect_path", "onnx_bits", "onnx_weight_schemes"]


def _check_index(index: Path, tensors: list[dict[str, Any]]) -> None:
    """Every shard a sharded checkpoint's index names is there and holds the tensors the
    index puts in it: otherwise the checkpoint cannot be loaded, though the shards that are
    there look fine."""
    if not index.is_file():
        return
    fix = "copy the whole checkpoint directory or re-export it"
    try:
        data = json.loads(index.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise FormatError(f"{index}: not a valid index ({exc.__class__.__name__}); {fix}"
                          ) from exc
    present = {(t["file"], t["name"]) for t in tensors}
    shards = {t["file"] for t in tensors}
    wm = weight_map(index, data)
    for name, shard in wm.items():
        if shard not in shards:
            n = sum(s == shard for s in wm.values())
            raise FormatError(f"{index}: shard {shard} is missing ({n} tensors are stored in "
                              f"it); {fix}")
        if (shard, name) not in present:
            raise FormatError(f"{index}: tensor {name} is not in shard {shard}; {fix}")


def _safetensors(files: list[Path], config: dict[str, Any] | None, root: Path) -> dict[str, Any]:
    tensors = []
    metadata: dict[str, Any] = {}
    for f in files:
        st = SafetensorsFile(f)
        metadata.update(st.metadata)
        for info in st.tensors.values():
            tensors.append({"name": info.name, "shape": list(info.shape), "type": info.dtype,
                            "bytes": info.nbytes, "file": f.name})
    if root.is_dir():
        _check_index(root / INDEX, tensors)
    qc = (config or {}).get("quantization_config")
    # a quantized Linear: compressed-tensors' packed codes or int8 weight with its scale
    # (W8A8), or a GPTQ checkpoint's qweight
    suffixes = (".weight_packed", ".weight_scale", ".qweight")
    modules = {t["name"].rsplit(".", 1)[0] for t in tensors if t["name"].endswith(suffixes)}
    quant: dict[str, Any] = {"quantized_modules": len(modules),
                             "dtypes": dict(Counter(t["type"] for t in tensors))}
    if isinstance(qc, dict):
        quant["method"] = qc.get("quant_method")
        quant["format"] = qc.get("format")
        groups = qc.get("config_groups") or {}
        if groups and isinstance(groups, dict):
            quant["weights"] = {k: v.get("weights") for k, v in groups.items()
                                if isinstance(v, dict)}
            acts = {k: v.get("input_activations") for k, v in groups.items()
                    if isinstance(v, dict) and v.get("input_activations")}
            if acts:  # W8A8: the activations are quantized at run time too
                quant["input_activations"] = acts
        elif qc.get("quant_method") == "gptq":  # GPTQModel's config: one scheme for all
            quant["weights"] = {k: qc.get(k) for k in ("bits", "group_size", "sym", "desc_act")
                                if k in qc}
        quant["ignore"] = qc.get("ignore")
    return {"path": str(root), "format": "safetensors", "metadata": metadata,
            "config": config, "quantization": quant, "tensors": tensors,
            "total_bytes": sum(t["bytes"] for t in tensors)}


def _gguf(path: Path) -> dict[str, Any]:
    scan = scan_gguf(path)
    tensors = [{"name": t.name, "shape": list(t.shape), "type": t.type_name, "bytes": t.nbytes}
               for t in scan.tensors]
    quant = {
        "file_type": scan.metadata.get("general.file_type"),
        "types": dict(Counter(t["type"] for t in tensors)),
        "quantization_version": scan.metadata.get("general.quantization_version"),
    }
    return {"path": str(path), "format": "gguf", "version": scan.version,
            "metadata": scan.metadata, "quantization": quant, "tensors": tensors,
            "total_bytes": sum(t["bytes"] for t in tensors)}


# ONNX: what each weight initializer is, read from the node that consumes it. The attribute
# defaults are the schemas' (docs/ContribOperators.md in microsoft/onnxruntime: MatMulNBits
# accuracy_level 0; onnx/defs/quantization: DequantizeLinear axis 1, block_size 0).
_SUB_BYTE = {"INT4": 4, "UINT4": 4, "INT2": 2, "UINT2": 2, "FLOAT4E2M1": 4}
_ONNX_QUANT_OPS = ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "MatMulNBits",
                   "GatherBlockQuantized", "MatMulInteger", "DynamicQuantizeMatMul",
                   "MatMulIntegerToFloat", "QLinearMatMul")


#: integer GEMMs with a constant weight (input 1): the input index of the weight's scale and
#: of its zero point (ONNX MatMulInteger: A, B, a_zero_point, b_zero_point; com.microsoft
#: DynamicQuantizeMatMul: A, B, b_scale, b_zero_point, bias; com.microsoft
#: MatMulIntegerToFloat: A, B, a_scale, b_scale, a_zero_point, b_zero_point, bias)
_INT_GEMMS: dict[str, tuple[int | None, int]] = {
    "MatMulInteger": (None, 3), "DynamicQuantizeMatMul": (2, 3), "MatMulIntegerToFloat": (3, 5)}


def _attrs(node: Any) -> dict[str, Any]:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _tensor_bytes(init: Any) -> int:
    import onnx
    from onnx import helper

    count = 1
    for d in init.dims:
        count *= d
    name = onnx.TensorProto.DataType.Name(init.data_type)
    if name in _SUB_BYTE:
        return (count * _SUB_BYTE[name] + 7) // 8
    if name == "STRING":
        return sum(len(x) for x in init.string_data)
    return int(count * helper.tensor_dtype_to_np_dtype(init.data_type).itemsize)


def _zero_points(init: Any, base: Path | None) -> np.ndarray | None:
    """The values of a (small) zero-point initializer, read from the graph or its external
    data file; ``None`` when they cannot be read or are too large to bother (> 16 MiB)."""
    from onnx import numpy_helper

    if _tensor_bytes(init) > 16 << 20:
        return None
    try:
        return np.asarray(numpy_helper.to_array(init, str(base) if base else "")).astype(
            np.int64)
    except Exception:  # onnx's checker raises its own ValidationError for a missing file
        return None


def _onnx_scheme(node: Any, inits: dict[str, Any], consumers: dict[str, list[Any]],
                 producers: dict[str, Any], base: Path | None = None
                 ) -> tuple[str, list[str]] | None:
    """The weight scheme ``node`` applies to its constant weight, and the initializers it owns
    (weight, scales, zero points); ``None`` when the node holds no weight."""
    import onnx

    a = _attrs(node)
    ins = list(node.input)

    def present(i: int) -> str | None:
        return ins[i] if len(ins) > i and ins[i] and ins[i] in inits else None

    def zp_kind(i: int) -> str:
        z = present(i)
        if z is None:
            return "sym" if len(ins) <= i or not ins[i] else "asym (computed zero point)"
        t = onnx.TensorProto.DataType.Name(inits[z].data_type)
        if t not in ("UINT8", "INT8", "UINT4", "INT4", "UINT2", "INT2"):
            return f"asym ({t.lower()} zero point)"
        # explicit zero points that are all the type's midpoint (0 for signed, 2^(bits-1)
        # for unsigned codes) make a symmetric scheme; MatMulNBits packs them two per byte
        values = _zero_points(inits[z], base)
        if values is None:
            return "asym"
        mid = 0 if t.startswith("INT") else 1 << (_SUB_BYTE.get(t, 8) - 1)
        if op == "MatMulNBits" and t == "UINT8":
            bits = a.get("bits", 4)
            mid = 1 << (bits - 1)
            if bits < 8:
                per = 8 // bits
                values = np.stack([(values >> (bits * j)) & ((1 << bits) - 1)
                                   for j in range(per)], -1)
        return "sym (explicit zero point)" if bool(np.all(values == mid)) else "asym"

    op = node.op_type
    if op == "MatMulNBits" and present(1):
        acc = a.get("accuracy_level", 0)
        zp = zp_kind(3)
        if zp == "sym":  # MatMulNBits' default zero point is 2^(bits-1): symmetric codes
            zp = "sym (default zero point)"
        owned = [x for x in (present(1), present(2), present(3), present(4)) if x]
        return (f"MatMulNBits int{a.get('bits', 4)} block {a.get('block_size')} {zp}, "
                f"accuracy_level {acc}", owned)
    # a weight may reach its consumer through a Reshape or Transpose (onnxruntime-genai's
    # tied LM head table feeds GatherBlockQuantized through a Reshape; a float tied head is
    # the embedding transposed)
    for i, name in enumerate(ins[:2]):
        src = producers.get(name)
        if name and name not in inits and src is not None \
                and src.op_type in ("Reshape", "Transpose") and src.input[0] in inits:
            ins[i] = src.input[0]
    if op == "GatherBlockQuantized" and present(0):
        owned = [x for x in (present(0), present(2), present(3)) if x]
        bits = a.get("bits", 4)
        t = onnx.TensorProto.DataType.Name(inits[ins[0]].data_type)
        if t in ("INT4", "UINT4"):
            bits = 4
        return (f"GatherBlockQuantized int{bits} block {a.get('block_size', 128)} "
                f"{zp_kind(3)}", owned)
    if op == "DequantizeLinear" and present(0):
        t = onnx.TensorProto.DataType.Name(inits[ins[0]].data_type).lower()
        scale = inits.get(ins[1]) if len(ins) > 1 else None
        bs = a.get("block_size", 0)
        if bs:
            gran = f"block {bs} (axis {a.get('axis', 1)})"
        elif scale is not None and len(scale.dims) == 0 or (
                scale is not None and int(np.prod(scale.dims)) == 1):
            gran = "per-tensor"
        else:
            gran = f"per-channel (axis {a.get('axis', 1)})"
        users = sorted({c.op_type for c in consumers.get(node.output[0], [])}) or ["(output)"]
        owned = [x for x in (present(0), present(1), present(2)) if x]
        return f"DQ {t} {gran} {zp_kind(2)} → {'/'.join(users)}", owned
    if op in _INT_GEMMS:
        # quantport's W8A8 graphs convert the stored int8 codes and zero points to uint8
        # in front of the product: the weight is the initializer behind
        from quantport.formats.onnx_pack import behind_conversion

        scale_i, zp_i = _INT_GEMMS[op]
        for i in (1, zp_i):
            if len(ins) > i and ins[i]:
                ins[i] = behind_conversion(ins[i], producers, inits)
        if present(1):
            t = onnx.TensorProto.DataType.Name(inits[ins[1]].data_type).lower()
            # MatMulInteger has no scale input (a Mul follows): its zero point's shape tells
            scale = present(scale_i) if scale_i is not None else present(zp_i)
            per = ("per-channel" if scale and int(np.prod(inits[scale].dims)) > 1 else
                   "per-tensor")
            owned = [x for x in (present(1), present(scale_i) if scale_i is not None else None,
                                 present(zp_i)) if x]
            return f"{op} {t} weights {per}, 8-bit activations quantized at run time", owned
    if op == "QLinearMatMul" and present(3):
        t = onnx.TensorProto.DataType.Name(inits[ins[3]].data_type).lower()
        return f"QLinearMatMul {t}", [x for x in (present(3), present(4), present(5)) if x]
    if op in ("MatMul", "Gemm", "Gather") and len(ins) > 1:
        w = ins[0] if op == "Gather" else ins[1]
        if w in inits and len(inits[w].dims) == 2:
            t = onnx.TensorProto.DataType.Name(inits[w].data_type).lower()
            t = {"float": "float32", "double": "float64"}.get(t, t)
            return f"{t} → {op}", [w]
    return None


def onnx_weight_schemes(model: Any, base: Path | None = None) -> dict[str, dict[str, Any]]:
    """Group an ONNX graph's weight initializers by the scheme the consuming node applies.

    Returns ``{scheme: {"count": weights, "bytes": bytes of the weights with their scales and
    zero points, "bits": nominal weight bits (16 for float), "examples": [names]}}``; a scheme
    reads e.g. ``MatMulNBits int4 block 32 sym (default zero point), accuracy_level 4`` or
    ``DQ int4 block 32 (axis 0) sym → MatMul``. ``base``: the directory of the graph's
    external data, to read zero points from (without it explicit zero points count as asym).
    """
    inits = {t.name: t for t in model.graph.initializer}
    consumers: dict[str, list[Any]] = {}
    producers: dict[str, Any] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
        for o in n.output:
            producers[o] = n
    groups: dict[str, dict[str, Any]] = {}
    seen: set[str] = set()
    for n in model.graph.node:
        found = _onnx_scheme(n, inits, consumers, producers, base)
        if found is None:
            continue
        scheme, owned = found
        fresh = [x for x in owned if x not in seen]
        if not fresh:  # e.g. the tied LM head sharing the embedding's packed weight
            scheme += " (shared)"
        seen.update(owned)
        g = groups.setdefault(scheme, {"count": 0, "bytes": 0, "bits": _scheme_bits(scheme),
                                       "examples": []})
        g["count"] += 1
        g["bytes"] += sum(_tensor_bytes(inits[x]) for x in fresh)
        if len(g["examples"]) < 3:
            g["examples"].append(owned[0])
    return groups


def _scheme_bits(scheme: str) -> int:
    import re

    m = re.search(r"\b(?:u?int|int)(\d+)\b", scheme)
    if m:
        return int(m.group(1))
    return 16


def onnx_bits(path: str | os.PathLike[str]) -> int:
    """Nominal weight precision of an ONNX artifact (directory or ``.onnx``): the fewest bits
    among its quantized weights, 16 when none is quantized."""
    p = Path(path)
    mp = p / "model.onnx" if p.is_dir() else p
    model = load_graph(mp)
    bits = [g["bits"] for g in onnx_weight_schemes(model, mp.parent).values()]
    return min(bits, default=16)


def _io_names(names: Any) -> list[str]:
    """Graph I/O names, the per-layer ones folded: ``past_key_values.{0..29}.key``."""
    import re

    out: list[str] = []
    layers: dict[str, list[int]] = {}
    for n in names:
        m = re.fullmatch(r"(.*?)\.(\d+)\.(.*)", n)
        if m is None:
            out.append(n)
            continue
        key = f"{m.group(1)}.{{}}.{m.group(3)}"
        if key not in layers:
            layers[key] = []
            out.append(key)
        layers[key].append(int(m.group(2)))
    return [n.format(f"{min(layers[n])}..{max(layers[n])}") if n in layers else n for n in out]


def _onnx(path: Path, root: Path | None = None) -> dict[str, Any]:
    import onnx

    model = load_graph(path)
    tensors = []
    for init in model.graph.initializer:
        ext = {e.key: e.value for e in init.external_data}
        tensors.append({"name": init.name, "shape": list(init.dims),
                        "type": onnx.TensorProto.DataType.Name(init.data_type),
                        "bytes": _tensor_bytes(init),
                        "file": ext.get("location", path.name)})
    ops = Counter(n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}.{n.op_type}"
                  for n in model.graph.node)
    schemes = onnx_weight_schemes(model, path.parent)
    quant = {"ops": {k: v for k, v in ops.items() if k.rsplit(".", 1)[-1] in _ONNX_QUANT_OPS},
             "weights": schemes,
             "bits": min((g["bits"] for g in schemes.values()), default=16)}
    d = root or path.parent
    files = {}
    for f in sorted({path.name, *(t["file"] for t in tensors)}):
        fp = d / f
        files[f] = fp.stat().st_size if fp.is_file() else None
    # a missing data file is reported as missing (the graph alone is still readable); one
    # that is there must hold what the graph points at, as validate requires of it: a
    # truncated or foreign file would otherwise show as a plausible size
    if None not in files.values():
        check_external_data(path, model)
    io = {"inputs": _io_names(i.name for i in model.graph.input),
          "outputs": _io_names(o.name for o in model.graph.output)}
    return {"path": str(root or path), "format": "onnx",
            "metadata": {"opsets": {o.domain or "ai.onnx": o.version for o in model.opset_import},
                         "ir_version": model.ir_version,
                         "producer": f"{model.producer_name} {model.producer_version}".strip(),
                         **{p.key: p.value for p in model.metadata_props}},
            "ops": dict(sorted(ops.items(), key=lambda kv: (-kv[1], kv[0]))),
            "io": io, "files": files, "quantization": quant, "tensors": tensors,
            "total_bytes": sum(t["bytes"] for t in tensors),
            "file_bytes": sum(v for v in files.values() if v)}


def _onnx_dir(p: Path) -> dict[str, Any]:
    info = _onnx(p / "model.onnx", p)
    for name in ("config.json", "genai_config.json", "quantport.json"):
        f = p / name
        if f.is_file():
            info["files"].setdefault(name, f.stat().st_size)
    info["file_bytes"] = sum(v for v in info["files"].values() if v)
    cfg = p / "config.json"
    if cfg.is_file():
        try:
            c = json.loads(cfg.read_text(encoding="utf-8"))
            info["metadata"]["architecture"] = (c.get("architectures") or [c.get("model_type")])[0]
        except json.JSONDecodeError as exc:
            raise FormatError(f"{cfg}: invalid JSON ({exc})") from exc
    return info


def inspect_path(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Summarise an artifact: tensors (name, shape, type, bytes), metadata, quantization.

    Raises:
        FormatError: unreadable or unknown file.
        QuantportError: the path does not exist.
    """
    p = Path(path)
    if not p.exists():
        raise QuantportError(f"{p}: no such file or directory")
    if p.is_dir() and (p / "model.onnx").is_file():
        return _onnx_dir(p)
    if p.is_dir():
        cfg_path = p / "config.json"
        config = None
        if cfg_path.is_file():
            try:
                config = json.loads(cfg_path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as exc:
                raise FormatError(f"{cfg_path}: invalid JSON ({exc})") from exc
        files = sorted(p.glob("*.safetensors"))
        if not files and not (p / INDEX).is_file():
            gg = sorted(p.glob("*.gguf")) + sorted(p.glob("*.onnx"))
            if gg:
                return inspect_path(gg[0])
            raise FormatError(f"{p}: no .safetensors, .gguf or .onnx file inside")
        return _safetensors(files, config, p)
    with open(p, "rb") as f:
        magic = f.read(8)
    if magic[:4] == b"GGUF" or p.suffix == ".gguf":  # scan_gguf names what is wrong
        return _gguf(p)
    if p.suffix == ".safetensors":
        return _safetensors([p], None, p)
    if p.suffix == ".onnx":
        return _onnx(p)
    raise FormatError(f"{p}: unknown format (expected .safetensors, .gguf or .onnx)")
