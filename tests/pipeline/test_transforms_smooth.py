"""SmoothQuant on a Llama-style decoder (:func:`quantport.pipeline.transforms.smooth_layer`):
up_proj -> down_proj is balanced as well as the norm-fed groups, each scale is the reference's
formula, and folding leaves the float model's logits unchanged."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from quantport.pipeline.layerwise import LayerwiseModel, calibration_windows
from quantport.pipeline.transforms import llama_groups, smooth_layer
from quantport.readers import open_path

#: every SmoothQuant group of a Llama layer with grouped-query attention: producer -> readers
GROUPS = {
    "input_layernorm": ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"],
    "post_attention_layernorm": ["mlp.gate_proj", "mlp.up_proj"],
    "mlp.up_proj": ["mlp.down_proj"],
}


def _abs_max(model: LayerwiseModel, i: int, layer, h) -> dict[str, np.ndarray]:
    """max |x| per input channel of every Linear of layer ``i`` on ``h`` (local names)."""
    _, st = model.run(i, layer, h, collect=True, hessian=False, activations=True)
    return {n.split(".", 3)[3].removesuffix(".weight"): st.of(n).abs_max
            for n in model.weight_names(i, layer)}


def _final_logits(model: LayerwiseModel, h: torch.Tensor) -> torch.Tensor:
    src = model.source
    with torch.inference_mode():
        norm = torch.from_numpy(np.array(src.get("model.norm.weight")))
        eps = float(src.config.get("rms_norm_eps", 1e-6))
        x = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps) * norm
        return x @ torch.from_numpy(np.array(src.get("model.embed_tokens.weight"))).T


def test_smoothquant_groups_include_up_to_down(tiny_llama: Path) -> None:
    model = LayerwiseModel(open_path(tiny_llama))
    layer = model.load(0)
    smoothed = {g.prev: g.linears for g in llama_groups(layer) if g.smooth}
    # the tiny llama has 4 heads / 2 kv heads: v -> o does not fold (grouped-query attention)
    assert smoothed == GROUPS


def test_smooth_scales_follow_the_reference_formula(tiny_llama: Path) -> None:
    """Every folded scale is ``max|x|^α / max|W|^(1-α)`` (``smooth_ln_fcs``), written out per
    channel in float64; the producer's weight (a norm's, or up_proj's output rows) is divided
    by it and the readers' input columns multiplied."""
    src = open_path(tiny_llama)
    model = LayerwiseModel(src)
    h = model.embed(calibration_windows(src, samples=2, length=64))
    layer = model.load(0)
    act = _abs_max(model, 0, layer, h)
    before = {n: p.detach().numpy().astype(np.float64) for n, p in layer.named_parameters()}
    alpha = 0.8
    scales = smooth_layer(layer, act, alpha=alpha)
    assert set(scales) == set(GROUPS)
    after = {n: p.detach().numpy().astype(np.float64) for n, p in layer.named_parameters()}
    want_w = dict(before)
    for prev, readers in GROUPS.items():
        want = np.empty(len(act[readers[0]]))
        for j in range(len(want)):
            w_max = max(abs(before[f"{r}.weight"][row, j]) for r in readers
                        for row in range(before[f"{r}.weight"].shape[0]))
            want[j] = max(max(float(act[readers[0]][j]), 1e-5) ** alpha
                          / max(w_max, 1e-5) ** (1 - alpha), 1e-5)
        np.testing.assert_allclose(scales[prev], want, rtol=1e-5)
        # up_proj is a reader of one group and the producer of the next: the folds compose
        s, p = want, f"{prev}.weight"
        want_w[p] = want_w[p] / (s if want_w[p].ndim == 1 else s[:, None])
        for r in readers:
            want_w[f"{r}.weight"] = want_w[f"{r}.weight"] * s[None]
    for name, w in want_w.items():
        np.testing.assert_allclose(after[name], w, rtol=1e-5, err_msg=name)
    # the check is not vacuous: the scales move the weights
    assert min(float(np.abs(s - 1).max()) for s in scales.values()) > 0.05


def test_smoothing_every_group_leaves_the_float_logits_unchanged(tiny_llama: Path) -> None:
    src = open_path(tiny_llama)
    windows = calibration_windows(src, samples=2, length=64)
    model = LayerwiseModel(src)
    logits = []
    for smooth in (False, True):
        h = model.embed(windows)
        for i in range(model.n_layers):
            layer = model.load(i)
            if smooth:
                assert set(smooth_layer(layer, _abs_max(model, i, layer, h), alpha=0.85)
                           ) == set(GROUPS)
            h, _ = model.run(i, layer, h)
            model.unload(i)
        logits.append(_final_logits(model, h))
    ref, got = logits
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5 * float(ref.abs().max()))


def test_default_alpha_by_architecture_and_activation_scheme(tiny_llama: Path) -> None:
    """``alpha=None`` smooths with :data:`SMOOTH_ALPHA`, the same scales as that α given; a
    decoder with per-tensor activations defaults to :data:`SMOOTH_ALPHA_PER_TENSOR`, BERT
    never does; a given α outside (0, 1) is refused."""
    from quantport.errors import OptionError
    from quantport.pipeline import make_recipe
    from quantport.pipeline.transforms import (SMOOTH_ALPHA, SMOOTH_ALPHA_PER_TENSOR,
                                               smooth_alpha_for)

    src = open_path(tiny_llama)
    model = LayerwiseModel(src)
    h = model.embed(calibration_windows(src, samples=2, length=64))
    scales = []
    for alpha in (None, SMOOTH_ALPHA, SMOOTH_ALPHA_PER_TENSOR):
        layer = model.load(0)
        scales.append(smooth_layer(layer, _abs_max(model, 0, layer, h), alpha=alpha))
        model.unload(0)
    default, given, other = scales
    for key in GROUPS:
        np.testing.assert_array_equal(default[key], given[key])
        assert not np.allclose(default[key], other[key])
    assert SMOOTH_ALPHA != SMOOTH_ALPHA_PER_TENSOR
    llama_layer = model.layers[0]
    from transformers import BertConfig
    from transformers.models.bert.modeling_bert import BertLayer

    bert_layer = BertLayer(BertConfig(hidden_size=32, num_attention_heads=2,
                                      intermediate_size=64))
    assert smooth_alpha_for(llama_layer, per_tensor=True) == SMOOTH_ALPHA_PER_TENSOR
    assert smooth_alpha_for(llama_layer) == SMOOTH_ALPHA
    assert smooth_alpha_for(bert_layer, per_tensor=True) == SMOOTH_ALPHA
    assert make_recipe("onnx", "w8a8", method="smoothquant").smooth_alpha is None
    assert make_recipe("onnx", "w8a8", method="smoothquant", smooth_alpha=0.6).smooth_alpha == 0.6
    with pytest.raises(OptionError, match="--smooth-alpha"):
        make_recipe("onnx", "w8a8", method="smoothquant", smooth_alpha=1.5)
