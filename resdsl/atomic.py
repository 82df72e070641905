"""Atomic, no-replace publication of outputs.

An output appears whole or not at all, never half-written; and unless the caller asks to
replace (`force=True`, the CLI's --force), an output is published only if nothing is at
its path at the moment of publication -- not merely when the command started. Two
commands writing one path at once: exactly one wins, the other gets FileExistsError.

- files: written to a temporary file beside the target, then `os.link`ed to the target
  (the kernel refuses with EEXIST if anything is there) and the temporary name removed;
  with `force`, `os.replace` as before.
- directories: built beside the target, then renamed with renameat2(RENAME_NOREPLACE)
  (Linux), falling back to `os.rename`, which refuses a non-empty target.
"""

from __future__ import annotations

import ctypes
import errno
import os
import tempfile
from pathlib import Path


def umask_mode(mode: int = 0o666) -> int:
    """`mode` as the process umask would leave it for a newly created file."""
    mask = os.umask(0)
    os.umask(mask)
    return mode & ~mask


def _exists_error(path: str | os.PathLike) -> FileExistsError:
    return FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(path))


_AT_FDCWD = -100
_RENAME_NOREPLACE = 1
_renameat2 = None


def _libc_renameat2():
    global _renameat2
    if _renameat2 is None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fn = libc.renameat2
            fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                           ctypes.c_uint]
            fn.restype = ctypes.c_int
            _renameat2 = fn
        except (OSError, AttributeError):
            _renameat2 = False
    return _renameat2


def rename_noreplace(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Rename `src` to `dst`, failing with FileExistsError if `dst` exists (also if it
    appears concurrently). Linux: renameat2(RENAME_NOREPLACE); elsewhere, or where the
    file system does not support it, os.rename (which still refuses a non-empty
    directory as target, and for a file checks first: not race-free there)."""
    fn = _libc_renameat2()
    if fn:
        res = fn(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), _RENAME_NOREPLACE)
        if res == 0:
            return
        err = ctypes.get_errno()
        if err == errno.EEXIST:
            raise _exists_error(dst)
        if err not in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EPERM):
            raise OSError(err, os.strerror(err), str(dst))
    if os.path.isdir(src):
        if os.path.lexists(dst) and not os.path.isdir(dst):
            raise _exists_error(dst)
        try:
            os.rename(src, dst)     # refuses a non-empty directory target
        except OSError as e:
            if e.errno in (errno.EEXIST, errno.ENOTEMPTY):
                raise _exists_error(dst) from None
            raise
        return
    if os.path.lexists(dst):
        raise _exists_error(dst)
    os.rename(src, dst)


def publish_file(tmp: str | os.PathLike, target: str | os.PathLike,
                 force: bool = False) -> None:
    """Move the finished file `tmp` to `target` (same directory). Without `force`,
    FileExistsError if anything is at `target`; `tmp` is removed either way."""
    try:
        if force:
            os.replace(tmp, target)
            return
        try:
            os.link(tmp, target)
        except FileExistsError:
            raise _exists_error(target) from None
        except OSError as e:   # no hard links on this file system
            if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK,
                               errno.ENOSYS):
                raise
            rename_noreplace(tmp, target)
    finally:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass


def write_bytes(path: str | os.PathLike, data: bytes, force: bool = True) -> None:
    """Write `data` to `path` through a temporary file in the same directory. With
    `force` (the default, as before) replace what is there atomically; without, raise
    FileExistsError if anything is at `path` when the file is published."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, umask_mode())
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    publish_file(tmp, target, force=force)


def write_text(path: str | os.PathLike, text: str, force: bool = True) -> None:
    write_bytes(path, text.encode("utf-8"), force=force)


def publish_dir(tmp: str | os.PathLike, target: str | os.PathLike, force: bool = False,
                replaceable=None) -> None:
    """Move the finished directory `tmp` to `target`. Without `force`, FileExistsError
    if anything is at `target`. With `force`, an existing directory is replaced -- if
    `replaceable(target)` says it may be (else FileExistsError) -- by swapping it out
    and removing it after the new one is in place."""
    import shutil
    if not force:
        rename_noreplace(tmp, target)
        return
    target = Path(target)
    if os.path.lexists(target):
        if replaceable is not None and not replaceable(target):
            raise _exists_error(target)
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=target.parent))
        try:
            os.replace(target, old / "a")
        except FileNotFoundError:
            pass
        try:
            rename_noreplace(tmp, target)
        except BaseException:
            if os.path.lexists(old / "a") and not os.path.lexists(target):
                os.replace(old / "a", target)     # put the old one back
            raise
        finally:
            shutil.rmtree(old, ignore_errors=True)
    else:
        rename_noreplace(tmp, target)
