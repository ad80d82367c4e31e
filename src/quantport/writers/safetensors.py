"""Conversion pipelines: source -> IR (quantized tensor by tensor) -> writer.

Library code: reports progress through ``on_progress(phase, done, total)`` and returns a
:class:`ConvertReport`; the CLI renders both.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import quantport
from quantport.readers.source import ModelSource
from quantport.errors import ShapeError
from quantport.formats._atomic import atomic_dir, check_output
from quantport.formats.compressed_tensors import write_pack_quantized
from quantport.formats.safetensors import write_safetensors
from quantport.ir import ModelIR, QuantizedTensor, Tensor, dequantize
from quantport.quant.scheme import IntScheme, parse_scheme

__all__ = ["DENSE_TYPES", "ConvertReport", "Progress", "convert_safetensors", "export_dense",
           "quantize_source"]

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]
DENSE_TYPES = {"f32": "F32", "fp32": "F32", "f16": "F16", "fp16": "F16", "bf16": "BF16"}


@dataclass
class ConvertReport:
    """What a conversion did.

    Attributes:
        output: the artifact path.
        format: ``safetensors``, ``gguf`` or ``onnx``.
        quant: the scheme or preset.
        seconds: wall time.
        bytes: artifact size on disk.
        quantized: names of quantized tensors.
        kept: tensors left in float, with the reason.
    """

    output: str
    format: str
    quant: str
    seconds: float = 0.0
    bytes: int = 0
    quantized: list[str] = field(default_factory=list)
    kept: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready mapping."""
        d = asdict(self)
        d["n_quantized"] = len(self.quantized)
        return d


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def _provenance(source: ModelSource, quant: str) -> dict[str, str]:
    return {
        "quantport_version": quantport.__version__,
        "quantport_recipe": quant,
        "quantport_source": json.dumps(source.describe()),
    }


def _skip(source: ModelSource, name: str) -> bool:
    # tied heads are not stored (the GGUF has no output.weight) and buffers are not weights
    if name in source.architecture.buffers:
        return True
    return name == "lm_head.weight" and bool(source.config.get("tie_word_embeddings"))


def export_dense(
    source: ModelSource,
    out_dir: str | os.PathLike[str],
    *,
    dtype: str = "F32",
    force: bool = False,
    on_progress: Progress | None = None,
) -> ConvertReport:
    """Write a plain (dequantized) Hugging Face checkpoint in ``F32``, ``F16`` or ``BF16``."""
    t0 = time.perf_counter()
    out = Path(out_dir)
    check_output(out, force)
    names = [n for n in source.names() if not _skip(source, n)]
    tensors: dict[str, np.ndarray] = {}
    dtypes: dict[str, str] = {}
    for i, name in enumerate(names):
        arr = source.get(name)
        tensors[name] = arr
        if np.issubdtype(arr.dtype, np.floating):
            dtypes[name] = dtype
        if on_progress:
            on_progress("export", i + 1, len(names))
    cfg = dict(source.config)
    cfg["torch_dtype"] = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}[dtype]
    cfg.pop("quantization_config", None)
    with atomic_dir(out) as tmp:
        write_safetensors(tmp / "model.safetensors", tensors, dtypes=dtypes,
                          metadata={"format": "pt", **_provenance(source, dtype.lower())})
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2), encoding="utf-8")
        for fname, text in source.tokenizer_files.items():
            (tmp / fname).write_text(text, encoding="utf-8")
    return ConvertReport(str(out), "safetensors", dtype.lower(), time.perf_counter() - t0,
                         _size(out), [], {})


def quantize_source(
    source: ModelSource,
    scheme: IntScheme,
    *,
    keep_unquantized: bool = False,
    on_progress: Progress | None = None,
) -> ModelIR:
    """Quantize every Linear weight of ``source`` with ``scheme`` by round-to-nearest.

    Returns:
        The model container: HF-named tensors (quantized or plain) in source order, config,
        tokenizer files, and provenance (``kept`` lists the Linear weights left in float, with
        the reason).

    Raises:
        ShapeError: a tensor's width does not fit the scheme and ``keep_unquantized`` is off.
    """
    arch = source.architecture
    names = [n for n in source.names() if not _skip(source, n)]
    # refuse before doing any work: every incompatible tensor is known from the header
    kept: dict[str, str] = {}
    for name in names:
        if arch.is_linear(name):
            try:
                scheme.check(name, source.shape(name))
            except ShapeError as exc:
                if not keep_unquantized:
                    raise
                kept[name] = str(exc).split(";")[0]
    model = ModelIR(
        architecture=arch.name,
        config=dict(source.config),
        tokenizer_files=dict(source.tokenizer_files),
        provenance={**source.describe(), "recipe": str(scheme), "method": "rtn", "kept": kept},
    )
    for i, name in enumerate(names):
        w = source.get(name)
        if arch.is_linear(name) and name not in kept:
            model.tensors[name] = scheme.quantize(w, name=name)
        else:
            model.tensors[name] = w
        if on_progress:
            on_progress("quantize", i + 1, len(names))
    return model


def convert_safetensors(
    source: ModelSource,
    out_dir: str | os.PathLike[str],
    quant: str,
    *,
    keep_unquantized: bool = False,
    force: bool = False,
    on_progress: Progress | None = None,
) -> ConvertReport:
    """Convert ``source`` to a safetensors checkpoint.

    ``quant`` is a dense type (``f32``, ``f16``, ``bf16``: plain dequantized export) or an
    integer scheme (``w4-g64-sym``...: compressed-tensors ``pack-quantized``).

    Raises:
        UnsupportedQuantError: unknown scheme.
        ShapeError: a group size that does not divide a tensor's width.
        OutputExistsError: ``out_dir`` exists and ``force`` is false.
    """
    if quant.lower() in DENSE_TYPES:
        return export_dense(source, out_dir, dtype=DENSE_TYPES[quant.lower()], force=force,
                            on_progress=on_progress)
    t0 = time.perf_counter()
    scheme = parse_scheme(quant)
    out = Path(out_dir)
    check_output(out, force)
    model = quantize_source(source, scheme, keep_unquantized=keep_unquantized,
                            on_progress=on_progress)
    tensors, kept = model.tensors, model.provenance["kept"]
    ignore = sorted(n.removesuffix(".weight") for n in kept)
    if source.architecture.causal:
        ignore.append("lm_head")
    if source.architecture.name == "bert" and "pooler.dense.weight" in tensors:
        ignore.append("pooler.dense")
    cfg = dict(model.config)
    cfg["torch_dtype"] = "float32"
    write_pack_quantized(out, tensors, config=cfg, extra_files=model.tokenizer_files,
                         ignore=ignore, dense_dtype="F32")
    return ConvertReport(
        str(out), "safetensors", str(scheme), time.perf_counter() - t0, _size(out),
        [n for n, t in tensors.items() if isinstance(t, QuantizedTensor)], kept,
    )


def dequantized_state(tensors: dict[str, Tensor]) -> dict[str, np.ndarray]:
    """Dequantize every quantized tensor (the IR's meaning of the weights)."""
    return {n: dequantize(t) if isinstance(t, QuantizedTensor) else t for n, t in tensors.items()}


def check_quant_name(quant: str) -> None:
    """Raise :class:`UnsupportedQuantError` if ``quant`` is neither dense nor a scheme."""
    if quant.lower() not in DENSE_TYPES:
        parse_scheme(quant)
