"""The correctness gate of `validate`: the runtime must compute what the artifact's weights mean
and tokenize like the source; quality failures are reported apart, by name."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from quantport.cli.main import cli
from quantport.formats.gguf_file import map_gguf, scan_gguf
from quantport.formats.gguf_writer import GGUFKV, GGUFTensor, GGUFValueType, write_gguf
from quantport.validate import runner
from quantport.validate.runner import validate

ARGS = {"ctx": 64, "n_windows": 2}


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def _checks(report) -> dict[str, dict]:
    return {c["name"]: c for c in report.checks}


@pytest.fixture(scope="module")
def tiny_gguf(tiny_llama, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("gguf") / "tiny-q8_0.gguf"
    res = run("convert", tiny_llama, "--to", "gguf", "--quant", "Q8_0", "-o", out, "-q")
    assert res.exit_code == 0, res.output
    return out


def _swap_tokens(src: Path, dst: Path, a: str, b: str) -> None:
    """Rewrite ``src`` with quantport's GGUF writer, the strings of tokens ``a`` and ``b``
    exchanged in ``tokenizer.ggml.tokens``; everything else verbatim."""
    scan = scan_gguf(src, keep_arrays=True)
    mapped = map_gguf(src)
    meta = []
    for key, value in scan.metadata.items():
        vtype, etype = scan.types[key]
        if key == "tokenizer.ggml.tokens":
            value = list(value)
            i, j = value.index(a), value.index(b)
            value[i], value[j] = value[j], value[i]
        if key == "general.alignment":
            continue  # the writer sets it from the tensors' needs
        meta.append(GGUFKV(key, value, GGUFValueType(vtype),
                           None if etype is None else GGUFValueType(etype)))
    tensors = [GGUFTensor(t.name, t.shape, t.type_name,
                          lambda t=t: np.asarray(mapped[t.offset : t.offset + t.nbytes]))
               for t in scan.tensors]
    write_gguf(dst, meta, tensors)


@pytest.mark.llamacpp
def test_gguf_with_swapped_vocabulary_fails_correctness(tiny_gguf, tiny_llama, tmp_path):
    good = validate(tiny_gguf, tiny_llama, **ARGS)
    assert good.correct, good.failures
    assert _checks(good)["tokenizer_ids_match"]["passed"] is True
    assert _checks(good)["weights_kld_mean"]["passed"] is True

    broken = tmp_path / "broken-vocab.gguf"
    _swap_tokens(tiny_gguf, broken, "Ġthe", ",")  # both frequent in WikiText
    rep = validate(broken, tiny_llama, **ARGS)
    assert not rep.correct and not rep.passed
    tok = _checks(rep)["tokenizer_ids_match"]
    assert tok["group"] == "correctness" and tok["passed"] is False and tok["value"] < 1.0
    assert "first difference at token" in tok["detail"]
    assert any(f.startswith("tokenizer_ids_match") for f in rep.failures)
    # the weights are intact: llama.cpp still computes what they mean
    assert _checks(rep)["weights_kld_mean"]["passed"] is True

    res = run("validate", broken, "--against", tiny_llama, "--ctx", "64", "--windows", "2",
              "--json")
    assert res.exit_code == 3
    d = json.loads(res.stdout)
    assert d["correct"] is False and d["exit_code"] == 3


def test_safetensors_weights_read_by_quantport_match_the_runtime(tiny_llama, tmp_path):
    """Symmetric and asymmetric compressed-tensors checkpoints: transformers +
    compressed-tensors compute what quantport's own reading of the packed weights means."""
    for scheme in ("w4-g32-sym", "w4-g32-asym"):
        out = tmp_path / scheme
        res = run("convert", tiny_llama, "--to", "safetensors", "--quant", scheme, "-o", out,
                  "-q")
        assert res.exit_code == 0, res.output
        rep = validate(out, tiny_llama, **ARGS)
        assert rep.correct, (scheme, rep.failures)
        c = _checks(rep)
        assert c["weights_kld_mean"]["value"] < 1e-4, scheme
        assert c["weights_top1_agreement"]["value"] == 1.0, scheme
        assert c["tokenizer_ids_match"]["value"] == 1.0
        # exact to float32 rounding, while the artifact (quantized) differs from the source
        assert rep.extra["ir_max_abs_logit_diff"] < 1e-3
        assert rep.max_abs_logit_diff > 10 * rep.extra["ir_max_abs_logit_diff"]


def test_runtime_that_disagrees_with_the_weights_fails_correctness(tiny_llama, tmp_path,
                                                                  monkeypatch):
    """If the runtime computed something other than what the file's weights mean (here:
    quantport's reading of the final norm is 20 times the runtime's, as a misread scale would
    be), the gate fails on the weights checks."""
    out = tmp_path / "w8"
    res = run("convert", tiny_llama, "--to", "safetensors", "--quant", "w8-channel-sym", "-o",
              out, "-q")
    assert res.exit_code == 0, res.output
    real = runner.artifact_weights

    def misread(path, on_progress=None):
        w = real(path, on_progress)
        w["model.norm.weight"] = w["model.norm.weight"] * 20
        return w

    monkeypatch.setattr(runner, "artifact_weights", misread)
    rep = validate(out, tiny_llama, **ARGS)
    assert not rep.correct
    c = _checks(rep)
    assert c["weights_kld_mean"]["passed"] is False
    assert c["tokenizer_ids_match"]["passed"] is True
    assert any(f.startswith("weights_kld_mean") for f in rep.failures)
