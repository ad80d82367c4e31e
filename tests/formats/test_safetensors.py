"""safetensors reader/writer: round trips, bf16, hostile and truncated headers."""

from __future__ import annotations

import json
import os
import struct

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from quantport.errors import FormatError
from quantport.formats.safetensors import SafetensorsFile, bf16_bits, write_safetensors


def test_round_trip_matches_reference_library(tmp_path):
    t = {"a": np.arange(12, dtype=np.float32).reshape(3, 4), "b": np.arange(5, dtype=np.int32),
         "c": np.ones((2, 2), np.int8)}
    p = tmp_path / "x.safetensors"
    write_safetensors(p, t, metadata={"format": "pt", "k": "v"})
    ref = load_file(p)  # the reference implementation reads what we wrote
    for k in t:
        np.testing.assert_array_equal(ref[k], t[k])
    f = SafetensorsFile(p)
    assert f.metadata["k"] == "v" and f.keys() == ["a", "b", "c"]
    np.testing.assert_array_equal(f.get("a"), t["a"])


def test_bf16_and_f16(tmp_path):
    x = np.random.default_rng(0).standard_normal((4, 8)).astype(np.float32) * 100
    x[0, 0] = np.nan
    want = torch.from_numpy(x).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    got = bf16_bits(x)
    np.testing.assert_array_equal(got[~np.isnan(x)], want[~np.isnan(x)])
    p = tmp_path / "h.safetensors"
    write_safetensors(p, {"x": x, "y": x}, dtypes={"x": "BF16", "y": "F16"})
    f = SafetensorsFile(p)
    assert f.tensors["x"].dtype == "BF16" and f.tensors["y"].dtype == "F16"
    back = f.get("x")
    finite = ~np.isnan(x)
    np.testing.assert_allclose(back[finite], x[finite], rtol=1e-2)
    np.testing.assert_allclose(f.get("y"), x.astype(np.float16).astype(np.float32))


def _write_raw(path, header: dict, data: bytes = b"", n: int | None = None):
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw) if n is None else n) + raw + data)


@pytest.mark.parametrize(
    ("header", "data", "n", "msg"),
    [
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8, 2**62, "header claims"),
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 4, None, "truncated"),
        ({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\0" * 8, None, "do not match"),
        ({"a": {"dtype": "X9", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8, None, "unsupported dtype"),
        ({"a": {"dtype": "F32", "shape": [2**40, 2**40], "data_offsets": [0, 8]}}, b"", None, "do not match"),
        ({"a": {"dtype": "F32"}}, b"", None, "malformed"),
        # the same bytes under two names, overlapping tensors, a gap: the reference reader
        # refuses them (InvalidOffset); they were accepted
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
          "b": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8, None,
         "overlap or leave a gap"),
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
          "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, b"\0" * 12, None,
         "overlap or leave a gap"),
        ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, b"\0" * 8, None,
         "expected 0"),
    ],
)
def test_hostile_headers_refused(tmp_path, header, data, n, msg):
    p = tmp_path / "bad.safetensors"
    _write_raw(p, header, data, n)
    with pytest.raises(FormatError, match=msg):
        SafetensorsFile(p)


def test_not_json_and_tiny(tmp_path):
    p = tmp_path / "bad.safetensors"
    p.write_bytes(struct.pack("<Q", 4) + b"\xff\xfe{[")
    with pytest.raises(FormatError, match="not valid JSON"):
        SafetensorsFile(p)
    p.write_bytes(b"abc")
    with pytest.raises(FormatError, match="truncated"):
        SafetensorsFile(p)


def test_write_is_atomic_on_failure(tmp_path):
    p = tmp_path / "out.safetensors"
    p.write_bytes(b"old")
    with pytest.raises(FormatError):
        write_safetensors(p, {"a": np.zeros(2, dtype=np.complex64)})
    assert p.read_bytes() == b"old"
    assert not list(tmp_path.glob("*.partial"))


def _mapped_rss_kib(path) -> int:
    """Resident KiB of this process's mappings of ``path`` (/proc/self/smaps)."""
    total, inside = 0, False
    for line in open("/proc/self/smaps", encoding="utf-8"):
        if line[0] in "0123456789abcdef" and "-" in line.split()[0]:
            inside = line.rstrip().endswith(str(path))
        elif inside and line.startswith("Rss:"):
            total += int(line.split()[1])
    return total


@pytest.mark.skipif(not os.path.exists("/proc/self/smaps"), reason="needs Linux /proc")
def test_release_drops_read_pages_from_this_process(tmp_path) -> None:
    """A long-lived worker must not accumulate the source file in its RSS: release() drops the
    pages of the tensors read since the last release (the data stays in the page cache)."""
    path = tmp_path / "big.safetensors"
    a = np.arange(8 << 20, dtype=np.float32).reshape(2048, 4096)  # 32 MiB
    write_safetensors(path, {"a": a, "b": a[:16]})
    f = SafetensorsFile(path)
    assert float(f.get("a", (0, 2048)).sum()) == float(a.sum())
    assert _mapped_rss_kib(path) > 16 << 10
    f.release()
    assert _mapped_rss_kib(path) < 1 << 10
    np.testing.assert_array_equal(f.get("a", (100, 101)), a[100:101])  # still readable
