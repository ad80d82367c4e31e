"""tests._llamacpp: llama.cpp's llama_model_quantize with an in-memory imatrix."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest

from quantport.errors import QuantportError
from quantport.formats.imatrix import ImatrixData, read_imatrix, write_imatrix


def _llama_cpp_missing() -> str:
    try:
        import llama_cpp  # noqa: F401  (loads libllama: a broken install shows up here)
    except Exception as exc:
        return f"llama-cpp-python is not usable: {type(exc).__name__}: {exc}"
    return ""


# skipped when missing; tests/conftest.py fails skips of `llamacpp` tests under CI=true
needs_llama_cpp = pytest.mark.skipif(bool(_llama_cpp_missing()), reason=_llama_cpp_missing())

N_LAYER, N_EMBD, N_FF = 4, 256, 512


def _tiny_llama(path: Path) -> list[tuple[str, tuple[int, ...]]]:
    """A small random F32 llama GGUF (llama_model_quantize reads hparams and tensors, never the vocab)."""
    rng = np.random.default_rng(0)
    w = gguf.GGUFWriter(path, "llama")
    w.add_context_length(64)
    w.add_embedding_length(N_EMBD)
    w.add_block_count(N_LAYER)
    w.add_feed_forward_length(N_FF)
    w.add_head_count(4)
    w.add_head_count_kv(4)
    w.add_vocab_size(128)
    w.add_layer_norm_rms_eps(1e-5)
    tensors = [("token_embd.weight", (128, N_EMBD)), ("output_norm.weight", (N_EMBD,))]
    for i in range(N_LAYER):
        tensors += [
            (f"blk.{i}.attn_norm.weight", (N_EMBD,)),
            (f"blk.{i}.attn_q.weight", (N_EMBD, N_EMBD)),
            (f"blk.{i}.attn_k.weight", (N_EMBD, N_EMBD)),
            (f"blk.{i}.attn_v.weight", (N_EMBD, N_EMBD)),
            (f"blk.{i}.attn_output.weight", (N_EMBD, N_EMBD)),
            (f"blk.{i}.ffn_norm.weight", (N_EMBD,)),
            (f"blk.{i}.ffn_gate.weight", (N_FF, N_EMBD)),
            (f"blk.{i}.ffn_up.weight", (N_FF, N_EMBD)),
            (f"blk.{i}.ffn_down.weight", (N_EMBD, N_FF)),
        ]
    for name, shape in tensors:
        # heavy-tailed columns so that an importance matrix visibly changes the chosen scales
        w.add_tensor(name, (rng.standard_t(3, shape) * rng.uniform(0.1, 3.0, shape[-1])).astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return tensors


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[tuple[str, tuple[int, ...]]]]:
    path = tmp_path_factory.mktemp("tiny") / "tiny-f32.gguf"
    return path, _tiny_llama(path)


def _imatrix(tensors, seed: int = 1) -> ImatrixData:
    rng = np.random.default_rng(seed)
    entries = {
        name: rng.uniform(0.01, 10.0, shape[-1]).astype(np.float32)
        for name, shape in tensors
        if name.startswith("blk.") and len(shape) == 2
    }
    return ImatrixData(entries=entries, datasets=["random"], chunk_count=4, chunk_size=64)


def _tensor_bytes(path: Path) -> dict[str, bytes]:
    return {t.name: bytes(t.data.tobytes()) for t in gguf.GGUFReader(path).tensors}


@pytest.mark.llamacpp
@needs_llama_cpp
def test_imatrix_changes_q4_k_m_output(tmp_path: Path, tiny) -> None:
    from _llamacpp import llama_quantize

    src, tensors = tiny
    plain1, plain2, weighted = tmp_path / "a.gguf", tmp_path / "b.gguf", tmp_path / "c.gguf"
    llama_quantize(src, plain1, "Q4_K_M")
    llama_quantize(src, plain2, "Q4_K_M", imatrix=None)
    llama_quantize(src, weighted, "Q4_K_M", imatrix=_imatrix(tensors))

    # no imatrix is deterministic: the same bytes as the default call
    assert plain1.read_bytes() == plain2.read_bytes()

    a, c = _tensor_bytes(plain1), _tensor_bytes(weighted)
    assert a.keys() == c.keys()
    changed = {n for n in a if a[n] != c[n]}
    # every blk.* matmul weight got its imatrix; norms and the (unweighted) token_embd did not change
    assert changed == {n for n, s in tensors if n.startswith("blk.") and len(s) == 2}


@pytest.mark.llamacpp
@needs_llama_cpp
def test_imatrix_file_round_trip_gives_same_quantization(tmp_path: Path, tiny) -> None:
    # what read_imatrix returns is what llama-quantize would pass: a power-of-two count makes the GGUF
    # round trip exact, so quantizing with the re-read matrix gives identical bytes
    from _llamacpp import llama_quantize

    src, tensors = tiny
    data = _imatrix(tensors)
    data.chunk_count, data.chunk_size = 2, 512
    write_imatrix(tmp_path / "im.gguf", data)
    back = read_imatrix(tmp_path / "im.gguf")
    for n in data.entries:
        np.testing.assert_array_equal(back.entries[n], data.entries[n])
    llama_quantize(src, tmp_path / "x.gguf", "Q4_0", imatrix=data)
    llama_quantize(src, tmp_path / "y.gguf", "Q4_0", imatrix=back)
    assert (tmp_path / "x.gguf").read_bytes() == (tmp_path / "y.gguf").read_bytes()


@pytest.mark.llamacpp
@needs_llama_cpp
def test_bad_imatrix_width_is_reported(tmp_path: Path, tiny) -> None:
    from _llamacpp import llama_quantize

    src, tensors = tiny
    data = _imatrix(tensors)
    data.entries["blk.0.attn_q.weight"] = np.ones(17, np.float32)
    with pytest.raises(QuantportError, match="imatrix size 17 is different"):
        llama_quantize(src, tmp_path / "bad.gguf", "Q4_K_M", imatrix=data)
    assert not (tmp_path / "bad.gguf").exists()
    assert not list(tmp_path.glob(".*.tmp"))


@pytest.mark.llamacpp
@needs_llama_cpp
def test_requantize_needs_permission(tmp_path: Path) -> None:
    from _llamacpp import llama_quantize

    q8 = tmp_path / "q8.gguf"
    _tiny_llama(tmp_path / "f32.gguf")
    llama_quantize(tmp_path / "f32.gguf", q8, "Q8_0")
    with pytest.raises(QuantportError, match="requantizing from type q8_0 is disabled"):
        llama_quantize(q8, tmp_path / "q4.gguf", "Q4_K_M")
    llama_quantize(q8, tmp_path / "q4.gguf", "Q4_K_M", allow_requantize=True)


ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("ci", ["true", None], ids=["ci", "local"])
def test_skipped_llamacpp_test_fails_under_ci(tmp_path: Path, ci: str | None) -> None:
    # A real byte-exactness test run where llama.cpp's library cannot be found (the package's
    # own LLAMA_CPP_LIB_PATH points at an empty directory): locally it skips, under CI=true the
    # hook in tests/conftest.py must turn that skip into a failure. Not marked llamacpp: it
    # needs no llama.cpp itself.
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["LLAMA_CPP_LIB_PATH"] = str(tmp_path)
    if ci:
        env["CI"] = ci
    res = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rs",
         "tests/quant/test_ggml.py::test_bytes_match_larger_matrix[Q4_0]"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    out = res.stdout + res.stderr
    if ci:
        assert res.returncode == 1, out
        assert "skipped under CI=true" in out and "libggml-base is not available" in out
    else:
        assert res.returncode == 0 and "1 skipped" in out, out
