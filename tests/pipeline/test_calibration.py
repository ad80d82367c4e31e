"""quantport.pipeline.calibration: importance matrices as llama-imatrix computes them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from quantport.pipeline.calibration import DEFAULT_CALIBRATION_TEXT, collect_imatrix
from quantport.models import open_source
from quantport.readers import HFCheckpoint
from quantport.errors import ConfigError
from quantport.formats.imatrix import check_imatrix, read_imatrix, write_imatrix


def _expected(source) -> dict[str, int]:
    """GGUF name -> input width of every Linear weight inside the blocks."""
    out = {}
    for hf in source.names():
        g = source.architecture.gguf_name(hf)
        if g and g.startswith("blk.") and source.architecture.is_linear(hf):
            out[g] = source.shape(hf)[-1]
    return out


def test_calibration_text_is_the_validation_split() -> None:
    assert (
        DEFAULT_CALIBRATION_TEXT.name == "valid.tokens.txt" and DEFAULT_CALIBRATION_TEXT.is_file()
    )


@pytest.mark.parametrize("alias", ["smollm2", "minilm"])
def test_imatrix_covers_every_block_linear(
    alias: str, default_model_dir: Path, tmp_path: Path
) -> None:
    source = HFCheckpoint(default_model_dir) if alias == "smollm2" else open_source(alias)
    events: list[tuple[str, int, int]] = []
    im = collect_imatrix(source, n_chunks=2, ctx=64, on_progress=lambda *e: events.append(e))
    expected = _expected(source)
    n_layer = source.config["num_hidden_layers"]
    assert len(expected) == n_layer * (7 if alias == "smollm2" else 6)
    assert set(im.entries) == set(expected)
    check_imatrix(im, expected, require_all=True)
    for name, v in im.entries.items():
        assert v.dtype == np.float32 and v.shape == (expected[name],), name
        assert np.isfinite(v).all() and (v > 0).all(), name
        assert im.counts is not None and im.counts[name].tolist() == [2 * 64]
    assert (im.chunk_count, im.chunk_size, im.datasets) == (2, 64, ["valid.tokens.txt"])
    assert events[-1] == ("calibrate", 2, 2)
    if alias == "smollm2":
        # q, k and v read the same normed input; the Q/K row permutation does not touch columns
        for i in range(n_layer):
            q = im.entries[f"blk.{i}.attn_q.weight"]
            assert np.array_equal(q, im.entries[f"blk.{i}.attn_k.weight"])
            assert np.array_equal(q, im.entries[f"blk.{i}.attn_v.weight"])
    # round trip through llama.cpp's GGUF imatrix format
    write_imatrix(tmp_path / "im.gguf", im)
    back = read_imatrix(tmp_path / "im.gguf")
    for name, v in im.entries.items():
        np.testing.assert_allclose(back.entries[name], v, rtol=1e-6)


def test_imatrix_matches_a_direct_computation(default_model_dir: Path) -> None:
    """Mean of x**2 over all tokens, for blk.0.ffn_down (the input is act(gate) * up)."""
    import torch
    from tokenizers import Tokenizer
    from transformers import AutoModelForCausalLM

    source = HFCheckpoint(default_model_dir)
    im = collect_imatrix(source, n_chunks=1, ctx=32)
    tok = Tokenizer.from_file(str(default_model_dir / "tokenizer.json"))
    text = DEFAULT_CALIBRATION_TEXT.read_text(encoding="utf-8")[:4096]
    ids = tok.encode(text, add_special_tokens=False).ids[:32]  # add_bos_token is false for SmolLM2
    model = AutoModelForCausalLM.from_pretrained(default_model_dir, dtype=torch.float32)
    seen = {}
    mlp = model.model.layers[0].mlp
    handle = mlp.down_proj.register_forward_pre_hook(
        lambda m, a: seen.setdefault("x", a[0][0].clone())
    )
    with torch.inference_mode():
        model(torch.tensor([ids]))
    handle.remove()
    ref = (seen["x"].double() ** 2).mean(0).float().numpy()
    np.testing.assert_allclose(im.entries["blk.0.ffn_down.weight"], ref, rtol=1e-5)


def test_refuses_bad_arguments(default_model_dir: Path, tmp_path: Path) -> None:
    source = HFCheckpoint(default_model_dir)
    with pytest.raises(ConfigError, match="n_chunks"):
        collect_imatrix(source, n_chunks=0)
    short = tmp_path / "short.txt"
    short.write_text("only a few words", encoding="utf-8")
    with pytest.raises(ConfigError, match="less than one window of 512"):
        collect_imatrix(source, short, n_chunks=1, ctx=512)
    # never the evaluation text (the same guard as the calibrated methods')
    from quantport.pipeline.layerwise import EVALUATION_TEXT

    with pytest.raises(ConfigError, match="is the evaluation text"):
        collect_imatrix(source, EVALUATION_TEXT, n_chunks=1, ctx=64)


@pytest.mark.parametrize("n", [5, 64, 97])
def test_hessian_sum_block_triangle_matches_float64(n: int) -> None:
    """add_gram sums only the block upper triangle of XᵀX on the CPU; hessian_out mirrors it:
    the Hessian equals 2 XᵀX / rows taken in float64, and is exactly symmetric."""
    import torch

    from quantport.pipeline.layerwise import add_gram, hessian_out

    rng = np.random.default_rng(n)
    batches = [rng.standard_normal((r, n)).astype(np.float32) for r in (33, 70)]
    acc = None
    with torch.inference_mode():
        for b in batches:
            acc = add_gram(acc, torch.from_numpy(b))
    h, sq = hessian_out(acc, 103)
    x = np.concatenate(batches).astype(np.float64)
    ref = 2 * x.T @ x / 103
    np.testing.assert_allclose(h, ref, rtol=1e-5, atol=1e-5)
    assert np.array_equal(h, h.T)
    np.testing.assert_allclose(sq, np.diag(ref) / 2, rtol=1e-5)
