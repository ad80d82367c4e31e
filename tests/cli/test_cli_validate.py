"""`quantport validate` through the CLI: the report lists every check with its figure, limit and
verdict, grouped as correctness and quality; exit 3 / 4 tell them apart; no third-party bars."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from quantport.cli.main import cli

THIRD_PARTY = ("Loading weights", "Applying quantization config", "Decompressing model",
               "Dispatching model", "Compressing model")


def run(*args):
    # click >= 8.2 keeps stderr apart from stdout (result.stderr); the bars go there
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def tiny_w4(tiny_llama, tmp_path_factory):
    out = tmp_path_factory.mktemp("w4") / "w4"
    res = run("convert", tiny_llama, "--to", "safetensors", "--quant", "w4-g32-sym", "-o", out,
              "-q")
    assert res.exit_code == 0, res.output
    return out


def test_help_documents_exit_codes():
    res = run("validate", "--help")
    assert res.exit_code == 0
    text = " ".join(res.output.split())
    assert "Exit status" in text and "3 a correctness check failed" in text
    assert "4 correct, but a quality threshold failed" in text


def test_quality_failure_is_named_and_exits_4(tiny_w4, tiny_llama):
    res = run("validate", tiny_w4, "--against", tiny_llama, "--windows", "1", "--ctx", "64",
              "--max-kld", "0", "--json")
    assert res.exit_code == 4, res.output
    d = json.loads(res.stdout)
    assert d["correct"] is True and d["quality_passed"] is False and d["passed"] is False
    assert d["exit_code"] == 4
    by_name = {c["name"]: c for c in d["checks"]}
    kld = by_name["kld_mean"]
    assert kld["group"] == "quality" and kld["passed"] is False
    assert kld["limit"] == 0 and kld["value"] > 0 and kld["op"] == "<="
    assert [f.split()[0] for f in d["failures"]] == ["kld_mean"]
    assert {c["group"] for c in d["checks"]} == {"correctness", "quality"}
    assert all(c["passed"] for c in d["checks"] if c["group"] == "correctness")

    res = run("validate", tiny_w4, "--against", tiny_llama, "--windows", "1", "--ctx", "64",
              "--max-kld", "0")
    assert res.exit_code == 4
    lines = res.stdout.splitlines()
    fail = [ln for ln in lines if ln.split()[:2] == ["FAIL", "kld_mean"]]
    assert len(fail) == 1 and "<= 0" in fail[0]
    assert lines[-1].startswith("FAILED quality") and "kld_mean" in lines[-1]
    assert not any(ln.startswith("PASSED") for ln in lines)


def test_passing_report_lists_each_check(tiny_w4, tiny_llama):
    res = run("validate", tiny_w4, "--against", tiny_llama, "--windows", "1", "--ctx", "64")
    assert res.exit_code == 0, res.output
    out = res.stdout
    assert "correctness (" in out and "quality (" in out
    for name in ("tokenizer_ids_match", "weights_kld_mean", "weights_top1_agreement",
                 "kld_mean", "top1_agreement", "ppl_ratio"):
        assert any(ln.split()[:2] == ["pass", name] for ln in out.splitlines()), name
    assert out.splitlines()[-1].startswith("PASSED: correctness 3/3, quality 3/3")


def test_no_third_party_progress_bars(tiny_w4, tiny_llama):
    """transformers' and compressed-tensors' own bars stay out of quantport's output; the
    progress bar of quantport's own phase remains."""
    res = run("validate", tiny_w4, "--against", tiny_llama, "--windows", "2", "--ctx", "64")
    assert res.exit_code == 0, res.output
    for s in THIRD_PARTY:
        assert s not in res.stderr, s
        assert s not in res.stdout, s
    assert "validate" in res.stderr


def _one_line_error(res, *needles):
    assert res.exit_code == 1, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), res.output
    for n in needles:
        assert n in lines[0], lines[0]


@pytest.mark.parametrize("fmt, quant", [("safetensors", None), ("gguf", "Q8_0")])
def test_an_artifact_of_another_model_is_refused_in_one_line(fmt, quant, tiny_w4, tiny_llama,
                                                             tmp_path):
    """A decoder validated against an encoder (and the reverse) went as far as a forward pass
    and died there with a shape error's traceback."""
    art = tiny_w4
    if fmt == "gguf":
        art = tmp_path / "tiny.gguf"
        assert run("convert", tiny_llama, "--to", "gguf", "--quant", quant, "-o", art,
                   "-q").exit_code == 0
    res = run("validate", art, "--against", "minilm", "--windows", "1", "--ctx", "64")
    _one_line_error(res, "is not a conversion of the reference minilm", "hidden_size",
                    "--against")


def test_an_encoder_text_without_sentences_is_refused_in_one_line(tmp_path):
    """An encoder is scored on the text's lines of 8+ words; with none, numpy's min of an
    empty list raised."""
    art = tmp_path / "minilm-f16"
    assert run("convert", "minilm", "--to", "safetensors", "--quant", "f16", "-o", art,
               "-q").exit_code == 0
    text = tmp_path / "short.txt"
    text.write_text("hello world\n\n")
    res = run("validate", art, "--against", "minilm", "--text", text)
    _one_line_error(res, "short.txt", "no line of 8 or more words")


def test_a_truncated_shard_is_refused_in_one_line(tiny_w4, tiny_llama, tmp_path):
    """transformers' safetensors loader raised on it (a traceback); quantport's header check
    says which tensor runs past the end of which file."""
    import shutil

    art = tmp_path / "cut"
    shutil.copytree(tiny_w4, art)
    shard = sorted(art.glob("*.safetensors"))[0]
    with open(shard, "r+b") as f:
        f.truncate(shard.stat().st_size // 2)
    res = run("validate", art, "--against", tiny_llama, "--windows", "1", "--ctx", "64")
    _one_line_error(res, shard.name, "truncated")


def test_a_window_beyond_the_context_length_is_refused_in_one_line(tiny_w4, tiny_llama):
    """llama.cpp failed to create its context and the artifact was blamed ("cannot load it")."""
    res = run("validate", tiny_w4, "--against", tiny_llama, "--windows", "1", "--ctx", "100000")
    _one_line_error(res, "--ctx 100000 is beyond the model's context length 256")


def test_an_importance_matrix_is_not_validated_as_a_model(tmp_path):
    """llama.cpp's "Failed to load model" blamed the file as a broken model."""
    import numpy as np

    from quantport.formats.imatrix import ImatrixData, write_imatrix

    imat = tmp_path / "m.imatrix.gguf"
    write_imatrix(imat, ImatrixData({"blk.0.attn_q.weight": np.ones(4, np.float32)},
                                    datasets=["x"], chunk_count=1, chunk_size=8))
    res = run("validate", imat, "--windows", "1", "--ctx", "64")
    _one_line_error(res, "an importance matrix", "not a model")


def test_a_text_too_short_is_refused_before_the_artifact_loads(tiny_w4, tiny_llama, tmp_path,
                                                               monkeypatch):
    """The whole artifact was loaded and dequantized before "text too short" came."""
    from quantport.validate import runner

    def loaded(*a, **k):
        raise AssertionError("the runtime was opened before the text was checked")

    monkeypatch.setattr(runner, "_open_runtime", loaded)
    text = tmp_path / "short.txt"
    text.write_text("hello world\n")
    res = run("validate", tiny_w4, "--against", tiny_llama, "--text", text, "--ctx", "64")
    _one_line_error(res, "short.txt: text too short for one window of 64 tokens")


def test_an_encoder_report_counts_sentences(tmp_path):
    """It said "256 windows x 128 tokens, 0 scored" for an encoder scored on sentences."""
    art = tmp_path / "minilm-f16"
    assert run("convert", "minilm", "--to", "safetensors", "--quant", "f16", "-o", art,
               "-q").exit_code == 0
    res = run("validate", art, "--against", "minilm", "-q")
    assert res.exit_code == 0, res.output
    assert "64 sentences of at most 128 tokens" in res.output
    assert "0 scored" not in res.output


def test_a_directory_without_weights_or_config_is_refused_in_one_line(tiny_w4, tmp_path):
    """transformers said "Should have a 'model_type' key in its config.json" for both, though
    there was no config.json."""
    import shutil

    empty = tmp_path / "empty"
    empty.mkdir()
    _one_line_error(run("validate", empty, "--windows", "1", "--ctx", "64"),
                    "no weights (.safetensors, pytorch_model.bin or model.onnx)")
    noconf = tmp_path / "noconf"
    shutil.copytree(tiny_w4, noconf)
    (noconf / "config.json").unlink()
    _one_line_error(run("validate", noconf, "--windows", "1", "--ctx", "64"),
                    "no config.json beside the weights")
