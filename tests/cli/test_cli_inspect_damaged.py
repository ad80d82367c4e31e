"""`quantport inspect` on damaged artifacts: one that cannot be loaded is an error (one line,
exit 1), not a report of what happens to be left."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from quantport.cli.main import cli


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def assert_error(res, *words):
    assert res.exit_code == 1, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), res.output
    for w in words:
        assert w in lines[0], lines[0]


@pytest.fixture
def sharded(tmp_path) -> Path:
    """Two shards and the index naming them, as transformers' save_pretrained writes them."""
    from safetensors.numpy import save_file

    d = tmp_path / "sharded"
    d.mkdir()
    shards = {"model-00001-of-00002.safetensors": ["a.weight", "b.weight"],
              "model-00002-of-00002.safetensors": ["c.weight"]}
    weight_map = {}
    for shard, names in shards.items():
        save_file({n: np.ones((4, 4), np.float32) for n in names}, str(d / shard))
        weight_map.update({n: shard for n in names})
    (d / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": 3 * 64}, "weight_map": weight_map}))
    return d


def test_sharded_checkpoint_with_a_shard_deleted(sharded):
    res = run("inspect", sharded, "--json")
    assert res.exit_code == 0, res.output
    assert len(json.loads(res.stdout)["tensors"]) == 3

    (sharded / "model-00002-of-00002.safetensors").unlink()
    assert_error(run("inspect", sharded), "model-00002-of-00002.safetensors is missing",
                 "model.safetensors.index.json")
    # every shard gone: still the index's missing shard, not "no .safetensors file inside"
    (sharded / "model-00001-of-00002.safetensors").unlink()
    assert_error(run("inspect", sharded, "--json"), "is missing")


def test_sharded_checkpoint_with_a_tensor_missing_from_its_shard(sharded):
    index = sharded / "model.safetensors.index.json"
    d = json.loads(index.read_text())
    d["weight_map"]["d.weight"] = "model-00002-of-00002.safetensors"
    index.write_text(json.dumps(d))
    assert_error(run("inspect", sharded), "d.weight is not in shard model-00002-of-00002")


@pytest.fixture
def onnx_dir(tmp_path) -> Path:
    """A one-MatMul graph with its weight in model.onnx.data."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.arange(64, dtype=np.float32).reshape(8, 8), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])], [w])
    d = tmp_path / "onnx"
    d.mkdir()
    onnx.save_model(helper.make_model(graph), str(d / "model.onnx"),
                    save_as_external_data=True, location="model.onnx.data", size_threshold=0)
    assert (d / "model.onnx.data").stat().st_size == 256
    return d


@pytest.mark.parametrize("keep", [100, 0])
def test_onnx_with_truncated_data(onnx_dir, keep):
    res = run("inspect", onnx_dir, "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["files"]["model.onnx.data"] == 256

    data = onnx_dir / "model.onnx.data"
    data.write_bytes(data.read_bytes()[:keep])
    assert_error(run("inspect", onnx_dir), "model.onnx.data: truncated", f"{keep:,} bytes",
                 "need 256")
    assert_error(run("inspect", onnx_dir / "model.onnx", "--json"), "truncated")


def test_onnx_with_data_of_another_size(onnx_dir):
    data = onnx_dir / "model.onnx.data"
    data.write_bytes(data.read_bytes() + b"\0" * 64)
    assert_error(run("inspect", onnx_dir), "does not match", "320 bytes")


def test_empty_onnx_graph(onnx_dir, tmp_path):
    (onnx_dir / "model.onnx").write_bytes(b"")
    assert_error(run("inspect", onnx_dir), "model.onnx: not a readable ONNX model", "0 bytes")
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    assert_error(run("inspect", empty, "--json"), "not a readable ONNX model")


def test_empty_gguf_named_as_gguf(tmp_path):
    empty = tmp_path / "empty.gguf"
    empty.write_bytes(b"")
    assert_error(run("inspect", empty), "too small to be GGUF (0 bytes)")
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not gguf at all, but long enough" * 2)
    assert_error(run("inspect", bad), "not a GGUF file")
