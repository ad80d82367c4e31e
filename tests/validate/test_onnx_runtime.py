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
    """The tiny llama written by quantport's ONNX writer in float32 and in w4-g32-sym."""
    out = {}
    for quant in ("f32", "w4-g32-sym"):
        d = tmp_path_factory.mktemp("onnx") / quant
        convert(open_source(tiny_llama), make_recipe("onnx", quant), d)
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
    assert check.passed is False and check.value < 1.0
    assert check.detail.startswith("diverged at token")
    assert bad.extra["generate_tokens"] != bad.extra["ir_generate_tokens"]


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
