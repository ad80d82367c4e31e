"""The ``quantport`` command line.

Only this package prints, draws progress bars (stderr) and sets exit codes: 0 success,
1 error (``Error: ...``), 2 usage error (click), 3 validation failed. Heavy imports (torch,
transformers, llama_cpp) happen inside command bodies so ``quantport --help`` stays fast.
"""

from __future__ import annotations

import functools
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from quantport import __version__
from quantport.errors import QuantportError, ValidationFailed

__all__ = ["cli"]

EXIT_VALIDATION_FAILED = 3


class _Bars:
    """tqdm bars on stderr, one per phase; silent with --quiet or --json."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.bars: dict[str, Any] = {}

    def __call__(self, phase: str, done: int, total: int) -> None:
        if self.quiet:
            return
        from tqdm import tqdm

        bar = self.bars.get(phase)
        if bar is None:
            as_bytes = phase in ("write",)
            unit = {"write": "B", "validate": "window", "calibrate": "chunk"}.get(phase, "tensor")
            bar = self.bars[phase] = tqdm(total=total, desc=phase, file=sys.stderr, leave=False,
                                          unit=unit,
                                          unit_scale=as_bytes, dynamic_ncols=True,
                                          mininterval=0.25)
        bar.total = total
        bar.update(done - bar.n)  # update() honours mininterval; refresh() would redraw each call
        if done >= total:
            bar.close()
            del self.bars[phase]

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()
        self.bars.clear()


def _errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn library errors into one-line ``Error:`` messages with the right exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ValidationFailed as exc:
            click.echo(f"Error: {exc}", err=True)
            sys.exit(EXIT_VALIDATION_FAILED)
        except QuantportError as exc:
            raise click.ClickException(str(exc)) from exc
        except KeyboardInterrupt:
            click.echo("Interrupted; no partial output was left at the target.", err=True)
            sys.exit(130)
        except MemoryError as exc:
            raise click.ClickException("out of memory; try a smaller model or window") from exc
        except OSError as exc:
            raise click.ClickException(f"{exc.filename or ''}: {exc.strerror or exc}".lstrip(": ")) from exc

    return wrapper


def _common(fn: Callable[..., Any]) -> Callable[..., Any]:
    fn = click.option("-v", "--verbose", is_flag=True, help="Log each step (stderr).")(fn)
    fn = click.option("-q", "--quiet", is_flag=True, help="No progress bars.")(fn)
    fn = click.option("--json", "as_json", is_flag=True, help="Machine-readable output on stdout.")(fn)
    return fn


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="quantport")
def cli() -> None:
    """Quantize model checkpoints for llama.cpp, ONNX Runtime and transformers, and prove the
    artifacts right in the runtime that serves them.

    \b
    Example:
        quantport convert --to safetensors --quant w4-g64-sym -o smollm2-w4
        quantport validate smollm2-w4 --against smollm2
    """


# ---------------------------------------------------------------------------------- convert
@cli.command()
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
@_common
@_errors
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
    _setup_logging(verbose)
    bars = _Bars(quiet or as_json)
    from quantport.converters.convert import check_quant_name, convert_safetensors
    from quantport.converters.sources import open_source
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
        from quantport.converters.to_gguf import convert_gguf
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
        from quantport.converters.calibration import collect_imatrix

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


# --------------------------------------------------------------------------------- validate
@cli.command()
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("--against", "against", help="Source model (directory, .gguf, or alias); default: the default model.")
@click.option("--text", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="Evaluation text (default: WikiText-2 test split).")
@click.option("--ctx", type=int, default=512, show_default=True, help="Tokens per window.")
@click.option("--windows", type=int, default=8, show_default=True, help="Number of windows.")
@click.option("--max-kld", type=float, help="Fail above this mean KL divergence (default: by precision).")
@click.option("--min-top1", type=float, help="Fail below this top-1 agreement (default: by precision).")
@click.option("--max-ppl-ratio", type=float, help="Fail above this PPL ratio (default: by precision).")
@click.option("--min-cosine", type=float, help="Encoders: fail below this mean cosine (default: by precision).")
@_common
@_errors
def validate(artifact: Path, against: str | None, text: Path | None, ctx: int, windows: int,
             max_kld: float | None, min_top1: float | None, max_ppl_ratio: float | None,
             min_cosine: float | None,
             as_json: bool, quiet: bool, verbose: bool) -> None:
    """Load ARTIFACT in the runtime that serves it (transformers for safetensors, llama.cpp for
    GGUF) and compare its logits with the source's: perplexity, KL divergence, top-1
    agreement, max logit difference. Exits 3 when a threshold fails. Default thresholds
    depend on the artifact's precision (8, 6/5, 4, 3, 2 bits, or unquantized); each flag
    overrides one.

    \b
    Example:
        quantport validate smollm2-w4 --against smollm2 --json
        quantport validate smollm2-q4_k_m.gguf --windows 16
    """
    _setup_logging(verbose)
    if ctx < 16 or windows < 1:
        raise click.BadParameter("--ctx must be >= 16 and --windows >= 1")
    from quantport.validate.runner import Thresholds, artifact_bits
    from quantport.validate.runner import validate as run_validate

    if not artifact.exists():
        raise QuantportError(f"{artifact}: artifact not found")
    th = Thresholds.for_bits(artifact_bits(artifact)).override(
        max_kld=max_kld, min_top1=min_top1, max_ppl_ratio=max_ppl_ratio, min_cosine=min_cosine)
    bars = _Bars(quiet or as_json)
    report = run_validate(artifact, against, text=text, ctx=ctx, n_windows=windows,
                          thresholds=th, on_progress=bars)
    bars.close()
    d = report.to_dict()
    if as_json:
        click.echo(json.dumps(d, indent=2))
    else:
        _print_report(d)
    if not report.passed:
        sys.exit(EXIT_VALIDATION_FAILED)


def _fmt(v: Any) -> str:
    return "n/a" if v is None else (f"{v:.6g}" if isinstance(v, float) else str(v))


def _print_report(d: dict[str, Any]) -> None:
    click.echo(f"artifact:   {d['artifact']} ({d['runtime']})")
    click.echo(f"reference:  {d['reference']} (transformers, float32)")
    click.echo(f"text:       {d['n_windows']} windows x {d['window']} tokens, "
               f"{d['n_tokens_scored']} scored")
    keys = ["ppl", "ppl_reference", "kld_mean", "kld_p99", "top1_agreement",
            "max_abs_logit_diff", "cosine_mean", "cosine_min"]
    for k in keys:
        if d.get(k) is not None:
            click.echo(f"  {k:<20} {_fmt(d[k])}")
    for k, v in d.get("extra", {}).items():
        click.echo(f"  {k:<20} {_fmt(v)}")
    click.echo("PASSED" if d["passed"] else "FAILED: " + "; ".join(d["failures"]))


# ---------------------------------------------------------------------------------- inspect
@cli.command()
@click.argument("path", type=click.Path(path_type=Path))
@_common
@_errors
def inspect(path: Path, as_json: bool, quiet: bool, verbose: bool) -> None:
    """Show the tensors (shape, type, size), metadata and quantization summary of a
    safetensors file or checkpoint directory, a GGUF file or an ONNX model. Reads headers
    only.

    \b
    Examples:
        quantport inspect smollm2-w4 --json
        quantport inspect smollm2-q4_k_m.gguf
    """
    _setup_logging(verbose)
    from quantport.inspect import inspect_path

    info = inspect_path(path)
    if as_json:
        click.echo(json.dumps(info, indent=2, default=str))
        return
    click.echo(f"{info['path']}: {info['format']}, {len(info['tensors'])} tensors, "
               f"{info['total_bytes']:,} bytes of tensor data")
    for k, v in info.get("metadata", {}).items():
        s = str(v)
        click.echo(f"  {k} = {s if len(s) < 100 else s[:97] + '...'}")
    click.echo(f"  quantization: {json.dumps(info['quantization'])}")
    for t in info["tensors"]:
        click.echo(f"  {t['name']:<56} {str(tuple(t['shape'])):<18} {t['type']:<8} {t['bytes']:>12,}")


# ------------------------------------------------------------------------------------- list
@cli.command(name="list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output on stdout.")
def list_(as_json: bool) -> None:
    """List supported architectures, formats, quantization schemes and GGUF presets.

    \b
    Example:
        quantport list --json
    """
    from quantport.catalog import catalog

    c = catalog()
    if as_json:
        click.echo(json.dumps(c, indent=2))
        return
    for section, items in c.items():
        click.echo(f"{section}:")
        for item in items:
            if isinstance(item, dict):
                click.echo("  " + "  ".join(f"{v}" for v in item.values()))
            else:
                click.echo(f"  {item}")
