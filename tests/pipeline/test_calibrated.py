"""The calibration engine and the calibrated methods (GPTQ, AWQ, SmoothQuant) end to end on a
tiny llama: layer-by-layer forward equals transformers, folding keeps the float model, GPTQ
lowers each layer's output error, the cache, bad calibration input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from quantport.errors import ConfigError, UnsupportedQuantError
from quantport.pipeline import convert, make_recipe
from quantport.pipeline import layerwise
from quantport.pipeline.layerwise import LayerwiseModel, calibration_windows, cache_key
from quantport.pipeline.transforms import awq_clip, awq_layer, llama_groups, smooth_layer
from quantport.quant.gptq import grid_for, hessian_error
from quantport.quant.rtn import quantize_rtn
from quantport.quant.scheme import parse_scheme
from quantport.ir import dequantize
from quantport.readers import open_path

CALIB = {"calib_samples": 4, "calib_len": 64}


def _logits(model: LayerwiseModel, windows: np.ndarray, transform=None) -> torch.Tensor:
    """The float model's logits, run layer by layer (with ``transform(i, layer)`` applied)."""
    h = model.embed(windows)
    for i in range(model.n_layers):
        layer = model.load(i)
        if transform is not None:
            transform(i, layer, h)
        h, _ = model.run(i, layer, h)
        model.unload(i)
    src = model.source
    with torch.inference_mode():
        norm = torch.from_numpy(np.array(src.get("model.norm.weight")))
        eps = float(src.config.get("rms_norm_eps", 1e-6))
        x = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps) * norm
        head = torch.from_numpy(np.array(src.get("model.embed_tokens.weight")))
        return x @ head.T


def test_layer_by_layer_forward_equals_transformers(tiny_llama: Path) -> None:
    from transformers import AutoModelForCausalLM

    src = open_path(tiny_llama)
    windows = calibration_windows(src, samples=3, length=64)
    ours = _logits(LayerwiseModel(src), windows)
    full = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)
    with torch.inference_mode():
        ref = full(input_ids=torch.from_numpy(windows)).logits
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


def test_awq_and_smoothquant_folding_leave_the_float_logits_unchanged(tiny_llama: Path) -> None:
    src = open_path(tiny_llama)
    windows = calibration_windows(src, samples=2, length=64)
    model = LayerwiseModel(src)
    ref = _logits(model, windows)
    grids = {n: grid_for(parse_scheme("w4-g32-sym"), (1, 64)) for n in
             ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
              "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")}
    folded: dict[str, list[np.ndarray]] = {"awq": [], "smooth": []}

    def awq(i, layer, h):
        inputs = model.capture(i, layer, h, [g.linears[0] for g in llama_groups(layer)])
        scales = awq_layer(layer, inputs, grids, model.caller(h.shape[1]))
        folded["awq"].extend(scales.values())

    def smooth(i, layer, h):
        _, st = model.run(i, layer, h, collect=True, hessian=False, activations=True)
        scales = smooth_layer(layer, {n.split(".", 3)[3].removesuffix(".weight"):
                                      st.of(n).abs_max for n in model.weight_names(i, layer)})
        folded["smooth"].extend(scales.values())

    for name, fn in (("awq", awq), ("smooth", smooth)):
        got = _logits(model, windows, fn)
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5 * float(ref.abs().max()))
        # the scales are not all ones: the check above is not vacuous
        assert max(float(np.abs(s - 1).max()) for s in folded[name]) > 0.05, name


def _clip_reference(w: np.ndarray, x: np.ndarray, grid) -> tuple[np.ndarray, np.ndarray]:
    """AutoAWQ ``_compute_best_clip`` written as loops (float64 products): per output row and
    group, the first threshold max|w|(1 - i/20), i < 10, with the least mean squared error of
    x_g·w_g; also every candidate's error ``[rows, groups, 10]``."""
    rows, cols = w.shape
    gs = grid.block
    best = np.zeros((rows, cols // gs), np.float32)
    errs = np.zeros((rows, cols // gs, 10))
    x = x.astype(np.float64)
    for r in range(rows):
        for g in range(cols // gs):
            sl = slice(g * gs, (g + 1) * gs)
            ref = x[:, sl] @ w[r, sl]
            top, err_best = np.abs(w[r, sl]).max(), float("inf")
            for i in range(10):
                t = top * np.float32(1 - i / 20)  # float32, as AutoAWQ's tensor product
                row = np.clip(w[r], -t, t)[None]  # other groups do not change this group's code
                q = dequantize(quantize_rtn(row, grid_for(parse_scheme("w4-g32-sym"),
                                                          row.shape)))[0, sl]
                err = errs[r, g, i] = float(np.mean((x[:, sl] @ q - ref) ** 2))
                if err < err_best:
                    err_best, best[r, g] = err, t
    return best, errs


def test_awq_clip_search_matches_a_loop_reference_and_clamps(tiny_llama: Path) -> None:
    src = open_path(tiny_llama)
    windows = calibration_windows(src, samples=2, length=64)
    model = LayerwiseModel(src)
    layer = model.load(0)
    h = model.embed(windows)
    grid = grid_for(parse_scheme("w4-g32-sym"), (1, 64))
    names = ("self_attn.q_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.down_proj")
    inputs = model.capture(0, layer, h, list(names))
    before = {n: layer.get_submodule(n).weight.detach().numpy().copy() for n in names}
    grids = {n: grid for n in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                               "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj",
                               "mlp.down_proj")}
    chosen = awq_clip(layer, dict(inputs), grids, tokens=10**6)
    # q/k are not clipped (AutoAWQ skips them); v reads q's input, up reads gate's
    assert set(chosen) == {f"clip:{n}" for n in ("self_attn.v_proj", "self_attn.o_proj",
                                                 "mlp.gate_proj", "mlp.up_proj",
                                                 "mlp.down_proj")}
    for name in ("self_attn.o_proj", "mlp.down_proj"):
        x = inputs[name].reshape(-1, before[name].shape[1]).numpy()
        want, errs = _clip_reference(before[name], x, grid)
        got_t = chosen[f"clip:{name}"]
        # float32 products may flip a near tie: then the chosen threshold's error must equal
        # the best one's to float32 precision
        tops = np.abs(before[name]).reshape(*want.shape, 32).max(-1)
        for r, g in zip(*np.nonzero(~np.isclose(got_t, want, rtol=1e-6)), strict=True):
            i = int(round((1 - got_t[r, g] / tops[r, g]) * 20))
            assert errs[r, g, i] <= errs[r, g].min() * (1 + 1e-4), (name, r, g)
        got = layer.get_submodule(name).weight.detach().numpy()
        t = np.repeat(chosen[f"clip:{name}"], 32, axis=1)
        np.testing.assert_array_equal(got, np.clip(before[name], -t, t))
    # the search chose a real clip somewhere: the check above is not vacuous
    tops = np.abs(before["mlp.down_proj"]).reshape(64, 4, 32).max(-1)
    assert (chosen["clip:mlp.down_proj"] < tops).any()
    q_after = layer.get_submodule("self_attn.q_proj").weight.detach().numpy()
    np.testing.assert_array_equal(q_after,
                                  before["self_attn.q_proj"])


def test_gptq_to_safetensors_lowers_every_layers_error_and_loads(
        tiny_llama: Path, tmp_path: Path, calib_cache: Path) -> None:
    from transformers import AutoModelForCausalLM

    src = open_path(tiny_llama)
    recipe = make_recipe("safetensors", "w4-g32-sym", method="gptq", act_order="none", **CALIB)
    report = convert(src, recipe, tmp_path / "out", threads=1)
    cal = report.calibration
    assert cal is not None and cal.windows == (4, 64) and not cal.cached
    assert len(cal.errors) == 14  # 7 Linear layers x 2
    # layer 0 calibrates on the float embeddings in any mode: its Hessians from the cache
    # give round-to-nearest's error on the same inputs, which GPTQ must beat for every weight
    stats, _ = next(iter(layerwise.StatsCache(p.name, p.parent).load(0)
                         for p in calib_cache.iterdir()))
    for g in stats.groups:
        for name in g.modules:
            w = np.array(src.get(name))
            grid = grid_for(recipe.quant, w.shape)
            rtn = hessian_error(w, dequantize(quantize_rtn(w, grid)), g.hessian)
            assert cal.errors[name] < rtn, name
    from safetensors import safe_open

    with safe_open(tmp_path / "out" / "model.safetensors", "pt") as f:
        meta = json.loads(f.metadata()["quantport_recipe"])
    assert meta["method"] == "gptq" and meta["calib"]["samples"] == 4
    assert meta["gptq"] == {"damp": 0.01, "act_order": "none"}
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([[1, 2, 3, 4]])).logits
    assert torch.isfinite(logits).all()


def test_calibration_cache_hits_for_the_same_run_and_misses_on_any_change(
        tiny_llama: Path, default_model_dir: Path, tmp_path: Path, calib_cache: Path) -> None:
    src = open_path(tiny_llama)
    recipe = make_recipe("safetensors", "w4-g32-sym", method="awq+gptq", **CALIB)
    first = convert(src, recipe, tmp_path / "a", threads=1)
    second = convert(src, recipe, tmp_path / "b", threads=1)
    assert not first.calibration.cached and second.calibration.cached
    assert ((tmp_path / "a" / "model.safetensors").read_bytes()
            == (tmp_path / "b" / "model.safetensors").read_bytes())
    # the key changes with the settings, the text (the windows), and the model
    windows = calibration_windows(src, samples=4, length=64)
    base = cache_key(src, windows, {"damp": 0.01})
    assert cache_key(src, windows, {"damp": 0.02}) != base
    assert cache_key(src, windows[:, ::-1].copy(), {"damp": 0.01}) != base
    other = open_path(default_model_dir)
    assert cache_key(other, windows, {"damp": 0.01}) != base
    third = convert(src, make_recipe("safetensors", "w4-g32-sym", method="awq+gptq", damp=0.05,
                                     **CALIB), tmp_path / "c", threads=1)
    assert not third.calibration.cached


def test_gptq_gguf_has_the_presets_types_and_size(tiny_llama: Path, tmp_path: Path,
                                                  calib_cache: Path) -> None:
    from quantport.formats.gguf_file import scan_gguf

    src = open_path(tiny_llama)
    rtn = convert(src, make_recipe("gguf", "Q4_K_M"), tmp_path / "rtn.gguf", threads=1)
    gptq = convert(src, make_recipe("gguf", "Q4_K_M", method="gptq", **CALIB),
                   tmp_path / "gptq.gguf", threads=1)
    assert gptq.plan.type_counts() == rtn.plan.type_counts()
    # the same tensor bytes; the files differ only by the recipe recorded in the metadata
    assert sum(r.nbytes for r in gptq.plan.rows) == sum(r.nbytes for r in rtn.plan.rows)
    assert 0 < gptq.plan.size - rtn.plan.size < 1024
    a, b = scan_gguf(tmp_path / "rtn.gguf"), scan_gguf(tmp_path / "gptq.gguf")
    assert [(t.name, t.type_name) for t in a.tensors] == [(t.name, t.type_name)
                                                            for t in b.tensors]
    # the tied token table is the LM head: GPTQ rounds it on the final norm's Hessian (cached
    # after the layers), below round-to-nearest's error on the same Hessian
    row = next(r for r in gptq.plan.rows if r.name == "token_embd.weight")
    assert row.quantized and "token_embd.weight" in gptq.calibration.errors
    (head,) = [p / "layer-2.npz" for p in calib_cache.iterdir() if (p / "layer-2.npz").exists()]
    stats, _ = layerwise.StatsCache(head.parent.name, calib_cache).load(2)
    (g,) = stats.groups
    assert g.modules == ["model.embed_tokens.weight"]
    w = np.array(src.get("model.embed_tokens.weight"))
    rtn_err = hessian_error(w, dequantize(quantize_rtn(w, grid_for(row.target, w.shape))),
                            g.hessian)
    assert gptq.calibration.errors["token_embd.weight"] < rtn_err


def test_awq_and_smoothquant_convert_end_to_end(tiny_llama: Path, tmp_path: Path,
                                                calib_cache: Path) -> None:
    src = open_path(tiny_llama)
    for method, quant in (("awq", "w4-g32-asym"), ("smoothquant", "w8a8")):
        r = convert(src, make_recipe("safetensors", quant, method=method, **CALIB),
                    tmp_path / method, threads=1)
        assert r.plan.recipe.method == method and (tmp_path / method / "config.json").is_file()
    # W8A8: compressed-tensors' INT8_W8A8 (int8 activations per token, dynamic), which
    # transformers applies on load: the logits differ from the weight-only model's
    from transformers import AutoModelForCausalLM

    cfg = json.loads((tmp_path / "smoothquant" / "config.json").read_text())
    (group,) = cfg["quantization_config"]["config_groups"].values()
    assert group["input_activations"]["strategy"] == "token"
    assert group["input_activations"]["dynamic"] is True
    ids = torch.tensor([[5, 100, 2000, 300, 40, 7, 8, 9]])
    w8a8 = AutoModelForCausalLM.from_pretrained(tmp_path / "smoothquant")
    del cfg["quantization_config"]["config_groups"]["group_0"]["input_activations"]
    (tmp_path / "smoothquant" / "config.json").write_text(json.dumps(cfg))
    w8 = AutoModelForCausalLM.from_pretrained(tmp_path / "smoothquant")
    with torch.inference_mode():
        a, b = w8a8(input_ids=ids).logits, w8(input_ids=ids).logits
    assert 0 < float((a - b).abs().max()) < 0.1 * float(b.abs().max())


def _text(tmp_path: Path, body: str) -> Path:
    p = tmp_path / "calib.txt"
    p.write_text(body, encoding="utf-8")
    return p


def test_bad_calibration_text_is_refused(tiny_llama: Path, tmp_path: Path) -> None:
    src = open_path(tiny_llama)
    with pytest.raises(ConfigError, match="is empty"):
        calibration_windows(src, _text(tmp_path, "  \n"), 4, 64)
    with pytest.raises(ConfigError, match="less than one window of 64"):
        calibration_windows(src, _text(tmp_path, "a few words only"), 4, 64)
    with pytest.raises(ConfigError, match="is the evaluation text"):
        calibration_windows(src, layerwise.EVALUATION_TEXT, 4, 64)
    copy = tmp_path / "copy.raw"
    copy.write_bytes(layerwise.EVALUATION_TEXT.read_bytes())
    with pytest.raises(ConfigError, match="is the evaluation text"):
        calibration_windows(src, copy, 4, 64)
    # a piece of it (head -c 200000 wiki.test.raw) was accepted
    piece = tmp_path / "piece.txt"
    piece.write_bytes(layerwise.EVALUATION_TEXT.read_bytes()[:200_000])
    with pytest.raises(ConfigError, match="is the evaluation text"):
        calibration_windows(src, piece, 4, 64)
    # ... where the calibration text itself, and a text quoting a few of its lines, are not
    assert calibration_windows(src, layerwise.DEFAULT_CALIBRATION_TEXT, 2, 64).shape == (2, 64)
    quoted = [ln for ln in layerwise.EVALUATION_TEXT.read_text().splitlines()
              if len(ln.split()) >= 8][:3]
    mixed = tmp_path / "mixed.txt"
    mixed.write_text("\n".join([*quoted, *layerwise.DEFAULT_CALIBRATION_TEXT.read_text()
                                .splitlines()[:400]]))
    assert calibration_windows(src, mixed, 2, 64).shape == (2, 64)
    with pytest.raises(ConfigError, match="exceeds the model's context"):
        calibration_windows(src, layerwise.DEFAULT_CALIBRATION_TEXT, 1, 4096)


def test_encoders_are_refused_by_awq_and_asymmetric_gptq(tmp_path: Path) -> None:
    # GPTQ and SmoothQuant on encoders: tests/pipeline/test_calibrated_encoder.py
    from quantport.models import open_source

    with pytest.raises(UnsupportedQuantError, match="AWQ's scale groups"):
        convert(open_source("minilm"), make_recipe("safetensors", "w4-g32-sym",
                                                 method="awq", **CALIB), tmp_path / "x")
    with pytest.raises(UnsupportedQuantError, match="asymmetric runs on pre-norm decoder"):
        convert(open_source("minilm"), make_recipe("safetensors", "w4-g32-sym", method="gptq",
                                                 calib_inputs="asymmetric", **CALIB),
                tmp_path / "y")
    assert not (tmp_path / "y").exists()


def test_cli_gptq_and_its_errors(tiny_llama: Path, tmp_path: Path, calib_cache: Path) -> None:
    from quantport.cli.main import cli

    runner = CliRunner()
    base = ["convert", str(tiny_llama), "--to", "safetensors", "--quant", "w4-g32-sym", "--method", "gptq",
            "--calib-samples", "2", "--calib-len", "32", "--threads", "1"]
    ok = runner.invoke(cli, [*base, "-o", str(tmp_path / "ok"), "--json"])
    assert ok.exit_code == 0, ok.output
    d = json.loads(ok.output)
    assert d["method"] == "gptq" and d["calibration"]["windows"] == [2, 32]
    bad = runner.invoke(cli, [*base, "-o", str(tmp_path / "bad"), "--calib",
                              str(layerwise.EVALUATION_TEXT)])
    assert bad.exit_code != 0 and "evaluation text" in bad.output
    assert "Traceback" not in bad.output and not (tmp_path / "bad").exists()
    assert len(bad.output.strip().splitlines()) == 1
    # a dry run reads and checks the calibration text as the real run does (it printed a
    # plan and exited 0 for the evaluation text, and for a --calib-len beyond the context)
    for extra, says in ((["--calib", str(layerwise.EVALUATION_TEXT)], "evaluation text"),
                        (["--calib-len", "100000"], "exceeds the model's context")):
        dry = runner.invoke(cli, [*base, "-o", str(tmp_path / "dry"), "--dry-run", *extra])
        assert dry.exit_code == 1 and says in dry.output, dry.output
    rtn_dry = runner.invoke(cli, ["convert", str(tiny_llama), "--to", "gguf", "--quant", "Q4_0",
                                  "--calib", str(layerwise.EVALUATION_TEXT), "--dry-run",
                                  "-o", str(tmp_path / "dry.gguf")])
    assert rtn_dry.exit_code == 1 and "evaluation text" in rtn_dry.output, rtn_dry.output
    damp = runner.invoke(cli, [*base, "-o", str(tmp_path / "d"), "--damp", "-1"])
    # an option value out of range is a usage error (exit 2), as click's own range checks
    assert damp.exit_code == 2 and "--damp" in damp.output
    # the asymmetric target is GPTQ's: refused for a method without GPTQ, before any work
    awq = runner.invoke(cli, [*base[:-4], "--method", "awq", "--calib-inputs", "asymmetric",
                              "-o", str(tmp_path / "awq")])
    assert awq.exit_code != 0 and "asymmetric" in awq.output and "Traceback" not in awq.output
    # a usage error, as click reports one (exit 2)
    assert awq.exit_code == 2 and not (tmp_path / "awq").exists()


def test_staged_one_pass_reproduces_the_layer_and_its_first_hessian(tiny_llama: Path) -> None:
    """run_staged with nothing rounded computes exactly the layer's own forward, and its q/k/v
    Hessian is the two-pass loop's (the other stages see rounded weights in real use)."""
    src = open_path(tiny_llama)
    windows = calibration_windows(src, samples=3, length=64)
    model = LayerwiseModel(src)
    h = model.embed(windows)
    layer = model.load(0)
    assert model.staged(layer)
    ref, two_pass = model.run(0, layer, h, collect=True)
    seen: list[list[str]] = []
    staged = model.run_staged(0, layer, h, lambda names, hess, cross: seen.append(names))
    torch.testing.assert_close(h, ref, rtol=1e-6, atol=1e-6)
    assert [len(n) for n in seen] == [3, 1, 2, 1]
    q = "model.layers.0.self_attn.q_proj.weight"
    np.testing.assert_allclose(staged.of(q).hessian, two_pass.of(q).hessian, rtol=1e-5,
                               atol=1e-6)
    # the next layer reuses the scratch space the first one's o_proj and down_proj inputs took
    layer1 = model.load(1)
    ref1, _ = model.run(1, layer1, h)
    model.run_staged(1, layer1, h, lambda names, hess, cross: None)
    torch.testing.assert_close(h, ref1, rtol=1e-6, atol=1e-6)


def test_staged_asymmetric_reference_stream_and_cross_terms(tiny_llama: Path) -> None:
    """With a float reference (GPTAQ), run_staged carries the float model's hidden states to
    the float layer's output beside the rounded ones, and each input's cross term is
    ``2 (X_f - X)ᵀ X / n`` of the float and the rounded layer's inputs at that place."""
    import copy

    src = open_path(tiny_llama)
    windows = calibration_windows(src, samples=3, length=64)
    model = LayerwiseModel(src)
    h = model.embed(windows)
    h0 = h.clone()
    layer = model.load(0)
    fl = copy.deepcopy(layer)
    want_hf, _ = model.run(0, copy.deepcopy(layer), h0)
    hf = h0.clone()
    crosses: dict[str, np.ndarray | None] = {}

    def rounding(names: list[str], hess: np.ndarray, cross: np.ndarray | None) -> None:
        # a coarse rounding, so that the later stages' inputs differ from the float layer's
        for n in names:
            crosses[n.split(".")[-2]] = cross
            w = layer.get_submodule(n[len("model.layers.0."):].removesuffix(".weight")).weight
            with torch.no_grad():
                w.copy_(torch.round(w * 64) / 64)  # weights ~0.02: a step of 1/64

    stats = model.run_staged(0, layer, h, rounding, ref=(fl, hf))
    torch.testing.assert_close(hf, want_hf, rtol=1e-5, atol=1e-5)
    # layer 0's q/k/v read the embeddings, the same in both models: no asymmetry there
    assert float(np.abs(crosses["q_proj"]).max()) < 1e-6
    # o_proj: the float layer's attention against the one with rounded q/k/v, on h0
    got: dict[str, list[torch.Tensor]] = {"f": [], "q": []}
    for key, lay in (("f", fl), ("q", layer)):
        hd = lay.self_attn.o_proj.register_forward_pre_hook(
            lambda _m, a, _k=key: got[_k].append(a[0].detach().reshape(-1, a[0].shape[-1])))
        model.run(0, lay, h0.clone())
        hd.remove()
    xf, xq = torch.cat(got["f"]).double(), torch.cat(got["q"]).double()
    want = (2.0 / xq.shape[0] * (xf - xq).T @ xq).numpy()
    assert np.abs(want).max() > 1e-3  # the rounding did change o_proj's input
    o = "model.layers.0.self_attn.o_proj.weight"
    np.testing.assert_allclose(stats.of(o).cross, want, rtol=1e-3, atol=1e-6)
    assert crosses["o_proj"] is stats.of(o).cross


def test_gptq_asymmetric_inputs_end_to_end_and_cached(tiny_llama: Path, tmp_path: Path,
                                                      calib_cache: Path) -> None:
    """``--calib-inputs asymmetric``: a GGUF of the preset's types whose layers' records differ
    from plain GPTQ's; a second run takes the cross terms from the cache (same bytes)."""
    src = open_path(tiny_llama)
    kw = dict(method="gptq", **CALIB)
    plain = convert(src, make_recipe("gguf", "Q4_K_M", **kw), tmp_path / "p.gguf", threads=1)
    asym = make_recipe("gguf", "Q4_K_M", calib_inputs="asymmetric", **kw)
    first = convert(src, asym, tmp_path / "a.gguf", threads=1)
    second = convert(src, asym, tmp_path / "b.gguf", threads=1)
    assert not first.calibration.cached and second.calibration.cached
    assert first.plan.type_counts() == plain.plan.type_counts()
    a, b = (tmp_path / "a.gguf").read_bytes(), (tmp_path / "b.gguf").read_bytes()
    assert a == b and a != (tmp_path / "p.gguf").read_bytes()
    stats, _ = layerwise.StatsCache(
        next(p.name for p in calib_cache.iterdir()
             if (p / "layer-1.npz").exists() and layerwise.StatsCache(p.name, calib_cache)
             .load(1)[0].groups[0].cross is not None), calib_cache).load(1)
    assert all(g.cross is not None and g.cross.shape == g.hessian.shape for g in stats.groups)
    # AWQ + GPTQ: the float reference carries AWQ's scales (the basis the weights are rounded
    # in); the checkpoint loads in transformers and stays close to the source
    from transformers import AutoModelForCausalLM

    out = tmp_path / "awq-gptq"
    convert(src, make_recipe("safetensors", "w4-g32-sym", method="awq+gptq",
                             calib_inputs="asymmetric", **CALIB), out, threads=1)
    ids = torch.tensor([[5, 100, 2000, 300, 40, 7, 8, 9]])
    with torch.inference_mode():
        q = AutoModelForCausalLM.from_pretrained(out)(input_ids=ids).logits
        f = AutoModelForCausalLM.from_pretrained(tiny_llama)(input_ids=ids).logits
    assert torch.isfinite(q).all() and float((q - f).abs().max()) < 0.5 * float(f.abs().max())
    from safetensors import safe_open

    with safe_open(str(out / "model.safetensors"), "np") as f:
        recipe = json.loads(f.metadata()["quantport_recipe"])
    assert recipe["method"] == "awq+gptq" and recipe["calib"]["inputs"] == "asymmetric"


def test_scratch_is_one_buffer_grown_when_needed(tiny_llama: Path) -> None:
    model = LayerwiseModel(open_path(tiny_llama))
    a = model.scratch((2, 3, 4))
    b = model.scratch((2, 3, 2))
    assert b.untyped_storage().data_ptr() == a.untyped_storage().data_ptr()
    assert tuple(b.shape) == (2, 3, 2) and b.is_contiguous()
    c = model.scratch((2, 3, 8))  # larger: a new buffer
    assert c.numel() == 48 and model._scratch.numel() == 48
    model.release_scratch()
    assert model._scratch is None


def test_cache_keeps_only_the_most_recent_calibrations(tmp_path: Path) -> None:
    import os
    import time

    stats = layerwise.LayerStats(0, [layerwise.InputStats(["w"], 4, np.eye(3))])
    for k in range(6):
        c = layerwise.StatsCache(f"key{k}", tmp_path)
        c.save(stats, {}, n_layers=1)
        os.utime(c.dir, (time.time() + k, time.time() + k))  # distinct mtimes
        assert c.load(0) is not None
    kept = sorted(d.name for d in tmp_path.iterdir())
    assert kept == ["key2", "key3", "key4", "key5"]
    loaded, _ = layerwise.StatsCache("key5", tmp_path).load(0)
    np.testing.assert_array_equal(loaded.groups[0].hessian, np.eye(3))


def test_gptq_on_a_bfloat16_checkpoint(tiny_llama: Path, tmp_path: Path,
                                       calib_cache: Path) -> None:
    """A checkpoint saved in bfloat16 (config ``dtype: bfloat16``) calibrates with float32
    layers: the rounding reads them as numpy, which has no bfloat16 (it raised TypeError)."""
    import shutil

    from transformers import AutoModelForCausalLM

    bf16 = tmp_path / "bf16"
    AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.bfloat16).save_pretrained(bf16)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_llama / name, bf16 / name)
    assert json.loads((bf16 / "config.json").read_text())["dtype"] == "bfloat16"
    report = convert(open_path(bf16), make_recipe("safetensors", "w4-g32-sym", method="gptq",
                                                  **CALIB), tmp_path / "out", threads=1)
    assert len(report.calibration.errors) == 14
