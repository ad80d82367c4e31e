"""GGUF export refuses malformed side files of a checkpoint (tokenizer.json, a
sentence-transformers modules.json) with one line naming the file, never a traceback."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from quantport.cli.main import cli


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize(("text", "match"), [
    ("{not json", "tokenizer.json: invalid JSON"),
    ("[1, 2]", "tokenizer.json: expected a JSON object"),  # the reader refuses it (readers/hf.py)
    ('{"model": {"type": "BPE", "vocab": 5}}', "tokenizer.json: the tokenizers library"),
])
def test_bad_tokenizer_json(tiny_llama: Path, tmp_path: Path, text: str, match: str) -> None:
    ckpt = _copy(tiny_llama, tmp_path / "ckpt")
    (ckpt / "tokenizer.json").write_text(text)
    res = CliRunner().invoke(cli, ["convert", str(ckpt), "--to", "gguf", "--quant", "Q8_0",
                                   "-o", str(tmp_path / "x.gguf")])
    assert res.exit_code == 1, res.output
    assert match in res.output and "Traceback" not in res.output
    assert res.exception is None or isinstance(res.exception, SystemExit)
    assert not (tmp_path / "x.gguf").exists()


@pytest.mark.parametrize(("modules", "match"), [
    ("{", "modules.json: invalid JSON"),
    ('{"a": 1}', "expected a list of module objects"),
    ('[{"type": "sentence_transformers.models.Pooling", "path": "../../etc"}]',
     "must be a folder of the checkpoint"),
    ('[{"type": "sentence_transformers.models.Pooling", "path": "nowhere"}]',
     "no pooling config.json found"),
])
def test_bad_sentence_transformers_modules(tmp_path: Path, modules: str, match: str) -> None:
    from quantport.models import ALIASES

    ckpt = _copy(ALIASES["minilm"](), tmp_path / "ckpt")
    (ckpt / "modules.json").write_text(modules)
    res = CliRunner().invoke(cli, ["convert", str(ckpt), "--to", "gguf", "--quant", "Q8_0",
                                   "-o", str(tmp_path / "x.gguf")])
    assert res.exit_code == 1, res.output
    assert match in res.output and "Traceback" not in res.output
