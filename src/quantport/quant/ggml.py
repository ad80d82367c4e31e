"""llama.cpp (ggml) weight types as :class:`~quantport.quant.grid.Grid` objects.

Each grid ports the matching ``ggml-quants.c`` quantizer to vectorized numpy (float32, in C
operation order), so that ``quantize_rtn(w, grid, importance)`` followed by
:func:`quantport.formats.gguf_blocks.pack` gives the bytes of
``ggml_quantize_chunk(type, w, ..., imatrix)``:

* without importance: ``quantize_row_<type>_ref`` (what ``quantize_<type>`` calls when
  ``quant_weights == NULL``);
* with importance: ``quantize_row_<type>_impl`` (Q8_0 ignores it, as C does).

Codes are recomputed by :meth:`round` from the fitted parameters with the C rounding rule
(truncation for the legacy ``_ref`` paths, ``nearest_int`` elsewhere). Where C keeps the codes
of its search instead (legacy ``_impl`` paths; k-quant sub-blocks whose effective scale is
zero) the parameters carry what reproduces them.

The scale searches live in :mod:`quantport.quant._ggml_search`; this module does the per-type
plumbing, super-block scale quantization and IR assembly.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
import numpy as np

from quantport.errors import ShapeError, UnsupportedQuantError
from quantport.ir import QuantizedTensor, ZeroPointDomain
from quantport.quant import _ggml_search as S
from quantport.quant.grid import Grid, Params, block_columns
from quantport.quant.rtn import quantize_rtn

__all__ = [
    "GGML_GRIDS",
    "KVALUES_IQ4NL",
    "GgmlKGrid",
    "GgmlLegacyGrid",
    "IQ4NLGrid",
    "quantize_ggml",
    "set_num_threads",
]

F32 = np.float32
QK_K = 256
#: ``kvalues_iq4nl`` (ggml-common.h) as float32.
KVALUES_IQ4NL = np.array(
    [-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113], dtype=np.float32
)

# Most weights per task of the searches: large enough that numpy's per-call overhead (and
# the GIL it holds) stays small against the vector work, small enough for the L2/L3 caches.
_CHUNK_ELEMS = 1 << 18
_POOL: ThreadPoolExecutor | None = None
_THREADS: int | None = None  # None: one per core (at most 8)
# Weights per task of the legacy ``_ref`` paths (a few passes each: cache-sized chunks).
_LEGACY_CHUNK_ELEMS = 1 << 18
_SIGN_BIT = np.int32(-0x80000000)
_HALF_BELOW = np.int32(0x3EFFFFFF)  # 0.49999997f, the float32 just below 0.5


def _pool() -> ThreadPoolExecutor:
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=_n_workers(), thread_name_prefix="quantport-ggml")
    return _POOL


def set_num_threads(n: int | None) -> None:
    """Threads the ggml quantizers use within one tensor (``None``: one per core, at most 8).

    A caller that already runs several tensors at once in separate processes (the GGUF writer)
    sets this to its share of the cores, so that the processes do not oversubscribe them.
    """
    global _POOL, _THREADS
    if n is not None and n < 1:
        raise ValueError(f"set_num_threads: need at least 1 thread, got {n}")
    if _POOL is not None:
        _POOL.shutdown(wait=False)
    _POOL, _THREADS = None, n


def _after_fork_in_child() -> None:
    # a forked child inherits the executor object but none of its threads: work submitted to it
    # would wait forever, so the child starts a fresh pool on first use
    global _POOL
    _POOL = None


os.register_at_fork(after_in_child=_after_fork_in_child)


def _n_workers() -> int:
    return max(1, _THREADS if _THREADS is not None else min(8, os.cpu_count() or 1))


def _chunk_items(n: int, per_item: int, max_elems: int | None = None, min_split: int = 1 << 15) -> int:
    """Items per task for ``n`` items of ``per_item`` weights: at most ``max_elems`` weights a
    task, and a multiple of the worker count of tasks (one each, when they fit); a single
    task below ``min_split`` weights (not worth a thread hand-off)."""
    limit = max(1, (max_elems or _CHUNK_ELEMS) // max(per_item, 1))
    workers = _n_workers()
    if n * per_item < min_split:
        return max(n, 1)
    tasks = -(-n // limit)
    tasks = -(-tasks // workers) * workers
    return max(1, -(-n // tasks))


def _map_chunks(fn: Callable[[int, int], dict[str, np.ndarray]], n: int, per_item: int) -> Params:
    """Run ``fn(lo, hi)`` over ``[0, n)`` in chunks (threads: numpy releases the GIL) and
    concatenate each returned array along axis 0."""
    chunk = _chunk_items(n, per_item)
    bounds = [(lo, min(lo + chunk, n)) for lo in range(0, n, chunk)] or [(0, 0)]
    if len(bounds) == 1 or _n_workers() == 1:
        parts = [fn(*b) for b in bounds]
    else:
        parts = list(_pool().map(lambda b: fn(*b), bounds))
    return {k: np.concatenate([p[k] for p in parts], axis=0) for k in parts[0]}


def _quiet(fn: Callable[[int, int], None]) -> Callable[[int, int], None]:
    """Run ``fn`` with float warnings off (``np.errstate`` is per thread)."""

    def run(lo: int, hi: int) -> None:
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            fn(lo, hi)

    return run


def _for_chunks(fn: Callable[[int, int], None], n: int, per_item: int) -> None:
    """Run ``fn(lo, hi)`` (which writes its results in place) over ``[0, n)`` in chunks."""
    chunk = _chunk_items(n, per_item, _LEGACY_CHUNK_ELEMS, 1 << 19)
    bounds = [(lo, min(lo + chunk, n)) for lo in range(0, n, chunk)]
    if len(bounds) <= 1 or _n_workers() == 1:
        for b in bounds:
            fn(*b)
        return
    list(_pool().map(lambda b: fn(*b), bounds))


def _fp16(a: np.ndarray) -> np.ndarray:
    """``GGML_FP32_TO_FP16`` then back to float32 (round to nearest even, as ggml's converter)."""
    with np.errstate(over="ignore"):
        return np.asarray(a, dtype=F32).astype(np.float16).astype(F32)


def _emajor(x: np.ndarray, n: int) -> np.ndarray:
    """``[b, k*n]`` rows -> element-major ``[n, b*k]`` (sub-block ``(i, j)`` is column ``i*k+j``)."""
    b, w = x.shape
    return np.ascontiguousarray(x.reshape(b, w // n, n).transpose(2, 0, 1)).reshape(n, -1)


def _from_emajor(e: np.ndarray, b: int) -> np.ndarray:
    """Inverse of :func:`_emajor`: ``[n, b*k]`` -> ``[b, k*n]``."""
    n = e.shape[0]
    return np.ascontiguousarray(e.reshape(n, b, -1).transpose(1, 2, 0)).reshape(b, -1)


def _fallback(
    d: np.ndarray, sc: np.ndarray, sub: int, codes_of: Callable[[np.ndarray], np.ndarray]
) -> np.ndarray:
    """``[b, 256]`` int8 search codes, filled in only for the sub-blocks whose effective
    scale ``d*sc`` is zero (the only ones :meth:`GgmlKGrid.round` takes them from).

    ``codes_of(cols)`` gives the ``[sub, len(cols)]`` codes of element-major columns ``cols``
    (sub-block ``j`` of super-block ``i`` is column ``i*(256//sub) + j``).
    """
    b = d.shape[0]
    fb = np.zeros((b, QK_K), dtype=np.int8)
    cols = np.flatnonzero((d[:, None] * sc.astype(F32)).reshape(-1) == 0)
    if cols.size:
        fb.reshape(-1, sub)[cols] = codes_of(cols).T
    return fb


def _importance(importance: np.ndarray | None, x: np.ndarray) -> np.ndarray | None:
    """Normalize the importance to ``[1 or rows, n_blocks, block]`` float32."""
    if importance is None:
        return None
    imp = np.asarray(importance, dtype=F32)
    rows, nb, block = x.shape
    if imp.ndim == 1:
        imp = imp.reshape(1, nb, block)
    if imp.ndim == 2:
        imp = imp.reshape(imp.shape[0], nb, block)
    if imp.shape[0] not in (1, rows) or imp.shape[1:] != (nb, block):
        raise ShapeError(f"importance of shape {importance.shape} does not fit blocks {x.shape}")
    return imp


def _rows_of(imp: np.ndarray | None, nb: int, lo: int, hi: int) -> np.ndarray | None:
    """Importance rows for flattened blocks ``lo..hi`` of a ``[rows*nb, block]`` view."""
    if imp is None:
        return None
    flat = imp.reshape(-1, imp.shape[-1])
    if imp.shape[0] == 1:
        return flat[np.arange(lo, hi) % nb]
    return flat[lo:hi]


def _imp_emajor(imp: np.ndarray, nb: int, lo: int, hi: int) -> np.ndarray:
    """``_emajor(_rows_of(imp, nb, lo, hi), block)``, built directly: one importance row
    repeats every ``nb`` blocks, so its transpose tiled and sliced is the answer (a fifth of
    the time of gathering the rows, then transposing them)."""
    block = imp.shape[-1]
    if imp.shape[0] != 1:
        return _emajor(_rows_of(imp, nb, lo, hi), block)
    imp_t = np.ascontiguousarray(imp.reshape(nb, block).T)  # [block, nb]
    start = lo % nb
    reps = -(-(start + hi - lo) // nb)
    return np.ascontiguousarray(np.tile(imp_t, (1, reps))[:, start : start + hi - lo])


def _row_sigma2(x: np.ndarray) -> np.ndarray:
    """``sum_x2 / n_per_row`` per row, summed in C order (``quantize_row_q4_0_impl``)."""
    rows = x.shape[0]
    flat = x.reshape(rows, -1)
    cols = flat.shape[1]
    out = np.empty(rows, dtype=F32)
    step = max(1, _CHUNK_ELEMS // max(cols, 1))
    for lo in range(0, rows, step):
        e = np.ascontiguousarray(flat[lo : lo + step].T)
        out[lo : lo + step] = S.seq_sum(e * e)
    return out / F32(cols)


def _roundf(v: np.ndarray) -> np.ndarray:
    """C ``roundf`` (half away from zero) of float32 values, returned as float64.

    ``trunc(v + copysign(0.5, v))`` is exact in float64 for every float32 ``v`` (in float32
    the sum would round ``0.49999997 + 0.5`` up to 1).
    """
    v64 = v.astype(np.float64)
    v64 += np.copysign(0.5, v64)
    return np.trunc(v64, out=v64)


# ============================================================================ legacy types


@dataclass(frozen=True)
class GgmlLegacyGrid:
    """Q8_0, Q4_0, Q4_1, Q5_0, Q5_1: one fp16 scale (and min) per 32 weights.

    Without importance: ``quantize_row_q*_ref`` (scale from the block's extreme value, codes
    by truncation of ``x*id + offset`` with the *unrounded* inverse scale ``id``). With
    importance: ``quantize_row_q*_impl`` (``make_qx_quants`` / ``make_qkx3_quants`` on weights
    ``qw*sqrt(sigma2 + x^2)``, ``sigma2`` = mean square of the whole row).
    """

    name: str
    bits: int
    asym: bool
    block: int = 32

    @property
    def _nmax(self) -> int:
        return 1 << (self.bits - 1)

    def row_stats(self, x: np.ndarray) -> Params:
        """``sigma2`` per row: ``quantize_row_q4_0_impl`` (q4_1, q5_0, q5_1 alike) weights
        the error by ``qw*sqrt(sigma2 + x^2)`` with ``sigma2 = sum_x2 / n_per_row`` over the
        *whole* row, which a block fitted on its own cannot compute. Only the importance
        path uses it (Q8_0 and the ``_ref`` paths fit each block from itself alone)."""
        if self.name == "Q8_0":
            return {}
        x = np.asarray(x, dtype=F32)
        return {"sigma2": _row_sigma2(x.reshape(x.shape[0], -1))}

    def fit(
        self,
        x: np.ndarray,
        importance: np.ndarray | None = None,
        *,
        row_stats: Params | None = None,
    ) -> Params:
        """Fit ``d`` (and ``m``) per block of 32, as the C quantizer of :attr:`name`.

        With importance, ``row_stats`` (:meth:`row_stats` of the whole rows) supplies the
        row's mean square when ``x`` holds only some of each row's blocks.
        """
        x = np.asarray(x, dtype=F32)
        rows, nb, _ = x.shape
        imp = _importance(importance, x)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            if imp is None or self.name == "Q8_0":
                return self._fit_ref(x)
            sigma2 = None if row_stats is None else row_stats.get("sigma2")
            if sigma2 is None:
                sigma2 = _row_sigma2(x)
            else:
                sigma2 = np.asarray(sigma2, dtype=F32)
                if sigma2.shape != (rows,):
                    raise ShapeError(
                        f"{self.name}: row_stats sigma2 of shape {sigma2.shape} "
                        f"does not fit {rows} rows"
                    )
            return self._fit_impl(x, imp, sigma2)

    def _fit_ref(self, x: np.ndarray) -> Params:
        rows, nb, block = x.shape
        xb = np.ascontiguousarray(x).reshape(rows * nb, block)
        n = rows * nb
        d = np.empty(n, dtype=F32)
        inv = np.empty(n, dtype=F32)
        mins = np.empty(n, dtype=F32) if self.asym else None
        nmax = self._nmax

        @_quiet
        def work(lo: int, hi: int) -> None:
            # element-major copy: the per-block extremes are then contiguous vector ops
            e = np.ascontiguousarray(xb[lo:hi].T)
            mx = np.maximum.reduce(e, axis=0)
            mn = np.minimum.reduce(e, axis=0)
            if self.name == "Q8_0":
                # quantize_row_q8_0_ref: amax = max |x| (from +0.0), d = amax/127
                amax = np.maximum(mx, -mn)
                amax += F32(0.0)  # -0.0 -> +0.0
                dd = amax / F32(127)
            elif not self.asym:
                # quantize_row_q4_0_ref / q5_0_ref: d = max / -8 (-16), max = the value of the
                # first element of largest magnitude (+0.0 for an all-zero block)
                neg = -mn
                sel = np.where(neg > mx, mn, mx)
                tie = np.flatnonzero((neg == mx) & (mx > 0))
                if tie.size:  # +v and -v both present: the first one wins
                    sub = xb[lo + tie]
                    sel[tie] = sub[np.arange(tie.size), np.argmax(np.abs(sub), axis=1)]
                sel[np.maximum(mx, neg) == 0] = F32(0.0)
                dd = sel / F32(-nmax)
            else:
                # quantize_row_q4_1_ref / q5_1_ref: d = (max - min) / 15 (31), m = min, with
                # C's ``if (v < min) min = v``: a zero min has the sign of the first zero
                z = np.flatnonzero(mn == 0)
                if z.size:
                    sub = xb[lo + z]
                    mn[z] = sub[np.arange(z.size), np.argmax(sub == 0, axis=1)]
                dd = (mx - mn) / F32((1 << self.bits) - 1)
                mins[lo:hi] = mn
            d[lo:hi] = dd
            nz = dd != 0
            np.divide(F32(1.0), dd, out=dd, where=nz)
            dd[~nz] = F32(0.0)
            inv[lo:hi] = dd

        _for_chunks(work, n, block)
        params: Params = {"d": _fp16(d).reshape(rows, nb), "id": inv.reshape(rows, nb)}
        if self.asym:
            params["m"] = _fp16(mins).reshape(rows, nb)
            params["min"] = mins.reshape(rows, nb)
        return params

    def _fit_impl(self, x: np.ndarray, imp: np.ndarray, sigma2: np.ndarray) -> Params:
        # sigma2: sum_x2 / n_per_row over the whole row, [rows]
        rows, nb, block = x.shape
        xb = x.reshape(rows * nb, block)
        nmax = self._nmax if not self.asym else (1 << self.bits) - 1

        def work(lo: int, hi: int) -> dict[str, np.ndarray]:
            xe = _emajor(xb[lo:hi], block)
            qw = _imp_emajor(imp, nb, lo, hi)
            s2 = sigma2[np.arange(lo, hi) // nb]
            w = qw * np.sqrt(s2 + xe * xe)
            if not self.asym:
                # quantize_row_q4_0_impl: d = make_qx_quants(32, 8 (16), x, L, 1, weight)
                scale, isc, zero = S.make_qx_quants(xe, nmax, w)
                return {"d": _fp16(scale), "iscale": isc, "zero": zero}
            # quantize_row_q4_1_impl: make_qkx3_quants(32, 15 (31), x, w, L, &min, -0.9, 0.05, 36)
            scale, the_min, isc, min0 = S.make_qkx2_quants(xe, w, nmax, -0.9, 0.05, 36, False)
            return {"d": _fp16(scale), "m": _fp16(-the_min), "iscale": isc, "min0": min0}

        out = _map_chunks(work, rows * nb, block)
        return {k: v.reshape(rows, nb) for k, v in out.items()}

    def round(
        self, x: np.ndarray, params: Params, *, cols: slice | None = None
    ) -> np.ndarray:
        """Codes as the C quantizer stores them (signed ``q - 8``/``q - 16`` for Q4_0/Q5_0).

        ``cols``: ``x`` holds only those columns of each block. One scale (and min) per
        block and an elementwise rule, so any columns round as they do in the whole block.
        """
        x = np.asarray(x, dtype=F32)
        block_columns(self.block, cols, x.shape[-1])
        qmax = (1 << self.bits) - 1
        with np.errstate(invalid="ignore", over="ignore"):
            if "iscale" in params:
                isc = params["iscale"][..., None]
                if self.asym:  # MAX(0, MIN(15 (31), nearest_int(iscale*(x - min))))
                    v = np.asarray(x - params["min0"][..., None], dtype=F32)
                    return S.clamped_codes(v, v, isc, 0, qmax).astype(np.uint8)
                v = np.empty(np.broadcast_shapes(x.shape, isc.shape), dtype=F32)
                q = S.clamped_codes(v, x, isc, -self._nmax, self._nmax - 1).astype(np.int8)
                zero = params["zero"]
                if zero.any():  # C stores L = 0 for an all-zero block
                    q = np.where(zero[..., None], np.int8(-self._nmax), q)
                return q
            return self._round_ref(x, params)

    def _round_ref(self, x: np.ndarray, params: Params) -> np.ndarray:
        """Codes of the ``quantize_row_q*_ref`` paths (unrounded inverse scale ``id``)."""
        inv = params["id"]
        qmax = (1 << self.bits) - 1
        lead = inv.shape
        out = np.empty(np.broadcast_shapes(x.shape, (*lead, 1)), dtype=np.int8)
        fast = x.shape[:-1] == lead and out.shape == x.shape
        xb = np.ascontiguousarray(x).reshape(-1, x.shape[-1]) if fast else x
        ob = out.reshape(-1, x.shape[-1]) if fast else out
        invb = inv.reshape(-1) if fast else inv
        minb = None
        if self.asym:
            minb = params["min"].reshape(-1) if fast else params["min"]

        @_quiet
        def work(lo: int, hi: int) -> None:
            sl = slice(lo, hi) if fast else slice(None)
            xs = xb[sl]
            t = np.empty(xs.shape if fast else out.shape, dtype=F32)
            if self.name == "Q8_0":
                # roundf(x*id): trunc(x*id + copysign(0.49999997f, x)) is exact for |x*id|
                # < 2**22 (adding 0.5 would round 0.49999997 + 0.5 up to 1).
                h = np.bitwise_and(xs.view(np.int32), _SIGN_BIT)
                h |= _HALF_BELOW
                np.multiply(xs, invb[sl][..., None], out=t)
                t += h.view(F32)
                ob[sl] = t.astype(np.int8)  # C's (int8_t) truncation; |value| <= 127.5
                return
            # With a finite id, t lies in [0, qmax + 1.5]: MIN on the float before the
            # truncating cast is then the same, and numpy's float clip is vectorized where its
            # int8 minimum with a scalar is not. An infinite id (a block whose range is
            # subnormal) gives t = +-inf or NaN, which the cast maps as C's (int8_t) does on
            # x86 (to 0); those chunks keep the integer MIN.
            finite = bool(np.isfinite(invb[sl]).all())
            if self.asym:
                # (int8_t)((x - min)*id + 0.5f), MIN(15 (31), .)
                np.subtract(xs, minb[sl][..., None], out=t)
                t *= invb[sl][..., None]
                t += F32(0.5)
            else:
                # (int8_t)(x*id + 8.5f) (16.5f), MIN(15 (31), .), stored minus the offset
                np.multiply(xs, invb[sl][..., None], out=t)
                t += F32(self._nmax + 0.5)
            if finite:
                np.clip(t, F32(-128), F32(qmax), out=t)
                q = t.astype(np.int8)
            else:
                q = t.astype(np.int8)
                np.minimum(q, np.int8(qmax), out=q)
            if not self.asym:
                q -= np.int8(self._nmax)
            ob[sl] = q

        if fast:
            _for_chunks(work, xb.shape[0], xb.shape[1])
        else:
            work(0, 0)
        return out.view(np.uint8) if self.asym else out

    def value(
        self, codes: np.ndarray, params: Params, *, cols: slice | None = None
    ) -> np.ndarray:
        """``q*d`` (symmetric) or ``q*d + m`` (asymmetric), float32 as ``dequantize_row_*``.

        ``cols`` as in :meth:`round`.
        """
        block_columns(self.block, cols, codes.shape[-1])
        v = codes.astype(F32) * params["d"][..., None]
        if self.asym:
            v = v + params["m"][..., None]
        return v

    def assemble(
        self, shape: tuple[int, int], codes: np.ndarray, params: Params
    ) -> QuantizedTensor:
        """IR record: codes, scale ``d`` per 32, zero-point ``-m`` (FLOAT) for Q4_1/Q5_1."""
        rows, cols = shape
        nb = cols // self.block
        return QuantizedTensor(
            shape=(rows, cols),
            codes=codes.reshape(rows, cols),
            scale=params["d"].reshape(rows, nb).astype(F32),
            block_size=(1, self.block),
            bits=self.bits,
            signed=not self.asym,
            zero_point=(-params["m"]).reshape(rows, nb).astype(F32) if self.asym else None,
            zero_point_domain=ZeroPointDomain.FLOAT,
            encoding=self.name,
        )


# ============================================================================ k-quants


@dataclass(frozen=True)
class GgmlKGrid:
    """Q2_K, Q3_K, Q4_K, Q5_K, Q6_K: super-blocks of 256 with quantized sub-block scales.

    :meth:`fit` needs the whole super-block (``block == 256``). The parameters are ``d``
    (and ``dmin``) per super-block ``[rows, nb]``, integer sub-block scales ``sc`` (and mins
    ``mn``) as stored in the block ``[rows, nb, 256 // sub]``, and ``fallback``
    ``[rows, nb, 256]``: the codes of C's search, which C keeps for sub-blocks whose
    effective scale ``d*sc`` is zero. :meth:`round` and :meth:`value` with ``cols`` give
    each column the scale and min of the sub-block it lies in.
    """

    name: str
    bits: int
    sub: int  # weights per sub-block scale
    asym: bool
    block: int = QK_K

    @property
    def _range(self) -> tuple[int, int]:
        if self.asym:
            return 0, (1 << self.bits) - 1
        return -(1 << (self.bits - 1)), (1 << (self.bits - 1)) - 1

    def row_stats(self, x: np.ndarray) -> Params:
        """None needed: ``quantize_row_q*_K_impl`` take ``sigma2`` from the super-block."""
        return {}

    def fit(
        self,
        x: np.ndarray,
        importance: np.ndarray | None = None,
        *,
        row_stats: Params | None = None,
    ) -> Params:
        """Run the C quantizer's search for every super-block of ``x`` ``[rows, nb, 256]``."""
        x = np.asarray(x, dtype=F32)
        rows, nb, block = x.shape
        if block != QK_K:
            raise ShapeError(f"{self.name}: fit needs super-blocks of {QK_K}, got {block}")
        imp = _importance(importance, x)
        xb = x.reshape(rows * nb, QK_K)
        fit_chunk = getattr(self, f"_fit_{self.name[:2].lower()}")

        def work(lo: int, hi: int) -> dict[str, np.ndarray]:
            with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
                return fit_chunk(xb[lo:hi], _rows_of(imp, nb, lo, hi))

        out = _map_chunks(work, rows * nb, QK_K)
        return {k: v.reshape(rows, nb, *v.shape[1:]) for k, v in out.items()}

    # -- per-type searches on a chunk of super-blocks xb [b, 256]; qw [b, 256] or None --

    def _fit_q2(self, xb: np.ndarray, qw: np.ndarray | None) -> dict[str, np.ndarray]:
        b = xb.shape[0]
        xe = _emajor(xb, 16)
        if qw is None:
            # quantize_row_q2_K_ref: make_qkx2_quants(16, 3, x, |x|, ..., -0.5, 0.1, 15, true)
            w = np.abs(xe)
            scale, the_min, isc, min0 = S.make_qkx2_quants(xe, w, 3, -0.5, 0.1, 15, True)
            scales, mins = scale.reshape(b, 16), the_min.reshape(b, 16)
            max_scale = np.maximum(scales.max(axis=1), F32(0.0))
            max_min = np.maximum(mins.max(axis=1), F32(0.0))
            # q4scale = 15: l = nearest_int(iscale*scale[j]) stored in a byte, mins OR'ed << 4
            pos_s = max_scale > 0
            ls = np.where(
                pos_s[:, None], S.nearest_int((F32(15) / max_scale)[:, None] * scales), 0
            )
            pos_m = max_min > 0
            lm = np.where(pos_m[:, None], S.nearest_int((F32(15) / max_min)[:, None] * mins), 0)
            d = np.where(pos_s, _fp16(max_scale / F32(15)), F32(0.0))
            dmin = np.where(pos_m, _fp16(max_min / F32(15)), F32(0.0))
        else:
            # quantize_row_q2_K_impl: sigma2 = sum x^2 / 256, w = qw*sqrt(sigma2 + x^2)
            xt = np.ascontiguousarray(xb.T)
            sigma2 = S.seq_sum(xt * xt) / F32(QK_K)
            w = _emajor(qw, 16) * np.sqrt(np.repeat(sigma2, 16)[None, :] + xe * xe)
            sw = S.seq_sum(w).reshape(b, 16)
            scale, the_min, isc, min0 = S.make_qkx2_quants(xe, w, 3, -0.9, 0.05, 36, False)
            swt = np.ascontiguousarray(sw.T)
            dm, ls = S.make_qp_quants(np.ascontiguousarray(scale.reshape(b, 16).T), 15, swt)
            mm, lm = S.make_qp_quants(np.ascontiguousarray(the_min.reshape(b, 16).T), 15, swt)
            ls, lm = ls.T, lm.T
            d, dmin = _fp16(dm), _fp16(mm)
        byte = (ls | (lm << 4)) & 0xFF  # y[i].scales[j], uint8
        d, sc = d.astype(F32), (byte & 15).astype(np.uint8)
        fallback = _fallback(
            d, sc, 16, lambda c: S.qkx_codes(xe[:, c], isc[c], min0[c], 3)
        )
        return {
            "d": d,
            "dmin": dmin.astype(F32),
            "sc": sc,
            "mn": (byte >> 4).astype(np.uint8),
            "fallback": fallback,
        }

    def _fit_q3(self, xb: np.ndarray, qw: np.ndarray | None) -> dict[str, np.ndarray]:
        b = xb.shape[0]
        xe = _emajor(xb, 16)
        if qw is None:
            # quantize_row_q3_K_ref: make_q3_quants(16, 4, x, L, true) per 16
            scale, codes = S.make_q3_quants(xe, 4)
            scales = scale.reshape(b, 16)
            st = np.ascontiguousarray(scales.T)
            _, max_scale = S.first_absmax(st)
            nz = max_scale != 0
            iscale = F32(-32) / np.where(nz, max_scale, F32(1.0))
            l8 = ((S.nearest_int(iscale[:, None] * scales) + 128) & 0xFF) - 128  # int8_t l
            s6 = np.where(nz[:, None], np.clip(l8, -32, 31) + 32, 0)
            d = np.where(nz, _fp16(F32(1.0) / iscale), F32(0.0))
        else:
            # quantize_row_q3_K_impl: sigma2 = 2*sum x^2/256, make_qx_quants(16, 4, .., weight)
            xt = np.ascontiguousarray(xb.T)
            sigma2 = F32(2) * S.seq_sum(xt * xt) / F32(QK_K)
            w = _emajor(qw, 16) * np.sqrt(np.repeat(sigma2, 16)[None, :] + xe * xe)
            sw = S.seq_sum(w).reshape(b, 16)
            scale, isc, zero = S.make_qx_quants(xe, 4, w)
            codes = np.clip(S.nearest_int(isc * xe), -4, 3)
            codes[:, zero] = -4
            st = np.ascontiguousarray(scale.reshape(b, 16).T)
            # d_block = make_qx_quants(16, 32, scales, Ls, 1, sw); Ls = l + 32
            d_block, isc2, zero2 = S.make_qx_quants(st, 32, np.ascontiguousarray(sw.T))
            ls = np.clip(S.nearest_int(isc2 * st), -32, 31) + 32
            ls[:, zero2] = 0
            s6 = ls.T
            d = _fp16(d_block)
        d, sc = d.astype(F32), (s6 - 32).astype(np.int8)
        return {"d": d, "sc": sc, "fallback": _fallback(d, sc, 16, lambda c: codes[:, c])}

    def _fit_q4(self, xb: np.ndarray, qw: np.ndarray | None) -> dict[str, np.ndarray]:
        return self._fit_q45(xb, qw, 15, (-1.0, 0.1, 20))

    def _fit_q5(self, xb: np.ndarray, qw: np.ndarray | None) -> dict[str, np.ndarray]:
        return self._fit_q45(xb, qw, 31, (-0.5, 0.1, 15))

    def _fit_q45(
        self, xb: np.ndarray, qw: np.ndarray | None, nmax: int, ref_search: tuple[float, float, int]
    ) -> dict[str, np.ndarray]:
        b = xb.shape[0]
        xe = _emajor(xb, 32)
        if qw is None:
            # quantize_row_q4_K_ref / q5_K_ref: weights av_x + |x|, av_x = sqrt(sum x^2 / 32)
            av_x = np.sqrt(S.seq_sum(xe * xe) / F32(32))
            w = av_x + np.abs(xe)
            rmin, rdelta, nstep = ref_search
            scale, the_min, isc, min0 = S.make_qkx2_quants(xe, w, nmax, rmin, rdelta, nstep, False)
            scales, mins = scale.reshape(b, 8), the_min.reshape(b, 8)
            max_scale = np.maximum(scales.max(axis=1), F32(0.0))
            max_min = np.maximum(mins.max(axis=1), F32(0.0))
            inv_scale = np.where(max_scale > 0, F32(63) / max_scale, F32(0.0))
            inv_min = np.where(max_min > 0, F32(63) / max_min, F32(0.0))
            # uint8_t ls = nearest_int(inv_scale*scales[j]); ls = MIN(63, ls)
            ls = np.minimum(S.nearest_int(inv_scale[:, None] * scales) & 0xFF, 63)
            lm = np.minimum(S.nearest_int(inv_min[:, None] * mins) & 0xFF, 63)
            d = _fp16(max_scale / F32(63))
            dmin = _fp16(max_min / F32(63))
        else:
            # quantize_row_q4_K_impl: sigma2 = 2*sum x^2/256, w = qw*sqrt(sigma2 + x^2),
            # make_qkx3_quants(32, nmax, .., -0.9, 0.05, 36), make_qp_quants(8, 63, .., sw)
            xt = np.ascontiguousarray(xb.T)
            sigma2 = F32(2) * S.seq_sum(xt * xt) / F32(QK_K)
            w = _emajor(qw, 32) * np.sqrt(np.repeat(sigma2, 8)[None, :] + xe * xe)
            sw = np.ascontiguousarray(S.seq_sum(w).reshape(b, 8).T)
            scale, the_min, isc, min0 = S.make_qkx2_quants(xe, w, nmax, -0.9, 0.05, 36, False)
            d_block, ls = S.make_qp_quants(np.ascontiguousarray(scale.reshape(b, 8).T), 63, sw)
            m_block, lm = S.make_qp_quants(np.ascontiguousarray(the_min.reshape(b, 8).T), 63, sw)
            ls, lm = np.minimum(ls.T, 63), np.minimum(lm.T, 63)
            d, dmin = _fp16(d_block), _fp16(m_block)
        d, sc = d.astype(F32), ls.astype(np.uint8)
        fallback = _fallback(
            d, sc, 32, lambda c: S.qkx_codes(xe[:, c], isc[c], min0[c], nmax)
        )
        return {
            "d": d,
            "dmin": dmin.astype(F32),
            "sc": sc,
            "mn": lm.astype(np.uint8),
            "fallback": fallback,
        }

    def _fit_q6(self, xb: np.ndarray, qw: np.ndarray | None) -> dict[str, np.ndarray]:
        b = xb.shape[0]
        xe = _emajor(xb, 16)
        # quantize_row_q6_K_ref / _impl: make_qx_quants(16, 32, x, L, 1, NULL or qw)
        scale, isc, zero = S.make_qx_quants(xe, 32, None if qw is None else _emajor(qw, 16))

        def codes(c: np.ndarray) -> np.ndarray:
            q = np.clip(S.nearest_int(isc[c] * xe[:, c]), -32, 31)
            q[:, zero[c]] = -32
            return q
        scales = scale.reshape(b, 16)
        amax, max_scale = S.first_absmax(np.ascontiguousarray(scales.T))
        empty = amax < S.GROUP_MAX_EPS  # C zeroes the whole block
        iscale = F32(-128) / np.where(empty, F32(1.0), max_scale)
        sc = np.minimum(S.nearest_int(iscale[:, None] * scales), 127)
        sc = ((sc + 128) & 0xFF) - 128  # stored as int8_t
        sc[empty] = 0
        d = np.where(empty, F32(0.0), _fp16(F32(1.0) / iscale)).astype(F32)
        sc = sc.astype(np.int8)
        fallback = _fallback(d, sc, 16, codes)
        fallback[empty] = -32
        return {"d": d, "sc": sc, "fallback": fallback}

    # -- shared by all k-quants --

    def _sub_params(self, params: Params) -> tuple[np.ndarray, np.ndarray | None]:
        """Effective per-sub-block scale ``d*sc`` and min ``dmin*m`` (float32, as C)."""
        ds = params["d"][..., None] * params["sc"].astype(F32)
        dm = None
        if self.asym:
            dm = params["dmin"][..., None] * params["mn"].astype(F32)
        return ds, dm

    def round(
        self, x: np.ndarray, params: Params, *, cols: slice | None = None
    ) -> np.ndarray:
        """Requantize with the final fp16 scales, ``nearest_int((x + dm)/d)`` as C does.

        Sub-blocks whose ``d*sc`` is zero keep the search codes (``params["fallback"]``)
        when ``x`` has the fitted leading shape; their value does not depend on the code.
        ``cols``: ``x`` holds only those columns of each super-block.
        """
        x = np.asarray(x, dtype=F32)
        lo, hi = self._range
        ds, dm = self._sub_params(params)
        idx = block_columns(self.block, cols, x.shape[-1])
        if idx is not None:
            return self._round_cols(x, params, ds, dm, idx)
        shape = x.shape
        xs = x.reshape(*shape[:-1], -1, self.sub)
        if S.COMPILED is not None and S.use_compiled and ds.shape == xs.shape[:-1]:
            # the same float32 operations and nearest_int, in one pass (_kq_search.c); it
            # reads one scale per sub-block, so parameters numpy would broadcast go below
            q = np.empty(xs.shape, dtype=np.int8)
            xc = np.ascontiguousarray(xs)
            dsc = np.ascontiguousarray(ds, dtype=F32)
            dmc = None if dm is None else np.ascontiguousarray(dm, dtype=F32)
            S.COMPILED.qp_round_k(S._ptr(xc), S._ptr(dsc), S._ptr(dmc), dsc.size, self.sub,
                                  lo, hi, S._ptr(q))
            if self.asym:
                q = q.view(np.uint8)
        else:
            with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
                num = xs + dm[..., None] if dm is not None else xs
                q = np.clip(S.nearest_int(num / ds[..., None]), lo, hi)
            q = q.astype(np.uint8 if self.asym else np.int8)
        zero = ds == 0
        if zero.any():
            fb = params.get("fallback")
            if fb is not None and fb.shape == shape:
                q[zero] = fb.reshape(q.shape)[zero]
            else:
                q[zero] = 0
        return q.reshape(shape)

    def _round_cols(
        self,
        x: np.ndarray,
        params: Params,
        ds: np.ndarray,
        dm: np.ndarray | None,
        idx: np.ndarray,
    ) -> np.ndarray:
        """:meth:`round` of the super-block columns ``idx``: each column takes the scale (and
        min) of its sub-block, then the same float32 operations as the whole-block path (the
        requantization loops of ``quantize_row_q*_K_ref`` / ``_impl``), so equal codes."""
        lo, hi = self._range
        sub = idx // self.sub
        dsc = ds[..., sub]
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            num = x + dm[..., sub] if dm is not None else x
            q = np.clip(S.nearest_int(num / dsc), lo, hi)
        q = q.astype(np.uint8 if self.asym else np.int8)
        zero = dsc == 0
        if zero.any():
            fb = params.get("fallback")
            if fb is not None and fb.shape[:-1] == x.shape[:-1]:
                q[zero] = fb[..., idx][zero]
            else:
                q[zero] = 0
        return q

    def value(
        self, codes: np.ndarray, params: Params, *, cols: slice | None = None
    ) -> np.ndarray:
        """``(d*sc)*q - dmin*m`` in float32, as ``dequantize_row_*``.

        ``cols`` as in :meth:`round`: each column takes its sub-block's scale and min.
        """
        ds, dm = self._sub_params(params)
        idx = block_columns(self.block, cols, codes.shape[-1])
        if idx is not None:
            sub = idx // self.sub
            v = codes.astype(F32) * ds[..., sub]
            return v - dm[..., sub] if dm is not None else v
        cs = codes.astype(F32).reshape(*codes.shape[:-1], -1, self.sub)
        v = cs * ds[..., None]
        if dm is not None:
            v = v - dm[..., None]
        return v.reshape(codes.shape)

    def assemble(
        self, shape: tuple[int, int], codes: np.ndarray, params: Params
    ) -> QuantizedTensor:
        """IR record with nested sub-block scale (and min) records (see gguf_blocks)."""
        rows, cols = shape
        nsb = cols // QK_K
        nsub = cols // self.sub
        per = QK_K // self.sub

        def nested(c: np.ndarray, d: np.ndarray, bits: int, signed: bool, tag: str):
            return QuantizedTensor(
                shape=(rows, nsub),
                codes=c.reshape(rows, nsub),
                scale=d.reshape(rows, nsb).astype(F32),
                block_size=(1, per),
                bits=bits,
                signed=signed,
                encoding=f"{self.name}.{tag}",
            )

        sc_bits, sc_signed = {"Q2_K": (4, False), "Q3_K": (6, True), "Q6_K": (8, True)}.get(
            self.name, (6, False)
        )
        scale = nested(params["sc"], params["d"], sc_bits, sc_signed, "scales")
        zp = None
        if self.asym:
            zp = nested(params["mn"], params["dmin"], sc_bits, False, "mins")
        return QuantizedTensor(
            shape=(rows, cols),
            codes=codes.reshape(rows, cols),
            scale=scale,
            block_size=(1, self.sub),
            bits=self.bits,
            signed=not self.asym,
            zero_point=zp,
            zero_point_domain=ZeroPointDomain.FLOAT,
            encoding=self.name,
        )


# ============================================================================ IQ4_NL


@dataclass(frozen=True)
class IQ4NLGrid:
    """IQ4_NL: 32 weights per fp16 scale, codes index the non-linear ``kvalues_iq4nl``.

    Ports ``quantize_iq4_nl`` (what ``ggml_quantize_chunk`` calls, with ``ntry = 7`` with or
    without importance): ``quantize_row_iq4_nl_impl(32, 32, ...)``.
    """

    name: str = "IQ4_NL"
    block: int = 32
    bits: int = 4

    def row_stats(self, x: np.ndarray) -> Params:
        """None needed: ``quantize_row_iq4_nl_impl`` takes ``sigma2`` from the block of 32."""
        return {}

    def fit(
        self,
        x: np.ndarray,
        importance: np.ndarray | None = None,
        *,
        row_stats: Params | None = None,
    ) -> Params:
        """Scale search of ``quantize_row_iq4_nl_impl`` per block of 32."""
        x = np.asarray(x, dtype=F32)
        rows, nb, block = x.shape
        imp = _importance(importance, x)
        xb = x.reshape(rows * nb, block)
        vals = KVALUES_IQ4NL

        def work(lo: int, hi: int) -> dict[str, np.ndarray]:
            xe = _emajor(xb[lo:hi], block)
            with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
                # sigma2 = sum x^2 * (2.f/32); weight = qw*sqrt(sigma2 + x^2) or x^2
                sigma2 = S.seq_sum(xe * xe) * F32(2.0 / 32)
                if imp is None:
                    w = xe * xe
                else:
                    w = _imp_emajor(imp, nb, lo, hi) * np.sqrt(sigma2 + xe * xe)
                amax, mx = S.first_absmax(xe)
                zero = amax < S.GROUP_MAX_EPS
                mx = np.where(zero, F32(1.0), mx)
                d = -mx / vals[0]
                q = vals[S.best_index_int8(vals, (F32(1.0) / d) * xe)]
                wq = w * q
                sumqx = S.seq_sum(wq * xe)
                sumq2 = S.seq_sum(wq * q)
                d = np.where(sumq2 > 0, sumqx / sumq2, F32(0.0))
                best = d * sumqx
                for itry in range(-7, 8):
                    inv = F32(itry + int(vals[0])) / mx
                    q = vals[S.best_index_int8(vals, inv * xe)]
                    wq = w * q
                    sumqx = S.seq_sum(wq * xe)
                    sumq2 = S.seq_sum(wq * q)
                    better = (sumq2 > 0) & (sumqx * sumqx > best * sumq2)
                    nd = sumqx / sumq2
                    d = np.where(better, nd, d)
                    best = np.where(better, nd * sumqx, best)
                d = np.where(zero, F32(0.0), d).astype(F32)
                inv = np.where(d != 0, F32(1.0) / d, F32(0.0)).astype(F32)
            return {"d": _fp16(d), "id": inv}

        out = _map_chunks(work, rows * nb, block)
        return {k: v.reshape(rows, nb) for k, v in out.items()}

    def round(
        self, x: np.ndarray, params: Params, *, cols: slice | None = None
    ) -> np.ndarray:
        """``best_index_int8(16, kvalues, id*x)`` with the unrounded inverse scale.

        One scale per block and an elementwise rule: ``cols`` only needs checking.
        """
        block_columns(self.block, cols, np.shape(x)[-1])
        v = np.asarray(x, dtype=F32) * params["id"][..., None]
        return S.best_index_int8(KVALUES_IQ4NL, v).astype(np.uint8)

    def value(
        self, codes: np.ndarray, params: Params, *, cols: slice | None = None
    ) -> np.ndarray:
        """``d * kvalues[code]`` (``cols`` as in :meth:`round`)."""
        block_columns(self.block, cols, codes.shape[-1])
        return KVALUES_IQ4NL[codes] * params["d"][..., None]

    def assemble(
        self, shape: tuple[int, int], codes: np.ndarray, params: Params
    ) -> QuantizedTensor:
        """IR record: 4-bit indices, codebook ``kvalues_iq4nl``, scale ``d`` per 32."""
        rows, cols = shape
        return QuantizedTensor(
            shape=(rows, cols),
            codes=codes.reshape(rows, cols),
            scale=params["d"].reshape(rows, cols // self.block).astype(F32),
            block_size=(1, self.block),
            bits=4,
            signed=False,
            encoding=self.name,
            codebook=KVALUES_IQ4NL.copy(),
        )


# ============================================================================ registry

#: The supported ggml weight types, by ggml type name.
GGML_GRIDS: dict[str, Grid] = {
    "Q8_0": GgmlLegacyGrid("Q8_0", 8, False),
    "Q4_0": GgmlLegacyGrid("Q4_0", 4, False),
    "Q4_1": GgmlLegacyGrid("Q4_1", 4, True),
    "Q5_0": GgmlLegacyGrid("Q5_0", 5, False),
    "Q5_1": GgmlLegacyGrid("Q5_1", 5, True),
    "Q2_K": GgmlKGrid("Q2_K", 2, 16, True),
    "Q3_K": GgmlKGrid("Q3_K", 3, 16, False),
    "Q4_K": GgmlKGrid("Q4_K", 4, 32, True),
    "Q5_K": GgmlKGrid("Q5_K", 5, 32, True),
    "Q6_K": GgmlKGrid("Q6_K", 6, 16, False),
    "IQ4_NL": IQ4NLGrid(),
}


def quantize_ggml(
    w: np.ndarray,
    type_name: str,
    importance: np.ndarray | None = None,
    *,
    name: str = "tensor",
) -> QuantizedTensor:
    """Quantize a 2-D float weight ``[out, in]`` to a ggml type, as llama.cpp would.

    Args:
        w: the weight (any float dtype; used as float32).
        type_name: one of :data:`GGML_GRIDS` (``"Q4_K"``, ``"Q8_0"``, ...).
        importance: optional per-input-column importance (length ``in``), llama.cpp's
            imatrix values for this tensor.
        name: tensor name for error messages.

    Returns:
        The IR record; ``quantport.formats.gguf_blocks.pack`` gives llama.cpp's bytes.

    Raises:
        UnsupportedQuantError: unknown ``type_name``.
        ShapeError: ``w`` not 2-D or its width is not a multiple of the type's block.
    """
    grid = GGML_GRIDS.get(type_name)
    if grid is None:
        raise UnsupportedQuantError(
            f"{name}: unknown ggml type {type_name!r}; supported: {', '.join(GGML_GRIDS)}"
        )
    return quantize_rtn(np.asarray(w), grid, importance, name=name)
