"""llama-quantize's per-tensor rules for the architectures beyond llama: the same rules, but for
the 70B type (``model.type == LLM_TYPE_70B``), which llama.cpp's loader gives an 80-layer
llama only with GQA (src/models/llama.cpp) and every 80-layer qwen2 (src/models/qwen2.cpp)."""

from __future__ import annotations

import pytest

from quantport.errors import UnsupportedArchitectureError
from quantport.quant.presets import plan_tensor_types


def _attn_v_types(arch: str, n_head: int, n_head_kv: int) -> set[str]:
    tensors = [(f"blk.{i}.attn_v.weight", (1024, 8192)) for i in range(80)]
    plans = plan_tensor_types(tensors, arch=arch, n_layer=80, n_head=n_head,
                              n_head_kv=n_head_kv, preset="Q3_K_M")
    return {p.type for p in plans}


def test_70b_bump_follows_the_loader() -> None:
    # Q3_K_M gives attn_v Q5_K for the first two, Q4_K after; the 70B rule lifts Q4_K to Q5_K
    assert _attn_v_types("qwen2", 64, 8) == {"Q5_K"}
    assert _attn_v_types("qwen2", 64, 64) == {"Q5_K"}  # qwen2: 80 layers is 70B regardless
    assert _attn_v_types("llama", 64, 8) == {"Q5_K"}
    assert _attn_v_types("llama", 64, 64) == {"Q5_K", "Q4_K"}  # llama without GQA: 65B
    assert _attn_v_types("qwen3", 64, 8) == {"Q5_K", "Q4_K"}  # qwen3 has no 70B type


def test_fused_qkv_counts_as_attn_v() -> None:
    # category_is_attn_v(): Phi-3's attn_qkv follows the attn_v rules (use_more_bits)
    tensors = [(f"blk.{i}.attn_qkv.weight", (384, 256)) for i in range(8)]
    plans = plan_tensor_types(tensors, arch="phi3", n_layer=8, n_head=4, n_head_kv=2,
                              preset="Q4_K_M")
    assert {p.type for p in plans} == {"Q6_K", "Q4_K"}
    assert all("attn_v" in p.reason or p.reason == "default" for p in plans)


def test_unknown_gguf_architecture_is_refused() -> None:
    with pytest.raises(UnsupportedArchitectureError, match="supported: llama, bert, qwen2"):
        plan_tensor_types([("output.weight", (8, 256))], arch="falcon", n_layer=1, n_head=1,
                          n_head_kv=1, preset="Q8_0")
