"""Writers, one module per output format, in one table.

A writer makes the :class:`~quantport.plan.Plan` for a source and a recipe (what each
tensor becomes, file layouts, exact sizes), then opens the output as a *sink* that packs IR
records (or float arrays) and writes them at the offsets the plan fixed, in any order. It never
rounds anything itself: the pipeline (:mod:`quantport.pipeline`) computes the records.

Adding a format: one module with a class like :class:`~quantport.writers.gguf.GGUFWriter`
(``plan``, ``importance``, ``check_output``, ``open``) and one row in :data:`WRITERS`.
"""

from __future__ import annotations

from quantport.errors import UnsupportedQuantError
from quantport.writers.gguf import GGUFWriter
from quantport.writers.gptq import GPTQWriter
from quantport.writers.onnx import ONNXWriter
from quantport.writers.safetensors import SafetensorsWriter

__all__ = ["WRITERS", "get_writer"]

#: format name (``--to``) -> writer
WRITERS = {
    "safetensors": SafetensorsWriter(),
    "gguf": GGUFWriter(),
    "onnx": ONNXWriter(),
    "gptq": GPTQWriter(),
}


def get_writer(fmt: str) -> GGUFWriter | SafetensorsWriter | ONNXWriter | GPTQWriter:
    """The writer of format ``fmt``.

    Raises:
        UnsupportedQuantError: no writer for that format.
    """
    try:
        return WRITERS[fmt]  # type: ignore[return-value]
    except KeyError:
        raise UnsupportedQuantError(
            f"format {fmt!r} is not available; supported: {', '.join(WRITERS)}"
        ) from None
