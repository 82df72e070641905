"""The grammar's LALR parser, built once per grammar and kept in a per-user cache.

Building the parser from `arch.lark` takes over 100 ms; loading a built one takes about
10. The cache is a file per grammar in the user's own cache directory
(`$RESDSL_CACHE_DIR`, else `$XDG_CACHE_HOME/resdsl`, else `~/.cache/resdsl`), never a
shared one such as /tmp: lark's own `cache=True` unpickles a file in the temporary
directory, where another user can put one first.

A cached file is used only when the directory and the file are the user's own and
writable by no one else, and when its first line is the key of this grammar, these options,
this lark and this Python; anything else (missing, corrupt, stale, foreign) is ignored and
the parser is built again. Files are written to a temporary name and renamed into place, so
a reader never sees half a file. Without a usable directory nothing is cached.
`RESDSL_CACHE_DIR=""` turns caching off.
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
from pathlib import Path
from typing import Any


def cache_dir() -> Path | None:
    """The per-user cache directory (made, mode 0700, if missing), or None when there is
    none that is safe to use."""
    env = os.environ.get("RESDSL_CACHE_DIR")
    if env is not None:
        if not env:
            return None
        path = Path(env)
    else:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"),
                                                                 ".cache")
        if not os.path.isabs(base):
            return None
        path = Path(base) / "resdsl"
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not _private(os.stat(path)):
            return None
    except OSError:
        return None
    return path


def _private(st: os.stat_result) -> bool:
    """Owned by this user and writable by no one else (always true where there are no
    POSIX owners)."""
    if not hasattr(os, "getuid"):
        return True
    return st.st_uid == os.getuid() and not st.st_mode & 0o022


def key(grammar: str, options: dict[str, Any]) -> str:
    import lark
    text = "\0".join([grammar, repr(sorted(options.items())), lark.__version__,
                      repr(sys.version_info[:2])])
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def cached_lark(grammar: str, **options: Any):
    """`Lark(grammar, **options)` (an LALR parser), from the per-user cache when it holds
    this grammar's, else built and stored there."""
    from lark import Lark
    directory = cache_dir()
    if directory is None:
        return Lark(grammar, **options)
    k = key(grammar, options)
    path = directory / f"parser-{k[:32]}.lark"
    parser = _read(path, k)
    if parser is None:
        parser = Lark(grammar, **options)
        _write(path, k, parser)
    parser.source_grammar = grammar
    return parser


def _read(path: Path, k: str):
    from lark import Lark
    try:
        with open(path, "rb") as f:
            if not _private(os.fstat(f.fileno())):
                return None
            if f.readline() != k.encode("ascii") + b"\n":
                return None
            return Lark.load(f)
    except Exception:  # missing, unreadable or corrupt: build it again
        return None


def _write(path: Path, k: str, parser) -> None:
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=".parser-", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            f.write(k.encode("ascii") + b"\n")
            parser.save(f)
        os.replace(tmp, path)
        tmp = None
    except Exception:  # a cache that cannot be written is only slower
        pass
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
