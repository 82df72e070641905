"""Source spans and the one error type every user-facing failure goes through.

Every AST node and IR node carries a `Span`; every error a user can cause is a
`ResdslError` rendered by `render()` as

    specs/x.arch:12:17: error: add of tensors with different shapes: [64, 56, 56] and [256, 56, 56]
       12 |     return relu(main + skip)
          |                 ^^^^^^^^^^^
    hint: give the shortcut a projection, e.g. `skip = shortcut(downsample: (conv(256, k=1) -> bn))`

>>> from resdsl.errors import Source, Span, ResdslError
>>> src = Source("x.arch", "model m() { }")
>>> print(ResdslError("no input", Span(src, 1, 1, 1, 6), hint="add `input [3, 32, 32]`").render())
x.arch:1:1: error: no input
   1 | model m() { }
     | ^^^^^
hint: add `input [3, 32, 32]`
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, eq=False)
class Source:
    """A text that was parsed: its path (as the user named it) and its content."""

    path: str
    text: str

    def line(self, n: int) -> str:
        lines = self.text.splitlines()
        return lines[n - 1] if 0 < n <= len(lines) else ""


@dataclass(frozen=True)
class Span:
    """A region of a source: 1-based line and column, end exclusive."""

    source: Source = field(compare=False, repr=False)
    line: int
    column: int
    end_line: int
    end_column: int

    @property
    def path(self) -> str:
        return self.source.path

    def __str__(self) -> str:
        return f"{self.source.path}:{self.line}:{self.column}"

    def to_json(self) -> dict:
        return {"file": self.source.path, "line": self.line, "column": self.column,
                "end_line": self.end_line, "end_column": self.end_column}


@dataclass
class Note:
    """A secondary location shown under an error ("in block X instantiated here")."""

    message: str
    span: Span | None = None


class ResdslError(Exception):
    """An error in what the user wrote: a message, where, and what to do about it."""

    def __init__(self, message: str, span: Span | None = None, hint: str | None = None,
                 notes: list[Note] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.span = span
        self.hint = hint
        self.notes: list[Note] = list(notes or [])

    def with_note(self, message: str, span: Span | None) -> "ResdslError":
        self.notes.append(Note(message, span))
        return self

    def render(self) -> str:
        return render(self)

    def __str__(self) -> str:
        return render(self)


def _excerpt(span: Span) -> list[str]:
    text = span.source.line(span.line)
    if not text and span.line > len(span.source.text.splitlines()):
        return []
    width = len(str(span.line))
    gutter = " " * max(width, 4)
    start = max(span.column, 1)
    if span.end_line == span.line and span.end_column > span.column:
        length = span.end_column - span.column
    else:
        length = max(len(text.rstrip()) - start + 1, 1)
    expanded = text.replace("\t", " ")
    if len(expanded) > _WIDTH:  # a long line: a window around the caret
        lo = max(0, min(start - 1 - _WIDTH // 3, len(expanded) - _WIDTH))
        shown = expanded[lo:lo + _WIDTH]
        prefix = "..." if lo > 0 else ""
        suffix = "..." if lo + _WIDTH < len(expanded) else ""
        start = start - lo + len(prefix)
        length = max(1, min(length, len(shown) + len(prefix) - start + 1))
        expanded = prefix + shown + suffix
    return [f"{str(span.line).rjust(len(gutter))} | {expanded}",
            f"{gutter} | {' ' * (start - 1)}{'^' * length}"]


_WIDTH = 150  # characters of a source line shown in an error


def render(err: ResdslError) -> str:
    """Render an error as `file:line:col: error: message`, the line, a caret, notes, a hint."""
    head = f"{err.span}: error: {err.message}" if err.span else f"error: {err.message}"
    out = [head]
    if err.span:
        out += _excerpt(err.span)
    for note in err.notes:
        out.append(f"{note.span}: note: {note.message}" if note.span else f"note: {note.message}")
        if note.span:
            out += _excerpt(note.span)
    if err.hint:
        out.append(f"hint: {err.hint}")
    return "\n".join(_printable(line) for line in out)


def _printable(line: str) -> str:
    """A line safe to print to a terminal: control characters (from a hostile file name
    or spec text) are shown escaped, never sent raw."""
    if line.isprintable():
        return line
    return "".join(ch if ch.isprintable() or ch == "\t" else ascii(ch)[1:-1] for ch in line)
