"""Hugging Face checkpoints in safetensors: dense (``f32``/``f16``/``bf16``) or compressed-tensors
``pack-quantized`` (integer schemes), sharded as transformers shards, streamed.

What each tensor becomes (:meth:`SafetensorsWriter.plan`): with a scheme, every Linear weight
but the LM head (and BERT's pooler) is quantized, everything else stays float (float32, or the
bfloat16 / float16 a checkpoint stores it in); with a dense
type, every tensor gets it. ``--tensor-type REGEX=SCHEME`` overrides either by Hugging Face
name (first match wins): a scheme on a Linear weight, or a dense type on any tensor. Several
schemes in one checkpoint become several compressed-tensors config groups whose targets are
the module names. Tied heads and buffers are not written (transformers rebuilds them).

Every shard's header is known from the plan, so shards are created at their final size
before any tensor is computed and each tensor (or row range of it) is written at its offset
(:mod:`quantport.formats.safetensors_shards`): the model is never held in memory.
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
from quantport.errors import ShapeError, UnsupportedQuantError
from quantport.formats._atomic import atomic_dir
from quantport.formats import compressed_tensors as ct
from quantport.formats.compressed_tensors import (
    pack_record,
    packed_entries,
    quantization_config,
    scheme_args,
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
from quantport.recipe import Recipe, Target
from quantport.quant.scheme import IntScheme
from quantport.readers.source import ModelSource

__all__ = ["SafetensorsWriter"]

_TORCH_DTYPE = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}


def _dropped(source: ModelSource, name: str) -> str | None:
    # buffers are not weights; a tied head is not stored (transformers ties it on load)
    if name in source.architecture.buffers:
        return "buffer, rebuilt by transformers"
    if name == "lm_head.weight" and bool(source.config.get("tie_word_embeddings")):
        return "tied to the token embedding"
    return None


def _head(source: ModelSource, name: str) -> bool:
    # nn.Linear weights that are not quantization targets by default: the LM head and BERT's
    # pooler (compressed-tensors must be told to skip them, see SafetensorsWriter._config)
    return name == "lm_head.weight" or (source.architecture.name == "bert"
                                        and name == "pooler.dense.weight")


def _kept(source: ModelSource, name: str) -> str:
    """The float type a tensor left unquantized is written in: a Hugging Face checkpoint's
    bfloat16 / float16 as stored (exactly its values, half float32's bytes; transformers loads
    them as it loads the source's), else F32."""
    stored = source.stored(name)
    return stored[1] if stored is not None and stored[1] in ("BF16", "F16") else "F32"


def _default(source: ModelSource, recipe: Recipe, name: str) -> tuple[Target, str]:
    if isinstance(recipe.quant, str):
        return recipe.quant, "default"
    if _head(source, name):
        return _kept(source, name), "head kept in float"
    if source.architecture.is_linear(name):
        return recipe.quant, "default"
    return _kept(source, name), "not a Linear weight"


def _scale_shape(scheme: IntScheme, shape: tuple[int, ...]) -> tuple[int, int]:
    rows, cols = shape
    if scheme.granularity == "tensor":
        return (1, 1)
    if scheme.granularity == "channel":
        return (rows, 1)
    return (rows, cols // int(scheme.group_size or cols))


def _g_idx(recipe: Recipe, target: object) -> bool:
    """Whether the records of ``target`` carry act-order ``g_idx`` (``weight_g_idx``): GPTQ
    with ``--act-order group`` onto integer groups, when compressed-tensors loads them (the
    condition of ``pipeline.calibrated.stores_g_idx`` for safetensors; the plan row's target
    alone does not say it, the recipe does)."""
    return (recipe.calibrated and "gptq" in recipe.method and recipe.act_order == "group"
            and ct.GROUP_ACTORDER_LOADS and isinstance(target, IntScheme)
            and target.granularity == "group")


def _actorder(recipe: Recipe, scheme: IntScheme) -> str | None:
    # compressed-tensors' record of GPTQ's column order: "group" with g_idx, "weight" (alias
    # "static") when the columns were processed in act-order onto static groups, which is also
    # what --act-order group becomes where g_idx cannot be stored (pipeline.calibrated)
    if not (recipe.calibrated and "gptq" in recipe.method) or recipe.act_order == "none":
        return None
    return "group" if _g_idx(recipe, scheme) else "weight"


def _entries(row: PlanRow, recipe: Recipe) -> list[Entry]:
    if isinstance(row.target, IntScheme):
        s = row.target
        module = row.name.removesuffix(".weight")
        return [Entry(*e) for e in packed_entries(module, row.shape, s.bits, s.symmetric,  # type: ignore[arg-type]
                                                  _scale_shape(s, row.shape),
                                                  g_idx=_g_idx(recipe, s))]
    return [Entry(row.name, str(row.target), row.shape)]


class _Sink:
    """Plan rows packed into safetensors entries and written at their offsets."""

    def __init__(self, out: ShardedOutput, plan: Plan) -> None:
        self.out = out
        self.plan = plan

    def chunkable(self, i: int) -> bool:
        t = self.plan.rows[i].target
        # rows are contiguous in every entry, except a per-tensor scale and an asymmetric
        # zero point (packed along the output axis)
        return not isinstance(t, IntScheme) or (t.symmetric and t.granularity != "tensor")

    def sync(self) -> None:
        self.out.sync()

    def put(self, i: int, value: QuantizedTensor | np.ndarray,
            rows: tuple[int, int] | None = None) -> int:
        row = self.plan.rows[i]
        r0 = 0 if rows is None else rows[0]
        written = 0
        if isinstance(row.target, IntScheme):
            if not isinstance(value, QuantizedTensor):
                raise UnsupportedQuantError(
                    f"tensor {row.name}: planned as {row.target} but given a float array"
                )
            if (value.g_idx is not None) != _g_idx(self.plan.recipe, row.target) and (
                    np.shape(value.scale)[-1] > 1):
                raise UnsupportedQuantError(
                    f"tensor {row.name}: the plan {'expects' if value.g_idx is None else 'has no'}"
                    " act-order g_idx (weight_g_idx) for it; plan and record disagree"
                )
            packed = pack_record(row.name.removesuffix(".weight"), value)
            for e in _entries(row, self.plan.recipe):
                if e.name.endswith((".weight_shape", ".weight_g_idx")):
                    if r0 == 0:  # per weight, not per row: once, with the first row range
                        data = (np.asarray(row.shape, "<i8") if e.name.endswith("_shape")
                                else packed[e.name])
                        written += self.out.write(e.name, data)
                    continue
                data = packed[e.name]
                per_row = e.nbytes // e.shape[0]
                written += self.out.write(e.name, data, r0 * per_row)
            return written
        if isinstance(value, QuantizedTensor):
            raise UnsupportedQuantError(
                f"tensor {row.name}: planned as {row.target} but given a quantized record"
            )
        tag = str(row.target)
        data = encode_dense(value, tag)
        per_row = math.prod(row.shape[1:]) * DTYPES[tag][1]
        return self.out.write(row.name, data, r0 * per_row)


class SafetensorsWriter(DirectoryWriter):
    """Writer of Hugging Face safetensors checkpoints (see the module docstring)."""

    name = "safetensors"
    description = "compressed-tensors pack-quantized (w2..w8) or dense f32/f16/bf16, sharded"

    def plan(self, source: ModelSource, recipe: Recipe, imatrix: Any = None) -> Plan:
        """What every tensor becomes, the shards and the exact size of every file.

        Raises:
            ShapeError: a group size that does not divide a tensor's width (unless
                ``keep_unquantized``).
            UnsupportedQuantError: a scheme override on a tensor compressed-tensors cannot
                quantize, or an override that matches no tensor.
        """
        rows: list[PlanRow] = []
        dropped: dict[str, str] = {}
        used: set[int] = set()
        for name in source.names():
            why = _dropped(source, name)
            if why is not None:
                dropped[name] = why
                continue
            shape = tuple(int(d) for d in source.shape(name))
            target, reason = _default(source, recipe, name)
            for k, o in enumerate(recipe.overrides):
                if o.regex.search(name):
                    target, reason = o.target, f"override '{o}'"
                    used.add(k)
                    break
            if isinstance(target, IntScheme):
                if not (source.architecture.is_linear(name) or _head(source, name)):
                    raise UnsupportedQuantError(
                        f"tensor {name}: compressed-tensors quantizes Linear weights only; "
                        "keep it float (e.g. --tensor-type 'NAME=f16') or export to GGUF"
                    )
                try:
                    target.check(name, shape)
                except ShapeError as exc:
                    if not recipe.keep_unquantized:
                        raise
                    target, reason = _kept(source, name), str(exc).split(";")[0]
            rows.append(PlanRow(name, name, shape, target, reason, 0))
        for k, o in enumerate(recipe.overrides):
            if k not in used:
                raise UnsupportedQuantError(
                    f"tensor-type override '{o}' matches no tensor; fix the regex (it is "
                    "re.search-ed against Hugging Face names such as "
                    "'model.layers.0.self_attn.q_proj.weight')"
                )
        rows = [PlanRow(r.name, r.source, r.shape, r.target, r.reason,
                        sum(e.nbytes for e in _entries(r, recipe))) for r in rows]
        metadata = {
            "format": "pt",
            "quantport_version": quantport.__version__,
            "quantport_recipe": json.dumps(recipe.to_dict(), sort_keys=True),
            "quantport_source": json.dumps(source.describe(), sort_keys=True),
        }
        layout = layout_shards([_entries(r, recipe) for r in rows], max_shard_size=recipe.max_shard_size,
                               metadata=metadata)
        texts = {"config.json": json.dumps(self._config(source, recipe, rows), indent=2)}
        index = index_json(layout)
        if index is not None:
            texts[INDEX] = index
        return self.finish_plan(recipe, source, rows, dropped, layout.files, texts,
                                layout=layout)

    def _config(self, source: ModelSource, recipe: Recipe, rows: list[PlanRow]) -> dict[str, Any]:
        cfg = dict(source.config)
        cfg.pop("quantization_config", None)
        quantized = [r for r in rows if isinstance(r.target, IntScheme)]
        if not quantized:
            dense = recipe.quant if isinstance(recipe.quant, str) else "F32"
            cfg["torch_dtype"] = _TORCH_DTYPE[dense]
            return cfg
        cfg["torch_dtype"] = "float32"
        groups: dict[str, list[str]] = {}
        schemes: dict[str, IntScheme] = {}
        for r in quantized:
            s = r.target
            assert isinstance(s, IntScheme)
            groups.setdefault(str(s), []).append(r.name.removesuffix(".weight"))
            schemes[str(s)] = s
        # compressed-tensors applies a "Linear" target to every nn.Linear not in `ignore`
        linear = [r.name.removesuffix(".weight") for r in rows
                  if source.architecture.is_linear(r.name) or _head(source, r.name)]
        ignore = sorted(set(linear) - {m for ms in groups.values() for m in ms})
        if source.architecture.causal and "lm_head" not in ignore and not any(
                "lm_head" in ms for ms in groups.values()):
            ignore.append("lm_head")  # tied: not stored, but compressed-tensors must skip it
        args = [(scheme_args(s.bits, s.symmetric, s.granularity, s.group_size,
                             _actorder(recipe, s)),
                 # one scheme: compressed-tensors applies it to every Linear not ignored;
                 # several: each group names its modules (matched exactly)
                 ["Linear"] if len(groups) == 1 else groups[k]) for k, s in schemes.items()]
        cfg["quantization_config"] = quantization_config(args, ignore)
        if recipe.act_quant == "w8a8":
            # compressed-tensors INT8_W8A8: int8 activations, symmetric, per token, dynamic;
            # transformers quantizes every targeted Linear's input on the fly
            for group in cfg["quantization_config"]["config_groups"].values():
                group["input_activations"] = {**scheme_args(8, True, "token", None),
                                              "dynamic": True, "observer": None}
        return cfg

    @contextlib.contextmanager
    def open(self, out: Path, source: ModelSource, plan: Plan) -> Iterator[_Sink]:
        """The checkpoint directory under a temporary name: config, tokenizer and index files
        written, shards at their final size; renamed into place on success."""
        with atomic_dir(out) as tmp:
            for fname, text in plan.extra["texts"].items():
                (tmp / fname).write_text(text, encoding="utf-8")
            shards = ShardedOutput(tmp, plan.extra["layout"])
            try:
                yield _Sink(shards, plan)
            finally:
                shards.close()
