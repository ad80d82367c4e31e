"""quantport.formats.imatrix: llama.cpp importance-matrix files (legacy .dat and GGUF)."""

from __future__ import annotations

import struct
from pathlib import Path

import gguf
import numpy as np
import pytest

from quantport.errors import FormatError
from quantport.formats.imatrix import ImatrixData, check_imatrix, read_imatrix, write_imatrix


def _data() -> ImatrixData:
    rng = np.random.default_rng(0)
    return ImatrixData(
        entries={
            "blk.0.attn_q.weight": rng.uniform(0.01, 3.0, 576).astype(np.float32),
            "blk.0.ffn_down.weight": rng.uniform(0.01, 3.0, 1536).astype(np.float32),
            "blk.1.ffn_up_exps.weight": rng.uniform(0.01, 3.0, 4 * 64).astype(np.float32),
        },
        datasets=["wiki.train.raw"],
        chunk_count=100,
        chunk_size=512,
    )


@pytest.mark.parametrize("fmt", ["gguf", "dat"])
def test_round_trip(tmp_path: Path, fmt: str) -> None:
    data = _data()
    path = tmp_path / f"imatrix.{fmt}"
    write_imatrix(path, data, format=fmt)
    back = read_imatrix(path)
    assert sorted(back.entries) == sorted(data.entries)
    for name, v in data.entries.items():
        assert back.entries[name].dtype == np.float32
        np.testing.assert_allclose(back.entries[name], v, rtol=2e-7)
    assert back.datasets == data.datasets
    assert back.chunk_count == data.chunk_count
    assert back.chunk_size == (data.chunk_size if fmt == "gguf" else 0)  # legacy files do not store it
    assert not list(tmp_path.glob(".*.tmp"))  # atomic write left no temporary file


def test_gguf_layout_matches_llama_imatrix(tmp_path: Path) -> None:
    # save_imatrix(): general.type, imatrix.* KV, <name>.in_sum2 [ne0, n_mat] and <name>.counts [1, n_mat]
    data = _data()
    data.counts = {"blk.1.ffn_up_exps.weight": np.array([10, 20, 30, 40])}
    path = tmp_path / "imatrix.gguf"
    write_imatrix(path, data)
    r = gguf.GGUFReader(path)
    assert r.fields["general.type"].contents() == "imatrix"
    assert r.fields["imatrix.datasets"].contents() == ["wiki.train.raw"]
    assert r.fields["imatrix.chunk_count"].contents() == 100
    assert r.fields["imatrix.chunk_size"].contents() == 512
    t = {x.name: x for x in r.tensors}
    assert t["blk.1.ffn_up_exps.weight.in_sum2"].shape.tolist() == [64, 4]
    assert t["blk.1.ffn_up_exps.weight.counts"].shape.tolist() == [1, 4]
    np.testing.assert_array_equal(t["blk.1.ffn_up_exps.weight.counts"].data.reshape(-1), [10, 20, 30, 40])
    # a plain entry is stored as mean * (chunk_count * chunk_size)
    assert t["blk.0.attn_q.weight.counts"].data.reshape(-1)[0] == 100 * 512
    back = read_imatrix(path)
    np.testing.assert_array_equal(back.counts["blk.1.ffn_up_exps.weight"], [10, 20, 30, 40])
    np.testing.assert_allclose(back.entries["blk.1.ffn_up_exps.weight"], data.entries["blk.1.ffn_up_exps.weight"], rtol=2e-7)


def test_loader_semantics(tmp_path: Path) -> None:
    # legacy: values / ncall; GGUF: in_sum2 / counts per expert, 1.0 where a count is 0
    path = tmp_path / "legacy.dat"
    name = b"blk.0.attn_k.weight"
    raw = struct.pack("<i", 1) + struct.pack("<i", len(name)) + name + struct.pack("<ii", 4, 2)
    raw += np.array([8.0, 2.0], "<f4").tobytes() + struct.pack("<i", 7) + struct.pack("<i", 3) + b"abc"
    path.write_bytes(raw)
    d = read_imatrix(path)
    np.testing.assert_array_equal(d.entries["blk.0.attn_k.weight"], [2.0, 0.5])
    assert d.chunk_count == 7 and d.datasets == ["abc"]

    data = ImatrixData({"e": np.array([1, 2, 3, 4], np.float32)}, ["x"], 1, 1, counts={"e": np.array([2, 0])})
    write_imatrix(tmp_path / "z.gguf", data)
    np.testing.assert_array_equal(read_imatrix(tmp_path / "z.gguf").entries["e"], [1, 2, 1, 1])


@pytest.mark.parametrize("fmt", ["gguf", "dat"])
def test_truncated_file_is_refused(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / f"imatrix.{fmt}"
    write_imatrix(path, _data(), format=fmt)
    raw = path.read_bytes()
    for cut in (3, 10, len(raw) // 2, len(raw) - 5):
        path.write_bytes(raw[:cut])
        with pytest.raises(FormatError) as exc:
            read_imatrix(path)
        assert "\n" not in str(exc.value)


def test_huge_counts_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "huge.dat"
    path.write_bytes(struct.pack("<i", 2**31 - 1) + b"\0" * 64)
    with pytest.raises(FormatError, match="larger than the file"):
        read_imatrix(path)
    name = b"blk.0.attn_q.weight"
    path.write_bytes(struct.pack("<i", 1) + struct.pack("<i", len(name)) + name + struct.pack("<ii", 1, 2**30) + b"\0" * 16)
    with pytest.raises(FormatError, match="float32 values"):
        read_imatrix(path)
    path.write_bytes(struct.pack("<i", 1) + struct.pack("<i", -5) + b"\0" * 32)
    with pytest.raises(FormatError, match="name length"):
        read_imatrix(path)
    # GGUF header claiming 2**60 tensors
    path = tmp_path / "huge.gguf"
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 2**60, 0) + b"\0" * 64)
    with pytest.raises(FormatError, match="tensor count"):
        read_imatrix(path)
    # GGUF tensor whose data would run past the end of the file
    good = tmp_path / "good.gguf"
    write_imatrix(good, _data())
    r = gguf.GGUFReader(good)
    t = r.tensors[0]
    raw = bytearray(good.read_bytes())
    # patch ne[1] of the first tensor (its info starts right after the KV section) to a huge value
    off = raw.index(t.name.encode()) + len(t.name) + 4 + 8
    raw[off : off + 8] = struct.pack("<q", 2**40)
    path.write_bytes(bytes(raw))
    with pytest.raises(FormatError, match="runs past the end"):
        read_imatrix(path)
    # an empty tensor (ne[0] = 0) whose other dimension numpy cannot shape
    raw[off - 8 : off + 8] = struct.pack("<qq", 0, 2**62)
    path.write_bytes(bytes(raw))
    with pytest.raises(FormatError, match="larger than the file can hold"):
        read_imatrix(path)


def test_non_finite_values_are_refused(tmp_path: Path) -> None:
    data = _data()
    data.entries["blk.0.attn_q.weight"][5] = np.nan
    with pytest.raises(FormatError, match="non-finite"):
        write_imatrix(tmp_path / "x.gguf", data)
    name = b"a.weight"
    raw = struct.pack("<i", 1) + struct.pack("<i", len(name)) + name + struct.pack("<ii", 1, 2)
    raw += np.array([1.0, np.inf], "<f4").tobytes()
    (tmp_path / "x.dat").write_bytes(raw)
    with pytest.raises(FormatError, match="non-finite"):
        read_imatrix(tmp_path / "x.dat")


def test_gguf_without_metadata_or_pairs_is_refused(tmp_path: Path) -> None:
    w = gguf.GGUFWriter(tmp_path / "m.gguf", "llama")
    w.add_tensor("blk.0.attn_q.weight.in_sum2", np.ones((1, 8), np.float32))
    w.add_tensor("blk.0.attn_q.weight.counts", np.ones((1, 1), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(FormatError, match="imatrix.datasets"):
        read_imatrix(tmp_path / "m.gguf")
    w = gguf.GGUFWriter(tmp_path / "n.gguf", "llama")
    w.add_array("imatrix.datasets", ["d"])
    w.add_uint32("imatrix.chunk_count", 1)
    w.add_uint32("imatrix.chunk_size", 1)
    w.add_tensor("blk.0.attn_q.weight.in_sum2", np.ones((1, 8), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(FormatError, match="mismatched sums and counts|no .counts"):
        read_imatrix(tmp_path / "n.gguf")


def test_check_imatrix_names_the_tensor() -> None:
    data = _data()
    expected = {"blk.0.attn_q.weight": 576, "blk.0.ffn_down.weight": 1536, "blk.1.ffn_up_exps.weight": 256}
    check_imatrix(data, expected)
    with pytest.raises(FormatError, match=r"blk\.0\.ffn_down\.weight.*1536.*1024"):
        check_imatrix(data, {**expected, "blk.0.ffn_down.weight": 1024})
    with pytest.raises(FormatError, match=r"blk\.1\.ffn_up_exps\.weight.*matches no tensor"):
        check_imatrix(data, {k: v for k, v in expected.items() if "exps" not in k})
    with pytest.raises(FormatError, match=r"output\.weight"):
        check_imatrix(data, {**expected, "output.weight": 576}, require_all=True)
    check_imatrix(data, {**expected, "output.weight": 576})


def test_unknown_format_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FormatError, match="'gguf' or 'dat'"):
        write_imatrix(tmp_path / "x", _data(), format="npz")
    with pytest.raises(FormatError, match="cannot read"):
        read_imatrix(tmp_path / "missing.gguf")
