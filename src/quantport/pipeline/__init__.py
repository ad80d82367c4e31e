"""The conversion pipeline: recipe -> plan -> stages -> writer.

* :mod:`~quantport.recipe` — the user's choices, parsed once (:func:`make_recipe`);
* :mod:`~quantport.plan` — what every tensor becomes, and exact output sizes;
* :mod:`~quantport.pipeline.calibration` — forward passes on calibration text (importance
  matrices today; the statistics of calibrated methods);
* :mod:`~quantport.pipeline.execute` — rounding every tensor and handing it to the writer,
  in parallel worker processes where the method allows;
* :mod:`~quantport.pipeline.convert` — the whole run (:func:`convert`).

Where things go: a new rounding method is a row of :data:`METHODS` (and its stage); a new
output format is a writer in :mod:`quantport.writers`.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from quantport.pipeline.convert import ConvertReport, convert, make_plan
from quantport.plan import Plan, PlanRow
from quantport.recipe import METHODS, Recipe, make_recipe
from quantport.readers.source import ModelSource

__all__ = ["METHODS", "ConvertReport", "Plan", "PlanRow", "Recipe", "convert", "export_dense",
           "make_plan", "make_recipe"]


def export_dense(
    source: ModelSource,
    out_dir: str | os.PathLike[str],
    *,
    dtype: str = "F32",
    force: bool = False,
    on_progress: Callable[[str, int, int], None] | None = None,
) -> ConvertReport:
    """Write ``source`` as a plain Hugging Face checkpoint in ``F32``, ``F16`` or ``BF16``
    (e.g. a GGUF's weights, dequantized, for transformers)."""
    return convert(source, make_recipe("safetensors", dtype), out_dir, force=force,
                   on_progress=on_progress)
