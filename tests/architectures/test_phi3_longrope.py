"""Phi-3's LongRoPE (Phi-3-mini-128k, Phi-3.5): the ``rope_factors_long`` / ``_short`` tensors and
``rope.scaling.attn_factor`` as llama.cpp's converter generates them, and llama.cpp's logits
equal transformers' past the original context, where both use the long factors."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from quantport.formats.gguf_file import read_tensor, scan_gguf
from quantport.readers import open_path
from quantport.recipe import make_recipe

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _tiny  # noqa: E402


@pytest.fixture(scope="module")
def phi3_long(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Phi-3 with LongRoPE over an original context of 64 (extended to 512): 8 long and 8
    short factors (rope dimensions 16 / 2), like Phi-3-mini-128k's 48 of each."""
    rng = np.random.default_rng(0)
    long_f = [float(x) for x in np.sort(rng.uniform(1.0, 8.0, 8))]
    short_f = [float(x) for x in np.sort(rng.uniform(1.0, 1.5, 8))]
    return _tiny.tiny_phi3(
        tmp_path_factory.mktemp("phi3long") / "phi3", max_position_embeddings=512,
        original_max_position_embeddings=64, sliding_window=None,
        rope_parameters={"rope_type": "longrope", "long_factor": long_f,
                         "short_factor": short_f, "rope_theta": 10000.0})


def _convert(src: Path, out: Path) -> Path:
    from quantport.pipeline.convert import convert

    convert(open_path(src), make_recipe("gguf", "F32"), out, threads=1)
    return out


@pytest.mark.slow
def test_longrope_equals_the_converter(phi3_long: Path, tmp_path: Path) -> None:
    ref = _tiny.llama_cpp_convert(phi3_long, tmp_path / "ref.gguf", "f32")
    ours = _convert(phi3_long, tmp_path / "ours.gguf")
    a, b = scan_gguf(ours, keep_arrays=True), scan_gguf(ref, keep_arrays=True)
    for k in set(a.metadata) | set(b.metadata):
        if k.startswith("phi3."):
            assert (a.metadata.get(k), a.types.get(k)) == (b.metadata.get(k), b.types.get(k)), k
    assert a.metadata["phi3.rope.scaling.attn_factor"] > 1.0
    ta, tb = {t.name: t for t in a.tensors}, {t.name: t for t in b.tensors}
    assert sorted(ta) == sorted(tb)
    for name in ("rope_factors_long.weight", "rope_factors_short.weight"):
        assert np.array_equal(np.asarray(read_tensor(ours, ta[name])),
                              np.asarray(read_tensor(ref, tb[name]))), name


@pytest.mark.llamacpp
@pytest.mark.slow
def test_llamacpp_longrope_logits(phi3_long: Path, tmp_path: Path) -> None:
    pytest.importorskip("llama_cpp")
    import sentencepiece
    import torch
    from transformers import AutoModelForCausalLM

    from quantport.validate.runner import LlamaCppLM

    gguf = _convert(phi3_long, tmp_path / "f32.gguf")
    sp = sentencepiece.SentencePieceProcessor(model_file=str(phi3_long / "tokenizer.model"))
    # transformers picks the long factors for a sequence beyond the original 64 positions,
    # llama.cpp for a context beyond it: both use them here
    ids = sp.encode(" ".join(_tiny.SENTENCES * 4))[:120]
    assert len(ids) > 64
    model = AutoModelForCausalLM.from_pretrained(phi3_long, dtype=torch.float32).eval()
    lm = LlamaCppLM(gguf, n_ctx=128)
    try:
        got = lm.logits(np.array(ids))
    finally:
        lm.close()
    with torch.no_grad():
        ref = model(torch.tensor([ids])).logits[0]
    tol = 2e-3 * float(ref.abs().max())
    assert float((got - ref).abs().max()) < tol
    # same argmax wherever it is decided: a reference top-2 margin above twice the tolerance
    # (the random model's logits are near-flat; a near-tie may flip within the tolerance)
    top2 = ref.topk(2, -1).values
    decided = (top2[:, 0] - top2[:, 1]) > 2 * tol
    assert float(decided.float().mean()) > 0.5
    assert torch.equal(got.argmax(-1)[decided], ref.argmax(-1)[decided])
