"""``quantport convert``: the recipe from the command line, then the pipeline."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import click

from quantport.cli._common import Bars, common_options, handle_errors, setup_logging
from quantport.recipe import ACT_ORDERS, ACT_SCHEMES, CALIB_INPUTS, METHODS

__all__ = ["convert"]

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?i?B)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def _parse_size(text: str) -> int:
    """``5GB``, ``500MB``, ``2GiB`` or a byte count, as transformers' ``max_shard_size``."""
    m = _SIZE.match(text)
    if not m or (m[2] or "").upper() not in _UNITS:
        raise click.BadParameter(f"{text!r} is not a size; write e.g. 5GB, 500MB or 2GiB",
                                 param_hint="--max-shard-size")
    return int(float(m[1]) * _UNITS[(m[2] or "").upper()])


@click.command()
@click.argument("src", required=False)
@click.option("--to", "fmt", type=click.Choice(["safetensors", "gguf", "onnx", "gptq"]),
              required=True, help="Output format.")
@click.option("--quant", required=True,
              help="Scheme (w4-g64-sym, w8-channel-sym, f16...) or GGUF preset (Q4_K_M, Q8_0...).")
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True,
              help="Output directory (safetensors, onnx, gptq) or file (gguf).")
@click.option("--force", is_flag=True,
              help="Replace an existing quantport artifact (never files quantport did not write).")
@click.option("--method", type=click.Choice(list(METHODS)), default="rtn", show_default=True,
              help="Rounding method: " + "; ".join(f"{m.name}: {m.description}"
                                                   for m in METHODS.values()) + ".")
@click.option("--tensor-type", "tensor_types", multiple=True, metavar="REGEX=TYPE",
              help="Per-tensor override, first match wins (repeatable). GGUF: a ggml type, "
                   "matched against GGUF names (blk.0.attn_v.weight=Q8_0). safetensors: a scheme "
                   "or f32/f16/bf16, matched against Hugging Face names "
                   "(model.layers.0.mlp.down_proj.weight=w8-channel-sym).")
@click.option("--keep-unquantized", is_flag=True,
              help="Leave tensors whose width does not fit the group size in float.")
@click.option("--max-shard-size", default="5GB", show_default=True, metavar="SIZE",
              help="safetensors: largest shard (5GB, 500MB...), as transformers' save_pretrained.")
@click.option("--allow-pickle", is_flag=True,
              help="Accept pytorch_model.bin checkpoints (loaded with weights_only=True).")
@click.option("--pure", is_flag=True, help="GGUF: one type for every weight matrix.")
@click.option("--output-tensor-type", "output_type", metavar="TYPE",
              help="GGUF: type of the output tensor (or the tied embedding), as llama-quantize.")
@click.option("--token-embedding-type", metavar="TYPE",
              help="GGUF: type of token_embd.weight, as llama-quantize.")
@click.option("--imatrix", "imatrix_path", type=click.Path(path_type=Path, exists=True,
              dir_okay=False), help="GGUF: importance matrix file (llama.cpp .dat or .gguf).")
@click.option("--calib", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="Calibration text (never the evaluation text). With --method rtn to GGUF it "
                   "gives an importance matrix; calibrated methods default to WikiText-2's "
                   "validation text.")
@click.option("--calib-samples", "--calib-chunks", "calib_samples", type=click.IntRange(min=1),
              default=None, help="Calibration windows [default: 128 for calibrated methods, "
                                 "16 for an importance matrix].")
@click.option("--calib-len", type=click.IntRange(min=16), default=512, show_default=True,
              help="Tokens per calibration window.")
@click.option("--damp", type=float, default=0.01, show_default=True,
              help="GPTQ: dampening, a fraction of the Hessian's mean diagonal (raised x10 "
                   "while the Cholesky factorisation fails).")
@click.option("--act-order", type=click.Choice(list(ACT_ORDERS)), default="static",
              show_default=True,
              help="GPTQ column order: static (by Hessian diagonal, groups fitted first, no "
                   "g_idx), group (groups in that order, stored as g_idx), none.")
@click.option("--calib-inputs", type=click.Choice(list(CALIB_INPUTS)), default="quantized",
              show_default=True,
              help="Each layer calibrates on the outputs of the quantized layers before it "
                   "(true-sequential) or of the float ones (one forward pass a layer); "
                   "asymmetric: GPTQ on the quantized layers' outputs, aiming at the float "
                   "model's (GPTAQ, about twice the time).")
@click.option("--calib-dtype", type=click.Choice(["float32", "bfloat16"]), default="float32",
              show_default=True, help="dtype of the calibration forward passes.")
@click.option("--smooth-alpha", type=float, default=None,
              help="SmoothQuant: migration strength α in (0, 1), per input channel "
                   "s = max|x|^α / max|W|^(1-α); higher moves more of the activations' range "
                   "into the weights [default: 0.8 for a decoder whose activations get one scale "
                   "per tensor (--act-scheme tensor), else 0.5].")
@click.option("--act-scheme", type=click.Choice(list(ACT_SCHEMES)), default=None,
              help="--quant w8a8: the int8 activations get one dynamic scale per token "
                   "(symmetric; more accurate) or per tensor (ORT's DynamicQuantizeLinear, "
                   "the faster kernel; ONNX only) [default: tensor for ONNX, token for "
                   "safetensors].")
@click.option("--device", default="auto", show_default=True, metavar="auto|cpu|cuda",
              help="Where the calibrated methods (--method gptq, awq, awq+gptq, "
                   "smoothquant) run: auto takes a CUDA GPU when torch sees one (cuda:N picks "
                   "one), else the CPU. Nothing else uses a GPU.")
@click.option("--save-imatrix", type=click.Path(path_type=Path),
              help="GGUF: write the computed importance matrix here (llama.cpp GGUF format).")
@click.option("--dry-run", is_flag=True,
              help="Print the plan (what every tensor becomes) and the exact output size only.")
@click.option("--threads", type=click.IntRange(min=1), metavar="N",
              help="Worker processes (default: one per available core, within memory).")
@click.option("--onnx-matmul", type=click.Choice(["qdq", "nbits"]), default="qdq",
              show_default=True,
              help="ONNX: quantized Linear weights as DequantizeLinear -> MatMul (ORT fuses it "
                   "into MatMulNBits) or as com.microsoft MatMulNBits directly.")
@click.option("--accuracy-level", type=click.IntRange(0, 4), default=None,
              help="ONNX: MatMulNBits accuracy_level (0 unset, 1 fp32, 2 fp16, 3 bf16, 4 int8 "
                   "activations; default 4, the fastest on CPU).")
@common_options
@handle_errors
def convert(src: str | None, fmt: str, quant: str, output: Path, force: bool, method: str,
            tensor_types: tuple[str, ...], keep_unquantized: bool, max_shard_size: str,
            allow_pickle: bool, pure: bool, output_type: str | None,
            token_embedding_type: str | None, imatrix_path: Path | None, calib: Path | None,
            calib_samples: int | None, calib_len: int, damp: float, act_order: str,
            calib_inputs: str, calib_dtype: str, smooth_alpha: float | None,
            act_scheme: str | None, device: str, save_imatrix: Path | None, dry_run: bool,
            threads: int | None, onnx_matmul: str, accuracy_level: int | None, as_json: bool,
            quiet: bool, verbose: bool) -> None:
    """Convert SRC (a checkpoint directory, a .gguf file, or an alias: smollm2, minilm) into a
    quantized artifact. Without SRC, the default model (SmolLM2-135M-Instruct) is used.

    \b
    Examples:
        quantport convert --to safetensors --quant w4-g64-sym -o smollm2-w4
        quantport convert minilm --to safetensors --quant w8-channel-sym -o minilm-w8
        quantport convert --to gguf --quant Q4_K_M -o smollm2-q4_k_m.gguf
        quantport convert --to gguf --quant Q4_K_M --dry-run -o x.gguf --json
        quantport convert --to gguf --quant Q4_K_M --calib valid.txt -o smollm2-imat.gguf
        quantport convert --to safetensors --quant w4-g64-sym --method gptq -o smollm2-gptq
        quantport convert --to gguf --quant Q4_K_M --method gptq -o smollm2-gptq.gguf
        quantport convert --to safetensors --quant w4-g64-sym \\
            --tensor-type 'down_proj=w8-channel-sym' -o smollm2-mixed
        quantport convert some.gguf --to safetensors --quant f32 -o some-hf
        quantport convert --to onnx --quant w4-g32-sym -o smollm2-onnx-int4
        quantport convert --to onnx --quant w4-g32-sym --onnx-matmul nbits \\
            --tensor-type 'model.embed_tokens.weight=w8-channel-sym' -o smollm2-onnx-mixed
        quantport convert minilm --to onnx --quant w8a8 -o minilm-onnx-w8a8
        quantport convert --to onnx --quant w8a8 --act-scheme token \\
            --method smoothquant -o smollm2-onnx-sq
    """
    setup_logging(verbose)
    _refuse_inapplicable(fmt, method, calib is not None)
    from quantport.pipeline import convert as run
    from quantport.pipeline import make_recipe

    # the recipe first: every option is checked before the (possibly slow) source opens
    recipe = make_recipe(
        fmt, quant, tensor_types=tensor_types, method=method, keep_unquantized=keep_unquantized,
        pure=pure, output_type=output_type, token_embedding_type=token_embedding_type,
        imatrix=imatrix_path, calib=calib, calib_samples=calib_samples, calib_len=calib_len,
        max_shard_size=_parse_size(max_shard_size), damp=damp, act_order=act_order,
        calib_inputs=calib_inputs, calib_dtype=calib_dtype, smooth_alpha=smooth_alpha,
        device=device,
        onnx_matmul=onnx_matmul, accuracy_level=accuracy_level, act_scheme=act_scheme,
    )  # fmt: skip
    if save_imatrix and not calib:
        raise click.UsageError("--save-imatrix needs --calib")
    if save_imatrix and (fmt != "gguf" or method != "rtn"):
        # only round-to-nearest to GGUF computes llama.cpp's importance matrix; the
        # calibrated methods keep Hessians, not an imatrix (the file would never appear)
        raise click.UsageError(f"--save-imatrix applies to --to gguf --method rtn with "
                               f"--calib; --to {fmt} --method {method} computes no importance "
                               "matrix")
    if save_imatrix and save_imatrix.is_dir():
        raise click.UsageError(f"--save-imatrix {save_imatrix} is a directory; give a file "
                               "path (imatrix.gguf)")
    if save_imatrix and os.path.abspath(save_imatrix) == os.path.abspath(output):
        raise click.UsageError(f"--save-imatrix and -o are the same path ({output}); the "
                               "importance matrix would replace the model")
    from quantport.formats._atomic import check_output

    # a dry run says whether the real run would refuse its output, and changes nothing
    check_output(output, force, clean=not dry_run)
    if save_imatrix:
        # the same rule as the artifact's, before any work: an existing file is replaced
        # only with --force, and only when quantport wrote it
        check_output(save_imatrix, force, clean=not dry_run)
    from quantport.models import open_source

    bars = Bars(quiet or as_json)
    source = open_source(src, allow_pickle=allow_pickle, on_progress=bars)
    report = run(source, recipe, output, force=force, dry_run=dry_run, threads=threads,
                 on_progress=bars)
    bars.close()
    if save_imatrix and report.imatrix is not None and not dry_run:
        from quantport.formats.imatrix import write_imatrix

        write_imatrix(save_imatrix, report.imatrix)
    d = report.to_dict()
    if as_json:
        click.echo(json.dumps(d, indent=2))
    elif dry_run:
        _print_plan(d)
    else:
        _print_done(d)


def _refuse_inapplicable(fmt: str, method: str, calib: bool) -> None:
    """A usage error for an option set to a value (other than its default) that this
    conversion would ignore: a user who sets --damp for round-to-nearest expects it to do
    something."""
    calibrated = method != "rtn"
    gptq = "gptq" in method
    applies = {  # parameter -> (option, whether it applies, to what)
        "damp": ("--damp", gptq, "--method gptq or awq+gptq"),
        "act_order": ("--act-order", gptq, "--method gptq or awq+gptq"),
        "calib_inputs": ("--calib-inputs", calibrated, "a calibrated --method"),
        "calib_dtype": ("--calib-dtype", calibrated, "a calibrated --method"),
        "device": ("--device", calibrated, "a calibrated --method"),
        "smooth_alpha": ("--smooth-alpha", method == "smoothquant", "--method smoothquant"),
        "calib_samples": ("--calib-samples", calibrated or calib,
                          "a calibrated --method or --calib"),
        "calib_len": ("--calib-len", calibrated or calib, "a calibrated --method or --calib"),
        "max_shard_size": ("--max-shard-size", fmt in ("safetensors", "gptq"),
                           "--to safetensors or gptq"),
        "keep_unquantized": ("--keep-unquantized", fmt != "gguf",
                             "--to safetensors, onnx or gptq"),
    }
    ctx = click.get_current_context()
    defaults = {p.name: p.get_default(ctx) for p in ctx.command.params}
    # a value other than the default: a wrapper that always passes the full option set with
    # its defaults changes nothing and is not refused
    given = [(opt, to) for name, (opt, ok, to) in applies.items()
             if not ok and ctx.params.get(name) != defaults.get(name)]
    if given:
        opt, to = given[0]
        raise click.UsageError(f"{opt} applies to {to}; this conversion (--to {fmt} --method "
                               f"{method}) would ignore it")


def _print_plan(p: dict[str, Any]) -> None:
    for r in p["tensors"]:
        click.echo(f"{r['name']:<48} {str(tuple(r['shape'])):<14} {r['type']:<14} "
                   f"{r['bytes']:>12,}  {r['reason']}")
    for name, why in p["dropped"].items():
        click.echo(f"{name:<48} dropped: {why}")
    if len(p["files"]) > 1:
        for name, size in p["files"].items():
            click.echo(f"  {name:<46} {size:>14,} bytes")
    size = p["size"]
    click.echo(f"output size: {size:,} bytes ({size / 2**20:.2f} MiB)")


def _print_done(d: dict[str, Any]) -> None:
    click.echo(f"wrote {d['output']} ({d['format']}, {d['quant']}): {d['bytes'] / 2**20:.1f} MiB, "
               f"{d['n_quantized']} tensors quantized in {d['seconds']:.1f}s")
    click.echo("  tensor types: " + ", ".join(f"{k} x{v}" for k, v in d["tensor_types"].items()))
