"""Bad input for the architecture table, through the CLI: an architecture not in the table, a
config contradicting its tensors, a missing per-layer tensor, a RoPE scaling type quantport does
not implement. Each is refused with one line (exit 1) naming what to fix.

Torch-free tiny checkpoints (hidden 32, 4 heads / 2 kv heads of 8, one layer), in milliseconds.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from gguf import GGUFValueType as T

from quantport.architectures import ARCHITECTURES, BY_HF_CLASS, detect_architecture, lookup
from quantport.cli.main import cli
from quantport.errors import UnsupportedArchitectureError
from quantport.formats.safetensors import write_safetensors

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "readers"))
import _tiny_inputs as tiny  # noqa: E402


def _checkpoint(d: Path, arch: str, *, config: dict[str, Any] | None = None,
                drop: tuple[str, ...] = ()) -> Path:
    """The tiny llama checkpoint re-dressed as ``arch`` (qwen2: q/k/v biases; qwen3: q/k
    norms and a head_dim), minus the tensors in ``drop``."""
    tiny.write_tiny_checkpoint(d)
    cfg = tiny.tiny_config()
    tensors = tiny.hf_tensors()
    rng = np.random.default_rng(1)
    q, kv = tiny.HEADS * tiny.HEAD_DIM, tiny.KV_HEADS * tiny.HEAD_DIM
    if arch == "qwen2":
        cfg.update(architectures=["Qwen2ForCausalLM"], model_type="qwen2")
        for p, n in (("q", q), ("k", kv), ("v", kv)):
            tensors[f"model.layers.0.self_attn.{p}_proj.bias"] = rng.standard_normal(n).astype(
                np.float32)
    elif arch == "qwen3":
        cfg.update(architectures=["Qwen3ForCausalLM"], model_type="qwen3",
                   head_dim=tiny.HEAD_DIM)
        for p in ("q", "k"):
            tensors[f"model.layers.0.self_attn.{p}_norm.weight"] = np.ones(tiny.HEAD_DIM,
                                                                          np.float32)
    elif arch == "phi3":
        cfg.update(architectures=["Phi3ForCausalLM"], model_type="phi3",
                   original_max_position_embeddings=64, sliding_window=None)
        pre = "model.layers.0."
        tensors[pre + "self_attn.qkv_proj.weight"] = np.concatenate(
            [tensors.pop(f"{pre}self_attn.{p}_proj.weight") for p in "qkv"])
        tensors[pre + "mlp.gate_up_proj.weight"] = np.concatenate(
            [tensors.pop(f"{pre}mlp.{p}_proj.weight") for p in ("gate", "up")])
    elif arch == "gemma3":
        cfg.update(architectures=["Gemma3ForCausalLM"], model_type="gemma3_text",
                   head_dim=tiny.HEAD_DIM, query_pre_attn_scalar=tiny.HEAD_DIM,
                   sliding_window=16, layer_types=["sliding_attention"],
                   hidden_activation="gelu_pytorch_tanh")
        del cfg["hidden_act"]
        pre = "model.layers.0."
        for n in ("pre_feedforward_layernorm", "post_feedforward_layernorm"):
            tensors[pre + n + ".weight"] = np.zeros(tiny.HIDDEN, np.float32)
        for p in ("q", "k"):
            tensors[f"{pre}self_attn.{p}_norm.weight"] = np.zeros(tiny.HEAD_DIM, np.float32)
    cfg.update(config or {})
    for name in drop:
        del tensors[name]
    (d / "config.json").write_text(json.dumps(cfg), encoding="utf-8")
    write_safetensors(d / "model.safetensors", tensors)
    return d


def _refused(args: list[Any], *parts: str) -> str:
    res = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    assert res.exit_code == 1, res.output
    lines = [ln for ln in res.output.splitlines() if ln.startswith("Error:")]
    assert len(lines) == 1, res.output
    for p in parts:
        assert p in lines[0], (p, lines[0])
    return lines[0]


def test_registry_names_every_module() -> None:
    for arch in ARCHITECTURES.values():
        for c in arch.hf_classes:
            assert lookup(c) is arch
    assert BY_HF_CLASS["MistralForCausalLM"].gguf_arch == "llama"
    assert detect_architecture({"architectures": ["Qwen3ForCausalLM"]}).name == "qwen3"
    with pytest.raises(UnsupportedArchitectureError, match="Qwen2ForCausalLM"):
        lookup("GPTNeoXForCausalLM")


def test_fused_phi3_shapes() -> None:
    phi3 = ARCHITECTURES["phi3"]
    cfg = {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 4,
           "num_key_value_heads": 2}
    assert phi3.shape_error("blk.0.ffn_up.weight", (128, 32), cfg) is None
    assert "(128, 32)" in phi3.shape_error("blk.0.ffn_up.weight", (64, 32), cfg)
    assert phi3.shape_error("blk.0.attn_qkv.weight", (32 + 2 * 16, 32), cfg) is None
    assert phi3.shape_error("blk.0.attn_qkv.weight", (96, 32), cfg) is not None


@pytest.mark.parametrize("to", ["gguf", "safetensors"])
def test_unknown_architecture_is_refused_with_the_known_ones(tmp_path: Path, to: str) -> None:
    src = _checkpoint(tmp_path / "m", "llama", config={
        "architectures": ["GPTNeoXForCausalLM"], "model_type": "gpt_neox"})
    line = _refused(["convert", src, "--to", to, "--quant", "Q8_0" if to == "gguf" else "f16",
                     "-o", tmp_path / "out"], "'GPTNeoXForCausalLM' is not supported")
    for arch in ARCHITECTURES.values():
        assert arch.hf_classes[0] in line


@pytest.mark.parametrize(("arch", "config", "tensor"), [
    # 4 kv heads of 8 means k_proj has 32 rows; the checkpoint's has 16
    ("qwen2", {"num_key_value_heads": 4}, "model.layers.0.self_attn.k_proj.weight"),
    # a head_dim of 16 means q_proj has 64 rows
    ("qwen3", {"head_dim": 16}, "model.layers.0.self_attn.q_proj.weight"),
    ("qwen2", {"intermediate_size": 128}, "model.layers.0.mlp.gate_proj.weight"),
    # Phi-3's fused projections: qkv rows follow from the head counts, gate_up from 2 * ff
    ("phi3", {"num_key_value_heads": 4}, "model.layers.0.self_attn.qkv_proj.weight"),
    # (down_proj comes first in the file and contradicts it too)
    ("phi3", {"intermediate_size": 64}, "model.layers.0.mlp.down_proj.weight"),
])
def test_config_contradicting_tensors_names_the_tensor(tmp_path: Path, arch: str,
                                                       config: dict[str, Any],
                                                       tensor: str) -> None:
    src = _checkpoint(tmp_path / "m", arch, config=config)
    _refused(["convert", src, "--to", "gguf", "--quant", "F16", "-o", tmp_path / "x.gguf"],
             tensor, "hyper-parameters do not match the weights")


@pytest.mark.parametrize(("arch", "missing"), [
    ("qwen3", "model.layers.0.self_attn.q_norm.weight"),
    ("qwen3", "model.layers.0.self_attn.k_norm.weight"),
    ("qwen2", "model.layers.0.self_attn.v_proj.bias"),
    ("phi3", "model.layers.0.mlp.gate_up_proj.weight"),
    ("gemma3", "model.layers.0.post_feedforward_layernorm.weight"),
])
def test_missing_per_layer_tensor_is_named(tmp_path: Path, arch: str, missing: str) -> None:
    src = _checkpoint(tmp_path / "m", arch, drop=(missing,))
    _refused(["convert", src, "--to", "gguf", "--quant", "F16", "-o", tmp_path / "x.gguf"],
             f"tensor '{missing}' is missing")


@pytest.mark.parametrize(("arch", "rope"), [
    ("qwen2", {"rope_type": "dynamic", "factor": 2.0}),
    ("qwen3", {"rope_type": "longrope", "factor": 2.0}),
    ("phi3", {"rope_type": "yarn", "factor": 2.0}),
    ("llama", {"rope_type": "dynamic", "factor": 2.0}),
    ("llama", {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64}),
])
def test_rope_scaling_not_implemented_is_refused(tmp_path: Path, arch: str,
                                                 rope: dict[str, Any]) -> None:
    src = _checkpoint(tmp_path / "m", arch, config={"rope_scaling": rope})
    _refused(["convert", src, "--to", "gguf", "--quant", "F16", "-o", tmp_path / "x.gguf",
              "--dry-run"], f"rope scaling '{rope['rope_type']}' is not supported")


@pytest.mark.parametrize(("config", "message"), [
    # llama.cpp scales attention by 1/sqrt(head_dim) (1/sqrt(n_embd/n_head) for 62 layers)
    ({"query_pre_attn_scalar": 256}, "query_pre_attn_scalar 256"),
    # llama.cpp makes every 6th layer global, whatever the config says
    ({"layer_types": ["full_attention"]}, "is not llama.cpp's pattern"),
    ({"attn_logit_softcapping": 50.0}, "attn_logit_softcapping"),
    ({"hidden_activation": "silu"}, "hidden_activation 'silu'"),
])
def test_gemma3_runtime_differences_are_refused(tmp_path: Path, config: dict[str, Any],
                                                message: str) -> None:
    src = _checkpoint(tmp_path / "m", "gemma3", config=config)
    _refused(["convert", src, "--to", "gguf", "--quant", "F16", "-o", tmp_path / "x.gguf",
              "--dry-run"], message)


def test_gemma3_tiny_checkpoint_opens(tmp_path: Path) -> None:
    """The torch-free Gemma checkpoint opens (so the refusals above are about their key), with
    1 added to every norm and the four norms a layer kept apart."""
    from quantport.readers import open_path

    src = open_path(_checkpoint(tmp_path / "m", "gemma3"))
    arch = src.architecture
    assert arch.name == "gemma3"
    assert arch.edit("model.layers.0.post_feedforward_layernorm.weight") == "add_one"
    assert arch.edit("model.layers.0.self_attn.q_proj.weight") is None
    assert arch.gguf_name("model.layers.0.pre_feedforward_layernorm.weight") == \
        "blk.0.ffn_norm.weight"


def test_phi3_longrope_factors_of_the_wrong_length_are_refused(tmp_path: Path) -> None:
    # rope dimensions 8 (head size): 4 factors each, as Phi3MiniModel checks
    rope = {"rope_type": "longrope", "long_factor": [1.0] * 3, "short_factor": [1.0] * 3}
    src = _checkpoint(tmp_path / "m", "phi3", config={"rope_scaling": rope})
    _refused(["convert", src, "--to", "gguf", "--quant", "F16", "-o", tmp_path / "x.gguf",
              "--dry-run"], "must be lists of 4 numbers")


def test_sliding_window_is_refused_for_qwen(tmp_path: Path) -> None:
    src = _checkpoint(tmp_path / "m", "qwen2", config={"use_sliding_window": True,
                                                       "sliding_window": 16})
    _refused(["convert", src, "--to", "gguf", "--quant", "F16", "-o", tmp_path / "x.gguf"],
             "use_sliding_window true")


def _qwen3_meta(rename: dict[str, tuple[Any, T]] | None = None) -> tiny.Meta:
    """The tiny GGUF's metadata as a qwen3 file (``llama.*`` keys -> ``qwen3.*``)."""
    out = []
    for k, v, t, a in tiny.tiny_meta():
        if k == "general.architecture":
            v = "qwen3"
        elif k.startswith("llama."):
            k = "qwen3." + k.removeprefix("llama.")
        out.append((k, v, t, a))
    for k, (v, t) in (rename or {}).items():
        out.append((k, v, t, None))
    return out


def test_gguf_import_refuses_a_missing_q_norm(tmp_path: Path) -> None:
    # the tiny llama's tensors have no attn_q_norm: a qwen3 GGUF without it is refused
    path = tiny.write_tiny_gguf(tmp_path / "q3.gguf", _qwen3_meta())
    _refused(["convert", path, "--to", "safetensors", "--quant", "f16", "-o", tmp_path / "o"],
             "'blk.0.attn_q_norm.weight' is missing")


def test_gguf_import_refuses_unknown_rope_scaling(tmp_path: Path) -> None:
    meta = tiny.tiny_meta() + [("llama.rope.scaling.type", "longrope", T.STRING, None)]
    path = tiny.write_tiny_gguf(tmp_path / "l.gguf", meta)
    _refused(["convert", path, "--to", "safetensors", "--quant", "f16", "-o", tmp_path / "o"],
             "llama.rope.scaling.type 'longrope' cannot be imported")


def test_gguf_of_an_unknown_architecture_is_refused(tmp_path: Path) -> None:
    meta = [(k, "gptneox" if k == "general.architecture" else v, t, a)
            for k, v, t, a in tiny.tiny_meta()]
    path = tiny.write_tiny_gguf(tmp_path / "n.gguf", meta)
    _refused(["convert", path, "--to", "safetensors", "--quant", "f16", "-o", tmp_path / "o"],
             "GGUF architecture 'gptneox' cannot be imported", "qwen2", "qwen3")


def test_mistral_sliding_window_is_said(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Mistral 7B v0.1's window (4096 of 32768) is not in the GGUF, as llama.cpp's converter
    drops it; the conversion says so instead of dropping it silently."""
    from quantport.architectures.mistral import mistral_hparams

    cfg = {**tiny.tiny_config(), "architectures": ["MistralForCausalLM"],
           "model_type": "mistral", "sliding_window": 16, "max_position_embeddings": 64}
    with caplog.at_level("WARNING"):
        kv = mistral_hparams(cfg, "config.json")
    assert not any("sliding" in k.key for k in kv)
    assert "sliding_window 16 is not written" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        mistral_hparams({**cfg, "sliding_window": None}, "config.json")
    assert not caplog.text
