"""quantport.recipe: the user's choices parsed once into an immutable recipe."""

from __future__ import annotations

import dataclasses

import pytest

from quantport.errors import ConfigError, OptionError, UnsupportedQuantError
from quantport.quant.presets import Preset
from quantport.quant.scheme import IntScheme
from quantport.recipe import make_recipe


def test_parsed_once_into_objects() -> None:
    r = make_recipe("gguf", "q4_k_m", tensor_types=["ATTN_V=q8_0"], output_type="q6_k")
    assert isinstance(r.quant, Preset) and r.quant.name == "Q4_K_M"
    # llama-quantize lower-cases the pattern and matches types case-insensitively
    assert r.overrides[0].pattern == "attn_v" and r.overrides[0].target == "Q8_0"
    assert r.overrides[0].regex.search("blk.0.attn_v.weight")
    assert r.output_type == "Q6_K"
    s = make_recipe("safetensors", "W4-G64-SYM", tensor_types=["down_proj=w8-channel-sym",
                                                               "lm_head=BF16"])
    assert s.quant == IntScheme(4, "group", 64, True)
    assert [o.target for o in s.overrides] == [IntScheme(8, "channel", None, True), "BF16"]
    assert make_recipe("safetensors", "fp16").quant == "F16"
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.method = "gptq"  # type: ignore[misc]


def test_to_dict_is_what_the_artifact_records() -> None:
    r = make_recipe("gguf", "Q4_K_M", tensor_types=["attn_v=Q8_0"], pure=True,
                    calib="valid.txt", calib_samples=8, calib_len=256)
    assert r.to_dict() == {
        "format": "gguf", "quant": "Q4_K_M", "method": "rtn", "overrides": ["attn_v=Q8_0"],
        "pure": True, "calib": {"text": "valid.txt", "samples": 8, "len": 256},
    }
    assert make_recipe("safetensors", "w4-g64-sym").to_dict() == {
        "format": "safetensors", "quant": "w4-g64-sym", "method": "rtn"}


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"fmt": "tflite", "quant": "w4-g64-sym"}, UnsupportedQuantError, "supported: safetensors"),
    ({"fmt": "gguf", "quant": "Q9_K"}, UnsupportedQuantError, "unknown llama-quantize preset"),
    ({"fmt": "safetensors", "quant": "int4"}, UnsupportedQuantError, "unknown quantization"),
    ({"fmt": "safetensors", "quant": "w4-g64-sym", "method": "optq"}, UnsupportedQuantError,
     "supported: rtn, gptq, awq"),
    ({"fmt": "gguf", "quant": "Q4_K_M", "method": "gptq", "imatrix": "x.dat"}, OptionError,
     "--imatrix applies to --method rtn"),
    ({"fmt": "safetensors", "quant": "w4-g64-sym", "method": "gptq", "act_order": "desc"},
     OptionError, "--act-order 'desc' is not one of static, group, none"),
    ({"fmt": "safetensors", "quant": "w4-g64-sym", "method": "gptq", "damp": 0.0},
     OptionError, "--damp must be in"),
    # a calibrated method with every weight left in float ran calibration for nothing
    ({"fmt": "safetensors", "quant": "f16", "method": "gptq"}, OptionError,
     "keeps every weight in float"),
    ({"fmt": "gguf", "quant": "F16", "method": "gptq"}, OptionError,
     "keeps every weight in float"),
    ({"fmt": "safetensors", "quant": "w4-g64-sym", "pure": True}, OptionError, "--pure"),
    ({"fmt": "safetensors", "quant": "w4-g64-sym", "calib": "x.txt"}, OptionError,
     "--calib with --to safetensors needs a calibrated --method"),
    # the message names the format asked for (it said safetensors for every format)
    ({"fmt": "onnx", "quant": "w8a8", "calib": "x.txt"}, OptionError,
     "--calib with --to onnx needs a calibrated --method"),
    ({"fmt": "gptq", "quant": "w4-g128-asym", "calib": "x.txt"}, OptionError,
     "--calib with --to gptq needs a calibrated --method"),
    ({"fmt": "gguf", "quant": "Q4_0", "imatrix": "a", "calib": "b"}, OptionError, "not both"),
    # smoothing without int8 activations was accepted, and only changed the weights' rounding
    ({"fmt": "safetensors", "quant": "w4-g64-sym", "method": "smoothquant"}, OptionError,
     "--method smoothquant is for int8 activations: use --quant w8a8"),
    ({"fmt": "gguf", "quant": "Q4_0", "method": "smoothquant"}, OptionError,
     "--method smoothquant is for int8 activations"),
    # W8A8's activation scheme: per tensor is ONNX's alone; no other quant has one
    ({"fmt": "safetensors", "quant": "w8a8", "act_scheme": "tensor"}, OptionError,
     "compressed-tensors W8A8 quantizes activations per token"),
    ({"fmt": "onnx", "quant": "w8a8", "act_scheme": "channel"}, OptionError,
     "--act-scheme 'channel' is not one of token, tensor"),
    ({"fmt": "onnx", "quant": "w4-g32-sym", "act_scheme": "token"}, OptionError,
     "--act-scheme applies to --quant w8a8"),
    ({"fmt": "gguf", "quant": "Q4_0", "tensor_types": ["attn_v"]}, UnsupportedQuantError,
     "REGEX=TYPE"),
    ({"fmt": "gguf", "quant": "Q4_0", "tensor_types": ["attn_v=Q9"]}, UnsupportedQuantError,
     "unknown tensor type"),
    ({"fmt": "safetensors", "quant": "f16", "tensor_types": ["(=f32"]}, UnsupportedQuantError,
     "invalid regex"),
    ({"fmt": "safetensors", "quant": "f16", "tensor_types": ["x=Q4_K"]}, UnsupportedQuantError,
     "unknown quantization scheme"),
    ({"fmt": "gguf", "quant": "Q4_0", "calib_len": 8}, ConfigError, "at least 16 tokens"),
    ({"fmt": "safetensors", "quant": "f16", "max_shard_size": 0}, ConfigError,
     "must be positive"),
])
def test_bad_choices_are_refused_in_one_line(kwargs, error, match) -> None:
    fmt, quant = kwargs.pop("fmt"), kwargs.pop("quant")
    with pytest.raises(error, match=match) as exc:
        make_recipe(fmt, quant, **kwargs)
    assert "\n" not in str(exc.value)


def test_unknown_ggml_type_lists_the_types_quantport_writes() -> None:
    """The list offered for an unknown --tensor-type named ggml types the GGUF writer then
    refuses (NVFP4, TQ1_0, IQ2_XXS...)."""
    with pytest.raises(UnsupportedQuantError) as exc:
        make_recipe("gguf", "Q4_K_M", tensor_types=["attn_v=Q9"])
    listed = str(exc.value).split("quantport writes: ")[1].split(", ")
    assert {"Q4_K", "Q6_K", "IQ4_NL", "F16", "BF16"} <= set(listed)
    assert not {"NVFP4", "TQ1_0", "IQ2_XXS", "MXFP4"} & set(listed)


def test_calibrated_method_defaults_to_the_validation_text_and_128_windows() -> None:
    from quantport._fixtures import calibration_text

    r = make_recipe("safetensors", "w4-g64-sym", method="gptq")
    assert r.calibrated and r.calib == calibration_text() and r.calib_samples == 128
    d = r.to_dict()
    assert d["gptq"] == {"damp": 0.01, "act_order": "static"}
    assert d["calib"]["inputs"] == "quantized" and d["calib"]["samples"] == 128
    # round-to-nearest keeps the importance-matrix default of 16 windows
    assert make_recipe("gguf", "Q4_K_M", calib="x.txt").calib_samples == 16
    assert not make_recipe("gguf", "Q4_K_M").calibrated


def test_w8a8_activation_scheme_defaults_per_format_and_is_recorded() -> None:
    """ONNX W8A8 defaults to ORT's per-tensor DynamicQuantizeLinear, compressed-tensors to
    per-token activations; the artifact's recipe says which."""
    onnx = make_recipe("onnx", "w8a8")
    assert onnx.act_scheme == "tensor" and onnx.to_dict()["act_scheme"] == "tensor"
    token = make_recipe("onnx", "w8a8", act_scheme="token")
    assert token.act_scheme == "token" and token.to_dict()["act_scheme"] == "token"
    st = make_recipe("safetensors", "w8a8")
    assert st.act_scheme == "token" and st.to_dict()["act_scheme"] == "token"
    assert make_recipe("onnx", "w4-g32-sym").act_scheme is None
    assert "act_scheme" not in make_recipe("onnx", "w4-g32-sym").to_dict()


def test_calibrated_method_on_float_quant_with_a_quantizing_override_is_accepted() -> None:
    r = make_recipe("safetensors", "f16", method="gptq",
                    tensor_types=["down_proj=w4-g32-sym"])
    assert r.method == "gptq"
