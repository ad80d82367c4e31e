"""GPTQ: error-feedback rounding that drives any :class:`~quantport.quant.grid.Grid`.

GPTQ (Frantar et al., 2022; reference implementation IST-DASLab/gptq ``gptq.py``
``GPTQ.fasterquant``) rounds a weight ``[out, in]`` one input column at a time and spreads each
column's rounding error over the columns not yet rounded, weighted by the inverse of the layer's
input Hessian ``H = 2 X Xᵀ / n``. Here the rounding of a column is the grid's own
(:meth:`Grid.round` / :meth:`Grid.value` with ``cols=``), and a block's parameters are fitted
by :meth:`Grid.fit` when the column loop reaches the block's first column, from the weights as
the errors of the earlier columns left them. So the same loop runs on compressed-tensors'
integer grids and on every llama.cpp type, k-quant super-blocks included: the result is
exactly what ``grid.assemble`` makes, and every writer packs it unchanged.

numpy by default (float64 for the Hessian algebra and the error-updated weights; the grids see
float32 values, as round-to-nearest does). The same code runs on another array library -- torch
on a GPU -- through :class:`ArrayOps`: the heavy steps (the Hessian's factorisation, the column
loop and its matmuls, the rounding of integer and k-quant grids) run on the arrays of ``ops``,
while every grid's fit and assembly stay numpy (a block is copied to the host to be fitted).
This package never imports torch: the torch implementation is
:class:`quantport.pipeline.device.TorchOps`.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from quantport.errors import ShapeError, UnsupportedQuantError
from quantport.ir import QuantizedTensor, code_range, dequantize
from quantport.quant._ggml_search import nearest_int
from quantport.quant.ggml import GGML_GRIDS, GgmlKGrid, GgmlLegacyGrid
from quantport.quant.grid import Grid, IntGrid, Params, concat_params
from quantport.quant.rtn import quantize_rtn
from quantport.quant.scheme import IntScheme

__all__ = [
    "NUMPY",
    "ArrayOps",
    "GptqResult",
    "TensorIntGrid",
    "gptq_quantize",
    "grid_for",
    "hessian_error",
    "run_gptq",
]

log = logging.getLogger(__name__)

F32 = np.float32
#: Dampening retries: each failed Cholesky factorisation multiplies the fraction by this, as
#: long as it stays at most :data:`_MAX_DAMP` (GPTQModel ``hessian_inverse`` retries with
#: ``damp_auto_increment`` until damp >= 1; a factor keeps the number of tries small).
_DAMP_STEP = 10.0
_MAX_DAMP = 1.0
#: Fraction tried after a failed ``damp=0``.
_FIRST_DAMP = 0.01
# below this size the factorisation and its inverse go to LAPACK directly (see _chol_inv)
_TRI_LEAF = 128
# columns of the inner lazy-update level (see _column_loop)
_SUB = 16


class ArrayOps:
    """Where GPTQ's large arrays live and how its heavy steps run: numpy on the CPU (this
    class; :data:`NUMPY` is the default everywhere).

    A subclass runs the same loop on another array library whose arrays support numpy's
    operators, slicing, ``.T`` and ``@`` (torch tensors do: see
    :class:`quantport.pipeline.device.TorchOps`); ``dtype`` arguments are numpy dtypes.
    """

    name = "numpy"

    def asarray(self, a: Any, dtype: Any = None) -> Any:
        """``a`` (a numpy array or this library's) as this library's array."""
        return np.asarray(a) if dtype is None else np.asarray(a, dtype=dtype)

    def numpy(self, a: Any) -> np.ndarray:
        """``a`` as a numpy array (copied to the host)."""
        return np.asarray(a)

    def copy(self, a: Any) -> Any:
        return np.array(a, copy=True)

    def copy_as(self, a: Any, dtype: Any) -> Any:
        """A new array of ``dtype`` holding ``a`` (one copy, whatever ``a`` is)."""
        return np.array(a, dtype=dtype, copy=True)

    def borrow_as(self, a: Any, dtype: Any) -> Any:
        """``a`` itself when it already is an array of this library of ``dtype`` (the caller
        only reads it), else :meth:`copy_as`."""
        if isinstance(a, np.ndarray) and a.dtype == np.dtype(dtype):
            return a
        return self.copy_as(a, dtype)

    def empty(self, shape: tuple[int, ...], dtype: Any) -> Any:
        return np.empty(shape, dtype=dtype)

    def empty_like(self, a: Any, shape: tuple[int, ...]) -> Any:
        """An empty array of ``a``'s dtype and this shape."""
        return np.empty(shape, dtype=a.dtype)

    def contiguous(self, a: Any) -> Any:
        return np.ascontiguousarray(a)

    def cast(self, a: Any, dtype: Any) -> Any:
        return a.astype(dtype)

    def round(self, a: Any) -> Any:
        """Round half to even (``np.round``)."""
        return np.round(a)

    def nearest_int(self, a: Any) -> Any:
        """ggml's ``nearest_int`` of float32 values (see :func:`nearest_int`)."""
        return nearest_int(a)

    def clip(self, a: Any, lo: Any, hi: Any) -> Any:
        return np.clip(a, lo, hi)

    def all_finite(self, a: Any) -> bool:
        return bool(np.isfinite(a).all())

    def diag(self, a: Any) -> np.ndarray:
        """The diagonal of a square array, as a numpy copy."""
        return np.diag(a).copy()

    def set_diag(self, a: Any, idx: np.ndarray, value: float, *, add: bool = False) -> None:
        """``a[i, i] = value`` (or ``+= value``) for ``i`` in ``idx``, in place."""
        if add:
            a[idx, idx] += value
        else:
            a[idx, idx] = value

    def take2(self, a: Any, perm: np.ndarray) -> Any:
        """``a[perm][:, perm]``."""
        return a[np.ix_(perm, perm)]

    def take_cols(self, a: Any, perm: np.ndarray) -> Any:
        """``a[:, perm]``."""
        return a[:, perm]

    def flip2(self, a: Any) -> Any:
        """``a[::-1, ::-1]`` as a contiguous copy."""
        return a[::-1, ::-1].copy()

    def damped_upper_chol_of_inverse(self, h: Any, lam: float) -> Any | None:
        """The upper Cholesky factor of ``(H + λI)⁻¹`` (:func:`_upper_chol_of_inverse`), or
        None when ``H + λI`` is not positive definite; ``h`` is left unchanged."""
        # reversed (see _upper_chol_of_inverse): the one copy of H a try makes
        hd = self.flip2(h)
        self.set_diag(hd, np.arange(h.shape[0]), lam, add=True)
        try:
            return _upper_chol_of_inverse_reversed(hd)
        except np.linalg.LinAlgError:
            return None

    def sq_sum(self, e: Any) -> Any:
        """``sum(e * e)`` as a scalar of this library (added up without a host round trip)."""
        return np.dot(e, e)

    #: ``int_sub_batch(w, u, s, z, qmin, qmax, out)``: a whole sub-batch of the column loop on
    #: an integer grid in one call, writing its codes, values and errors into ``out`` (see
    #: :func:`_column_loop`), or None: column by column. A GPU implements it to avoid a dozen
    #: kernel launches per column.
    int_sub_batch: Callable[..., tuple[Any, Any, Any]] | None = None
    #: ``fit_int(grid, x) -> params``: :meth:`IntGrid.fit` on this library's arrays (the same
    #: float32 operations; parameters left there), or None: fitted on the host.
    fit_int: Callable[[IntGrid, Any], Params] | None = None

    def hessian_error(self, w: Any, q: Any, hessian: Any) -> float:
        """:func:`hessian_error` on this library's arrays."""
        return hessian_error(w, q, hessian)


#: numpy on the CPU: the default :class:`ArrayOps`
NUMPY = ArrayOps()


@dataclass(frozen=True)
class GptqResult:
    """What :func:`run_gptq` computed for one weight.

    Attributes:
        record: the quantized record (``grid.assemble``'s, with ``g_idx`` for act-order).
        values: float32 ``[out, in]``, what ``record`` dequantizes to (original column order);
            a true-sequential calibration puts these into the layer.
        loss: the reference's reported loss, ``sum((w - q)**2 / d**2) / 2`` over the error-
            updated weights (``gptq.py`` ``Losses``; GPTQModel logs it per module); NaN when
            the weight was rounded to nearest.
        error: ``tr((W - Q) H (W - Q)ᵀ)`` with the given (undamped) ``H``: the layer-output
            error the rounding causes on the calibration data (see :func:`hessian_error`);
            NaN when ``H`` is not finite.
        damp: the dampening fraction the factorisation succeeded with; ``None`` when the
            Hessian stayed indefinite and the weight was rounded to nearest instead.
    """

    record: QuantizedTensor
    values: np.ndarray
    loss: float
    error: float
    damp: float | None

    @property
    def fell_back(self) -> bool:
        """Whether the Hessian could not be factorised and round-to-nearest was used."""
        return self.damp is None


def grid_for(target: Any, shape: tuple[int, int], *, name: str = "tensor") -> Grid:
    """The grid that quantizes a weight of ``shape`` onto ``target``.

    Args:
        target: an :class:`IntScheme` (group or channel granularity) or a ggml type name
            (``"Q4_K"``, one of :data:`~quantport.quant.ggml.GGML_GRIDS`).
        shape: the weight's ``(out, in)``.
        name: tensor name for error messages.

    Returns:
        The grid; ``quantize_rtn(w, grid_for(t, w.shape))`` gives the same record as the
        round-to-nearest path of ``pipeline.execute.round_tensor`` (``IntScheme.quantize``,
        ``quantize_ggml``). A per-tensor scheme gives a :class:`TensorIntGrid`.

    Raises:
        UnsupportedQuantError: a dense type or an unknown type.
        ShapeError: the input width is not a multiple of the grid's block.
    """
    if len(shape) != 2:
        raise ShapeError(f"{name}: only 2-D weights can be quantized, got shape {tuple(shape)}")
    cols = int(shape[1])
    if isinstance(target, IntScheme):
        target.check(name, tuple(shape))
        if target.granularity == "tensor":
            return TensorIntGrid(target.bits, target.symmetric, cols, target.rule)
        block = cols if target.granularity == "channel" else int(target.group_size)
        return IntGrid(target.bits, target.symmetric, block, target.rule)
    if isinstance(target, str):
        grid = GGML_GRIDS.get(target)
        if grid is None:
            raise UnsupportedQuantError(
                f"{name}: {target!r} is not a quantized type a grid can round onto; "
                f"supported: {', '.join(GGML_GRIDS)} or an integer scheme such as w4-g64-sym"
            )
        if cols % grid.block:
            raise ShapeError(
                f"{name}: input width {cols} is not a multiple of {target}'s block of "
                f"{grid.block} columns"
            )
        return grid
    raise UnsupportedQuantError(
        f"{name}: cannot make a grid from {target!r}; pass an IntScheme or a ggml type name"
    )


def hessian_error(w: np.ndarray, q: np.ndarray, hessian: np.ndarray) -> float:
    """``tr((W - Q) H (W - Q)ᵀ)``: with ``H = 2XXᵀ/n`` it is twice the mean squared error of
    the layer's output on the calibration inputs ``X`` (GPTQ's objective).

    Computed in float64 (``W`` and ``Q`` ``[out, in]``, ``H`` ``[in, in]``).
    """
    d = np.asarray(w, dtype=np.float64) - np.asarray(q, dtype=np.float64)
    return float(np.einsum("ij,ij->", d @ np.asarray(hessian, dtype=np.float64), d))


def gptq_quantize(
    w: np.ndarray,
    hessian: np.ndarray,
    grid: Grid,
    *,
    importance: np.ndarray | None = None,
    damp: float = 0.01,
    block_cols: int = 128,
    act_order: bool = False,
    static_groups: bool = False,
    name: str = "tensor",
) -> QuantizedTensor:
    """Quantize ``w`` onto ``grid`` with GPTQ; see :func:`run_gptq` (which also returns the
    dequantized values and the error figures) for the arguments."""
    return run_gptq(
        w,
        hessian,
        grid,
        importance=importance,
        damp=damp,
        block_cols=block_cols,
        act_order=act_order,
        static_groups=static_groups,
        name=name,
    ).record


#: rows of a weight whose asymmetric target (:func:`run_gptq`'s ``cross``) is computed at once
_SHIFT_ROWS = 4096


def run_gptq(
    w: np.ndarray,
    hessian: np.ndarray,
    grid: Grid,
    *,
    importance: np.ndarray | None = None,
    damp: float = 0.01,
    block_cols: int = 128,
    act_order: bool = False,
    static_groups: bool = False,
    name: str = "tensor",
    ops: ArrayOps | None = None,
    host_values: bool = True,
    factor: dict[Any, Any] | None = None,
    cross: np.ndarray | None = None,
) -> GptqResult:
    """Quantize a 2-D weight ``[out, in]`` onto ``grid`` by GPTQ.

    Args:
        w: the float weight ``[out, in]`` (rounded through float32, as round-to-nearest).
        hessian: ``[in, in]`` symmetric positive semi-definite, ``H = 2XXᵀ/n`` (its scale
            does not matter: dampening is relative and the updates use ratios of ``H⁻¹``).
        grid: any grid: :class:`IntGrid`, ``GGML_GRIDS[...]`` (see :func:`grid_for`).
        importance: per-input-column weights (length ``in``) for the grid's fit, e.g.
            llama.cpp's importance matrix; default ``diag(H)`` (0 for dead columns). Integer
            grids ignore it; ggml grids then fit with their importance-matrix search.
        damp: fraction of ``mean(diag(H))`` added to the diagonal; multiplied by 10 while the
            Cholesky factorisation fails, up to 1. If it still fails the weight is rounded to
            nearest, with a warning naming ``name`` (never an error).
        block_cols: width of the lazy batch updates.
        act_order: process columns by decreasing ``diag(H)`` (GPTQModel ``desc_act``).
            Without ``static_groups`` a group is made of consecutive columns of that order,
            and the record gets ``g_idx``; only integer grids can carry it (llama.cpp blocks
            sit at fixed columns: pass ``static_groups=True`` for ggml grids).
        static_groups: fit every block's parameters before the column loop, on the original
            weights in the original order (reference ``static_groups``; llm-compressor's
            ``actorder="static"``); with ``act_order`` the record then needs no ``g_idx``.
        name: tensor name for messages.
        ops: where the column loop runs (:class:`ArrayOps`; default numpy on the CPU).
            ``w`` and ``hessian`` may then be that library's arrays (on its device); the
            record is numpy either way.
        host_values: return ``values`` as numpy; False leaves them an array of ``ops``
            (a GPU caller writes them straight back into its layer).
        factor: a dict shared by the calls for weights that read one input (the same
            ``hessian``: q/k/v, gate/up). The first call keeps the damped inverse's Cholesky
            factor there; a later one with the same ``act_order`` and ``damp`` takes it
            instead of factorising the same matrix again. None: nothing is kept.
        cross: ``[in, in]``, ``2 (X_f - X) Xᵀ / n`` with ``X_f`` the float model's input
            where ``H`` has the rounded model's ``X`` (same scaling as ``hessian``). GPTQ then
            rounds toward the float model's output (GPTAQ, Li et al., ICML 2025): the least-
            squares solution of ``min ||Ŵ X - W X_f||`` is ``W* = W + W·cross·H⁻¹``, and that
            objective is ``||(Ŵ - W*) X||²`` plus a constant (the cross term vanishes by the
            normal equations), so GPTQ rounds ``W*`` instead of ``W``, on any grid, with the
            damped ``H⁻¹ = Uᵀ U`` of its own factor (no second factorisation). The full
            correction, not the reference's ``alpha = 0.25``: on held-out text (the last 40%
            of valid.tokens.txt) SmolLM2 Q4_K_M gave KLD 0.01173 with it, 0.01300 at 0.25.

    Returns:
        The record, its dequantized values and the error figures (:class:`GptqResult`).

    Raises:
        ShapeError: ``w`` is not 2-D, its width is not a multiple of ``grid.block``, or
            ``hessian`` / ``importance`` do not match its width.
        UnsupportedQuantError: ``act_order`` without ``static_groups`` on a grid that has no
            ``g_idx`` (any ggml grid).
    """
    ops = NUMPY if ops is None else ops
    on_host = ops is NUMPY
    if not hasattr(w, "ndim"):
        w = np.asarray(w)
    if w.ndim != 2:
        raise ShapeError(f"{name}: GPTQ expects a 2-D weight, got shape {tuple(w.shape)}")
    rows, cols = w.shape
    gb = int(grid.block)
    if cols % gb:
        raise ShapeError(f"{name}: width {cols} is not a multiple of the block size {gb}")
    # the Hessian in the working precision on the ops' device; only read below (the dead
    # columns' fix copies it first), so one already in that form is not copied: on a GPU that
    # is one n x n matrix less at the peak (down_proj's n is 14336 on an 8B model)
    h = ops.borrow_as(hessian, np.float64)
    if tuple(h.shape) != (cols, cols):
        raise ShapeError(
            f"{name}: Hessian of shape {tuple(h.shape)} does not fit a weight of width {cols}; "
            f"expected ({cols}, {cols})"
        )
    if block_cols < 1:
        raise ValueError(f"{name}: block_cols must be positive, got {block_cols}")
    if damp < 0:
        raise ValueError(f"{name}: damp must be >= 0, got {damp}")
    if act_order and not static_groups and gb == cols and not isinstance(grid, IntGrid):
        # one block per row: every column is in the same group whatever the order, so static
        # groups are the same thing and the record needs no g_idx (a per-tensor scale)
        static_groups = True
    if act_order and not static_groups and not isinstance(grid, IntGrid):
        raise UnsupportedQuantError(
            f"{name}: act-order groups need g_idx, which {grid.name} cannot store (its blocks "
            "sit at fixed columns); pass static_groups=True (act-order with static groups)"
        )
    # the column loop runs on ops; the grids assemble (and, but for integer grids where ops
    # can fit them, fit) on the host, float32 numpy: a host copy of w is made only where the
    # host needs one, so the weights are copied off a GPU once at most
    host_w: list[np.ndarray] = []

    def w_host() -> np.ndarray:
        if not host_w:
            host_w.append(np.asarray(ops.numpy(wd), dtype=F32))
        return host_w[0]

    wd = np.asarray(w, dtype=F32) if on_host else ops.asarray(w, F32)
    diag = ops.diag(h)
    finite = ops.all_finite(h)

    if importance is None:
        imp = np.where(np.isfinite(diag) & (diag > 0), diag, 0.0).astype(F32)
    else:
        imp = np.asarray(importance, dtype=F32).reshape(-1)
        if imp.shape != (cols,):
            raise ShapeError(
                f"{name}: importance of shape {np.shape(importance)} does not fit a weight "
                f"of width {cols}"
            )

    # gptq.py lines 77-79: a column that never sees input (H[i,i] == 0) is zeroed and its
    # diagonal set to 1, so that the factorisation exists and the column rounds to zero
    dead = diag == 0
    if dead.any():
        dead_idx = np.flatnonzero(dead)
        if h is hessian:
            h = ops.copy(h)
        ops.set_diag(h, dead_idx, 1.0)
        diag[dead_idx] = 1.0
        if on_host:
            wd = wd.copy()
            wd[:, dead] = 0.0
        else:
            wd = ops.copy(wd)
            wd[:, ops.asarray(dead_idx)] = 0.0
        host_w.clear()

    if act_order:
        # gptq.py lines 89-93 / GPTQModel desc_act: decreasing diag(H), taken after the dead
        # columns' fix; a stable sort keeps equal diagonals in column order (deterministic)
        perm = np.argsort(-diag, kind="stable")
    else:
        perm = np.arange(cols)

    u, used = (None, damp)
    key = (bool(act_order), float(damp))
    if factor is not None and key in factor:
        u, used = factor[key]  # the same matrix, order and dampening: the same factor
    elif finite:
        if act_order:
            h = ops.take2(h, perm)  # (the unpermuted copy is freed)
            diag = diag[perm]
        u, used = _inverse_cholesky(h, diag, damp, ops)
        if factor is not None:
            factor[key] = (u, used)
    del h
    if u is None:
        why = (f"is not positive definite even with dampening {used:g}" if finite
               else "has NaN or infinite entries")
        log.warning("%s: the Hessian %s; rounding this weight to nearest instead of GPTQ "
                    "(check the calibration inputs of this layer)", name, why)
        # the importance GPTQ would have fitted with (diag(H) needs a finite H)
        record = quantize_rtn(w_host(), grid, imp if finite or importance is not None else None,
                              name=name)
        values = dequantize(record)
        err = (ops.hessian_error(w, ops.asarray(values), hessian) if finite
               else float("nan"))
        return GptqResult(record, values, float("nan"), err, None)

    if cross is not None:
        # W* = W + (W·cross)·H⁻¹, with H⁻¹ = Pᵀ Uᵀ U P in act-order (U factors the permuted
        # H); in row chunks, so a tall weight (a tied token table: 49152 rows) needs no
        # float64 copies of its whole size
        c = ops.borrow_as(cross, np.float64)
        unperm = np.argsort(perm)
        target = ops.empty_like(wd, tuple(wd.shape))
        for r0 in range(0, rows, _SHIFT_ROWS):
            wr = ops.cast(wd[r0:r0 + _SHIFT_ROWS], np.float64)
            wc = wr @ c
            if act_order:
                wc = ops.take_cols(wc, perm)
            shift = (wc @ u.T) @ u
            if act_order:
                shift = ops.take_cols(shift, unperm)
            target[r0:r0 + _SHIFT_ROWS] = ops.cast(wr + shift, F32)
            del wr, wc, shift
        del c, unperm
        wd = target
        host_w.clear()
        w = wd  # the error figure below is measured against the target

    # Whole-row statistics from the ORIGINAL rows, once. Only llama.cpp's legacy types with an
    # importance matrix use them (sigma2, the row's mean square, a regulariser in the weights
    # qw*sqrt(sigma2 + x^2) of quantize_row_q4_0_impl): the error updates change a row's mean
    # square only slightly, the original rows make every block's fit independent of the
    # processing order (static groups and act-order see the same statistic), and H = I gives
    # exactly llama.cpp's quantizer. (A per-tensor integer grid takes its scale from them.)
    stats = {} if type(grid) is IntGrid else grid.row_stats(w_host())
    nb = cols // gb
    static_params: Params | None = None
    loop_params: Params | None = None  # the same, as arrays of ops (for the column loop)
    if static_groups:
        # gptq.py lines 81-87: every group fitted up front on the (dead-zeroed) original
        # weights, in the original order; one fit of all blocks equals per-block fits
        if type(grid) is IntGrid and ops.fit_int is not None:
            loop_params = ops.fit_int(grid, wd.reshape(rows, nb, gb))
            static_params = {k: np.asarray(ops.numpy(v)) for k, v in loop_params.items()}
        else:
            static_params = grid.fit(w_host().reshape(rows, nb, gb), imp.reshape(1, nb, gb),
                                     row_stats=stats)
            loop_params = static_params

    codes_p, values_p, loss, parts = _column_loop(
        ops.cast(ops.take_cols(wd, perm) if act_order else wd, np.float64),
        u,
        grid,
        imp[perm],
        stats,
        perm,
        loop_params,
        min(block_cols, cols),
        ops,
    )
    del u
    inv = np.argsort(perm)
    values_d = ops.contiguous(ops.take_cols(values_p, inv) if act_order else values_p)
    err = ops.hessian_error(w, values_d, hessian)
    values = (values_d if not (host_values or on_host)
              else np.ascontiguousarray(ops.numpy(values_d)))
    del values_d, values_p
    codes_p = ops.numpy(codes_p)
    if static_params is not None:
        codes = codes_p[:, inv]
        record = grid.assemble((rows, cols), codes.reshape(rows, nb, gb), static_params)
    else:
        record = grid.assemble((rows, cols), codes_p.reshape(rows, nb, gb),
                               concat_params(parts))
        if act_order:
            # GPTQModel gptq.py (g_idx, desc_act without static groups): g_idx = i // gs in
            # the activation order, then un-permuted: the group of each original column
            g_idx = (np.arange(cols) // gb).astype(np.int32)[inv]
            record = dataclasses.replace(
                record, codes=np.ascontiguousarray(np.asarray(record.codes)[:, inv]),
                g_idx=g_idx,
            )
    return GptqResult(record, values, loss, err, used)


@dataclass(frozen=True)
class TensorIntGrid:
    """An integer grid with one scale (and zero-point) for the whole tensor.

    What ``IntScheme("...-tensor-...").quantize`` computes, as a :class:`Grid`: the scale is
    fitted from the extremes of the whole tensor (:meth:`row_stats` of all its rows), so a
    block (one row's columns) fitted alone gets the tensor's scale; rounding and values are
    :class:`IntGrid`'s. :meth:`assemble` gives the per-tensor record (``block_size`` the
    whole shape, a ``[1, 1]`` scale).

    Attributes:
        bits: code width, 2..8.
        symmetric: symmetric (no zero-point) or asymmetric.
        block: the tensor's input width (one block per row).
    """

    bits: int
    symmetric: bool
    block: int
    rule: str = "minmax"

    @property
    def name(self) -> str:
        """Encoding name recorded in the IR."""
        return "int"

    def _rows(self) -> IntGrid:
        return IntGrid(self.bits, self.symmetric, self.block, self.rule)

    def row_stats(self, x: np.ndarray) -> Params:
        """The tensor's extremes (``x`` must hold every row): ``min``, ``max`` as ``[1]``."""
        x = np.asarray(x, dtype=F32)
        return {"min": x.min().reshape(1), "max": x.max().reshape(1)}

    def fit(
        self,
        x: np.ndarray,
        importance: np.ndarray | None = None,
        *,
        row_stats: Params | None = None,
    ) -> Params:
        """The tensor's scale (and zero-point) for every block of ``x``, from ``row_stats``
        (or from ``x`` itself, exact when it holds the whole tensor); ``importance`` unused.

        The same float32 operations as :meth:`IntGrid.fit` of the flattened tensor (one
        block of ``rows * cols``), which ``IntScheme.quantize`` runs.
        """
        x = np.asarray(x, dtype=F32)
        stats = self.row_stats(x) if row_stats is None else row_stats
        ext = np.array([[[stats["min"][0], stats["max"][0]]]], dtype=F32)  # [1, 1, 2]
        one = self._rows().fit(ext)  # min/max (and |x| max) are all the fit reads
        return {k: np.broadcast_to(v, x.shape[:2]).copy() for k, v in one.items()}

    def round(
        self, x: np.ndarray, params: Params, *, cols: slice | None = None
    ) -> np.ndarray:
        """:meth:`IntGrid.round`."""
        return self._rows().round(x, params, cols=cols)

    def value(
        self, codes: np.ndarray, params: Params, *, cols: slice | None = None
    ) -> np.ndarray:
        """:meth:`IntGrid.value`."""
        return self._rows().value(codes, params, cols=cols)

    def assemble(
        self, shape: tuple[int, int], codes: np.ndarray, params: Params
    ) -> QuantizedTensor:
        """The per-tensor record, as ``IntScheme.quantize`` builds it."""
        rows, cols = shape
        zp = params.get("zero_point")
        return QuantizedTensor(
            shape=(rows, cols),
            codes=np.asarray(codes).reshape(rows, cols),
            scale=np.asarray(params["scale"], dtype=F32).reshape(-1)[:1].reshape(1, 1),
            block_size=(rows, cols),
            bits=self.bits,
            signed=True,
            zero_point=None if zp is None else np.asarray(zp).reshape(-1)[:1].reshape(1, 1),
            encoding=self.name,
        )


# ------------------------------------------------------------------------------ internals


def _column_loop(
    wp: np.ndarray,
    u: np.ndarray,
    grid: Grid,
    imp_p: np.ndarray,
    stats: Params,
    perm: np.ndarray,
    static_params: Params | None,
    batch: int,
    ops: ArrayOps = NUMPY,
) -> tuple[Any, Any, float, list[Params]]:
    """The lazy-batch column loop of ``gptq.py`` lines 106-143 over the permuted weight ``wp``
    (float64 ``[rows, cols]``) with ``u`` the upper Cholesky factor of the permuted, damped
    ``H⁻¹``. Returns codes and values in the processing order, the loss and, for groups
    fitted in the loop, the parameters of each group in that order (numpy). The arrays are
    ``ops``'s (the codes and values too); see :func:`_fit_block` for where groups are fitted."""
    rows, cols = wp.shape
    gb = grid.block
    # transposed: column j of the weight is the contiguous row j
    wt = ops.contiguous(wp.T)
    if min(rows, cols) == 1:  # a vector's .T is contiguous already; wt is edited in place
        wt = ops.copy(wt)
    values = ops.empty((cols, rows), F32)
    codes: Any = None
    parts: list[Params] = []
    loss: Any = 0.0
    rounder: Callable[[Any, int], tuple[Any, Any]] | None = None
    static_rounders: dict[int, Callable[[Any, int], tuple[Any, Any]]] = {}
    # a whole sub-batch in one call (ops.int_sub_batch) where every column of it is on an
    # integer grid whose parameters are known when the sub-batch starts: static groups, or
    # groups that are whole sub-batches (the fit happens at the sub-batch's first column)
    fused = (ops.int_sub_batch is not None and type(grid) in (IntGrid, TensorIntGrid)
             and (static_params is not None or gb % _SUB == 0))
    cur_sz: tuple[Any, Any] | None = None
    static_sz = None
    qmin, qmax = code_range(grid.bits, True) if fused else (0, 0)

    def fit_group(j: int, i1: int, err1: Any) -> Params:
        # a new group at column j, fitted on its columns as the errors of every earlier column
        # left them: the batch-start state wt minus this batch's errors so far (gptq.py lines
        # 120-124 fit from W, which has the earlier batches' updates but not this batch's)
        end = j + gb
        blk = wt[j:end]
        if j > i1:
            blk = blk - u[i1:j, j:end].T @ err1[:j - i1]
        p = _fit_block(grid, blk, imp_p[j:end], stats, ops)
        parts.append(p)
        return p

    if fused and static_params is not None:
        zp = static_params.get("zero_point")
        static_sz = (ops.contiguous(ops.asarray(static_params["scale"]).T),
                     None if zp is None else ops.contiguous(ops.asarray(zp).T))
    for i1 in range(0, cols, batch):
        i2 = min(i1 + batch, cols)
        n = i2 - i1
        w1 = ops.copy(wt[i1:i2])  # wt[i1:i2] keeps the batch-start state (see the fit below)
        err1 = ops.empty((n, rows), np.float64)
        # a second level of lazy updates inside the batch: a column's rank-1 update reaches
        # only the rest of its sub-batch of _SUB columns, the sub-batch's errors reach the rest
        # of the batch by one product (the same arithmetic as gptq.py's per-column update of
        # all of W1[:, i:], regrouped; a column is read only after all earlier errors reached it)
        for s1 in range(i1, i2, _SUB):
            s2 = min(s1 + _SUB, i2)
            if fused and s2 - s1 == _SUB:
                if static_params is None and s1 % gb == 0:
                    p = fit_group(s1, i1, err1)
                    zp = p.get("zero_point")
                    cur_sz = (ops.asarray(p["scale"][:, 0]),
                              None if zp is None else ops.asarray(zp[:, 0]))
                if static_sz is not None:
                    blocks = np.asarray(perm[s1:s2]) // gb
                    sc = static_sz[0][blocks]
                    zc = None if static_sz[1] is None else static_sz[1][blocks]
                else:
                    assert cur_sz is not None  # one group: [1, rows], broadcast
                    sc = cur_sz[0][None, :]
                    zc = None if cur_sz[1] is None else cur_sz[1][None, :]
                a, b = s1 - i1, s2 - i1
                if codes is None:
                    codes = ops.empty((cols, rows), np.int8)
                # the codes, values and errors written in place
                ops.int_sub_batch(w1[a:b], u[s1:s2, s1:s2], sc, zc, qmin, qmax,
                                  (codes[s1:s2], values[s1:s2], err1[a:b]))
                loss = loss + ops.sq_sum(err1[a:b].reshape(-1)) / 2.0
                if s2 < i2:
                    w1[b:] -= u[s1:s2, s2:i2].T @ err1[a:b]
                continue
            for j in range(s1, s2):
                i = j - i1
                if static_params is None:
                    if j % gb == 0:
                        rounder = _rounder(grid, fit_group(j, i1, err1), ops)
                    c = j % gb
                else:
                    # static groups: the column's own block in the original order (gptq.py
                    # line 126: groups[perm[idx] // groupsize])
                    b, c = divmod(int(perm[j]), gb)
                    rounder = static_rounders.get(b)
                    if rounder is None:
                        bp = {k: v[:, b : b + 1] for k, v in static_params.items()}
                        rounder = static_rounders[b] = _rounder(grid, bp, ops)
                x = w1[i]
                q, v = rounder(ops.cast(x, F32), c)
                if codes is None:
                    codes = ops.empty_like(q, (cols, rows))
                codes[j] = q
                values[j] = v
                d = u[j, j]
                e = (x - v) / d  # err1 = (w - q) / d
                loss = loss + ops.sq_sum(e) / 2.0  # Losses1 = (w - q)**2 / d**2 / 2
                err1[i] = e
                if j + 1 < s2:  # W1[:, i:] -= err1 ⊗ Hinv1[i, i:], within the sub-batch
                    w1[i + 1 : s2 - i1] -= u[j, j + 1 : s2, None] * e
            if s2 < i2:
                w1[s2 - i1 :] -= u[s1:s2, s2:i2].T @ err1[s1 - i1 : s2 - i1]
        if i2 < cols:
            # the deferred update: W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
            wt[i2:] -= u[i1:i2, i2:].T @ err1
    assert codes is not None
    if ops is not NUMPY:  # parameters fitted on the device: the grid assembles on the host
        parts = [{k: np.asarray(ops.numpy(v)) for k, v in p.items()} for p in parts]
    return ops.contiguous(codes.T), ops.contiguous(values.T), float(loss), parts


def _fit_block(grid: Grid, blk: Any, imp: np.ndarray, stats: Params, ops: ArrayOps) -> Params:
    """``grid.fit`` of one group, ``blk`` its columns ``[gb, rows]`` (an array of ``ops``):
    on the device for an integer grid when ``ops`` can (:meth:`ArrayOps.fit_int`; the
    parameters stay there), else on the host (float32 numpy)."""
    if type(grid) is IntGrid and ops.fit_int is not None:
        return ops.fit_int(grid, ops.cast(blk.T, F32)[:, None, :])
    x = ops.numpy(ops.contiguous(ops.cast(blk.T, F32)))
    return grid.fit(np.ascontiguousarray(x)[:, None, :], imp.reshape(1, 1, -1), row_stats=stats)


def _rounder(
    grid: Grid, p: Params, ops: ArrayOps = NUMPY
) -> Callable[[Any, int], tuple[Any, Any]]:
    """``(x, c) -> (codes, values)`` of one column ``x`` ``[rows]`` (float32) at column ``c``
    of the block whose parameters are ``p``: ``grid.round`` / ``grid.value`` with
    ``cols=slice(c, c + 1)``, or the same arithmetic inlined for an :class:`IntGrid` and the
    k-quants (on ``ops``'s arrays; any other grid rounds on the host)."""
    if type(grid) in (IntGrid, TensorIntGrid):
        # IntGrid.round / value with the per-call checks hoisted: the same float32 operations
        qmin, qmax = code_range(grid.bits, True)
        s = ops.asarray(p["scale"][:, 0])
        zp = p.get("zero_point")
        z = None if zp is None else ops.asarray(zp[:, 0])

        def int_col(x: Any, c: int) -> tuple[Any, Any]:
            q = ops.round(x / s)
            if z is not None:
                q = q + z
            q = ops.cast(ops.clip(q, qmin, qmax), np.int8)
            cf = ops.cast(q, F32)
            if z is not None:
                cf = cf - z
            return q, cf * s

        return int_col

    if type(grid) is GgmlKGrid:
        return _k_rounder(grid, p, ops)
    if ops is not NUMPY:
        host = _rounder(grid, p)

        def host_col(x: Any, c: int) -> tuple[Any, Any]:
            q, v = host(np.asarray(ops.numpy(x), dtype=F32), c)
            return ops.asarray(q), ops.asarray(v)

        return host_col

    rows = next(iter(p.values())).shape[0]
    lo_v = hi_v = None
    if type(grid) is GgmlLegacyGrid and "id" in p:
        # llama.cpp's reference rounding (quantize_row_q*_ref: the paths without an importance
        # matrix) has no lower clamp, Q8_0 none at all: its scale comes from the block's own
        # extremes, so C never sees a value beyond them. GPTQ's error feedback moves weights
        # after the scale is fitted; clamp them first to what the extreme codes stand for under
        # the block's own inverse scale, as GPTQ's quantizer clamps to [0, maxq]
        # (quant.py quantize()) -- without it Q8_0's int8 cast wraps (130 -> -126). The
        # importance paths (``iscale``) clamp their codes at both ends already.
        inv = p["id"][:, 0].astype(np.float64)
        safe = np.where(inv == 0, 1.0, inv)
        if grid.asym:  # (x - min)*id + 0.5 in [0, qmax + 0.5]
            lo_code, hi_code, base = 0, (1 << grid.bits) - 1, p["min"][:, 0]
        else:  # x*id (+ nmax + 0.5) in [-nmax, nmax - 1]
            lo_code, hi_code, base = -grid._nmax, grid._nmax - 1, 0.0
        a, b = base + lo_code / safe, base + hi_code / safe
        zero = inv == 0  # an all-zero block: every value rounds to the zero code
        lo_v = np.where(zero, base, np.minimum(a, b)).astype(F32)
        hi_v = np.where(zero, base, np.maximum(a, b)).astype(F32)

    def any_col(x: np.ndarray, c: int) -> tuple[np.ndarray, np.ndarray]:
        cols = slice(c, c + 1)
        if lo_v is not None:
            x = np.clip(x, lo_v, hi_v)
        q = grid.round(x.reshape(rows, 1, 1), p, cols=cols)
        return q.reshape(rows), grid.value(q, p, cols=cols).reshape(rows)

    return any_col


def _k_rounder(
    grid: GgmlKGrid, p: Params, ops: ArrayOps = NUMPY
) -> Callable[[Any, int], tuple[Any, Any]]:
    """:meth:`GgmlKGrid.round` / :meth:`GgmlKGrid.value` of one column, with the sub-block
    scales ``d*sc`` and mins ``dmin*m`` of the super-block computed once instead of per
    column: the float32 operations of ``GgmlKGrid._round_cols`` (``nearest_int((x + dm)/d)``,
    the search's fallback codes where ``d*sc`` is zero) in the same order."""
    lo, hi = grid._range
    ds, dm = grid._sub_params(p)  # [rows, 1, n_sub]
    ds_t = np.ascontiguousarray(ds[:, 0, :].T)  # [n_sub, rows]: one contiguous row a sub-block
    dm_t = None if dm is None else np.ascontiguousarray(dm[:, 0, :].T)
    zero_t = ds_t == 0
    any_zero = zero_t.any(axis=1)
    fb = p.get("fallback")
    fb = None if fb is None else fb[:, 0, :]
    out_type = np.uint8 if grid.asym else np.int8
    sub = grid.sub
    if ops is not NUMPY:
        ds_t, zero_t = ops.asarray(ds_t), ops.asarray(zero_t)
        dm_t = None if dm_t is None else ops.asarray(dm_t)
        fb = None if fb is None else ops.asarray(np.ascontiguousarray(fb))

    def k_col(x: Any, c: int) -> tuple[Any, Any]:
        k = c // sub
        dsc = ds_t[k]
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            num = x + dm_t[k] if dm_t is not None else x
            q = ops.cast(ops.clip(ops.nearest_int(num / dsc), lo, hi), out_type)
        if any_zero[k]:
            zero = zero_t[k]
            q[zero] = ops.cast(fb[zero, c], out_type) if fb is not None else 0
        v = ops.cast(q, F32) * dsc
        return q, (v - dm_t[k] if dm_t is not None else v)

    return k_col


def _inverse_cholesky(h: Any, diag: np.ndarray, damp: float,
                      ops: ArrayOps = NUMPY) -> tuple[Any | None, float]:
    """Upper Cholesky factor of ``(H + λI)⁻¹``, ``λ = damp * mean(diag(H))`` (gptq.py lines
    98-104), retrying with ``damp`` times 10 while the factorisation fails (GPTQModel
    ``hessian_inverse``), up to 1. ``(None, last damp)`` when every try failed. ``diag`` is
    ``H``'s diagonal (numpy); ``h`` is an array of ``ops``."""
    mean = float(np.mean(diag))
    f = damp
    while True:
        u = None
        if mean > 0:
            u = ops.damped_upper_chol_of_inverse(h, f * mean)
        if u is not None and ops.all_finite(u) and (ops.diag(u) > 0).all():
            return u, f
        nxt = f * _DAMP_STEP if f > 0 else _FIRST_DAMP
        if nxt > _MAX_DAMP * (1 + 1e-9) or mean <= 0:
            return None, f
        log.debug("Cholesky failed with damp %g, retrying with %g", f, nxt)
        f = nxt


def _upper_chol_of_inverse(h: np.ndarray) -> np.ndarray:
    """Upper triangular ``U`` with ``Uᵀ U = H⁻¹`` (what gptq.py gets from cholesky,
    cholesky_inverse, cholesky(upper=True)) from ONE factorisation: with ``J`` the reversal,
    ``JHJ = L Lᵀ`` gives ``H = R Rᵀ``, ``R = JLJ`` upper, so ``H⁻¹ = R⁻ᵀ R⁻¹`` and
    ``U = R⁻¹ = J L⁻¹ J`` (upper, positive diagonal: the unique factor). Raises
    ``LinAlgError`` when ``H`` is not positive definite."""
    return _upper_chol_of_inverse_reversed(np.ascontiguousarray(h[::-1, ::-1]))


def _upper_chol_of_inverse_reversed(hr: np.ndarray) -> np.ndarray:
    """:func:`_upper_chol_of_inverse` of ``H`` given ``JHJ`` (contiguous)."""
    li = _chol_inv(hr)
    return np.ascontiguousarray(li[::-1, ::-1])


def _chol_inv(a: np.ndarray) -> np.ndarray:
    """``L⁻¹`` for the lower Cholesky factor ``L`` of ``a``, by blocks: with
    ``a = [[A, Bᵀ], [B, C]]``, ``L₁ = chol(A)``, ``L₂₁ = B L₁⁻ᵀ``, ``L₂ = chol(C - L₂₁ L₂₁ᵀ)``
    and ``L⁻¹ = [[L₁⁻¹, 0], [-L₂⁻¹ L₂₁ L₁⁻¹, L₂⁻¹]]``: most of the work is BLAS matmul (a
    third less time than LAPACK's factorisation, then an inverse, at 1536 columns)."""
    n = a.shape[0]
    if n <= _TRI_LEAF:
        return np.tril(np.linalg.inv(np.linalg.cholesky(a)))
    k = n // 2
    l1i = _chol_inv(a[:k, :k])
    l21 = a[k:, :k] @ l1i.T
    l2i = _chol_inv(a[k:, k:] - l21 @ l21.T)
    out = np.zeros_like(a)
    out[:k, :k] = l1i
    out[k:, k:] = l2i
    out[k:, :k] = -(l2i @ l21) @ l1i
    return out
