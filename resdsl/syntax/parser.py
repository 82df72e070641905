"""Text -> AST, with syntax errors rendered for people.

>>> from resdsl.syntax.parser import parse
>>> mod = parse("model m() { input [3, 8, 8]\\n conv1: conv(4, k=3) }", "m.arch")
>>> [item.name for item in mod.items]
['m']
"""

from __future__ import annotations

import dataclasses
import functools
import re
from pathlib import Path

from lark import Lark, Transformer, Tree, v_args
from lark.exceptions import (UnexpectedCharacters, UnexpectedEOF, UnexpectedInput,
                             UnexpectedToken, VisitError)

from resdsl.errors import ResdslError, Source, Span
from resdsl.limits import DEFAULT, MAX_LITERAL_DIGITS, Limits, float_bad, int_out_of_range
from resdsl.syntax import ast as A


def _grammar_path() -> Path:
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "arch.lark", here.parent.parent / "grammars" / "arch.lark"):
        if candidate.is_file():
            return candidate
    raise RuntimeError("resdsl is installed without its grammar (grammars/arch.lark); "
                       "reinstall with `pip install -e .` from the source tree")


@functools.lru_cache(maxsize=1)
def _parser() -> Lark:
    from resdsl.parser_cache import cached_lark  # per-user, checked; not lark's /tmp one
    return cached_lark(_grammar_path().read_text(), parser="lalr", propagate_positions=True,
                       maybe_placeholders=True, start=["start", "expr"])


def _span(src: Source, meta_or_token) -> Span:
    m = meta_or_token
    return Span(src, m.line, m.column, m.end_line, m.end_column)


def _join(a: Span, b: Span) -> Span:
    return Span(a.source, a.line, a.column, b.end_line, b.end_column)


class _ToAst(Transformer):
    def __init__(self, src: Source) -> None:
        super().__init__()
        self.src = src

    def sp(self, x) -> Span:
        return _span(self.src, x)

    # ---- items
    def start(self, items):
        return tuple(items)

    @v_args(meta=True)
    def use(self, meta, children):
        (tok,) = children
        return A.Use(tok[1:-1], self.sp(meta))

    @v_args(meta=True)
    def block(self, meta, children):
        name, params, body = children
        return A.BlockDef(str(name), params or (), body, self.sp(meta), self.sp(name))

    @v_args(meta=True)
    def model_def(self, meta, children):
        name, params, body = children
        return A.BlockDef(str(name), params or (), body, self.sp(meta), self.sp(name),
                          is_model=True)

    @v_args(meta=True)
    def model_alias(self, meta, children):
        name, params, target = children
        return A.ModelAlias(str(name), params or (), target, self.sp(meta), self.sp(name))

    def params(self, children):
        return tuple(children)

    @v_args(meta=True)
    def param(self, meta, children):
        name, default = children
        return A.Param(str(name), default, self.sp(meta))

    def body(self, children):
        return tuple(children)

    # ---- statements
    @v_args(meta=True)
    def input_stmt(self, meta, children):
        return A.Input(children[0], self.sp(meta))

    @v_args(meta=True)
    def assign(self, meta, children):
        name, value = children
        return A.Assign(str(name), value, self.sp(meta), self.sp(name))

    @v_args(meta=True)
    def return_stmt(self, meta, children):
        return A.Return(children[0], self.sp(meta))

    @v_args(meta=True)
    def expr_stmt(self, meta, children):
        return A.ExprStmt(children[0], self.sp(meta))

    # ---- expressions
    @v_args(meta=True)
    def cond(self, meta, children):
        c, a, b = children
        return A.Cond(c, a, b, self.sp(meta))

    @v_args(meta=True)
    def pipe_chain(self, meta, children):
        return A.Pipe(tuple(children), self.sp(meta))

    def _fold(self, meta, children, op):
        left = children[0]
        for right in children[1:]:
            left = A.BinOp(op, left, right, _join(left.span, right.span), left.span)
        return left

    @v_args(meta=True)
    def or_op(self, meta, children):
        return self._fold(meta, children, "or")

    @v_args(meta=True)
    def and_op(self, meta, children):
        return self._fold(meta, children, "and")

    @v_args(meta=True)
    def not_op(self, meta, children):
        return A.Unary("not", children[0], self.sp(meta))

    @v_args(meta=True)
    def compare(self, meta, children):
        left, op, right = children
        return A.BinOp(str(op), left, right, self.sp(meta), self.sp(op))

    @v_args(meta=True)
    def binop(self, meta, children):
        left, op, right = children
        return A.BinOp(str(op), left, right, self.sp(meta), self.sp(op))

    @v_args(meta=True)
    def neg(self, meta, children):
        return A.Unary("-", children[-1], self.sp(meta))

    @v_args(meta=True)
    def pow(self, meta, children):
        left, right = children
        return A.BinOp("**", left, right, self.sp(meta), self.sp(meta))

    @v_args(meta=True)
    def attr(self, meta, children):
        obj, name = children
        return A.Attr(obj, str(name), self.sp(meta))

    @v_args(meta=True)
    def index(self, meta, children):
        obj, idx = children
        return A.Index(obj, idx, self.sp(meta))

    @v_args(meta=True)
    def number(self, meta, children):
        text = str(children[0])
        value: int | float
        mantissa = re.split(r"[eE]", text)[0]
        if len(mantissa.lstrip("0.")) > MAX_LITERAL_DIGITS:
            raise ResdslError(f"the number `{text[:20]}...` has more than "
                              f"{MAX_LITERAL_DIGITS} digits", self.sp(meta),
                              hint="numbers must be below 2**63 (integers) or finite")
        if any(ch in text for ch in ".eE"):
            value = float(text)
            if value.is_integer() and "." not in text:
                value = int(value)
        else:
            value = int(text)
        if int_out_of_range(value) or float_bad(value):
            raise ResdslError(f"the number `{text}` is out of range", self.sp(meta),
                              hint="numbers must be below 2**63 (integers) or finite")
        return A.Num(value, self.sp(meta))

    @v_args(meta=True)
    def string(self, meta, children):
        return A.Str(str(children[0])[1:-1], self.sp(meta))

    @v_args(meta=True)
    def true(self, meta, children):
        return A.Bool(True, self.sp(meta))

    @v_args(meta=True)
    def false(self, meta, children):
        return A.Bool(False, self.sp(meta))

    @v_args(meta=True)
    def ref(self, meta, children):
        return A.Ref(str(children[0]), self.sp(meta))

    @v_args(meta=True)
    def call(self, meta, children):
        name, args = children
        return A.Call(str(name), args or (), self.sp(meta), self.sp(name))

    def args(self, children):
        out = []
        for c in children:
            out.append(c if isinstance(c, A.Arg) else A.Arg(None, c, c.span))
        return tuple(out)

    @v_args(meta=True)
    def kwarg(self, meta, children):
        name, value = children
        return A.Arg(str(name), value, self.sp(meta))

    @v_args(meta=True)
    def labeled(self, meta, children):
        label, inner = children
        text = str(label)
        if label.type == "STRING":
            text = text[1:-1]
        if not _LABEL.fullmatch(text):
            raise ResdslError(f"`{str(label)}` is not a label", self.sp(label),
                              hint="a label is a name (`conv1`), a whole number (`1`), or a "
                                   "quoted dotted path of those (`\"convs.0\"`)")
        return A.Labeled(text, inner, self.sp(meta), self.sp(label))

    @v_args(meta=True)
    def group(self, meta, children):
        return A.Group(children[0], self.sp(meta))

    @v_args(meta=True)
    def list(self, meta, children):
        return A.ListE(tuple(c for c in children if c is not None), self.sp(meta))

    @v_args(meta=True)
    def dict(self, meta, children):
        items = []
        for c in children:
            if c is None:
                continue
            entry = _entry(c)
            if entry is None:
                raise ResdslError("a `{...}` entry must be `key: value`", c.span,
                                  hint="write overrides as `first={stride: 2}`")
            items.append(entry)
        return A.DictE(tuple(items), self.sp(meta))


_LABEL = re.compile(r"[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*")


def _entry(e: A.Expr) -> tuple[str, A.Expr, Span] | None:
    """A `{key: value}` entry. The grammar's `key: postfix` binds tighter than operators,
    so `{stride: 2 ** 1}` parses as `(stride: 2) ** 1`: move the label to the top."""
    if isinstance(e, A.Labeled):
        return e.label, e.inner, e.span
    if isinstance(e, A.BinOp):
        inner = _entry(e.left)
        if inner is not None:
            label, left, _ = inner
            return label, dataclasses.replace(e, left=left), e.span
    if isinstance(e, A.Pipe):
        inner = _entry(e.stages[0])
        if inner is not None:
            label, first, _ = inner
            return label, dataclasses.replace(e, stages=(first, *e.stages[1:])), e.span
    return None


# Readable names for the grammar's terminals in "expected ..." messages.
_TERMINALS = {
    "NAME": "a name", "NUMBER": "a number", "STRING": "a string", "LPAR": "`(`", "RPAR": "`)`",
    "LSQB": "`[`", "RSQB": "`]`", "LBRACE": "`{`", "RBRACE": "`}`", "COMMA": "`,`",
    "COLON": "`:`", "EQUAL": "`=`", "DOT": "`.`", "MINUS": "`-`", "PLUS": "`+`",
    "MULOP": "`*`", "COMPOP": "a comparison", "__ANON_0": "`->`", "RETURN": "`return`",
    "INPUT": "`input`", "IF": "`if`", "THEN": "`then`", "ELSE": "`else`", "MODEL": "`model`",
    "BLOCK": "`block`", "USE": "`use`", "TRUE": "`true`", "FALSE": "`false`", "NOT": "`not`",
    "AND": "`and`", "OR": "`or`", "$END": "the end of the file",
}


def _describe(expected: set[str], parser: Lark) -> str:
    names = []
    for term in sorted(expected):
        if term in _TERMINALS:
            names.append(_TERMINALS[term])
            continue
        try:
            pattern = parser.get_terminal(term).pattern.value
            names.append(f"`{pattern}`" if len(pattern) < 8 else term.lower())
        except KeyError:
            names.append(term.lower())
    names = sorted(set(names))
    if len(names) > 6:
        return ", ".join(names[:6]) + ", ..."
    return ", ".join(names)


def _syntax_error(err: UnexpectedInput, src: Source) -> ResdslError:
    parser = _parser()
    line, col = max(err.line, 1), max(err.column, 1)
    if isinstance(err, UnexpectedToken) and err.token.type == "$END":
        lines = src.text.splitlines() or [""]
        line, col = len(lines), len(lines[-1]) + 1
        span = Span(src, line, col, line, col + 1)
        return ResdslError("unexpected end of file", span,
                           hint="a `(`, `[` or `{` is not closed, or a statement is unfinished")
    if isinstance(err, UnexpectedToken):
        tok = err.token
        width = max(len(str(tok)), 1)
        span = Span(src, line, col, line, col + width)
        expected = _describe(err.expected, parser)
        hint = f"expected {expected}"
        if tok.type in ("EQUAL",) and "COLON" in err.expected:
            hint = "inside `{...}` write `key: value`, e.g. `first={stride: 2}`"
        elif tok.type == "COLON":
            hint = ("a label names the layer that follows it: `conv1: conv(64, k=3)`; "
                    "keyword arguments use `=`: `conv(64, k=3)`")
        elif tok.type == "THEN":
            hint = ("after a label or `->`, a conditional goes in parentheses: "
                    "`norm: (if c then gn(32) else bn)`")
        elif tok.type == "RBRACE" and "RPAR" in err.expected:
            hint = "a `(` is not closed before this `}`"
        word = str(tok)
        if tok.type in ("NAME", "NUMBER", "STRING"):
            what = f"{_TERMINALS[tok.type]} `{word}`"
        else:
            what = _TERMINALS.get(tok.type, f"`{word}`")
        return ResdslError(f"unexpected {what}", span, hint=hint)
    if isinstance(err, UnexpectedCharacters):
        ch = src.text[err.pos_in_stream] if err.pos_in_stream < len(src.text) else "?"
        span = Span(src, line, col, line, col + 1)
        hint = "names are letters, digits and `_`; comments start with `#`"
        if ch == "'":
            hint = 'strings use double quotes: "lib/resnet.arch"'
        return ResdslError(f"unexpected character `{ch}`", span, hint=hint)
    if isinstance(err, UnexpectedEOF):  # pragma: no cover - LALR reports $END as a token
        span = Span(src, line, col, line, col + 1)
        return ResdslError("unexpected end of file", span)
    raise err  # pragma: no cover


def _check_depth(tree: Tree, src: Source, limits: Limits) -> None:
    """Refuse a parse tree nested deeper than `limit` (parentheses, operator chains),
    before anything recursive walks it."""
    limit = limits.max_nesting
    stack = [(tree, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            meta = node.meta
            line, col = getattr(meta, "line", 1), getattr(meta, "column", 1)
            raise ResdslError(f"expression nested more than {limit} levels deep",
                              Span(src, line, col, line, col + 1),
                              hint="split it into named parts (`a = ...`); "
                                   + limits.describe("max_nesting"))
        stack.extend((c, depth + 1) for c in node.children if isinstance(c, Tree))


def _transform(tree: Tree, src: Source):
    try:
        return _ToAst(src).transform(tree)
    except VisitError as err:
        if isinstance(err.orig_exc, ResdslError):
            raise err.orig_exc from None
        raise


def parse(text: str, path: str = "<string>", limits: Limits = DEFAULT) -> A.Module:
    """Parse the text of an .arch file into an `ast.Module`; raise ResdslError on bad syntax."""
    src = Source(path, text)
    if len(text) > limits.max_source_bytes:
        raise ResdslError(f"{path}: {len(text):,} characters, more than a spec may have "
                          f"({limits.max_source_bytes:,})",
                          hint=limits.describe("max_source_bytes"))
    try:
        tree = _parser().parse(text, start="start")
    except UnexpectedInput as err:
        raise _syntax_error(err, src) from None
    _check_depth(tree, src, limits)
    items = _transform(tree, src)
    return A.Module(src, items)


def lex(text: str, path: str = "<string>", limits: Limits = DEFAULT) -> list[A.Token]:
    """The tokens of a spec, comments included (`parse` ignores them; `resdsl fmt` puts
    each back where it was); whitespace is left out. ResdslError on a character no token
    can start with.

    >>> [t.text for t in lex("x = 1  # one")]
    ['x', '=', '1', '# one']
    """
    src = Source(path, text)
    if len(text) > limits.max_source_bytes:
        raise ResdslError(f"{path}: {len(text):,} characters, more than a spec may have "
                          f"({limits.max_source_bytes:,})",
                          hint=limits.describe("max_source_bytes"))
    try:
        return [A.Token(tok.type, str(tok), _span(src, tok))
                for tok in _parser().lex(text, dont_ignore=True) if tok.type != "WS"]
    except UnexpectedInput as err:
        raise _syntax_error(err, src) from None


def parse_expression(text: str, origin: Span) -> A.Expr:
    """Parse one expression (the inside of a `{...}` in a name template such as
    "denselayer{i+1}"); errors point at `origin`, the string it came from."""
    src = Source(origin.path, text)
    try:
        tree = _parser().parse(text, start="expr")
    except UnexpectedInput:
        raise ResdslError(f"`{{{text}}}` in a name template is not an expression", origin,
                          hint='write e.g. name="denselayer{i+1}" (i counts from 0)') from None
    _check_depth(tree, src, DEFAULT)
    expr = _transform(tree, src)
    return _Respan(origin).visit(expr)


class _Respan:
    """Moves every span of a sub-parsed expression onto the span of its string."""

    def __init__(self, origin: Span) -> None:
        self.origin = origin

    def visit(self, node):
        import dataclasses
        if isinstance(node, tuple):
            return tuple(self.visit(x) for x in node)
        if not dataclasses.is_dataclass(node):
            return node
        changes = {}
        for f in dataclasses.fields(node):
            value = getattr(node, f.name)
            if isinstance(value, Span):
                changes[f.name] = self.origin
            elif isinstance(value, tuple) or dataclasses.is_dataclass(value):
                changes[f.name] = self.visit(value)
        return dataclasses.replace(node, **changes)


@dataclasses.dataclass(frozen=True)
class BlockName:
    """A bare name in a parameter value given from outside (`-D unit=bottleneck`): the
    block (or model) of that name in the spec, resolved at elaboration."""

    name: str


def parse_value(text: str, what: str = "the value") -> object:
    """A parameter value written in the language's own literals, as `-D` takes it:
    numbers, strings ("..."), true/false, lists, `{key: value}` and block names.

    >>> parse_value("[3, 4, 6, 3]")
    [3, 4, 6, 3]
    >>> parse_value("bottleneck")
    BlockName(name='bottleneck')
    """
    origin = Span(Source(f"<{what}>", text), 1, 1, 1, len(text) + 1)
    src = Source(origin.path, text)
    if len(text) > 10_000:
        raise ResdslError(f"{what}: longer than 10,000 characters")
    try:
        tree = _parser().parse(text, start="expr")
    except UnexpectedInput as err:
        raise _syntax_error(err, src) from None
    _check_depth(tree, src, DEFAULT)
    return _value(_transform(tree, src), what)


def _value(e, what: str):
    if isinstance(e, A.Num | A.Str | A.Bool):
        return e.value
    if isinstance(e, A.Unary) and e.op == "-" and isinstance(e.operand, A.Num):
        return -e.operand.value
    if isinstance(e, A.ListE):
        return [_value(x, what) for x in e.items]
    if isinstance(e, A.DictE):
        return {k: _value(v, what) for k, v, _ in e.items}
    if isinstance(e, A.Ref):
        return BlockName(e.name)
    raise ResdslError(f"{what}: only literals are allowed here (numbers, \"strings\", "
                      "true/false, [lists], {key: value}, block names)", e.span)
