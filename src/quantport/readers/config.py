"""Checked access to ``config.json`` values: moved to :mod:`quantport.architectures.config`
(the architecture modules read hyper-parameters with it); re-exported here for existing imports."""

from __future__ import annotations

from quantport.architectures.config import (
    U32_MAX,
    bool_,
    check_config,
    finite_float,
    int_,
    is_int,
    optional_bool,
    optional_finite_float,
    optional_positive_int,
    optional_str,
    positive_int,
    str_,
)

__all__ = [
    "U32_MAX",
    "bool_",
    "check_config",
    "finite_float",
    "int_",
    "is_int",
    "optional_bool",
    "optional_finite_float",
    "optional_positive_int",
    "optional_str",
    "positive_int",
    "str_",
]
