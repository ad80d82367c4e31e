"""Peak memory and wall time of a whole ``quantport convert`` process vs llama.cpp's quantizer.

The default model (SmolLM2-135M) is written once as an F32 GGUF (``quantport convert --to gguf
--quant F32``). Then, ``--runs`` times, alternating, each tool quantizes that file to Q4_K_M as a
user runs it, every run a fresh process under ``/usr/bin/time -v``:

* quantport: ``quantport convert F32.gguf --to gguf --quant Q4_K_M -o OUT --force``
* llama.cpp: a minimal Python process that calls ``llama_model_quantize`` through
  llama-cpp-python 0.3.36 (nthread=2), as ``tests/_llamacpp.py`` does. That is llama.cpp's
  route here: the llama-cpp-python wheel ships the library, not the ``llama-quantize`` binary,
  so llama.cpp's figure includes a Python interpreter with ``llama_cpp`` imported (measured
  separately below, as "baseline").

Peak RSS is ``/usr/bin/time -v``'s "Maximum resident set size": the largest single process of the
tree (quantport forks worker processes; their RSS is not added up). Wall and CPU times come from
these runs, which nothing else observes. A second set of ``--runs`` runs per tool samples the
whole process tree from /proc and reports the peak of the summed RSS and PSS (PSS shares pages
between the forked processes fairly, so it is the tree's real footprint); sampling slows the
sampled processes (quantport's three more than llama.cpp's one), so times are not taken there.

With ``--diagnose`` (the default) it then looks at where quantport's memory goes, in separate
processes: ``python -X importtime`` of the CLI run (which heavy packages are imported at all),
VmRSS/RssAnon/RssFile checkpoints after each import stage and during the conversion (parent and
workers), and tracemalloc's largest allocation sites at the peak of a one-process run
(``--threads 1``).

Usage: python benchmarks/convert_memory.py [--runs 5] [--out BENCHMARKS.md] [--no-write]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = ROOT / ".venv" / "bin"
PY = str(VENV_BIN / "python") if (VENV_BIN / "python").exists() else sys.executable
QUANTPORT = str(VENV_BIN / "quantport") if (VENV_BIN / "quantport").exists() else "quantport"
# the quantport source tree the processes import: the installed one (this checkout's src/, an
# editable install) unless --src names another (put first on PYTHONPATH)
SRC: Path | None = None
MIB = 1 << 20
GIB = 1 << 30
PAGE = os.sysconf("SC_PAGE_SIZE")

# llama.cpp's route: llama_model_quantize from llama-cpp-python, nothing else imported.
LLAMA_QUANTIZE = r"""
import ctypes, os, sys
import llama_cpp
src, dst, ftype, nthread = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
p = llama_cpp.llama_model_quantize_default_params()
p.nthread = nthread
p.ftype = getattr(llama_cpp, "LLAMA_FTYPE_MOSTLY_" + ftype)
rc = llama_cpp.llama_model_quantize(os.fsencode(src), os.fsencode(dst), ctypes.byref(p))
sys.exit(rc)
"""
LLAMA_IMPORT_ONLY = "import llama_cpp"


# ------------------------------------------------------------------------------------------
# measuring one process (shared with benchmarks/scale.py)
# ------------------------------------------------------------------------------------------


@dataclass
class Measured:
    """One process run under /usr/bin/time -v, plus the sampled peak of its whole tree."""

    label: str
    cmd: list[str]
    rc: int
    wall_s: float  # /usr/bin/time's elapsed wall clock
    maxrss: int  # bytes: /usr/bin/time's "Maximum resident set size" (largest single process)
    user_s: float
    sys_s: float
    tree_rss: int = 0  # bytes: peak of the summed RSS of every process in the tree (sampled)
    tree_pss: int = 0  # bytes: peak of the summed PSS (sampled)
    max_procs: int = 0  # most processes seen at once in the tree
    log: str = ""
    extra: dict = field(default_factory=dict)


def _children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat", "rb") as f:
                s = f.read()
        except OSError:
            continue
        # the command name may hold spaces and parentheses: the ppid follows the last ')'
        ppid = int(s[s.rindex(b")") + 2 :].split()[1])
        kids.setdefault(ppid, []).append(int(d))
    return kids


# /proc/PID/task/TID/children (CONFIG_PROC_CHILDREN) lists a thread's children: walking the
# tree through it reads a few files, where scanning every /proc/PID/stat took ~2.6 ms of CPU
# per sample (5% of a core at 50 ms, taken from the measured processes)
_CHILDREN_FILES = os.path.exists(f"/proc/self/task/{os.getpid()}/children")


def _tree(root: int) -> list[int]:
    kids = None if _CHILDREN_FILES else _children_map()
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        out.append(p)
        if kids is not None:
            todo += kids.get(p, [])
            continue
        try:
            for t in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{t}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except OSError:  # the process (or thread) is gone
            continue
    return out


def _rss_pss(pid: int, with_pss: bool) -> tuple[int, int]:
    try:
        with open(f"/proc/{pid}/statm") as f:
            rss = int(f.read().split()[1]) * PAGE
        pss = 0
        if with_pss:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        pss = int(line.split()[1]) * 1024
                        break
        return rss, pss
    except (OSError, ValueError, IndexError):
        return 0, 0


def _parse_time_v(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("Maximum resident set size (kbytes):"):
            out["maxrss"] = int(line.rsplit(":", 1)[1]) * 1024
        elif line.startswith("Elapsed (wall clock) time"):
            v = line.rsplit(" ", 1)[1]
            secs = 0.0
            for part in v.split(":"):
                secs = secs * 60 + float(part)
            out["wall"] = secs
        elif line.startswith("User time (seconds):"):
            out["user"] = float(line.rsplit(":", 1)[1])
        elif line.startswith("System time (seconds):"):
            out["sys"] = float(line.rsplit(":", 1)[1])
        elif line.startswith("Exit status:"):
            out["rc"] = int(line.rsplit(":", 1)[1])
    return out


def measure(label: str, cmd: list[str], *, env: dict[str, str] | None = None,
            interval: float | None = 0.1, with_pss: bool = True, log_dir: Path | None = None,
            check: bool = True) -> Measured:
    """Run ``cmd`` under ``/usr/bin/time -v`` and sample its process tree every ``interval`` s
    (``None``: not at all; tree_rss/tree_pss stay 0, and nothing else runs beside it)."""
    log_dir = log_dir or Path(tempfile.gettempdir())
    log_dir.mkdir(parents=True, exist_ok=True)
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", label)
    tfile = log_dir / f"{safe}.time"
    lfile = log_dir / f"{safe}.log"
    with open(lfile, "wb") as logf:
        p = subprocess.Popen(["/usr/bin/time", "-v", "-o", str(tfile), *cmd], stdout=logf,
                             stderr=subprocess.STDOUT, env=env)
        peak = {"rss": 0, "pss": 0, "procs": 0}
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                pids = [q for q in _tree(p.pid) if q != p.pid]  # not /usr/bin/time itself
                rss = pss = 0
                for q in pids:
                    r, s = _rss_pss(q, with_pss)
                    rss, pss = rss + r, pss + s
                peak["rss"] = max(peak["rss"], rss)
                peak["pss"] = max(peak["pss"], pss)
                peak["procs"] = max(peak["procs"], len(pids))
                stop.wait(interval)

        th = threading.Thread(target=sample, daemon=True)
        if interval is not None:
            th.start()
        p.wait()
        stop.set()
        if interval is not None:
            th.join()
    tv = _parse_time_v(tfile.read_text())
    text = lfile.read_text(errors="replace")
    m = Measured(label, cmd, int(tv.get("rc", p.returncode)), tv.get("wall", float("nan")),
                 int(tv.get("maxrss", 0)), tv.get("user", 0.0), tv.get("sys", 0.0),
                 peak["rss"], peak["pss"], peak["procs"], text)
    if check and m.rc != 0:
        raise RuntimeError(f"{label} failed with exit status {m.rc}: {' '.join(cmd)}\n"
                           f"--- last lines of its output ({lfile}) ---\n"
                           + "\n".join(text.splitlines()[-25:]))
    return m


def qp_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for a quantport process: --src first on PYTHONPATH when given."""
    env = dict(os.environ if base is None else base)
    env.setdefault("QUANTPORT_CACHE", str(ROOT / ".cache"))
    if SRC is not None:
        env["PYTHONPATH"] = os.pathsep.join(
            [str(SRC), *filter(None, [env.get("PYTHONPATH")])])
    return env


def src_desc() -> str:
    """Which quantport was measured: a --src tree, or the checkout's commit (+ dirty state)."""
    if SRC is not None:
        return f"quantport from {SRC}"
    r = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
                       capture_output=True, text=True)
    return f"quantport at {r.stdout.strip() or '?'} ({compiled_desc()})"


def compiled_desc() -> str:
    """Whether the measured quantport's k-quant searches are the compiled ones
    (``quant/_kq_search.c``, built at install) or numpy's."""
    code = ("from quantport.quant import _ggml_search as S; "
            "print('compiled k-quant searches' if S.COMPILED else 'numpy k-quant searches')")
    r = subprocess.run([PY, "-c", code], capture_output=True, text=True, env=qp_env())
    return r.stdout.strip() or "k-quant searches: unknown"


def compile_src() -> None:
    """Byte-compile the measured quantport, as pip does when it installs a package (llama_cpp's
    modules, and every other dependency's, were compiled at install). An editable install run
    with PYTHONDONTWRITEBYTECODE set (as in this sandbox) would otherwise compile all of
    quantport's ~100 modules again in every measured process (measured: ~0.2 s a run)."""
    tree = (SRC if SRC is not None else ROOT / "src") / "quantport"
    subprocess.run([PY, "-m", "compileall", "-q", str(tree)], check=True,
                   stdout=subprocess.DEVNULL)


def import_src() -> None:
    """Make this process import the measured quantport."""
    sys.path.insert(0, str(SRC if SRC is not None else ROOT / "src"))


def median(xs: list[float]) -> float:
    return float(statistics.median(xs))


def verdict(ok: bool) -> str:
    return "met" if ok else "**not met**"


def update_section(path: Path, heading: str, body: list[str]) -> None:
    """Replace the ``## heading`` section of ``path`` (up to the next ``## ``) or append it."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    lines = text.splitlines()
    new = [heading, "", *body]
    try:
        start = lines.index(heading)
    except ValueError:
        while lines and not lines[-1].strip():
            lines.pop()
        lines += ["", *new]
    else:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")),
                   len(lines))
        tail = lines[end:]
        lines = lines[:start] + new + ([""] if tail else []) + tail
    path.write_text("\n".join(lines).rstrip("\n") + "\n")


def identical_tensors(a: Path, b: Path) -> tuple[int, int, list[str]]:
    """Tensors with the same type, shape and bytes in both GGUF files; the names that differ."""
    import_src()
    from quantport.formats.gguf_file import scan_gguf

    sa, sb = scan_gguf(a), scan_gguf(b)
    ib = {t.name: t for t in sb.tensors}
    same, differ = 0, []
    with open(a, "rb") as fa, open(b, "rb") as fb:
        for t in sa.tensors:
            u = ib.get(t.name)
            if u is None or u.type_name != t.type_name or u.shape != t.shape:
                differ.append(f"{t.name} ({t.type_name} {t.shape} vs "
                              f"{'missing' if u is None else f'{u.type_name} {u.shape}'})")
                continue
            fa.seek(t.offset)
            fb.seek(u.offset)
            left, ok = t.nbytes, True
            while left and ok:
                n = min(left, 64 * MIB)
                ok = fa.read(n) == fb.read(n)
                left -= n
            if ok:
                same += 1
            else:
                differ.append(f"{t.name} ({t.type_name}: bytes differ)")
    extra = sorted(set(ib) - {t.name for t in sa.tensors})
    differ += [f"{n} (only in {b.name})" for n in extra]
    return same, len(sa.tensors), differ


# ------------------------------------------------------------------------------------------
# the diagnosis: where quantport's memory goes
# ------------------------------------------------------------------------------------------

# Runs in a fresh interpreter: import stages with VmRSS after each, then the conversion with a
# sampler of the parent's and the workers' VmRSS / RssAnon / RssFile.
_DIAG_STAGES = r"""
import json, os, sys, threading, time
def status(pid="self"):
    d = {}
    try:
        for line in open(f"/proc/{pid}/status"):
            k, _, v = line.partition(":")
            if k in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem"):
                d[k] = int(v.split()[0]) * 1024
    except OSError:
        pass
    return d
stages = [("python started", status())]
def stage(name, stmt):
    exec(stmt, globals())
    stages.append((name, status()))
stage("import numpy", "import numpy")
stage("import click", "import click")  # (the CLI draws its own progress bars: no tqdm)
stage("import quantport.cli.main (what `quantport` loads)", "import quantport.cli.main")
stage("convert's imports (writers.safetensors, models, _atomic)",
      "import quantport.writers.safetensors, quantport.models, quantport.formats._atomic")
stage("import quantport.writers.gguf", "import quantport.writers.gguf")
heavy = [m for m in ("torch", "transformers", "tokenizers", "safetensors", "gguf", "llama_cpp",
                     "onnx", "onnxruntime", "compressed_tensors", "scipy", "yaml", "requests",
                     "sentencepiece", "tqdm", "click") if m in sys.modules]
from quantport.models import open_source
src_path, out_path, preset, threads = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
stage("open_source(F32 GGUF)", "source = open_source(src_path)")
from quantport.pipeline import convert, make_recipe
samples = []
stop = threading.Event()
def children(pid):
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                s = open(f"/proc/{d}/stat", "rb").read()
            except OSError:
                continue
            if int(s[s.rindex(b")") + 2:].split()[1]) == pid:
                out.append(int(d))
    return out
def mapped_rss(pid, fname):
    total, hit = 0, False
    try:
        for line in open(f"/proc/{pid}/smaps"):
            if line[0] in "0123456789abcdef" and "-" in line.split()[0]:
                hit = line.rstrip().endswith(fname)
            elif hit and line.startswith("Rss:"):
                total += int(line.split()[1]) * 1024
    except OSError:
        pass
    return total
def sampler():
    t0 = time.perf_counter()
    me = os.getpid()
    n = 0
    fname = os.path.basename(src_path)
    while not stop.is_set():
        kids = []
        for c in children(me):
            st = status(c)
            if n % 5 == 0:
                st["SourceMapRss"] = mapped_rss(c, fname)
            kids.append(st)
        n += 1
        samples.append((time.perf_counter() - t0, status(), kids))
        stop.wait(0.02)
th = threading.Thread(target=sampler, daemon=True); th.start()
convert(source, make_recipe("gguf", preset), out_path, force=True, threads=threads)
stop.set(); th.join()
stages.append(("after convert", status()))
def peak(key, who):
    best = (0, None)
    for t, me, kids in samples:
        v = me.get(key, 0) if who == "parent" else max([k.get(key, 0) for k in kids] or [0])
        if v > best[0]:
            best = (v, t)
    return best
summary = {k + "_" + w: peak(k, w)[0] for k in ("VmRSS", "RssAnon", "RssFile", "SourceMapRss")
           for w in ("parent", "worker")}
summary["source_bytes"] = os.path.getsize(src_path)
summary["workers_seen"] = max((len(k) for _, _, k in samples), default=0)
# the parent's state at the moment its own VmRSS peaked
t_peak = peak("VmRSS", "parent")[1]
at = next((me for t, me, _ in samples if t == t_peak), {})
print(json.dumps({"stages": stages, "heavy_modules": heavy, "peaks": summary,
                  "parent_at_peak": at, "n_modules": len(sys.modules)}))
"""

# tracemalloc of a one-process conversion: the largest allocation sites at the traced peak.
_DIAG_TRACEMALLOC = r"""
import json, sys, tracemalloc
src_path, out_path, preset = sys.argv[1], sys.argv[2], sys.argv[3]
from quantport.models import open_source
from quantport.pipeline import convert, make_recipe
import quantport.pipeline.execute as ex
source = open_source(src_path)
tracemalloc.start(12)
best = {"peak": 0, "snap": None, "tensor": None}
orig = ex._run_task
def run_task(job, k):
    tracemalloc.reset_peak()
    out = orig(job, k)
    cur, pk = tracemalloc.get_traced_memory()
    if pk > best["peak"]:
        p = job.plan.rows[job.tasks[k].index]
        best.update(peak=pk, tensor=f"{p.name} {p.type_name} {p.shape}")
    return out
ex._run_task = run_task
convert(source, make_recipe("gguf", preset), out_path, force=True, threads=1)
# replay the tensor with the highest traced peak and snapshot at the end of its quantization
name = best["tensor"]
cur, overall = tracemalloc.get_traced_memory()
print(json.dumps({"peak_tensor": name, "peak_traced": best["peak"], "overall_peak": overall}))
"""

# the single tensor with the highest traced peak, quantized again (whole, not in row chunks)
# under tracemalloc, with a snapshot right after rounding, before packing
_DIAG_TENSOR = r"""
import json, sys, tracemalloc, linecache
src_path, tensor_name, preset = sys.argv[1], sys.argv[2], sys.argv[3]
from quantport.models import open_source
from quantport.pipeline import make_plan, make_recipe
from quantport.pipeline import execute as ex
from quantport.formats import gguf_blocks
import numpy as np
source = open_source(src_path)
plan = make_plan(source, make_recipe("gguf", preset))
row = next(r for r in plan.rows if r.name == tensor_name)
tracemalloc.start(12)
snaps = []
w = source.get(row.source)
rec = ex.round_tensor(w, row.target, name=row.name)
snaps.append(tracemalloc.take_snapshot())  # every temporary of the rounding is counted
out = gguf_blocks.pack(rec) if row.quantized else np.asarray(rec)
cur, peak = tracemalloc.get_traced_memory()
top = []
if snaps:
    stats = snaps[-1].statistics("lineno")
    for s in stats[:8]:
        fr = s.traceback[0]
        top.append([s.size, s.count, f"{fr.filename.split('src/')[-1]}:{fr.lineno}",
                    linecache.getline(fr.filename, fr.lineno).strip()[:90]])
print(json.dumps({"tensor": f"{row.name} {row.type_name} {list(row.shape)}", "weights":
                  int(np.prod(row.shape)), "peak_traced": peak, "at_pack": sum(s.size for s in
                  snaps[-1].statistics("filename")) if snaps else 0, "top_at_pack": top,
                  "out_bytes": int(np.asarray(out).nbytes)}))
"""


def diagnose(f32: Path, work: Path, threads: int) -> dict:
    env = qp_env()
    env["PYTHONPATH"] = str(SRC if SRC is not None else ROOT / "src")
    out: dict = {}
    # 1. what the CLI run imports (python -X importtime, the real command; at exit, which
    # heavy packages are in sys.modules)
    wrapper = ("import atexit, json, sys\n"
               "atexit.register(lambda: print('MODULES ' + json.dumps(sorted({m.split('.')[0] "
               "for m in sys.modules})), file=sys.stderr))\n"
               "from quantport.cli.main import cli\nsys.argv[0] = 'quantport'\ncli()\n")
    cmd = [PY, "-X", "importtime", "-c", wrapper,
           "convert", str(f32), "--to", "gguf", "--quant", "Q4_K_M", "-o",
           str(work / "diag.gguf"), "--force", "--quiet"]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"importtime run failed: {r.stderr[-2000:]}")
    cum: dict[str, float] = {}  # a package's own import, cumulative seconds
    loaded: list[str] = []
    for line in r.stderr.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|\s*(\S+)", line)
        if m and "." not in m.group(3):
            cum[m.group(3)] = max(cum.get(m.group(3), 0.0), int(m.group(2)) / 1e6)
        elif line.startswith("MODULES "):
            loaded = json.loads(line[8:])
    heavy = ("torch", "transformers", "tokenizers", "safetensors", "gguf", "llama_cpp", "onnx",
             "onnxruntime", "compressed_tensors", "scipy", "yaml", "requests", "sentencepiece",
             "tqdm", "click", "numpy", "huggingface_hub", "jinja2")
    out["cli_imports"] = [m for m in heavy if m in loaded]
    out["cli_not_imported"] = [m for m in ("torch", "transformers", "tokenizers", "safetensors",
                                           "onnxruntime", "compressed_tensors", "llama_cpp")
                               if m not in loaded]
    out["importtime_top"] = sorted(((k, v) for k, v in cum.items() if (k in heavy
                                    or k == "quantport") and v >= 0.005),
                                   key=lambda kv: -kv[1])[:8]
    # 2. VmRSS checkpoints (import stages, then the conversion: parent and workers)
    r = subprocess.run([PY, "-c", _DIAG_STAGES, str(f32), str(work / "diag.gguf"), "Q4_K_M",
                        str(threads)], env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"stage run failed: {r.stderr[-2000:]}")
    out["stages"] = json.loads(r.stdout.strip().splitlines()[-1])
    # 3. tracemalloc: which tensor's quantization allocates the most, and where
    r = subprocess.run([PY, "-c", _DIAG_TRACEMALLOC, str(f32), str(work / "diag.gguf"),
                        "Q4_K_M"], env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"tracemalloc run failed: {r.stderr[-2000:]}")
    out["tracemalloc"] = json.loads(r.stdout.strip().splitlines()[-1])
    name = out["tracemalloc"]["peak_tensor"].split()[0]
    r = subprocess.run([PY, "-c", _DIAG_TENSOR, str(f32), name, "Q4_K_M"], env=env,
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"tensor run failed: {r.stderr[-2000:]}")
    out["tensor"] = json.loads(r.stdout.strip().splitlines()[-1])
    (work / "diag.gguf").unlink(missing_ok=True)
    return out


def diagnosis_lines(d: dict) -> list[str]:
    lines = ["Where quantport's memory goes (separate diagnostic processes, same command):", ""]
    lines.append("- Third-party packages the CLI run has imported when it exits: "
                 + ", ".join(d["cli_imports"]) + "; never imported: "
                 + ", ".join(d["cli_not_imported"]) + ". Import times (`-X importtime`, "
                 "cumulative s): " + ", ".join(f"{n} {s:.2f}" for n, s in d["importtime_top"])
                 + ".")
    st = d["stages"]
    lines += ["- VmRSS (RssAnon / RssFile) after each stage, MiB:", ""]
    lines += ["  | stage | VmRSS | RssAnon | RssFile |", "  |---|---|---|---|"]
    for name, s in st["stages"]:
        lines.append(f"  | {name} | {s.get('VmRSS', 0) / MIB:.0f} | "
                     f"{s.get('RssAnon', 0) / MIB:.0f} | {s.get('RssFile', 0) / MIB:.0f} |")
    pk = st["peaks"]
    lines += ["", f"- During the conversion ({pk['workers_seen']} worker processes): parent "
              f"peak VmRSS {pk['VmRSS_parent'] / MIB:.0f} MiB (RssAnon "
              f"{pk['RssAnon_parent'] / MIB:.0f}, RssFile {pk['RssFile_parent'] / MIB:.0f}); "
              f"largest worker peak VmRSS {pk['VmRSS_worker'] / MIB:.0f} MiB (RssAnon "
              f"{pk['RssAnon_worker'] / MIB:.0f}, RssFile {pk['RssFile_worker'] / MIB:.0f}); of the "
              f"worker's RssFile, up to {pk['SourceMapRss_worker'] / MIB:.0f} MiB are pages of "
              f"its memory map of the source GGUF ({pk['source_bytes'] / MIB:.0f} MiB file; "
              "sampled from /proc/PID/smaps). "
              "A forked worker's RSS counts every page it shares with the parent (the imported "
              "modules) in full.",
              f"- Modules loaded: {st['n_modules']}; heavy packages in sys.modules before the "
              f"conversion: {', '.join(st['heavy_modules'])}."]
    tm, tt = d["tracemalloc"], d["tensor"]
    lines.append(f"- tracemalloc, one process (`threads=1`): the tensor whose quantization "
                 f"allocates most is {tt['tensor']} ({tt['weights'] / 1e6:.1f} M weights): "
                 f"{tm['peak_traced'] / MIB:.0f} MiB traced at its peak, "
                 f"{tm['peak_traced'] / max(tt['weights'], 1):.1f} bytes per weight; the "
                 f"packed result is {tt['out_bytes'] / MIB:.1f} MiB. Largest live allocations "
                 f"just before packing:")
    lines.append("")
    for size, count, where, src in tt["top_at_pack"][:6]:
        lines.append(f"  - {size / MIB:.1f} MiB in {count} blocks at `{where}`: `{src}`")
    lines.append("")
    return lines


# ------------------------------------------------------------------------------------------
# the benchmark
# ------------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5, help="runs per tool, alternating (median)")
    ap.add_argument("--preset", default="Q4_K_M")
    ap.add_argument("--nthread", type=int, default=2, help="llama.cpp's nthread (quantport "
                    "uses its default, one worker per core)")
    ap.add_argument("--workdir", type=Path, help="default: a temporary directory")
    ap.add_argument("--out", type=Path, default=ROOT / "BENCHMARKS.md")
    ap.add_argument("--no-write", action="store_true", help="print only; leave --out alone")
    ap.add_argument("--no-diagnose", action="store_true")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--note", help="a line to put at the top of the section")
    ap.add_argument("--src", type=Path, help="measure the quantport of this source tree (a "
                    "directory holding quantport/, put first on PYTHONPATH); default: the "
                    "installed one")
    args = ap.parse_args()
    global SRC
    SRC = args.src.resolve() if args.src else None
    if not Path("/usr/bin/time").exists():
        sys.exit("/usr/bin/time is needed (apt-get install time)")

    work = args.workdir or Path(tempfile.mkdtemp(prefix="qp-mem-"))
    work.mkdir(parents=True, exist_ok=True)
    logs = work / "logs"
    env = qp_env()
    f32 = work / "smollm2-f32.gguf"
    if not f32.exists():
        print(f"writing {f32}", file=sys.stderr, flush=True)
        subprocess.run([QUANTPORT, "convert", "--to", "gguf", "--quant", "F32", "-o", str(f32),
                        "--force", "--quiet"], check=True, env=env)
    compile_src()
    qp_out, lc_out = work / f"qp-{args.preset}.gguf", work / f"lc-{args.preset}.gguf"
    qp_cmd = [QUANTPORT, "convert", str(f32), "--to", "gguf", "--quant", args.preset, "-o",
              str(qp_out), "--force"]
    lc_cmd = [PY, "-c", LLAMA_QUANTIZE, str(f32), str(lc_out), args.preset, str(args.nthread)]

    load = os.getloadavg()
    # baselines: what an interpreter costs, and one with llama_cpp imported
    base_py = measure("baseline-python", [PY, "-c", "pass"], env=env, log_dir=logs)
    base_lc = measure("baseline-llama_cpp", [PY, "-c", LLAMA_IMPORT_ONLY], env=env, log_dir=logs)

    def alternate(kind: str, interval: float | None) -> tuple[list[Measured], list[Measured]]:
        qp_runs: list[Measured] = []
        lc_runs: list[Measured] = []
        for i in range(args.runs):
            pair = [("qp", qp_cmd, qp_runs), ("lc", lc_cmd, lc_runs)]
            for tag, cmd, runs in pair if i % 2 == 0 else pair[::-1]:
                m = measure(f"{tag}-{kind}-{i}", cmd, env=env, log_dir=logs, interval=interval)
                runs.append(m)
                print(f"{kind} run {i} {tag}: wall {m.wall_s:.2f} s, maxrss "
                      f"{m.maxrss / MIB:.0f} MiB, tree RSS {m.tree_rss / MIB:.0f} MiB, tree PSS "
                      f"{m.tree_pss / MIB:.0f} MiB", file=sys.stderr, flush=True)
        return qp_runs, lc_runs

    # Times come from runs that nothing observes but /usr/bin/time (its figures are wait4's
    # rusage): sampling /proc every 50 ms, smaps_rollup included, slows the measured
    # processes, quantport's three more than llama.cpp's one. The tree's RSS and PSS come from
    # a second, sampled set of runs.
    qp_runs, lc_runs = alternate("time", None)
    qp_mem, lc_mem = alternate("memory", 0.05)
    same, total, differ = identical_tensors(qp_out, lc_out)

    def med(runs: list[Measured], attr: str) -> float:
        return median([getattr(r, attr) for r in runs])

    qp_rss, lc_rss = med(qp_runs, "maxrss"), med(lc_runs, "maxrss")
    qp_wall, lc_wall = med(qp_runs, "wall_s"), med(lc_runs, "wall_s")
    qp_pss, lc_pss = med(qp_mem, "tree_pss"), med(lc_mem, "tree_pss")
    qp_trss, lc_trss = med(qp_mem, "tree_rss"), med(lc_mem, "tree_rss")
    rss_ratio, wall_ratio = qp_rss / lc_rss, qp_wall / lc_wall

    diag = None
    if not args.no_diagnose:
        print("diagnosing quantport's memory", file=sys.stderr, flush=True)
        diag = diagnose(f32, work, 2)
        (work / "diagnosis.json").write_text(json.dumps(diag, indent=1))

    body = [args.note, ""] if args.note else []
    body += [
        f"Measured {time.strftime('%Y-%m-%d %H:%M')} on {platform.machine()}, "
        f"{os.cpu_count()} cores (load average {load[0]:.2f} before, {os.getloadavg()[0]:.2f} "
        f"after), {args.runs} timed runs per tool, alternating, then {args.runs} sampled ones; "
        f"every run a fresh process under `/usr/bin/time -v`; {src_desc()}. Model: "
        f"SmolLM2-135M-Instruct as an F32 GGUF ({f32.stat().st_size / MIB:.0f} MiB), quantized "
        f"to {args.preset}.",
        "",
        f"- quantport: `quantport convert smollm2-f32.gguf --to gguf --quant {args.preset} -o "
        f"OUT --force` (default threads: one worker process per core); its modules "
        "byte-compiled first (`compileall`), as an installed package's are.",
        f"- llama.cpp: `llama_model_quantize` (nthread={args.nthread}) called from a minimal "
        "Python process through llama-cpp-python 0.3.36 (`import llama_cpp`, fill "
        "`llama_model_quantize_params`, call). The wheel ships no `llama-quantize` binary, so "
        "this is llama.cpp's route here; its RSS includes the interpreter with `llama_cpp` "
        f"imported: {base_lc.maxrss / MIB:.0f} MiB (a bare `python -c pass`: "
        f"{base_py.maxrss / MIB:.0f} MiB).",
        "",
        "| tool | peak RSS MiB (time -v) | tree RSS MiB | tree PSS MiB | wall s | user+sys s |",
        "|---|---|---|---|---|---|",
        f"| quantport | {qp_rss / MIB:.0f} | {qp_trss / MIB:.0f} | {qp_pss / MIB:.0f} | "
        f"{qp_wall:.2f} | {med(qp_runs, 'user_s') + med(qp_runs, 'sys_s'):.2f} |",
        f"| llama.cpp | {lc_rss / MIB:.0f} | {lc_trss / MIB:.0f} | {lc_pss / MIB:.0f} | "
        f"{lc_wall:.2f} | {med(lc_runs, 'user_s') + med(lc_runs, 'sys_s'):.2f} |",
        f"| ratio | {rss_ratio:.2f} | {qp_trss / lc_trss:.2f} | {qp_pss / lc_pss:.2f} | "
        f"{wall_ratio:.2f} | |",
        "",
        "Medians. Wall, user+sys and peak RSS (time -v: the largest single process of the "
        "tree) come from the timed runs, which nothing but `/usr/bin/time` observes; tree RSS "
        "and PSS are the peaks of the sum over every process of the tree in the sampled runs, "
        "read from /proc every 50 ms (forked workers share the parent's pages: RSS counts "
        "them once per process, PSS divides them). Sampling slows what it samples, so those "
        "runs' times are listed but not used. Every run (wall s / peak RSS MiB):",
        "",
        "- quantport, timed: " + ", ".join(f"{r.wall_s:.2f}/{r.maxrss / MIB:.0f}"
                                            for r in qp_runs),
        "- llama.cpp, timed: " + ", ".join(f"{r.wall_s:.2f}/{r.maxrss / MIB:.0f}"
                                            for r in lc_runs),
        f"- sampled (wall s, median): quantport {med(qp_mem, 'wall_s'):.2f}, llama.cpp "
        f"{med(lc_mem, 'wall_s'):.2f}",
        f"- identical tensors: {same}/{total}"
        + (f" (differ: {', '.join(differ[:5])})" if differ else ""),
        "",
        "### Against the targets",
        "",
        f"- quantport's peak RSS at most 1.5x llama.cpp's: {verdict(rss_ratio <= 1.5)} "
        f"({qp_rss / MIB:.0f} MiB vs {lc_rss / MIB:.0f} MiB, ratio {rss_ratio:.2f}).",
        f"- quantport's wall time at most 1.0x llama.cpp's: {verdict(wall_ratio <= 1.0)} "
        f"({qp_wall:.2f} s vs {lc_wall:.2f} s, ratio {wall_ratio:.2f}).",
        "",
    ]
    if diag is not None:
        body += diagnosis_lines(diag)
    heading = "## Convert memory: quantport vs llama.cpp, whole processes (`benchmarks/convert_memory.py`)"
    print("\n".join([heading, "", *body]))
    if not args.no_write:
        update_section(args.out, heading, body)
        print(f"wrote the section into {args.out}", file=sys.stderr)
    if not args.keep and args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
