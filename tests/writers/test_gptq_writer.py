"""GPTQ-format checkpoints (``--to gptq``): the packed layout against a slow reference written
from the specification (shared/reference/algorithms.md section 1.3), act-order ``g_idx`` from
a calibrated GPTQ run, exact plans, refusals, validate's reading and refusal.

GPTQModel (pip ``gptqmodel`` 7.7) needs torch >= 2.14.1 and would pull a CUDA build of torch
into the project; it is not a test dependency. The layout is checked here against the
specification; the session that built this loaded the same checkpoints with GPTQModel on CPU
in a separate environment (see the writer's report).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from safetensors.numpy import load_file

from quantport.errors import DependencyError, ShapeError, UnsupportedQuantError
from quantport.formats.gptq_pack import checkpoint_format, pack_gptq, unpack_gptq
from quantport.ir import dequantize
from quantport.pipeline import convert, make_recipe
from quantport.pipeline.convert import make_plan
from quantport.quant.scheme import parse_scheme
from quantport.readers import open_path
from quantport.validate.runner import artifact_bits, artifact_weights, check_runtime

CALIB = {"calib_samples": 4, "calib_len": 64}


def _field(words: np.ndarray, col: int, index: int, bits: int) -> int:
    """Value ``index`` of a run of 32 values packed ``bits`` wide into ``bits`` consecutive
    int32 words of column ``col`` (the spec: lowest bits first, one bit string per run)."""
    run, pos = divmod(index, 32)
    string = 0
    for k in range(bits):  # the run's 32*bits-bit string, word k at bit 32*k
        string |= (int(words[run * bits + k, col]) & 0xFFFFFFFF) << (32 * k)
    return (string >> (pos * bits)) & ((1 << bits) - 1)


def _reference_weights(t: dict[str, np.ndarray], module: str, bits: int,
                       fmt: str) -> np.ndarray:
    """``W[o, c] = scales[g, o] * (q[c, o] - z[g, o])`` with ``g = g_idx[c]``, read value by
    value; v1 ("gptq") stores z - 1."""
    qweight, qzeros = t[f"{module}.qweight"], t[f"{module}.qzeros"]
    scales, g_idx = t[f"{module}.scales"].astype(np.float32), t[f"{module}.g_idx"]
    cols, rows = qweight.shape[0] * 32 // bits, qweight.shape[1]
    w = np.zeros((rows, cols), dtype=np.float32)
    for o in range(rows):
        for c in range(cols):
            g = int(g_idx[c])
            q = _field(qweight, o, c, bits)
            zw = qzeros.T  # the zero points run along the output axis: transpose to columns
            z = _field(np.ascontiguousarray(zw), g, o, bits)
            if fmt == "gptq":
                z = (z + 1) & ((1 << bits) - 1)
            w[o, c] = np.float32(scales[g, o]) * np.float32(q - z)
    return w


@pytest.mark.parametrize("scheme", ["w4-g32-sym", "w4-g32-asym", "w3-g32-sym", "w3-g32-asym",
                                    "w2-g32-asym", "w8-channel-sym", "w8-g32-asym",
                                    "w4-channel-asym"])
@pytest.mark.parametrize("act_order", [False, True])
def test_layout_matches_the_specification(scheme: str, act_order: bool) -> None:
    rng = np.random.default_rng(len(scheme) + act_order)
    s = parse_scheme(scheme)
    w = rng.normal(size=(32, 64)).astype(np.float32)
    w[3, :32] = np.abs(w[3, :32])  # an all-positive group: an asymmetric zero point of 0
    t = s.quantize(w)
    if act_order:  # any grouping is a valid g_idx; GPTQ's groups are act-order ranks
        groups = np.shape(t.scale)[1]
        g_idx = rng.permutation(np.arange(64) % groups).astype(np.int32)
        t = dataclasses.replace(t, g_idx=g_idx)
    fmt = checkpoint_format(s.symmetric)
    assert fmt == ("gptq" if s.symmetric else "gptq_v2")
    packed = pack_gptq("m", t, fmt)
    assert packed["m.qweight"].shape == (64 * s.bits // 32, 32)
    assert packed["m.scales"].dtype == np.float16
    # the checkpoint holds the record's codes with float16 scales
    want = dequantize(dataclasses.replace(
        t, scale=np.asarray(t.scale).astype(np.float16).astype(np.float32)))
    np.testing.assert_array_equal(_reference_weights(packed, "m", s.bits, fmt), want)
    back = unpack_gptq(packed.__getitem__, "m", {"bits": s.bits, "checkpoint_format": fmt})
    np.testing.assert_array_equal(dequantize(back), want)
    assert (back.g_idx is not None) == (act_order and np.shape(t.scale)[1] > 1)


def test_v1_zero_points_are_stored_minus_one() -> None:
    # sym 4-bit: z = 8 stored as 7 in every nibble (algorithms.md 1.3: 0x77777777)
    t = parse_scheme("w4-g32-sym").quantize(np.ones((32, 64), dtype=np.float32))
    packed = pack_gptq("m", t, "gptq")
    assert np.all(packed["m.qzeros"].view(np.uint32) == 0x77777777)
    assert np.array_equal(packed["m.g_idx"], np.arange(64) // 32)


def test_gptq_act_order_checkpoint(tiny_llama: Path, tmp_path: Path) -> None:
    """--method gptq --act-order group: desc_act and act-order g_idx in the file; what
    validate reads back is the records' weights; the plan's sizes are the files'."""
    src = open_path(tiny_llama)
    recipe = make_recipe("gptq", "w4-g32-sym", method="gptq", act_order="group", **CALIB)
    plan = make_plan(src, recipe)
    out = tmp_path / "gptq"
    report = convert(src, recipe, out, threads=1)
    assert report.calibration.notes == []  # g_idx stored, not converted to static groups
    assert {p.name: p.stat().st_size for p in out.iterdir()} == plan.files
    cfg = json.loads((out / "config.json").read_text())
    qc = cfg["quantization_config"]
    assert qc == json.loads((out / "quantize_config.json").read_text())
    assert {k: qc[k] for k in ("bits", "group_size", "desc_act", "sym", "quant_method",
                               "checkpoint_format", "pack_dtype")} == {
        "bits": 4, "group_size": 32, "desc_act": True, "sym": True, "quant_method": "gptq",
        "checkpoint_format": "gptq", "pack_dtype": "int32"}
    tensors = load_file(out / "model.safetensors")
    modules = sorted(n.removesuffix(".qweight") for n in tensors if n.endswith(".qweight"))
    assert len(modules) == 14 and not any("lm_head" in m for m in modules)
    permuted = 0
    weights = artifact_weights(out)
    assert artifact_bits(out) == 4
    for m in modules:
        rec = unpack_gptq(tensors.__getitem__, m, qc)
        permuted += rec.g_idx is not None
        np.testing.assert_array_equal(weights[f"{m}.weight"], dequantize(rec))
        w = np.asarray(src.get(f"{m}.weight"))
        # really this weight, rounded: within half a step of its group's scale (GPTQ moves
        # codes by more than RTN would, but stays on the group's grid range)
        assert np.abs(weights[f"{m}.weight"] - w).max() < np.abs(w).max()
        assert not np.array_equal(weights[f"{m}.weight"], w)
    assert permuted == 14  # every weight has its act-order grouping
    # every other tensor in float16, as stored
    assert tensors["model.norm.weight"].dtype == np.float16
    assert cfg["torch_dtype"] == "float16"


def test_rtn_checkpoint_sharded_and_exact_sizes(tiny_llama: Path, tmp_path: Path) -> None:
    src = open_path(tiny_llama)
    recipe = make_recipe("gptq", "w8-channel-asym", max_shard_size=2_000_000)
    plan = make_plan(src, recipe)
    out = tmp_path / "rtn"
    convert(src, recipe, out)
    assert {p.name: p.stat().st_size for p in out.iterdir()} == plan.files
    assert (out / "model.safetensors.index.json").is_file()
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    assert (qc["group_size"], qc["sym"], qc["desc_act"], qc["checkpoint_format"]) == (
        -1, False, False, "gptq_v2")
    weights = artifact_weights(out)
    scheme = parse_scheme("w8-channel-asym")
    name = "model.layers.1.mlp.down_proj.weight"
    t = scheme.quantize(np.asarray(src.get(name)), name=name)
    want = dequantize(dataclasses.replace(
        t, scale=np.asarray(t.scale).astype(np.float16).astype(np.float32)))
    np.testing.assert_array_equal(weights[name], want)


@pytest.mark.parametrize("quant, kwargs, err", [
    ("f16", {}, UnsupportedQuantError),
    ("w4-tensor-sym", {}, UnsupportedQuantError),
    ("w5-g32-sym", {}, UnsupportedQuantError),
    ("w4-g48-sym", {}, ShapeError),
    ("w4-g32-sym", {"tensor_types": ["down_proj=w8-channel-sym"]}, UnsupportedQuantError),
    ("w4-g32-sym", {"keep_unquantized": True}, UnsupportedQuantError),
])
def test_refusals(tiny_llama: Path, quant: str, kwargs: dict, err: type) -> None:
    with pytest.raises(err) as exc:
        make_plan(open_path(tiny_llama), make_recipe("gptq", quant, **kwargs))
    assert "\n" not in str(exc.value)


def test_validate_refuses_without_the_runtime(tiny_llama: Path, tmp_path: Path) -> None:
    """transformers loads quant_method gptq only through optimum + gptqmodel, which the
    project does not install: validate says so in one line (exit 1) before loading anything."""
    import importlib.util

    from quantport.cli.main import cli

    out = tmp_path / "g"
    convert(open_path(tiny_llama), make_recipe("gptq", "w4-g32-sym"), out)
    if importlib.util.find_spec("optimum") and importlib.util.find_spec("gptqmodel"):
        check_runtime(out)  # the route exists: nothing to refuse
        return
    with pytest.raises(DependencyError, match="optimum and gptqmodel"):
        check_runtime(out)
    res = CliRunner().invoke(cli, ["validate", str(out), "--against", str(tiny_llama)])
    assert res.exit_code == 1, res.output
    lines = [ln for ln in res.output.splitlines() if ln.startswith("Error:")]
    assert len(lines) == 1 and "gptqmodel" in lines[0]
