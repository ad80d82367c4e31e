"""Vectorized ports of llama.cpp's per-block scale searches (``ggml-quants.c``).

Every function here works on *element-major* arrays: shape ``[n, B]`` where ``n`` is the
number of values in one block (16 or 32 for sub-blocks, 8 or 16 for super-block scale
vectors) and ``B`` is the number of independent blocks. Two reasons:

* ``np.add.reduce(a, axis=0)`` over a C-contiguous ``[n, B]`` array adds the rows one after
  the other (``((a0 + a1) + a2) + ...``), exactly the float32 order of the C loops
  ``for (i = 0; i < n; ++i) sum += ...``. Reducing along the last axis would use numpy's
  pairwise summation instead and change the last bits, which flips near-tie decisions.
* each elementwise step touches one contiguous vector of length ``B``.

All arithmetic is float32, operation by operation in the C order (``w*x*l`` is ``(w*x)*l``,
``a/b`` stays a division where C divides), so results are bit-identical to the C code as it
is compiled in ``libggml-base`` (x86-64 baseline: SSE2, no FMA contraction).

Loops below run over a small fixed number of search candidates or coordinate-descent steps,
never over blocks.
"""

from __future__ import annotations

import ctypes
import logging
from pathlib import Path

import numpy as np

__all__ = [
    "GROUP_MAX_EPS",
    "best_index_int8",
    "clamped_codes",
    "first_absmax",
    "make_q3_quants",
    "make_qkx2_quants",
    "make_qp_quants",
    "make_qx_quants",
    "nearest_int",
    "qkx_codes",
    "seq_sum",
]

F32 = np.float32
#: ``GROUP_MAX_EPS`` of ggml-quants.c: groups whose largest magnitude is below it are "all zero".
GROUP_MAX_EPS = F32(1e-15)
_MAGIC = F32(12582912.0)

log = logging.getLogger(__name__)


def _load_compiled() -> ctypes.CDLL | None:
    """The compiled searches (``_kq_search.c``, built by setup.py), or None without them.

    They compute what :func:`make_qkx2_quants` and :func:`make_qx_quants` compute below, bit
    for bit, several times faster: one pass over a cache-sized tile of blocks instead of one
    numpy call per operation. Without a C compiler at install time the numpy code runs alone.
    """
    here = Path(__file__).parent
    for path in sorted(here.glob("_kq_search*.so")):
        try:
            lib = ctypes.CDLL(str(path))
        except OSError as e:  # a build for another platform: the numpy path still works
            log.debug("compiled k-quant searches at %s not loadable: %s", path, e)
            continue
        f, i, i64 = ctypes.c_void_p, ctypes.c_int, ctypes.c_int64
        lib.qp_make_qkx2.argtypes = [f, f, i, i64, i, ctypes.c_float, ctypes.c_float, i, i,
                                     f, f, f, f, f, f]
        lib.qp_make_qkx2.restype = i
        lib.qp_make_qx.argtypes = [f, f, i, i64, i, f, f, f, f]
        lib.qp_make_qx.restype = i
        lib.qp_round_k.argtypes = [f, f, f, i64, i, i, i, f]
        lib.qp_round_k.restype = None
        return lib
    return None


#: the compiled searches, or None (then only the numpy code below runs)
COMPILED = _load_compiled()
#: set False to run the numpy code even where the compiled one is available (tests compare them)
use_compiled = True


def _ptr(a: np.ndarray | None) -> int | None:
    return None if a is None else a.ctypes.data


def nearest_int(v: np.ndarray) -> np.ndarray:
    """``nearest_int`` of ggml-quants.c, bit for bit, as int32.

    C adds the magic number ``12582912.f`` (1.5 * 2**23) in float32 and reads the low 23
    mantissa bits: round half to even for ``|v| <= 4194303``, and the same wrapped garbage as
    C outside that range (the C ``assert`` is compiled out in release builds).
    """
    t = np.add(np.asarray(v, dtype=F32), _MAGIC, dtype=F32)
    i = t.view(np.int32)
    return (i & np.int32(0x007FFFFF)) - np.int32(0x00400000)


def seq_sum(a: np.ndarray, *, from_zero: bool = True) -> np.ndarray:
    """Sum ``[n, B]`` over axis 0 in C loop order (float32, sequential).

    ``from_zero`` reproduces ``float s = 0; for (...) s += a[i];`` (so ``-0.0`` terms give
    ``+0.0``); ``from_zero=False`` reproduces sums that C starts from the first term.
    """
    # ``initial=-0.0`` makes the first step ``-0.0 + a[0] == a[0]`` exactly (C starting from
    # the first term); ``+0.0`` is C's ``s = 0``.
    init = F32(0.0) if from_zero else F32(-0.0)
    if a.ndim == 2 and a.shape[1] < 2:
        # numpy would drop the length-1 axis and sum pairwise; keep C's order explicitly.
        s = np.full(a.shape[1:], init, dtype=F32)
        for row in a:
            s = s + row
        return s
    return np.add.reduce(np.ascontiguousarray(a), axis=0, initial=init, dtype=F32)


def first_absmax(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``amax = max |x|`` and ``max`` = the signed value of its first occurrence, per column.

    Matches ``float amax = 0, max = 0; if (ax > amax) { amax = ax; max = x[i]; }``: an
    all-zero column gives ``max = +0.0``.
    """
    # max and min reductions run at memory speed where argmax over axis 0 does not; only a
    # column holding both +v and -v at the largest magnitude needs C's "first one wins"
    hi = np.maximum.reduce(x, axis=0)
    lo = np.minimum.reduce(x, axis=0)
    neg = -lo
    amax = np.abs(np.maximum(hi, neg))  # abs: +0.0 for an all-zero column, as C
    mx = np.where(neg > hi, lo, hi)
    tie = np.flatnonzero((neg == hi) & (hi > 0))
    if tie.size:
        sub = x[:, tie]
        first = np.argmax(np.abs(sub) == amax[tie], axis=0)
        mx[tie] = sub[first, np.arange(tie.size)]
    mx = np.where(amax > 0, mx, F32(0.0)).astype(F32, copy=False)
    return amax.astype(F32, copy=False), mx


def _rint_clip(v: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """``MAX(lo, MIN(hi, nearest_int(v)))`` as float32, for ``|v|`` within nearest_int's range."""
    out = np.rint(v)
    return np.clip(out, F32(lo), F32(hi), out=out)


def _pad_cols(*arrays: np.ndarray | None) -> tuple[np.ndarray | None, ...]:
    """Give ``[n, 1]`` arrays a second (zero) column: numpy would sum a single column pairwise."""
    return tuple(
        None if a is None else np.concatenate([a, np.zeros_like(a)], axis=1) for a in arrays
    )


def make_qx_quants(
    x: np.ndarray, nmax: int, qw: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``make_qx_quants(n, nmax, x, L, rmse_type=1, qw)``: symmetric scale search.

    Args:
        x: ``[n, B]`` float32 values.
        nmax: codes lie in ``[-nmax, nmax-1]``.
        qw: ``[n, B]`` weights, or None for C's ``rmse_type == 1`` weights ``x*x``.

    Returns:
        ``(scale, iscale, zero)``: the fitted scale (C's return value), the inverse scale of
        the winning candidate (the codes are ``clamp(nearest_int(iscale*x), -nmax, nmax-1)``)
        and the mask of all-zero groups (C stores ``L = 0``, i.e. code ``-nmax``, there).
    """
    if x.shape[1] == 1:
        xp, qp = _pad_cols(x, qw)
        return tuple(r[:1] for r in make_qx_quants(xp, nmax, qp))  # type: ignore[return-value]
    x = np.ascontiguousarray(x, dtype=F32)
    amax, mx = first_absmax(x)
    zero = amax < GROUP_MAX_EPS
    mx = np.where(zero, F32(1.0), mx).astype(F32, copy=False)
    if COMPILED is not None and use_compiled and x.shape[0] >= 2:
        qc = None if qw is None else np.ascontiguousarray(qw, dtype=F32)
        scale, best_iscale = np.empty_like(mx), np.empty_like(mx)
        zc = np.ascontiguousarray(zero, dtype=np.uint8)
        if COMPILED.qp_make_qx(_ptr(x), _ptr(qc), x.shape[0], x.shape[1], nmax, _ptr(mx),
                               _ptr(zc), _ptr(scale), _ptr(best_iscale)) == 0:
            return scale, best_iscale, zero
    w = x * x if qw is None else np.ascontiguousarray(qw, dtype=F32)
    wx = w * x
    lo, hi = F32(-nmax), F32(nmax - 1)
    ell = np.empty_like(x)
    tmp = np.empty_like(x)
    zf = F32(0.0)

    def sums(isc: np.ndarray, clip: bool = True) -> tuple[np.ndarray, np.ndarray]:
        np.multiply(x, isc, out=ell)
        np.rint(ell, out=ell)  # nearest_int (half to even), exact for |v| < 2**22
        if clip:
            np.clip(ell, lo, hi, out=ell)
        np.multiply(wx, ell, out=tmp)  # (w*x)*l
        sumlx = np.add.reduce(tmp, axis=0, initial=zf)
        np.multiply(w, ell, out=tmp)  # (w*l)*l
        np.multiply(tmp, ell, out=tmp)
        return sumlx, np.add.reduce(tmp, axis=0, initial=zf)

    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        # C: float iscale = -nmax / max;  (int negated, then converted)
        best_iscale = F32(-nmax) / mx
        sumlx, suml2 = sums(best_iscale)
        scale = np.where(suml2 != 0, sumlx / suml2, F32(0.0)).astype(F32, copy=False)
        best = scale * sumlx
        for step in range(-9, 10):
            if step == 0:
                continue
            # C: iscale = -(nmax + 0.1f*is) / max;
            isc = F32(-(F32(nmax) + F32(0.1) * F32(step))) / mx
            # |x| <= |max| bounds |iscale*x| by nmax + 0.1*step (to a few ulp): from step -6
            # down, below nmax - 0.5, so the codes are inside [-nmax, nmax-1] unclamped
            sumlx, suml2 = sums(isc, clip=step > -6)
            better = sumlx * sumlx
            better = better > best * suml2
            better &= suml2 > 0
            if better.any():
                new_scale = sumlx / suml2
                np.putmask(scale, better, new_scale)
                np.putmask(best, better, new_scale * sumlx)
                np.putmask(best_iscale, better, isc)
    scale[zero] = F32(0.0)
    best_iscale[zero] = F32(0.0)
    return scale, best_iscale, zero


def make_q3_quants(x: np.ndarray, nmax: int) -> tuple[np.ndarray, np.ndarray]:
    """``make_q3_quants(n, nmax, x, L, do_rmse=true)``: symmetric scale + coordinate descent.

    Returns ``(scale, codes)`` with codes (int32, ``[n, B]``) in ``[-nmax, nmax-1]``; all-zero
    groups get C's ``L = 0`` stored, which is code ``-nmax``.
    """
    n = x.shape[0]
    amax, mx = first_absmax(x)
    zero = amax < GROUP_MAX_EPS
    mx = np.where(zero, F32(1.0), mx).astype(F32, copy=False)
    iscale = F32(-nmax) / mx
    ell = _rint_clip(iscale * x, -nmax, nmax - 1)
    w = x * x
    wx = w * x
    sumlx = seq_sum(wx * ell)
    suml2 = seq_sum(w * ell * ell)
    # Five passes of coordinate descent, one element at a time in C order. A block that
    # changed nothing in a pass (C breaks out) would change nothing in later passes either,
    # so running all five passes for every block gives the same result.
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        for _ in range(5):
            for i in range(n):
                wi, wxi, xi, li = w[i], wx[i], x[i], ell[i]
                slx = sumlx - wxi * li
                sl2 = suml2 - wi * li * li
                new_l = nearest_int(xi * sl2 / slx)
                np.clip(new_l, -nmax, nmax - 1, out=new_l)
                nl = new_l.astype(F32)
                cand = (slx > 0) & (nl != li)
                slx2 = slx + wxi * nl
                sl22 = sl2 + wi * nl * nl
                ok = cand & (sl22 > 0) & (slx2 * slx2 * suml2 > sumlx * sumlx * sl22)
                ell[i] = np.where(ok, nl, li)
                sumlx = np.where(ok, slx2, sumlx)
                suml2 = np.where(ok, sl22, suml2)
        scale = np.where(suml2 > 0, sumlx / suml2, F32(0.0)).astype(F32, copy=False)
    codes = ell.astype(np.int32)
    codes[:, zero] = -nmax
    scale = np.where(zero, F32(0.0), scale).astype(F32, copy=False)
    return scale, codes


def clamped_codes(
    out: np.ndarray, v: np.ndarray, iscale: np.ndarray, lo: float, hi: float
) -> np.ndarray:
    """``out = MAX(lo, MIN(hi, nearest_int(iscale*v)))`` as float32, in place; returns ``out``.

    The searches scale by the block's extreme value, so with a finite ``iscale`` the product
    stays far below 2**22, where ``rint`` is ``nearest_int`` (and numpy's float clip is
    vectorized where its integer clip with scalars is not). The exception is a block whose
    range is subnormal: ``iscale`` overflows to inf, and C's ``nearest_int`` turns inf and NaN
    into garbage that the clamp then bounds; those calls take the bit-exact integer path.
    """
    np.multiply(v, iscale, out=out)
    if np.isfinite(iscale).all():
        np.rint(out, out=out)
        return np.clip(out, F32(lo), F32(hi), out=out)
    with np.errstate(invalid="ignore"):
        exact = np.clip(nearest_int(out), int(lo), int(hi)).astype(F32)
    np.copyto(out, exact)
    return out


def make_qkx2_quants(
    x: np.ndarray,
    w: np.ndarray,
    nmax: int,
    rmin: float,
    rdelta: float,
    nstep: int,
    use_mad: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``make_qkx2_quants`` / ``make_qkx3_quants`` (with weights): asymmetric ``x ~ s*L + min``.

    Args:
        x: ``[n, B]`` float32 values; w: ``[n, B]`` float32 weights.
        nmax: codes lie in ``[0, nmax]``.
        rmin, rdelta, nstep: candidate inverse scales ``(rmin + rdelta*is + nmax)/(max-min)``
            for ``is = 0..nstep``.
        use_mad: weighted absolute error instead of squared error.

    Returns:
        ``(scale, the_min, iscale, min0)``: C's return value and ``*the_min`` (``-min``),
        plus what reproduces C's ``L``: ``clamp(nearest_int(iscale*(x - min0)), 0, nmax)``
        with the winning candidate's inverse scale and the min in force when it ran
        (``iscale = 0`` for flat blocks, where C stores ``L = 0``).

    ``make_qkx3_quants`` with non-NULL weights is the same computation (its ``max <= min``
    test equals ``max == min`` because ``min <= max`` always).
    """
    if x.shape[1] == 1:
        xp, wp = _pad_cols(x, w)
        res = make_qkx2_quants(xp, wp, nmax, rmin, rdelta, nstep, use_mad)  # type: ignore[arg-type]
        return tuple(r[:1] for r in res)  # type: ignore[return-value]
    x = np.ascontiguousarray(x, dtype=F32)
    w = np.ascontiguousarray(w, dtype=F32)
    zf, fmax = F32(0.0), F32(nmax)
    xmin = np.minimum.reduce(x, axis=0)
    xmax = np.maximum.reduce(x, axis=0)
    xmin = np.where(xmin > 0, F32(0.0), xmin).astype(F32, copy=False)  # if (min > 0) min = 0;
    if COMPILED is not None and use_compiled and 2 <= x.shape[0] <= 32:
        # the min and max come from numpy's reductions above either way: their signed zeros
        # reach the returned ``-min``
        xmin, xmax = np.ascontiguousarray(xmin), np.ascontiguousarray(xmax)
        out = [np.empty_like(xmin) for _ in range(4)]
        if COMPILED.qp_make_qkx2(_ptr(x), _ptr(w), x.shape[0], x.shape[1], nmax, rmin, rdelta,
                                 nstep, int(use_mad), _ptr(xmin), _ptr(xmax),
                                 *(_ptr(o) for o in out)) == 0:
            return out[0], out[1], out[2], out[3]
    flat = xmax == xmin
    ell = np.empty_like(x)
    tmp = np.empty_like(x)
    tmp2 = np.empty_like(x)
    # Per-block sums, one row each, laid out so that the two numerators below are a single
    # operation on pairs of rows: 0 sum_w, 1 sum_l2, 2 sum_xl, 3 sum_x, 4 sum_l, 5 sum_xl.
    sm = np.empty((6, x.shape[1]), dtype=F32)
    sm[0] = seq_sum(w, from_zero=False)  # C starts from weights[0]
    np.multiply(w, x, out=tmp)
    sm[3] = seq_sum(tmp, from_zero=False)  # C starts from sum_w * x[0]

    def error(s: np.ndarray, m: np.ndarray) -> np.ndarray:
        # sum of w * (s*l + m - x)^2 (or |.|), in C order
        np.multiply(ell, s, out=tmp)
        np.add(tmp, m, out=tmp)
        np.subtract(tmp, x, out=tmp)
        if use_mad:
            np.abs(tmp, out=tmp)
        else:
            np.multiply(tmp, tmp, out=tmp)
        np.multiply(tmp, w, out=tmp)
        return np.add.reduce(tmp, axis=0, initial=zf)

    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        # C updates ``min`` when a candidate wins, and later candidates use the *current* min
        # both in ``iscale = (...)/(max - min)`` and in ``nearest_int(iscale*(x[i] - min))``.
        rng = np.where(flat, F32(1.0), xmax - xmin).astype(F32, copy=False)
        best_iscale = fmax / rng
        scale = F32(1.0) / best_iscale
        xm = x - xmin  # C's x[i] - min with the current min
        clamped_codes(ell, xm, best_iscale, 0, nmax)
        best_error = error(scale, xmin)
        best_error[flat] = -np.inf  # C returns before the search: no candidate may win
        cur_min = xmin.copy()
        best_off = xmin.copy()  # the min that was subtracted when the winning L was computed
        rng = xmax - cur_min
        num = np.empty((2, x.shape[1]), dtype=F32)
        for step in range(nstep + 1):
            c = F32(F32(rmin) + F32(rdelta) * F32(step)) + fmax
            isc = c / rng
            clamped_codes(ell, xm, isc, 0, nmax)  # MAX(0, MIN(nmax, nearest_int(iscale*(x - min))))
            np.multiply(w, ell, out=tmp)  # w*l
            np.add.reduce(tmp, axis=0, initial=zf, out=sm[4])  # sum_l
            np.multiply(tmp, x, out=tmp2)  # w*l*x
            np.add.reduce(tmp2, axis=0, initial=zf, out=sm[2])  # sum_xl
            tmp *= ell  # w*l*l
            np.add.reduce(tmp, axis=0, initial=zf, out=sm[1])  # sum_l2
            sm[5] = sm[2]
            # D = sum_w*sum_l2 - sum_l*sum_l
            dd = sm[0] * sm[1]
            dd -= sm[4] * sm[4]
            # this_scale = (sum_w*sum_xl - sum_x*sum_l)/D; this_min = (sum_l2*sum_x - sum_l*sum_xl)/D
            np.multiply(sm[0:2], sm[2:4], out=num)
            num -= sm[3:5] * sm[4:6]
            num /= dd
            this_scale, this_min = num[0], num[1]
            pos = this_min > 0
            if pos.any():  # this_min = 0; this_scale = sum_xl / sum_l2
                np.putmask(this_scale, pos, sm[2] / sm[1])
                this_min[pos] = zf
            cur = error(this_scale, this_min)
            better = cur < best_error
            better &= dd > 0
            if better.any():
                np.putmask(best_error, better, cur)
                np.putmask(scale, better, this_scale)
                np.putmask(best_iscale, better, isc)
                np.putmask(best_off, better, cur_min)
                np.putmask(cur_min, better, this_min)
                np.subtract(xmax, cur_min, out=rng)
                np.subtract(x, cur_min, out=xm)
    scale[flat] = zf
    best_iscale[flat] = zf
    return scale, -cur_min, best_iscale, best_off


def qkx_codes(x: np.ndarray, iscale: np.ndarray, min0: np.ndarray, nmax: int) -> np.ndarray:
    """The ``L`` that :func:`make_qkx2_quants` leaves behind (int32, ``[n, B]``)."""
    xm = np.asarray(x - min0, dtype=F32)
    return clamped_codes(np.empty_like(xm), xm, np.asarray(iscale, dtype=F32), 0, nmax).astype(
        np.int32
    )


def make_qp_quants(x: np.ndarray, nmax: int, qw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``make_qp_quants(n, nmax, x, L, quant_weights)``: scale for non-negative values.

    Returns ``(scale, L)`` with ``L`` as C's ``uint8_t`` array holds it (int32, ``[n, B]``).
    """
    n = x.shape[0]
    mx = np.maximum(np.maximum.reduce(x, axis=0), F32(0.0))
    zero = mx < GROUP_MAX_EPS
    mx = np.where(zero, F32(1.0), mx).astype(F32, copy=False)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        iscale = F32(nmax) / mx
        ell = nearest_int(iscale * x).astype(F32)
        scale = F32(1.0) / iscale
        diff = x - scale * ell
        best_mse = seq_sum(qw * diff * diff)
        for step in range(-4, 5):
            if step == 0:
                continue
            isc = (F32(0.1) * F32(step) + F32(nmax)) / mx
            sc = F32(1.0) / isc
            ell = np.minimum(nearest_int(isc * x), nmax).astype(F32)
            diff = x - sc * ell
            mse = seq_sum(qw * diff * diff)
            better = mse < best_mse
            best_mse = np.where(better, mse, best_mse)
            iscale = np.where(better, isc, iscale)
        # uint8_t L[i] = MIN(nmax, l): the store wraps negative values
        L = (np.minimum(nearest_int(iscale * x), nmax) & 0xFF).astype(np.int32)
        Lf = L.astype(F32)
        wx = qw * x
        sumlx = seq_sum(wx * Lf)
        suml2 = seq_sum(qw * Lf * Lf)
        for _ in range(5):
            for i in range(n):
                wi, wxi, li = qw[i], wx[i], Lf[i]
                slx = sumlx - wxi * li
                sl2 = suml2 - wi * li * li
                new_l = np.minimum(nearest_int(x[i] * sl2 / slx), nmax)
                nl = new_l.astype(F32)
                cand = (slx > 0) & (sl2 > 0) & (new_l != L[i])
                slx2 = slx + wxi * nl
                sl22 = sl2 + wi * nl * nl
                ok = cand & (slx2 * slx2 * suml2 > sumlx * sumlx * sl22)
                L[i] = np.where(ok, new_l & 0xFF, L[i])
                Lf[i] = L[i].astype(F32)
                sumlx = np.where(ok, slx2, sumlx)
                suml2 = np.where(ok, sl22, suml2)
        scale = np.where(suml2 > 0, sumlx / suml2, F32(0.0)).astype(F32, copy=False)
    L[:, zero] = 0
    scale = np.where(zero, F32(0.0), scale).astype(F32, copy=False)
    return scale, L


def best_index_int8(values: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``best_index_int8(16, values, x)``: index of the nearest table value (ties as C).

    ``values`` is the sorted int8 table as float32; returns int32 indices of ``x``'s shape.
    """
    n = values.shape[0]
    mu = np.searchsorted(values, x, side="right")
    np.clip(mu, 1, n - 1, out=mu)
    lo_v = values[mu - 1]
    hi_v = values[mu]
    idx = np.where(x - lo_v < hi_v - x, mu - 1, mu)
    idx = np.where(x <= values[0], 0, idx)
    idx = np.where(x >= values[-1], n - 1, idx)
    return idx.astype(np.int32)
