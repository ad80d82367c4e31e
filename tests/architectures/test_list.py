"""``quantport list`` shows every registered architecture with what each format does with it."""

from __future__ import annotations

import json

from click.testing import CliRunner

from quantport.architectures import ARCHITECTURES
from quantport.cli.main import cli


def test_list_shows_each_architecture_with_format_support() -> None:
    res = CliRunner().invoke(cli, ["list", "--json"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    rows = {a["name"]: a for a in json.loads(res.stdout)["architectures"]}
    assert set(rows) == set(ARCHITECTURES)
    assert rows["qwen2"]["gguf"] == "export (qwen2), import"
    assert rows["qwen3"]["hf_classes"] == "Qwen3ForCausalLM"
    # Mistral is written as GGUF llama, and a llama GGUF comes back as LlamaForCausalLM
    assert rows["mistral"]["gguf"] == "export (llama), import (as llama)"
    assert rows["bert"]["gptq"].startswith("no")
    assert rows["bert"]["calibrated"] == "gptq, smoothquant (onnx)"
    assert all(rows[a]["onnx"] == "yes" for a in ("llama", "mistral", "qwen2", "qwen3", "phi3",
                                                 "gemma3", "bert"))
    text = CliRunner().invoke(cli, ["list"], catch_exceptions=False).output
    line = next(ln for ln in text.splitlines() if ln.strip().startswith("qwen3 "))
    assert "gguf: export (qwen3), import" in line and "onnx: yes" in line
