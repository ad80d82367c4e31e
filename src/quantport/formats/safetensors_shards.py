"""Sharded safetensors written in place, as transformers writes them.

The header of a safetensors file (``u64 N``, ``N`` bytes of JSON, then the data; see
:mod:`quantport.formats.safetensors`) is determined by tensor names, dtypes and shapes alone, so
every shard's header can be written before any tensor exists and each tensor (or a row range
of it) written at its offset later, in any order: the whole checkpoint is never in memory.

Sharding follows ``huggingface_hub.split_torch_state_dict_into_shards`` (what
``PreTrainedModel.save_pretrained`` uses): tensors in order, a new shard when adding a tensor
would exceed ``max_shard_size`` (a tensor larger than the limit gets a shard of its own); files
``model-00001-of-0000N.safetensors`` plus ``model.safetensors.index.json``
(``{"metadata": {"total_size": ...}, "weight_map": {...}}``, ``json.dumps(indent=2,
sort_keys=True)`` and a newline), or a single ``model.safetensors`` when one shard suffices.
Here a *group* of entries (a quantized weight's packed codes, scales, shape and zero point)
always stays in one shard, as compressed-tensors' loader expects of one module.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from quantport.errors import FormatError
from quantport.formats._io import pwrite_all
from quantport.formats.safetensors import DTYPES, encode_header

__all__ = ["Entry", "ShardLayout", "ShardedOutput", "index_json", "layout_shards",
           "weight_map"]

INDEX = "model.safetensors.index.json"


def weight_map(index: Path, data: object) -> dict[str, str]:
    """The ``weight_map`` of a parsed index (``data``, the JSON of ``index``): tensor name ->
    shard file name, each a plain file name beside the index.

    Raises:
        FormatError: no ``weight_map`` object, or an entry that is not such a file name.
    """
    wm = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(wm, dict):
        raise FormatError(f"{index}: no 'weight_map' object")
    root = index.parent.resolve()
    for name, shard in wm.items():
        if not isinstance(shard, str) or not shard or "\0" in shard:
            raise FormatError(f"{index}: weight_map[{name!r}] must be a shard file name, got "
                              f"{shard!r:.60}; fix or regenerate the index")
        if (root / shard).resolve().parent != root:
            raise FormatError(f"{index}: shard {shard!r} lies outside the checkpoint")
    return wm


@dataclass(frozen=True)
class Entry:
    """One tensor of a safetensors file: name, dtype tag (``"F32"``, ``"I32"``...), shape."""

    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        """Data size in bytes."""
        return math.prod(self.shape) * DTYPES[self.dtype][1]


@dataclass(frozen=True)
class ShardLayout:
    """Where every entry lands.

    Attributes:
        files: per shard file name, its exact size.
        headers: per shard file name, its encoded header (length prefix included).
        where: per entry name, ``(file name, absolute offset of its data)``.
        entries: per entry name, the entry.
        data_bytes: the sum of all entries' data (the index's ``total_size``).
    """

    files: dict[str, int]
    headers: dict[str, bytes]
    where: dict[str, tuple[str, int]]
    entries: dict[str, Entry]
    data_bytes: int


def layout_shards(
    groups: Sequence[Sequence[Entry]],
    *,
    max_shard_size: int,
    metadata: Mapping[str, str],
) -> ShardLayout:
    """Assign entry groups to shards and lay every shard out.

    Args:
        groups: entries that must share a shard, in file order.
        max_shard_size: the shard limit in bytes of tensor data (transformers' ``5GB``
            default is 5_000_000_000).
        metadata: every shard's ``__metadata__``.
    """
    shards: list[list[Entry]] = [[]]
    size = 0
    for g in groups:
        n = sum(e.nbytes for e in g)
        if shards[-1] and size + n > max_shard_size:
            shards.append([])
            size = 0
        shards[-1].extend(g)
        size += n
    count = len(shards)
    files: dict[str, int] = {}
    headers: dict[str, bytes] = {}
    where: dict[str, tuple[str, int]] = {}
    entries: dict[str, Entry] = {}
    for k, shard in enumerate(shards):
        fname = ("model.safetensors" if count == 1
                 else f"model-{k + 1:05d}-of-{count:05d}.safetensors")
        head, offsets = encode_header([(e.name, e.dtype, e.shape) for e in shard], metadata)
        files[fname] = len(head) + sum(e.nbytes for e in shard)
        headers[fname] = head
        for e, off in zip(shard, offsets, strict=True):
            if e.name in entries:
                raise FormatError(f"tensor {e.name!r} appears twice; names must be unique")
            where[e.name] = (fname, len(head) + off)
            entries[e.name] = e
    return ShardLayout(files, headers, where, entries, sum(e.nbytes for e in entries.values()))


def index_json(layout: ShardLayout) -> str | None:
    """``model.safetensors.index.json`` text, or ``None`` for a single file."""
    if len(layout.files) == 1:
        return None
    index = {"metadata": {"total_size": layout.data_bytes},
             "weight_map": {n: f for n, (f, _) in layout.where.items()}}
    return json.dumps(index, indent=2, sort_keys=True) + "\n"


class ShardedOutput:
    """The shard files of a layout, created in ``directory`` with their headers written and
    their final sizes, open for in-place writing (also from forked processes)."""

    def __init__(self, directory: Path, layout: ShardLayout) -> None:
        self.layout = layout
        self.fds: dict[str, int] = {}
        try:
            for fname, size in layout.files.items():
                fd = os.open(directory / fname, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
                self.fds[fname] = fd
                pwrite_all(fd, memoryview(layout.headers[fname]), 0)
                os.ftruncate(fd, size)
        except BaseException:
            self.close()
            raise

    def write(self, name: str, data: np.ndarray, byte_offset: int = 0) -> int:
        """Write ``data`` (already in the entry's dtype) into entry ``name`` at
        ``byte_offset``; returns the bytes written."""
        e = self.layout.entries[name]
        view = memoryview(np.ascontiguousarray(data)).cast("B")
        if byte_offset < 0 or byte_offset + view.nbytes > e.nbytes:
            raise FormatError(
                f"tensor {name}: {view.nbytes} bytes at offset {byte_offset} overrun its "
                f"{e.nbytes} bytes ({e.dtype}, shape {e.shape})"
            )
        fname, pos = self.layout.where[name]
        pwrite_all(self.fds[fname], view, pos + byte_offset)
        return view.nbytes

    def sync(self) -> None:
        """Flush what has been written (``fdatasync`` on every shard)."""
        for fd in self.fds.values():
            os.fdatasync(fd)

    def close(self) -> None:
        """fsync and close every shard."""
        for fd in self.fds.values():
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        self.fds.clear()
