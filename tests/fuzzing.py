"""Fuzzing resdsl: every input must load or raise ResdslError, quickly and in bounded memory.

The contract under test: for any text, `resdsl.loads(text, path)` (and `resdsl.load(path)`)
either returns an Arch or raises `resdsl.errors.ResdslError` (whose `render()` works), in a
few seconds and a bounded amount of memory. Anything else is a bug.

This module is shared by `benchmarks/fuzz.py` (the command-line fuzzer) and
`tests/test_fuzz.py` (a fixed-seed sample in the test suite). It has:

* case generators, each reproducible from an integer seed:
  - `generated_case(seed)`: a structurally plausible spec (blocks, a model with an `input`,
    ops, combinators, arithmetic, name templates, `first={...}` overrides), built so that a
    good share of cases get past the parser into elaboration, with occasional hostile values;
  - `mutated_case(seed)`: a reference spec (specs/*.arch, specs/resnext_forms/*.arch, loaded
    with its real path so its `use` resolves) with token deletions, duplications, swaps,
    hostile numbers and strings, truncation, deep nesting and hostile `use` paths;
  - `hostile_case(seed)`: `use` of / `load()` of hostile files (/etc/passwd, /dev/zero, a
    non-UTF-8 file, a directory, a FIFO, symlinks out of the tree, cycles), in a fixture
    spec tree (`make_tree`) that holds a copy of specs/ and those files;
  - `lark_strategy()`: hypothesis' `from_lark` over grammars/arch.lark, with explicit
    terminal strategies so that tokens are separated by spaces and names are not keywords;
    `lark_cases(n, seed)` draws n of them reproducibly.
* a runner: `run_case(case, timeout)` runs one case in this process under a SIGALRM
  wall-clock cap and classifies it as "ok", "resdsl-error", "exception:<Type>" (traceback
  kept) or "timeout"; `Sandbox` / `run_cases` run cases in worker processes that are
  killed when a case hangs where SIGALRM cannot interrupt it (a big-int `**` in C), and
  which run under an address-space limit so unbounded memory shows as a MemoryError
  (a worker that dies outright is reported as "crash:<signal or code>").

A case is a plain dataclass that round-trips through JSON (`Case.to_json`), which is what
the reproducer files of benchmarks/fuzz.py hold.
"""

from __future__ import annotations

import base64
import dataclasses
import multiprocessing
import multiprocessing.connection
import os
import random
import re
import resource
import shutil
import signal
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GRAMMAR = ROOT / "grammars" / "arch.lark"
SPECS = ROOT / "specs"

if str(ROOT) not in sys.path:  # resdsl from this checkout, also when run as a script
    sys.path.insert(0, str(ROOT))

OK = "ok"
RESDSL_ERROR = "resdsl-error"
TIMEOUT = "timeout"
GOOD = (OK, RESDSL_ERROR)


def reference_specs() -> list[str]:
    """The reference specs, as paths relative to the repository root."""
    paths = sorted(SPECS.glob("*.arch")) + sorted((SPECS / "resnext_forms").glob("*.arch"))
    return [str(p.relative_to(ROOT)) for p in paths]


# --------------------------------------------------------------------------------------
# Cases


@dataclass
class Case:
    """One input. `mode` "loads": `resdsl.loads(text, path)`; "load": `data` (or nothing,
    for a hostile existing file) is written to `path` and `resdsl.load(path)` is called.
    A path starting with "@tree/" lives in the fixture tree (`make_tree`); other paths are
    relative to the repository root (the runner's working directory)."""

    id: str
    text: str = ""
    path: str = "<string>"
    mode: str = "loads"
    data: bytes | None = None
    note: str = ""

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["data"] = None if self.data is None else base64.b64encode(self.data).decode()
        return d

    @classmethod
    def from_json(cls, d: dict) -> "Case":
        d = dict(d)
        if d.get("data") is not None:
            d["data"] = base64.b64decode(d["data"])
        return cls(**{k: v for k, v in d.items() if k in {f.name for f in dataclasses.fields(cls)}})

    def source(self) -> str:
        """The spec text as a person would read it."""
        if self.mode == "load" and self.data is not None:
            return self.data.decode("utf-8", "backslashreplace")
        return self.text


@dataclass
class Outcome:
    kind: str                     # ok | resdsl-error | exception:<Type> | timeout | crash:...
    seconds: float
    message: str = ""             # the exception's message (truncated)
    traceback: str = ""
    where: str = ""               # innermost resdsl frame: "resdsl/x.py:123 in f: <line>"
    maxrss_kb: int = 0            # the worker's peak RSS so far

    @property
    def good(self) -> bool:
        return self.kind in GOOD

    def signature(self) -> str:
        """What distinguishes failure kinds: the kind and the resdsl line it came from."""
        return f"{self.kind} @ {self.where or '?'}"


# --------------------------------------------------------------------------------------
# The fixture tree: a copy of specs/ plus hostile files, for `use` and `load()` cases.

NON_UTF8 = b"# caf\xe9 cr\xe8me\nmodel m() { input [3, 8, 8]\n conv(4, k=3) }\n"
HOSTILE_FILES: dict[str, bytes] = {
    "hostile/latin1.arch": NON_UTF8,
    "hostile/invalid_utf8.arch": b"block b() { return relu }\n\xff\xfe\xfd\n",
    "hostile/nul.arch": b"block b() {\x00 return relu }\n",
    "hostile/bom.arch": b"\xef\xbb\xbfblock b_bom() { return relu }\n",
    "hostile/utf16.arch": "block b16() { return relu }\n".encode("utf-16"),
    "hostile/crlf.arch": b"block bcrlf() {\r\n return relu\r\n}\r\n",
    "hostile/self.arch": b'use "self.arch"\nblock bself() { return relu }\n',
    "hostile/cycle_a.arch": b'use "cycle_b.arch"\nblock ca() { return relu }\n',
    "hostile/cycle_b.arch": b'use "cycle_a.arch"\nblock cb() { return relu }\n',
    "hostile/clash.arch": b'use "../lib/resnet.arch"\nblock basic() { return relu }\n',
    "hostile/model.arch": b"model other() { input [3, 8, 8]\n relu }\n",
    "hostile/deep.arch": b"block bdeep(x = " + b"(" * 3000 + b"1" + b")" * 3000 + b") { return relu }\n",
    "hostile/empty.arch": b"",
}
HOSTILE_LINKS = {
    "hostile/passwd.arch": "/etc/passwd",
    "hostile/zero.arch": "/dev/zero",
    "hostile/environ.arch": "/proc/self/environ",
    "hostile/dangling.arch": "/nonexistent/x.arch",
    "hostile/loop.arch": "loop.arch",
    "hostile/up.arch": "../../..",
}
HOSTILE_DIRS = ("hostile/dir.arch",)
HOSTILE_FIFOS = ("hostile/fifo.arch",)


def make_tree(directory: str | Path) -> Path:
    """Build the fixture spec tree in `directory`: a copy of specs/ (so `lib/` makes it a
    spec tree) and the hostile files. Deterministic; returns the tree's path."""
    tree = Path(directory) / "tree"
    if tree.exists():
        return tree
    shutil.copytree(SPECS, tree, ignore=shutil.ignore_patterns("__pycache__"))
    (tree / "hostile").mkdir()
    for rel, data in HOSTILE_FILES.items():
        (tree / rel).write_bytes(data)
    for rel, target in HOSTILE_LINKS.items():
        os.symlink(target, tree / rel)
    for rel in HOSTILE_DIRS:
        (tree / rel).mkdir()
    for rel in HOSTILE_FIFOS:
        try:
            os.mkfifo(tree / rel)
        except (AttributeError, OSError):  # pragma: no cover - no FIFOs here
            pass
    return tree


# --------------------------------------------------------------------------------------
# Hostile values

HUGE_NUMBERS = [
    "0", "-1", "0.5", "2.5", "1e-9", "0.0", "-0", "1000000000", "10**9", "10**30",
    "2**63", "-(2**63)", "10**10**10", "9**9**9", "9 ** 9 ** 9 ** 9", "2**2**2**2**2**2",
    "1e400", "-1e400", "1e308 * 10", "1e400 - 1e400", "1e-400", "99999999999999999999999999",
    "1" * 5000, "1." + "0" * 5000, "1e" + "9" * 30, "0.1 + 0.2", "7 / 2", "(1 / 3) * 3",
    "10 ** -400", "(-8) ** (1/3)", "0 ** -1", "(-1) ** 0.5", "2 ** 0.5", "10 // 0", "10 % 0",
    "1 / 0", "0.0 / 0", "round(1e400)", "int(1e400)", "floor(1e300 * 1e300)",
    "ceil(-1e400)", "round(2.5)", "int(-0.5)", "abs(-2**1000)", "min()", "max([])",
    "len(3)", "len([1, 2, 3])", "min(1, \"a\")", "max([1], 2)", "abs(true)", "int(\"7\")",
    "round(1, 2, 3)", "floor()", "true", "false", "\"x\"", "[1, 2]", "[]", "{stride: 2}",
    "{}", "in", "in.c", "in.shape", "in.shape[0]", "[1][5]", "[1][-1]", "[1][10**30]",
    "[1][0.5]", "[1][true]", "\"abc\"[0]", "1 < 2 < 3", "not 1", "1 and \"x\"",
    "if 1 then 2 else 3", "2 ** 1000 // 3", "2 ** 10000 % 7", "(2 ** 1023) * 2.0",
    "10 ** 308 * 10.0", "4 ** 0.5", "1e300 ** 2", "2.0 ** 2000", "(-2.0) ** 0.5",
]
HOSTILE_STRINGS = [
    '""', '"x"', '"sum"', '"concat"', '"mean"', '"{i}"', '"{i+1}"', '"layer{i}"', '"{}"',
    '"{"', '"}"', '"{{"', '"}}"', '"{i}{i}"', '"{i:>10}"', '"{i!r}"', '"{__class__}"',
    '"{x}"', '"{i ** i ** i}"', '"{9**9**9}"', '"{i / 0}"', '"{i // 0}"', '"{in}"',
    '"{' + "(" * 500 + "i" + ")" * 500 + '}"', '"' + "{" * 300 + "i" + "}" * 300 + '"',
    '"a.b"', '"a b"', '"0"', '"-1"', '"{-i}"', '"{i - 1}"', '"{i * 0}"', '"{\\"}"',
    '"{[i]}"', '"{i.c}"', '"{len(i)}"', '"{floor(i / 2)}"', '"layer{i+1}"',
    '"' + "x" * 10000 + '"', '"\u00e9"', '"\u2028"', '"\\u0000"', '"%s"', '"{i}%"',
]
HOSTILE_USES = [
    "/etc/passwd", "../../../etc/passwd", "../../../../../../../etc/passwd", "/proc/self/environ",
    "/proc/self/mem", "/dev/zero", "/dev/stdin", "/dev/null", "/", ".", "..", "", "lib",
    "lib/", "lib/.", "lib/resnet.arch/..", "lib/../lib/resnet.arch", "./lib/resnet.arch",
    "lib//resnet.arch", "lib/resnet.arch", "lib/densenet.arch", "lib/nonexistent.arch",
    "resnet50.arch", "resnet18.arch", "resnext_forms", "~/x.arch", "$HOME/x.arch",
    "a" * 300, "a/" * 2000 + "x.arch", "lib/" + "../lib/" * 200 + "resnet.arch",
    "x\x00y", "lib/resnet.arch\x00", "\udcff", "caf\u00e9.arch", "\u2028", "lib\\resnet.arch",
    "file:///etc/passwd", "http://example.com/x.arch", "C:\\x.arch", "//etc/passwd",
]
TREE_USES = [  # relative to a spec at the top of the fixture tree
    "hostile/latin1.arch", "hostile/invalid_utf8.arch", "hostile/nul.arch", "hostile/bom.arch",
    "hostile/utf16.arch", "hostile/crlf.arch", "hostile/self.arch", "hostile/cycle_a.arch",
    "hostile/clash.arch", "hostile/model.arch", "hostile/deep.arch", "hostile/empty.arch",
    "hostile/passwd.arch", "hostile/zero.arch", "hostile/environ.arch", "hostile/dangling.arch",
    "hostile/loop.arch", "hostile/up.arch", "hostile/up.arch/etc/passwd", "hostile/dir.arch",
    "hostile/fifo.arch", "hostile", "hostile/", "lib/resnet.arch",
]
LOAD_TARGETS = [  # resdsl.load(path) of hostile paths
    "/etc/passwd", "/proc/self/environ", "/dev/zero", "/dev/null", "/", "/nonexistent.arch",
    "@tree/hostile/latin1.arch", "@tree/hostile/invalid_utf8.arch", "@tree/hostile/nul.arch",
    "@tree/hostile/bom.arch", "@tree/hostile/utf16.arch", "@tree/hostile/self.arch",
    "@tree/hostile/cycle_a.arch", "@tree/hostile/passwd.arch", "@tree/hostile/zero.arch",
    "@tree/hostile/dir.arch", "@tree/hostile/fifo.arch", "@tree/hostile/loop.arch",
    "@tree/hostile/dangling.arch", "@tree/hostile/deep.arch", "@tree/hostile/empty.arch",
    "@tree/hostile/clash.arch", "@tree/hostile/model.arch", "x\x00.arch", "a" * 5000,
]
UNICODE_JUNK = ["\u2028", "\u2029", "\x85", "\x0b", "\x0c", "\x1c", "\r", "\t", "\x00",
                "\ufeff", "\u00e9", "\u0663", "\uff11", "\U0001f600", "\udcff", "\u200b"]
BYTE_JUNK = [b"\xff", b"\xe9", b"\x00", b"\xef\xbb\xbf", b"\xc3", b"\xed\xa0\x80", b"\r",
             b"\xf0\x9f\x98", b"\x80"]

KEYWORDS = {"use", "block", "model", "input", "return", "if", "then", "else", "or", "and",
            "not", "true", "false"}
OPS = ["conv", "bn", "relu", "maxpool", "avgpool", "global_avgpool", "flatten", "linear",
       "dropout", "add", "concat", "zeropad", "sigmoid", "silu", "gelu", "hardsigmoid", "tanh",
       "leaky_relu", "identity", "mul", "gn", "channel_conv", "slice", "drop_path",
       "branch_softmax"]
FUNCS = ["floor", "ceil", "round", "int", "min", "max", "abs", "len", "log2"]
COMBS = ["stage", "dense", "paths", "shortcut"]


def deep_nesting(rng: random.Random) -> str:
    n = rng.choice([10, 100, 300, 1000, 3000, 10000, 50000])
    kind = rng.randrange(12)
    if kind == 0:
        return "(" * n + "1" + ")" * n
    if kind == 1:
        return "1" + " + 1" * n
    if kind == 2:
        return "- " * n + "1"
    if kind == 3:
        return "not " * n + "true"
    if kind == 4:
        return "[" * n + "1" + "]" * n
    if kind == 5:
        return "2 ** " * n + "1"
    if kind == 6:
        return "if true then " * n + "1" + " else 0" * n
    if kind == 7:
        return "{a: " * n + "1" + "}" * n
    if kind == 8:
        return "1" + " * 1" * n
    if kind == 9:
        return "x" + "[0]" * n
    if kind == 10:
        return "a: " * n + "relu"
    return "max(" * n + "1" + ")" * n


# --------------------------------------------------------------------------------------
# Mutating reference specs

TOKEN = re.compile(r'\s+|#[^\n]*|"[^"\n]*"|\.?\d+(?:\.\d*)?(?:[eE][+-]?\d+)?|[A-Za-z_]\w*'
                   r'|->|\*\*|//|==|!=|<=|>=|.', re.S)
NUMBER = re.compile(r"\.?\d")
NAME = re.compile(r"[A-Za-z_]")

_spec_text_cache: dict[str, str] = {}


def _spec_text(path: str) -> str:
    if path not in _spec_text_cache:
        _spec_text_cache[path] = (ROOT / path).read_text(encoding="utf-8")
    return _spec_text_cache[path]


def _tokens(text: str) -> list[str]:
    return TOKEN.findall(text)


def _positions(toks: list[str], pred) -> list[int]:
    return [i for i, t in enumerate(toks) if pred(t)]


def mutate_text(text: str, rng: random.Random, notes: list[str]) -> str:
    """Apply one random mutation to spec text."""
    toks = _tokens(text)
    solid = _positions(toks, lambda t: not t.isspace() and not t.startswith("#"))
    if not solid:
        return text + deep_nesting(rng)
    op = rng.randrange(15)
    i = rng.choice(solid)
    if op == 0:                                   # delete tokens
        k = rng.choice([1, 1, 1, 2, 3, 8])
        idx = solid[solid.index(i):solid.index(i) + k]
        notes.append(f"delete {''.join(toks[j] for j in idx)!r}")
        for j in reversed(idx):
            del toks[j]
    elif op == 1:                                 # duplicate a token or a run
        k = rng.choice([1, 1, 2, 5, 20])
        run = toks[i:i + k]
        times = rng.choice([1, 1, 2, 100])
        notes.append(f"duplicate {''.join(run)!r} x{times}")
        toks[i:i] = run * times
    elif op == 2:                                 # swap two tokens
        j = rng.choice(solid)
        notes.append(f"swap {toks[i]!r} <-> {toks[j]!r}")
        toks[i], toks[j] = toks[j], toks[i]
    elif op in (3, 4, 5):                         # hostile number
        nums = _positions(toks, lambda t: bool(NUMBER.match(t)))
        if nums:
            i = rng.choice(nums)
        new = rng.choice(HUGE_NUMBERS)
        new = f"({new})" if rng.random() < 0.5 else new
        notes.append(f"{toks[i]!r} -> {new[:60]!r}")
        toks[i] = new
    elif op == 6:                                 # hostile string
        strs = _positions(toks, lambda t: t.startswith('"'))
        if strs:
            i = rng.choice(strs)
        new = rng.choice(HOSTILE_STRINGS)
        notes.append(f"{toks[i]!r} -> {new[:60]!r}")
        toks[i] = new
    elif op == 7:                                 # rename
        names = _positions(toks, lambda t: bool(NAME.match(t)))
        if names:
            i = rng.choice(names)
        pool = sorted(set(t for t in toks if NAME.match(t))) + OPS + FUNCS + COMBS + sorted(KEYWORDS) + ["in", "x", "_", "i"]
        new = rng.choice(pool)
        notes.append(f"name {toks[i]!r} -> {new!r}")
        toks[i] = new
    elif op == 8:                                 # truncate
        cut = rng.randrange(len(text) + 1)
        notes.append(f"truncate at {cut}")
        return text[:cut]
    elif op == 9:                                 # deep nesting instead of a number/name
        cand = _positions(toks, lambda t: bool(NUMBER.match(t) or NAME.match(t)))
        if cand:
            i = rng.choice(cand)
        new = deep_nesting(rng)
        if rng.random() < 0.5 and NUMBER.match(toks[i]):
            new = f"({new}) * 0 + {toks[i]}"
        notes.append(f"{toks[i]!r} -> nesting {new[:40]!r}... ({len(new)} chars)")
        toks[i] = new
    elif op == 10:                                # hostile `use`
        target = rng.choice(HOSTILE_USES)
        notes.append(f"use {target!r}")
        return f'use "{target}"\n' + text if rng.random() < 0.7 else text + f'\nuse "{target}"\n'
    elif op == 11:                                # insert an override / option
        arms = ["first={stride: 2 ** 1}", "first={stride: 2}", "first={stride: 0}",
                "first={planes: 7}", "first={nope: 1}", "first={stride: \"2\"}",
                "first={}", "first=2", "first={stride: in}", "n=0", "n=-1", "n=10**9",
                "n=2.5", "n=true", "name=\"{i}\"", "name=\"a{i}\"", "name=\"x\"",
                "merge=\"mean\"", "first={stride: 2, stride: 3}", "first={groups: 3}",
                "n=1, n=2", "first={stride: 1e400}", "first={stride: -2}"]
        cand = _positions(toks, lambda t: t == ")")
        if cand:
            i = rng.choice(cand)
        new = ", " + rng.choice(arms)
        notes.append(f"insert {new!r}")
        toks.insert(i, new)
    elif op == 12:                                # unicode junk
        junk = rng.choice(UNICODE_JUNK) * rng.choice([1, 1, 3, 1000])
        notes.append(f"insert {junk[:4]!r} x{len(junk)}")
        toks.insert(i, junk)
    elif op == 13:                                # grammar-level junk
        junk = rng.choice(["(", ")", "[", "]", "{", "}", "->", ",", ":", "=", ".", "**",
                           "//", "%", "-", "+", "\"", "#", "if", "then", "else", "input [3]",
                           "return", "model", "block", "use", ". c", "..", "in", "in.c",
                           "\n-> relu", "\n(relu)", "\n[1]", "\n- relu"])
        notes.append(f"insert {junk!r}")
        toks.insert(i, " " + junk + " ")
    else:                                         # repeat a whole line
        lines = text.splitlines(keepends=True)
        k = rng.randrange(len(lines))
        times = rng.choice([1, 2, 50])
        notes.append(f"repeat line {k + 1} x{times}")
        lines[k:k] = [lines[k]] * times
        return "".join(lines)
    return "".join(toks)


def mutated_case(seed: int) -> Case:
    rng = random.Random(seed)
    specs = reference_specs()
    path = rng.choice(specs)
    # a spec that only `use`s is short; mutate its library too, by inlining, sometimes
    text = _spec_text(path)
    notes: list[str] = [path]
    for _ in range(rng.choice([1, 1, 1, 2, 3])):
        text = mutate_text(text, rng, notes)
    if rng.random() < 0.1:                                      # read through load()
        data = text.encode("utf-8", "surrogatepass")
        if rng.random() < 0.7:
            k = rng.randrange(len(data) + 1)
            junk = rng.choice(BYTE_JUNK)
            notes.append(f"bytes {junk!r} at {k}")
            data = data[:k] + junk + data[k:]
        p = Path(path)
        return Case(f"mut:{seed}", "", f"@tree/{p.parent.relative_to('specs')}/{p.stem}.fuzz.arch",
                    "load", data, "; ".join(notes))
    return Case(f"mut:{seed}", text, path, "loads", None, "; ".join(notes))


def hostile_case(seed: int) -> Case:
    """`use` and `load()` of hostile files, in the fixture tree."""
    rng = random.Random(seed)
    body = "model m() { input [3, 8, 8]\n conv(4, k=3) -> relu }\n"
    if rng.random() < 0.25:
        target = rng.choice(LOAD_TARGETS)
        return Case(f"hostile:{seed}", "", target, "load", None, f"load {target!r}")
    if rng.random() < 0.6:
        target = rng.choice(TREE_USES)
    else:
        target = rng.choice(HOSTILE_USES)
    where = rng.choice(["@tree/spec.fuzz.arch", "@tree/resnext_forms/spec.fuzz.arch",
                        "@tree/hostile/spec.fuzz.arch"])
    if where.startswith("@tree/resnext_forms/") and not target.startswith("/"):
        target = "../" + target
    text = f'use "{target}"\n' + body
    return Case(f"hostile:{seed}", text, where, "loads", None, f"use {target!r}")


# --------------------------------------------------------------------------------------
# Generating structurally plausible specs


class _Gen:
    """A random spec writer. Mostly well-formed and well-typed, with a small per-spec
    chance (`hostility`) of hostile numbers, strings and nesting at any point."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.hostility = rng.choice([0.0, 0.0, 0.0, 0.02, 0.1])
        self.blocks: list[tuple[str, list[str]]] = []     # (name, params)
        self.counter = 0
        self.use_lib = rng.random() < 0.4

    def fresh(self, base: str) -> str:
        self.counter += 1
        return f"{base}{self.counter}"

    def hostile(self) -> bool:
        return self.rng.random() < self.hostility

    # ---- numbers
    def num(self, names: list[str], lo: int = 1, hi: int = 64, depth: int = 0) -> str:
        r = self.rng
        if self.hostile():
            return r.choice(HUGE_NUMBERS + [deep_nesting(r)])
        base = str(r.randint(lo, hi))
        if depth > 2 or r.random() < 0.55:
            return base if not names or r.random() < 0.6 else r.choice(names)
        k = r.randrange(11)
        a = self.num(names, lo, hi, depth + 1)
        b = self.num(names, 1, 8, depth + 1)
        forms = [f"{a} + {b}", f"{a} * {b}", f"{a} // {b}", f"{a} % {b} + 1",
                 f"{r.randint(1, 3)} ** {r.randint(0, 6)}",
                 f"{r.choice(['floor', 'ceil', 'round', 'int'])}({a} / {b})",
                 f"{r.choice(['min', 'max'])}({a}, {b})", f"abs({a})", f"len([{a}, {b}])",
                 f"if {a} > {b} then {a} else {b}", f"{a} - 0"]
        return f"({forms[k]})"

    def bool_(self, names) -> str:
        r = self.rng
        return r.choice(["true", "false", f"{self.num(names)} > {self.num(names)}",
                         f"not {r.choice(['true', 'false'])}",
                         f"{self.num(names)} == {self.num(names)} or true"])

    # ---- layers
    def op(self, names: list[str], channel_names: list[str]) -> str:
        r = self.rng
        ch = lambda: self.num(channel_names or names, 1, 64)  # noqa: E731
        k = r.randrange(14)
        if k <= 2:
            kk = r.choice([1, 3, 5, 7])
            parts = [ch(), f"k={kk}"]
            if r.random() < 0.5:
                parts.append(f"s={self.num(names, 1, 2)}")
            if r.random() < 0.7:
                parts.append(f"p={kk // 2}")
            if r.random() < 0.1:
                parts.append(f"groups={r.choice([1, 2, 4])}")
            if r.random() < 0.1:
                parts.append(f"d={r.choice([1, 2])}")
            if r.random() < 0.1:
                parts.append(f"bias={r.choice(['true', 'false'])}")
            return f"conv({', '.join(parts)})"
        if k <= 4:
            return "bn" if r.random() < 0.8 else f"bn(eps={r.choice(['1e-5', '0.001', '0'])})"
        if k <= 6:
            if r.random() < 0.6:
                return "relu"
            return r.choice([
                "sigmoid", "silu", "gelu", "hardsigmoid", "tanh", "identity",
                f"leaky_relu({r.choice(['0.1', '0', '-1', '1e9'])})",
                f"gn({r.choice(['1', '2', '4', '3', '0'])})",
                f"drop_path({r.choice(['0', '0.1', '0.5', '1', '-0.1'])})",
                f"slice({self.num(names, 0, 4)}, {self.num(names, 1, 16)})",
                f"(global_avgpool -> channel_conv(k={self.num(names, 1, 7)}))",
                f"(global_avgpool -> branch_softmax({self.num(names, 1, 4)}, "
                f"card={self.num(names, 1, 2)}))",
                f"avgpool(k=3, s=2, p=1, count_include_pad={r.choice(['true', 'false'])})",
                f"channel_conv(k={self.num(names, 1, 5)}, p={self.num(names, 0, 3)})",
            ])
        if k == 7:
            return r.choice(["maxpool(k=3, s=2, p=1)", "maxpool(k=2)", "avgpool(k=2, s=2)",
                             f"avgpool(k={self.num(names, 1, 3)}, s={self.num(names, 1, 3)})",
                             "maxpool(k=3, s=2, p=1, ceil_mode=true)"])
        if k == 8:
            return r.choice(["dropout", "dropout(p=0.2)", f"dropout({self.num(names)})"])
        if k == 9:
            return f"zeropad({ch()}, s={self.num(names, 1, 2)})"
        if k == 10 and self.blocks:
            return self.block_call(names)
        if k == 11:
            return self.combinator(names, channel_names)
        if k == 12:
            label = self.fresh(r.choice(["g", "group", "features", "downsample"]))
            if r.random() < 0.2:   # numeric and quoted dotted labels
                label = r.choice([f'"{label}.{r.randint(0, 3)}"', f'"{label}.x.0"',
                                  str(r.randint(0, 99)), '"a..b"', f'"{label}"'])
            return f"{label}: ({self.pipe(names, channel_names, r.randint(1, 3))})"
        if k == 13 and r.random() < 0.3:
            return (f"(if {self.bool_(names)} then {self.op(names, channel_names)} "
                    f"else {self.op(names, channel_names)})")
        return "relu"

    def lib_blocks(self) -> list[tuple[str, list[str]]]:
        if not self.use_lib:
            return []
        return [("basic", ["planes"]), ("bottleneck", ["planes"]),
                ("dense_layer", ["growth"]), ("transition", [])]

    def block_call(self, names: list[str], for_comb: bool = False) -> str:
        r = self.rng
        choices = self.blocks + self.lib_blocks()
        if not choices:
            return "relu"
        name, params = r.choice(choices)
        args = []
        for p in params:
            if r.random() < 0.8:
                args.append(self.num(names, 1, 32) if r.random() < 0.7 else f"{p}={self.num(names, 1, 32)}")
        if not args and r.random() < 0.5:
            return name
        return f"{name}({', '.join(args)})"

    def template(self) -> str:
        r = self.rng
        if self.hostile():
            return r.choice(HOSTILE_STRINGS)
        return r.choice(['"{i}"', '"layer{i+1}"', '"denselayer{i+1}"', '"b{i * 2}"',
                         '"u{floor(i / 2)}_{i % 2}"', '"p{i}"', '"{i + 10}"'])

    def combinator(self, names: list[str], channel_names: list[str]) -> str:
        r = self.rng
        label = self.fresh(r.choice(["layer", "stage", "dense", "paths", "sc"]))
        c = r.randrange(4)
        inner = self.block_call(names, True) if (self.blocks or self.use_lib) else self.op(names, channel_names)
        n = self.num(names, 1, 4) if not self.hostile() else r.choice(HUGE_NUMBERS)
        opts = [f"n={n}"]
        if r.random() < 0.4:
            opts.append(f"name={self.template()}")
        if c == 0:
            if r.random() < 0.6:
                key = r.choice(["stride", "stride", "planes", "groups", "growth", "nope"])
                opts.append(f"first={{{key}: {self.num(names, 1, 2)}}}")
            return f"{label}: stage({inner}, {', '.join(opts)})"
        if c == 1:
            return f"{label}: dense({inner}, {', '.join(opts)})"
        if c == 2:
            merge = r.choice(['"sum"', '"concat"'])
            opts.append(f"merge={merge}")
            return f"{label}: paths({inner}, {', '.join(opts)})"
        return f"shortcut({self.pipe(names, channel_names, r.randint(1, 2))})"

    def pipe(self, names: list[str], channel_names: list[str], length: int) -> str:
        parts = [self.op(names, channel_names) for _ in range(length)]
        if self.rng.random() < 0.5:
            parts = [f"{self.fresh('l')}: {p}" if not p.startswith(("(if", "shortcut")) and ":" not in p.split("(")[0] else p
                     for p in parts]
        return " -> ".join(parts)

    # ---- bodies
    def body(self, names: list[str], model: bool) -> list[str]:
        r = self.rng
        lines: list[str] = []
        names = list(names)
        if model:
            if r.random() < 0.95:
                size = (str(r.randint(8, 40)) if r.random() < 0.8 else self.num(names, 8, 32)
                        if r.random() < 0.9 else r.choice(["224", "1", "0", "-3"]))
                lines.append(f"input [3, {size}, {size}]" if r.random() < 0.9 else f"input [{self.num(names, 4, 64)}]")
        if r.random() < 0.5:
            v = self.fresh("w")
            lines.append(f"{v} = {self.num(names)}")
            names.append(v)
        tensors: list[str] = []
        for _ in range(r.randint(0, 2)):
            t = self.fresh("t")
            start = r.choice(["in -> ", ""] + [f"{x} -> " for x in tensors])
            lines.append(f"{t} = {start}{self.pipe(names, ['in.c'] if not model else [], r.randint(1, 3))}")
            tensors.append(t)
        res = self.pipe(names, [], r.randint(1, 4))
        if tensors:
            k = r.randrange(5)
            t = r.choice(tensors)
            if k == 4:   # a gate: a map times a pooled vector (or a shape mismatch)
                res = f"{t} * ({t} -> global_avgpool -> sigmoid)" if r.random() < 0.7 \
                    else f"{t} * in"
            elif k == 0:
                res = f"relu({t} + in)" if r.random() < 0.5 else f"{t} + shortcut({res})"
            elif k == 1:
                res = f"concat({', '.join(tensors)}, in)"
            elif k == 2:
                res = f"add({', '.join(tensors)})"
            else:
                res = f"{t} -> {res}"
            unused = [x for x in tensors if x not in res]
            if unused:
                res = f"concat({res}, {', '.join(unused)})"
        if model and r.random() < 0.7:
            res = f"{res} -> global_avgpool -> flatten -> fc: linear({self.num(names, 2, 100)})"
        lines.append(("return " if r.random() < 0.5 else "") + res)
        return lines

    def params(self, k: int) -> list[str]:
        base = ["planes", "stride", "width", "growth", "n", "k"]
        return self.rng.sample(base, k)

    def spec(self) -> str:
        r = self.rng
        out = []
        if self.use_lib:
            out.append(r.choice(['use "lib/resnet.arch"', 'use "lib/densenet.arch"',
                                 'use "lib/resnet.arch"\nuse "lib/densenet.arch"']))
            if "densenet" not in out[-1]:
                self.lib_blocks = lambda: [("basic", ["planes"]), ("bottleneck", ["planes"])]  # type: ignore
            elif "resnet" not in out[-1]:
                self.lib_blocks = lambda: [("dense_layer", ["growth"]), ("transition", [])]  # type: ignore
        for _ in range(r.randint(0, 3)):
            name = self.fresh("blk")
            params = self.params(r.randint(0, 3))
            decl = []
            for j, p in enumerate(params):
                decl.append(p if r.random() < 0.5 else f"{p} = {self.num(params[:j], 1, 16)}")
            body = self.body(params, model=False)
            out.append(f"block {name}({', '.join(decl)}) {{\n    " + "\n    ".join(body) + "\n}")
            self.blocks.append((name, [p for p, d in zip(params, decl) if "=" not in d]))
        mparams = r.sample(["num_classes", "size", "depth"], r.randint(0, 2))
        decl = [f"{p} = {r.randint(2, 16)}" for p in mparams]
        body = self.body(mparams, model=True)
        out.append(f"model {self.fresh('net')}({', '.join(decl)}) {{\n    " + "\n    ".join(body) + "\n}")
        if self.use_lib and "resnet" in out[0] and r.random() < 0.15:
            # only an alias of a library model
            layers = ", ".join(self.num([], 1, 2) for _ in range(4))
            out = [out[0], f"model net() = imagenet_resnet({r.choice(['basic', 'bottleneck'])}, "
                           f"[{layers}], num_classes={self.num([], 2, 10)}, size={self.num([], 16, 64)})"]
        return "\n\n".join(out) + "\n"


def generated_case(seed: int) -> Case:
    text = _Gen(random.Random(seed)).spec()
    return Case(f"gen:{seed}", text, "specs/generated.fuzz.arch", "loads", None, "generated")


# --------------------------------------------------------------------------------------
# Grammar-aware generation with hypothesis


def _names():
    from hypothesis import strategies as st
    plain = st.sampled_from(["x", "in", "relu", "bn", "conv", "stage", "dense", "paths",
                             "shortcut", "floor", "len", "max", "a", "b", "m", "c", "i",
                             "linear", "concat", "add", "zeropad", "basic", "planes"])
    other = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,6}", fullmatch=True).filter(
        lambda s: s not in KEYWORDS)
    return st.one_of(plain, other)


def lark_strategy():
    """hypothesis' `from_lark` over grammars/arch.lark, start="start", every token followed
    by a space (the grammar %ignores whitespace, so `model` NAME must not run together)."""
    from hypothesis import strategies as st
    from hypothesis.extra.lark import from_lark
    from lark import Lark

    grammar = Lark(GRAMMAR.read_text(), parser="lalr", start="start")
    terminals, _, _ = grammar.grammar.compile(["start"], ())
    sp = lambda s: s.map(lambda t: t + " ")  # noqa: E731
    explicit = {}
    for t in terminals:
        if t.pattern.type == "str":
            explicit[t.name] = st.just(t.pattern.value + " ")
    numbers = st.one_of(
        st.integers(0, 300).map(str),
        st.sampled_from(["0", "1", "2", "3", "64", "0.5", "1e-5", "1e400", "10", "1.", ".5",
                         "99999999999999999999", "1e9"]),
        st.from_regex(r"\d{1,4}(\.\d{0,2})?([eE][+-]?\d{1,3})?", fullmatch=True),
    )
    strings = st.sampled_from(['"{i}"', '"layer{i+1}"', '"sum"', '"concat"', '""', '"x"',
                               '"lib/resnet.arch"', '"/etc/passwd"', '"{"', '"{9**9**9}"',
                               '"../x.arch"', '"{i/0}"'])
    explicit.update({
        "NAME": sp(_names()),
        "NUMBER": sp(numbers),
        "STRING": sp(strings),
        "COMPOP": sp(st.sampled_from(["==", "!=", "<=", ">=", "<", ">"])),
        "MULOP": sp(st.sampled_from(["*", "/", "//", "%"])),
        "PLUS": st.just("+ "),
        "MINUS": st.just("- "),
        "WS": st.sampled_from([" ", "\n", "\t", "\r\n"]),
        "COMMENT": st.just("# c\n"),
    })
    return from_lark(grammar, start="start", explicit=explicit)


def lark_cases(n: int, seed: int) -> list[Case]:
    """n strings drawn from `lark_strategy()` by a hypothesis run seeded with `seed`."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hseed

    out: list[str] = []
    if n <= 0:
        return []

    @hseed(seed)
    @settings(max_examples=n, database=None, phases=[Phase.generate], deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(lark_strategy())
    def collect(text):
        out.append(text)

    collect()
    return [Case(f"lark:{seed}:{k}", t, "specs/lark.fuzz.arch", "loads", None, "from_lark")
            for k, t in enumerate(out[:n])]


def make_cases(n: int, seed: int = 0, lark_share: float = 0.1) -> list[Case]:
    """A reproducible mix: ~45% mutated reference specs, ~35% generated specs, ~10%
    hostile files, ~10% from_lark. Case k of kind K has seed `seed * 1_000_003 + k`."""
    rng = random.Random(seed)
    n_lark = int(n * lark_share)
    cases = []
    for k in range(n - n_lark):
        s = seed * 1_000_003 + k
        x = rng.random()
        if x < 0.5:
            cases.append(mutated_case(s))
        elif x < 0.89:
            cases.append(generated_case(s))
        else:
            cases.append(hostile_case(s))
    cases += lark_cases(n_lark, seed)
    return cases


def case_from_id(case_id: str) -> Case:
    """Rebuild a case from its id ("mut:123", "gen:45", "hostile:6"; not "lark:...")."""
    kind, _, num = case_id.partition(":")
    makers = {"mut": mutated_case, "gen": generated_case, "hostile": hostile_case}
    if kind not in makers:
        raise ValueError(f"cannot rebuild {case_id!r} from its id; replay its .json file")
    return makers[kind](int(num))


# --------------------------------------------------------------------------------------
# Running one case


class _Timeout(BaseException):
    """Raised by SIGALRM; a BaseException so that `except Exception` does not catch it."""


def _on_alarm(signum, frame):
    raise _Timeout()


def _where(tb: BaseException) -> str:
    """The innermost frame in resdsl/ of an exception's traceback, else the innermost."""
    frames = [f for f in traceback.extract_tb(tb.__traceback__)
              if Path(f.filename).resolve() != Path(__file__).resolve()]
    mine = [f for f in frames if f"{os.sep}resdsl{os.sep}" in f.filename
            and f"{os.sep}tests{os.sep}" not in f.filename]
    f = (mine or frames or [None])[-1]
    if f is None:
        return ""
    fn = f.filename
    try:
        fn = str(Path(fn).resolve().relative_to(ROOT))
    except ValueError:
        fn = Path(fn).name
    return f"{fn}:{f.lineno} in {f.name}: {(f.line or '').strip()[:100]}"


def resolve_path(path: str, tree: Path | None) -> str:
    if path.startswith("@tree/"):
        if tree is None:
            raise ValueError("this case needs the fixture tree (make_tree)")
        return str(tree / path[len("@tree/"):])
    return path


# What a case's time is: "wall" (SIGALRM) or "cpu" (SIGPROF: the process's own CPU time,
# which other load on a shared machine does not inflate). RESDSL_FUZZ_CLOCK=cpu sets it.
CPU_CLOCK = os.environ.get("RESDSL_FUZZ_CLOCK") == "cpu"


def warm_up() -> None:
    """Import what a load uses (resdsl imports networkx lazily) and build the parser, so
    that a worker's first case is not charged the process's start-up."""
    import resdsl.elaborate  # noqa: F401
    import resdsl.passes  # noqa: F401
    from resdsl.syntax.parser import _parser
    _parser()


def run_case(case: Case, timeout: float = 5.0, tree: Path | None = None) -> Outcome:
    """Run one case in this process with a time cap (SIGALRM on wall-clock time, or
    SIGPROF on CPU time with RESDSL_FUZZ_CLOCK=cpu; main thread only).
    The cwd must be the repository root for repository-relative paths."""
    import resdsl
    from resdsl.errors import ResdslError

    path = resolve_path(case.path, tree)
    if case.mode == "load" and case.data is not None:
        # a per-process name, so parallel workers do not overwrite each other's file
        path = path.replace(".fuzz.arch", f".fuzz{os.getpid()}.arch")
        Path(path).write_bytes(case.data)
    sig, timer = ((signal.SIGPROF, signal.ITIMER_PROF) if CPU_CLOCK else
                  (signal.SIGALRM, signal.ITIMER_REAL))
    clock = time.process_time if CPU_CLOCK else time.perf_counter
    old = signal.signal(sig, _on_alarm)
    t0 = clock()
    kind, message, tb, where = OK, "", "", ""
    try:
        try:
            # repeating: a _Timeout raised where Python ignores exceptions (a gc callback,
            # a __del__) or swallowed by a bare `except` is raised again 50 ms later
            signal.setitimer(timer, timeout, 0.05)
            try:
                if case.mode == "load":
                    resdsl.load(path)
                else:
                    resdsl.loads(case.text, path)
            except ResdslError as err:
                kind, message = RESDSL_ERROR, err.message if isinstance(err.message, str) else ""
                try:
                    message = err.render()
                except Exception as e2:  # noqa: BLE001 - render() must work too
                    kind, message = f"exception:{type(e2).__name__}", f"in render(): {e2}"
                    tb, where = traceback.format_exc(), _where(e2)
        finally:
            signal.setitimer(timer, 0)
    except _Timeout as err:
        kind, message = TIMEOUT, f"over {timeout:g} s"
        tb, where = traceback.format_exc(), _where(err)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as err:  # noqa: BLE001 - anything but ResdslError is a finding
        kind = f"exception:{type(err).__name__}"
        try:
            message = str(err)[:2000]
        except BaseException:  # noqa: BLE001 - e.g. a str() of a huge int
            message = "<unprintable>"
        tb, where = traceback.format_exc(limit=30), _where(err)
    finally:
        signal.signal(sig, old)
    seconds = clock() - t0
    if len(tb) > 20000:
        tb = tb[:5000] + "\n...\n" + tb[-15000:]
    return Outcome(kind, seconds, message[:4000], tb, where,
                   resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


# --------------------------------------------------------------------------------------
# Running cases in worker processes


def _worker_main(conn, tree: str, timeout: float, mem_limit_mb: int) -> None:
    os.chdir(ROOT)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if mem_limit_mb:
        lim = mem_limit_mb * 1024 * 1024
        try:
            soft, hard = resource.getrlimit(resource.RLIMIT_AS)
            resource.setrlimit(resource.RLIMIT_AS, (lim if hard == resource.RLIM_INFINITY
                                                    else min(lim, hard), hard))
        except (ValueError, OSError):  # pragma: no cover
            pass
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 1000))
    warm_up()
    import gc
    gc.callbacks.clear()    # e.g. hypothesis' (inherited through fork): not ours to time
    import resdsl  # noqa: F401 - import before the clock starts
    from resdsl.syntax.parser import _parser
    _parser()
    treepath = Path(tree)
    while True:
        try:
            msg = conn.recv()
        except EOFError:
            return
        if msg is None:
            return
        case = Case.from_json(msg)
        out = run_case(case, timeout, treepath)
        conn.send(dataclasses.asdict(out))
        if out.kind == "exception:MemoryError":
            return      # the heap may be in a bad state; start a fresh worker


class Sandbox:
    """Worker processes that run cases; a case still running `hard_timeout` seconds after
    it started (SIGALRM could not interrupt it) is reported as a timeout and its worker
    killed and replaced. Use as a context manager."""

    def __init__(self, workers: int = 2, timeout: float = 5.0, hard_timeout: float | None = None,
                 mem_limit_mb: int = 4096, tree_dir: str | Path | None = None) -> None:
        self.ctx = multiprocessing.get_context("fork")
        self.timeout = timeout
        self.hard_timeout = hard_timeout if hard_timeout is not None else (
            timeout * 4 + 10 if CPU_CLOCK else timeout * 1.5 + 2)
        self.mem_limit_mb = mem_limit_mb
        self._tmp = None
        if tree_dir is None:
            self._tmp = tempfile.mkdtemp(prefix="resdsl-fuzz-")
            tree_dir = self._tmp
        self.tree = make_tree(tree_dir)
        self.n = workers
        self.workers: list[dict] = []
        self.peak_rss_kb = 0
        self.crashed_or_killed = 0
        for _ in range(workers):
            self.workers.append(self._spawn())

    def _spawn(self) -> dict:
        parent, child = self.ctx.Pipe()
        proc = self.ctx.Process(target=_worker_main,
                                args=(child, str(self.tree), self.timeout, self.mem_limit_mb),
                                daemon=True)
        proc.start()
        child.close()
        return {"proc": proc, "conn": parent, "job": None, "t0": 0.0}

    def _retire(self, w: dict, kill: bool) -> None:
        if kill:
            w["proc"].kill()
        w["proc"].join(5)
        w["conn"].close()

    def close(self) -> None:
        for w in self.workers:
            try:
                w["conn"].send(None)
            except (OSError, BrokenPipeError):
                pass
        for w in self.workers:
            w["proc"].join(5)
            if w["proc"].is_alive():
                w["proc"].kill()
                w["proc"].join()
            w["conn"].close()
        self.workers = []
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> "Sandbox":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def run(self, case: Case) -> Outcome:
        return next(iter(self.map([case])))[1]

    def map(self, cases, progress=None):
        """Yield (index, Outcome) as cases finish (not in order)."""
        for i, w in enumerate(self.workers):   # a job left by an abandoned map(): drop it
            if w["job"] is not None:
                self._retire(w, kill=True)
                self.workers[i] = self._spawn()
        pending = list(enumerate(cases))
        pending.reverse()
        busy = 0
        while pending or busy:
            for i, w in enumerate(self.workers):
                if w["job"] is None and pending:
                    idx, case = pending.pop()
                    try:
                        w["conn"].send(case.to_json())
                    except (OSError, BrokenPipeError):
                        self._retire(w, kill=True)
                        w = self.workers[i] = self._spawn()
                        w["conn"].send(case.to_json())
                    w["job"], w["t0"] = (idx, case), time.perf_counter()
                    busy += 1
            now = time.perf_counter()
            deadline = min(w["t0"] + self.hard_timeout for w in self.workers if w["job"])
            ready = multiprocessing.connection.wait(
                [w["conn"] for w in self.workers if w["job"]], timeout=max(0.0, deadline - now))
            now = time.perf_counter()
            for i, w in enumerate(self.workers):
                if w["job"] is None:
                    continue
                idx, case = w["job"]
                out = None
                if w["conn"] in ready:
                    try:
                        out = Outcome(**w["conn"].recv())
                        self.peak_rss_kb = max(self.peak_rss_kb, out.maxrss_kb)
                        if out.kind == "exception:MemoryError":
                            self._retire(w, kill=False)
                            self.workers[i] = self._spawn()
                    except (EOFError, OSError):
                        w["proc"].join(5)
                        code = w["proc"].exitcode
                        why = (f"signal {signal.Signals(-code).name}" if code and code < 0
                               else f"exit {code}")
                        out = Outcome(f"crash:{why}", now - w["t0"],
                                      "the worker process died while running this case")
                        self.crashed_or_killed += 1
                        self._retire(w, kill=True)
                        self.workers[i] = self._spawn()
                elif now >= w["t0"] + self.hard_timeout:
                    out = Outcome(TIMEOUT, now - w["t0"],
                                  f"still running after {self.hard_timeout:g} s; SIGALRM did "
                                  f"not interrupt it (a long C-level operation, e.g. big-int "
                                  f"arithmetic), so the worker was killed", where="(killed)")
                    self.crashed_or_killed += 1
                    self._retire(w, kill=True)
                    self.workers[i] = self._spawn()
                if out is not None:
                    w["job"] = None
                    busy -= 1
                    if progress:
                        progress(idx, case, out)
                    yield idx, out


def run_cases(cases: list[Case], workers: int = 2, timeout: float = 5.0,
              mem_limit_mb: int = 4096, progress=None) -> tuple[list[Outcome], int]:
    """Run cases in `workers` processes; returns (outcomes in case order, peak RSS in KiB
    over the workers)."""
    outcomes: list[Outcome | None] = [None] * len(cases)
    with Sandbox(workers, timeout, mem_limit_mb=mem_limit_mb) as box:
        for idx, out in box.map(cases, progress):
            outcomes[idx] = out
        peak = box.peak_rss_kb
    return outcomes, peak  # type: ignore[return-value]
