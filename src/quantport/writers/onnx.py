"""ONNX directories that ONNX Runtime and onnxruntime-genai load as they are: ``model.onnx``
(the graph, built from the architecture's hyper-parameters by
:mod:`quantport.formats.onnx_graph`), ``model.onnx.data`` (every weight, at offsets the plan
fixes), ``config.json``, the tokenizer files and, for decoders, ``genai_config.json``.

What each tensor becomes (:meth:`ONNXWriter.plan`): with a scheme, every Linear weight gets it,
and so does a token embedding tied to the LM head (it *is* the head's weight: one packed table
read by ``GatherBlockQuantized`` and ``MatMulNBits``); an untied embedding, norms and biases stay
float32. With a dense type every tensor gets it. ``--tensor-type REGEX=SCHEME`` overrides by
Hugging Face name, first match wins. Quantized Linear weights are written as
``DequantizeLinear -> MatMul`` (``--onnx-matmul qdq``, the default: ORT fuses it into
``MatMulNBits``) or as ``MatMulNBits`` directly (``nbits``, with ``--accuracy-level``);
``--quant w8a8`` writes int8 per-channel weights that run as int8 GEMMs on dynamically
quantized activations. ``--quant Q4_0|Q8_0|Q4_1`` rounds as llama.cpp does and exports the
records exactly; ``--quant keep`` copies a GGUF source's own Q4_0/Q8_0/Q4_1 records.
See :mod:`quantport.formats.onnx_pack` for the layouts.

The graph does not depend on the weights' values, so it is built and serialized at plan time:
its size, and so every file's size, is exact before any tensor is computed, and worker
processes write each weight straight to its offset in ``model.onnx.data``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

import quantport
from quantport.writers._directory import DirectoryWriter
from quantport.architectures import SMOOTH_SUFFIX, bert
from quantport.errors import ShapeError, UnsupportedArchitectureError, UnsupportedQuantError
from quantport.formats._atomic import atomic_dir
from quantport.formats._io import pwrite_all
from quantport.formats.onnx_graph import BUILDERS, GraphOptions, build_model
from quantport.formats.onnx_pack import (
    GGML_COPY,
    Fused,
    Init,
    Place,
    Storage,
    element_bytes,
    fuse,
    pack,
    row_chunks,
    storage_for,
)
from quantport.ir import QuantizedTensor
from quantport.plan import Plan, PlanRow
from quantport.quant.scheme import IntScheme, parse_scheme
from quantport.readers.source import ModelSource
from quantport.readers.tokenizer import sentencepiece_tokenizer_json
from quantport.recipe import Recipe, Target

__all__ = ["DATA_FILE", "GRAPH_FILE", "ONNXWriter", "genai_config"]

GRAPH_FILE = "model.onnx"
DATA_FILE = "model.onnx.data"
_ALIGN = 64  # initializer offsets in the data file (ORT maps external data; aligned reads)
_EMBED = ("model.embed_tokens.weight", "embeddings.word_embeddings.weight",
          "bert.embeddings.word_embeddings.weight")


def _tied(source: ModelSource) -> bool:
    return source.architecture.causal and bool(source.config.get("tie_word_embeddings", True)) \
        and "lm_head.weight" not in source.names()


def _dropped(source: ModelSource, name: str) -> str | None:
    if name in source.architecture.buffers:
        return "buffer, computed in the graph"
    if name == "lm_head.weight" and bool(source.config.get("tie_word_embeddings")):
        return "tied to the token embedding"
    if name.startswith(("pooler.", "bert.pooler.")):
        return "pooler, not used by last_hidden_state or sentence_embedding"
    if not source.architecture.causal and name.startswith(("cls.", "classifier.")):
        return "task head, not part of the encoder graph"
    return None


def _role(source: ModelSource, name: str) -> str:
    if name in _EMBED:
        return "embed"
    if name == "lm_head.weight" or source.architecture.is_linear(name):
        return "linear"
    return "other"


def _kept(source: ModelSource, name: str) -> tuple[Target, str]:
    """``--quant keep``: the GGUF's own type of ``name``, when ONNX holds it exactly."""
    types = getattr(source, "gguf_types", None)
    if types is None:
        raise UnsupportedQuantError(
            f"--quant keep copies a GGUF source's own codes, and {source.path} is not a GGUF; "
            "choose a scheme (w4-g32-sym, w8-channel-sym, f16...)"
        )
    ty = types.get(source.architecture.gguf_name(name) or "", "F32")
    if ty in ("F32", "F16", "BF16"):
        return ty, "kept from the GGUF"
    if ty in GGML_COPY:
        return ty, f"{ty} codes copied from the GGUF"
    raise UnsupportedQuantError(
        f"tensor {name} is {ty} in the GGUF, which ONNX cannot hold exactly (it copies "
        f"{', '.join(GGML_COPY)}, F32, F16, BF16); re-quantize it, e.g. --tensor-type "
        f"'{re.escape(name)}=w4-g32-sym', or the whole model with --quant w4-g32-sym"
    )


def _default(source: ModelSource, recipe: Recipe, name: str, role: str,
             tied: bool) -> tuple[Target, str]:
    if recipe.quant == "KEEP":
        return _kept(source, name)
    if isinstance(recipe.quant, str) and recipe.quant not in GGML_COPY:
        return recipe.quant, "default"
    if role == "linear":
        return recipe.quant, "default"
    if role == "embed" and tied and recipe.act_quant == "w8a8":
        # the table is gathered and read by the head's MatMulNBits, not an int8 GEMM: the
        # full 8 bits (W8A8's 7-bit codes are for MatMulInteger, see recipe.py)
        return parse_scheme("w8-channel-sym"), "tied to the LM head (no int8 GEMM reads it)"
    if role == "embed" and tied and recipe.quant == "Q4_1":
        return "Q8_0", "tied to the LM head; GatherBlockQuantized has no float minimums"
    if role == "embed" and tied:
        return recipe.quant, "tied to the LM head"
    return "F32", "not a Linear weight"


def _genai_type(cfg: dict[str, Any]) -> str:
    """``model.type`` as the genai builder writes it: the Hugging Face class name up to
    ``For``, lower case (``make_genai_config``), ``gemma3_text`` for ``Gemma3ForCausalLM``
    (``builder.py`` ``create_model``)."""
    classes = cfg.get("architectures") or []
    cls = classes[0] if classes and isinstance(classes[0], str) else "LlamaForCausalLM"
    if cls == "Gemma3ForCausalLM":
        return "gemma3_text"
    return cls[:cls.find("For")].lower() if "For" in cls else cls.lower()


def genai_config(cfg: dict[str, Any], tokenizer_files: dict[str, str]) -> dict[str, Any]:
    """onnxruntime-genai's ``genai_config.json`` for a decoder graph, with the builder's fields
    (``builders/base.py`` ``make_genai_config``) and greedy search by default. Sliding windows
    need no entry: the graph's GroupQueryAttention masks them over the full-length cache (the
    builder's ``sliding_window`` section is for its windowed KV cache, not written here)."""
    hidden, heads = int(cfg["hidden_size"]), int(cfg["num_attention_heads"])
    ctx = int(cfg.get("max_position_embeddings") or 4096)
    gen: dict[str, Any] = {}
    if "generation_config.json" in tokenizer_files:
        with contextlib.suppress(ValueError):
            gen = json.loads(tokenizer_files["generation_config.json"])
    eos = gen.get("eos_token_id", cfg.get("eos_token_id"))
    pad = cfg.get("pad_token_id")
    if pad is None:
        pad = eos[0] if isinstance(eos, list) else eos
    return {
        "model": {
            "bos_token_id": gen.get("bos_token_id", cfg.get("bos_token_id")),
            "context_length": ctx,
            "decoder": {
                "session_options": {"log_id": "onnxruntime-genai", "provider_options": []},
                "filename": GRAPH_FILE,
                "head_size": int(cfg.get("head_dim") or hidden // heads),
                "hidden_size": hidden,
                "inputs": {"input_ids": "input_ids", "attention_mask": "attention_mask",
                           "past_key_names": "past_key_values.%d.key",
                           "past_value_names": "past_key_values.%d.value"},
                "outputs": {"logits": "logits", "present_key_names": "present.%d.key",
                            "present_value_names": "present.%d.value"},
                "num_attention_heads": heads,
                "num_hidden_layers": int(cfg["num_hidden_layers"]),
                "num_key_value_heads": int(cfg.get("num_key_value_heads") or heads),
            },
            "eos_token_id": eos,
            "pad_token_id": pad,
            "type": _genai_type(cfg),
            "vocab_size": int(cfg["vocab_size"]),
        },
        "search": {"diversity_penalty": 0.0, "do_sample": False, "early_stopping": True,
                   "length_penalty": 1.0, "max_length": ctx, "min_length": 0,
                   "no_repeat_ngram_size": 0, "num_beams": 1, "num_return_sequences": 1,
                   "past_present_share_buffer": True, "repetition_penalty": 1.0,
                   "temperature": 1.0, "top_k": 1, "top_p": 1.0},
    }


def _inner(init: Any) -> int:
    """Elements per leading index of an initializer (1 for vectors)."""
    n = 1
    for d in init.shape[1:]:
        n *= int(d)
    return n


def _fuse_bias(name: str, members: list[Storage]) -> Fused | None:
    """Float 1-D biases stored as one ``name`` (the genai builder's packed q/k/v bias, added
    after the packed MatMul), or None where their storages differ."""
    if any(m.kind != "dense" or len(m.shape) != 1 or m.inits[0].dtype != members[0].inits[0].dtype
           for m in members):
        return None
    total = sum(m.shape[0] for m in members)
    init = Init(name, members[0].inits[0].dtype, (total,))
    places: dict[str, Place] = {}
    start = 0
    for m in members:
        places[m.inits[0].name] = Place(name, 0, start, m.shape[0])
        start += m.shape[0]
    return Fused(Storage(name, (total,), "dense", (init,)), places)


def _fuse_qkv(source: ModelSource, storages: list[Storage]) -> tuple[list[Storage], list[Storage]]:
    """Each layer's q/k/v stored as one ``qkv_proj`` weight (one MatMul, GroupQueryAttention's
    packed input, as the genai builder writes it), and their biases (Qwen2) as one
    ``qkv_proj`` bias, where their storages allow; the members are returned with their places
    in the fused initializers."""
    by_name = {s.name: k for k, s in enumerate(storages)}
    fused: list[Storage] = []
    i = 0
    while f"model.layers.{i}.self_attn.q_proj.weight" in by_name:
        a = f"model.layers.{i}.self_attn."
        i += 1
        parts = [a + p + "_proj.weight" for p in "qkv"]
        biases = [a + p + "_proj.bias" for p in "qkv"]
        has_bias = [b in by_name for b in biases]
        if not all(p in by_name for p in parts) or (any(has_bias) and not all(has_bias)):
            continue
        groups = [(fuse(a + "qkv_proj.weight", [storages[by_name[p]] for p in parts]), parts)]
        if all(has_bias):
            groups.append((_fuse_bias(a + "qkv_proj.bias", [storages[by_name[b]]
                                                             for b in biases]), biases))
        if any(f is None for f, _ in groups):
            continue
        for f, members in groups:
            assert f is not None
            fused.append(f.storage)
            for p in members:
                st = storages[by_name[p]]
                storages[by_name[p]] = dataclasses.replace(st, extra={
                    **st.extra, "places": {i.name: f.places[i.name] for i in st.inits}})
    return storages, fused


class _Sink:
    """Plan rows packed into their initializers and written at their offsets in the data file."""

    def __init__(self, fd: int, plan: Plan, source: ModelSource) -> None:
        self.fd = fd
        self.plan = plan
        self.source = source
        self.storages: list[Storage] = plan.extra["storages"]
        self.offsets: dict[str, int] = plan.extra["offsets"]
        self._gguf: dict[str, Any] | None = None
        self.fused_inits = {i.name: i for f in plan.extra["fused"] for i in f.inits}

    def _copied(self, i: int) -> bool:
        # --quant keep: the GGUF's own records (whatever the pipeline rounded is not used)
        return self.plan.recipe.quant == "KEEP" and str(self.plan.rows[i].target) in GGML_COPY

    def _gguf_record(self, name: str) -> QuantizedTensor:
        """The GGUF source's own record of ``name``, in Hugging Face row order: its codes are
        written as they are, whatever the pipeline computed."""
        from quantport.formats.gguf_file import read_tensor, scan_gguf
        from quantport.readers.arch import llama_unpermute

        if self._gguf is None:
            self._gguf = {t.name: t for t in scan_gguf(self.source.path).tensors}
        gname = self.source.architecture.gguf_name(name)
        rec = read_tensor(self.source.path, self._gguf[gname])
        edit = self.source.architecture.edit(name)
        if edit in ("permute_q", "permute_k"):
            # llama.cpp's rotary row order back to Hugging Face's, for the architectures whose
            # q/k llama.cpp permutes (GGUFSource.get undoes the same edit on the dequantized
            # rows; qwen2/qwen3/phi3/gemma3 are not permuted); block parameters are per row,
            # so rows move with them
            cfg = self.source.config
            heads = int(cfg["num_attention_heads"])
            kv = heads if edit == "permute_q" else int(cfg.get("num_key_value_heads") or heads)

            def rows(a: Any) -> Any:
                return llama_unpermute(np.asarray(a), heads, kv)

            rec = dataclasses.replace(
                rec, codes=rows(rec.codes), scale=rows(rec.scale),
                zero_point=None if rec.zero_point is None else rows(rec.zero_point))
        return rec

    def chunkable(self, i: int) -> bool:
        return not self._copied(i) and row_chunks(self.storages[i], self.plan.rows[i].target)

    def sync(self) -> None:
        os.fsync(self.fd)

    def put(self, i: int, value: QuantizedTensor | np.ndarray,
            rows: tuple[int, int] | None = None) -> int:
        st = self.storages[i]
        r0 = 0 if rows is None else rows[0]
        if self._copied(i):
            value = self._gguf_record(st.name)
        packed = pack(st, value)
        written = 0
        places: dict[str, Place] = st.extra.get("places", {})
        for init in st.inits:
            data = np.ascontiguousarray(packed[init.name]).reshape(-1)
            written += data.nbytes
            per_row = init.nbytes // st.shape[0] if r0 else 0
            p = places.get(init.name)
            if p is None:
                pwrite_all(self.fd, memoryview(data), self.offsets[init.name] + r0 * per_row)
            elif p.axis == 0:  # leading rows of the fused array: one contiguous range
                start = element_bytes(init.dtype, p.start * _inner(init))
                pwrite_all(self.fd, memoryview(data),
                           self.offsets[p.fused] + start + r0 * per_row)
            else:  # columns of a [rows, cols] array: one range per row
                fused = self.fused_inits[p.fused]
                row = element_bytes(init.dtype, fused.shape[1])
                col = element_bytes(init.dtype, p.start)
                data = data.reshape(init.shape[0], -1)
                base = self.offsets[p.fused] + col
                for r in range(init.shape[0]):
                    pwrite_all(self.fd, memoryview(data[r]), base + r * row)
        return written


class ONNXWriter(DirectoryWriter):
    """Writer of ONNX Runtime directories (see the module docstring)."""

    name = "onnx"
    description = ("ONNX Runtime / onnxruntime-genai directory: QDQ or MatMulNBits int4/int8, "
                   "w8a8, f16/f32")

    def plan(self, source: ModelSource, recipe: Recipe, imatrix: Any = None) -> Plan:
        """What every tensor becomes, the graph, and the exact size of every file.

        Raises:
            UnsupportedArchitectureError: an architecture with no ONNX graph builder.
            UnsupportedQuantError: a scheme the graph cannot express (naming those it can),
                or an override that matches no tensor.
            ShapeError: a group size that does not divide a width (unless keep_unquantized).
        """
        arch = source.architecture.name
        if arch not in BUILDERS:
            raise UnsupportedArchitectureError(
                f"the ONNX writer has no graph for architecture {arch!r}; supported: "
                f"{', '.join(BUILDERS)}"
            )
        tied = _tied(source)
        rows: list[PlanRow] = []
        storages: list[Storage] = []
        dropped: dict[str, str] = {}
        used: set[int] = set()
        for name in source.names():
            why = _dropped(source, name)
            if why is not None:
                dropped[name] = why
                continue
            shape = tuple(int(d) for d in source.shape(name))
            role = _role(source, name)
            target, reason = _default(source, recipe, name, role, tied)
            for k, o in enumerate(recipe.overrides):
                if o.regex.search(name):
                    target, reason = o.target, f"override '{o}'"
                    used.add(k)
                    break
            if isinstance(target, str) and target in GGML_COPY and recipe.quant != "KEEP" \
                    and (len(shape) != 2 or shape[1] % 32):
                if not recipe.keep_unquantized:
                    raise ShapeError(
                        f"{name}: {target} needs a 2-D weight whose width is a multiple of 32, "
                        f"got {shape} (or pass --keep-unquantized to leave it in float)"
                    )
                target, reason = "F32", f"width {shape[-1]} is not a multiple of 32"
            if isinstance(target, IntScheme) and target.symmetric and recipe.act_quant is None:
                # ONNX Runtime's own symmetric rule (MLAS MlasQuantizeBlockwise, as
                # MatMulNBitsQuantizer and the genai builder quantize): all 2^bits codes used
                target = dataclasses.replace(target, rule="signed")
            if isinstance(target, IntScheme):
                try:
                    target.check(name, shape)
                except ShapeError as exc:
                    if not recipe.keep_unquantized:
                        raise
                    target, reason = "F32", str(exc).split(";")[0]
            # a quantized token table is gathered by GatherBlockQuantized (and, tied, read
            # by MatMulNBits as the head): always the nbits layout
            mode = "nbits" if role == "embed" else recipe.onnx_matmul
            st = storage_for(name, shape, target, role, mode)
            storages.append(st)
            rows.append(PlanRow(name, name, shape, target, reason, st.nbytes))
        for k, o in enumerate(recipe.overrides):
            if k not in used:
                raise UnsupportedQuantError(
                    f"tensor-type override '{o}' matches no tensor; fix the regex (it is "
                    "re.search-ed against Hugging Face names such as "
                    "'model.layers.0.self_attn.q_proj.weight'; a tied head is "
                    "'model.embed_tokens.weight')"
                )
        if recipe.method == "smoothquant" and not source.architecture.causal:
            # post-LayerNorm encoders: SmoothQuant's 1/s per smoothed Linear, multiplied into
            # its input before DynamicQuantizeLinear (pipeline/transforms.py)
            for row in list(rows):
                local = re.sub(r"^.*?encoder\.layer\.\d+\.", "", row.source)
                if any(local == f"{n}.weight" for n in bert.SMOOTHED):
                    name = row.source.removesuffix(".weight") + SMOOTH_SUFFIX
                    shape = (row.shape[1],)
                    st = storage_for(name, shape, "F32", "other", recipe.onnx_matmul)
                    storages.append(st)
                    rows.append(PlanRow(name, name, shape, "F32", "SmoothQuant input scale",
                                        st.nbytes))
        fused: list[Storage] = []
        if source.architecture.causal:
            storages, fused = _fuse_qkv(source, storages)
        offsets: dict[str, int] = {}
        pos = 0
        for st in [*storages, *fused]:
            for init in st.inits:
                if init.name in st.extra.get("places", {}):
                    continue  # inside a fused initializer
                pos = -(-pos // _ALIGN) * _ALIGN
                offsets[init.name] = pos
                pos += init.nbytes
        data_size = pos
        metadata = {
            "quantport_version": quantport.__version__,
            "quantport_recipe": json.dumps(recipe.to_dict(), sort_keys=True),
            "quantport_source": json.dumps(source.describe(), sort_keys=True),
            "quantport_data_size": str(data_size),
            "quantport_tensors": json.dumps({s.name: s.to_dict() for s in storages},
                                            separators=(",", ":")),
        }
        opts = GraphOptions(accuracy_level=4 if recipe.accuracy_level is None
                            else recipe.accuracy_level, data_file=DATA_FILE,
                            act_quant=recipe.act_quant,
                            act_scheme=recipe.act_scheme or GraphOptions.act_scheme)
        model = build_model(arch, source.config, {s.name: s for s in [*storages, *fused]},
                            offsets, opts, metadata)
        import onnx_ir as ir

        graph = ir.to_proto(model).SerializeToString()
        texts = {"config.json": json.dumps(source.config, indent=2)}
        if source.path.is_dir():
            # a SentencePiece checkpoint: the tokenizer.json onnxruntime-genai reads must be
            # one that tokenizes as tokenizer.model does (transformers' conversion of it does
            # not, and genai reads it differently again at a leading space)
            spm_json = sentencepiece_tokenizer_json(source.tokenizer_files, source.config,
                                                    arch=source.architecture.gguf_arch,
                                                    model_dir=source.path)
            if spm_json is not None:
                texts["tokenizer.json"] = spm_json
        if source.architecture.causal:
            texts["genai_config.json"] = json.dumps(
                genai_config(source.config, source.tokenizer_files), indent=4)
        return self.finish_plan(recipe, source, rows, dropped,
                                {GRAPH_FILE: len(graph), DATA_FILE: data_size}, texts,
                                graph=graph, storages=storages, offsets=offsets, fused=fused)

    @contextlib.contextmanager
    def open(self, out: Path, source: ModelSource, plan: Plan) -> Iterator[_Sink]:
        """The directory under a temporary name: graph, config and tokenizer files written,
        the data file at its final size; renamed into place on success."""
        with atomic_dir(out) as tmp:
            (tmp / GRAPH_FILE).write_bytes(plan.extra["graph"])
            for fname, text in plan.extra["texts"].items():
                (tmp / fname).write_text(text, encoding="utf-8")
            fd = os.open(tmp / DATA_FILE, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                os.ftruncate(fd, plan.files[DATA_FILE])
                yield _Sink(fd, plan, source)
                os.fsync(fd)
            finally:
                os.close(fd)
