"""ONNX Runtime as a validation runtime: an ONNX directory run on CPU, as it will be served.

:class:`OrtLM` has the interface of the other runtimes (:class:`~quantport.validate.runner.
TransformersLM`, :class:`~quantport.validate.runner.LlamaCppLM`): ``logits`` of one window,
``embed_texts`` for encoders, and ``generate`` — greedy decoding step by step through the
graph's KV cache, ``present.{i}.key/value`` fed back as ``past_key_values.{i}.key/value``, the
loop onnxruntime-genai and optimum's ``ORTModelForCausalLM`` run.

The graph I/O names are those of onnxruntime-genai's builder and optimum
(``builders/base.py`` in microsoft/onnxruntime-genai, ``optimum/exporters/onnx/config.py``):
decoders ``input_ids``, ``attention_mask``, optional ``position_ids``,
``past_key_values.{i}.key/value`` → ``logits``, ``present.{i}.key/value``; encoders
``input_ids``, ``attention_mask``, optional ``token_type_ids`` → ``last_hidden_state``,
optional ``sentence_embedding``.

Before ORT sees a graph, :func:`check_external_data` checks that every external-data file it
names exists and holds the byte ranges the graph points at: ORT itself reports a missing or short
file as a multi-line C++ exception, or not at all when a range happens to fit.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from quantport.errors import FormatError, QuantportError
from quantport.formats.onnx_pack import behind_conversion, storage_entry
from quantport.formats.onnx_read import check_external_data, load_graph

__all__ = ["OrtLM", "check_external_data", "genai_tokenize", "is_onnx_artifact", "onnx_model_path"]

log = logging.getLogger(__name__)

#: the graph file inside an ONNX artifact directory (onnxruntime-genai's and optimum's name)
MODEL_FILE = "model.onnx"


def is_onnx_artifact(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is an ``.onnx`` file or a directory holding ``model.onnx``."""
    p = Path(path)
    if p.is_dir():
        return (p / MODEL_FILE).is_file()
    return p.suffix == ".onnx"


def onnx_model_path(path: str | os.PathLike[str]) -> Path:
    """The graph file of an ONNX artifact: ``path`` itself or ``path/model.onnx``.

    Raises:
        FormatError: a directory without ``model.onnx``.
    """
    p = Path(path)
    if p.is_dir():
        m = p / MODEL_FILE
        if not m.is_file():
            raise FormatError(f"{p}: no {MODEL_FILE} inside; is it an ONNX artifact directory?")
        return m
    return p


def dynamic_quant_weights(model: Any) -> dict[str, str]:
    """Hugging Face names of the weights whose MatMul input the graph quantizes at run time,
    each with how: ``"tensor"`` (``DynamicQuantizeLinear -> MatMulInteger``, or ORT's fused
    ``DynamicQuantizeMatMul``) or ``"token"`` (a ``QuantizeLinear`` by per-token scales
    into ``MatMulIntegerToFloat``, in a graph whose recorded recipe says
    ``--act-scheme token``). Found through the
    ``quantport_tensors`` metadata quantport's writer records (which initializers hold which
    tensor); empty for graphs without it."""
    meta = {p.key: p.value for p in model.metadata_props}
    try:
        tensors = json.loads(meta.get("quantport_tensors", "{}"))
    except json.JSONDecodeError:
        return []
    # an initializer may hold several tensors: q, k and v written into one qkv_proj
    # (``places``: member initializer -> [fused initializer, ...])
    owner: dict[str, set[str]] = {}
    for hf, entry in tensors.items():
        if not isinstance(entry, dict):
            continue
        st = storage_entry(hf, entry)
        places = st.get("places") or {}
        for i in st.get("inits", []):
            fused = places.get(i)
            owner.setdefault(fused[0] if fused else i, set()).add(hf)
    producers = {o: n for n in model.graph.node for o in n.output}

    def weight(name: str) -> set[str]:
        return owner.get(behind_conversion(name, producers, owner), set())

    schemes = {"DynamicQuantizeLinear": "tensor"}
    try:
        recipe = json.loads(meta.get("quantport_recipe", "{}"))
    except json.JSONDecodeError:
        recipe = {}
    if isinstance(recipe, dict) and recipe.get("act_scheme") == "token":
        # a QuantizeLinear is also a static scheme's: per token only where the recipe says so
        schemes["QuantizeLinear"] = "token"
    out: dict[str, str] = {}
    for n in model.graph.node:
        if n.op_type in ("MatMulInteger", "MatMulIntegerToFloat") and len(n.input) > 1:
            src = producers.get(n.input[0])
            scheme = schemes.get(src.op_type) if src is not None else None
            if scheme is not None:
                out.update(dict.fromkeys(weight(n.input[1]), scheme))
        elif n.op_type == "DynamicQuantizeMatMul" and len(n.input) > 1:
            out.update(dict.fromkeys(weight(n.input[1]), "tensor"))
    return dict(sorted(out.items()))


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _np_type(ort_type: str) -> Any:
    return {"tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(float)": np.float32,
            "tensor(float16)": np.float16}.get(ort_type, np.float32)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise FormatError(f"{path}: invalid JSON ({exc.__class__.__name__}); re-export the "
                          "artifact") from exc


class OrtLM:
    """An ONNX artifact run by ONNX Runtime on CPU (``CPUExecutionProvider``).

    Args:
        path: an ONNX artifact directory (``model.onnx`` [+ ``model.onnx.data``], the HF
            ``config.json``) or an ``.onnx`` file.
        threads: intra-op threads (default: the cores this process may use, at most 8).
        optimization: ORT graph optimization level: ``"all"`` (the default, what
            onnxruntime-genai uses: DQ → MatMul fuses to MatMulNBits), ``"extended"``,
            ``"basic"`` or ``"none"``.
        session_config: extra ``SessionOptions.add_session_config_entry`` pairs (e.g.
            ``{"session.qdq_matmulnbits_accuracy_level": "0"}``).

    Raises:
        FormatError: the graph or its external data is missing, truncated or unreadable, or
            ORT refuses the graph.
    """

    def __init__(self, path: str | os.PathLike[str], *, threads: int | None = None,
                 optimization: str = "all", session_config: dict[str, str] | None = None) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        self.model_path = onnx_model_path(path)
        graph = load_graph(self.model_path)
        check_external_data(self.model_path, graph)
        self.threads = threads or max(1, min(_cores(), 8))
        so = ort.SessionOptions()
        so.intra_op_num_threads = self.threads
        so.inter_op_num_threads = 1
        so.log_severity_level = 3  # errors only: ORT warns about unused initializers etc.
        levels = {"all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
                  "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
                  "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                  "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL}
        if optimization not in levels:
            raise QuantportError(f"optimization {optimization!r}: expected one of "
                                 f"{', '.join(levels)}")
        so.graph_optimization_level = levels[optimization]
        for k, v in (session_config or {}).items():
            so.add_session_config_entry(k, str(v))
        try:
            self.session = ort.InferenceSession(str(self.model_path), so,
                                                providers=["CPUExecutionProvider"])
        except Exception as exc:  # ORT raises its own Fail/InvalidGraph/... (pybind) classes
            first = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()),
                         exc.__class__.__name__)
            raise FormatError(f"{self.model_path}: ONNX Runtime cannot load it ({first[:300]})"
                              ) from exc
        #: Hugging Face weights whose MatMul input the graph quantizes at run time (W8A8)
        self.dynamic_quant_inputs = dynamic_quant_weights(graph)
        self.inputs = {i.name: i for i in self.session.get_inputs()}
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.causal = "logits" in self.outputs
        self.past = sorted((n for n in self.inputs if n.startswith("past_key_values.")),
                           key=lambda n: (int(n.split(".")[1]), n))
        if self.causal:
            self._past_shape = self._kv_shape()
        log.debug("ORT session for %s: %d threads, inputs %s", self.model_path, self.threads,
                  list(self.inputs))

    # ------------------------------------------------------------------------------ decoders
    def _kv_shape(self) -> tuple[int, int]:
        """(kv heads, head size) of the cache: from the input shapes where they are numbers,
        else genai_config.json / config.json beside the graph."""
        if not self.past:
            return (0, 0)
        shape = self.inputs[self.past[0]].shape
        heads = shape[1] if len(shape) == 4 and isinstance(shape[1], int) else None
        dim = shape[3] if len(shape) == 4 and isinstance(shape[3], int) else None
        if heads is None or dim is None:
            d = self.model_path.parent
            dec = _read_json(d / "genai_config.json").get("model", {}).get("decoder", {})
            cfg = _read_json(d / "config.json")
            n_heads = cfg.get("num_attention_heads") or dec.get("num_attention_heads")
            heads = heads or dec.get("num_key_value_heads") or cfg.get(
                "num_key_value_heads", n_heads)
            dim = dim or dec.get("head_size") or cfg.get("head_dim") or (
                cfg["hidden_size"] // n_heads if n_heads and cfg.get("hidden_size") else None)
        if not heads or not dim:
            raise FormatError(f"{self.model_path}: the KV cache's shape is not in the graph and "
                              "there is no genai_config.json or config.json beside it to read "
                              "it from; re-export the artifact")
        return int(heads), int(dim)

    def _empty_past(self) -> dict[str, np.ndarray]:
        heads, dim = self._past_shape
        return {n: np.zeros((1, heads, 0, dim), dtype=_np_type(self.inputs[n].type))
                for n in self.past}

    def _feed(self, ids: np.ndarray, past: dict[str, np.ndarray], start: int) -> dict[str, Any]:
        n = len(ids)
        feed: dict[str, Any] = dict(past)
        feed["input_ids"] = np.asarray(ids, dtype=_np_type(self.inputs["input_ids"].type))[None]
        if "attention_mask" in self.inputs:
            feed["attention_mask"] = np.ones(
                (1, start + n), dtype=_np_type(self.inputs["attention_mask"].type))
        if "position_ids" in self.inputs:
            feed["position_ids"] = np.arange(
                start, start + n, dtype=_np_type(self.inputs["position_ids"].type))[None]
        return feed

    def step(self, ids: np.ndarray, past: dict[str, np.ndarray] | None = None,
             start: int = 0) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """One run of the graph: ``ids`` at positions ``start ..`` after ``past`` (``None``:
        an empty cache). Returns the logits ``[len(ids), vocab]`` (numpy float32) and the
        cache to pass to the next step."""
        if not self.causal:
            raise QuantportError(f"{self.model_path}: an encoder graph has no logits")
        out = self.session.run(None, self._feed(ids, past if past is not None
                                                else self._empty_past(), start))
        named = dict(zip(self.outputs, out, strict=True))
        present = {f"past_key_values.{k.removeprefix('present.')}": v
                   for k, v in named.items() if k.startswith("present.")}
        return named["logits"][0], present

    def logits(self, ids: np.ndarray, first: int = 0) -> Any:
        """Logits of positions ``first ..`` of one window, prefilled with an empty cache
        (float32 torch ``[n - first, vocab]``)."""
        import torch

        lg, _ = self.step(np.asarray(ids))
        return torch.from_numpy(np.ascontiguousarray(lg[first:], dtype=np.float32))

    def generate(self, ids: np.ndarray, n: int) -> tuple[list[int], np.ndarray]:
        """Greedy decoding of ``n`` tokens after the prompt ``ids``: the prompt in one run with
        an empty cache, then one token per run through the cache.

        Returns:
            The ``n`` tokens and the logits each was chosen from (``[n, vocab]``).
        """
        ids = np.asarray(ids)
        lg, past = self.step(ids)
        rows = [lg[-1]]
        tokens = [int(lg[-1].argmax())]
        pos = len(ids)
        while len(tokens) < n:
            lg, past = self.step(np.asarray([tokens[-1]]), past, pos)
            pos += 1
            rows.append(lg[-1])
            tokens.append(int(lg[-1].argmax()))
        return tokens, np.stack(rows).astype(np.float32)

    # ------------------------------------------------------------------------------ encoders
    def embed_texts(self, texts: list[str], tok: Any) -> np.ndarray:
        """Sentence embeddings ``[n, dim]``: the graph's ``sentence_embedding`` output (mean
        pooled and normalised, as sentence-transformers returns it) where it has one, else the
        mean of ``last_hidden_state`` over the attention mask; ``tok`` tokenizes (128 tokens
        at most, as all-MiniLM-L6-v2's ``max_seq_length``)."""
        enc = tok(texts, padding=True, truncation=True, max_length=128, return_tensors="np")
        ids, mask = enc["input_ids"], enc["attention_mask"]
        feed: dict[str, Any] = {}
        for name, arr in (("input_ids", ids), ("attention_mask", mask),
                          ("token_type_ids", enc.get("token_type_ids", np.zeros_like(ids)))):
            if name in self.inputs:
                feed[name] = np.asarray(arr, dtype=_np_type(self.inputs[name].type))
        want = "sentence_embedding" if "sentence_embedding" in self.outputs else (
            "last_hidden_state")
        if want not in self.outputs:
            raise FormatError(f"{self.model_path}: the graph has neither sentence_embedding nor "
                              f"last_hidden_state among its outputs ({', '.join(self.outputs)})")
        (out,) = self.session.run([want], feed)
        out = np.asarray(out, dtype=np.float32)
        if want == "sentence_embedding":
            return out
        m = mask[..., None].astype(np.float32)
        return (out * m).sum(1) / np.maximum(m.sum(1), 1)

    def close(self) -> None:
        """Drop the session (ORT frees its buffers with it)."""
        self.session = None


def genai_tokenize(path: str | os.PathLike[str], texts: list[str]) -> tuple[list[int] | None, str]:
    """onnxruntime-genai's own token ids for ``texts`` (concatenated), as it tokenizes prompts
    when it serves the directory; ``None`` and why when it cannot load the directory.

    A leading BOS that onnxruntime-genai adds (``add_bos_token`` in tokenizer_config.json) is
    dropped: the check compares the text's tokens, as for the other runtimes.
    """
    try:
        import onnxruntime_genai as og
    except ImportError:
        return None, "onnxruntime-genai is not installed (pip install onnxruntime-genai)"
    p = Path(path)
    try:
        tokenizer = og.Tokenizer(og.Model(str(p if p.is_dir() else p.parent)))
    except Exception as exc:  # og raises RuntimeError (and pybind errors) with C++ messages
        first = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()),
                     exc.__class__.__name__)
        return None, f"onnxruntime-genai cannot load {p} ({first[:200]})"
    bos = _read_json((p if p.is_dir() else p.parent) / "genai_config.json").get(
        "model", {}).get("bos_token_id")
    ids: list[int] = []
    for t in texts:
        got = [int(i) for i in tokenizer.encode(t)]
        if got and bos is not None and got[0] == bos:
            got = got[1:]
        ids.extend(got)
    return ids, ""
