"""quantport at 7B scale vs llama.cpp's own route, whole processes under ``/usr/bin/time -v``.

1. Writes a synthetic checkpoint with Llama-2-7B's shapes (hidden 4096, intermediate 11008,
   32 heads, no GQA, untied lm_head, ``--layers`` blocks, default 32): random bf16 weights
   generated with numpy a chunk at a time (never a whole tensor in memory), sharded like
   ``save_pretrained`` (``model-0000k-of-0000n.safetensors`` of at most ``--shard-gb`` GB +
   ``model.safetensors.index.json``), ``config.json``, and the default model's tokenizer files
   (SmolLM2's byte-level BPE). That tokenizer has 49152 tokens, so ``vocab_size`` and the
   embedding / lm_head shapes are 49152 x 4096 instead of Llama-2's 32000 x 4096 (6.88 B
   weights, 13.8 GB, instead of 6.74 B). Nothing is downloaded.
2. Checks the free disk space first and refuses, saying how much is needed.
3. ``--runs`` times, the jobs alternating, each a fresh process:
   (a) ``quantport convert CKPT --to gguf --quant Q4_K_M``;
   (b) ``quantport convert CKPT --to safetensors --quant w4-g128-sym``;
   (c) llama.cpp's route for the GGUF job: ``convert_hf_to_gguf.py CKPT --outtype bf16`` (from
       the llama-cpp-python 0.3.36 source distribution, its own gguf-py on PYTHONPATH), then
       ``llama_model_quantize`` to Q4_K_M (nthread=2) from a minimal Python process through
       llama-cpp-python (the wheel has no ``llama-quantize`` binary).
4. Compares (a)'s and (c)'s GGUF tensor by tensor (type, shape, bytes) and writes a section of
   BENCHMARKS.md with the targets judged from the run's own numbers.

Usage:
    python benchmarks/scale.py [--layers 32] [--runs 3] [--workdir DIR] [--keep]
    python benchmarks/scale.py --layers 2 --runs 1 --no-write     # smoke test
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import convert_memory  # noqa: E402
from convert_memory import (  # noqa: E402
    GIB,
    LLAMA_QUANTIZE,
    MIB,
    PY,
    QUANTPORT,
    ROOT,
    Measured,
    identical_tensors,
    import_src,
    measure,
    median,
    qp_env,
    src_desc,
    update_section,
    verdict,
)

LCP_VERSION = "0.3.36"
HIDDEN, INTER, HEADS = 4096, 11008, 32
SHARD_BYTES = 5 * 10**9  # transformers' default max_shard_size "5GB"
CHUNK = 16 << 20  # weights generated at once
RSS_TARGET = 2 * GIB
WALL_TARGET = 0.7
HEADING = "## At 7B scale: quantport vs llama.cpp's route (`benchmarks/scale.py`)"


# ------------------------------------------------------------------------------------------
# the synthetic checkpoint
# ------------------------------------------------------------------------------------------


def tensor_shapes(layers: int, vocab: int) -> list[tuple[str, tuple[int, ...]]]:
    """HF names and shapes in ``LlamaForCausalLM.state_dict()`` order."""
    out: list[tuple[str, tuple[int, ...]]] = [("model.embed_tokens.weight", (vocab, HIDDEN))]
    for i in range(layers):
        p = f"model.layers.{i}."
        out += [
            (p + "self_attn.q_proj.weight", (HIDDEN, HIDDEN)),
            (p + "self_attn.k_proj.weight", (HIDDEN, HIDDEN)),
            (p + "self_attn.v_proj.weight", (HIDDEN, HIDDEN)),
            (p + "self_attn.o_proj.weight", (HIDDEN, HIDDEN)),
            (p + "mlp.gate_proj.weight", (INTER, HIDDEN)),
            (p + "mlp.up_proj.weight", (INTER, HIDDEN)),
            (p + "mlp.down_proj.weight", (HIDDEN, INTER)),
            (p + "input_layernorm.weight", (HIDDEN,)),
            (p + "post_attention_layernorm.weight", (HIDDEN,)),
        ]
    out += [("model.norm.weight", (HIDDEN,)), ("lm_head.weight", (vocab, HIDDEN))]
    return out


def shard_plan(shapes: list[tuple[str, tuple[int, ...]]], max_bytes: int) -> list[list[int]]:
    """Tensor indices per shard, as huggingface_hub's split_torch_state_dict_into_shards: a new
    shard starts when the next tensor would overflow the current one."""
    shards: list[list[int]] = [[]]
    size = 0
    for i, (_, shape) in enumerate(shapes):
        nb = 2 * int(np.prod(shape))
        if shards[-1] and size + nb > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(i)
        size += nb
    return shards


def _header(names: list[str], shapes: list[tuple[int, ...]]) -> bytes:
    h: dict = {"__metadata__": {"format": "pt"}}
    off = 0
    for n, s in zip(names, shapes, strict=True):
        nb = 2 * int(np.prod(s))
        h[n] = {"dtype": "BF16", "shape": list(s), "data_offsets": [off, off + nb]}
        off += nb
    raw = json.dumps(h, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned, as safetensors writes
    return len(raw).to_bytes(8, "little") + raw


def _fill(f, name: str, shape: tuple[int, ...]) -> None:
    """Random bf16 weights, written a chunk at a time: normal(0, 0.02) for matrices (Llama-2's
    initializer range), 1 + normal(0, 0.02) for the norms; bf16 = the float32's top half."""
    seed = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little")
    rng = np.random.default_rng(seed)
    n = int(np.prod(shape))
    is_norm = len(shape) == 1
    done = 0
    while done < n:
        k = min(CHUNK, n - done)
        x = rng.standard_normal(k, dtype=np.float32)
        x *= np.float32(0.02)
        if is_norm:
            x += np.float32(1.0)
        f.write((x.view(np.uint32) >> 16).astype(np.uint16).tobytes())
        done += k


def checkpoint_bytes(layers: int, vocab: int) -> int:
    return sum(2 * int(np.prod(s)) for _, s in tensor_shapes(layers, vocab))


def config(layers: int, vocab: int, tok_config: dict) -> dict:
    return {
        "architectures": ["LlamaForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": tok_config.get("bos_token_id", 1),
        "eos_token_id": tok_config.get("eos_token_id", 2),
        "hidden_act": "silu",
        "hidden_size": HIDDEN,
        "initializer_range": 0.02,
        "intermediate_size": INTER,
        "max_position_embeddings": 4096,
        "mlp_bias": False,
        "model_type": "llama",
        "num_attention_heads": HEADS,
        "num_hidden_layers": layers,
        "num_key_value_heads": HEADS,
        "pretraining_tp": 1,
        "rms_norm_eps": 1e-05,
        "rope_scaling": None,
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "use_cache": True,
        "vocab_size": vocab,
    }


def write_checkpoint(d: Path, layers: int, vocab: int, tok_dir: Path) -> None:
    """Write the synthetic checkpoint into ``d`` (a fresh directory)."""
    shapes = tensor_shapes(layers, vocab)
    plan = shard_plan(shapes, SHARD_BYTES)
    d.mkdir(parents=True, exist_ok=True)
    weight_map: dict[str, str] = {}
    t0 = time.perf_counter()
    for k, idx in enumerate(plan, 1):
        fname = f"model-{k:05d}-of-{len(plan):05d}.safetensors"
        names = [shapes[i][0] for i in idx]
        with open(d / (fname + ".part"), "wb") as f:
            f.write(_header(names, [shapes[i][1] for i in idx]))
            for i in idx:
                _fill(f, *shapes[i])
                weight_map[shapes[i][0]] = fname
        os.replace(d / (fname + ".part"), d / fname)
        print(f"  wrote {fname} ({(d / fname).stat().st_size / GIB:.2f} GiB, "
              f"{time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
    index = {"metadata": {"total_size": checkpoint_bytes(layers, vocab)},
             "weight_map": dict(sorted(weight_map.items()))}
    (d / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    src_cfg = json.loads((tok_dir / "config.json").read_text())
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                 "generation_config.json"):
        if (tok_dir / name).is_file():
            shutil.copyfile(tok_dir / name, d / name)
    # config.json last: its presence marks a complete checkpoint
    (d / "config.json").write_text(json.dumps(config(layers, vocab, src_cfg), indent=2) + "\n")


def checkpoint_ok(d: Path, layers: int, vocab: int) -> bool:
    """A complete checkpoint of these shapes is already there (``--keep`` from an earlier run)."""
    try:
        cfg = json.loads((d / "config.json").read_text())
        index = json.loads((d / "model.safetensors.index.json").read_text())
    except (OSError, ValueError):
        return False
    if cfg.get("num_hidden_layers") != layers or cfg.get("vocab_size") != vocab:
        return False
    shards = set(index["weight_map"].values())
    return all((d / s).is_file() for s in shards) and index["metadata"]["total_size"] == \
        checkpoint_bytes(layers, vocab)


def tokenizer_vocab(tok_dir: Path) -> int:
    tok = json.loads((tok_dir / "tokenizer.json").read_text())
    ids = list(tok["model"]["vocab"].values()) + [a["id"] for a in tok.get("added_tokens", [])]
    return max(ids) + 1


# ------------------------------------------------------------------------------------------
# llama.cpp's converter
# ------------------------------------------------------------------------------------------


def llama_cpp_tree(given: Path | None) -> Path:
    """The vendored llama.cpp tree of the llama-cpp-python sdist (holds convert_hf_to_gguf.py
    and gguf-py); downloaded with pip into .cache/ on first use."""
    if given is not None:
        for cand in (given, given / "vendor" / "llama.cpp"):
            if (cand / "convert_hf_to_gguf.py").is_file():
                return cand
        sys.exit(f"--llamacpp-src {given}: no convert_hf_to_gguf.py there or in vendor/llama.cpp")
    base = ROOT / ".cache" / f"llama-cpp-python-{LCP_VERSION}-src"
    tree = base / f"llama_cpp_python-{LCP_VERSION}" / "vendor" / "llama.cpp"
    if (tree / "convert_hf_to_gguf.py").is_file():
        return tree
    base.mkdir(parents=True, exist_ok=True)
    sdist = base / f"llama_cpp_python-{LCP_VERSION}.tar.gz"
    if not sdist.is_file():
        print(f"downloading the llama-cpp-python {LCP_VERSION} source distribution into {base}",
              file=sys.stderr, flush=True)
        subprocess.run([PY, "-m", "pip", "download", f"llama-cpp-python=={LCP_VERSION}",
                        "--no-deps", "--no-binary", ":all:", "-d",
                        str(base)], check=True)
    with tarfile.open(sdist) as tf:
        tf.extractall(base, filter="data")
    if not (tree / "convert_hf_to_gguf.py").is_file():
        sys.exit(f"{sdist}: no vendor/llama.cpp/convert_hf_to_gguf.py inside")
    return tree


# what convert_hf_to_gguf.py (+ conversion/, gguf-py) imports for a llama checkpoint
CONVERTER_IMPORTS = ("torch", "numpy", "transformers", "sentencepiece", "yaml", "tqdm",
                     "requests", "safetensors")


def converter_env(tree: Path, deps: Path, install: bool) -> tuple[dict[str, str], list[str]]:
    """Environment for convert_hf_to_gguf.py: its own gguf-py first on PYTHONPATH. Returns the
    environment and notes about its dependencies."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    paths = [str(tree / "gguf-py"), str(tree)]
    if deps.is_dir():
        paths.append(str(deps))
    env["PYTHONPATH"] = os.pathsep.join(paths)
    notes = []

    def missing() -> list[str]:
        code = ("import importlib.util, sys; print(' '.join(m for m in sys.argv[1:] "
                "if importlib.util.find_spec(m) is None))")
        r = subprocess.run([PY, "-c", code, *CONVERTER_IMPORTS], env=env, capture_output=True,
                           text=True, check=True)
        return r.stdout.split()

    gone = missing()
    if gone and install:
        # llama.cpp's requirements/requirements-convert_legacy_llama.txt range
        spec = {"sentencepiece": "sentencepiece>=0.1.98,<0.3.0"}
        print(f"installing {', '.join(gone)} for convert_hf_to_gguf.py into {deps} "
              "(pip --target; the project's .venv is left as it is)", file=sys.stderr,
              flush=True)
        subprocess.run([PY, "-m", "pip", "install", "--quiet", "--target", str(deps),
                        *[spec.get(m, m) for m in gone]], check=True)
        env["PYTHONPATH"] = os.pathsep.join([*paths[:2], str(deps)])
        notes.append(f"installed for the converter only (pip --target): {', '.join(gone)}")
        gone = missing()
    if gone:
        raise SystemExit(
            f"convert_hf_to_gguf.py needs {', '.join(gone)}, which {PY} cannot import. "
            "(sentencepiece: conversion/base.py imports it before it looks for tokenizer.model, "
            "so even a BPE checkpoint fails without it.) Re-run with --install-missing to "
            f"pip-install it into {deps} for the converter only.")
    vers = subprocess.run([PY, "-c", "import torch, transformers, gguf; print(torch.__version__, "
                           "transformers.__version__, gguf.__file__)"], env=env,
                          capture_output=True, text=True, check=True).stdout.split()
    notes.append(f"converter ran with torch {vers[0]}, transformers {vers[1]} (llama.cpp's "
                 f"requirements pin torch 2.11.0, transformers 4.57.6), gguf-py from "
                 f"{Path(vers[2]).parent.parent.name}/ of the sdist")
    return env, notes


# ------------------------------------------------------------------------------------------
# the benchmark
# ------------------------------------------------------------------------------------------


def _rm(p: Path) -> None:
    if p.is_dir():
        shutil.rmtree(p)
    elif p.exists():
        p.unlink()


def _tree_bytes(p: Path) -> int:
    if p.is_file():
        return p.stat().st_size
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--layers", type=int, default=32, help="transformer blocks (Llama-2-7B: 32)")
    ap.add_argument("--vocab", type=int, help="vocabulary rows (default: the tokenizer's, 49152; "
                    "a smaller one makes token ids beyond it invalid, fine for quantizing)")
    ap.add_argument("--runs", type=int, default=3, help="runs of every job, alternating")
    ap.add_argument("--workdir", type=Path, help="where the checkpoint and the outputs go "
                    "(default: $TMPDIR/quantport-bench-scale-L<layers>)")
    ap.add_argument("--keep", action="store_true", help="keep the checkpoint (reused by the "
                    "next run with the same --workdir and shapes) and the outputs")
    ap.add_argument("--jobs", default="gguf,safetensors,llamacpp",
                    help="comma-separated subset of gguf,safetensors,llamacpp")
    ap.add_argument("--llamacpp-src", type=Path, help="llama-cpp-python sdist tree or its "
                    "vendor/llama.cpp (default: downloaded into .cache/ with pip)")
    ap.add_argument("--install-missing", action="store_true", help="pip-install modules "
                    "convert_hf_to_gguf.py needs and the venv lacks (sentencepiece) into "
                    ".cache/, for the converter only")
    ap.add_argument("--drop-caches", action="store_true", help="sync and drop the page cache "
                    "before every job (root; slows everyone on the machine)")
    ap.add_argument("--interval", type=float, default=0.25, help="process-tree sampling, s")
    ap.add_argument("--out", type=Path, default=ROOT / "BENCHMARKS.md")
    ap.add_argument("--no-write", action="store_true", help="print only; leave --out alone")
    ap.add_argument("--note", help="a line to put at the top of the section")
    ap.add_argument("--src", type=Path, help="measure the quantport of this source tree (a "
                    "directory holding quantport/, put first on PYTHONPATH); default: the "
                    "installed one")
    args = ap.parse_args()
    convert_memory.SRC = args.src.resolve() if args.src else None
    jobs = set(args.jobs.split(","))
    if not Path("/usr/bin/time").exists():
        sys.exit("/usr/bin/time is needed (apt-get install time)")

    env = qp_env()
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    import_src()
    os.environ.setdefault("QUANTPORT_CACHE", env["QUANTPORT_CACHE"])
    from quantport.models import default_model

    tok_dir = default_model()
    vocab = args.vocab or tokenizer_vocab(tok_dir)
    work = args.workdir or Path(tempfile.gettempdir()) / f"quantport-bench-scale-L{args.layers}"
    work.mkdir(parents=True, exist_ok=True)
    ckpt = work / "checkpoint"
    logs = work / "logs"
    qp_gguf, qp_st = work / "qp-Q4_K_M.gguf", work / "qp-w4-g128-sym"
    lc_bf16, lc_gguf = work / "lc-bf16.gguf", work / "lc-Q4_K_M.gguf"

    # ---- disk space, before anything is written
    ck_bytes = checkpoint_bytes(args.layers, vocab)
    have_ckpt = checkpoint_ok(ckpt, args.layers, vocab)
    n_weights = ck_bytes // 2
    emb = 2 * vocab * HIDDEN  # embedding + lm_head weights
    # upper bounds: Q4_K_M is at most Q6_K's 6.5625 bits a weight; w4-g128 4 bits + a 16-bit
    # scale per 128, with the embedding and lm_head possibly left in bf16
    need = {
        "checkpoint": 0 if have_ckpt else ck_bytes,
        "quantport Q4_K_M GGUF": int(n_weights * 6.5625 / 8) if "gguf" in jobs else 0,
        "quantport w4-g128-sym": int((n_weights - emb) * 4.125 / 8 + 2 * emb)
        if "safetensors" in jobs else 0,
        "llama.cpp BF16 GGUF": ck_bytes if "llamacpp" in jobs else 0,
        "llama.cpp Q4_K_M GGUF": int(n_weights * 6.5625 / 8) if "llamacpp" in jobs else 0,
    }
    margin = 2 * GIB
    total_need = sum(need.values()) + margin
    old = sum(_tree_bytes(p) for p in (qp_gguf, qp_st, lc_bf16, lc_gguf) if p.exists())
    free = shutil.disk_usage(work).free + old
    print(f"synthetic checkpoint: {args.layers} layers, vocab {vocab}, "
          f"{n_weights / 1e9:.2f} B weights, {ck_bytes / GIB:.2f} GiB "
          f"({'already there' if have_ckpt else 'to write'}); disk needed "
          f"{total_need / GIB:.1f} GiB, free {free / GIB:.1f} GiB in {work}", file=sys.stderr,
          flush=True)
    if free < total_need:
        detail = ", ".join(f"{k} {v / GIB:.1f} GiB" for k, v in need.items() if v)
        sys.exit(f"not enough free disk space in {work}: {total_need / GIB:.1f} GiB needed "
                 f"({detail}, + {margin / GIB:.0f} GiB margin), {free / GIB:.1f} GiB free. "
                 "Free some space or pass --workdir on a larger disk (or --layers N for a "
                 "smaller model).")

    notes: list[str] = []
    tree = lc_env = None
    if "llamacpp" in jobs:
        tree = llama_cpp_tree(args.llamacpp_src)
        lc_env, notes = converter_env(tree, ROOT / ".cache" / f"llama-cpp-python-{LCP_VERSION}-src" / "converter-deps", args.install_missing)

    if not have_ckpt:
        _rm(ckpt)
        print(f"writing the synthetic checkpoint into {ckpt}", file=sys.stderr, flush=True)
        t = time.perf_counter()
        write_checkpoint(ckpt, args.layers, vocab, tok_dir)
        print(f"  done in {time.perf_counter() - t:.0f} s", file=sys.stderr, flush=True)
    shards = sorted(p.name for p in ckpt.glob("model-*.safetensors"))

    def settle() -> None:
        subprocess.run(["sync"], check=True)
        if args.drop_caches:
            Path("/proc/sys/vm/drop_caches").write_text("3\n")

    # ---- the jobs
    def job_gguf() -> list[Measured]:
        _rm(qp_gguf)
        settle()
        return [measure("qp-gguf", [QUANTPORT, "convert", str(ckpt), "--to", "gguf", "--quant",
                                    "Q4_K_M", "-o", str(qp_gguf), "--force"], env=env,
                        log_dir=logs, interval=args.interval)]

    def job_st() -> list[Measured]:
        _rm(qp_st)
        settle()
        return [measure("qp-safetensors", [QUANTPORT, "convert", str(ckpt), "--to",
                                           "safetensors", "--quant", "w4-g128-sym", "-o",
                                           str(qp_st), "--force"], env=env, log_dir=logs,
                        interval=args.interval)]

    def job_lc() -> list[Measured]:
        assert tree is not None and lc_env is not None
        _rm(lc_bf16)
        _rm(lc_gguf)
        settle()
        conv = measure("lc-convert", [PY, str(tree / "convert_hf_to_gguf.py"), str(ckpt),
                                      "--outtype", "bf16", "--outfile", str(lc_bf16)],
                       env=lc_env, log_dir=logs, interval=args.interval)
        settle()
        quant = measure("lc-quantize", [PY, "-c", LLAMA_QUANTIZE, str(lc_bf16), str(lc_gguf),
                                        "Q4_K_M", "2"], env=env, log_dir=logs,
                        interval=args.interval)
        return [conv, quant]

    table = {"gguf": job_gguf, "safetensors": job_st, "llamacpp": job_lc}
    order = [j for j in ("gguf", "safetensors", "llamacpp") if j in jobs]
    results: dict[str, list[list[Measured]]] = {j: [] for j in order}
    for i in range(args.runs):
        for j in order if i % 2 == 0 else order[::-1]:
            try:
                ms = table[j]()
            except RuntimeError as exc:  # a failed process: say which and stop
                sys.exit(f"run {i}, job {j}: {exc}")
            results[j].append(ms)
            for m in ms:
                print(f"run {i} {m.label}: wall {m.wall_s:.1f} s, peak RSS "
                      f"{m.maxrss / MIB:.0f} MiB (tree RSS {m.tree_rss / MIB:.0f}, tree PSS "
                      f"{m.tree_pss / MIB:.0f} MiB, {m.max_procs} processes)", file=sys.stderr,
                      flush=True)

    same = total = 0
    differ: list[str] = []
    if "gguf" in jobs and "llamacpp" in jobs:
        same, total, differ = identical_tensors(qp_gguf, lc_gguf)
        print(f"identical tensors: {same}/{total}" + (f"; differ: {differ[:8]}" if differ
                                                        else ""), file=sys.stderr, flush=True)

    # ---- the section
    def med(j: str, k: int, attr: str) -> float:
        return median([getattr(r[k], attr) for r in results[j]])

    def sum_med(j: str, attr: str) -> float:
        return median([sum(getattr(m, attr) for m in r) for r in results[j]])

    def max_med(j: str, attr: str) -> float:
        return median([max(getattr(m, attr) for m in r) for r in results[j]])

    sizes = {"gguf": qp_gguf, "safetensors": qp_st, "llamacpp": lc_gguf}
    rows = []
    labels = {"gguf": "quantport -> Q4_K_M GGUF", "safetensors": "quantport -> w4-g128-sym "
              "safetensors", "llamacpp": "llama.cpp: convert_hf_to_gguf.py (bf16) + "
              "llama_model_quantize (Q4_K_M)"}
    for j in order:
        out_size = _tree_bytes(sizes[j]) if sizes[j].exists() else 0
        rows.append(f"| {labels[j]} | {max_med(j, 'maxrss') / MIB:.0f} | "
                    f"{max_med(j, 'tree_pss') / MIB:.0f} | {sum_med(j, 'wall_s'):.1f} | "
                    f"{sum_med(j, 'user_s') + sum_med(j, 'sys_s'):.1f} | "
                    f"{out_size / GIB:.2f} |")
        if j == "llamacpp":
            for k, what in ((0, "convert_hf_to_gguf.py --outtype bf16"),
                            (1, "llama_model_quantize Q4_K_M")):
                rows.append(f"| &nbsp;&nbsp;of which {what} | {med(j, k, 'maxrss') / MIB:.0f} "
                            f"| {med(j, k, 'tree_pss') / MIB:.0f} | "
                            f"{med(j, k, 'wall_s'):.1f} | "
                            f"{med(j, k, 'user_s') + med(j, k, 'sys_s'):.1f} | "
                            f"{(_tree_bytes(lc_bf16) if k == 0 and lc_bf16.exists() else 0) / GIB:.2f} |"
                            if k == 0 else
                            f"| &nbsp;&nbsp;of which {what} | {med(j, k, 'maxrss') / MIB:.0f} "
                            f"| {med(j, k, 'tree_pss') / MIB:.0f} | "
                            f"{med(j, k, 'wall_s'):.1f} | "
                            f"{med(j, k, 'user_s') + med(j, k, 'sys_s'):.1f} | |")
    scale = "Llama-2-7B's shapes" if args.layers == 32 else \
        f"Llama-2-7B's per-layer shapes with {args.layers} of its 32 layers"
    body = []
    if args.note:
        body += [args.note, ""]
    body += [
        f"Measured {time.strftime('%Y-%m-%d %H:%M')} on {platform.machine()}, "
        f"{os.cpu_count()} cores, {os.sysconf('SC_PHYS_PAGES') * os.sysconf('SC_PAGE_SIZE') / GIB:.0f} GiB RAM; "
        f"{args.runs} run(s) of each job, alternating; every step a fresh process under "
        f"`/usr/bin/time -v`, `sync` (untimed) before each; {src_desc()}"
        f"{' and the page cache dropped' if args.drop_caches else ''}. Checkpoint: synthetic, "
        f"{scale} (hidden 4096, intermediate 11008, 32 heads, untied lm_head), vocabulary "
        f"{vocab} (SmolLM2's tokenizer, so 49152 x 4096 embedding and lm_head instead of "
        f"Llama-2's 32000), random bf16 weights; {n_weights / 1e9:.2f} B weights, "
        f"{ck_bytes / GIB:.2f} GiB in {len(shards)} shard(s).",
        "",
        "| job | peak RSS MiB (time -v) | tree PSS MiB | wall s | user+sys s | output GiB |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
        "Medians over the runs. Peak RSS is `/usr/bin/time -v`'s maximum resident set size: the "
        "largest single process (quantport's forked workers are not added up); tree PSS is the "
        "sampled peak of the whole process tree's summed PSS. llama.cpp's route has no "
        "`llama-quantize` binary in the llama-cpp-python wheel: its quantize step is "
        "`llama_model_quantize` (nthread=2) called from a minimal Python process; its row sums "
        "the two steps' wall and CPU time and takes the larger RSS.",
    ]
    if notes:
        body += ["", *[f"- {n}." for n in notes]]
    body += ["", "Every run, wall s / peak RSS MiB:", ""]
    for j in order:
        body.append(f"- {j}: " + "; ".join(
            " + ".join(f"{m.wall_s:.1f}/{m.maxrss / MIB:.0f}" for m in r) for r in results[j]))
    body += ["", "### Against the targets", ""]
    for j in ("gguf", "safetensors"):
        if j in order:
            rss = max_med(j, "maxrss")
            body.append(f"- Peak RSS of quantport's {'GGUF' if j == 'gguf' else 'safetensors'} "
                        f"job at most 2 GiB: {verdict(rss <= RSS_TARGET)} "
                        f"({rss / MIB:.0f} MiB; tree PSS {max_med(j, 'tree_pss') / MIB:.0f} MiB).")
    if "gguf" in order and "llamacpp" in order:
        qw, lw = sum_med("gguf", "wall_s"), sum_med("llamacpp", "wall_s")
        body.append(f"- quantport's GGUF wall time at most {WALL_TARGET}x llama.cpp's route "
                    f"(convert + quantize): {verdict(qw <= WALL_TARGET * lw)} ({qw:.1f} s vs "
                    f"{lw:.1f} s, ratio {qw / lw:.2f}).")
        body.append(f"- Tensor bytes identical to llama.cpp's route: {verdict(same == total)} "
                    f"({same}/{total}"
                    + (f"; differ: {', '.join(differ[:6])}" if differ else "") + ").")
    body.append("")
    print("\n".join([HEADING, "", *body]))
    if not args.no_write:
        update_section(args.out, HEADING, body)
        print(f"wrote the section into {args.out}", file=sys.stderr)
    if not args.keep:
        for p in (qp_gguf, qp_st, lc_bf16, lc_gguf, ckpt):
            _rm(p)
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
