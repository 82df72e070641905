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


# ---- exports for tools: networkx's own readers load these back -----------------------

def to_plain(g: nx.MultiDiGraph, scalars: bool = False) -> nx.MultiDiGraph:
    """A copy of the IR whose attributes are plain data (str, int, float, bool, lists),
    for networkx's writers: node-link JSON (`nx.node_link_data`) and, with `scalars`,
    GraphML (`nx.write_graphml`), where lists and records become JSON text. Node
    attributes: op, attrs, shape, span (`file:line:col`), scope, block; edge: port.

    >>> import resdsl
    >>> plain = to_plain(resdsl.load("specs/resnet18.arch").graph, scalars=True)
    >>> plain.nodes["conv1"]["shape"]
    '[64, 112, 112]'
    """
    def value(v: Any) -> Any:
        return json.dumps(v) if scalars and isinstance(v, (list, dict)) else v

    out = nx.MultiDiGraph()
    out.graph.update({k: value(_jsonable(v)) for k, v in g.graph.items()})
    for name, d in g.nodes(data=True):
        attrs = {"op": d["op"],
                 "attrs": value(_jsonable(attrs_to_json(d["attrs"]))
                                if d["op"] in OPS else _jsonable(d["attrs"])),
                 "scope": d.get("scope", ""), "block": d.get("block", "")}
        if d.get("shape") is not None:
            attrs["shape"] = value(list(d["shape"]))
        if d.get("span") is not None:
            s = d["span"]
            attrs["span"] = f"{s.source.path}:{s.line}:{s.column}"
        out.add_node(name, **attrs)
    for u, v, k, port in g.edges(keys=True, data="port"):
        out.add_edge(u, v, key=k, port=port)
    return out


def to_node_link(g: nx.MultiDiGraph) -> str:
    """The IR as node-link JSON that `nx.node_link_graph(json.loads(text))` reads back."""
    return json.dumps(nx.node_link_data(to_plain(g), edges="edges"), indent=1)


def to_graphml(g: nx.MultiDiGraph) -> str:
    """The IR as GraphML that `nx.read_graphml` reads back (lists as JSON text)."""
    return "\n".join(nx.generate_graphml(to_plain(g, scalars=True))) + "\n"


def _jsonable(v: Any) -> Any:
    if isinstance(v, tuple):
        return [_jsonable(x) for x in v]
    if isinstance(v, list):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    return v
