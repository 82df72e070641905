"""resdsl fmt: a canonical layout that never changes meaning and keeps every comment.

The oracles are independent of the formatter: a regex tokenizer written here (the token
sequence and each comment's position in it must survive), layouts written out by hand,
and the elaborated graph of the unformatted text (names, ops, attributes, shapes, edges).
"""

from __future__ import annotations

import os
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fuzzing
import resdsl
from resdsl.errors import ResdslError
from resdsl.fmt import format_file, format_text

ROOT = Path(__file__).resolve().parent.parent
SPECS = sorted(p for p in (ROOT / "specs").rglob("*.arch"))

_TOKEN = re.compile(r'#[^\n]*|"[^"\n]*"|->|\*\*|//|==|!=|<=|>=|'
                    r'\d+\.?\d*(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?|[A-Za-z_]\w*|\S')


def tokens(text: str) -> list[str]:
    """Code tokens, trailing commas left out (the formatter drops them)."""
    toks = [t for t in _TOKEN.findall(text) if not t.startswith("#")]
    return [t for t, nxt in zip(toks, toks[1:] + [""]) if not (t == "," and nxt in ")]}")]


def comment_positions(text: str) -> list[tuple[tuple[str, ...], str]]:
    """Each comment with the code tokens before it (trailing commas left out)."""
    out, seen = [], []
    raw = _TOKEN.findall(text)
    for t in raw:
        if t.startswith("#"):
            out.append((tuple(tokens(" ".join(seen))), t.rstrip()))
        else:
            seen.append(t)
    return out


def graph_facts(arch) -> tuple:
    g = arch.graph
    nodes = sorted((n, d["op"], repr(d.get("attrs")), tuple(d["shape"]))
                   for n, d in g.nodes(data=True))
    edges = sorted((u, v, d.get("port")) for u, v, d in g.edges(data=True))
    return nodes, edges


# ---- the layout, by example ------------------------------------------------------------

LAYOUTS = [
    ("use   'x'".replace("'", '"'), 'use "x"\n'),
    ("model m(){input [3,8,8] conv1:conv(4,k=3)->bn1:bn->relu}",
     "model m() {\n    input [3, 8, 8]\n    conv1: conv(4, k=3) -> bn1: bn -> relu\n}\n"),
    ("block b(planes,stride=1,){x=planes*2+-1 return in->conv(x,k=1,)}",
     "block b(planes, stride = 1) {\n    x = planes * 2 + -1\n    return in -> conv(x, k=1)\n}\n"),
    ("block b(){a=if not x then [1,2] else {stride:2**3} return a.c//2}",
     "block b() {\n    a = if not x then [1, 2] else {stride: 2 ** 3}\n    return a.c // 2\n}\n"),
    # an author's line breaks before `->` are kept; other breaks are not
    ("block b(){main=conv1:conv(4,\n k=1)->bn1:bn\n->relu\n return main}",
     "block b() {\n    main = conv1: conv(4, k=1) -> bn1: bn\n        -> relu\n    return main\n}\n"),
    # a model's bare result pipe continues at its own level, as the reference specs write it
    ("model m(){input [3,8,8]\nconv(4,k=3)\n->relu}",
     "model m() {\n    input [3, 8, 8]\n    conv(4, k=3)\n    -> relu\n}\n"),
    # blank lines: one kept between statements and items, more collapsed, none at the edges
    ("\n\nuse \"a\"\n\n\n\nuse \"b\"\nuse \"c\"\n\n",
     'use "a"\n\nuse "b"\nuse "c"\n'),
    # a long alias breaks after its `(` and fills the arguments
    ("model resnet50(num_classes=1000,in_chans=3,size=224)=imagenet_resnet(bottleneck,"
     "[3,4,6,3],num_classes=num_classes,in_chans=in_chans,size=size)",
     "model resnet50(num_classes = 1000, in_chans = 3, size = 224) = imagenet_resnet(\n"
     "    bottleneck, [3, 4, 6, 3], num_classes=num_classes, in_chans=in_chans, size=size)\n"),
    # a long pipe breaks before `->`, filling each line
    ("block b(){return " + " -> ".join(f"c{i}: conv(64, k=3, p=1)" for i in range(6)) + "}",
     "block b() {\n    return c0: conv(64, k=3, p=1) -> c1: conv(64, k=3, p=1) -> "
     "c2: conv(64, k=3, p=1) -> c3: conv(64, k=3, p=1)\n"
     "        -> c4: conv(64, k=3, p=1) -> c5: conv(64, k=3, p=1)\n}\n"),
    ("", ""),
    ("# only a comment", "# only a comment\n"),
]


@pytest.mark.parametrize("text,expected", LAYOUTS)
def test_layout(text, expected):
    assert format_text(text) == expected
    assert format_text(expected) == expected


# ---- comments --------------------------------------------------------------------------

COMMENTED = Path(__file__).parent / "fmt" / "comments.arch"


def test_comments_in_every_position_are_kept_in_place():
    """A comment after every token (trailing), and one on its own line before every
    token: each must come out after exactly the same code tokens."""
    base = (ROOT / "specs" / "lib" / "resnet.arch").read_text()
    base += ('\nmodel m(a, b = 1,) = imagenet_resnet(basic, [1, 1, 1, 1], groups=if a > 1 '
             'then 2 else -1, size=(32), base_width={x: 1}.x[0] ** 2 // 3 % 4)\n')
    toks = _TOKEN.findall("\n".join(line for line in base.splitlines()
                                     if not line.lstrip().startswith("#")))
    trailing = " ".join(f"{t}  # t{i}\n" for i, t in enumerate(toks))
    own = "".join(f"\n# o{i}\n{t}" for i, t in enumerate(toks)) + "\n# last\n"
    for text in (trailing, own):
        out = format_text(text)
        assert tokens(out) == tokens(text)
        assert comment_positions(out) == comment_positions(text)
        assert format_text(out) == out
        # trailing comments stay on their code's line, own-line comments on their own line
        for line in out.splitlines():
            if "# t" in line:
                assert not line.lstrip().startswith("#")
            if "# o" in line or "# last" in line:
                assert line.lstrip().startswith("#")


def test_comment_sample_file():
    text = COMMENTED.read_text()
    out = format_text(text)
    assert comment_positions(out) == comment_positions(text)
    assert tokens(out) == tokens(text)
    assert format_text(out) == out
    assert "\n\n# second head" in out and "\n\n    x = planes" in out


def test_comment_text_is_kept_verbatim():
    text = 'model m() {  #  odd   spacing\t tab "quote" # hash -> arrow\n input [3, 8, 8]\n relu }'
    out = format_text(text)
    assert '#  odd   spacing\t tab "quote" # hash -> arrow' in out
    assert '"#"' in format_text('use "#"  # c')


# ---- meaning is kept -------------------------------------------------------------------


@pytest.mark.parametrize("path", SPECS, ids=lambda p: str(p.relative_to(ROOT / "specs")))
def test_reference_specs_are_formatted(path):
    """`resdsl fmt` over specs/ is a fixed point (the committed specs are formatted)."""
    text = path.read_text()
    assert format_text(text, str(path)) == text


def _scramble(text: str, rng: random.Random) -> str:
    """The same tokens and comments with other whitespace: every gap becomes a space, a
    newline, several, or nothing where two tokens cannot run together."""
    out = []
    for t in _TOKEN.findall(text):
        if t.startswith("#"):
            out.append(" " + t + "\n")
            continue
        if out and re.match(r"\w", t) and re.search(r"[\w.]$", out[-1]):
            out.append(rng.choice([" ", "\n", "  \n\n "]))
        else:
            out.append(rng.choice(["", "", " ", "\n", "\n\n\n"]))
        out.append(t)
    return "".join(out)


@pytest.mark.parametrize("name", ["resnet50.arch", "lib/resnet.arch", "lib/densenet.arch",
                                  "lib/cifar_resnet.arch", "lib/preact_resnet.arch",
                                  "lib/resnext_forms.arch", "resnext29_8x64d.arch"])
def test_scrambled_reference_specs_format_back(name, tmp_path):
    path = ROOT / "specs" / name
    text = path.read_text()
    scrambled = _scramble(text, random.Random(name))
    out = format_text(scrambled)
    assert tokens(out) == tokens(text)
    assert comment_positions(out) == comment_positions(text)
    assert format_text(out) == out
    if not name.startswith("lib/"):
        copy = path.parent / f".fmt-test-{os.getpid()}-{path.name}"
        try:
            copy.write_text(out)
            assert graph_facts(resdsl.load(copy)) == graph_facts(resdsl.load(path))
        finally:
            copy.unlink()


def _outcome(text: str):
    try:
        return "ok", graph_facts(resdsl.loads(text, "gen.arch", root=ROOT / "specs"))
    except ResdslError as err:
        return "error", err.message


@pytest.mark.slow
@settings(max_examples=60, derandomize=True, database=None, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), layout=st.integers(0, 2**32 - 1))
def test_generated_specs_elaborate_the_same_after_fmt(seed, layout):
    """For specs from the fuzzer's generator, in a scrambled layout: fmt refuses with a
    ResdslError or gives a spec that elaborates to the identical graph (or fails with the
    identical error), is idempotent, and keeps tokens and comments."""
    text = fuzzing.generated_case(seed).text
    rng = random.Random(layout)
    text = "\n".join(line + (f"  # c{i}" if rng.random() < 0.3 else "")
                     for i, line in enumerate(text.splitlines()))
    text = _scramble(text, rng)
    try:
        out = format_text(text)
    except ResdslError:
        with pytest.raises(ResdslError):
            resdsl.loads(text, "gen.arch", root=ROOT / "specs")
        return
    assert format_text(out) == out
    assert tokens(out) == tokens(text)
    assert comment_positions(out) == comment_positions(text)
    assert _outcome(out) == _outcome(text)


@pytest.mark.slow
@settings(max_examples=100, derandomize=True, database=None, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                 HealthCheck.data_too_large])
@given(text=fuzzing.lark_strategy())
def test_any_grammatical_text_formats_or_refuses(text):
    """Over hypothesis' from_lark texts: a ResdslError or an idempotent layout with the
    same tokens and comments, never an exception of another kind."""
    try:
        out = format_text(text)
    except ResdslError as err:
        assert err.render()
        return
    assert format_text(out) == out
    assert tokens(out) == tokens(text)
    assert comment_positions(out) == comment_positions(text)


@pytest.mark.parametrize("text", ["model m( {", "x = $", "\x00", "model m() { x = " + "(" * 500 + "1" + ")" * 500 + " }",
                                  "model m() { x = 1" + "0" * 60 + " }", "'single'"])
def test_refusals_are_resdsl_errors(text):
    with pytest.raises(ResdslError):
        format_text(text)


# ---- files and the command line --------------------------------------------------------


def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "resdsl", "fmt", *args], cwd=cwd or ROOT,
                          capture_output=True, text=True, timeout=120)


def test_cli_check_diff_and_in_place(tmp_path):
    ugly = tmp_path / "ugly.arch"
    ugly.write_text("model m(){input [3,8,8]  # in\nrelu}\n")
    neat = tmp_path / "neat.arch"
    neat.write_text("model m() {\n    input [3, 8, 8]\n    relu\n}\n")
    os.chmod(ugly, 0o640)
    before_neat = os.stat(neat)

    r = _cli("--check", str(ugly), str(neat))
    assert r.returncode == 1 and r.stdout == f"would reformat {ugly}\n"
    r = _cli("--diff", str(ugly), str(neat))
    assert r.returncode == 0
    assert f"--- a/{ugly}" in r.stdout and "+    input [3, 8, 8]  # in" in r.stdout
    assert ugly.read_text() == "model m(){input [3,8,8]  # in\nrelu}\n"   # nothing written

    r = _cli(str(ugly), str(neat))
    assert r.returncode == 0 and r.stdout == f"reformatted {ugly}\n"
    assert ugly.read_text() == "model m() {\n    input [3, 8, 8]  # in\n    relu\n}\n"
    assert os.stat(ugly).st_mode & 0o777 == 0o640
    after_neat = os.stat(neat)           # unchanged files are not rewritten
    assert (after_neat.st_ino, after_neat.st_mtime_ns) == (before_neat.st_ino,
                                                           before_neat.st_mtime_ns)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert _cli("--check", str(ugly)).returncode == 0


def test_cli_refuses_without_writing(tmp_path):
    bad = tmp_path / "bad.arch"
    bad.write_bytes(b"model m( {")
    link = tmp_path / "link.arch"
    link.symlink_to(tmp_path / "target.arch")
    (tmp_path / "target.arch").write_text("use   \"x\"")
    binary = tmp_path / "bin.arch"
    binary.write_bytes(b"\xff\xfe\x00model")
    r = _cli(str(bad), str(link), str(binary), str(tmp_path / "missing.arch"), str(tmp_path))
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    assert r.stderr.count("error:") == 5
    assert bad.read_bytes() == b"model m( {"
    assert (tmp_path / "target.arch").read_text() == "use   \"x\""


def test_format_file_does_not_overwrite_a_concurrent_edit(tmp_path, monkeypatch):
    path = tmp_path / "x.arch"
    path.write_text("use   \"x\"")
    import resdsl.fmt as fmt
    real = fmt.format_text

    def edit_meanwhile(*a, **k):
        out = real(*a, **k)
        path.write_text('use "someone else"\n')
        return out

    monkeypatch.setattr(fmt, "format_text", edit_meanwhile)
    with pytest.raises(ResdslError, match="changed on disk"):
        format_file(path, write=True)
    assert path.read_text() == 'use "someone else"\n'
