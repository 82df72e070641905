"""The graph IR: a networkx.MultiDiGraph of layers, with JSON round-trip.

Node key: the layer's dotted name (`layer1.0.conv1`). Node attributes:
`op` (a key of `ops.OPS`), `attrs` (that op's frozen attribute record), `shape`
(per sample), `span` (where in the spec it came from), `scope` (the block instance
path it came from) and `block` (that block's name). Edge attribute `port` orders a
node's inputs. `graph.graph` holds `name`, `inputs`, `outputs` and `params`.

>>> import resdsl
>>> g = resdsl.loads("model m() { input [3, 8, 8]\\n c: conv(4, k=3, p=1) -> relu }").graph
>>> list(g.nodes)
['input', 'c', 'relu']
>>> g.nodes["c"]["shape"]
(4, 8, 8)
"""

from __future__ import annotations

import json
from typing import Any

import networkx as nx

from resdsl.errors import Source, Span
from resdsl.ir.ops import OPS, attrs_from_json, attrs_to_json


def new_graph(name: str) -> nx.MultiDiGraph:
    g = nx.MultiDiGraph()
    g.graph.update(name=name, inputs=[], outputs=[], params={})
    return g


def inputs_of(g: nx.MultiDiGraph, node: str) -> list[str]:
    """The node's input tensors in port order."""
    edges = sorted(g.in_edges(node, data="port"), key=lambda e: e[2])
    return [src for src, _, _ in edges]


def to_json(g: nx.MultiDiGraph) -> str:
    """Serialise the IR (node-link form); spans keep file, line and column."""
    nodes = []
    for name, d in g.nodes(data=True):
        nodes.append({"id": name, "op": d["op"], "attrs": attrs_to_json(d["attrs"]),
                      "shape": list(d["shape"]) if d.get("shape") is not None else None,
                      "span": d["span"].to_json() if d.get("span") else None,
                      "scope": d.get("scope", ""), "block": d.get("block", "")})
    edges = [{"source": u, "target": v, "port": p} for u, v, p in g.edges(data="port")]
    return json.dumps({"graph": dict(g.graph), "nodes": nodes, "edges": edges}, indent=1)


def from_json(text: str) -> nx.MultiDiGraph:
    """Inverse of to_json. Shapes are kept as stored; run `passes.validate` to re-check."""
    data: dict[str, Any] = json.loads(text)
    g = nx.MultiDiGraph()
    g.graph.update(data["graph"])
    sources: dict[str, Source] = {}
    for n in data["nodes"]:
        span = None
        if n.get("span"):
            s = n["span"]
            src = sources.setdefault(s["file"], _load_source(s["file"]))
            span = Span(src, s["line"], s["column"], s["end_line"], s["end_column"])
        g.add_node(n["id"], op=n["op"],
                   attrs=attrs_from_json(n["op"], n["attrs"]) if n["op"] in OPS else n["attrs"],
                   shape=tuple(n["shape"]) if n.get("shape") is not None else None,
                   span=span, scope=n.get("scope", ""), block=n.get("block", ""))
    for e in data["edges"]:
        g.add_edge(e["source"], e["target"], port=e["port"])
    return g


def _load_source(path: str) -> Source:
    try:
        with open(path, encoding="utf-8") as f:
            return Source(path, f.read())
    except OSError:
        return Source(path, "")


def topo_order(g: nx.MultiDiGraph) -> list[str]:
    """Nodes in a topological order that follows the spec's order of creation (so
    generated code and state_dicts list layers as the spec writes them)."""
    index = {n: i for i, n in enumerate(g.nodes)}
    return list(nx.lexicographical_topological_sort(g, key=index.__getitem__))
