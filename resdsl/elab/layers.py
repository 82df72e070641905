"""Layer expressions as values, and applying them: ops, blocks, groups, pipes.

`Elaborator.layer_of(e, frame)` reads an expression once and says what it means as a
layer: a `Layer` (an op call, a block instance, a labelled group, a pipe, a combinator,
a conditional), or `Refused` (it names something that cannot be applied, and says why),
or None (a plain value: a number, `a + b`, `x.c`, ...). Both evaluation (is this
expression a layer applied to `in`, or a value?) and application (apply this pipe stage
to the tensor before it) ask this one question.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

from resdsl.elab.combinators import COMBINATORS
from resdsl.elab.expressions import FUNCTIONS
from resdsl.elab.naming import Namer
from resdsl.elab.values import BlockRef, Frame, ModuleEnv, Tensor, is_model, kind, suggest
from resdsl.errors import ResdslError, Span
from resdsl.ir.ops import OPS, OpDef
from resdsl.syntax import ast as A

MAX_BLOCK_DEPTH = 64


@dataclass(frozen=True)
class Layer:
    """A layer expression resolved in its frame; `apply` adds its layers to the graph."""

    expr: A.Expr

    def is_layer(self, el, frame: Frame) -> bool:
        """In a value position: whether this is a layer applied to `in` (not a value)."""
        return True

    def apply(self, el, x: Tensor, frame: Frame, label: str | None, label_span: Span | None,
              overrides: dict | None) -> Tensor:
        raise NotImplementedError


@dataclass(frozen=True)
class Labeled(Layer):
    """`label: layer`: the layer (or group) named `label` in its scope."""

    def apply(self, el, x, frame, label, label_span, overrides):
        e = self.expr
        return el.apply(e.inner, x, frame, e.label, e.label_span, overrides)


@dataclass(frozen=True)
class Group(Layer):
    """`( a -> b )`: with a label, a scope whose layers are numbered like nn.Sequential."""

    def is_layer(self, el, frame):
        return el.is_layer(self.expr.inner, frame)

    def apply(self, el, x, frame, label, label_span, overrides):
        e = self.expr
        if label is None or isinstance(e.inner, A.Cond):
            # `norm: (if c then gn(32) else bn)`: the label names the chosen layer
            return el.apply(e.inner, x, frame, label, label_span, overrides)
        inner = e.inner.stages if isinstance(e.inner, A.Pipe) else (e.inner,)
        sub = Frame(frame.module, frame.vars, Namer(frame.namer.full(label), True),
                    frame.body, frame.block, frame.used, frame.stmt_index, frame.scope)
        el.claim(frame, label, label_span)
        for pos, stage in enumerate(inner):
            sub.namer.position = pos
            x = el.apply(stage, x, sub)
        return x


@dataclass(frozen=True)
class Pipe(Layer):
    """`a -> b -> c` used as a layer: each stage applied to the one before."""

    def is_layer(self, el, frame):
        return el.is_layer(self.expr.stages[0], frame)

    def apply(self, el, x, frame, label, label_span, overrides):
        stages = self.expr.stages
        if not el.is_layer(stages[0], frame):
            raise ResdslError("this pipe starts from a tensor, but it is used as a layer",
                              stages[0].span,
                              hint="a layer in a pipe receives the tensor before it")
        for stage in stages:
            x = el.apply(stage, x, frame)
        return x


@dataclass(frozen=True)
class Cond(Layer):
    """`c ? a : b` as a layer: the branch the condition picks."""

    def is_layer(self, el, frame):
        return el.is_layer(self.expr.then, frame)

    def apply(self, el, x, frame, label, label_span, overrides):
        e = self.expr
        c = el.truth(el.eval(e.cond, frame), e.cond.span)
        return el.apply(e.then if c else e.other, x, frame, label, label_span, overrides)


@dataclass(frozen=True)
class Op(Layer):
    """An op: `relu`, `conv(64, k=3)`. With a tensor as its first positional argument
    (`concat(a, b)`, `relu(x)`) it is a value computed from those tensors instead."""

    call: A.Call

    def is_layer(self, el, frame):
        return not any(isinstance(_peek(a.value, frame), Tensor)
                       for a in self.call.args if a.name is None)

    def apply(self, el, x, frame, label, label_span, overrides):
        return el.op_call(self.call, frame, x, label, label_span)


@dataclass(frozen=True)
class Block(Layer):
    """An instance of a block: `bottleneck(64, stride=2)`, or a block-valued parameter."""

    ref: BlockRef
    name: str
    via_var: bool = False   # named by a variable (marked used when applied)

    def is_layer(self, el, frame):
        return not (self.via_var and self.name in FUNCTIONS and isinstance(self.expr, A.Call))

    def apply(self, el, x, frame, label, label_span, overrides):
        if self.via_var:
            frame.used.add(self.name)
        args = el.args(self.expr, frame) if isinstance(self.expr, A.Call) else []
        return el.instantiate(self.ref, args, x, frame, self.expr.span, label, label_span,
                              overrides)


@dataclass(frozen=True)
class Combinator(Layer):
    """`stage(...)`, `dense(...)`, `paths(...)`, `shortcut(...)`."""

    def apply(self, el, x, frame, label, label_span, overrides):
        return el.combinator(self.expr.name)(self.expr, x, frame, label, label_span)


@dataclass(frozen=True)
class Refused(Layer):
    """A name in a layer position that cannot be applied; `apply` says why.
    `looks_like_layer`: in a value position it is still read as a layer (and refused)."""

    refuse: Callable[[], Any]
    looks_like_layer: bool = False
    var: str | None = None

    def is_layer(self, el, frame):
        return self.looks_like_layer

    def apply(self, el, x, frame, label, label_span, overrides):
        if self.var is not None:
            frame.used.add(self.var)
        self.refuse()
        raise AssertionError("unreachable")  # pragma: no cover


def _peek(e: A.Expr, frame: Frame) -> Any:
    """Whether a positional op argument is a tensor, without creating layers."""
    if isinstance(e, A.Ref) and e.name in frame.vars:
        return frame.vars[e.name]
    if isinstance(e, A.BinOp | A.Pipe | A.Call | A.Group) and _tensorish(e, frame):
        return Tensor("?", ())
    return None


def _tensorish(e: A.Expr, frame: Frame) -> bool:
    if isinstance(e, A.Ref):
        return isinstance(frame.vars.get(e.name), Tensor)
    if isinstance(e, A.BinOp):
        return _tensorish(e.left, frame) or _tensorish(e.right, frame)
    if isinstance(e, A.Pipe):
        return True
    if isinstance(e, A.Group):
        return _tensorish(e.inner, frame)
    if isinstance(e, A.Call):
        return e.name in OPS and any(_tensorish(a.value, frame) for a in e.args
                                     if a.name is None)
    return False


def _raise(message: str, span: Span, hint: str | None = None) -> Callable[[], Any]:
    def refuse():
        raise ResdslError(message, span, hint=hint)
    return refuse


class Layers:
    """Layer application, op calls, block instances (a part of `Elaborator`)."""

    def layer_of(self, e: A.Expr, frame: Frame) -> Layer | None:
        """What `e` means as a layer in `frame`; None for a plain value."""
        if isinstance(e, A.Labeled):
            return Labeled(e)
        if isinstance(e, A.Group):
            return Group(e)
        if isinstance(e, A.Pipe):
            return Pipe(e)
        if isinstance(e, A.Cond):
            return Cond(e)
        if isinstance(e, A.Ref):
            if e.name in frame.vars:
                v = frame.vars[e.name]
                if isinstance(v, BlockRef):
                    return Block(e, v, e.name, via_var=True)
                return Refused(e, _raise(f"`{e.name}` is {kind(v)}, not a layer", e.span,
                                         "only the first element of a pipe may be a tensor"
                                         if isinstance(v, Tensor) else None), var=e.name)
            if e.name in OPS:
                return Op(e, A.Call(e.name, (), e.span, e.span))
            if e.name in COMBINATORS:
                return Refused(e, _raise(f"`{e.name}` needs arguments", e.span), True)
            ref = frame.module.lookup(e.name)
            if ref is not None:
                return Block(e, ref, e.name)
            return Refused(e, lambda: self.unknown(e.name, e.span, frame))
        if isinstance(e, A.Call):
            if e.name in frame.vars:
                v = frame.vars[e.name]
                if isinstance(v, BlockRef):
                    return Block(e, v, e.name, via_var=True)
                what = "op" if e.name in OPS else "built-in"
                hint = (f"the parameter or name `{e.name}` hides the {what} `{e.name}` here: "
                        f"rename it (e.g. `{e.name}_rate`)"
                        if e.name in OPS or e.name in COMBINATORS or e.name in FUNCTIONS
                        else None)
                return Refused(e, _raise(f"`{e.name}` is {kind(v)}; it cannot be called",
                                         e.name_span, hint=hint),
                               e.name not in FUNCTIONS, var=e.name)
            if e.name in OPS:
                return Op(e, e)
            if e.name in COMBINATORS:
                return Combinator(e)
            if e.name in FUNCTIONS:
                return Refused(e, _raise(f"`{e.name}(...)` is a number, not a layer",
                                         e.span))
            ref = frame.module.lookup(e.name)
            if ref is not None:
                return Block(e, ref, e.name)
            return Refused(e, lambda: self.unknown(e.name, e.name_span, frame), True)
        return None

    def is_layer(self, e: A.Expr, frame: Frame) -> bool:
        """Whether `e` denotes a layer (applied to a tensor) rather than a value."""
        layer = self.layer_of(e, frame)
        return layer is not None and layer.is_layer(self, frame)

    def apply(self, e: A.Expr, x: Tensor, frame: Frame, label: str | None = None,
              label_span: Span | None = None, overrides: dict | None = None) -> Tensor:
        """Apply the layer expression `e` to the tensor `x`."""
        self.step(e.span)
        layer = self.layer_of(e, frame)
        if layer is not None:
            return layer.apply(self, x, frame, label, label_span, overrides)
        v = self.eval(e, frame)
        raise ResdslError(f"{kind(v)} is not a layer", e.span,
                          hint="a pipe stage is an op (`relu`, `conv(64, k=3)`), a block "
                               "call, a labelled `( ... )` group or a combinator")

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
                s = suggest(key, names)
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
                    raise ResdslError(f"a block's result must be a tensor, not {kind(value)}",
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
                s = suggest(key, names)
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
                                      hint=f"e.g. `{op.example}`")
                continue
            v, a = kw[f.name]
            out[f.name] = self.coerce(v, f.type, a.span, f"`{op.name}` argument `{f.name}`")
        return op.attrs(**out)

    def coerce(self, v: Any, typ: Any, span: Span, what: str) -> Any:
        t = typ if isinstance(typ, str) else getattr(typ, "__name__", str(typ))
        if t == "bool":
            if not isinstance(v, bool):
                raise ResdslError(f"{what} must be true or false, got {kind(v)}", span)
            return v
        if t == "int":
            if isinstance(v, bool) or not isinstance(v, int | float):
                raise ResdslError(f"{what} must be a whole number, got {kind(v)}", span,
                                  hint="numbers are written without quotes, e.g. `k=3`"
                                  if isinstance(v, str) else None)
            return self.whole(v, span, what)
        if t == "float":
            return float(self.number(v, span))
        if t.startswith("tuple"):
            return tuple(v)
        return v  # pragma: no cover

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

