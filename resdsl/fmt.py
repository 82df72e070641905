"""`resdsl fmt`: one canonical layout for .arch files, every comment kept where it was.

>>> from resdsl.fmt import format_text
>>> print(format_text("model m(){input [3,8,8]   # in\\n conv1:conv(4,k=3)}"), end="")
model m() {
    input [3, 8, 8]  # in
    conv1: conv(4, k=3)
}

How it works: the parser gives the AST, `parser.lex` the tokens with the comments. The
AST is printed back into a layout document (Wadler/Oppen style: groups that break as a
whole, fills that break where the next piece does not fit), token by token, each token
taken from the source in order; a comment goes right after the token it trails (a
comment on the same line) or right before the token it precedes (a comment on its own
line). The output has the same tokens as the input (less trailing commas) and the same
comments after the same tokens, which is checked before anything is returned: a layout
that would change the meaning is refused with a ResdslError, never written.

The layout: 4-space indentation; `a -> b`, `x = 1`, `name = default` in parameters,
`k=3` in arguments, `a + b` (spaces around binary operators), `label: layer`, `[a, b]`,
`{stride: 2}`; at most 120 columns, broken first at `->` (continuation lines indented by
4, or at the statement's own level for a model's bare result pipe and inside `( ... )`),
then inside argument lists. Line breaks before `->` that the author wrote are kept (they
group a pipe's layers the way the paper's figure does); a single blank line between
statements and items is kept, more are collapsed.
"""

from __future__ import annotations

import difflib
import os
import stat
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from resdsl.errors import ResdslError
from resdsl.limits import DEFAULT, Limits
from resdsl.syntax import ast as A
from resdsl.syntax.parser import lex, parse

WIDTH = 120
INDENT = 4

# ---- the layout document ---------------------------------------------------------------


@dataclass
class Line:
    """A space (or nothing, `soft`) when its group is flat, a newline when it breaks."""

    soft: bool = False


@dataclass
class Hard:
    """Always a newline."""


@dataclass
class Nest:
    indent: int
    doc: object


@dataclass
class Group:
    docs: list
    broken: bool = False


@dataclass
class Fill:
    """[content, separator, content, ...]: a separator breaks when the content after it
    does not fit on the line."""

    parts: list


@dataclass
class Trail:
    """A comment after code on its line."""

    text: str


@dataclass
class Own:
    """A comment on a line of its own (`blank`: a blank line before it)."""

    text: str
    blank: bool = False
    gap_after: bool = False     # a blank line between it and the code after it


@dataclass
class _Rest:
    """While rendering: the parts of a Fill from `i` on."""

    parts: list
    i: int


_FLAT, _BREAK = 0, 1


def _propagate(doc) -> dict[int, bool]:
    """Mark every group that holds a forced newline (a hard line or a comment) as broken;
    return, by id, which parts of `doc` hold one."""
    stack, order = [doc], []
    while stack:             # post-order without recursion: deep specs stay cheap
        d = stack.pop()
        order.append(d)
        if isinstance(d, list):
            stack.extend(d)
        elif isinstance(d, Nest):
            stack.append(d.doc)
        elif isinstance(d, Group):
            stack.extend(d.docs)
        elif isinstance(d, Fill):
            stack.extend(d.parts)
    hard: dict[int, bool] = {}
    for d in reversed(order):
        if isinstance(d, (Hard, Trail, Own)):
            hard[id(d)] = True
        elif isinstance(d, list):
            hard[id(d)] = any(hard.get(id(x), False) for x in d)
        elif isinstance(d, Nest):
            hard[id(d)] = hard.get(id(d.doc), False)
        elif isinstance(d, Group):
            d.broken = d.broken or any(hard.get(id(x), False) for x in d.docs)
            hard[id(d)] = d.broken
        elif isinstance(d, Fill):
            hard[id(d)] = any(hard.get(id(x), False) for x in d.parts)
    return hard


def _fits(nxt: list, rest: list, width: int) -> bool:
    cmds = list(nxt)
    rest_i = len(rest)
    while width >= 0:
        if not cmds:
            if rest_i == 0:
                return True
            rest_i -= 1
            cmds.append(rest[rest_i])
            continue
        ind, mode, d = cmds.pop()
        if isinstance(d, str):
            width -= len(d)
        elif isinstance(d, list):
            cmds.extend((ind, mode, x) for x in reversed(d))
        elif isinstance(d, Nest):
            cmds.append((ind + d.indent, mode, d.doc))
        elif isinstance(d, Group):
            cmds.append((ind, _BREAK if d.broken else mode, d.docs))
        elif isinstance(d, Fill):
            cmds.append((ind, mode, d.parts))
        elif isinstance(d, Line):
            if mode == _BREAK:
                return True
            width -= 0 if d.soft else 1
        elif isinstance(d, Trail):
            return width - len(d.text) - 2 >= 0
        else:               # Hard, Own: the rest starts a new line
            return True
    return False


def render(doc, width: int = WIDTH) -> str:
    """Lay out a document at `width` columns."""
    hard = _propagate(doc)
    out: list[str] = []
    col = 0
    pending: tuple[str, int] | None = None   # a newline owed after a comment

    def at_line_start() -> bool:
        return not out or (out[-1].startswith("\n") and not out[-1].strip())

    def newline(indent: int) -> None:
        nonlocal col
        while out and out[-1].strip(" ") == "" and "\n" not in out[-1]:
            out.pop()
        if out:
            out[-1] = out[-1].rstrip(" ")
        out.append("\n" + " " * indent)
        col = indent

    cmds: list = [(0, _BREAK, doc)]
    while cmds:
        ind, mode, d = cmds.pop()
        if isinstance(d, str):
            if pending is not None:
                if not d.strip():
                    continue
                newline(pending[1] if pending[0] != "trail" else ind + INDENT)
                if pending[0] == "gap":
                    newline(pending[1])
                pending = None
            out.append(d)
            col += len(d)
        elif isinstance(d, list):
            cmds.extend((ind, mode, x) for x in reversed(d))
        elif isinstance(d, Nest):
            cmds.append((ind + d.indent, mode, d.doc))
        elif isinstance(d, Group):
            flat = not d.broken and (mode == _FLAT or
                                     _fits([(ind, _FLAT, d.docs)], cmds, width - col))
            cmds.append((ind, _FLAT if flat else _BREAK, d.docs))
        elif isinstance(d, Fill):
            if d.parts:
                cmds.append((ind, mode, _Rest(d.parts, 0)))
        elif isinstance(d, _Rest):
            # decided when its turn comes, at the column where the previous part ended
            part, i = d.parts[d.i], d.i
            if i + 1 < len(d.parts):
                cmds.append((ind, mode, _Rest(d.parts, i + 1)))
            if i % 2 == 0:      # content: flat if it fits and holds no forced newline
                flat = not hard.get(id(part)) and _fits([(ind, _FLAT, part)], [], width - col)
            else:               # separator: flat if the next content's first line fits
                flat = not hard.get(id(part)) and \
                    _fits([(ind, _FLAT, [part, d.parts[i + 1]])], [], width - col)
            cmds.append((ind, _FLAT if flat else _BREAK, part))
        elif isinstance(d, Line):
            if mode == _BREAK or pending is not None:
                newline(ind)
                pending = None
            elif not d.soft:
                out.append(" ")
                col += 1
        elif isinstance(d, Hard):
            newline(ind)
            pending = None
        elif isinstance(d, Trail):
            out.append("  " + d.text)
            col += len(d.text) + 2
            pending = ("trail", 0)
        elif isinstance(d, Own):
            if pending is not None:
                newline(pending[1] if pending[0] != "trail" else ind + INDENT)
                pending = None
            if at_line_start():
                here = col
            else:
                here = ind + INDENT
                newline(here)
            if d.blank and any(p.strip() for p in out) and not (len(out) >= 2 and out[-2] == "\n"):
                newline(here)
            out.append(d.text)
            col += len(d.text)
            pending = ("gap" if d.gap_after else "own", here)
    text = "".join(out)
    return "\n".join(line.rstrip() for line in text.split("\n")).strip("\n") + "\n"


# ---- AST -> document -------------------------------------------------------------------


class _Unsafe(Exception):
    """The printer and the source disagree about the tokens: refuse, never guess."""


@dataclass
class _Tok:
    kind: str
    text: str
    line: int
    end_line: int
    blank: bool = False                             # a blank line before it
    before: list = field(default_factory=list)      # own-line comments before it
    after: list = field(default_factory=list)       # the comment trailing it
    newline_before: bool = False


_CLOSERS = {")", "]", "}"}


def _tokens(tokens: list[A.Token]) -> tuple[list[_Tok], list[Own]]:
    """Significant tokens with their comments attached; own-line comments after the last
    token are returned apart."""
    toks: list[_Tok] = []
    loose: list[Own] = []
    prev_end = None
    for t in tokens:
        blank = prev_end is not None and t.span.line - prev_end >= 2
        if t.kind == "COMMENT":
            text = t.text.rstrip()
            if toks and not loose and t.span.line == toks[-1].end_line:
                toks[-1].after.append(Trail(text))
            else:
                loose.append(Own(text, blank))
        else:
            tok = _Tok(t.kind, t.text, t.span.line, t.span.end_line, blank,
                       newline_before=prev_end is not None and t.span.line > prev_end)
            tok.before, loose = loose, []
            toks.append(tok)
        prev_end = t.span.end_line
    return toks, loose


class _Printer:
    def __init__(self, toks: list[_Tok]) -> None:
        self.toks = toks
        self.i = 0

    # tokens
    def peek(self, ahead: int = 0) -> _Tok | None:
        j = self.i + ahead
        return self.toks[j] if j < len(self.toks) else None

    def t(self, expected: str | None = None, kind: str | None = None) -> list:
        tok = self.peek()
        if tok is None or (expected is not None and tok.text != expected) or \
                (kind is not None and tok.kind != kind):
            raise _Unsafe(f"expected {expected or kind}, found "
                          f"{tok.text if tok else 'the end'}")
        self.i += 1
        if tok.before and tok.blank:
            tok.before[-1].gap_after = True
        return [*tok.before, tok.text, *tok.after]

    def close(self, text: str) -> tuple[list, list]:
        """A closing bracket, and apart from it the comment trailing it: that comment
        goes after the group, so it does not break the group open."""
        doc = self.t(text)
        trail = [d for d in doc if isinstance(d, Trail)]
        return [d for d in doc if not isinstance(d, Trail)], trail

    def trailing_comma(self) -> list:
        """A `,` before a closing bracket is dropped, unless a comment is attached to it
        (two comments would meet on one line)."""
        tok, nxt = self.peek(), self.peek(1)
        if tok is not None and tok.text == "," and nxt is not None and nxt.text in _CLOSERS:
            if tok.before or tok.after:
                return self.t(",")
            self.i += 1
        return []

    def claim_own(self) -> list:
        """The own-line comments before the next token, to print them at this level."""
        tok = self.peek()
        if tok is None or not tok.before:
            return []
        docs, tok.before = tok.before, []
        return docs

    def blank_before_next(self) -> bool:
        tok = self.peek()
        return bool(tok and (tok.blank or (tok.before and tok.before[0].blank)))

    # items
    def module(self, mod: A.Module) -> list:
        docs: list = []
        for n, item in enumerate(mod.items):
            if n:
                docs.append(Hard())
                if self.blank_before_next() and not self.peek().before:
                    docs.append(Hard())
            docs.append(self.item(item))
        if self.i != len(self.toks):
            raise _Unsafe("tokens left over")
        return docs

    def item(self, item: A.Item) -> list:
        if isinstance(item, A.Use):
            return [self.t("use"), " ", self.t(kind="STRING")]
        if isinstance(item, A.BlockDef):
            doc = [self.t("model" if item.is_model else "block"), " ", self.t(item.name),
                   self.params(item.params), " ", self.body(item.body)]
            return doc
        doc = [self.t("model"), " ", self.t(item.name)]
        nxt = self.peek()
        if nxt is not None and nxt.text == "(":
            doc.append(self.params(item.params))
        elif item.params:
            raise _Unsafe("alias parameters without parentheses")
        return doc + [" ", self.t("="), " ", self.expr(item.target)]

    def params(self, params: tuple[A.Param, ...]) -> list:
        open_ = self.t("(")
        parts: list = []
        for n, p in enumerate(params):
            if n:
                parts.append([self.t(","), Line()])
            doc = [self.t(p.name)]
            if p.default is not None:
                doc += [" ", self.t("="), " ", self.expr(p.default)]
            parts.append(doc)
        tail = self.trailing_comma()
        close, trail = self.close(")")
        return [Group([open_, Nest(2 * INDENT, [Line(soft=True), _fill(parts)]), tail, close]),
                trail]

    def body(self, body: tuple[A.Stmt, ...]) -> list:
        open_ = self.t("{")
        inner: list = []
        for n, stmt in enumerate(body):
            inner.append(Hard())
            if n and self.blank_before_next() and not self.peek().before:
                inner.append(Hard())
            inner.append(self.stmt(stmt))
        rest = self.claim_own()
        if rest:
            inner += [Hard(), rest]
        return [open_, Nest(INDENT, inner), Hard(), self.t("}")]

    def stmt(self, s: A.Stmt) -> list:
        if isinstance(s, A.Input):
            return [self.t("input"), " ", self.expr(s.shape)]
        if isinstance(s, A.Assign):
            return [self.t(s.name), " ", self.t("="), " ", self.expr(s.value)]
        if isinstance(s, A.Return):
            return [self.t("return"), " ", self.expr(s.value)]
        return self.expr(s.value, level=True)

    # expressions
    def expr(self, e: A.Expr, level: bool = False):
        if isinstance(e, A.Pipe):
            return self.pipe(e, level)
        if isinstance(e, (A.Num, A.Str)):
            return self.t(kind="NUMBER" if isinstance(e, A.Num) else "STRING")
        if isinstance(e, A.Bool):
            return self.t("true" if e.value else "false")
        if isinstance(e, A.Ref):
            return self.t(e.name)
        if isinstance(e, A.Call):
            return self.call(e)
        if isinstance(e, A.Labeled):
            return [self.t(), self.t(":"), " ", self.expr(e.inner)]  # a name, number or string
        if isinstance(e, A.Group):
            open_ = self.t("(")
            inner = self.expr(e.inner, level=True)
            close, trail = self.close(")")
            return [Group([open_, Nest(INDENT, [Line(soft=True), inner]), Line(soft=True),
                           close]), trail]
        if isinstance(e, A.ListE):
            return self.seq("[", e.items, "]")
        if isinstance(e, A.DictE):
            return self.seq("{", e.items, "}")
        if isinstance(e, A.BinOp):
            left = self.expr(e.left)
            return [left, " ", self.t(e.op), " ", self.expr(e.right)]
        if isinstance(e, A.Unary):
            op = self.t(e.op)
            return [op, " " if e.op == "not" else "", self.expr(e.operand)]
        if isinstance(e, A.Attr):
            return [self.expr(e.obj), self.t("."), self.t(e.name)]
        if isinstance(e, A.Index):
            return [self.expr(e.obj), self.t("["), self.expr(e.index), self.t("]")]
        if isinstance(e, A.Cond):
            return [self.t("if"), " ", self.expr(e.cond), " ", self.t("then"), " ",
                    self.expr(e.then), " ", self.t("else"), " ", self.expr(e.other)]
        raise _Unsafe(f"unknown expression {type(e).__name__}")

    def pipe(self, e: A.Pipe, level: bool):
        parts: list = [self.expr(e.stages[0])]
        for stage in e.stages[1:]:
            arrow_tok = self.peek()
            arrow = self.t("->")
            after = self.peek()
            user_break = bool(arrow_tok.newline_before or
                              (after is not None and after.newline_before))
            parts.append(Hard() if user_break else Line())
            parts.append([arrow, " ", self.expr(stage)])
        return Nest(0 if level else INDENT, _fill(parts))

    def call(self, e: A.Call):
        name = self.t(e.name)
        open_ = self.t("(")
        parts: list = []
        for n, arg in enumerate(e.args):
            if n:
                parts.append([self.t(","), Line()])
            if arg.name is None:
                parts.append(self.expr(arg.value))
            else:
                parts.append([self.t(arg.name), self.t("="), self.expr(arg.value)])
        tail = self.trailing_comma()
        close, trail = self.close(")")
        if not parts:
            return [name, open_, tail, close, trail]
        return [Group([name, open_, Nest(INDENT, [Line(soft=True), _fill(parts)]), tail,
                       close]), trail]

    def seq(self, open_text: str, items, close_text: str):
        open_ = self.t(open_text)
        parts: list = []
        for n, item in enumerate(items):
            if n:
                parts.append([self.t(","), Line()])
            if isinstance(item, tuple):         # a dict entry: key, value, span
                key, value, _ = item
                parts.append([self.t(key), self.t(":"), " ", self.expr(value)])
            else:
                parts.append(self.expr(item))
        tail = self.trailing_comma()
        close, trail = self.close(close_text)
        return [Group([open_, Nest(INDENT, [Line(soft=True), _fill(parts)]), tail, close]),
                trail]


def _fill(parts: list) -> Fill:
    """Turn [a, [",", Line], b, ...] (separators hold their own Line at the end) into a
    Fill whose separators are the Lines, the commas staying with what precedes them."""
    out: list = []
    for p in parts:
        if isinstance(p, list) and p and isinstance(p[-1], Line) and out:
            out[-1] = [out[-1], p[:-1]]
            out.append(p[-1])
        elif isinstance(p, (Line, Hard)) and out:
            out.append(p)
        else:
            out.append(p)
    return Fill(out)


# ---- the checks and the API ------------------------------------------------------------


def _signature(tokens: list[A.Token]) -> tuple[list[str], list[tuple[int, str, bool]]]:
    """What formatting must keep: the significant tokens (trailing commas aside) and each
    comment with the token count before it and whether it trails a token."""
    toks: list[str] = []
    comments: list[tuple[int, str, bool]] = []
    sig = [t for t in tokens if t.kind != "COMMENT"]
    drop = {id(t) for t, nxt in zip(sig, sig[1:]) if t.text == "," and nxt.text in _CLOSERS}
    last_line = None
    for t in tokens:
        if t.kind == "COMMENT":
            comments.append((len(toks), t.text.rstrip(), t.span.line == last_line))
            continue
        last_line = t.span.end_line
        if id(t) not in drop:
            toks.append(t.text)
    return toks, comments


def format_text(text: str, path: str = "<string>", width: int = WIDTH,
                limits: Limits = DEFAULT) -> str:
    """The canonical layout of spec text. ResdslError for a spec that does not parse, or
    one that cannot be laid out without changing its tokens or moving a comment."""
    module = parse(text, path, limits)
    tokens = lex(text, path, limits)
    toks, loose = _tokens(tokens)
    try:
        doc = _Printer(toks).module(module)
    except _Unsafe as err:
        raise ResdslError(f"{path}: resdsl fmt cannot lay this file out safely ({err}); "
                          "it was left as it is") from None
    if loose:
        doc = [doc, Hard() if toks else [], loose]
    out = render(doc, width)
    if not module.items and not loose:
        out = ""
    _verify(text, out, path, limits)
    return out


def _verify(before: str, after: str, path: str, limits: Limits) -> None:
    try:
        parse(after, path, limits)
        same = _signature(lex(after, path, limits)) == _signature(lex(before, path, limits))
    except ResdslError:
        same = False
    if not same:
        raise ResdslError(f"{path}: resdsl fmt would change the tokens or the comments of "
                          "this file; it was left as it is",
                          hint="please report this file: it is a bug in resdsl fmt")


@dataclass
class Result:
    """The outcome of formatting one file."""

    path: str
    before: str
    after: str

    @property
    def changed(self) -> bool:
        return self.before != self.after

    def diff(self) -> str:
        return "".join(difflib.unified_diff(
            self.before.splitlines(keepends=True), self.after.splitlines(keepends=True),
            fromfile=f"a/{self.path}", tofile=f"b/{self.path}"))


def format_file(path: str | os.PathLike, write: bool = False,
                limits: Limits = DEFAULT) -> Result:
    """Format one file; with `write`, replace it atomically, only if its layout changes
    (and only if it did not change on disk meanwhile). Symbolic links are refused."""
    from resdsl.loader import read_spec
    name = str(path)
    if os.path.islink(path):
        raise ResdslError(f"{name}: a symbolic link; resdsl fmt formats only regular files",
                          hint="format the file the link points to")
    before = read_spec(path, limits)
    result = Result(name, before, format_text(before, name, limits=limits))
    if write and result.changed:
        _replace(Path(path), before, result.after)
    return result


def _replace(path: Path, before: str, after: str) -> None:
    from resdsl import atomic
    st = os.stat(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(after.encode("utf-8"))
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, stat.S_IMODE(st.st_mode))
        with open(path, "rb") as f:
            if f.read() != before.encode("utf-8"):
                raise ResdslError(f"{path}: changed on disk while it was being formatted; "
                                  "left as it is", hint="run resdsl fmt again")
        atomic.publish_file(tmp, path, force=True)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
