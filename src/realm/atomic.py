"""Atomic file writes: write beside the target under a temporary name, fsync, rename over the target.

A crash or kill at any point leaves either the old file or the complete new one under the final name,
never a half-written file; readers that already opened (or memory-mapped) the old file keep it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside `path`; when the block finishes, fsync it and rename it to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        fault_point(f"{path.name} written")
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write(path: str | os.PathLike[str], write: Callable[[Path], None]) -> Path:
    """Call `write(tmp_path)` and rename the result to `path`."""
    with atomic_path(path) as tmp:
        write(tmp)
    return Path(path)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_save_npy(path: str | os.PathLike[str], array: np.ndarray) -> Path:
    """`np.save` without pickle, atomically (through a file object: a name without ".npy" stays as given)."""

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.save(f, array, allow_pickle=False)

    return atomic_write(path, write)


@contextmanager
def atomic_directory(final: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary directory beside `final`; on success it replaces `final`.

    An existing `final` is swapped with the new directory in one atomic step where the kernel allows it
    (Linux `renameat2(RENAME_EXCHANGE)`); elsewhere the previous directory is moved aside first and deleted
    after, so a kill leaves a complete directory under `final` or, between the two renames, under
    `.{final.name}.old`.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    os.chmod(tmp, 0o755)
    try:
        yield tmp
        for file in tmp.rglob("*"):  # the data must be on disk before the rename publishes it
            if file.is_file():
                with open(file, "rb") as f:
                    os.fsync(f.fileno())
        if final.exists() and exchange_paths(tmp, final):  # one step; `tmp` now holds the old directory
            return
        old = final.with_name(f".{final.name}.old")
        if old.exists():
            shutil.rmtree(old)
        if final.exists():
            os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


# -- one-step publication of a directory of several files ---------------------------------------------------


_fault_hook: Callable[[str], None] | None = None


def fault_point(step: str) -> None:
    """Called between the steps of every publication; a no-op unless a fault-injection test set
    `_fault_hook` (in a forked child) to kill the process at a chosen step."""
    if _fault_hook is not None:
        _fault_hook(step)


def exchange_paths(a: Path, b: Path) -> bool:
    """Swap two existing paths in one atomic step (Linux `renameat2(RENAME_EXCHANGE)`); False if unsupported."""
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    errno = ctypes.get_errno()
    if errno in (22, 38, 95):  # EINVAL, ENOSYS, EOPNOTSUPP: this filesystem or kernel cannot
        return False
    raise OSError(errno, f"cannot swap {a} and {b}: {os.strerror(errno)}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(final: str | os.PathLike[str]) -> None:
    """Delete `.{name}.tmp-{pid}-*` siblings of `final` left by writers that were killed (their pid is gone)."""
    final = Path(final)
    if not final.parent.is_dir():
        return
    for stale in final.parent.glob(f".{final.name}.tmp-*"):
        pid = stale.name.removeprefix(f".{final.name}.tmp-").split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)


def temporary_sibling(final: str | os.PathLike[str]) -> Path:
    """A fresh hidden name beside `final` that carries this process's id (see `remove_stale_temporaries`)."""
    final = Path(final)
    return final.with_name(f".{final.name}.tmp-{os.getpid()}-{os.urandom(6).hex()}")


@contextmanager
def atomic_update(directory: str | os.PathLike[str]) -> Iterator[Path]:
    """Publish several files of `directory` in one step: readers see all the old files or all the new ones.

    Yields a hidden sibling directory that already holds (hard links to) everything `directory` holds; write
    or replace files in it (replacing, as every `atomic_*` writer here does, never writing into a linked
    file). On success the two directories are swapped in one atomic `renameat2(RENAME_EXCHANGE)` and the
    old one removed. Where the kernel or filesystem cannot swap, the old directory is renamed aside first
    (a kill between the two renames leaves it under `.{name}.old`). Temporaries of killed writers are
    removed by the next update.
    """
    final = Path(directory)
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(final)
    tmp = temporary_sibling(final)
    try:
        if final.is_dir():
            shutil.copytree(final, tmp, copy_function=_link_or_copy, symlinks=True)
        else:
            tmp.mkdir()
        yield tmp
        for file in tmp.rglob("*"):
            if file.is_file() and not file.is_symlink():
                with open(file, "rb") as f:
                    os.fsync(f.fileno())
        fsync_dir(tmp)
        fault_point("update ready")
        if not final.exists():
            os.replace(tmp, final)
        elif exchange_paths(tmp, final):
            fault_point("update exchanged")
        else:
            old = final.with_name(f".{final.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        fsync_dir(final.parent)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def fsync_dir(directory: Path) -> None:
    """Make a rename or a new file in `directory` durable (where the platform has directory fds)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)
