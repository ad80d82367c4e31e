"""Hugging Face checkpoint (or GGUF) -> quantized GGUF in one pass, as llama.cpp would write it.

Design decision: this one converter does the work of ``convert_hf_to_gguf.py`` *and*
``llama-quantize``. The metadata follows the converter (``conversion/llama.py`` ``LlamaModel``,
``conversion/bert.py`` ``BertModel``, ``conversion/base.py`` ``TextModel.set_gguf_parameters``);
the per-tensor types follow ``llama_tensor_get_type``
(:func:`quantport.quant.presets.plan_tensor_types`) and the tensor bytes ``ggml_quantize_chunk``
(:func:`quantport.quant.ggml.quantize_ggml` + :func:`quantport.formats.gguf_blocks.pack`). So
for every tensor the output equals what ``llama-quantize`` produces from an F32 GGUF of the same
model (checked byte for byte in ``tests/writers/test_gguf.py``).

Tensors are read, permuted and quantized one at a time while the file is written
(:func:`quantport.formats.gguf_writer.write_gguf`), and the header is fully known beforehand, so
``dry_run`` gives the exact file size without quantizing anything.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import quantport
from quantport.readers.arch import llama_permute
from quantport.writers.safetensors import ConvertReport, Progress
from quantport.readers.gguf_vocab import vocab_from_hf, vocab_metadata
from quantport.readers.source import ModelSource
from quantport.errors import (
    ConfigError,
    FormatError,
    OutputExistsError,
    UnsupportedArchitectureError,
    UnsupportedQuantError,
)
from quantport.formats._atomic import check_output
from quantport.formats.gguf_blocks import pack
from quantport.formats.gguf_writer import (
    GGUFKV,
    GGUFTensor,
    GGUFValueType,
    gguf_file_size,
    parallel_write_supported,
    write_gguf,
)
from quantport.formats.imatrix import ImatrixData
from quantport.formats.safetensors import bf16_bits
from quantport.quant.ggml import GGML_GRIDS, quantize_ggml, set_num_threads
from quantport.quant.presets import PRESETS, TensorPlan, plan_tensor_types, resolve_preset

__all__ = ["GGUF_ARCHITECTURES", "SUPPORTED_PRESETS", "GGUFResult", "convert_gguf", "gguf_metadata"]

log = logging.getLogger(__name__)

#: architectures this converter writes (``general.architecture`` values)
GGUF_ARCHITECTURES = ("llama", "bert")
#: llama-quantize presets this converter accepts (for CLI help and error messages)
SUPPORTED_PRESETS = tuple(PRESETS)
_DENSE = ("F32", "F16", "BF16")
_GGML_QUANTIZATION_VERSION = 2  # GGML_QNT_VERSION (ggml.h), written by llama_model_quantize
# Below this many weights a model is written by one process: forking workers costs more than
# it saves on test-sized models.
_PARALLEL_MIN_ELEMS = 1 << 22

S, U32, F32, B, A = (
    GGUFValueType.STRING,
    GGUFValueType.UINT32,
    GGUFValueType.FLOAT32,
    GGUFValueType.BOOL,
    GGUFValueType.ARRAY,
)


@dataclass
class GGUFResult:
    """What :func:`convert_gguf` did (or would do, for a dry run).

    Attributes:
        output: the GGUF path.
        preset: the canonical preset name (``"Q4_K_M"``).
        plan: one row per tensor in file order: name, shape, type, reason, data bytes.
        size: exact file size in bytes (equal to the written file's size).
        seconds: wall time.
        dry_run: nothing was written.
        report: the common conversion report.
    """

    output: Path
    preset: str
    plan: list[TensorPlan]
    size: int
    seconds: float
    dry_run: bool
    report: ConvertReport = field(repr=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready mapping (the CLI's ``--json``)."""
        return {
            "output": str(self.output),
            "preset": self.preset,
            "size": self.size,
            "seconds": self.seconds,
            "dry_run": self.dry_run,
            "tensors": [
                {
                    "name": p.name,
                    "shape": list(p.shape),
                    "type": p.type,
                    "reason": p.reason,
                    "bytes": p.nbytes,
                }
                for p in self.plan
            ],
            "report": self.report.to_dict(),
        }


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
    if arch.name == "bert":
        # BertModel.filter_tensors (conversion/bert.py): strip "bert.", gamma/beta -> weight/bias,
        # drop the pooler and the MLM / NSP heads ("we are only using BERT for embeddings")
        name = name.removeprefix("bert.")
        if name.endswith(".gamma"):
            name = name[:-6] + ".weight"
        elif name.endswith(".beta"):
            name = name[:-5] + ".bias"
        if name.startswith(("cls.predictions", "cls.seq_relationship")):
            return None
    if name in arch.gguf_skip:
        return None
    # tied output: llama.cpp reuses token_embd when output.weight is absent
    if (
        arch.name == "llama"
        and name == "lm_head.weight"
        and source.config.get("tie_word_embeddings")
    ):
        return None
    g = arch.gguf_name(name)
    if g is None:
        raise UnsupportedArchitectureError(
            f"{source.path}: tensor {hf!r} has no GGUF counterpart for {arch.name}; this variant "
            f"of the architecture is not supported"
        )
    return g


def _tensor_list(source: ModelSource) -> list[tuple[str, str, tuple[int, ...]]]:
    """``(gguf_name, hf_name, numpy_shape)`` in llama.cpp's order."""
    out = []
    for hf in source.names():
        g = _hf_to_gguf_name(source, hf)
        if g is None:
            log.debug("dropping %s", hf)
            continue
        out.append((g, hf, tuple(int(d) for d in source.shape(hf))))
    if not any(g == "token_embd.weight" for g, _, _ in out):
        raise FormatError(
            f"{source.path}: no token embedding tensor found; is the checkpoint complete?"
        )
    return sorted(out, key=lambda t: _sort_key(t[0]))


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
    d = source.path
    if not d.is_dir() or not (d / "modules.json").is_file():
        return None
    modules = json.loads((d / "modules.json").read_text(encoding="utf-8"))
    for mod in modules:
        if str(mod.get("type", "")).endswith("Pooling"):
            cfg_path = d / mod["path"] / "config.json"
            pooling = json.loads(cfg_path.read_text(encoding="utf-8"))
            # gguf PoolingType: MEAN=1, CLS=2, LAST=3
            if pooling.get("pooling_mode_mean_tokens"):
                return 1
            if pooling.get("pooling_mode_cls_token"):
                return 2
            if pooling.get("pooling_mode_lasttoken"):
                return 3
            mode = {"mean": 1, "cls": 2, "lasttoken": 3}.get(pooling.get("pooling_mode"))
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


def _llama_hparams(cfg: dict[str, Any], where: str) -> list[GGUFKV]:
    if cfg.get("hidden_act", "silu") != "silu":
        raise UnsupportedArchitectureError(
            f"{where}: llama with hidden_act {cfg.get('hidden_act')!r}; "
            "llama.cpp's llama graph uses silu"
        )
    n_embd = int(_cfg(cfg, "hidden_size", where))
    n_head = int(_cfg(cfg, "num_attention_heads", where))
    rope = cfg.get("rope_scaling") or {}
    rope_params = cfg.get("rope_parameters") or {}  # transformers >= 5 moves rope_theta here
    rope_type = rope.get("rope_type", rope.get("type")) or rope_params.get("rope_type")
    theta = cfg.get("rope_theta", rope_params.get("rope_theta", 10000.0))
    kv = [
        # TextModel.set_gguf_parameters + LlamaModel.set_gguf_parameters, types as gguf-py's
        # add_* helpers write them (llama-model.cpp reads uint32_t / float exactly)
        GGUFKV("llama.block_count", int(_cfg(cfg, "num_hidden_layers", where)), U32),
        GGUFKV("llama.context_length", int(_cfg(cfg, "max_position_embeddings", where)), U32),
        GGUFKV("llama.embedding_length", n_embd, U32),
        GGUFKV("llama.feed_forward_length", int(_cfg(cfg, "intermediate_size", where)), U32),
        GGUFKV("llama.attention.head_count", n_head, U32),
        GGUFKV("llama.attention.head_count_kv", int(cfg.get("num_key_value_heads") or n_head), U32),
        GGUFKV("llama.rope.freq_base", float(theta), F32),
        GGUFKV(
            "llama.attention.layer_norm_rms_epsilon", float(_cfg(cfg, "rms_norm_eps", where)), F32
        ),
    ]
    if rope_type not in (None, "default"):
        factor = rope.get("factor", rope_params.get("factor"))
        if rope_type != "linear" or factor is None:
            raise UnsupportedArchitectureError(
                f"{where}: rope scaling {rope_type!r} is not supported; supported: none, linear"
            )
        kv += [
            GGUFKV("llama.rope.scaling.type", "linear", S),
            GGUFKV("llama.rope.scaling.factor", float(factor), F32),
        ]
    head_dim = cfg.get("head_dim")
    if head_dim is not None:
        kv += [
            GGUFKV("llama.attention.key_length", int(head_dim), U32),
            GGUFKV("llama.attention.value_length", int(head_dim), U32),
        ]
    kv += [
        GGUFKV("llama.vocab_size", int(_cfg(cfg, "vocab_size", where)), U32),
        # llama-model.cpp requires n_rot == n_embd_head_k for LLM_ARCH_LLAMA
        GGUFKV("llama.rope.dimension_count", int(head_dim or n_embd // n_head), U32),
    ]
    return kv


def _bert_hparams(source: ModelSource, cfg: dict[str, Any], where: str) -> list[GGUFKV]:
    if (
        cfg.get("hidden_act", "gelu") != "gelu"
        or cfg.get("position_embedding_type", "absolute") != "absolute"
    ):
        raise UnsupportedArchitectureError(
            f"{where}: bert with hidden_act {cfg.get('hidden_act')!r} / position_embedding_type "
            f"{cfg.get('position_embedding_type')!r}; llama.cpp's bert graph needs gelu and "
            "absolute positions"
        )
    kv = [
        # TextModel.set_gguf_parameters + BertModel.set_gguf_parameters (conversion/bert.py);
        # llama_model_bert::load_arch_hparams reads attention.layer_norm_epsilon (float)
        GGUFKV("bert.block_count", int(_cfg(cfg, "num_hidden_layers", where)), U32),
        GGUFKV("bert.context_length", int(_cfg(cfg, "max_position_embeddings", where)), U32),
        GGUFKV("bert.embedding_length", int(_cfg(cfg, "hidden_size", where)), U32),
        GGUFKV("bert.feed_forward_length", int(_cfg(cfg, "intermediate_size", where)), U32),
        GGUFKV("bert.attention.head_count", int(_cfg(cfg, "num_attention_heads", where)), U32),
        GGUFKV("bert.attention.layer_norm_epsilon", float(cfg.get("layer_norm_eps", 1e-12)), F32),
        # an encoder: bidirectional attention (llama_model_base::load_hparams reads it as bool)
        GGUFKV("bert.attention.causal", False, B),
    ]
    pooling = _pooling_type(source)
    if pooling is not None:
        kv.append(GGUFKV("bert.pooling_type", pooling, U32))
    return kv


def gguf_metadata(
    source: ModelSource,
    preset: str,
    *,
    imatrix: ImatrixData | None = None,
    pure: bool = False,
    overrides: Sequence[str] = (),
) -> list[GGUFKV]:
    """The GGUF metadata quantport writes for ``source`` quantized with ``preset``.

    Args:
        source: the model.
        preset: a llama-quantize preset name.
        imatrix: the importance matrix used, if any (recorded as provenance).
        pure: ``--pure`` (recorded).
        overrides: ``--tensor-type`` overrides (recorded).

    Returns:
        Ordered key/value pairs with explicit types.

    Raises:
        ConfigError: a hyper-parameter is missing from config.json.
        UnsupportedArchitectureError: an architecture variant llama.cpp would run differently.
        UnsupportedQuantError: unknown preset.
    """
    p = resolve_preset(preset)
    arch = source.architecture.name
    cfg = dict(source.config)
    where = str(source.path)
    recipe = {
        "preset": p.name,
        "pure": bool(pure),
        "overrides": list(overrides),
        "imatrix": None
        if imatrix is None
        else {
            "datasets": list(imatrix.datasets),
            "chunk_count": int(imatrix.chunk_count),
            "chunk_size": int(imatrix.chunk_size),
            "entries": len(imatrix.entries),
        },
    }
    kv = [
        GGUFKV("general.architecture", arch, S),
        GGUFKV("general.type", "model", S),
        GGUFKV("general.name", _model_name(source), S),
        GGUFKV("general.quantized_by", f"quantport {quantport.__version__}", S),
        GGUFKV("quantport.version", quantport.__version__, S),
        GGUFKV("quantport.recipe", json.dumps(recipe, sort_keys=True), S),
        GGUFKV("quantport.source", json.dumps(source.describe(), sort_keys=True), S),
    ]
    kv += _llama_hparams(cfg, where) if arch == "llama" else _bert_hparams(source, cfg, where)
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
        kv += [GGUFKV(k, v, GGUFValueType(t), None if e is None else GGUFValueType(e))
               for k, v, t, e in copy_kv()]
        return kv
    model_dir = source.path if source.path.is_dir() else None
    vocab = vocab_from_hf(source.tokenizer_files, cfg, arch=arch, model_dir=model_dir)
    kv += vocab_metadata(vocab)
    return kv


# --------------------------------------------------------------------------------------------
# conversion
# --------------------------------------------------------------------------------------------


def _importance(imatrix: ImatrixData | None, plan: list[TensorPlan]) -> dict[str, np.ndarray]:
    """Per quantized tensor, the imatrix entry llama_model_quantize would pass (checked upfront)."""
    if imatrix is None:
        return {}
    out: dict[str, np.ndarray] = {}
    for p in plan:
        if p.type in _DENSE or p.name not in imatrix.entries:
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


def _producer(
    source: ModelSource,
    hf: str,
    p: TensorPlan,
    importance: np.ndarray | None,
    n_head: int,
    n_head_kv: int,
) -> Callable[[], np.ndarray]:
    def produce() -> np.ndarray:
        w = np.asarray(source.get(hf), dtype=np.float32)
        if tuple(w.shape) != tuple(p.shape):
            raise FormatError(
                f"{source.path}: tensor {hf} has shape {w.shape}, header says {p.shape}"
            )
        if source.architecture.name == "llama":
            # LlamaModel.modify_tensors: undo HF's rotary permutation of q/k (weights and biases)
            # BEFORE quantization; it permutes output rows only, so imatrix columns are unchanged
            if hf.endswith(("q_proj.weight", "q_proj.bias")):
                w = llama_permute(w, n_head, n_head)
            elif hf.endswith(("k_proj.weight", "k_proj.bias")):
                w = llama_permute(w, n_head, n_head_kv)
        if p.type == "F32":
            return np.ascontiguousarray(w, dtype="<f4")
        if p.type == "F16":
            # numpy rounds to nearest even, as ggml_fp32_to_fp16 (F16C / the bit-trick fallback)
            return np.ascontiguousarray(w, dtype="<f2")
        if p.type == "BF16":
            return bf16_bits(w)  # round to nearest even, NaN kept quiet (ggml_fp32_to_bf16)
        return pack(quantize_ggml(w, p.type, importance, name=p.name))

    return produce


def _prefetched(specs: list[GGUFTensor], pool: Any, depth: int = 2) -> list[GGUFTensor]:
    """Run producers up to ``depth`` tensors ahead of the writer, on worker threads.

    The writer consumes tensors strictly in file order (GGUF offsets are the running sum, see
    gguf.cpp), so this keeps that order while the next tensors are read, quantized and packed
    during the current one's write; numpy releases the GIL in its kernels, so the two cores both
    work. At most ``depth + 1`` tensors are in flight, which bounds memory.
    """
    from concurrent.futures import Future

    futures: dict[int, Future[Any]] = {}
    producers = [s.produce for s in specs]

    def make(i: int) -> Callable[[], Any]:
        def produce() -> Any:
            for j in range(i, min(i + depth + 1, len(specs))):
                if j not in futures and producers[j] is not None:
                    futures[j] = pool.submit(producers[j])
            return futures.pop(i).result()

        return produce

    return [GGUFTensor(s.name, s.shape, s.type_name, make(i) if s.produce else None)
            for i, s in enumerate(specs)]


def _write(
    out_path: Path,
    metadata: list[GGUFKV],
    specs: list[GGUFTensor],
    threads: int | None,
    on_progress: Progress | None,
) -> int:
    n = _default_threads(specs) if threads is None else threads
    big = sum(math.prod(s.shape) for s in specs) >= _PARALLEL_MIN_ELEMS
    if n > 1 and big and parallel_write_supported():
        # the whole tensors run in n processes: numpy's many short calls hold the GIL, so
        # threads within one process reach only ~1.45 of 2 cores on this work
        log.info("quantizing in %d worker processes", n)
        return write_gguf(out_path, metadata, specs, on_progress=on_progress, processes=n,
                          worker_init=_one_thread_per_worker).size  # fmt: skip
    if n == 1:
        return write_gguf(out_path, metadata, specs, on_progress=on_progress).size
    from concurrent.futures import ThreadPoolExecutor

    pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="quantport-gguf")
    try:
        return write_gguf(out_path, metadata, _prefetched(specs, pool),
                          on_progress=on_progress).size  # fmt: skip
    finally:
        # on an error, queued tensors are dropped; running ones finish, then threads exit
        pool.shutdown(wait=True, cancel_futures=True)


def _cores() -> int:
    """CPU cores this process may run on: its affinity mask, within a cgroup CPU quota."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        n = os.cpu_count() or 1
    try:  # cgroup v2 (containers): "max 100000" or "<quota> <period>"
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            n = min(n, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return n


def _available_memory() -> int | None:
    """Bytes this process can still use: MemAvailable, within a cgroup memory limit."""
    avail = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                avail = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:  # cgroup v2
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            used = int(Path("/sys/fs/cgroup/memory.current").read_text())
            room = max(0, int(limit) - used)
            avail = room if avail is None else min(avail, room)
    except (OSError, ValueError):
        pass
    return avail


# Working memory of one worker per weight of the tensor it holds (float32 copies, codes,
# search temporaries, packed bytes): an upper estimate, to bound the default worker count.
_WORKER_BYTES_PER_WEIGHT = 24


def _default_threads(specs: list[GGUFTensor]) -> int:
    """One worker per available core, but no more than half the available memory holds
    while each works on one of the largest tensors."""
    n = _cores()
    avail = _available_memory()
    largest = max((math.prod(s.shape) for s in specs), default=0)
    if avail is not None and largest:
        n = min(n, max(1, avail // 2 // (_WORKER_BYTES_PER_WEIGHT * largest)))
    return n


def _one_thread_per_worker() -> None:
    # each forked worker quantizes whole tensors on one core: inner threads would only contend
    # with the other workers. torch (a pickle source's tensors) likewise; its OpenMP pool is
    # not usable after fork in any case.
    set_num_threads(1)
    import sys

    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(1)
    _keep_freed_memory()


def _keep_freed_memory() -> None:
    """In a worker (it lives for one file): make glibc's malloc reuse freed blocks instead of
    returning them to the kernel at once. numpy's temporaries of a tensor are allocated and
    freed many times; by default each large one is a fresh mmap whose every page faults in
    again (measured on SmolLM2 Q4_K_M: 61k page faults in the workers, about 20k with this, ~0.1 s
    less CPU). A worker keeps at most 128 MiB it does not use."""
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library this process already runs on
    except (OSError, AttributeError):  # not glibc (musl, macOS)
        return
    m_trim_threshold, m_mmap_threshold = -1, -3  # glibc malloc.h
    mallopt(m_trim_threshold, 128 << 20)
    mallopt(m_mmap_threshold, 32 << 20)  # glibc's largest allowed (HEAP_MAX / 2 on 64-bit)


def convert_gguf(
    source: ModelSource,
    out: str | os.PathLike[str],
    preset: str,
    *,
    imatrix: ImatrixData | None = None,
    pure: bool = False,
    overrides: Sequence[str] = (),
    output_type: str | None = None,
    token_embedding_type: str | None = None,
    force: bool = False,
    dry_run: bool = False,
    threads: int | None = None,
    on_progress: Progress | None = None,
) -> GGUFResult:
    """Write ``source`` as a GGUF quantized with a llama-quantize preset.

    Args:
        source: an HF checkpoint or a GGUF (dequantized to HF layout by the source).
        out: the output ``.gguf`` path.
        preset: one of :data:`quantport.quant.presets.PRESETS` (``Q4_K_M``, ``Q8_0``, ``F16``...).
        imatrix: importance matrix (per-column mean squared activations by GGUF tensor name);
            used exactly where llama-quantize uses it.
        pure: llama-quantize ``--pure`` (no per-tensor mix).
        overrides: ``--tensor-type`` ``"REGEX=TYPE"`` overrides; they win over the mix.
        output_type: llama-quantize ``--output-tensor-type`` (the output / tied embedding).
        token_embedding_type: llama-quantize ``--token-embedding-type``.
        force: overwrite an existing ``out``.
        dry_run: plan only: return the per-tensor types and the exact size, write nothing.
        threads: cores to use (llama-quantize's ``nthread``); default: all this process may
            use. Above 1, on Linux, that many forked worker processes each quantize whole
            tensors and write them in place (models under ~4M weights stay in one process);
            elsewhere two threads overlap reading, quantizing and writing. 1: one tensor at a
            time, in this process.
        on_progress: ``on_progress("write", bytes_done, bytes_total)`` while writing.

    Returns:
        The plan, the exact size and the report.

    Raises:
        UnsupportedArchitectureError: not llama or bert, or an unsupported variant.
        UnsupportedQuantError: unknown preset, a malformed/unused override, or a tensor type
            quantport cannot produce.
        OutputExistsError: ``out`` exists and ``force`` is false.
        ConfigError: config.json lacks a needed hyper-parameter, or the tokenizer is unusable.
        FormatError: an imatrix that does not fit the model.
    """
    t0 = time.perf_counter()
    arch = source.architecture.name
    if arch not in GGUF_ARCHITECTURES:
        raise UnsupportedArchitectureError(
            f"{source.path}: GGUF export of architecture {arch!r} is not supported; supported: "
            f"{', '.join(GGUF_ARCHITECTURES)}"
        )
    if threads is not None and threads < 1:
        raise ConfigError(f"threads must be at least 1, got {threads}")
    p = resolve_preset(preset)
    out_path = Path(out)
    if not dry_run:
        if out_path.is_dir():
            raise OutputExistsError(f"{out_path} is a directory; give the path of a .gguf file")
        check_output(out_path, force)
    cfg = source.config
    where = str(source.path)
    n_layer = int(_cfg(cfg, "num_hidden_layers", where))
    n_head = int(_cfg(cfg, "num_attention_heads", where))
    n_head_kv = int(cfg.get("num_key_value_heads") or n_head)

    tensors = _tensor_list(source)
    plan = plan_tensor_types(
        [(g, shape) for g, _, shape in tensors], arch=arch, n_layer=n_layer, n_head=n_head,
        n_head_kv=n_head_kv, preset=p.name, pure=pure, overrides=overrides,
        output_type=output_type, token_embedding_type=token_embedding_type,
        has_imatrix=imatrix is not None,
    )  # fmt: skip
    producible = set(_DENSE) | set(GGML_GRIDS)
    for row in plan:
        if row.type not in producible:
            raise UnsupportedQuantError(
                f"tensor {row.name}: type {row.type} cannot be produced by quantport; supported: "
                f"{', '.join(sorted(producible))}"
            )
    importance = _importance(imatrix, plan)
    metadata = gguf_metadata(source, p.name, imatrix=imatrix, pure=pure, overrides=overrides)
    specs = [
        GGUFTensor(
            row.name,
            row.shape,
            row.type,
            _producer(source, hf, row, importance.get(row.name), n_head, n_head_kv),
        )
        for (_, hf, _), row in zip(tensors, plan, strict=True)
    ]
    if dry_run:
        size = gguf_file_size(metadata, specs)
    else:
        log.info("writing %s (%s, %d tensors)", out_path, p.name, len(specs))
        size = _write(out_path, metadata, specs, threads, on_progress)
    seconds = time.perf_counter() - t0
    report = ConvertReport(
        output=str(out_path), format="gguf", quant=p.name, seconds=seconds,
        bytes=size,
        quantized=[r.name for r in plan if r.type not in _DENSE],
        kept={r.name: f"{r.type}: {r.reason}" for r in plan if r.type in _DENSE},
    )  # fmt: skip
    return GGUFResult(out_path, p.name, plan, size, seconds, dry_run, report)
