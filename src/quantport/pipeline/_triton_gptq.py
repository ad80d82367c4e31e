"""GPTQ's integer-grid sub-batch as one Triton kernel (CUDA): the body of
:func:`quantport.pipeline.device._int_sub_batch` for a tile of rows per program.

Every step of a sub-batch is elementwise over the weight's rows (a column's rounding, its
error, the rank-1 update of the later columns of the sub-batch), so one program keeps a
``[n, BLOCK_R]`` tile of the columns in registers and walks the ``n`` columns in order. The
arithmetic is the eager function's: ``round(x / s) (+ z)``, clamped, ``(q - z) * s``, ``e = (x -
v) / d``, ``w_k -= u_jk e`` -- rounding half to even by the float32 magic number (exact for
``|x / s| < 2**22``; larger values are clamped first, which gives the same end code), IEEE
division (``div_rn``). The compiler may fuse a multiply and an add into one FMA, so a value
can differ from the eager function's in its last bit and, rarely, a code by one step
(tests/pipeline/test_device.py measures the fraction on the GPU).
"""

from __future__ import annotations

from typing import Any

import triton
import triton.language as tl

__all__ = ["int_sub_batch"]

# 1.5 * 2**23: adding it rounds a float32 below 2**22 in magnitude to an integer, half to even.
# Globals a @triton.jit function reads must be tl.constexpr objects (Triton 3.x refuses plain
# floats when it compiles; its CPU interpreter does not check).
_MAGIC = tl.constexpr(12582912.0)
_BIG = tl.constexpr(4194304.0)


@triton.jit
def _kernel(W, U, S, Z, Q, V, E, rows, s_step, z_step, qmin, qmax,
            N: tl.constexpr, BLOCK_R: tl.constexpr, HAS_Z: tl.constexpr):
    pid = tl.program_id(0)
    r = pid * BLOCK_R + tl.arange(0, BLOCK_R)
    rm = r < rows
    c = tl.arange(0, N)
    w = tl.load(W + c[:, None] * rows + r[None, :], mask=rm[None, :], other=0.0)
    for j in tl.range(0, N):
        x = tl.sum(tl.where(c[:, None] == j, w, 0.0), axis=0)  # column j of the tile
        s = tl.load(S + j * s_step + r, mask=rm, other=1.0)
        y = tl.math.div_rn(x.to(tl.float32), s)
        y = tl.minimum(tl.maximum(y, -_BIG), _BIG)
        q = (y + _MAGIC) - _MAGIC
        if HAS_Z:
            z = tl.load(Z + j * z_step + r, mask=rm, other=0.0)
            q = q + z
        q = tl.minimum(tl.maximum(q, qmin), qmax)
        cf = q
        if HAS_Z:
            cf = cf - z
        v = cf * s
        d = tl.load(U + j * N + j)
        # in the weights' precision (float64: div.rn.f64 is IEEE; float32: div_rn)
        if x.dtype == tl.float64:
            e = (x - v.to(tl.float64)) / d
        else:
            e = tl.math.div_rn(x - v, d)
        urow = tl.load(U + j * N + c, mask=c > j, other=0.0)
        w = w - urow[:, None] * e[None, :]
        tl.store(Q + j * rows + r, q.to(tl.int8), mask=rm)
        tl.store(V + j * rows + r, v, mask=rm)
        tl.store(E + j * rows + r, e, mask=rm)


def int_sub_batch(w: Any, u: Any, s: Any, z: Any, qmin: float, qmax: float,
                  out: tuple[Any, Any, Any]) -> tuple[Any, Any, Any]:
    """Launch the kernel on ``w`` ``[n, rows]`` (float64 or float32, contiguous rows), ``u``
    ``[n, n]`` (the same), ``s``/``z`` ``[n or 1, rows]`` (float32), writing codes (int8),
    values (float32) and errors (``w``'s dtype) into ``out`` (``[n, rows]`` each, contiguous);
    returns ``out``."""
    n, rows = w.shape
    q, v, e = out
    w, u = w.contiguous(), u.contiguous()
    s = s.contiguous()
    s_step = rows if s.shape[0] > 1 else 0
    if z is not None:
        z = z.contiguous()
    z_step = (rows if z.shape[0] > 1 else 0) if z is not None else 0
    block_r = 64
    grid = (triton.cdiv(rows, block_r),)
    _kernel[grid](w, u, s, z if z is not None else s, q, v, e, rows, s_step, z_step,
                  float(qmin), float(qmax), N=n, BLOCK_R=block_r, HAS_Z=z is not None)
    return out
