"""`quantport validate` on an ONNX directory through the CLI: ONNX Runtime is the runtime, the
generation check is listed with the correctness group, exit codes as for the other formats."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from quantport.cli.main import cli
from quantport.models import open_source
from quantport.pipeline import convert, make_recipe


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def tiny_onnx_w4(tiny_llama, tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx") / "w4"
    convert(open_source(tiny_llama), make_recipe("onnx", "w4-g32-asym", onnx_matmul="nbits",
                                                 accuracy_level=4), out)
    return out


def test_validate_onnx_directory(tiny_onnx_w4, tiny_llama):
    args = ["validate", tiny_onnx_w4, "--against", tiny_llama, "--ctx", "64", "--windows", "1",
            "--threads", "2"]
    res = run(*args, "--json")
    assert res.exit_code == 0, res.output
    d = json.loads(res.stdout)
    assert d["runtime"] == "onnxruntime" and d["correct"] and d["exit_code"] == 0
    by_name = {c["name"]: c for c in d["checks"]}
    gen = by_name["generate_greedy_match"]
    assert gen["group"] == "correctness" and gen["passed"] is True and gen["value"] == 1.0
    assert d["thresholds"]["max_kld"] == 0.5  # the 4-bit defaults, from the graph's schemes
    assert d["timings"]["generate"] > 0

    res = run(*args)
    assert res.exit_code == 0, res.output
    lines = res.stdout.splitlines()
    assert lines[0].endswith("(onnxruntime)")
    assert any(ln.split()[:2] == ["pass", "generate_greedy_match"] for ln in lines)
    assert lines[-1].startswith("PASSED: correctness 4/4")


def test_validate_onnx_quality_failure_exits_4(tiny_onnx_w4, tiny_llama):
    res = run("validate", tiny_onnx_w4, "--against", tiny_llama, "--ctx", "64", "--windows",
              "1", "--max-kld", "0", "--json")
    assert res.exit_code == 4, res.output
    d = json.loads(res.stdout)
    assert d["correct"] is True and [f.split()[0] for f in d["failures"]] == ["kld_mean"]
