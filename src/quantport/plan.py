"""The plan: what every tensor of a source becomes, decided before any tensor is read.

A writer (:mod:`quantport.writers`) makes the plan from the source's header (names, shapes,
config) and a :class:`~quantport.recipe.Recipe`: for each output tensor its source
tensor, the layout edit it needs (llama.cpp's Q/K row permutation), its target (dense type,
integer scheme or ggml type) and the bytes it takes in the output; for each dropped source
tensor, why. Because file layouts are known from the plan alone, the plan also gives the exact
size of every output file (``--dry-run``), and the writer can place each tensor at its final
offset whatever order the tensors are computed in.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from quantport.recipe import Recipe, Target

__all__ = ["Plan", "PlanRow"]


@dataclass(frozen=True)
class PlanRow:
    """One output tensor.

    Attributes:
        name: the tensor's name in the output (a GGUF name, or the Hugging Face name).
        source: the source tensor it is computed from (Hugging Face name).
        shape: numpy-order shape (``[rows, cols]`` for weights).
        target: ``"F32"`` / ``"F16"`` / ``"BF16"``, an :class:`IntScheme`, or a ggml type name.
        reason: which rule chose the target (``"default"``, ``"override 'attn_v=Q8_0'"``...).
        nbytes: bytes of this tensor in the output (all the arrays it is packed into).
        edit: a layout edit applied to the source tensor before rounding, or ``None``
            (``"permute_q"`` / ``"permute_k"``: llama.cpp's rotary row order).
    """

    name: str
    source: str
    shape: tuple[int, ...]
    target: Target
    reason: str
    nbytes: int
    edit: str | None = None

    @property
    def quantized(self) -> bool:
        """Whether the target is a quantized grid (not a dense float type)."""
        return self.target not in ("F32", "F16", "BF16")

    @property
    def type_name(self) -> str:
        """The target as text (``Q4_K``, ``w4-g64-sym``, ``F32``)."""
        return str(self.target)


@dataclass
class Plan:
    """What a conversion will write.

    Attributes:
        recipe: the recipe it follows.
        rows: output tensors in file order.
        dropped: source tensors not written, with the reason (tied head, buffers...).
        files: every output file and its exact size in bytes (relative names; one entry,
            the file itself, for single-file formats).
        extra: what the writer computed along with the plan and needs again when it writes
            (header metadata, shard layout...); not part of :meth:`to_dict`.
    """

    recipe: Recipe
    rows: list[PlanRow]
    dropped: dict[str, str] = field(default_factory=dict)
    files: dict[str, int] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def size(self) -> int:
        """Exact size of the output in bytes (all its files)."""
        return sum(self.files.values())

    def type_counts(self) -> dict[str, int]:
        """Number of tensors per target type."""
        out: dict[str, int] = {}
        for r in self.rows:
            out[r.type_name] = out.get(r.type_name, 0) + 1
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready mapping (``--dry-run --json``)."""
        return {
            "recipe": self.recipe.to_dict(),
            "size": self.size,
            "files": dict(self.files),
            "tensors": [
                {"name": r.name, "source": r.source, "shape": list(r.shape),
                 "type": r.type_name, "reason": r.reason, "bytes": r.nbytes}
                for r in self.rows
            ],
            "dropped": dict(self.dropped),
        }
