"""Dotted layer names: automatic names within a scope, labels, and `name=` templates."""

from __future__ import annotations

import re
from typing import Any, Callable

from resdsl.errors import ResdslError, Span
from resdsl.syntax import ast as A
from resdsl.syntax.parser import parse_expression


class Namer:
    """Hands out dotted names inside one scope.

    In a plain scope an unnamed layer is called after its op (`relu`, `relu_1`, ...);
    in a labelled group it is numbered by position, as nn.Sequential numbers modules.
    """

    def __init__(self, prefix: str, sequential: bool = False) -> None:
        self.prefix = prefix
        self.sequential = sequential
        self.counts: dict[str, int] = {}
        self.position = 0

    def full(self, local: str) -> str:
        return f"{self.prefix}.{local}" if self.prefix else local

    def auto(self, base: str, taken) -> str:
        if self.sequential:
            return self.full(str(self.position))
        k = self.counts.get(base, 0)
        while True:
            local = base if k == 0 else f"{base}_{k}"
            k += 1
            if self.full(local) not in taken:
                self.counts[base] = k
                return self.full(local)

    def snapshot(self) -> tuple:
        return dict(self.counts), self.position

    def restore(self, snap: tuple) -> None:
        self.counts, self.position = dict(snap[0]), snap[1]


def name_template(text: Any, span: Span, kind: Callable[[Any], str],
                  evaluate: Callable[[A.Expr, int], Any]) -> Callable[[int], str]:
    """A combinator's `name` option ("denselayer{i+1}") as a function of the repetition
    `i`; `evaluate(expr, i)` evaluates one `{...}` part."""
    if not isinstance(text, str):
        raise ResdslError(f"`name` must be a string template such as \"{{i}}\", "
                          f"got {kind(text)}", span)
    parts = re.split(r"(\{[^{}]*\})", text)
    exprs = [(p, parse_expression(p[1:-1], span) if p.startswith("{") else None)
             for p in parts]

    def name(i: int) -> str:
        out = "".join(str(evaluate(x, i)) if x is not None else p for p, x in exprs)
        if not re.fullmatch(r"[A-Za-z0-9_]+", out):
            raise ResdslError(f"name template gives `{out}`, not a plain name", span,
                              hint="names are letters, digits and `_`")
        return out
    return name
