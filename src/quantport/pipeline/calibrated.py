"""Calibrated methods: the calibration engine's statistics, layer by layer, into the rounding.

For a calibrated recipe (``--method gptq``) the pipeline's compute stage is this loop instead of
:func:`quantport.pipeline.execute.execute` alone:

1. every planned tensor outside the decoder layers' Linear weights (embeddings, norms, the LM
   head) is rounded to nearest by ``execute`` (in parallel workers where it pays);
2. the calibration windows run through the model one decoder layer at a time
   (:class:`~quantport.pipeline.layerwise.LayerwiseModel`); for each layer the statistics of its
   Linear inputs are collected, each Linear weight is rounded by GPTQ onto its planned grid
   (:func:`quantport.quant.gptq.gptq_quantize`: integer schemes, every ggml type) and put into
   the writer's sink, and the rounded weights replace the float ones in the layer before it runs
   again to feed the next layer (true-sequential; ``--calib-inputs float`` feeds the float
   layer's outputs instead).

Encoders (BERT) run the same loop on calibration sentences (padded, masked; statistics over
real tokens only): GPTQ rounds their Linear weights as a decoder's. SmoothQuant cannot fold
its scales into a post-LayerNorm encoder (:mod:`quantport.pipeline.transforms`): the smoothed
Linear layers need their input multiplied by ``1/s`` at run time, which a writer stores as
``NAME.input_smooth`` plan rows (:data:`~quantport.pipeline.transforms.SMOOTH_SUFFIX`); a
plan without them is refused before any work.

Library code: progress through ``on_progress("calibrate", layer, n_layers)``; nothing printed.
"""

from __future__ import annotations

import copy
import logging
import time
from types import SimpleNamespace
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from quantport.formats import compressed_tensors as ct
from quantport.ir import dequantize
from quantport.pipeline.execute import (Sink, apply_edit, execute, keep_freed_memory,
                                        release_freed_memory)
from quantport.errors import QuantportError, UnsupportedQuantError
from quantport.pipeline.layerwise import (
    LayerStats,
    LayerwiseModel,
    Sentences,
    StatsCache,
    cache_key,
    calibration_inputs,
)
from quantport.pipeline.transforms import (
    CLIP_TOKENS,
    INPUT_PREFIX,
    SMOOTH_SUFFIX,
    apply_scales,
    awq_clip,
    awq_layer,
    bert_groups,
    input_scale_hooks,
    llama_groups,
    smooth_alpha_for,
    smooth_layer,
)
from quantport.plan import Plan, PlanRow
from quantport.quant.scheme import IntScheme
from quantport.readers.source import ModelSource
from quantport.recipe import Recipe

__all__ = ["CalibrationReport", "run_calibrated"]

log = logging.getLogger(__name__)
Progress = Callable[[str, int, int], None]

#: calibration tokens AWQ's scale search runs on (whole windows from the start of the
#: calibration set): the search runs each group's module 20 times, so it uses a sample, where
#: the Hessians and statistics use every window
AWQ_SAMPLE_TOKENS = 4096


@dataclass
class CalibrationReport:
    """What the calibrated stage did.

    Attributes:
        windows: calibration windows used (``[n, tokens]``).
        seconds: wall time of the layer loop.
        notes: adjustments made to the recipe (act-order converted to static groups...).
        errors: per weight, GPTQ's layer-output error on the calibration data,
            ``tr((W - Q) H (W - Q)ᵀ)``.
        cached: the statistics came from the calibration cache (no forward pass ran).
        device: where the calibration and GPTQ ran (``cpu`` or ``cuda``).
    """

    windows: tuple[int, int]
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    errors: dict[str, float] = field(default_factory=dict)
    cached: bool = False
    device: str = "cpu"


def stores_g_idx(fmt: str, target: Any) -> bool:
    """Whether format ``fmt`` can store act-order group indices (``g_idx``) for ``target``
    so that its runtime loads them: GPTQ checkpoints (``g_idx``, ``desc_act``), integer groups
    or channels. Not compressed-tensors: its ``weight_g_idx`` (``actorder="group"``, which
    :func:`quantport.formats.compressed_tensors.pack_record` can write) is refused at load by
    compressed-tensors 0.19 and later, the pinned 0.20 included (:data:`quantport.formats.
    compressed_tensors.GROUP_ACTORDER_LOADS`); not GGUF or ONNX, whose blocks sit at fixed
    columns."""
    if not isinstance(target, IntScheme):
        return False
    if fmt == "gptq":
        return target.granularity in ("group", "channel")
    return (fmt == "safetensors" and ct.GROUP_ACTORDER_LOADS and target.granularity == "group")


def _act_order(recipe: Recipe, row: PlanRow, report: CalibrationReport) -> tuple[bool, bool]:
    """(act_order, static_groups) for GPTQ on ``row``."""
    if recipe.act_order == "none":
        return False, False
    if recipe.act_order == "group" and not stores_g_idx(recipe.format, row.target):
        note = (f"--act-order group needs g_idx, which {recipe.format} cannot store for "
                f"{row.type_name}: using static groups")
        if note not in report.notes:
            report.notes.append(note)
            log.warning(note)
        return True, True
    return True, recipe.act_order == "static"


def run_calibrated(
    source: ModelSource,
    plan: Plan,
    sink: Sink,
    *,
    importance: Mapping[int, np.ndarray] | None = None,
    workers: int | None = None,
    on_progress: Progress | None = None,
) -> CalibrationReport:
    """Compute every planned tensor of a calibrated recipe and put it into ``sink``.

    Raises:
        ConfigError: unusable calibration text (see :func:`calibration_windows`).
        UnsupportedQuantError: an architecture the engine cannot run (encoders).
    """

    from quantport.quant.gptq import grid_for

    from quantport.pipeline.device import resolve_device

    recipe = plan.recipe
    t0 = time.perf_counter()
    keep_freed_memory()  # the forward passes' batch temporaries: reused, not faulted in anew
    device = resolve_device(recipe.device)
    model = LayerwiseModel(source, dtype=recipe.calib_dtype, device=device)
    ops = gptq_ops(device, recipe.calib_dtype)
    by_source = {row.source: i for i, row in enumerate(plan.rows)}
    if model.encoder:
        _check_encoder(model, plan, by_source)
    if recipe.calib_inputs == "asymmetric" and (model.encoder
                                                or not model.staged(model.layers[0])):
        # the float stream runs sub-block by sub-block beside the quantized one, as
        # LayerwiseModel.run_staged knows the layer
        raise UnsupportedQuantError(
            f"{source.path}: --calib-inputs asymmetric runs on pre-norm decoder layers (Llama, "
            f"Mistral, Qwen2/3), not on {type(model.layers[0]).__name__}; use --calib-inputs "
            "quantized")
    assert recipe.calib is not None  # make_recipe gives calibrated methods a text
    windows = calibration_inputs(source, recipe.calib, recipe.calib_samples, recipe.calib_len)
    report = CalibrationReport(windows=tuple(windows.shape),  # type: ignore[arg-type]
                               device=device)
    # every planned tensor of a decoder layer goes through the layer loop: a transform (AWQ,
    # SmoothQuant) changes norms as well as Linear weights
    in_layers = {by_source[n] for li in range(model.n_layers) for n in model.param_names(li)
                 if n in by_source}
    cfg = source.config
    n_head = int(cfg.get("num_attention_heads") or 1)
    n_head_kv = int(cfg.get("num_key_value_heads") or n_head)

    # GPTQ also rounds the LM head (GPTQModel's lm_head=True) when the plan quantizes it --
    # the tied token table of a GGUF or ONNX file is that head -- on its input's Hessian
    head = (_head(model, plan, by_source)
            if "gptq" in recipe.method and not model.encoder else None)

    # 1. everything outside the decoder layers: round-to-nearest, as without calibration
    # (a writer's input-scale rows, SMOOTH_SUFFIX, are no source tensors: the layer loop puts
    # them)
    others = [i for i in range(len(plan.rows))
              if i not in in_layers and (head is None or plan.rows[i].source != head)
              and not plan.rows[i].source.endswith(SMOOTH_SUFFIX)]
    execute(source, plan, sink, importance=importance, workers=workers, only=others)

    # the records are packed and written by a thread of their own while the next weight is
    # rounded (packing is host work; on a GPU it would otherwise leave the GPU idle)
    with BackgroundSink(sink) as sink:
        # 2. the layers, in order (from the cache when this very calibration ran before)
        # the α used, given or the default for the activations' scheme (one int8 scale per
        # tensor or per token)
        alpha = (recipe.smooth_alpha if recipe.smooth_alpha is not None
                 else smooth_alpha_for(model.layers[0],
                                       per_tensor=recipe.act_scheme == "tensor"))
        if recipe.method == "smoothquant" and recipe.smooth_alpha is None:
            report.notes.append(f"SmoothQuant alpha {alpha} (the default for "
                                f"{type(model.layers[0]).__name__} with activations per "
                                f"{recipe.act_scheme}; --smooth-alpha sets another)")
        settings = {"method": recipe.method, "dtype": recipe.calib_dtype, "device": device,
                    "inputs": recipe.calib_inputs, "damp": recipe.damp,
                    "act_order": recipe.act_order, "alpha": alpha,
                    "awq_tokens": AWQ_SAMPLE_TOKENS, "awq_clip": CLIP_TOKENS,
                    "targets": [[r.source, str(r.target), getattr(r.target, "rule", None), r.edit]
                                for r in plan.rows]}
        cache = StatsCache(cache_key(
            source, windows.array() if isinstance(windows, Sentences) else windows, settings))
        cached = cache.complete(model.n_layers + (head is not None))
        report.cached = cached
        if cached:
            log.info("calibration statistics from the cache %s: no forward passes", cache.dir)
        asym = recipe.calib_inputs == "asymmetric"
        if asym:
            model.streams = 3  # hf below
        h = None if cached else model.embed(windows)
        # the float model's hidden states beside the rounded model's (GPTAQ)
        hf = h.clone() if asym and h is not None else None
        log.debug("outside the layers written; calibration starts")
        for li in range(model.n_layers):
            layer = model.load(li)
            log.debug("layer %d loaded", li)
            linears = model.weight_names(li, layer)
            rows = {name: plan.rows[by_source[name]] for name in linears if name in by_source}
            local = len(f"{model.prefix}{li}.")
            grids = {name[local:].removesuffix(".weight"): grid_for(r.target, r.shape)
                     for name, r in rows.items() if r.quantized}
            hit = cache.load(li) if cached else None
            if cached and hit is None:
                raise QuantportError(f"calibration cache {cache.dir} lost layer {li} during the "
                                     "run; run the conversion again")
            scales: dict[str, np.ndarray] = {}
            float_layer = None  # the asymmetric target's float layer (see below)
            if hit is not None:
                scales = hit[1]
                apply_scales(layer, scales)
            elif "awq" in recipe.method:
                sample = h[: max(1, AWQ_SAMPLE_TOKENS // h.shape[1])]
                firsts = [g.linears[0] for g in llama_groups(layer)]
                inputs = model.capture(li, layer, sample,
                                       list(dict.fromkeys([*firsts, "self_attn.o_proj"])))
                scales = awq_layer(layer, inputs, grids, model.caller(h.shape[1]))
                if asym:
                    # the float reference computes in the scaled basis the rounded weights
                    # see (the scales keep the float function), but is not clipped: clipping
                    # is part of the rounding
                    float_layer = copy.deepcopy(layer)
                scales.update(awq_clip(layer, inputs, grids))
                del inputs
            elif recipe.method == "smoothquant":
                _, st = model.run(li, layer, h, collect=True, hessian=False, activations=True)
                assert st is not None
                scales = smooth_layer(layer, {n.removesuffix(".weight")[local:]: st.of(n).abs_max
                                              for n in linears}, alpha=alpha)
            # unfolded scales (post-LayerNorm encoders): the writer's 1/s rows, and the same
            # division in the forward passes below, so the layer computes what it computed before
            hooks = input_scale_hooks(layer, scales)
            for key, s in scales.items():
                if key.startswith(INPUT_PREFIX):
                    for lname in next(g.linears for g in bert_groups(layer)
                                      if g.linears[0] == key[len(INPUT_PREFIX):]):
                        sink.put(by_source[f"{model.prefix}{li}.{lname}{SMOOTH_SUFFIX}"],
                                 (1.0 / np.asarray(s, np.float32)).astype(np.float32))
            rounder = _LayerRounder(plan, sink, report, by_source, linears, (n_head, n_head_kv),
                                    ops)
            gptq = "gptq" in recipe.method
            out = stats = None
            staged = (hit is None and gptq and recipe.calib_inputs != "float"
                      and model.staged(layer))
            if hit is not None:
                stats = hit[0] if gptq else None
            elif staged:
                # one pass: each sub-block's Hessian, rounding, then its rounded output (h in place)
                if asym and float_layer is None:
                    float_layer = copy.deepcopy(layer)
                ref = (float_layer, hf) if asym else None
                stats = model.run_staged(li, layer, h, rounder.group, ref=ref)
                del ref, float_layer
            elif gptq:
                # statistics of the (transformed) layer's inputs, then rounding onto the grids
                out, stats = model.run(li, layer, h, collect=True)
            elif recipe.calib_inputs == "float":
                out, _ = model.run(li, layer, h)
            if hit is None:
                cache.save(stats or LayerStats(li), scales, model.n_layers)
            for lname, param in layer.named_parameters():
                name = f"{model.prefix}{li}.{lname}"
                idx = by_source.get(name)
                if idx is None or name in rounder.written:
                    continue
                if name in linears and plan.rows[idx].quantized:
                    g = None if stats is None else stats.of(name)
                    rounder.one(name, None if g is None else g.hessian, None,
                                None if g is None else g.cross)
                else:
                    sink.put(idx, param.detach().cpu().numpy().copy())
            source.release()
            if cached or staged:
                pass  # no activations to carry (cache), or h is already the rounded layer's output
            elif recipe.calib_inputs == "quantized" or out is None:
                del out
                h, _ = model.run(li, layer, h)
            else:
                h = out
            for hd in hooks:
                hd.remove()
            model.unload(li)
            release_freed_memory()
            log.debug("layer %d done", li)
            if on_progress:
                on_progress("calibrate", li + 1, model.n_layers)
        model.release_scratch()
        if head is not None:
            hit = cache.load(model.n_layers) if cached else None
            stats = hit[0] if hit is not None else model.head_stats(h, head, hf)
            if hit is None:
                cache.save(stats, {}, model.n_layers)
            import torch

            weight = torch.nn.Parameter(model._tensor(head), requires_grad=False)
            source.release()
            _LayerRounder(plan, sink, report, by_source, {head: SimpleNamespace(weight=weight)},
                          (n_head, n_head_kv), ops).one(head, stats.of(head).hessian, None,
                                                        stats.of(head).cross)
    report.seconds = time.perf_counter() - t0
    return report


class BackgroundSink:
    """A :class:`~quantport.pipeline.execute.Sink` whose ``put`` runs on one thread of its
    own, in call order, at most :attr:`BACKLOG` calls behind; leaving the ``with`` block waits
    for them and raises the first error any of them raised (after an error inside the block,
    the pending ones are cancelled)."""

    BACKLOG = 4

    def __init__(self, sink: Sink) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.sink = sink
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="quantport-write")
        self.pending: list[Any] = []

    def put(self, i: int, value: Any, rows: tuple[int, int] | None = None) -> int:
        """Queue ``sink.put(i, value, rows)`` (``value`` must not change afterwards);
        returns 0 (the bytes are the writer's to count)."""
        while len(self.pending) >= self.BACKLOG:
            self.pending.pop(0).result()
        self.pending.append(self.pool.submit(self.sink.put, i, value, rows))
        return 0

    def chunkable(self, i: int) -> bool:
        return self.sink.chunkable(i)

    def sync(self) -> None:
        self.drain()
        self.sink.sync()

    def drain(self) -> None:
        """Wait for every queued ``put``; raises the first error."""
        while self.pending:
            self.pending.pop(0).result()

    def __enter__(self) -> BackgroundSink:
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        try:
            if exc_type is None:
                self.drain()
        finally:
            self.pool.shutdown(wait=True, cancel_futures=True)


def gptq_ops(device: str, calib_dtype: str = "float32") -> Any:
    """Where GPTQ's column loop runs: next to the layer, on torch tensors of a GPU
    (:class:`~quantport.pipeline.device.TorchOps`), or numpy on the CPU (None). On a GPU a
    bfloat16 calibration also runs GPTQ's algebra in float32 (half the memory, as GPTQModel
    and llm-compressor); a float32 one in float64, as on the CPU."""
    from quantport.pipeline.device import TorchOps

    if device == "cpu":
        return None
    return TorchOps(device, precision="float32" if calib_dtype == "bfloat16" else "float64")


def _check_encoder(model: LayerwiseModel, plan: Plan, by_source: dict[str, int]) -> None:
    """Refuse, before any work, what the encoder loop cannot do: AWQ (its scale groups are
    Llama's), and SmoothQuant into a plan without the input-scale rows its unfolded groups
    need (see the module docstring)."""
    recipe = plan.recipe
    arch = model.source.architecture.name
    if "awq" in recipe.method:
        raise UnsupportedQuantError(f"{model.source.path}: AWQ's scale groups are defined for "
                                    f"Llama-style decoders, not {arch}; use --method gptq or "
                                    "smoothquant")
    if recipe.method != "smoothquant":
        return
    layer = model.layers[0]
    missing = [f"{model.prefix}{i}.{n}{SMOOTH_SUFFIX}" for i in range(model.n_layers)
               for g in bert_groups(layer) for n in g.linears
               if f"{model.prefix}{i}.{n}{SMOOTH_SUFFIX}" not in by_source]
    if missing:
        raise UnsupportedQuantError(
            f"{model.source.path}: SmoothQuant on a post-LayerNorm {arch} encoder needs a "
            f"per-channel input scale before each smoothed Linear (the LayerNorm output also "
            f"feeds the residual, so the scale cannot be folded into it), and the "
            f"{recipe.format} writer stores none ({missing[0]}); use --method rtn or gptq"
        )


def _head(model: LayerwiseModel, plan: Plan, by_source: dict[str, int]) -> str | None:
    """The source name of the LM head's weight if the plan quantizes it: ``lm_head.weight``,
    or the token table when the head is tied to it (no ``lm_head.weight`` in the source)."""
    root = model.prefix.split(".layers.")[0]
    for name in ("lm_head.weight", f"{root}.embed_tokens.weight"):
        idx = by_source.get(name)
        if idx is not None:
            return name if plan.rows[idx].quantized else None
        if name == "lm_head.weight" and name in model.source.names():
            return None  # an untied head the plan drops or keeps elsewhere
    return None


class _LayerRounder:
    """Rounds one layer's Linear weights onto their planned grids (GPTQ given a Hessian, else
    to nearest), writes each record, and puts the rounded values back into the layer."""

    def __init__(self, plan: Plan, sink: Sink, report: CalibrationReport,
                 by_source: dict[str, int], linears: dict[str, Any],
                 heads: tuple[int, int], ops: Any = None) -> None:
        self.plan, self.sink, self.report = plan, sink, report
        self.by_source, self.linears, self.heads = by_source, linears, heads
        self.ops = ops  # where GPTQ runs (None: numpy on the CPU)
        self.written: set[str] = set()

    def group(self, names: list[str], hess: np.ndarray, cross: np.ndarray | None = None) -> None:
        """Round the quantized weights among ``names`` (Linear layers sharing ``hess``): one
        factorisation of ``hess`` for all of them (``run_gptq``'s ``factor``); ``cross``:
        the asymmetric term (:attr:`InputStats.cross`), or None."""
        factor: dict[Any, Any] = {}
        for name in names:
            idx = self.by_source.get(name)
            if idx is not None and self.plan.rows[idx].quantized:
                self.one(name, hess, factor, cross)

    def one(self, name: str, hess: np.ndarray | None,
            factor: dict[Any, Any] | None = None, cross: np.ndarray | None = None) -> None:
        """Round Linear weight ``name`` (Hugging Face name); ``factor``: see :meth:`group`;
        ``cross``: GPTQ then rounds toward the float model's output (GPTAQ, see
        :func:`quantport.quant.gptq.run_gptq`)."""
        import torch

        from quantport.quant.gptq import grid_for, run_gptq
        from quantport.quant.rtn import quantize_rtn

        recipe, report = self.plan.recipe, self.report
        idx = self.by_source[name]
        row = self.plan.rows[idx]
        param = self.linears[name].weight
        # on a GPU without an edit (q/k permutations are numpy) the weight and the rounded
        # values stay there; otherwise float32 numpy
        on_device = self.ops is not None and row.edit is None
        if on_device:
            we = param.detach()
        else:
            w = param.detach().cpu().numpy().copy()
            we = apply_edit(w, row.edit, *self.heads)
        grid = grid_for(row.target, row.shape)
        if hess is None:
            we = we if isinstance(we, np.ndarray) else we.cpu().numpy()
            record = quantize_rtn(we, grid, name=row.name)
            values = dequantize(record)
        else:
            act, static = _act_order(recipe, row, report)
            res = run_gptq(we, hess, grid, damp=recipe.damp, act_order=act,
                           static_groups=static, name=row.name, ops=self.ops,
                           host_values=not on_device, factor=factor, cross=cross)
            record, values = res.record, res.values
            report.errors[row.name] = res.error
            if res.fell_back:
                report.notes.append(f"{row.name}: Hessian not positive definite, rounded to "
                                    "nearest")
            log.info("%s: GPTQ layer-output error %.4g (damp %s)", row.name, res.error,
                     res.damp)
        self.sink.put(idx, record)
        self.written.add(name)
        with torch.no_grad():
            if isinstance(values, np.ndarray):
                values = torch.from_numpy(apply_edit(values, row.edit, *self.heads, undo=True))
            param.copy_(values)
