"""ONNX Runtime as the validation runtime of ONNX directories: prefill logits, greedy decoding
through the graph's KV cache, the generation gate, and refusal of broken external data."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from quantport.cli.main import cli
from quantport.models import open_source
from quantport.pipeline import convert, make_recipe
from quantport.validate.ort import OrtLM, check_external_data
from quantport.validate.runner import (
    TransformersLM,
    ValidationReport,
    _generate_check,
    _tokenizer,
)


@pytest.fixture(scope="module")
def tiny_onnx(tiny_llama, tmp_path_factory) -> dict[str, Path]:
    """The tiny llama written by quantport's ONNX writer in float32, w4-g32-sym and W8A8
    (activations per tensor, the default, and per token: ``w8a8-token``)."""
    out = {}
    for quant in ("f32", "w4-g32-sym", "w8a8", "w8a8-token"):
        d = tmp_path_factory.mktemp("onnx") / quant
        recipe = (make_recipe("onnx", "w8a8", act_scheme="token") if quant == "w8a8-token"
                  else make_recipe("onnx", quant))
        convert(open_source(tiny_llama), recipe, d)
        out[quant] = d
    return out


def _prompt(tiny_llama) -> np.ndarray:
    tok = _tokenizer(tiny_llama)
    ids = tok("The tower is 324 metres tall, about the same height as an 81-storey",
              add_special_tokens=False)["input_ids"]
    return np.asarray(ids, dtype=np.int64)


def test_prefill_logits_equal_transformers_in_float32(tiny_onnx, tiny_llama):
    ort = OrtLM(tiny_onnx["f32"], threads=2)
    assert ort.causal and len(ort.past) == 2 * 2  # 2 layers, key and value
    ref = TransformersLM(tiny_llama)
    ids = np.arange(100, 164, dtype=np.int64)
    a, r = ort.logits(ids, 32), ref.logits(ids, 32)
    assert tuple(a.shape) == tuple(r.shape) == (32, 49152)
    assert float((a - r).abs().max()) < 1e-3


def test_greedy_decoding_through_the_cache_equals_torch_and_a_full_recompute(tiny_onnx,
                                                                              tiny_llama):
    ort = OrtLM(tiny_onnx["f32"], threads=2)
    prompt = _prompt(tiny_llama)
    got, rows = ort.generate(prompt, 16)
    want, want_rows = TransformersLM(tiny_llama).generate(prompt, 16)
    assert len(got) == 16 and rows.shape == (16, 49152)
    assert got == want
    assert float(np.abs(rows - want_rows).max()) < 1e-3
    # each step through the cache is the last row of the whole sequence run from scratch
    seq = list(prompt)
    for t, row in zip(got, rows, strict=True):
        full = ort.logits(np.asarray(seq), len(seq) - 1).numpy()[-1]
        assert int(full.argmax()) == t
        assert float(np.abs(full - row).max()) < 1e-3
        seq.append(t)


class _NoCache(OrtLM):
    """A runtime that forgets its cache: every decoding step sees one token only."""

    def step(self, ids, past=None, start=0):
        logits, _ = super().step(ids, None, 0)
        return logits, self._empty_past()


def test_generation_gate_fails_a_runtime_that_drops_its_cache(tiny_onnx, tiny_llama):
    ir = TransformersLM(tiny_llama)
    prompt = _prompt(tiny_llama)
    good = ValidationReport("a", "r", "onnxruntime", True, extra={"ir_max_abs_logit_diff": 1e-4})
    check = _generate_check(OrtLM(tiny_onnx["f32"], threads=2), ir, "", good, prompt, 16)
    assert check.passed is True and check.value == 1.0, check.detail

    bad = ValidationReport("a", "r", "onnxruntime", True, extra={"ir_max_abs_logit_diff": 1e-4})
    check = _generate_check(_NoCache(tiny_onnx["f32"], threads=2), ir, "", bad, prompt, 16)
    # after a divergence, value and limit are torch's logit gap and the noise allowance
    assert check.passed is False and check.op == "<=" and check.value > check.limit
    assert check.detail.startswith("diverged at token")
    assert bad.extra["generate_tokens"] != bad.extra["ir_generate_tokens"]


class _RunnerUp:
    """A runtime whose greedy decoding takes, at step ``k``, the reference's second-best
    token: a divergence at a near tie when the allowance covers that logit gap."""

    def __init__(self, ir, k):
        self.ir, self.k = ir, k

    def generate(self, prompt, n):
        tokens, rows = self.ir.generate(prompt, n)
        tokens[self.k] = int(np.argsort(rows[self.k])[-2])
        return tokens, rows


def test_generation_gate_reports_a_near_tie_as_gap_against_allowance(tiny_llama):
    """A divergence where torch's logits of the two tokens differ by less than twice the
    runtime's kernel noise passes, and its JSON says so consistently: the value (the gap) is
    within the limit (the allowance), not a share of equal tokens below 1 marked passed."""
    ir = TransformersLM(tiny_llama)
    prompt = _prompt(tiny_llama)
    _, rows = ir.generate(prompt, 8)
    top2 = np.sort(rows[3])[-2:]
    gap = float(top2[1] - top2[0])
    tie = ValidationReport("a", "r", "onnxruntime", True, extra={"ir_max_abs_logit_diff": gap})
    check = _generate_check(_RunnerUp(ir, 3), ir, "", tie, prompt, 8)
    assert check.passed is True and check.op == "<=", check.detail
    assert check.value == pytest.approx(gap) and check.limit == pytest.approx(2 * gap)
    assert check.value <= check.limit and "3 of 8 tokens equal, then a near tie" in check.detail
    far = ValidationReport("a", "r", "onnxruntime", True,
                           extra={"ir_max_abs_logit_diff": gap / 4})
    check = _generate_check(_RunnerUp(ir, 3), ir, "", far, prompt, 8)
    assert check.passed is False and check.value > check.limit


def _broken(src: Path, dst: Path, how: str, other: Path) -> Path:
    shutil.copytree(src, dst)
    data = dst / "model.onnx.data"
    if how == "missing":
        data.unlink()
    elif how == "truncated":
        with open(data, "r+b") as f:
            f.truncate(data.stat().st_size // 2)
    else:  # the data file of another export of the same model
        shutil.copy(other / "model.onnx.data", data)
    return dst


@pytest.mark.parametrize(("how", "says"), [("missing", "external data file missing"),
                                           ("truncated", "truncated"),
                                           ("mismatched", "does not match model.onnx")])
def test_validate_refuses_broken_external_data_in_one_line(tiny_onnx, tiny_llama, tmp_path,
                                                           how, says):
    # the w4 graph beside the (larger) float32 export's data file for "mismatched"
    d = _broken(tiny_onnx["w4-g32-sym"], tmp_path / how, how, tiny_onnx["f32"])
    res = CliRunner().invoke(cli, ["validate", str(d), "--against", str(tiny_llama), "--ctx",
                                   "64", "--windows", "1"], catch_exceptions=False)
    assert res.exit_code == 1, res.output
    err = res.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("Error: "), res.stderr
    assert says in err[0] and "model.onnx.data" in err[0] and "re-export" in err[0]
    assert "Traceback" not in res.output
    with pytest.raises(Exception, match=says):
        check_external_data(d / "model.onnx")


def _checks(report) -> dict[str, dict]:
    return {c["name"]: c for c in report.checks}


@pytest.mark.parametrize("quant", ["f32", "w4-g32-sym", "w8a8", "w8a8-token"])
def test_validate_onnx_decoder_passes_correctness(tiny_onnx, tiny_llama, quant):
    """ORT against quantport's torch forward of the weights the graph holds (read back by
    quantport's ONNX reader; for W8A8 with the inputs of the int8 layers quantized as
    DynamicQuantizeLinear does): logits within kernel noise, greedy decoding through the cache
    equal; the runtime's tokenizer (onnxruntime-genai's) gives the source's ids."""
    from quantport.validate.runner import validate

    rep = validate(tiny_onnx[quant], tiny_llama, ctx=64, n_windows=2, threads=2)
    assert rep.runtime == "onnxruntime" and rep.correct, rep.failures
    c = _checks(rep)
    assert {n for n, v in c.items() if v["group"] == "correctness"} == {
        "tokenizer_ids_match", "weights_kld_mean", "weights_top1_agreement",
        "generate_greedy_match"}
    assert all(v["passed"] is True for v in c.values() if v["group"] == "correctness")
    assert c["generate_greedy_match"]["value"] == 1.0
    assert rep.extra["generate_tokens"] == rep.extra["ir_generate_tokens"]
    assert len(rep.extra["generate_tokens"]) == 32
    if quant.startswith("w8a8"):  # 7 Linear layers in each of 2 layers run on int8 activations
        scheme = "token" if quant == "w8a8-token" else "tensor"
        assert OrtLM(tiny_onnx[quant]).dynamic_quant_inputs == dict.fromkeys(
            OrtLM(tiny_onnx["w8a8"]).dynamic_quant_inputs, scheme)
        assert len(OrtLM(tiny_onnx[quant]).dynamic_quant_inputs) == 14
        # the forward's own float32-vs-float64 difference is measured (the limits widen to
        # twice it where it exceeds them: SmolLM2's unsmoothed W8A8, KLD 0.28)
        assert rep.extra["ir_float64_kld_mean"] >= 0.0
        assert 0.0 < rep.extra["ir_float64_top1_agreement"] <= 1.0
    else:
        assert "ir_float64_kld_mean" not in rep.extra
    if quant == "f32":  # float32 both sides: only summation order differs
        assert rep.extra["ir_max_abs_logit_diff"] < 1e-3
        assert rep.extra["ir_generate_max_abs_logit_diff"] < 1e-3
    elif quant == "w4-g32-sym":  # the graph differs from the source far more than from
        assert rep.max_abs_logit_diff > 10 * rep.extra["ir_max_abs_logit_diff"]  # its weights
    else:
        assert rep.extra["ir_max_abs_logit_diff"] < rep.max_abs_logit_diff


def test_w8a8_forward_quantizes_activations_as_the_graph_does(tiny_onnx, tiny_llama):
    """quantport's forward of a W8A8 graph's weights with DynamicQuantizeLinear on the inputs
    of its int8 layers is closer to what ORT computes than the float-activation forward (not
    equal: the tied head is an 8-bit MatMulNBits at accuracy_level 4, whose kernel quantizes
    its input to int8 per block, which the forward does not model)."""
    from quantport.formats.onnx_read import onnx_weights

    ort = OrtLM(tiny_onnx["w8a8"], threads=2)
    plain = TransformersLM(tiny_llama).with_weights(onnx_weights(tiny_onnx["w8a8"]))
    hooked = TransformersLM(tiny_llama).with_weights(onnx_weights(tiny_onnx["w8a8"]))
    assert hooked.quantize_inputs(ort.dynamic_quant_inputs) == 14
    ids = _prompt(tiny_llama)
    a = ort.logits(ids)
    d_hooked = float((a - hooked.logits(ids)).abs().max())
    d_plain = float((a - plain.logits(ids)).abs().max())
    assert d_hooked < 0.7 * d_plain, (d_hooked, d_plain)


def test_w8a8_per_token_graph_computes_its_reference(tiny_onnx, tiny_llama, tmp_path):
    """``--act-scheme token``: each token's activations get their own symmetric int8 scale
    (QuantizeLinear by 127 / max|x| into MatMulIntegerToFloat), one quantization per distinct
    input (q, k, v fused; gate and up share theirs); ORT's logits equal quantport's forward
    with those inputs rounded as :func:`token_quantize` writes it, to float32 summation noise,
    where per-tensor rounding of the same weights is far off. (The token table stays
    float here: tied and quantized, it is read by a MatMulNBits whose kernel rounds its input
    per block, which the forward does not model.)"""
    import onnx

    from quantport.formats.onnx_read import onnx_weights
    from quantport.validate.runner import token_quantize

    d = tmp_path / "w8a8-token"
    convert(open_source(tiny_llama), make_recipe("onnx", "w8a8", act_scheme="token",
                                                 tensor_types=["embed_tokens=f32"]), d)
    ops = [n.op_type for n in onnx.load(str(d / "model.onnx"), load_external_data=False)
           .graph.node]
    # per layer: qkv_proj, o_proj, gate_proj + up_proj (one input), down_proj; 2 layers
    assert ops.count("MatMulIntegerToFloat") == 5 * 2
    assert ops.count("QuantizeLinear") == 4 * 2
    assert "DynamicQuantizeLinear" not in ops and "MatMulInteger" not in ops
    ort = OrtLM(d, threads=2)
    weights = onnx_weights(d)
    token = TransformersLM(tiny_llama).with_weights(weights)
    assert token.quantize_inputs(ort.dynamic_quant_inputs) == 14
    tensor = TransformersLM(tiny_llama).with_weights(weights)
    tensor.quantize_inputs(dict.fromkeys(ort.dynamic_quant_inputs, "tensor"))
    ids = _prompt(tiny_llama)
    a = ort.logits(ids)
    d_token = float((a - token.logits(ids)).abs().max())
    d_tensor = float((a - tensor.logits(ids)).abs().max())
    # measured: 3e-7 against 0.01
    assert d_token < 1e-5 and d_tensor > 1e-3, (d_token, d_tensor)
    # the reference itself: symmetric, 127 steps each side of 0 per row, max |x| exact
    import torch

    x = torch.tensor([[0.5, -2.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0], [3.0, 1.5, -0.75, 0.01]])
    q = token_quantize(x)
    assert torch.equal(q[1], x[1]) and q[0, 1] == -2.0 and q[2, 0] == 3.0
    step = x.abs().amax(-1, keepdim=True) / 127
    assert torch.all((q - x).abs() <= step / 2 + 1e-7)


@pytest.mark.slow
def test_validate_onnx_minilm_encoder(tmp_path):
    """all-MiniLM-L6-v2 as ONNX (W8A8): sentence_embedding against the float32 source on 256
    sentences; the runtime against quantport's forward of the graph's own int8 weights."""
    from quantport.validate.runner import validate

    d = tmp_path / "minilm-w8a8"
    convert(open_source("minilm"), make_recipe("onnx", "w8a8"), d)
    ort = OrtLM(d, threads=2)
    assert not ort.causal and "sentence_embedding" in ort.outputs
    rep = validate(d, "minilm", threads=2)
    assert rep.correct, rep.failures
    assert rep.n_windows == 256
    c = _checks(rep)
    assert c["weights_cosine_min"]["passed"] is True and c["tokenizer_ids_match"]["value"] == 1
    assert rep.cosine_min is not None and rep.cosine_min <= rep.cosine_mean < 1.0
