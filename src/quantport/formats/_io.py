"""Low-level file output shared by the in-place writers (GGUF, sharded safetensors)."""

from __future__ import annotations

import os

__all__ = ["drop_mapped_pages", "pwrite_all"]


def pwrite_all(fd: int, data: memoryview, pos: int) -> None:
    """Write all of ``data`` at absolute offset ``pos`` (``os.pwrite`` may write less than asked:
    Linux caps one call at ~2 GiB). Safe to call from forked processes sharing ``fd``."""
    view = data
    while view.nbytes:
        n = os.pwrite(fd, view, pos)
        pos, view = pos + n, view[n:]


def drop_mapped_pages(mapped: object, ranges: list[tuple[int, int]] | None = None) -> None:
    """Drop the resident pages of a read-only file map (an ``np.memmap``) from this process:
    those of the byte ``ranges`` given (``(begin, end)`` in the map), or all of them.

    The data stays in the page cache; the next access faults it back in. Why: every page of a
    map that a long-lived worker has read counts in its RSS until unmapped, so without this a
    worker's RSS grows towards the size of the source file (measured: 300 of a worker's 415 MiB
    converting SmolLM2's 515 MiB F32 GGUF). llama.cpp's loader likewise unmaps what it has read.
    Call it only when no array view of the map is in use any more.
    """
    import mmap

    m = getattr(mapped, "_mmap", None)
    if m is None or not hasattr(mmap, "MADV_DONTNEED"):
        return
    # np.memmap maps from a page-aligned offset at or before its own start
    base = int(getattr(mapped, "offset", 0)) % mmap.ALLOCATIONGRANULARITY
    try:
        if ranges is None:
            m.madvise(mmap.MADV_DONTNEED)
            return
        for begin, end in ranges:
            start = (base + begin) // mmap.PAGESIZE * mmap.PAGESIZE  # madvise wants page starts
            stop = min(base + end, len(m))
            if stop > start:
                m.madvise(mmap.MADV_DONTNEED, start, stop - start)
    except (OSError, ValueError):  # closed, or a platform without madvise on file maps
        pass
