"""Checked access to ``config.json`` values (and to the config a GGUF file's metadata becomes).

Every hyper-parameter quantport reads goes through one of these accessors first, so a config with
``"num_attention_heads": 0``, ``"hidden_size": "64"``, ``"rms_norm_eps": NaN`` or
``"tie_word_embeddings": "yes"`` is refused with one line naming the file and the key, instead of
failing later with a ``ZeroDivisionError`` or ``TypeError`` deep inside a writer.

:func:`check_config` validates every key quantport uses (see ``writers/gguf.py``
``_llama_hparams`` / ``_bert_hparams``, ``writers/safetensors.py``, ``pipeline/calibration.py``,
``readers/gguf_vocab.py`` and ``readers/gguf.py``): types, ranges, and the relations between
them (heads divide the width, kv heads divide the heads, an even head size for rotary
embeddings). ``names`` maps config keys to the keys the user actually wrote (a GGUF source's
config is built from ``llama.*`` metadata, so errors name the GGUF key).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from quantport.errors import ConfigError

__all__ = [
    "U32_MAX",
    "bool_",
    "check_config",
    "finite_float",
    "int_",
    "optional_bool",
    "optional_finite_float",
    "optional_positive_int",
    "optional_str",
    "positive_int",
    "str_",
]

# hyper-parameters are written to GGUF as uint32 (llama-model.cpp reads them as uint32_t)
U32_MAX = 2**32 - 1

_MISSING = object()


def _show(v: Any) -> str:
    """A short repr of an offending value (a hostile value may be a huge list or string)."""
    r = repr(v)
    return r if len(r) <= 60 else r[:57] + "..."


def _fail(where: str, key: str, want: str, got: Any) -> ConfigError:
    return ConfigError(
        f"{where}: {key} must be {want}, got {_show(got)} ({type(got).__name__}); "
        "fix the value or regenerate the file"
    )


def _get(cfg: Mapping[str, Any], key: str, where: str, default: Any, name: str) -> Any:
    v = cfg.get(key, _MISSING)
    if v is _MISSING or v is None:
        if default is _MISSING:
            raise ConfigError(f"{where}: {name} is missing; add it or regenerate the file")
        return default
    return v


def is_int(v: Any) -> bool:
    """An integer value (``bool`` is not one, although Python makes it a subclass of int)."""
    return isinstance(v, int) and not isinstance(v, bool)


def int_(cfg: Mapping[str, Any], key: str, where: str, *, default: Any = _MISSING,
         lo: int = 0, hi: int = U32_MAX, name: str | None = None) -> int:
    """An integer in ``[lo, hi]`` (``default`` when absent or null; required without one)."""
    name = name or key
    v = _get(cfg, key, where, default, name)
    if v is default and default is not _MISSING:
        return v
    if not is_int(v):
        raise _fail(where, name, "an integer", v)
    if not lo <= v <= hi:
        want = f"an integer of at least {lo}" if hi == U32_MAX else f"an integer in [{lo}, {hi}]"
        raise _fail(where, name, want, v)
    return int(v)


def positive_int(cfg: Mapping[str, Any], key: str, where: str, *, default: Any = _MISSING,
                 name: str | None = None) -> int:
    """A positive integer that fits in uint32."""
    name = name or key
    v = _get(cfg, key, where, default, name)
    if v is default and default is not _MISSING:
        return v
    if not is_int(v) or not 1 <= v <= U32_MAX:
        raise _fail(where, name, "a positive integer (below 2**32)", v)
    return int(v)


def optional_positive_int(cfg: Mapping[str, Any], key: str, where: str, *,
                          name: str | None = None) -> int | None:
    """A positive integer, or ``None`` when absent or null."""
    return positive_int(cfg, key, where, default=None, name=name)


def finite_float(cfg: Mapping[str, Any], key: str, where: str, *, default: Any = _MISSING,
                 positive: bool = False, name: str | None = None) -> float:
    """A finite number (``positive``: above 0) that float32 can hold."""
    name = name or key
    v = _get(cfg, key, where, default, name)
    if v is default and default is not _MISSING:
        return v
    want = "a finite positive number" if positive else "a finite number"
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise _fail(where, name, want, v)
    try:
        f = float(v)
    except OverflowError:  # an int beyond float range
        raise _fail(where, name, want, v) from None
    # GGUF stores these as float32: anything beyond its range would become inf
    if not math.isfinite(f) or abs(f) > 3.4e38 or (positive and not f > 0):
        raise _fail(where, name, want, v)
    return f


def optional_finite_float(cfg: Mapping[str, Any], key: str, where: str, *,
                          positive: bool = False, name: str | None = None) -> float | None:
    """A finite number, or ``None`` when absent or null."""
    return finite_float(cfg, key, where, default=None, positive=positive, name=name)


def bool_(cfg: Mapping[str, Any], key: str, where: str, *, default: Any = _MISSING,
          name: str | None = None) -> bool:
    """``true`` or ``false`` (not ``"yes"``, not 1)."""
    name = name or key
    v = _get(cfg, key, where, default, name)
    if v is default and default is not _MISSING:
        return v
    if not isinstance(v, bool):
        raise _fail(where, name, "true or false", v)
    return v


def optional_bool(cfg: Mapping[str, Any], key: str, where: str, *,
                  name: str | None = None) -> bool | None:
    """``true``/``false``, or ``None`` when absent or null."""
    return bool_(cfg, key, where, default=None, name=name)


def str_(cfg: Mapping[str, Any], key: str, where: str, *, default: Any = _MISSING,
         name: str | None = None) -> str:
    """A string."""
    name = name or key
    v = _get(cfg, key, where, default, name)
    if v is default and default is not _MISSING:
        return v
    if not isinstance(v, str):
        raise _fail(where, name, "a string", v)
    return v


def optional_str(cfg: Mapping[str, Any], key: str, where: str, *,
                 name: str | None = None) -> str | None:
    """A string, or ``None`` when absent or null."""
    return str_(cfg, key, where, default=None, name=name)


def _token_id(cfg: Mapping[str, Any], key: str, where: str, name: str) -> None:
    v = cfg.get(key)
    if v is None:
        return
    # eos_token_id may be a list (Llama 3)
    ids = v if isinstance(v, list) else [v]
    if not ids or not all(is_int(i) and 0 <= i <= U32_MAX for i in ids):
        raise _fail(where, name, "a token id (a non-negative integer) or a list of them", v)


def _dict(cfg: Mapping[str, Any], key: str, where: str, name: str) -> Mapping[str, Any]:
    v = cfg.get(key)
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise _fail(where, name, "an object (or null)", v)
    return v


def check_config(config: Mapping[str, Any], where: str,
                 names: Mapping[str, str] | None = None) -> None:
    """Validate every ``config.json`` key quantport reads: types, ranges and relations.

    Keys may be absent (the writer that needs one says so); present keys must be valid.

    Args:
        config: the ``config.json`` mapping.
        where: the file, for messages.
        names: config key -> the name to report (e.g. the GGUF metadata key it came from).

    Raises:
        ConfigError: one line naming ``where`` and the offending key.
    """
    names = names or {}

    def n(key: str) -> str:
        return names.get(key, key)

    if not isinstance(config, Mapping):
        raise ConfigError(f"{where}: expected a JSON object")
    model_type = config.get("model_type")
    is_bert = model_type == "bert" or any(
        isinstance(c, str) and c.startswith("Bert") for c in config.get("architectures") or []
    )
    sizes = {}
    for key in ("hidden_size", "num_attention_heads", "num_hidden_layers", "intermediate_size",
                "max_position_embeddings", "vocab_size", "num_key_value_heads", "head_dim",
                "type_vocab_size"):
        sizes[key] = optional_positive_int(config, key, where, name=n(key))
    for key in ("rms_norm_eps", "layer_norm_eps", "rope_theta"):
        optional_finite_float(config, key, where, positive=True, name=n(key))
    for key in ("tie_word_embeddings", "attention_bias", "mlp_bias"):
        optional_bool(config, key, where, name=n(key))
    for key in ("hidden_act", "position_embedding_type", "_name_or_path"):
        optional_str(config, key, where, name=n(key))
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        _token_id(config, key, where, n(key))
    for key in ("rope_scaling", "rope_parameters"):
        rope = _dict(config, key, where, n(key))
        for sub in ("rope_type", "type"):
            optional_str(rope, sub, where, name=f"{n(key)}.{sub}")
        optional_finite_float(rope, "factor", where, positive=True, name=f"{n(key)}.factor")
        optional_finite_float(rope, "rope_theta", where, positive=True,
                              name=f"{n(key)}.rope_theta")

    hidden, heads = sizes["hidden_size"], sizes["num_attention_heads"]
    kv, head_dim = sizes["num_key_value_heads"], sizes["head_dim"]
    if hidden is not None and heads is not None and (head_dim is None or is_bert):
        if hidden % heads:
            raise ConfigError(
                f"{where}: {n('hidden_size')} {hidden} is not divisible by "
                f"{n('num_attention_heads')} {heads}; fix one of them"
            )
        head_dim = hidden // heads
    if heads is not None and kv is not None and heads % kv:
        raise ConfigError(
            f"{where}: {n('num_attention_heads')} {heads} is not a multiple of "
            f"{n('num_key_value_heads')} {kv}; fix one of them"
        )
    if not is_bert and head_dim is not None and head_dim % 2:
        # rotary embeddings rotate pairs of dimensions (llama_permute splits each head in two)
        what = n("head_dim") if sizes["head_dim"] is not None else (
            f"{n('hidden_size')} / {n('num_attention_heads')}")
        raise ConfigError(
            f"{where}: {what} (the head size) is {head_dim}, which is odd; rotary embeddings "
            "need an even head size"
        )
