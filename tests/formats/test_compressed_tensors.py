"""compressed-tensors packing agrees with the library's own pack_to_int32."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32

from quantport.formats.compressed_tensors import pack_int32, unpack_int32


@pytest.mark.parametrize("n", [72, 13])
@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 7, 8])
def test_pack_matches_library(bits, n):
    rng = np.random.default_rng(bits)
    v = rng.integers(-(1 << (bits - 1)), 1 << (bits - 1), size=(5, n))
    ref = pack_to_int32(torch.tensor(v, dtype=torch.int8), bits).numpy()
    mine = pack_int32(v + (1 << (bits - 1)), bits)
    np.testing.assert_array_equal(mine, ref)
    np.testing.assert_array_equal(unpack_int32(mine, bits, n) - (1 << (bits - 1)), v)
    ref0 = pack_to_int32(torch.tensor(v, dtype=torch.int8), bits, packed_dim=0).numpy()
    np.testing.assert_array_equal(pack_int32((v + (1 << (bits - 1))).T, bits).T, ref0)


LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
           "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


def test_asymmetric_checkpoint_loads_in_transformers_exactly(tiny_llama, tmp_path):
    # The asymmetric layout (zero-point packed along the output axis, zero-padded to
    # [out, groups]) is the one part of the format that a packing test cannot vouch for: only
    # transformers + compressed-tensors loading it and decoding the same weights can.
    from click.testing import CliRunner
    from safetensors.numpy import load_file
    from transformers import AutoModelForCausalLM, CompressedTensorsConfig

    from quantport.cli.main import cli
    from quantport.ir import dequantize
    from quantport.quant.scheme import parse_scheme

    out = tmp_path / "w4-asym"
    res = CliRunner().invoke(cli, ["convert", str(tiny_llama), "--to", "safetensors", "--quant",
                                   "w4-g32-asym", "-o", str(out), "-q"], catch_exceptions=False)
    assert res.exit_code == 0, res.output

    src = load_file(tiny_llama / "model.safetensors")
    scheme = parse_scheme("w4-g32-asym")
    want = {}
    for i in range(2):
        for lin in LINEARS:
            name = f"model.layers.{i}.{lin}.weight"
            qt = scheme.quantize(src[name], name=name)
            assert qt.zero_point is not None  # really the asymmetric layout
            want[name] = dequantize(qt)
            assert not np.array_equal(want[name], src[name])  # and really quantized

    # decompressed on load: the Linear weights compressed-tensors decodes from the checkpoint
    dec = AutoModelForCausalLM.from_pretrained(
        out, dtype=torch.float32, quantization_config=CompressedTensorsConfig(dequantize=True))
    state = dec.state_dict()
    for name, w in want.items():
        got = state[name].numpy()
        assert got.shape == w.shape, name
        np.testing.assert_array_max_ulp(got, w, maxulp=1)

    # the default load (compressed modules) on a few tokens against quantport's weights placed
    # in the plain fp32 model
    ids = torch.tensor([[1, 504, 3776, 314, 253, 2126, 28, 49000]])
    art = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    ref = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)
    unexpected = ref.load_state_dict({k: torch.from_numpy(v) for k, v in want.items()},
                                  strict=False).unexpected_keys
    assert unexpected == []
    with torch.inference_mode():
        got, exp = art(ids).logits[0].numpy(), ref(ids).logits[0].numpy()
        orig = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)(ids).logits
    np.testing.assert_allclose(got, exp, rtol=0, atol=1e-5)
    assert np.abs(orig[0].numpy() - exp).max() > 1e-3  # the comparison can tell the difference


@pytest.mark.parametrize("scheme", ["w4-g32-sym", "w4-g32-asym", "w3-g16-sym"])
def test_g_idx_packs_as_weight_g_idx_and_unpacks(scheme):
    """Act-order records (GPTQ ``g_idx``) pack as compressed-tensors' ``actorder="group"``
    layout: ``weight_g_idx`` int32 [in] beside the usual tensors, read back to the same
    weights."""
    import dataclasses

    from quantport.formats.compressed_tensors import (
        pack_record,
        packed_entries,
        scheme_args,
        unpack_record,
    )
    from quantport.ir import dequantize
    from quantport.quant.scheme import parse_scheme

    rng = np.random.default_rng(7)
    s = parse_scheme(scheme)
    t = s.quantize(rng.normal(size=(24, 64)).astype(np.float32))
    groups = np.shape(t.scale)[1]
    t = dataclasses.replace(t, g_idx=rng.permutation(np.arange(64) % groups).astype(np.int32))
    packed = pack_record("m", t)
    entries = packed_entries("m", (24, 64), s.bits, s.symmetric, (24, groups), g_idx=True)
    assert {n for n, _, _ in entries} == set(packed)
    for name, dtype, shape in entries:
        assert packed[name].shape == shape, name
        assert packed[name].dtype == {"I32": np.int32, "I64": np.int64, "F32": np.float32}[dtype]
    np.testing.assert_array_equal(packed["m.weight_g_idx"], t.g_idx)
    args = scheme_args(s.bits, s.symmetric, "group", s.group_size, "group")
    back = unpack_record(packed.__getitem__, "m", args)
    np.testing.assert_array_equal(back.g_idx, t.g_idx)
    np.testing.assert_array_equal(dequantize(back), dequantize(t))
    # and the grouping matters: without g_idx the same tensors mean other weights
    plain = unpack_record(packed.__getitem__, "m", {**args, "actorder": None})
    assert not np.array_equal(dequantize(plain), dequantize(t))


def test_pinned_compressed_tensors_refuses_group_actorder():
    """Why quantport writes act-order as static groups (``actorder: "weight"``) in
    compressed-tensors and keeps g_idx for --to gptq: the pinned compressed-tensors refuses
    ``actorder="group"`` when transformers parses the config (0.18 still loaded it and applied
    g_idx exactly). If a release accepts it again, GROUP_ACTORDER_LOADS can be turned on."""
    from compressed_tensors.quantization import QuantizationArgs

    from quantport.formats.compressed_tensors import GROUP_ACTORDER_LOADS, scheme_args
    from quantport.pipeline.calibrated import stores_g_idx
    from quantport.quant.scheme import parse_scheme

    args = scheme_args(4, True, "group", 32, "group")
    with pytest.raises(ValueError, match="removed"):
        QuantizationArgs(**args)
    assert GROUP_ACTORDER_LOADS is False
    assert not stores_g_idx("safetensors", parse_scheme("w4-g32-sym"))
    assert stores_g_idx("gptq", parse_scheme("w4-g32-sym"))
    assert stores_g_idx("gptq", parse_scheme("w4-channel-asym"))
    assert not stores_g_idx("gguf", "Q4_K")
    # what quantport writes for static act-order is accepted
    assert QuantizationArgs(**scheme_args(4, True, "group", 32, "weight")).actorder == "weight"
