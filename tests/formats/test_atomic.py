"""quantport.formats._atomic: what --force may replace, and stale temporaries of killed runs."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import gguf
import numpy as np
import pytest
from click.testing import CliRunner

from quantport.cli.main import cli
from quantport.errors import OutputExistsError
from quantport.formats import _atomic
from quantport.formats._atomic import (
    MANIFEST,
    atomic_dir,
    atomic_file,
    check_output,
    read_manifest,
    remove_stale_partials,
)


def _run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def _artifact(path: Path, files: dict[str, str]) -> None:
    with atomic_dir(path) as tmp:
        for rel, text in files.items():
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp / rel).write_text(text)


def _tree(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): p.read_text() for p in sorted(root.rglob("*"))
            if p.is_file()}


def _gguf(path: Path, quantport_key: bool) -> None:
    w = gguf.GGUFWriter(path, "llama")
    if quantport_key:
        w.add_string("quantport.version", "0.1.0")
    w.add_tensor("a", np.zeros((2, 32), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


# ------------------------------------------------------------------------------------------
# a. --force replaces only quantport's own artifacts
# ------------------------------------------------------------------------------------------


def test_cli_force_refuses_a_directory_quantport_did_not_write(tiny_llama, tmp_path):
    # `-o ~/models --force`: the user's unrelated files must survive, and the message says
    # what is in the way (the old code removed the whole directory)
    out = tmp_path / "models"
    out.mkdir()
    (out / "other-model.gguf").write_text("a")
    (out / "notes.txt").write_text("b")
    res = _run("convert", tiny_llama, "--to", "safetensors", "--quant", "w8-channel-sym",
               "-o", out, "--force", "-q")
    assert res.exit_code == 1, res.output
    assert "not a quantport artifact" in res.output
    assert "notes.txt" in res.output and "other-model.gguf" in res.output
    assert _tree(out) == {"other-model.gguf": "a", "notes.txt": "b"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["models"]  # no temporaries left


def test_cli_force_replaces_its_own_artifact_and_keeps_a_foreign_file(tiny_llama, tmp_path,
                                                                       caplog):
    out = tmp_path / "o"
    res = _run("convert", tiny_llama, "--to", "safetensors", "--quant", "w8-channel-sym",
               "-o", out, "-q")
    assert res.exit_code == 0, res.output
    listed = read_manifest(out)
    assert listed is not None and "model.safetensors" in listed and "config.json" in listed
    assert set(listed) | {MANIFEST} == {p.name for p in out.iterdir()}
    (out / "README.md").write_text("mine")  # added by the user after the conversion
    with caplog.at_level(logging.WARNING, logger="quantport"):
        res = _run("convert", tiny_llama, "--to", "safetensors", "--quant", "w4-g32-asym",
                   "-o", out, "--force", "-q")
    assert res.exit_code == 0, res.output
    assert json.loads((out / "config.json").read_text())["quantization_config"]
    assert (out / "README.md").read_text() == "mine"
    assert "README.md" in caplog.text and "not part of the replaced artifact" in caplog.text
    assert "README.md" not in read_manifest(out)


def test_cli_force_refuses_a_file_quantport_did_not_write(tiny_llama, tmp_path):
    target = tmp_path / "model.gguf"
    _gguf(target, quantport_key=False)  # a GGUF from some other tool
    before = target.read_bytes()
    res = _run("convert", tiny_llama, "--to", "gguf", "--quant", "Q8_0", "-o", target,
               "--force", "-q")
    assert res.exit_code == 1, res.output
    assert str(target) in res.output and "not written by quantport" in res.output
    assert target.read_bytes() == before


def test_check_output_file_targets(tmp_path):
    ours, theirs, text = tmp_path / "ours.gguf", tmp_path / "theirs.gguf", tmp_path / "x.txt"
    _gguf(ours, quantport_key=True)
    _gguf(theirs, quantport_key=False)
    text.write_text("not a gguf at all, but long enough to be scanned")
    check_output(ours, force=True)  # quantport wrote it: may be replaced
    with pytest.raises(OutputExistsError, match="pass --force"):
        check_output(ours, force=False)
    for p in (theirs, text):
        with pytest.raises(OutputExistsError, match=f"{p.name} exists and was not written by"):
            check_output(p, force=True)
    check_output(tmp_path / "new.gguf", force=False)
    check_output(tmp_path / "new.gguf", force=True)


def test_manifest_lists_every_file_and_force_removes_only_those(tmp_path, caplog):
    out = tmp_path / "art"
    _artifact(out, {"model.safetensors": "old", "config.json": "{}", "sub/tok.json": "t",
                    "stale-only-in-old.txt": "s"})
    data = json.loads((out / MANIFEST).read_text())
    assert data["quantport_version"]
    assert data["files"] == ["config.json", "model.safetensors", "stale-only-in-old.txt",
                             "sub/tok.json"]
    (out / "sub" / "user.txt").write_text("u")  # foreign file in a subdirectory
    (out / "user-dir").mkdir()
    (out / "user-dir" / "keep.bin").write_text("k")
    check_output(out, force=True)
    with caplog.at_level(logging.WARNING, logger="quantport"):
        _artifact(out, {"model.safetensors": "new", "config.json": "{1}"})
    assert _tree(out) == {
        "config.json": "{1}", "model.safetensors": "new", "sub/user.txt": "u",
        "user-dir/keep.bin": "k", MANIFEST: (out / MANIFEST).read_text(),
    }
    assert read_manifest(out) == ["config.json", "model.safetensors"]
    assert "sub/user.txt" in caplog.text and "user-dir/keep.bin" in caplog.text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]  # the old copy is gone


def test_foreign_file_with_a_name_the_new_artifact_uses_is_refused(tmp_path):
    # the foreign file would be overwritten: refuse rather than destroy it
    out = tmp_path / "art"
    _artifact(out, {"model.safetensors": "old"})
    (out / "tokenizer.json").write_text("user's")
    with pytest.raises(OutputExistsError, match="tokenizer.json"):
        _artifact(out, {"model.safetensors": "new", "tokenizer.json": "ours"})
    assert (out / "tokenizer.json").read_text() == "user's"
    assert (out / "model.safetensors").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]


@pytest.mark.parametrize("manifest", [
    None,
    "not json",
    json.dumps({"files": ["a"]}),  # no quantport_version
    json.dumps({"quantport_version": "0.1.0", "files": ["../victim"]}),
    json.dumps({"quantport_version": "0.1.0", "files": ["/etc/passwd"]}),
    json.dumps({"quantport_version": "0.1.0", "files": "a"}),
], ids=["none", "garbage", "no-version", "dotdot", "absolute", "not-a-list"])
def test_directory_without_a_valid_manifest_is_refused(tmp_path, manifest):
    out = tmp_path / "art"
    out.mkdir()
    (out / "a").write_text("a")
    if manifest is not None:
        (out / MANIFEST).write_text(manifest)
    victim = tmp_path / "victim"
    victim.write_text("v")
    before = _tree(out)
    with pytest.raises(OutputExistsError, match=r"not a quantport artifact.* holds \d file"):
        check_output(out, force=True)
    # atomic_dir checks again when it commits (check_output may not have been called)
    with pytest.raises(OutputExistsError, match="not a quantport artifact"):
        _artifact(out, {"a": "new"})
    assert _tree(out) == before and victim.read_text() == "v"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art", "victim"]


def test_refusal_names_a_few_files(tmp_path):
    out = tmp_path / "models"
    out.mkdir()
    for i in range(9):
        (out / f"m{i}.bin").write_text("x")
    with pytest.raises(OutputExistsError) as exc:
        check_output(out, force=True)
    msg = str(exc.value)
    assert "9 file(s)" in msg and "m0.bin" in msg and "... and 4 more" in msg
    assert "\n" not in msg


def test_empty_directory_may_be_replaced(tmp_path):
    out = tmp_path / "empty"
    out.mkdir()
    check_output(out, force=True)
    _artifact(out, {"a": "1"})
    assert _tree(out)["a"] == "1"


def test_failed_swap_puts_the_old_artifact_back(tmp_path, monkeypatch):
    out = tmp_path / "art"
    _artifact(out, {"model.safetensors": "old"})
    real = os.replace

    def failing(src, dst):
        # the rename of the new artifact into place fails (the old one is already aside)
        if Path(dst) == out and str(Path(src).name).endswith(".partial"):
            raise OSError(5, "simulated I/O error")
        return real(src, dst)

    monkeypatch.setattr(_atomic.os, "replace", failing)
    with pytest.raises(Exception, match="simulated I/O error"):
        _artifact(out, {"model.safetensors": "new"})
    monkeypatch.undo()
    assert _tree(out) == {"model.safetensors": "old", MANIFEST: (out / MANIFEST).read_text()}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]


def test_quantport_gguf_may_be_replaced_by_a_directory(tmp_path):
    target = tmp_path / "out"
    _gguf(target, quantport_key=True)
    check_output(target, force=True)
    _artifact(target, {"a": "1"})
    assert target.is_dir() and sorted(p.name for p in tmp_path.iterdir()) == ["out"]


# ------------------------------------------------------------------------------------------
# f. stale temporaries of killed runs
# ------------------------------------------------------------------------------------------

_HOLD = textwrap.dedent("""
    import fcntl, os, sys, time
    fd = os.open(sys.argv[1], os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    print("locked", flush=True)
    time.sleep(120)
""")


def _hold_lock(path: Path) -> subprocess.Popen:
    """Another process holding ``path``'s flock, as a running conversion does."""
    p = subprocess.Popen([sys.executable, "-c", _HOLD, str(path)], stdout=subprocess.PIPE,
                         text=True)
    assert p.stdout.readline().strip() == "locked"
    return p


def test_stale_partials_removed_held_and_foreign_kept(tmp_path, caplog):
    target = tmp_path / "m.gguf"
    stale_f = tmp_path / ".m.gguf.abcd_123.partial"
    stale_d = tmp_path / ".m.gguf.zzzzzzzz.partial"
    held_f = tmp_path / ".m.gguf.held0000.partial"
    held_d = tmp_path / ".m.gguf.held1111.partial"
    other = tmp_path / ".m.gguf.x.abcdefgh.partial"  # belongs to target "m.gguf.x"
    unrelated = tmp_path / ".m.gguf.notes"
    stale_f.write_bytes(b"\0" * 4096)
    stale_d.mkdir()
    (stale_d / "model.safetensors").write_bytes(b"\0" * 100)
    held_f.write_bytes(b"x")
    held_d.mkdir()
    (held_d / "f").write_text("x")
    other.write_text("o")
    unrelated.write_text("u")
    holders = [_hold_lock(held_f), _hold_lock(held_d)]
    try:
        with caplog.at_level(logging.WARNING, logger="quantport"):
            check_output(target, force=False)
        assert not stale_f.exists() and not stale_d.exists()
        assert held_f.exists() and held_d.exists() and other.exists() and unrelated.exists()
        assert str(stale_f) in caplog.text and str(stale_d) in caplog.text
        assert "stale temporary" in caplog.text and str(held_f) not in caplog.text
    finally:
        for h in holders:
            h.kill()
            h.wait()
    # once their holders are gone they are stale too
    assert sorted(remove_stale_partials(target)) == sorted([held_d, held_f])


_WRITER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from quantport.formats._atomic import atomic_dir, atomic_file
    kind, target = sys.argv[1], Path(sys.argv[2])
    if kind == "file":
        with atomic_file(target) as tmp, open(tmp, "wb") as f:
            f.write(b"\\0" * 65536)
            f.flush()
            print(tmp, flush=True)
            time.sleep(120)
    else:
        with atomic_dir(target) as tmp:
            (tmp / "model.safetensors").write_bytes(b"\\0" * 65536)
            print(tmp, flush=True)
            time.sleep(120)
""")


@pytest.mark.parametrize("kind", ["file", "dir"])
def test_sigkilled_conversion_leftover_is_removed_by_the_next_run(tmp_path, caplog, kind):
    target = tmp_path / ("out.gguf" if kind == "file" else "out")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    writer = subprocess.Popen([sys.executable, "-c", _WRITER, kind, str(target)],
                              stdout=subprocess.PIPE, text=True, env=env)
    try:
        partial = Path(writer.stdout.readline().strip())
        assert partial.exists() and partial.parent == tmp_path
        # while the writer runs, a concurrent run must not touch its temporary
        assert remove_stale_partials(target) == [] and partial.exists()
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait()
    assert partial.exists()  # SIGKILL runs no cleanup: the leftover is there
    with caplog.at_level(logging.WARNING, logger="quantport"):
        if kind == "file":
            with atomic_file(target) as tmp:
                tmp.write_bytes(b"new")
        else:
            _artifact(target, {"model.safetensors": "new"})
    assert not partial.exists()
    assert str(partial) in caplog.text and "stale temporary" in caplog.text
    assert sorted(p.name for p in tmp_path.iterdir()) == [target.name]


def test_cli_shows_the_stale_warning(tiny_llama, tmp_path):
    # through the real entry point (logging set up by the CLI, not by pytest's capture)
    out = tmp_path / "o"
    stale = tmp_path / ".o.abcdefgh.partial"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"\0" * 10)
    res = subprocess.run(
        [sys.executable, "-c", "from quantport.cli.main import cli; cli()", "convert",
         str(tiny_llama), "--to", "safetensors", "--quant", "w8-channel-sym", "-o", str(out),
         "-q"], capture_output=True, text=True, timeout=300,
    )
    assert res.returncode == 0, res.stderr
    assert "stale temporary" in res.stderr and str(stale) in res.stderr
    assert not stale.exists() and (out / "model.safetensors").is_file()


def test_temporary_is_locked_while_written(tmp_path):
    # the lock that tells a live write from a leftover is held for the whole write
    import fcntl

    with atomic_file(tmp_path / "f") as tmp:
        fd = os.open(tmp, os.O_RDONLY)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)
        tmp.write_text("x")
    with atomic_dir(tmp_path / "d") as tmp:
        fd = os.open(tmp, os.O_RDONLY | os.O_DIRECTORY)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)
