"""Calibrated quantization side by side: quantport's methods against llm-compressor's GPTQ,
llama.cpp's importance matrix and auto-round's GGUF export, in one run.

Every tool gets the same calibration windows (``--samples`` x ``--len`` tokens of WikiText-2
``valid.tokens.txt``, cut once by ``quantport.pipeline.layerwise.calibration_windows`` and
handed to the other tools as token ids), the same thread count (``--threads``, default 2:
``OMP_NUM_THREADS`` and ``torch.set_num_threads`` in every process, ``--threads`` for quantport,
``nthread`` for llama.cpp) and the same evaluation: ``quantport validate ART --against SRC
--windows 16 --ctx 512`` (16 windows of 512 tokens of ``wiki.test.raw``, the second half of each
scored), which runs each artifact in the runtime that serves it (transformers for
compressed-tensors, llama.cpp for GGUF) against the float32 source in transformers.

Each tool runs as a whole process under ``/usr/bin/time -v`` (wall, peak RSS of the largest
process), ``--runs`` times, the rows alternating (forward, then backward order), medians;
each artifact is scored once. Rows:

* compressed-tensors w4-g64-sym: quantport RTN, GPTQ (act-order static; float32 and bfloat16
  calibration), AWQ, AWQ+GPTQ; llm-compressor ``GPTQModifier`` W4A16 group 64 symmetric on
  CPU (its own venv, ``.cache/bench-venvs/llmcompressor``).
* GGUF Q4_K_M: llama.cpp's ``llama_model_quantize`` (llama-cpp-python 0.3.36) with an
  importance matrix from the calibration text (computed by quantport, ``--save-imatrix``:
  llama-imatrix is not built here; the same route as ``benchmarks/gguf_vs_llamacpp.py``),
  quantport RTN without and with ``--calib`` (importance matrix), quantport GPTQ, auto-round's
  ``gguf:q4_k_m`` export (``iters=0``, its own venv, ``.cache/bench-venvs/auto-round``).
* SmoothQuant W8A8 with and without smoothing (``--smooth-alpha`` left at its default: 0.8
  for the decoder to ONNX w8a8, 0.5 for BERT), on the default model (KLD) and on MiniLM
  (all-MiniLM-L6-v2, ONNX w8a8: scored by ``validate``'s encoder check, the cosine of sentence
  embeddings against the fp32 source over 256 sentences of ``wiki.test.raw``; the loss compared
  is ``1 - cosine mean``; calibrated on ``--samples`` sentences of the calibration text).

A row whose method quantport does not offer (``quantport convert --help``), or whose tool cannot
be installed or run, stays in the table as "not run" with the reason. Each target of issue 9 is
judged met / not met from the run's own rows.

Usage:
    python benchmarks/calibrated.py [--samples 128 --len 512] [--runs 2] [--out BENCHMARKS.md]
    python benchmarks/calibrated.py --samples 8 --len 128 --quick   # smoke run, writes nothing
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "src"))
os.environ.setdefault("QUANTPORT_CACHE", str(ROOT / ".cache"))

from convert_memory import Measured, measure, src_desc, update_section, verdict  # noqa: E402

VENV_BIN = ROOT / ".venv" / "bin"
PY = str(VENV_BIN / "python") if (VENV_BIN / "python").exists() else sys.executable
QUANTPORT = str(VENV_BIN / "quantport") if (VENV_BIN / "quantport").exists() else "quantport"
VENVS = ROOT / ".cache" / "bench-venvs"
BASE_PYTHON = os.environ.get("PYTHON", "python3.11")
MIB = 1 << 20
HEADING = "## Calibrated methods (`benchmarks/calibrated.py`)"

# The project's torch pin: installed first, alone, in every venv (a range would pull the
# multi-GB CUDA build). Both tools' requirements accept it: llmcompressor 0.14.0.1 asks for
# torch>=2.10.0,<=2.14.0; auto-round 0.16.1 for any torch.
TORCH_PIN = "torch==2.13.0"
LLMCOMPRESSOR_PINS = ["llmcompressor==0.14.0.1"]
# auto-round names no transformers; the project's version. gguf and sentencepiece: its GGUF
# export imports them (algorithms.md §8.1).
AUTOROUND_PINS = ["auto-round==0.16.1", "transformers==5.23.0", "gguf", "sentencepiece"]

# llm-compressor's GPTQ: W4A16 with group 64 built explicitly (its preset "W4A16" is group
# 128), symmetric int4, act-order static (its default, as quantport's), block 128, damp 0.01
# (its defaults, algorithms.md §1.4); lm_head (tied to the embedding) left alone as quantport
# leaves it. The calibration windows are the ones quantport cut, as token ids.
LLMCOMPRESSOR_SCRIPT = r"""
import sys, numpy as np, torch
model_dir, windows_npy, out, threads = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
torch.set_num_threads(threads)
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
from llmcompressor import oneshot
from llmcompressor.modifiers.quantization import GPTQModifier
w = np.load(windows_npy)
model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
tok = AutoTokenizer.from_pretrained(model_dir)
ds = Dataset.from_dict({"input_ids": w.tolist(), "attention_mask": np.ones_like(w).tolist()})
scheme = QuantizationScheme(targets=["Linear"], weights=QuantizationArgs(
    num_bits=4, type="int", symmetric=True, strategy="group", group_size=64))
recipe = GPTQModifier(config_groups={"group_0": scheme}, ignore=["lm_head"],
                      actorder="static", block_size=128, dampening_frac=0.01)
oneshot(model=model, dataset=ds, recipe=recipe, num_calibration_samples=len(w),
        max_seq_length=w.shape[1], shuffle_calibration_samples=False)
model.save_pretrained(out, save_compressed=True)
tok.save_pretrained(out)
"""

# auto-round's GGUF export, default "opt-RTN" (iters=0: its port of llama.cpp's scale/min
# search with an importance matrix from the calibration data, algorithms.md §8.1). The
# windows go in as a list of {input_ids, attention_mask} batches of one: auto-round iterates
# a non-string dataset as its dataloader (calibration/llm.py, calib); the explicit all-ones
# mask keeps it from masking tokens equal to the tokenizer's pad id.
AUTOROUND_SCRIPT = r"""
import sys, numpy as np, torch
model_dir, windows_npy, out, threads = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
torch.set_num_threads(threads)
from transformers import AutoModelForCausalLM, AutoTokenizer
from auto_round import AutoRound
w = np.load(windows_npy)
model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
tok = AutoTokenizer.from_pretrained(model_dir)
data = [{"input_ids": torch.from_numpy(np.ascontiguousarray(x[None])),
         "attention_mask": torch.ones(1, w.shape[1], dtype=torch.long)} for x in w]
ar = AutoRound(model, tok, iters=0, nsamples=len(w), seqlen=w.shape[1], batch_size=1,
               dataset=data, device_map="cpu")
ar.quantize_and_save(out, format="gguf:q4_k_m")
"""

# llama.cpp's quantizer with the importance matrix quantport computed (tests/_llamacpp.py:
# the imatrix goes in through llama_model_quantize_params.imatrix, as quantize.cpp does).
LLAMA_QUANTIZE_IMATRIX = r"""
import sys
sys.path.insert(0, sys.argv[5])
from _llamacpp import llama_quantize
from quantport.formats.imatrix import read_imatrix
src, dst, imat, nthread = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
llama_quantize(src, dst, "Q4_K_M", imatrix=read_imatrix(imat), nthread=nthread)
"""


# ------------------------------------------------------------------------------------------
# rows
# ------------------------------------------------------------------------------------------


@dataclass
class Ctx:
    """What every row's command needs."""

    src: Path  # the fp32 HF directory of the default model
    f32_gguf: Path  # the same model as an F32 GGUF (llama.cpp's input)
    calib: Path
    windows_npy: Path
    samples: int
    length: int
    threads: int
    work: Path
    methods: set[str]
    env: dict[str, str]
    install: bool
    imatrix: Path = field(init=False)

    def __post_init__(self) -> None:
        self.imatrix = self.work / "imatrix.gguf"

    def calib_args(self) -> list[str]:
        return ["--calib", str(self.calib), "--calib-samples", str(self.samples),
                "--calib-len", str(self.length)]


@dataclass
class Row:
    """One artifact: who makes it, how, and what it scored."""

    key: str
    method: str
    tool: str
    fmt: str
    artifact: str  # file or directory name under the work directory
    build: Callable[[Ctx, Path], list[str]]  # the command that writes the artifact
    needs: str | None = None  # a quantport --method this row needs
    prepare: Callable[[Ctx], str | None] | None = None  # untimed; returns why it cannot run
    runs: list[Measured] = field(default_factory=list)
    skip: str | None = None  # why it was not run
    score: dict = field(default_factory=dict)
    note: str = ""
    src: str | None = None  # another source than the default model (an alias: ``minilm``)

    def path(self, ctx: Ctx) -> Path:
        return ctx.work / self.artifact

    @property
    def wall(self) -> float:
        return float(statistics.median(r.wall_s for r in self.runs))

    @property
    def rss(self) -> float:
        return float(statistics.median(r.maxrss for r in self.runs))

    @property
    def kld(self) -> float | None:
        """KLD; for an encoder row the loss that stands for it, ``1 - cosine mean``."""
        if self.score.get("kld_mean") is None and self.score.get("cosine_mean") is not None:
            return 1.0 - self.score["cosine_mean"]
        return self.score.get("kld_mean")


def qp_convert(fmt: str, quant: str, *extra: str, calib: bool = False,
               method: str | None = None, src: str | None = None
               ) -> Callable[[Ctx, Path], list[str]]:
    def build(ctx: Ctx, out: Path) -> list[str]:
        cmd = [QUANTPORT, "convert", src or str(ctx.src), "--to", fmt, "--quant", quant, "-o",
               str(out), "--force", "--quiet", "--threads", str(ctx.threads)]
        if method:
            cmd += ["--method", method]
        if calib or method not in (None, "rtn"):
            cmd += ctx.calib_args()
        return cmd + list(extra)
    return build


def ensure_venv(name: str, pins: list[str], probe: str, install: bool, log: Path) -> tuple[str | None, str]:
    """A venv of its own under .cache/bench-venvs/NAME with the torch pin and ``pins``.

    Returns (its python, versions) or (None, why it cannot be had)."""
    venv = VENVS / name
    py = venv / "bin" / "python"
    stamp = venv / ".installed"
    want = "\n".join([TORCH_PIN, *pins])
    if not (stamp.is_file() and stamp.read_text() == want):
        if not install:
            return None, f"venv {venv} missing (run without --no-install to create it)"
        shutil.rmtree(venv, ignore_errors=True)
        print(f"creating {venv} ({', '.join([TORCH_PIN, *pins])})", file=sys.stderr, flush=True)
        steps = [[BASE_PYTHON, "-m", "venv", str(venv)],
                 [str(py), "-m", "pip", "install", "-q", TORCH_PIN],
                 [str(py), "-m", "pip", "install", "-q", TORCH_PIN, *pins]]
        with open(log, "ab") as f:
            for step in steps:
                f.write(f"$ {' '.join(step)}\n".encode())
                f.flush()
                r = subprocess.run(step, stdout=f, stderr=subprocess.STDOUT)
                if r.returncode:
                    tail = log.read_text(errors="replace").strip().splitlines()[-1:]
                    return None, (f"`{' '.join(step[-len(pins) - 1:] if 'pip' in step else step)}`"
                                  f" failed: {tail[0] if tail else r.returncode} (log {log})")
        stamp.write_text(want)
    r = subprocess.run([str(py), "-c", probe], capture_output=True, text=True)
    if r.returncode:
        last = (r.stderr.strip().splitlines() or ["?"])[-1]
        return None, f"{name} venv does not import: {last}"
    return str(py), r.stdout.strip()


VERSIONS: dict[str, str] = {}


def _prepare_llmcompressor(ctx: Ctx) -> str | None:
    py, info = ensure_venv("llmcompressor", LLMCOMPRESSOR_PINS,
                           "import importlib.metadata as m; print(', '.join(f'{p} {m.version(p)}' "
                           "for p in ('llmcompressor', 'torch', 'transformers', "
                           "'compressed-tensors')))", ctx.install, ctx.work / "logs" / "venv-llmcompressor.log")
    if py is None:
        return info
    VERSIONS["llmcompressor"] = info
    ctx.env["BENCH_LLMC_PY"] = py
    return None


def _prepare_autoround(ctx: Ctx) -> str | None:
    py, info = ensure_venv("auto-round", AUTOROUND_PINS,
                           "import importlib.metadata as m; print(', '.join(f'{p} {m.version(p)}' "
                           "for p in ('auto-round', 'torch', 'transformers', 'gguf')))",
                           ctx.install, ctx.work / "logs" / "venv-auto-round.log")
    if py is None:
        return info
    VERSIONS["auto-round"] = info
    ctx.env["BENCH_AR_PY"] = py
    return None


def _prepare_imatrix(ctx: Ctx) -> str | None:
    """llama.cpp's row needs the importance matrix: quantport's RTN+imatrix row saves it; when
    that row has not run yet (or was filtered out), compute it here, untimed."""
    if not ctx.imatrix.exists():
        out = ctx.work / "imatrix-prep.gguf"
        cmd = qp_convert("gguf", "Q4_K_M", "--save-imatrix", str(ctx.imatrix), calib=True)(ctx, out)
        measure("imatrix-prep", cmd, env=ctx.env, log_dir=ctx.work / "logs")
        out.unlink(missing_ok=True)
    return None


def _llmc_cmd(ctx: Ctx, out: Path) -> list[str]:
    return [ctx.env["BENCH_LLMC_PY"], "-c", LLMCOMPRESSOR_SCRIPT, str(ctx.src),
            str(ctx.windows_npy), str(out), str(ctx.threads)]


def _autoround_cmd(ctx: Ctx, out: Path) -> list[str]:
    return [ctx.env["BENCH_AR_PY"], "-c", AUTOROUND_SCRIPT, str(ctx.src), str(ctx.windows_npy),
            str(out), str(ctx.threads)]


def _llamacpp_cmd(ctx: Ctx, out: Path) -> list[str]:
    if not ctx.imatrix.exists():  # the alternation put this row before quantport's imatrix row
        _prepare_imatrix(ctx)
    return [PY, "-c", LLAMA_QUANTIZE_IMATRIX, str(ctx.f32_gguf), str(out), str(ctx.imatrix),
            str(ctx.threads), str(ROOT / "tests")]


#: ``--act-scheme token``: W8A8 activations with one int8 scale per token
_TOKEN = ("--act-scheme", "token")


def rows_table() -> list[Row]:
    st, gg = "compressed-tensors w4-g64-sym", "GGUF Q4_K_M"
    return [
        Row("st-rtn", "RTN", "quantport", st, "qp-rtn-w4g64",
            qp_convert("safetensors", "w4-g64-sym")),
        Row("st-gptq", "GPTQ, act-order static", "quantport", st, "qp-gptq-w4g64",
            qp_convert("safetensors", "w4-g64-sym", "--act-order", "static", method="gptq"),
            needs="gptq"),
        Row("st-gptq-bf16", "GPTQ, act-order static, bf16 calibration", "quantport", st,
            "qp-gptq-bf16-w4g64",
            qp_convert("safetensors", "w4-g64-sym", "--act-order", "static", "--calib-dtype",
                       "bfloat16", method="gptq"), needs="gptq"),
        Row("st-gptaq", "GPTQ, act-order static, asymmetric inputs (GPTAQ)", "quantport", st,
            "qp-gptaq-w4g64",
            qp_convert("safetensors", "w4-g64-sym", "--act-order", "static", "--calib-inputs",
                       "asymmetric", method="gptq"), needs="gptq"),
        Row("st-llmc", "GPTQ (GPTQModifier), act-order static", "llm-compressor", st,
            "llmc-gptq-w4g64", _llmc_cmd, prepare=_prepare_llmcompressor),
        Row("st-awq", "AWQ", "quantport", st, "qp-awq-w4g64",
            qp_convert("safetensors", "w4-g64-sym", method="awq"), needs="awq"),
        Row("st-awq-gptq", "AWQ + GPTQ", "quantport", st, "qp-awq-gptq-w4g64",
            qp_convert("safetensors", "w4-g64-sym", method="awq+gptq"), needs="awq+gptq"),
        Row("gguf-rtn", "RTN (llama.cpp's search), no imatrix", "quantport", gg,
            "qp-rtn-q4km.gguf", qp_convert("gguf", "Q4_K_M")),
        Row("gguf-rtn-imat", "RTN (llama.cpp's search) + imatrix", "quantport", gg,
            "qp-rtn-imat-q4km.gguf", lambda ctx, out: qp_convert(
                "gguf", "Q4_K_M", "--save-imatrix", str(ctx.imatrix), calib=True)(ctx, out)),
        Row("gguf-lc-imat", "imatrix (llama_model_quantize)", "llama.cpp", gg,
            "lc-imat-q4km.gguf", _llamacpp_cmd),
        Row("gguf-gptq", "GPTQ onto k-quants", "quantport", gg, "qp-gptq-q4km.gguf",
            qp_convert("gguf", "Q4_K_M", method="gptq"), needs="gptq"),
        Row("gguf-gptaq", "GPTQ onto k-quants, asymmetric inputs (GPTAQ)", "quantport", gg,
            "qp-gptaq-q4km.gguf",
            qp_convert("gguf", "Q4_K_M", "--calib-inputs", "asymmetric", method="gptq"),
            needs="gptq"),
        Row("gguf-ar", "opt-RTN (iters=0) + imatrix", "auto-round", gg, "ar-q4km",
            _autoround_cmd, prepare=_prepare_autoround),
        Row("w8a8-rtn", "W8A8, no smoothing", "quantport", "ONNX w8a8", "qp-w8a8.onnx.d",
            qp_convert("onnx", "w8a8"), needs="smoothquant"),
        Row("w8a8-sq", "SmoothQuant W8A8 (default alpha)", "quantport", "ONNX w8a8",
            "qp-sq-w8a8.onnx.d", qp_convert("onnx", "w8a8", method="smoothquant"),
            needs="smoothquant"),
        Row("minilm-w8a8-rtn", "MiniLM W8A8, no smoothing", "quantport", "ONNX w8a8",
            "qp-minilm-w8a8.onnx.d", qp_convert("onnx", "w8a8", src="minilm"),
            needs="smoothquant", src="minilm"),
        Row("minilm-w8a8-sq", "MiniLM SmoothQuant W8A8 (default alpha)", "quantport",
            "ONNX w8a8", "qp-minilm-sq-w8a8.onnx.d",
            qp_convert("onnx", "w8a8", method="smoothquant", src="minilm"),
            needs="smoothquant", src="minilm"),
        # the same four with one int8 scale per token (--act-scheme token) instead of per
        # tensor: the scheme SmoothQuant's paper and compressed-tensors' W8A8 use
        Row("w8a8-tok-rtn", "W8A8 per-token, no smoothing", "quantport", "ONNX w8a8",
            "qp-w8a8-tok.onnx.d", qp_convert("onnx", "w8a8", *_TOKEN), needs="smoothquant"),
        Row("w8a8-tok-sq", "SmoothQuant W8A8 per-token (default alpha)", "quantport",
            "ONNX w8a8", "qp-sq-w8a8-tok.onnx.d",
            qp_convert("onnx", "w8a8", *_TOKEN, method="smoothquant"), needs="smoothquant"),
        Row("minilm-w8a8-tok-rtn", "MiniLM W8A8 per-token, no smoothing", "quantport",
            "ONNX w8a8", "qp-minilm-w8a8-tok.onnx.d",
            qp_convert("onnx", "w8a8", *_TOKEN, src="minilm"), needs="smoothquant",
            src="minilm"),
        Row("minilm-w8a8-tok-sq", "MiniLM SmoothQuant W8A8 per-token (default alpha)",
            "quantport", "ONNX w8a8", "qp-minilm-sq-w8a8-tok.onnx.d",
            qp_convert("onnx", "w8a8", *_TOKEN, method="smoothquant", src="minilm"),
            needs="smoothquant", src="minilm"),
    ]


# ------------------------------------------------------------------------------------------
# measuring and scoring
# ------------------------------------------------------------------------------------------


def quantport_methods(env: dict[str, str]) -> set[str]:
    """The --method choices ``quantport convert --help`` lists."""
    import re

    text = subprocess.run([QUANTPORT, "convert", "--help"], capture_output=True, text=True,
                          env=env).stdout
    m = re.search(r"--method \[([^\]]+)\]", text)
    return set(m.group(1).split("|")) if m else {"rtn"}


def artifact_file(row: Row, ctx: Ctx) -> Path | None:
    """The file or directory to score: auto-round writes a directory holding one .gguf."""
    p = row.path(ctx)
    if row.key == "gguf-ar" and p.is_dir():
        ggufs = sorted(p.rglob("*.gguf"))
        return ggufs[0] if ggufs else None
    return p if p.exists() else None


def size_bytes(p: Path) -> int:
    """A file's size; for a directory, its weight files (.safetensors, .onnx.data, .onnx)."""
    if p.is_file():
        return p.stat().st_size
    return sum(f.stat().st_size for f in p.rglob("*")
               if f.is_file() and (f.suffix in (".safetensors", ".onnx", ".gguf")
                                   or f.name.endswith(".onnx.data")))


def score(art: Path, ctx: Ctx, windows: int, win_len: int, against: str | None = None) -> dict:
    """``quantport validate --json`` on the artifact: PPL, KLD, top-1 against the fp32 source
    (an encoder: the cosine of sentence embeddings)."""
    cmd = [QUANTPORT, "validate", str(art), "--against", against or str(ctx.src), "--windows",
           str(windows), "--ctx", str(win_len), "--json", "--quiet"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=ctx.env)
    try:
        d = json.loads(r.stdout)
    except json.JSONDecodeError:
        last = (r.stderr.strip().splitlines() or [f"exit {r.returncode}"])[-1]
        return {"error": f"validate failed (exit {r.returncode}): {last}"}
    d["exit_code"] = r.returncode
    return d


def gguf_layout(p: Path) -> dict[str, str]:
    from quantport.formats.gguf_file import scan_gguf

    return {t.name: t.type_name for t in scan_gguf(p).tensors}


def tensor_bytes(p: Path) -> int:
    """Bytes of tensor data in a GGUF (the sum of its tensors' sizes)."""
    from quantport.formats.gguf_file import scan_gguf

    return sum(t.nbytes for t in scan_gguf(p).tensors)


# ------------------------------------------------------------------------------------------
# the report
# ------------------------------------------------------------------------------------------


def fmt_row(r: Row) -> str:
    if r.skip:
        return (f"| {r.method} | {r.tool} | {r.fmt} | | | | | | | not run: {r.skip} |")
    s = r.score
    if "error" in s or not s:
        q = f"| | | | {s.get('error', 'not scored')} |"
    elif s.get("ppl") is None and s.get("cosine_mean") is not None:  # an encoder
        note = "" if s.get("correct", True) else "correctness check FAILED: " + "; ".join(
            f for f in s.get("failures", []) if "weights" in f or "token" in f)
        q = (f"| | 1-cos {1 - s['cosine_mean']:.5f} | | cosine mean {s['cosine_mean']:.5f}, "
             f"min {s['cosine_min']:.5f} (256 sentences) "
             f"{'; '.join(filter(None, [note, r.note]))} |")
    else:
        note = "" if s.get("correct", True) else "correctness check FAILED: " + "; ".join(
            f for f in s.get("failures", []) if "weights" in f or "token" in f)
        q = (f"| {s['ppl']:.4f} | {s['kld_mean']:.5f} | {s['top1_agreement']:.4f} | "
             f"{'; '.join(filter(None, [note, r.note]))} |")
    size = f"{r.score.get('_size', 0) / MIB:.2f}"
    return (f"| {r.method} | {r.tool} | {r.fmt} | {size} | {r.wall:.1f} | {r.rss / MIB:.0f} "
            + q)


def judge(rows: dict[str, Row], layout_notes: dict[str, str]) -> list[str]:
    """issue 9's targets, from this run's rows."""
    out = ["### Against the targets", ""]

    def have(*keys: str) -> str | None:
        for k in keys:
            r = rows.get(k)
            if r is None:
                return f"row {k} not in this run"
            if r.skip:
                return f"{r.tool} {r.method} not run ({r.skip})"
            if r.kld is None:
                return f"{r.tool} {r.method} not scored"
        return None

    def line(text: str, ok: bool | None, detail: str) -> None:
        out.append(f"- {text}: {verdict(ok) if ok is not None else 'not judged'} ({detail}).")

    for key, label in (("st-gptq", "GPTQ"), ("st-gptq-bf16", "GPTQ (bf16 calibration)"),
                       ("st-gptaq", "GPTQ (asymmetric inputs)")):
        why = have(key, "st-llmc")
        if why:
            for t in ("KLD", "wall", "peak RSS"):
                line(f"quantport {label} w4-g64-sym {t} vs llm-compressor's", None, why)
            continue
        q, c = rows[key], rows["st-llmc"]
        line(f"quantport {label} w4-g64-sym KLD at most llm-compressor's", q.kld <= c.kld,
             f"{q.kld:.5f} vs {c.kld:.5f}, ratio {q.kld / c.kld:.3f}")
        line(f"quantport {label} w4-g64-sym wall time at most 0.5x llm-compressor's",
             q.wall <= 0.5 * c.wall, f"{q.wall:.1f} s vs {c.wall:.1f} s, ratio {q.wall / c.wall:.3f}")
        line(f"quantport {label} w4-g64-sym peak RSS at most llm-compressor's", q.rss <= c.rss,
             f"{q.rss / MIB:.0f} MiB vs {c.rss / MIB:.0f} MiB, ratio {q.rss / c.rss:.3f}")
    def kld_at_most(text: str, key: str, anchor: str, factor: float) -> None:
        """``key``'s KLD (1 - cosine for encoders) at most ``factor`` times ``anchor``'s."""
        why = have(key, anchor)
        if why:
            line(text, None, why)
            return
        a, b = rows[key], rows[anchor]
        line(text, a.kld <= factor * b.kld, f"{a.kld:.5f} vs {b.kld:.5f}, ratio {a.kld / b.kld:.3f}")

    kld_at_most("AWQ w4-g64 KLD at most 0.8x RTN's", "st-awq", "st-rtn", 0.8)
    gptqs = (("gguf-gptq", "GPTQ"), ("gguf-gptaq", "GPTQ (asymmetric inputs)"))
    for key, label in gptqs:
        kld_at_most(f"quantport {label} Q4_K_M KLD at most 0.7x llama.cpp's importance-matrix "
                    "KLD", key, "gguf-lc-imat", 0.7)
    for key, label in gptqs:
        if key in layout_notes:
            out.append(f"- quantport {label} Q4_K_M: same tensor types and file size as "
                       f"llama.cpp's: {layout_notes[key]}.")
    for key, label in gptqs:
        kld_at_most(f"quantport {label} Q4_K_M KLD at most auto-round's", key, "gguf-ar", 1.0)
    for scheme, tag in (("per-tensor", ""), ("per-token", "-tok")):
        kld_at_most(f"SmoothQuant W8A8 ({scheme} activations) KLD at least 30% below W8A8 "
                    "without smoothing", f"w8a8{tag}-sq", f"w8a8{tag}-rtn", 0.7)
        kld_at_most(f"MiniLM SmoothQuant W8A8 ({scheme} activations, 1 - cosine) at least "
                    "30% below W8A8 without smoothing", f"minilm-w8a8{tag}-sq",
                    f"minilm-w8a8{tag}-rtn", 0.7)
    out.append("")
    return out


def _run_counts(rows: list[Row]) -> str:
    """How many timed runs each measured row has: "2 runs: st-gptq, st-llmc; 1 run: ..."."""
    by: dict[int, list[str]] = {}
    for r in rows:
        if r.runs:
            by.setdefault(len(r.runs), []).append(r.key)
    return "; ".join(f"{n} run{'s' * (n != 1)}: {', '.join(keys)}"
                     for n, keys in sorted(by.items(), reverse=True)) or "none"


def _record_path(r: Row, ctx: Ctx) -> Path:
    return ctx.work / "rows" / f"{r.key}.json"


def save_record(r: Row, ctx: Ctx, settings: dict) -> None:
    """The row's runs and score so far, so that ``--resume`` continues an interrupted run."""
    p = _record_path(r, ctx)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps({"settings": settings, "score": r.score, "runs": [
        {"label": m.label, "cmd": m.cmd, "wall_s": m.wall_s, "maxrss": m.maxrss,
         "user_s": m.user_s, "sys_s": m.sys_s} for m in r.runs]}, indent=1))


def load_record(r: Row, ctx: Ctx, settings: dict) -> None:
    """A previous run's measurements of this row, when taken with the same settings and its
    artifact is still there."""
    p = _record_path(r, ctx)
    if not p.is_file() or not r.path(ctx).exists():
        return
    d = json.loads(p.read_text())
    if d.get("settings") != settings:
        print(f"{r.key}: recorded with other settings, measured again", file=sys.stderr)
        return
    r.runs = [Measured(x["label"], x["cmd"], 0, x["wall_s"], x["maxrss"], x["user_s"],
                       x["sys_s"]) for x in d["runs"]]
    r.score = d.get("score") or {}
    print(f"{r.key}: {len(r.runs)} run(s) resumed{', scored' if r.score else ''}",
          file=sys.stderr, flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--samples", type=int, default=128, help="calibration windows")
    ap.add_argument("--len", dest="length", type=int, default=512, help="tokens per window")
    ap.add_argument("--runs", type=int, default=None,
                    help="timed runs per row, alternating (default 2; 1 with --quick)")
    ap.add_argument("--windows", type=int, default=None,
                    help="evaluation windows (default 16; 4 with --quick)")
    ap.add_argument("--ctx", type=int, default=512, help="evaluation window length")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rows", help="comma-separated row keys (default: all): "
                    + ",".join(r.key for r in rows_table()))
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: 1 run, 4 evaluation windows, BENCHMARKS.md left alone")
    ap.add_argument("--no-install", action="store_true",
                    help="do not create the llm-compressor / auto-round venvs")
    ap.add_argument("--workdir", type=Path, help="default: a temporary directory (removed)")
    ap.add_argument("--out", type=Path, default=ROOT / "BENCHMARKS.md")
    ap.add_argument("--no-write", action="store_true", help="print only; leave --out alone")
    ap.add_argument("--note", help="a line to put at the top of the section")
    ap.add_argument("--no-run", action="store_true",
                    help="with --resume: measure nothing, assemble the table from the records")
    ap.add_argument("--resume", action="store_true",
                    help="with --workdir: keep the rows an earlier run of the same settings "
                         "measured (and scored) there, run the rest")
    args = ap.parse_args()
    runs = args.runs or (1 if args.quick else 2)
    n_win = args.windows or (4 if args.quick else 16)
    write = not (args.no_write or args.quick)
    if not Path("/usr/bin/time").exists():
        sys.exit("/usr/bin/time is needed (apt-get install time)")

    import numpy as np

    from quantport.models import default_model, open_source
    from quantport.pipeline.layerwise import calibration_windows
    from quantport.pipeline.calibration import DEFAULT_CALIBRATION_TEXT

    work = (args.workdir or Path(tempfile.mkdtemp(prefix="qp-calib-"))).resolve()
    (work / "logs").mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads),
               TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               HF_DATASETS_OFFLINE="1", QUANTPORT_CACHE=os.environ["QUANTPORT_CACHE"])
    src = default_model()
    windows = calibration_windows(open_source(src), DEFAULT_CALIBRATION_TEXT, args.samples,
                                  args.length)
    if args.resume and args.workdir is None:
        sys.exit("--resume needs --workdir")
    if args.no_run and not args.resume:
        sys.exit("--no-run needs --resume (and --workdir)")
    np.save(work / "windows.npy", windows)
    f32 = work / "smollm2-f32.gguf"
    ctx = Ctx(src, f32, DEFAULT_CALIBRATION_TEXT, work / "windows.npy", int(windows.shape[0]),
              int(windows.shape[1]), args.threads, work, quantport_methods(env), env,
              not args.no_install)

    rows = rows_table()
    if args.rows:
        keep = args.rows.split(",")
        unknown = set(keep) - {r.key for r in rows}
        if unknown:
            sys.exit(f"unknown rows: {', '.join(sorted(unknown))}")
        rows = [r for r in rows if r.key in keep]

    # untimed set-up: the F32 GGUF llama.cpp quantizes, the other tools' venvs
    if any(r.key == "gguf-lc-imat" for r in rows) and not f32.exists():
        measure("f32-gguf", [QUANTPORT, "convert", str(src), "--to", "gguf", "--quant", "F32",
                             "-o", str(f32), "--force", "--quiet"], env=env, log_dir=work / "logs")
    for r in rows:
        if r.needs and r.needs not in ctx.methods:
            r.skip = (f"method not available (`quantport convert --help` lists --method "
                      f"{'|'.join(sorted(ctx.methods))}, not {r.needs})")
        elif r.prepare is not None:
            r.skip = r.prepare(ctx)
        if r.skip:
            print(f"{r.key}: not run: {r.skip}", file=sys.stderr, flush=True)

    settings = dict(samples=ctx.samples, length=ctx.length, windows=n_win, ctx=args.ctx,
                    threads=args.threads)
    if args.resume:
        for r in rows:
            if not r.skip:
                load_record(r, ctx, settings)

    def score_row(r: Row) -> None:
        art = artifact_file(r, ctx)
        if art is None:
            r.skip = f"no artifact at {r.path(ctx)}"
            return
        print(f"scoring {r.key} ({art.name})", file=sys.stderr, flush=True)
        r.score = score(art, ctx, n_win, args.ctx, against=r.src)
        r.score["_size"] = size_bytes(art)
        save_record(r, ctx, settings)
        print(f"  {r.key}: " + (r.score.get("error") or (
            f"cosine mean {r.score['cosine_mean']:.5f}" if r.score.get("ppl") is None else
            f"PPL {r.score['ppl']:.4f} KLD {r.score['kld_mean']:.5f} "
            f"top-1 {r.score['top1_agreement']:.4f}")), file=sys.stderr, flush=True)

    if args.no_run:
        for r in rows:
            if not r.skip and not r.runs:
                r.skip = "not measured (this table was assembled with --no-run)"
    live = [r for r in rows if not r.skip]
    for i in range(0 if args.no_run else runs):
        for r in live if i % 2 == 0 else live[::-1]:  # alternate: drifts hit every row
            if r.skip or len(r.runs) > i:  # failed, or measured by a run this one resumes
                continue
            out = r.path(ctx)
            if out.is_dir() and not r.tool == "quantport":
                shutil.rmtree(out)  # the other tools do not replace their output themselves
            run_env = env
            if r.tool == "quantport":
                # an empty cache each run: quantport keeps calibration statistics under
                # $QUANTPORT_CACHE/calib, and a repeated run would skip its forward passes
                # (the source is passed as a path, so nothing else is read from the cache)
                cold = work / "qp-cache" / f"{r.key}-{i}"
                shutil.rmtree(cold, ignore_errors=True)
                run_env = {**env, "QUANTPORT_CACHE": str(cold)}
            try:
                m = measure(f"{r.key}-{i}", r.build(ctx, out), env=run_env,
                            log_dir=work / "logs", interval=0.5, with_pss=False)
            except RuntimeError as exc:
                r.skip = "failed: " + " | ".join(
                    ln.strip() for ln in str(exc).splitlines()[-3:] if ln.strip())[:300]
                print(f"{r.key}: {exc}", file=sys.stderr, flush=True)
                continue
            tfile = work / "logs" / f"{r.key}-{i}.time"
            if "terminated by signal" in tfile.read_text():
                # GNU time says "Exit status: 0" for a killed command: not a run
                r.skip = "failed: killed (" + next(
                    ln.strip() for ln in tfile.read_text().splitlines()
                    if "terminated by signal" in ln) + f" after {m.wall_s:.0f} s)"
                print(f"{r.key}: {r.skip}", file=sys.stderr, flush=True)
                continue
            r.runs.append(m)
            r.score = {}  # a new artifact: score it again
            save_record(r, ctx, settings)
            if r.tool == "quantport":
                shutil.rmtree(run_env["QUANTPORT_CACHE"], ignore_errors=True)
            print(f"run {i} {r.key}: wall {m.wall_s:.1f} s, peak RSS {m.maxrss / MIB:.0f} MiB",
                  file=sys.stderr, flush=True)
            if i == runs - 1:
                score_row(r)  # scored once, as soon as its artifact is final
    for r in rows:  # rows measured by a resumed run but not scored yet
        if not r.skip and r.runs and not r.score:
            score_row(r)
    fp32_ppl = next((r.score["ppl_reference"] for r in rows
                     if r.score.get("ppl_reference")), None)

    by_key = {r.key: r for r in rows}
    layout_notes: dict[str, str] = {}
    c = by_key.get("gguf-lc-imat")
    for key in ("gguf-gptq", "gguf-gptaq"):
        g = by_key.get(key)
        if not (g and c and not g.skip and not c.skip and g.score):
            continue
        lg, lc = gguf_layout(artifact_file(g, ctx)), gguf_layout(artifact_file(c, ctx))
        diff = [n for n in lc if lg.get(n) != lc[n]] + [n for n in lg if n not in lc]
        sg, sc = g.score["_size"], c.score["_size"]
        # the tensor data is what the preset sizes; the header differs by the recipe text
        # quantport records (`quantport.recipe`, which llama.cpp copies from its F32 input)
        dg, dc = tensor_bytes(artifact_file(g, ctx)), tensor_bytes(artifact_file(c, ctx))
        layout_notes[key] = (f"{'met' if not diff and dg == dc else '**not met**'} "
                             f"({len(lc) - len(diff)}/{len(lc)} tensors of the same type; "
                             f"tensor data {dg} vs {dc} bytes; whole file {sg} vs {sc} bytes, "
                             "the difference in the metadata header)")
        print(f"GGUF {key} vs llama.cpp layout: {layout_notes[key]}", file=sys.stderr,
              flush=True)
    a = by_key.get("gguf-ar")
    if a and c and not a.skip and not c.skip and a.score:
        la, lc = gguf_layout(artifact_file(a, ctx)), gguf_layout(artifact_file(c, ctx))
        same = sum(la.get(n) == t for n, t in lc.items())
        if same != len(lc) or a.score["_size"] != c.score["_size"]:
            a.note = (f"{same}/{len(lc)} tensors of llama.cpp's types, "
                      f"{a.score['_size'] - c.score['_size']:+d} bytes")

    body = [args.note, ""] if args.note else []
    load = os.getloadavg()[0]
    body += [
        f"Measured {time.strftime('%Y-%m-%d %H:%M')} on {platform.machine()}, "
        f"{os.cpu_count()} cores; {src_desc()}; load average {load:.1f} at the end "
        f"(other work ran on the machine if it is above {args.threads}: wall times are then "
        f"inflated, and ratios between rows are what to read). Model: SmolLM2-135M-Instruct, "
        f"the fp32 HF directory `default_model()` (its weights sit on a Q4_1 grid). "
        f"Calibration, every tool: the same {ctx.samples} windows x {ctx.length} tokens of "
        f"`valid.tokens.txt`. Threads: {args.threads} for every tool. Evaluation, every row: "
        f"`quantport validate ART --against SRC --windows {n_win} --ctx {args.ctx}` "
        f"({n_win} windows x {args.ctx} tokens of `wiki.test.raw`, second half of each scored), "
        f"each artifact run in its runtime (transformers for compressed-tensors, llama.cpp "
        f"for GGUF) against the fp32 source in transformers (so a GGUF's KLD also holds "
        f"llama.cpp's own kernel noise, and is not comparable with the section above that "
        f"scores against the F32 GGUF in llama.cpp)"
        + (f"; fp32 PPL {fp32_ppl:.4f}." if fp32_ppl else "."),
        "",
        "| method | tool | format | file MiB | wall s | peak RSS MiB | PPL | KLD | top-1 | note |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *[fmt_row(r) for r in rows],
        "",
        f"Wall and peak RSS: medians of each row's runs ({_run_counts(rows)}), rows "
        "alternating (forward order, then backward), each a whole process under "
        "`/usr/bin/time -v` (peak RSS: the "
        "largest single process). File MiB: the GGUF file, or the checkpoint's .safetensors "
        "files. quantport rows: `quantport convert SRC ... --threads N` (calibrated rows with "
        f"`--calib valid.tokens.txt --calib-samples {ctx.samples} --calib-len {ctx.length}`), "
        "every run with an empty `$QUANTPORT_CACHE` (no calibration statistics cached). "
        "llama.cpp: `llama_model_quantize` (nthread=N, llama-cpp-python 0.3.36) on the model "
        "as an F32 GGUF written by quantport (untimed), with the importance matrix that "
        "quantport's RTN + imatrix row saved (`--save-imatrix`): llama-imatrix is not built "
        "here, so its wall time is the quantize step alone and the imatrix's cost is in "
        "quantport's RTN + imatrix row. llm-compressor: `oneshot` with `GPTQModifier` (W4A16 "
        "built with group_size 64, symmetric, actorder static, block 128, damp 0.01, "
        "lm_head ignored) on CPU, the calibration windows given as token ids, saved "
        "compressed. auto-round: `AutoRound(iters=0)` then `quantize_and_save(format="
        "\"gguf:q4_k_m\")` on CPU.",
        "",
    ]
    if VERSIONS:
        body += ["Versions in the tools' own venvs (`.cache/bench-venvs/`): "
                 + "; ".join(f"{k}: {v}" for k, v in VERSIONS.items()) + ".", ""]
    body += ["Every run (wall s / CPU s, user + sys / peak RSS MiB):", ""]
    for r in rows:
        if r.runs:
            body.append(f"- {r.key}: " + ", ".join(
                f"{m.wall_s:.1f}/{m.user_s + m.sys_s:.0f}/{m.maxrss / MIB:.0f}" for m in r.runs))
    body.append("")
    body += judge(by_key, layout_notes)
    print("\n".join([HEADING, "", *body]))
    (work / "result.json").write_text(json.dumps(
        {r.key: {"skip": r.skip, "walls": [m.wall_s for m in r.runs],
                 "rss": [m.maxrss for m in r.runs],
                 "score": {k: v for k, v in r.score.items() if k in (
                     "ppl", "ppl_reference", "kld_mean", "top1_agreement", "correct",
                     "n_tokens_scored", "_size", "error", "exit_code", "cosine_mean",
                     "cosine_min")}}
         for r in rows}, indent=1))
    if write:
        update_section(args.out, HEADING, body)
        print(f"wrote the section into {args.out}", file=sys.stderr)
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
