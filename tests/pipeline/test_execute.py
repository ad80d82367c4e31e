"""quantport.pipeline.execute: tasks in row chunks, forked workers, and their failures.

Every artifact computed in parallel, in row chunks, must be byte-identical to the one computed
tensor by tensor in this process; a worker that fails, dies or cannot report its error gives a
one-line QuantportError and leaves nothing behind.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np
import pytest

from quantport.errors import QuantportError
from quantport.pipeline import convert, execute, make_recipe
from quantport.readers import HFCheckpoint

needs_fork = pytest.mark.skipif(not execute.parallel_supported(),
                                reason="forked workers need Linux")


def _tree(path: Path) -> dict[str, bytes]:
    if path.is_file():
        return {"": path.read_bytes()}
    return {p.name: p.read_bytes() for p in sorted(path.iterdir())}


@pytest.fixture()
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    # the tiny model's tensors are far below the real limits: make them split and fork
    monkeypatch.setattr(execute, "CHUNK_ELEMS", 1000)
    monkeypatch.setattr(execute, "_PARALLEL_MIN_ELEMS", 0)


@needs_fork
@pytest.mark.parametrize(("fmt", "quant"), [("gguf", "Q4_K_M"), ("gguf", "Q8_0"),
                                            ("safetensors", "w4-g32-sym"),
                                            ("safetensors", "w4-g32-asym"),
                                            ("safetensors", "bf16")])
def test_parallel_row_chunks_equal_serial(tiny_llama: Path, tmp_path: Path, small_chunks,
                                          fmt: str, quant: str) -> None:
    src = HFCheckpoint(tiny_llama)
    recipe = make_recipe(fmt, quant)
    suffix = ".gguf" if fmt == "gguf" else ""
    serial, parallel = tmp_path / f"serial{suffix}", tmp_path / f"parallel{suffix}"
    plan = convert(src, recipe, serial, threads=1).plan
    seen: list[int] = []
    convert(src, recipe, parallel, threads=3, on_progress=lambda _p, d, _t: seen.append(d))
    assert _tree(parallel) == _tree(serial)
    sink_rows = [r for r in plan.rows if len(r.shape) == 2 and np.prod(r.shape) > 1000]
    assert sink_rows, "the test must split some tensor into row chunks"
    assert len(seen) > len(plan.rows)  # more tasks than tensors: chunks ran
    assert seen == sorted(seen) and seen[-1] == sum(r.nbytes for r in plan.rows)


def test_make_tasks_cover_every_row_once(tiny_llama: Path) -> None:
    from quantport.pipeline.convert import make_plan

    plan = make_plan(HFCheckpoint(tiny_llama), make_recipe("gguf", "Q4_0"))

    class Sink:
        def chunkable(self, i: int) -> bool:
            return i % 2 == 0

    tasks = execute.make_tasks(plan, Sink(), chunk_elems=700)  # type: ignore[arg-type]
    for i, row in enumerate(plan.rows):
        mine = [t for t in tasks if t.index == i]
        if len(mine) == 1 and mine[0].rows is None:
            continue
        assert i % 2 == 0 and row.edit is None
        covered = [r for t in mine for r in range(*t.rows)]
        assert covered == list(range(row.shape[0]))
        assert all(t.elems <= max(700, row.shape[1]) for t in mine)


class _Failing(HFCheckpoint):
    """A source whose reading of one tensor fails in the way the test asks for."""

    mode = "error"

    def get(self, name: str, rows=None):
        if name.endswith("layers.1.mlp.up_proj.weight"):
            if self.mode == "error":
                raise QuantportError(f"{name}: disk on fire")
            if self.mode == "unpicklable":
                raise _Unpicklable("cannot come back", "x")
            if self.mode == "killed":
                os.kill(os.getpid(), signal.SIGKILL)
        return super().get(name, rows)


class _Unpicklable(Exception):
    def __init__(self, a: str, b: str) -> None:  # rebuilt from args=(a,): fails to unpickle
        super().__init__(a)


@needs_fork
@pytest.mark.parametrize("mode", ["error", "unpicklable", "killed", "init"])
@pytest.mark.parametrize("fmt", ["gguf", "safetensors"])
def test_worker_failures_raise_and_leave_nothing(tiny_llama: Path, tmp_path: Path, small_chunks,
                                                 monkeypatch: pytest.MonkeyPatch, mode: str,
                                                 fmt: str) -> None:
    src = _Failing(tiny_llama)
    src.mode = mode
    if mode == "init":
        def bad_init() -> None:
            raise RuntimeError("no setup")

        monkeypatch.setattr(execute, "_one_thread_per_worker", bad_init)
    match = {"error": "disk on fire", "unpicklable": "_Unpicklable: cannot come back",
             "killed": "worker process died", "init": "setup failed.*no setup"}[mode]
    out = tmp_path / "out" / ("x.gguf" if fmt == "gguf" else "x")
    out.parent.mkdir()
    quant = "Q4_0" if fmt == "gguf" else "w8-channel-sym"
    with pytest.raises(QuantportError, match=match):
        convert(src, make_recipe(fmt, quant), out, threads=2)
    assert list(out.parent.iterdir()) == []


def test_serial_failure_leaves_nothing(tiny_llama: Path, tmp_path: Path) -> None:
    src = _Failing(tiny_llama)
    out = tmp_path / "x.gguf"
    with pytest.raises(QuantportError, match="disk on fire"):
        convert(src, make_recipe("gguf", "Q8_0"), out, threads=1)
    assert list(tmp_path.iterdir()) == []


def test_default_worker_count_is_bounded_by_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    tasks = [execute.Task(0, None, 1000 * 1000), execute.Task(1, None, 2560)]
    per_worker = execute._WORKER_BYTES_PER_WEIGHT * 1000 * 1000
    monkeypatch.setattr(execute, "_cores", lambda: 8)
    monkeypatch.setattr(execute, "_available_memory", lambda: 2 * 3 * per_worker)
    assert execute.default_workers(tasks) == 3  # half the memory, one big task per worker
    monkeypatch.setattr(execute, "_available_memory", lambda: per_worker)
    assert execute.default_workers(tasks) == 1  # never below one
    monkeypatch.setattr(execute, "_available_memory", lambda: None)
    assert execute.default_workers(tasks) == 8
