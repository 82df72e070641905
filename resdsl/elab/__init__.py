"""AST + parameters -> graph IR: blocks expanded, stages unrolled, names given, shapes known.

Shapes are inferred as nodes are created, because a block may ask for its input's
shape (`in.c`) and `shortcut(...)` decides between identity and projection by shape.
`passes.shapes.validate` re-checks the finished graph independently.

The package, one job per module (docs/language.md has the language's full story):

- `values`: the values (`Tensor`, `BlockRef`, numbers, ...), `ModuleEnv`, `Frame`;
- `builder`: the graph being built, with the limits' totals;
- `naming`: automatic names, labels, `name=` templates;
- `expressions`: evaluating value expressions;
- `layers`: layer expressions as values (`layer_of`), applying them, ops and blocks;
- `combinators`: stage, dense, paths, shortcut.

>>> import resdsl
>>> g = resdsl.loads("model m() {\\n input [3, 8, 8]\\n c: conv(4, k=3, p=1) -> relu\\n}").graph
>>> [(n, d["shape"]) for n, d in g.nodes(data=True)]
[('input', (3, 8, 8)), ('c', (4, 8, 8)), ('relu', (4, 8, 8))]
"""

from __future__ import annotations

from typing import Any

from resdsl.elab.builder import Builder
from resdsl.elab.combinators import Combinators
from resdsl.elab.expressions import Expressions
from resdsl.elab.layers import Layers
from resdsl.syntax import ast as A
from resdsl.elab.values import (BlockRef, ModuleEnv, Tensor, check_value, is_model,
                                resolve_blocks)
from resdsl.errors import ResdslError, Span
from resdsl.ir.graph import IRGraph
from resdsl.limits import DEFAULT, Limits

__all__ = ["BlockRef", "Builder", "Elaborator", "ModuleEnv", "Tensor", "check_value",
           "elaborate", "is_model"]


class Elaborator(Expressions, Layers, Combinators):
    """Runs a model definition and produces its IR graph; each part of the language is
    a base class in its own module."""

    def __init__(self, builder: Builder) -> None:
        self.b = builder
        self.depth = 0
        self.steps = 0
        self.max_steps = builder.limits.max_steps

    def step(self, span: Span) -> None:
        """Count one unit of elaboration work; refuse to go past the limit (a spec can
        ask for unbounded work that creates no layers, e.g. blocks that return `in`)."""
        self.steps += 1
        if self.steps > self.max_steps:
            raise ResdslError(f"elaboration takes more than {self.max_steps:,} steps", span,
                              hint="check the repeat counts (`n=`) and nested blocks; "
                                   + self.b.limits.describe("max_steps"))


def elaborate(ref: BlockRef, params: dict[str, Any] | None = None,
              limits: Limits = DEFAULT) -> IRGraph:
    """Elaborate the model `ref` with parameter overrides into an IR graph (an IRGraph:
    `Arch.graph` is its networkx form)."""
    builder = Builder(ref.defn.name, limits)
    el = Elaborator(builder)
    span = ref.defn.name_span
    # a string given for a parameter whose default is a string stays a string (`attn="se"`
    # where the spec also has a block `se`); elsewhere a string naming a block is the block
    textual = {p.name for p in (getattr(ref.defn, "params", None) or ())
               if isinstance(p.default, A.Str)}
    params = {str(k): check_value(v, str(k)) if str(k) in textual and isinstance(v, str)
              else resolve_blocks(check_value(v, str(k)), ref.module, str(k))
              for k, v in (params or {}).items()}
    args = [(k, v, span) for k, v in params.items()]
    out = el.run_model(ref, args, span)
    builder.g.graph["name"] = ref.defn.name
    builder.g.graph["outputs"] = [out.node]
    builder.g.graph["params"] = {k: v for k, v in (params or {}).items()}
    return builder.g
