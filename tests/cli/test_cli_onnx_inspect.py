"""`quantport inspect` on ONNX directories: files and sizes, I/O, op counts (contrib ops by
domain) and the weight schemes of each group of initializers, read from the graph alone."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from quantport.cli.main import cli
from quantport.models import open_source
from quantport.pipeline import convert, make_recipe


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def onnx_dirs(tiny_llama, tmp_path_factory) -> dict[str, Path]:
    """The tiny llama (2 layers, tied embeddings) as ONNX: float32, QDQ int4 and MatMulNBits
    int4 asym at accuracy_level 0, and W8A8."""
    recipes = {
        "f32": make_recipe("onnx", "f32"),
        "qdq": make_recipe("onnx", "w4-g32-sym"),
        "nbits": make_recipe("onnx", "w4-g32-asym", onnx_matmul="nbits", accuracy_level=0),
        "w8a8": make_recipe("onnx", "w8a8"),
        "w8a8-token": make_recipe("onnx", "w8a8", act_scheme="token"),
    }
    out = {}
    for name, recipe in recipes.items():
        d = tmp_path_factory.mktemp("onnx") / name
        convert(open_source(tiny_llama), recipe, d)
        out[name] = d
    return out


def _json(d: Path) -> dict:
    res = run("inspect", d, "--json")
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


def test_inspect_onnx_qdq_int4(onnx_dirs):
    d = _json(onnx_dirs["qdq"])
    assert d["format"] == "onnx" and d["quantization"]["bits"] == 4
    # 5 weight MatMuls in each of 2 layers (q/k/v fused as qkv_proj, o, gate, up, down); the
    # tied head reads the embedding's packed table
    assert d["ops"]["DequantizeLinear"] == 10 and d["ops"]["MatMul"] == 10
    assert d["ops"]["com.microsoft.GroupQueryAttention"] == 2
    weights = d["quantization"]["weights"]
    dq = weights["DQ int4 block 32 (axis 0) sym (explicit zero point) → MatMul"]
    assert dq["count"] == 10 and dq["bits"] == 4 and dq["bytes"] > 0
    assert any(k.startswith("GatherBlockQuantized int4 block 32") for k in weights)
    assert any(k.endswith("(shared)") and v["bytes"] == 0 for k, v in weights.items())
    on_disk = sum((onnx_dirs["qdq"] / f).stat().st_size for f in d["files"])
    assert d["file_bytes"] == on_disk
    assert d["files"]["model.onnx.data"] == (onnx_dirs["qdq"] / "model.onnx.data").stat().st_size
    assert d["io"]["inputs"] == ["input_ids", "attention_mask", "past_key_values.0..1.key",
                                 "past_key_values.0..1.value"]

    res = run("inspect", onnx_dirs["qdq"])
    assert res.exit_code == 0, res.output
    lines = res.stdout.splitlines()
    assert lines[0].startswith(f"{onnx_dirs['qdq']}: onnx, ")
    row = next(ln for ln in lines if "DQ int4 block 32 (axis 0) sym" in ln)
    assert row.split()[-4:-2] == ["10", "x"]
    assert any(ln.split() == ["com.microsoft.GroupQueryAttention", "2"] for ln in lines)
    assert all(len(ln) < 200 for ln in lines)  # long metadata values are cut


def test_inspect_onnx_nbits_float_and_w8a8(onnx_dirs):
    nb = _json(onnx_dirs["nbits"])["quantization"]["weights"]
    assert nb["MatMulNBits int4 block 32 asym, accuracy_level 0"]["count"] == 10

    f32 = _json(onnx_dirs["f32"])
    assert f32["quantization"]["bits"] == 16 and f32["quantization"]["ops"] == {}
    fw = f32["quantization"]["weights"]
    assert fw["float32 → MatMul"]["count"] == 10 and fw["float32 → Gather"]["count"] == 1
    # the tied head: the embedding table, transposed, read by a MatMul
    assert fw["float32 → MatMul (shared)"] == {"count": 1, "bytes": 0, "bits": 16,
                                              "examples": ["model.embed_tokens.weight"]}

    w8 = _json(onnx_dirs["w8a8"])
    assert w8["quantization"]["bits"] == 8
    assert w8["ops"]["DynamicQuantizeLinear"] >= 1
    ints = {k: v for k, v in w8["quantization"]["weights"].items() if "int8" in k}
    assert sum(v["count"] for v in ints.values()) >= 10


def test_inspect_onnx_w8a8_weights_read_from_each_gemm_s_own_inputs(onnx_dirs):
    """Each integer GEMM names its weight's scale and zero point at its own input indices:
    MatMulIntegerToFloat's b_scale is input 3 (input 2 is the activations' scale, one value),
    so per-channel int8 weights showed as per-tensor and the scales were not counted."""
    per_tensor = _json(onnx_dirs["w8a8"])["quantization"]["weights"]
    token = _json(onnx_dirs["w8a8-token"])
    assert token["ops"]["com.microsoft.MatMulIntegerToFloat"] == 10
    weights = token["quantization"]["weights"]
    key = "MatMulIntegerToFloat int8 weights per-channel, 8-bit activations quantized at run time"
    assert weights[key]["count"] == 10, sorted(weights)
    # the per-tensor graph's MatMulInteger owns its codes and zero points (its weight scale
    # sits in a Mul after it); the per-token graph's MatMulIntegerToFloat also its scales
    import onnx

    graph = onnx.load(str(onnx_dirs["w8a8-token"] / "model.onnx"),
                      load_external_data=False).graph
    b_scales = {n.input[3] for n in graph.node if n.op_type == "MatMulIntegerToFloat"}
    scale_bytes = sum(4 * int(np.prod(i.dims)) for i in graph.initializer if i.name in b_scales)
    assert scale_bytes > 0
    same = "MatMulInteger int8 weights per-channel, 8-bit activations quantized at run time"
    assert weights[key]["bytes"] == per_tensor[same]["bytes"] + scale_bytes


def test_inspect_onnx_with_missing_data_reports_it(onnx_dirs, tmp_path):
    import shutil

    d = tmp_path / "no-data"
    shutil.copytree(onnx_dirs["qdq"], d)
    (d / "model.onnx.data").unlink()
    info = _json(d)  # headers only: still readable, the file shows as missing
    assert info["files"]["model.onnx.data"] is None
    lines = run("inspect", d).stdout.splitlines()
    assert any(ln.split() == ["model.onnx.data", "missing"] for ln in lines)
