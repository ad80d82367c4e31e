"""Hugging Face checkpoint (or GGUF) -> quantized GGUF in one pass, as llama.cpp would write it.

Design decision: this one converter does the work of ``convert_hf_to_gguf.py`` *and*
``llama-quantize``. The metadata follows the converter: each architecture module of
:mod:`quantport.architectures` gives its hyper-parameter keys (``set_gguf_parameters`` of the
converter class it mirrors), tensor names and edits;
the per-tensor types follow ``llama_tensor_get_type``
(:func:`quantport.quant.presets.plan_tensor_types`) and the tensor bytes ``ggml_quantize_chunk``
(:func:`quantport.quant.ggml.quantize_ggml` + :func:`quantport.formats.gguf_blocks.pack`). So
for every tensor the output equals what ``llama-quantize`` produces from an F32 GGUF of the same
model (checked byte for byte in ``tests/writers/test_gguf.py``).

The header is fully known from the plan (:meth:`GGUFWriter.plan`), so ``--dry-run`` gives the
exact file size without quantizing anything, and the pipeline may put tensors (or row ranges of
them) into the file in any order (:func:`quantport.formats.gguf_writer.open_gguf`). Records
computed elsewhere (GPTQ, or read from another GGUF) are written as they are, as long as they
sit on the planned ggml type.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

import quantport
from quantport.architectures import ARCHITECTURES
from quantport.errors import (
    ConfigError,
    FormatError,
    OutputExistsError,
    UnsupportedArchitectureError,
    UnsupportedQuantError,
)
from quantport.formats.gguf_blocks import pack
from quantport.formats.gguf_writer import (
    GGUFKV,
    GGUFOutput,
    GGUFTensor,
    GGUFValueType,
    gguf_layout,
    open_gguf,
)
from quantport.formats.imatrix import ImatrixData
from quantport.formats.safetensors import encode_dense
from quantport.ir import QuantizedTensor
from quantport.plan import Plan, PlanRow
from quantport.recipe import Recipe
from quantport.quant.ggml import GGML_GRIDS
from quantport.quant.presets import PRESETS, Preset, plan_tensor_types
from quantport.readers.gguf_vocab import vocab_from_hf, vocab_metadata
from quantport.readers.source import ModelSource

__all__ = ["GGUF_ARCHITECTURES", "SUPPORTED_PRESETS", "GGUFWriter", "gguf_metadata"]

log = logging.getLogger(__name__)

#: architectures this converter writes (quantport names; each module's ``hparams``)
GGUF_ARCHITECTURES = tuple(a.name for a in ARCHITECTURES.values() if a.hparams is not None)
#: llama-quantize presets this converter accepts (for CLI help and error messages)
SUPPORTED_PRESETS = tuple(PRESETS)
_DENSE = ("F32", "F16", "BF16")
_GGML_QUANTIZATION_VERSION = 2  # GGML_QNT_VERSION (ggml.h), written by llama_model_quantize

S, U32, F32, B, A = (
    GGUFValueType.STRING,
    GGUFValueType.UINT32,
    GGUFValueType.FLOAT32,
    GGUFValueType.BOOL,
    GGUFValueType.ARRAY,
)


# --------------------------------------------------------------------------------------------
# tensors
# --------------------------------------------------------------------------------------------


def _sort_key(name: str) -> tuple[int, bytes]:
    # llama_model_loader::weight_name_comparer (src/llama-model-loader.h): llama_model_quantize
    # iterates its std::map in this order and writes the tensors so; we write the same order
    m = re.match(r"blk\.(\d+)\.", name)
    return (int(m.group(1)) if m else -1, name.encode("utf-8"))


def _hf_to_gguf_name(source: ModelSource, hf: str) -> str | None:
    """GGUF name of an HF tensor, ``None`` if conversion drops it."""
    arch = source.architecture
    name = hf
    if arch.normalize is not None:
        name = arch.normalize(name)
        if name is None:
            return None
    if name in arch.gguf_skip:
        return None
    # tied output: llama.cpp reuses token_embd when output.weight is absent
    if arch.causal and name == "lm_head.weight" and source.config.get("tie_word_embeddings"):
        return None
    g = arch.gguf_name(name)
    if g is None:
        raise UnsupportedArchitectureError(
            f"{source.path}: tensor {hf!r} has no GGUF counterpart for {arch.name}; this variant "
            f"of the architecture is not supported"
        )
    return g


def _tensor_list(
    source: ModelSource,
) -> tuple[list[tuple[str, str, tuple[int, ...]]], dict[str, str]]:
    """``(gguf_name, hf_name, numpy_shape)`` in llama.cpp's order, and the dropped tensors."""
    out = []
    dropped = {}
    for hf in source.names():
        g = _hf_to_gguf_name(source, hf)
        if g is None:
            log.debug("dropping %s", hf)
            dropped[hf] = ("tied to the token embedding" if hf == "lm_head.weight"
                           else "llama.cpp's converter does not keep it")
            continue
        out.append((g, hf, tuple(int(d) for d in source.shape(hf))))
    if not any(g == "token_embd.weight" for g, _, _ in out):
        raise FormatError(
            f"{source.path}: no token embedding tensor found; is the checkpoint complete?"
        )
    return sorted(out, key=lambda t: _sort_key(t[0])), dropped


# --------------------------------------------------------------------------------------------
# metadata
# --------------------------------------------------------------------------------------------


def _cfg(config: dict[str, Any], key: str, where: str) -> Any:
    v = config.get(key)
    if v is None:
        raise ConfigError(f"{where}: config.json has no {key!r}; it is needed for the GGUF header")
    return v


def _pooling_type(source: ModelSource) -> int | None:
    """The sentence-transformers pooling (``TextModel._try_set_pooling_type``, base.py)."""
    from quantport.readers.hf import read_json

    d = source.path
    if not d.is_dir() or not (d / "modules.json").is_file():
        return None
    try:
        modules = json.loads((d / "modules.json").read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ConfigError(f"{d / 'modules.json'}: invalid JSON ({exc}); fix or regenerate "
                          "the file") from None
    if not isinstance(modules, list) or not all(isinstance(m, dict) for m in modules):
        raise ConfigError(f"{d / 'modules.json'}: expected a list of module objects")
    for mod in modules:
        if str(mod.get("type", "")).endswith("Pooling"):
            sub = mod.get("path")
            if not isinstance(sub, str) or ".." in Path(sub).parts or Path(sub).is_absolute():
                raise ConfigError(f"{d / 'modules.json'}: the Pooling module's 'path' must be "
                                  f"a folder of the checkpoint, got {sub!r}")
            cfg_path = d / sub / "config.json"
            pooling = read_json(cfg_path, "pooling config.json")
            # gguf PoolingType: MEAN=1, CLS=2, LAST=3
            if pooling.get("pooling_mode_mean_tokens") is True:
                return 1
            if pooling.get("pooling_mode_cls_token") is True:
                return 2
            if pooling.get("pooling_mode_lasttoken") is True:
                return 3
            mode = pooling.get("pooling_mode")
            mode = {"mean": 1, "cls": 2, "lasttoken": 3}.get(mode if isinstance(mode, str) else "")
            if mode is None:
                raise UnsupportedArchitectureError(
                    f"{cfg_path}: pooling {pooling} is not supported by llama.cpp; "
                    "supported: mean, cls, lasttoken"
                )
            return mode
    return None


def _model_name(source: ModelSource) -> str:
    desc = source.describe()
    if desc.get("source_name"):
        return str(desc["source_name"])
    name = source.config.get("_name_or_path")
    if isinstance(name, str) and name:
        return name.rstrip("/").split("/")[-1]
    p = source.path
    return p.stem if p.is_file() else p.name


def gguf_metadata(
    source: ModelSource,
    recipe: Recipe,
    *,
    imatrix: ImatrixData | None = None,
) -> list[GGUFKV]:
    """The GGUF metadata quantport writes for ``source`` converted by ``recipe``.

    Args:
        source: the model.
        recipe: a GGUF recipe (its preset gives ``general.file_type``; the whole recipe is
            recorded as ``quantport.recipe``).
        imatrix: the importance matrix used, if any (recorded as provenance).

    Returns:
        Ordered key/value pairs with explicit types.

    Raises:
        ConfigError: a hyper-parameter is missing from config.json.
        UnsupportedArchitectureError: an architecture variant llama.cpp would run differently.
        UnsupportedQuantError: unknown preset.
    """
    p = recipe.quant
    assert isinstance(p, Preset), "make_recipe gives GGUF recipes a preset"
    arch = source.architecture
    if arch.hparams is None:
        raise UnsupportedArchitectureError(
            f"{source.path}: GGUF export of architecture {arch.name!r} is not supported; "
            f"supported: {', '.join(GGUF_ARCHITECTURES)}")
    cfg = dict(source.config)
    where = str(source.path)
    recorded = {
        **recipe.to_dict(),
        "imatrix": None
        if imatrix is None
        else {
            "datasets": list(imatrix.datasets),
            "chunk_count": int(imatrix.chunk_count),
            "chunk_size": int(imatrix.chunk_size),
        },
    }
    kv = [
        GGUFKV("general.architecture", arch.gguf_arch, S),
        GGUFKV("general.type", "model", S),
        GGUFKV("general.name", _model_name(source), S),
        GGUFKV("general.quantized_by", f"quantport {quantport.__version__}", S),
        GGUFKV("quantport.version", quantport.__version__, S),
        GGUFKV("quantport.recipe", json.dumps(recorded, sort_keys=True), S),
        GGUFKV("quantport.source", json.dumps(source.describe(), sort_keys=True), S),
    ]
    kv += arch.hparams(cfg, where)
    pooling = _pooling_type(source) if arch.pooling else None
    if pooling is not None:
        kv.append(GGUFKV(f"{arch.gguf_arch}.pooling_type", pooling, U32))
    kv += [
        # llama_model_quantize sets both (src/llama-quant.cpp: GGML_QNT_VERSION and the ftype)
        GGUFKV("general.file_type", p.ftype, U32),
        GGUFKV("general.quantization_version", _GGML_QUANTIZATION_VERSION, U32),
    ]
    if imatrix is not None:
        # tools/quantize/quantize.cpp writes these (INT overrides become UINT32, llama-quant.cpp)
        if imatrix.datasets:
            kv.append(GGUFKV("quantize.imatrix.dataset", str(imatrix.datasets[0]), S))
        kv.append(GGUFKV("quantize.imatrix.entries_count", len(imatrix.entries), U32))
        kv.append(GGUFKV("quantize.imatrix.chunks_count", int(imatrix.chunk_count), U32))
    copy_kv = getattr(source, "gguf_tokenizer_kv", None)
    if copy_kv is not None:
        # GGUF in, GGUF out: keep the source vocabulary exactly, with its value types
        kv += [GGUFKV(k, v, GGUFValueType(t), None if e is None else GGUFValueType(e), raw)
               for k, v, t, e, raw in copy_kv()]
        return kv
    model_dir = source.path if source.path.is_dir() else None
    vocab = vocab_from_hf(source.tokenizer_files, cfg, arch=arch.gguf_arch, model_dir=model_dir)
    kv += vocab_metadata(vocab)
    return kv


# --------------------------------------------------------------------------------------------
# conversion
# --------------------------------------------------------------------------------------------


def _importance(imatrix: ImatrixData | None, plan: list[PlanRow]) -> dict[str, np.ndarray]:
    """Per quantized tensor, the imatrix entry llama_model_quantize would pass (checked upfront)."""
    if imatrix is None:
        return {}
    out: dict[str, np.ndarray] = {}
    for p in plan:
        if p.type_name in _DENSE or p.name not in imatrix.entries:
            # llama-quant.cpp: tensors without an entry are quantized without an imatrix
            continue
        v = np.asarray(imatrix.entries[p.name], dtype=np.float32).reshape(-1)
        if not np.all(np.isfinite(v)):
            # llama-quant.cpp: "imatrix contains non-finite value"
            raise FormatError(
                f"imatrix entry {p.name!r} has non-finite values; recompute the imatrix"
            )
        if v.size != p.shape[-1]:
            # llama-quant.cpp aborts on a size mismatch except for token_embd ("tok_embd should
            # be ignored in this case, since it always causes this warning")
            if p.name == "token_embd.weight":
                log.info(
                    "ignoring imatrix entry for token_embd.weight (%d values, width %d)",
                    v.size,
                    p.shape[-1],
                )
                continue
            raise FormatError(
                f"imatrix entry {p.name!r} has {v.size} values but the tensor has {p.shape[-1]} "
                "columns; use the imatrix computed for this model"
            )
        out[p.name] = v
    unknown = sorted(set(imatrix.entries) - {p.name for p in plan})
    if unknown:
        # llama-quant.cpp simply never looks these up; say so, since a wholly foreign imatrix
        # would otherwise be ignored without a trace
        log.warning(
            "%d imatrix entries name no tensor of this model (e.g. %s); they are ignored",
            len(unknown),
            unknown[0],
        )
    return out


class _Sink:
    """Plan rows packed into ggml blocks and written at their offsets (see execute.Sink)."""

    def __init__(self, out: GGUFOutput, plan: Plan) -> None:
        self.out = out
        self.plan = plan

    def chunkable(self, i: int) -> bool:
        return True  # ggml rows are independent blocks: a row range is a byte range

    def sync(self) -> None:
        self.out.sync()

    def put(self, i: int, value: QuantizedTensor | np.ndarray,
            rows: tuple[int, int] | None = None) -> int:
        row = self.plan.rows[i]
        if isinstance(value, QuantizedTensor):
            if value.encoding != row.type_name:
                raise UnsupportedQuantError(
                    f"tensor {row.name}: a {value.encoding} record cannot be written as "
                    f"{row.type_name}; quantize it onto the {row.type_name} grid"
                )
            data = pack(value)
        elif row.type_name in _DENSE:
            # numpy rounds to nearest even, as ggml_fp32_to_fp16 (F16C / the bit-trick
            # fallback); bf16_bits as ggml_fp32_to_bf16 (nearest even, NaN kept quiet)
            data = encode_dense(value, row.type_name)
        else:
            raise UnsupportedQuantError(
                f"tensor {row.name}: planned as {row.type_name} but given a float array; "
                "quantize it first"
            )
        offset = 0
        if rows is not None:
            offset = rows[0] * (row.nbytes // row.shape[0])
        return self.out.write(i, data, offset)


class GGUFWriter:
    """GGUF for llama.cpp: llama-quantize's per-tensor types, ggml blocks, llama.cpp's
    metadata. Tensor names in plans and ``--tensor-type`` overrides are GGUF names."""

    name = "gguf"
    description = "llama.cpp presets and weight types, byte-identical to llama-quantize"

    def plan(self, source: ModelSource, recipe: Recipe,
             imatrix: ImatrixData | None = None) -> Plan:
        """The per-tensor types llama-quantize would choose, and the exact file size.

        Raises:
            UnsupportedArchitectureError: an architecture without GGUF export, or an
                unsupported variant.
            UnsupportedQuantError: an unused override, or a type quantport cannot produce.
            ConfigError: config.json lacks a needed hyper-parameter.
        """
        arch = source.architecture
        if arch.name not in GGUF_ARCHITECTURES:
            raise UnsupportedArchitectureError(
                f"{source.path}: GGUF export of architecture {arch.name!r} is not supported; "
                f"supported: {', '.join(GGUF_ARCHITECTURES)}"
            )
        preset = recipe.quant
        assert isinstance(preset, Preset), "make_recipe gives GGUF recipes a preset"
        cfg = source.config
        where = str(source.path)
        n_head = int(_cfg(cfg, "num_attention_heads", where))
        tensors, dropped = _tensor_list(source)
        types = plan_tensor_types(
            [(g, shape) for g, _, shape in tensors], arch=arch.gguf_arch,
            n_layer=int(_cfg(cfg, "num_hidden_layers", where)), n_head=n_head,
            n_head_kv=int(cfg.get("num_key_value_heads") or n_head), preset=preset.name,
            pure=recipe.pure, overrides=[(o.pattern, str(o.target)) for o in recipe.overrides],
            output_type=recipe.output_type, token_embedding_type=recipe.token_embedding_type,
            has_imatrix=imatrix is not None,
        )  # fmt: skip
        producible = set(_DENSE) | set(GGML_GRIDS)
        rows = []
        for (g, hf, shape), t in zip(tensors, types, strict=True):
            if t.type not in producible:
                raise UnsupportedQuantError(
                    f"tensor {t.name}: type {t.type} cannot be produced by quantport; "
                    f"supported: {', '.join(sorted(producible))}"
                )
            rows.append(PlanRow(g, hf, shape, t.type, t.reason, t.nbytes, arch.edit(hf)))
        metadata = gguf_metadata(source, recipe, imatrix=imatrix)
        specs = [GGUFTensor(r.name, r.shape, r.type_name) for r in rows]
        # tensors the converter generates from the config (generate_extra_tensors: llama3's
        # rope_freqs): F32, after the plan rows, written when the file is opened
        generated = [] if arch.extra_tensors is None else arch.extra_tensors(cfg, where)
        specs += [GGUFTensor(n, tuple(a.shape), "F32") for n, a in generated]
        plan = Plan(recipe, rows, dropped, {})
        plan.extra["generated"] = generated
        plan.extra["metadata"] = metadata
        plan.extra["layout"] = layout = gguf_layout(metadata, specs)
        # checked now, so that a dry run refuses an importance matrix of another model too
        plan.extra["importance"] = _importance(imatrix, rows)
        plan.files[""] = layout.size
        return plan

    def importance(self, plan: Plan, imatrix: ImatrixData | None) -> dict[int, np.ndarray]:
        """Per plan row, the imatrix entry llama_model_quantize would pass (checked upfront)."""
        by_name = plan.extra["importance"]
        return {i: by_name[r.name] for i, r in enumerate(plan.rows) if r.name in by_name}

    def check_output(self, out: Path) -> None:
        """Refuse a directory where a file belongs."""
        if out.is_dir():
            raise OutputExistsError(f"{out} is a directory; give the path of a .gguf file")

    @contextlib.contextmanager
    def open(self, out: Path, source: ModelSource, plan: Plan) -> Iterator[_Sink]:
        """The GGUF under a temporary name, header written; renamed into place on success."""
        generated = plan.extra.get("generated", [])
        specs = [GGUFTensor(r.name, r.shape, r.type_name) for r in plan.rows]
        specs += [GGUFTensor(n, tuple(a.shape), "F32") for n, a in generated]
        log.info("writing %s (%s, %d tensors)", out, plan.recipe.quant_name, len(specs))
        with open_gguf(out, plan.extra["metadata"], specs, plan.extra["layout"]) as f:
            for j, (_, a) in enumerate(generated):
                f.write(len(plan.rows) + j, encode_dense(a, "F32"))
            yield _Sink(f, plan)
