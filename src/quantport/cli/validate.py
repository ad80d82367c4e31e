"""``quantport validate``: the artifact in its runtime against the source."""

from __future__ import annotations

import json
import sys
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

__all__ = ["validate"]


# --------------------------------------------------------------------------------- validate
@click.command()
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
@common_options
@handle_errors
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


