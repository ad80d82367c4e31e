"""Atomic output: write to a temporary name next to the target, then rename into place.

An interrupted run (Ctrl-C, full disk, crash) never leaves a half-written artifact at the target
path; the temporary is removed on any exception.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from quantport.errors import OutputExistsError, QuantportError

__all__ = ["atomic_dir", "atomic_file", "check_output"]


def check_output(path: Path, force: bool) -> None:
    """Refuse an existing output unless ``force``.

    Raises:
        OutputExistsError: if ``path`` exists and ``force`` is false.
    """
    if path.exists() and not force:
        raise OutputExistsError(f"{path} already exists; pass --force to overwrite it")


def _disk_error(exc: OSError, path: Path) -> QuantportError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return QuantportError(f"no space left on device while writing {path}; free space and retry")
    return QuantportError(f"cannot write {path}: {exc.strerror or exc}")


@contextlib.contextmanager
def atomic_file(path: Path | str) -> Iterator[Path]:
    """Yield a temporary path in ``path``'s directory; rename it onto ``path`` on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    # mkstemp creates 0600; give the artifact the permissions a plain open() would
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_path, 0o666 & ~umask)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except OSError as exc:
        tmp_path.unlink(missing_ok=True)
        raise _disk_error(exc, path) from exc
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_dir(path: Path | str) -> Iterator[Path]:
    """Yield a temporary directory next to ``path``; move it onto ``path`` on success.

    An existing ``path`` (allowed by ``--force``) is replaced only after the new one is
    complete.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_path, 0o777 & ~umask)
    try:
        yield tmp_path
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            if old.exists():
                shutil.rmtree(old) if old.is_dir() else old.unlink()
            os.replace(path, old)
            os.replace(tmp_path, path)
            shutil.rmtree(old) if old.is_dir() else old.unlink()
        else:
            os.replace(tmp_path, path)
    except OSError as exc:
        shutil.rmtree(tmp_path, ignore_errors=True)
        raise _disk_error(exc, path) from exc
    except BaseException:
        shutil.rmtree(tmp_path, ignore_errors=True)
        raise
