"""A spec is untrusted input: its text, its file name and the files it `use`s.

One test per way an untrusted spec could do harm: run code through generated source,
read files outside the allowed roots, crash with a traceback, hang or eat memory, or be
accepted though meaningless. Each input ends in success or a ResdslError; the expected
outcomes are written from the rules in docs/language.md, not taken from the code.
"""

from __future__ import annotations

import ast
import os
import signal
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest

import resdsl
from resdsl import Limits, ResdslError
from resdsl.backends.torch import literal

GOOD = "model m() {\n input [3, 8, 8]\n conv1: conv(4, k=3, p=1) -> bn1: bn -> relu\n}\n"


@contextmanager
def bounded(seconds: int = 60):
    """Fail (rather than hang the suite) if the body runs past `seconds`."""
    def alarm(*_):
        raise TimeoutError(f"did not finish in {seconds} s")
    old = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def error_of(text: str, path: str = "<string>", **kw) -> ResdslError:
    with bounded():
        with pytest.raises(ResdslError) as info:
            resdsl.loads(text, path, **kw)
    return info.value


def model(body: str, header: str = "") -> str:
    return f"{header}\nmodel m() {{\n input [3, 8, 8]\n {body}\n}}\n"


# ---- generated code: no user text reaches it unescaped ----------------------------------

HOSTILE_NAMES = [
    'x"""+__import__("os").system("touch PWNED")+""".arch',
    "x'''+__import__('os').system('touch PWNED')+'''.arch",
    'x\\"""\n__import__("os").system("touch PWNED")\n""".arch',
    "x\n__import__('os').system('touch PWNED')\n#.arch",
    "x\r__import__('os').system('touch PWNED')#.arch",
    "x\\.arch",
    "x\u2028__import__('os').system('touch PWNED')#.arch",
]

# The statements the generated module has at its top level, and what the model class holds.
# docstring, imports, _Scope, the prelude's helpers (_zeropad, _drop_path, _branch_softmax,
# _concat_norm_relu_conv, _init), the model class
TOP = [ast.Expr, ast.Import, ast.Import, ast.Import, ast.Import, ast.ClassDef, ast.FunctionDef,
       ast.FunctionDef, ast.FunctionDef, ast.FunctionDef, ast.FunctionDef, ast.ClassDef]


def _calls_outside_functions(tree: ast.Module) -> list[str]:
    """Calls that would run on import: anything not inside a def."""
    found = []

    def visit(node, in_def: bool):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            in_def = True
        if isinstance(node, ast.Call) and not in_def:
            found.append(ast.unparse(node))
        for child in ast.iter_child_nodes(node):
            visit(child, in_def)
    visit(tree, False)
    return found


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_hostile_file_name_cannot_reach_generated_code(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    try:
        path = tmp_path / name
        path.write_text(GOOD)
    except (OSError, ValueError):
        pytest.skip("this file system cannot hold that name")
    arch = resdsl.load(path)
    source = arch.torch_source()
    tree = ast.parse(source)
    assert [type(s) for s in tree.body] == TOP
    doc = ast.get_docstring(tree, clean=False)
    assert str(path) in doc, "the file name is kept, verbatim, in the docstring"
    assert _calls_outside_functions(tree) == []
    # and running it (as to_torch does) touches nothing
    model_ = arch.to_torch(seed=0)
    assert not (tmp_path / "PWNED").exists()
    assert sum(p.numel() for p in model_.parameters()) == 4 * 3 * 9 + 8


def test_generated_statements_are_the_models_own():
    """Every statement of forward is an assignment from the layer's own expression (or the
    return); every line of __init__ registers a module."""
    text = model("conv1: conv(4, k=3, p=1) -> bn1: bn -> relu -> x: (conv(4, k=1) -> bn)")
    tree = ast.parse(resdsl.loads(text, "m.arch").torch_source())
    cls = tree.body[-1]
    methods = {f.name: f for f in cls.body if isinstance(f, ast.FunctionDef)}
    assert set(methods) == {"__init__", "reset_parameters", "forward", "forward_features",
                            "forward_head", "get_classifier", "reset_classifier"}
    for stmt in methods["forward_features"].body[:-1]:
        assert isinstance(stmt, ast.Assign)
    assert isinstance(methods["forward_features"].body[-1], ast.Return)
    init = methods["__init__"].body
    registered = [s for s in init if isinstance(s, ast.Expr) and
                  ast.unparse(s).split("(")[0].endswith("add_module")]
    assigned = [s for s in init if isinstance(s, ast.Assign)]
    assert len(registered) + len(assigned) + 2 == len(init)  # + super().__init__, reset


@pytest.mark.parametrize("value", ['a"""b', "a'b", "a\nb", "\\", "\x00\x1b[31m", "é\u2028",
                                   3, -7, 2.5, 1e-5, True, (3, 224, 224), ("x",)])
def test_literal_is_an_exact_python_literal(value):
    assert ast.literal_eval(literal(value)) == value


def test_literal_refuses_non_finite_floats():
    with pytest.raises(ResdslError):
        literal(float("inf"))


def test_a_graph_with_a_hostile_layer_name_is_refused_by_the_torch_backend():
    arch = resdsl.loads(GOOD, "m.arch")
    import networkx as nx
    nx.relabel_nodes(arch.graph, {"conv1": 'conv1"]; import os; x["'}, copy=False)
    with pytest.raises(ResdslError, match="not a dotted name"):
        arch.torch_source()


# ---- `use` confinement --------------------------------------------------------------------

@pytest.fixture
def tree(tmp_path):
    """A spec directory with a library inside, and a secret outside it."""
    (tmp_path / "outside").mkdir()
    secret = tmp_path / "outside" / "secret.arch"
    secret.write_text("SECRET-CONTENT model leaked() {}\n")
    spec_dir = tmp_path / "project"
    (spec_dir / "lib").mkdir(parents=True)
    (spec_dir / "lib" / "blocks.arch").write_text(
        "block unit(c) { return conv(c, k=1) -> relu }\n")
    return spec_dir, secret


def load_with(spec_dir: Path, use: str, **kw):
    path = spec_dir / "m.arch"
    path.write_text(f'use "{use}"\n' + model("x: unit(4)"))
    with bounded():
        return resdsl.load(path, **kw)


def test_use_inside_the_spec_directory_works(tree):
    spec_dir, _ = tree
    assert load_with(spec_dir, "lib/blocks.arch").num_params() == 12
    assert load_with(spec_dir, "lib/blocks").num_params() == 12  # the suffix may be left out


@pytest.mark.parametrize("use", ["/etc/passwd", "/proc/self/environ", "/dev/zero",
                                 "../outside/secret.arch", "../../../../../../etc/passwd",
                                 "lib/../../outside/secret.arch", "~/secret.arch"])
def test_use_outside_the_roots_is_refused_without_reading(tree, use, monkeypatch):
    spec_dir, secret = tree
    opened = []
    real_open = os.open

    def spy(path, *a, **k):
        opened.append(os.path.realpath(path))
        return real_open(path, *a, **k)
    monkeypatch.setattr(os, "open", spy)
    with pytest.raises(ResdslError) as info:
        load_with(spec_dir, use)
    err = info.value
    assert err.span is not None and err.span.line == 1, "points at the `use`"
    assert "SECRET" not in err.render() and "root:" not in err.render()
    assert str(secret) not in opened and "/etc/passwd" not in opened
    assert all(p.startswith(str(spec_dir)) for p in opened), opened


def test_symlink_out_of_the_tree_is_refused(tree):
    spec_dir, secret = tree
    (spec_dir / "lib" / "link.arch").symlink_to(secret)
    (spec_dir / "lib" / "dirlink").symlink_to(secret.parent, target_is_directory=True)
    for use in ("lib/link.arch", "lib/dirlink/secret.arch"):
        with pytest.raises(ResdslError, match="leaves") as info:
            load_with(spec_dir, use)
        assert "SECRET" not in info.value.render()


def test_a_named_library_root_is_allowed(tree):
    spec_dir, secret = tree
    (secret.parent / "extra.arch").write_text("block unit(c) { return conv(c, k=1) }\n")
    with pytest.raises(ResdslError):
        load_with(spec_dir, "extra.arch")
    assert load_with(spec_dir, "extra.arch", lib=[secret.parent]).num_params() == 12


def test_resdsl_path_adds_a_library_root(tree, monkeypatch):
    spec_dir, secret = tree
    (secret.parent / "extra.arch").write_text("block unit(c) { return conv(c, k=1) }\n")
    monkeypatch.setenv("RESDSL_PATH", str(secret.parent))
    assert load_with(spec_dir, "extra.arch").num_params() == 12


def test_the_bundled_library_is_reachable_from_anywhere(tmp_path):
    path = tmp_path / "r.arch"
    path.write_text('use "lib/resnet.arch"\n'
                    "model r(num_classes = 10) = imagenet_resnet(basic, [1, 1, 1, 1], "
                    "num_classes=num_classes, size=32)\n")
    assert resdsl.load(path).output_shape == (10,)


def test_a_string_spec_reaches_no_local_files(tree, monkeypatch):
    spec_dir, _ = tree
    monkeypatch.chdir(spec_dir)
    text = 'use "lib/blocks.arch"\n' + model("x: unit(4)")
    with pytest.raises(ResdslError, match="cannot find"):
        resdsl.loads(text)
    assert resdsl.loads(text, root=spec_dir).num_params() == 12


@pytest.mark.parametrize("content,expect", [
    (b"block unit(c) { return conv(c, k=1) }\n# caf\xe9\n", "not UTF-8"),
    ("block unit(c) { return relu }\n".encode("utf-16"), "not UTF-8"),
    (b"# " + b"x" * (70 * 1024) + b"\n", "more than"),
])
def test_unreadable_used_files_are_errors(tree, content, expect):
    spec_dir, _ = tree
    (spec_dir / "lib" / "bad.arch").write_bytes(content)
    with pytest.raises(ResdslError, match=expect) as info:
        load_with(spec_dir, "lib/bad.arch")
    assert info.value.span is not None and info.value.span.line == 1


@pytest.mark.parametrize("kind", ["fifo", "directory", "loop", "long", "nul"])
def test_odd_paths_are_errors(tree, kind):
    spec_dir, _ = tree
    lib = spec_dir / "lib"
    name = {"fifo": "lib/fifo.arch", "directory": "lib/dir.arch", "loop": "lib/loop.arch",
            "long": "a" * 300 + ".arch", "nul": "lib/x\x00y.arch"}[kind]
    if kind == "fifo":
        os.mkfifo(lib / "fifo.arch")
    elif kind == "directory":
        (lib / "dir.arch").mkdir()
    elif kind == "loop":
        (lib / "loop.arch").symlink_to(lib / "loop.arch")
    path = spec_dir / "m.arch"
    path.write_text(f'use "{name}"\n' + model("relu"))
    with bounded(20), pytest.raises(ResdslError):
        resdsl.load(path)


@pytest.mark.parametrize("kind", ["fifo", "dev", "directory", "missing", "binary"])
def test_odd_entry_files_are_errors(tmp_path, kind):
    path = {"fifo": tmp_path / "f.arch", "dev": Path("/dev/zero"), "directory": tmp_path,
            "missing": tmp_path / "none.arch", "binary": tmp_path / "b.arch"}[kind]
    if kind == "fifo":
        os.mkfifo(path)
    if kind == "binary":
        path.write_bytes(b"\xff\xfe\x00model")
    with bounded(20), pytest.raises(ResdslError):
        resdsl.load(path)


# ---- no tracebacks --------------------------------------------------------------------

@pytest.mark.parametrize("body", [
    "x: conv(" + "(" * 400 + "4" + ")" * 400 + ", k=1)",
    "x: conv(" + "+".join(["1"] * 2000) + ", k=1)",
    "x: conv(" + "- " * 600 + "4, k=1)",
    "x: conv(" + "[" * 300 + "4" + "]" * 300 + ", k=1)",
    "x: conv(" + "1 ** " * 300 + "1, k=1)",
    "x: conv(if " + "not " * 300 + "true then 4 else 2, k=1)",
])
def test_deep_nesting_is_an_error_not_a_recursion_error(body):
    text = model(body)
    with bounded():
        try:
            resdsl.loads(text)
        except ResdslError:
            pass


@pytest.mark.parametrize("expr,expect", [
    ("floor(1e400)", "out of range"),
    ("2.0 ** 10000", "too large"),
    ("10 ** 30 / 3", "too large"),
    ("2 ** 62 * 4", "below 2\\*\\*63"),
    ("1e300 * 1e300", "out of range"),
    ("ceil(1.5e300)", "below 2\\*\\*63"),
    ("(-8.0) ** 0.5", "not a real number"),
    ("9" * 5000, "digits"),
    ("round(1.5e308 * 2)", "out of range"),
    ("int(2.0 ** 100)", "below 2\\*\\*63"),
    ("len(4)", "wrong arguments"),
    ("min()", "wrong arguments"),
])
def test_arithmetic_out_of_range_is_an_error(expr, expect):
    err = error_of(model(f"x: conv({expr}, k=1)"))
    assert err.span is not None and err.span.line == 4
    assert err.message and __import__("re").search(expect, err.message), err.message


def test_name_template_with_a_huge_number_is_an_error():
    text = model('x: stage(conv(4, k=1), n=2, name="l{10 ** 18 * 10 ** 18 * 10 ** 18}")')
    assert "2**63" in error_of(text).message


def test_override_value_may_be_an_expression():
    text = ("block b(stride = 1) { return conv(4, k=1, s=stride) }\n"
            + model("x: stage(b(), n=2, first={stride: 2 ** 1})"))
    assert resdsl.loads(text).output_shape == (4, 4, 4)


def test_override_entry_without_a_key_is_an_error():
    assert "key: value" in error_of(model("x: stage(relu, n=2, first={1})")).message


def test_a_model_alias_naming_itself_is_an_error():
    assert "chain" in error_of("model m = m()\n").message


# ---- no hangs, bounded memory -------------------------------------------------------

UNIT = "block b(stride = 1) { return conv(4, k=1, s=stride) -> bn -> relu }\n"


@pytest.mark.parametrize("text,where", [
    (model("x: conv(9 ** 9 ** 9, k=1)"), "**"),
    (UNIT + model("x: stage(b(), n=10 ** 7)"), "n="),
    (UNIT + model("x: stage(b(), n=9000)"), "n="),
    (UNIT + model("x: stage(stage(b(), n=200), n=200)"), "n="),
    (UNIT + model("x: dense(b(), n=100000)"), "n="),
    (UNIT + model("x: dense(b(), n=3000)"), "n="),
    (UNIT + model("x: paths(b(), n=10 ** 6)"), "n="),
    ("block e0() { return in }\n" + "".join(
        f"block e{i}() {{ return e{i - 1} -> e{i - 1} -> e{i - 1} }}\n" for i in range(1, 40))
     + model("x: e39"), "return"),
])
def test_huge_work_is_refused_before_it_is_done(text, where):
    err = error_of(text)
    assert err.span is not None and where in err.span.source.line(err.span.line)


def test_the_densenet_family_with_huge_blocks_is_refused():
    text = ('use "lib/densenet.arch"\n'
            "model d = imagenet_densenet(32, [6, 12, 100000, 16])\n")
    assert "more than" in error_of(text, str(Path("specs") / "d.arch")).message


def test_a_big_spec_of_small_blocks_is_refused_quickly():
    blocks = "".join(f"block b{i}(c = 4) {{ return conv(c, k=1) -> relu }}\n"
                     for i in range(200_000))
    err = error_of(blocks + model("x: b1"))
    assert "bytes" in err.message


def test_limits_can_be_raised():
    text = UNIT + model("x: stage(b(), n=9000)")
    arch = resdsl.loads(text, limits=Limits(max_layers=30_000, max_steps=400_000))
    assert len(arch.graph) == 9000 * 3 + 1


def test_memory_stays_bounded_for_a_hostile_dense_block():
    """Run in a child with a 2 GiB address-space cap: the refusal must come first."""
    code = ("import resource, resdsl\n"
            "resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))\n"
            "try:\n"
            "    resdsl.loads('block b() { return conv(4, k=1) }\\n"
            "model m() { input [3, 8, 8]\\n x: dense(b(), n=19000) }')\n"
            "except resdsl.ResdslError as e:\n"
            "    print('refused', e.message)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("refused")


# ---- accepted though meaningless -----------------------------------------------------

@pytest.mark.parametrize("body,expect", [
    ("x: conv(1000000000, k=1)", "parameters"),
    ("x: conv(4, k=3, p=1000000000)", "padding"),
    ("x: conv(4, k=1) -> dropout(2)", "dropout"),
    ("x: conv(4, k=1) -> dropout(-1)", "dropout"),
    ("x: conv(4, k=1) -> dropout(1)", "dropout"),
    ("x: conv(4, k=1) -> bn(eps=-1)", "eps"),
    ("x: conv(4, k=1) -> bn(eps=0)", "eps"),
    ("x: conv(4, k=1) -> bn(momentum=2)", "momentum"),
    ("x: conv(4, k=1) -> bn(momentum=-0.5)", "momentum"),
    ("x: conv(4, k=1) -> flatten -> linear(100000) -> linear(100000)", "parameters"),
])
def test_meaningless_attributes_are_errors(body, expect):
    err = error_of(model(body))
    assert expect in err.message and err.span is not None


def test_a_huge_input_is_an_error():
    err = error_of("model m() {\n input [3, 1000000, 1000000]\n conv(4, k=1)\n}")
    assert "activations" in err.message and err.span.line == 2


def test_outside_parameter_values_are_checked():
    with pytest.raises(ResdslError):
        resdsl.loads("model m(c = 4) {\n input [3, 8, 8]\n conv(c, k=1)\n}",
                     params={"c": float("inf")})
    with pytest.raises(ResdslError):
        resdsl.loads("model m(c = 4) {\n input [3, 8, 8]\n conv(c, k=1)\n}",
                     params={"c": 10 ** 30})


@pytest.mark.parametrize("name", ["resnet1202", "densenet201", "resnext101_32x8d",
                                  "preact_resnet1001"])
def test_the_default_limits_let_every_big_reference_spec_through(name):
    resdsl.load(Path("specs") / f"{name}.arch")


def test_resnext101_at_512_fits_the_default_limits():
    arch = resdsl.load("specs/resnext101_32x8d.arch", params={"size": 512})
    assert arch.num_params() == 88_791_336


# ---- the command line ----------------------------------------------------------------

def test_cli_lib_root_and_limit_flags(tree, capsys):
    from resdsl.cli import main
    spec_dir, secret = tree
    (secret.parent / "extra.arch").write_text("block unit(c) { return conv(c, k=1) }\n")
    path = spec_dir / "m.arch"
    path.write_text('use "extra.arch"\n' + model("x: unit(4)"))
    assert main(["check", str(path)]) == 1
    assert "cannot find" in capsys.readouterr().err
    assert main(["check", "--lib", str(secret.parent), str(path)]) == 0
    assert main(["check", "--root", str(secret.parent), str(path)]) == 0
    assert main(["check", "--lib", str(secret.parent), "--max-layers", "1", str(path)]) == 1
    err = capsys.readouterr().err
    assert "more than 1 layers" in err and "--max-layers" in err and "Traceback" not in err
