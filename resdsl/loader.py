"""Files -> module environments: reading spec files, `use` resolution, choosing the model.

Every spec file resdsl opens goes through this module, and `use` can only reach files
inside an explicit set of *roots* (docs/language.md, "use"):

1. the entry spec's directory (or the root the caller names: `root=` / `--root`),
2. the library directories the caller names (`lib=[...]`, `--lib DIR`, `RESDSL_PATH`),
3. resdsl's bundled library (the reference specs and their `lib/`).

`use "lib/resnet.arch"` is looked up relative to the file that says it, then relative
to each root in that order. Absolute paths are refused, and so is any path that
resolves (after symlinks) outside every root: such a file is never opened, so nothing
of it can show up in an error. Only regular files of at most `Limits.max_source_bytes`
bytes, in UTF-8, are read.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from resdsl.elaborate import BlockRef, ModuleEnv, is_model
from resdsl.errors import ResdslError, Source, Span
from resdsl.limits import DEFAULT, Limits
from resdsl.syntax import ast as A
from resdsl.syntax.parser import parse

SUFFIX = ".arch"


def bundled_library() -> Path | None:
    """The reference specs shipped with resdsl (their `lib/` holds the block libraries)."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "specs", here.parent / "specs"):
        if candidate.is_dir():
            return candidate
    return None


def search_roots(root: str | os.PathLike | None, lib=None) -> list[Path]:
    """The roots `use` may reach, in lookup order: `root`, then `lib` and the
    directories of `RESDSL_PATH`, then the bundled library. Duplicates are dropped."""
    out: list[Path] = []
    env = [p for p in os.environ.get("RESDSL_PATH", "").split(os.pathsep) if p]
    for d in [root, *(lib or []), *env, bundled_library()]:
        if d is None:
            continue
        p = Path(d).resolve()
        if p.is_dir() and p not in out:
            out.append(p)
    return out


def read_spec(path: str | os.PathLike, limits: Limits = DEFAULT,
              span: Span | None = None, shown: str | None = None,
              budget: int | None = None) -> str:
    """The text of a spec file: a regular file of at most `budget` bytes (default
    `limits.max_source_bytes`), UTF-8. Errors point at `span` (the `use` that asked for
    it) when there is one."""
    name = shown or str(path)
    budget = limits.max_source_bytes if budget is None else budget
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise ResdslError(f"{name}: no such file", span,
                          hint="give the path of an .arch spec, e.g. specs/resnet50.arch") \
            from None
    except (OSError, ValueError) as err:
        why = getattr(err, "strerror", None) or str(err)
        raise ResdslError(f"{name[:200]}: cannot open it ({why})", span) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            what = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file"
            raise ResdslError(f"{name}: {what}; a spec is a regular .arch file", span)
        if st.st_size > budget:
            raise ResdslError(f"{name}: {st.st_size:,} bytes, more than the specs of one "
                              f"load may have ({limits.max_source_bytes:,} in all)", span,
                              hint=limits.describe("max_source_bytes"))
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(budget + 1)
    finally:
        os.close(fd)
    if len(data) > budget:
        raise ResdslError(f"{name}: more than the specs of one load may have "
                          f"({limits.max_source_bytes:,} bytes in all)", span,
                          hint=limits.describe("max_source_bytes"))
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        before = data[:err.start]
        line = before.count(b"\n") + 1
        col = len(before[before.rfind(b"\n") + 1:].decode("utf-8", "replace")) + 1
        raise ResdslError(f"{name}:{line}:{col}: byte 0x{data[err.start]:02x} is not UTF-8 "
                          "text", span, hint="a spec is a UTF-8 text file") from None


class Loader:
    """Loads one entry spec and the files it `use`s, confined to `roots`."""

    def __init__(self, roots: list[Path], limits: Limits = DEFAULT) -> None:
        self.roots = [r.resolve() for r in roots]
        self.limits = limits
        self.cache: dict[Path, ModuleEnv] = {}
        self.stack: list[Path] = []
        self.source_bytes = 0  # read so far, against limits.max_source_bytes

    def load_text(self, text: str, path: str, real: Path | None) -> tuple[ModuleEnv, A.Module]:
        """Parse `text` (the file `path`, whose resolved location is `real`, if it is a
        file) and import what it uses."""
        self.source_bytes += len(text.encode("utf-8", "surrogatepass"))
        if self.source_bytes > self.limits.max_source_bytes:
            raise ResdslError(f"{path}: the specs of this load are more than "
                              f"{self.limits.max_source_bytes:,} bytes in all",
                              hint=self.limits.describe("max_source_bytes"))
        module = parse(text, path, self.limits)
        env = ModuleEnv(path)
        if real is not None:
            self.stack.append(real)
        try:
            for item in module.items:
                if isinstance(item, A.Use):
                    self.import_into(env, item, None if real is None else real.parent)
                else:
                    self.define(env, item.name, item, env, item.name_span)
                    env.local.append(item.name)
        finally:
            if real is not None:
                self.stack.pop()
        return env, module

    def define(self, env: ModuleEnv, name: str, defn, owner: ModuleEnv, span: Span) -> None:
        old = env.defs.get(name)
        if old is not None and old is not defn:
            where = old.name_span
            raise ResdslError(f"`{name}` is defined twice (first at {where})", span,
                              hint="rename one of them; names are shared across `use`d files")
        env.defs[name] = defn
        env.envs[name] = owner

    def resolve(self, use: A.Use, base: Path | None) -> Path:
        """The file a `use` names: relative to the using file, then to each root; never
        outside the roots: a file outside them is never opened, whether it exists or not."""
        text = use.path
        if not text or "\x00" in text:
            raise ResdslError("`use` needs a file path", use.span,
                              hint='e.g. use "lib/resnet.arch"')
        rel = Path(text)
        if rel.is_absolute() or text.startswith(("~", "\\")) or (len(text) > 1 and
                                                                  text[1] == ":"):
            raise ResdslError(f"`use \"{text}\"`: absolute paths are not allowed", use.span,
                              hint="name the file relative to the spec (or to a library "
                                   "directory given with --lib); `use` never leaves them")
        if rel.name in ("", ".", "..") or text.endswith(("/", "\\")):
            raise ResdslError(f"`use \"{text[:100]}\"` names a directory, not a file",
                              use.span, hint='e.g. use "lib/resnet.arch"')
        if rel.suffix == "":
            rel = rel.with_name(rel.name + SUFFIX)
        if rel.suffix != SUFFIX:
            raise ResdslError(f"`use \"{text}\"`: only {SUFFIX} files can be used", use.span,
                              hint=f"a block library is an {SUFFIX} file")
        bases = ([base] if base is not None else []) + self.roots
        for b in bases:
            try:
                target = (b / rel).resolve()
                inside = any(_inside(target, r) for r in self.roots)
                found = inside and target.is_file()
            except (OSError, RuntimeError, ValueError) as err:
                why = getattr(err, "strerror", None) or str(err)
                raise ResdslError(f"`use \"{text[:100]}\"`: cannot resolve it ({why})",
                                  use.span, hint="name an .arch file below the spec's "
                                                 "directory") from None
            if not inside:
                if b is base:
                    raise ResdslError(f"`use \"{text[:100]}\"` leaves the directories specs may "
                                      f"be used from ({self._roots_text()})", use.span,
                                      hint="`use` reaches only files below the spec's own "
                                           "directory, a --lib directory (RESDSL_PATH) or "
                                           "resdsl's bundled library; symlinks out are "
                                           "refused too")
                continue
            if found:
                return target
        looked = f" (looked for {_rel(base / rel)})" if base is not None else ""
        raise ResdslError(f"cannot find `{text}`{looked}", use.span,
                          hint=f"`use` paths are relative to the file that uses them, then "
                               f"to {self._roots_text()}")

    def _roots_text(self) -> str:
        return ", ".join(_rel(r) for r in self.roots) or "none"

    def import_into(self, env: ModuleEnv, use: A.Use, base: Path | None) -> None:
        target = self.resolve(use, base)
        if target in self.stack:
            base_dir = self.roots[0] if self.roots else Path.cwd()
            chain = " -> ".join(os.path.relpath(p, base_dir)
                                for p in self.stack[self.stack.index(target):] + [target])
            raise ResdslError(f"cyclic `use`: {chain}", use.span,
                              hint="move the shared blocks into a library both files use")
        if target not in self.cache:
            if len(self.cache) >= self.limits.max_files:
                raise ResdslError(f"more than {self.limits.max_files} files are used",
                                  use.span, hint=self.limits.describe("max_files"))
            shown = _rel(target)
            text = read_spec(target, self.limits, use.span, shown,
                             budget=self.limits.max_source_bytes - self.source_bytes)
            self.cache[target], _ = self.load_text(text, shown, target)
        sub = self.cache[target]
        for name, defn in sub.defs.items():
            self.define(env, name, defn, sub.envs[name], use.span)


def _rel(path: Path) -> str:
    """A path as the user would write it from the current directory."""
    rel = os.path.relpath(path)
    return rel if not rel.startswith("../../..") else str(path)


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def choose_model(env: ModuleEnv, module: A.Module, name: str | None) -> BlockRef:
    """The model to elaborate: the named one, or the only one the file itself defines."""
    local_models = [n for n in env.local if is_model(env.defs[n])]
    if name is not None:
        ref = env.lookup(name)
        if ref is None or not is_model(ref.defn):
            known = sorted(n for n in env.defs if is_model(env.defs[n]))
            shown = ", ".join(known[:20]) + (", ..." if len(known) > 20 else "")
            raise ResdslError(f"{module.source.path}: no model named `{name[:100]}`",
                              hint=f"models here: {shown or 'none'}")
        return ref
    if len(local_models) == 1:
        return env.lookup(local_models[0])  # type: ignore[return-value]
    eof = _file_span(module)
    if not local_models:
        raise ResdslError("this file defines no model", eof,
                          hint="add `model name(...) { input [3, 224, 224] ... }`, or "
                               "`model name = other_model(...)` for a model from a `use`d file")
    shown = ", ".join(local_models[:20]) + (", ..." if len(local_models) > 20 else "")
    raise ResdslError(f"this file defines {len(local_models)} models ({shown}); say which "
                      "one", eof, hint="pass --model NAME (or model=NAME from Python)")


def _file_span(module: A.Module) -> Span:
    return Span(module.source, 1, 1, 1, 2)


__all__ = ["Loader", "Source", "bundled_library", "choose_model", "read_spec",
           "search_roots"]
