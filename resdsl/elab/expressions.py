"""Expression evaluation: numbers, conditions, lists, names, `+` of tensors, functions.

A layer expression met in a value position (`main = conv1: conv(64, k=3) -> bn`) is
applied to the block's input `in`; what is a layer is decided in `layers.py`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from resdsl.elab.combinators import COMBINATORS
from resdsl.elab.values import Frame, Tensor, kind, suggest
from resdsl.errors import ResdslError, Span
from resdsl.ir.ops import OPS, fmt
from resdsl.limits import MAX_INT, float_bad, int_out_of_range, power_bounded
from resdsl.syntax import ast as A

FUNCTIONS = {
    "floor": lambda x: math.floor(x), "ceil": lambda x: math.ceil(x),
    "round": lambda x: round(x), "int": lambda x: int(x), "min": min, "max": max,
    "abs": abs, "len": len, "log2": lambda x: math.log2(x),
}
# operators on two tensors -> the op they make
TENSOR_OPS = {"+": "add", "*": "mul"}
DIMS = {"c": 0, "h": 1, "w": 2, "channels": 0, "height": 1, "width": 2}


class Expressions:
    """Evaluation of value expressions (a part of `Elaborator`)."""

    def eval(self, e: A.Expr, frame: Frame) -> Any:
        """Evaluate an expression to a value; a layer expression is applied to `in`."""
        self.step(e.span)
        if isinstance(e, A.Num | A.Str | A.Bool):
            return e.value
        if isinstance(e, A.ListE):
            return [self.eval(x, frame) for x in e.items]
        if isinstance(e, A.DictE):
            return {k: self.eval(v, frame) for k, v, _ in e.items}
        if isinstance(e, A.Ref):
            if e.name in frame.vars:
                frame.used.add(e.name)
                return frame.vars[e.name]
            if e.name in OPS or e.name in COMBINATORS:
                return self.apply(e, self.input_of(frame, e.span), frame)
            ref = frame.module.lookup(e.name)
            if ref is not None:
                return ref
            self.unknown(e.name, e.span, frame)
        if isinstance(e, A.BinOp):
            return self.binop(e, frame)
        if isinstance(e, A.Unary):
            v = self.eval(e.operand, frame)
            if e.op == "not":
                return not self.truth(v, e.operand.span)
            return -self.number(v, e.operand.span)  # numbers are within +-MAX_INT
        if isinstance(e, A.Attr):
            v = self.eval(e.obj, frame)
            if not isinstance(v, Tensor):
                raise ResdslError(f"`.{e.name}` needs a tensor, not {kind(v)}", e.span)
            if e.name == "shape":
                return list(v.shape)
            if e.name not in DIMS:
                raise ResdslError(f"a tensor has no `.{e.name}`", e.span,
                                  hint="use .c, .h, .w (or .channels, .height, .width, .shape)")
            if DIMS[e.name] >= len(v.shape):
                raise ResdslError(f"`.{e.name}` of the flat tensor {fmt(v.shape)}", e.span)
            return v.shape[DIMS[e.name]]
        if isinstance(e, A.Index):
            v = self.eval(e.obj, frame)
            i = self.eval(e.index, frame)
            if not isinstance(v, list):
                raise ResdslError(f"cannot index {kind(v)}", e.obj.span)
            if not isinstance(i, int) or isinstance(i, bool) or not -len(v) <= i < len(v):
                raise ResdslError(f"index {i} is out of range for a list of {len(v)}",
                                  e.index.span)
            return v[i]
        if isinstance(e, A.Cond):
            c = self.truth(self.eval(e.cond, frame), e.cond.span)
            return self.eval(e.then if c else e.other, frame)
        if isinstance(e, A.Pipe):
            first = e.stages[0]
            x = (self.eval(first, frame) if not self.is_layer(first, frame)
                 else self.apply(first, self.input_of(frame, first.span), frame))
            if not isinstance(x, Tensor):
                raise ResdslError(f"a pipe starts from a tensor or a layer, not {kind(x)}",
                                  first.span)
            for stage in e.stages[1:]:
                x = self.apply(stage, x, frame)
            return x
        if isinstance(e, A.Call):
            if e.name in FUNCTIONS:
                return self.function(e, frame)
            if e.name in OPS and e.name not in frame.vars:
                return self.op_call(e, frame, None, None)
            return self.apply(e, self.input_of(frame, e.span), frame)
        if isinstance(e, A.Labeled) and not self.is_layer(e.inner, frame):
            raise ResdslError(f"`{e.label}: ...` labels a layer, but "
                              f"{kind(self.eval(e.inner, frame))}"
                              " is not one", e.span,
                              hint=f"a keyword argument is written `{e.label}=...`")
        if isinstance(e, A.Labeled | A.Group):
            if isinstance(e, A.Group) and not self.is_layer(e.inner, frame):
                return self.eval(e.inner, frame)
            return self.apply(e, self.input_of(frame, e.span), frame)
        raise AssertionError(f"unhandled expression {e!r}")  # pragma: no cover

    def input_of(self, frame: Frame, span: Span) -> Tensor:
        x = frame.vars.get("in")
        if not isinstance(x, Tensor):
            raise ResdslError("this layer has no input: the model has not declared its "
                              "`input` yet", span,
                              hint="put `input [C, H, W]` before the first layer")
        frame.used.add("in")
        return x

    def unknown(self, name: str, span: Span, frame: Frame):
        # defined later in this body? then it is a use before definition, maybe a cycle
        for j, stmt in enumerate(frame.body):
            if isinstance(stmt, A.Assign) and stmt.name == name and j >= frame.stmt_index:
                current = frame.body[frame.stmt_index]
                if isinstance(current, A.Assign) and current.name in refs(stmt.value):
                    raise ResdslError(f"cycle: `{current.name}` uses `{name}`, which is "
                                      f"defined from `{current.name}` (line {stmt.span.line})",
                                      span, hint="a network is acyclic: each tensor may only "
                                                 "use tensors defined before it")
                raise ResdslError(f"`{name}` is used before it is defined (line "
                                  f"{stmt.span.line})", span,
                                  hint="define a tensor before the statements that use it")
        candidates = set(frame.vars) | set(frame.module.defs) | set(OPS) | set(COMBINATORS)
        s = suggest(name, candidates)
        raise ResdslError(f"unknown name `{name}`", span,
                          hint=s or "not a parameter, variable, block, model or op here; "
                                    "a block from another file needs `use \"file.arch\"`")

    def binop(self, e: A.BinOp, frame: Frame) -> Any:
        if e.op in ("and", "or"):
            left = self.truth(self.eval(e.left, frame), e.left.span)
            if (e.op == "and" and not left) or (e.op == "or" and left):
                return left
            return self.truth(self.eval(e.right, frame), e.right.span)
        a = self.eval(e.left, frame)
        b = self.eval(e.right, frame)
        if isinstance(a, Tensor) or isinstance(b, Tensor):
            if e.op not in TENSOR_OPS or not (isinstance(a, Tensor) and isinstance(b, Tensor)):
                raise ResdslError(f"`{e.op}` of {kind(a)} and {kind(b)}", e.op_span,
                                  hint="tensors support `+` (element-wise add) and `*` "
                                       "(element-wise product) only; use concat(a, b) to "
                                       "stack channels")
            op = OPS[TENSOR_OPS[e.op]]
            name = frame.namer.auto(op.name, self.b.g)
            return self.b.add(name, op, op.attrs(), [a, b], e.span, frame.scope, frame.block)
        if e.op in ("==", "!="):
            return (a == b) if e.op == "==" else (a != b)
        x = self.number(a, e.left.span)
        y = self.number(b, e.right.span)
        if e.op in ("<", "<=", ">", ">="):
            return {"<": x < y, "<=": x <= y, ">": x > y, ">=": x >= y}[e.op]
        if e.op == "**" and not power_bounded(x, y):
            raise ResdslError(f"{x!r} ** {y!r} is too large", e.span,
                              hint=f"numbers must stay below 2**63 ({MAX_INT:,})")
        try:
            if e.op == "+":
                r = x + y
            elif e.op == "-":
                r = x - y
            elif e.op == "*":
                r = x * y
            elif e.op == "/":
                if isinstance(x, int) and isinstance(y, int) and y != 0 and x % y == 0:
                    r = x // y
                else:
                    r = x / y
            elif e.op == "//":
                r = x // y
            elif e.op == "%":
                r = x % y
            else:
                r = x ** y
        except ZeroDivisionError:
            raise ResdslError("division by zero", e.span) from None
        except OverflowError:
            raise ResdslError(f"`{e.op}` overflows", e.span,
                              hint="numbers must be finite and below 2**63") from None
        return self.checked(r, e.span)

    def checked(self, r: Any, span: Span) -> int | float:
        """An arithmetic result, refused unless it is a real number within range."""
        if isinstance(r, complex) or not isinstance(r, int | float):
            raise ResdslError("the result is not a real number", span,
                              hint="a negative number to a fractional power is complex")
        if int_out_of_range(r):
            raise ResdslError(f"the result has {len(str(abs(r)))} digits; integers must be "
                              "below 2**63", span, hint=f"the largest is {MAX_INT:,}")
        if float_bad(r):
            raise ResdslError(f"the result is {r} (out of range)", span,
                              hint="numbers must be finite")
        return r

    def function(self, e: A.Call, frame: Frame) -> Any:
        args = [self.eval(a.value, frame) for a in e.args]
        if any(a.name for a in e.args):
            raise ResdslError(f"`{e.name}` takes positional arguments only", e.span)
        try:
            if e.name == "len":
                (v,) = args
                if not isinstance(v, list | str):
                    raise TypeError
                return len(v)
            if e.name in ("min", "max"):
                return FUNCTIONS[e.name](*[self.number(v, e.span) for v in args])
            (v,) = args
            return self.checked(FUNCTIONS[e.name](self.number(v, e.args[0].span)), e.span)
        except (TypeError, ValueError, IndexError, OverflowError):
            raise ResdslError(f"wrong arguments to `{e.name}`", e.span,
                              hint=f"{e.name} takes "
                                   + ("a list" if e.name == "len" else "numbers"
                                      if e.name in ("min", "max") else "one number")) from None

    def number(self, v: Any, span: Span) -> int | float:
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise ResdslError(f"expected a number, got {kind(v)}", span)
        return v

    def truth(self, v: Any, span: Span) -> bool:
        if isinstance(v, bool):
            return v
        if isinstance(v, int | float):
            return v != 0
        raise ResdslError(f"expected a condition, got {kind(v)}", span)

    def whole(self, v: Any, span: Span, what: str) -> int:
        v = self.number(v, span)
        if isinstance(v, float):
            if not v.is_integer():
                raise ResdslError(f"{what} must be a whole number, got {v:g}", span,
                                  hint="round explicitly: floor(x), ceil(x), round(x), or `//`")
            v = int(v)
        return v


def refs(e) -> set[str]:
    """Names referenced anywhere inside an expression."""
    out: set[str] = set()
    if isinstance(e, A.Ref):
        out.add(e.name)
    elif isinstance(e, A.Call):
        out.add(e.name)
    if isinstance(e, tuple):
        for x in e:
            out |= refs(x)
    elif dataclasses.is_dataclass(e):
        for f in dataclasses.fields(e):
            v = getattr(e, f.name)
            if isinstance(v, tuple) or dataclasses.is_dataclass(v):
                out |= refs(v)
    return out
