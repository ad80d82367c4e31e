"""Where the project's WikiText-2 texts live: ``fixtures/wikitext-2`` above the package (a
source checkout or an editable install), found by one search shared by evaluation and
calibration."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_dir", "calibration_text", "evaluation_text", "wikitext_dir"]


def wikitext_dir() -> Path:
    """The ``fixtures/wikitext-2`` directory nearest above this package (it may not exist in
    a wheel install; callers check the file they need)."""
    here = Path(__file__).resolve()
    for parent in here.parents:
        cand = parent / "fixtures" / "wikitext-2"
        if cand.is_dir():
            return cand
    return here.parents[2] / "fixtures" / "wikitext-2"


def calibration_text() -> Path:
    """WikiText-2's *validation* split: the default calibration text (never the test split)."""
    return wikitext_dir() / "valid.tokens.txt"


def evaluation_text() -> Path:
    """WikiText-2's test split: what ``validate`` scores on, so never calibration text."""
    return wikitext_dir() / "wiki.test.raw"


def cache_dir() -> Path:
    """quantport's cache: ``$QUANTPORT_CACHE`` or ``~/.cache/quantport``."""
    return Path(os.environ.get("QUANTPORT_CACHE") or Path.home() / ".cache" / "quantport")
