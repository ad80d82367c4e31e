"""Every command, its success path and its error paths, through click's CliRunner."""

from __future__ import annotations

import errno
import json
import shutil
import subprocess
import sys

import pytest
from click.testing import CliRunner

from quantport.cli.main import cli


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def run(runner, *args):
    return runner.invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.mark.parametrize("cmd", ["convert", "validate", "inspect", "list"])
def test_help_has_example(runner, cmd):
    res = run(runner, cmd, "--help")
    assert res.exit_code == 0
    assert "Example" in res.output


def test_help_does_not_import_torch():
    code = "import sys; from quantport.cli.main import cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_console_script_freezes_what_is_left_at_exit():
    # the interpreter's teardown would otherwise run full garbage collections over every
    # imported module (0.15-0.19 s of a 2.8 s conversion); an in-process caller
    # (CliRunner -> cli.main) is not affected
    code = ("import atexit, gc\nfrom quantport.cli.main import cli\n"
            "atexit.register(lambda: print('frozen', gc.get_freeze_count() > 0))\n"
            "print('before', gc.get_freeze_count() > 0)\ncli(['--version'])\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["before", "False", "quantport,", "version",
                                  out.stdout.split()[4], "frozen", "True"], out.stdout


def test_gguf_conversion_imports_no_other_format(tmp_path):
    # a GGUF -> GGUF conversion is a whole process of about two seconds: the writer table must
    # not make it pay for another format's stack (onnx_ir alone took about a second)
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "readers"))
    import _tiny_inputs as tiny

    src = tiny.write_tiny_gguf(tmp_path / "tiny.gguf")
    code = ("import sys\nfrom quantport.cli.main import cli\n"
            "try:\n    cli(sys.argv[1:])\nexcept SystemExit as e:\n    assert not e.code, e\n"
            "heavy = ('onnx', 'onnx_ir', 'onnxruntime', 'torch', 'transformers', 'safetensors')\n"
            "print(sorted(m for m in heavy if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code, "convert", str(src), "--to", "gguf",
                          "--quant", "Q8_0", "-o", str(tmp_path / "out.gguf"), "--quiet"],
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout


def test_list(runner):
    res = run(runner, "list", "--json")
    assert res.exit_code == 0
    d = json.loads(res.stdout)
    assert {"llama", "bert", "qwen2", "qwen3", "mistral"} <= {a["name"] for a in d["architectures"]}
    assert "w4-g64-sym" in d["schemes"] and "Q4_K_M" in d["gguf_presets"]
    assert "Q6_K" in d["gguf_types"]
    assert "architectures:" in run(runner, "list").output


def test_inspect_counts_w8a8_and_gptq_modules_and_shows_their_schemes(runner, tiny_llama,
                                                                       tmp_path):
    """inspect said 0 quantized modules and no weights for a GPTQ checkpoint, and listed a
    W8A8 checkpoint's weights without its int8 activations (it read like w8-channel-sym)."""
    w8 = tmp_path / "w8a8"
    assert run(runner, "convert", tiny_llama, "--to", "safetensors", "--quant", "w8a8",
               "-o", w8, "-q").exit_code == 0
    q = json.loads(run(runner, "inspect", w8, "--json").stdout)["quantization"]
    assert q["quantized_modules"] == 14
    acts = next(iter(q["input_activations"].values()))
    assert acts["num_bits"] == 8 and acts["strategy"] == "token" and acts["dynamic"] is True
    gq = tmp_path / "gptq"
    assert run(runner, "convert", tiny_llama, "--to", "gptq", "--quant", "w4-g32-sym",
               "-o", gq, "-q").exit_code == 0
    q = json.loads(run(runner, "inspect", gq, "--json").stdout)["quantization"]
    assert q["quantized_modules"] == 14 and q["method"] == "gptq"
    assert q["weights"]["bits"] == 4 and q["weights"]["group_size"] == 32


def test_convert_inspect_validate_tiny(runner, tiny_llama, tmp_path):
    out = tmp_path / "w4"
    res = run(runner, "convert", tiny_llama, "--to", "safetensors", "--quant", "w4-g32-sym",
              "-o", out, "--json")
    assert res.exit_code == 0, res.output
    rep = json.loads(res.stdout)
    assert rep["n_quantized"] == 14 and rep["quant"] == "w4-g32-sym"
    info = json.loads(run(runner, "inspect", out, "--json").stdout)
    assert info["format"] == "safetensors"
    assert info["quantization"]["weights"]["group_0"]["group_size"] == 32
    assert any(t["name"].endswith("q_proj.weight_packed") for t in info["tensors"])
    res = run(runner, "validate", out, "--against", tiny_llama, "--windows", "2", "--ctx", "64",
              "--json")
    assert res.exit_code == 0, res.output
    v = json.loads(res.stdout)
    for key in ("ppl", "ppl_reference", "kld_mean", "top1_agreement", "max_abs_logit_diff",
                "passed"):
        assert key in v
    assert v["passed"] is True and v["runtime"] == "transformers"
    # text report
    res = run(runner, "validate", out, "--against", tiny_llama, "--windows", "1", "--ctx", "64")
    assert res.exit_code == 0 and "PASSED" in res.output
    # a quality threshold breached by a correct artifact -> exit 4
    res = run(runner, "validate", out, "--against", tiny_llama, "--windows", "1", "--ctx", "64",
              "--max-kld", "0", "--json")
    assert res.exit_code == 4
    assert json.loads(res.stdout)["passed"] is False


def test_existing_output_needs_force(runner, tiny_llama, tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "keep").write_text("x")
    res = run(runner, "convert", tiny_llama, "--to", "safetensors", "--quant", "w8-channel-sym",
              "-o", out)
    assert res.exit_code == 1 and "already exists; pass --force" in res.output
    assert (out / "keep").read_text() == "x"
    # --force never touches files quantport did not write: a directory that is not a
    # quantport artifact is refused, naming what is in the way
    res = run(runner, "convert", tiny_llama, "--to", "safetensors", "--quant", "w8-channel-sym",
              "-o", out, "--force", "-q")
    assert res.exit_code == 1 and "keep" in res.output and "not a quantport artifact" in res.output
    assert (out / "keep").read_text() == "x"
    (out / "keep").unlink()  # an empty directory may be replaced
    res = run(runner, "convert", tiny_llama, "--to", "safetensors", "--quant", "w8-channel-sym",
              "-o", out, "--force", "-q")
    assert res.exit_code == 0 and (out / "model.safetensors").is_file()
    # a quantport artifact is replaced with --force
    res = run(runner, "convert", tiny_llama, "--to", "safetensors", "--quant", "w4-g32-sym",
              "-o", out, "--force", "-q")
    assert res.exit_code == 0
    assert json.loads((out / "config.json").read_text())["quantization_config"][
        "config_groups"]["group_0"]["weights"]["num_bits"] == 4


def test_group_size_refused_then_kept(runner, tiny_llama, tmp_path):
    res = run(runner, "convert", tiny_llama, "--to", "safetensors", "--quant", "w4-g128-sym",
              "-o", tmp_path / "a")
    assert res.exit_code == 1
    assert "model.layers.0." in res.output and "input width 64" in res.output
    assert "that divide it: 32, 64 " in res.output
    assert not (tmp_path / "a").exists()
    res = run(runner, "convert", tiny_llama, "--to", "safetensors", "--quant", "w4-g128-sym",
              "-o", tmp_path / "b", "--keep-unquantized", "--json")
    assert res.exit_code == 0
    d = json.loads(res.stdout)
    # only down_proj (width 128) is quantized; the other Linear weights (width 64) are kept
    assert d["n_quantized"] == 2
    kept = {n for n in d["kept"] if n.endswith("_proj.weight")}
    assert len(kept) == 12 and not any("down_proj" in n for n in kept)
    assert all("input width 64" in d["kept"][n] for n in kept)


@pytest.mark.parametrize(
    ("args", "code", "msg"),
    [
        (["--quant", "w9-g32-sym"], 1, "bits must be 2..8"),
        (["--quant", "int4"], 1, "unknown quantization scheme"),
        (["--quant", "w4-g32-sym", "--pure"], 2, "--pure applies to --to gguf only"),
    ],
)
def test_convert_bad_options(runner, tiny_llama, tmp_path, args, code, msg):
    res = run(runner, "convert", tiny_llama, "--to", "safetensors", "-o", tmp_path / "x", *args)
    assert res.exit_code == code
    assert msg in res.output
    assert "Traceback" not in res.output


def test_convert_onnx(runner, tiny_llama, tmp_path):
    res = run(runner, "convert", tiny_llama, "--to", "onnx", "--quant", "w8-channel-sym",
              "--onnx-matmul", "nbits", "--accuracy-level", "0", "-o", tmp_path / "x")
    assert res.exit_code == 0, res.output
    assert (tmp_path / "x" / "model.onnx").is_file() and (tmp_path / "x" / "genai_config.json").is_file()
    res = run(runner, "convert", tiny_llama, "--to", "onnx", "--quant", "w3-g32-sym",
              "-o", tmp_path / "y")
    assert res.exit_code == 1 and "schemes that export" in res.output
    res = run(runner, "convert", tiny_llama, "--to", "gguf", "--quant", "Q8_0",
              "--onnx-matmul", "nbits", "-o", tmp_path / "z.gguf")
    assert res.exit_code == 2 and "--onnx-matmul applies to --to onnx only" in res.output


def test_bad_sources(runner, tiny_llama, tmp_path):
    d = tmp_path / "gpt"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"architectures": ["GPTNeoXForCausalLM"]}))
    res = run(runner, "convert", d, "--to", "safetensors", "--quant", "f16", "-o", tmp_path / "o")
    assert res.exit_code == 1 and "not supported; supported: llama" in res.output
    (d / "config.json").write_text("{")
    res = run(runner, "convert", d, "--to", "safetensors", "--quant", "f16", "-o", tmp_path / "o")
    assert res.exit_code == 1 and "invalid JSON" in res.output
    (d / "config.json").unlink()
    res = run(runner, "convert", d, "--to", "safetensors", "--quant", "f16", "-o", tmp_path / "o")
    assert res.exit_code == 1 and "no config.json" in res.output
    # truncated safetensors
    t = tmp_path / "trunc"
    shutil.copytree(tiny_llama, t)
    data = (t / "model.safetensors").read_bytes()
    (t / "model.safetensors").write_bytes(data[: len(data) // 2])
    res = run(runner, "convert", t, "--to", "safetensors", "--quant", "f16", "-o", tmp_path / "o")
    assert res.exit_code == 1 and "truncated" in res.output
    # pickle checkpoints need --allow-pickle
    (t / "model.safetensors").unlink()
    (t / "pytorch_model.bin").write_bytes(b"not really")
    res = run(runner, "convert", t, "--to", "safetensors", "--quant", "f16", "-o", tmp_path / "o")
    assert res.exit_code == 1 and "--allow-pickle" in res.output
    res = run(runner, "convert", t, "--to", "safetensors", "--quant", "f16", "-o",
              tmp_path / "o", "--allow-pickle")
    assert res.exit_code == 1 and "cannot load pickle" in res.output
    assert not (tmp_path / "o").exists()
    res = run(runner, "convert", tmp_path / "missing", "--to", "safetensors", "--quant", "f16",
              "-o", tmp_path / "o")
    assert res.exit_code == 1 and "no such file" in res.output


def test_full_disk_leaves_nothing(runner, tiny_llama, tmp_path, monkeypatch):
    import quantport.formats.safetensors_shards as shards

    def boom(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(shards, "pwrite_all", boom)
    out = tmp_path / "o"
    res = run(runner, "convert", tiny_llama, "--to", "safetensors", "--quant", "w8-channel-sym",
              "-o", out)
    assert res.exit_code == 1 and "no space left" in res.output
    assert not out.exists() and not list(tmp_path.glob(".*partial"))


def test_inspect_errors_and_gguf(runner, tmp_path, smollm2_gguf):
    res = run(runner, "inspect", tmp_path / "nope")
    assert res.exit_code == 1 and "no such file" in res.output
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(smollm2_gguf.read_bytes()[:5000])
    res = run(runner, "inspect", bad)
    assert res.exit_code == 1 and "Error:" in res.output and "Traceback" not in res.output
    res = run(runner, "inspect", smollm2_gguf, "--json")
    d = json.loads(res.stdout)
    assert d["format"] == "gguf" and d["quantization"]["types"]["Q4_1"] == 210
    assert d["metadata"]["general.architecture"] == "llama"
    res = run(runner, "inspect", smollm2_gguf)
    assert res.exit_code == 0 and "token_embd.weight" in res.output


def test_validate_missing_artifact(runner, tmp_path):
    res = run(runner, "validate", tmp_path / "nope")
    assert res.exit_code == 1 and "not found" in res.output


def test_thresholds_follow_precision(tiny_llama, tmp_path):
    from quantport.validate.runner import Thresholds, artifact_bits

    assert artifact_bits(tiny_llama) == 16
    out = tmp_path / "w3"
    assert run(CliRunner(), "convert", tiny_llama, "--to", "safetensors", "--quant", "w3-g32-sym",
               "-o", out, "-q").exit_code == 0
    assert artifact_bits(out) == 3
    loose, tight = Thresholds.for_bits(2), Thresholds.for_bits(8)
    assert loose.max_kld > Thresholds.for_bits(4).max_kld > tight.max_kld
    assert loose.min_top1 < tight.min_top1
    assert Thresholds.for_bits(4).override(max_kld=0.1, min_top1=None).max_kld == 0.1


def test_progress_bars(capsys):
    from quantport.cli._common import Bars

    bars = Bars(quiet=False)
    bars("write", 3_500_000, 104_000_000)
    bars("write", 3_600_000, 104_000_000)  # within 0.25 s of the first: not redrawn
    bars("validate", 1, 8)
    drawn = capsys.readouterr().err.split("\r")
    assert drawn[1].startswith("write:   3%|") and "3.50M/104M" in drawn[1], drawn
    assert drawn[2].startswith("validate:  12%|") and " 1/8 " in drawn[2], drawn
    bars("write", 104_000_000, 104_000_000)  # a phase that ends erases its line
    bars.close()  # and so does closing the others
    erased = capsys.readouterr().err.split("\r")
    assert [s.strip() for s in erased] == [""] * 5, erased
    quiet = Bars(quiet=True)
    quiet("write", 1, 2)
    assert capsys.readouterr().err == ""


def _copy_with_config(src, dst, **changes):
    """A copy of checkpoint ``src`` whose config.json has ``changes`` (None deletes a key)."""
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    for k, v in changes.items():
        if v is None:
            cfg.pop(k, None)
        else:
            cfg[k] = v
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


@pytest.mark.parametrize("fmt, quant", [("safetensors", "w4-g32-sym"), ("onnx", "w4-g32-sym"),
                                        ("gptq", "w4-g32-sym")])
def test_an_already_quantized_checkpoint_is_refused_as_source(runner, tiny_llama, tmp_path, fmt,
                                                              quant):
    """Its packed codes were copied out as float tensors (exit 0, a model that computes
    nothing sensible), or the ONNX writer died with a KeyError traceback."""
    q = tmp_path / "q"
    assert run(runner, "convert", tiny_llama, "--to", "safetensors", "--quant", "w4-g32-sym",
               "-o", q, "-q").exit_code == 0
    for dry in ([], ["--dry-run"]):
        res = run(runner, "convert", q, "--to", fmt, "--quant", quant, "-o", tmp_path / fmt,
                  *dry)
        assert res.exit_code == 1, res.output
        assert "already quantized" in res.output and "float checkpoint" in res.output
        assert not (tmp_path / fmt).exists()


def test_the_output_may_not_be_the_source(runner, tiny_llama, tmp_path):
    """With --force, -o naming the (quantport-written) source replaced the source."""
    src = tmp_path / "src"
    assert run(runner, "convert", tiny_llama, "--to", "safetensors", "--quant", "f32", "-o", src,
               "-q").exit_code == 0
    before = sorted((p.name, p.stat().st_size) for p in src.iterdir())
    for out in (src, tmp_path):
        res = run(runner, "convert", src, "--to", "safetensors", "--quant", "w4-g32-sym", "-o",
                  out, "--force")
        assert res.exit_code != 0, res.output
        assert sorted((p.name, p.stat().st_size) for p in src.iterdir()) == before
    res = run(runner, "convert", src, "--to", "safetensors", "--quant", "w4-g32-sym", "-o", src,
              "--force")
    assert "would replace the source" in res.output


@pytest.mark.parametrize("changes, needle", [
    ({"hidden_size": None}, "hidden_size is missing"),
    ({"vocab_size": None}, "vocab_size is missing"),
    ({"tie_word_embeddings": False}, "no lm_head.weight"),
])
def test_a_config_that_transformers_would_misread_is_refused(runner, tiny_llama, tmp_path,
                                                             changes, needle):
    """transformers fills an absent hidden_size with 4096 and an untied model without lm_head
    with random rows: the safetensors and GPTQ writers wrote such artifacts (exit 0)."""
    bad = _copy_with_config(tiny_llama, tmp_path / "bad", **changes)
    for fmt in ("safetensors", "gptq"):
        res = run(runner, "convert", bad, "--to", fmt, "--quant", "w4-g32-sym", "-o",
                  tmp_path / fmt)
        assert res.exit_code == 1, res.output
        assert needle in res.output and "config.json" in res.output


def test_a_dry_run_refuses_what_the_real_run_refuses(runner, tiny_llama, tmp_path):
    """--dry-run printed a plan (exit 0) for an output the real run then refused."""
    out = tmp_path / "taken"
    out.mkdir()
    (out / "mine.txt").write_text("x")
    for extra in ([], ["--force"]):
        res = run(runner, "convert", tiny_llama, "--to", "safetensors", "--quant", "w4-g32-sym",
                  "-o", out, "--dry-run", *extra)
        assert res.exit_code == 1, res.output
        assert str(out) in res.output
    assert (out / "mine.txt").read_text() == "x"


@pytest.mark.parametrize("args, needle", [
    (["--damp", "0.05"], "--damp applies to --method gptq or awq+gptq"),
    (["--act-order", "none"], "--act-order applies to --method gptq"),
    (["--smooth-alpha", "0.6"], "--smooth-alpha applies to --method smoothquant"),
    (["--calib-samples", "4"], "--calib-samples applies to a calibrated --method or --calib"),
    (["--device", "cpu"], "--device applies to a calibrated --method"),
    (["--to", "gguf", "--quant", "Q4_0", "--max-shard-size", "1GB"],
     "--max-shard-size applies to --to safetensors or gptq"),
])
def test_options_the_conversion_would_ignore_are_refused(runner, tiny_llama, tmp_path, args,
                                                         needle):
    """They were accepted and silently did nothing (round-to-nearest has no damping)."""
    base = ["convert", tiny_llama, "-o", tmp_path / "o"]
    if "--to" not in args:
        base += ["--to", "safetensors", "--quant", "w4-g32-sym"]
    res = run(runner, *base, *args)
    assert res.exit_code == 2, res.output
    assert needle in res.output
    assert not (tmp_path / "o").exists()


def test_gptq_checkpoints_of_an_encoder_are_refused(runner, tmp_path):
    """`quantport list` says bert: gptq no; convert wrote one anyway (GPTQModel loads
    decoders)."""
    res = run(runner, "convert", "minilm", "--to", "gptq", "--quant", "w4-g32-sym", "-o",
              tmp_path / "g")
    assert res.exit_code == 1, res.output
    assert "encoder" in res.output and "--to safetensors or --to onnx" in res.output


@pytest.mark.parametrize("where", ["under-a-file", "proc"])
def test_an_unwritable_output_is_refused_before_any_work(runner, tiny_llama, tmp_path, where):
    """The run quantized everything, then failed naming its internal temporary
    (.x.gguf.XXXXXXXX.partial)."""
    if where == "proc":
        out = "/proc/quantport-test.gguf"
    else:
        (tmp_path / "a-file").write_text("x")
        out = tmp_path / "a-file" / "x.gguf"
    res = run(runner, "convert", tiny_llama, "--to", "gguf", "--quant", "Q8_0", "-o", out)
    assert res.exit_code == 1, res.output
    assert f"cannot write {out}" in res.output and "partial" not in res.output


def test_a_corrupt_tokenizer_file_is_refused_not_copied(runner, tiny_llama, tmp_path):
    """The safetensors, ONNX and GPTQ writers copied a garbage tokenizer.json into the artifact
    (exit 0); the GGUF writer, which parses it, refused."""
    bad = tmp_path / "bad"
    shutil.copytree(tiny_llama, bad)
    (bad / "tokenizer.json").write_text("{not json")
    res = run(runner, "convert", bad, "--to", "safetensors", "--quant", "w4-g32-sym", "-o",
              tmp_path / "o")
    assert res.exit_code == 1, res.output
    assert "tokenizer.json: invalid JSON" in res.output
    assert not (tmp_path / "o").exists()


def test_an_ignored_option_at_its_default_value_is_accepted(runner, tiny_llama, tmp_path):
    """A wrapper that always passes the full option set, defaults included, is not refused."""
    res = run(runner, "convert", tiny_llama, "--to", "safetensors", "--quant", "w4-g32-sym",
              "--damp", "0.01", "--calib-len", "512", "-o", tmp_path / "o", "-q")
    assert res.exit_code == 0, res.output


def test_a_dry_run_checks_the_output_location_without_touching_it(runner, tiny_llama, tmp_path):
    (tmp_path / "a-file").write_text("x")
    res = run(runner, "convert", tiny_llama, "--to", "gguf", "--quant", "Q8_0", "--dry-run",
              "-o", tmp_path / "a-file" / "x.gguf")
    assert res.exit_code == 1 and "is not a directory" in res.output
    d = tmp_path / "dir.gguf"
    d.mkdir()
    res = run(runner, "convert", tiny_llama, "--to", "gguf", "--quant", "Q8_0", "--dry-run",
              "--force", "-o", d)
    assert res.exit_code == 1 and "is a directory" in res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "dir.gguf"]
