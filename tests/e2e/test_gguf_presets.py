"""Every llama-quantize preset on both real models: llama.cpp loads the file and validates it."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from quantport.cli.main import cli

pytestmark = [pytest.mark.slow, pytest.mark.llamacpp]

PRESETS = ["Q2_K", "Q3_K_S", "Q3_K_M", "Q3_K_L", "Q4_K_S", "Q4_K_M", "Q5_K_S", "Q5_K_M", "Q6_K",
           "Q8_0", "F16", "BF16", "F32"]


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.mark.parametrize("preset", PRESETS)
def test_smollm2_preset_runs_and_validates_in_llamacpp(preset, tmp_path, default_model_dir):
    out = tmp_path / f"smollm2-{preset}.gguf"
    res = run("convert", "--to", "gguf", "--quant", preset, "-o", out, "-q", "--json")
    assert res.exit_code == 0, res.output
    res = run("validate", out, "--windows", "2", "--ctx", "256", "--json")
    d = json.loads(res.stdout)
    assert d["runtime"] == "llama.cpp"
    assert res.exit_code == 0, d["failures"]
    # llama.cpp's logits agree with quantport's forward of the same (dequantized) weights
    assert d["extra"]["ir_top1_agreement"] > 0.9, d["extra"]


@pytest.mark.parametrize("preset", PRESETS)
def test_minilm_preset_runs_and_validates_in_llamacpp(preset, tmp_path):
    out = tmp_path / f"minilm-{preset}.gguf"
    res = run("convert", "minilm", "--to", "gguf", "--quant", preset, "-o", out, "-q")
    assert res.exit_code == 0, res.output
    res = run("validate", out, "--against", "minilm", "--json")
    d = json.loads(res.stdout)
    assert d["runtime"] == "llama.cpp" and d["cosine_mean"] is not None
    assert res.exit_code == 0, (d["cosine_mean"], d["failures"])
