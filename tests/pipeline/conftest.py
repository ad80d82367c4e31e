"""Fixtures of the calibration tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from quantport.pipeline import layerwise


@pytest.fixture()
def calib_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private calibration cache (the model cache stays where it is)."""
    root = tmp_path / "qp-cache"
    monkeypatch.setattr(layerwise, "cache_dir", lambda: root)
    return root / "calib"
