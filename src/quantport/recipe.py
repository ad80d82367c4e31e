"""The recipe: every choice a user makes about a conversion, parsed once, immutable.

The CLI (or a library caller) builds it with :func:`make_recipe`; nothing downstream parses
text again. A recipe says *what* to make (format, scheme or preset, per-tensor overrides, what
stays in float), *how* to round (:data:`METHODS`), and with which calibration data; the
:mod:`plan <quantport.plan>` then says what each tensor of a given source becomes.

Quantization targets, one per tensor:

* a dense float type, ``"F32"``, ``"F16"`` or ``"BF16"`` (a plain tensor);
* an :class:`~quantport.quant.scheme.IntScheme` (``w4-g64-sym``...): compressed-tensors,
  ONNX;
* a ggml type name (``"Q4_K"``, ``"Q8_0"``...): GGUF, chosen per tensor by a llama-quantize
  :class:`~quantport.quant.presets.Preset` exactly as ``llama_tensor_get_type`` does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

from quantport._fixtures import calibration_text
from quantport.errors import ConfigError, OptionError, UnsupportedQuantError
from quantport.quant.presets import Preset, parse_override, resolve_preset
from quantport.quant.scheme import IntScheme, parse_scheme

__all__ = [
    "ACT_ORDERS",
    "ACT_SCHEMES",
    "CALIB_INPUTS",
    "DENSE_TYPES",
    "DEVICES",
    "FORMATS",
    "METHODS",
    "Method",
    "Override",
    "Recipe",
    "Target",
    "make_recipe",
    "parse_device",
    "parse_target",
]

#: dense float types by every spelling users write
DENSE_TYPES = {"f32": "F32", "fp32": "F32", "float32": "F32", "f16": "F16", "fp16": "F16",
               "float16": "F16", "bf16": "BF16", "bfloat16": "BF16"}
#: ggml types ONNX holds exactly (llama.cpp's rounding, 32-blocks): ``--to onnx --quant Q4_0``
ONNX_GGML_TYPES = ("Q4_0", "Q8_0", "Q4_1")
#: output formats (the keys of :data:`quantport.writers.WRITERS`)
FORMATS = ("safetensors", "gguf", "onnx", "gptq")

#: what one tensor becomes: a dense type name, an integer scheme, or a ggml type name
Target = Union[str, IntScheme]
#: what the whole model becomes: a dense type, an integer scheme, or a llama-quantize preset
Quant = Union[str, IntScheme, Preset]


@dataclass(frozen=True)
class Method:
    """A rounding method.

    Attributes:
        name: ``--method`` value.
        independent: each tensor is rounded on its own (so tensors, and row chunks of a
            tensor, may be rounded in parallel, in any order); a calibrated method that walks
            the layers in order (GPTQ) is not.
        description: one line for ``--help`` and ``quantport list``.
    """

    name: str
    independent: bool
    description: str


#: rounding methods by ``--method`` name
METHODS: dict[str, Method] = {
    "rtn": Method("rtn", True, "round to nearest (llama.cpp's own search for ggml types)"),
    "gptq": Method("gptq", False, "GPTQ: error-feedback rounding driven by calibration "
                   "Hessians, on any grid (k-quants included)"),
    "awq": Method("awq", False, "AWQ: activation-aware scales searched per layer and folded "
                  "into the previous op, then round to nearest"),
    "awq+gptq": Method("awq+gptq", False, "AWQ's scales, then GPTQ rounding"),
    "smoothquant": Method("smoothquant", False, "SmoothQuant: activation outliers migrated "
                          "into the weights (--smooth-alpha), for int8 activations (w8a8)"),
}
#: ``--act-order``: GPTQ's column order. ``static``: columns by decreasing Hessian diagonal,
#: every group's parameters fitted before the loop (no ``g_idx``; llm-compressor's default
#: ``actorder="static"``); ``group``: groups formed in that order, stored with ``g_idx``
#: (GPTQModel's ``desc_act``); ``none``: natural order.
ACT_ORDERS = ("static", "group", "none")
#: calibration statistics of a layer come from the outputs of the already quantized layers
#: before it (``quantized``, true-sequential) or of the float ones (``float``, one run a layer);
#: ``asymmetric``: GPTQ's Hessians from the quantized layers' outputs, its target the float
#: model's (GPTAQ: the float model's stream runs beside the quantized one, about twice the time)
CALIB_INPUTS = ("quantized", "float", "asymmetric")
#: ``--act-scheme``: W8A8's int8 activations get one dynamic scale per ``token`` (symmetric;
#: SmoothQuant's O1, compressed-tensors' W8A8) or per ``tensor`` (uint8 with a zero point;
#: ORT's ``DynamicQuantizeLinear``, ONNX only)
ACT_SCHEMES = ("token", "tensor")


@dataclass(frozen=True)
class Override:
    """``--tensor-type REGEX=TYPE``: tensors whose name ``re.search``-es ``pattern`` get
    ``target``. For GGUF the names are GGUF names and TYPE a ggml type (llama-quantize's
    rules apply); otherwise Hugging Face names and a scheme or dense type."""

    pattern: str
    target: Target
    regex: re.Pattern[str] = field(compare=False, repr=False)

    def __str__(self) -> str:
        return f"{self.pattern}={self.target}"


@dataclass(frozen=True)
class Recipe:
    """One conversion's choices. Build it with :func:`make_recipe`.

    Attributes:
        format: ``"gguf"`` or ``"safetensors"``.
        quant: the model-wide choice: a dense type (``"F16"``), an :class:`IntScheme`, or a
            llama-quantize :class:`Preset` (GGUF).
        overrides: per-tensor overrides, first match wins.
        method: a key of :data:`METHODS`.
        keep_unquantized: leave tensors the scheme cannot quantize (width not a multiple of
            the group) in float instead of refusing.
        pure, output_type, token_embedding_type: llama-quantize's ``--pure``,
            ``--output-tensor-type``, ``--token-embedding-type`` (GGUF).
        imatrix: an importance matrix file (GGUF).
        calib: calibration text (never the evaluation text); with GGUF it yields an
            importance matrix.
        calib_samples, calib_len: calibration windows and tokens per window.
        max_shard_size: safetensors shard size in bytes (transformers' default 5 GB).
        damp: GPTQ dampening, a fraction of the Hessian's mean diagonal.
        act_order: GPTQ column order, one of :data:`ACT_ORDERS`.
        calib_inputs: one of :data:`CALIB_INPUTS`.
        calib_dtype: dtype of the calibration forward passes (``float32`` or ``bfloat16``).
        device: where calibration, GPTQ and AWQ run: ``auto`` (a CUDA GPU when torch sees
            one), ``cpu`` or ``cuda`` (see :func:`quantport.pipeline.device.resolve_device`).
            Not recorded in the artifact: it changes where the work runs, not what it is.
        smooth_alpha: SmoothQuant's migration strength α; ``None``: the architecture's
            default (:func:`quantport.pipeline.transforms.smooth_alpha_for`).
        onnx_matmul: ONNX: quantized Linear weights as ``"qdq"`` (DequantizeLinear -> MatMul,
            which ORT fuses into MatMulNBits) or ``"nbits"`` (MatMulNBits directly).
        accuracy_level: ONNX: ``accuracy_level`` of the MatMulNBits nodes the graph holds
            (0..4; None: 4): every quantized Linear with ``nbits``, the quantized tied head
            with ``qdq`` (the MatMulNBits ORT fuses from QDQ take its session option
            ``session.qdq_matmulnbits_accuracy_level``, default 4).
        act_quant: ``"w8a8"``, int8 weights with dynamically quantized int8 activations
            (``--quant w8a8``; ONNX and compressed-tensors).
        act_scheme: with ``act_quant``, one of :data:`ACT_SCHEMES`: the activations get one
            int8 scale per ``"token"`` or per ``"tensor"`` (ONNX only).
    """

    format: str
    quant: Quant
    overrides: tuple[Override, ...] = ()
    method: str = "rtn"
    keep_unquantized: bool = False
    pure: bool = False
    output_type: str | None = None
    token_embedding_type: str | None = None
    imatrix: Path | None = None
    calib: Path | None = None
    calib_samples: int = 16
    calib_len: int = 512
    max_shard_size: int = 5_000_000_000
    damp: float = 0.01
    act_order: str = "static"
    calib_inputs: str = "quantized"
    calib_dtype: str = "float32"
    device: str = "auto"
    smooth_alpha: float | None = None
    onnx_matmul: str = "qdq"
    accuracy_level: int | None = None
    act_quant: str | None = None
    act_scheme: str | None = None

    @property
    def calibrated(self) -> bool:
        """Whether the method runs the calibration engine (layer by layer)."""
        return not METHODS[self.method].independent

    @property
    def quant_name(self) -> str:
        """The scheme, preset or dense type as users write it (``w4-g64-sym``, ``Q4_K_M``)."""
        if isinstance(self.quant, Preset):
            return self.quant.name
        if self.act_quant:
            return self.act_quant
        return str(self.quant).lower() if isinstance(self.quant, str) else str(self.quant)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready mapping, recorded in every artifact's metadata."""
        d: dict[str, Any] = {"format": self.format, "quant": self.quant_name,
                             "method": self.method}
        if self.overrides:
            d["overrides"] = [str(o) for o in self.overrides]
        for k in ("keep_unquantized", "pure"):
            if getattr(self, k):
                d[k] = True
        for k in ("output_type", "token_embedding_type"):
            if getattr(self, k) is not None:
                d[k] = getattr(self, k)
        if self.imatrix is not None:
            d["imatrix"] = str(self.imatrix)
        if self.calib is not None:
            d["calib"] = {"text": str(self.calib), "samples": self.calib_samples,
                          "len": self.calib_len}
        if self.calibrated:
            d["calib"]["inputs"] = self.calib_inputs
            d["calib"]["dtype"] = self.calib_dtype
            if "gptq" in self.method:
                d["gptq"] = {"damp": self.damp, "act_order": self.act_order}
            if self.method == "smoothquant":
                d["smoothquant"] = {"alpha": self.smooth_alpha}
        if self.act_scheme is not None:
            d["act_scheme"] = self.act_scheme
        if self.format == "onnx":
            d["onnx_matmul"] = self.onnx_matmul
            if self.accuracy_level is not None:
                d["accuracy_level"] = self.accuracy_level
            if self.act_quant:
                d["act_quant"] = self.act_quant
        return d


#: the choices of ``--device`` (``cuda:N`` also picks one GPU)
DEVICES = ("auto", "cpu", "cuda")


def parse_device(text: str) -> str:
    """``--device`` as given, normalised (``auto``, ``cpu``, ``cuda`` or ``cuda:N``).

    Raises:
        OptionError: anything else.
    """
    dev = str(text).strip().lower()
    if dev not in DEVICES and not re.fullmatch(r"cuda:\d+", dev):
        raise OptionError(f"--device {text!r} is not one of {', '.join(DEVICES)} (or cuda:N)")
    return dev


def parse_target(text: str, fmt: str) -> Target:
    """One tensor's target as written on the command line, for format ``fmt``.

    Raises:
        UnsupportedQuantError: not a dense type, a scheme, or (GGUF) a ggml type.
    """
    t = str(text).strip()
    if fmt == "gguf":
        return parse_override(("x", t))[1]  # llama-quantize's own type names and checks
    if t.lower() in DENSE_TYPES:
        return DENSE_TYPES[t.lower()]
    if fmt == "onnx" and t.upper() in ONNX_GGML_TYPES:
        return t.upper()
    return parse_scheme(t)


def _parse_override(spec: str, fmt: str) -> Override:
    if fmt == "gguf":
        pattern, target = parse_override(spec)  # lower-cased as quantize.cpp does
    else:
        pattern, sep, text = str(spec).partition("=")
        if not sep or not pattern or not text:
            raise UnsupportedQuantError(
                f"malformed tensor-type override {spec!r}; write it as REGEX=SCHEME, e.g. "
                "'model.embed_tokens.weight=w8-channel-sym' or 'lm_head=f32'"
            )
        try:
            re.compile(pattern)
        except re.error as exc:
            raise UnsupportedQuantError(
                f"tensor-type override {spec!r}: invalid regex ({exc}); fix the pattern"
            ) from None
        target = parse_target(text, fmt)
    return Override(pattern, target, re.compile(pattern))


def make_recipe(
    fmt: str,
    quant: str,
    *,
    tensor_types: tuple[str, ...] | list[str] = (),
    method: str = "rtn",
    keep_unquantized: bool = False,
    pure: bool = False,
    output_type: str | None = None,
    token_embedding_type: str | None = None,
    imatrix: str | Path | None = None,
    calib: str | Path | None = None,
    calib_samples: int | None = None,
    calib_len: int = 512,
    max_shard_size: int = 5_000_000_000,
    damp: float = 0.01,
    act_order: str = "static",
    calib_inputs: str = "quantized",
    calib_dtype: str = "float32",
    device: str = "auto",
    smooth_alpha: float | None = None,
    onnx_matmul: str = "qdq",
    accuracy_level: int | None = None,
    act_scheme: str | None = None,
) -> Recipe:
    """Parse the user's choices into a :class:`Recipe` (the one place text is parsed).

    A calibrated method (``gptq``...) without ``calib`` calibrates on the default text
    (WikiText-2 validation); ``calib_samples`` defaults to 128 windows for calibrated methods
    (the GPTQ/AWQ references' 128 x 512 tokens) and 16 for an importance matrix.

    Raises:
        UnsupportedQuantError: unknown format, scheme, preset, type or method.
        OptionError: an option that does not apply to the format, or contradicts another.
        ConfigError: a size or count out of range.
    """
    fmt = str(fmt).lower()
    if fmt not in FORMATS:
        raise UnsupportedQuantError(
            f"format {fmt!r} is not available; supported: {', '.join(FORMATS)}"
        )
    if method not in METHODS:
        raise UnsupportedQuantError(
            f"unknown rounding method {method!r}; supported: {', '.join(METHODS)}"
        )
    q: Quant
    act_quant = None
    if fmt != "onnx" and (onnx_matmul != "qdq" or accuracy_level is not None):
        used = [o for o, on in (("--onnx-matmul", onnx_matmul != "qdq"),
                                ("--accuracy-level", accuracy_level is not None)) if on]
        raise OptionError(f"{' and '.join(used)} {'apply' if len(used) > 1 else 'applies'} "
                          "to --to onnx only")
    if fmt == "onnx":
        if onnx_matmul not in ("qdq", "nbits"):
            raise OptionError(f"--onnx-matmul must be qdq or nbits, got {onnx_matmul!r}")
        if accuracy_level is not None and not 0 <= accuracy_level <= 4:
            raise OptionError(f"--accuracy-level must be 0..4, got {accuracy_level}")
    if fmt in ("onnx", "safetensors") and str(quant).strip().lower() == "w8a8":
        # int8 per-channel symmetric weights; activations quantized at run time, per token
        # (compressed-tensors' INT8_W8A8 preset; ORT's DynamicQuantizeLinear per tensor).
        # ONNX: codes in 7 of the int8's bits, ORT's reduce_range (quantize_dynamic): MLAS
        # multiplies uint8 activations by int8 weights with VPMADDUBSW on x86 CPUs without
        # VNNI, whose int16 pair sums saturate unless |w| <= 64 (2 * 255 * 64 < 2**15); with
        # 8-bit codes the graph would need MLAS's exact but slower uint8 x uint8 kernel
        # (the ONNX writer uses it for an 8-bit override)
        q = parse_scheme("w7-channel-sym" if fmt == "onnx" else "w8-channel-sym")
        act_quant = "w8a8"
        # activations: per tensor by default in ONNX (ORT's quantize_dynamic graph and its
        # fused DynamicQuantizeMatMul kernel, the fastest), per token in compressed-tensors
        # (what transformers runs for W8A8)
        act_scheme = act_scheme or ("tensor" if fmt == "onnx" else "token")
        if act_scheme not in ACT_SCHEMES:
            raise OptionError(f"--act-scheme {act_scheme!r} is not one of "
                              f"{', '.join(ACT_SCHEMES)}")
        if fmt == "safetensors" and act_scheme != "token":
            raise OptionError("compressed-tensors W8A8 quantizes activations per token (what "
                              "transformers runs); --act-scheme tensor is for --to onnx")
        if onnx_matmul != "qdq":
            raise OptionError("--quant w8a8 runs int8 GEMMs (MatMulInteger); it takes no "
                              "--onnx-matmul nbits")
    elif act_scheme is not None:
        raise OptionError(
            "--act-scheme applies to --quant w8a8 with --to onnx or safetensors (int8 "
            f"activations), not --quant {quant} --to {fmt}")
    elif fmt == "onnx" and str(quant).strip().lower() == "keep":
        q = "KEEP"  # a GGUF source's own codes, copied (the ONNX writer checks the source)
    elif fmt == "onnx" and str(quant).strip().upper() in ONNX_GGML_TYPES:
        q = str(quant).strip().upper()  # rounded by llama.cpp's quantizer, exported exactly
    elif fmt == "gguf":
        q = resolve_preset(quant)
    elif str(quant).strip().lower() in DENSE_TYPES:
        q = DENSE_TYPES[str(quant).strip().lower()]
    else:
        q = parse_scheme(quant)
    if method == "smoothquant" and act_quant != "w8a8":
        # smoothing only moves range from the activations into the weights: with float
        # activations it changes nothing but the weights' rounding error
        raise OptionError(f"--method smoothquant is for int8 activations: use --quant w8a8 "
                          f"(--to safetensors or onnx), not {quant!r} to {fmt}")
    gguf_only = {"--pure": pure, "--output-tensor-type": output_type,
                 "--token-embedding-type": token_embedding_type, "--imatrix": imatrix}
    if fmt != "gguf":
        used = [k for k, v in gguf_only.items() if v]
        if used:
            raise OptionError(
                f"{', '.join(used)} {'apply' if len(used) > 1 else 'applies'} to --to gguf "
                "only (llama-quantize options)"
            )
        if calib is not None and method == "rtn":
            raise OptionError(
                f"--calib with --to {fmt} needs a calibrated --method; round-to-nearest "
                "uses no calibration data"
            )
    if imatrix is not None and calib is not None:
        raise OptionError("give either --imatrix or --calib, not both")
    calibrated = not METHODS[method].independent
    if calibrated:
        if imatrix is not None:
            raise OptionError(f"--imatrix applies to --method rtn; {method} computes its own "
                              "statistics from --calib (default: WikiText-2 validation text)")
        if calib is None:
            calib = calibration_text()
    if calib_samples is None:
        calib_samples = 128 if calibrated else 16
    for opt, value, allowed in (("--act-order", act_order, ACT_ORDERS),
                                ("--calib-inputs", calib_inputs, CALIB_INPUTS),
                                ("--calib-dtype", calib_dtype, ("float32", "bfloat16"))):
        if value not in allowed:
            raise OptionError(f"{opt} {value!r} is not one of {', '.join(allowed)}")
    if calib_inputs == "asymmetric" and "gptq" not in method:
        raise OptionError(f"--calib-inputs asymmetric sets GPTQ's target; --method {method} "
                          "runs no GPTQ (use --method gptq or awq+gptq)")
    dev = parse_device(device)
    # option values out of range: usage errors (exit 2), as click's own range checks
    if smooth_alpha is not None and not 0 < smooth_alpha < 1:
        raise OptionError(f"--smooth-alpha must be in (0, 1), got {smooth_alpha}")
    if not 0 < damp < 10:
        raise OptionError(f"--damp must be in (0, 10), got {damp}")
    if calib_samples < 1 or calib_len < 16:
        raise ConfigError(
            f"calibration needs at least 1 sample of at least 16 tokens, got {calib_samples} x "
            f"{calib_len}"
        )
    if max_shard_size < 1:
        raise ConfigError(f"--max-shard-size must be positive, got {max_shard_size}")
    overrides = tuple(_parse_override(s, fmt) for s in tensor_types)
    dense = set(DENSE_TYPES.values())
    if calibrated and (q in dense or (isinstance(q, Preset) and q.default_type in dense)) \
            and all(str(o.target).upper() in dense for o in overrides):
        # every weight stays float: the calibration would run for nothing
        raise OptionError(f"--method {method} rounds weights onto a quantized grid; --quant "
                          f"{quant} keeps every weight in float (pick a scheme or preset, or "
                          "a --tensor-type that quantizes)")
    if fmt == "gguf":
        output_type = parse_target(output_type, fmt) if output_type else None  # type: ignore[assignment]
        token_embedding_type = (parse_target(token_embedding_type, fmt)  # type: ignore[assignment]
                                if token_embedding_type else None)
    return Recipe(
        format=fmt, quant=q, overrides=overrides, method=method,
        keep_unquantized=keep_unquantized, pure=pure, output_type=output_type,
        token_embedding_type=token_embedding_type,
        imatrix=Path(imatrix) if imatrix is not None else None,
        calib=Path(calib) if calib is not None else None,
        calib_samples=calib_samples, calib_len=calib_len, max_shard_size=max_shard_size,
        damp=float(damp), act_order=act_order, calib_inputs=calib_inputs,
        calib_dtype=calib_dtype, device=dev, onnx_matmul=onnx_matmul, accuracy_level=accuracy_level,
        act_quant=act_quant, act_scheme=act_scheme,
        smooth_alpha=None if smooth_alpha is None else float(smooth_alpha),
    )
