"""AST + parameters -> graph IR: blocks expanded, stages unrolled, names given, shapes known.

Shapes are inferred as nodes are created, because a block may ask for its input's
shape (`in.c`) and `shortcut(...)` decides between identity and projection by shape.
`passes.shapes.validate` re-checks the finished graph independently.

The evaluation model, in short (docs/language.md has the full story):
- a *value* is a number, bool, string, list, dict, a `Tensor` (an IR node's output)
  or a `BlockRef` (a block used as a parameter);
- a *layer expression* (an op, a block call, a labelled group, a combinator) is not a
  value: it is applied to a tensor, the one before it in a pipe, or `in`.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
from dataclasses import dataclass, field
from typing import Any

import networkx as nx

from resdsl.errors import ResdslError, Span
from resdsl.ir.graph import new_graph
from resdsl.limits import (DEFAULT, MAX_INT, Limits, float_bad, int_out_of_range,
                           power_bounded)
from resdsl.ir.ops import OPS, OpDef, ShapeError, fmt
from resdsl.syntax import ast as A
from resdsl.syntax.parser import BlockName, parse_expression

COMBINATORS = ("stage", "dense", "paths", "shortcut")
FUNCTIONS = {
    "floor": lambda x: math.floor(x), "ceil": lambda x: math.ceil(x),
    "round": lambda x: round(x), "int": lambda x: int(x), "min": min, "max": max,
    "abs": abs, "len": len,
}
DIMS = {"c": 0, "h": 1, "w": 2, "channels": 0, "height": 1, "width": 2}
MAX_BLOCK_DEPTH = 64


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


@dataclass
class Frame:
    """One block or model body being executed."""

    module: ModuleEnv
    vars: dict[str, Any]
    namer: Namer
    body: tuple[A.Stmt, ...]
    block: str
    used: set[str] = field(default_factory=set)
    stmt_index: int = 0
    scope: str = ""  # the block instance path, e.g. "layer1.0"


class Builder:
    """Owns the graph being built: adding nodes with inferred shapes, and rolling back.
    It keeps the totals the limits bound (layers, edges, parameters, activations) and
    refuses a node that would exceed one, before adding it."""

    def __init__(self, name: str, limits: Limits = DEFAULT) -> None:
        self.g = new_graph(name)
        self.limits = limits
        self.added: list[str] = []
        self.auto: dict[str, Span] = {}  # names given automatically -> the layer's span
        self.cost: dict[str, tuple[int, int]] = {}  # node -> (parameters, activations)
        self.params = 0
        self.activations = 0
        self.edges = 0

    def room(self, layers: int, edges: int, span: Span, what: str) -> None:
        """Refuse work that would add `layers` nodes and `edges` edges beyond the limits."""
        lim = self.limits
        if len(self.added) + layers > lim.max_layers:
            raise ResdslError(f"{what} would give the network more than {lim.max_layers:,} "
                              "layers", span,
                              hint="check the repeat counts (`n=`) of stages and dense "
                                   "blocks; " + lim.describe("max_layers"))
        if self.edges + edges > lim.max_edges:
            raise ResdslError(f"{what} would give the network more than {lim.max_edges:,} "
                              "connections", span,
                              hint="dense connectivity grows with the square of the layers "
                                   "per block; " + lim.describe("max_edges"))

    def add(self, name: str, op: OpDef, attrs, inputs: list[Tensor], span: Span, scope: str,
            block: str, label_span: Span | None = None) -> Tensor:
        if name in self.g:
            first = self.g.nodes[name]["span"]
            where = f" (line {first.line})" if first else ""
            hint = "labels must be unique within a block; choose another name"
            if name in self.auto:
                hint = (f"that name was given automatically to an unnamed layer{where}; "
                        "label that layer, or choose another name here")
            raise ResdslError(f"the name `{name}` is already used by another layer{where}",
                              label_span or span, hint=hint)
        lo, hi = op.arity
        if len(inputs) < lo or (hi is not None and len(inputs) > hi):
            want = f"{lo}" if lo == hi else (f"at least {lo}" if hi is None else f"{lo} to {hi}")
            raise ResdslError(f"{op.name} takes {want} input tensor(s), got {len(inputs)}", span)
        in_shapes = [t.shape for t in inputs]
        try:
            shape = op.infer(attrs, in_shapes)
        except ShapeError as err:
            raise ResdslError(err.message, span, hint=err.hint) from None
        self.room(1, len(inputs), span, "this layer")
        params = sum(math.prod(s) for s in op.param_shapes(attrs, in_shapes).values())
        acts = math.prod(shape)
        lim = self.limits
        if self.params + params > lim.max_params:
            raise ResdslError(f"this layer brings the network to {self.params + params:,} "
                              f"parameters, more than {lim.max_params:,}", span,
                              hint="check its channel counts; " + lim.describe("max_params"))
        if self.activations + acts > lim.max_activations:
            raise ResdslError(f"this layer's output {fmt(shape)} brings the activations to "
                              f"{self.activations + acts:,} values per sample, more than "
                              f"{lim.max_activations:,}", span,
                              hint="check the input size and the channel counts; "
                                   + lim.describe("max_activations"))
        self.g.add_node(name, op=op.name, attrs=attrs, shape=shape, span=span, scope=scope,
                        block=block)
        for port, t in enumerate(inputs):
            self.g.add_edge(t.node, name, port=port)
        self.added.append(name)
        self.cost[name] = (params, acts)
        self.edges += len(inputs)
        self.params += params
        self.activations += acts
        return Tensor(name, shape)

    def mark(self) -> int:
        return len(self.added)

    def rollback(self, mark: int) -> None:
        for name in self.added[mark:]:
            self.edges -= self.g.in_degree(name)
            self.g.remove_node(name)
            self.auto.pop(name, None)
            params, acts = self.cost.pop(name)
            self.params -= params
            self.activations -= acts
        del self.added[mark:]


def _suggest(name: str, candidates) -> str | None:
    close = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.7)
    return f"did you mean `{close[0]}`?" if close else None


def _kind(v: Any) -> str:
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


class Elaborator:
    """Runs a model definition and produces its IR graph."""

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

    # ================================================================ entry points
    def run_model(self, ref: BlockRef, args: list[tuple[str | None, Any, Span]],
                  call_span: Span | None) -> Tensor:
        """Elaborate a model (definition or alias) with the given argument values."""
        defn = ref.defn
        if isinstance(defn, A.ModelAlias):
            frame = Frame(ref.module, {}, Namer(""), (), defn.name)
            frame.vars.update(self.bind(defn.name, defn.params, args, ref.module,
                                        call_span or defn.span))
            target = self.resolve_callable(defn.target.name, frame, defn.target.name_span)
            if not isinstance(target, BlockRef) or not is_model(target.defn):
                raise ResdslError(f"`model {defn.name} = ...` must name a model, and "
                                  f"`{defn.target.name}` is not one", defn.target.name_span,
                                  hint="an alias binds the arguments of another model")
            inner = [(a.name, self.eval(a.value, frame), a.span) for a in defn.target.args]
            self.depth += 1
            if self.depth > MAX_BLOCK_DEPTH:
                raise ResdslError(f"model aliases chain more than {MAX_BLOCK_DEPTH} deep at "
                                  f"`{defn.name}`", defn.target.name_span,
                                  hint="an alias that (indirectly) names itself never ends")
            try:
                return self.run_model(target, inner, defn.target.span)
            finally:
                self.depth -= 1
        frame = Frame(ref.module, {}, Namer(""), defn.body, defn.name)
        frame.vars.update(self.bind(defn.name, defn.params, args, ref.module,
                                    call_span or defn.span))
        self.b.g.graph["name"] = self.b.g.graph.get("name") or defn.name
        return self.exec_body(frame, defn, None)

    # ================================================================ binding
    def bind(self, what: str, params: tuple[A.Param, ...],
             args: list[tuple[str | None, Any, Span]], module: ModuleEnv,
             call_span: Span) -> dict[str, Any]:
        names = [p.name for p in params]
        bound: dict[str, Any] = {}
        positional = [a for a in args if a[0] is None]
        if len(positional) > len(params):
            extra = positional[len(params)]
            raise ResdslError(f"`{what}` takes {len(params)} positional argument(s), "
                              f"got {len(positional)}", extra[2],
                              hint=f"its parameters are ({', '.join(names)})")
        for p, (_, value, _) in zip(params, positional):
            bound[p.name] = value
        for key, value, span in args:
            if key is None:
                continue
            if key not in names:
                s = _suggest(key, names)
                raise ResdslError(f"`{what}` has no parameter `{key}`", span,
                                  hint=(s + " " if s else "") +
                                  f"its parameters are ({', '.join(names) or 'none'})")
            if key in bound:
                raise ResdslError(f"parameter `{key}` of `{what}` is given twice", span)
            bound[key] = value
        # defaults see the module's definitions and the parameters before them
        frame = Frame(module, {}, Namer(""), (), what)
        for p in params:
            if p.name not in bound:
                if p.default is None:
                    raise ResdslError(f"`{what}` needs a value for its parameter `{p.name}`",
                                      call_span, hint=f"pass it: `{what}({p.name}=...)`")
                frame.vars.update(bound)
                bound[p.name] = self.eval(p.default, frame)
        return {n: bound[n] for n in names}

    # ================================================================ bodies
    def exec_body(self, frame: Frame, defn: A.BlockDef, x: Tensor | None) -> Tensor:
        if x is not None:
            frame.vars["in"] = x
        result: Tensor | None = None
        result_span: Span | None = None
        assigned: dict[str, tuple[Span, Tensor]] = {}
        for i, stmt in enumerate(frame.body):
            frame.stmt_index = i
            if result_span is not None:
                raise ResdslError("statement after the block's result", stmt.span,
                                  hint="`return` (or a bare tensor expression) must be the "
                                       "last statement of a block")
            if isinstance(stmt, A.Input):
                if not defn.is_model:
                    raise ResdslError("only a model declares an `input`", stmt.span,
                                      hint="a block receives its input as `in`")
                if "in" in frame.vars:
                    raise ResdslError("a second `input`", stmt.span,
                                      hint="a model has exactly one input")
                frame.vars["in"] = self.make_input(stmt, frame)
            elif isinstance(stmt, A.Assign):
                if stmt.name == "in":
                    raise ResdslError("`in` is the block's input and cannot be assigned",
                                      stmt.name_span, hint="choose another name")
                value = self.eval(stmt.value, frame)
                frame.vars[stmt.name] = value
                if isinstance(value, Tensor):
                    assigned[stmt.name] = (stmt.name_span, value)
                    frame.used.discard(stmt.name)
            else:
                value = self.eval(stmt.value, frame)
                if not isinstance(value, Tensor):
                    raise ResdslError(f"a block's result must be a tensor, not {_kind(value)}",
                                      stmt.value.span)
                result, result_span = value, stmt.span
        if result is None:
            where = defn.name_span
            if defn.is_model and "in" not in frame.vars:
                raise ResdslError(f"model `{defn.name}` declares no `input`", where,
                                  hint="start the body with e.g. `input [3, 224, 224]`")
            raise ResdslError(f"`{defn.name}` computes no result", where,
                              hint="end the body with `return <tensor>` or a tensor expression")
        for name, (span, t) in assigned.items():
            if name not in frame.used and t != result:
                raise ResdslError(f"tensor `{name}` is computed but never used", span,
                                  hint="use it (e.g. add it to the result) or remove it; "
                                       "an unused branch is usually a forgotten `+ skip`")
        return result

    def make_input(self, stmt: A.Input, frame: Frame) -> Tensor:
        shape = self.eval(stmt.shape, frame)
        dims = tuple(self.whole(d, stmt.shape.span, "an input dimension") for d in shape)
        t = self.b.add("input", OPS["input"], OPS["input"].attrs(dims), [], stmt.span, "",
                       frame.block)
        self.b.g.graph["inputs"] = ["input"]
        return t

    # ================================================================ values
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
                raise ResdslError(f"`.{e.name}` needs a tensor, not {_kind(v)}", e.span)
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
                raise ResdslError(f"cannot index {_kind(v)}", e.obj.span)
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
                raise ResdslError(f"a pipe starts from a tensor or a layer, not {_kind(x)}",
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
            raise ResdslError(f"`{e.label}: ...` labels a layer, but {_kind(self.eval(e.inner, frame))}"
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

    def is_layer(self, e: A.Expr, frame: Frame) -> bool:
        """Whether `e` denotes a layer (applied to a tensor) rather than a value."""
        if isinstance(e, A.Labeled):
            return True
        if isinstance(e, A.Group):
            return self.is_layer(e.inner, frame)
        if isinstance(e, A.Pipe):
            return self.is_layer(e.stages[0], frame)
        if isinstance(e, A.Ref):
            if e.name in frame.vars:
                return isinstance(frame.vars[e.name], BlockRef)
            return e.name in OPS or e.name in COMBINATORS or frame.module.lookup(e.name) \
                is not None
        if isinstance(e, A.Call):
            if e.name in FUNCTIONS:
                return False
            if e.name in OPS and e.name not in frame.vars:
                return not any(isinstance(self.peek(a.value, frame), Tensor)
                               for a in e.args if a.name is None)
            return True
        if isinstance(e, A.Cond):
            return self.is_layer(e.then, frame)
        return False

    def peek(self, e: A.Expr, frame: Frame) -> Any:
        """Whether a positional op argument is a tensor, without creating layers."""
        if isinstance(e, A.Ref) and e.name in frame.vars:
            return frame.vars[e.name]
        if isinstance(e, A.BinOp | A.Pipe | A.Call | A.Group) and self.tensorish(e, frame):
            return Tensor("?", ())
        return None

    def tensorish(self, e: A.Expr, frame: Frame) -> bool:
        if isinstance(e, A.Ref):
            return isinstance(frame.vars.get(e.name), Tensor)
        if isinstance(e, A.BinOp):
            return self.tensorish(e.left, frame) or self.tensorish(e.right, frame)
        if isinstance(e, A.Pipe):
            return True
        if isinstance(e, A.Group):
            return self.tensorish(e.inner, frame)
        if isinstance(e, A.Call):
            return e.name in OPS and any(self.tensorish(a.value, frame) for a in e.args
                                         if a.name is None)
        return False

    def unknown(self, name: str, span: Span, frame: Frame):
        # defined later in this body? then it is a use before definition, maybe a cycle
        for j, stmt in enumerate(frame.body):
            if isinstance(stmt, A.Assign) and stmt.name == name and j >= frame.stmt_index:
                current = frame.body[frame.stmt_index]
                if isinstance(current, A.Assign) and current.name in _refs(stmt.value):
                    raise ResdslError(f"cycle: `{current.name}` uses `{name}`, which is "
                                      f"defined from `{current.name}` (line {stmt.span.line})",
                                      span, hint="a network is acyclic: each tensor may only "
                                                 "use tensors defined before it")
                raise ResdslError(f"`{name}` is used before it is defined (line "
                                  f"{stmt.span.line})", span,
                                  hint="define a tensor before the statements that use it")
        candidates = set(frame.vars) | set(frame.module.defs) | set(OPS) | set(COMBINATORS)
        s = _suggest(name, candidates)
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
            if e.op != "+" or not (isinstance(a, Tensor) and isinstance(b, Tensor)):
                raise ResdslError(f"`{e.op}` of {_kind(a)} and {_kind(b)}", e.op_span,
                                  hint="tensors support `+` (element-wise add) only; "
                                       "use concat(a, b) to stack channels")
            name = self.b_auto(frame, "add")
            return self.b.add(name, OPS["add"], OPS["add"].attrs(), [a, b], e.span,
                              frame.scope, frame.block)
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
            raise ResdslError(f"expected a number, got {_kind(v)}", span)
        return v

    def truth(self, v: Any, span: Span) -> bool:
        if isinstance(v, bool):
            return v
        if isinstance(v, int | float):
            return v != 0
        raise ResdslError(f"expected a condition, got {_kind(v)}", span)

    def whole(self, v: Any, span: Span, what: str) -> int:
        v = self.number(v, span)
        if isinstance(v, float):
            if not v.is_integer():
                raise ResdslError(f"{what} must be a whole number, got {v:g}", span,
                                  hint="round explicitly: floor(x), ceil(x), round(x), or `//`")
            v = int(v)
        return v

    def b_auto(self, frame: Frame, base: str) -> str:
        return frame.namer.auto(base, self.b.g)

    # ================================================================ layers
    def apply(self, e: A.Expr, x: Tensor, frame: Frame, label: str | None = None,
              label_span: Span | None = None, overrides: dict | None = None) -> Tensor:
        """Apply the layer expression `e` to the tensor `x`."""
        self.step(e.span)
        if isinstance(e, A.Labeled):
            return self.apply(e.inner, x, frame, e.label, e.label_span, overrides)
        if isinstance(e, A.Group):
            if label is None:
                return self.apply(e.inner, x, frame, None, None, overrides)
            inner = e.inner.stages if isinstance(e.inner, A.Pipe) else (e.inner,)
            sub = Frame(frame.module, frame.vars, Namer(frame.namer.full(label), True),
                        frame.body, frame.block, frame.used, frame.stmt_index, frame.scope)
            self.claim(frame, label, label_span)
            for pos, stage in enumerate(inner):
                sub.namer.position = pos
                x = self.apply(stage, x, sub)
            return x
        if isinstance(e, A.Pipe):
            if not self.is_layer(e.stages[0], frame):
                raise ResdslError("this pipe starts from a tensor, but it is used as a layer",
                                  e.stages[0].span,
                                  hint="a layer in a pipe receives the tensor before it")
            for stage in e.stages:
                x = self.apply(stage, x, frame)
            return x
        if isinstance(e, A.Cond):
            c = self.truth(self.eval(e.cond, frame), e.cond.span)
            return self.apply(e.then if c else e.other, x, frame, label, label_span, overrides)
        if isinstance(e, A.Ref):
            if e.name in frame.vars:
                v = frame.vars[e.name]
                frame.used.add(e.name)
                if isinstance(v, BlockRef):
                    return self.instantiate(v, [], x, frame, e.span, label, label_span,
                                            overrides)
                raise ResdslError(f"`{e.name}` is {_kind(v)}, not a layer", e.span,
                                  hint="only the first element of a pipe may be a tensor"
                                  if isinstance(v, Tensor) else None)
            if e.name in OPS:
                return self.op_call(A.Call(e.name, (), e.span, e.span), frame, x, label,
                                    label_span)
            if e.name in COMBINATORS:
                raise ResdslError(f"`{e.name}` needs arguments", e.span)
            ref = frame.module.lookup(e.name)
            if ref is not None:
                return self.instantiate(ref, [], x, frame, e.span, label, label_span, overrides)
            self.unknown(e.name, e.span, frame)
        if isinstance(e, A.Call):
            if e.name in frame.vars:
                v = frame.vars[e.name]
                frame.used.add(e.name)
                if not isinstance(v, BlockRef):
                    raise ResdslError(f"`{e.name}` is {_kind(v)}; it cannot be called",
                                      e.name_span)
                return self.instantiate(v, self.args(e, frame), x, frame, e.span, label,
                                        label_span, overrides)
            if e.name in OPS:
                return self.op_call(e, frame, x, label, label_span)
            if e.name in COMBINATORS:
                return getattr(self, "comb_" + e.name)(e, x, frame, label, label_span)
            if e.name in FUNCTIONS:
                raise ResdslError(f"`{e.name}(...)` is a number, not a layer", e.span)
            ref = frame.module.lookup(e.name)
            if ref is not None:
                return self.instantiate(ref, self.args(e, frame), x, frame, e.span, label,
                                        label_span, overrides)
            self.unknown(e.name, e.name_span, frame)
        v = self.eval(e, frame)
        raise ResdslError(f"{_kind(v)} is not a layer", e.span,
                          hint="a pipe stage is an op (`relu`, `conv(64, k=3)`), a block "
                               "call, a labelled `( ... )` group or a combinator")

    def args(self, e: A.Call, frame: Frame) -> list[tuple[str | None, Any, Span]]:
        return [(a.name, self.eval(a.value, frame), a.span) for a in e.args]

    def claim(self, frame: Frame, label: str, span: Span | None) -> str:
        full = frame.namer.full(label)
        if full in self.b.g:
            raise ResdslError(f"the name `{full}` is already used by another layer", span,
                              hint="labels must be unique within a block")
        return full

    def name_for(self, frame: Frame, label: str | None, base: str, span: Span) -> str:
        if label is not None:
            return frame.namer.full(label)
        name = frame.namer.auto(base, self.b.g)
        self.b.auto[name] = span
        return name

    def op_call(self, e: A.Call, frame: Frame, x: Tensor | None, label: str | None,
                label_span: Span | None = None) -> Tensor:
        op = OPS[e.name]
        values = [(a.name, self.eval(a.value, frame), a) for a in e.args]
        inputs: list[Tensor] = []
        while values and values[0][0] is None and isinstance(values[0][1], Tensor):
            inputs.append(values.pop(0)[1])
        if inputs and x is not None and op.arity[1] is not None:
            raise ResdslError(f"`{e.name}(...)` is given a tensor argument inside a pipe, "
                              "where it already receives the tensor before it", e.span,
                              hint=f"write `-> {e.name}` and leave the input out")
        if x is not None:
            inputs = [x] + inputs
        if not inputs:
            x = self.input_of(frame, e.span)
            inputs = [x]
        attrs = self.op_attrs(op, values, e)
        name = self.name_for(frame, label, e.name, e.span)
        return self.b.add(name, op, attrs, inputs, e.span if label is None else
                          Span(e.span.source, label_span.line, label_span.column,
                               e.span.end_line, e.span.end_column),
                          frame.scope, frame.block, label_span)

    def op_attrs(self, op: OpDef, values, e: A.Call):
        fields = op.fields()
        names = [f.name for f in fields]
        kw: dict[str, Any] = {}
        pos = [v for v in values if v[0] is None]
        if len(pos) > len(fields):
            extra = pos[len(fields)][2]
            raise ResdslError(f"`{op.name}` takes at most {len(fields)} positional argument(s)"
                              f" ({', '.join(names) or 'none'})", extra.span,
                              hint=f"{op.name}: {op.doc}")
        for f, (_, v, a) in zip(fields, pos):
            if isinstance(v, Tensor):
                raise ResdslError(f"tensor arguments come first: `{op.name}(x, ...)`",
                                  a.span)
            kw[f.name] = (v, a)
        for key, v, a in values:
            if key is None:
                continue
            if key not in names:
                s = _suggest(key, names)
                raise ResdslError(f"`{op.name}` has no argument `{key}`", a.span,
                                  hint=(s + " " if s else "") +
                                  f"its arguments are ({', '.join(names) or 'none'})")
            if key in kw:
                raise ResdslError(f"argument `{key}` of `{op.name}` is given twice", a.span)
            kw[key] = (v, a)
        out = {}
        for f in fields:
            if f.name not in kw:
                if f.default is dataclasses.MISSING:
                    raise ResdslError(f"`{op.name}` needs its argument `{f.name}`", e.span,
                                      hint=f"e.g. `{_example(op.name)}`")
                continue
            v, a = kw[f.name]
            out[f.name] = self.coerce(v, f.type, a.span, f"`{op.name}` argument `{f.name}`")
        return op.attrs(**out)

    def coerce(self, v: Any, typ: Any, span: Span, what: str) -> Any:
        t = typ if isinstance(typ, str) else getattr(typ, "__name__", str(typ))
        if t == "bool":
            if not isinstance(v, bool):
                raise ResdslError(f"{what} must be true or false, got {_kind(v)}", span)
            return v
        if t == "int":
            if isinstance(v, bool) or not isinstance(v, int | float):
                raise ResdslError(f"{what} must be a whole number, got {_kind(v)}", span,
                                  hint="numbers are written without quotes, e.g. `k=3`"
                                  if isinstance(v, str) else None)
            return self.whole(v, span, what)
        if t == "float":
            return float(self.number(v, span))
        if t.startswith("tuple"):
            return tuple(v)
        return v  # pragma: no cover

    # ================================================================ blocks
    def resolve_callable(self, name: str, frame: Frame, span: Span) -> Any:
        if name in frame.vars:
            return frame.vars[name]
        ref = frame.module.lookup(name)
        if ref is None:
            self.unknown(name, span, frame)
        return ref

    def instantiate(self, ref: BlockRef, args, x: Tensor, frame: Frame, span: Span,
                    label: str | None, label_span: Span | None,
                    overrides: dict | None = None) -> Tensor:
        defn = ref.defn
        if is_model(defn):
            raise ResdslError(f"`{defn.name}` is a model; a model cannot be used as a layer",
                              span, hint="turn the shared part into a `block`")
        if overrides:
            args = [a for a in args if a[0] not in overrides] + \
                [(k, v, span) for k, v in overrides.items()]
        prefix = self.name_for(frame, label, defn.name, span) if label is None else \
            self.claim(frame, label, label_span)
        bound = self.bind(defn.name, defn.params, args, ref.module, span)
        self.depth += 1
        if self.depth > MAX_BLOCK_DEPTH:
            self.depth -= 1
            raise ResdslError(f"blocks nest more than {MAX_BLOCK_DEPTH} deep at "
                              f"`{defn.name}`", span,
                              hint="a block that (indirectly) uses itself never ends")
        sub = Frame(ref.module, dict(bound), Namer(prefix), defn.body, defn.name,
                    scope=prefix)
        try:
            return self.exec_body(sub, defn, x)
        except ResdslError as err:
            if len(err.notes) < 4:
                err.with_note(f"in `{prefix}`, an instance of block `{defn.name}`", span)
            raise
        finally:
            self.depth -= 1

    # ================================================================ combinators
    def comb_args(self, e: A.Call, frame: Frame, allowed: dict[str, Any]) -> tuple:
        if not e.args or e.args[0].name is not None:
            raise ResdslError(f"`{e.name}` needs a layer as its first argument", e.span,
                              hint=f"e.g. `{_example(e.name)}`")
        unit = e.args[0].value
        opts = dict(allowed)
        seen = set()
        for a in e.args[1:]:
            if a.name is None:
                raise ResdslError(f"`{e.name}` takes its options by name "
                                  f"({', '.join(allowed)})", a.span,
                                  hint=f"e.g. `{_example(e.name)}`")
            if a.name not in allowed:
                s = _suggest(a.name, allowed)
                raise ResdslError(f"`{e.name}` has no option `{a.name}`", a.span,
                                  hint=(s + " " if s else "") +
                                  f"its options are ({', '.join(allowed)})")
            if a.name in seen:
                raise ResdslError(f"option `{a.name}` of `{e.name}` is given twice", a.span)
            seen.add(a.name)
            opts[a.name] = (self.eval(a.value, frame), a.span)
        for k, v in opts.items():
            if v is _REQUIRED:
                raise ResdslError(f"`{e.name}` needs its option `{k}`", e.span,
                                  hint=f"e.g. `{_example(e.name)}`")
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

    def template(self, opts, frame: Frame) -> "callable":
        text, span = opts["name"]
        if not isinstance(text, str):
            raise ResdslError(f"`name` must be a string template such as \"{{i}}\", "
                              f"got {_kind(text)}", span)
        parts = re.split(r"(\{[^{}]*\})", text)
        exprs = [(p, parse_expression(p[1:-1], span) if p.startswith("{") else None)
                 for p in parts]

        def name(i: int) -> str:
            sub = Frame(frame.module, {**frame.vars, "i": i}, frame.namer, (), frame.block,
                        scope=frame.scope)
            out = "".join(str(self.eval(x, sub)) if x is not None else p for p, x in exprs)
            if not re.fullmatch(r"[A-Za-z0-9_]+", out):
                raise ResdslError(f"name template gives `{out}`, not a plain name", span,
                                  hint="names are letters, digits and `_`")
            return out
        return name

    def scope_frame(self, frame: Frame, label: str | None, label_span: Span | None,
                    base: str, span: Span) -> tuple[Frame, str]:
        prefix = self.claim(frame, label, label_span) if label is not None else \
            self.name_for(frame, None, base, span)
        sub = Frame(frame.module, frame.vars, Namer(prefix), frame.body, frame.block,
                    frame.used, frame.stmt_index, frame.scope)
        return sub, prefix

    def comb_stage(self, e: A.Call, x: Tensor, frame: Frame, label, label_span) -> Tensor:
        unit, opts = self.comb_args(e, frame, {"n": _REQUIRED, "first": {}, "name": "{i}"})
        n = self.count(opts, "n", "stage")
        first, first_span = opts["first"]
        if not isinstance(first, dict):
            raise ResdslError(f"`first` must be `{{param: value, ...}}`, got {_kind(first)}",
                              first_span)
        name = self.template(opts, frame)
        sub, _ = self.scope_frame(frame, label, label_span, "stage", e.span)
        for i in range(n):
            mark, steps, edges = len(self.b.added), self.steps, self.b.edges
            x = self.apply(A.Labeled(name(i), unit, unit.span, unit.span), x, sub,
                           overrides=first if (i == 0 and first) else None)
            if i == 1 or (i == 0 and not first):
                self.predict(opts, i + 1, n, mark, steps, edges, "stage")
        return x

    def comb_dense(self, e: A.Call, x: Tensor, frame: Frame, label, label_span) -> Tensor:
        unit, opts = self.comb_args(e, frame, {"n": _REQUIRED, "name": "{i}"})
        n = self.count(opts, "n", "dense")
        name = self.template(opts, frame)
        sub, prefix = self.scope_frame(frame, label, label_span, "dense", e.span)
        features = [x]
        cat = OPS["concat"]
        # layer i reads a concatenation of i + 1 tensors: n * (n + 3) / 2 edges in all
        self.b.room(n, n * (n + 3) // 2, opts["n"][1], f"dense with n={n}")
        for i in range(n):
            if i == 1:
                self.predict(opts, 1, n, mark, steps, edges, "dense")
            mark, steps, edges = len(self.b.added), self.steps, self.b.edges
            local = name(i)
            inp = features[0] if i == 0 else self.b.add(
                f"{prefix}.{local}.cat", cat, cat.attrs(), list(features), e.span, prefix,
                "dense")
            features.append(self.apply(A.Labeled(local, unit, unit.span, unit.span), inp, sub))
        return self.b.add(f"{prefix}.cat", cat, cat.attrs(), features, e.span, prefix,
                          "dense")

    def comb_paths(self, e: A.Call, x: Tensor, frame: Frame, label, label_span) -> Tensor:
        unit, opts = self.comb_args(e, frame, {"n": _REQUIRED, "merge": "sum",
                                               "name": "{i}"})
        n = self.count(opts, "n", "paths")
        merge, merge_span = opts["merge"]
        if merge not in ("sum", "concat"):
            raise ResdslError(f"`paths` merge must be \"sum\" or \"concat\", got {_kind(merge)}",
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

    def comb_shortcut(self, e: A.Call, x: Tensor, frame: Frame, label, label_span) -> Tensor:
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
            raise ResdslError(f"a shortcut's projection must give a tensor, not {_kind(y)}",
                              proj.span)
        strided = any(_downsamples(self.b.g.nodes[n]) for n in self.b.added[mark:])
        if y.shape == x.shape and not strided:
            self.b.rollback(mark)
            frame.namer.restore(snap)
            return x
        return y


class _Required:
    def __repr__(self) -> str:
        return "<required>"


_REQUIRED = _Required()


def _downsamples(node: dict) -> bool:
    stride = OPS[node["op"]].stride
    return stride is not None and stride(node["attrs"]) != 1


def is_model(defn) -> bool:
    """Whether a definition is a model (not a block)."""
    return isinstance(defn, A.ModelAlias) or (isinstance(defn, A.BlockDef) and defn.is_model)


def _refs(e) -> set[str]:
    """Names referenced anywhere inside an expression."""
    out: set[str] = set()
    if isinstance(e, A.Ref):
        out.add(e.name)
    elif isinstance(e, A.Call):
        out.add(e.name)
    if isinstance(e, tuple):
        for x in e:
            out |= _refs(x)
    elif dataclasses.is_dataclass(e):
        for f in dataclasses.fields(e):
            v = getattr(e, f.name)
            if isinstance(v, tuple) or dataclasses.is_dataclass(v):
                out |= _refs(v)
    return out


_EXAMPLES = {
    "stage": "stage(bottleneck(64), n=3, first={stride: 2})",
    "dense": "dense(dense_layer(32), n=6, name=\"denselayer{i+1}\")",
    "paths": "paths(path(4), n=32, merge=\"sum\")",
    "shortcut": "shortcut(downsample: (conv(256, k=1, s=2) -> bn))",
}


def _example(name: str) -> str:
    return OPS[name].example if name in OPS else _EXAMPLES[name]


def _blocks(v: Any, module: ModuleEnv, what: str) -> Any:
    """Block names in an outside parameter value (`-D unit=bottleneck`, or the string
    "bottleneck" from Python where the spec has such a block) -> the block."""
    if isinstance(v, list):
        return [_blocks(x, module, what) for x in v]
    if isinstance(v, dict):
        return {k: _blocks(x, module, what) for k, x in v.items()}
    if isinstance(v, BlockName) or (isinstance(v, str) and module.lookup(v) is not None):
        name = v.name if isinstance(v, BlockName) else v
        ref = module.lookup(name)
        if ref is None:
            s = _suggest(name, module.defs)
            raise ResdslError(f"parameter `{what}`: no block named `{name}`",
                              hint=(s + " " if s else "") + "strings are written in quotes: "
                                   f'-D {what}=\'"text"\'')
        return ref
    return v


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


def elaborate(ref: BlockRef, params: dict[str, Any] | None = None,
              limits: Limits = DEFAULT) -> nx.MultiDiGraph:
    """Elaborate the model `ref` with parameter overrides into an IR graph."""
    builder = Builder(ref.defn.name, limits)
    el = Elaborator(builder)
    span = ref.defn.name_span
    params = {str(k): _blocks(check_value(v, str(k)), ref.module, str(k))
              for k, v in (params or {}).items()}
    args = [(k, v, span) for k, v in params.items()]
    out = el.run_model(ref, args, span)
    builder.g.graph["name"] = ref.defn.name
    builder.g.graph["outputs"] = [out.node]
    builder.g.graph["params"] = {k: v for k, v in (params or {}).items()}
    return builder.g
