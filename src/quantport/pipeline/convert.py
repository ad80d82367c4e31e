"""One conversion pipeline for every format: recipe -> plan -> stages -> writer.

1. The writer of the recipe's format (:data:`quantport.writers.WRITERS`) makes the
   :class:`~quantport.plan.Plan` from the source's header: what every tensor
   becomes and the exact size of every output file. ``dry_run`` stops here.
2. The calibration stage gives the rounding what it needs: today an importance matrix for
   GGUF (read with ``--imatrix`` or computed from ``--calib`` by
   :func:`quantport.pipeline.calibration.collect_imatrix`); calibrated methods (GPTQ, AWQ)
   plug in here.
3. Execution (:mod:`quantport.pipeline.execute`) streams the tensors from the source, rounds
   them onto their targets and puts the results into the writer's sink, which packs them at
   their final offsets. Methods that treat tensors independently run in parallel workers.

Library code: progress goes through ``on_progress(phase, done, total)``; nothing is printed.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from quantport.errors import ConfigError, UnsupportedQuantError
from quantport.formats._atomic import check_output
from quantport.formats.imatrix import ImatrixData
from quantport.pipeline.execute import execute
from quantport.plan import Plan
from quantport.recipe import Recipe
from quantport.readers.source import ModelSource
from quantport.writers import get_writer

__all__ = ["ConvertReport", "convert", "make_plan"]

log = logging.getLogger(__name__)
Progress = Callable[[str, int, int], None]


@dataclass
class ConvertReport:
    """What a conversion did (or, for a dry run, would do).

    Attributes:
        output: the artifact path.
        plan: the plan it followed (per tensor: target, reason, bytes; the files and sizes).
        seconds: wall time.
        dry_run: nothing was written.
        imatrix: the importance matrix used, if any.
        calibration: what a calibrated method's stage did
            (:class:`~quantport.pipeline.calibrated.CalibrationReport`), if one ran.
    """

    output: Path
    plan: Plan
    seconds: float = 0.0
    dry_run: bool = False
    imatrix: ImatrixData | None = field(default=None, repr=False)
    calibration: Any = field(default=None, repr=False)

    @property
    def size(self) -> int:
        """Exact size of the artifact in bytes (all its files)."""
        return self.plan.size

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready mapping (the CLI's ``--json``)."""
        p = self.plan
        d: dict[str, Any] = {
            "output": str(self.output),
            "format": p.recipe.format,
            "quant": p.recipe.quant_name,
            "method": p.recipe.method,
            "dry_run": self.dry_run,
            "seconds": self.seconds,
            "bytes": p.size,
            "n_quantized": sum(r.quantized for r in p.rows),
            "tensor_types": p.type_counts(),
            # weight matrices left in float, and why (norms and biases are always float)
            "kept": {r.name: r.reason for r in p.rows if not r.quantized and len(r.shape) == 2},
        }
        if self.calibration is not None:
            c = self.calibration
            d["calibration"] = {"windows": list(c.windows), "seconds": c.seconds,
                                "notes": list(c.notes), "cached": c.cached}
        if self.dry_run:
            d.update(p.to_dict())  # tensors, dropped, files, size, recipe
        return d


def _imatrix(source: ModelSource, recipe: Recipe, on_progress: Progress | None) -> ImatrixData | None:
    """The calibration stage of round-to-nearest: an importance matrix, if asked for."""
    if recipe.imatrix is not None:
        from quantport.formats.imatrix import read_imatrix

        return read_imatrix(recipe.imatrix)
    if recipe.calib is not None:
        from quantport.pipeline.calibration import collect_imatrix

        return collect_imatrix(source, recipe.calib, n_chunks=recipe.calib_samples,
                               ctx=recipe.calib_len, on_progress=on_progress)
    return None


def make_plan(source: ModelSource, recipe: Recipe,
              imatrix: ImatrixData | None = None) -> Plan:
    """What ``recipe`` makes of ``source``, before any tensor is read (see :class:`Plan`)."""
    return get_writer(recipe.format).plan(source, recipe, imatrix)


def _check_source(source: ModelSource, out: Path) -> None:
    """Refuse, before any work, a source quantport cannot convert faithfully (an already
    quantized checkpoint: its packed codes would be copied as float tensors) and an output
    whose replacement would destroy the source.

    Raises:
        UnsupportedQuantError: a compressed-tensors or GPTQ checkpoint.
        ConfigError: ``out`` is the source or holds it.
    """
    qc = (getattr(source, "config", None) or {}).get("quantization_config")
    if qc is not None:
        method = qc.get("quant_method", "?") if isinstance(qc, dict) else "?"
        raise UnsupportedQuantError(
            f"{source.path}: already quantized (quantization_config, quant_method {method}); "
            "quantport converts float checkpoints: convert the float checkpoint it was made "
            "from")
    if getattr(source, "path", None) is None:  # an in-memory source: nothing to destroy
        return
    src, dst = Path(source.path).resolve(), out.resolve()
    if src == dst or dst in src.parents:
        raise ConfigError(f"-o {out} would replace the source {source.path}; write the "
                          "artifact somewhere else")


def convert(
    source: ModelSource,
    recipe: Recipe,
    out: str | os.PathLike[str],
    *,
    imatrix: ImatrixData | None = None,
    force: bool = False,
    dry_run: bool = False,
    threads: int | None = None,
    on_progress: Progress | None = None,
) -> ConvertReport:
    """Convert ``source`` as ``recipe`` says, into ``out`` (a file or a directory by format).

    Args:
        source: a reader (:func:`quantport.readers.open_path`, :func:`quantport.models.open_source`).
        recipe: from :func:`quantport.recipe.make_recipe`.
        out: the artifact path; written under a temporary name and renamed into place.
        imatrix: an importance matrix already in memory (instead of the recipe's
            ``--imatrix`` / ``--calib``).
        force: replace an existing quantport artifact at ``out``.
        dry_run: plan only; write nothing. (With ``--calib`` the importance matrix is not
            computed: the plan assumes every requested calibration window is available.)
        threads: worker processes for the rounding (default: every available core, within
            half the available memory); 1 computes tensor by tensor in this process.
        on_progress: ``on_progress(phase, done, total)``; phases ``calibrate``, ``write``.

    Raises:
        QuantportError: any of its subclasses, with a one-line message.
    """
    t0 = time.perf_counter()
    if threads is not None and threads < 1:
        raise ConfigError(f"threads must be at least 1, got {threads}")
    writer = get_writer(recipe.format)
    out_path = Path(out)
    _check_source(source, out_path)
    writer.check_output(out_path)  # read-only: a dry run refuses what the real run refuses
    if recipe.calibrated:
        # GPTQ & co. collect their own statistics layer by layer (pipeline/calibrated.py);
        # the recipe's calibration text is theirs, not an importance matrix's
        plan = writer.plan(source, recipe, imatrix)
        source.verify()  # what the reader postponed: the layer-by-layer stage has no idle core
        if dry_run:
            # the calibration text is read and checked as the real run reads it (tokenizing
            # only): the evaluation text, a binary file or a --calib-len beyond the context
            # are refused here too
            from quantport.pipeline.layerwise import calibration_inputs

            calibration_inputs(source, recipe.calib, recipe.calib_samples, recipe.calib_len)
            return ConvertReport(out_path, plan, time.perf_counter() - t0, True, imatrix)
        check_output(out_path, force)
        from quantport.pipeline.calibrated import run_calibrated
        from quantport.pipeline.device import resolve_device

        resolve_device(recipe.device)  # --device cuda without a GPU: refused before any work

        with writer.open(out_path, source, plan) as sink:
            calibration = run_calibrated(source, plan, sink,
                                         importance=writer.importance(plan, imatrix),
                                         workers=threads, on_progress=on_progress)
        report = ConvertReport(out_path, plan, time.perf_counter() - t0, False, imatrix)
        report.calibration = calibration
        return report
    if dry_run:
        if imatrix is None and recipe.calib is not None:
            from quantport.pipeline.calibration import imatrix_windows

            imatrix_windows(source, recipe.calib, recipe.calib_samples, recipe.calib_len)
            imatrix = _placeholder_imatrix(source, recipe)
        elif imatrix is None:
            imatrix = _imatrix(source, recipe, on_progress)
        plan = writer.plan(source, recipe, imatrix)
        source.verify()  # a dry run refuses what the conversion would refuse
        return ConvertReport(out_path, plan, time.perf_counter() - t0, True, imatrix)
    check_output(out_path, force)
    if imatrix is None and recipe.calib is not None:
        # the plan refuses a bad recipe (an override matching nothing...) in a fraction of a
        # second: before the calibration's forward passes, not after
        writer.plan(source, recipe, _placeholder_imatrix(source, recipe))
    if imatrix is None:
        imatrix = _imatrix(source, recipe, on_progress)
    plan = writer.plan(source, recipe, imatrix)
    importance = writer.importance(plan, imatrix)
    with writer.open(out_path, source, plan) as sink:
        # the reader's postponed checks (a GGUF's vocabulary, which a GGUF output copies) run
        # here while the workers quantize, and always before the artifact is committed
        execute(source, plan, sink, importance=importance, workers=threads,
                on_progress=on_progress, meanwhile=source.verify)
    return ConvertReport(out_path, plan, time.perf_counter() - t0, False, imatrix)


def _placeholder_imatrix(source: ModelSource, recipe: Recipe) -> ImatrixData:
    # a dry run does not run the model: the header records the requested calibration as
    # collect_imatrix would (the file's name; windows capped at the model's context)
    assert recipe.calib is not None
    ctx = min(recipe.calib_len, int(source.config.get("max_position_embeddings") or 1 << 30))
    return ImatrixData(entries={}, counts={}, datasets=[recipe.calib.name],
                       chunk_count=recipe.calib_samples, chunk_size=ctx)
