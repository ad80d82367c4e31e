"""``quantport validate``: the artifact in its runtime, checked for correctness and quality."""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from quantport.cli._common import (
    EXIT_VALIDATION_FAILED,
    Bars,
    common_options,
    handle_errors,
    setup_logging,
)
from quantport.errors import QuantportError

__all__ = ["EXIT_CORRECTNESS_FAILED", "EXIT_QUALITY_FAILED", "validate"]

#: the runtime does not compute what the artifact's weights mean, or its tokenizer differs
EXIT_CORRECTNESS_FAILED = EXIT_VALIDATION_FAILED  # 3
#: the artifact is correct but a quality threshold (--max-kld, --min-top1, ...) failed
EXIT_QUALITY_FAILED = 4


def _limit(ok: Callable[[float], bool], what: str) -> Callable[..., float | None]:
    """A callback refusing a quality limit that is not finite or not ``ok``: NaN or infinity
    would reach the --json report as bare NaN/Infinity (not JSON), and a limit outside the
    metric's range can only fail."""

    def check(ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
        if value is not None and not (math.isfinite(value) and ok(value)):
            raise click.BadParameter(f"{value} is not {what}")
        return value

    return check


_at_least_0 = _limit(lambda v: v >= 0, "a finite number >= 0")
_positive = _limit(lambda v: v > 0, "a finite number > 0")
_fraction = _limit(lambda v: 0 <= v <= 1, "a number in [0, 1]")


# --------------------------------------------------------------------------------- validate
@click.command()
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("--against", "against", help="Source model (directory, .gguf, or alias); default: the default model.")
@click.option("--text", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="Evaluation text (default: WikiText-2 test split).")
@click.option("--ctx", type=int, default=512, show_default=True,
              help="Tokens per window (decoders; an encoder is scored on sentences).")
@click.option("--windows", type=int, default=8, show_default=True,
              help="Number of windows (decoders).")
@click.option("--max-kld", type=float, callback=_at_least_0, help="Quality: fail above this mean KL divergence from the source (default: by precision).")
@click.option("--min-top1", type=float, callback=_fraction, help="Quality: fail below this top-1 agreement with the source (default: by precision).")
@click.option("--max-ppl-ratio", type=float, callback=_positive, help="Quality: fail above this PPL ratio artifact/source (default: by precision).")
@click.option("--min-cosine", type=float, callback=_fraction, help="Quality, encoders: fail below this mean embedding cosine (default: by precision).")
@click.option("--threads", type=click.IntRange(1), help="ONNX Runtime's intra-op threads (default: the cores available, at most 8).")
@common_options
@handle_errors
def validate(artifact: Path, against: str | None, text: Path | None, ctx: int, windows: int,
             max_kld: float | None, min_top1: float | None, max_ppl_ratio: float | None,
             min_cosine: float | None, threads: int | None,
             as_json: bool, quiet: bool, verbose: bool) -> None:
    """Load ARTIFACT in the runtime that serves it (transformers for safetensors, llama.cpp for
    GGUF, ONNX Runtime on CPU for an ONNX directory) and check it on WikiText-2 windows, in two
    groups:

    \b
    correctness  the runtime computes what the artifact's weights mean: its logits match
                 quantport's own forward of the weights the artifact holds (within kernel
                 noise), and its tokenizer gives the source tokenizer's ids; ONNX decoders
                 also decode 32 tokens greedily through the graph's KV cache, which must
                 give the tokens of that forward's greedy decoding;
    quality      PPL ratio, mean KL divergence and top-1 agreement against the float32
                 source (cosine of embeddings for encoders), within thresholds that default
                 to the artifact's precision (8, 6/5, 4, 3, 2 bits, or unquantized); each
                 --max-*/--min-* flag overrides one.

    \b
    Exit status: 0 every check passed; 3 a correctness check failed (the artifact is
    broken); 4 correct, but a quality threshold failed; 1 error.

    \b
    Example:
        quantport validate smollm2-w4 --against smollm2 --json
        quantport validate smollm2-q4_k_m.gguf --windows 16 --max-ppl-ratio 1.2
        quantport validate smollm2-onnx-w4 --threads 2
    """
    setup_logging(verbose)
    if ctx < 16 or windows < 1:
        raise click.BadParameter("--ctx must be >= 16 and --windows >= 1")
    from quantport.validate.runner import Thresholds, artifact_bits
    from quantport.validate.runner import validate as run_validate

    if not artifact.exists():
        raise QuantportError(f"{artifact}: artifact not found")
    th = Thresholds.for_bits(artifact_bits(artifact)).override(
        max_kld=max_kld, min_top1=min_top1, max_ppl_ratio=max_ppl_ratio, min_cosine=min_cosine)
    bars = Bars(quiet or as_json)
    try:
        report = run_validate(artifact, against, text=text, ctx=ctx, n_windows=windows,
                              thresholds=th, on_progress=bars, threads=threads)
    finally:
        bars.close()
    d = report.to_dict()
    code = exit_code(d)
    d["exit_code"] = code
    if as_json:
        click.echo(json.dumps(d, indent=2))
    else:
        _print_report(d)
    if code:
        sys.exit(code)


def exit_code(d: dict[str, Any]) -> int:
    """3 when a correctness check failed, 4 when only quality failed, else 0."""
    if not d["correct"]:
        return EXIT_CORRECTNESS_FAILED
    return 0 if d["quality_passed"] else EXIT_QUALITY_FAILED


def _fmt(v: Any) -> str:
    return "n/a" if v is None else (f"{v:.6g}" if isinstance(v, float) else str(v))


_GROUPS = {
    "correctness": "correctness (the runtime computes what the artifact's weights mean)",
    "quality": "quality (against the float32 source)",
}


def _print_report(d: dict[str, Any]) -> None:
    click.echo(f"artifact:   {d['artifact']} ({d['runtime']})")
    click.echo(f"reference:  {d['reference']} (transformers, float32)")
    if d.get("cosine_mean") is not None:
        # an encoder is scored on whole sentences; "0 scored" read as if nothing was
        click.echo(f"text:       {d['n_windows']} sentences of at most {d['window']} tokens "
                   "(--windows and --ctx apply to decoders)")
    else:
        click.echo(f"text:       {d['n_windows']} windows x {d['window']} tokens, "
                   f"{d['n_tokens_scored']} scored")
    for group, title in _GROUPS.items():
        checks = [c for c in d["checks"] if c["group"] == group]
        if not checks:
            continue
        click.echo(f"{title}:")
        for c in checks:
            mark = {True: "pass", False: "FAIL", None: "skip"}[c["passed"]]
            limit = "" if c["limit"] is None else f"{c['op']} {_fmt(c['limit'])}"
            line = f"  {mark:<4}  {c['name']:<24} {_fmt(c['value']):>12}  {limit:<10}"
            if c["detail"] and (c["passed"] is not True or c["name"].startswith("tokenizer")):
                line += f"  {c['detail']}"
            click.echo(line.rstrip())
    figures = ["ppl", "ppl_reference", "kld_p99", "kld_max", "max_abs_logit_diff", "cosine_min"]
    shown = ", ".join(f"{k} {_fmt(d[k])}" for k in figures if d.get(k) is not None)
    if shown:
        click.echo(f"figures:    {shown}")
    n_c = [c for c in d["checks"] if c["group"] == "correctness" and c["passed"] is not None]
    n_q = [c for c in d["checks"] if c["group"] == "quality" and c["passed"] is not None]
    tally = (f"correctness {sum(c['passed'] for c in n_c)}/{len(n_c)}, "
             f"quality {sum(c['passed'] for c in n_q)}/{len(n_q)} checks passed")
    if d["passed"]:
        click.echo(f"PASSED: {tally}")
    elif not d["correct"]:
        click.echo(f"FAILED correctness (exit 3): {tally}: " + "; ".join(d["failures"]))
    else:
        click.echo(f"FAILED quality (exit 4; the artifact is correct): {tally}: "
                   + "; ".join(d["failures"]))
