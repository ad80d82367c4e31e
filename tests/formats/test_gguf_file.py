"""The validating GGUF scan refuses truncated and hostile files before allocating."""

from __future__ import annotations

import struct
from pathlib import Path

import gguf
import numpy as np
import pytest

from quantport.errors import FormatError
from quantport.formats.gguf_file import read_tensor, scan_gguf


def _tiny(path: Path) -> bytes:
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_uint32("llama.block_count", 1)
    w.add_tensor("aaaa.weight", np.arange(64, dtype=np.float32).reshape(2, 32))
    w.add_tensor("bbbb.weight", np.ones((2, 32), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path.read_bytes()


def _info_pos(data: bytes, name: bytes) -> int:
    """Offset just after a tensor name in the tensor-info table."""
    return data.index(name) + len(name)


def test_valid_file(tmp_path):
    p = tmp_path / "ok.gguf"
    _tiny(p)
    scan = scan_gguf(p)
    assert [t.name for t in scan.tensors] == ["aaaa.weight", "bbbb.weight"]
    assert scan.tensors[0].shape == (2, 32) and scan.tensors[0].type_name == "F32"
    np.testing.assert_array_equal(read_tensor(p, scan.tensors[0]),
                                  np.arange(64, dtype=np.float32).reshape(2, 32))


def _patch(data: bytes, pos: int, fmt: str, value: int) -> bytes:
    b = bytearray(data)
    struct.pack_into(fmt, b, pos, value)
    return bytes(b)


@pytest.mark.parametrize("case", ["truncated", "n_tensors", "n_kv", "dup", "offset", "type",
                                  "ndims", "strlen", "magic", "version", "empty_huge"])
def test_hostile(tmp_path, case):
    p = tmp_path / "t.gguf"
    data = _tiny(p)
    a = _info_pos(data, b"aaaa.weight")
    b = _info_pos(data, b"bbbb.weight")
    if case == "truncated":
        data = data[: len(data) - 100]
        msg = "truncated|past the end"
    elif case == "n_tensors":
        data = _patch(data, 8, "<Q", 2**61)
        msg = "more than"
    elif case == "n_kv":
        data = _patch(data, 16, "<Q", 2**40)
        msg = "more than"
    elif case == "dup":
        data = data.replace(b"bbbb.weight", b"aaaa.weight")
        msg = "duplicate tensor name"
    elif case == "offset":
        # tensor info: n_dims u32, ne[2] u64, type u32, offset u64
        data = _patch(data, b + 4 + 16 + 4, "<Q", 12345)
        msg = "offset"
    elif case == "type":
        data = _patch(data, a + 4 + 16, "<I", 999)
        msg = "unknown ggml type"
    elif case == "ndims":
        data = _patch(data, a, "<I", 7)
        msg = "dims"
    elif case == "strlen":
        data = _patch(data, 24, "<Q", 2**50)  # length of the first key
        msg = "needs"
    elif case == "empty_huge":
        # ne = [0, 2**62]: no elements, but numpy cannot shape it (ValueError when read)
        data = _patch(_patch(data, a + 4, "<Q", 0), a + 12, "<Q", 2**62)
        msg = "more than the file"
    elif case == "magic":
        data = b"GGUX" + data[4:]
        msg = "not a GGUF"
    else:
        data = _patch(data, 4, "<I", 99)
        msg = "unsupported GGUF version"
    p.write_bytes(data)
    with pytest.raises(FormatError, match=msg):
        scan_gguf(p)


def test_gguf_has_key_stops_at_the_key(tmp_path) -> None:
    from quantport.formats.gguf_file import gguf_has_key
    from quantport.formats.gguf_writer import GGUFKV, GGUFValueType, write_gguf

    path = tmp_path / "k.gguf"
    S, A = GGUFValueType.STRING, GGUFValueType.ARRAY
    write_gguf(path, [GGUFKV("general.architecture", "llama", S),
                      GGUFKV("quantport.version", "0", S),
                      GGUFKV("tokenizer.ggml.tokens", ["a", "b"], A, S)], [])
    assert gguf_has_key(path, "quantport.version")
    assert gguf_has_key(path, "tokenizer.ggml.tokens")
    assert not gguf_has_key(path, "nothing.here")
    data = path.read_bytes()
    path.write_bytes(data[:60])  # truncated before the key
    with pytest.raises(FormatError):
        gguf_has_key(path, "quantport.version")
