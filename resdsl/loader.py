"""Files -> module environments: `use` resolution, name clashes, choosing the model.

`use "lib/resnet.arch"` is resolved relative to the file that says it and must stay
inside the spec tree (the directory of the file the user loaded). A used file brings
every name it defines, and those it uses itself. Each file is parsed once per load.
"""

from __future__ import annotations

import os
from pathlib import Path

from resdsl.elaborate import BlockRef, ModuleEnv, _is_model
from resdsl.errors import ResdslError, Span
from resdsl.syntax import ast as A
from resdsl.syntax.parser import parse


class Loader:
    def __init__(self, root_dir: Path) -> None:
        self.root_dir = root_dir.resolve()
        self.cache: dict[Path, ModuleEnv] = {}
        self.stack: list[Path] = []

    def load_text(self, text: str, path: str, real: Path | None) -> tuple[ModuleEnv, A.Module]:
        module = parse(text, path)
        env = ModuleEnv(path)
        if real is not None:
            self.stack.append(real)
        try:
            for item in module.items:
                if isinstance(item, A.Use):
                    self.import_into(env, item, Path(path).parent if real is None
                                     else real.parent)
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

    def import_into(self, env: ModuleEnv, use: A.Use, base: Path) -> None:
        target = (base / use.path).resolve()
        if not _inside(target, self.root_dir):
            raise ResdslError(f"`use \"{use.path}\"` leaves the spec tree "
                              f"({_rel(self.root_dir)})",
                              use.span, hint="shared block libraries must live in the "
                                             "directory of the spec or below it")
        if target in self.stack:
            chain = " -> ".join(os.path.relpath(p, self.root_dir)
                                for p in self.stack[self.stack.index(target):] + [target])
            raise ResdslError(f"cyclic `use`: {chain}", use.span,
                              hint="move the shared blocks into a library both files use")
        if target not in self.cache:
            if not target.is_file():
                raise ResdslError(f"cannot find `{use.path}` (looked for {_rel(target)})", use.span,
                                  hint="`use` paths are relative to the file that uses them")
            text = target.read_text(encoding="utf-8")
            shown = os.path.relpath(target) if not os.path.isabs(use.path) else str(target)
            self.cache[target], _ = self.load_text(text, shown, target)
        sub = self.cache[target]
        for name, defn in sub.defs.items():
            self.define(env, name, defn, sub.envs[name], use.span)


def _rel(path: Path) -> str:
    """A path as the user would write it from the current directory."""
    rel = os.path.relpath(path)
    return rel if not rel.startswith("../../..") else str(path)


def _inside(path: Path, root: Path) -> bool:
    try:
        path.relative_to(root)
        return True
    except ValueError:
        return False


def choose_model(env: ModuleEnv, module: A.Module, name: str | None) -> BlockRef:
    """The model to elaborate: the named one, or the only one the file itself defines."""
    local_models = [n for n in env.local if _is_model(env.defs[n])]
    if name is not None:
        ref = env.lookup(name)
        if ref is None or not _is_model(ref.defn):
            known = sorted(n for n in env.defs if _is_model(env.defs[n]))
            raise ResdslError(f"{module.source.path}: no model named `{name}`",
                              hint=f"models here: {', '.join(known) or 'none'}")
        return ref
    if len(local_models) == 1:
        return env.lookup(local_models[0])  # type: ignore[return-value]
    eof = _file_span(module)
    if not local_models:
        raise ResdslError("this file defines no model", eof,
                          hint="add `model name(...) { input [3, 224, 224] ... }`, or "
                               "`model name = other_model(...)` for a model from a `use`d file")
    raise ResdslError(f"this file defines {len(local_models)} models "
                      f"({', '.join(local_models)}); say which one", eof,
                      hint="pass --model NAME (or model=NAME from Python)")


def _file_span(module: A.Module) -> Span:
    return Span(module.source, 1, 1, 1, 2)
