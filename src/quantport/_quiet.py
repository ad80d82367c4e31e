"""Silence third-party chatter while quantport loads a model with transformers.

transformers draws its own "Loading weights" bar and logs warnings; compressed-tensors draws
"Applying quantization config" / "Decompressing model" bars with tqdm directly. quantport
reports progress through its own callbacks (one bar per phase in the CLI), so every place
that loads a model with transformers does it inside :func:`quiet_loading`.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Iterator
from typing import Any

__all__ = ["quiet_loading"]

_lock = threading.RLock()


@contextlib.contextmanager
def quiet_loading() -> Iterator[None]:
    """No progress bars and no warnings from transformers, huggingface_hub, compressed-tensors
    (or anything else that draws a tqdm bar) inside the block; the previous state is restored
    on exit.

    tqdm bars are disabled by wrapping ``tqdm.std.tqdm.__init__`` (compressed-tensors binds the
    class at import, so no module attribute can be swapped instead): this is process-wide while
    the block runs, so bars of one's own must be created outside it.
    """
    import tqdm.std
    from transformers.utils import logging as hf_logging

    with _lock:
        bar_was_on = hf_logging.is_progress_bar_enabled()
        verbosity = hf_logging.get_verbosity()
        original = tqdm.std.tqdm.__init__

        @functools.wraps(original)
        def silent_init(self: Any, *args: Any, **kwargs: Any) -> None:
            kwargs["disable"] = True
            original(self, *args, **kwargs)

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
        tqdm.std.tqdm.__init__ = silent_init  # type: ignore[method-assign]
        try:
            yield
        finally:
            tqdm.std.tqdm.__init__ = original  # type: ignore[method-assign]
            hf_logging.set_verbosity(verbosity)
            if bar_was_on:
                hf_logging.enable_progress_bar()
