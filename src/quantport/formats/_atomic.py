"""Atomic output: write to a temporary name next to the target, then rename into place.

An interrupted run (Ctrl-C, full disk, crash) never leaves a half-written artifact at the target
path; the temporary is removed on any exception.

What ``--force`` may replace (:func:`check_output`, and again when :func:`atomic_dir` commits):

* a directory only if it is a quantport artifact, i.e. holds a valid manifest
  ``quantport.json`` (``{"quantport_version": ..., "files": [relative paths]}``) that
  :func:`atomic_dir` writes itself when it commits; an empty directory is also fine. Only the
  files the manifest lists are removed. Files added to the artifact directory since it was written
  ("foreign" files) are kept where they are and a warning names them; if the new artifact has a
  file of the same name, the replacement is refused instead (it would overwrite the user's file);
* a file only if quantport wrote it: a GGUF whose metadata has the key ``quantport.version``.

Anything else is refused with an :class:`OutputExistsError` that names what is in the way.

Leftovers: every temporary (``.NAME.XXXXXXXX.partial``, a file or a directory) is held under an
advisory ``fcntl.flock`` for the whole write. A later run to the same target removes those whose
lock it can take without blocking (their writer is gone: SIGKILL, power loss) and logs a warning;
a temporary whose lock is held (another conversion still writing) is left alone.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

from quantport.errors import OutputExistsError, QuantportError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no advisory locks, so leftovers are kept
    fcntl = None  # type: ignore[assignment]

__all__ = ["MANIFEST", "atomic_dir", "atomic_file", "check_output", "manifest_text",
           "read_manifest", "remove_stale_partials"]

log = logging.getLogger(__name__)

MANIFEST = "quantport.json"
_NAMES_SHOWN = 5  # how many files an error message names before "... and N more"
# tempfile's random part: 8 characters of [a-z0-9_] (tempfile._RandomNameSequence)
_RAND = r"[a-z0-9_]{8}"


def _version() -> str:
    import quantport

    return str(quantport.__version__)


def _names(paths: list[str]) -> str:
    shown = ", ".join(paths[:_NAMES_SHOWN])
    if len(paths) > _NAMES_SHOWN:
        shown += f" ... and {len(paths) - _NAMES_SHOWN} more"
    return shown


def _entries(root: Path) -> list[str]:
    """Relative POSIX paths of every non-directory entry under ``root`` (symlinks not followed)."""
    out: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        rel = Path(dirpath).relative_to(root)
        # a symlink to a directory is listed in dirnames but not descended: count it as an entry
        links = [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]
        for name in filenames + links:
            out.append((rel / name).as_posix())
    return sorted(out)


def _safe_rel(p: Any) -> bool:
    if not isinstance(p, str) or not p or "\\" in p or "\0" in p:
        return False
    pp = PurePosixPath(p)
    return not pp.is_absolute() and ".." not in pp.parts and "." not in pp.parts and \
        pp.as_posix() == p


def read_manifest(path: Path | str) -> list[str] | None:
    """The files listed by the manifest of directory ``path``, or None if it has no valid one.

    Valid: ``quantport.json`` is a JSON object with a string ``quantport_version`` and ``files``,
    a list of normalized relative paths that stay inside the directory.
    """
    mf = Path(path) / MANIFEST
    try:
        if not stat.S_ISREG(mf.lstat().st_mode) or mf.lstat().st_size > 16 << 20:
            return None
        data = json.loads(mf.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("quantport_version"), str):
        return None
    files = data.get("files")
    if not isinstance(files, list) or not all(_safe_rel(f) for f in files):
        return None
    return list(files)


def _is_quantport_gguf(path: Path) -> bool:
    try:
        from quantport.formats.gguf_file import gguf_has_key

        return gguf_has_key(path, "quantport.version")
    except Exception:  # not a GGUF, truncated, unreadable: not something quantport wrote
        return False


def _refuse_file(path: Path) -> OutputExistsError:
    if path.is_symlink() or not path.is_file():
        return OutputExistsError(
            f"{path} exists and is not a regular file; --force replaces only quantport's own "
            "output: move it away or choose another -o"
        )
    return OutputExistsError(
        f"{path} exists and was not written by quantport (no quantport.version in GGUF "
        "metadata); --force replaces only quantport's own output: move it away or choose "
        "another -o"
    )


def _check_dir(path: Path) -> list[str]:
    """The manifest files of the replaceable directory ``path``; raise if it is not one."""
    entries = _entries(path)
    if not entries:
        return []
    listed = read_manifest(path)
    if listed is None:
        raise OutputExistsError(
            f"{path} is a directory that is not a quantport artifact (no valid {MANIFEST}) and "
            f"holds {len(entries)} file(s): {_names(entries)}; --force replaces only quantport's "
            "own output: choose another -o or remove those files yourself"
        )
    return listed


def check_output(path: Path | str, force: bool, *, clean: bool = True) -> None:
    """Refuse an existing output unless ``force`` and it is quantport's own artifact.

    With ``clean`` (a real run; a dry run only checks) also removes stale temporaries of
    ``path`` left by killed runs (see :func:`remove_stale_partials`), freeing their space
    before the conversion starts.

    Raises:
        OutputExistsError: ``path`` exists and ``force`` is false; or ``force`` is true but
            ``path`` is a non-empty directory without a valid manifest, or a file that is not a
            GGUF written by quantport. The message names what is in the way.
    """
    path = Path(path)
    if clean:
        remove_stale_partials(path)
    _check_writable(path, probe=clean)
    if not os.path.lexists(path):
        return
    if not force:
        raise OutputExistsError(f"{path} already exists; pass --force to overwrite it")
    if path.is_dir() and not path.is_symlink():
        _check_dir(path)
    elif not _is_quantport_gguf(path):
        raise _refuse_file(path)


def _check_writable(path: Path, probe: bool = True) -> None:
    """Create and remove a file where ``path``'s temporary will go (its nearest existing
    ancestor directory), so that a read-only or missing location is reported before the work,
    not after it, and under the user's path rather than the temporary's. Without ``probe``
    (a dry run, which changes nothing) only the permission bits are asked (``os.access``)."""
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise QuantportError(f"cannot write {path}: {parent} is not a directory; choose "
                             "another path")
    if not probe:
        if not os.access(parent, os.W_OK | os.X_OK):
            raise QuantportError(f"cannot write {path}: {parent} is not writable; choose "
                                 "another path")
        return
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".probe", dir=parent)
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        raise QuantportError(f"cannot write {path}: {exc.strerror or exc} in {parent}; choose "
                             "another path") from exc


def _disk_error(exc: OSError, path: Path) -> QuantportError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return QuantportError(f"no space left on device while writing {path}; free space and retry")
    return QuantportError(f"cannot write {path}: {exc.strerror or exc}")


def _partial_re(path: Path) -> re.Pattern[str]:
    return re.compile(rf"\.{re.escape(path.name)}\.{_RAND}\.partial")


def _try_lock(fd: int) -> bool | None:
    """Take ``fd``'s exclusive flock without blocking: True taken, False held, None unsupported."""
    if fcntl is None:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    except OSError:
        return None


def remove_stale_partials(path: Path | str) -> list[Path]:
    """Remove ``path``'s temporaries (``.NAME.XXXXXXXX.partial``) whose writer is gone.

    A temporary is stale when its flock can be taken without blocking; one still held by a
    running conversion (in any process) is kept, and so is one whose lock cannot be tested
    (a file system without flock). Each removal is logged as a warning.

    Returns:
        The removed paths.
    """
    path = Path(path)
    parent = path.parent
    pat = _partial_re(path)
    try:
        names = sorted(n for n in os.listdir(parent) if pat.fullmatch(n))
    except OSError:
        return []
    removed: list[Path] = []
    for name in names:
        p = parent / name
        try:
            st = p.lstat()
            is_dir = stat.S_ISDIR(st.st_mode)
            if not (is_dir or stat.S_ISREG(st.st_mode)):
                continue
            fd = os.open(p, os.O_RDONLY | os.O_NOFOLLOW | (os.O_DIRECTORY if is_dir else 0))
        except OSError:
            continue  # gone meanwhile (committed or removed by another run)
        try:
            if not _try_lock(fd):
                continue
            # the name may have been committed and reused between listdir and open
            if os.fstat(fd).st_ino != st.st_ino or p.lstat().st_ino != st.st_ino:
                continue
            size = _tree_size(p) if is_dir else st.st_size
            if is_dir:
                shutil.rmtree(p)
            else:
                p.unlink()
        except OSError:
            continue
        finally:
            os.close(fd)
        log.warning("removed %s (%s), a stale temporary left by an interrupted run",
                    p, _human(size))
        removed.append(p)
    return removed


def _tree_size(p: Path) -> int:
    total = 0
    for dirpath, _, filenames in os.walk(p):
        for f in filenames:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, f)).st_size
    return total


def _human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n} B"  # pragma: no cover


def _locked_temp(path: Path, is_dir: bool) -> tuple[Path, int]:
    """Create ``path``'s temporary and hold its flock; returns (temporary, locked fd).

    A concurrent :func:`remove_stale_partials` could remove the temporary in the instant between
    its creation and the lock; the inode is checked after locking and creation retried.
    """
    prefix, suffix = f".{path.name}.", ".partial"
    for _ in range(100):
        if is_dir:
            tmp = Path(tempfile.mkdtemp(prefix=prefix, suffix=suffix, dir=path.parent))
            try:
                fd = os.open(tmp, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
            except FileNotFoundError:
                continue
        else:
            fd, name = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=path.parent)
            tmp = Path(name)
        try:
            if fcntl is None:
                raise OSError(errno.ENOSYS, "no fcntl module")
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as exc:  # no flock on this file system: write unlocked
            log.debug("cannot lock %s (%s); a kill may leave it behind", tmp, exc)
        try:
            same = tmp.lstat().st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return tmp, fd
        os.close(fd)
    raise QuantportError(f"cannot create a temporary next to {path}")  # pragma: no cover


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


@contextlib.contextmanager
def atomic_file(path: Path | str) -> Iterator[Path]:
    """Yield a temporary path in ``path``'s directory; rename it onto ``path`` on success.

    Stale temporaries of ``path`` are removed first (:func:`remove_stale_partials`); the new one
    is held under flock until it is renamed or removed. An existing ``path`` is replaced by the
    rename itself (atomic: at every instant ``path`` is either the old or the new file); whether
    it may be replaced is :func:`check_output`'s decision, made by the caller beforehand.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(path)
    tmp_path, fd = _locked_temp(path, is_dir=False)
    try:
        # mkstemp creates 0600; give the artifact the permissions a plain open() would
        os.chmod(tmp_path, 0o666 & ~_umask())
        yield tmp_path
        os.replace(tmp_path, path)
    except OSError as exc:
        tmp_path.unlink(missing_ok=True)
        raise _disk_error(exc, path) from exc
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
    finally:
        os.close(fd)


def manifest_text(files: list[str]) -> str:
    """The manifest :func:`atomic_dir` writes for an artifact of these files (relative
    paths), so a plan can know its exact size beforehand."""
    return json.dumps({"quantport_version": _version(), "files": sorted(files)}, indent=1) + "\n"


def _write_manifest(tmp: Path) -> list[str]:
    files = [f for f in _entries(tmp) if f != MANIFEST]
    (tmp / MANIFEST).write_text(manifest_text(files), encoding="utf-8")
    return files


def _aside(path: Path) -> Path:
    """A fresh name beside ``path`` to rename the old artifact to (``.NAME.XXXXXXXX.old``)."""
    d = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
    d.rmdir()  # only the unique name is needed; a non-empty directory cannot be renamed onto it
    return d


def _prune(old: Path, listed: list[str]) -> list[str]:
    """Delete the manifest's files (and the manifest) from ``old``, then its empty directories.

    Returns what is left in ``old`` (nothing, unless something appeared during the swap).
    """
    for rel in [*listed, MANIFEST]:
        p = old / rel
        with contextlib.suppress(FileNotFoundError, IsADirectoryError):
            p.unlink()
    for dirpath, _, _ in os.walk(old, topdown=False):
        with contextlib.suppress(OSError):
            os.rmdir(dirpath)
    return _entries(old) if old.exists() else []


def _commit_dir(tmp: Path, path: Path) -> None:
    new_files = _write_manifest(tmp)
    if not os.path.lexists(path):
        os.replace(tmp, path)
        return
    if not path.is_dir() or path.is_symlink():
        if not _is_quantport_gguf(path):
            raise _refuse_file(path)
        old = _aside(path)  # a directory cannot be renamed onto a file: move the file aside
        os.replace(path, old)
        try:
            os.replace(tmp, path)
        except BaseException:
            os.replace(old, path)
            raise
        old.unlink()
        return
    listed = _check_dir(path)
    foreign = sorted(set(_entries(path)) - set(listed) - {MANIFEST})
    clash = [f for f in foreign if f in set(new_files) or f == MANIFEST]
    if clash:
        raise OutputExistsError(
            f"{path}: --force would overwrite file(s) that quantport did not write: "
            f"{_names(clash)}; move them away or choose another -o"
        )
    old = _aside(path)
    os.replace(path, old)  # from here until the next rename, path is absent
    try:
        os.replace(tmp, path)
    except BaseException:
        os.replace(old, path)  # put the old artifact back: never leave neither
        raise
    # the new artifact is in place; what follows is cleanup and must not report a failure
    try:
        for rel in foreign:
            dst = path / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.replace(old / rel, dst)
        if foreign:
            log.warning("%s: kept %d file(s) that are not part of the replaced artifact: %s",
                        path, len(foreign), _names(foreign))
        left = _prune(old, listed)
    except OSError as exc:
        log.warning("%s: replaced, but cleaning up the old artifact in %s failed: %s",
                    path, old, exc)
        return
    if left:
        log.warning("%s: files not part of the old artifact were left in %s: %s", path, old,
                    _names(left))


@contextlib.contextmanager
def atomic_dir(path: Path | str) -> Iterator[Path]:
    """Yield a temporary directory next to ``path``; move it onto ``path`` on success.

    On success the manifest ``quantport.json`` is written into the directory: the quantport
    version and the relative paths of every file of the artifact (not itself). Stale
    temporaries of ``path`` are removed first; the new one is flock-ed until committed.

    An existing ``path`` (allowed by ``--force``) is replaced only after the new one is complete,
    and only if it is a quantport artifact (see the module docstring): the old directory is
    renamed aside, the new one renamed in (the old is renamed back if that fails), files of the
    old directory that its manifest does not list are moved into the new one and named in a
    warning, and then only the files the old manifest lists are deleted. A foreign file whose
    name the new artifact also uses makes the replacement fail (nothing is changed).

    Raises:
        OutputExistsError: ``path`` is (by now) something quantport may not replace.
        QuantportError: the disk is full or the output cannot be written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(path)
    tmp_path, fd = _locked_temp(path, is_dir=True)
    try:
        os.chmod(tmp_path, 0o777 & ~_umask())
        yield tmp_path
        _commit_dir(tmp_path, path)
    except OSError as exc:
        shutil.rmtree(tmp_path, ignore_errors=True)
        raise _disk_error(exc, path) from exc
    except BaseException:
        shutil.rmtree(tmp_path, ignore_errors=True)
        raise
    finally:
        os.close(fd)
