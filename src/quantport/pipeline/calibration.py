"""Calibration statistics: importance matrices (llama-imatrix) computed with transformers.

Design decision: statistics are collected here, with torch hooks on the source model, and handed
to the pure quantization algorithms as arrays (style rule R3). The importance matrix is what
``llama-imatrix`` computes (``tools/imatrix/imatrix.cpp``, ``IMatrixCollector::collect_imatrix``):
for every matrix multiplication with a ``blk.*`` weight, the sum over all token rows of the squared
input activation per input column, divided by the number of rows -- the per-column mean of
``x**2`` that ``llama-quantize`` hands to ``ggml_quantize_chunk`` (see
:mod:`quantport.formats.imatrix`). A forward pre-hook on each ``nn.Linear`` sees exactly that
input. llama's Q/K row permutation reorders *output* rows only, so the input columns (and the
imatrix) of ``attn_q``/``attn_k`` are the same in HF and GGUF layout.

The text is cut into chunks like ``compute_imatrix``: tokenize the whole text, take consecutive
``ctx``-token chunks, and replace the first token of each chunk with BOS when the tokenizer adds
one. The model runs in float32 on the CPU.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from quantport.readers import HFCheckpoint, ModelSource, open_path
from quantport.errors import ConfigError
from quantport.formats.imatrix import ImatrixData
from quantport.pipeline.layerwise import DEFAULT_CALIBRATION_TEXT, calibration_windows

__all__ = ["DEFAULT_CALIBRATION_TEXT", "collect_imatrix"]

log = logging.getLogger(__name__)



def _load_model(source: ModelSource, model_dir: Path) -> tuple[Any, Any]:
    """The torch module to run and the module whose Linear layers are hooked."""
    import torch
    from transformers import AutoModel, AutoModelForCausalLM

    from quantport._quiet import quiet_loading

    if source.architecture.causal:
        with quiet_loading():
            full = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        # run the decoder body only: the imatrix covers blk.* weights (llama-imatrix records
        # output.weight only with --process-output), so the vocab projection is wasted work
        body = getattr(full, full.base_model_prefix, full)
        return body, full
    with quiet_loading():
        full = AutoModel.from_pretrained(model_dir, dtype=torch.float32)
    return full, full


def imatrix_windows(source: ModelSource, text_path: str | os.PathLike[str], n_chunks: int,
                    ctx: int) -> np.ndarray:
    """The token windows :func:`collect_imatrix` runs (``ctx`` capped at the model's
    ``max_position_embeddings``); a dry run reads and checks the text through it too.

    Raises:
        ConfigError: as :func:`collect_imatrix`.
    """
    if n_chunks < 1 or ctx < 2:
        raise ConfigError(
            f"collect_imatrix: n_chunks ({n_chunks}) must be >= 1 and ctx ({ctx}) >= 2"
        )
    max_pos = int(source.config.get("max_position_embeddings") or ctx)
    if ctx > max_pos:
        log.info("ctx %d exceeds max_position_embeddings %d; using %d", ctx, max_pos, max_pos)
        ctx = max_pos
    # compute_imatrix()'s chunks: consecutive ctx-token windows, BOS first where the vocab adds it
    return calibration_windows(source, Path(text_path), n_chunks, ctx)


def collect_imatrix(
    source: ModelSource | str | os.PathLike[str],
    text_path: str | os.PathLike[str] = DEFAULT_CALIBRATION_TEXT,
    *,
    n_chunks: int = 16,
    ctx: int = 512,
    on_progress: Callable[[str, int, int], None] | None = None,
) -> ImatrixData:
    """Compute an importance matrix of ``source`` on a calibration text, as llama-imatrix does.

    Args:
        source: a model source or a checkpoint directory / GGUF file / alias (``smollm2``).
        text_path: calibration text (default: WikiText-2 validation tokens).
        n_chunks: number of ``ctx``-token chunks (fewer if the text is shorter).
        ctx: tokens per chunk (capped at the model's ``max_position_embeddings``).
        on_progress: ``on_progress("calibrate", chunks_done, n_chunks)``.

    Returns:
        GGUF tensor name -> float32 per-column mean of squared inputs, for every ``nn.Linear``
        inside the decoder/encoder blocks (``blk.N.*``), with ``counts`` (token rows),
        ``datasets = [file name]``, ``chunk_count`` and ``chunk_size``.

    Raises:
        ConfigError: ``n_chunks``/``ctx`` not positive, no tokenizer, an empty text, a text
            shorter than one chunk, or the evaluation text (see
            :func:`~quantport.pipeline.layerwise.calibration_windows`).
        QuantportError: the calibration text cannot be read.
    """
    import torch

    src = source if not isinstance(source, (str, os.PathLike)) else open_path(source)
    text_file = Path(text_path)
    windows = imatrix_windows(src, text_file, n_chunks, ctx)
    n, ctx = windows.shape

    with tempfile.TemporaryDirectory(prefix="quantport-calib-") as tmp:
        if isinstance(src, HFCheckpoint):
            model_dir = src.path
        else:
            # e.g. a GGUF source: materialize an fp32 HF checkpoint transformers can load
            from quantport.pipeline import export_dense

            model_dir = Path(tmp) / "model"
            export_dense(src, model_dir, dtype="F32")
        run, full = _load_model(src, model_dir)
        run.eval()

        sums: dict[str, torch.Tensor] = {}
        counts: dict[str, int] = {}
        hooks = []
        for mod_name, mod in full.named_modules():
            if not isinstance(mod, torch.nn.Linear):
                continue
            gname = src.architecture.gguf_name(f"{mod_name}.weight")
            if gname is None and src.architecture.name == "bert":
                gname = src.architecture.gguf_name(f"{mod_name}.weight".removeprefix("bert."))
            if gname is None or not gname.startswith("blk."):
                continue  # llama-imatrix: only blk.* weights (output.weight only on request)

            def hook(_m: Any, args: tuple[Any, ...], _g: str = gname) -> None:
                x = args[0].detach().reshape(-1, args[0].shape[-1])
                # IMatrixCollector::collect_imatrix: values[j] += x[j]^2 over rows; counts += rows
                s = x.to(torch.float64).square().sum(dim=0)
                if _g in sums:
                    sums[_g] += s
                else:
                    sums[_g] = s
                counts[_g] = counts.get(_g, 0) + x.shape[0]

            hooks.append(mod.register_forward_pre_hook(hook))
        if not hooks:
            raise ConfigError(
                f"{src.path}: no Linear layers inside the blocks were found to calibrate"
            )
        try:
            with torch.inference_mode():
                for i in range(n):
                    run(input_ids=torch.from_numpy(windows[i : i + 1]))
                    if on_progress:
                        on_progress("calibrate", i + 1, n)
        finally:
            for h in hooks:
                h.remove()

    entries = {g: (sums[g] / counts[g]).to(torch.float32).numpy() for g in sorted(sums)}
    return ImatrixData(
        entries=entries,
        datasets=[text_file.name],
        chunk_count=n,
        chunk_size=ctx,
        counts={g: np.array([counts[g]], dtype=np.int64) for g in sorted(sums)},
    )
