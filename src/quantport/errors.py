"""quantport's exception hierarchy.

Every message is one line that says what failed, where (file, tensor, key) and how to fix it.
The CLI maps :class:`QuantportError` to ``Error: <message>`` with exit status 1 and
:class:`ValidationFailed` (raised with ``raise_on_fail``) to exit status 3; the ``validate``
command itself exits 3 when the artifact is not correct and 4 when only a quality threshold
failed. Library code never exits or prints.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ConfigError",
    "DependencyError",
    "FormatError",
    "IRError",
    "OutputExistsError",
    "QuantportError",
    "ShapeError",
    "UnsupportedArchitectureError",
    "UnsupportedQuantError",
    "ValidationFailed",
]


class QuantportError(Exception):
    """Base class of every error quantport raises on purpose."""


class ConfigError(QuantportError):
    """A checkpoint's config.json (or another configuration input) is missing or invalid."""


class UnsupportedArchitectureError(QuantportError):
    """The model architecture is not one quantport can convert."""


class UnsupportedQuantError(QuantportError):
    """A quantization scheme, preset or weight type is unknown or cannot apply to a tensor."""


class ShapeError(UnsupportedQuantError):
    """A tensor's shape does not fit the requested quantization (e.g. group size)."""


class FormatError(QuantportError):
    """A file is truncated, corrupt, hostile or not of the expected format."""


class IRError(QuantportError):
    """An IR record violates one of its invariants."""


class OptionError(QuantportError):
    """Options that contradict each other or do not apply to the chosen format (the CLI
    reports it as a usage error, exit status 2)."""


class OutputExistsError(QuantportError):
    """The output path exists and ``--force`` was not given."""


class DependencyError(QuantportError):
    """An optional dependency is missing or has an unsupported version."""


class ValidationFailed(QuantportError):
    """An artifact's metrics breached the validation thresholds.

    Attributes:
        report: the report (a mapping of metric names to values) that failed.
    """

    def __init__(self, message: str, report: Any = None) -> None:
        super().__init__(message)
        self.report = report
