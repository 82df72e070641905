"""`resdsl check` stays light: no networkx, torch, numpy or tvm on its path (the IR is an
`IRGraph` until someone asks for `Arch.graph`), and the grammar's parser comes from a
per-user cache that is checked before use. Speed itself is measured in
benchmarks/check_speed.py, not here."""

import json
import os
import subprocess
import sys
from pathlib import Path

import networkx as nx
import pytest

import resdsl
from resdsl import parser_cache
from resdsl.errors import ResdslError
from resdsl.ir.graph import IRGraph, inputs_of, topo_order
from resdsl.passes import validate

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("networkx", "torch", "numpy", "tvm")


def _modules_after(argv: list[str]) -> tuple[int, str, list[str]]:
    code = ("import io, json, sys, contextlib\n"
            "from resdsl.cli import main\n"
            "out = io.StringIO()\n"
            "with contextlib.redirect_stdout(out):\n"
            "    try:\n"
            f"        rc = main({argv!r})\n"
            "    except SystemExit as e:\n"
            "        rc = e.code\n"
            f"heavy = sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})\n"
            "print(json.dumps([rc, out.getvalue(), heavy]))\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, check=True)
    rc, out, heavy = json.loads(proc.stdout.splitlines()[-1])
    return rc, out, heavy


@pytest.mark.parametrize("argv", [["check", "resnet50"], ["check", "specs/densenet121.arch"],
                                  ["--help"]])
def test_check_imports_nothing_heavy(argv):
    rc, out, heavy = _modules_after(argv)
    assert rc == 0
    if argv[0] == "check":
        assert ": ok: " in out and " layers, " in out
    assert heavy == []


def test_arch_graph_is_networkx_and_what_the_methods_read():
    arch = resdsl.load(ROOT / "specs/resnet18.arch")
    layers, params = arch.num_layers(), arch.num_params()
    g = arch.graph
    assert isinstance(g, nx.MultiDiGraph) and arch.graph is g
    assert len(g) == layers and arch.num_params() == params
    assert g.graph["inputs"] == ["input"] and g.graph["outputs"] == ["fc"]
    assert list(g.nodes)[:3] == ["input", "conv1", "bn1"]
    # the methods read the networkx graph from then on, changes included
    g.nodes["fc"]["shape"] = (7,)
    assert arch.output_shape == (7,)


def _both(ops) -> tuple[IRGraph, nx.MultiDiGraph]:
    light, full = IRGraph(), nx.MultiDiGraph()
    for g in (light, full):
        for op, *args in ops:
            if op == "node":
                g.add_node(args[0], op="x", n=args[0])
            elif op == "edge":
                g.add_edge(args[0], args[1], port=args[2])
            else:
                g.remove_node(args[0])
    return light, full


def test_irgraph_converts_to_the_graph_networkx_would_have_built():
    ops = [("node", "a"), ("node", "b"), ("edge", "a", "b", 0), ("node", "c"),
           ("edge", "b", "c", 0), ("edge", "b", "c", 1), ("node", "d"),
           ("edge", "c", "d", 0), ("edge", "a", "d", 1), ("remove", "c"), ("node", "c"),
           ("edge", "a", "c", 0), ("edge", "c", "d", 0), ("edge", "c", "d", 2),
           ("node", "e"), ("edge", "d", "e", 0), ("edge", "a", "e", 1), ("remove", "b")]
    light, full = _both(ops)
    made = light.to_networkx()
    assert list(made.nodes(data=True)) == list(full.nodes(data=True))
    assert list(made.edges(keys=True, data=True)) == list(full.edges(keys=True, data=True))
    assert len(light) == len(full) and list(light) == list(full)
    for n in full:
        assert light.in_degree(n) == full.in_degree(n)
        assert sorted(light.in_edges(n, data="port")) == sorted(full.in_edges(n, data="port"))
        assert inputs_of(light, n) == inputs_of(full, n)
    assert topo_order(light) == topo_order(full)


def test_elaborated_graph_matches_its_networkx_form():
    for spec in ("densenet121", "resnext50_32x4d", "resnet18"):
        arch = resdsl.load(spec)
        light = arch._g
        assert isinstance(light, IRGraph)
        order, rows = topo_order(light), arch.rows()
        g = arch.graph
        assert topo_order(g) == order and arch.rows() == rows
        assert all(inputs_of(g, n) == inputs_of(light, n) for n in g)


def test_validate_reports_a_cycle_the_same_way():
    light, full = _both([("node", "a"), ("node", "b"), ("edge", "a", "b", 0),
                         ("edge", "b", "a", 0)])
    messages = []
    for g in (light, full):
        with pytest.raises(ResdslError) as err:
            validate(g)
        messages.append(str(err.value))
    assert messages[0] == messages[1] and "cycle" in messages[0]


GRAMMAR = 'start: WORD+\n%import common.WORD\n%import common.WS\n%ignore WS\n'


def test_parser_cache_is_used_and_survives_corruption(tmp_path, monkeypatch):
    monkeypatch.setenv("RESDSL_CACHE_DIR", str(tmp_path / "c"))
    first = parser_cache.cached_lark(GRAMMAR, parser="lalr")
    files = list((tmp_path / "c").iterdir())
    assert len(files) == 1 and oct(files[0].stat().st_mode & 0o777) == "0o600"
    assert oct((tmp_path / "c").stat().st_mode & 0o777) == "0o700"
    again = parser_cache.cached_lark(GRAMMAR, parser="lalr")
    assert again.parse("a b") == first.parse("a b")
    for junk in (b"", b"garbage", files[0].read_bytes()[:100]):
        files[0].write_bytes(junk)
        assert parser_cache.cached_lark(GRAMMAR, parser="lalr").parse("a b") == first.parse("a b")
    assert files[0].read_bytes().startswith(parser_cache.key(GRAMMAR, {"parser": "lalr"})
                                            .encode())


@pytest.mark.skipif(not hasattr(os, "getuid"), reason="POSIX permissions")
def test_parser_cache_refuses_shared_places(tmp_path, monkeypatch):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    monkeypatch.setenv("RESDSL_CACHE_DIR", str(shared))
    assert parser_cache.cache_dir() is None
    parser_cache.cached_lark(GRAMMAR, parser="lalr")
    assert list(shared.iterdir()) == []
    # a file others may write is not read
    own = tmp_path / "own"
    monkeypatch.setenv("RESDSL_CACHE_DIR", str(own))
    parser_cache.cached_lark(GRAMMAR, parser="lalr")
    (cached,) = own.iterdir()
    cached.chmod(0o666)
    assert parser_cache._read(cached, parser_cache.key(GRAMMAR, {"parser": "lalr"})) is None
    monkeypatch.setenv("RESDSL_CACHE_DIR", "")
    assert parser_cache.cache_dir() is None
