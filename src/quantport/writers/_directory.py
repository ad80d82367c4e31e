"""What the writers of directory artifacts (safetensors, GPTQ, ONNX) share."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from quantport.formats._atomic import MANIFEST, manifest_text
from quantport.plan import Plan, PlanRow
from quantport.readers.source import ModelSource
from quantport.recipe import Recipe

__all__ = ["DirectoryWriter"]


class DirectoryWriter:
    """Base of the writers whose artifact is a directory (written by ``atomic_dir``) and whose
    integer grids round to nearest without an importance matrix."""

    def importance(self, plan: Plan, imatrix: Any) -> dict[int, np.ndarray]:
        """Round-to-nearest on integer grids uses no importance."""
        return {}

    def check_output(self, out: Path) -> None:
        """Directories only (checked by the atomic writer)."""

    def finish_plan(self, recipe: Recipe, source: ModelSource, rows: list[PlanRow],
                    dropped: dict[str, str], files: dict[str, int], texts: dict[str, str],
                    **extra: Any) -> Plan:
        """The plan of a directory: the data ``files`` and their sizes, the text files
        (``texts`` plus the source's tokenizer files), and the manifest's exact size; the
        texts and ``extra`` kept in :attr:`Plan.extra` for :meth:`open`."""
        for fname, text in source.tokenizer_files.items():
            texts.setdefault(fname, text)
        plan = Plan(recipe, rows, dropped, dict(files))
        plan.files.update({k: len(v.encode("utf-8")) for k, v in texts.items()})
        plan.files[MANIFEST] = len(manifest_text(list(plan.files)).encode("utf-8"))
        plan.extra.update(texts=texts, **extra)
        return plan
