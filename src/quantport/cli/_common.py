"""What every command shares: progress bars, error handling and exit codes, logging.

Only this package prints, draws progress bars (stderr) and sets exit codes: 0 success,
1 error (``Error: ...``), 2 usage error, 3 validation: not correct, 4 validation: correct but a
quality threshold failed. Heavy imports (torch, transformers, llama_cpp) happen inside command bodies so ``quantport --help`` stays fast.
"""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from typing import Any

import click

from quantport.errors import OptionError, QuantportError, ValidationFailed

__all__ = ["EXIT_VALIDATION_FAILED", "Bars", "common_options", "handle_errors", "setup_logging"]

EXIT_VALIDATION_FAILED = 3


class Bars:
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


def handle_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn library errors into one-line ``Error:`` messages with the right exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ValidationFailed as exc:
            click.echo(f"Error: {exc}", err=True)
            sys.exit(EXIT_VALIDATION_FAILED)
        except OptionError as exc:
            raise click.UsageError(str(exc)) from exc
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


def common_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    fn = click.option("-v", "--verbose", is_flag=True, help="Log each step (stderr).")(fn)
    fn = click.option("-q", "--quiet", is_flag=True, help="No progress bars.")(fn)
    fn = click.option("--json", "as_json", is_flag=True, help="Machine-readable output on stdout.")(fn)
    return fn


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")


