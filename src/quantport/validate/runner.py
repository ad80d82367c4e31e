"""Validation: run the artifact in the runtime that will serve it and compare with the source.

* safetensors checkpoints are loaded by transformers itself (with compressed-tensors for
  quantized ones), not by quantport;
* GGUF files are loaded by llama.cpp (llama-cpp-python, ``logits_all=True``).

The reference is the source checkpoint run by transformers in float32. Both sides see the same
token ids (the source tokenizer's), window by window over the evaluation text.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from quantport._fixtures import wikitext_dir
from quantport.errors import QuantportError, ValidationFailed
from quantport.validate.metrics import LogitStats

__all__ = [
    "Thresholds",
    "ValidationReport",
    "artifact_bits",
    "default_text",
    "load_windows",
    "validate",
]

log = logging.getLogger(__name__)
Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class Thresholds:
    """Pass/fail limits. ``None`` disables a check.

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


# nominal weight bits of each llama.cpp file type (general.file_type, llama_ftype)
_FTYPE_BITS = {0: 16, 1: 16, 32: 16, 7: 8, 18: 6, 8: 5, 9: 5, 16: 5, 17: 5, 2: 4, 3: 4, 14: 4,
               15: 4, 25: 4, 11: 3, 12: 3, 13: 3, 10: 2}


def artifact_bits(path: str | os.PathLike[str]) -> int:
    """Nominal weight precision of an artifact: 16 when it is not quantized.

    GGUF: from ``general.file_type``; safetensors: from ``quantization_config``.
    """
    p = Path(path)
    if p.suffix == ".gguf" and p.is_file():
        from quantport.formats.gguf_file import scan_gguf

        return _FTYPE_BITS.get(int(scan_gguf(p).metadata.get("general.file_type", 0)), 4)
    cfg = p / "config.json"
    if p.is_dir() and cfg.is_file():
        try:
            qc = json.loads(cfg.read_text(encoding="utf-8")).get("quantization_config") or {}
        except json.JSONDecodeError:
            return 16
        groups = qc.get("config_groups") or {}
        bits = [g.get("weights", {}).get("num_bits") for g in groups.values()]
        bits = [b for b in bits if isinstance(b, int)]
        return min(bits) if bits else 16
    return 16


@dataclass
class ValidationReport:
    """Result of comparing an artifact with its source.

    The metric keys (``ppl``, ``ppl_reference``, ``kld_mean``, ``top1_agreement``,
    ``max_abs_logit_diff``) are ``None`` where they do not apply (encoders have no next-token
    distribution; they report ``cosine_mean``/``cosine_min`` of the embeddings instead).
    """

    artifact: str
    reference: str
    runtime: str
    passed: bool
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
    failures: list[str] = field(default_factory=list)
    thresholds: dict[str, float | None] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

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

    return AutoTokenizer.from_pretrained(str(path))


def load_windows(tokenizer: Any, text_path: Path, ctx: int, n_windows: int) -> list[np.ndarray]:
    """Tokenize the text and cut it into ``n_windows`` consecutive windows of ``ctx`` tokens."""
    try:
        text = Path(text_path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise QuantportError(f"{text_path}: evaluation text not found") from None
    except UnicodeDecodeError:
        raise QuantportError(f"{text_path}: evaluation text is not UTF-8") from None
    # tokenizing the whole 1.3 MB file takes seconds; take a prefix that surely suffices
    need = ctx * n_windows
    ids: list[int] = []
    chars = need * 8
    while True:
        ids = tokenizer(text[:chars], add_special_tokens=False)["input_ids"]
        if len(ids) >= need or chars >= len(text):
            break
        chars *= 2
    if len(ids) < ctx + 2:
        raise QuantportError(f"{text_path}: text too short for one window of {ctx} tokens")
    n = min(n_windows, len(ids) // ctx)
    return [np.asarray(ids[i * ctx : (i + 1) * ctx], dtype=np.int64) for i in range(n)]


class TransformersLM:
    """A Hugging Face checkpoint run by transformers on CPU in float32."""

    def __init__(self, path: str | os.PathLike[str], *, causal: bool = True,
                 state_dict: dict[str, np.ndarray] | None = None) -> None:
        import torch
        from transformers import AutoModel, AutoModelForCausalLM

        cls = AutoModelForCausalLM if causal else AutoModel
        try:
            self.model = cls.from_pretrained(str(path), dtype=torch.float32)
        except (OSError, ValueError, RuntimeError) as exc:
            raise QuantportError(f"{path}: transformers cannot load it ({str(exc).splitlines()[0]})") from exc
        if state_dict is not None:
            # torch wants writable memory; source tensors may be read-only file maps
            sd = {k: torch.from_numpy(np.require(v, requirements=["C", "W"]))
                  for k, v in state_dict.items()}
            missing = set(sd) - set(self.model.state_dict())
            if missing:
                raise QuantportError(f"tensors {sorted(missing)[:3]} do not belong to the model")
            self.model.load_state_dict(sd, strict=False)
            if getattr(self.model.config, "tie_word_embeddings", False):
                self.model.tie_weights()
        self.model.eval()
        self.causal = causal

    def logits(self, ids: np.ndarray) -> np.ndarray:
        """Next-token logits for every position, float32 ``[n, vocab]``."""
        import torch

        with torch.inference_mode():
            out = self.model(torch.as_tensor(ids)[None])
        return out.logits[0].float().numpy()

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


class LlamaCppLM:
    """A GGUF file run by llama.cpp through llama-cpp-python, full-vocabulary logits."""

    def __init__(self, path: str | os.PathLike[str], *, n_ctx: int = 512,
                 embedding: bool = False) -> None:
        try:
            from llama_cpp import Llama
        except ImportError as exc:  # pragma: no cover - a dependency of the package
            raise QuantportError("llama-cpp-python is required to run GGUF files") from exc
        try:
            self.llm = Llama(model_path=str(path), n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx,
                             logits_all=not embedding, embedding=embedding, verbose=False,
                             n_threads=max(1, min(os.cpu_count() or 1, 8)))
        except (ValueError, RuntimeError) as exc:
            raise QuantportError(f"{path}: llama.cpp cannot load it ({exc})") from exc

    def logits(self, ids: np.ndarray) -> np.ndarray:
        """Logits for every position of one window."""
        self.llm.reset()
        self.llm.eval([int(i) for i in ids])
        return np.array(self.llm.scores[: self.llm.n_tokens], dtype=np.float32)

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


def _reference_dir(against: str | os.PathLike[str] | None, tmp: Path) -> tuple[Path, Any]:
    from quantport.writers.safetensors import export_dense
    from quantport.models import open_source
    from quantport.readers import GGUFSource, HFCheckpoint

    src = open_source(against)
    if isinstance(src, GGUFSource):
        out = tmp / "reference"
        export_dense(src, out, dtype="F32")
        return out, HFCheckpoint(out)
    return Path(src.path), src


def _ir_model(gguf_path: Path, ref_dir: Path) -> TransformersLM:
    """The source architecture loaded with the GGUF's own weights, dequantized by quantport."""
    from quantport.readers import GGUFSource

    src = GGUFSource(gguf_path)
    state = {n: src.get(n) for n in src.names()}
    return TransformersLM(ref_dir, causal=True, state_dict=state)


def _causal_compare(art: Any, ref: Any, windows: list[np.ndarray], on_progress: Progress | None,
                    extra_ref: Any = None) -> tuple[dict[str, float], dict[str, float] | None]:
    stats = LogitStats()
    ir_stats = LogitStats() if extra_ref is not None else None
    for i, w in enumerate(windows):
        r = ref.logits(w)
        a = art.logits(w)
        stats.add(r, a, w, len(w) // 2)
        if ir_stats is not None:
            ir_stats.add(extra_ref.logits(w), a, w, len(w) // 2)
        if on_progress:
            on_progress("validate", i + 1, len(windows))
    return stats.summary(), (ir_stats.summary() if ir_stats else None)


def validate(
    artifact: str | os.PathLike[str],
    against: str | os.PathLike[str] | None = None,
    *,
    text: str | os.PathLike[str] | None = None,
    ctx: int = 512,
    n_windows: int = 8,
    thresholds: Thresholds | None = None,
    on_progress: Progress | None = None,
    raise_on_fail: bool = False,
) -> ValidationReport:
    """Compare an artifact's outputs with its source model's on real text.

    Args:
        artifact: a safetensors checkpoint directory or a ``.gguf`` file.
        against: the source (checkpoint directory, GGUF, alias); ``None`` = default model.
        text: evaluation text file (default: WikiText-2 test split).
        ctx: tokens per window.
        n_windows: number of windows.
        thresholds: pass/fail limits (default: :meth:`Thresholds.for_bits` of the artifact).
        on_progress: progress callback.
        raise_on_fail: raise :class:`ValidationFailed` instead of returning a failed report.

    Returns:
        The report; ``passed`` says whether every threshold held.
    """
    art_path = Path(artifact)
    if not art_path.exists():
        raise QuantportError(f"{art_path}: artifact not found")
    th = thresholds or Thresholds.for_bits(artifact_bits(art_path))
    with tempfile.TemporaryDirectory(prefix="quantport-val-") as tmpd:
        ref_dir, ref_src = _reference_dir(against, Path(tmpd))
        causal = ref_src.architecture.causal
        tok = _tokenizer(ref_dir)
        text_path = Path(text) if text else default_text()
        ir_ref = None
        if art_path.is_dir():
            runtime = "transformers"
            art: Any = TransformersLM(art_path, causal=causal)
        elif art_path.suffix == ".gguf":
            runtime = "llama.cpp"
            if causal:
                art = LlamaCppLM(art_path, n_ctx=ctx)
                ir_ref = _ir_model(art_path, ref_dir)
            else:
                art = LlamaCppLM(art_path, n_ctx=512, embedding=True)
        elif art_path.suffix == ".onnx":
            raise QuantportError(f"{art_path}: ONNX validation is not available yet")
        else:
            raise QuantportError(
                f"{art_path}: unknown artifact type (expected a checkpoint directory or .gguf)"
            )
        ref = TransformersLM(ref_dir, causal=causal)
        if causal:
            windows = load_windows(tok, text_path, ctx, n_windows)
            metrics, ir_metrics = _causal_compare(art, ref, windows, on_progress, ir_ref)
            report = ValidationReport(str(art_path), str(ref_dir), runtime, True, **metrics,
                                      n_windows=len(windows), window=ctx)
            if ir_metrics is not None:
                # (a) the file means what the IR means: llama.cpp vs quantport's torch forward
                # of the very weights the file holds, dequantized by quantport
                report.extra = {
                    "ir_kld_mean": ir_metrics["kld_mean"],
                    "ir_top1_agreement": ir_metrics["top1_agreement"],
                    "ir_max_abs_logit_diff": ir_metrics["max_abs_logit_diff"],
                    "ir_ppl": ir_metrics["ppl_reference"],
                }
        else:
            if runtime == "llama.cpp":
                # llama.cpp tokenizes and embeds whole strings: use only sentences that fit the
                # reference's 128-token window, so both sides see exactly the same tokens
                sents = [t for t in _sentences(text_path, 256)
                         if len(tok(t)["input_ids"]) <= 128][:32]
            else:
                sents = _sentences(text_path, 64)
            report = _encoder_report(art, ref, tok, sents, runtime, str(art_path),
                                     str(ref_dir), on_progress)
    return _judge(report, th, raise_on_fail)


def _sentences(text_path: Path, n: int) -> list[str]:
    lines = [ln.strip() for ln in Path(text_path).read_text(encoding="utf-8").splitlines()]
    return [ln for ln in lines if len(ln.split()) >= 8 and not ln.startswith("=")][:n]


def _encoder_report(art: Any, ref: Any, tok: Any, sents: list[str], runtime: str,
                    art_name: str, ref_name: str,
                    on_progress: Progress | None) -> ValidationReport:
    cos: list[float] = []
    max_abs = 0.0
    for i in range(0, len(sents), 16):
        a = art.embed_texts(sents[i : i + 16], tok)
        r = ref.embed_texts(sents[i : i + 16], tok)
        max_abs = max(max_abs, float(np.abs(a - r).max()))
        cos.extend((a * r).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(r, axis=1)))
        if on_progress:
            on_progress("validate", min(i + 16, len(sents)), len(sents))
    return ValidationReport(art_name, ref_name, runtime, True, cosine_mean=float(np.mean(cos)),
                            cosine_min=float(np.min(cos)), max_abs_logit_diff=max_abs,
                            n_windows=len(sents), window=128)


def _judge(report: ValidationReport, th: Thresholds, raise_on_fail: bool) -> ValidationReport:
    fails = []
    report.thresholds = asdict(th)
    if report.kld_mean is not None and th.max_kld is not None and report.kld_mean > th.max_kld:
        fails.append(f"kld_mean {report.kld_mean:.4f} > {th.max_kld}")
    if (report.top1_agreement is not None and th.min_top1 is not None
            and report.top1_agreement < th.min_top1):
        fails.append(f"top1_agreement {report.top1_agreement:.4f} < {th.min_top1}")
    if (report.ppl is not None and report.ppl_reference and th.max_ppl_ratio is not None
            and report.ppl / report.ppl_reference > th.max_ppl_ratio):
        fails.append(f"ppl ratio {report.ppl / report.ppl_reference:.4f} > {th.max_ppl_ratio}")
    if (report.cosine_mean is not None and th.min_cosine is not None
            and report.cosine_mean < th.min_cosine):
        fails.append(f"cosine_mean {report.cosine_mean:.4f} < {th.min_cosine}")
    report.failures = fails
    report.passed = not fails
    if fails and raise_on_fail:
        raise ValidationFailed(f"{report.artifact}: validation failed: {'; '.join(fails)}", report)
    return report
