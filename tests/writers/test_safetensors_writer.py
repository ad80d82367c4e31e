"""quantport.writers.safetensors (and the writer table): sharded checkpoints as transformers
writes them, exact plans, per-tensor overrides, records computed elsewhere."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from quantport.errors import OptionError, UnsupportedQuantError
from quantport.formats.safetensors import SafetensorsFile
from quantport.ir import dequantize
from quantport.pipeline import convert, make_recipe
from quantport.pipeline.convert import make_plan
from quantport.readers import HFCheckpoint, open_path
from quantport.writers import WRITERS


def _load(path: Path):
    import torch
    from transformers import AutoModelForCausalLM

    from quantport._quiet import quiet_loading

    with quiet_loading():  # compressed-tensors decompresses the weights on CPU
        return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def _logits(model, ids=(1, 504, 2365, 6354, 16438, 2)):
    import torch

    with torch.no_grad():
        return model(torch.tensor([list(ids)])).logits[0].numpy()


def _sizes(path: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in path.iterdir()}


def test_writer_table_lists_every_format() -> None:
    assert set(WRITERS) == {"gguf", "safetensors", "onnx", "gptq"}
    for name, w in WRITERS.items():
        assert w.name == name
        assert w.description
        for method in ("plan", "importance", "check_output", "open"):
            assert callable(getattr(w, method)), (name, method)


@pytest.mark.parametrize("quant", ["f32", "w4-g32-sym"])
def test_sharded_checkpoint_loads_in_transformers(tiny_llama: Path, tmp_path: Path,
                                                  quant: str) -> None:
    """Shards as transformers splits them (max_shard_size), index included; the plan's file
    sizes are the written files' sizes; transformers loads the shards and computes what the
    single-file checkpoint computes."""
    src = HFCheckpoint(tiny_llama)
    single = tmp_path / "single"
    sharded = tmp_path / "sharded"
    convert(src, make_recipe("safetensors", quant), single)
    limit = 10_000
    dry = convert(src, make_recipe("safetensors", quant, max_shard_size=limit), sharded,
                  dry_run=True)
    assert not sharded.exists()
    rep = convert(src, make_recipe("safetensors", quant, max_shard_size=limit), sharded)
    assert _sizes(sharded) == dry.plan.files == rep.plan.files
    shards = sorted(p for p in sharded.glob("model-*-of-*.safetensors"))
    n = len(shards)
    assert n >= 3 and not (sharded / "model.safetensors").exists()
    assert [p.name for p in shards] == [f"model-{k:05d}-of-{n:05d}.safetensors"
                                        for k in range(1, n + 1)]
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    files = {name: SafetensorsFile(sharded / f) for name, f in index["weight_map"].items()}
    assert index["metadata"]["total_size"] == sum(
        f.tensors[name].nbytes for name, f in files.items())
    for p in shards:  # every shard within the limit, unless one tensor group alone exceeds it
        f = SafetensorsFile(p)
        data = sum(f.tensors[k].nbytes for k in f.keys())
        assert data <= limit or len({k.rsplit(".", 1)[0] for k in f.keys()}) == 1
    # a quantized module's tensors never straddle shards
    by_module: dict[str, set[str]] = {}
    for name, f in index["weight_map"].items():
        by_module.setdefault(name.rsplit(".", 1)[0], set()).add(f)
    assert all(len(fs) == 1 for m, fs in by_module.items() if m.endswith("_proj"))
    one = SafetensorsFile(single / "model.safetensors")
    for name, f in files.items():  # the same tensors, byte for byte, in either layout
        assert np.array_equal(f.raw(name), one.raw(name)), name
    np.testing.assert_array_equal(_logits(_load(sharded)), _logits(_load(single)))


def test_overrides_mix_schemes_and_transformers_loads_them(tiny_llama: Path,
                                                           tmp_path: Path) -> None:
    src = HFCheckpoint(tiny_llama)
    recipe = make_recipe("safetensors", "w4-g32-sym",
                         tensor_types=["down_proj=w8-channel-sym", r"layers\.1\.self_attn\.o_proj=f32"])
    out = tmp_path / "mixed"
    rep = convert(src, recipe, out)
    targets = {r.name: r.type_name for r in rep.plan.rows}
    assert targets["model.layers.0.mlp.down_proj.weight"] == "w8-channel-sym"
    assert targets["model.layers.0.mlp.up_proj.weight"] == "w4-g32-sym"
    assert targets["model.layers.1.self_attn.o_proj.weight"] == "F32"
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    groups = {json.dumps(g["weights"]["num_bits"]): g["targets"]
              for g in qc["config_groups"].values()}
    assert "model.layers.0.mlp.down_proj" in groups["8"]
    assert "model.layers.0.mlp.up_proj" in groups["4"]
    assert "model.layers.1.self_attn.o_proj" in qc["ignore"]
    # transformers (with compressed-tensors) computes what quantport's dequantized records
    # mean: the source architecture with those weights gives the same logits
    import torch
    from transformers import AutoModelForCausalLM

    state = {}
    for name, target in targets.items():
        w = src.get(name)
        if target != "F32":
            state[name] = dequantize(make_recipe("safetensors", target).quant.quantize(w, name=name))
            assert not np.array_equal(state[name], w)  # really quantized
    ref = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32).eval()
    before = _logits(ref)
    assert ref.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()},
                               strict=False).unexpected_keys == []
    got, expected = _logits(_load(out)), _logits(ref)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
    assert np.abs(before - expected).max() > 1e-3  # the comparison can tell the difference


def test_override_errors(tiny_llama: Path, tmp_path: Path) -> None:
    src = HFCheckpoint(tiny_llama)
    with pytest.raises(UnsupportedQuantError, match="matches no tensor"):
        make_plan(src, make_recipe("safetensors", "w4-g32-sym", tensor_types=["nothing=f16"]))
    with pytest.raises(UnsupportedQuantError, match="Linear weights only"):
        make_plan(src, make_recipe("safetensors", "f32",
                                   tensor_types=["embed_tokens=w8-channel-sym"]))
    with pytest.raises(UnsupportedQuantError, match="REGEX=SCHEME"):
        make_recipe("safetensors", "w4-g32-sym", tensor_types=["down_proj"])
    with pytest.raises(OptionError, match="--to gguf only"):
        make_recipe("safetensors", "w4-g32-sym", pure=True)


def test_gguf_writer_takes_records_computed_elsewhere(tiny_llama: Path, tmp_path: Path) -> None:
    """The GGUF sink packs whatever records it is given: records read back from a Q8_0 GGUF
    (not quantized by the pipeline) make the same file again, byte for byte."""
    from quantport.formats.gguf_file import map_gguf, read_tensor, scan_gguf

    src = HFCheckpoint(tiny_llama)
    recipe = make_recipe("gguf", "Q8_0")
    first = tmp_path / "first.gguf"
    rep = convert(src, recipe, first)
    infos = {t.name: t for t in scan_gguf(first).tensors}
    mapped = map_gguf(first)
    writer = WRITERS["gguf"]
    second = tmp_path / "second.gguf"
    with writer.open(second, src, rep.plan) as sink:
        for i, row in reversed(list(enumerate(rep.plan.rows))):  # any order
            sink.put(i, read_tensor(first, infos[row.name], mapped))
    assert second.read_bytes() == first.read_bytes()
    # a record on another grid is refused, naming the tensor
    bad = make_recipe("safetensors", "w4-g32-sym").quant.quantize(
        src.get("model.layers.0.mlp.up_proj.weight"), name="x")
    i = next(k for k, r in enumerate(rep.plan.rows) if r.name == "blk.0.ffn_up.weight")
    with pytest.raises(UnsupportedQuantError, match="blk.0.ffn_up.weight"):
        with writer.open(tmp_path / "third.gguf", src, rep.plan) as sink:
            sink.put(i, bad)
    assert not (tmp_path / "third.gguf").exists()


def test_gguf_to_safetensors_roundtrip(tmp_path: Path, tiny_llama: Path) -> None:
    """A GGUF source (records dequantized by the reader) exports to a dense checkpoint whose
    weights are the GGUF's values."""
    src = HFCheckpoint(tiny_llama)
    gguf_path = tmp_path / "t.gguf"
    convert(src, make_recipe("gguf", "F32"), gguf_path)
    out = tmp_path / "back"
    convert(open_path(gguf_path), make_recipe("safetensors", "f32"), out)
    back = HFCheckpoint(out)
    for name in back.names():
        np.testing.assert_array_equal(back.get(name), src.get(name), err_msg=name)


def test_bert_pooler_stays_float_and_transformers_runs_it(tmp_path: Path) -> None:
    """compressed-tensors quantizes every nn.Linear not in `ignore`: BERT's pooler, kept in
    float, must be listed, or transformers cannot load the checkpoint."""
    import torch
    from transformers import AutoModel

    from quantport._quiet import quiet_loading
    from quantport.models import open_source

    src = open_source("minilm")
    out = tmp_path / "minilm-w8"
    rep = convert(src, make_recipe("safetensors", "w8-channel-sym"), out)
    assert {r.name: r.type_name for r in rep.plan.rows}["pooler.dense.weight"] == "F32"
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    assert "pooler.dense" in qc["ignore"]
    with quiet_loading():
        model = AutoModel.from_pretrained(out, dtype=torch.float32).eval()
    with torch.no_grad():
        hidden = model(input_ids=torch.tensor([[101, 7592, 2088, 102]])).last_hidden_state
    assert hidden.shape == (1, 4, 384) and torch.isfinite(hidden).all()


def test_validate_reads_mixed_scheme_checkpoints(tiny_llama: Path, tmp_path: Path) -> None:
    """validate's own reading of an artifact's weights (its correctness gate) follows every
    config group, as compressed-tensors does: a checkpoint with several schemes gives exactly
    quantport's dequantized records."""
    from quantport.validate.runner import artifact_weights

    src = HFCheckpoint(tiny_llama)
    recipe = make_recipe("safetensors", "w4-g32-asym",
                         tensor_types=["down_proj=w8-channel-sym", r"layers\.1\.self_attn\.o_proj=f32"])
    out = tmp_path / "mixed"
    rep = convert(src, recipe, out)
    got = artifact_weights(out)
    for row in rep.plan.rows:
        w = src.get(row.name)
        want = w if not row.quantized else dequantize(row.target.quantize(w, name=row.name))
        np.testing.assert_array_equal(got[row.name], want, err_msg=row.name)


def test_act_order_group_becomes_static_groups_with_a_note(tiny_llama: Path,
                                                           tmp_path: Path) -> None:
    """--act-order group on compressed-tensors: the pinned compressed-tensors refuses
    actorder="group" (weight_g_idx), so GPTQ runs act-order onto static groups, says so, and
    the config records actorder "weight"; the plan's sizes are the files' and transformers
    loads it to the weights quantport reads."""
    src = HFCheckpoint(tiny_llama)
    recipe = make_recipe("safetensors", "w4-g32-sym", method="gptq", act_order="group",
                         calib_samples=4, calib_len=64)
    plan = make_plan(src, recipe)
    out = tmp_path / "ct"
    report = convert(src, recipe, out, threads=1)
    assert any("static groups" in n for n in report.calibration.notes)
    assert _sizes(out) == plan.files
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    assert [g["weights"]["actorder"] for g in qc["config_groups"].values()] == ["weight"]
    names = SafetensorsFile(out / "model.safetensors").keys()
    assert not [n for n in names if n.endswith("weight_g_idx")]
    import torch
    from transformers import AutoModelForCausalLM, CompressedTensorsConfig

    from quantport.validate.runner import artifact_weights

    model = AutoModelForCausalLM.from_pretrained(  # decompressed on load
        out, dtype=torch.float32, quantization_config=CompressedTensorsConfig(dequantize=True))
    state = model.state_dict()
    linear = {n: w for n, w in artifact_weights(out).items() if n.endswith("proj.weight")}
    assert len(linear) == 14
    for name, w in linear.items():
        np.testing.assert_array_max_ulp(state[name].numpy(), w, maxulp=1)


def test_weight_g_idx_path_when_compressed_tensors_loads_it(tiny_llama: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The writer's act-order path (kept for a compressed-tensors that loads actorder="group"
    again; 0.18 did, bit-exactly): weight_g_idx planned and written at its exact size, the
    config says actorder "group", and quantport reads the act-order records back."""
    from quantport.formats import compressed_tensors as ct
    from quantport.formats.compressed_tensors import scheme_of, unpack_record

    monkeypatch.setattr(ct, "GROUP_ACTORDER_LOADS", True)
    src = HFCheckpoint(tiny_llama)
    recipe = make_recipe("safetensors", "w4-g32-sym", method="gptq", act_order="group",
                         calib_samples=4, calib_len=64)
    plan = make_plan(src, recipe)
    out = tmp_path / "ct-group"
    report = convert(src, recipe, out, threads=1)
    assert report.calibration.notes == []
    assert _sizes(out) == plan.files
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    assert [g["weights"]["actorder"] for g in qc["config_groups"].values()] == ["group"]
    f = SafetensorsFile(out / "model.safetensors")
    modules = [n.removesuffix(".weight_g_idx") for n in f.keys() if n.endswith(".weight_g_idx")]
    assert len(modules) == 14
    args_of = scheme_of(qc, str(out))
    for m in modules:
        rec = unpack_record(f.get, m, args_of(m))
        assert rec.g_idx is not None and np.array_equal(np.bincount(rec.g_idx), [32, 32]
                                                        if rec.shape[1] == 64 else [32] * 4)


def test_bf16_checkpoint_keeps_its_unquantized_tensors_in_bf16(tiny_llama: Path,
                                                               tmp_path: Path) -> None:
    """A bfloat16 checkpoint's embeddings, norms and head stay bfloat16 (exactly the stored
    bits, half float32's bytes); transformers loads them as it loads the source's."""
    import shutil

    import torch
    from transformers import AutoModelForCausalLM

    src_dir = tmp_path / "bf16"
    AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.bfloat16).save_pretrained(
        src_dir)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_llama / name, src_dir / name)
    src = open_path(src_dir)
    out = tmp_path / "w4"
    plan = convert(src, make_recipe("safetensors", "w4-g32-sym"), out, threads=1).plan
    kinds = {r.name: r.type_name for r in plan.rows}
    assert kinds["model.embed_tokens.weight"] == "BF16"
    assert kinds["model.norm.weight"] == "BF16"
    assert kinds["model.layers.0.mlp.down_proj.weight"] == "w4-g32-sym"
    f = SafetensorsFile(out / "model.safetensors")
    name = "model.embed_tokens.weight"
    np.testing.assert_array_equal(f.raw(name), src.stored(name)[0])
    ours = AutoModelForCausalLM.from_pretrained(out)
    ref = AutoModelForCausalLM.from_pretrained(src_dir)
    for n in ("model.embed_tokens.weight", "model.norm.weight"):
        a, b = ours.get_parameter(n), ref.get_parameter(n)
        assert a.dtype == b.dtype
        torch.testing.assert_close(a, b, rtol=0, atol=0)
