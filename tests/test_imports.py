"""The package's import graph: one direction, no private names across modules."""

import ast
from pathlib import Path

import networkx as nx

from tests.conftest import ROOT

PACKAGE = ROOT / "resdsl"


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(tree: ast.Module, top_level: bool):
    """(node, imported module, names) for the imports of resdsl modules in `tree`; only
    those run at import time when `top_level`, else only those inside functions."""
    nodes = tree.body if top_level else [n for f in ast.walk(tree)
                                         if isinstance(f, ast.FunctionDef | ast.AsyncFunctionDef)
                                         for n in ast.walk(f)]
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 \
                and node.module.split(".")[0] == "resdsl":
            yield node, node.module, [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "resdsl":
                    yield node, a.name, []


def _sources():
    for path in sorted(PACKAGE.rglob("*.py")):
        yield _module(path), ast.parse(path.read_text(), str(path))


def test_module_level_imports_are_acyclic():
    g = nx.DiGraph()
    for mod, tree in _sources():
        g.add_node(mod)
        for _, target, names in _imports(tree, top_level=True):
            # `from resdsl.pkg import module` imports that module
            for name in names or [None]:
                full = f"{target}.{name}" if name and (PACKAGE.parent / (
                    f"{target}.{name}".replace(".", "/") + ".py")).exists() else target
                if full != mod:
                    g.add_edge(mod, full)
    # the package __init__ imports lazily; `from resdsl import __version__` is no cycle
    g.remove_edges_from([(m, "resdsl") for m in list(g.nodes)])
    cycles = list(nx.simple_cycles(g))
    assert cycles == []


def test_the_tvm_backend_imports_its_own_modules_at_the_top():
    """No import inside a function dodges a cycle between artifact, compile and tune."""
    for mod, tree in _sources():
        if not mod.startswith("resdsl.backends.tvm"):
            continue
        inner = [(node.lineno, target) for node, target, _ in _imports(tree, top_level=False)
                 if target.startswith("resdsl.backends")]
        assert inner == [], mod


def test_the_tvm_backend_layers():
    """kernels, target, lower <- compile <- artifact, tune (which never import each other)."""
    deps = {}
    for mod, tree in _sources():
        if mod.startswith("resdsl.backends.tvm."):
            deps[mod.rsplit(".", 1)[1]] = {t.rsplit(".", 1)[1] for _, t, _ in
                                           _imports(tree, top_level=True)
                                           if t.startswith("resdsl.backends.tvm.")}
    assert "compile" in deps["artifact"] and "compile" in deps["tune"]
    assert "tune" not in deps["artifact"] and "artifact" not in deps["tune"]
    assert not deps["compile"] & {"artifact", "tune"}


def test_no_module_imports_another_modules_private_names():
    found = []
    for mod, tree in _sources():
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and \
                    node.module.startswith("resdsl"):
                found += [(mod, node.module, a.name) for a in node.names
                          if a.name.startswith("_") and not a.name.startswith("__")]
    assert found == []
