"""The values of the language and the environments they live in.

A *value* is a number, bool, string, list, dict, a `Tensor` (an IR node's output) or a
`BlockRef` (a block used as a value, e.g. passed as a parameter). A `ModuleEnv` holds the
definitions one file sees; a `Frame` is one block or model body being executed.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any

from resdsl.errors import ResdslError
from resdsl.ir.ops import fmt
from resdsl.limits import float_bad, int_out_of_range
from resdsl.syntax import ast as A
from resdsl.syntax.parser import BlockName


@dataclass(frozen=True)
class Tensor:
    """A value that is the output of an IR node."""

    node: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class BlockRef:
    """A block (or model) used as a value, e.g. passed as a parameter: `resnet(basic, ...)`."""

    defn: A.BlockDef | A.ModelAlias
    module: "ModuleEnv"


@dataclass
class ModuleEnv:
    """The names visible in one file: its own definitions and those of its `use`s."""

    path: str
    defs: dict[str, A.BlockDef | A.ModelAlias] = field(default_factory=dict)
    envs: dict[str, "ModuleEnv"] = field(default_factory=dict)  # name -> defining module
    local: list[str] = field(default_factory=list)  # names defined in this file, in order

    def lookup(self, name: str) -> BlockRef | None:
        d = self.defs.get(name)
        return BlockRef(d, self.envs[name]) if d is not None else None


@dataclass
class Frame:
    """One block or model body being executed."""

    module: ModuleEnv
    vars: dict[str, Any]
    namer: Any   # naming.Namer
    body: tuple[A.Stmt, ...]
    block: str
    used: set[str] = field(default_factory=set)
    stmt_index: int = 0
    scope: str = ""  # the block instance path, e.g. "layer1.0"


def is_model(defn) -> bool:
    """Whether a definition is a model (not a block)."""
    return isinstance(defn, A.ModelAlias) or (isinstance(defn, A.BlockDef) and defn.is_model)


def kind(v: Any) -> str:
    """A value as an error message names it: `a tensor [64, 8, 8]`, `the number 3`."""
    if isinstance(v, Tensor):
        return f"a tensor {fmt(v.shape)}"
    if isinstance(v, bool):
        return "a bool"
    if isinstance(v, (int, float)):
        return f"the number {v}"
    if isinstance(v, str):
        return f"the string \"{v}\""
    if isinstance(v, list):
        return "a list"
    if isinstance(v, dict):
        return "a `{...}` of overrides"
    if isinstance(v, BlockRef):
        return f"the block `{v.defn.name}`"
    return type(v).__name__


def suggest(name: str, candidates) -> str | None:
    """`did you mean ...?` for the closest candidate, if one is close."""
    close = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.7)
    return f"did you mean `{close[0]}`?" if close else None


class Required:
    """The marker of an option that has no default."""

    def __repr__(self) -> str:
        return "<required>"


REQUIRED = Required()


def check_value(v: Any, what: str, depth: int = 0) -> Any:
    """A parameter value given from outside the spec (-D, params=): numbers in range,
    bools, strings, and lists/dicts of them."""
    ok = isinstance(v, bool | str | BlockName) or (isinstance(v, int | float) and not
                                       (int_out_of_range(v) or float_bad(v)))
    if isinstance(v, list) and depth < 8:
        return [check_value(x, what, depth + 1) for x in v]
    if isinstance(v, dict) and depth < 8 and all(isinstance(k, str) for k in v):
        return {k: check_value(x, what, depth + 1) for k, x in v.items()}
    if not ok:
        shown = repr(v)
        raise ResdslError(f"parameter `{what}`: {shown[:40]}{'...' if len(shown) > 40 else ''}"
                          " is not a value a spec can hold",
                          hint="give a finite number below 2**63, true/false, or a string")
    return v


def resolve_blocks(v: Any, module: ModuleEnv, what: str) -> Any:
    """Block names in an outside parameter value (`-D unit=bottleneck`, or the string
    "bottleneck" from Python where the spec has such a block) -> the block."""
    if isinstance(v, list):
        return [resolve_blocks(x, module, what) for x in v]
    if isinstance(v, dict):
        return {k: resolve_blocks(x, module, what) for k, x in v.items()}
    if isinstance(v, BlockName) or (isinstance(v, str) and module.lookup(v) is not None):
        name = v.name if isinstance(v, BlockName) else v
        ref = module.lookup(name)
        if ref is None:
            s = suggest(name, module.defs)
            raise ResdslError(f"parameter `{what}`: no block named `{name}`",
                              hint=(s + " " if s else "") + "strings are written in quotes: "
                                   f'-D {what}=\'"text"\'')
        return ref
    return v
