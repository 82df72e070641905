"""The AST of an .arch file: frozen dataclasses, every node with its source span.

The parser (`resdsl.syntax.parser`) builds these; the elaborator reads them. Nothing
here knows about ops, shapes or graphs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

from resdsl.errors import Source, Span


@dataclass(frozen=True)
class Num:
    value: int | float
    span: Span


@dataclass(frozen=True)
class Str:
    value: str
    span: Span


@dataclass(frozen=True)
class Bool:
    value: bool
    span: Span


@dataclass(frozen=True)
class Ref:
    """A bare name: a variable, a parameter, a block, or an op with no arguments."""

    name: str
    span: Span


@dataclass(frozen=True)
class Arg:
    name: str | None  # None for a positional argument
    value: "Expr"
    span: Span


@dataclass(frozen=True)
class Call:
    """`name(args)`: an op, a block, a combinator (stage, dense, paths, shortcut) or a function."""

    name: str
    args: tuple[Arg, ...]
    span: Span
    name_span: Span


@dataclass(frozen=True)
class Labeled:
    """`label: expr`: gives a layer its name, or a block/group its name scope."""

    label: str
    inner: "Expr"
    span: Span
    label_span: Span


@dataclass(frozen=True)
class Group:
    """`(expr)`: parentheses; as a layer, a sequence whose unnamed layers are numbered."""

    inner: "Expr"
    span: Span


@dataclass(frozen=True)
class ListE:
    items: tuple["Expr", ...]
    span: Span


@dataclass(frozen=True)
class DictE:
    items: tuple[tuple[str, "Expr", Span], ...]
    span: Span


@dataclass(frozen=True)
class Pipe:
    """`a -> b -> c`."""

    stages: tuple["Expr", ...]
    span: Span


@dataclass(frozen=True)
class BinOp:
    op: str  # + - * / // % ** == != < <= > >= and or
    left: "Expr"
    right: "Expr"
    span: Span
    op_span: Span


@dataclass(frozen=True)
class Unary:
    op: str  # - not
    operand: "Expr"
    span: Span


@dataclass(frozen=True)
class Attr:
    """`t.c`, `t.h`, `t.w`: a dimension of a tensor's inferred shape."""

    obj: "Expr"
    name: str
    span: Span


@dataclass(frozen=True)
class Index:
    obj: "Expr"
    index: "Expr"
    span: Span


@dataclass(frozen=True)
class Cond:
    cond: "Expr"
    then: "Expr"
    other: "Expr"
    span: Span


Expr = Union[Num, Str, Bool, Ref, Call, Labeled, Group, ListE, DictE, Pipe, BinOp, Unary,
             Attr, Index, Cond]


@dataclass(frozen=True)
class Param:
    name: str
    default: Expr | None
    span: Span


@dataclass(frozen=True)
class Input:
    shape: Expr
    span: Span


@dataclass(frozen=True)
class Assign:
    name: str
    value: Expr
    span: Span
    name_span: Span


@dataclass(frozen=True)
class Return:
    value: Expr
    span: Span


@dataclass(frozen=True)
class ExprStmt:
    value: Expr
    span: Span


Stmt = Union[Input, Assign, Return, ExprStmt]


@dataclass(frozen=True)
class Use:
    path: str
    span: Span


@dataclass(frozen=True)
class BlockDef:
    """`block name(params) { body }` or, with is_model, `model name(params) { body }`."""

    name: str
    params: tuple[Param, ...]
    body: tuple[Stmt, ...]
    span: Span
    name_span: Span
    is_model: bool = False


@dataclass(frozen=True)
class ModelAlias:
    """`model name(params) = other(args)`: a model that is another model with arguments."""

    name: str
    params: tuple[Param, ...]
    target: Call
    span: Span
    name_span: Span


Item = Union[Use, BlockDef, ModelAlias]


@dataclass(frozen=True)
class Token:
    """A token of the source as the lexer saw it, `kind` being the grammar's terminal
    name; `parser.lex` keeps the comments (kind "COMMENT") that `parse` ignores, for the
    tools that re-emit source (`resdsl fmt`)."""

    kind: str
    text: str
    span: Span


@dataclass(frozen=True)
class Module:
    source: Source
    items: tuple[Item, ...]
