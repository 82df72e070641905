"""`resdsl graph` and the IR exports, checked by their readers: Graphviz lays the DOT out
and its SVG is parsed back (every IR node and edge is there; each block instance is a
cluster whose box holds its layers), networkx's own readers load the node-link JSON and
GraphML exports back to the same graph."""

from __future__ import annotations

import collections
import dataclasses
import glob
import io
import json
import os
import re
import xml.etree.ElementTree as ET

import networkx as nx
import pytest

import resdsl
from resdsl.dot import dot_program, quote, render
from resdsl.ir.graph import to_graphml, to_node_link
from tests.conftest import ROOT

SPECS = sorted(os.path.relpath(p, ROOT) for p in
               glob.glob(str(ROOT / "specs" / "*.arch"))
               + glob.glob(str(ROOT / "specs" / "resnext_forms" / "*.arch")))
# full-depth layouts that take Graphviz more than ~5 s (DenseNet-169/201: minutes)
SLOW = {"resnet1202", "preact_resnet1001", "densenet121", "densenet169", "densenet201",
        "densenet_bc_100_12", "resnext50_32x4d_a", "resnext50_32x4d_b", "resnet152",
        "resnet101", "resnext101_32x8d", "preact_resnet164", "resnet110"}
SVG = "{http://www.w3.org/2000/svg}"

needs_dot = pytest.mark.skipif(dot_program() is None, reason="Graphviz's dot is not installed")


def _name(path: str) -> str:
    return os.path.splitext(os.path.basename(path))[0]


def _param(path: str, depth):
    slow = depth is None and _name(path) in SLOW
    return pytest.param(path, depth, id=f"{_name(path)}-{depth or 'full'}",
                        marks=[pytest.mark.slow] if slow else [])


@dataclasses.dataclass
class Drawn:
    nodes: dict[str, tuple[float, float, float, float]]      # title -> bbox
    edges: collections.Counter
    clusters: dict[str, tuple[float, float, float, float]]
    text: str


def _bbox(g: ET.Element) -> tuple[float, float, float, float]:
    xs: list[float] = []
    ys: list[float] = []
    for el in g.iter():
        tag = el.tag.replace(SVG, "")
        if tag == "ellipse":
            cx, cy = float(el.get("cx")), float(el.get("cy"))
            rx, ry = float(el.get("rx")), float(el.get("ry"))
            xs += [cx - rx, cx + rx]
            ys += [cy - ry, cy + ry]
        elif tag in ("polygon", "path", "polyline"):
            nums = [float(v) for v in re.findall(r"-?\d+(?:\.\d+)?", el.get("points")
                                                 or el.get("d"))]
            xs += nums[0::2]
            ys += nums[1::2]
    return min(xs), min(ys), max(xs), max(ys)


def parse_svg(svg: bytes) -> Drawn:
    root = ET.fromstring(svg)
    nodes, clusters, edges = {}, {}, collections.Counter()
    for g in root.iter(f"{SVG}g"):
        title = g.find(f"{SVG}title")
        kind = g.get("class")
        if kind == "node":
            nodes[title.text] = _bbox(g)
        elif kind == "cluster":
            clusters[title.text] = _bbox(g)
        elif kind == "edge":
            u, v = title.text.split("->")
            edges[(u, v)] += 1
    text = " ".join(t.text or "" for t in root.iter(f"{SVG}text"))
    return Drawn(nodes, edges, clusters, text)


@pytest.fixture(scope="module")
def drawings():
    cache: dict = {}

    def get(path: str, depth):
        if (path, depth) not in cache:
            arch = resdsl.load(path)
            cache[(path, depth)] = (arch, parse_svg(render(arch.to_dot(depth), "svg",
                                                            timeout=1200)))
        return cache[(path, depth)]
    return get


def _inside(inner, outer) -> bool:
    return (inner[0] >= outer[0] - 0.5 and inner[1] >= outer[1] - 0.5
            and inner[2] <= outer[2] + 0.5 and inner[3] <= outer[3] + 0.5)


@needs_dot
@pytest.mark.parametrize("path,depth", [_param(p, d) for p in SPECS for d in (None, 1)])
def test_svg_has_every_node_edge_and_block(drawings, path, depth):
    arch, drawn = drawings(path, depth)
    g = arch.graph
    if depth is None:
        assert set(drawn.nodes) == set(g.nodes)
        assert drawn.edges == collections.Counter((u, v) for u, v in g.edges())
        prefixes = {".".join(n.split(".")[:i]) for n in g for i in range(1, n.count(".") + 1)}
        assert set(drawn.clusters) == {f"cluster_{p}" for p in prefixes}
        # every block instance is a cluster, and its box holds each of its layers
        for n, d in g.nodes(data=True):
            if d["scope"]:
                assert _inside(drawn.nodes[n], drawn.clusters[f"cluster_{d['scope']}"]), n
    else:
        top = {n.split(".")[0] for n in g}
        assert set(drawn.nodes) == top
        assert set(drawn.edges) == {(u.split(".")[0], v.split(".")[0]) for u, v in g.edges()
                                    if u.split(".")[0] != v.split(".")[0]}
        assert not drawn.clusters


@needs_dot
def test_collapsed_groups_show_params_and_macs(drawings):
    torch = pytest.importorskip("torch")
    arch, drawn = drawings("specs/resnet18.arch", 1)
    module = arch.to_torch(seed=0)
    for group in ("layer1", "layer2", "layer3", "layer4"):
        params = sum(p.numel() for k, p in module.named_parameters()
                     if k.startswith(group + "."))
        assert f"{params:,} params" in drawn.text
    # layer1 of ResNet-18: 4 convs 64->64 3x3 at 56x56
    assert f"{4 * 64 * 64 * 9 * 56 * 56:,} MACs" in drawn.text
    assert torch


@needs_dot
def test_shortcuts_are_dashed():
    arch = resdsl.load("specs/resnet18.arch")
    dot = arch.to_dot()
    dashed = {(m.group(1), m.group(2)) for m in
              re.finditer(r'"([^"]+)" -> "([^"]+)" \[[^\]]*style="dashed"', dot)}
    assert ("layer1.0.add" not in {u for u, _ in dashed})
    assert ("maxpool", "layer1.0.add") in dashed                       # identity
    assert ("layer1.1.relu_1", "layer2.0.downsample.0") in dashed      # projection
    assert ("layer2.0.downsample.1", "layer2.0.add") in dashed
    assert ("layer2.0.bn2", "layer2.0.add") not in dashed              # main path


@needs_dot
def test_untrusted_file_name_is_quoted(tmp_path):
    name = 'a"b\\N\\G;x}\n];y.arch'
    spec = tmp_path / name
    spec.write_text("model m() { input [3, 8, 8]\n c: conv(4, k=3, p=1) -> relu }\n")
    arch = resdsl.load(str(spec))
    dot = arch.to_dot()
    drawn = parse_svg(render(dot, "svg"))
    assert set(drawn.nodes) == {"input", "c", "relu"}
    # the label reads the file name literally (no \N expansion, no broken statement)
    assert 'a"b\\N\\G;x}' in drawn.text
    assert quote('x"\\') == '"x\\"\\\\"'


def test_missing_dot_says_how_to_get_it(monkeypatch, tmp_path, capsys):
    from resdsl.cli import main
    monkeypatch.setattr("resdsl.dot.dot_program", lambda: None)
    assert main(["graph", "specs/resnet20.arch", "-o", str(tmp_path / "x.svg")]) == 1
    err = capsys.readouterr().err
    assert "Graphviz" in err and "apt-get install graphviz" in err
    assert not (tmp_path / "x.svg").exists()
    # DOT needs no Graphviz
    assert main(["graph", "specs/resnet20.arch", "-o", str(tmp_path / "x.dot")]) == 0


@needs_dot
def test_cli_graph_formats(tmp_path, capsys):
    from resdsl.cli import main
    for ext, magic in (("svg", b"<svg"), ("png", b"\x89PNG"), ("html", b"<!DOCTYPE html>"),
                       ("dot", b"digraph")):
        out = tmp_path / f"net.{ext}"
        assert main(["graph", "specs/resnet20.arch", "-o", str(out), "--depth", "2"]) == 0
        assert magic in out.read_bytes()[:400]
    before = (tmp_path / "net.svg").read_bytes()
    assert main(["graph", "specs/resnet20.arch", "-o", str(tmp_path / "net.svg")]) == 1
    assert "exists" in capsys.readouterr().err
    assert (tmp_path / "net.svg").read_bytes() == before
    assert main(["graph", "specs/resnet20.arch", "-o", str(tmp_path / "net.svg"),
                 "--force"]) == 0
    assert (tmp_path / "net.svg").read_bytes() != before


# ---- the IR exports, read back by networkx ----------------------------------------------

def _same_as_ir(g: nx.MultiDiGraph, back: nx.MultiDiGraph, decode) -> None:
    assert set(back.nodes) == set(g.nodes)
    for n, d in g.nodes(data=True):
        b = back.nodes[n]
        assert b["op"] == d["op"]
        assert decode(b["shape"]) == list(d["shape"])
        assert decode(b["attrs"]) == json.loads(json.dumps(dataclasses.asdict(d["attrs"])))
        assert b["scope"] == d["scope"]
    ports = collections.Counter((u, v, p) for u, v, p in g.edges(data="port"))
    assert collections.Counter((u, v, int(p)) for u, v, p in back.edges(data="port")) == ports
    assert decode(back.graph["outputs"]) == g.graph["outputs"]


@pytest.mark.parametrize("path", SPECS, ids=_name)
def test_node_link_and_graphml_round_trip(path):
    g = resdsl.load(path).graph
    back = nx.node_link_graph(json.loads(to_node_link(g)))
    _same_as_ir(g, back, lambda v: v)
    back = nx.read_graphml(io.BytesIO(to_graphml(g).encode()), force_multigraph=True)
    assert isinstance(back, nx.MultiDiGraph)
    _same_as_ir(g, back, json.loads)
    if len(g) < 200:
        assert nx.is_isomorphic(g, back, node_match=lambda a, b: a["op"] == b["op"],
                                edge_match=lambda a, b: sorted(e["port"] for e in a.values())
                                == sorted(int(e["port"]) for e in b.values()))


def test_inspect_graph_json_cli(capsys):
    from resdsl.cli import main
    assert main(["inspect", "specs/resnet20.arch", "--graph-json"]) == 0
    back = nx.node_link_graph(json.loads(capsys.readouterr().out))
    g = resdsl.load("specs/resnet20.arch").graph
    _same_as_ir(g, back, lambda v: v)
    assert main(["inspect", "specs/resnet20.arch", "--graphml"]) == 0
    back = nx.read_graphml(io.StringIO(capsys.readouterr().out), force_multigraph=True)
    _same_as_ir(g, back, json.loads)


def test_readme_picture_is_current():
    """docs/img/block.svg (in README.md) is drawn from docs/img/block.arch; its DOT is
    checked in beside it. Regenerate both after changing the drawing:
    resdsl graph docs/img/block.arch -o docs/img/block.dot --force (and -o .../block.svg)."""
    arch = resdsl.load("docs/img/block.arch")
    assert arch.to_dot() == (ROOT / "docs/img/block.dot").read_text(), "stale: regenerate"
    drawn = parse_svg((ROOT / "docs/img/block.svg").read_bytes())
    assert set(drawn.nodes) == set(arch.graph.nodes)
    assert drawn.edges == collections.Counter(arch.graph.edges())
