"""Low-level file I/O shared by the readers (one read map per file) and the in-place writers
(GGUF, sharded safetensors)."""

from __future__ import annotations

import os

import numpy as np

__all__ = ["ReadMap", "pwrite_all"]


def pwrite_all(fd: int, data: memoryview, pos: int) -> None:
    """Write all of ``data`` at absolute offset ``pos`` (``os.pwrite`` may write less than asked:
    Linux caps one call at ~2 GiB). Safe to call from forked processes sharing ``fd``."""
    view = data
    while view.nbytes:
        n = os.pwrite(fd, view, pos)
        pos, view = pos + n, view[n:]


class ReadMap:
    """A file mapped read-only (uint8) on first use, one map for the whole file, which
    remembers the byte ranges handed out since the last :meth:`release`.

    Why the bookkeeping: every page of a map that a long-lived worker has read counts in its
    RSS until unmapped, so without :meth:`release` a worker's RSS grows towards the size of the
    source file (measured: 300 of a worker's 415 MiB converting SmolLM2's 515 MiB F32 GGUF).
    llama.cpp's loader likewise unmaps what it has read. (One map, not one per tensor: a map
    per tensor would also hold a file descriptor per tensor for as long as its array lives.)
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = path
        self._map: np.memmap | None = None
        self._touched: list[tuple[int, int]] = []

    def whole(self) -> np.memmap:
        """The whole file; the caller records what it reads with :meth:`touch`."""
        if self._map is None:
            self._map = np.memmap(self.path, dtype=np.uint8, mode="r")
        return self._map

    def touch(self, begin: int, end: int) -> None:
        """Record that bytes ``begin:end`` are being read."""
        self._touched.append((begin, end))

    def bytes(self, begin: int, end: int) -> np.ndarray:
        """Bytes ``begin:end`` of the file, a view of the map (recorded for :meth:`release`)."""
        self.touch(begin, end)
        return self.whole()[begin:end]

    def release(self) -> None:
        """Drop the pages of the ranges read since the last release from this process (madvise
        ``MADV_DONTNEED``: the data stays in the page cache; the next access faults it back
        in). Call it only when no array read from the map is in use any more."""
        if self._map is not None and self._touched:
            _drop_pages(self._map, self._touched)
        self._touched.clear()


def _drop_pages(mapped: np.memmap, ranges: list[tuple[int, int]]) -> None:
    import mmap

    m = getattr(mapped, "_mmap", None)
    if m is None or not hasattr(mmap, "MADV_DONTNEED"):
        return
    # np.memmap maps from a page-aligned offset at or before its own start
    base = int(getattr(mapped, "offset", 0)) % mmap.ALLOCATIONGRANULARITY
    try:
        for begin, end in ranges:
            start = (base + begin) // mmap.PAGESIZE * mmap.PAGESIZE  # madvise wants page starts
            stop = min(base + end, len(m))
            if stop > start:
                m.madvise(mmap.MADV_DONTNEED, start, stop - start)
    except (OSError, ValueError):  # closed, or a platform without madvise on file maps
        pass
