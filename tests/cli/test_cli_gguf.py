"""`convert --to gguf` and GGUF validation through the CLI, on the tiny seeded llama."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from click.testing import CliRunner

from quantport.cli.main import cli
from quantport.formats.imatrix import ImatrixData, read_imatrix, write_imatrix

pytestmark = pytest.mark.llamacpp


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def tiny_q8(tiny_llama, tmp_path_factory):
    out = tmp_path_factory.mktemp("gguf") / "tiny-q8_0.gguf"
    res = run("convert", tiny_llama, "--to", "gguf", "--quant", "Q8_0", "-o", out, "--json")
    assert res.exit_code == 0, res.output
    d = json.loads(res.stdout)
    assert d["tensor_types"]["Q8_0"] == 15  # 14 linears + the tied embedding
    return out


def test_convert_and_inspect(tiny_q8):
    info = json.loads(run("inspect", tiny_q8, "--json").stdout)
    assert info["format"] == "gguf"
    assert info["metadata"]["general.file_type"] == 7  # LLAMA_FTYPE_MOSTLY_Q8_0
    assert info["quantization"]["types"] == {"Q8_0": 15, "F32": 5}
    assert "quantport" in json.dumps(info["metadata"]).lower()


def test_dry_run_size_is_exact(tiny_llama, tmp_path):
    out = tmp_path / "x.gguf"
    res = run("convert", tiny_llama, "--to", "gguf", "--quant", "Q4_0", "-o", out, "--dry-run",
              "--json")
    assert res.exit_code == 0, res.output
    plan = json.loads(res.stdout)
    assert not out.exists()
    assert {t["type"] for t in plan["tensors"]} >= {"Q4_0", "F32"}
    res = run("convert", tiny_llama, "--to", "gguf", "--quant", "Q4_0", "-o", out, "-q")
    assert res.exit_code == 0
    assert out.stat().st_size == plan["size"] == plan["bytes"]
    # a dry run checks the output as the real run would: this one needs --force
    refused = run("convert", tiny_llama, "--to", "gguf", "--quant", "Q4_0", "-o", out,
                  "--dry-run")
    assert refused.exit_code == 1 and "--force" in refused.output
    text = run("convert", tiny_llama, "--to", "gguf", "--quant", "Q4_0", "-o", out, "--dry-run",
               "--force")
    assert "output size:" in text.stdout and "blk.0.attn_q.weight" in text.stdout


def test_tensor_type_override_wins(tiny_llama, tmp_path):
    out = tmp_path / "o.gguf"
    res = run("convert", tiny_llama, "--to", "gguf", "--quant", "Q4_0", "-o", out,
              "--tensor-type", "attn_v=Q8_0", "-q")
    assert res.exit_code == 0, res.output
    types = {t["name"]: t["type"] for t in json.loads(run("inspect", out, "--json").stdout)["tensors"]}
    assert types["blk.0.attn_v.weight"] == "Q8_0" and types["blk.0.attn_q.weight"] == "Q4_0"
    res = run("convert", tiny_llama, "--to", "gguf", "--quant", "Q4_0", "-o", tmp_path / "p.gguf",
              "--tensor-type", "nomatch=Q8_0")
    assert res.exit_code == 1 and "nomatch" in res.output
    assert not (tmp_path / "p.gguf").exists()


def test_output_tensor_type(tiny_llama, tmp_path):
    res = run("convert", tiny_llama, "--to", "gguf", "--quant", "Q4_0", "-o", tmp_path / "x.gguf",
              "--output-tensor-type", "Q5_0", "--dry-run", "--json")
    assert res.exit_code == 0, res.output
    types = {t["name"]: t["type"] for t in json.loads(res.stdout)["tensors"]}
    assert types["token_embd.weight"] == "Q5_0"  # tied: the embedding is the output (else Q8_0)
    assert types["blk.0.attn_q.weight"] == "Q4_0"


@pytest.mark.parametrize(
    ("extra", "code", "msg"),
    [
        (["--quant", "Q9_K"], 1, "Q4_K_M"),
        (["--quant", "Q4_0", "--imatrix", "IMAT", "--calib", "IMAT"], 2, "not both"),
        (["--quant", "Q4_0", "--threads", "0"], 2, "--threads"),
    ],
)
def test_gguf_bad_options(tiny_llama, tmp_path, extra, code, msg):
    f = tmp_path / "imat.dat"
    f.write_bytes(b"\0" * 16)
    extra = [str(f) if e == "IMAT" else e for e in extra]
    res = run("convert", tiny_llama, "--to", "gguf", "-o", tmp_path / "o.gguf", *extra)
    assert res.exit_code == code, res.output
    assert msg in res.output and "Traceback" not in res.output


def test_imatrix_mismatch_names_tensor(tiny_llama, tmp_path):
    bad = tmp_path / "bad.imatrix.gguf"
    write_imatrix(bad, ImatrixData({"blk.0.attn_q.weight": np.ones(3, np.float32)},
                                   datasets=["x"], chunk_count=1, chunk_size=8))
    res = run("convert", tiny_llama, "--to", "gguf", "--quant", "Q4_0", "-o", tmp_path / "o.gguf",
              "--imatrix", bad)
    assert res.exit_code == 1
    assert "blk.0.attn_q.weight" in res.output
    assert not (tmp_path / "o.gguf").exists()


def test_calib_saves_imatrix_and_uses_it(tiny_llama, tmp_path):
    text = tmp_path / "calib.txt"
    text.write_text("the quick brown fox jumps over the lazy dog . " * 200)
    imat = tmp_path / "tiny.imatrix.gguf"
    out = tmp_path / "imat.gguf"
    res = run("convert", tiny_llama, "--to", "gguf", "--quant", "Q4_0", "-o", out, "--calib", text,
              "--calib-chunks", "2", "--save-imatrix", imat, "-q")
    assert res.exit_code == 0, res.output
    data = read_imatrix(imat)
    assert "blk.1.ffn_down.weight" in data.entries
    assert data.entries["blk.1.ffn_down.weight"].shape == (128,)
    assert all(np.all(np.isfinite(v)) for v in data.entries.values())
    # the same matrix through --imatrix gives the same file
    out2 = tmp_path / "imat2.gguf"
    res = run("convert", tiny_llama, "--to", "gguf", "--quant", "Q4_0", "-o", out2, "--imatrix",
              imat, "-q")
    assert res.exit_code == 0
    a = json.loads(run("inspect", out, "--json").stdout)["tensors"]
    b = json.loads(run("inspect", out2, "--json").stdout)["tensors"]
    assert a == b


def test_validate_gguf_in_llamacpp(tiny_q8, tiny_llama):
    res = run("validate", tiny_q8, "--against", tiny_llama, "--windows", "2", "--ctx", "64",
              "--json")
    d = json.loads(res.stdout)
    assert d["runtime"] == "llama.cpp"
    assert res.exit_code == (0 if d["passed"] else 3)
    # llama.cpp agrees with quantport's own forward of the file's weights
    assert d["extra"]["ir_top1_agreement"] > 0.95
    assert d["extra"]["ir_kld_mean"] < 0.01


def test_gguf_to_gguf_requantization(tiny_q8, tmp_path):
    out = tmp_path / "re.gguf"
    res = run("convert", tiny_q8, "--to", "gguf", "--quant", "Q4_0", "-o", out, "-q", "--json",
              "--threads", "2")
    assert res.exit_code == 0, res.output
    info = json.loads(run("inspect", out, "--json").stdout)
    assert info["quantization"]["types"]["Q4_0"] >= 14


def test_corrupt_gguf_source(tmp_path, tiny_q8):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(tiny_q8.read_bytes()[:2000])
    res = run("convert", bad, "--to", "gguf", "--quant", "Q8_0", "-o", tmp_path / "o.gguf")
    assert res.exit_code == 1 and "Error:" in res.output and "Traceback" not in res.output


def test_bad_override_refused_before_calibration(tiny_llama, tmp_path, monkeypatch):
    import quantport.pipeline.calibration as calibration

    def no_calibration(*a, **k):
        raise AssertionError("calibration ran before the recipe was checked")

    monkeypatch.setattr(calibration, "collect_imatrix", no_calibration)
    text = tmp_path / "calib.txt"
    text.write_text("some calibration text " * 200)
    res = run("convert", tiny_llama, "--to", "gguf", "--quant", "Q4_0", "-o", tmp_path / "o.gguf",
              "--calib", text, "--tensor-type", "nomatch=Q8_0")
    assert res.exit_code == 1 and "nomatch" in res.output


def _calib_text(tmp_path):
    text = tmp_path / "calib.txt"
    text.write_text("the quick brown fox jumps over the lazy dog . " * 200)
    return text


@pytest.mark.parametrize("force", [False, True])
def test_save_imatrix_never_replaces_a_file_quantport_did_not_write(force, tiny_llama, tmp_path):
    """--save-imatrix overwrote whatever its path held, --force or not, after the whole run."""
    mine = tmp_path / "notes.imat"
    mine.write_text("precious\n")
    args = ["convert", tiny_llama, "--to", "gguf", "--quant", "Q4_0", "-o", tmp_path / "o.gguf",
            "--calib", _calib_text(tmp_path), "--calib-chunks", "2", "--save-imatrix", mine]
    res = run(*args, *(["--force"] if force else []))
    assert res.exit_code == 1, res.output
    assert str(mine) in res.output and "--force" in res.output
    assert mine.read_text() == "precious\n"
    assert not (tmp_path / "o.gguf").exists()  # refused before any work


def test_save_imatrix_replaces_its_own_file_with_force_and_keeps_plain_permissions(tiny_llama,
                                                                                  tmp_path):
    imat = tmp_path / "m.imatrix.gguf"
    args = ["convert", tiny_llama, "--to", "gguf", "--quant", "Q4_0", "--calib",
            _calib_text(tmp_path), "--calib-chunks", "2", "--save-imatrix", imat, "-q"]
    assert run(*args, "-o", tmp_path / "a.gguf").exit_code == 0
    # a plain open()'s permissions (it was mkstemp's 0600)
    umask = os.umask(0)
    os.umask(umask)
    assert imat.stat().st_mode & 0o777 == 0o666 & ~umask
    res = run(*args, "-o", tmp_path / "b.gguf", "--force")
    assert res.exit_code == 0, res.output
    assert "blk.1.ffn_down.weight" in read_imatrix(imat).entries


def test_save_imatrix_at_the_output_path_is_refused(tiny_llama, tmp_path):
    """The same path for both replaced the model with the importance matrix, exit 0."""
    out = tmp_path / "o.gguf"
    res = run("convert", tiny_llama, "--to", "gguf", "--quant", "Q4_0", "-o", out, "--calib",
              _calib_text(tmp_path), "--calib-chunks", "2", "--save-imatrix", out)
    assert res.exit_code == 2
    assert "same path" in res.output
    assert not out.exists()


@pytest.mark.parametrize("where", ["gptq", "safetensors", "directory"])
def test_save_imatrix_that_would_not_be_written_is_refused_before_work(where, tiny_llama,
                                                                      tmp_path):
    """--save-imatrix with --method gptq (or to safetensors) exited 0 without writing the
    file; a directory failed only after the model was written."""
    out = tmp_path / ("o" if where == "safetensors" else "o.gguf")
    imat = tmp_path / "imat-dir" if where == "directory" else tmp_path / "imat.gguf"
    if where == "directory":
        imat.mkdir()
    args = ["convert", tiny_llama, "--to", "safetensors" if where == "safetensors" else "gguf",
            "--quant", "w4-g32-sym" if where == "safetensors" else "Q4_0", "-o", out,
            "--calib", _calib_text(tmp_path), "--calib-chunks", "2", "--save-imatrix", imat,
            "--force"]
    if where != "directory":
        args += ["--method", "gptq"]
    res = run(*args)
    assert res.exit_code == 2, res.output
    assert ("is a directory" if where == "directory" else "computes no importance matrix") \
        in res.output
    assert not out.exists()
