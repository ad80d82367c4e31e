"""``quantport convert``: the recipe from the command line, then the pipeline."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from quantport.cli._common import (
    Bars,
    common_options,
    handle_errors,
    setup_logging,
)
from quantport.errors import QuantportError

__all__ = ["convert"]


# ---------------------------------------------------------------------------------- convert
@click.command()
@click.argument("src", required=False)
@click.option("--to", "fmt", type=click.Choice(["safetensors", "gguf", "onnx"]), required=True,
              help="Output format.")
@click.option("--quant", required=True,
              help="Scheme (w4-g64-sym, w8-channel-sym, f16...) or GGUF preset (Q4_K_M, Q8_0...).")
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True,
              help="Output directory (safetensors) or file (gguf).")
@click.option("--force", is_flag=True, help="Overwrite an existing output.")
@click.option("--keep-unquantized", is_flag=True,
              help="Leave tensors whose width does not fit the group size in float.")
@click.option("--allow-pickle", is_flag=True,
              help="Accept pytorch_model.bin checkpoints (loaded with weights_only=True).")
@click.option("--pure", is_flag=True, help="GGUF: one type for every weight matrix.")
@click.option("--tensor-type", "tensor_types", multiple=True, metavar="REGEX=TYPE",
              help="GGUF: per-tensor type override (repeatable; always wins).")
@click.option("--output-tensor-type", "output_type", metavar="TYPE",
              help="GGUF: type of the output tensor (or the tied embedding), as llama-quantize.")
@click.option("--token-embedding-type", metavar="TYPE",
              help="GGUF: type of token_embd.weight, as llama-quantize.")
@click.option("--imatrix", "imatrix_path", type=click.Path(path_type=Path, exists=True,
              dir_okay=False), help="GGUF: importance matrix file (llama.cpp .dat or .gguf).")
@click.option("--calib", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="GGUF: calibration text; computes an importance matrix from it.")
@click.option("--calib-chunks", type=int, default=16, show_default=True,
              help="Calibration windows of 512 tokens.")
@click.option("--save-imatrix", type=click.Path(path_type=Path),
              help="GGUF: write the computed importance matrix here (llama.cpp GGUF format).")
@click.option("--dry-run", is_flag=True, help="GGUF: print the per-tensor plan and exact size only.")
@click.option("--threads", type=click.IntRange(min=1), metavar="N",
              help="GGUF: tensors quantized at once (default: one per available core).")
@common_options
@handle_errors
def convert(src: str | None, fmt: str, quant: str, output: Path, force: bool,
            keep_unquantized: bool, allow_pickle: bool, pure: bool, tensor_types: tuple[str, ...],
            output_type: str | None, token_embedding_type: str | None, imatrix_path: Path | None, calib: Path | None, calib_chunks: int,
            save_imatrix: Path | None, dry_run: bool, threads: int | None, as_json: bool,
            quiet: bool, verbose: bool) -> None:
    """Convert SRC (a checkpoint directory, a .gguf file, or an alias: smollm2, minilm) into a
    quantized artifact. Without SRC, the default model (SmolLM2-135M-Instruct) is used.

    \b
    Examples:
        quantport convert --to safetensors --quant w4-g64-sym -o smollm2-w4
        quantport convert minilm --to safetensors --quant w8-channel-sym -o minilm-w8
        quantport convert --to gguf --quant Q4_K_M -o smollm2-q4_k_m.gguf
        quantport convert --to gguf --quant Q4_K_M --calib valid.txt -o smollm2-imat.gguf
        quantport convert some.gguf --to safetensors --quant f32 -o some-hf
    """
    setup_logging(verbose)
    bars = Bars(quiet or as_json)
    from quantport.writers.safetensors import check_quant_name, convert_safetensors
    from quantport.models import open_source
    from quantport.formats._atomic import check_output

    if fmt == "onnx":
        raise QuantportError("ONNX export is not available yet; use --to safetensors or --to gguf")
    if fmt == "safetensors":
        if (pure or tensor_types or imatrix_path or calib or dry_run or save_imatrix
                or output_type or token_embedding_type):
            raise click.UsageError(
                "--pure, --tensor-type, --output-tensor-type, --token-embedding-type, --imatrix, "
                "--calib, --save-imatrix and --dry-run apply to --to gguf only"
            )
        check_quant_name(quant)
        if not dry_run:
            check_output(output, force)
        source = open_source(src, allow_pickle=allow_pickle, on_progress=bars)
        report = convert_safetensors(source, output, quant, keep_unquantized=keep_unquantized,
                                     force=force, on_progress=bars)
        bars.close()
        _emit_convert(report.to_dict(), as_json)
        return
    # --to gguf
    try:
        from quantport.writers.gguf import convert_gguf
    except ImportError:
        raise QuantportError("GGUF export is not available in this build") from None
    if imatrix_path and calib:
        raise click.UsageError("give either --imatrix or --calib, not both")
    if not dry_run:
        check_output(output, force)
    source = open_source(src, allow_pickle=allow_pickle, on_progress=bars)
    imatrix = None
    if imatrix_path:
        from quantport.formats.imatrix import read_imatrix

        imatrix = read_imatrix(imatrix_path)
    elif calib:
        from quantport.pipeline.calibration import collect_imatrix

        imatrix = collect_imatrix(source, calib, n_chunks=calib_chunks, on_progress=bars)
        if save_imatrix:
            from quantport.formats.imatrix import write_imatrix

            write_imatrix(save_imatrix, imatrix)
    result = convert_gguf(source, output, quant, imatrix=imatrix, pure=pure,
                          overrides=tensor_types, output_type=output_type,
                          token_embedding_type=token_embedding_type, force=force,
                          dry_run=dry_run, threads=threads, on_progress=bars)
    bars.close()
    if dry_run:
        rows = [{"name": p.name, "shape": list(p.shape), "type": p.type, "reason": p.reason,
                 "bytes": p.nbytes} for p in result.plan]
        if as_json:
            click.echo(json.dumps({"output": str(output), "file_size": result.size,
                                   "tensors": rows}, indent=2))
        else:
            for r in rows:
                click.echo(f"{r['name']:<32} {str(tuple(r['shape'])):<16} {r['type']:<7} "
                           f"{r['bytes']:>12,}  {r['reason']}")
            click.echo(f"file size: {result.size:,} bytes ({result.size / 2**20:.2f} MiB)")
        return
    d = result.report.to_dict()
    types: dict[str, int] = {}
    for p in result.plan:
        types[p.type] = types.get(p.type, 0) + 1
    d["tensor_types"] = types
    _emit_convert(d, as_json)


def _emit_convert(d: dict[str, Any], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(d, indent=2))
        return
    click.echo(f"wrote {d['output']} ({d['format']}, {d['quant']}): {d['bytes'] / 2**20:.1f} MiB, "
               f"{d['n_quantized']} tensors quantized in {d['seconds']:.1f}s")
    if "tensor_types" in d:
        click.echo("  tensor types: " + ", ".join(f"{k} x{v}" for k, v in d["tensor_types"].items()))
        return
    for name, why in d.get("kept", {}).items():
        click.echo(f"  kept in float: {name} ({why})")


