"""Validation: run the artifact in the runtime that will serve it and judge two things apart.

* **Correctness** (a gate): the runtime computes what the artifact's weights mean. Its logits
  are compared with quantport's own torch forward of the artifact's weights, read and
  dequantized by quantport (:class:`~quantport.readers.GGUFSource` for a GGUF; the
  compressed-tensors packed weights unpacked by :mod:`quantport.formats.compressed_tensors` and
  :func:`quantport.ir.dequantize` for a safetensors checkpoint), within the runtime's kernel
  noise; and the runtime's own tokenizer (llama.cpp's ``Llama.tokenize``, or ``AutoTokenizer``
  from the artifact directory) must give the source tokenizer's ids on the evaluation text.
* **Quality** (thresholds the user sets): PPL ratio, KL divergence and top-1 agreement of the
  artifact against the float32 source (cosine of embeddings for encoders).

Runtimes: safetensors checkpoints are loaded by transformers itself (with compressed-tensors for
quantized ones); GGUF files by llama.cpp (llama-cpp-python, ``logits_all=True``); ONNX
directories by ONNX Runtime on CPU (:class:`~quantport.validate.ort.OrtLM`), whose correctness
gate also decodes greedily through the graph's KV cache. The source runs in transformers in
float32. All models see the same token ids (the source tokenizer's).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import importlib.util
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from quantport._fixtures import wikitext_dir
from quantport._quiet import quiet_loading
from quantport.errors import ConfigError, DependencyError, QuantportError, ValidationFailed
from quantport.validate.metrics import LogitStats, log_softmax

__all__ = [
    "Check",
    "CorrectnessLimits",
    "Thresholds",
    "ValidationReport",
    "artifact_bits",
    "artifact_weights",
    "default_text",
    "load_windows",
    "validate",
]

log = logging.getLogger(__name__)
Progress = Callable[[str, int, int], None]

CORRECTNESS = "correctness"
QUALITY = "quality"


@dataclass(frozen=True)
class Thresholds:
    """Quality limits: the artifact against its float32 source. ``None`` disables a check.

    The defaults depend on the artifact's weight precision (:meth:`for_bits`): they are gates
    against a *broken* artifact (wrong layout, tokenizer or packing gives KL divergences of
    several nats and top-1 agreement near zero), loose enough for the expected loss of each
    precision on small models. llama.cpp's published KLD scale for Llama-3-8B (q8_0 0.001,
    q6_K 0.005, q4_K_M 0.03, q3_K_M 0.10, q2_K 0.45; examples/perplexity/README.md) sets the
    ordering; a 135M model loses several times more at each precision.
    """

    max_kld: float | None = 0.5
    min_top1: float | None = 0.60
    max_ppl_ratio: float | None = 1.5
    min_cosine: float | None = 0.95

    @classmethod
    def for_bits(cls, bits: int) -> Thresholds:
        """Default limits for weights of ``bits`` nominal bits (16 = unquantized)."""
        if bits >= 16:
            return cls(0.02, 0.97, 1.02, 0.999)
        if bits >= 8:
            return cls(0.05, 0.90, 1.05, 0.99)
        if bits >= 5:
            return cls(0.3, 0.70, 1.3, 0.98)
        if bits == 4:
            return cls(0.5, 0.60, 1.5, 0.95)
        if bits == 3:
            return cls(1.0, 0.45, 2.5, 0.90)
        return cls(2.0, 0.30, 5.0, 0.80)

    def override(self, **limits: float | None) -> Thresholds:
        """These limits with the given ones replaced (``None`` values are ignored)."""
        given = {k: v for k, v in limits.items() if v is not None}
        return dataclasses.replace(self, **given)


@dataclass(frozen=True)
class CorrectnessLimits:
    """How far a runtime may be from quantport's forward of the artifact's own weights.

    These are kernel noise, not quantization loss: both sides use the very same weights.
    transformers decompresses compressed-tensors weights to the exact values quantport
    dequantizes, so only float32 summation order differs (measured KLD ~1e-9). llama.cpp
    quantizes activations to 8 bits for its quantized matmuls (``vec_dot_type`` Q8_0/Q8_K),
    which costs up to a few 1e-3 nats on SmolLM2-135M; a wrong block layout, permutation or
    scale costs several nats.
    """

    max_kld: float = 0.02
    min_top1: float = 0.90
    min_cosine: float = 0.99

    @classmethod
    def for_runtime(cls, runtime: str) -> CorrectnessLimits:
        """The limits for ``"transformers"``, ``"llama.cpp"`` or ``"onnxruntime"``.

        ONNX Runtime gets llama.cpp's: its CPU MatMulNBits at ``accuracy_level`` 4 (the level
        onnxruntime-genai's builder writes for CPU) quantizes activations to int8 per block
        (``SQNBIT_CompInt8`` in ``contrib_ops/cpu/quantization/matmul_nbits.cc``), and W8A8
        graphs quantize them on purpose (per tensor or per token).
        """
        if runtime == "transformers":
            return cls(1e-3, 0.98, 0.9999)
        return cls()


@dataclass
class Check:
    """One verdict: ``value`` compared with ``limit`` (``op`` is ``"<="`` or ``">="``).

    ``passed`` is ``None`` when the check could not be run (``detail`` says why); such a check
    fails nothing.
    """

    name: str
    group: str
    value: float | None
    limit: float | None
    op: str
    passed: bool | None
    detail: str = ""

    @classmethod
    def of(cls, name: str, group: str, value: float | None, limit: float | None, op: str,
           detail: str = "") -> Check:
        """Judge ``value`` against ``limit``; no value or no limit gives a skipped check."""
        if value is None or limit is None:
            return cls(name, group, value, limit, op, None, detail)
        ok = value <= limit if op == "<=" else value >= limit
        return cls(name, group, float(value), float(limit), op, bool(ok), detail)

    def describe(self) -> str:
        """``name value op limit`` in one line (e.g. ``ppl_ratio 1.42 > 1.3``)."""
        if self.passed is None:
            return f"{self.name}: not checked ({self.detail})"
        shown_op = self.op if self.passed else {"<=": ">", ">=": "<"}[self.op]
        return f"{self.name} {self.value:.6g} {shown_op} {self.limit:.6g}"


# nominal weight bits of each llama.cpp file type (general.file_type, llama_ftype)
_FTYPE_BITS = {0: 16, 1: 16, 32: 16, 7: 8, 18: 6, 8: 5, 9: 5, 16: 5, 17: 5, 2: 4, 3: 4, 14: 4,
               15: 4, 25: 4, 11: 3, 12: 3, 13: 3, 10: 2}


def artifact_bits(path: str | os.PathLike[str]) -> int:
    """Nominal weight precision of an artifact: 16 when it is not quantized.

    GGUF: from ``general.file_type``; safetensors: from ``quantization_config``; ONNX: the
    fewest bits among the graph's quantized weights (:func:`quantport.inspect.onnx_bits`).
    """
    from quantport.validate.ort import is_onnx_artifact

    p = Path(path)
    if is_onnx_artifact(p):
        from quantport.inspect import onnx_bits

        return onnx_bits(p)
    if p.suffix == ".gguf" and p.is_file():
        from quantport.formats.gguf_file import scan_gguf

        return _FTYPE_BITS.get(int(scan_gguf(p).metadata.get("general.file_type", 0)), 4)
    qc = _quantization_config(p)
    if qc.get("quant_method") == "gptq":  # GPTQ checkpoints: one scheme
        return int(qc.get("bits") or 4)
    groups = qc.get("config_groups") or {}
    bits = [g.get("weights", {}).get("num_bits") for g in groups.values()]
    bits = [b for b in bits if isinstance(b, int)]
    return min(bits) if bits else 16


def _quantization_config(p: Path) -> dict[str, Any]:
    cfg = p / "config.json"
    if not (p.is_dir() and cfg.is_file()):
        return {}
    try:
        return json.loads(cfg.read_text(encoding="utf-8")).get("quantization_config") or {}
    except json.JSONDecodeError:
        return {}


@dataclass
class ValidationReport:
    """Result of comparing an artifact with its source.

    ``checks`` lists every verdict (see :class:`Check`), grouped by ``group``: ``correctness``
    (the runtime computes what the artifact's weights mean, and its tokenizer gives the source's
    ids) and ``quality`` (the artifact against the source, within :class:`Thresholds`).
    ``correct`` and ``quality_passed`` say whether each group held; ``passed`` both.
    ``failures`` describes each failed check in one line.

    The metric keys (``ppl``, ``ppl_reference``, ``kld_mean``, ``top1_agreement``,
    ``max_abs_logit_diff``) compare the artifact with the source over the scored positions and
    are ``None`` where they do not apply (encoders report ``cosine_mean``/``cosine_min`` of the
    embeddings instead). ``extra`` holds the runtime-vs-weights figures (``ir_*`` keys) and
    ``timings`` the seconds spent in each phase (``forward_*`` are the model forwards).
    """

    artifact: str
    reference: str
    runtime: str
    passed: bool
    correct: bool = True
    quality_passed: bool = True
    ppl: float | None = None
    ppl_reference: float | None = None
    kld_mean: float | None = None
    kld_p99: float | None = None
    kld_max: float | None = None
    top1_agreement: float | None = None
    max_abs_logit_diff: float | None = None
    cosine_mean: float | None = None
    cosine_min: float | None = None
    n_windows: int = 0
    window: int = 0
    n_tokens_scored: int = 0
    checks: list[dict[str, Any]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    thresholds: dict[str, float | None] = field(default_factory=dict)
    correctness_limits: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready mapping."""
        return asdict(self)


def default_text() -> Path:
    """The evaluation text: ``$QUANTPORT_EVAL_TEXT`` or the WikiText-2 test split in fixtures."""
    env = os.environ.get("QUANTPORT_EVAL_TEXT")
    if env:
        return Path(env)
    cand = wikitext_dir() / "wiki.test.raw"
    if cand.is_file():
        return cand
    raise QuantportError(
        "no evaluation text found; pass --text FILE or set QUANTPORT_EVAL_TEXT"
    )


def _tokenizer(path: Path) -> Any:
    from transformers import AutoTokenizer

    with quiet_loading():
        return AutoTokenizer.from_pretrained(str(path))


def _read_text(text_path: Path) -> str:
    try:
        return Path(text_path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise QuantportError(f"{text_path}: evaluation text not found") from None
    except UnicodeDecodeError:
        raise QuantportError(f"{text_path}: evaluation text is not UTF-8") from None


def _tokenize_prefix(tokenizer: Any, text: str, need: int) -> tuple[str, list[int]]:
    """The shortest doubling prefix of ``text`` that gives ``need`` tokens (or all of it), and
    its ids: tokenizing the whole 1.3 MB WikiText-2 file would take seconds."""
    chars = max(need * 8, 1024)
    while True:
        prefix = text[:chars]
        ids = tokenizer(prefix, add_special_tokens=False)["input_ids"]
        if len(ids) >= need or chars >= len(text):
            return prefix, ids
        chars *= 2


def _cut(ids: list[int], ctx: int, n_windows: int, where: Any) -> list[np.ndarray]:
    if len(ids) < ctx + 2:
        raise QuantportError(f"{where}: text too short for one window of {ctx} tokens")
    n = min(n_windows, len(ids) // ctx)
    return [np.asarray(ids[i * ctx : (i + 1) * ctx], dtype=np.int64) for i in range(n)]


def load_windows(tokenizer: Any, text_path: Path, ctx: int, n_windows: int) -> list[np.ndarray]:
    """Tokenize the text and cut it into ``n_windows`` consecutive windows of ``ctx`` tokens."""
    _, ids = _tokenize_prefix(tokenizer, _read_text(text_path), ctx * n_windows)
    return _cut(ids, ctx, n_windows, text_path)


def _torch_threads() -> None:
    import torch

    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    if torch.get_num_threads() > cores:
        torch.set_num_threads(cores)


class TransformersLM:
    """A Hugging Face model run by transformers on CPU in float32."""

    def __init__(self, path: str | os.PathLike[str] | None, *, causal: bool = True,
                 model: Any = None) -> None:
        import torch
        from transformers import AutoModel, AutoModelForCausalLM

        if model is None:
            cls = AutoModelForCausalLM if causal else AutoModel
            try:
                with quiet_loading():
                    model = cls.from_pretrained(str(path), dtype=torch.float32)
                    model.eval()
                    # compressed-tensors decompresses the weights in a hook on the first
                    # forward: run it here, silenced, as part of loading
                    with torch.inference_mode():
                        model(torch.zeros((1, 1), dtype=torch.long))
            except (OSError, ValueError, RuntimeError) as exc:
                first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                raise QuantportError(f"{path}: transformers cannot load it ({first})") from exc
        self.model = model
        #: Linear layers whose input is quantized at run time (:meth:`quantize_inputs`)
        self.quantized_inputs = 0
        self.model.eval()
        self.causal = causal

    def with_weights(self, weights: dict[str, np.ndarray]) -> TransformersLM:
        """The same architecture with every parameter replaced by ``weights`` (HF names).

        The parameters are handed to ``copy.deepcopy`` pre-made, so the copy costs no copy of
        the weights (buffers such as rotary tables are copied). Tied parameters stay tied.

        Parameters the artifact lacks keep the source's values.

        Raises:
            QuantportError: a weight has the wrong shape.
        """
        import torch

        prefix = getattr(self.model, "base_model_prefix", "") + "."
        memo: dict[int, Any] = {}
        for name, p in self.model.named_parameters():  # tied parameters are listed once
            w = weights.get(name)
            if w is None and name.startswith(prefix):
                w = weights.get(name[len(prefix):])
            if w is None:
                w = weights.get(prefix + name)
            if w is None:
                # e.g. BERT's pooler, which sentence-transformers checkpoints lack: the
                # runtime initializes it as the source's loader does, and mean pooling
                # never reads it
                log.debug("the artifact has no %s; the source's is used", name)
                memo[id(p)] = p
                continue
            if tuple(w.shape) != tuple(p.shape):
                raise QuantportError(
                    f"{name}: the artifact's weight has shape {tuple(w.shape)}, the source's "
                    f"{tuple(p.shape)}; is the artifact made from this source?")
            # torch wants writable memory; F32 tensors may be read-only views of a file map
            t = torch.from_numpy(np.require(w, dtype=np.float32, requirements=["C", "W"]))
            memo[id(p)] = torch.nn.Parameter(t, requires_grad=False)
        model = copy.deepcopy(self.model, memo)
        # SmoothQuant's unfolded scales (pipeline.transforms.SMOOTH_SUFFIX): the graph multiplies
        # the Linear's input by NAME.input_smooth before quantizing it
        modules = dict(model.named_modules())
        for name, v in weights.items():
            if name.endswith(".input_smooth"):
                base = name.removesuffix(".input_smooth")
                m = modules.get(base) or modules.get(base.removeprefix(prefix))
                inv = torch.from_numpy(np.array(v, dtype=np.float32))
                m.register_forward_pre_hook(
                    lambda _m, args, _v=inv: (args[0] * _v.to(args[0].dtype), *args[1:]))
        return TransformersLM(None, causal=self.causal, model=model)

    def logits(self, ids: np.ndarray, first: int = 0) -> Any:
        """Next-token logits of positions ``first ..`` (float32 torch ``[n - first, vocab]``);
        the vocabulary projection runs for those positions only."""
        import torch

        with torch.inference_mode():
            out = self.model(torch.as_tensor(ids)[None], logits_to_keep=len(ids) - first,
                             use_cache=False)
        return out.logits[0].float()

    def quantize_inputs(self, weights: Mapping[str, str]) -> int:
        """Quantize the input of the Linear layers of these weights (HF names, each with its
        scheme, ``"tensor"`` or ``"token"``) as the graph does, then dequantize it: what a
        W8A8 graph computes (the integer product is exact, so the graph's output is this
        layer's float product of the dequantized operands). ``"tensor"``:
        :func:`dynamic_quantize`; ``"token"``: :func:`token_quantize`.

        Returns:
            How many layers were hooked.
        """
        import torch

        modules = dict(self.model.named_modules())
        prefix = getattr(self.model, "base_model_prefix", "") + "."

        def find(name: str) -> Any:
            m = name.removesuffix(".weight")
            return modules.get(m) or modules.get(m.removeprefix(prefix)) or modules.get(
                prefix + m)

        rounders = {"tensor": dynamic_quantize, "token": token_quantize}
        n = 0
        for w, scheme in weights.items():
            m = find(w)
            if isinstance(m, torch.nn.Linear):
                m.register_forward_pre_hook(
                    lambda _m, args, _f=rounders[scheme]: (_f(args[0]), *args[1:]))
                n += 1
        self.quantized_inputs += n
        return n

    def logits64(self, ids: np.ndarray, first: int = 0) -> Any:
        """:meth:`logits` with the model in float64 (then float32 again): the same arithmetic
        rounded less, to measure how much this forward amplifies float32 rounding (see
        :func:`_causal`)."""
        self.model.double()
        try:
            return self.logits(ids, first)
        finally:
            self.model.float()

    def generate(self, ids: np.ndarray, n: int) -> tuple[list[int], np.ndarray]:
        """Greedy decoding of ``n`` tokens after ``ids`` through transformers' KV cache.

        Returns:
            The ``n`` tokens and the logits each was chosen from (``[n, vocab]``).
        """
        import torch

        rows = []
        tokens: list[int] = []
        with torch.inference_mode():
            out = self.model(torch.as_tensor(np.asarray(ids))[None], use_cache=True,
                             logits_to_keep=1)
            while True:
                row = out.logits[0, -1].float()
                rows.append(row.numpy())
                tokens.append(int(row.argmax()))
                if len(tokens) == n:
                    break
                out = self.model(torch.tensor([[tokens[-1]]]), use_cache=True,
                                 past_key_values=out.past_key_values, logits_to_keep=1)
        return tokens, np.stack(rows)

    def embed_texts(self, texts: list[str], tok: Any) -> np.ndarray:
        """Mean-pooled last hidden states (sentence-transformers pooling), ``[n, dim]``."""
        import torch

        enc = tok(texts, padding=True, truncation=True, max_length=128, return_tensors="np")
        ids, mask = enc["input_ids"], enc["attention_mask"]
        with torch.inference_mode():
            out = self.model(input_ids=torch.as_tensor(ids), attention_mask=torch.as_tensor(mask))
        h = out.last_hidden_state.float().numpy()
        m = mask[..., None].astype(np.float32)
        return (h * m).sum(1) / np.maximum(m.sum(1), 1)


def dynamic_quantize(x: Any) -> Any:
    """ONNX ``DynamicQuantizeLinear`` (uint8, one scale for the whole tensor) followed by its
    dequantization, in float32 as the spec writes it (``onnx/defs/quantization/defs.cc``):
    ``scale = (max(0, max x) - min(0, min x)) / 255``, ``zp = saturate(round(-min / scale))``,
    ``q = saturate(round(x / scale) + zp)``, rounding half to even."""
    import torch

    # float32 as the spec; a float64 forward (TransformersLM.logits64) keeps float64
    xf = x if x.dtype == torch.float64 else x.float()
    lo = torch.clamp(xf.min(), max=0.0)
    hi = torch.clamp(xf.max(), min=0.0)
    scale = (hi - lo) / 255.0
    if float(scale) == 0.0:
        return x
    zp = torch.clamp(torch.round(-lo / scale), 0, 255)
    q = torch.clamp(torch.round(xf / scale) + zp, 0, 255)
    return ((q - zp) * scale).to(x.dtype)


def token_quantize(x: Any) -> Any:
    """quantport's per-token W8A8 activations (``formats.onnx_graph`` ``_quantize_tokens``)
    followed by their dequantization, in float32 as the graph computes them:
    ``m = max(max |x| over the last axis, TOKEN_FLOOR)``, ``q = saturate(round(x * (127 / m)))``
    (``QuantizeLinear``: half to even, 128 + q as uint8), value ``q * (m * (1 / 127))``."""
    import torch

    from quantport.formats.onnx_graph import TOKEN_FLOOR

    xf = x if x.dtype == torch.float64 else x.float()
    m = torch.clamp(xf.abs().amax(dim=-1, keepdim=True), min=TOKEN_FLOOR)
    inv = torch.tensor(127.0, dtype=xf.dtype) / m
    q = torch.clamp(torch.round(xf * inv), -128, 127)
    return (q * (m * torch.tensor(1 / 127, dtype=xf.dtype))).to(x.dtype)


def _amx_cpu() -> bool:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return "amx_int8" in line.split()
    except OSError:
        pass
    return False


@contextlib.contextmanager
def _llama_params(no_extra_buffers: bool) -> Iterator[None]:
    """Let ``Llama()`` build its model parameters with ``use_extra_bufts`` off (llama.cpp's
    ``--no-repack``), which ``Llama.__init__`` does not expose."""
    import llama_cpp.llama_cpp as C

    if not no_extra_buffers:
        yield
        return
    original = C.llama_model_default_params

    def params() -> Any:
        p = original()
        p.use_extra_bufts = False
        return p

    C.llama_model_default_params = params
    try:
        yield
    finally:
        C.llama_model_default_params = original


class LlamaCppLM:
    """A GGUF file run by llama.cpp through llama-cpp-python, full-vocabulary logits."""

    def __init__(self, path: str | os.PathLike[str], *, n_ctx: int = 512,
                 embedding: bool = False) -> None:
        try:
            from llama_cpp import Llama
        except ImportError as exc:  # pragma: no cover - a dependency of the package
            raise QuantportError("llama-cpp-python is required to run GGUF files") from exc
        try:
            cores = len(os.sched_getaffinity(0))
        except AttributeError:  # not Linux
            cores = os.cpu_count() or 1
        threads = max(1, min(cores, 8))
        # ggml 0.25.3's AMX matmul (an "extra buffer type") dies with a general protection
        # fault at its first ldtilecfg on AMX CPUs under some hypervisors (measured: every
        # decode, Firecracker guest, kernel grants XTILEDATA); without extra buffer types
        # llama.cpp uses its AVX-512 kernels, which compute the same dot products.
        try:
            with _llama_params(no_extra_buffers=_amx_cpu()):
                self.llm = Llama(model_path=str(path), n_ctx=n_ctx, n_batch=n_ctx,
                                 n_ubatch=n_ctx, logits_all=not embedding, embedding=embedding,
                                 verbose=False, n_threads=threads, n_threads_batch=threads)
        except (ValueError, RuntimeError) as exc:
            raise QuantportError(f"{path}: llama.cpp cannot load it ({exc})") from exc

    def tokenize(self, text: str, add_special: bool = False) -> list[int]:
        """llama.cpp's own tokenization of ``text`` (special tokens in it as plain text);
        ``add_special`` adds BOS (and EOS/SEP where the vocabulary asks for it)."""
        return list(self.llm.tokenize(text.encode("utf-8"), add_bos=add_special,
                                      special=False))

    def logits(self, ids: np.ndarray, first: int = 0) -> Any:
        """Logits of positions ``first ..`` of one window (float32 torch tensor)."""
        import torch

        self.llm.reset()
        self.llm.eval([int(i) for i in ids])
        return torch.from_numpy(np.array(self.llm.scores[first : self.llm.n_tokens],
                                         dtype=np.float32))

    def embed_texts(self, texts: list[str], tok: Any = None) -> np.ndarray:
        """Pooled embeddings as the GGUF's pooling type defines them, ``[n, dim]``; llama.cpp
        tokenizes each text itself (``tok`` is unused)."""
        rows = []
        for t in texts:
            a = np.asarray(self.llm.embed(t, normalize=False), dtype=np.float32)
            rows.append(a.mean(0) if a.ndim == 2 else a)
        return np.stack(rows)

    def close(self) -> None:
        """Free the llama.cpp context."""
        self.llm.close()


# ------------------------------------------------------------------ the artifact's own weights
def artifact_weights(path: str | os.PathLike[str],
                     on_progress: Progress | None = None) -> dict[str, np.ndarray]:
    """The artifact's weights as quantport reads them: float32 arrays by Hugging Face name.

    A GGUF is read by :class:`~quantport.readers.GGUFSource`; a safetensors checkpoint by
    quantport's safetensors reader, with compressed-tensors ``pack-quantized`` weights unpacked
    and dequantized by quantport's own code (not by compressed-tensors); an ONNX directory by
    quantport's ONNX reader (``quantport.formats.onnx_read.onnx_weights``: the float32 weights
    the graph holds, its packed codes dequantized by quantport, not by ORT).
    """
    from quantport.readers import GGUFSource, HFCheckpoint
    from quantport.validate.ort import is_onnx_artifact

    p = Path(path)
    if is_onnx_artifact(p):
        return _onnx_weights(p, on_progress)
    src: Any = GGUFSource(p) if p.suffix == ".gguf" else HFCheckpoint(p)
    names = src.names()
    out: dict[str, np.ndarray] = {}
    if isinstance(src, GGUFSource):
        for i, n in enumerate(names):
            out[n] = src.get(n)
            if on_progress:
                on_progress("dequantize", i + 1, len(names))
        return out
    from quantport.formats.compressed_tensors import scheme_of, unpack_record
    from quantport.ir import dequantize

    if _quantization_config(p).get("quant_method") == "gptq":
        return _gptq_weights(src, _quantization_config(p), on_progress)
    args_of = scheme_of(_quantization_config(p), str(p))
    packed = [n for n in names if n.endswith(".weight_packed")]
    modules = {n.removesuffix(".weight_packed") for n in packed}
    side = (".weight_packed", ".weight_scale", ".weight_shape", ".weight_zero_point",
            ".weight_g_idx")
    dense = [n for n in names
             if not (n.endswith(side) and n.rsplit(".", 1)[0] in modules)]
    total = len(dense) + len(modules)
    for i, n in enumerate(dense):
        out[n] = src.get(n)
        if on_progress:
            on_progress("dequantize", i + 1, total)
    for i, m in enumerate(sorted(modules)):
        out[f"{m}.weight"] = dequantize(unpack_record(src.get, m, args_of(m)))
        if on_progress:
            on_progress("dequantize", len(dense) + i + 1, total)
    return out


def _gptq_weights(src: Any, qc: dict[str, Any],
                  on_progress: Progress | None) -> dict[str, np.ndarray]:
    """A GPTQ checkpoint's weights: ``qweight``/``qzeros``/``scales``/``g_idx`` unpacked by
    :func:`quantport.formats.gptq_pack.unpack_gptq` and dequantized by quantport, every other
    tensor as stored."""
    from quantport.formats.gptq_pack import gptq_modules, gptq_side_tensors, unpack_gptq
    from quantport.ir import dequantize

    names = src.names()
    modules = gptq_modules(names)
    side = {n for m in modules for n in gptq_side_tensors(m)}
    dense = [n for n in names if n not in side]
    total = len(dense) + len(modules)
    out: dict[str, np.ndarray] = {}
    for i, n in enumerate(dense):
        out[n] = np.asarray(src.get(n), dtype=np.float32)
        if on_progress:
            on_progress("dequantize", i + 1, total)
    for i, m in enumerate(modules):
        out[f"{m}.weight"] = dequantize(unpack_gptq(src.get, m, qc))
        if on_progress:
            on_progress("dequantize", len(dense) + i + 1, total)
    return out


def check_runtime(art_path: Path) -> None:
    """Refuse, before anything slow, an artifact whose runtime is not installed: a GPTQ
    checkpoint (``quant_method: gptq``) runs in transformers only through optimum and
    gptqmodel.

    Raises:
        DependencyError: the runtime's packages are missing.
    """
    import importlib.util

    if _quantization_config(art_path).get("quant_method") != "gptq":
        return
    missing = [m for m in ("optimum", "gptqmodel") if importlib.util.find_spec(m) is None]
    if missing:
        raise DependencyError(
            f"{art_path}: a GPTQ checkpoint (quant_method gptq) runs in transformers only with "
            f"optimum and gptqmodel, and {' and '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} not installed; validate its "
            "compressed-tensors twin (--to safetensors) or load it with GPTQModel"
        )


def _onnx_weights(p: Path, on_progress: Progress | None) -> dict[str, np.ndarray]:
    try:
        from quantport.formats.onnx_read import onnx_weights
    except ImportError as exc:
        raise QuantportError("this quantport has no ONNX weight reader "
                             "(quantport.formats.onnx_read)") from exc
    d = p if p.is_dir() else p.parent
    weights = onnx_weights(d)
    if on_progress:
        on_progress("dequantize", len(weights), len(weights))
    return weights


# ------------------------------------------------------------------------------- validation
def _reference_dir(against: str | os.PathLike[str] | None, tmp: Path) -> tuple[Path, Any]:
    from quantport.models import open_source
    from quantport.pipeline import export_dense
    from quantport.readers import GGUFSource, HFCheckpoint

    src = open_source(against)
    if isinstance(src, GGUFSource):
        out = tmp / "reference"
        export_dense(src, out, dtype="F32")
        return out, HFCheckpoint(out)
    return Path(src.path), src


class _Timer:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        t = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - t


def _spm_reference(ref_dir: Path) -> Any | None:
    """The source's SentencePiece model, when its tokenizer is one: ``tokenizer.model`` that
    sentencepiece loads, beside a ``tokenizer.json`` (if any) of SentencePiece's shape.

    Its ids are the source's own: the ``tokenizer.json`` transformers 5 converts from it
    tokenizes a leading space and runs of spaces differently (Metaspace with
    ``prepend_scheme="first"``: " x" gives "▁x" where SentencePiece gives "▁", "▁x"), and
    llama.cpp (its GGUF scores) and onnxruntime-genai (the rebuilt tokenizer.json the ONNX writer
    exports) follow SentencePiece.
    """
    from quantport.readers.spm import is_spm_tokenizer_json

    model = ref_dir / "tokenizer.model"
    if not model.is_file():
        return None
    tj = ref_dir / "tokenizer.json"
    if tj.is_file():
        try:
            if not is_spm_tokenizer_json(json.loads(tj.read_text(encoding="utf-8"))):
                return None
        except (OSError, ValueError):
            return None
    try:
        import sentencepiece
    except ImportError:
        return None
    sp = sentencepiece.SentencePieceProcessor()
    try:
        sp.LoadFromSerializedProto(model.read_bytes())
    except (OSError, RuntimeError):  # e.g. Llama 3's tiktoken "tokenizer.model"
        return None
    return sp


def _token_check(references: list[tuple[str, list[int]]], runtime_ids: list[int] | None, n: int,
                 tok: Any, reason: str = "") -> Check:
    """The runtime's tokenizer against the source's on the first ``n`` tokens of the text.

    ``references`` are the source's ids as each of its tokenizers gives them (its
    SentencePiece model first where it has one, then transformers' ``AutoTokenizer``); the
    runtime passes when it equals one of them, and the detail names which.
    """
    name = "tokenizer_ids_match"
    if runtime_ids is None:
        return Check(name, CORRECTNESS, 0.0, 1.0, ">=", False, reason)
    b = np.full(n, -2, dtype=np.int64)
    b[: min(n, len(runtime_ids))] = runtime_ids[:n]
    best: tuple[float, str, np.ndarray] | None = None
    for label, source_ids in references:
        a = np.full(n, -1, dtype=np.int64)
        a[: min(n, len(source_ids))] = source_ids[:n]
        same = a == b
        if best is None or same.mean() > best[0]:
            best = (float(same.mean()), label, a)
    assert best is not None
    frac, label, a = best
    same = a == b
    detail = f"{n} tokens compared with the source's {label}"
    if not same.all():
        i = int(np.argmin(same))

        def show(t: int) -> str:  # the id, and what it is in the source's vocabulary
            return "none" if t < 0 else f"{int(t)} ({tok.convert_ids_to_tokens(int(t))!r})"

        others = "; nor equal to its " + ", ".join(lb for lb, _ in references if lb != label) \
            if len(references) > 1 else ""
        detail = (f"first difference at token {i}: source id {show(a[i])}, runtime id "
                  f"{show(b[i])}; {int((~same).sum())} of {n} differ from the source's "
                  f"{label}{others}")
    return Check.of(name, CORRECTNESS, frac, 1.0, ">=", detail)


def _runtime_tokens(art: Any, art_path: Path, texts: list[str],
                    special: bool) -> tuple[list[int] | None, str]:
    """The runtime's own token ids for ``texts`` (concatenated), or ``None`` and why."""
    if isinstance(art, LlamaCppLM):
        ids: list[int] = []
        for t in texts:
            ids.extend(art.tokenize(t, add_special=special))
        return ids, ""
    if (art_path / "genai_config.json").is_file() and not special \
            and importlib.util.find_spec("onnxruntime_genai") is not None:
        # onnxruntime-genai serves the directory with its own tokenizer (onnxruntime-extensions
        # reading tokenizer.json): that is the runtime's tokenizer to check
        from quantport.validate.ort import genai_tokenize

        return genai_tokenize(art_path, texts)
    try:
        tok = _tokenizer(art_path)
    except (OSError, ValueError) as exc:
        return None, f"transformers finds no tokenizer in {art_path} ({exc.__class__.__name__})"
    ids = []
    for t in texts:
        ids.extend(tok(t, add_special_tokens=special)["input_ids"])
    return ids, ""


def _open_runtime(art_path: Path, causal: bool, ctx: int,
                  threads: int | None = None) -> tuple[str, Any]:
    from quantport.validate.ort import OrtLM, is_onnx_artifact

    if is_onnx_artifact(art_path):
        return "onnxruntime", OrtLM(art_path, threads=threads)
    if art_path.is_dir():
        return "transformers", TransformersLM(art_path, causal=causal)
    if art_path.suffix == ".gguf":
        if causal:
            return "llama.cpp", LlamaCppLM(art_path, n_ctx=ctx)
        return "llama.cpp", LlamaCppLM(art_path, n_ctx=512, embedding=True)
    raise QuantportError(
        f"{art_path}: unknown artifact type (expected a checkpoint directory, an ONNX "
        "directory or .onnx, or .gguf)"
    )


def _weights_model(ref: TransformersLM, art_path: Path,
                   on_progress: Progress | None) -> tuple[TransformersLM | None, str]:
    """The source architecture with the artifact's weights as quantport reads them, or
    ``None`` and why quantport cannot read them."""
    try:
        weights = artifact_weights(art_path, on_progress)
    except QuantportError as exc:  # e.g. a GGUF architecture the GGUF reader cannot import
        return None, f"quantport cannot read the artifact's weights: {exc}"
    return ref.with_weights(weights), ""


def validate(
    artifact: str | os.PathLike[str],
    against: str | os.PathLike[str] | None = None,
    *,
    text: str | os.PathLike[str] | None = None,
    ctx: int = 512,
    n_windows: int = 8,
    thresholds: Thresholds | None = None,
    correctness: CorrectnessLimits | None = None,
    on_progress: Progress | None = None,
    raise_on_fail: bool = False,
    threads: int | None = None,
    n_generate: int = 32,
) -> ValidationReport:
    """Check that an artifact's runtime computes what its weights mean (correctness), and
    measure how far it is from its source model on real text (quality).

    Args:
        artifact: a safetensors checkpoint directory, an ONNX directory (``model.onnx``) or a
            ``.gguf`` file.
        against: the source (checkpoint directory, GGUF, alias); ``None`` = default model.
        text: evaluation text file (default: WikiText-2 test split).
        ctx: tokens per window.
        n_windows: number of windows.
        thresholds: quality limits (default: :meth:`Thresholds.for_bits` of the artifact).
        correctness: kernel-noise limits (default: :meth:`CorrectnessLimits.for_runtime`).
        on_progress: progress callback (phases ``dequantize`` and ``validate``).
        raise_on_fail: raise :class:`ValidationFailed` instead of returning a failed report.
        threads: ONNX Runtime's intra-op threads (default: the cores available, at most 8).
        n_generate: ONNX decoders: tokens of greedy decoding through the graph's KV cache
            compared with quantport's torch forward of the graph's weights (0: no check).

    Returns:
        The report; ``correct`` says whether the correctness gate held, ``quality_passed``
        whether every quality threshold held, ``passed`` both.
    """
    art_path = Path(artifact)
    if not art_path.exists():
        raise QuantportError(f"{art_path}: artifact not found")
    from quantport.validate.ort import check_external_data, is_onnx_artifact, onnx_model_path

    if is_onnx_artifact(art_path):  # before anything slow: a missing or short model.onnx.data
        check_external_data(onnx_model_path(art_path))
    else:
        _check_safetensors_files(art_path)
    art_cfg = _artifact_config(art_path)
    check_runtime(art_path)
    th = thresholds or Thresholds.for_bits(artifact_bits(art_path))
    timer = _Timer()
    start = time.perf_counter()
    _torch_threads()
    with tempfile.TemporaryDirectory(prefix="quantport-val-") as tmpd:
        with timer("load"):
            ref_dir, ref_src = _reference_dir(against, Path(tmpd))
            _check_same_model(art_path, art_cfg, ref_src, against)
            causal = ref_src.architecture.causal
            n_ctx = ref_src.config.get("max_position_embeddings")
            if causal and isinstance(n_ctx, int) and ctx > n_ctx:
                # positions the model was not trained for (llama.cpp even fails to create its
                # context, which read as a broken artifact)
                raise ConfigError(f"--ctx {ctx} is beyond the model's context length {n_ctx} "
                                  f"(max_position_embeddings); use --ctx {n_ctx} or less")
            tok = _tokenizer(ref_dir)
            text_path = Path(text) if text else default_text()
            if causal:
                # one window's worth, before the runtime and the weights load (the windows
                # themselves are cut by _causal)
                with quiet_loading():
                    load_windows(tok, text_path, ctx, 1)
            elif not _sentences(text_path, 1):
                raise QuantportError(
                    f"{text_path}: no line of {_MIN_WORDS} or more words to embed; an encoder "
                    "is scored on sentences (default text: WikiText-2 test split)")
            runtime, art = _open_runtime(art_path, causal, ctx, threads)
            ref = TransformersLM(ref_dir, causal=causal)
        cl = correctness or CorrectnessLimits.for_runtime(runtime)
        with timer("load_weights"):
            ir, ir_reason = _weights_model(ref, art_path, on_progress)
            if ir is not None and getattr(art, "dynamic_quant_inputs", None):
                # W8A8: the graph's meaning includes its run-time activation quantization
                ir.quantize_inputs(art.dynamic_quant_inputs)
        if causal:
            report = _causal(art, ref, ir, ir_reason, tok, text_path, ctx, n_windows, cl,
                             runtime, art_path, timer, on_progress,
                             sp=_spm_reference(ref_dir))
            if runtime == "onnxruntime" and n_generate > 0:
                with timer("generate"):
                    report.checks.append(asdict(_generate_check(
                        art, ir, ir_reason, report, windows_prompt(tok, text_path), n_generate)))
        else:
            report = _encoder(art, ref, ir, ir_reason, tok, text_path, cl, runtime, art_path,
                              timer, on_progress)
        report.reference = str(ref_dir)
    report.correctness_limits = asdict(cl)
    report.timings = {k: round(v, 3) for k, v in timer.seconds.items()}
    report.timings["total"] = round(time.perf_counter() - start, 3)
    return _judge(report, th, raise_on_fail)


def _causal(art: Any, ref: TransformersLM, ir: TransformersLM | None, ir_reason: str, tok: Any,
            text_path: Path, ctx: int, n_windows: int, cl: CorrectnessLimits, runtime: str,
            art_path: Path, timer: _Timer, on_progress: Progress | None,
            sp: Any = None) -> ValidationReport:
    with timer("tokenize"), quiet_loading():  # no "sequence longer than the model" warning
        prefix, ids = _tokenize_prefix(tok, _read_text(text_path), ctx * n_windows)
        windows = _cut(ids, ctx, n_windows, text_path)
        n = sum(len(w) for w in windows)
        runtime_ids, why = _runtime_tokens(art, art_path, [prefix], special=False)
        refs = [("tokenizer.json (transformers)", ids)]
        if sp is not None:
            # the text as plain text: SentencePiece never matches control tokens in it
            refs.insert(0, ("SentencePiece model (tokenizer.model)",
                            [int(i) for i in sp.encode(prefix)]))
        tok_check = _token_check(refs, runtime_ids, n, tok, why)
    quality = LogitStats()
    weights = LogitStats()
    floor = LogitStats()  # quantport's forward in float64 against itself in float32 (W8A8)
    for i, w in enumerate(windows):
        first = len(w) // 2
        target = w[first + 1 :]
        with timer("forward_reference"):
            r = ref.logits(w, first)[:-1]
        with timer("forward_runtime"):
            a = art.logits(w, first)[:-1]
        with timer("metrics"):
            lp_a = log_softmax(a)
            top_a = lp_a.argmax(-1)
            quality.add(log_softmax(r), lp_a, target, r, a, top_art=top_a)
        del r
        if ir is not None:
            with timer("forward_weights"):
                q = ir.logits(w, first)[:-1]
            with timer("metrics"):
                lp_q = log_softmax(q)
                weights.add(lp_q, lp_a, target, q, a, top_art=top_a)
            if ir.quantized_inputs:
                with timer("forward_weights"):
                    q64 = ir.logits64(w, first)[:-1]
                floor.add(log_softmax(q64), lp_q, target)
        if on_progress:
            on_progress("validate", i + 1, len(windows))
    m = quality.summary()
    report = ValidationReport(str(art_path), "", runtime, True, **m, n_windows=len(windows),
                              window=ctx)
    checks = [tok_check]
    max_kld, min_top1, why = cl.max_kld, cl.min_top1, ""
    fm = floor.summary() if floor.n else None
    if fm is not None:
        # A graph that quantizes its activations at run time (W8A8) turns float
        # rounding into whole quantization steps: a sum that lands on the other side of a
        # rounding boundary moves a value by one step (over 20 for SmolLM2's down_proj
        # inputs), and the steps compound over the layers. The runtime's float32 kernels and
        # quantport's torch forward sum in different orders, so they part by as much as this
        # same forward does from itself in float64 (measured: KLD 0.28 both ways on SmolLM2,
        # while each layer on the same input agrees to 1e-6). The limits widen to twice that
        # floor; a wrong weight or layout still costs nats (KLD 10 for a saturating kernel).
        if 2 * fm["kld_mean"] > max_kld:
            max_kld = 2 * fm["kld_mean"]
            min_top1 = min(min_top1, 1 - 2 * (1 - fm["top1_agreement"]))
            per = "/".join(sorted(set(getattr(art, "dynamic_quant_inputs", {}).values())))
            why = (f"; limits widened to twice the float32-vs-float64 difference of that "
                   f"forward itself (KLD {fm['kld_mean']:.3g}, top-1 "
                   f"{fm['top1_agreement']:.3g}): the graph quantizes activations per {per} "
                   "at run time, which amplifies float rounding")
    if ir is not None:
        wm = weights.summary()
        # the runtime against quantport's torch forward of the very weights the artifact holds
        report.extra = {
            "ir_kld_mean": wm["kld_mean"],
            "ir_kld_max": wm["kld_max"],
            "ir_top1_agreement": wm["top1_agreement"],
            "ir_max_abs_logit_diff": wm["max_abs_logit_diff"],
            "ir_ppl": wm["ppl_reference"],
        }
        if fm is not None:
            report.extra["ir_float64_kld_mean"] = fm["kld_mean"]
            report.extra["ir_float64_top1_agreement"] = fm["top1_agreement"]
        checks += [
            Check.of("weights_kld_mean", CORRECTNESS, wm["kld_mean"], max_kld, "<=",
                     "runtime vs quantport's forward of the artifact's weights" + why),
            Check.of("weights_top1_agreement", CORRECTNESS, wm["top1_agreement"], min_top1,
                     ">=", "runtime vs quantport's forward of the artifact's weights" + why),
        ]
    else:
        checks.append(Check("weights_kld_mean", CORRECTNESS, None, cl.max_kld, "<=", None,
                            ir_reason))
    report.checks = [asdict(c) for c in checks]
    return report


def windows_prompt(tok: Any, text_path: Path, n: int = 32) -> np.ndarray:
    """The prompt of the generation check: the first ``n`` tokens of the evaluation text."""
    _, ids = _tokenize_prefix(tok, _read_text(text_path), n)
    return np.asarray(ids[:n], dtype=np.int64)


def _generate_check(art: Any, ir: TransformersLM | None, ir_reason: str,
                    report: ValidationReport, prompt: np.ndarray, n: int) -> Check:
    """Greedy decoding of ``n`` tokens by the runtime through its KV cache against greedy
    decoding of quantport's torch forward of the same weights.

    The tokens must be equal. A divergence passes only on a near tie: where torch's logits
    of the two tokens differ by at most twice the largest logit difference the runtime showed
    against the same forward on the evaluation windows (its kernel noise, e.g. MatMulNBits'
    int8 activations at accuracy_level 4), either token is what the weights mean.

    The check's value is the share of equal tokens (limit 1) when all are equal; after a
    divergence it is that logit gap, against the allowance as its limit (``<=``).
    """
    name = "generate_greedy_match"
    if ir is None:
        return Check(name, CORRECTNESS, None, 1.0, ">=", None, ir_reason)
    got, got_rows = art.generate(prompt, n)
    want, want_rows = ir.generate(prompt, n)
    same = np.asarray(got) == np.asarray(want)
    k = n if same.all() else int(np.argmin(same))
    # the rows up to the first divergence had the same prefix on both sides
    upto = min(k + 1, n)
    diff = float(np.abs(got_rows[:upto] - want_rows[:upto]).max())
    report.extra["generate_tokens"] = got
    report.extra["ir_generate_tokens"] = want
    report.extra["ir_generate_max_abs_logit_diff"] = diff
    if k == n:
        return Check(name, CORRECTNESS, 1.0, 1.0, ">=", True,
                     f"{n} tokens after a {len(prompt)}-token prompt, through the KV cache")
    noise = 2 * float(report.extra.get("ir_max_abs_logit_diff") or 0.0)
    gap = float(want_rows[k][want[k]] - want_rows[k][got[k]])
    # after a divergence the check is the near-tie test: value, limit and op say it (the
    # share of equal tokens, below 1, beside "passed" would read as a failure)
    if gap <= noise:
        return Check(name, CORRECTNESS, gap, noise, "<=", True,
                     f"{k} of {n} tokens equal, then a near tie: torch's logits of its token "
                     f"{want[k]} and the runtime's {got[k]} differ by {gap:.3g} <= {noise:.3g} "
                     "(twice the runtime's largest logit difference on the windows)")
    return Check(name, CORRECTNESS, gap, noise, "<=", False,
                 f"diverged at token {k} of {n}: runtime {got[k]}, torch {want[k]} (torch's "
                 f"logit gap {gap:.3g} > {noise:.3g}, twice the runtime's kernel noise on the "
                 "windows)")


#: an encoder is scored on the text's lines of at least this many words (not headings)
_MIN_WORDS = 8


def _sentences(text_path: Path, n: int) -> list[str]:
    lines = [ln.strip() for ln in _read_text(text_path).splitlines()]
    return [ln for ln in lines
            if len(ln.split()) >= _MIN_WORDS and not ln.startswith("=")][:n]


def _check_safetensors_files(art_path: Path) -> None:
    """Read every safetensors header of a checkpoint directory (or file) before a runtime
    loads it: a truncated or corrupt shard then gets quantport's one-line reason instead of
    the runtime's traceback.

    Raises:
        FormatError: a header that does not parse or tensors past the end of their file.
    """
    from quantport.formats.safetensors import SafetensorsFile

    files = (sorted(art_path.glob("*.safetensors")) if art_path.is_dir()
             else [art_path] if art_path.suffix == ".safetensors" else [])
    if art_path.is_dir():
        # transformers' own message for these is about a model_type key
        if not files and not any(art_path.glob("pytorch_model*.bin")):
            raise QuantportError(f"{art_path}: no weights (.safetensors, pytorch_model.bin or "
                                 "model.onnx); give a checkpoint directory, an ONNX directory "
                                 "or a .gguf file")
        if not (art_path / "config.json").is_file():
            raise QuantportError(f"{art_path}: no config.json beside the weights; copy the "
                                 "whole checkpoint directory")
    for f in files:
        SafetensorsFile(f)  # the constructor checks the header against the file size


def _artifact_config(art_path: Path) -> dict[str, Any] | None:
    """The sizes an artifact records (GGUF: from its metadata, whose header is checked on the
    way), or None.

    Raises:
        QuantportError: a GGUF that is an importance matrix, not a model.
        FormatError: a GGUF whose header does not parse.
    """
    if art_path.suffix == ".gguf":
        # the metadata only (an architecture quantport cannot import as a source, such as
        # BERT, still validates): llama.cpp's names for the two shapes every model has
        from quantport.formats.gguf_file import scan_gguf

        meta = scan_gguf(art_path).metadata
        if meta.get("general.type") == "imatrix":
            raise QuantportError(
                f"{art_path}: an importance matrix (general.type imatrix), not a model; "
                "validate the GGUF quantized with it")
        arch = meta.get("general.architecture")
        return {"hidden_size": meta.get(f"{arch}.embedding_length"),
                "num_hidden_layers": meta.get(f"{arch}.block_count")}
    cfg = (art_path if art_path.is_dir() else art_path.parent) / "config.json"
    if not cfg.is_file():
        return None
    try:
        data = json.loads(cfg.read_text())
    except (OSError, ValueError):
        return None  # the runtime's own loader reports it
    return data if isinstance(data, dict) else None


def _check_same_model(art_path: Path, cfg: dict[str, Any] | None, ref_src: Any,
                      against: Any) -> None:
    """Refuse an artifact that cannot be a conversion of the reference: other shapes (an
    encoder against a decoder, another hidden size, layer count or vocabulary), which the
    runtimes would otherwise report as a shape error deep inside a forward pass.

    ``cfg``: :func:`_artifact_config` of the artifact.

    Raises:
        QuantportError: the artifact's and the reference's configs disagree.
    """
    if cfg is None:
        return
    ref = ref_src.config
    # shapes only: model_type differs between equivalent checkpoints (a Mistral GGUF imports
    # as llama)
    keys = ("hidden_size", "num_hidden_layers", "vocab_size")
    diffs = [f"{k} {cfg[k]!r} against {ref[k]!r}" for k in keys
             if cfg.get(k) is not None and ref.get(k) is not None and cfg[k] != ref[k]]
    if diffs:
        raise QuantportError(
            f"{art_path} is not a conversion of the reference {against or 'smollm2'} "
            f"({'; '.join(diffs)}); pass the source it was converted from with --against")


def _encoder(art: Any, ref: TransformersLM, ir: TransformersLM | None, ir_reason: str, tok: Any,
             text_path: Path, cl: CorrectnessLimits, runtime: str, art_path: Path, timer: _Timer,
             on_progress: Progress | None) -> ValidationReport:
    with timer("tokenize"):
        if runtime == "llama.cpp":
            # llama.cpp tokenizes and embeds whole strings: use only sentences that fit the
            # reference's 128-token window, so both sides see exactly the same tokens
            sents = [t for t in _sentences(text_path, 256)
                     if len(tok(t)["input_ids"]) <= 128][:32]
        elif runtime == "onnxruntime":
            sents = _sentences(text_path, 256)
        else:
            sents = _sentences(text_path, 64)
        source_ids: list[int] = []
        for s in sents:
            source_ids.extend(tok(s)["input_ids"])
        runtime_ids, why = _runtime_tokens(art, art_path, sents, special=True)
        tok_check = _token_check([("tokenizer (transformers)", source_ids)], runtime_ids,
                                 len(source_ids), tok, why)
    cos: list[float] = []
    ir_cos: list[float] = []
    max_abs = 0.0

    def cosine(x: np.ndarray, y: np.ndarray) -> list[float]:
        return list((x * y).sum(1) / (np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1)))

    for i in range(0, len(sents), 16):
        batch = sents[i : i + 16]
        with timer("forward_runtime"):
            a = art.embed_texts(batch, tok)
        with timer("forward_reference"):
            r = ref.embed_texts(batch, tok)
        if runtime == "onnxruntime":
            # the graph's sentence_embedding is normalised (sentence-transformers' Normalize
            # module); the reference's mean pooling is not: compare directions
            a = a / np.linalg.norm(a, axis=1, keepdims=True)
            r = r / np.linalg.norm(r, axis=1, keepdims=True)
        max_abs = max(max_abs, float(np.abs(a - r).max()))
        cos.extend(cosine(a, r))
        if ir is not None:
            with timer("forward_weights"):
                ir_cos.extend(cosine(a, ir.embed_texts(batch, tok)))
        if on_progress:
            on_progress("validate", min(i + 16, len(sents)), len(sents))
    report = ValidationReport(str(art_path), "", runtime, True, cosine_mean=float(np.mean(cos)),
                              cosine_min=float(np.min(cos)), max_abs_logit_diff=max_abs,
                              n_windows=len(sents), window=128)
    checks = [tok_check]
    if ir is not None:
        report.extra = {"ir_cosine_min": float(np.min(ir_cos)),
                        "ir_cosine_mean": float(np.mean(ir_cos))}
        checks.append(Check.of("weights_cosine_min", CORRECTNESS, float(np.min(ir_cos)),
                               cl.min_cosine, ">=",
                               "runtime vs quantport's forward of the artifact's weights"))
    else:
        checks.append(Check("weights_cosine_min", CORRECTNESS, None, cl.min_cosine, ">=", None,
                            ir_reason))
    report.checks = [asdict(c) for c in checks]
    return report


def _judge(report: ValidationReport, th: Thresholds, raise_on_fail: bool) -> ValidationReport:
    report.thresholds = asdict(th)
    ratio = (report.ppl / report.ppl_reference
             if report.ppl is not None and report.ppl_reference else None)
    quality = [
        Check.of("kld_mean", QUALITY, report.kld_mean, th.max_kld, "<="),
        Check.of("top1_agreement", QUALITY, report.top1_agreement, th.min_top1, ">="),
        Check.of("ppl_ratio", QUALITY, ratio, th.max_ppl_ratio, "<="),
        Check.of("cosine_mean", QUALITY, report.cosine_mean, th.min_cosine, ">="),
    ]
    # a check with no figure does not apply to this model (cosine for decoders, PPL for
    # encoders); one with a figure and no limit was disabled and is still shown
    report.checks += [asdict(c) for c in quality if c.value is not None]
    checks = [Check(**c) for c in report.checks]
    report.failures = [c.describe() for c in checks if c.passed is False]
    report.correct = not any(c.passed is False for c in checks if c.group == CORRECTNESS)
    report.quality_passed = not any(c.passed is False for c in checks if c.group == QUALITY)
    report.passed = report.correct and report.quality_passed
    if not report.passed and raise_on_fail:
        what = "correctness" if not report.correct else "quality"
        raise ValidationFailed(
            f"{report.artifact}: {what} check failed: {'; '.join(report.failures)}", report)
    return report
