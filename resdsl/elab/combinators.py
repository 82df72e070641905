"""The combinators: `stage` (a block repeated, the first differing), `dense` (each layer
reads all earlier outputs), `paths` (n parallel paths merged) and `shortcut` (the
identity when shapes agree, else the projection).

Repeat counts are checked against the limits before unrolling, and again, at the cost of
the first repetitions, before the rest are done.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from resdsl.elab.naming import Namer, name_template
from resdsl.elab.values import REQUIRED, Frame, Tensor, kind, suggest
from resdsl.errors import ResdslError, Span
from resdsl.ir.ops import OPS
from resdsl.syntax import ast as A

# name -> an example, quoted by error hints
EXAMPLES = {
    "stage": "stage(bottleneck(64), n=3, first={stride: 2}, each={drop: 0.1 * i / 2})",
    "dense": "dense(dense_layer(32), n=6, name=\"denselayer{i+1}\")",
    "paths": "paths(path(4), n=32, merge=\"sum\")",
    "shortcut": "shortcut(downsample: (conv(256, k=1, s=2) -> bn))",
}
COMBINATORS = tuple(EXAMPLES)


def downsamples(node: dict) -> bool:
    """Whether an IR node reduces the spatial size (a stride other than 1)."""
    stride = OPS[node["op"]].stride
    return stride is not None and stride(node["attrs"]) != 1


class Combinators:
    """The combinators (a part of `Elaborator`); `combinator(name)` is the method."""

    def combinator(self, name: str):
        return getattr(self, name)

    def comb_args(self, e: A.Call, frame: Frame, allowed: dict[str, Any]) -> tuple:
        if not e.args or e.args[0].name is not None:
            raise ResdslError(f"`{e.name}` needs a layer as its first argument", e.span,
                              hint=f"e.g. `{EXAMPLES[e.name]}`")
        unit = e.args[0].value
        opts = dict(allowed)
        seen = set()
        for a in e.args[1:]:
            if a.name is None:
                raise ResdslError(f"`{e.name}` takes its options by name "
                                  f"({', '.join(allowed)})", a.span,
                                  hint=f"e.g. `{EXAMPLES[e.name]}`")
            if a.name not in allowed:
                s = suggest(a.name, allowed)
                raise ResdslError(f"`{e.name}` has no option `{a.name}`", a.span,
                                  hint=(s + " " if s else "") +
                                  f"its options are ({', '.join(allowed)})")
            if a.name in seen:
                raise ResdslError(f"option `{a.name}` of `{e.name}` is given twice", a.span)
            seen.add(a.name)
            opts[a.name] = (self.eval(a.value, frame), a.span)
        for k, v in opts.items():
            if v is REQUIRED:
                raise ResdslError(f"`{e.name}` needs its option `{k}`", e.span,
                                  hint=f"e.g. `{EXAMPLES[e.name]}`")
            if not isinstance(v, tuple):
                opts[k] = (v, e.span)
        return unit, opts

    def count(self, opts, key: str, what: str) -> int:
        """A repeat count, refused before unrolling if it alone passes the layer limit."""
        v, span = opts[key]
        n = self.coerce(v, int, span, f"`{what}` option `{key}`")
        if n < 1:
            raise ResdslError(f"`{what}` needs {key} >= 1, got {n}", span)
        self.b.room(n, 0, span, f"{key}={n}")
        return n

    def predict(self, opts, done: int, n: int, mark: int, steps0: int, edges0: int,
                what: str) -> None:
        """After `done` of `n` repetitions, refuse the rest if, at the cost of the last
        one, they would pass the limits (checked before doing them)."""
        if done >= n:
            return
        layers = len(self.b.added) - mark
        steps = self.steps - steps0
        edges = self.b.edges - edges0
        left = n - done
        span = opts["n"][1]
        self.b.room(layers * left, edges * left, span, f"{what} with n={n}")
        if self.steps + steps * left > self.max_steps:
            raise ResdslError(f"{what} with n={n} would take more than {self.max_steps:,} "
                              "elaboration steps", span,
                              hint="check the repeat count; "
                                   + self.b.limits.describe("max_steps"))

    def template(self, opts, frame: Frame):
        text, span = opts["name"]

        def evaluate(x: A.Expr, i: int) -> Any:
            sub = Frame(frame.module, {**frame.vars, "i": i}, frame.namer, (), frame.block,
                        scope=frame.scope)
            return self.eval(x, sub)
        return name_template(text, span, kind, evaluate)

    def scope_frame(self, frame: Frame, label: str | None, label_span: Span | None,
                    base: str, span: Span) -> tuple[Frame, str]:
        prefix = self.claim(frame, label, label_span) if label is not None else \
            self.name_for(frame, None, base, span)
        sub = Frame(frame.module, frame.vars, Namer(prefix), frame.body, frame.block,
                    frame.used, frame.stmt_index, frame.scope)
        return sub, prefix

    def stage(self, e: A.Call, x: Tensor, frame: Frame, label, label_span) -> Tensor:
        each = [a for a in e.args if a.name == "each"]
        if each:   # evaluated per repetition, with `i` bound: not by comb_args
            e = dataclasses.replace(e, args=tuple(a for a in e.args if a.name != "each"))
        if len(each) > 1:
            raise ResdslError("option `each` of `stage` is given twice", each[1].span)
        if each and not isinstance(each[0].value, A.DictE):
            raise ResdslError("`each` must be written `{param: expression of i, ...}`",
                              each[0].value.span,
                              hint="e.g. `each={drop: rate * i / (n - 1)}`; i counts from 0")
        unit, opts = self.comb_args(e, frame, {"n": REQUIRED, "first": {}, "each": {},
                                               "name": "{i}"})
        n = self.count(opts, "n", "stage")
        first, first_span = opts["first"]
        if not isinstance(first, dict):
            raise ResdslError(f"`first` must be `{{param: value, ...}}`, got {kind(first)}",
                              first_span)
        name = self.template(opts, frame)
        sub, _ = self.scope_frame(frame, label, label_span, "stage", e.span)
        for i in range(n):
            mark, steps, edges = len(self.b.added), self.steps, self.b.edges
            overrides = dict(first) if i == 0 else {}
            if each:
                at = Frame(frame.module, {**frame.vars, "i": i}, frame.namer, (), frame.block,
                           scope=frame.scope)
                overrides.update({k: self.eval(v, at) for k, v, _ in each[0].value.items})
            x = self.apply(A.Labeled(name(i), unit, unit.span, unit.span), x, sub,
                           overrides=overrides or None)
            if i == 1 or (i == 0 and not first):
                self.predict(opts, i + 1, n, mark, steps, edges, "stage")
        return x

    def dense(self, e: A.Call, x: Tensor, frame: Frame, label, label_span) -> Tensor:
        unit, opts = self.comb_args(e, frame, {"n": REQUIRED, "name": "{i}"})
        n = self.count(opts, "n", "dense")
        name = self.template(opts, frame)
        sub, prefix = self.scope_frame(frame, label, label_span, "dense", e.span)
        features = [x]
        cat = OPS["concat"]
        # layer i reads a concatenation of i + 1 tensors: n * (n + 3) / 2 edges in all
        self.b.room(n, n * (n + 3) // 2, opts["n"][1], f"dense with n={n}")
        for i in range(n):
            mark, steps, edges = len(self.b.added), self.steps, self.b.edges
            local = name(i)
            inp = features[0] if i == 0 else self.b.add(
                f"{prefix}.{local}.cat", cat, cat.attrs(), list(features), e.span, prefix,
                "dense")
            features.append(self.apply(A.Labeled(local, unit, unit.span, unit.span), inp, sub))
            if i == 0:
                self.predict(opts, 1, n, mark, steps, edges, "dense")
        return self.b.add(f"{prefix}.cat", cat, cat.attrs(), features, e.span, prefix,
                          "dense")

    def paths(self, e: A.Call, x: Tensor, frame: Frame, label, label_span) -> Tensor:
        unit, opts = self.comb_args(e, frame, {"n": REQUIRED, "merge": "sum",
                                               "name": "{i}"})
        n = self.count(opts, "n", "paths")
        merge, merge_span = opts["merge"]
        if merge not in ("sum", "concat"):
            raise ResdslError(f"`paths` merge must be \"sum\" or \"concat\", got {kind(merge)}",
                              merge_span)
        name = self.template(opts, frame)
        sub, prefix = self.scope_frame(frame, label, label_span, "paths", e.span)
        outs = []
        for i in range(n):
            mark, steps, edges = len(self.b.added), self.steps, self.b.edges
            outs.append(self.apply(A.Labeled(name(i), unit, unit.span, unit.span), x, sub))
            if i == 0:
                self.predict(opts, 1, n, mark, steps, edges, "paths")
        op = OPS["add" if merge == "sum" else "concat"]
        if len(outs) == 1:
            return outs[0]
        return self.b.add(f"{prefix}.{'sum' if merge == 'sum' else 'cat'}", op, op.attrs(),
                          outs, e.span, prefix, "paths")

    def shortcut(self, e: A.Call, x: Tensor, frame: Frame, label, label_span) -> Tensor:
        if len(e.args) != 1 or e.args[0].name is not None:
            raise ResdslError("`shortcut` takes one projection", e.span,
                              hint="e.g. `shortcut(downsample: (conv(256, k=1, s=stride) -> "
                                   "bn))`")
        proj = e.args[0].value
        if label is not None:
            proj = A.Labeled(label, proj, proj.span, label_span)
        mark = self.b.mark()
        snap = frame.namer.snapshot()
        y = self.apply(proj, x, frame) if self.is_layer(proj, frame) \
            else self.eval(proj, frame)
        if not isinstance(y, Tensor):
            raise ResdslError(f"a shortcut's projection must give a tensor, not {kind(y)}",
                              proj.span)
        strided = any(downsamples(self.b.g.nodes[n]) for n in self.b.added[mark:])
        if y.shape == x.shape and not strided:
            self.b.rollback(mark)
            frame.namer.restore(snap)
            return x
        return y
