"""Low-level file output shared by the in-place writers (GGUF, sharded safetensors)."""

from __future__ import annotations

import os

__all__ = ["pwrite_all"]


def pwrite_all(fd: int, data: memoryview, pos: int) -> None:
    """Write all of ``data`` at absolute offset ``pos`` (``os.pwrite`` may write less than asked:
    Linux caps one call at ~2 GiB). Safe to call from forked processes sharing ``fd``."""
    view = data
    while view.nbytes:
        n = os.pwrite(fd, view, pos)
        pos, view = pos + n, view[n:]
