"""The calibration engine: the source model run one decoder layer at a time on calibration text.

Calibrated methods (GPTQ, AWQ, SmoothQuant) need statistics of every Linear layer's *input*:
the Hessian ``H = 2 X Xᵀ / n`` (GPTQ), per-channel mean and max of ``|x|`` (AWQ, SmoothQuant),
the mean of ``x²`` (llama.cpp's importance matrix). They are collected here, in one place, with
torch forward pre-hooks, and handed to the pure algorithms in :mod:`quantport.quant` as numpy
arrays.

How it runs (the layer-by-layer loop of the GPTQ reference, ``llama.py``, and llm-compressor's
sequential pipeline): the model is built from its config on the ``meta`` device, so it holds no
weights; the calibration windows are embedded; then for each decoder layer in turn only that
layer's weights are read from the source, the layer runs on all windows with hooks collecting
the statistics, the caller quantizes the layer (and may write its rounded weights back into it),
and the layer runs again to give the next layer its inputs -- the outputs of the already
quantized layers (*true-sequential*), or, with ``float_inputs``, the outputs of the float layer
from the first run (one run per layer). Peak memory is one layer plus two ``[windows, tokens,
hidden]`` activation buffers, whatever the model's size.

Inputs shared by several Linear layers (q/k/v read the same normed hidden states, gate/up
another) get one set of statistics: a hook recognises the very tensor it has already seen in
the same forward pass.

Encoders (BERT) run the same loop on *sentences* instead of windows
(:func:`calibration_sentences`: lines of the calibration text, each truncated at
``--calib-len`` tokens with its ``[CLS]``/``[SEP]``, padded to the longest with an attention
mask): the embeddings (word + position + token type, LayerNorm) give layer 0's input, every
layer runs with the padding masked out of attention, and the statistics count non-padding
tokens only -- a padded position's hidden state is never attended to, and never scored.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from quantport._fixtures import cache_dir, calibration_text, evaluation_text
from quantport.errors import ConfigError, QuantportError, UnsupportedQuantError
from quantport.readers.source import ModelSource

__all__ = [
    "DEFAULT_CALIBRATION_TEXT",
    "Sentences",
    "calibration_inputs",
    "calibration_sentences",
    "StatsCache",
    "cache_key",
    "InputStats",
    "LayerStats",
    "LayerwiseModel",
    "calibration_windows",
]

log = logging.getLogger(__name__)
Progress = Callable[[str, int, int], None]

#: WikiText-2 *validation* split (never calibrate on the test split used for evaluation).
DEFAULT_CALIBRATION_TEXT = calibration_text()
#: the evaluation text ``validate`` scores on: refused as calibration text
EVALUATION_TEXT = evaluation_text()
#: calibration windows run through a layer together (a batch of [windows, tokens, hidden]);
#: a GPU takes larger batches (its matmuls need them to be efficient)
_BATCH_TOKENS = 4096
_GPU_BATCH_TOKENS = 8192
#: largest activation buffer kept between two uses rather than recomputed
_KEEP_BYTES = 1 << 30


def _read_text(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise QuantportError(f"cannot read calibration text {path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError:
        raise ConfigError(f"calibration text {path} is not UTF-8 text; give a plain text file") from None
    return text


#: a calibration text whose sentence lines are mostly the evaluation text's is (part of) it
_OVERLAP_LINES, _OVERLAP_SHARE, _LINE_WORDS = 5, 0.5, 8


def _is_evaluation_text(path: Path, text: str) -> bool:
    """Whether ``text`` is the evaluation text, or a piece of it: the file itself, or a text
    of which at least half the lines of 8 or more words (and at least 5) are lines of the
    evaluation text (``head -c 200000 wiki.test.raw`` was accepted)."""
    try:
        if path.resolve() == EVALUATION_TEXT.resolve():
            return True
        if not EVALUATION_TEXT.is_file():
            return False
        lines = [ln.strip() for ln in text.splitlines()]
        lines = [ln for ln in lines if len(ln.split()) >= _LINE_WORDS]
        if len(lines) < _OVERLAP_LINES:
            return text == EVALUATION_TEXT.read_text(encoding="utf-8")
        eval_lines = {ln.strip() for ln in
                      EVALUATION_TEXT.read_text(encoding="utf-8").splitlines()}
    except (OSError, UnicodeDecodeError):
        return False
    shared = sum(ln in eval_lines for ln in lines)
    return shared >= _OVERLAP_LINES and shared >= _OVERLAP_SHARE * len(lines)


def _tokens(tokenizer_json: str, text: str, need: int) -> list[int]:
    """Token ids of the start of ``text`` (at least ``need`` tokens if the text has them)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(tokenizer_json)
    tok.no_padding()
    tok.no_truncation()
    # tokenize a prefix first (typical English text is < 8 characters per token); the whole
    # text only if the prefix is too short
    n_chars = max(4096, need * 8)
    while True:
        ids = tok.encode(text[:n_chars], add_special_tokens=False).ids
        if len(ids) >= need or n_chars >= len(text):
            return ids[: max(need, 0)] if len(ids) >= need else ids
        n_chars *= 2


def calibration_windows(
    source: ModelSource,
    text_path: str | os.PathLike[str] = DEFAULT_CALIBRATION_TEXT,
    samples: int = 128,
    length: int = 512,
) -> np.ndarray:
    """Token windows of a calibration text: ``[samples, length]`` int64 (fewer windows if the
    text is shorter, with a warning).

    The text is tokenized as a whole and cut into consecutive windows, as ``llama-imatrix``'s
    ``compute_imatrix`` cuts its chunks; the first token of each window becomes BOS when the
    tokenizer adds one.

    Raises:
        ConfigError: an empty text, a text shorter than one window, the evaluation text
            itself, a source without a tokenizer, or a window longer than the model's context.
    """
    from quantport.readers.gguf_vocab import vocab_from_hf

    path = Path(text_path)
    text = _read_text(path)
    _check_text(source, path, text, f"{length} tokens", length)
    ids = _tokens(source.tokenizer_files["tokenizer.json"], text, samples * length)
    n = min(samples, len(ids) // length)
    if n < 1:
        raise ConfigError(
            f"calibration text {path} has {len(ids)} tokens, less than one window of {length}; "
            "give a longer text or a smaller --calib-len"
        )
    if n < samples:
        log.warning("calibration text %s gives only %d windows of %d tokens (asked for %d)",
                    path.name, n, length, samples)
    vocab = vocab_from_hf(source.tokenizer_files, source.config, arch=source.architecture.name,
                          model_dir=source.path if source.path.is_dir() else None)
    windows = np.asarray(ids[: n * length], dtype=np.int64).reshape(n, length).copy()
    bos = vocab.special_ids.get("bos")
    if vocab.add_special.get("bos", vocab.model == "bert") and bos is not None:
        windows[:, 0] = int(bos)
    return windows


#: a calibration sentence has at least this many words and is not a heading (`` = Title =``):
#: the rule validate uses to pick its evaluation sentences (``validate.runner._sentences``)
MIN_SENTENCE_WORDS = 8


@dataclass(frozen=True)
class Sentences:
    """Padded calibration sentences for an encoder.

    Attributes:
        ids: ``[n, tokens]`` int64 token ids (``[CLS] ... [SEP]``, then padding).
        mask: ``[n, tokens]`` int64, 1 on real tokens, 0 on padding.
    """

    ids: np.ndarray
    mask: np.ndarray

    @property
    def shape(self) -> tuple[int, int]:
        """``(sentences, tokens)``, as a window array's shape."""
        return tuple(self.ids.shape)  # type: ignore[return-value]

    def array(self) -> np.ndarray:
        """ids and mask stacked (``[2, n, tokens]``): what the cache key hashes."""
        return np.stack([self.ids, self.mask])


def _check_text(source: ModelSource, path: Path, text: str, what: str, length: int) -> None:
    """Refuse an empty text, the evaluation text, a source without a tokenizer, or a
    ``length`` (``--calib-len``) beyond the model's context."""
    if not text.strip():
        raise ConfigError(f"calibration text {path} is empty; give a text of at least "
                          f"{what} (e.g. {DEFAULT_CALIBRATION_TEXT.name})")
    if _is_evaluation_text(path, text):
        raise ConfigError(
            f"{path} is the evaluation text validate scores on (or a piece of it); calibrate "
            f"on other text (default: {DEFAULT_CALIBRATION_TEXT})"
        )
    if "tokenizer.json" not in source.tokenizer_files:
        raise ConfigError(f"{source.path}: no tokenizer.json; the calibration text cannot be "
                          "tokenized")
    max_pos = int(source.config.get("max_position_embeddings") or length)
    if length > max_pos:
        raise ConfigError(f"--calib-len {length} exceeds the model's context of {max_pos} "
                          "tokens; use a shorter window")


def calibration_sentences(
    source: ModelSource,
    text_path: str | os.PathLike[str] = DEFAULT_CALIBRATION_TEXT,
    samples: int = 128,
    length: int = 512,
) -> Sentences:
    """Calibration sentences for an encoder: the first ``samples`` lines of the text with at
    least :data:`MIN_SENTENCE_WORDS` words that are not headings (the rule of validate's
    evaluation sentences), tokenized with the model's special tokens, truncated at ``length``
    tokens (``[SEP]`` kept, as the tokenizer truncates) -- or at the sentence-transformers
    ``max_seq_length`` (``sentence_bert_config.json``) when that is shorter, since the served
    model never sees more -- and padded to the longest (fewer sentences than asked if the text
    has fewer, with a warning).

    Raises:
        ConfigError: an empty text, a text without one such line, the evaluation text
            itself, a source without a tokenizer, or ``length`` beyond the model's context.
    """
    from tokenizers import Tokenizer

    path = Path(text_path)
    text = _read_text(path)
    _check_text(source, path, text, f"one line of {MIN_SENTENCE_WORDS} words", length)
    served = _max_seq_length(source)
    if served is not None and served < length:
        log.info("calibration sentences truncated at %d tokens, the model's max_seq_length "
                 "(sentence_bert_config.json), not --calib-len %d", served, length)
        length = served
    lines = [ln.strip() for ln in text.splitlines()]
    lines = [ln for ln in lines
             if len(ln.split()) >= MIN_SENTENCE_WORDS and not ln.startswith("=")][:samples]
    if not lines:
        raise ConfigError(f"calibration text {path} has no line of at least "
                          f"{MIN_SENTENCE_WORDS} words; give a text of sentences, one a line")
    if len(lines) < samples:
        log.warning("calibration text %s gives only %d sentences (asked for %d)",
                    path.name, len(lines), samples)
    tok = Tokenizer.from_str(source.tokenizer_files["tokenizer.json"])
    tok.no_padding()
    tok.enable_truncation(max_length=length)
    encs = tok.encode_batch(lines, add_special_tokens=True)
    longest = max(len(e.ids) for e in encs)
    pad = int(source.config.get("pad_token_id") or 0)
    ids = np.full((len(encs), longest), pad, dtype=np.int64)
    mask = np.zeros((len(encs), longest), dtype=np.int64)
    for k, e in enumerate(encs):
        ids[k, : len(e.ids)] = e.ids
        mask[k, : len(e.ids)] = 1
    return Sentences(ids, mask)


def _max_seq_length(source: ModelSource) -> int | None:
    """sentence-transformers' ``max_seq_length`` of a checkpoint directory, if it has one."""
    path = Path(source.path) / "sentence_bert_config.json"
    try:
        value = json.loads(path.read_text(encoding="utf-8")).get("max_seq_length")
    except (OSError, ValueError, AttributeError):
        return None
    return int(value) if isinstance(value, int) and value > 0 else None


def calibration_inputs(
    source: ModelSource,
    text_path: str | os.PathLike[str] = DEFAULT_CALIBRATION_TEXT,
    samples: int = 128,
    length: int = 512,
) -> np.ndarray | Sentences:
    """The calibration data the model takes: windows for a decoder
    (:func:`calibration_windows`), sentences for an encoder (:func:`calibration_sentences`)."""
    if source.architecture.causal:
        return calibration_windows(source, text_path, samples, length)
    return calibration_sentences(source, text_path, samples, length)


@dataclass
class InputStats:
    """Statistics of one distinct Linear input inside a layer (shared by the modules that read
    the same tensor: q/k/v, gate/up).

    Attributes:
        modules: Hugging Face weight names of the Linear layers reading this input.
        n: token rows seen.
        hessian: ``2 X Xᵀ / n`` (float64 ``[in, in]``), the GPTQ Hessian; None when not
            collected.
        abs_mean: mean ``|x|`` per input channel (AWQ).
        abs_max: max ``|x|`` per input channel (SmoothQuant).
        sq_mean: mean ``x²`` per input channel (llama.cpp's importance matrix).
        cross: ``2 (X_f - X)ᵀ X / n`` (float64 ``[in, in]``), where ``X_f`` is the float
            model's input at the same place: the asymmetric term of GPTAQ (see
            :func:`quantport.quant.gptq.run_gptq`'s ``cross``); None unless collected.
    """

    modules: list[str]
    n: int = 0
    hessian: np.ndarray | None = None
    cross: np.ndarray | None = None
    abs_mean: np.ndarray | None = None
    abs_max: np.ndarray | None = None
    sq_mean: np.ndarray | None = None


@dataclass
class LayerStats:
    """The statistics of one decoder layer's Linear inputs, by group (see :class:`InputStats`).

    Attributes:
        index: layer number.
        groups: one entry per distinct input, in the order the layer first reads them.
    """

    index: int
    groups: list[InputStats] = field(default_factory=list)

    def of(self, weight: str) -> InputStats:
        """The statistics of the input of Linear weight ``weight`` (Hugging Face name)."""
        for g in self.groups:
            if weight in g.modules:
                return g
        raise KeyError(weight)


def widen_bf16(raw: np.ndarray, device: Any) -> Any:
    """Stored bfloat16 values (``uint16`` bits) as a float32 tensor on ``device``, copied there
    as bfloat16 and widened there (exact: a bfloat16 is the top half of its float32)."""
    import torch

    bits = torch.from_numpy(np.array(np.asarray(raw).view(np.int16)))
    return bits.to(device).view(torch.bfloat16).float()


def _host(t: Any) -> np.ndarray:
    """A tensor's values as a numpy array on the host."""
    return t.detach().cpu().numpy()


def gram(x2: Any) -> Any:
    """``x2ᵀ x2`` in float32 (one batch's term of the Hessian). A bfloat16 run multiplies in
    bfloat16 (the CPU's AMX units, the GPU's tensor cores); on CUDA the product is taken in
    float32 straight from the tensor cores' accumulators (``torch.mm(..., out_dtype=)``)
    instead of being rounded to bfloat16 first."""
    return gram2(x2, x2)


#: columns of one product in :func:`add_gram` on a GPU
_GRAM_COLS = 2048
#: column blocks of a CPU Hessian sum, of which :func:`add_gram` takes the upper triangle
_GRAM_BLOCKS = 4


def add_gram(acc: Any, x2: Any) -> Any:
    """``acc += x2ᵀ x2`` (float32 ``[n, n]``; None: a new sum), one batch's term of the
    Hessian (:func:`gram`). On the CPU only the block upper triangle of ``acc`` is summed,
    and :func:`hessian_out` mirrors it.

    On the CPU, where these products are about half of calibration's arithmetic (down_proj's
    input is the widest), ``XᵀX`` being symmetric, only the blocks on and above the diagonal
    of a :data:`_GRAM_BLOCKS` x :data:`_GRAM_BLOCKS` partition are multiplied (10 of 16), as
    BLAS's ``syrk`` would, added in place. On a GPU the whole product is taken,
    :data:`_GRAM_COLS` columns at a time, so a wide input (down_proj's 14336) needs no second
    ``n x n`` matrix besides the sum."""
    import torch

    n = x2.shape[1]
    if x2.device.type == "cpu":
        if acc is None:
            acc = torch.zeros(n, n, dtype=torch.float32)
        step = _gram_step(n)
        for c in range(0, n, step):
            if x2.dtype == torch.float32:
                acc[c:c + step, c:].addmm_(x2[:, c:c + step].T, x2[:, c:])
            else:
                acc[c:c + step, c:] += gram2(x2[:, c:c + step], x2[:, c:])
        return acc
    if n <= _GRAM_COLS:
        part = gram(x2)
        return part if acc is None else acc.add_(part)
    if acc is None:
        acc = torch.zeros(n, n, dtype=torch.float32, device=x2.device)
    for c in range(0, n, _GRAM_COLS):
        acc[:, c:c + _GRAM_COLS] += gram2(x2, x2[:, c:c + _GRAM_COLS])
    return acc


def _gram_step(n: int) -> int:
    return -(-n // _GRAM_BLOCKS)


def gram2(a: Any, b: Any) -> Any:
    """``aᵀ b`` in float32, as :func:`gram` takes ``x2ᵀ x2``."""
    import torch

    if a.device.type == "cuda" and a.dtype in (torch.bfloat16, torch.float16):
        try:
            return torch.mm(a.T, b, out_dtype=torch.float32)
        except (TypeError, RuntimeError, NotImplementedError):  # a torch without out_dtype
            pass
    return (a.T @ b).to(torch.float32)


def hessian_out(xtx: Any, n: int) -> tuple[Any, np.ndarray]:
    """A layer's Hessian ``H = 2 XᵀX / n`` from the float32 sum ``xtx`` of ``n`` rows, as
    handed to GPTQ, and the mean ``x²`` (``diag(H) / 2``, float32, the importance matrix).

    ``H`` is computed in float32, the precision the cache stores (a cached run rounds exactly
    as this one); then float64 numpy on the CPU, or the float32 tensor left on a GPU (GPTQ runs
    there and makes its own float64 copy, see :class:`quantport.pipeline.device.TorchOps`)."""
    import torch

    with torch.inference_mode():  # the sums are inference tensors (made in the forward passes)
        h32 = xtx.mul_(2.0 / n)  # in place: the sum is not used again (one n x n less)
        if h32.device.type == "cpu":  # add_gram's blocks below the diagonal, from above it
            step = _gram_step(h32.shape[0])
            for c in range(0, h32.shape[0], step):
                h32[c + step:, c:c + step] = h32[c:c + step, c + step:].T
    sq = _host(h32.diagonal()) / 2
    return (h32.numpy().astype(np.float64) if h32.device.type == "cpu" else h32), sq


def add_cross(acc: Any, xf: Any, x: Any) -> Any:
    """``acc += (xf - x)ᵀ x`` (None: a new sum), one batch's term of GPTAQ's asymmetric term
    (the reference's ``dXXT``, ``add_batch``), ``xf`` the float model's input where ``x`` is
    the rounded model's (``[tokens, in]`` each). In float32: a bfloat16 difference of two
    close streams would be mostly rounding."""
    x32 = x.float()
    d = gram2(xf.float() - x32, x32)
    return d if acc is None else acc.add_(d)


def cross_out(acc: Any, n: int) -> np.ndarray:
    """The asymmetric term ``2 (X_f - X)ᵀ X / n`` (float64 numpy) from :func:`add_cross`'s
    sum of ``n`` rows, scaled in float32 as :func:`hessian_out` scales the Hessian (the
    precision the cache stores, so a cached run rounds exactly as this one)."""
    import torch

    with torch.inference_mode():  # the sum is an inference tensor (made in the forward passes)
        return _host(acc.mul_(2.0 / n)).astype(np.float64)


class _Accumulator:
    """Forward pre-hooks on a layer's Linear modules that sum their inputs' statistics."""

    def __init__(self, layer: Any, prefix: str, hessian: bool, activations: bool) -> None:
        import torch

        self.torch = torch
        self.hessian = hessian
        self.activations = activations
        self.sums: dict[str, dict[str, Any]] = {}  # group (first module) -> running sums
        self.members: dict[str, list[str]] = {}
        self.group_of: dict[str, str] = {}
        self.seen: dict[tuple[int, tuple[int, ...]], tuple[Any, str]] = {}
        #: the batch's non-padding token rows (flattened ``[batch * tokens]`` bool), or None:
        #: the statistics count real tokens only
        self.rows: Any = None
        self.handles = []
        for name, mod in layer.named_modules():
            if isinstance(mod, torch.nn.Linear):
                full = f"{prefix}{name}.weight"
                self.handles.append(mod.register_forward_pre_hook(self._hook(full)))

    def _hook(self, weight: str) -> Callable[..., None]:
        def hook(_m: Any, args: tuple[Any, ...]) -> None:
            x = args[0]
            key = (x.data_ptr(), tuple(x.shape))
            if key in self.seen:  # the same tensor another module already read: shared input
                group = self.seen[key][1]
                if weight not in self.group_of:
                    self.group_of[weight] = group
                    self.members[group].append(weight)
                return
            group = self.group_of.setdefault(weight, weight)
            self.members.setdefault(group, [weight] if group == weight else [])
            # keep x alive until the batch ends, so its memory (and data_ptr) is not reused
            self.seen[key] = (x, group)
            self._add(group, x)

        return hook

    def _add(self, group: str, x: Any) -> None:
        torch = self.torch
        x2 = x.detach().reshape(-1, x.shape[-1])
        if self.rows is not None:
            x2 = x2[self.rows]
        s = self.sums.get(group)
        if s is None:
            d = x2.shape[1]
            dev = x2.device
            s = self.sums[group] = {
                "n": 0, "abs": torch.zeros(d, dtype=torch.float64, device=dev),
                "max": torch.zeros(d, dtype=torch.float32, device=dev),
                "H": (torch.zeros(d, d, dtype=torch.float32, device=dev) if self.hessian
                      else None),
                "sq": None if self.hessian else torch.zeros(d, dtype=torch.float64, device=dev),
            }
        s["n"] += x2.shape[0]
        if s["H"] is not None:
            # the reference's add_batch: H += X Xᵀ (scaled by 2/n at the end). A bfloat16 run
            # multiplies in bfloat16 (AMX) and adds each batch's product in float32.
            s["H"] = add_gram(s["H"], x2)
        else:  # mean x² is diag(H)/2 when H is collected
            s["sq"] += x2.float().square().sum(0, dtype=torch.float64)
        if self.activations:
            a = x2.abs()
            s["abs"] += a.sum(0, dtype=torch.float32).double()
            s["max"] = torch.maximum(s["max"], a.amax(0).float())

    def end_batch(self) -> None:
        self.seen.clear()

    def close(self, index: int) -> LayerStats:
        for h in self.handles:
            h.remove()
        out = LayerStats(index)
        for group, s in self.sums.items():
            n = max(int(s["n"]), 1)
            if s["H"] is not None:
                hess, sq = hessian_out(s["H"], n)
            else:
                hess, sq = None, _host(s["sq"] / n)
            out.groups.append(InputStats(
                modules=list(self.members[group]), n=int(s["n"]), hessian=hess,
                abs_mean=_host((s["abs"] / n).float()) if self.activations else None,
                abs_max=_host(s["max"]).copy() if self.activations else None,
                sq_mean=np.asarray(sq, dtype=np.float32),
            ))
        return out


class LayerwiseModel:
    """A decoder (or a BERT encoder) built on the ``meta`` device, run layer by layer with
    weights streamed from a source (see the module docstring).

    Attributes:
        source: the model source.
        n_layers: number of decoder (encoder) layers.
        encoder: a BERT encoder: :meth:`embed` takes :class:`Sentences`, layers run with
            their padding masked.
        layers: the layer modules (``model.layers``, or ``encoder.layer``).
        prefix: Hugging Face name prefix of layer parameters (``model.layers.``,
            ``encoder.layer.`` or ``bert.encoder.layer.``).
        device: where the layers run (``cpu`` or ``cuda``; see
            :func:`quantport.pipeline.device.resolve_device`): one layer at a time is moved
            there, the Hessians are summed there.
        act_device: where the calibration activations live: the device while they fit
            (:func:`quantport.pipeline.device.activations_fit`), else the host (each batch
            is then moved to the device for its forward pass and back).
    """

    def __init__(self, source: ModelSource, *, dtype: str = "float32",
                 device: str = "cpu") -> None:
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM

        from quantport._quiet import quiet_loading

        self.encoder = not source.architecture.causal
        if self.encoder and source.architecture.name != "bert":
            raise UnsupportedQuantError(
                f"{source.path}: calibrated methods run on decoders and BERT encoders, not on "
                f"{source.architecture.name} (use --method rtn)"
            )
        self.source = source
        self.torch = torch
        self.device = torch.device(device)
        if self.device.type == "cuda" and "PYTORCH_CUDA_ALLOC_CONF" not in os.environ:
            # GPTQ's n x n matrices and the forward passes' activations come and go in sizes
            # that fragment the caching allocator's fixed segments (reserved memory well above
            # what is in use); segments that grow and shrink keep the two close. A setting the
            # user gave in PYTORCH_CUDA_ALLOC_CONF wins.
            with contextlib.suppress(AttributeError, RuntimeError), warnings.catch_warnings():
                # torch 2.11 marks this name deprecated (FutureWarning) but still honours it
                warnings.simplefilter("ignore", FutureWarning)
                torch.cuda.memory._set_allocator_settings("expandable_segments:True")
        self.act_device = self.device
        #: activation buffers of the calibration's size held at once (see :meth:`_place`)
        self.streams = 2
        self._spare: Any = None  # pinned host buffer of :meth:`evicted`
        self._scratch: Any = None  # see :meth:`scratch`
        self.batch_tokens = _BATCH_TOKENS if self.device.type == "cpu" else _GPU_BATCH_TOKENS
        # weights stay float32 (they are what gets rounded and written); a bfloat16 run casts
        # them per matmul under autocast, where the CPU's bf16 units (AMX) are several times
        # faster than float32
        self.dtype = getattr(torch, dtype)
        cfg = dict(source.config)
        model_type = cfg.pop("model_type", source.architecture.name)
        cfg.pop("quantization_config", None)
        with quiet_loading():
            self.config = AutoConfig.for_model(model_type, **cfg)
        self.config._attn_implementation = "sdpa"
        self.mask: Any = None  # encoders: [n, tokens] bool, the sentences' real tokens
        if self.encoder:
            from transformers import AutoModel

            with torch.device("meta"), quiet_loading():
                self.body = AutoModel.from_config(self.config, dtype=torch.float32)
            # BertModel checkpoints name ``encoder.layer.N``; BertFor* heads ``bert.encoder...``
            root = "bert." if any(n.startswith("bert.encoder.") for n in source.names()) else ""
            self.root = f"{root}embeddings."
            self.prefix = f"{root}encoder.layer."
            self.layers = self.body.encoder.layer
            self.n_layers = len(self.layers)
            self.rotary = None
            return
        # float32 parameters whatever the checkpoint's ``dtype`` says (a bfloat16 checkpoint's
        # layers would otherwise be built in bfloat16, and rounding reads them as numpy)
        with torch.device("meta"), quiet_loading():
            model = AutoModelForCausalLM.from_config(self.config, dtype=torch.float32)
        self.body = getattr(model, model.base_model_prefix)
        self.prefix = f"{model.base_model_prefix}.layers."
        self.layers = self.body.layers
        self.n_layers = len(self.layers)
        # buffers (rotary inverse frequencies) are computed, not stored: build them for real
        self.rotary = type(self.body.rotary_emb)(config=self.config).to(self.device)

    def _tensor(self, name: str) -> Any:
        """Tensor ``name`` of the source as float32 on the compute device."""
        torch = self.torch
        if self.device.type != "cpu":
            stored = self.source.stored(name)
            if stored is not None and stored[1] == "BF16":
                # half the bytes over the bus, widened there
                return widen_bf16(stored[0], self.device)
        t = torch.from_numpy(np.array(self.source.get(name), dtype=np.float32))
        return t if self.device.type == "cpu" else t.to(self.device)

    def _dev(self, x: Any) -> Any:
        """``x`` on the compute device (a batch of host-kept activations)."""
        return x if x.device == self.device else x.to(self.device, non_blocking=True)

    @contextlib.contextmanager
    def evicted(self, h: Any, need: int) -> Iterator[None]:
        """GPU-kept activations ``h`` moved to pinned host memory for the duration of the
        block when the block needs more GPU memory (``need`` bytes: GPTQ's ``n x n``
        matrices) than ``h`` takes; back in place afterwards (the same tensor object: its
        storage is freed and re-allocated, as FSDP frees parameters).

        GPU memory is then set by one layer's work, not by that work plus the activations:
        an 8B model's down_proj (n = 14336: three 0.8 GiB matrices) runs while the
        ``[128, 2048, 4096]`` activations (2 GiB) wait on the host (two copies over the bus
        a layer); smaller roundings run with the activations left in place."""
        torch = self.torch
        nbytes = h.numel() * h.element_size()
        if h.device.type != "cuda" or need <= nbytes:
            yield
            return
        if self._spare is None or self._spare.shape != h.shape:
            self._spare = torch.empty(h.shape, dtype=h.dtype, pin_memory=True)
        host = self._spare
        host.copy_(h, non_blocking=True)
        # stream-ordered: memory freed here is reused only by work queued after the copy
        h.untyped_storage().resize_(0)
        try:
            yield
        finally:
            h.untyped_storage().resize_(nbytes)
            h.copy_(host, non_blocking=True)

    def _put(self, buf: Any, b: slice, y: Any) -> None:
        """``buf[b] = y``. A GPU result going into host-kept activations (pinned) is copied
        asynchronously: every later read of ``buf`` is a copy to the GPU on the same stream,
        so it runs after this one, and the GPU does not wait for the host in between."""
        if buf.device != y.device:
            buf[b].copy_(y, non_blocking=True)
        else:
            buf[b] = y

    def _add_to(self, buf: Any, b: slice, y: Any) -> None:
        """``buf[b] += y`` (a residual add): in place where ``buf`` lives with ``y``, else
        through :meth:`_put`."""
        if buf.device == y.device:
            buf[b] += y
        else:
            self._put(buf, b, self._dev(buf[b]) + y)

    def _place(self, shape: tuple[int, ...]) -> None:
        """Choose where the activation buffers of ``shape`` live (:attr:`streams` of them: a
        layer's input and its output, and the float model's hidden states when the
        calibration carries them too)."""
        from quantport.pipeline.device import activations_fit

        n = self.streams * int(np.prod(shape)) * self.torch.finfo(self.dtype).bits // 8
        if not activations_fit(n, str(self.device)):
            log.info("calibration activations (%d MiB) kept on the host, not on %s",
                     n >> 20, self.device)
            self.act_device = self.torch.device("cpu")

    def buffer(self, shape: tuple[int, ...]) -> Any:
        """An activation buffer where the activations live (:attr:`act_device`): pinned host
        memory when a GPU's activations are kept on the host, so that each batch's copy to
        the GPU and back is a DMA transfer instead of a staged, synchronous one."""
        pin = self.act_device.type == "cpu" and self.device.type == "cuda"
        return self.torch.empty(*shape, dtype=self.dtype, device=self.act_device,
                                pin_memory=pin)

    def scratch(self, shape: tuple[int, ...]) -> Any:
        """A :meth:`buffer` of ``shape`` carved from one kept for the whole run (grown when a
        larger shape is asked for; :meth:`release_scratch` frees it). The next call hands out
        the same memory: :meth:`run_staged` holds one at a time (o_proj's input, then
        down_proj's).

        Why: a fresh buffer of this size is a fresh mmap whose every page faults in (and is
        zeroed by the kernel) again -- SmolLM2's 128 x 512 windows made 384 + 144 MiB of them a
        layer, about 4 of the 7 million minor page faults of a GPTQ run and most of its 38 s
        of system time (measured with ``/usr/bin/time -v``). Peak memory is not raised: the
        largest of them was live at the peak anyway."""
        n = int(np.prod(shape))
        if self._scratch is None or self._scratch.numel() < n:
            self._scratch = None  # freed before the larger one is made
            self._scratch = self.buffer((n,))
        return self._scratch[:n].view(shape)

    def release_scratch(self) -> None:
        """Free :meth:`scratch`'s buffer."""
        self._scratch = None

    def embed(self, windows: np.ndarray | Sentences) -> Any:
        """Hidden states entering layer 0: ``[windows, tokens, hidden]`` (an encoder takes
        :class:`Sentences` and keeps their mask for :meth:`run`)."""
        if self.encoder:
            assert isinstance(windows, Sentences)
            return self._embed_sentences(windows)
        torch = self.torch
        w = self._tensor(f"{self.prefix.split('.layers.')[0]}.embed_tokens.weight")
        self._place((*windows.shape, w.shape[1]))
        ids = torch.from_numpy(windows)
        # the activation buffers: half the memory in bfloat16
        h = self.buffer((*windows.shape, w.shape[1]))
        with torch.inference_mode():
            for b in self._batches(h):
                e = torch.nn.functional.embedding(self._dev(ids[b]), w)
                scale = getattr(self.body, "embed_scale", None)  # Gemma-style scaled embeddings
                if scale is not None:
                    e = e * (scale.to(e.device) if isinstance(scale, torch.Tensor) else scale)
                self._put(h, b, e)
        del w
        self.source.release()
        return h

    def _embed_sentences(self, sents: Sentences) -> Any:
        # BertEmbeddings.forward: word + token type (0: one segment) + absolute position,
        # then LayerNorm (dropout is inactive in eval)
        torch = self.torch
        r = self.root
        n, t = sents.shape
        with torch.inference_mode():
            h = torch.nn.functional.embedding(torch.from_numpy(sents.ids),
                                              self._tensor(f"{r}word_embeddings.weight"))
            h = h + self._tensor(f"{r}token_type_embeddings.weight")[0]
            h = h + self._tensor(f"{r}position_embeddings.weight")[:t]
            h = torch.nn.functional.layer_norm(
                h, (h.shape[-1],), self._tensor(f"{r}LayerNorm.weight"),
                self._tensor(f"{r}LayerNorm.bias"),
                eps=float(self.config.layer_norm_eps))
        self.source.release()
        self.mask = torch.from_numpy(sents.mask).bool().to(self.device)
        self._place(tuple(h.shape))
        return h.to(self.dtype).to(self.act_device)

    def _attention_mask(self, b: slice) -> Any:
        # the additive [batch, 1, 1, tokens] mask of create_bidirectional_mask: padding keys get
        # the dtype's minimum, so no real token attends to them
        torch = self.torch
        m = self.mask[b]
        return torch.zeros(m.shape, dtype=self.dtype, device=m.device).masked_fill(
            ~m, torch.finfo(self.dtype).min)[:, None, None, :]

    def load(self, i: int) -> Any:
        """Layer ``i`` with its weights read from the source (float32, or ``dtype``)."""
        torch = self.torch
        layer = self.layers[i].to_empty(device=self.device)
        # no gradients: autocast would otherwise keep a bfloat16 copy of every weight it casts
        # (its cache holds casts of leaves that require grad) until the forward passes end
        layer.requires_grad_(False)
        with torch.no_grad():
            for name, p in layer.named_parameters():
                p.copy_(self._tensor(f"{self.prefix}{i}.{name}"))
        self.source.release()
        return layer.eval()

    def unload(self, i: int) -> None:
        """Drop layer ``i``'s weights."""
        self.layers[i].to("meta")

    def param_names(self, i: int) -> list[str]:
        """Hugging Face names of every parameter of layer ``i`` (from the meta skeleton)."""
        return [f"{self.prefix}{i}.{n}" for n, _ in self.layers[i].named_parameters()]

    def weight_names(self, i: int, layer: Any) -> dict[str, Any]:
        """Hugging Face weight name -> the Linear module of layer ``i``."""
        torch = self.torch
        return {f"{self.prefix}{i}.{n}.weight": m for n, m in layer.named_modules()
                if isinstance(m, torch.nn.Linear)}

    def autocast(self) -> Any:
        """The context the forward passes run in (bfloat16 autocast, or nothing)."""
        if self.dtype == self.torch.float32:
            return contextlib.nullcontext()
        return self.torch.autocast(self.device.type, dtype=self.dtype)

    def _batches(self, h: Any) -> Iterator[slice]:
        per = max(1, self.batch_tokens // h.shape[1])
        for s in range(0, h.shape[0], per):
            yield slice(s, min(s + per, h.shape[0]))

    def run(self, i: int, layer: Any, h: Any, *, collect: bool = False,
            hessian: bool = True, activations: bool = False) -> tuple[Any, LayerStats | None]:
        """Run ``layer`` (number ``i``) on hidden states ``h``; with ``collect``, also the
        statistics of its Linear inputs (the Hessian if ``hessian``, mean and max ``|x|`` if
        ``activations``; mean ``x²`` always). Returns the output hidden states and the stats."""
        torch = self.torch
        acc = (_Accumulator(layer, f"{self.prefix}{i}.", hessian, activations) if collect
               else None)
        out = self.buffer(tuple(h.shape))
        if self.encoder:
            try:
                with torch.inference_mode(), self.autocast():
                    for b in self._batches(h):
                        if acc is not None:
                            acc.rows = self.mask[b].reshape(-1)
                        y = layer(self._dev(h[b]), attention_mask=self._attention_mask(b))
                        self._put(out, b, y[0] if isinstance(y, tuple) else y)
                        if acc is not None:
                            acc.end_batch()
            finally:
                stats = acc.close(i) if acc is not None else None
            return out, stats
        pos = torch.arange(h.shape[1], device=self.device).unsqueeze(0)
        try:
            with torch.inference_mode(), self.autocast():
                cos, sin = self.rotary(self._dev(h[:1]).float(), position_ids=pos)
                pe = (cos.to(self.dtype), sin.to(self.dtype))
                for b in self._batches(h):
                    # attention_mask None: sdpa applies the causal mask itself (is_causal), the
                    # windows have no padding
                    y = layer(self._dev(h[b]), attention_mask=None, position_ids=pos,
                              position_embeddings=pe)
                    self._put(out, b, y[0] if isinstance(y, tuple) else y)
                    if acc is not None:
                        acc.end_batch()
        finally:
            stats = acc.close(i) if acc is not None else None
        return out, stats


    def head_stats(self, h: Any, weight: str, hf: Any = None) -> LayerStats:
        """The statistics of the LM head's input (the final norm of ``h``, the last layer's
        output), as :meth:`run` collects a layer's, under index :attr:`n_layers`; with the
        float model's hidden states ``hf``, the cross term too (:attr:`InputStats.cross`)."""
        torch = self.torch
        norm = self.body.norm.to_empty(device=self.device)
        root = self.prefix.split(".layers.")[0]
        with torch.no_grad():
            for name, p in norm.named_parameters():
                p.copy_(self._tensor(f"{root}.norm.{name}"))
        acc = _Accumulator(torch.nn.Module(), "", True, False)  # no hooks: fed directly
        acc.members = {weight: [weight]}
        cross = None
        try:
            with torch.inference_mode(), self.autocast():
                for b in self._batches(h):
                    x = norm(self._dev(h[b]))
                    acc._add(weight, x)
                    if hf is not None:
                        x2 = x.reshape(-1, x.shape[-1])
                        cross = add_cross(cross, norm(self._dev(hf[b])).reshape(x2.shape), x2)
        finally:
            stats = acc.close(self.n_layers)
            self.body.norm.to("meta")
            self.source.release()
        if cross is not None:
            (g,) = stats.groups
            g.cross = cross_out(cross, g.n)
        return stats

    def caller(self, tokens: int) -> Callable[[Any, Any], Any]:
        """``call(module, x)``: run a submodule of a layer on its input ``x`` (the attention
        with its rotary embeddings and the causal mask, anything else directly), under the
        run's autocast."""
        torch = self.torch
        pos = torch.arange(tokens, device=self.device).unsqueeze(0)
        cos, sin = self.rotary(torch.zeros(1, tokens, 1, device=self.device), position_ids=pos)
        attention = type(self.layers[0].self_attn)

        def call(module: Any, x: Any) -> Any:
            with torch.inference_mode(), self.autocast():
                if isinstance(module, attention):
                    return module(hidden_states=self._dev(x), position_embeddings=(cos, sin),
                                  attention_mask=None)[0]
                return module(self._dev(x))

        return call

    def capture(self, i: int, layer: Any, h: Any, modules: list[str]) -> dict[str, Any]:
        """Run layer ``i`` on ``h`` and return the inputs of its submodules ``modules`` (local
        names), ``[windows, tokens, in]`` each (for AWQ's search on a sample)."""
        torch = self.torch
        got: dict[str, list[Any]] = {m: [] for m in modules}
        handles = [layer.get_submodule(m).register_forward_pre_hook(
            lambda _m, args, _n=m: got[_n].append(args[0].detach().float().clone()))
            for m in modules]
        try:
            self.run(i, layer, h)
        finally:
            for hd in handles:
                hd.remove()
        return {m: torch.cat(v, 0) for m, v in got.items() if v}


    def staged(self, layer: Any) -> bool:
        """Whether :meth:`run_staged` knows this layer's layout (pre-norm attention and gated
        MLP with residuals, as Llama, Mistral and Qwen2/3 decoder layers)."""
        names = ("input_layernorm", "self_attn", "post_attention_layernorm", "mlp")
        return (type(layer).__name__ in _STAGED_LAYERS and all(hasattr(layer, n) for n in names)
                and all(hasattr(layer.mlp, n) for n in ("gate_proj", "up_proj", "down_proj",
                                                        "act_fn")))

    def run_staged(self, i: int, layer: Any, h: Any,
                   quantize: Callable[[list[str], np.ndarray, np.ndarray | None], None],
                   ref: tuple[Any, Any] | None = None) -> LayerStats:
        """True-sequential calibration of layer ``i`` in ONE forward pass, ``h`` updated in
        place to the layer's output with its rounded weights.

        The layer runs sub-block by sub-block over all windows, as GPTQModel's true-sequential
        mode orders it: q/k/v's Hessian from the normed input, then ``quantize(names, H)``
        rounds them (and writes the rounded weights into the layer); the attention with the
        rounded q/k/v gives o_proj's input and Hessian; o_proj rounded, the residual, then
        gate/up, then down_proj likewise. Every matmul runs once, where the two-pass loop
        (statistics of the float layer, then the rounded layer's outputs: the reference and
        llm-compressor) runs each twice, and every Hessian sees the outputs of everything
        rounded before it.

        ``ref``: ``(float_layer, hf)``, an unrounded copy of the layer and the float model's
        hidden states (updated in place to its output, sub-block by sub-block beside ``h``):
        each input's :attr:`InputStats.cross` is then summed too, and handed to ``quantize``
        (asymmetric calibration, GPTAQ); without it ``quantize`` gets None.
        """
        torch = self.torch
        attn, mlp = layer.self_attn, layer.mlp
        ln1, ln2 = layer.input_layernorm, layer.post_attention_layernorm
        p = f"{self.prefix}{i}."
        stats = LayerStats(i)
        batches = list(self._batches(h))
        pos = torch.arange(h.shape[1], device=self.device).unsqueeze(0)
        dev = self._dev

        def stage(names: list[str], inputs: Callable[[slice], Any],
                  ref_inputs: Callable[[slice], Any]) -> None:
            # ref_inputs: the float layer's input at the same place (read only with ref)
            hess, n, cross = None, 0, None
            for b in batches:
                x2 = inputs(b)
                x2 = x2.reshape(-1, x2.shape[-1])
                hess = add_gram(hess, x2)
                n += x2.shape[0]
                if ref is not None:
                    cross = add_cross(cross, ref_inputs(b).reshape(x2.shape), x2)
            del x2  # the last batch's input: freed before GPTQ's matrices are made
            assert hess is not None
            h64, sq = hessian_out(hess, n)
            del hess
            c64 = None if cross is None else cross_out(cross, n)
            del cross
            full = [f"{p}{m}.weight" for m in names]
            stats.groups.append(InputStats(modules=full, n=n, hessian=h64, sq_mean=sq,
                                           cross=c64))
            with self.evicted(h, 3 * h64.shape[0] ** 2 * 4):
                quantize(full, h64, c64)

        class _Stop(Exception):
            pass

        got: list[Any] = []

        def catch(_m: Any, args: tuple[Any, ...]) -> None:
            got.append(args[0])
            raise _Stop  # the reference's Catcher: o_proj's input is all we need here

        with torch.inference_mode(), self.autocast():
            cos, sin = self.rotary(dev(h[:1]).float(), position_ids=pos)
            pe = (cos.to(self.dtype), sin.to(self.dtype))
            fl, hf = ref if ref is not None else (None, None)

            def ref_o(b: slice) -> Any:
                # the float layer's o_proj input; hf[b] then takes the attention's residual
                # (each batch is read once a stage, so the update can happen here)
                handle = fl.self_attn.o_proj.register_forward_pre_hook(catch)
                try:
                    fl.self_attn(hidden_states=fl.input_layernorm(dev(hf[b])),
                                 position_embeddings=pe, attention_mask=None)
                except _Stop:
                    pass
                finally:
                    handle.remove()
                y = got.pop()
                self._add_to(hf, b, fl.self_attn.o_proj(y))
                return y

            def ref_down(b: slice) -> Any:
                x = fl.post_attention_layernorm(dev(hf[b]))
                y = fl.mlp.act_fn(fl.mlp.gate_proj(x)) * fl.mlp.up_proj(x)
                self._add_to(hf, b, fl.mlp.down_proj(y))
                return y

            stage(["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"],
                  lambda b: ln1(dev(h[b])),
                  lambda b: fl.input_layernorm(dev(hf[b])))
            # o_proj's input (the attention's output) and down_proj's (the widest activation)
            # are each kept between their two uses when they fit in _KEEP_BYTES, recomputed
            # otherwise: a second pass over the windows costs less than a buffer the size of
            # the calibration activations (GPU memory)
            def kept(width: int) -> Any:
                keep = h.shape[0] * h.shape[1] * width * h.element_size() <= _KEEP_BYTES
                return self.scratch((*h.shape[:-1], width)) if keep else None

            a = kept(attn.o_proj.in_features)

            def o_input(b: slice) -> Any:
                handle = attn.o_proj.register_forward_pre_hook(catch)
                try:
                    attn(hidden_states=ln1(dev(h[b])), position_embeddings=pe,
                         attention_mask=None)
                except _Stop:
                    pass
                finally:
                    handle.remove()
                y = got.pop()
                if a is not None:
                    self._put(a, b, y)
                return y

            stage(["self_attn.o_proj"], o_input, ref_o)
            for b in batches:
                x = dev(a[b]) if a is not None else o_input(b)
                self._add_to(h, b, attn.o_proj(x))
            a = None  # noqa: F841 - its scratch space is down_proj's input's now
            stage(["mlp.gate_proj", "mlp.up_proj"], lambda b: ln2(dev(h[b])),
                  lambda b: fl.post_attention_layernorm(dev(hf[b])))
            x3 = kept(mlp.down_proj.in_features)

            def down_input(b: slice) -> Any:
                x = ln2(dev(h[b]))
                g = mlp.act_fn(mlp.gate_proj(x))
                if x3 is not None and x3.device == g.device:
                    # straight into the kept buffer: no temporary the size of the product
                    return torch.mul(g, mlp.up_proj(x), out=x3[b])
                y = g * mlp.up_proj(x)
                if x3 is not None:
                    self._put(x3, b, y)
                return y

            stage(["mlp.down_proj"], down_input, ref_down)
            for b in batches:
                self._add_to(h, b, mlp.down_proj(dev(x3[b]) if x3 is not None
                                                 else down_input(b)))
        return stats



#: decoder layer classes whose forward is pre-norm attention + gated MLP with residuals, the
#: layout :meth:`LayerwiseModel.run_staged` reproduces (checked against the layer's own
#: forward by tests/pipeline/test_calibrated.py)
_STAGED_LAYERS = {"LlamaDecoderLayer", "MistralDecoderLayer", "Qwen2DecoderLayer",
                  "Qwen3DecoderLayer"}


def cache_key(source: ModelSource, windows: np.ndarray, settings: dict[str, Any]) -> str:
    """A key naming calibration statistics: the model (its provenance, config and files), the
    token windows, and the settings that change the statistics."""
    h = hashlib.sha256()
    h.update(json.dumps(source.describe(), sort_keys=True, default=str).encode())
    h.update(json.dumps(source.config, sort_keys=True, default=str).encode())
    h.update(json.dumps(_files_fingerprint(source)).encode())
    h.update(np.ascontiguousarray(windows).tobytes())
    h.update(json.dumps(settings, sort_keys=True, default=str).encode())
    return h.hexdigest()[:32]


def _files_fingerprint(source: ModelSource) -> list[list[Any]]:
    """Name, size and modification time of the source's files (a checkpoint directory's, or
    the GGUF file): a checkpoint saved again at the same path with other weights (same config)
    gets another key, without hashing gigabytes of weights."""
    path = getattr(source, "path", None)
    if path is None:
        return []
    p = Path(path)
    files = sorted(f for f in p.iterdir() if f.is_file()) if p.is_dir() else [p]
    out = []
    for f in files:
        try:
            st = f.stat()
        except OSError:
            continue
        out.append([f.name, st.st_size, st.st_mtime_ns])
    return out


class StatsCache:
    """Per-layer calibration results on disk (``$QUANTPORT_CACHE/calib/KEY/layer-N.npz``):
    the Hessians of each distinct input and the transform scales folded into the layer.

    Keyed by :func:`cache_key` over the model, the calibration windows and every setting that
    changes the results (with true-sequential inputs that includes the planned targets, since
    each layer calibrates on the rounded layers before it), so a second conversion of the same
    recipe -- to another format, say -- skips every forward pass, and any change of model,
    text or settings misses. Files are written under a temporary name and renamed; a cache
    that would exceed ``max_bytes`` is not written (the log says so); only the :attr:`KEEP`
    most recent calibrations are kept.
    """

    #: calibrations kept (the most recently written)
    KEEP = 4

    def __init__(self, key: str, root: Path | None = None, max_bytes: int = 4 << 30) -> None:
        self.dir = (root or cache_dir() / "calib") / key
        self.max_bytes = max_bytes
        self.enabled = True

    def _prune(self) -> None:
        # a new calibration: keep the KEEP most recently written ones, drop older ones (the
        # cache would otherwise grow by a model's worth of Hessians per recipe tried)
        import shutil

        root = self.dir.parent
        if not root.is_dir():
            return
        old = sorted((d for d in root.iterdir() if d.is_dir()), key=lambda d: d.stat().st_mtime)
        for d in old[: max(0, len(old) - (self.KEEP - 1))]:
            shutil.rmtree(d, ignore_errors=True)

    def _path(self, i: int) -> Path:
        return self.dir / f"layer-{i}.npz"

    def complete(self, n_layers: int) -> bool:
        """Whether every layer's results are cached (then no forward pass is needed)."""
        return all(self._path(i).is_file() for i in range(n_layers))

    def load(self, i: int) -> tuple[LayerStats, dict[str, np.ndarray]] | None:
        """Layer ``i``'s statistics and transform scales, or None if not cached."""
        path = self._path(i)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                stats = LayerStats(i, [InputStats(
                    modules=g["modules"], n=g["n"], hessian=z[f"H{k}"].astype(np.float64),
                    cross=z[f"C{k}"].astype(np.float64) if f"C{k}" in z.files else None)
                    for k, g in enumerate(meta["groups"])])
                scales = {p: z[f"S{k}"] for k, p in enumerate(meta["scales"])}
        except (OSError, ValueError, KeyError) as exc:
            log.warning("ignoring unreadable calibration cache %s: %s", path, exc)
            return None
        return stats, scales

    def save(self, stats: LayerStats, scales: dict[str, np.ndarray], n_layers: int) -> None:
        """Store layer ``stats.index``'s results (float32 Hessians)."""
        if not self.enabled:
            return
        arrays: dict[str, np.ndarray] = {}
        groups = [g for g in stats.groups if g.hessian is not None]
        for k, p in enumerate(scales):
            arrays[f"S{k}"] = np.asarray(scales[p], dtype=np.float32)
        # sized before the Hessians are copied off a GPU (float32 in the file)
        size = (sum(a.nbytes for a in arrays.values())
                + sum(4 * int(np.prod(g.hessian.shape)) * (1 + (g.cross is not None))
                      for g in groups))
        if size * n_layers > self.max_bytes:
            log.info("calibration statistics (~%d MiB) exceed the cache limit; not cached",
                     size * n_layers >> 20)
            self.enabled = False
            return
        for k, g in enumerate(groups):
            h = g.hessian
            arrays[f"H{k}"] = np.asarray(h if isinstance(h, np.ndarray) else _host(h),
                                         dtype=np.float32)
            if g.cross is not None:
                arrays[f"C{k}"] = np.asarray(g.cross, dtype=np.float32)
        meta = {"groups": [{"modules": g.modules, "n": g.n} for g in groups],
                "scales": list(scales)}
        if not self.dir.is_dir():
            self._prune()
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.dir / f".layer-{stats.index}.{os.getpid()}.npz"
        try:
            np.savez(tmp, meta=np.asarray(json.dumps(meta)), **arrays)
            os.replace(tmp, self._path(stats.index))
        except OSError as exc:
            log.warning("cannot write the calibration cache %s: %s", self.dir, exc)
            tmp.unlink(missing_ok=True)
            self.enabled = False
