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

from quantport.errors import FormatError, QuantportError
from quantport.formats.gguf_file import scan_gguf
from quantport.formats.safetensors import SafetensorsFile

__all__ = ["inspect_path"]


def _safetensors(files: list[Path], config: dict[str, Any] | None, root: Path) -> dict[str, Any]:
    tensors = []
    metadata: dict[str, Any] = {}
    for f in files:
        st = SafetensorsFile(f)
        metadata.update(st.metadata)
        for info in st.tensors.values():
            tensors.append({"name": info.name, "shape": list(info.shape), "type": info.dtype,
                            "bytes": info.nbytes, "file": f.name})
    qc = (config or {}).get("quantization_config")
    packed = [t["name"].removesuffix(".weight_packed") for t in tensors
              if t["name"].endswith(".weight_packed")]
    quant: dict[str, Any] = {"quantized_modules": len(packed),
                             "dtypes": dict(Counter(t["type"] for t in tensors))}
    if qc:
        quant["method"] = qc.get("quant_method")
        quant["format"] = qc.get("format")
        groups = qc.get("config_groups") or {}
        quant["weights"] = {k: v.get("weights") for k, v in groups.items()}
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


def _onnx(path: Path) -> dict[str, Any]:
    import onnx
    from onnx import helper

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError and others for corrupt protobufs
        raise FormatError(f"{path}: not a readable ONNX model ({exc.__class__.__name__})") from exc
    tensors = []
    for init in model.graph.initializer:
        dtype = helper.tensor_dtype_to_np_dtype(init.data_type)
        count = 1
        for d in init.dims:
            count *= d
        tensors.append({"name": init.name, "shape": list(init.dims),
                        "type": onnx.TensorProto.DataType.Name(init.data_type),
                        "bytes": int(count * dtype.itemsize) if dtype.itemsize else 0})
    ops = Counter(n.op_type for n in model.graph.node)
    quant = {k: ops[k] for k in ("QuantizeLinear", "DequantizeLinear", "MatMulNBits",
                                 "MatMulInteger", "QLinearMatMul") if ops.get(k)}
    return {"path": str(path), "format": "onnx",
            "metadata": {"opsets": {o.domain or "ai.onnx": o.version for o in model.opset_import},
                         "producer": model.producer_name, "ops": dict(ops),
                         **{p.key: p.value for p in model.metadata_props}},
            "quantization": quant, "tensors": tensors,
            "total_bytes": sum(t["bytes"] for t in tensors)}


def inspect_path(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Summarise an artifact: tensors (name, shape, type, bytes), metadata, quantization.

    Raises:
        FormatError: unreadable or unknown file.
        QuantportError: the path does not exist.
    """
    p = Path(path)
    if not p.exists():
        raise QuantportError(f"{p}: no such file or directory")
    if p.is_dir():
        cfg_path = p / "config.json"
        config = None
        if cfg_path.is_file():
            try:
                config = json.loads(cfg_path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as exc:
                raise FormatError(f"{cfg_path}: invalid JSON ({exc})") from exc
        files = sorted(p.glob("*.safetensors"))
        if not files:
            gg = sorted(p.glob("*.gguf")) + sorted(p.glob("*.onnx"))
            if gg:
                return inspect_path(gg[0])
            raise FormatError(f"{p}: no .safetensors, .gguf or .onnx file inside")
        return _safetensors(files, config, p)
    with open(p, "rb") as f:
        magic = f.read(8)
    if magic[:4] == b"GGUF":
        return _gguf(p)
    if p.suffix == ".safetensors":
        return _safetensors([p], None, p)
    if p.suffix == ".onnx":
        return _onnx(p)
    raise FormatError(f"{p}: unknown format (expected .safetensors, .gguf or .onnx)")
