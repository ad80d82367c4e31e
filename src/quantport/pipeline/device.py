"""Where calibration runs: ``--device cpu|cuda|auto``, and GPTQ's array operations on torch.

The calibration engine (:mod:`quantport.pipeline.layerwise`), GPTQ and AWQ run the same code
on the CPU or on a CUDA GPU: the layers are moved onto the device one at a time, the Hessians
are accumulated there in float32, the calibration activations stay there while they fit
(:func:`activations_fit`) and are kept on the host otherwise, and GPTQ's column loop runs on
torch tensors of the device through :class:`TorchOps` (the :class:`~quantport.quant.gptq.
ArrayOps` of :mod:`quantport.quant.gptq`, which never imports torch itself). Nothing else in
quantport uses a GPU.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from quantport.errors import OptionError
from quantport.ir import code_range
from quantport.recipe import parse_device
from quantport.quant.gptq import ArrayOps, hessian_error

__all__ = ["TorchOps", "activations_fit", "cuda_available", "resolve_device"]

log = logging.getLogger(__name__)

#: fraction of the GPU's free memory the calibration activations may take (the rest is for
#: the layer, its intermediate activations and GPTQ's matrices)
ACTIVATION_SHARE = 0.5


def cuda_available() -> bool:
    """Whether torch sees a CUDA device."""
    import torch

    return bool(torch.cuda.is_available())


def resolve_device(requested: str, *, cuda: bool | None = None) -> str:
    """The device calibration runs on: ``"cpu"`` or ``"cuda"``.

    Args:
        requested: ``"auto"`` (CUDA when torch sees a GPU, else the CPU), ``"cpu"``, or
            ``"cuda"`` / ``"cuda:N"``.
        cuda: whether a CUDA device is available (default: ask torch).

    Raises:
        OptionError: an unknown device, or ``cuda`` asked for where torch sees no GPU.
    """
    req = parse_device(requested)
    base = req.split(":", 1)[0]
    if req == "cpu":
        return "cpu"
    have = cuda_available() if cuda is None else cuda
    if base == "cuda":
        if not have:
            raise OptionError("--device cuda: torch sees no CUDA device here (a CPU-only torch "
                              "build, or no GPU); use --device cpu or auto")
        return req
    return "cuda" if have else "cpu"


def activations_fit(nbytes: int, device: str) -> bool:
    """Whether ``nbytes`` of calibration activations may stay on ``device`` (always on the
    CPU; on a GPU while they take at most :data:`ACTIVATION_SHARE` of its free memory)."""
    if device == "cpu":
        return True
    import torch

    free, _total = torch.cuda.mem_get_info(torch.device(device))
    return nbytes <= ACTIVATION_SHARE * free


class TorchOps(ArrayOps):
    """GPTQ's array operations (:class:`~quantport.quant.gptq.ArrayOps`) on torch tensors of
    one device, TF32 never used.

    ``precision`` is what GPTQ's float64 arrays (the Hessian algebra, the error-updated
    weights) become: float64 as the numpy path (the H200's float64 matmuls are fast enough,
    and the codes then match the CPU's), or float32, as GPTQModel and llm-compressor compute
    on a GPU -- half the memory for the ``n x n`` matrices, a small fraction of codes one step
    away from the float64 result (tests/pipeline/test_device.py reports it)."""

    name = "torch"

    def __init__(self, device: str = "cpu", *, fused: bool = True,
                 precision: str = "float64") -> None:
        import torch

        if precision not in ("float64", "float32"):
            raise ValueError(f"precision must be float64 or float32, got {precision!r}")
        self.torch = torch
        self.device = torch.device(device)
        self.fused = fused
        self.precision = precision
        self._dtypes = {np.dtype(np.float32): torch.float32,
                        np.dtype(np.float64): getattr(torch, precision),
                        np.dtype(np.int8): torch.int8, np.dtype(np.uint8): torch.uint8,
                        np.dtype(np.int32): torch.int32, np.dtype(np.bool_): torch.bool}

    def _dt(self, dtype: Any) -> Any:
        if isinstance(dtype, self.torch.dtype):
            return dtype
        return self._dtypes[np.dtype(dtype)]

    def asarray(self, a: Any, dtype: Any = None) -> Any:
        torch = self.torch
        if not isinstance(a, torch.Tensor):
            arr = np.asarray(a)
            if not arr.flags.writeable or not arr.flags.c_contiguous:
                arr = np.ascontiguousarray(arr).copy()
            a = torch.from_numpy(arr)
        return a.to(device=self.device, dtype=None if dtype is None else self._dt(dtype))

    def numpy(self, a: Any) -> np.ndarray:
        if isinstance(a, self.torch.Tensor):
            return a.detach().cpu().numpy()
        return np.asarray(a)

    def copy(self, a: Any) -> Any:
        return a.clone()

    def copy_as(self, a: Any, dtype: Any) -> Any:
        if isinstance(a, self.torch.Tensor):
            return a.to(device=self.device, dtype=self._dt(dtype), copy=True)
        return self.asarray(np.array(a, copy=True), dtype)

    def borrow_as(self, a: Any, dtype: Any) -> Any:
        if (isinstance(a, self.torch.Tensor) and a.dtype == self._dt(dtype)
                and a.device == self.device):
            return a
        return self.copy_as(a, dtype)

    def empty(self, shape: tuple[int, ...], dtype: Any) -> Any:
        return self.torch.empty(shape, dtype=self._dt(dtype), device=self.device)

    def empty_like(self, a: Any, shape: tuple[int, ...]) -> Any:
        return self.torch.empty(shape, dtype=a.dtype, device=self.device)

    def contiguous(self, a: Any) -> Any:
        return a.contiguous()

    def cast(self, a: Any, dtype: Any) -> Any:
        return a.to(self._dt(dtype))

    def round(self, a: Any) -> Any:
        return self.torch.round(a)  # half to even, as np.round

    def nearest_int(self, a: Any) -> Any:
        # ggml's magic-number rounding is round half to even in float32 for |v| < 2**22; the
        # codes are clamped to a few bits right after, so values beyond that (where C wraps)
        # clamp to the same end code here
        return self.torch.round(a.to(self.torch.float32)).clamp_(-(1 << 22), 1 << 22)

    def clip(self, a: Any, lo: Any, hi: Any) -> Any:
        return self.torch.clamp(a, lo, hi)

    def all_finite(self, a: Any) -> bool:
        return bool(self.torch.isfinite(a).all())

    def diag(self, a: Any) -> np.ndarray:
        return self.numpy(self.torch.diagonal(a)).copy()

    def set_diag(self, a: Any, idx: np.ndarray, value: float, *, add: bool = False) -> None:
        i = self.torch.as_tensor(np.asarray(idx), device=self.device, dtype=self.torch.long)
        if add:
            a[i, i] += value
        else:
            a[i, i] = value

    def take2(self, a: Any, perm: np.ndarray) -> Any:
        p = self.torch.as_tensor(np.asarray(perm), device=self.device, dtype=self.torch.long)
        return a.index_select(0, p).index_select(1, p)

    def take_cols(self, a: Any, perm: np.ndarray) -> Any:
        p = self.torch.as_tensor(np.asarray(perm), device=self.device, dtype=self.torch.long)
        return a.index_select(1, p)

    def flip2(self, a: Any) -> Any:
        return self.torch.flip(a, (0, 1))

    def damped_upper_chol_of_inverse(self, h: Any, lam: float) -> Any | None:
        # gptq.py lines 98-104 as written -- cholesky, cholesky_inverse, cholesky(upper) --
        # each step in place in ONE n x n buffer besides h: the GPU's peak memory is set by
        # down_proj's 14336 x 14336 matrices (quant.gptq._upper_chol_of_inverse takes one
        # factorisation and a triangular inverse instead, which needs two buffers)
        torch = self.torch
        a = h.clone()
        a.diagonal().add_(lam)
        info = torch.empty((), dtype=torch.int32, device=a.device)
        torch.linalg.cholesky_ex(a, out=(a, info))
        if int(info) != 0:
            return None
        torch.cholesky_inverse(a, out=a)
        torch.linalg.cholesky_ex(a, upper=True, out=(a, info))
        return a if int(info) == 0 else None

    def sq_sum(self, e: Any) -> Any:
        return self.torch.dot(e, e)

    def fit_int(self, grid: Any, x: Any) -> dict[str, Any]:  # type: ignore[override]
        """:meth:`quantport.quant.grid.IntGrid.fit` of ``x`` ``[rows, n_blocks, block]``
        (float32) on this device: the same float32 operations in the same order, so the same
        scales and zero-points (checked against it by tests/pipeline/test_device.py)."""
        torch = self.torch
        qmin, qmax = code_range(grid.bits, True)
        one = torch.ones((), dtype=torch.float32, device=x.device)
        if grid.symmetric and grid.rule == "signed":
            at = x.abs().argmax(dim=-1, keepdim=True)
            scale = torch.take_along_dim(x, at, dim=-1)[..., 0] / float(np.float32(qmin))
            return {"scale": torch.where(scale == 0, one, scale)}
        if grid.symmetric:
            scale = x.abs().amax(dim=-1) / float(np.float32((qmax - qmin) / 2))
            return {"scale": torch.where(scale == 0, one, scale)}
        lo = torch.clamp(x.amin(dim=-1), max=0.0)
        hi = torch.clamp(x.amax(dim=-1), min=0.0)
        scale = (hi - lo) / float(np.float32(qmax - qmin))
        scale = torch.where(scale == 0, one, scale)
        zp = torch.clamp(torch.round(qmin - lo / scale), qmin, qmax)
        return {"scale": scale, "zero_point": zp}

    @property
    def int_sub_batch(self) -> Any:  # type: ignore[override]
        """GPTQ's integer-grid sub-batch in one call (:func:`_fused_int_sub_batch`), unless
        ``fused`` was turned off."""
        return _fused_int_sub_batch(self.device.type) if self.fused else None

    def hessian_error(self, w: Any, q: Any, hessian: Any) -> float:
        torch = self.torch
        if not any(isinstance(a, torch.Tensor) for a in (w, q, hessian)):
            return hessian_error(w, q, hessian)
        # a float32 Hessian (a GPU calibration's) is used as it is, without a float64 copy
        dt = (np.float32 if isinstance(hessian, torch.Tensor)
              and hessian.dtype == torch.float32 else np.float64)
        d = self.asarray(w, dt) - self.asarray(q, dt)
        return float(torch.sum((d @ self.asarray(hessian, dt)) * d, dtype=torch.float64))


def _int_sub_batch(w: Any, u: Any, s: Any, z: Any, qmin: float, qmax: float,
                   out: tuple[Any, Any, Any] | None = None) -> tuple[Any, Any, Any]:
    """A sub-batch of GPTQ's column loop on an integer grid (``quant.gptq._column_loop``'s
    per-column body, unrolled): ``w`` ``[n, rows]`` columns (float64, or float32 in
    :class:`TorchOps`' float32 precision), ``u`` ``[n, n]`` the sub-batch's block of the
    inverse Hessian's Cholesky factor, ``s`` / ``z`` ``[n or 1, rows]`` each column's scale and
    zero-point (float32; ``z`` None when symmetric). Returns the codes (int8), values (float32)
    and scaled errors (``w``'s dtype), ``[n, rows]`` each, also written into ``out`` when given.
    The operations are ``IntGrid.round`` / ``value`` and the error feedback in the same order;
    every step is elementwise over rows, so on a GPU the whole sub-batch is one kernel
    (:mod:`quantport.pipeline._triton_gptq`)."""
    import torch

    n = w.shape[0]
    cols = list(w.unbind(0))
    qs, vs, es = [], [], []
    for j in range(n):
        x = cols[j]
        sj = s[j if s.shape[0] > 1 else 0]
        q = torch.round(x.to(torch.float32) / sj)
        if z is not None:
            zj = z[j if z.shape[0] > 1 else 0]
            q = q + zj
        code = torch.clamp(q, qmin, qmax).to(torch.int8)
        cf = code.to(torch.float32)
        if z is not None:
            cf = cf - zj
        v = cf * sj
        e = (x - v) / u[j, j]
        for k in range(j + 1, n):  # W1[:, i:] -= err1 ⊗ Hinv1[i, i:] within the sub-batch
            cols[k] = cols[k] - u[j, k] * e
        qs.append(code)
        vs.append(v)
        es.append(e)
    res = (torch.stack(qs), torch.stack(vs), torch.stack(es))
    if out is not None:
        for o, r in zip(out, res, strict=True):
            o.copy_(r)
    return res


_COMPILED: dict[str, Any] = {}


def _triton() -> Any:
    """The Triton kernel's launcher (:mod:`quantport.pipeline._triton_gptq`), or None where
    Triton is not installed (then ``torch.compile``, which needs it on a GPU too, or eager)."""
    try:
        from quantport.pipeline import _triton_gptq
    except ImportError:
        return None
    return _triton_gptq.int_sub_batch


def _fused_int_sub_batch(device_type: str) -> Any:
    """:func:`_int_sub_batch` as run on ``device_type``: eager on the CPU; on a GPU the Triton
    kernel, or ``torch.compile`` where Triton is missing (chosen once per process; a failure
    of either switches to the eager function, logged)."""
    if device_type == "cpu":
        return _int_sub_batch
    fn = _COMPILED.get(device_type)
    if fn is None:
        launch = _triton()
        if launch is not None:
            fn = _eager_fallback(device_type, launch, "GPTQ's Triton kernel")
        else:
            import torch

            fn = _eager_fallback(device_type,
                                 torch.compile(_int_sub_batch, dynamic=True, fullgraph=True),
                                 "torch.compile of GPTQ's sub-batch")
        _COMPILED[device_type] = fn
    return fn


def _eager_fallback(device_type: str, fast: Any, what: str) -> Any:
    """``fast`` (the sub-batch's kernel), switching the device to the eager
    :func:`_int_sub_batch` at its first failure (a build error: the eager one is correct)."""

    def fn(*args: Any) -> Any:
        try:
            return fast(*args)
        except Exception as exc:  # noqa: BLE001 - any build failure: eager is correct
            log.warning("%s failed (%s); running GPTQ's sub-batches eagerly", what,
                        str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            _COMPILED[device_type] = _int_sub_batch
            return _int_sub_batch(*args)

    return fn
