"""What the writers of directory artifacts (safetensors, GPTQ, ONNX) share."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from quantport.plan import Plan

__all__ = ["DirectoryWriter"]


class DirectoryWriter:
    """Base of the writers whose artifact is a directory (written by ``atomic_dir``) and whose
    integer grids round to nearest without an importance matrix."""

    def importance(self, plan: Plan, imatrix: Any) -> dict[int, np.ndarray]:
        """Round-to-nearest on integer grids uses no importance."""
        return {}

    def check_output(self, out: Path) -> None:
        """Directories only (checked by the atomic writer)."""
