"""Transforms folded into the model before rounding: AWQ's activation-aware scales and
SmoothQuant's activation-range migration.

Both multiply the input channels of a group of Linear layers that read the same tensor by a
per-channel scale ``s`` and divide the operation that produced that tensor by ``s`` (an RMSNorm's
weight, or the output rows of the previous Linear), so the float model computes exactly what it
computed before (``x/s · (W*s)ᵀ = x·Wᵀ``) and the result is an ordinary model any writer and
rounding method takes. They differ in how ``s`` is chosen:

* AWQ (AutoAWQ ``_search_best_scale``, llm-compressor ``AWQModifier``): a grid search over
  ``s = mean|x|^α / mean|W|^(1-α)`` for α in ``{0, 1/20, ..., 19/20}`` minimising the squared
  error of the group's output after rounding ``W*s`` onto its planned grid;
  then AWQ's clip search (AutoAWQ ``_search_best_clip``): per output row and group of every
  Linear but q/k, the clipping threshold ``max|W|·(1 - i/20)``, i < 10, whose rounded group
  best reproduces that group's share of the output on the (scaled) sample inputs;
* SmoothQuant (``smoothquant/smooth.py`` ``smooth_ln_fcs_llama_like``):
  ``s = max|x|^α / max|W|^(1-α)``, which moves activation outliers into the weights so int8
  activations lose less; α by architecture and activation scheme unless given
  (:func:`smooth_alpha_for`). On a Llama-style decoder it balances the reference's norm-fed
  groups and ``up → down`` too (:func:`llama_groups`).

The groups are the Llama mapping shared by llm-awq, AutoAWQ and llm-compressor
(../shared/reference/algorithms.md §2.2): ``input_layernorm → q,k,v`` (loss on the attention
output), ``v → o`` only when their shapes match (not with grouped-query attention),
``post_attention_layernorm → gate,up`` (loss on the MLP output), ``up → down``.

BERT (:func:`bert_groups`) is *post*-LayerNorm: q/k/v read the previous LayerNorm's output
(the embeddings' for layer 0, the previous layer's ``output.LayerNorm`` otherwise) and
``intermediate.dense`` reads ``attention.output.LayerNorm``'s -- and each of those outputs
also feeds the residual add of the next sub-block (``BertSelfOutput``/``BertOutput``:
``LayerNorm(dense(x) + input)``). Dividing the LayerNorm by ``s`` would divide the residual
too, and the LayerNorm after the add is not invariant to a per-channel scale, so no weight
can compensate: the fold the reference does for pre-norm models does not preserve a
post-norm model (mit-han-lab/smoothquant issue #21 "Post-LayerNorm support"; the paper, §4:
"when the input is from a residual add, we can add an extra scaling to the residual
branch"). Those groups are therefore smoothed as Intel Neural Compressor does when a scale
cannot be absorbed (``folding=False``): the Linear weights are multiplied by ``s`` and the
runtime multiplies the Linear's *input* by ``1/s`` just before quantizing it (one
element-wise ``Mul`` per group, :data:`SMOOTH_SUFFIX`), the LayerNorm and the residual stay
as they are. Every layer's scales then come from that layer's own input statistics: no scale
crosses a layer boundary.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from quantport.architectures import SMOOTH_SUFFIX, bert
from quantport.ir import dequantize
from quantport.quant.grid import Grid
from quantport.quant.rtn import quantize_rtn

__all__ = ["AWQ_GRID", "CLIP_PREFIX", "INPUT_PREFIX", "SMOOTH_ALPHA",
           "SMOOTH_ALPHA_PER_TENSOR", "SMOOTH_SUFFIX", "ScaleGroup", "apply_scales",
           "awq_clip", "awq_layer", "bert_groups", "groups_for", "input_scale_hooks",
           "llama_groups", "smooth_alpha_for", "smooth_layer"]

log = logging.getLogger(__name__)

#: AWQ's grid of exponents (AutoAWQ / llm-awq ``n_grid = 20``: α = 0, 0.05, ..., 0.95)
AWQ_GRID = 20

#: AutoAWQ ``_compute_best_clip`` defaults: thresholds ``1 - i/20`` for ``i < 0.5·20``, on at
#: most 512 sample tokens, output rows in batches
CLIP_GRID, CLIP_MAX_SHRINK, CLIP_TOKENS, CLIP_ROW_BATCH = 20, 0.5, 512, 256

#: SmoothQuant's default α: the reference's function default (``smooth_lm(..., alpha=0.5)``),
#: right where each token's activations get their own int8 scale (compressed-tensors W8A8).
#: SmolLM2-135M, simulated per-token int8 on 4 x 512 tokens of wiki.test.raw: KLD 0.030
#: unsmoothed, 0.015 with the reference's groups at 0.5, 0.012 with up -> down too at 0.5,
#: 0.021 with all groups at 0.8
SMOOTH_ALPHA = 0.5
#: ... and for a decoder whose activations get ONE int8 scale per tensor (ONNX w8a8,
#: ``DynamicQuantizeLinear``): then a single massive activation sets every token's step, and
#: more of the range must move into the weights, as in the reference's Llama-2 (0.85) and
#: Mistral (0.8) runs and llm-compressor's W8A8 example (0.8). SmolLM2-135M, ONNX w8a8 in ORT,
#: 16 x 512 tokens: KLD 0.519 unsmoothed, 0.190 at 0.5, 0.052 at 0.8. BERT keeps
#: :data:`SMOOTH_ALPHA` (all-MiniLM-L6-v2: 1 - cosine 0.00415 at 0.5, 0.00427 at 0.8)
SMOOTH_ALPHA_PER_TENSOR = 0.8

#: key prefix of a clipping threshold among the folded scales (``clip:self_attn.o_proj``)
CLIP_PREFIX = "clip:"

#: key prefix of an unfolded (input) scale among the scales, by the group's first Linear
#: (``input:attention.self.query``): the Linear layers' weights carry ``s``, their input is
#: divided by ``s`` at run time
INPUT_PREFIX = "input:"

# AutoAWQ ``_search_best_clip`` skips the query and key projections: their rounding error is
# seen through the softmax, not the group-wise output share the search measures
_NO_CLIP = ("self_attn.q_proj", "self_attn.k_proj")


@dataclass
class ScaleGroup:
    """Linear layers that read one tensor, and the operation that produced it.

    Attributes:
        prev: the producing module (an RMSNorm, or a Linear whose output rows are scaled).
        linears: local names (``self_attn.q_proj``...) of the Linear layers reading the tensor.
        inspect: local name of the module whose output the AWQ loss compares
            (``self_attn``, ``mlp`` or the single Linear).
        smooth: whether SmoothQuant balances this group: the norm-fed groups (as the
            reference) and up -> down; not v -> o (see :func:`llama_groups`).
        residual: ``prev``'s output also feeds a residual add (post-LayerNorm), so ``s``
            cannot be folded into it: the input is divided by ``s`` at run time instead.
    """

    prev: str
    linears: list[str]
    inspect: str
    smooth: bool
    residual: bool = False


def llama_groups(layer: Any) -> list[ScaleGroup]:
    """The scale groups of a Llama-style decoder layer (AutoAWQ ``get_layers_for_scaling``)."""
    groups = [ScaleGroup("input_layernorm",
                         ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"],
                         "self_attn", True)]
    v, o = layer.self_attn.v_proj.weight, layer.self_attn.o_proj.weight
    if tuple(v.shape) == tuple(o.shape):  # llm-awq PR #67: skipped for grouped-query attention
        groups.append(ScaleGroup("self_attn.v_proj", ["self_attn.o_proj"], "self_attn.o_proj",
                                 False))
    groups.append(ScaleGroup("post_attention_layernorm", ["mlp.gate_proj", "mlp.up_proj"],
                             "mlp", True))
    # SmoothQuant balances this group too, beyond the reference's norm-fed ones: down_proj's
    # input SiLU(gate)·up carries the largest activation outliers of the layer (SmolLM2-135M:
    # max |x| 3385 in layer 11 against a median channel max of 1.7; one per-tensor int8 scale
    # then rounds every other value to zero), and its scale folds exactly into up_proj's
    # output rows, SiLU(gate)·(up/s) = (SiLU(gate)·up)/s (AutoAWQ ``scale_fc_fc``)
    groups.append(ScaleGroup("mlp.up_proj", ["mlp.down_proj"], "mlp.down_proj", True))
    return groups


def bert_groups(layer: Any) -> list[ScaleGroup]:
    """The SmoothQuant groups of a BERT layer (``BertLayer``): the LayerNorm-fed ones, as
    the reference smooths (q/k/v, and the MLP's first Linear), both feeding a residual too
    (see the module docstring). ``attention.output.dense`` and ``output.dense`` are not
    smoothed (the reference smooths only norm-fed groups)."""
    del layer  # one layout for every BERT layer
    qkv, mlp = list(bert.SMOOTHED[:3]), list(bert.SMOOTHED[3:])
    return [ScaleGroup("", qkv, "attention.self", True, residual=True),
            ScaleGroup("attention.output.LayerNorm", mlp, "intermediate", True, residual=True)]


def groups_for(layer: Any) -> list[ScaleGroup]:
    """The scale groups of ``layer``, by its architecture (BERT, else Llama-style)."""
    if type(layer).__name__ == "BertLayer":
        return bert_groups(layer)
    return llama_groups(layer)


def smooth_alpha_for(layer: Any, per_tensor: bool = False) -> float:
    """SmoothQuant's default α for ``layer``'s architecture and activation scheme
    (``per_tensor``: one int8 scale per activation tensor, else one per token):
    :data:`SMOOTH_ALPHA_PER_TENSOR` for a decoder with per-tensor activations, else
    :data:`SMOOTH_ALPHA`."""
    if per_tensor and type(layer).__name__ != "BertLayer":
        return SMOOTH_ALPHA_PER_TENSOR
    return SMOOTH_ALPHA


def input_scale_hooks(layer: Any, scales: dict[str, np.ndarray]) -> list[Any]:
    """Forward pre-hooks dividing the input of every Linear of an unfolded group by its
    ``s`` (``input:NAME`` keys of ``scales``), so the smoothed float layer computes what it
    computed before. Linear layers reading one tensor get one divided tensor. Returns the
    handles (``.remove()`` them)."""
    import torch

    handles = []
    for group in groups_for(layer):
        s = scales.get(INPUT_PREFIX + group.linears[0])
        if s is None:
            continue
        inv = torch.from_numpy(1.0 / np.asarray(s, np.float32))
        memo: dict[str, Any] = {}

        def hook(_m: Any, args: tuple[Any, ...], _inv: Any = inv,
                 _memo: dict[str, Any] = memo) -> tuple[Any, ...]:
            x = args[0]
            if _memo.get("x") is not x:  # q/k/v read the same tensor: divide it once
                _memo["x"], _memo["y"] = x, x * _inv.to(x.device, x.dtype)
            return (_memo["y"], *args[1:])

        handles += [layer.get_submodule(n).register_forward_pre_hook(hook)
                    for n in group.linears]
    return handles


def _fold(layer: Any, group: ScaleGroup, s: Any) -> None:
    """``prev /= s`` on its output channels, each Linear ``*= s`` on its input channels
    (AutoAWQ ``scale_ln_fcs`` / ``scale_fc_fc``); a residual group's ``prev`` is left alone
    (its input is divided at run time: :func:`input_scale_hooks`)."""
    s = s.to(layer.get_submodule(group.linears[0]).weight.device)  # the layer's device
    if group.residual:
        for name in group.linears:
            layer.get_submodule(name).weight.mul_(s.view(1, -1))
        return
    prev = layer.get_submodule(group.prev)
    w = prev.weight
    if w.ndim == 1:  # a norm's weight
        w.div_(s)
    else:  # the previous Linear's output rows (the last len(s) rows, as scale_fc_fc)
        w[-s.numel():].div_(s.view(-1, 1))
    if getattr(prev, "bias", None) is not None:
        prev.bias[-s.numel():].div_(s)
    for name in group.linears:
        layer.get_submodule(name).weight.mul_(s.view(1, -1))


def _clip(layer: Any, name: str, max_val: Any) -> None:
    """Clamp Linear ``name``'s weight to ``±max_val`` per (output row, group) (AutoAWQ
    ``apply_clip``); ``max_val`` is ``[out, n_groups]``."""
    w = layer.get_submodule(name).weight
    rows, groups = max_val.shape
    max_val = max_val.to(w.device)
    wg = w.view(rows, groups, -1)
    m = max_val.unsqueeze(-1)
    wg.copy_(wg.clamp(-m, m))


def apply_scales(layer: Any, scales: dict[str, np.ndarray]) -> None:
    """Fold scales chosen earlier (by :func:`awq_layer` or :func:`smooth_layer`, e.g. read
    from the calibration cache) into ``layer``: ``prev`` name -> ``s``, then the clipping
    thresholds (``clip:NAME`` -> ``[out, n_groups]``) in the order they were chosen."""
    import torch

    with torch.no_grad():
        for group in groups_for(layer):
            key = INPUT_PREFIX + group.linears[0] if group.residual else group.prev
            if key in scales:
                _fold(layer, group, torch.from_numpy(np.asarray(scales[key], np.float32)))
        for key, value in scales.items():
            if key.startswith(CLIP_PREFIX):
                _clip(layer, key[len(CLIP_PREFIX):],
                      torch.from_numpy(np.asarray(value, np.float32)))


def _fake_quant(w: np.ndarray, grid: Grid) -> np.ndarray:
    return dequantize(quantize_rtn(w, grid))


def awq_layer(
    layer: Any,
    inputs: dict[str, Any],
    grids: dict[str, Grid],
    call: Callable[[Any, Any], Any],
    *,
    n_grid: int = AWQ_GRID,
) -> dict[str, np.ndarray]:
    """Search and fold AWQ scales into ``layer``, group by group (in place).

    Args:
        layer: the decoder layer (float32 weights).
        inputs: per group's first Linear (local name), its input activations
            ``[windows, tokens, in]`` on the calibration sample.
        grids: local Linear name -> the grid it will be rounded onto (layers without one,
            kept in float, are scaled but not fake-quantized).
        call: ``call(module, x)`` runs a module on an input (the attention needs its rotary
            embeddings; the caller knows them).
        n_grid: exponents tried.

    Returns:
        The folded scales by group (``prev`` name); the chosen α is logged.
    """
    import torch

    chosen: dict[str, np.ndarray] = {}
    for group in llama_groups(layer):
        x = inputs.get(group.linears[0])
        if x is None:
            continue
        mods = [layer.get_submodule(n) for n in group.linears]
        module = layer.get_submodule(group.inspect)
        c = x.shape[-1]
        x_mean = x.reshape(-1, c).abs().float().mean(0)
        weights = torch.cat([m.weight for m in mods], 0)
        # AutoAWQ duo scaling: per-channel mean of |W| normalised by its group's absmax
        gs = next((g.block for n in group.linears if (g := grids.get(n)) is not None), c)
        wg = weights.abs().view(-1, c // gs, gs)
        w_mean = (wg / (wg.amax(dim=2, keepdim=True) + 1e-6)).view(-1, c).mean(0)
        originals = [m.weight.detach().clone() for m in mods]
        with torch.no_grad():
            ref = call(module, x)
            best, best_alpha, best_s = float("inf"), 0.0, torch.ones(c, device=x.device)
            for k in range(n_grid):
                alpha = k / n_grid
                s = (x_mean.pow(alpha) / (w_mean.pow(1 - alpha) + 1e-4)).clamp(min=1e-4)
                s = s / (s.max() * s.min()).sqrt()
                for m, w0, name in zip(mods, originals, group.linears, strict=True):
                    ws = (w0 * s.view(1, -1)).cpu().numpy()  # rounded on the host
                    g = grids.get(name)
                    q = _fake_quant(ws, g) if g is not None else ws
                    m.weight.copy_(torch.from_numpy(q).to(s.device) / s.view(1, -1))
                loss = float((call(module, x) - ref).float().pow(2).mean())
                if loss < best:
                    best, best_alpha, best_s = loss, alpha, s.clone()
            for m, w0 in zip(mods, originals, strict=True):
                m.weight.copy_(w0)
            _fold(layer, group, best_s)
        chosen[group.prev] = best_s.cpu().numpy()
        log.debug("AWQ %s: alpha %.2f, loss %.4g", group.prev, best_alpha, best)
        # the later groups' cached inputs are unchanged: each group's input comes from a
        # different producer, and folding keeps the float function identical; this group's
        # Linear layers now read x/s (AutoAWQ ``apply_scale(..., input_feat_dict)``)
        for name in group.linears:
            if name in inputs:
                inputs[name] = inputs[name] / best_s
    return chosen


def awq_clip(layer: Any, inputs: dict[str, Any], grids: dict[str, Grid], *,
             tokens: int = CLIP_TOKENS) -> dict[str, np.ndarray]:
    """AWQ's clip search (AutoAWQ ``_search_best_clip`` / ``_compute_best_clip``), in place.

    For every Linear but q/k rounded onto an integer grid with groups, and every output row
    and group, the threshold ``t = max|w|·(1 - i/20)`` (``i < 10``) whose rounding of
    ``clamp(w, -t, t)`` minimises the mean squared error of the group's share of the output,
    ``x_g·w_g``, over a sample of the inputs; the weight is then clamped to it. The k-quant
    and legacy ggml grids search their own scales and minimums, so they are left alone.

    Args:
        layer: the decoder layer, its AWQ scales already folded.
        inputs: local Linear name -> its (scaled) inputs ``[windows, tokens, in]``; a Linear
            reads the input of the first Linear of its group.
        grids: local Linear name -> its planned grid.
        tokens: sample tokens the error is measured on (evenly strided).

    Returns:
        ``clip:NAME`` -> the thresholds ``[out, n_groups]`` (float32), for the cache.
    """
    import torch

    from quantport.quant.grid import IntGrid

    chosen: dict[str, np.ndarray] = {}
    shared = {n: g.linears[0] for g in llama_groups(layer) for n in g.linears}
    shared.setdefault("self_attn.o_proj", "self_attn.o_proj")
    with torch.no_grad():
        for name, first in shared.items():
            grid = grids.get(name)
            x = inputs.get(first)
            if name in _NO_CLIP or x is None or not isinstance(grid, IntGrid):
                continue
            w = layer.get_submodule(name).weight
            rows, cols = w.shape
            gs = grid.block
            x = x.reshape(-1, cols)
            x = x[:: max(1, x.shape[0] // tokens)].float().view(-1, cols // gs, gs)
            best_all = []
            for r0 in range(0, rows, CLIP_ROW_BATCH):
                wb = w[r0:r0 + CLIP_ROW_BATCH].view(-1, cols // gs, gs)  # [o, G, gs]
                org_max = wb.abs().amax(-1)  # [o, G]
                best, best_err = org_max.clone(), torch.full_like(org_max, float("inf"))
                ref = torch.einsum("tgk,ogk->tog", x, wb)
                for i in range(int(CLIP_MAX_SHRINK * CLIP_GRID)):
                    t = org_max * (1 - i / CLIP_GRID)
                    cur = wb.clamp(-t.unsqueeze(-1), t.unsqueeze(-1)).reshape(-1, cols)
                    q = torch.from_numpy(_fake_quant(cur.cpu().numpy(), grid)).to(
                        wb.device).view_as(wb)
                    err = (torch.einsum("tgk,ogk->tog", x, q) - ref).pow(2).mean(0)
                    better = err < best_err
                    best_err[better], best[better] = err[better], t[better]
                best_all.append(best)
            max_val = torch.cat(best_all, 0)
            _clip(layer, name, max_val)
            chosen[CLIP_PREFIX + name] = max_val.cpu().numpy()
    return chosen


def smooth_layer(layer: Any, abs_max: dict[str, np.ndarray], *,
                 alpha: float | None = None) -> dict[str, np.ndarray]:
    """Fold SmoothQuant scales into ``layer`` (in place).

    Args:
        layer: the decoder layer (float32 weights).
        abs_max: per group's first Linear (local name), max ``|x|`` per input channel.
        alpha: migration strength; ``None``: :func:`smooth_alpha_for` the layer with
            per-token activations (the caller resolves the per-tensor default).

    Returns:
        The scales by group: ``prev`` name for a folded one, ``input:FIRST_LINEAR`` for an
        unfolded one (post-LayerNorm BERT: the caller divides the input at run time,
        :func:`input_scale_hooks`, and a writer stores ``1/s``, :data:`SMOOTH_SUFFIX`).
    """
    import torch

    if alpha is None:
        alpha = smooth_alpha_for(layer)
    chosen: dict[str, np.ndarray] = {}
    with torch.no_grad():
        for group in groups_for(layer):
            if not group.smooth or group.linears[0] not in abs_max:
                continue
            mods = [layer.get_submodule(n) for n in group.linears]
            act = torch.from_numpy(np.asarray(abs_max[group.linears[0]], np.float32)).to(
                mods[0].weight.device)
            w_max = torch.cat([m.weight.abs() for m in mods], 0).amax(0)
            # smooth_ln_fcs: s = max|X|^α / max|W|^(1-α), clamped at 1e-5
            s = (act.clamp(min=1e-5).pow(alpha) / w_max.clamp(min=1e-5).pow(1 - alpha)
                 ).clamp(min=1e-5)
            _fold(layer, group, s)
            chosen[INPUT_PREFIX + group.linears[0] if group.residual else group.prev] = (
                s.cpu().numpy())
    return chosen
