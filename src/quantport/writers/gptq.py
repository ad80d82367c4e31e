"""GPTQ-format checkpoints (``quant_method: gptq``, ``checkpoint_format: gptq``): what
GPTQModel, AutoGPTQ, transformers (through optimum + gptqmodel) and vLLM's GPTQ kernels load.

Every Linear weight of the model but the LM head (and BERT's pooler) is packed as
``qweight``/``qzeros``/``scales``/``g_idx`` (:mod:`quantport.formats.gptq_pack`, the v1
layout) under the recipe's one scheme: 2, 3, 4 or 8 bits, groups or per channel
(``group_size: -1``), symmetric or asymmetric. Everything else (embeddings, norms, the head) is
written in float16, the dtype of the float16 scales and of the checkpoints GPTQModel writes.
With ``--method gptq --act-order group`` the records carry GPTQ's act-order ``g_idx`` and the
config says ``desc_act: true``.

Symmetric schemes are written as ``checkpoint_format: "gptq"`` (v1: zero points stored minus
one), asymmetric ones as ``"gptq_v2"`` (zero points as they are), because a v1 zero point of 0
does not survive every v1 reader and GPTQModel refuses asymmetric v1 files it did not write
(:mod:`quantport.formats.gptq_pack`).

``config.json`` gains ``quantization_config`` as GPTQModel's ``QuantizeConfig.to_dict()`` writes
it (``bits``, ``group_size``, ``desc_act``, ``sym``, ``lm_head``, ``method``/``quant_method``,
``format``/``checkpoint_format``, ``pack_dtype``, ``meta``; see shared/reference/algorithms.md
section 1.3), and the same mapping is written as ``quantize_config.json`` (AutoGPTQ reads that
file). Shards, index and in-place writing are the safetensors writer's
(:mod:`quantport.formats.safetensors_shards`).
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

import quantport
from quantport.writers._directory import DirectoryWriter
from quantport.errors import UnsupportedQuantError
from quantport.formats._atomic import atomic_dir
from quantport.formats.gptq_pack import (
    check_gptq_shape,
    checkpoint_format,
    gptq_entries,
    pack_gptq,
)
from quantport.formats.safetensors import DTYPES, encode_dense
from quantport.formats.safetensors_shards import (
    INDEX,
    Entry,
    ShardedOutput,
    index_json,
    layout_shards,
)
from quantport.ir import QuantizedTensor
from quantport.plan import Plan, PlanRow
from quantport.quant.scheme import IntScheme
from quantport.readers.source import ModelSource
from quantport.recipe import Recipe
from quantport.writers.safetensors import _dropped, _head

__all__ = ["GPTQWriter", "gptq_config"]

#: the dtype of every tensor that is not packed (GPTQModel saves the model in float16)
DENSE = "F16"


def _groups(scheme: IntScheme, cols: int) -> int:
    return 1 if scheme.granularity == "channel" else cols // int(scheme.group_size or cols)


def _entries(row: PlanRow) -> list[Entry]:
    if isinstance(row.target, IntScheme):
        rows, cols = row.shape
        return [Entry(*e) for e in gptq_entries(row.name.removesuffix(".weight"), (rows, cols),
                                                row.target.bits,
                                                _groups(row.target, cols))]
    return [Entry(row.name, str(row.target), row.shape)]


def desc_act(recipe: Recipe) -> bool:
    """Whether the records carry act-order ``g_idx`` (GPTQModel's ``desc_act``): GPTQ with
    ``--act-order group``; ``static`` act-order keeps ``c // group_size``."""
    return recipe.calibrated and "gptq" in recipe.method and recipe.act_order == "group"


def gptq_config(scheme: IntScheme, recipe: Recipe) -> dict[str, Any]:
    """The ``quantization_config`` of a GPTQ checkpoint, with GPTQModel 7.7
    ``QuantizeConfig.to_dict()``'s keys (``meta`` says what quantport did)."""
    gptq = recipe.calibrated and "gptq" in recipe.method
    fmt = checkpoint_format(scheme.symmetric)
    meta: dict[str, Any] = {"quantizer": [f"quantport:{quantport.__version__}"],
                            "method": recipe.method}
    if gptq:
        meta.update(damp_percent=recipe.damp, static_groups=recipe.act_order == "static",
                    true_sequential=recipe.calib_inputs != "float", act_group_aware=False,
                    mse=0.0)
    return {
        "bits": scheme.bits,
        "group_size": int(scheme.group_size) if scheme.granularity == "group" else -1,
        "desc_act": desc_act(recipe),
        "sym": scheme.symmetric,
        "lm_head": False,
        "method": "gptq",
        "quant_method": "gptq",
        "format": fmt,
        "checkpoint_format": fmt,
        "pack_dtype": "int32",
        "meta": meta,
    }


class _Sink:
    """Plan rows packed into GPTQ tensors and written at their offsets."""

    def __init__(self, out: ShardedOutput, plan: Plan) -> None:
        self.out = out
        self.plan = plan

    def chunkable(self, i: int) -> bool:
        # qweight is packed along the input axis and stored transposed: a range of weight
        # rows is a column range of every packed tensor, so quantized rows come whole
        return not isinstance(self.plan.rows[i].target, IntScheme)

    def sync(self) -> None:
        self.out.sync()

    def put(self, i: int, value: QuantizedTensor | np.ndarray,
            rows: tuple[int, int] | None = None) -> int:
        row = self.plan.rows[i]
        if isinstance(row.target, IntScheme):
            if not isinstance(value, QuantizedTensor) or tuple(value.shape) != row.shape:
                raise UnsupportedQuantError(
                    f"tensor {row.name}: planned as {row.target} {row.shape}, given "
                    f"{'a float array' if not isinstance(value, QuantizedTensor) else value.shape}"
                )
            packed = pack_gptq(row.name.removesuffix(".weight"), value,
                               checkpoint_format(row.target.symmetric))
            return sum(self.out.write(e.name, packed[e.name]) for e in _entries(row))
        if isinstance(value, QuantizedTensor):
            raise UnsupportedQuantError(
                f"tensor {row.name}: planned as {row.target} but given a quantized record"
            )
        r0 = 0 if rows is None else rows[0]
        tag = str(row.target)
        per_row = math.prod(row.shape[1:]) * DTYPES[tag][1]
        return self.out.write(row.name, encode_dense(value, tag), r0 * per_row)


class GPTQWriter(DirectoryWriter):
    """Writer of GPTQ-format checkpoints (see the module docstring)."""

    name = "gptq"
    description = "GPTQ checkpoints (qweight/qzeros/scales/g_idx, v1) for GPTQModel/vLLM, sharded"

    def plan(self, source: ModelSource, recipe: Recipe, imatrix: Any = None) -> Plan:
        """What every tensor becomes, the shards and the exact size of every file.

        Raises:
            UnsupportedQuantError: a dense ``--quant``, a per-tensor scheme, 5..7 bits,
                ``--tensor-type`` overrides (a GPTQ checkpoint holds one scheme).
            ShapeError: a width the scheme's groups or the v1 packing cannot take.
        """
        if not source.architecture.causal:
            # GPTQModel, vLLM and transformers' GPTQ integration load decoders; the catalog
            # (`quantport list`) says the same
            raise UnsupportedQuantError(
                f"{source.path}: --to gptq writes decoder checkpoints for GPTQModel / vLLM, and "
                f"{source.architecture.name} is an encoder; use --to safetensors or --to onnx")
        scheme = recipe.quant
        if not isinstance(scheme, IntScheme) or scheme.granularity == "tensor":
            raise UnsupportedQuantError(
                f"--to gptq needs a group or per-channel integer scheme (e.g. w4-g64-sym), "
                f"got {recipe.quant_name}"
            )
        if recipe.overrides:
            raise UnsupportedQuantError(
                "--to gptq writes one scheme for every Linear weight; --tensor-type overrides "
                "need --to safetensors (compressed-tensors config groups)"
            )
        if recipe.keep_unquantized:
            raise UnsupportedQuantError(
                "--keep-unquantized does not apply to --to gptq: GPTQ loaders quantize every "
                "Linear of the model; write --to safetensors to keep some in float"
            )
        rows: list[PlanRow] = []
        dropped: dict[str, str] = {}
        for name in source.names():
            why = _dropped(source, name)
            if why is not None:
                dropped[name] = why
                continue
            shape = tuple(int(d) for d in source.shape(name))
            if source.architecture.is_linear(name) and not _head(source, name):
                scheme.check(name, shape)
                check_gptq_shape(name, shape, scheme.bits)
                rows.append(PlanRow(name, name, shape, scheme, "default", 0))
            else:
                why = "head kept in float" if _head(source, name) else "not a Linear weight"
                rows.append(PlanRow(name, name, shape, DENSE, why, 0))
        rows = [PlanRow(r.name, r.source, r.shape, r.target, r.reason,
                        sum(e.nbytes for e in _entries(r))) for r in rows]
        metadata = {
            "format": "pt",
            "quantport_version": quantport.__version__,
            "quantport_recipe": json.dumps(recipe.to_dict(), sort_keys=True),
            "quantport_source": json.dumps(source.describe(), sort_keys=True),
        }
        layout = layout_shards([_entries(r) for r in rows], max_shard_size=recipe.max_shard_size,
                               metadata=metadata)
        qc = gptq_config(scheme, recipe)
        cfg = dict(source.config)
        cfg["quantization_config"] = qc
        cfg["torch_dtype"] = "float16"
        if "dtype" in cfg:  # transformers 5 writes "dtype"
            cfg["dtype"] = "float16"
        texts = {"config.json": json.dumps(cfg, indent=2),
                 "quantize_config.json": json.dumps(qc, indent=2)}
        index = index_json(layout)
        if index is not None:
            texts[INDEX] = index
        return self.finish_plan(recipe, source, rows, dropped, layout.files, texts,
                                layout=layout)

    @contextlib.contextmanager
    def open(self, out: Path, source: ModelSource, plan: Plan) -> Iterator[_Sink]:
        """The checkpoint directory under a temporary name, shards at their final size;
        renamed into place on success."""
        with atomic_dir(out) as tmp:
            for fname, text in plan.extra["texts"].items():
                (tmp / fname).write_text(text, encoding="utf-8")
            shards = ShardedOutput(tmp, plan.extra["layout"])
            try:
                yield _Sink(shards, plan)
            finally:
                shards.close()
