"""Execution: compute every planned tensor and hand it to the writer's sink.

A *task* is one planned tensor, or a range of its rows: llama.cpp's types and the integer
grids quantize each row on its own (``ggml_quantize_chunk`` takes whole rows), so a large
tensor is split into row chunks of at most :data:`CHUNK_ELEMS` weights and a worker never holds
more than one chunk, whatever the model's size. Tasks of a method that treats tensors
independently (round-to-nearest) run in forked worker processes on Linux, largest first; each
worker writes its result straight to its place in the output through the sink (whose layout
the plan fixed). Elsewhere, or with one thread, they run in order in this process.

Why processes: numpy's many short calls hold the GIL, so threads within one process reach
only ~1.45 of 2 cores on this work (measured on SmolLM2 Q4_K_M).
"""

from __future__ import annotations

import logging
import math
import os
import pickle
import struct
import sys
import threading
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from quantport.errors import QuantportError
from quantport.ir import QuantizedTensor
from quantport.plan import Plan, PlanRow
from quantport.quant.ggml import quantize_ggml, set_num_threads
from quantport.quant.scheme import IntScheme
from quantport.architectures import apply_edit as _arch_apply_edit
from quantport.readers.source import ModelSource

__all__ = ["CHUNK_ELEMS", "Sink", "Task", "apply_edit", "default_workers", "execute",
           "make_tasks", "release_freed_memory", "round_tensor"]

log = logging.getLogger(__name__)
Progress = Callable[[str, int, int], None]

#: largest row chunk one task quantizes (weights): 4M float32 weights are 16 MiB, about
#: 100 MiB with the search's temporaries
CHUNK_ELEMS = 1 << 22
# Below this many weights a model is converted by one process: forking workers costs more than
# it saves on test-sized models.
_PARALLEL_MIN_ELEMS = 1 << 22
# Working memory of one worker per weight of the chunk it holds (float32 copies, codes,
# search temporaries, packed bytes): an upper estimate, to bound the default worker count.
_WORKER_BYTES_PER_WEIGHT = 24
_SYNC_BYTES = 32 << 20


class Sink(Protocol):
    """Where computed tensors go: a writer's open output (see :mod:`quantport.writers`).

    ``put`` may be called in any order and, after a fork, from worker processes (it writes at
    offsets fixed by the plan).
    """

    def put(self, i: int, value: QuantizedTensor | np.ndarray,
            rows: tuple[int, int] | None = None) -> int:
        """Pack row ``i`` of the plan (or its rows ``rows``) and write it; returns bytes."""
        ...

    def chunkable(self, i: int) -> bool:
        """Whether plan row ``i`` may be written in row ranges."""
        ...

    def sync(self) -> None:
        """Flush what has been written so far to disk (called as data arrives)."""
        ...


@dataclass(frozen=True)
class Task:
    """Plan row ``index``, all of it (``rows is None``) or the row range ``rows``."""

    index: int
    rows: tuple[int, int] | None
    elems: int


def make_tasks(plan: Plan, sink: Sink, chunk_elems: int | None = None,
               only: Collection[int] | None = None) -> list[Task]:
    """Split the plan into tasks: big tensors in row chunks (of at most ``chunk_elems``,
    default :data:`CHUNK_ELEMS`, weights) where the sink allows it; with ``only``, just those
    plan rows."""
    chunk_elems = chunk_elems or CHUNK_ELEMS
    tasks = []
    for i, row in enumerate(plan.rows):
        if only is not None and i not in only:
            continue
        n = math.prod(row.shape)
        if len(row.shape) == 2 and n > chunk_elems and row.edit is None and sink.chunkable(i):
            rows, cols = row.shape
            step = max(1, chunk_elems // max(cols, 1))
            for r0 in range(0, rows, step):
                r1 = min(rows, r0 + step)
                tasks.append(Task(i, (r0, r1), (r1 - r0) * cols))
        else:
            tasks.append(Task(i, None, n))
    return tasks


def round_tensor(w: np.ndarray, target: Any, importance: np.ndarray | None = None,
                 *, name: str = "tensor") -> QuantizedTensor | np.ndarray:
    """Round-to-nearest of one weight onto its target: a ggml type (llama.cpp's own search,
    byte-identical), an :class:`IntScheme`, or a dense type (returned as float32; the writer
    casts it)."""
    if isinstance(target, IntScheme):
        return target.quantize(np.asarray(w, dtype=np.float32), name=name)
    if target in ("F32", "F16", "BF16"):
        return np.asarray(w, dtype=np.float32)
    return quantize_ggml(np.asarray(w, dtype=np.float32), target, importance, name=name)


def _read(source: ModelSource, row: PlanRow, rows: tuple[int, int] | None,
          n_head: int, n_head_kv: int) -> np.ndarray:
    w = source.get(row.source) if rows is None else source.get(row.source, rows)
    expect = row.shape if rows is None else (rows[1] - rows[0], *row.shape[1:])
    if tuple(w.shape) != tuple(expect):
        raise QuantportError(
            f"{source.path}: tensor {row.source} has shape {tuple(w.shape)}, its header says "
            f"{tuple(expect)}; the checkpoint is corrupt"
        )
    return apply_edit(w, row.edit, n_head, n_head_kv)


def apply_edit(w: np.ndarray, edit: str | None, n_head: int, n_head_kv: int,
               *, undo: bool = False) -> np.ndarray:
    """A plan row's layout edit on a Hugging Face weight (``undo``: back to HF layout); the
    edits are the architecture modules' (:func:`quantport.architectures.apply_edit`)."""
    try:
        return _arch_apply_edit(w, edit, n_head, n_head_kv, undo=undo)
    except ValueError as exc:  # an edit name no architecture defines
        raise QuantportError(str(exc)) from None


@dataclass
class _Job:
    source: ModelSource
    plan: Plan
    sink: Sink
    importance: Mapping[int, np.ndarray]
    tasks: Sequence[Task]
    n_head: int
    n_head_kv: int


def _run_task(job: _Job, k: int) -> int:
    t = job.tasks[k]
    row = job.plan.rows[t.index]
    w = _read(job.source, row, t.rows, job.n_head, job.n_head_kv)
    value = round_tensor(w, row.target, job.importance.get(t.index), name=row.name)
    del w
    n = job.sink.put(t.index, value, t.rows)
    del value
    job.source.release()  # nothing of the source is in use any more
    return n


def execute(
    source: ModelSource,
    plan: Plan,
    sink: Sink,
    *,
    importance: Mapping[int, np.ndarray] | None = None,
    workers: int | None = None,
    on_progress: Progress | None = None,
    only: Collection[int] | None = None,
    meanwhile: Callable[[], None] | None = None,
) -> None:
    """Compute every planned tensor by round-to-nearest and put it into ``sink``.

    Args:
        source: the model the plan was made for.
        plan: what to compute.
        sink: the writer's open output.
        importance: per plan row index, the importance vector for its columns.
        workers: processes to use; default :func:`default_workers`. 1 runs in order here.
        on_progress: ``on_progress("write", bytes_done, bytes_total)``.
        only: compute just these plan rows (a calibrated method computes the others).
        meanwhile: work of this process to do while the workers compute (a source's
            postponed checks, :meth:`ModelSource.verify`); what it raises stops them. With
            one process it runs first.
    """
    cfg = source.config
    n_head = int(cfg.get("num_attention_heads") or 1)
    tasks = make_tasks(plan, sink, only=only)
    job = _Job(source, plan, sink, dict(importance or {}), tasks, n_head,
               int(cfg.get("num_key_value_heads") or n_head))
    total = sum(plan.rows[i].nbytes for i in {t.index for t in tasks})
    n = default_workers(tasks) if workers is None else workers
    big = sum(t.elems for t in tasks) >= _PARALLEL_MIN_ELEMS
    if n > 1 and big and len(tasks) > 1 and parallel_supported():
        log.info("quantizing in %d worker processes", n)
        _run_parallel(job, min(n, len(tasks)), total, on_progress, meanwhile)
        return
    if meanwhile is not None:
        meanwhile()
    done = 0
    for k in range(len(tasks)):
        done += _run_task(job, k)
        if on_progress:
            on_progress("write", done, total)


# ----------------------------------------------------------------------------- worker pool

def parallel_supported() -> bool:
    """Whether tasks can run in forked worker processes here (Linux)."""
    import multiprocessing

    return sys.platform.startswith("linux") and "fork" in multiprocessing.get_all_start_methods()


# What a forked worker needs, set in the parent just before the fork and inherited (sources,
# sinks and closures cannot be pickled); tasks are indices.
_JOB: _Job | None = None
_JOB_LOCK = threading.Lock()
_INIT_ERROR: BaseException | None = None
# a worker's report of one finished task, b"D" + the bytes it wrote; b"E" + a pickled
# exception ends it
_DONE = struct.Struct("<cq")


def _worker_init() -> None:
    global _INIT_ERROR
    import signal

    # Ctrl-C goes to the whole process group: the parent alone handles it (and stops the
    # workers), so that workers neither print tracebacks nor die half-way through a task
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        _one_thread_per_worker()
    except BaseException as exc:  # reported to the parent, not printed
        _INIT_ERROR = exc


def _portable(exc: BaseException, name: str) -> BaseException:
    """``exc`` if it survives the trip back to the parent (pickled, then rebuilt), else a
    one-line :class:`QuantportError` that says what it was."""
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:
        return QuantportError(f"tensor {name}: {type(exc).__name__}: {exc}")
    return exc


def _worker_main(order: Sequence[int], claim: Any, out: Any, out_lock: Any) -> None:
    """A forked worker: takes the next task of ``order`` (largest first) until none is left
    and reports each one's bytes to the parent; an exception is reported instead, and ends
    it. Tasks are claimed from a shared counter, not sent: a task costs the parent one short
    message, where a process pool's futures cost it ~0.5 ms of CPU each (measured on SmolLM2
    Q4_K_M: 279 tasks, 0.13 s of the parent's CPU taken from the two workers)."""
    assert _JOB is not None
    _worker_init()
    k = -1
    try:
        if _INIT_ERROR is not None:
            raise QuantportError(f"worker setup failed: {_INIT_ERROR!r}")
        while True:
            with claim.get_lock():
                i = claim.value
                claim.value = i + 1
            if i >= len(order):
                return
            k = order[i]
            n = _run_task(_JOB, k)
            with out_lock:  # a report from each worker, whole (an error may exceed PIPE_BUF)
                out.send_bytes(_DONE.pack(b"D", n))
    except BaseException as exc:
        name = _JOB.plan.rows[_JOB.tasks[k].index].name if k >= 0 else "?"
        with out_lock:
            out.send_bytes(b"E" + pickle.dumps(_portable(exc, name)))


def _run_parallel(job: _Job, processes: int, total: int, on_progress: Progress | None,
                  meanwhile: Callable[[], None] | None = None) -> None:
    global _JOB
    import multiprocessing

    # largest first, so that no worker is left with a big tensor at the end (LPT scheduling)
    order = sorted(range(len(job.tasks)), key=lambda k: -job.tasks[k].elems)
    ctx = multiprocessing.get_context("fork")
    with _JOB_LOCK:  # one parallel job at a time per process: the job is a module global
        _JOB = job
        claim = ctx.Value("q", 0)  # the position in `order` of the next task to take
        reader, writer = ctx.Pipe(duplex=False)
        procs: list[Any] = []
        ok = False
        try:
            lock = ctx.Lock()  # one for every worker's reports
            for _ in range(processes):
                p = ctx.Process(target=_worker_main, args=(order, claim, writer, lock),
                                daemon=True)
                procs.append(p)
                p.start()
            writer.close()  # the workers hold it now
            if meanwhile is not None:
                meanwhile()
            _collect(job, reader, procs, len(order), total, on_progress)
            ok = True
        finally:
            _JOB = None
            if not ok:
                # an error or Ctrl-C: queued tasks are dropped and running ones killed, since
                # their output is discarded with the temporary file
                with claim.get_lock():
                    claim.value = len(order)
                for p in procs:
                    if p.is_alive():
                        p.terminate()
            for p in procs:
                if p.pid is not None:
                    p.join(None if ok else 5)
            reader.close()
            writer.close()


def _collect(job: _Job, reader: Any, procs: list[Any], n_tasks: int, total: int,
             on_progress: Progress | None) -> None:
    """The parent's side: count the workers' reports until every task is done; raise a
    worker's exception, or say that one died."""
    from multiprocessing.connection import wait

    alive = {p.sentinel: p for p in procs}
    done = synced = finished = 0
    while finished < n_tasks:
        ready = wait([reader, *alive])
        if reader in ready:  # reports first: a worker's last ones arrive before its exit
            try:
                msg = reader.recv_bytes()
            except EOFError:  # every worker has exited, some without finishing
                for p in procs:
                    p.join()
                raise _died(next((p for p in procs if p.exitcode), procs[0])) from None
            if msg[:1] == b"E":
                raise pickle.loads(msg[1:])
            done += _DONE.unpack(msg)[1]
            finished += 1
            if done - synced >= _SYNC_BYTES:
                # this process only waits here: flushing as the data arrives leaves the final
                # fsync (before the rename) little to do
                job.sink.sync()
                synced = done
            if on_progress:
                on_progress("write", done, total)
            continue
        for s in ready:  # a worker exited: normally only once no task is left to take
            p = alive.pop(s)
            p.join()
            if p.exitcode:
                raise _died(p)


def _died(p: Any) -> QuantportError:
    code = p.exitcode
    how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit status {code}"
    return QuantportError(f"a worker process died ({how}); if it ran out of memory, use fewer "
                          "threads (--threads)")


def _cores() -> int:
    """CPU cores this process may run on: its affinity mask, within a cgroup CPU quota."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        n = os.cpu_count() or 1
    try:  # cgroup v2 (containers): "max 100000" or "<quota> <period>"
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            n = min(n, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return n


def _available_memory() -> int | None:
    """Bytes this process can still use: MemAvailable, within a cgroup memory limit."""
    avail = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                avail = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:  # cgroup v2
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            used = int(Path("/sys/fs/cgroup/memory.current").read_text())
            room = max(0, int(limit) - used)
            avail = room if avail is None else min(avail, room)
    except (OSError, ValueError):
        pass
    return avail


def default_workers(tasks: Sequence[Task]) -> int:
    """One worker per available core, but no more than half the available memory holds
    while each works on one of the largest tasks."""
    n = _cores()
    avail = _available_memory()
    largest = max((t.elems for t in tasks), default=0)
    if avail is not None and largest:
        n = min(n, max(1, avail // 2 // (_WORKER_BYTES_PER_WEIGHT * largest)))
    return n


def _one_thread_per_worker() -> None:
    # each forked worker quantizes whole tasks on one core: inner threads would only contend
    # with the other workers. torch (a pickle source's tensors) likewise; its OpenMP pool is
    # not usable after fork in any case.
    set_num_threads(1)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(1)
    keep_freed_memory()


def release_freed_memory() -> None:
    """Hand the heap's free pages back to the kernel (glibc's ``malloc_trim(0)``; elsewhere
    nothing). The calibration loop calls it after each layer: its numpy and torch temporaries
    of 1-32 MiB live in the heap (glibc raises its mmap threshold to the largest block freed),
    and the heap never shrank between layers -- SmolLM2's GPTQ grew ~28 MiB a layer, to a
    2.2 GiB peak where one layer needs under 1 GiB (measured: 1598 MiB after the last layer
    of a 16-window run, 451 with this)."""
    trim = _glibc("malloc_trim")
    if trim is not None:
        trim(0)


def _glibc(name: str) -> Any:
    """glibc's function ``name`` from the C library this process already runs on, or None
    (musl, macOS)."""
    import ctypes

    try:
        return getattr(ctypes.CDLL(None), name)
    except (OSError, AttributeError):
        return None


def keep_freed_memory() -> None:
    """Make glibc's malloc reuse freed blocks instead of returning them to the kernel at once:
    in a worker (it lives for one file), and in the calibration loop, which hands the heap
    back itself after each layer (:func:`release_freed_memory`). numpy's and torch's
    temporaries are allocated and freed many times; by default each large one is a fresh mmap
    whose every page faults in again (measured on SmolLM2 Q4_K_M: 61k page faults in the
    workers, about 20k with this, ~0.1 s less CPU; SmolLM2's 128-window GPTQ in the calibration
    loop: 2.6 million faults, 1.1 million with this). At most 128 MiB not in use is kept between trims."""
    mallopt = _glibc("mallopt")
    if mallopt is None:
        return
    m_trim_threshold, m_mmap_threshold = -1, -3  # glibc malloc.h
    mallopt(m_trim_threshold, 128 << 20)
    mallopt(m_mmap_threshold, 32 << 20)  # glibc's largest allowed (HEAP_MAX / 2 on 64-bit)
